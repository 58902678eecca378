//! Our AdmissionChecks (those naming our controller), kept Active, and the
//! Workloads waiting on them.

use super::*;

impl GreenWindow {
    /// Our AdmissionChecks by name, each with its parameters or why they are unusable;
    /// marks each Active (Kueue admits nothing through an inactive check). Bad parameters
    /// keep the check Active: its Workloads are let through with the reason.
    pub(super) async fn our_checks(
        &self,
        checks: &Store<DynamicObject>,
        configs: &Store<GreenWindowConfig>,
    ) -> HashMap<String, Result<Params, String>> {
        let mut ours = HashMap::new();
        for check in checks.state() {
            let Some(spec) = parse::<AdmissionCheckSpec>(check.data.get("spec")) else {
                continue;
            };
            if spec.controller_name != CONTROLLER_NAME {
                continue;
            }
            let name = check.name_any();
            let params = match &spec.parameters {
                None => Err(format!(
                    "AdmissionCheck {name} has no spec.parameters (a GreenWindowConfig)"
                )),
                Some(p) if p.api_group != "carbon-kube.io" || p.kind != "GreenWindowConfig" => {
                    Err(format!(
                        "AdmissionCheck {name}: spec.parameters names {}/{}, not \
                         carbon-kube.io/GreenWindowConfig",
                        p.api_group, p.kind
                    ))
                }
                Some(p) => configs
                    .state()
                    .iter()
                    .find(|c| c.name_any() == p.name)
                    .map_or_else(
                        || Err(format!("GreenWindowConfig {} not found", p.name)),
                        |c| Params::from_spec(&p.name, &c.spec),
                    ),
            };
            self.mark_active(&check).await;
            ours.insert(name, params);
        }
        ours
    }

    pub(super) async fn mark_active(&self, check: &DynamicObject) {
        let active = check.data["status"]["conditions"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|c| c["type"] == "Active" && c["status"] == "True");
        if active {
            return;
        }
        let api = Api::<DynamicObject>::all_with(
            self.client.clone(),
            &api_resource("AdmissionCheck", "admissionchecks"),
        );
        let status = json!({
            "apiVersion": format!("{GROUP}/{VERSION}"), "kind": "AdmissionCheck",
            "status": { "conditions": [{
                "type": "Active", "status": "True", "reason": "Active",
                "message": "carbon-kube's leader decides this check",
                "lastTransitionTime": Timestamp::now().strftime("%Y-%m-%dT%H:%M:%SZ").to_string(),
                "observedGeneration": check.metadata.generation.unwrap_or(0),
            }]},
        });
        let params = PatchParams::apply(FIELD_MANAGER).force();
        if let Err(e) = api
            .patch_status(&check.name_any(), &params, &Patch::Apply(&status))
            .await
        {
            warn!(check = %check.name_any(), error = %e, "kueue: marking the AdmissionCheck Active failed; will retry");
        }
    }

    /// Workloads with quota reserved whose check of ours is Pending.
    pub(super) fn waiting(
        &self,
        ours: &HashMap<String, Result<Params, String>>,
        workloads: &Store<DynamicObject>,
    ) -> Vec<Waiting> {
        let mut all = Vec::new();
        for workload in workloads.state() {
            if workload.metadata.deletion_timestamp.is_some() {
                continue;
            }
            let status: WorkloadStatus = parse(workload.data.get("status")).unwrap_or_default();
            if !status.awaits_checks() {
                continue;
            }
            let Some(spec) = parse::<WorkloadSpec>(workload.data.get("spec")) else {
                continue;
            };
            let uid = workload.uid().unwrap_or_default();
            for check in ours.keys() {
                let Some(state) = status.check(check).filter(|s| s.state == "Pending") else {
                    continue;
                };
                if self.done.contains_key(&(uid.clone(), check.clone())) {
                    continue;
                }
                all.push(Waiting {
                    namespace: workload.namespace().unwrap_or_default(),
                    name: workload.name_any(),
                    uid: uid.clone(),
                    created: workload
                        .metadata
                        .creation_timestamp
                        .as_ref()
                        .map_or_else(Timestamp::now, |t| t.0),
                    check: check.clone(),
                    message: state.message.clone(),
                    since: state.last_transition_time.clone(),
                    spec: spec.clone(),
                });
            }
        }
        // Oldest first, as Kueue queues them: the planner's ties keep this order.
        all.sort_by_key(|w| w.created);
        all
    }
}
