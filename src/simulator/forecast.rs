//! Forecasts as Let's Wait Awhile models them: the real future plus i.i.d.
//! Gaussian noise with σ a fraction of the series' mean, drawn from numpy's
//! `default_rng(seed)` so the paper's noisy runs can be replayed.

use super::numpy_rng::NumpyRng;

/// What the scheduler sees instead of `truth`. Each slot's error is fixed for
/// the run, so a slot has one forecast however often it is looked at.
/// `sigma_fraction == 0` returns the truth: the only way to get a perfect forecast.
pub fn noisy(truth: &[f64], sigma_fraction: f64, seed: u64) -> Vec<f64> {
    if sigma_fraction == 0.0 {
        return truth.to_vec();
    }
    let mean = truth.iter().sum::<f64>() / truth.len().max(1) as f64;
    let sigma = sigma_fraction * mean;
    let mut rng = NumpyRng::new(seed);
    // numpy computes `loc + scale * z`; the same operations keep the same rounding.
    truth
        .iter()
        .map(|&value| value + (0.0 + sigma * rng.standard_normal()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_error_is_the_truth_and_error_is_seeded() {
        let truth = [100.0, 200.0, 300.0];
        assert_eq!(noisy(&truth, 0.0, 3), truth);
        let a = noisy(&truth, 0.05, 1);
        assert_eq!(a, noisy(&truth, 0.05, 1));
        assert_ne!(a, noisy(&truth, 0.05, 2));
        // numpy: default_rng(0).standard_normal() = 0.1257302210933933, σ = 0.05 × 200.
        assert!((noisy(&truth, 0.05, 0)[0] - (100.0 + 10.0 * 0.1257302210933933)).abs() < 1e-12);
    }
}
