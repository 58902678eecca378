//! Measured power next to the model: energy-counter deltas, and the node's
//! breakdown into CPU, DRAM and GPU parts, each with the source of its figure.
//!
//! A part the hardware measures replaces the model's figure for that part;
//! what nothing measures stays modelled. For CPU and DRAM the first source
//! that measures them wins (RAPL before hwmon), so one chip is never counted
//! twice; GPUs have no model part, so every measured GPU adds to the node.

use std::time::Duration;

use super::{PowerCoefficients, node_watts};

/// Where a figure comes from, in the order sources are tried.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Source {
    /// `/sys/class/powercap/intel-rapl:*` energy counters.
    Rapl,
    /// `/sys/class/hwmon/*/power*_{average,input}` sensors.
    Hwmon,
    /// The node's dcgm-exporter, `DCGM_FI_DEV_POWER_USAGE`.
    Dcgm,
    /// `nvidia-smi --query-gpu`.
    NvidiaSmi,
    /// Cloud Carbon Footprint's coefficients × CPU utilisation.
    Model,
}

impl Source {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Rapl => "rapl",
            Self::Hwmon => "hwmon",
            Self::Dcgm => "dcgm-exporter",
            Self::NvidiaSmi => "nvidia-smi",
            Self::Model => "model",
        }
    }

    pub fn is_measured(self) -> bool {
        self != Self::Model
    }

    /// The bounded metric label: `measured` or `modelled`.
    pub fn class(self) -> &'static str {
        if self.is_measured() {
            "measured"
        } else {
            "modelled"
        }
    }
}

impl std::fmt::Display for Source {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What a part of the node's power is drawn by.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum PartKind {
    Cpu,
    Dram,
    Gpu,
}

impl PartKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Cpu => "cpu",
            Self::Dram => "dram",
            Self::Gpu => "gpu",
        }
    }
}

/// One figure of the breakdown, in watts at the server (before PUE).
#[derive(Clone, Debug, PartialEq)]
pub struct Part {
    pub kind: PartKind,
    /// The device as its source names it, e.g. `package-0`, `GPU-084d…`.
    pub device: String,
    pub watts: f64,
    pub source: Source,
}

/// Microjoules used between two readings of an energy counter that counts up
/// to `max_range_uj` and then starts again from 0 (RAPL's `energy_uj` and
/// `max_energy_range_uj`). `None` when the readings cannot be from one counter
/// that wrapped at most once: a sample is then dropped, never made up.
pub fn energy_delta_uj(previous: u64, current: u64, max_range_uj: u64) -> Option<u64> {
    if current >= previous {
        return Some(current - previous);
    }
    if previous > max_range_uj {
        return None;
    }
    Some(max_range_uj - previous + current)
}

/// Mean watts of `delta_uj` microjoules used over `elapsed`.
pub fn watts_from_energy(delta_uj: u64, elapsed: Duration) -> Option<f64> {
    let seconds = elapsed.as_secs_f64();
    (seconds > 0.0).then(|| delta_uj as f64 / 1e6 / seconds)
}

/// The model's view of the node, for the parts nothing measures.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ModelInputs {
    pub vcpus: f64,
    pub cpu_utilisation: f64,
    pub memory_gb: f64,
}

/// The node's power, part by part, with PUE applied only to totals.
#[derive(Clone, Debug, PartialEq)]
pub struct Breakdown {
    pub parts: Vec<Part>,
    pub pue: f64,
    /// The model's CPU watts now and at idle, to scale the model's shape
    /// (idle, per-vCPU rise) to a measured CPU figure.
    model_cpu_watts: f64,
    model_idle_cpu_watts: f64,
}

impl Breakdown {
    /// Measured parts where there are any, the model's elsewhere. `measured`
    /// may hold parts of several sources; CPU and DRAM come from the first
    /// source (in [`Source`] order) that has them.
    pub fn combine(measured: &[Part], model: ModelInputs, c: &PowerCoefficients) -> Self {
        let without_pue = PowerCoefficients { pue: 1.0, ..*c };
        let cpu_only = PowerCoefficients {
            memory_watts_per_gb: 0.0,
            ..without_pue
        };
        let model_cpu = node_watts(&cpu_only, model.vcpus, model.cpu_utilisation, 0.0);
        let model_idle_cpu = node_watts(&cpu_only, model.vcpus, 0.0, 0.0);
        let model_dram = node_watts(&without_pue, 0.0, 0.0, model.memory_gb);
        let mut parts = Vec::new();
        for (kind, device, watts) in [
            (PartKind::Cpu, "cpu", model_cpu),
            (PartKind::Dram, "memory", model_dram),
        ] {
            let first = measured
                .iter()
                .filter(|p| p.kind == kind && p.source.is_measured())
                .map(|p| p.source)
                .min();
            match first {
                Some(source) => parts.extend(
                    measured
                        .iter()
                        .filter(|p| p.kind == kind && p.source == source)
                        .cloned(),
                ),
                None => parts.push(Part {
                    kind,
                    device: device.into(),
                    watts,
                    source: Source::Model,
                }),
            }
        }
        parts.extend(
            measured
                .iter()
                .filter(|p| p.kind == PartKind::Gpu && p.source.is_measured())
                .cloned(),
        );
        for part in &mut parts {
            part.watts = if part.watts.is_finite() {
                part.watts.max(0.0)
            } else {
                0.0
            };
        }
        Self {
            parts,
            pue: c.pue,
            model_cpu_watts: model_cpu,
            model_idle_cpu_watts: model_idle_cpu,
        }
    }

    /// Node watts including PUE.
    pub fn total_watts(&self) -> f64 {
        self.sum(|_| true)
    }

    /// Watts including PUE of one kind of part from measured or modelled sources.
    pub fn watts_of(&self, kind: PartKind, measured: bool) -> f64 {
        self.sum(|p| p.kind == kind && p.source.is_measured() == measured)
    }

    /// Share of the node's power that is measured, 0..=1 (0 for a node at 0 W).
    pub fn measured_share(&self) -> f64 {
        let total = self.total_watts();
        if total > 0.0 {
            self.sum(|p| p.source.is_measured()) / total
        } else {
            0.0
        }
    }

    /// Whether the CPU figure is measured.
    pub fn cpu_measured(&self) -> bool {
        self.parts
            .iter()
            .any(|p| p.kind == PartKind::Cpu && p.source.is_measured())
    }

    /// How far the measured CPU figure is from the model's, as a factor on
    /// the model's CPU watts (1 when the CPU is modelled or the model says 0):
    /// the model's shape, scaled to the measurement.
    pub fn cpu_scale(&self) -> f64 {
        if !self.cpu_measured() || self.model_cpu_watts <= 0.0 {
            return 1.0;
        }
        self.sum(|p| p.kind == PartKind::Cpu) / self.pue / self.model_cpu_watts
    }

    /// Watts one more busy vCPU adds, including PUE: the model's
    /// `(max − min) × PUE`, scaled to a measured CPU figure. This is what
    /// pods are charged per busy vCPU and what the emission score prices.
    pub fn watts_per_busy_vcpu(&self, c: &PowerCoefficients) -> f64 {
        (c.max_watts_per_vcpu - c.min_watts_per_vcpu) * self.pue * self.cpu_scale()
    }

    /// Power at zero CPU load, including PUE: idle CPU (scaled as above)
    /// and DRAM. GPUs are left out: their power goes to the pods using them.
    pub fn idle_watts(&self) -> f64 {
        (self.model_idle_cpu_watts * self.cpu_scale()) * self.pue
            + self.sum(|p| p.kind == PartKind::Dram)
    }

    fn sum(&self, keep: impl Fn(&Part) -> bool) -> f64 {
        // A fold from +0, not `sum` (which starts at −0 and prints "-0 %").
        let watts = self
            .parts
            .iter()
            .filter(|p| keep(p))
            .fold(0.0, |a, p| a + p.watts);
        watts * self.pue
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const C: PowerCoefficients = PowerCoefficients {
        min_watts_per_vcpu: 1.0,
        max_watts_per_vcpu: 4.0,
        memory_watts_per_gb: 0.5,
        pue: 1.2,
    };
    const HALF_BUSY: ModelInputs = ModelInputs {
        vcpus: 4.0,
        cpu_utilisation: 0.5,
        memory_gb: 8.0,
    };

    fn part(kind: PartKind, device: &str, watts: f64, source: Source) -> Part {
        Part {
            kind,
            device: device.into(),
            watts,
            source,
        }
    }

    fn close(a: f64, b: f64) {
        assert!((a - b).abs() < 1e-9, "{a} != {b}");
    }

    #[test]
    fn energy_counters_wrap_at_their_range() {
        assert_eq!(energy_delta_uj(1_000, 4_000, 10_000), Some(3_000));
        // 9 000 → wrap at 10 000 → 500: 1 000 + 500 used.
        assert_eq!(energy_delta_uj(9_000, 500, 10_000), Some(1_500));
        // A reading above the range cannot have wrapped there.
        assert_eq!(energy_delta_uj(20_000, 500, 10_000), None);
        assert_eq!(energy_delta_uj(7, 7, 10), Some(0));
        close(
            watts_from_energy(30_000_000, Duration::from_secs(2)).unwrap(),
            15.0,
        );
        assert_eq!(watts_from_energy(5, Duration::ZERO), None);
    }

    #[test]
    fn nothing_measured_is_the_model() {
        let b = Breakdown::combine(&[], HALF_BUSY, &C);
        // Same figure as node_watts: (4 × 2.5 + 8 × 0.5) × 1.2.
        close(b.total_watts(), super::super::node_watts(&C, 4.0, 0.5, 8.0));
        close(b.total_watts(), 16.8);
        assert_eq!(b.measured_share().to_string(), "0");
        assert!(b.parts.iter().all(|p| p.source == Source::Model));
        close(b.watts_per_busy_vcpu(&C), 3.0 * 1.2);
        // Idle: (4 × 1 + 4) × 1.2.
        close(b.idle_watts(), 9.6);
    }

    #[test]
    fn measured_parts_replace_the_model_and_gpus_add() {
        let measured = [
            part(PartKind::Cpu, "package-0", 15.0, Source::Rapl),
            part(PartKind::Cpu, "package-1", 5.0, Source::Rapl),
            part(PartKind::Cpu, "zenpower", 99.0, Source::Hwmon),
            part(PartKind::Gpu, "GPU-a", 300.0, Source::Dcgm),
        ];
        let b = Breakdown::combine(&measured, HALF_BUSY, &C);
        // RAPL wins over hwmon for the CPU; DRAM stays modelled (4 W).
        close(b.watts_of(PartKind::Cpu, true), 20.0 * 1.2);
        close(b.watts_of(PartKind::Cpu, false), 0.0);
        close(b.watts_of(PartKind::Dram, false), 4.0 * 1.2);
        close(b.watts_of(PartKind::Gpu, true), 300.0 * 1.2);
        close(b.total_watts(), 324.0 * 1.2);
        close(b.measured_share(), 320.0 / 324.0);
        // Model CPU was 10 W, measured 20 W: twice the model's per-vCPU rise and idle.
        close(b.cpu_scale(), 2.0);
        close(b.watts_per_busy_vcpu(&C), 2.0 * 3.0 * 1.2);
        close(b.idle_watts(), (2.0 * 4.0 + 4.0) * 1.2);
    }

    #[test]
    fn hwmon_measures_the_cpu_when_rapl_does_not_and_bad_figures_count_zero() {
        let measured = [
            part(PartKind::Cpu, "zenpower", f64::NAN, Source::Hwmon),
            part(PartKind::Dram, "dram", -3.0, Source::Rapl),
        ];
        let b = Breakdown::combine(&measured, HALF_BUSY, &C);
        assert!(b.cpu_measured());
        assert_eq!(b.total_watts(), 0.0);
        assert_eq!(b.measured_share(), 0.0);
        assert!(b.total_watts().is_finite());
    }
}
