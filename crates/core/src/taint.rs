//! The carbon taint's effect: what the scheduler does with a tainted node.

/// Only effects that steer new pods: `NoExecute` would evict running ones,
/// which is what opt-in migration does with PodDisruptionBudgets respected.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum TaintEffect {
    // Kubernetes' own spelling, so values read as they do in a taint.
    #[default]
    #[value(name = "PreferNoSchedule")]
    PreferNoSchedule,
    #[value(name = "NoSchedule")]
    NoSchedule,
}

impl TaintEffect {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::PreferNoSchedule => "PreferNoSchedule",
            Self::NoSchedule => "NoSchedule",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::ValueEnum;

    #[test]
    fn effects_are_spelt_as_in_a_taint_and_never_evict() {
        for effect in TaintEffect::value_variants() {
            let name = effect.to_possible_value().unwrap();
            assert_eq!(name.get_name(), effect.as_str());
        }
        assert!(TaintEffect::from_str("NoExecute", false).is_err());
    }
}
