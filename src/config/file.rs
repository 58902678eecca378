//! The optional `--config` YAML file, keyed by flag name: its settings become
//! flags below those given on the command line or in the environment, so that
//! clap parses and types every value the same way, wherever it came from.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::path::Path;

use clap::parser::ValueSource;
use clap::{CommandFactory, FromArgMatches};

use crate::cli::{AgentArgs, Cli, Command};
use crate::error::ConfigError;

/// Parses the command line, folding in `--config FILE` below flags and environment.
pub fn parse_cli() -> Result<Cli, clap::Error> {
    parse_cli_from(std::env::args_os().collect())
}

pub fn parse_cli_from(mut args: Vec<OsString>) -> Result<Cli, clap::Error> {
    let matches = Cli::command().try_get_matches_from(&args)?;
    if let Some(("agent", sub)) = matches.subcommand() {
        if let Some(path) = sub.get_one::<std::path::PathBuf>("config") {
            let extra = file_args(path, sub).map_err(|e| {
                Cli::command().error(clap::error::ErrorKind::InvalidValue, e.to_string())
            })?;
            args.extend(extra);
            let matches = Cli::command().try_get_matches_from(&args)?;
            return Cli::from_arg_matches(&matches);
        }
    }
    Cli::from_arg_matches(&matches)
}

/// Flags for the settings in a config file that neither a flag nor the environment set.
fn file_args(path: &Path, matches: &clap::ArgMatches) -> Result<Vec<OsString>, ConfigError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| ConfigError::new("config", format!("cannot read {}: {e}", path.display())))?;
    // kube reads kubeconfigs with serde-saphyr: one YAML parser in the binary.
    let entries: BTreeMap<String, serde_json::Value> =
        serde_saphyr::from_str(&text).map_err(|e| {
            ConfigError::new(
                "config",
                format!("{} is not a YAML map: {e}", path.display()),
            )
        })?;
    let known: Vec<String> = Cli::command()
        .find_subcommand("agent")
        .map(|agent| {
            agent
                .get_arguments()
                .map(|a| a.get_id().to_string())
                .collect()
        })
        .unwrap_or_default();
    let mut out = Vec::new();
    for (key, value) in entries {
        let id = key.replace('-', "_");
        if !known.contains(&id) || id == "config" {
            return Err(ConfigError::new(
                "config",
                format!("{}: unknown setting {key:?}", path.display()),
            ));
        }
        if matches!(
            matches.value_source(&id),
            Some(ValueSource::CommandLine | ValueSource::EnvVariable)
        ) {
            continue;
        }
        let text = match value {
            serde_json::Value::Array(items) => items
                .iter()
                .map(scalar_text)
                .collect::<Option<Vec<_>>>()
                .map(|v| v.join(",")),
            other => scalar_text(&other),
        }
        .ok_or_else(|| {
            ConfigError::new(
                "config",
                format!("{}: {key} must be a scalar or a list", path.display()),
            )
        })?;
        out.push(OsString::from(format!("--{}={text}", id.replace('_', "-"))));
    }
    Ok(out)
}

fn scalar_text(value: &serde_json::Value) -> Option<String> {
    match value {
        serde_json::Value::String(s) => Some(s.clone()),
        serde_json::Value::Number(n) => Some(n.to_string()),
        serde_json::Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

/// The agent settings from a parsed command line, for tests and `main`.
pub fn agent_args(cli: &Cli) -> Option<&AgentArgs> {
    match &cli.command {
        Command::Agent(args) => Some(args),
        _ => None,
    }
}
