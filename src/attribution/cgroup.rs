//! Reading pod CPU time from the host's cgroup v2 tree.
//!
//! The kubelet puts each pod in a cgroup named after its UID, under a QoS
//! branch, in one of two spellings depending on its cgroup driver:
//!
//! ```text
//! systemd:  kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod<uid, - as _>.slice
//!           kubepods.slice/kubepods-pod<uid>.slice                     (Guaranteed)
//! cgroupfs: kubepods/burstable/pod<uid>
//!           kubepods/pod<uid>                                          (Guaranteed)
//! ```
//!
//! A custom kubelet `--cgroup-root` nests the same shapes one level down (kind:
//! `kubelet.slice/kubelet-kubepods.slice/…`). A pod cgroup's `cpu.stat` counts
//! its containers too, so the walk stops at pod cgroups.

use std::collections::HashMap;
use std::io;
use std::path::Path;

/// Pod CPU time in microseconds, keyed by pod UID.
pub type CpuUsage = HashMap<String, u64>;

/// Deep enough for `<custom root>/kubepods/<qos>/pod<uid>`, shallow enough
/// that a wrong `--cgroup-root` (say `/`) cannot make the walk expensive.
const MAX_DEPTH: usize = 4;

/// The pod UID in a cgroup directory name, in either driver's spelling.
pub fn pod_uid(dir_name: &str) -> Option<String> {
    let uid = match dir_name.strip_suffix(".slice") {
        // systemd escapes the UID's dashes as underscores.
        Some(unit) => unit.rsplit_once("-pod")?.1.replace('_', "-"),
        None => dir_name.strip_prefix("pod")?.to_string(),
    };
    is_uid(&uid).then_some(uid)
}

/// A UUID, or the 32-hex-digit hash the kubelet uses as a static pod's UID.
fn is_uid(text: &str) -> bool {
    let hex_or_dash = text.chars().all(|c| c.is_ascii_hexdigit() || c == '-');
    let digits = text.chars().filter(char::is_ascii_hexdigit).count();
    hex_or_dash && digits == 32 && text.len() <= 36
}

/// Directories on the way to pod cgroups: the kubepods branch and its QoS classes.
fn is_kubepods_branch(dir_name: &str) -> bool {
    dir_name.contains("kubepods")
        || matches!(dir_name, "burstable" | "besteffort")
        || dir_name.starts_with("kubelet")
}

/// Whether `root` holds a kubepods branch at all: without one (cgroup v1, or
/// the container's own cgroup namespace instead of the host's), attribution is off.
pub fn has_kubepods(root: &Path) -> bool {
    let has_branch = |dir: &Path| {
        std::fs::read_dir(dir).is_ok_and(|entries| {
            entries
                .flatten()
                .any(|e| e.file_name().to_string_lossy().contains("kubepods"))
        })
    };
    has_branch(root) || has_branch(&root.join("kubelet.slice")) || has_branch(&root.join("kubelet"))
}

/// The `usage_usec` line of a cgroup v2 `cpu.stat`.
pub fn usage_usec(cpu_stat: &str) -> Option<u64> {
    cpu_stat
        .lines()
        .find_map(|line| line.strip_prefix("usage_usec "))
        .and_then(|value| value.trim().parse().ok())
}

/// CPU time of every pod cgroup under `root`. A pod whose cgroup vanishes
/// mid-walk is skipped, not an error: pods come and go all the time.
pub fn pod_cpu_usage(root: &Path) -> io::Result<CpuUsage> {
    let mut usage = CpuUsage::new();
    walk(root, 0, &mut usage)?;
    Ok(usage)
}

fn walk(dir: &Path, depth: usize, usage: &mut CpuUsage) -> io::Result<()> {
    for entry in std::fs::read_dir(dir)?.flatten() {
        if !entry.file_type().is_ok_and(|t| t.is_dir()) {
            continue;
        }
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if let Some(uid) = pod_uid(&name) {
            let stat = std::fs::read_to_string(entry.path().join("cpu.stat"));
            if let Some(usec) = stat.ok().as_deref().and_then(usage_usec) {
                usage.insert(uid, usec);
            }
        } else if depth < MAX_DEPTH && is_kubepods_branch(&name) {
            // A branch that disappears under us is as harmless as a pod that does.
            let _ = walk(&entry.path(), depth + 1, usage);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const UID: &str = "0f6a3e4c-1b2d-4e5f-8a9b-0c1d2e3f4a5b";

    #[test]
    fn both_drivers_spellings_give_the_uid() {
        let systemd = format!("kubepods-burstable-pod{}.slice", UID.replace('-', "_"));
        assert_eq!(pod_uid(&systemd).as_deref(), Some(UID));
        let guaranteed = format!("kubepods-pod{}.slice", UID.replace('-', "_"));
        assert_eq!(pod_uid(&guaranteed).as_deref(), Some(UID));
        let kind = format!(
            "kubelet-kubepods-besteffort-pod{}.slice",
            UID.replace('-', "_")
        );
        assert_eq!(pod_uid(&kind).as_deref(), Some(UID));
        assert_eq!(pod_uid(&format!("pod{UID}")).as_deref(), Some(UID));
        let static_pod = "pod6b7e3c6fd1c2f4e8a9b0c1d2e3f4a5b6";
        assert_eq!(pod_uid(static_pod).as_deref(), Some(&static_pod[3..]));
    }

    #[test]
    fn other_cgroups_are_not_pods() {
        for name in [
            "kubepods.slice",
            "kubepods-burstable.slice",
            "burstable",
            "system.slice",
            "podman.slice",
            "pod",
            "podnothex-0000-0000-0000-000000000000",
            &format!("pod{UID}0"),
            "cri-containerd-4f1c2a.scope",
        ] {
            assert_eq!(pod_uid(name), None, "{name}");
        }
    }

    #[test]
    fn usage_is_read_from_cpu_stat() {
        let stat = "usage_usec 1234567\nuser_usec 1000000\nsystem_usec 234567\nnr_periods 0\n";
        assert_eq!(usage_usec(stat), Some(1_234_567));
        assert_eq!(usage_usec("user_usec 5\n"), None);
        assert_eq!(usage_usec("usage_usec lots\n"), None);
    }

    fn write_pod(dir: &Path, usec: u64) {
        std::fs::create_dir_all(dir.join("cri-containerd-abc.scope")).unwrap();
        std::fs::write(
            dir.join("cpu.stat"),
            format!("usage_usec {usec}\nuser_usec 1\n"),
        )
        .unwrap();
        // A container's own cpu.stat must not be counted a second time.
        std::fs::write(
            dir.join("cri-containerd-abc.scope/cpu.stat"),
            "usage_usec 999\n",
        )
        .unwrap();
    }

    #[test]
    fn the_walk_finds_pods_of_both_drivers_and_stops_at_pods() {
        let root = std::env::temp_dir().join(format!("ck-cgroup-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        let other = "11111111-2222-3333-4444-555555555555";
        let systemd = root
            .join("kubepods.slice/kubepods-burstable.slice")
            .join(format!(
                "kubepods-burstable-pod{}.slice",
                UID.replace('-', "_")
            ));
        write_pod(&systemd, 500);
        write_pod(
            &root.join("kubepods/besteffort").join(format!("pod{other}")),
            70,
        );
        std::fs::create_dir_all(root.join("system.slice/pod-looking.slice")).unwrap();
        assert!(has_kubepods(&root));
        let usage = pod_cpu_usage(&root).unwrap();
        assert_eq!(
            usage,
            CpuUsage::from([(UID.into(), 500), (other.into(), 70)])
        );
        assert!(!has_kubepods(&root.join("system.slice")));
        assert!(pod_cpu_usage(&root.join("missing")).is_err());
        std::fs::remove_dir_all(&root).unwrap();
    }
}
