//! NVIDIA GPU power: the node's dcgm-exporter (the GPU Operator's exporter,
//! Prometheus text, `DCGM_FI_DEV_POWER_USAGE` in watts with the pod that holds
//! each GPU), else `nvidia-smi`'s one-second average. A statically linked
//! agent cannot load NVML itself, so these two are the practical paths.

use std::time::Duration;

use crate::attribution::PodKey;

/// Board power of one GPU, and the pod dcgm-exporter maps it to, if any.
#[derive(Clone, Debug, PartialEq)]
pub struct GpuPower {
    /// The GPU's UUID, else its index.
    pub id: String,
    pub watts: f64,
    pub pod: Option<PodKey>,
}

const DCGM_POWER: &str = "DCGM_FI_DEV_POWER_USAGE";
/// Above any GPU's board power (an H100 SXM is capped at 700 W): a larger
/// figure is a unit slip or garbage, not a reading.
const MAX_GPU_WATTS: f64 = 5_000.0;
/// dcgm-exporter's page is tens of KiB even on an 8-GPU node.
const MAX_BODY_BYTES: usize = 4 << 20;

/// The GPUs in a dcgm-exporter page. Lines that do not parse are skipped, as
/// are figures no GPU draws; a GPU listed twice (one line per container
/// sharing it) counts once.
pub fn parse_dcgm(text: &str) -> Vec<GpuPower> {
    let mut gpus: Vec<GpuPower> = Vec::new();
    for line in text.lines() {
        let Some(gpu) = dcgm_line(line.trim()) else {
            continue;
        };
        if !gpus.iter().any(|g| g.id == gpu.id) {
            gpus.push(gpu);
        }
    }
    gpus
}

fn dcgm_line(line: &str) -> Option<GpuPower> {
    let rest = line.strip_prefix(DCGM_POWER)?;
    let rest = rest.strip_prefix('{')?;
    let (labels, rest) = parse_labels(rest)?;
    let watts: f64 = rest.split_whitespace().next()?.parse().ok()?;
    if !(0.0..=MAX_GPU_WATTS).contains(&watts) {
        return None;
    }
    let label = |key: &str| {
        labels
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
            .filter(|v| !v.is_empty())
    };
    let id = label("UUID").or_else(|| label("gpu"))?.to_string();
    let pod = match (label("namespace"), label("pod")) {
        (Some(namespace), Some(name)) => Some(PodKey {
            namespace: namespace.into(),
            name: name.into(),
        }),
        _ => None,
    };
    Some(GpuPower { id, watts, pod })
}

/// `k="v",k2="v2"}` → the pairs and what follows the brace, with Prometheus'
/// escapes (`\"`, `\\`, `\n`) undone.
fn parse_labels(mut rest: &str) -> Option<(Vec<(String, String)>, &str)> {
    let mut labels = Vec::new();
    loop {
        rest = rest.trim_start_matches([',', ' ']);
        if let Some(after) = rest.strip_prefix('}') {
            return Some((labels, after));
        }
        let (key, after) = rest.split_once('=')?;
        let mut chars = after.strip_prefix('"')?.char_indices();
        let mut value = String::new();
        let end = loop {
            match chars.next()? {
                (i, '"') => break i,
                (_, '\\') => match chars.next()?.1 {
                    'n' => value.push('\n'),
                    c => value.push(c),
                },
                (_, c) => value.push(c),
            }
        };
        labels.push((key.trim().to_string(), value));
        rest = &after[1 + end + 1..];
    }
}

/// `nvidia-smi --query-gpu=index,uuid,power.draw.average --format=csv,noheader,nounits`
/// output: `0, GPU-084d…, 70.99`. `[N/A]` (a GPU that cannot report) and
/// other rows that do not parse are skipped.
pub fn parse_nvidia_smi(text: &str) -> Vec<GpuPower> {
    text.lines()
        .filter_map(|line| {
            let fields: Vec<&str> = line.split(',').map(str::trim).collect();
            let [index, uuid, watts] = fields.as_slice() else {
                return None;
            };
            let watts: f64 = watts.parse().ok()?;
            if !(0.0..=MAX_GPU_WATTS).contains(&watts) {
                return None;
            }
            let id = if uuid.is_empty() { index } else { uuid };
            Some(GpuPower {
                id: id.to_string(),
                watts,
                pod: None,
            })
        })
        .collect()
}

pub const NVIDIA_SMI_ARGS: [&str; 2] = [
    "--query-gpu=index,uuid,power.draw.average",
    "--format=csv,noheader,nounits",
];

/// Why a GPU source gave nothing this time.
#[derive(Debug, thiserror::Error)]
pub enum GpuError {
    #[error("{0}")]
    Http(String),
    /// No such program: the node has no NVIDIA driver tools mounted.
    #[error("not found")]
    NotFound,
    #[error("{0}")]
    Command(String),
}

/// A client for the node-local dcgm-exporter.
pub fn http_client(timeout: Duration) -> Result<reqwest::Client, GpuError> {
    // reqwest is built with `rustls-no-provider`; main installs ring, this
    // covers `carbon-kube power` and tests (an Err means one is installed).
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::builder()
        .timeout(timeout)
        .build()
        .map_err(|e| GpuError::Http(e.to_string()))
}

pub async fn scrape_dcgm(client: &reqwest::Client, url: &str) -> Result<Vec<GpuPower>, GpuError> {
    let http = |e: reqwest::Error| GpuError::Http(e.without_url().to_string());
    let response = client.get(url).send().await.map_err(http)?;
    let status = response.status();
    if !status.is_success() {
        return Err(GpuError::Http(format!("HTTP {status}")));
    }
    if response
        .content_length()
        .is_some_and(|n| n > MAX_BODY_BYTES as u64)
    {
        return Err(GpuError::Http("response too large".into()));
    }
    let body = response.bytes().await.map_err(http)?;
    if body.len() > MAX_BODY_BYTES {
        return Err(GpuError::Http("response too large".into()));
    }
    Ok(parse_dcgm(&String::from_utf8_lossy(&body)))
}

pub async fn run_nvidia_smi(program: &str, timeout: Duration) -> Result<Vec<GpuPower>, GpuError> {
    let run = tokio::process::Command::new(program)
        .args(NVIDIA_SMI_ARGS)
        .kill_on_drop(true)
        .output();
    let output = match tokio::time::timeout(timeout, run).await {
        Err(_) => return Err(GpuError::Command(format!("no answer in {timeout:?}"))),
        Ok(Err(e)) if e.kind() == std::io::ErrorKind::NotFound => return Err(GpuError::NotFound),
        Ok(Err(e)) => return Err(GpuError::Command(e.to_string())),
        Ok(Ok(output)) => output,
    };
    if !output.status.success() {
        let stderr = String::from_utf8_lossy(&output.stderr);
        return Err(GpuError::Command(format!(
            "{}: {}",
            output.status,
            stderr.trim()
        )));
    }
    Ok(parse_nvidia_smi(&String::from_utf8_lossy(&output.stdout)))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// As dcgm-exporter 4.x prints it with Kubernetes pod mapping on.
    pub const DCGM_PAGE: &str = r#"# HELP DCGM_FI_DEV_SM_CLOCK SM clock frequency (in MHz).
# TYPE DCGM_FI_DEV_SM_CLOCK gauge
DCGM_FI_DEV_SM_CLOCK{gpu="0",UUID="GPU-084d027b-10f6-aae3-8906-199d53e7efba",pci_bus_id="00000000:00:07.0",device="nvidia0",modelName="NVIDIA H100 80GB HBM3",Hostname="node-a",DCGM_FI_DRIVER_VERSION="580.65.06",container="train",namespace="ml",pod="trainer-0"} 1980
# HELP DCGM_FI_DEV_POWER_USAGE Power draw (in W).
# TYPE DCGM_FI_DEV_POWER_USAGE gauge
DCGM_FI_DEV_POWER_USAGE{gpu="0",UUID="GPU-084d027b-10f6-aae3-8906-199d53e7efba",pci_bus_id="00000000:00:07.0",device="nvidia0",modelName="NVIDIA H100 80GB HBM3",Hostname="node-a",DCGM_FI_DRIVER_VERSION="580.65.06",container="train",namespace="ml",pod="trainer-0"} 654.25
DCGM_FI_DEV_POWER_USAGE{gpu="0",UUID="GPU-084d027b-10f6-aae3-8906-199d53e7efba",container="sidecar",namespace="ml",pod="trainer-0"} 654.25
DCGM_FI_DEV_POWER_USAGE{gpu="1",UUID="GPU-11111111-2222-3333-4444-555555555555",modelName="NVIDIA H100 80GB HBM3",Hostname="node-a",note="a \"quoted\", {braced} value",container="",namespace="",pod=""} 71
DCGM_FI_DEV_POWER_USAGE{gpu="2",UUID="GPU-bad"} NaN
DCGM_FI_DEV_POWER_USAGE{gpu="3",UUID="GPU-huge"} 71000
DCGM_FI_DEV_POWER_USAGE{gpu="4",UUID="GPU-neg"} -1
DCGM_FI_DEV_POWER_USAGE{gpu="5",UUID="GPU-cut
DCGM_FI_DEV_POWER_USAGE 12
}{{ garbage line "
DCGM_FI_DEV_POWER_USAGE_TOTAL{gpu="0",UUID="GPU-x"} 1
"#;

    #[test]
    fn dcgm_page_gives_each_gpu_once_with_its_pod() {
        let gpus = parse_dcgm(DCGM_PAGE);
        assert_eq!(
            gpus,
            [
                GpuPower {
                    id: "GPU-084d027b-10f6-aae3-8906-199d53e7efba".into(),
                    watts: 654.25,
                    pod: Some(PodKey {
                        namespace: "ml".into(),
                        name: "trainer-0".into()
                    }),
                },
                GpuPower {
                    id: "GPU-11111111-2222-3333-4444-555555555555".into(),
                    watts: 71.0,
                    pod: None,
                },
            ]
        );
        assert!(parse_dcgm("").is_empty());
        assert!(parse_dcgm("<html>502 Bad Gateway</html>").is_empty());
    }

    #[test]
    fn nvidia_smi_rows_parse_and_unreadable_gpus_are_skipped() {
        let out = "0, GPU-084d027b-10f6-aae3-8906-199d53e7efba, 70.99\n\
                   1, GPU-aaaa, [N/A]\n\
                   2, , 300.5\n\
                   garbage\n";
        let gpus = parse_nvidia_smi(out);
        assert_eq!(gpus.len(), 2, "{gpus:?}");
        assert_eq!(gpus[0].id, "GPU-084d027b-10f6-aae3-8906-199d53e7efba");
        assert_eq!(gpus[0].watts, 70.99);
        assert_eq!((gpus[1].id.as_str(), gpus[1].watts), ("2", 300.5));
    }
}
