//! A Workload's check written: Pending with the plan, or Ready (with the
//! zone pin where the cluster spans zones).

use super::*;

impl GreenWindow {
    pub(super) async fn ready(
        &mut self,
        waiting: &Waiting,
        ready: Release,
        pin: Option<GridZone>,
        now: Timestamp,
    ) {
        let waited = now.duration_since(waiting.created).as_secs_f64().max(0.0);
        let waited_text = human(Duration::from_secs(waited as u64));
        let pin_text = pin.as_ref().map_or(String::new(), |z| {
            format!(
                " Its pods are pinned to zone {z} ({}={z}).",
                crate::zones::GRID_ZONE_LABEL
            )
        });
        let (zone_text, mean_text) = ready.planned_words();
        let message = match &ready {
            Release::Planned { reason, .. } => {
                let why = match reason {
                    ReleaseReason::Greenest => {
                        "now is the greenest start with free CPU before the latest start"
                    }
                    ReleaseReason::GainWithinError => {
                        "a later start is forecast cheaper, but by less than the forecast's error"
                    }
                    ReleaseReason::Deadline => {
                        "its latest start is less than the planner's margin away"
                    }
                    ReleaseReason::NoRoom => {
                        "no window before its latest start has free CPU for it; waiting would only risk the deadline"
                    }
                };
                format!("Ready after {waited_text}: {why} ({zone_text}{mean_text}).{pin_text}")
            }
            Release::NoForecast(why) => {
                format!(
                    "Ready at once without waiting for greener power: {why}. Availability wins."
                )
            }
            Release::Invalid(why) => {
                format!("Ready at once without waiting for greener power: {why}.")
            }
        };
        let updates = pin
            .as_ref()
            .map_or_else(Vec::new, |zone| pin_updates(&waiting.spec, zone));
        if self.write(waiting, "Ready", &message, updates).await {
            self.done.insert(
                (waiting.uid.clone(), waiting.check.clone()),
                std::time::Instant::now(),
            );
            self.metrics.ready.with_label_values(&[ready.label()]).inc();
            self.metrics.held_seconds.observe(waited);
            info!(workload = %format!("{}/{}", waiting.namespace, waiting.name), reason = ready.label(), waited_seconds = waited as u64, "kueue: check ready");
        }
    }

    /// Server-side apply of our check's entry in the Workload's status (a list map keyed
    /// by name: Kueue's own entries and other checks' stay as they are).
    pub(super) async fn write(
        &self,
        waiting: &Waiting,
        state: &str,
        message: &str,
        pod_set_updates: Vec<serde_json::Value>,
    ) -> bool {
        let api = Api::<DynamicObject>::namespaced_with(
            self.client.clone(),
            &waiting.namespace,
            &api_resource("Workload", "workloads"),
        );
        let mut entry = json!({
            "name": waiting.check,
            "state": state,
            "message": message,
            // A new message on a check still Pending is no transition.
            "lastTransitionTime": match (&waiting.since, state) {
                (Some(since), "Pending") => since.clone(),
                _ => Timestamp::now().strftime("%Y-%m-%dT%H:%M:%SZ").to_string(),
            },
        });
        if !pod_set_updates.is_empty() {
            entry["podSetUpdates"] = json!(pod_set_updates);
        }
        let status = json!({
            "apiVersion": format!("{GROUP}/{VERSION}"), "kind": "Workload",
            "status": { "admissionChecks": [entry] },
        });
        let params = PatchParams::apply(FIELD_MANAGER).force();
        match api
            .patch_status(&waiting.name, &params, &Patch::Apply(&status))
            .await
        {
            Ok(_) => true,
            Err(kube::Error::Api(status)) if status.code == 404 => false,
            Err(e) => {
                warn!(workload = %format!("{}/{}", waiting.namespace, waiting.name), error = %e, "kueue: writing the check state failed; will retry");
                false
            }
        }
    }
}
