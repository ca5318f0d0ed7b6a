//! What the CRD schemas check by pattern, so the API server refuses it at `kubectl
//! apply`. The full validation (what a pattern cannot say) is `policy::compile` in
//! portcullis-webhook, run by the admission webhook, the controller, local mode and
//! `portcullis check` alike.

/// The characters a repository glob may hold: those of `registry[:port]/path`
/// (IPv6 hosts in brackets), and `*`.
pub const REPOSITORY_GLOB: &str = r"^[a-z0-9._:/*\[\]-]+$";
/// The characters a namespace glob may hold: a DNS label's, and `*`.
pub const NAMESPACE_GLOB: &str = r"^[a-z0-9*-]+$";
/// A Go duration (`30s`, `168h`, `1h30m`), or `0`.
pub const GO_DURATION: &str = r"^(0|([0-9]+(\.[0-9]+)?(ns|us|µs|ms|s|m|h))+)$";
/// A vulnerability ID: no whitespace.
pub const VULNERABILITY_ID: &str = r"^\S+$";
/// A scanner URL: https only.
pub const HTTPS_URL: &str = r"^https://";

/// The workload kinds a policy may name in `match.kinds`.
pub const WORKLOAD_KINDS: [&str; 8] = [
    "Pod",
    "Deployment",
    "ReplicaSet",
    "StatefulSet",
    "DaemonSet",
    "Job",
    "CronJob",
    "ReplicationController",
];

/// Linux capabilities a pod spec may name (without `CAP_`), and `ALL`.
pub const CAPABILITIES: &[&str] = &[
    "ALL",
    "AUDIT_CONTROL",
    "AUDIT_READ",
    "AUDIT_WRITE",
    "BLOCK_SUSPEND",
    "BPF",
    "CHECKPOINT_RESTORE",
    "CHOWN",
    "DAC_OVERRIDE",
    "DAC_READ_SEARCH",
    "FOWNER",
    "FSETID",
    "IPC_LOCK",
    "IPC_OWNER",
    "KILL",
    "LEASE",
    "LINUX_IMMUTABLE",
    "MAC_ADMIN",
    "MAC_OVERRIDE",
    "MKNOD",
    "NET_ADMIN",
    "NET_BIND_SERVICE",
    "NET_BROADCAST",
    "NET_RAW",
    "PERFMON",
    "SETFCAP",
    "SETGID",
    "SETPCAP",
    "SETUID",
    "SYSLOG",
    "SYS_ADMIN",
    "SYS_BOOT",
    "SYS_CHROOT",
    "SYS_MODULE",
    "SYS_NICE",
    "SYS_PACCT",
    "SYS_PTRACE",
    "SYS_RAWIO",
    "SYS_RESOURCE",
    "SYS_TIME",
    "SYS_TTY_CONFIG",
    "WAKE_ALARM",
];

/// A capability as a pod spec may write it: any case, `CAP_` prefix optional.
pub fn capability_pattern() -> String {
    format!("^(?i)(CAP_)?({})$", CAPABILITIES.join("|"))
}

/// One of [`WORKLOAD_KINDS`].
pub fn workload_kind_pattern() -> String {
    format!("^({})$", WORKLOAD_KINDS.join("|"))
}
