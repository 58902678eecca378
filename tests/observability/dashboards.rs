//! The Grafana dashboards in grafana/, read as Grafana would: panels (also
//! inside rows), their PromQL targets, and template variables.

use std::path::PathBuf;

use serde_json::Value;

/// One PromQL query of a dashboard, with where it comes from.
#[derive(Debug, Clone)]
pub struct Query {
    pub dashboard: String,
    pub panel: String,
    pub expr: String,
}

pub fn dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("grafana")
}

/// Every dashboard as (file name, JSON), sorted by file name.
pub fn load_all() -> Vec<(String, Value)> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir())
        .expect("grafana/ exists")
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .collect();
    files.sort();
    files
        .iter()
        .map(|path| {
            let text = std::fs::read_to_string(path).expect("readable dashboard");
            let json = serde_json::from_str(&text)
                .unwrap_or_else(|e| panic!("{} is not valid JSON: {e}", path.display()));
            (
                path.file_name()
                    .unwrap_or_default()
                    .to_string_lossy()
                    .into_owned(),
                json,
            )
        })
        .collect()
}

/// Panels, with those nested in collapsed rows, rows themselves excluded.
pub fn panels(dashboard: &Value) -> Vec<&Value> {
    let mut out = Vec::new();
    for panel in dashboard["panels"].as_array().into_iter().flatten() {
        if panel["type"] == "row" {
            out.extend(panel["panels"].as_array().into_iter().flatten());
        } else {
            out.push(panel);
        }
    }
    out
}

pub fn panel_queries(name: &str, dashboard: &Value) -> Vec<Query> {
    panels(dashboard)
        .into_iter()
        .flat_map(|panel| {
            let title = panel["title"].as_str().unwrap_or("?").to_string();
            panel["targets"]
                .as_array()
                .into_iter()
                .flatten()
                .map(move |t| Query {
                    dashboard: name.to_string(),
                    panel: title.clone(),
                    expr: t["expr"].as_str().unwrap_or_default().to_string(),
                })
        })
        .collect()
}

/// Query variables' `label_values(metric, label)` as PromQL that returns
/// the same label values.
pub fn variable_queries(name: &str, dashboard: &Value) -> Vec<Query> {
    let variables = dashboard["templating"]["list"]
        .as_array()
        .into_iter()
        .flatten();
    variables
        .filter(|v| v["type"] == "query")
        .map(|v| {
            let definition = v["query"]["query"].as_str().unwrap_or_default();
            let args = definition
                .strip_prefix("label_values(")
                .and_then(|rest| rest.strip_suffix(')'))
                .unwrap_or_else(|| panic!("{name}: unexpected variable query {definition}"));
            let (metric, label) = args.rsplit_once(',').expect("label_values(metric, label)");
            Query {
                dashboard: name.to_string(),
                panel: format!("variable {}", v["name"].as_str().unwrap_or("?")),
                expr: format!("count by ({}) ({})", label.trim(), metric.trim()),
            }
        })
        .collect()
}

/// Grafana's variables replaced for a short test run scraped every second:
/// `All` for template variables, and windows that hold a few scrapes.
pub fn substitute(expr: &str) -> String {
    let value = |name: &str| -> &str {
        match name {
            "zone" | "node" => ".*",
            "__rate_interval" => "10s",
            "__interval" => "5s",
            "__interval_ms" => "5000",
            "__range" => "1m",
            "__range_s" => "60",
            other => panic!("unknown Grafana variable ${other} in {expr}"),
        }
    };
    let mut out = String::new();
    let mut rest = expr;
    while let Some(at) = rest.find('$') {
        out.push_str(&rest[..at]);
        let after = &rest[at + 1..];
        let (name, tail) = match after.strip_prefix('{') {
            Some(braced) => braced.split_once('}').expect("closed ${...}"),
            None => {
                let end = after
                    .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                    .unwrap_or(after.len());
                after.split_at(end)
            }
        };
        out.push_str(value(name));
        rest = tail;
    }
    out.push_str(rest);
    out
}

/// The `carbon_kube_*` metric names an expression uses, histogram suffixes removed.
pub fn metric_names(expr: &str) -> Vec<String> {
    let mut names = Vec::new();
    let mut rest = expr;
    while let Some(at) = rest.find("carbon_kube_") {
        let tail = &rest[at..];
        let end = tail
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(tail.len());
        let name = &tail[..end];
        let base = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|s| name.strip_suffix(s).filter(|b| b.ends_with("_seconds")))
            .unwrap_or(name);
        names.push(base.to_string());
        rest = &tail[end..];
    }
    names
}
