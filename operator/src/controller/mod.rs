//! `portcullis run`'s controllers: the watches that feed the webhook's policy set and the
//! audit-log receiver, the status writers, and the cluster inputs of the scan service
//! (credentials, VulnerabilityReports).

pub mod events;
pub mod index;
pub mod lookup;
pub mod monitor;
pub mod scans;
pub mod status;
pub mod watch;
