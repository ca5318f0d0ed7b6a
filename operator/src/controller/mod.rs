//! `portcullis run`'s controllers: the watches that feed the webhook's policy set, and
//! the status writers.

pub mod index;
pub mod status;
pub mod watch;
