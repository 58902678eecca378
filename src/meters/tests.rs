use std::sync::{Arc, Mutex};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

use super::testing::FakeSys;
use super::*;
use crate::power::PowerCoefficients;
use crate::power::measured::{Breakdown, ModelInputs};

/// A dcgm-exporter stand-in: answers every request with the current status and page.
async fn exporter(page: Arc<Mutex<(u16, String)>>) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/metrics", listener.local_addr().unwrap());
    tokio::spawn(async move {
        loop {
            let Ok((mut socket, _)) = listener.accept().await else {
                return;
            };
            let (status, body) = page.lock().unwrap().clone();
            tokio::spawn(async move {
                let mut request = [0u8; 4096];
                let _ = socket.read(&mut request).await;
                let reply = format!(
                    "HTTP/1.1 {status} X\r\ncontent-type: text/plain; version=0.0.4\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = socket.write_all(reply.as_bytes()).await;
            });
        }
    });
    url
}

fn gpu_line(index: u32, uuid: &str, pod: &str, watts: f64) -> String {
    format!(
        "DCGM_FI_DEV_POWER_USAGE{{gpu=\"{index}\",UUID=\"{uuid}\",modelName=\"NVIDIA H100 80GB HBM3\",Hostname=\"n\",container=\"c\",namespace=\"ml\",pod=\"{pod}\"}} {watts}\n"
    )
}

fn settings(sys: &FakeSys, dcgm_url: Option<String>, nvidia_smi: Option<String>) -> MeterSettings {
    MeterSettings {
        sysfs_root: sys.root.clone(),
        dcgm_url,
        nvidia_smi,
    }
}

fn gpu_watts(sample: &MeterSample) -> Vec<(String, f64, Source)> {
    sample
        .parts
        .iter()
        .filter(|p| p.kind == PartKind::Gpu)
        .map(|p| (p.device.clone(), p.watts, p.source))
        .collect()
}

/// A fake `nvidia-smi` that prints `rows` only when asked the agent's exact query.
fn fake_nvidia_smi(sys: &FakeSys, rows: &str) -> String {
    let path = sys.root.join("bin/nvidia-smi");
    sys.write(
        "bin/nvidia-smi",
        &format!(
            "#!/bin/sh\n[ \"$*\" = \"{}\" ] || {{ echo \"unexpected arguments: $*\" >&2; exit 2; }}\nprintf '{rows}'\n",
            gpu::NVIDIA_SMI_ARGS.join(" ")
        ),
    );
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    path.display().to_string()
}

#[tokio::test]
async fn dcgm_gpus_with_pods_one_that_disappears_and_garbage() {
    let sys = FakeSys::new("dcgm");
    let page = Arc::new(Mutex::new((
        200,
        format!(
            "# TYPE DCGM_FI_DEV_POWER_USAGE gauge\n{}{}",
            gpu_line(0, "GPU-a", "trainer-0", 650.5),
            gpu_line(1, "GPU-b", "", 71.0)
        ),
    )));
    let url = exporter(page.clone()).await;
    let mut meters = Meters::new(settings(&sys, Some(url), None));

    let first = meters.read().await;
    assert_eq!(
        gpu_watts(&first),
        [
            ("GPU-a".into(), 650.5, Source::Dcgm),
            ("GPU-b".into(), 71.0, Source::Dcgm)
        ]
    );
    let trainer = PodKey {
        namespace: "ml".into(),
        name: "trainer-0".into(),
    };
    assert_eq!(first.pod_gpu_watts, BTreeMap::from([(trainer, 650.5)]));
    assert_eq!(first.sources, BTreeSet::from([Source::Dcgm]));

    // GPU-a falls off the bus between samples.
    page.lock().unwrap().1 = gpu_line(1, "GPU-b", "", 72.0);
    let second = meters.read().await;
    assert_eq!(gpu_watts(&second), [("GPU-b".into(), 72.0, Source::Dcgm)]);
    assert!(second.pod_gpu_watts.is_empty());

    // Garbage, then a failing exporter: no GPU figure, nothing made up.
    page.lock().unwrap().1 = "<html>oops</html>\nDCGM_FI_DEV_POWER_USAGE{gpu=\"0\" 5\n".into();
    assert!(meters.read().await.parts.is_empty());
    *page.lock().unwrap() = (503, gpu_line(1, "GPU-b", "", 72.0));
    let failing = meters.read().await;
    assert!(failing.parts.is_empty() && failing.sources.is_empty());
}

#[tokio::test]
async fn nvidia_smi_stands_in_when_dcgm_gives_nothing() {
    let sys = FakeSys::new("nvidia-smi");
    let page = Arc::new(Mutex::new((200, "# no GPUs here\n".to_string())));
    let url = exporter(page).await;
    let smi = fake_nvidia_smi(&sys, "0, GPU-084d, 70.99\\n1, GPU-0aa1, [N/A]\\n");
    let mut meters = Meters::new(settings(&sys, Some(url), Some(smi)));
    let sample = meters.read().await;
    assert_eq!(
        gpu_watts(&sample),
        [("GPU-084d".into(), 70.99, Source::NvidiaSmi)]
    );
    assert!(sample.pod_gpu_watts.is_empty(), "nvidia-smi knows no pods");

    // Missing and failing programs give nothing, without an error.
    for program in ["/nonexistent/nvidia-smi".to_string(), "false".into()] {
        let mut meters = Meters::new(settings(&sys, None, Some(program)));
        assert!(meters.read().await.parts.is_empty());
    }
}

#[tokio::test]
async fn sysfs_sources_measure_and_an_unreadable_tree_falls_back_to_the_model() {
    let sys = FakeSys::new("meters");
    sys.write("class/powercap/intel-rapl:0/name", "package-0");
    sys.write("class/powercap/intel-rapl:0/energy_uj", "1000");
    sys.write(
        "class/powercap/intel-rapl:0/max_energy_range_uj",
        "262143328850",
    );
    sys.write("class/hwmon/hwmon0/name", "amdgpu");
    sys.write("class/hwmon/hwmon0/power1_average", "95000000");
    let mut meters = Meters::new(settings(&sys, None, None));
    let first = meters.read().await;
    assert_eq!(first.sources, BTreeSet::from([Source::Rapl, Source::Hwmon]));
    sys.write("class/powercap/intel-rapl:0/energy_uj", "5000000");
    let second = meters.read().await;
    let cpu: Vec<_> = second
        .parts
        .iter()
        .filter(|p| p.kind == PartKind::Cpu)
        .collect();
    assert_eq!(cpu.len(), 1, "{second:?}");
    assert_eq!(cpu[0].source, Source::Rapl);
    assert!(cpu[0].watts > 0.0);

    let c = PowerCoefficients::for_architecture("Skylake");
    let model = ModelInputs {
        vcpus: 4.0,
        cpu_utilisation: 0.5,
        memory_gb: 16.0,
    };
    let measured = Breakdown::combine(&second.parts, model, &c);
    assert!(measured.cpu_measured() && measured.measured_share() > 0.0);

    // The same tree with every figure unreadable: nothing measured, the model's figures.
    sys.replace_with_dir("class/powercap/intel-rapl:0/energy_uj");
    sys.replace_with_dir("class/hwmon/hwmon0/power1_average");
    let mut meters = Meters::new(settings(&sys, None, None));
    let sample = meters.read().await;
    assert!(sample.sources.is_empty() && sample.parts.is_empty());
    let modelled = Breakdown::combine(&sample.parts, model, &c);
    assert_eq!(modelled.measured_share(), 0.0);
    let expected = crate::power::node_watts(&c, 4.0, 0.5, 16.0);
    assert!((modelled.total_watts() - expected).abs() < 1e-9);
}
