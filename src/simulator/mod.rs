//! Replay simulator: real intensity traces, a workload and a cluster, under
//! the agent's own decision code and the policies it is compared with.
//!
//! - [`trace`] loads the shipped traces; [`forecast`] adds the paper's noise.
//! - [`paper`] reproduces Let's Wait Awhile (Wiesner et al., Middleware '21).
//! - [`workload`], [`cluster`] and [`policy`] replay jobs on nodes in several
//!   zones; [`report`] and [`svg`] write the table and the plots.

pub mod agent;
pub mod engine;
pub mod forecast;
pub mod numpy_rng;
pub mod paper;
pub mod plan;
pub mod trace;
pub mod workload;

use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum SimError {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{path}, line {line}: {why}")]
    Trace { path: PathBuf, line: usize, why: String },
    #[error("{0}")]
    Invalid(String),
    #[error(transparent)]
    Rng(#[from] numpy_rng::NumpyRngError),
}

impl SimError {
    pub fn io(path: &Path, source: std::io::Error) -> Self {
        Self::Io { path: path.to_path_buf(), source }
    }
}
