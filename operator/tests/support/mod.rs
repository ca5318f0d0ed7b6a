//! Shared by the controller tests.

#![allow(dead_code)] // each test binary uses a different part

pub mod fake_api;
