//! Power model: how many watts this node draws and how much CO2 that is.
//!
//! Cloud Carbon Footprint's (CCF) use-phase model: each vCPU draws between an
//! idle and a full-load figure, linearly in utilisation; memory draws a fixed
//! amount per GB; the data centre multiplies everything by its PUE. The pure
//! functions below are the whole model; the agent's host sampler only reads the inputs.

use std::time::Duration;

use crate::zones::Cloud;

mod cloud;
mod cpu;
pub mod measured;
pub use cloud::{CloudSource, cloud_of_node};
pub use cpu::microarchitecture;

/// CCF's `MEMORY_COEFFICIENT`, 0.000392 kWh per GB-hour, the same for every cloud.
pub const MEMORY_WATTS_PER_GB: f64 = 0.392;

/// CCF's idle and full-load watts per vCPU by micro-architecture.
///
/// The first block is what the CCF app ships (`ccf_power_coefficients_by_microarchitecture.csv`;
/// AMD EPYC 3rd Gen from its GCP/Azure lists, identical across clouds). The
/// second block is from CCF's coefficient generator (`ccf-coefficients`
/// output of 2026-04-24), rounded to two decimals as the app does, for chips
/// newer than the app's table. EPYC 5th Gen is as published, though far above
/// its predecessors; override it if you have better data.
const MICROARCHITECTURES: [(&str, f64, f64); 19] = [
    ("Cascade Lake", 0.64, 3.97),
    ("Skylake", 0.65, 4.26),
    ("Broadwell", 0.71, 3.69),
    ("Haswell", 1.0, 4.74),
    ("Coffee Lake", 1.14, 5.42),
    ("Sandy Bridge", 2.17, 8.58),
    ("Ivy Bridge", 3.04, 8.25),
    ("AMD EPYC 1st Gen", 0.82, 2.55),
    ("AMD EPYC 2nd Gen", 0.47, 1.69),
    ("AMD EPYC 3rd Gen", 0.45, 2.02),
    ("AWS Graviton2", 0.47, 1.69),
    ("Ice Lake", 0.77, 3.76),
    ("Sapphire Rapids", 1.04, 4.16),
    ("Emerald Rapids", 0.81, 4.48),
    ("Granite Rapids", 0.58, 2.53),
    ("AMD EPYC 4th Gen", 0.74, 2.28),
    ("AMD EPYC 5th Gen", 3.68, 8.96),
    ("AWS Graviton3", 0.47, 1.69),
    ("AWS Graviton4", 0.47, 1.69),
];

/// The only arm64 entry in CCF; x86 averages would overstate arm64 nodes about twofold.
const ARM64_DEFAULT: &str = "AWS Graviton2";

/// Coefficients of the power model. Watts are electrical watts at the server;
/// PUE scales them to the data centre's draw.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct PowerCoefficients {
    pub min_watts_per_vcpu: f64,
    pub max_watts_per_vcpu: f64,
    pub memory_watts_per_gb: f64,
    pub pue: f64,
}

/// Operator overrides, each applied over the architecture's default.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct PowerOverrides {
    pub min_watts_per_vcpu: Option<f64>,
    pub max_watts_per_vcpu: Option<f64>,
    pub memory_watts_per_gb: Option<f64>,
    pub pue: Option<f64>,
}

impl PowerOverrides {
    /// What can be checked before the host is known: each value in range, and
    /// idle at most full load when both are given. [`PowerCoefficients::with_overrides`]
    /// checks the rest against the host's defaults.
    pub fn validate(&self) -> Result<(), PowerError> {
        let widest = PowerCoefficients {
            min_watts_per_vcpu: 0.0,
            max_watts_per_vcpu: MAX_WATTS_PER_VCPU,
            memory_watts_per_gb: 0.0,
            pue: 1.0,
        };
        widest.with_overrides(self).map(drop)
    }
}

/// Above this a figure is a unit slip (mW, kW), not data.
const MAX_WATTS_PER_VCPU: f64 = 50.0;

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum PowerError {
    #[error("power coefficient {field} = {value} is invalid: {reason}")]
    InvalidCoefficient {
        field: &'static str,
        value: f64,
        reason: String,
    },
    #[error("cannot read host CPU and memory: {0}")]
    HostInfo(String),
}

impl PowerCoefficients {
    /// Coefficients for a micro-architecture as CCF names it (see
    /// [`microarchitecture`]) or a CPU architecture (`aarch64`/`arm64` get the
    /// Graviton2 entry), with AWS's PUE and AWS's averages for anything unknown.
    /// AWS because it is the cloud this project deploys to; use [`Self::for_cloud`]
    /// elsewhere, and override `pue` on premises.
    pub fn for_architecture(arch: &str) -> Self {
        Self::for_cloud(Cloud::Aws, arch)
    }

    /// Coefficients for a host: the micro-architecture its CPU brand names,
    /// else its CPU architecture (arm64 → Graviton2), else AWS's averages.
    pub fn for_cpu(cpu_brand: &str, arch: &str) -> Self {
        Self::for_architecture(microarchitecture(cpu_brand).unwrap_or(arch))
    }

    /// As [`Self::for_architecture`], with `cloud`'s PUE and fallback averages.
    pub fn for_cloud(cloud: Cloud, arch: &str) -> Self {
        let arch = arch.trim();
        let name = if matches!(arch.to_ascii_lowercase().as_str(), "aarch64" | "arm64") {
            ARM64_DEFAULT
        } else {
            arch
        };
        let (min, max) = MICROARCHITECTURES
            .iter()
            .find(|(known, _, _)| known.eq_ignore_ascii_case(name))
            .map(|&(_, min, max)| (min, max))
            .unwrap_or_else(|| fallback_watts(cloud));
        Self {
            min_watts_per_vcpu: min,
            max_watts_per_vcpu: max,
            memory_watts_per_gb: MEMORY_WATTS_PER_GB,
            pue: pue(cloud),
        }
    }

    /// Applies the operator's overrides and validates the result; the error names
    /// the field to fix.
    pub fn with_overrides(self, overrides: &PowerOverrides) -> Result<Self, PowerError> {
        let merged = Self {
            min_watts_per_vcpu: overrides
                .min_watts_per_vcpu
                .unwrap_or(self.min_watts_per_vcpu),
            max_watts_per_vcpu: overrides
                .max_watts_per_vcpu
                .unwrap_or(self.max_watts_per_vcpu),
            memory_watts_per_gb: overrides
                .memory_watts_per_gb
                .unwrap_or(self.memory_watts_per_gb),
            pue: overrides.pue.unwrap_or(self.pue),
        };
        merged.check_ranges()?;
        // Blame the value the operator typed, not the default it clashes with.
        let blame_min =
            overrides.min_watts_per_vcpu.is_some() && overrides.max_watts_per_vcpu.is_none();
        merged.check_order(blame_min)?;
        Ok(merged)
    }

    /// Every field finite and in range, idle ≤ full load.
    pub fn validate(&self) -> Result<(), PowerError> {
        self.check_ranges()?;
        self.check_order(false)
    }

    /// Idle and memory watts may be 0 (an operator who wants to leave them
    /// out); the upper bounds catch unit slips (mW, kW) that would otherwise
    /// pass as data.
    fn check_ranges(&self) -> Result<(), PowerError> {
        check(
            "min_watts_per_vcpu",
            self.min_watts_per_vcpu,
            0.0,
            MAX_WATTS_PER_VCPU,
        )?;
        check(
            "max_watts_per_vcpu",
            self.max_watts_per_vcpu,
            0.0,
            MAX_WATTS_PER_VCPU,
        )?;
        if self.max_watts_per_vcpu == 0.0 {
            return Err(invalid("max_watts_per_vcpu", 0.0, "must be above 0".into()));
        }
        check("memory_watts_per_gb", self.memory_watts_per_gb, 0.0, 5.0)?;
        check("pue", self.pue, 1.0, 3.0)
    }

    fn check_order(&self, blame_min: bool) -> Result<(), PowerError> {
        let (min, max) = (self.min_watts_per_vcpu, self.max_watts_per_vcpu);
        match (max >= min, blame_min) {
            (true, _) => Ok(()),
            (false, true) => Err(invalid(
                "min_watts_per_vcpu",
                min,
                format!("must not exceed max_watts_per_vcpu ({max})"),
            )),
            (false, false) => Err(invalid(
                "max_watts_per_vcpu",
                max,
                format!("must be at least min_watts_per_vcpu ({min})"),
            )),
        }
    }
}

fn check(field: &'static str, value: f64, lowest: f64, highest: f64) -> Result<(), PowerError> {
    if !value.is_finite() {
        return Err(invalid(field, value, "must be a finite number".into()));
    }
    if value < lowest || value > highest {
        return Err(invalid(
            field,
            value,
            format!("must be between {lowest} and {highest}"),
        ));
    }
    Ok(())
}

fn invalid(field: &'static str, value: f64, reason: String) -> PowerError {
    PowerError::InvalidCoefficient {
        field,
        value,
        reason,
    }
}

/// CCF's `PUE_AVG` per cloud.
fn pue(cloud: Cloud) -> f64 {
    match cloud {
        Cloud::Aws => 1.135,
        Cloud::Gcp => 1.1,
        Cloud::Azure => 1.185,
    }
}

/// CCF's fallback (min, max) watts per vCPU when the processor is unknown:
/// averages for AWS and Azure, the median for GCP, as the app uses them.
fn fallback_watts(cloud: Cloud) -> (f64, f64) {
    match cloud {
        Cloud::Aws => (0.74, 3.5),
        Cloud::Gcp => (0.68, 4.11),
        Cloud::Azure => (0.74, 3.54),
    }
}

/// Watts drawn by the node: `(vcpus × (min + u × (max − min)) + memory_gb × mem_w) × PUE`.
///
/// Out-of-range inputs are clamped (utilisation to 0..=1, counts to ≥ 0, NaN to 0)
/// so that one bad sample cannot put NaN into a counter.
pub fn node_watts(c: &PowerCoefficients, vcpus: f64, cpu_utilisation: f64, memory_gb: f64) -> f64 {
    let u = unit_interval(cpu_utilisation);
    let cpu = non_negative(vcpus)
        * (c.min_watts_per_vcpu + u * (c.max_watts_per_vcpu - c.min_watts_per_vcpu));
    let memory = non_negative(memory_gb) * c.memory_watts_per_gb;
    (cpu + memory) * c.pue
}

/// Emission rate in g/h of a constant draw: `watts / 1000 × intensity`.
pub fn grams_per_hour(watts: f64, grams_per_kwh: f64) -> f64 {
    watts / 1000.0 * grams_per_kwh
}

/// Marginal gCO2 of one more busy vCPU-hour on this node:
/// `(max − min) × PUE / 1000 × intensity`.
///
/// Marginal, not average: the node's idle power is drawn whether or not the
/// work lands here, so only the rise from idle to full load is the work's
/// doing. Under CCF's linear model that rise is the same at any utilisation,
/// so `cpu_utilisation` does not change the result; it is in the signature so
/// a non-linear (e.g. SPECpower-curve) model can replace this one without
/// touching callers.
pub fn emission_score(c: &PowerCoefficients, cpu_utilisation: f64, grams_per_kwh: f64) -> f64 {
    let _ = cpu_utilisation;
    grams_per_hour(
        (c.max_watts_per_vcpu - c.min_watts_per_vcpu) * c.pue,
        grams_per_kwh,
    )
}

/// Grams of CO2 emitted so far, for a Prometheus counter.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct EmissionCounter {
    grams: f64,
}

impl EmissionCounter {
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds the emissions of drawing `watts` at `grams_per_kwh` for `elapsed`
    /// and returns the grams added. Inputs that are not finite and ≥ 0 add
    /// nothing, because a counter must never go down or become NaN.
    pub fn add(&mut self, watts: f64, grams_per_kwh: f64, elapsed: Duration) -> f64 {
        let valid = |x: f64| x.is_finite() && x >= 0.0;
        if !valid(watts) || !valid(grams_per_kwh) {
            return 0.0;
        }
        let grams = grams_per_hour(watts, grams_per_kwh) * elapsed.as_secs_f64() / 3600.0;
        self.grams += grams;
        grams
    }

    pub fn grams(&self) -> f64 {
        self.grams
    }
}

/// `x` clamped to 0..=1, NaN as 0: a share that cannot be trusted counts as none.
pub fn unit_interval(x: f64) -> f64 {
    if x.is_nan() { 0.0 } else { x.clamp(0.0, 1.0) }
}

fn non_negative(x: f64) -> f64 {
    if x.is_nan() { 0.0 } else { x.max(0.0) }
}

/// One reading of the host, the inputs of [`node_watts`].
#[derive(Clone, Debug, PartialEq)]
pub struct HostSample {
    /// Logical CPUs of the host (from `/proc/stat`, so the whole node even in a pod).
    pub vcpus: f64,
    /// Busy share of all CPUs since the previous sample, 0..=1.
    pub cpu_utilisation: f64,
    /// GiB, as clouds size instances.
    pub memory_used_gb: f64,
    /// GiB installed. This is what the power model charges: DRAM draws power
    /// whether or not pages are in use, and CCF charges memory by size
    /// provisioned, not used. (CCF charges only memory above a per-chip share
    /// already inside its CPU figures; we cannot know that share for a node, so
    /// our memory term runs somewhat high on large-memory nodes.)
    pub memory_total_gb: f64,
    pub cpu_brand: String,
    /// CPU architecture the agent runs on, e.g. `x86_64`, `aarch64`.
    pub arch: &'static str,
}

impl HostSample {
    /// Coefficients for this host: the micro-architecture its CPU brand names,
    /// else its CPU architecture (arm64 → Graviton2), else `cloud`'s averages.
    pub fn coefficients(&self, cloud: Cloud) -> PowerCoefficients {
        let arch = microarchitecture(&self.cpu_brand).unwrap_or(self.arch);
        PowerCoefficients::for_cloud(cloud, arch)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn assert_close(actual: f64, expected: f64) {
        assert!((actual - expected).abs() < 1e-9, "{actual} != {expected}");
    }

    const COEFFS: PowerCoefficients = PowerCoefficients {
        min_watts_per_vcpu: 1.0,
        max_watts_per_vcpu: 4.0,
        memory_watts_per_gb: 0.5,
        pue: 1.2,
    };

    #[test]
    fn node_watts_follows_the_linear_model() {
        // 4 × (1 + 0.5 × 3) = 10 W CPU, 8 × 0.5 = 4 W memory, × 1.2 = 16.8 W.
        assert_close(node_watts(&COEFFS, 4.0, 0.5, 8.0), 16.8);
        // Idle: (2 × 1 + 0) × 1.2.
        assert_close(node_watts(&COEFFS, 2.0, 0.0, 0.0), 2.4);
        // Cascade Lake on AWS, 2 vCPU at 25 %, 8 GiB:
        // (2 × (0.64 + 0.25 × 3.33) + 8 × 0.392) × 1.135 = (2.945 + 3.136) × 1.135.
        let c = PowerCoefficients::for_architecture("Cascade Lake");
        assert_close(node_watts(&c, 2.0, 0.25, 8.0), 6.901935);
    }

    #[test]
    fn node_watts_clamps_bad_inputs() {
        assert_close(
            node_watts(&COEFFS, 4.0, 1.7, 0.0),
            node_watts(&COEFFS, 4.0, 1.0, 0.0),
        );
        assert_close(
            node_watts(&COEFFS, 4.0, f64::NAN, 0.0),
            node_watts(&COEFFS, 4.0, 0.0, 0.0),
        );
        assert_close(node_watts(&COEFFS, -4.0, 0.5, -1.0), 0.0);
    }

    #[test]
    fn grams_per_hour_converts_watts_to_kilowatts() {
        assert_close(grams_per_hour(500.0, 400.0), 200.0);
        assert_close(grams_per_hour(16.8, 250.0), 4.2);
    }

    #[test]
    fn emission_score_is_the_dynamic_power_only() {
        // (4 − 1) × 1.2 = 3.6 W → 3.6 / 1000 × 500 = 1.8 g per vCPU-hour.
        assert_close(emission_score(&COEFFS, 0.3, 500.0), 1.8);
        assert_close(emission_score(&COEFFS, 0.9, 500.0), 1.8);
        assert_close(emission_score(&COEFFS, 0.3, 0.0), 0.0);
    }

    #[test]
    fn counter_accumulates_exact_grams() {
        let mut counter = EmissionCounter::new();
        // 100 W at 300 g/kWh for 30 min = 0.05 kWh × 300 = 15 g.
        assert_close(counter.add(100.0, 300.0, Duration::from_secs(1800)), 15.0);
        // 200 W at 50 g/kWh for 90 s = 0.005 kWh × 50 = 0.25 g.
        assert_close(counter.add(200.0, 50.0, Duration::from_secs(90)), 0.25);
        assert_close(counter.grams(), 15.25);
    }

    #[test]
    fn counter_ignores_garbage() {
        let mut counter = EmissionCounter::new();
        counter.add(100.0, 300.0, Duration::from_secs(3600));
        for (watts, intensity) in [
            (f64::NAN, 300.0),
            (-1.0, 300.0),
            (100.0, f64::INFINITY),
            (100.0, -5.0),
        ] {
            assert_eq!(counter.add(watts, intensity, Duration::from_secs(60)), 0.0);
        }
        assert_close(counter.grams(), 30.0);
    }

    #[test]
    fn coefficients_come_from_ccf() {
        let c = PowerCoefficients::for_architecture("cascade lake");
        assert_eq!(
            c,
            PowerCoefficients {
                min_watts_per_vcpu: 0.64,
                max_watts_per_vcpu: 3.97,
                memory_watts_per_gb: 0.392,
                pue: 1.135
            }
        );
        let unknown = PowerCoefficients::for_architecture("x86_64");
        assert_eq!(
            (unknown.min_watts_per_vcpu, unknown.max_watts_per_vcpu),
            (0.74, 3.5)
        );
        let arm = PowerCoefficients::for_architecture("aarch64");
        assert_eq!(
            (arm.min_watts_per_vcpu, arm.max_watts_per_vcpu),
            (0.47, 1.69)
        );
        let gcp = PowerCoefficients::for_cloud(Cloud::Gcp, "something new");
        assert_eq!(
            (gcp.min_watts_per_vcpu, gcp.max_watts_per_vcpu, gcp.pue),
            (0.68, 4.11, 1.1)
        );
        assert_eq!(
            PowerCoefficients::for_cloud(Cloud::Azure, "Skylake").pue,
            1.185
        );
        for (name, ..) in MICROARCHITECTURES {
            PowerCoefficients::for_architecture(name)
                .validate()
                .unwrap();
        }
    }

    #[test]
    fn host_coefficients_come_from_brand_then_arch() {
        let max = |brand, arch| PowerCoefficients::for_cpu(brand, arch).max_watts_per_vcpu;
        assert_eq!(max("AMD EPYC 7R13 Processor", "x86_64"), 2.02);
        assert_eq!(max("Neoverse-N2", "aarch64"), 1.69);
        assert_eq!(max("Intel(R) Xeon(R) CPU @ 2.20GHz", "x86_64"), 3.5);
        let host = HostSample {
            vcpus: 2.0,
            cpu_utilisation: 0.0,
            memory_used_gb: 1.0,
            memory_total_gb: 4.0,
            cpu_brand: "Intel(R) Xeon(R) CPU @ 2.20GHz".into(),
            arch: "x86_64",
        };
        let azure = host.coefficients(Cloud::Azure);
        assert_eq!((azure.max_watts_per_vcpu, azure.pue), (3.54, 1.185));
        let arm = HostSample {
            cpu_brand: "Neoverse-V1".into(),
            arch: "aarch64",
            ..host
        };
        assert_eq!(arm.coefficients(Cloud::Gcp).pue, 1.1);
    }

    #[test]
    fn overrides_apply_field_by_field() {
        let base = PowerCoefficients::for_architecture("Skylake");
        let overrides = PowerOverrides {
            pue: Some(1.5),
            memory_watts_per_gb: Some(0.0),
            ..Default::default()
        };
        let c = base.with_overrides(&overrides).unwrap();
        assert_eq!(
            c,
            PowerCoefficients {
                pue: 1.5,
                memory_watts_per_gb: 0.0,
                ..base
            }
        );
        assert_eq!(
            base.with_overrides(&PowerOverrides::default()).unwrap(),
            base
        );
    }

    #[test]
    fn invalid_overrides_name_the_field() {
        let base = PowerCoefficients::for_architecture("Skylake"); // 0.65 / 4.26
        type Case = (&'static str, fn(&mut PowerOverrides));
        let cases: [Case; 8] = [
            ("pue", |o| o.pue = Some(0.9)),
            ("pue", |o| o.pue = Some(f64::NAN)),
            ("min_watts_per_vcpu", |o| o.min_watts_per_vcpu = Some(-0.1)),
            ("max_watts_per_vcpu", |o| o.max_watts_per_vcpu = Some(0.0)),
            ("max_watts_per_vcpu", |o| {
                o.max_watts_per_vcpu = Some(3500.0)
            }),
            ("memory_watts_per_gb", |o| {
                o.memory_watts_per_gb = Some(f64::INFINITY)
            }),
            // Below the default minimum: the maximum the operator typed is wrong.
            ("max_watts_per_vcpu", |o| o.max_watts_per_vcpu = Some(0.5)),
            // Above the default maximum: the minimum the operator typed is wrong.
            ("min_watts_per_vcpu", |o| o.min_watts_per_vcpu = Some(5.0)),
        ];
        for (field, set) in cases {
            let mut overrides = PowerOverrides::default();
            set(&mut overrides);
            let err = base.with_overrides(&overrides).unwrap_err();
            assert!(
                matches!(err, PowerError::InvalidCoefficient { field: f, .. } if f == field),
                "{overrides:?}: {err}"
            );
            assert!(err.to_string().contains(field), "{err}");
        }
    }

    #[test]
    fn overrides_are_checked_before_the_host_is_known() {
        let ok = PowerOverrides {
            min_watts_per_vcpu: Some(5.0),
            ..Default::default()
        };
        // Above Skylake's 4.26 W at full load: only the host can say it is wrong.
        assert_eq!(ok.validate(), Ok(()));
        type Case = (&'static str, PowerOverrides);
        let cases: [Case; 3] = [
            (
                "pue",
                PowerOverrides {
                    pue: Some(0.9),
                    ..Default::default()
                },
            ),
            (
                "max_watts_per_vcpu",
                PowerOverrides {
                    max_watts_per_vcpu: Some(0.0),
                    ..Default::default()
                },
            ),
            (
                "max_watts_per_vcpu",
                PowerOverrides {
                    min_watts_per_vcpu: Some(3.0),
                    max_watts_per_vcpu: Some(2.0),
                    ..Default::default()
                },
            ),
        ];
        for (field, overrides) in cases {
            let err = overrides.validate().unwrap_err();
            assert!(
                matches!(err, PowerError::InvalidCoefficient { field: f, .. } if f == field),
                "{overrides:?}: {err}"
            );
        }
    }
}
