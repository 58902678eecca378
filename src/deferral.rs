//! Deferral: the leader holds pods gated with [`GATE`] and releases each when
//! the core's deferral planner says so (see [`carbon_kube_core::deferral`]).
//! [`controller`] is the leader's loop; the plan is the core's.

pub use carbon_kube_core::deferral::*;

pub mod controller;
