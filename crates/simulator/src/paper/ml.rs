//! Scenario II: 3,387 ad-hoc ML training jobs submitted on workdays, each
//! postponable up to a deadline rule, run either in one piece or split into
//! the cheapest half-hours of its window.

use super::super::SimError;
use super::super::numpy_rng::NumpyRng;
use super::{SLOTS_PER_DAY, first_min_index};

const JOBS: u64 = 3387;
/// 09:00 in slots of the day.
const NINE: usize = 18;
/// 17:00 in slots of the day.
const FIVE_PM: usize = 34;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MlJob {
    pub arrival_slot: usize,
    pub duration_slots: usize,
}

/// How far past its unshifted finish a job may be moved.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeadlineRule {
    /// The baseline: no extra time (though its window still has one spare slot).
    None,
    NextWorkday,
    SemiWeekly,
}

impl DeadlineRule {
    pub fn name(self) -> &'static str {
        match self {
            Self::None => "baseline",
            Self::NextWorkday => "next_workday",
            Self::SemiWeekly => "semi_weekly",
        }
    }
}

/// Slot arithmetic on a series that starts at midnight on weekday `first_weekday` (Monday = 0).
#[derive(Debug, Clone, Copy)]
pub struct Calendar {
    pub first_weekday: usize,
    pub days: usize,
}

impl Calendar {
    fn weekday(self, slot: usize) -> usize {
        (self.first_weekday + slot / SLOTS_PER_DAY) % 7
    }

    /// 09:00 of the day `days_later` after `slot`'s day.
    fn nine_am(slot: usize, days_later: usize) -> usize {
        (slot / SLOTS_PER_DAY + days_later) * SLOTS_PER_DAY + NINE
    }

    /// Extra slots the rule grants a job that would finish at `finish` unshifted.
    fn extra_slots(self, rule: DeadlineRule, finish: usize) -> usize {
        let (weekday, time) = (self.weekday(finish), finish % SLOTS_PER_DAY);
        let deadline = match rule {
            DeadlineRule::None => finish,
            DeadlineRule::NextWorkday => match weekday {
                5 => Self::nine_am(finish, 2),
                6 => Self::nine_am(finish, 1),
                // A Friday finish after 17:00 gets Saturday 09:00, as in the original.
                _ if time > FIVE_PM => Self::nine_am(finish, 1),
                _ if time < NINE => Self::nine_am(finish, 0),
                _ => finish,
            },
            DeadlineRule::SemiWeekly => {
                let before_thursday = matches!(
                    (weekday, time > NINE),
                    (0, true) | (1, _) | (2, _) | (3, false)
                );
                let target_weekday = if before_thursday { 3 } else { 7 };
                Self::nine_am(finish, (target_weekday - weekday) % 7)
            }
        };
        deadline.saturating_sub(finish)
    }
}

/// The paper's workload, drawn from numpy's `default_rng(0)` in the original
/// order: jobs per workday (multinomial), sorted submission times per day
/// (09:00–16:30), then durations (4 h – 89.5 h), all in 30-minute steps.
pub fn jobs(calendar: Calendar) -> Result<Vec<MlJob>, SimError> {
    let mut rng = NumpyRng::new(0);
    let workdays: Vec<usize> = (0..calendar.days)
        .filter(|&day| (calendar.first_weekday + day) % 7 < 5)
        .collect();
    let per_workday = rng.multinomial(JOBS, &vec![1.0 / workdays.len() as f64; workdays.len()])?;
    let submit_minutes: Vec<usize> = (540..1020).step_by(30).collect();
    let mut arrivals = Vec::new();
    let mut next_workday = workdays.iter().zip(&per_workday).peekable();
    for day in 0..calendar.days {
        // Weekends draw zero submissions; numpy's empty draw consumes nothing.
        let count = match next_workday.peek() {
            Some(&(&workday, &count)) if workday == day => {
                next_workday.next();
                count as usize
            }
            _ => 0,
        };
        let mut minutes = rng.choice(&submit_minutes, count);
        minutes.sort_unstable();
        arrivals.extend(minutes.into_iter().map(|m| day * SLOTS_PER_DAY + m / 30));
    }
    let duration_minutes: Vec<usize> = (240..5400).step_by(30).collect();
    let durations = rng.choice(&duration_minutes, arrivals.len());
    Ok(arrivals
        .into_iter()
        .zip(durations)
        .map(|(arrival_slot, minutes)| MlJob {
            arrival_slot,
            duration_slots: minutes / 30,
        })
        .collect())
}

/// Jobs running in each slot when every job plans on `forecast`.
pub fn activity(
    jobs: &[MlJob],
    forecast: &[f64],
    calendar: Calendar,
    rule: DeadlineRule,
    interrupting: bool,
) -> Vec<f64> {
    let mut active = vec![0.0; forecast.len()];
    for job in jobs {
        let k = job.duration_slots;
        let extra = calendar.extra_slots(rule, job.arrival_slot + k);
        // The original sees the current slot plus (duration + extra) ahead.
        let end = (job.arrival_slot + k + extra + 1).min(forecast.len());
        let window = &forecast[job.arrival_slot..end];
        if interrupting {
            let mut sorted = window.to_vec();
            let (_, &mut kth, _) = sorted.select_nth_unstable_by(k - 1, f64::total_cmp);
            // Every slot as cheap as the k-th cheapest runs, ties included, as in the original.
            for (slot, &value) in window.iter().enumerate() {
                if value <= kth {
                    active[job.arrival_slot + slot] += 1.0;
                }
            }
        } else {
            let sums: Vec<f64> = window.windows(k).map(|w| w.iter().sum()).collect();
            let start = job.arrival_slot + first_min_index(&sums);
            active[start..start + k].iter_mut().for_each(|a| *a += 1.0);
        }
    }
    active
}

#[cfg(test)]
mod tests {
    use super::*;

    // 2020-01-01 was a Wednesday.
    const YEAR_2020: Calendar = Calendar {
        first_weekday: 2,
        days: 366,
    };

    fn slot(day: usize, hour: usize, half: usize) -> usize {
        day * SLOTS_PER_DAY + hour * 2 + half
    }

    #[test]
    fn next_workday_rule() {
        let c = YEAR_2020;
        let rule = DeadlineRule::NextWorkday;
        // Thu 2 Jan 12:00: within working hours, no extra time.
        assert_eq!(c.extra_slots(rule, slot(1, 12, 0)), 0);
        // Thu 17:00 is not "after 17:00"; 17:30 is, and gets Fri 09:00.
        assert_eq!(c.extra_slots(rule, slot(1, 17, 0)), 0);
        assert_eq!(
            c.extra_slots(rule, slot(1, 17, 1)),
            slot(2, 9, 0) - slot(1, 17, 1)
        );
        // Fri 20:00 gets Saturday 09:00 (the original's quirk).
        assert_eq!(
            c.extra_slots(rule, slot(2, 20, 0)),
            slot(3, 9, 0) - slot(2, 20, 0)
        );
        // Sat 10:00 gets Monday 09:00; Sun 10:00 too.
        assert_eq!(
            c.extra_slots(rule, slot(3, 10, 0)),
            slot(5, 9, 0) - slot(3, 10, 0)
        );
        assert_eq!(
            c.extra_slots(rule, slot(4, 10, 0)),
            slot(5, 9, 0) - slot(4, 10, 0)
        );
        // Mon 06:00 gets Monday 09:00.
        assert_eq!(c.extra_slots(rule, slot(5, 6, 0)), 6);
    }

    #[test]
    fn semi_weekly_rule() {
        let c = YEAR_2020;
        let rule = DeadlineRule::SemiWeekly;
        // Mon 6 Jan 09:00 exactly is due that Monday; 09:30 waits for Thursday.
        assert_eq!(c.extra_slots(rule, slot(5, 9, 0)), 0);
        assert_eq!(
            c.extra_slots(rule, slot(5, 9, 1)),
            slot(8, 9, 0) - slot(5, 9, 1)
        );
        // Thu 09:00 is due then; Thu 10:00 waits for Monday.
        assert_eq!(c.extra_slots(rule, slot(8, 9, 0)), 0);
        assert_eq!(
            c.extra_slots(rule, slot(8, 10, 0)),
            slot(12, 9, 0) - slot(8, 10, 0)
        );
        // Sunday goes to the next day's 09:00.
        assert_eq!(
            c.extra_slots(rule, slot(11, 23, 0)),
            slot(12, 9, 0) - slot(11, 23, 0)
        );
    }

    #[test]
    fn the_workload_is_the_papers() {
        let jobs = jobs(YEAR_2020).unwrap();
        assert_eq!(jobs.len(), 3387);
        // PAPER_RESULTS.md: 155,626 job-hours in total.
        let half_hours: usize = jobs.iter().map(|j| j.duration_slots).sum();
        assert_eq!(half_hours, 2 * 155_626);
        assert!(
            jobs.windows(2)
                .all(|w| w[0].arrival_slot <= w[1].arrival_slot)
        );
        assert!(jobs.iter().all(|j| YEAR_2020.weekday(j.arrival_slot) < 5));
        // First job: 1 Jan 09:30 (numpy's first sorted draw was 570 minutes).
        assert_eq!(jobs[0].arrival_slot, 19);
    }

    #[test]
    fn interrupting_jobs_take_the_cheapest_slots_and_others_the_cheapest_run() {
        let job = MlJob {
            arrival_slot: 0,
            duration_slots: 2,
        };
        let forecast = [5.0, 1.0, 9.0, 1.0, 2.0, 0.0];
        // Window = 2 + 1 slots for the baseline: starts 0 or 1; 1+9 > 5+1, so start 0.
        let c = Calendar {
            first_weekday: 0,
            days: 1,
        };
        assert_eq!(
            activity(&[job], &forecast, c, DeadlineRule::None, false)[..3],
            [1.0, 1.0, 0.0]
        );
        assert_eq!(
            activity(&[job], &forecast, c, DeadlineRule::None, true)[..3],
            [1.0, 1.0, 0.0]
        );
    }
}
