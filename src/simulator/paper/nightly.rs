//! Scenario I: one 30-minute job a day at 01:00, free to start anywhere within
//! ±w, at the slot with the lowest forecast (earliest on ties).

use super::{SLOTS_PER_DAY, first_min_index};

/// Jobs of the year: 2020-01-01 … 2020-12-30, as in the paper.
pub const JOBS: usize = 365;
/// 01:00 in 30-minute slots.
const NOMINAL_SLOT: usize = 2;

/// Mean true intensity of the slots the jobs ran in, for a window of
/// `±window_slots` half-hours. As in the original, a job whose window would
/// open before the first reading is skipped, but the sum is still divided by
/// 365 (it adds about 0.24 pp of apparent savings at ±8 h).
pub fn mean_ci_of_used_slots(truth: &[f64], forecast: &[f64], window_slots: usize) -> f64 {
    let mut sum = 0.0;
    for day in 0..JOBS {
        let nominal = day * SLOTS_PER_DAY + NOMINAL_SLOT;
        let Some(first) = nominal.checked_sub(window_slots) else {
            continue;
        };
        let last = (nominal + window_slots).min(forecast.len() - 1);
        sum += truth[first + first_min_index(&forecast[first..=last])];
    }
    sum / JOBS as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn picks_the_cheapest_forecast_slot_and_pays_the_true_price() {
        let mut truth = vec![100.0; SLOTS_PER_DAY * (JOBS + 1)];
        let mut forecast = truth.clone();
        // Day 1: the forecast says 03:00 is cheap, but 03:00 is really dear.
        forecast[SLOTS_PER_DAY + 6] = 10.0;
        truth[SLOTS_PER_DAY + 6] = 465.0;
        let at_nominal = mean_ci_of_used_slots(&truth, &forecast, 0);
        assert_eq!(at_nominal, 100.0);
        let shifted = mean_ci_of_used_slots(&truth, &forecast, 4);
        // Day 0 is skipped (its window opens before the data), day 1 pays 465.
        assert!((shifted - (363.0 * 100.0 + 465.0) / 365.0).abs() < 1e-9);
    }
}
