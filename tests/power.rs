//! `carbon-kube power` as an operator runs it on a node: each figure with its
//! source, on a fake sysfs tree, a local dcgm-exporter, and a fake `nvidia-smi`
//! found on PATH.

use std::io::{Read, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::Command;

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("ck-power-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn write(root: &Path, path: &str, text: &str) {
    let path = root.join(path);
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, text).unwrap();
}

/// Serves `page` as dcgm-exporter would, to every request, on a thread.
fn dcgm_exporter(page: &'static str) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/metrics", listener.local_addr().unwrap());
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { return };
            let mut request = [0u8; 4096];
            let _ = stream.read(&mut request);
            let _ = write!(
                stream,
                "HTTP/1.1 200 OK\r\ncontent-type: text/plain; version=0.0.4\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{page}",
                page.len()
            );
        }
    });
    url
}

/// Runs `carbon-kube power` with only `path` on PATH; stdout and stderr.
fn power(args: &[&str], path: &Path) -> (String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_carbon-kube"))
        .arg("power")
        .args(args)
        .env("PATH", path)
        .env("CARBON_KUBE_LOG", "info")
        .output()
        .expect("carbon-kube runs");
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(out.status.success(), "{stdout}\n{stderr}");
    (stdout, stderr)
}

fn line<'a>(out: &'a str, device: &str) -> &'a str {
    out.lines()
        .find(|l| l.split_whitespace().nth(1) == Some(device))
        .unwrap_or_else(|| panic!("no {device} line in:\n{out}"))
}

#[test]
fn each_figure_says_its_source() {
    let dir = scratch("sources");
    let sys = dir.join("sys");
    write(&sys, "class/powercap/intel-rapl:0/name", "package-0\n");
    write(&sys, "class/powercap/intel-rapl:0/energy_uj", "123456\n");
    write(
        &sys,
        "class/powercap/intel-rapl:0/max_energy_range_uj",
        "262143328850\n",
    );
    write(&sys, "class/hwmon/hwmon3/name", "amdgpu\n");
    write(&sys, "class/hwmon/hwmon3/power1_average", "95000000\n");
    let url = dcgm_exporter(
        "# TYPE DCGM_FI_DEV_POWER_USAGE gauge\n\
         DCGM_FI_DEV_POWER_USAGE{gpu=\"0\",UUID=\"GPU-84d0\",namespace=\"ml\",pod=\"trainer-0\"} 654.5\n",
    );
    let empty = dir.join("empty-bin");
    std::fs::create_dir_all(&empty).unwrap();
    let (out, err) = power(
        &["--sysfs-root", sys.to_str().unwrap(), "--dcgm-url", &url],
        &empty,
    );
    // The counter did not move between the two reads: 0 W, but measured.
    let cpu = line(&out, "intel-rapl:0/package-0");
    assert!(
        cpu.starts_with("cpu") && cpu.contains(" 0.00 ") && cpu.ends_with("rapl (measured)"),
        "{out}"
    );
    let amd = line(&out, "hwmon3/amdgpu");
    assert!(
        amd.starts_with("gpu") && amd.contains(" 95.00 ") && amd.ends_with("hwmon (measured)"),
        "{out}"
    );
    let nvidia = line(&out, "GPU-84d0");
    assert!(
        nvidia.contains(" 654.50 ") && nvidia.ends_with("dcgm-exporter (measured)"),
        "{out}"
    );
    assert!(line(&out, "memory").ends_with("model (modelled)"), "{out}");
    assert!(
        out.contains("Power: measured by rapl, hwmon, dcgm-exporter;"),
        "{out}"
    );
    assert!(err.contains("measured power found"), "{err}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn nvidia_smi_on_path_stands_in_for_an_unreachable_dcgm_exporter() {
    let dir = scratch("nvidia-smi");
    let bin = dir.join("bin");
    // Answers only the exact query the agent is documented to make.
    write(
        &bin,
        "nvidia-smi",
        "#!/bin/sh\n\
         [ \"$*\" = \"--query-gpu=index,uuid,power.draw.average --format=csv,noheader,nounits\" ] \
         || { echo \"unexpected: $*\" >&2; exit 2; }\n\
         echo '0, GPU-084d027b-10f6-aae3-8906-199d53e7efba, 70.99'\n\
         echo '1, GPU-2, [N/A]'\n",
    );
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(
        bin.join("nvidia-smi"),
        std::fs::Permissions::from_mode(0o755),
    )
    .unwrap();
    // A port that was free a moment ago: nothing listens there now.
    let closed = {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        format!("http://{}/metrics", listener.local_addr().unwrap())
    };
    let (out, err) = power(
        &[
            "--sysfs-root",
            dir.join("no-sys").to_str().unwrap(),
            "--dcgm-url",
            &closed,
        ],
        &bin,
    );
    let gpu = line(&out, "GPU-084d027b-10f6-aae3-8906-199d53e7efba");
    assert!(
        gpu.contains(" 70.99 ") && gpu.ends_with("nvidia-smi (measured)"),
        "{out}"
    );
    assert!(
        !out.contains("GPU-2"),
        "a GPU without a reading is left out: {out}"
    );
    assert!(
        err.contains("dcgm-exporter at"),
        "the failing exporter is named: {err}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn without_any_meter_the_model_is_used_and_said_once() {
    let dir = scratch("none");
    let (out, err) = power(&["--sysfs-root", dir.to_str().unwrap()], &dir);
    assert!(line(&out, "cpu").ends_with("model (modelled)"), "{out}");
    assert!(line(&out, "memory").ends_with("model (modelled)"), "{out}");
    assert!(out.contains("; 0 % measured"), "{out}");
    assert!(out.contains("Power: modelled"), "{out}");
    assert_eq!(err.matches("no power meter found").count(), 1, "{err}");
    std::fs::remove_dir_all(&dir).unwrap();
}
