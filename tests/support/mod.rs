//! Shared test support. Each test binary uses only part of it.
#![allow(dead_code)]

pub mod api_proxy;
pub mod carbon_api;
pub mod cluster;
pub mod deploy;
pub mod kueue;
pub mod nodes;
pub mod procfs;
pub mod scenario;
