//! Shared by the controller tests.

pub mod fake_api;
