//! `audit.k8s.io/v1` events, as far as the detections read them, borrowed from the
//! body (the webhook backend's `EventList`, or one line of a log file).

use std::borrow::Cow;

use serde::Deserialize;
use serde_json::value::RawValue;

/// An `EventList` as the webhook audit backend sends it.
#[derive(Debug, Deserialize)]
pub struct EventList<'a> {
    /// The events, in no reliable order (`order::sort` puts them in time order).
    #[serde(borrow, default)]
    pub items: Vec<Event<'a>>,
}

/// One audit event.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Event<'a> {
    /// `auditID`.
    #[serde(borrow, default, rename = "auditID")]
    pub audit_id: Cow<'a, str>,
    /// `stage`: only `ResponseComplete` and `Panic` are judged (one per request).
    #[serde(borrow, default)]
    pub stage: Cow<'a, str>,
    /// `requestURI`.
    #[serde(borrow, default, rename = "requestURI")]
    pub request_uri: Cow<'a, str>,
    /// `verb` (`get`, `create`…).
    #[serde(borrow, default)]
    pub verb: Cow<'a, str>,
    /// Who authenticated.
    #[serde(borrow, default)]
    pub user: User<'a>,
    /// Who they acted as, when impersonating.
    #[serde(borrow, default)]
    pub impersonated_user: Option<User<'a>>,
    /// `sourceIPs`.
    #[serde(borrow, default, rename = "sourceIPs")]
    pub source_ips: Vec<Cow<'a, str>>,
    /// `objectRef`.
    #[serde(borrow, default)]
    pub object_ref: Option<ObjectRef<'a>>,
    /// `responseStatus`.
    #[serde(borrow, default)]
    pub response_status: Option<ResponseStatus<'a>>,
    /// `requestObject` (Request level and above), raw.
    #[serde(borrow, default)]
    pub request_object: Option<&'a RawValue>,
    /// `stageTimestamp` (RFC 3339).
    #[serde(borrow, default)]
    pub stage_timestamp: Option<Cow<'a, str>>,
    /// `annotations`, as far as read.
    #[serde(borrow, default)]
    pub annotations: Annotations<'a>,
}

/// The annotations the detections read.
#[derive(Debug, Default, Deserialize)]
pub struct Annotations<'a> {
    /// `authorization.k8s.io/decision`: `allow` or `forbid`.
    #[serde(borrow, default, rename = "authorization.k8s.io/decision")]
    pub decision: Option<Cow<'a, str>>,
}

/// `user` or `impersonatedUser`.
#[derive(Debug, Default, Deserialize)]
pub struct User<'a> {
    /// `username`.
    #[serde(borrow, default)]
    pub username: Cow<'a, str>,
    /// `groups`.
    #[serde(borrow, default)]
    pub groups: Vec<Cow<'a, str>>,
}

/// `objectRef`.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ObjectRef<'a> {
    /// `resource` (`pods`).
    #[serde(borrow, default)]
    pub resource: Cow<'a, str>,
    /// `subresource` (`exec`).
    #[serde(borrow, default)]
    pub subresource: Cow<'a, str>,
    /// `namespace`.
    #[serde(borrow, default)]
    pub namespace: Cow<'a, str>,
    /// `name`.
    #[serde(borrow, default)]
    pub name: Cow<'a, str>,
    /// `apiGroup`.
    #[serde(borrow, default)]
    pub api_group: Cow<'a, str>,
}

/// `responseStatus`.
#[derive(Debug, Default, Deserialize)]
pub struct ResponseStatus<'a> {
    /// `code`.
    #[serde(default)]
    pub code: u16,
    /// `message` (levels above Metadata, or failures).
    #[serde(borrow, default)]
    pub message: Cow<'a, str>,
}

impl Event<'_> {
    /// The user the request acted as (the impersonated one, when impersonating).
    pub fn acting(&self) -> &User<'_> {
        self.impersonated_user.as_ref().unwrap_or(&self.user)
    }

    /// The response code (0 when the event has none).
    pub fn code(&self) -> u16 {
        self.response_status.as_ref().map_or(0, |s| s.code)
    }

    /// Whether the request succeeded (2xx).
    pub fn succeeded(&self) -> bool {
        (200..300).contains(&self.code())
    }

    /// `resource` and `subresource` of the object, empty when none.
    pub fn resource(&self) -> (&str, &str) {
        self.object_ref
            .as_ref()
            .map_or(("", ""), |o| (o.resource.as_ref(), o.subresource.as_ref()))
    }

    /// The object's namespace, empty when none.
    pub fn namespace(&self) -> &str {
        self.object_ref
            .as_ref()
            .map_or("", |o| o.namespace.as_ref())
    }

    /// What the authorizer decided, when the event says.
    pub fn authorization_decision(&self) -> Option<&str> {
        self.annotations.decision.as_deref()
    }

    /// The object's API group (empty for core).
    pub fn object_api_group(&self) -> &str {
        self.object_ref
            .as_ref()
            .map_or("", |o| o.api_group.as_ref())
    }

    /// The object's name, empty when none.
    pub fn name(&self) -> &str {
        self.object_ref.as_ref().map_or("", |o| o.name.as_ref())
    }
}
