//! Forecasts: the real future plus an error, under one of two models.
//!
//! - [`ErrorModel::Iid`] is Let's Wait Awhile's: i.i.d. Gaussian noise with σ
//!   a fraction of the series' mean, drawn from numpy's `default_rng(seed)` so
//!   the paper's noisy runs can be replayed ([`noisy`]). Each slot's error is
//!   fixed for the run, whenever the forecast is issued: an hour ahead is as
//!   wrong as a day ahead, and neighbouring hours are wrong independently.
//! - [`ErrorModel::Ar1`] is closer to published forecasts: a forecast issued
//!   at step `t` knows the present exactly and its error follows an AR(1)
//!   path over the horizon, `e(0) = 0`, `e(h) = φ·e(h−1) + σ_step·ε(h)`, so
//!   neighbouring hours err alike (a whole cheap night can be missed) and the
//!   error's σ grows with the horizon: `σ_step·√((1 − φ^2h)/(1 − φ²))`.
//!   A new forecast is drawn for every issue time.

use crate::numpy_rng::NumpyRng;
use crate::trace::Series;

/// How wrong a forecast is, as a fraction of each zone's mean intensity.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum ErrorModel {
    Iid { sigma_fraction: f64 },
    Ar1 { step_fraction: f64, phi: f64 },
}

impl ErrorModel {
    /// The default autocorrelated model: σ = 3 % of the mean one hour ahead,
    /// 7 % at 6 h, 12 % at 24 h, levelling off at 15 % beyond two days.
    ///
    /// Magnitudes from published errors of operational forecasts, not fitted to
    /// our traces: the GB National Grid ESO carbon intensity forecast's mean
    /// absolute error is about 11 % four days ahead and falls as the period
    /// nears (868k forecasts, Feb–Mar 2021: github.com/carbon-intensity/api-definitions
    /// issue 11), its mean absolute percentage error over all horizons up to
    /// 48 h about 7 % (2017–2023, nickmp.com/posts/carbon-intensity-forecast-tracking);
    /// Staffell (Electric Insights Q3 2017) gives "typically better than ±10 %".
    /// For a Gaussian the mean absolute error is 0.8 σ: σ = 12 % at 24 h is an
    /// absolute error of about 9.5 %, and 15 % far out about 12 %.
    pub const AR1_PUBLISHED: Self = Self::Ar1 {
        step_fraction: 0.03,
        phi: 0.98,
    };

    /// σ of the error `horizon` steps ahead, as a fraction of the mean.
    pub fn sigma_at(&self, horizon: usize) -> f64 {
        match *self {
            Self::Iid { sigma_fraction } => sigma_fraction,
            Self::Ar1 { step_fraction, phi } => {
                let phi2 = phi * phi;
                if horizon == 0 {
                    0.0
                } else if (1.0 - phi2).abs() < 1e-12 {
                    step_fraction * (horizon as f64).sqrt()
                } else {
                    step_fraction * ((1.0 - phi2.powi(horizon as i32)) / (1.0 - phi2)).sqrt()
                }
            }
        }
    }

    pub fn is_perfect(&self) -> bool {
        match *self {
            Self::Iid { sigma_fraction } => sigma_fraction == 0.0,
            Self::Ar1 { step_fraction, .. } => step_fraction == 0.0,
        }
    }

    pub fn describe(&self) -> String {
        match *self {
            Self::Iid { sigma_fraction } => format!("i.i.d. σ = {sigma_fraction} × mean"),
            Self::Ar1 { phi, .. } => format!(
                "AR(1) φ = {phi}, σ = {:.1} % of mean at 1 h, {:.1} % at 24 h",
                100.0 * self.sigma_at(1),
                100.0 * self.sigma_at(24)
            ),
        }
    }
}

/// What the scheduler sees instead of `truth` under the i.i.d. model.
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

/// One zone's AR(1) error path for a forecast issued at `issued`, `len` steps
/// from the present (`path[0] == 0`), as fractions of the mean. Seeded by the
/// run's seed, the zone and the issue time, so a forecast looked at twice is
/// the same forecast.
pub fn ar1_path(step_fraction: f64, phi: f64, seed: u64, issued: usize, len: usize) -> Vec<f64> {
    let mut rng = NumpyRng::new(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ issued as u64);
    let mut error = 0.0;
    (0..len)
        .map(|h| {
            if h > 0 {
                error = phi * error + step_fraction * rng.standard_normal();
            }
            error
        })
        .collect()
}

/// Forecasts for every zone of a replay; zone `z` draws from seed `seed + z`.
#[derive(Debug)]
pub struct Forecasts {
    model: ErrorModel,
    seed: u64,
    truth: Vec<Vec<f64>>,
    means: Vec<f64>,
    /// The i.i.d. model's one forecast per zone (or the truth when perfect).
    fixed: Option<Vec<Vec<f64>>>,
}

impl Forecasts {
    pub fn new(series: &[Series], model: ErrorModel, seed: u64) -> Self {
        let truth: Vec<Vec<f64>> = series.iter().map(|s| s.grams_per_kwh.clone()).collect();
        let means = series.iter().map(Series::mean).collect();
        let fixed = match model {
            ErrorModel::Iid { sigma_fraction } => Some(
                truth
                    .iter()
                    .enumerate()
                    .map(|(z, t)| noisy(t, sigma_fraction, seed + z as u64))
                    .collect(),
            ),
            ErrorModel::Ar1 { .. } if model.is_perfect() => Some(truth.clone()),
            ErrorModel::Ar1 { .. } => None,
        };
        Self {
            model,
            seed,
            truth,
            means,
            fixed,
        }
    }

    pub fn model(&self) -> ErrorModel {
        self.model
    }

    /// What a forecast issued at step `issued` says about steps
    /// `issued..issued + len` (cut at the end of the series).
    pub fn issued(&self, zone: usize, issued: usize, len: usize) -> Vec<f64> {
        let truth = &self.truth[zone];
        let end = (issued + len).min(truth.len());
        let issued = issued.min(end);
        match (&self.fixed, self.model) {
            (Some(fixed), _) => fixed[zone][issued..end].to_vec(),
            (None, ErrorModel::Ar1 { step_fraction, phi }) => {
                let path = ar1_path(
                    step_fraction,
                    phi,
                    self.seed + zone as u64,
                    issued,
                    end - issued,
                );
                truth[issued..end]
                    .iter()
                    .zip(path)
                    .map(|(t, e)| t + e * self.means[zone])
                    .collect()
            }
            (None, ErrorModel::Iid { .. }) => unreachable!("the i.i.d. model is always fixed"),
        }
    }
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

    fn series(values: Vec<f64>) -> Series {
        Series::hourly_for_tests("X", &values)
    }

    #[test]
    fn the_iid_model_is_the_papers_noise_whenever_issued() {
        let truth: Vec<f64> = (0..50).map(|h| 100.0 + h as f64).collect();
        let f = Forecasts::new(
            &[series(truth.clone())],
            ErrorModel::Iid {
                sigma_fraction: 0.05,
            },
            4,
        );
        let expected = noisy(&truth, 0.05, 4);
        assert_eq!(f.issued(0, 10, 5), expected[10..15]);
        assert_eq!(f.issued(0, 0, 20)[10..15], expected[10..15]);
        assert_eq!(f.issued(0, 45, 10).len(), 5);
    }

    #[test]
    fn ar1_error_grows_with_the_horizon_and_is_autocorrelated() {
        let model = ErrorModel::AR1_PUBLISHED;
        let ErrorModel::Ar1 { step_fraction, phi } = model else {
            unreachable!()
        };
        assert!((model.sigma_at(1) - 0.03).abs() < 1e-9);
        assert!(
            (0.11..0.13).contains(&model.sigma_at(24)),
            "{}",
            model.sigma_at(24)
        );
        assert!(model.sigma_at(1000) < 0.16);
        let paths: Vec<Vec<f64>> = (0..4000)
            .map(|issued| ar1_path(step_fraction, phi, 9, issued, 25))
            .collect();
        let std_at =
            |h: usize| (paths.iter().map(|p| p[h] * p[h]).sum::<f64>() / paths.len() as f64).sqrt();
        assert_eq!(std_at(0), 0.0);
        for h in [1, 6, 24] {
            let (ours, theory) = (std_at(h), model.sigma_at(h));
            assert!(
                (ours / theory - 1.0).abs() < 0.06,
                "h {h}: {ours} vs {theory}"
            );
        }
        assert!(std_at(1) < std_at(6) && std_at(6) < std_at(24));
        // Lag-1 correlation of the error along the horizon: φ·σ(h−1)/σ(h), near 0.98 far out.
        let corr = |h: usize| {
            let cov = paths.iter().map(|p| p[h] * p[h - 1]).sum::<f64>() / paths.len() as f64;
            cov / (std_at(h) * std_at(h - 1))
        };
        assert!(corr(24) > 0.95, "{}", corr(24));
        // Different issue times draw different paths; the same issue time the same one.
        assert_eq!(paths[3], ar1_path(step_fraction, phi, 9, 3, 25));
        assert_ne!(paths[3], paths[4]);
    }

    #[test]
    fn ar1_forecasts_know_the_present_and_are_redrawn_when_reissued() {
        let truth: Vec<f64> = (0..100).map(|h| 100.0 + h as f64).collect();
        let f = Forecasts::new(&[series(truth.clone())], ErrorModel::AR1_PUBLISHED, 1);
        assert_eq!(f.issued(0, 20, 5)[0], truth[20]);
        assert_eq!(f.issued(0, 20, 5), f.issued(0, 20, 5));
        assert_ne!(f.issued(0, 20, 5)[1..], truth[21..25]);
        // Issued an hour later, the forecast for the same hours is another draw.
        assert_ne!(f.issued(0, 20, 5)[2..], f.issued(0, 21, 4)[1..]);
        assert_eq!(f.issued(0, 98, 10).len(), 2);
        let perfect = Forecasts::new(
            &[series(truth.clone())],
            ErrorModel::Ar1 {
                step_fraction: 0.0,
                phi: 0.98,
            },
            1,
        );
        assert_eq!(perfect.issued(0, 20, 5), truth[20..25]);
    }
}
