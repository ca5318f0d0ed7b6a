//! Portcullis's decision engine and admission webhook.
//!
//! The engine ([`engine::decide`]) is pure: a compiled [`policy::PolicySet`] snapshot, a
//! workload, scan results and the time in; a [`engine::Decision`] out. The server
//! ([`server`]) answers AdmissionReviews from a snapshot it loads per request.

pub mod admission;
pub mod auditlog;
pub mod client_cert;
pub mod cluster;
mod counters;
pub mod decisions;
pub mod duration;
pub mod engine;
pub mod glob;
pub mod image;
pub mod mutate;
pub mod policy;
pub mod scan;
pub mod server;
mod skim;
#[cfg(feature = "testing")]
pub mod testing;
pub mod tls;
pub mod workload;
