//! A real Prometheus (Debian package `prometheus`) scraping test agents, and
//! the parts of its HTTP API the tests read.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::Value;

use crate::support::cluster::{free_port, require_tool, tool, wait_for};

pub const INSTALL: &str = "install Prometheus and promtool: apt-get install prometheus \
    (tests/tools/install.sh does it when run as root)";

pub struct Prometheus {
    child: Child,
    pub addr: String,
    log: PathBuf,
}

impl Prometheus {
    /// Scrapes `targets` (host:port) every second as job `carbon-kube`, with `rules` loaded.
    pub fn start(dir: &Path, targets: &[String], rules: &Path) -> Self {
        let scrape = serde_json::json!([{
            "job_name": "carbon-kube",
            "static_configs": [{ "targets": targets }],
        }]);
        Self::start_with(dir, scrape, &[rules])
    }

    /// Runs `scrape_configs` (a JSON array of Prometheus scrape configs) every second.
    pub fn start_with(dir: &Path, scrape_configs: Value, rules: &[&Path]) -> Self {
        let config = serde_json::json!({
            "global": { "scrape_interval": "1s", "evaluation_interval": "1s" },
            "rule_files": rules,
            "scrape_configs": scrape_configs,
        });
        Self::spawn(dir, config, &dir.join("tsdb"), &[])
    }

    /// Serves the blocks in `tsdb` (e.g. backfilled by promtool), however old,
    /// scraping nothing; blocks are neither compacted nor expired.
    pub fn serve_blocks(dir: &Path, tsdb: &Path) -> Self {
        let flags = [
            "--storage.tsdb.retention.time=100y",
            "--storage.tsdb.min-block-duration=2h",
            "--storage.tsdb.max-block-duration=2h",
        ];
        Self::spawn(dir, serde_json::json!({}), tsdb, &flags)
    }

    fn spawn(dir: &Path, config: Value, tsdb: &Path, flags: &[&str]) -> Self {
        require_tool("prometheus", INSTALL);
        let addr = format!("127.0.0.1:{}", free_port());
        // JSON is YAML, so the config needs no YAML writer.
        let config_file = dir.join("prometheus.yml");
        std::fs::write(&config_file, config.to_string()).expect("writing prometheus.yml");
        let log = dir.join("prometheus.log");
        let out = std::fs::File::create(&log).expect("prometheus log");
        let child = Command::new(tool("prometheus"))
            .arg(format!("--config.file={}", config_file.display()))
            .arg(format!("--storage.tsdb.path={}", tsdb.display()))
            .arg(format!("--web.listen-address={addr}"))
            .arg("--log.level=warn")
            .args(flags)
            .stdin(Stdio::null())
            .stdout(out.try_clone().expect("log file"))
            .stderr(out)
            .spawn()
            .expect("starting prometheus");
        let prometheus = Self { child, addr, log };
        wait_for("Prometheus ready", Duration::from_secs(60), || {
            get(&prometheus.addr, "/-/ready").filter(|(status, _)| *status == 200)
        });
        prometheus
    }

    /// The result vector of an instant query, or the error Prometheus gave.
    pub fn query(&self, promql: &str) -> Result<Vec<Value>, String> {
        self.query_path(format!("/api/v1/query?query={}", percent_encode(promql)))
    }

    /// The same, evaluated at `at` (Unix seconds).
    pub fn query_at(&self, promql: &str, at: i64) -> Result<Vec<Value>, String> {
        let query = percent_encode(promql);
        self.query_path(format!("/api/v1/query?query={query}&time={at}"))
    }

    fn query_path(&self, path: String) -> Result<Vec<Value>, String> {
        let (status, body) = get(&self.addr, &path).ok_or("no answer from Prometheus")?;
        let reply: Value =
            serde_json::from_str(&body).map_err(|e| format!("{status}: {e}: {body}"))?;
        if reply["status"] != "success" {
            return Err(format!("{status}: {}", reply["error"]));
        }
        match &reply["data"]["result"] {
            Value::Array(items) => Ok(items.clone()),
            // Scalars (e.g. `vector(0)` folded) count as one result.
            other => Ok(vec![other.clone()]),
        }
    }

    /// Every loaded rule as (name, health, last error).
    pub fn rules(&self) -> Vec<(String, String, String)> {
        let (_, body) = get(&self.addr, "/api/v1/rules").expect("rules API");
        let reply: Value = serde_json::from_str(&body).expect("rules JSON");
        let groups = reply["data"]["groups"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        groups
            .iter()
            .flat_map(|g| g["rules"].as_array().cloned().unwrap_or_default())
            .map(|r| {
                let text = |k: &str| r[k].as_str().unwrap_or_default().to_string();
                (text("name"), text("health"), text("lastError"))
            })
            .collect()
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// An HTTP/1.0 GET returning status and body (errors included, unlike `http_get`).
pub fn get(addr: &str, path: &str) -> Option<(u16, String)> {
    let mut stream = TcpStream::connect(addr).ok()?;
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .ok()?;
    write!(stream, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).ok()?;
    let (head, body) = response.split_once("\r\n\r\n")?;
    let status = head.split_whitespace().nth(1)?.parse().ok()?;
    Some((status, body.to_string()))
}

fn percent_encode(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}
