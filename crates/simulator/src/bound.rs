//! A capacity-aware reference: the best feasible offline schedule we find,
//! knowing the future exactly, with each zone's capacity respected.
//!
//! [`crate::plan::oracle`] gives every job its cheapest zone and start as if
//! the cluster were infinite: no schedule that meets every deadline emits
//! less, but it piles a year's flexible work onto the few cleanest hours and
//! overstates what is reachable. This schedule is feasible instead: every
//! zone-hour holds at most the zone's vCPUs, every job runs in one piece from
//! its start. So the best capacity-respecting schedule saves *at least* as
//! much as this one (it is a lower bound on the reachable saving; the oracle
//! is the upper bound for schedules that meet every deadline), and the two
//! bracket what a perfect scheduler could do.
//!
//! Method: greedy list scheduling, then local search. Jobs are placed
//! least-flexible first (fewest zone × start options, then the largest), each
//! at the cheapest window of its allowed zones that still has room; a job with
//! no room anywhere in its window starts at the earliest later hour that has
//! room (a deadline miss, as some peaks are infeasible for any scheduler).
//! Then local search: each job in turn tries its cheaper places in its window,
//! moving at most one job that is in the way to that job's best other place;
//! a move is kept only if the total falls and no deadline is newly missed.
//! (Moving one job alone never helps after the greedy pass: every job already
//! sits at its cheapest place given those placed before it.) Pricing
//! congested zone-hours (Lagrangian prices) and other placement orders were
//! tried and did worse, or saved more only by missing many more deadlines.
//!
//! Capacity is counted per zone in vCPUs: the packing of pods onto individual
//! nodes is relaxed (the policies replay node by node).

use crate::engine::{Outcome, Scenario};
use crate::plan::Prefix;
use crate::workload::Job;

/// Which moves the schedule may make.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reach {
    /// Any zone the job may run in (its home zone only if pinned), any start in its window.
    SpaceAndTime,
    /// Its home zone only: how much time shifting alone can save.
    TimeOnly,
}

/// Where and when each job runs in the schedule.
#[derive(Debug, Clone, PartialEq)]
pub struct Schedule {
    pub outcome: Outcome,
    /// Zone and start of each job; `None` if no zone had room before the trace ended.
    pub placements: Vec<Option<(usize, usize)>>,
}

/// Local search: passes over every job, the cheaper places tried per job, the
/// jobs in the way tried per place, and the least gain (vCPU × g/kWh × steps) that counts.
const PASSES: usize = 3;
const CANDIDATES: usize = 4;
const BLOCKERS: usize = 8;
const IMPROVEMENT: f64 = 1e-6;

struct Ledger<'a> {
    scenario: &'a Scenario<'a>,
    truth: Vec<Prefix>,
    capacity: Vec<u32>,
    /// Booked vCPUs per zone and step.
    used: Vec<Vec<u32>>,
    /// The jobs booked in each zone and step, to find whom to move aside.
    running: Vec<Vec<Vec<usize>>>,
    reach: Reach,
}

impl<'a> Ledger<'a> {
    fn new(scenario: &'a Scenario<'a>, reach: Reach) -> Self {
        let steps = scenario.steps();
        let longest = scenario.jobs.iter().map(|j| j.duration).max().unwrap_or(0);
        Self {
            scenario,
            truth: scenario
                .series
                .iter()
                .map(|s| Prefix::new(&s.grams_per_kwh))
                .collect(),
            capacity: scenario
                .nodes
                .iter()
                .map(|&n| n as u32 * scenario.vcpus_per_node)
                .collect(),
            used: vec![vec![0; steps + longest]; scenario.series.len()],
            running: vec![vec![Vec::new(); steps + longest]; scenario.series.len()],
            reach,
        }
    }

    fn zones(&self, job: &Job) -> Vec<usize> {
        if job.pinned || self.reach == Reach::TimeOnly {
            vec![job.home]
        } else {
            (0..self.capacity.len()).collect()
        }
    }

    /// Intensity summed over the steps the job runs inside the trace (as the replay counts).
    fn cost(&self, job: &Job, zone: usize, start: usize) -> f64 {
        let steps = self.scenario.steps();
        self.truth[zone].window(start, job.duration.min(steps - start))
    }

    fn fits(&self, job: &Job, zone: usize, start: usize) -> bool {
        self.used[zone][start..start + job.duration]
            .iter()
            .all(|&u| u + job.vcpus <= self.capacity[zone])
    }

    fn book(&mut self, index: usize, (zone, start): (usize, usize), add: bool) {
        let job = &self.scenario.jobs[index];
        for t in start..start + job.duration {
            if add {
                self.used[zone][t] += job.vcpus;
                self.running[zone][t].push(index);
            } else {
                self.used[zone][t] -= job.vcpus;
                self.running[zone][t].retain(|&j| j != index);
            }
        }
    }

    fn grams(&self, index: usize, (zone, start): (usize, usize)) -> f64 {
        let job = &self.scenario.jobs[index];
        f64::from(job.vcpus) * self.cost(job, zone, start)
    }

    /// Tries to move job `index` to a cheaper place in its window, moving at
    /// most one job out of the way to its own cheapest other place in its
    /// window. Commits only a move that lowers the total and misses no
    /// more deadlines.
    fn improve(&mut self, index: usize, placements: &mut [Option<(usize, usize)>]) -> bool {
        let jobs = self.scenario.jobs;
        let job = &jobs[index];
        let Some(current) = placements[index] else {
            return false;
        };
        let current_grams = self.grams(index, current);
        let last = job
            .latest_start()
            .min(self.scenario.steps().saturating_sub(1));
        let mut options: Vec<(f64, usize, usize)> = (job.arrival..=last)
            .flat_map(|s| self.zones(job).into_iter().map(move |z| (s, z)))
            .map(|(s, z)| (self.grams(index, (z, s)), s, z))
            .filter(|&(g, _, _)| g < current_grams - IMPROVEMENT)
            .collect();
        options.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)).then(a.2.cmp(&b.2)));
        self.book(index, current, false);
        for &(grams, start, zone) in options.iter().take(CANDIDATES) {
            let place = (zone, start);
            if self.fits(job, zone, start) {
                self.book(index, place, true);
                placements[index] = Some(place);
                return true;
            }
            let steps = start..start + job.duration;
            let Some(full) = steps
                .clone()
                .find(|&t| self.used[zone][t] + job.vcpus > self.capacity[zone])
            else {
                continue;
            };
            let blockers: Vec<usize> = self.running[zone][full].clone();
            for &other in blockers.iter().take(BLOCKERS) {
                let Some(other_place) = placements[other] else {
                    continue;
                };
                let other_job = &jobs[other];
                let frees_enough = steps.clone().all(|t| {
                    let mine = other_place.0 == zone
                        && (other_place.1..other_place.1 + other_job.duration).contains(&t);
                    self.used[zone][t] - if mine { other_job.vcpus } else { 0 } + job.vcpus
                        <= self.capacity[zone]
                });
                if !frees_enough {
                    continue;
                }
                self.book(other, other_place, false);
                self.book(index, place, true);
                let moved = self.best(other_job).filter(|&(z, s)| {
                    (z, s) != other_place
                        && (s <= other_job.latest_start()
                            || other_place.1 > other_job.latest_start())
                });
                if let Some(new_place) = moved {
                    let delta = grams - current_grams + self.grams(other, new_place)
                        - self.grams(other, other_place);
                    if delta < -IMPROVEMENT {
                        self.book(other, new_place, true);
                        placements[index] = Some(place);
                        placements[other] = Some(new_place);
                        return true;
                    }
                }
                self.book(index, place, false);
                self.book(other, other_place, true);
            }
        }
        self.book(index, current, true);
        false
    }

    /// Cheapest feasible place in the window; else the earliest feasible later one.
    fn best(&self, job: &Job) -> Option<(usize, usize)> {
        let steps = self.scenario.steps();
        let zones = self.zones(job);
        let last = job.latest_start().min(steps.saturating_sub(1));
        let mut options: Vec<(f64, usize, usize)> = (job.arrival..=last)
            .flat_map(|s| zones.iter().map(move |&z| (s, z)))
            .map(|(s, z)| (self.cost(job, z, s), s, z))
            .collect();
        options.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)).then(a.2.cmp(&b.2)));
        if let Some(&(_, s, z)) = options.iter().find(|&&(_, s, z)| self.fits(job, z, s)) {
            return Some((z, s));
        }
        (last + 1..steps).find_map(|s| {
            zones
                .iter()
                .filter(|&&z| self.fits(job, z, s))
                .min_by(|&&a, &&b| self.cost(job, a, s).total_cmp(&self.cost(job, b, s)))
                .map(|&z| (z, s))
        })
    }
}

/// The schedule described in the module comment.
pub fn schedule(scenario: &Scenario, reach: Reach) -> Schedule {
    let mut ledger = Ledger::new(scenario, reach);
    let jobs = scenario.jobs;
    let mut order: Vec<usize> = (0..jobs.len()).collect();
    order.sort_by_key(|&i| {
        let job = &jobs[i];
        (
            ledger.zones(job).len() * (job.slack + 1),
            std::cmp::Reverse(job.vcpus as usize * job.duration),
            job.arrival,
        )
    });
    let mut placements: Vec<Option<(usize, usize)>> = vec![None; jobs.len()];
    for &i in &order {
        placements[i] = ledger.best(&jobs[i]);
        if let Some(p) = placements[i] {
            ledger.book(i, p, true);
        }
    }
    for _ in 0..PASSES {
        let moved = order
            .iter()
            .filter(|&&i| ledger.improve(i, &mut placements))
            .count();
        if moved == 0 {
            break;
        }
    }
    let mut outcome = Outcome::empty(scenario);
    let steps = scenario.steps();
    for (i, job) in jobs.iter().enumerate() {
        match placements[i] {
            Some((zone, start)) => {
                outcome.record_start(i, job, start);
                outcome.add_emissions(
                    job.home,
                    f64::from(job.vcpus)
                        * scenario.grams_per_vcpu_step(ledger.cost(job, zone, start)),
                );
            }
            None => outcome.record_start(i, job, steps.max(job.latest_start() + 1)),
        }
    }
    Schedule {
        outcome,
        placements,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::agent::AgentSettings;
    use crate::trace::Series;
    use carbon_kube_core::power::PowerCoefficients;

    fn series(zone: &str, values: &[f64]) -> Series {
        Series::hourly_for_tests(zone, values)
    }

    fn job(arrival: usize, slack: usize, vcpus: u32, home: usize, pinned: bool) -> Job {
        Job {
            arrival,
            duration: 2,
            vcpus,
            slack,
            home,
            pinned,
        }
    }

    #[test]
    fn a_full_green_hour_sends_the_rest_to_the_next_best_place() {
        let s = [
            series("A", &[100.0, 100.0, 10.0, 10.0, 100.0, 100.0]),
            series("B", &[50.0; 6]),
        ];
        // Four 2-vCPU jobs; each zone has one 4-vCPU node.
        let jobs = [
            job(0, 2, 2, 0, true),
            job(0, 2, 2, 0, true),
            job(0, 2, 2, 0, true),
            job(0, 2, 2, 0, false),
        ];
        let sc = Scenario {
            series: &s,
            nodes: vec![1, 1],
            vcpus_per_node: 4,
            jobs: &jobs,
            coefficients: PowerCoefficients::for_architecture("unknown"),
            agent: AgentSettings::default(),
        };
        let out = schedule(&sc, Reach::SpaceAndTime);
        // Two pinned jobs fill A's green window (start 2); the third pinned one cannot
        // overlap it, so it takes start 0; the free one goes to B, cheaper than A's start 0.
        let mut at_a: Vec<usize> = out
            .placements
            .iter()
            .flatten()
            .filter(|p| p.0 == 0)
            .map(|p| p.1)
            .collect();
        at_a.sort();
        assert_eq!(at_a, [0, 2, 2]);
        assert!(out.placements[3].is_some_and(|p| p.0 == 1));
        assert_eq!(out.outcome.deadline_misses, 0);
        let temporal = schedule(&sc, Reach::TimeOnly);
        assert!(temporal.placements.iter().flatten().all(|p| p.0 == 0));
        assert!(temporal.outcome.grams >= out.outcome.grams);
    }

    #[test]
    fn a_busy_cluster_is_never_over_capacity_and_beats_the_online_policies() {
        let steps = 24 * 10;
        let s: Vec<Series> = (0..3)
            .map(|z| {
                let values: Vec<f64> = (0..steps)
                    .map(|h| 200.0 + 150.0 * ((h + 5 * z) as f64 / 3.8).sin())
                    .collect();
                series(&format!("Z{z}"), &values)
            })
            .collect();
        let nodes = vec![2, 1, 1];
        let params = crate::workload::WorkloadParams {
            jobs: 500,
            max_duration_steps: 12,
            ..Default::default()
        };
        let jobs = crate::workload::generate(&params, steps, &nodes, 0);
        let sc = Scenario {
            series: &s,
            nodes: nodes.clone(),
            vcpus_per_node: 16,
            jobs: &jobs,
            coefficients: PowerCoefficients::for_architecture("unknown"),
            agent: AgentSettings::default(),
        };
        let run = |policy| crate::engine::run(&sc, policy);
        let online = [
            run(crate::engine::Policy::Baseline),
            run(crate::engine::Policy::Static {
                threshold_grams_per_kwh: 250.0,
            }),
        ];
        for reach in [Reach::SpaceAndTime, Reach::TimeOnly] {
            let out = schedule(&sc, reach);
            let mut used = vec![vec![0u32; steps + 12]; 3];
            let mut unplaced = 0;
            for (job, place) in jobs.iter().zip(&out.placements) {
                let Some((zone, start)) = *place else {
                    unplaced += 1;
                    continue;
                };
                assert!(start >= job.arrival);
                if job.pinned || reach == Reach::TimeOnly {
                    assert_eq!(zone, job.home);
                }
                for u in &mut used[zone][start..start + job.duration] {
                    *u += job.vcpus;
                }
            }
            let capacity = |zone: usize| nodes[zone] as u32 * 16;
            for (zone, hours) in used.iter().enumerate() {
                assert!(
                    hours.iter().all(|&u| u <= capacity(zone)),
                    "zone {zone} over capacity"
                );
            }
            let full = used
                .iter()
                .enumerate()
                .any(|(zone, hours)| hours.contains(&capacity(zone)));
            assert!(full, "the test should fill some zone-hour");
            assert!(unplaced <= out.outcome.deadline_misses, "{unplaced}");
            // Time alone is compared with the baseline; space and time with the taints too.
            let beaten = if reach == Reach::TimeOnly {
                &online[..1]
            } else {
                &online[..]
            };
            for policy in beaten {
                assert!(out.outcome.grams < policy.grams, "{reach:?}");
                assert!(
                    out.outcome.deadline_misses <= policy.deadline_misses,
                    "{reach:?}"
                );
            }
        }
    }

    #[test]
    fn no_room_in_the_window_is_a_miss_at_the_first_free_hour() {
        let s = [series("A", &[100.0; 6])];
        let jobs = [job(0, 0, 4, 0, true), job(0, 1, 4, 0, true)];
        let sc = Scenario {
            series: &s,
            nodes: vec![1],
            vcpus_per_node: 4,
            jobs: &jobs,
            coefficients: PowerCoefficients::for_architecture("unknown"),
            agent: AgentSettings::default(),
        };
        let out = schedule(&sc, Reach::SpaceAndTime);
        assert_eq!(out.placements, [Some((0, 0)), Some((0, 2))]);
        assert_eq!(out.outcome.deadline_misses, 1);
    }
}
