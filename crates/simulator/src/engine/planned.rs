//! The deferral policy inside a replay: the core planner holding and
//! releasing jobs step by step, as the leader's deferral controller does.

use super::*;

/// The planner's side of a replay: jobs it holds, jobs it released.
pub(super) struct Planned<'a, 'b> {
    deferral: &'b Deferral<'a>,
    /// The deferral's settings, or the outcome tuner's.
    pub(super) params: PlannerParams,
    /// Held jobs in arrival order.
    pub(super) waiting: Vec<usize>,
    /// Released, not started yet: job and release step.
    released_at: Vec<Option<usize>>,
    /// Released jobs running: zone, end step, vCPUs.
    running: Vec<(usize, usize, u32)>,
    rigid: RigidLoad,
    wait: ExpectedWait,
}

impl<'a, 'b> Planned<'a, 'b> {
    pub(super) fn new(deferral: &'b Deferral<'a>, jobs: usize, zones: usize) -> Self {
        Self {
            deferral,
            params: deferral.params,
            waiting: Vec::new(),
            released_at: vec![None; jobs],
            running: Vec::new(),
            rigid: RigidLoad::new(zones, RIGID_MEMORY_WEEKS),
            wait: ExpectedWait::default(),
        }
    }

    /// Plans every held job at step `t` and returns the released ones in
    /// release order, each with the zone it was booked in.
    pub(super) fn step(
        &mut self,
        scenario: &Scenario,
        cluster: &Cluster,
        t: usize,
        truth: &[f64],
    ) -> Vec<(usize, Option<usize>)> {
        let steps = scenario.steps();
        let zones = truth.len();
        self.running.retain(|&(_, end, _)| end > t);
        let jobs: Vec<&Job> = self.waiting.iter().map(|&i| &scenario.jobs[i]).collect();
        let horizon = jobs
            .iter()
            .map(|j| j.latest_start().saturating_sub(t) + j.duration)
            .max()
            .unwrap_or(1)
            .min(steps - t)
            .max(1);
        let now_hour = hour_of_week(scenario.series[0].at(t));
        // Released jobs still running, per zone and slot: a difference array, then running sums.
        let mut running = vec![vec![0.0; horizon + 1]; zones];
        for &(zone, end, vcpus) in &self.running {
            running[zone][0] += f64::from(vcpus);
            running[zone][(end - t).min(horizon)] -= f64::from(vcpus);
        }
        let mut capacity = Vec::with_capacity(zones);
        for (z, changes) in running.iter().enumerate() {
            let allocatable =
                (scenario.nodes[z] as u64 * u64::from(scenario.vcpus_per_node)) as f64;
            let deferred_running: Vec<f64> = changes[..horizon]
                .iter()
                .scan(0.0, |total, change| {
                    *total += change;
                    Some(*total)
                })
                .collect();
            let busy: u64 = cluster.running[z].iter().sum();
            let rigid_now = (busy as f64 - deferred_running[0]).max(0.0);
            self.rigid.observe(z, now_hour, rigid_now);
            let rigid = (0..horizon)
                .map(|k| match k {
                    0 => rigid_now,
                    _ => self
                        .rigid
                        .expected(z, (now_hour + k) % 168)
                        .unwrap_or(rigid_now),
                })
                .collect();
            capacity.push(ZoneCapacity {
                allocatable,
                rigid,
                deferred_running,
            });
        }
        let mut ledger = Ledger::new(&self.params, &capacity, horizon);
        let seen: Vec<Vec<f64>> = (0..zones)
            .map(|z| {
                let mut f = self.deferral.forecast.issued(z, t, horizon);
                f[0] = truth[z];
                f
            })
            .collect();
        let forecasts: Vec<ZoneForecast> = (0..zones)
            .map(|z| ZoneForecast {
                grams_per_kwh: &seen[z],
                sigma: &self.deferral.sigma[z],
            })
            .collect();
        let all_zones: Vec<usize> = (0..zones).collect();
        let asks: Vec<Waiting> = jobs
            .iter()
            .map(|j| Waiting {
                vcpus: f64::from(j.vcpus),
                duration: j.duration,
                latest_start: j.latest_start().saturating_sub(t),
                zones: if j.pinned {
                    vec![j.home]
                } else {
                    all_zones.clone()
                },
            })
            .collect();
        let step = Duration::from_secs(scenario.series[0].step_seconds.max(1) as u64);
        let plan = planner::plan(
            &self.params,
            step,
            self.wait.get(),
            &forecasts,
            &mut ledger,
            &asks,
        );
        let mut released = Vec::new();
        for i in planner::release_order(&asks) {
            if let Step::Release { zone, .. } = plan[i] {
                let index = self.waiting[i];
                self.released_at[index] = Some(t);
                released.push((index, zone));
            }
        }
        let gone: std::collections::HashSet<usize> = released.iter().map(|r| r.0).collect();
        self.waiting.retain(|i| !gone.contains(i));
        released
    }

    pub(super) fn started(&mut self, index: usize, zone: usize, t: usize, job: &Job) {
        if let Some(at) = self.released_at[index].take() {
            self.wait.observe((t - at) as f64);
            self.running.push((zone, t + job.duration, job.vcpus));
        }
    }
}
