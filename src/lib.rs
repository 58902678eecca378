//! carbon-kube: a carbon-aware Kubernetes node agent.
//!
//! Pure decisions (zones, power, taint decision, budget, lease evaluation)
//! live in modules without Kubernetes I/O; the async edges (election, poller,
//! reconcile, emissions, metrics server) are thin.

#![forbid(unsafe_code)]

pub mod attribution;
pub mod budget;
pub mod carbon;
pub mod cleanup;
pub mod cli;
pub mod config;
pub mod crd;
pub mod decision;
pub mod deferral;
pub mod duration;
pub mod election;
pub mod emissions;
pub mod learner;
pub mod metrics;
pub mod migration;
pub mod node;
pub mod planner;
pub mod poller;
pub mod power;
pub mod providers;
pub mod reconcile;
pub mod resources;
pub mod simulator;
pub mod supervise;
pub mod tuner;
pub mod tuning;
pub mod watches;
pub mod zones;
