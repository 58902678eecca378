//! hwmon power sensors, `class/hwmon/hwmon*/power<N>_{average,input}` in
//! microwatts: AMD (amdgpu), Intel (i915, xe) and nouveau GPUs, and the CPU
//! drivers fam15h_power and zenpower. One part per chip, its sensors added
//! up, the averaged figure preferred to the instant one. Other chips are left
//! out: ACPI's `power_meter` and PMBus supplies measure the whole server, CPU
//! included, and a board's rail monitors say nothing of which part they feed,
//! so counting them next to the CPU would count it twice.

use std::collections::BTreeMap;
use std::path::Path;

use crate::power::measured::{Part, PartKind, Source};

const GPU_DRIVERS: [&str; 4] = ["amdgpu", "i915", "xe", "nouveau"];
const CPU_DRIVERS: [&str; 2] = ["fam15h_power", "zenpower"];

pub fn read(sysfs_root: &Path) -> Vec<Part> {
    let dir = sysfs_root.join("class/hwmon");
    let Ok(entries) = std::fs::read_dir(&dir) else {
        return Vec::new();
    };
    let mut chips: Vec<String> = entries
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|name| name.starts_with("hwmon"))
        .collect();
    chips.sort();
    chips
        .into_iter()
        .filter_map(|chip| {
            let chip_dir = dir.join(&chip);
            let name = std::fs::read_to_string(chip_dir.join("name")).ok()?;
            let name = name.trim();
            let kind = if GPU_DRIVERS.contains(&name) {
                PartKind::Gpu
            } else if CPU_DRIVERS.contains(&name) {
                PartKind::Cpu
            } else {
                return None;
            };
            let watts = chip_watts(&chip_dir)?;
            Some(Part {
                kind,
                device: format!("{chip}/{name}"),
                watts,
                source: Source::Hwmon,
            })
        })
        .collect()
}

/// Sum of the chip's readable power sensors; `None` when it has none.
fn chip_watts(chip_dir: &Path) -> Option<f64> {
    // Sensor index → (is the averaged figure, microwatts).
    let mut sensors: BTreeMap<u32, (bool, u64)> = BTreeMap::new();
    for entry in std::fs::read_dir(chip_dir).ok()?.flatten() {
        let Ok(file) = entry.file_name().into_string() else {
            continue;
        };
        let Some((index, averaged)) = power_sensor(&file) else {
            continue;
        };
        let Some(microwatts) = std::fs::read_to_string(entry.path())
            .ok()
            .and_then(|t| t.trim().parse::<u64>().ok())
        else {
            continue;
        };
        let slot = sensors.entry(index).or_insert((averaged, microwatts));
        if averaged && !slot.0 {
            *slot = (averaged, microwatts);
        }
    }
    (!sensors.is_empty()).then(|| sensors.values().map(|&(_, uw)| uw as f64 / 1e6).sum())
}

/// `power3_average` → (3, true); `power1_input` → (1, false); others `None`.
fn power_sensor(file: &str) -> Option<(u32, bool)> {
    let rest = file.strip_prefix("power")?;
    let (index, kind) = rest.split_once('_')?;
    let averaged = match kind {
        "average" => true,
        "input" => false,
        _ => return None,
    };
    Some((index.parse().ok()?, averaged))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::meters::testing::FakeSys;

    #[test]
    fn chips_with_power_sensors_become_parts() {
        let sys = FakeSys::new("hwmon");
        // An AMD GPU with both figures: the averaged one counts.
        sys.write("class/hwmon/hwmon0/name", "amdgpu");
        sys.write("class/hwmon/hwmon0/power1_average", "95000000");
        sys.write("class/hwmon/hwmon0/power1_input", "120000000");
        sys.write("class/hwmon/hwmon0/power1_cap", "300000000");
        // A CPU driver with two rails.
        sys.write("class/hwmon/hwmon1/name", "zenpower");
        sys.write("class/hwmon/hwmon1/power1_input", "40000000");
        sys.write("class/hwmon/hwmon1/power2_input", "12500000");
        // Temperatures only, two whole-server meters, and a broken sensor.
        sys.write("class/hwmon/hwmon2/name", "k10temp");
        sys.write("class/hwmon/hwmon2/temp1_input", "45000");
        sys.write("class/hwmon/hwmon3/name", "power_meter");
        sys.write("class/hwmon/hwmon3/power1_average", "350000000");
        sys.write("class/hwmon/hwmon5/name", "pmbus");
        sys.write("class/hwmon/hwmon5/power1_input", "410000000");
        sys.write("class/hwmon/hwmon4/name", "nouveau");
        sys.write("class/hwmon/hwmon4/power1_input", "garbage");
        let parts = read(&sys.root);
        assert_eq!(
            parts,
            [
                Part {
                    kind: PartKind::Gpu,
                    device: "hwmon0/amdgpu".into(),
                    watts: 95.0,
                    source: Source::Hwmon
                },
                Part {
                    kind: PartKind::Cpu,
                    device: "hwmon1/zenpower".into(),
                    watts: 52.5,
                    source: Source::Hwmon
                },
            ]
        );
    }

    #[test]
    fn unreadable_sensors_and_no_hwmon_give_nothing() {
        let sys = FakeSys::new("hwmon-unreadable");
        sys.write("class/hwmon/hwmon0/name", "amdgpu");
        sys.write("class/hwmon/hwmon0/power1_average", "1");
        sys.replace_with_dir("class/hwmon/hwmon0/power1_average");
        assert!(read(&sys.root).is_empty());
        assert!(read(&sys.root.join("nowhere")).is_empty());
    }
}
