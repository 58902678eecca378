//! carbon-kube's core: every decision the agent and the simulator share, as
//! pure functions of plain data. Nothing here talks to Kubernetes, a carbon
//! API or the clock; the agent crate owns those edges.
//!
//! - [`carbon`] and [`zones`]: grid zones, readings and the region table.
//! - [`power`]: the CCF power model and CO2 arithmetic.
//! - [`decision`] and [`budget`]: whether a zone's nodes are tainted; [`taint`]: with which effect.
//! - [`planner`] and [`deferral`]: when deferred work should start.
//! - [`migration`]: when an opted-in pod may be moved.
//! - [`tuner`] and [`learner`]: the threshold tuner and the outcome learner.
//! - [`accounting`]: hourly energy and CO2e from the agents' counters, for reports.
//! - [`duration`] and [`quantity`]: the one grammar for each.

#![forbid(unsafe_code)]

pub mod accounting;
pub mod budget;
pub mod carbon;
pub mod decision;
pub mod deferral;
pub mod duration;
pub mod learner;
pub mod migration;
pub mod planner;
pub mod power;
pub mod quantity;
pub mod taint;
pub mod tuner;
pub mod zones;
