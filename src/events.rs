//! Events on pods, as the leader's deferral and migration loops record them:
//! one reporting controller, and a failure to record is logged, never fatal
//! (the action the event describes has happened either way).

use k8s_openapi::api::core::v1::Pod;
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::{Client, Resource, ResourceExt};
use tracing::warn;

/// The `reportingController` of our events.
pub const CONTROLLER: &str = "carbon-kube";

/// `namespace/name`, as logs and events name a pod.
pub fn pod_key(pod: &Pod) -> String {
    format!("{}/{}", pod.namespace().unwrap_or_default(), pod.name_any())
}

pub struct PodEvents {
    recorder: Recorder,
    /// The loop recording, for the log line when recording fails.
    loop_name: &'static str,
}

impl PodEvents {
    pub fn new(client: Client, identity: &str, loop_name: &'static str) -> Self {
        let reporter = Reporter {
            controller: CONTROLLER.into(),
            instance: Some(identity.to_string()),
        };
        Self {
            recorder: Recorder::new(client, reporter),
            loop_name,
        }
    }

    pub async fn publish(
        &self,
        pod: &Pod,
        type_: EventType,
        reason: &str,
        action: &str,
        note: String,
    ) {
        let event = Event {
            type_,
            reason: reason.into(),
            note: Some(note),
            action: action.into(),
            secondary: None,
        };
        if let Err(e) = self.recorder.publish(&event, &pod.object_ref(&())).await {
            warn!(pod = %pod_key(pod), error = %e, "{}: recording an event failed (RBAC: events.k8s.io events create/patch)", self.loop_name);
        }
    }
}
