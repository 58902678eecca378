//! CPU as the scheduler counts it: pods' requests and nodes' allocatable
//! CPU, from Kubernetes quantities. One parser for every caller (deferral,
//! the tuner's pending count).

use carbon_kube_core::quantity::parse_cpu;
use k8s_openapi::api::core::v1::{Container, Node, Pod};

fn container_cpu(container: &Container) -> f64 {
    container
        .resources
        .as_ref()
        .and_then(|r| r.requests.as_ref())
        .and_then(|r| r.get("cpu"))
        .and_then(|q| parse_cpu(&q.0))
        .unwrap_or(0.0)
}

/// The CPU the scheduler reserves for a pod, in vCPUs: the larger of its
/// containers' requests together and its largest init container's, plus
/// the pod overhead. (The API server fills a request from the limit when only
/// a limit is given, so requests are all there is to read.)
pub fn pod_cpu_request(pod: &Pod) -> f64 {
    let Some(spec) = pod.spec.as_ref() else {
        return 0.0;
    };
    let containers: f64 = spec.containers.iter().map(container_cpu).sum();
    let init = spec
        .init_containers
        .iter()
        .flatten()
        .map(container_cpu)
        .fold(0.0, f64::max);
    let overhead = spec
        .overhead
        .as_ref()
        .and_then(|o| o.get("cpu"))
        .and_then(|q| parse_cpu(&q.0))
        .unwrap_or(0.0);
    containers.max(init) + overhead
}

/// A node's allocatable CPU in vCPUs (0 when it reports none).
pub fn node_allocatable_cpu(node: &Node) -> f64 {
    node.status
        .as_ref()
        .and_then(|s| s.allocatable.as_ref())
        .and_then(|a| a.get("cpu"))
        .and_then(|q| parse_cpu(&q.0))
        .unwrap_or(0.0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{PodSpec, ResourceRequirements};
    use k8s_openapi::apimachinery::pkg::api::resource::Quantity;

    fn container(cpu: Option<&str>) -> Container {
        Container {
            name: "c".into(),
            resources: cpu.map(|cpu| ResourceRequirements {
                requests: Some([("cpu".to_string(), Quantity(cpu.into()))].into()),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn a_pod_reserves_its_containers_or_its_largest_init_container_plus_overhead() {
        let mut pod = Pod {
            spec: Some(PodSpec {
                containers: vec![
                    container(Some("500m")),
                    container(Some("1")),
                    container(None),
                ],
                ..Default::default()
            }),
            ..Default::default()
        };
        assert_eq!(pod_cpu_request(&pod), 1.5);
        let spec = pod.spec.as_mut().unwrap();
        spec.init_containers = Some(vec![container(Some("2")), container(Some("100m"))]);
        assert_eq!(pod_cpu_request(&pod), 2.0);
        pod.spec.as_mut().unwrap().overhead =
            Some([("cpu".to_string(), Quantity("250m".into()))].into());
        assert_eq!(pod_cpu_request(&pod), 2.25);
        assert_eq!(pod_cpu_request(&Pod::default()), 0.0);
    }
}
