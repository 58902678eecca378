//! carbon-kube: a carbon-aware Kubernetes node agent.
//!
//! This crate is the agent's edges: providers, election, the reconciler, the
//! poller, the deferral and migration controllers, metrics and the CLI. Every
//! decision they act on is the pure core's (`carbon-kube-core`), re-exported
//! here under the same module names so each edge reads `crate::decision`.

#![forbid(unsafe_code)]

pub use carbon_kube_core::{
    accounting, budget, carbon, decision, duration, learner, planner, power, quantity, taint,
    tuner, zones,
};

pub mod attribution;
pub mod cleanup;
pub mod cli;
pub mod config;
pub mod crd;
pub mod deferral;
pub mod election;
pub mod emissions;
pub mod error;
pub mod events;
pub mod host;
pub mod kubeclient;
pub mod kueue;
pub mod meters;
pub mod metrics;
pub mod migration;
pub mod node;
pub mod poller;
pub mod providers;
pub mod reconcile;
pub mod report;
pub mod resources;
pub mod supervise;
#[cfg(test)]
mod testing;
pub mod tuning;
pub mod watches;
