//! Bounded fuzzing on stable, in the normal test suite: every provider
//! response parser and the config loader (`tests/fuzz/targets.rs`) get their
//! seed corpus, every kept regression input, and a few thousand generated
//! inputs each: mutated seeds (bit flips, splices, truncations, interesting
//! numbers and strings swapped in), random JSON built from the APIs' keys,
//! and random flags and YAML built from the agent's own flag list.
//!
//! Deterministic: the seed is fixed unless `FUZZ_SEED` is set; `FUZZ_CASES`
//! sets the number of generated inputs per target (default 20,000 for the
//! parsers and 3,000 for the config loader: about 10 s in all in a debug
//! build on two cores). A failing input is written to
//! `target/fuzz-failures/` and printed; keep it under
//! `tests/fuzz/regressions/<target>/` once fixed. For coverage-guided fuzzing
//! see `tests/fuzz/README.md` (cargo-fuzz).

#[path = "fuzz/targets.rs"]
mod targets;

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};
use std::time::Instant;

use clap::CommandFactory;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fuzz")
}

/// Generated inputs per target: parsers are cheap, the config loader
/// (clap, YAML, a temp file per input) is not.
fn cases(name: &str) -> usize {
    std::env::var("FUZZ_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(if name.starts_with("config") {
            3000
        } else {
            20_000
        })
}

fn seed() -> u64 {
    std::env::var("FUZZ_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0x00c0_2e55)
}

/// Files in `dir`, sorted, or none.
fn files(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut out: Vec<(String, Vec<u8>)> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| e.path().is_file())
        .map(|e| {
            (
                e.path().display().to_string(),
                std::fs::read(e.path()).unwrap_or_default(),
            )
        })
        .collect();
    out.sort();
    out
}

const JSON_KEYS: &[&str] = &[
    "zone",
    "carbonIntensity",
    "datetime",
    "isEstimated",
    "forecast",
    "data",
    "meta",
    "point_time",
    "value",
    "units",
    "signal_type",
    "region",
    "from",
    "to",
    "intensity",
    "actual",
    "regionid",
    "properties",
    "forecastGridData",
    "skyCover",
    "windSpeed",
    "uom",
    "values",
    "validTime",
];

const NUMBERS: &[&str] = &[
    "0",
    "-0",
    "-1",
    "1e308",
    "-1e308",
    "1e-400",
    "2500",
    "2500.0000001",
    "NaN",
    "Infinity",
    "99999999999999999999999",
    "18446744073709551616",
    "4294967296",
    "0.000000001",
    "100",
    "1048.41",
];

const STRINGS: &[&str] = &[
    "",
    "DE",
    "de",
    "FR",
    "GB",
    "CAISO_NORTH",
    "co2_moer",
    "percentile",
    "lbs_co2_per_mwh",
    "kg_co2_per_mwh",
    "wmoUnit:percent",
    "wmoUnit:km_h-1",
    "wmoUnit:kt",
    "wmoUnit:m_s-1",
    "2018-01-20T12:00Z",
    "2018-01-20T12:30Z",
    "2018-01-20T12:00:00+00:00/PT1H",
    "2018-01-20T12:00:00+00:00/P1000000Y",
    "2018-01-20T12:00:00+00:00/PT0S",
    "2018-01-20T12:00:00+00:00/-PT1H",
    "9999-12-31T23:59:59Z",
    "-009999-01-01T00:00:00Z",
    "1970-01-01T00:00:00Z",
    "2023-01-23T17:00:00.000Z",
    "https://api.weather.gov/gridpoints/HNX/53,100",
    "https://evil.example/gridpoints/HNX/53,100",
    "http://api.weather.gov/gridpoints/HNX/53,100",
    "https://api.weather.gov:8443/x",
    "https://user:pass@api.weather.gov/x",
    "//api.weather.gov/x",
    "Wed, 21 Oct 2015 07:28:00 GMT",
    "\u{0}",
    "\u{fffd}\u{202e}",
];

/// Values for flags: durations, numbers, zones, lists, URLs, junk.
const FLAG_VALUES: &[&str] = &[
    "",
    "0",
    "0s",
    "1ms",
    "3s",
    "2.5",
    "90m",
    "1.5h",
    "8760h",
    "8761h",
    "99999999999999999999",
    "18446744073709551615s",
    "1e3",
    "-1",
    "-1s",
    ".",
    "..5s",
    "5 m",
    "NaN",
    "inf",
    "-inf",
    "1e308",
    "300",
    "0.5",
    "1.0000001",
    "DE",
    "us-cal-ciso",
    "DE/FR",
    "-DE",
    "static",
    "electricity-maps,static",
    ",",
    "noaa,noaa,static",
    "US-CAL-CISO=CAISO_NORTH",
    "GB-EMIDS=9",
    "GB-EMIDS=99999999999",
    "=",
    "http://127.0.0.1:1",
    "ftp://x",
    "PreferNoSchedule",
    "NoSchedule",
    "NoExecute",
    "127.0.0.1:0",
    "[::1]:9464",
    "json",
    "text",
    "true",
];

const YAML_SCALARS: &[&str] = &[
    "null",
    "~",
    "true",
    "no",
    ".inf",
    ".nan",
    "-.inf",
    "0x10",
    "0o17",
    "1_000",
    "'quoted'",
    "\"tab\\there\"",
    "&a 5s",
    "*a",
    "!!binary aGVsbG8=",
    "{}",
    "[]",
    "[1, [2, 3]]",
    "{a: 1}",
    "|\n  block",
];

struct Gen {
    rng: StdRng,
    flags: Vec<String>,
}

impl Gen {
    fn pick<'a>(&mut self, items: &'a [&'a str]) -> &'a str {
        items[self.rng.random_range(0..items.len())]
    }

    fn json(&mut self, depth: u32) -> String {
        let kind = if depth == 0 {
            self.rng.random_range(0..3)
        } else {
            self.rng.random_range(0..6)
        };
        match kind {
            0 => self.pick(NUMBERS).to_string(),
            1 => serde_json::to_string(self.pick(STRINGS)).unwrap_or_default(),
            2 => self.pick(&["null", "true", "false"]).to_string(),
            3 => {
                let n = self.rng.random_range(0..4);
                let items: Vec<String> = (0..n).map(|_| self.json(depth - 1)).collect();
                format!("[{}]", items.join(","))
            }
            _ => {
                let n = self.rng.random_range(0..6);
                let fields: Vec<String> = (0..n)
                    .map(|_| {
                        let key = self.pick(JSON_KEYS);
                        format!("\"{key}\":{}", self.json(depth - 1))
                    })
                    .collect();
                format!("{{{}}}", fields.join(","))
            }
        }
    }

    /// A seed with a few byte-level or token-level changes.
    fn mutate(&mut self, seeds: &[Vec<u8>]) -> Vec<u8> {
        let mut data = seeds[self.rng.random_range(0..seeds.len())].clone();
        for _ in 0..self.rng.random_range(1..=4) {
            let len = data.len();
            match self.rng.random_range(0..9) {
                0 if len > 0 => {
                    let i = self.rng.random_range(0..len);
                    data[i] ^= 1 << self.rng.random_range(0..8);
                }
                1 if len > 0 => {
                    let i = self.rng.random_range(0..len);
                    data[i] = *b"\"{}[],:-.e0\\\0\xff"
                        .get(self.rng.random_range(0..15))
                        .unwrap_or(&b'x');
                }
                2 if len > 0 => {
                    let a = self.rng.random_range(0..len);
                    let b = self.rng.random_range(a..=len.min(a + 16));
                    data.drain(a..b);
                }
                3 if len > 0 => {
                    let a = self.rng.random_range(0..len);
                    let b = self.rng.random_range(a..=len.min(a + 32));
                    let chunk = data[a..b].to_vec();
                    let at = self.rng.random_range(0..=data.len());
                    data.splice(at..at, chunk);
                }
                4 => data.truncate(self.rng.random_range(0..=len)),
                5 => {
                    let other = &seeds[self.rng.random_range(0..seeds.len())];
                    let cut = self.rng.random_range(0..=len);
                    let from = self.rng.random_range(0..=other.len());
                    data.truncate(cut);
                    data.extend_from_slice(&other[from..]);
                }
                6 => data = replace_token(&data, &mut self.rng, is_number_byte, NUMBERS),
                7 => {
                    let quoted: Vec<String> = STRINGS
                        .iter()
                        .map(|s| serde_json::to_string(s).unwrap_or_default())
                        .collect();
                    let quoted: Vec<&str> = quoted.iter().map(String::as_str).collect();
                    data = replace_string(&data, &mut self.rng, &quoted);
                }
                _ => {
                    let token = self.pick(FLAG_VALUES).as_bytes().to_vec();
                    let at = self.rng.random_range(0..=data.len());
                    data.splice(at..at, token);
                }
            }
        }
        data
    }

    /// One flag per line, with a value from the pool, `=` or a separate line.
    fn args(&mut self) -> Vec<u8> {
        let n = self.rng.random_range(1..=8);
        let mut lines = Vec::new();
        for _ in 0..n {
            let flag = self.flags[self.rng.random_range(0..self.flags.len())].clone();
            let value = self.pick(FLAG_VALUES);
            match self.rng.random_range(0..4) {
                0 => lines.push(format!("--{flag}")),
                1 => {
                    lines.push(format!("--{flag}"));
                    lines.push(value.to_string());
                }
                _ => lines.push(format!("--{flag}={value}")),
            }
        }
        lines.join("\n").into_bytes()
    }

    /// A YAML map keyed by flag names (sometimes unknown ones).
    fn yaml(&mut self) -> Vec<u8> {
        let n = self.rng.random_range(0..=6);
        let mut out = String::new();
        for _ in 0..n {
            let key = if self.rng.random_range(0..10) == 0 {
                self.pick(&["config", "treshold", "node_name", "-", "? complex"])
                    .to_string()
            } else {
                self.flags[self.rng.random_range(0..self.flags.len())].clone()
            };
            let value = match self.rng.random_range(0..4) {
                0 => self.pick(YAML_SCALARS).to_string(),
                1 => format!("[{}, {}]", self.pick(FLAG_VALUES), self.pick(FLAG_VALUES)),
                _ => serde_json::to_string(self.pick(FLAG_VALUES)).unwrap_or_default(),
            };
            out.push_str(&format!("{key}: {value}\n"));
        }
        if self.rng.random_range(0..8) == 0 {
            out = self
                .pick(&["- a\n- b\n", "just text", "a: [", "\t:", "---\n...\n"])
                .to_string()
                + &out;
        }
        out.into_bytes()
    }
}

fn is_number_byte(b: u8) -> bool {
    b.is_ascii_digit() || b == b'.' || b == b'-' || b == b'e' || b == b'E' || b == b'+'
}

/// Replaces one maximal run of number bytes with a token.
fn replace_token(data: &[u8], rng: &mut StdRng, class: fn(u8) -> bool, tokens: &[&str]) -> Vec<u8> {
    let starts: Vec<usize> = (0..data.len())
        .filter(|&i| class(data[i]) && data[i].is_ascii_digit() && (i == 0 || !class(data[i - 1])))
        .collect();
    if starts.is_empty() {
        return data.to_vec();
    }
    let start = starts[rng.random_range(0..starts.len())];
    let end = (start..data.len())
        .find(|&i| !class(data[i]))
        .unwrap_or(data.len());
    let token = tokens[rng.random_range(0..tokens.len())].as_bytes();
    [&data[..start], token, &data[end..]].concat()
}

/// Replaces one JSON string literal with a token.
fn replace_string(data: &[u8], rng: &mut StdRng, tokens: &[&str]) -> Vec<u8> {
    let quotes: Vec<usize> = (0..data.len())
        .filter(|&i| data[i] == b'"' && (i == 0 || data[i - 1] != b'\\'))
        .collect();
    if quotes.len() < 2 {
        return data.to_vec();
    }
    let k = rng.random_range(0..quotes.len() / 2) * 2;
    let (start, end) = (quotes[k], quotes[k + 1] + 1);
    let token = tokens[rng.random_range(0..tokens.len())].as_bytes();
    [&data[..start], token, &data[end..]].concat()
}

/// Runs one input; a panic is returned with the input for the report.
fn attempt(target: targets::Target, input: &[u8]) -> Result<bool, String> {
    catch_unwind(AssertUnwindSafe(|| target(input))).map_err(|panic| {
        panic
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_else(|| "panic".into())
    })
}

fn fuzz(name: &str) {
    let target = targets::TARGETS
        .iter()
        .find(|(n, _)| *n == name)
        .map(|(_, f)| *f)
        .expect("a target");
    let corpus = files(&root().join("corpus").join(name));
    let regressions = files(&root().join("regressions").join(name));
    assert!(!corpus.is_empty(), "no seed corpus for {name}");
    let seeds: Vec<Vec<u8>> = corpus.iter().map(|(_, d)| d.clone()).collect();
    let flags: Vec<String> = carbon_kube::cli::Cli::command()
        .find_subcommand("agent")
        .map(|agent| {
            agent
                .get_arguments()
                .filter_map(|a| a.get_long().map(str::to_string))
                .collect()
        })
        .unwrap_or_default();
    let mut generator = Gen {
        rng: StdRng::seed_from_u64(seed() ^ name.len() as u64 ^ u64::from(name.as_bytes()[0])),
        flags,
    };

    let started = Instant::now();
    let mut failures = Vec::new();
    let mut accepted = 0;
    // Seeds and kept regressions first: each must still be handled.
    for (path, input) in corpus.iter().chain(&regressions) {
        match attempt(target, input) {
            Ok(ok) => accepted += usize::from(ok),
            Err(panic) => failures.push((path.clone(), input.clone(), panic)),
        }
    }
    let total = cases(name);
    for case in 0..total {
        let input = match (name, case % 3) {
            ("config_args", 0 | 1) => generator.args(),
            ("config_yaml", 0 | 1) => generator.yaml(),
            ("retry_after" | "valid_time" | "config_args" | "config_yaml", _) => {
                generator.mutate(&seeds)
            }
            (_, 0) => generator.json(4).into_bytes(),
            _ => generator.mutate(&seeds),
        };
        match attempt(target, &input) {
            Ok(ok) => accepted += usize::from(ok),
            Err(panic) => {
                let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/fuzz-failures");
                let _ = std::fs::create_dir_all(&dir);
                let file = dir.join(format!("{name}-{case}"));
                let _ = std::fs::write(&file, &input);
                failures.push((file.display().to_string(), input, panic));
            }
        }
    }
    println!(
        "{name}: {} seeds and regressions + {total} generated inputs in {:.1?}, {accepted} accepted (seed {})",
        corpus.len() + regressions.len(),
        started.elapsed(),
        seed()
    );
    if !failures.is_empty() {
        let shown: Vec<String> = failures
            .iter()
            .take(5)
            .map(|(file, input, panic)| {
                format!(
                    "{file}: {panic}\n    input: {:?}",
                    String::from_utf8_lossy(input)
                )
            })
            .collect();
        panic!(
            "{name}: {} of the inputs panicked:\n{}",
            failures.len(),
            shown.join("\n")
        );
    }
}

#[test]
fn electricity_maps_latest() {
    fuzz("em_latest");
}

#[test]
fn electricity_maps_forecast() {
    fuzz("em_forecast");
}

#[test]
fn watttime_forecast() {
    fuzz("watttime");
}

#[test]
fn uk_national() {
    fuzz("uk_national");
}

#[test]
fn uk_regional() {
    fuzz("uk_regional");
}

#[test]
fn noaa_points() {
    fuzz("noaa_points");
}

#[test]
fn noaa_grid() {
    fuzz("noaa_grid");
}

#[test]
fn retry_after_header() {
    fuzz("retry_after");
}

#[test]
fn noaa_valid_time() {
    fuzz("valid_time");
}

#[test]
fn config_flags() {
    fuzz("config_args");
}

#[test]
fn config_file() {
    fuzz("config_yaml");
}

/// Every target has a seed corpus and a test here.
#[test]
fn every_target_is_run() {
    let source = include_str!("fuzz_parsers.rs");
    for (name, _) in targets::TARGETS {
        assert!(
            root().join("corpus").join(name).is_dir(),
            "no corpus for {name}"
        );
        assert!(
            source.contains(&format!("fuzz(\"{name}\")")),
            "no test runs {name}"
        );
    }
}
