//! Typed views of the workload kinds: just the pod-spec fields the rules read, decoded
//! straight from the request bytes (no `serde_json::Value` on the hot path).

use std::borrow::Cow;
use std::fmt;
use std::marker::PhantomData;

use serde::Deserialize;
use serde::de::{DeserializeSeed, Deserializer, IgnoredAny};
use serde_json::value::RawValue;

/// The workload kinds Portcullis evaluates.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum WorkloadKind {
    /// core/v1 Pod (and its `ephemeralcontainers` subresource).
    Pod,
    /// apps/v1 Deployment.
    Deployment,
    /// apps/v1 ReplicaSet.
    ReplicaSet,
    /// apps/v1 StatefulSet.
    StatefulSet,
    /// apps/v1 DaemonSet.
    DaemonSet,
    /// batch/v1 Job.
    Job,
    /// batch/v1 and batch/v1beta1 CronJob.
    CronJob,
    /// core/v1 ReplicationController.
    ReplicationController,
}

impl WorkloadKind {
    /// Every supported kind.
    pub const ALL: [WorkloadKind; 8] = [
        Self::Pod,
        Self::Deployment,
        Self::ReplicaSet,
        Self::StatefulSet,
        Self::DaemonSet,
        Self::Job,
        Self::CronJob,
        Self::ReplicationController,
    ];

    /// The kind's name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pod => "Pod",
            Self::Deployment => "Deployment",
            Self::ReplicaSet => "ReplicaSet",
            Self::StatefulSet => "StatefulSet",
            Self::DaemonSet => "DaemonSet",
            Self::Job => "Job",
            Self::CronJob => "CronJob",
            Self::ReplicationController => "ReplicationController",
        }
    }

    /// The kind named in a policy's `match.kinds` (one of the CRD schema's
    /// [`portcullis_crds::schema::WORKLOAD_KINDS`]).
    pub fn from_name(name: &str) -> Result<Self, String> {
        Self::ALL
            .into_iter()
            .find(|k| k.as_str() == name)
            .ok_or_else(|| {
                let names: Vec<&str> = Self::ALL.iter().map(|k| k.as_str()).collect();
                format!("unknown kind {name:?} ({})", names.join(", "))
            })
    }

    /// The kind of an admission request's `kind` (group and kind), if supported.
    pub fn from_group_kind(group: &str, kind: &str) -> Option<Self> {
        let k = Self::ALL.into_iter().find(|k| k.as_str() == kind)?;
        let group_ok = match k {
            Self::Pod | Self::ReplicationController => group.is_empty(),
            Self::Deployment | Self::ReplicaSet | Self::DaemonSet => {
                group == "apps" || group == "extensions"
            }
            Self::StatefulSet => group == "apps",
            Self::Job | Self::CronJob => group == "batch",
        };
        group_ok.then_some(k)
    }

    /// The API resource (plural) objects of this kind are served as.
    pub fn resource(self) -> &'static str {
        match self {
            Self::Pod => "pods",
            Self::Deployment => "deployments",
            Self::ReplicaSet => "replicasets",
            Self::StatefulSet => "statefulsets",
            Self::DaemonSet => "daemonsets",
            Self::Job => "jobs",
            Self::CronJob => "cronjobs",
            Self::ReplicationController => "replicationcontrollers",
        }
    }

    /// Where the pod spec sits in an object of this kind.
    pub fn pod_spec_path(self) -> &'static str {
        match self {
            Self::Pod => "spec",
            Self::CronJob => "spec.jobTemplate.spec.template.spec",
            _ => "spec.template.spec",
        }
    }
}

impl fmt::Display for WorkloadKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The pod-spec fields the rules read.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct PodSpec<'a> {
    /// `containers`.
    #[serde(borrow)]
    pub containers: Option<Vec<Container<'a>>>,
    /// `initContainers`.
    #[serde(borrow)]
    pub init_containers: Option<Vec<Container<'a>>>,
    /// `ephemeralContainers`.
    #[serde(borrow)]
    pub ephemeral_containers: Option<Vec<Container<'a>>>,
    /// `volumes`.
    #[serde(borrow)]
    pub volumes: Option<Vec<Volume<'a>>>,
    /// The pod-level `securityContext`.
    pub security_context: Option<PodSecurityContext>,
    /// `hostNetwork`.
    pub host_network: Option<bool>,
    /// `hostPID`.
    #[serde(rename = "hostPID")]
    pub host_pid: Option<bool>,
    /// `hostIPC`.
    #[serde(rename = "hostIPC")]
    pub host_ipc: Option<bool>,
    /// `os` (Kubernetes 1.23+).
    #[serde(borrow)]
    pub os: Option<PodOs<'a>>,
}

impl PodSpec<'_> {
    /// Whether `os.name` is `windows`: the API server then refuses the Linux-only
    /// security settings (seccomp, capabilities, privilege escalation).
    pub fn is_windows(&self) -> bool {
        self.os.as_ref().is_some_and(|os| os.name == "windows")
    }
}

/// `spec.os`.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
pub struct PodOs<'a> {
    /// `name`: `linux` or `windows`.
    #[serde(borrow, default)]
    pub name: Cow<'a, str>,
}

/// A container, init container or ephemeral container.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Container<'a> {
    /// `name`.
    #[serde(borrow, default)]
    pub name: Cow<'a, str>,
    /// `image`.
    #[serde(borrow, default, deserialize_with = "optional_text")]
    pub image: Option<Cow<'a, str>>,
    /// `securityContext`.
    pub security_context: Option<SecurityContext>,
}

/// The container-level security settings the rules read.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct SecurityContext {
    /// `privileged`.
    pub privileged: Option<bool>,
    /// `allowPrivilegeEscalation`.
    pub allow_privilege_escalation: Option<bool>,
    /// `runAsNonRoot`.
    pub run_as_non_root: Option<bool>,
    /// `runAsUser`.
    pub run_as_user: Option<i64>,
    /// `readOnlyRootFilesystem`.
    pub read_only_root_filesystem: Option<bool>,
    /// `capabilities`.
    pub capabilities: Option<Capabilities>,
    /// Whether `seccompProfile` is set.
    #[serde(default, deserialize_with = "present")]
    pub seccomp_profile: bool,
}

/// `securityContext.capabilities`.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
pub struct Capabilities {
    /// `add`.
    pub add: Option<Vec<String>>,
    /// Whether `drop` is set (what it lists is not read: no rule needs it, and a Pod
    /// that drops `ALL` in each container would otherwise cost an allocation per
    /// container and capability).
    #[serde(default, deserialize_with = "present")]
    pub drop: bool,
}

/// The pod-level security settings the rules read.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct PodSecurityContext {
    /// `runAsNonRoot`.
    pub run_as_non_root: Option<bool>,
    /// `runAsUser`.
    pub run_as_user: Option<i64>,
    /// Whether `seccompProfile` is set.
    #[serde(default, deserialize_with = "present")]
    pub seccomp_profile: bool,
}

/// A volume: only whether it is a hostPath, and an image volume's reference.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Volume<'a> {
    /// `name`.
    #[serde(borrow, default)]
    pub name: Cow<'a, str>,
    /// Present when the volume is a hostPath.
    #[serde(default, deserialize_with = "present")]
    pub host_path: bool,
    /// `image` (image volumes).
    #[serde(borrow)]
    pub image: Option<ImageVolume<'a>>,
}

/// An image volume source.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
pub struct ImageVolume<'a> {
    /// `reference`.
    #[serde(borrow, default, deserialize_with = "optional_text")]
    pub reference: Option<Cow<'a, str>>,
}

fn present<'de, D: serde::Deserializer<'de>>(d: D) -> Result<bool, D::Error> {
    Ok(Option::<IgnoredAny>::deserialize(d)?.is_some())
}

/// Where an image is used in a pod spec.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Slot {
    /// An init container.
    InitContainer,
    /// A container.
    Container,
    /// An ephemeral container.
    EphemeralContainer,
    /// An image volume.
    Volume,
}

impl Slot {
    /// The pod-spec field holding it.
    pub fn field(self) -> &'static str {
        match self {
            Slot::InitContainer => "initContainers",
            Slot::Container => "containers",
            Slot::EphemeralContainer => "ephemeralContainers",
            Slot::Volume => "volumes",
        }
    }

    /// How messages name it.
    pub fn noun(self) -> &'static str {
        match self {
            Slot::InitContainer => "init container",
            Slot::Container => "container",
            Slot::EphemeralContainer => "ephemeral container",
            Slot::Volume => "volume",
        }
    }
}

/// One image use in a pod spec.
#[derive(Debug, Clone, Copy)]
pub struct ImageUse<'s> {
    /// Where it is used.
    pub slot: Slot,
    /// Its position in that list.
    pub index: usize,
    /// The container's or volume's name.
    pub name: &'s str,
    /// The reference as written.
    pub image: &'s str,
    /// The container's security context (none for volumes).
    pub security: Option<&'s SecurityContext>,
}

impl PodSpec<'_> {
    /// Every image the pod runs or mounts, in a fixed order: init containers,
    /// containers, ephemeral containers, image volumes.
    pub fn images(&self) -> impl Iterator<Item = ImageUse<'_>> {
        fn containers<'s>(
            list: &'s Option<Vec<Container<'_>>>,
            slot: Slot,
        ) -> impl Iterator<Item = ImageUse<'s>> {
            list.iter()
                .flatten()
                .enumerate()
                .map(move |(index, c)| ImageUse {
                    slot,
                    index,
                    name: &c.name,
                    image: c.image.as_deref().unwrap_or_default(),
                    security: c.security_context.as_ref(),
                })
        }
        let volumes = self
            .volumes
            .iter()
            .flatten()
            .enumerate()
            .filter_map(|(index, v)| {
                let image = v.image.as_ref()?;
                Some(ImageUse {
                    slot: Slot::Volume,
                    index,
                    name: &v.name,
                    image: image.reference.as_deref().unwrap_or_default(),
                    security: None,
                })
            });
        containers(&self.init_containers, Slot::InitContainer)
            .chain(containers(&self.containers, Slot::Container))
            .chain(containers(
                &self.ephemeral_containers,
                Slot::EphemeralContainer,
            ))
            .chain(volumes)
    }
}

/// Why an object cannot be read as its kind: the field path and the decoding error.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReadError {
    /// The field path within the object.
    pub path: String,
    /// What was wrong there.
    pub message: String,
}

impl fmt::Display for ReadError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.path.as_str() {
            "" | "." => f.write_str(&self.message),
            path => write!(f, "{path}: {}", self.message),
        }
    }
}

impl std::error::Error for ReadError {}

/// A pod spec, borrowed from where it was read or owned (a `Cow` would make the
/// lifetime invariant).
#[derive(Debug)]
pub enum PodSpecRef<'a> {
    /// Borrowed, as read with its request.
    Borrowed(&'a PodSpec<'a>),
    /// Owned.
    Owned(PodSpec<'a>),
}

impl<'a> PodSpecRef<'a> {
    /// The spec owned (a copy when borrowed).
    pub fn into_owned(self) -> PodSpec<'a> {
        match self {
            PodSpecRef::Borrowed(spec) => spec.clone(),
            PodSpecRef::Owned(spec) => spec,
        }
    }
}

impl<'a> std::ops::Deref for PodSpecRef<'a> {
    type Target = PodSpec<'a>;

    fn deref(&self) -> &PodSpec<'a> {
        match self {
            PodSpecRef::Borrowed(spec) => spec,
            PodSpecRef::Owned(spec) => spec,
        }
    }
}

/// A string borrowed from the JSON unless it has escapes. (`#[serde(borrow)]` on an
/// `Option<Cow<str>>` field still allocates: serde borrows only a bare `Cow`.)
#[derive(Debug, Deserialize)]
#[serde(transparent)]
pub(crate) struct Text<'a>(#[serde(borrow)] pub(crate) Cow<'a, str>);

/// An optional [`Text`], for `#[serde(borrow, default, deserialize_with =
/// "optional_text")]` on an `Option<Cow<str>>` field: borrowed unless it has escapes.
pub(crate) fn optional_text<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> Result<Option<Cow<'de, str>>, D::Error> {
    Ok(Option::<Text<'de>>::deserialize(d)?.map(|text| text.0))
}

/// What the webhook keeps of a workload object besides its pod spec.
#[derive(Debug, Clone, Default)]
pub struct ObjectInfo<'a> {
    /// `metadata.name`, else `generateName` followed by `*`, else empty.
    pub name: Cow<'a, str>,
    /// The object is a bare `ephemeralContainers` list (the pre-1.22 subresource shape).
    pub ephemeral_list: bool,
    /// Whether the object has `metadata`.
    pub has_metadata: bool,
    /// `metadata.annotations`, raw (absent or null: `None`).
    pub annotations: Option<&'a RawValue>,
}

impl<'a> ObjectInfo<'a> {
    fn new(meta: Option<Meta<'a>>, ephemeral_list: bool) -> Self {
        let has_metadata = meta.is_some();
        let meta = meta.unwrap_or_default();
        let name = match (meta.name, meta.generate_name) {
            (Some(Text(name)), _) if !name.is_empty() => name,
            (_, Some(Text(generate))) => Cow::Owned(format!("{generate}*")),
            _ => Cow::Borrowed(""),
        };
        ObjectInfo {
            name,
            ephemeral_list,
            has_metadata,
            annotations: meta.annotations,
        }
    }
}

/// A workload object read in one pass: straight from its JSON into the pod-spec fields
/// the rules read, at the place its kind keeps them.
#[derive(Debug)]
pub struct Workload<'a> {
    /// Name, metadata and shape.
    pub info: ObjectInfo<'a>,
    /// The pod spec (empty when the object has none).
    pub spec: PodSpec<'a>,
}

impl<'a> Workload<'a> {
    /// Reads an object of `kind`; an error names the field from the object's root.
    pub fn read(kind: WorkloadKind, object: &'a str) -> Result<Self, ReadError> {
        decode_seed(object, WorkloadSeed(kind))
    }
}

/// Deserializes a [`Workload`] of this kind from any deserializer (one value of a
/// larger document, such as an AdmissionReview's `request.object`).
#[derive(Debug, Clone, Copy)]
pub struct WorkloadSeed(pub WorkloadKind);

impl<'de> DeserializeSeed<'de> for WorkloadSeed {
    type Value = Workload<'de>;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        let (meta, spec) = PodSpecAt::<PodSpec<'de>>(self.0, PhantomData).deserialize(d)?;
        Ok(Workload {
            info: ObjectInfo::new(meta, false),
            spec: spec.unwrap_or_default(),
        })
    }
}

/// A workload object with its pod spec kept raw: for comparing two versions' specs as
/// sent, and for the pre-1.22 ephemeral-containers list.
#[derive(Debug)]
pub struct WorkloadObject<'a> {
    /// Name, metadata and shape.
    pub info: ObjectInfo<'a>,
    /// The pod spec, raw (absent when the object has none).
    pub pod_spec: Option<&'a RawValue>,
    /// Where `pod_spec` sits in the object.
    pub pod_spec_path: &'static str,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct Meta<'a> {
    #[serde(borrow)]
    name: Option<Text<'a>>,
    #[serde(borrow)]
    generate_name: Option<Text<'a>>,
    #[serde(borrow)]
    annotations: Option<&'a RawValue>,
}

#[derive(Deserialize)]
struct Object<'a, S> {
    #[serde(borrow, default)]
    metadata: Option<Meta<'a>>,
    spec: Option<S>,
}

#[derive(Deserialize)]
struct Template<P> {
    template: Option<PodTemplate<P>>,
}

#[derive(Deserialize)]
struct PodTemplate<P> {
    spec: Option<P>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct CronJobSpec<P> {
    job_template: Option<JobTemplate<P>>,
}

#[derive(Deserialize)]
struct JobTemplate<P> {
    spec: Option<Template<P>>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct EphemeralContainersObject<'a> {
    #[serde(borrow, default)]
    metadata: Option<Meta<'a>>,
    #[serde(borrow)]
    ephemeral_containers: Option<&'a RawValue>,
}

/// Decodes an object of a kind into its metadata and the pod spec (as `P`) at the
/// place the kind keeps it.
struct PodSpecAt<P>(WorkloadKind, PhantomData<P>);

impl<P> Clone for PodSpecAt<P> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<P> Copy for PodSpecAt<P> {}

impl<'de, P: Deserialize<'de>> DeserializeSeed<'de> for PodSpecAt<P> {
    type Value = (Option<Meta<'de>>, Option<P>);

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        Ok(match self.0 {
            WorkloadKind::Pod => {
                let o = Object::<P>::deserialize(d)?;
                (o.metadata, o.spec)
            }
            WorkloadKind::CronJob => {
                let o = Object::<CronJobSpec<P>>::deserialize(d)?;
                let spec = o.spec.and_then(|s| s.job_template?.spec?.template?.spec);
                (o.metadata, spec)
            }
            _ => {
                let o = Object::<Template<P>>::deserialize(d)?;
                (o.metadata, o.spec.and_then(|s| s.template?.spec))
            }
        })
    }
}

impl<'a> WorkloadObject<'a> {
    /// Finds the pod spec in an object of `kind`, keeping it raw.
    pub fn read(kind: WorkloadKind, object: &'a str) -> Result<Self, ReadError> {
        let (meta, pod_spec) = decode_seed(object, PodSpecAt::<&'a RawValue>(kind, PhantomData))?;
        Ok(WorkloadObject {
            info: ObjectInfo::new(meta, false),
            pod_spec,
            pod_spec_path: kind.pod_spec_path(),
        })
    }

    /// Reads the pre-1.22 `EphemeralContainers` object of the `pods/ephemeralcontainers`
    /// subresource.
    pub fn read_ephemeral_containers(object: &'a str) -> Result<Self, ReadError> {
        let o: EphemeralContainersObject<'a> = decode(object)?;
        Ok(WorkloadObject {
            info: ObjectInfo::new(o.metadata, true),
            pod_spec: o.ephemeral_containers,
            pod_spec_path: "ephemeralContainers",
        })
    }

    /// Decodes the pod spec (an empty spec when the object has none).
    pub fn pod_spec(&self) -> Result<PodSpec<'a>, ReadError> {
        let Some(raw) = self.pod_spec else {
            return Ok(PodSpec::default());
        };
        let prefix = |mut e: ReadError| {
            e.path = if e.path.is_empty() || e.path == "." {
                self.pod_spec_path.to_owned()
            } else {
                format!("{}.{}", self.pod_spec_path, e.path)
            };
            e
        };
        if self.info.ephemeral_list {
            let list: Vec<Container<'a>> = decode(raw.get()).map_err(prefix)?;
            Ok(PodSpec {
                ephemeral_containers: Some(list),
                ..PodSpec::default()
            })
        } else {
            decode(raw.get()).map_err(prefix)
        }
    }
}

/// Decodes `json`; on a data error decodes again, tracking the path, to say which field
/// broke. Syntax errors keep their position instead.
pub(crate) fn decode<'a, T: Deserialize<'a>>(json: &'a str) -> Result<T, ReadError> {
    decode_seed(json, PhantomData::<T>)
}

/// [`decode`] with a seed: skimmed ([`crate::skim`]), and read by serde_json whenever
/// skimming does not take the text, so that its errors are serde_json's.
pub(crate) fn decode_seed<'a, S>(json: &'a str, seed: S) -> Result<S::Value, ReadError>
where
    S: DeserializeSeed<'a> + Copy,
{
    match crate::skim::from_str(json, seed) {
        Ok(value) => Ok(value),
        Err(_) => decode_strictly(json, seed),
    }
}

/// [`decode_seed`] by serde_json alone.
pub(crate) fn decode_strictly<'a, S>(json: &'a str, seed: S) -> Result<S::Value, ReadError>
where
    S: DeserializeSeed<'a> + Copy,
{
    let mut de = serde_json::Deserializer::from_str(json);
    let first = match seed
        .deserialize(&mut de)
        .and_then(|value| de.end().map(|()| value))
    {
        Ok(value) => return Ok(value),
        Err(first) => first,
    };
    if first.classify() != serde_json::error::Category::Data {
        return Err(ReadError {
            path: String::new(),
            message: format!("invalid JSON: {first}"),
        });
    }
    let mut de = serde_json::Deserializer::from_str(json);
    let mut track = serde_path_to_error::Track::new();
    match seed.deserialize(serde_path_to_error::Deserializer::new(&mut de, &mut track)) {
        Err(e) => Err(ReadError {
            path: track.path().to_string(),
            message: without_position(&e),
        }),
        Ok(_) => Err(ReadError {
            path: String::new(),
            message: without_position(&first),
        }),
    }
}

/// serde_json's message without " at line L column C" (positions in a nested raw value
/// mean nothing to a user).
fn without_position(e: &serde_json::Error) -> String {
    let message = e.to_string();
    match message.rfind(" at line ") {
        Some(i) => message[..i].to_owned(),
        None => message,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_schema_names_exactly_the_supported_kinds() {
        let names: Vec<&str> = WorkloadKind::ALL.iter().map(|k| k.as_str()).collect();
        assert_eq!(names, portcullis_crds::schema::WORKLOAD_KINDS);
    }

    /// Image references are borrowed from the body (serde alone would copy an
    /// `Option<Cow<str>>`: an allocation per container); one with an escape is decoded.
    #[test]
    fn image_references_are_borrowed_unless_escaped() {
        let spec: PodSpec<'_> = decode(
            r#"{"containers": [{"name": "a", "image": "ghcr.io/acme/a:1"},
                               {"name": "b", "image": "ghcr.io\/acme/b:1"}],
                "volumes": [{"name": "v", "image": {"reference": "ghcr.io/acme/v:1"}}]}"#,
        )
        .unwrap();
        let containers = spec.containers.unwrap();
        assert!(matches!(
            containers[0].image,
            Some(Cow::Borrowed("ghcr.io/acme/a:1"))
        ));
        assert!(
            matches!(&containers[1].image, Some(Cow::Owned(image)) if image == "ghcr.io/acme/b:1")
        );
        let volume = &spec.volumes.unwrap()[0];
        let reference = volume
            .image
            .as_ref()
            .and_then(|image| image.reference.as_ref());
        assert!(matches!(reference, Some(Cow::Borrowed("ghcr.io/acme/v:1"))));
    }
}
