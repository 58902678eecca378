//! Scenario I: one job a night at 01:00, free to start anywhere within ±w,
//! at the slot with the lowest forecast (earliest on ties).

use super::{SLOTS_PER_DAY, first_min_index};

/// Where the nightly jobs sit in a series.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Nights {
    pub slots_per_day: usize,
    /// Index of the first night's 01:00.
    pub first_nominal: usize,
    pub jobs: usize,
}

/// The paper's: 2020-01-01 … 2020-12-30 in 30-minute slots from 2020-01-01 00:00.
pub const PAPER: Nights = Nights {
    slots_per_day: SLOTS_PER_DAY,
    first_nominal: 2,
    jobs: 365,
};

/// Mean true intensity of the slots the jobs ran in, for a window of
/// `±window_slots`. `forecast(first, len)` is what the scheduler sees for
/// slots `first..first + len`, asked when the window opens. As in the
/// original, a job whose window would open before the first reading is
/// skipped, but the sum is still divided by the number of jobs (on the paper's
/// series it adds about 0.24 pp of apparent savings at ±8 h; a lead-in of
/// `window_slots` before the first night avoids it).
pub fn mean_ci(
    truth: &[f64],
    nights: Nights,
    window_slots: usize,
    forecast: impl Fn(usize, usize) -> Vec<f64>,
) -> f64 {
    let mut sum = 0.0;
    for day in 0..nights.jobs {
        let nominal = nights.first_nominal + day * nights.slots_per_day;
        let Some(first) = nominal.checked_sub(window_slots) else {
            continue;
        };
        let last = (nominal + window_slots).min(truth.len() - 1);
        sum += truth[first + first_min_index(&forecast(first, last + 1 - first))];
    }
    sum / nights.jobs as f64
}

/// [`mean_ci`] on the paper's layout with one forecast series for the year.
pub fn mean_ci_of_used_slots(truth: &[f64], forecast: &[f64], window_slots: usize) -> f64 {
    mean_ci(truth, PAPER, window_slots, |first, len| {
        forecast[first..first + len].to_vec()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn picks_the_cheapest_forecast_slot_and_pays_the_true_price() {
        let mut truth = vec![100.0; SLOTS_PER_DAY * (PAPER.jobs + 1)];
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

    #[test]
    fn a_lead_in_gives_day_zero_its_whole_window() {
        // Hourly, 3 h of lead-in, two nights; the cheapest hour of night 0 is in the lead-in.
        let mut truth = vec![100.0; 3 + 48];
        truth[2] = 40.0;
        let nights = Nights {
            slots_per_day: 24,
            first_nominal: 4,
            jobs: 2,
        };
        let ci = mean_ci(&truth, nights, 2, |first, len| {
            truth[first..first + len].to_vec()
        });
        assert_eq!(ci, (40.0 + 100.0) / 2.0);
    }
}
