//! `carbon-kube-sim`: the replay simulator's command line. It ships apart
//! from the agent, which never needs it on a node.

use std::process::ExitCode;

use carbon_kube_sim::cli::{self, SimulateArgs};
use clap::Parser;

/// Replay real intensity traces against a workload and compare policies (no cluster needed).
#[derive(Debug, Parser)]
#[command(name = "carbon-kube-sim", version)]
struct Cli {
    #[command(flatten)]
    args: SimulateArgs,
}

fn main() -> ExitCode {
    match cli::run(&Cli::parse().args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("carbon-kube-sim: {e}");
            ExitCode::FAILURE
        }
    }
}
