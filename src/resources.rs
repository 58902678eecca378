//! CPU as the scheduler counts it: pods' requests and nodes' allocatable
//! CPU, from Kubernetes quantities. One parser for every caller (deferral,
//! the tuner's pending count).

use k8s_openapi::api::core::v1::{Container, Node, Pod};

/// A Kubernetes CPU quantity in vCPUs: `250m`, `2`, `0.5`, `1e3`, `2k`.
/// `None` for anything else, negative or not finite.
pub fn parse_cpu(text: &str) -> Option<f64> {
    let text = text.trim();
    let value = match text.parse::<f64>() {
        Ok(v) => v,
        Err(_) => {
            let split = text.find(|c: char| c.is_ascii_alphabetic())?;
            let (number, suffix) = text.split_at(split);
            let scale = match suffix {
                "n" => 1e-9,
                "u" => 1e-6,
                "m" => 1e-3,
                "k" => 1e3,
                "M" => 1e6,
                "G" => 1e9,
                "T" => 1e12,
                "Ki" => 1024.0,
                "Mi" => 1024.0 * 1024.0,
                "Gi" => 1024.0 * 1024.0 * 1024.0,
                _ => return None,
            };
            number.parse::<f64>().ok()? * scale
        }
    };
    (value.is_finite() && value >= 0.0).then_some(value)
}

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
    fn quantities_parse_as_kubernetes_writes_them() {
        assert_eq!(parse_cpu("250m"), Some(0.25));
        assert_eq!(parse_cpu("2"), Some(2.0));
        assert_eq!(parse_cpu(" 0.5 "), Some(0.5));
        assert_eq!(parse_cpu("1e3"), Some(1000.0));
        assert_eq!(parse_cpu("2k"), Some(2000.0));
        assert!((parse_cpu("100u").unwrap() - 1e-4).abs() < 1e-15);
        for bad in ["lots", "", "-1", "NaN", "inf", "5x", "m"] {
            assert_eq!(parse_cpu(bad), None, "{bad}");
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
