//! RAPL energy counters under `class/powercap/intel-rapl:*` (Intel, and AMD
//! Zen since Linux 5.8): one `package-N` zone per socket and, where the
//! platform reports it, a `dram` subzone each. `core`, `uncore` and `psys`
//! zones are left out: the first two are inside the package figure, the last
//! is the whole platform and would count the package twice.
//!
//! Since Linux 5.10 (the PLATYPUS side channel) `energy_uj` is readable by
//! root only, so in a pod RAPL needs the chart's opt-in `power.rapl.enabled`.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use crate::power::measured::{Part, PartKind, Source, energy_delta_uj, watts_from_energy};

/// Energy counters read at the previous sample, by zone directory.
pub struct Rapl {
    dir: PathBuf,
    previous: HashMap<String, (Instant, u64)>,
}

/// One read of every zone: watts of the zones that have a previous reading,
/// and the zones present whose counters could not be read.
#[derive(Debug, Default)]
pub struct RaplRead {
    pub parts: Vec<Part>,
    /// Zones whose counters were read, watts or not (the first read is a baseline).
    pub readable: usize,
    pub unreadable: Vec<String>,
}

impl Rapl {
    pub fn new(sysfs_root: &Path) -> Self {
        Self {
            dir: sysfs_root.join("class/powercap"),
            previous: HashMap::new(),
        }
    }

    pub fn read(&mut self, now: Instant) -> RaplRead {
        let mut out = RaplRead::default();
        let Ok(entries) = std::fs::read_dir(&self.dir) else {
            return out;
        };
        let mut zones: Vec<String> = entries
            .filter_map(|e| e.ok()?.file_name().into_string().ok())
            .filter(|name| name.starts_with("intel-rapl:"))
            .collect();
        zones.sort();
        let mut seen = HashMap::new();
        for zone in zones {
            let dir = self.dir.join(&zone);
            let Ok(name) = std::fs::read_to_string(dir.join("name")) else {
                continue;
            };
            let name = name.trim();
            let kind = match name {
                "dram" => PartKind::Dram,
                n if n.starts_with("package") => PartKind::Cpu,
                _ => continue,
            };
            let (Some(energy), Some(range)) = (
                read_u64(&dir.join("energy_uj")),
                read_u64(&dir.join("max_energy_range_uj")),
            ) else {
                out.unreadable.push(zone);
                continue;
            };
            out.readable += 1;
            if let Some(&(then, before)) = self.previous.get(&zone)
                && let Some(delta) = energy_delta_uj(before, energy, range)
                && let Some(watts) = watts_from_energy(delta, now.duration_since(then))
            {
                out.parts.push(Part {
                    kind,
                    device: format!("{zone}/{name}"),
                    watts,
                    source: Source::Rapl,
                });
            }
            seen.insert(zone, (now, energy));
        }
        // Zones that went away lose their baseline, so one that comes back starts afresh.
        self.previous = seen;
        out
    }
}

fn read_u64(path: &Path) -> Option<u64> {
    std::fs::read_to_string(path).ok()?.trim().parse().ok()
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::meters::testing::FakeSys;

    fn zone(sys: &FakeSys, zone: &str, name: &str, energy: u64, range: u64) {
        let dir = format!("class/powercap/{zone}");
        sys.write(&format!("{dir}/name"), name);
        sys.write(&format!("{dir}/energy_uj"), &energy.to_string());
        sys.write(&format!("{dir}/max_energy_range_uj"), &range.to_string());
    }

    fn watts(read: &RaplRead, device: &str) -> f64 {
        read.parts
            .iter()
            .find(|p| p.device == device)
            .unwrap_or_else(|| panic!("no {device} in {read:?}"))
            .watts
    }

    #[test]
    fn packages_and_dram_with_wrap_around() {
        let sys = FakeSys::new("rapl");
        const RANGE: u64 = 262_143_328_850;
        zone(&sys, "intel-rapl:0", "package-0", RANGE - 10_000_000, RANGE);
        zone(&sys, "intel-rapl:0:0", "dram", 1_000_000, RANGE);
        zone(&sys, "intel-rapl:0:1", "core", 5, RANGE);
        zone(&sys, "intel-rapl:1", "package-1", 0, RANGE);
        // The control-type directory and the MMIO duplicate of package 0.
        sys.write("class/powercap/intel-rapl/enabled", "1");
        zone(&sys, "intel-rapl-mmio:0", "package-0", 0, RANGE);
        let mut rapl = Rapl::new(&sys.root);
        let t0 = Instant::now();
        let first = rapl.read(t0);
        assert!(first.parts.is_empty(), "a baseline: {first:?}");
        assert_eq!(first.readable, 3);

        // Package 0 wraps: 10 J to the top, then 30 J; 40 J over 2 s.
        zone(&sys, "intel-rapl:0", "package-0", 30_000_000, RANGE);
        zone(&sys, "intel-rapl:0:0", "dram", 7_000_000, RANGE);
        zone(&sys, "intel-rapl:0:1", "core", 9_000_000, RANGE);
        zone(&sys, "intel-rapl:1", "package-1", 50_000_000, RANGE);
        let read = rapl.read(t0 + Duration::from_secs(2));
        assert_eq!(read.parts.len(), 3, "{read:?}");
        assert!((watts(&read, "intel-rapl:0/package-0") - 20.0).abs() < 1e-9);
        assert!((watts(&read, "intel-rapl:1/package-1") - 25.0).abs() < 1e-9);
        assert!((watts(&read, "intel-rapl:0:0/dram") - 3.0).abs() < 1e-9);
        let dram = read
            .parts
            .iter()
            .find(|p| p.kind == PartKind::Dram)
            .unwrap();
        assert_eq!(dram.source, Source::Rapl);
    }

    #[test]
    fn unreadable_counters_are_reported_and_give_no_watts() {
        let sys = FakeSys::new("rapl-unreadable");
        zone(&sys, "intel-rapl:0", "package-0", 1, 100);
        // As root-only files look to a non-root reader (a directory fails to
        // read for root too, so the test holds whoever runs it).
        sys.replace_with_dir("class/powercap/intel-rapl:0/energy_uj");
        let mut rapl = Rapl::new(&sys.root);
        let t0 = Instant::now();
        rapl.read(t0);
        let read = rapl.read(t0 + Duration::from_secs(1));
        assert!(read.parts.is_empty());
        assert_eq!(read.readable, 0);
        assert_eq!(read.unreadable, ["intel-rapl:0"]);
        // No powercap at all: nothing, and no error.
        let read = Rapl::new(&sys.root.join("nowhere")).read(t0);
        assert!(read.parts.is_empty() && read.unreadable.is_empty());
    }

    #[test]
    fn a_counter_that_jumps_past_its_range_drops_the_sample() {
        let sys = FakeSys::new("rapl-jump");
        zone(&sys, "intel-rapl:0", "package-0", 500, 100);
        let mut rapl = Rapl::new(&sys.root);
        let t0 = Instant::now();
        rapl.read(t0);
        zone(&sys, "intel-rapl:0", "package-0", 50, 100);
        assert!(rapl.read(t0 + Duration::from_secs(1)).parts.is_empty());
        zone(&sys, "intel-rapl:0", "package-0", 80, 100);
        let read = rapl.read(t0 + Duration::from_secs(2));
        assert!((watts(&read, "intel-rapl:0/package-0") - 30e-6).abs() < 1e-12);
    }
}
