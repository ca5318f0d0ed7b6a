//! The AdmissionReview envelope: [`parse`] reads the fields of `request` the webhook
//! uses and, for a workload being created, the object in the same pass.

use std::borrow::Cow;

use serde::Deserialize;
use serde::de::{self, DeserializeSeed, Deserializer, IgnoredAny, MapAccess, Visitor};
use serde_json::value::RawValue;

use super::API_VERSION;
use crate::workload::{ReadError, Text, Workload, WorkloadKind, WorkloadSeed};

/// Why a body is not an AdmissionReview the webhook can answer (HTTP 400).
#[derive(Debug, thiserror::Error)]
pub enum ReviewError {
    /// Not JSON, or not shaped like an AdmissionReview.
    #[error("malformed AdmissionReview: {0}")]
    Malformed(ReadError),
    /// Another `apiVersion` than `admission.k8s.io/v1`.
    #[error("unsupported AdmissionReview apiVersion {0:?}: only {API_VERSION} is served")]
    ApiVersion(String),
    /// No `request`.
    #[error("AdmissionReview has no request")]
    NoRequest,
    /// No `request.uid` to answer to.
    #[error("AdmissionReview request has no uid")]
    NoUid,
    /// A field every review carries is missing or empty (`operation`, `kind`,
    /// `resource`): nothing can be decided without it.
    #[error("AdmissionReview request has no {0}")]
    Missing(&'static str),
}

/// The fields of `request` the webhook reads. Parsed by hand (not derived) so that the
/// object of a workload being created is decoded while the review is parsed, in the
/// one pass over the body: kube-apiserver writes `kind`, `subResource` and `operation`
/// before `object` (Go's field order), so by then it is known how to read it.
#[derive(Debug, Default)]
pub struct Request<'a> {
    /// `uid`, echoed in the answer.
    pub uid: Cow<'a, str>,
    /// `kind` (after `matchPolicy: Equivalent` conversion).
    pub kind: GroupVersionKind<'a>,
    /// `resource`.
    pub resource: GroupVersionResource<'a>,
    /// `subResource`.
    pub sub_resource: Option<Cow<'a, str>>,
    /// `namespace`.
    pub namespace: Option<Cow<'a, str>>,
    /// `name` (empty on a CREATE that generates it).
    pub name: Option<Cow<'a, str>>,
    /// `operation`: CREATE, UPDATE, DELETE or CONNECT.
    pub operation: Cow<'a, str>,
    /// `dryRun`: decide, but cause no side effects.
    pub dry_run: Option<bool>,
    /// `userInfo`: who asked (for the decision log).
    pub user_info: UserInfo<'a>,
    pub(super) object: Option<ObjectField<'a>>,
    pub(super) old_object: Option<&'a RawValue>,
}

/// `request.object` as parsed.
#[derive(Debug)]
pub(super) enum ObjectField<'a> {
    /// As sent, read later (or never).
    Raw(&'a RawValue),
    /// Read in one pass as a workload of this kind.
    Read(WorkloadKind, Workload<'a>),
}

impl<'a> Request<'a> {
    /// `object`, as sent; `None` also when [`parse`] read it in one pass ([`parse_raw`]
    /// keeps it).
    pub fn object_json(&self) -> Option<&'a str> {
        match self.object {
            Some(ObjectField::Raw(raw)) => Some(raw.get()),
            _ => None,
        }
    }

    /// `oldObject`, as sent.
    pub fn old_object_json(&self) -> Option<&'a str> {
        self.old_object.map(RawValue::get)
    }
}

/// The kind of a request whose object [`parse`] reads in one pass: a workload being
/// created, which is what every Pod creation waits on. An UPDATE keeps its object raw
/// to compare the pod spec as sent with `oldObject`'s; the rest is read otherwise or
/// not at all.
fn one_pass_kind(
    operation: &str,
    kind: &GroupVersionKind<'_>,
    sub_resource: Option<&str>,
) -> Option<WorkloadKind> {
    if operation != "CREATE" || sub_resource.is_some_and(|s| !s.is_empty()) {
        return None;
    }
    WorkloadKind::from_group_kind(&kind.group, &kind.kind)
}

/// How `request.object` is read while parsing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Reading {
    /// In one pass when [`one_pass_kind`] says so.
    OnePass,
    /// Always kept as sent.
    Raw,
}

#[derive(Deserialize)]
#[serde(field_identifier, rename_all = "camelCase")]
enum ReviewField {
    ApiVersion,
    Request,
    #[serde(other)]
    Other,
}

#[derive(Deserialize)]
#[serde(field_identifier, rename_all = "camelCase")]
enum RequestField {
    Uid,
    Kind,
    Resource,
    SubResource,
    Namespace,
    Name,
    Operation,
    DryRun,
    UserInfo,
    Object,
    OldObject,
    #[serde(other)]
    Other,
}

/// An AdmissionReview's `apiVersion` and `request`.
#[derive(Clone, Copy)]
struct ReviewSeed(Reading);

impl<'de> DeserializeSeed<'de> for ReviewSeed {
    type Value = (Cow<'de, str>, Option<Request<'de>>);

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for ReviewSeed {
    type Value = (Cow<'de, str>, Option<Request<'de>>);

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("an AdmissionReview")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let (mut api_version, mut request) = (None, None);
        while let Some(key) = map.next_key()? {
            match key {
                ReviewField::ApiVersion => once(
                    &mut api_version,
                    map.next_value::<Text<'de>>()?.0,
                    "apiVersion",
                )?,
                ReviewField::Request => once(
                    &mut request,
                    map.next_value_seed(RequestSeed(self.0))?,
                    "request",
                )?,
                ReviewField::Other => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        Ok((api_version.unwrap_or_default(), request.flatten()))
    }
}

/// `request` (or `null`).
#[derive(Clone, Copy)]
struct RequestSeed(Reading);

impl<'de> DeserializeSeed<'de> for RequestSeed {
    type Value = Option<Request<'de>>;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_option(self)
    }
}

impl<'de> Visitor<'de> for RequestSeed {
    type Value = Option<Request<'de>>;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("an AdmissionReview request")
    }

    fn visit_none<E: de::Error>(self) -> Result<Self::Value, E> {
        Ok(None)
    }

    fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
        Ok(None)
    }

    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_map(self)
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut r = Request::default();
        // Each field at most once, as a derived Deserialize checks.
        let mut seen = [false; 11];
        while let Some(key) = map.next_key()? {
            let (index, name) = match key {
                RequestField::Uid => (0, "uid"),
                RequestField::Kind => (1, "kind"),
                RequestField::Resource => (2, "resource"),
                RequestField::SubResource => (3, "subResource"),
                RequestField::Namespace => (4, "namespace"),
                RequestField::Name => (5, "name"),
                RequestField::Operation => (6, "operation"),
                RequestField::DryRun => (7, "dryRun"),
                RequestField::UserInfo => (8, "userInfo"),
                RequestField::Object => (9, "object"),
                RequestField::OldObject => (10, "oldObject"),
                RequestField::Other => {
                    map.next_value::<IgnoredAny>()?;
                    continue;
                }
            };
            if std::mem::replace(&mut seen[index], true) {
                return Err(de::Error::duplicate_field(name));
            }
            match key {
                RequestField::Uid => r.uid = map.next_value::<Text<'de>>()?.0,
                RequestField::Kind => r.kind = map.next_value()?,
                RequestField::Resource => r.resource = map.next_value()?,
                RequestField::SubResource => r.sub_resource = text(map.next_value()?),
                RequestField::Namespace => r.namespace = text(map.next_value()?),
                RequestField::Name => r.name = text(map.next_value()?),
                RequestField::Operation => r.operation = map.next_value::<Text<'de>>()?.0,
                RequestField::DryRun => r.dry_run = map.next_value()?,
                RequestField::UserInfo => r.user_info = map.next_value()?,
                RequestField::Object => {
                    let one_pass = one_pass_kind(&r.operation, &r.kind, r.sub_resource.as_deref())
                        .filter(|_| self.0 == Reading::OnePass);
                    r.object = match one_pass {
                        Some(kind) => Some(ObjectField::Read(
                            kind,
                            map.next_value_seed(WorkloadSeed(kind))?,
                        )),
                        None => map
                            .next_value::<Option<&'de RawValue>>()?
                            .map(ObjectField::Raw),
                    };
                }
                RequestField::OldObject => r.old_object = map.next_value()?,
                RequestField::Other => {}
            }
        }
        Ok(Some(r))
    }
}

fn text(value: Option<Text<'_>>) -> Option<Cow<'_, str>> {
    value.map(|t| t.0)
}

fn once<T, E: de::Error>(slot: &mut Option<T>, value: T, name: &'static str) -> Result<(), E> {
    if slot.replace(value).is_some() {
        return Err(E::duplicate_field(name));
    }
    Ok(())
}

/// `request.userInfo`, as far as the decision log reads it.
#[derive(Debug, Default, Deserialize)]
pub struct UserInfo<'a> {
    /// `username`.
    #[serde(borrow, default)]
    pub username: Cow<'a, str>,
}

/// `request.kind`.
#[derive(Debug, Default, Deserialize)]
pub struct GroupVersionKind<'a> {
    /// API group (`""` for core).
    #[serde(borrow, default)]
    pub group: Cow<'a, str>,
    /// API version.
    #[serde(borrow, default)]
    pub version: Cow<'a, str>,
    /// Kind.
    #[serde(borrow, default)]
    pub kind: Cow<'a, str>,
}

/// `request.resource`.
#[derive(Debug, Default, Deserialize)]
pub struct GroupVersionResource<'a> {
    /// API group (`""` for core).
    #[serde(borrow, default)]
    pub group: Cow<'a, str>,
    /// API version.
    #[serde(borrow, default)]
    pub version: Cow<'a, str>,
    /// Resource (`pods`).
    #[serde(borrow, default)]
    pub resource: Cow<'a, str>,
}

/// Parses a review body, checking the envelope. The object of a workload being created
/// is read in the same pass; any other object is kept as sent, and so is every object
/// that does not read cleanly (a second parse keeps it raw, so that [`super::read`] names the
/// bad field).
pub fn parse(body: &[u8]) -> Result<Request<'_>, ReviewError> {
    let text = utf8(body)?;
    match parse_as(text, Reading::OnePass) {
        Ok(request) if request.read_as_its_kind() => Ok(request),
        _ => parse_as(text, Reading::Raw),
    }
}

/// Parses a review body keeping `request.object` as sent (for its bytes).
pub fn parse_raw(body: &[u8]) -> Result<Request<'_>, ReviewError> {
    parse_as(utf8(body)?, Reading::Raw)
}

fn utf8(body: &[u8]) -> Result<&str, ReviewError> {
    std::str::from_utf8(body).map_err(|e| {
        ReviewError::Malformed(ReadError {
            path: String::new(),
            message: format!("body is not UTF-8: {e}"),
        })
    })
}

fn parse_as(text: &str, reading: Reading) -> Result<Request<'_>, ReviewError> {
    let (api_version, request) =
        crate::workload::decode_seed(text, ReviewSeed(reading)).map_err(ReviewError::Malformed)?;
    if api_version != API_VERSION {
        return Err(ReviewError::ApiVersion(api_version.into_owned()));
    }
    let request = request.ok_or(ReviewError::NoRequest)?;
    if request.uid.is_empty() {
        return Err(ReviewError::NoUid);
    }
    if request.operation.is_empty() {
        return Err(ReviewError::Missing("operation"));
    }
    if request.kind.kind.is_empty() || request.kind.version.is_empty() {
        return Err(ReviewError::Missing("kind"));
    }
    if request.resource.resource.is_empty() || request.resource.version.is_empty() {
        return Err(ReviewError::Missing("resource"));
    }
    Ok(request)
}

impl Request<'_> {
    /// Whether an object read in one pass was read as what the whole request says (a
    /// field that decides it could come after `object` in a body not written by
    /// kube-apiserver).
    fn read_as_its_kind(&self) -> bool {
        match &self.object {
            Some(ObjectField::Read(kind, _)) => {
                one_pass_kind(&self.operation, &self.kind, self.sub_resource.as_deref())
                    == Some(*kind)
            }
            _ => true,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::skim::tests::captured_reviews;
    use crate::workload::decode_strictly;

    #[test]
    fn captured_reviews_are_skimmed_to_what_serde_json_reads() {
        for (name, text) in captured_reviews() {
            for reading in [Reading::OnePass, Reading::Raw] {
                let skimmed = crate::skim::from_str(&text, ReviewSeed(reading)).expect(&name);
                let strict = decode_strictly(&text, ReviewSeed(reading)).expect(&name);
                assert_eq!(format!("{skimmed:?}"), format!("{strict:?}"), "{name}");
            }
        }
    }
}
