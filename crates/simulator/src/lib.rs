//! Replay simulator: real intensity traces, a workload and a cluster, under
//! the agent's own decision code and the policies it is compared with.
//!
//! - [`trace`] loads the shipped traces; [`forecast`] adds forecast error
//!   (the paper's i.i.d. noise, or an AR(1) error growing with the horizon).
//! - [`paper`] reproduces Let's Wait Awhile (Wiesner et al., Middleware '21),
//!   and runs its nightly experiment on any hourly year.
//! - [`workload`], [`agent`], [`engine`] and [`plan`] replay jobs on nodes in
//!   several zones; [`bound`] schedules them offline with capacity;
//!   [`experiment`] runs every policy on a year and [`tune`] pits the tuner
//!   against the best static threshold; [`fleet`] dispatches jobs across
//!   clusters, one per zone, as MultiKueue would.
//! - [`report`] and [`svg`] write the table and the plots; [`cli`] is
//!   `carbon-kube-sim`.

pub mod agent;
pub mod bound;
pub mod cli;
pub mod engine;
pub mod experiment;
pub mod fleet;
pub mod forecast;
pub mod numpy_rng;
pub mod paper;
pub mod plan;
pub mod report;
pub mod svg;
pub mod trace;
pub mod tune;
pub mod workload;

use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum SimError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}, line {line}: {why}")]
    Trace {
        path: PathBuf,
        line: usize,
        why: String,
    },
    #[error("{0}")]
    Invalid(String),
    #[error(transparent)]
    Rng(#[from] numpy_rng::NumpyRngError),
}

impl SimError {
    pub fn io(path: &Path, source: std::io::Error) -> Self {
        Self::Io {
            path: path.to_path_buf(),
            source,
        }
    }

    /// Reads a CSV file whole; the closure makes the error for one of its lines.
    pub fn read_csv(path: &Path) -> Result<(String, impl Fn(usize, String) -> Self + '_), Self> {
        let text = std::fs::read_to_string(path).map_err(|e| Self::io(path, e))?;
        let bad = |line: usize, why: String| Self::Trace {
            path: path.to_path_buf(),
            line,
            why,
        };
        Ok((text, bad))
    }
}
