//! Releasing a held pod: the patch that removes our gate, the log line and
//! the event that says why.

use super::*;

impl Deferral {
    pub(super) async fn announce(
        &self,
        pod: &Pod,
        ask: &Ask,
        start_at: Timestamp,
        zone: &GridZone,
        now_mean: f64,
        planned_mean: f64,
    ) {
        let request: &Request = &ask.request;
        let saving = self.grams(ask, now_mean - planned_mean);
        let note = format!(
            "Waiting for greener power: planned start {start_at} in zone {zone}, booked within \
             its free CPU ({planned_mean:.0} gCO2/kWh forecast on average over {} vs {now_mean:.0} \
             starting now; expected saving about {saving:.1} g CO2 for {} vCPU). Released by {} \
             at the latest.",
            human(request.duration),
            ask.vcpus,
            request.latest_start,
        );
        info!(pod = %pod_key(pod), start_at = %start_at, zone = %zone, latest_start = %request.latest_start, "deferral: holding pod");
        self.event(pod, EventType::Normal, "Deferred", "Defer", note)
            .await;
    }

    pub(super) async fn release(
        &mut self,
        pod: &Pod,
        ask: Option<&Ask>,
        release: Release,
        now: Timestamp,
    ) {
        let api: Api<Pod> =
            Api::namespaced(self.client.clone(), &pod.namespace().unwrap_or_default());
        // Strategic merge by the gates' merge key `name`: the server removes ours
        // and keeps every other gate, whatever their order.
        let patch =
            json!({ "spec": { "schedulingGates": [{ "name": GATE, "$patch": "delete" }] } });
        let params = PatchParams {
            field_manager: Some(FIELD_MANAGER.into()),
            ..Default::default()
        };
        match api
            .patch(&pod.name_any(), &params, &Patch::Strategic(&patch))
            .await
        {
            Ok(_) => {}
            Err(kube::Error::Api(status)) if status.code == 404 => return,
            Err(e) => {
                let e = Error::from(e);
                self.metrics.record_error("deferral", &e);
                warn!(pod = %pod_key(pod), error = %e, "deferral: removing the gate failed; will retry");
                return;
            }
        }
        let uid = pod.uid().unwrap_or_default();
        let (zone_text, mean_text) = release.planned_words();
        let zone = match &release {
            Release::Planned { zone, .. } => zone.clone(),
            _ => None,
        };
        self.released.insert(
            uid.clone(),
            Released {
                at: Instant::now(),
                zone,
                bound: false,
            },
        );
        let held = self.held.remove(&uid);
        let created = pod
            .metadata
            .creation_timestamp
            .as_ref()
            .map_or(now, |t| t.0);
        let waited = now.duration_since(created).as_secs_f64().max(0.0);
        self.metrics.deferral_seconds.observe(waited);
        self.metrics.record_deferral_release(release.label());
        // Saving: the run as forecast when the pod was first held, against the run from now.
        let now_mean = match &release {
            Release::Planned { now_mean, .. } => *now_mean,
            _ => None,
        };
        let saved = match (held, ask, now_mean) {
            (Some(held), Some(ask), Some(now_mean)) => {
                Some(self.grams(ask, held.first_now_mean - now_mean))
            }
            _ => None,
        };
        if let Some(grams) = saved.filter(|g| *g > 0.0) {
            self.metrics.deferral_saved_grams.inc_by(grams);
        }
        let waited_text = human(Duration::from_secs(waited as u64));
        let saved_text = saved.map_or(String::new(), |g| {
            format!(" Estimated saving against starting when first held: {g:.1} g CO2.")
        });
        let latest = ask.map_or_else(String::new, |a| a.request.latest_start.to_string());
        let margin = human(self.settings.round.planner.margin);
        let (kind, reason, note) = match &release {
            Release::Planned { reason, .. } => match reason {
                ReleaseReason::Greenest => (
                    EventType::Normal,
                    "Released",
                    format!(
                        "Released after {waited_text}: now is the greenest start with free CPU \
                             before the latest start ({zone_text}{mean_text}).{saved_text}"
                    ),
                ),
                ReleaseReason::GainWithinError => (
                    EventType::Normal,
                    "Released",
                    format!(
                        "Released after {waited_text}: a later start is forecast cheaper, but by \
                             less than the forecast's error ({zone_text}{mean_text}).{saved_text}"
                    ),
                ),
                ReleaseReason::Deadline => (
                    EventType::Normal,
                    "ReleasedNearDeadline",
                    format!(
                        "Released after {waited_text}: its latest start {latest} is less than \
                             the margin ({margin}) plus the expected wait to be scheduled away \
                             ({zone_text}).{saved_text}"
                    ),
                ),
                ReleaseReason::NoRoom => (
                    EventType::Normal,
                    "ReleasedNoRoom",
                    format!(
                        "Released after {waited_text}: no window before its latest start {latest} \
                             (less the margin {margin}) has free CPU for it; waiting would only risk \
                             the deadline."
                    ),
                ),
            },
            Release::NoForecast(why) => (
                EventType::Warning,
                "ReleasedWithoutForecast",
                format!("Released after {waited_text} without deferral: {why}. Availability wins."),
            ),
            Release::Invalid(why) => (
                EventType::Warning,
                "InvalidDeferral",
                format!("Released at once without deferral: {why}."),
            ),
        };
        info!(pod = %pod_key(pod), reason = release.label(), waited_seconds = waited as u64, "deferral: released pod");
        self.event(pod, kind, reason, "Release", note).await;
    }

    async fn event(&self, pod: &Pod, type_: EventType, reason: &str, action: &str, note: String) {
        self.events.publish(pod, type_, reason, action, note).await;
    }
}
