//! The power model's inputs, read from this host: CPU utilisation since the
//! previous sample, memory, and the CPU brand that picks the coefficients.

use carbon_kube_core::power::{HostSample, PowerError, unit_interval};
use sysinfo::{CpuRefreshKind, MemoryRefreshKind, RefreshKind, System};

/// Reads CPU utilisation and memory from the host.
///
/// CPU utilisation is a difference between two readings at least
/// `sysinfo::MINIMUM_CPU_UPDATE_INTERVAL` (200 ms on Linux) apart. `new` takes
/// the first reading; the agent calls [`Self::sample`] on its timer, so every
/// sample covers the interval since the previous one. A sample taken sooner
/// than that after `new` may report 0 utilisation.
pub struct HostSampler {
    system: System,
}

impl HostSampler {
    pub fn new() -> Result<Self, PowerError> {
        let refresh = RefreshKind::nothing()
            .with_cpu(CpuRefreshKind::nothing().with_usage())
            .with_memory(MemoryRefreshKind::nothing().with_ram());
        let system =
            System::new_with_specifics(refresh).map_err(|e| PowerError::HostInfo(e.to_string()))?;
        Ok(Self { system })
    }

    pub fn sample(&mut self) -> HostSample {
        self.system.refresh_cpu_usage();
        self.system
            .refresh_memory_specifics(MemoryRefreshKind::nothing().with_ram());
        let cpus = self.system.cpus();
        HostSample {
            vcpus: cpus.len() as f64,
            cpu_utilisation: unit_interval(f64::from(self.system.global_cpu_usage()) / 100.0),
            memory_used_gb: gib(self.system.used_memory()),
            memory_total_gb: gib(self.system.total_memory()),
            cpu_brand: cpus
                .first()
                .map(|cpu| cpu.brand().trim().to_string())
                .unwrap_or_default(),
            arch: std::env::consts::ARCH,
        }
    }
}

fn gib(bytes: u64) -> f64 {
    bytes as f64 / (1u64 << 30) as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sampler_reads_this_host() {
        let mut sampler = HostSampler::new().unwrap();
        std::thread::sleep(sysinfo::MINIMUM_CPU_UPDATE_INTERVAL);
        let s = sampler.sample();
        assert!(s.vcpus >= 1.0, "{s:?}");
        assert!((0.0..=1.0).contains(&s.cpu_utilisation), "{s:?}");
        assert!(
            s.memory_total_gb > 0.0 && s.memory_used_gb <= s.memory_total_gb,
            "{s:?}"
        );
        assert_eq!(s.arch, std::env::consts::ARCH);
    }
}
