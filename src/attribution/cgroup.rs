//! Reading pod CPU time from the host's cgroup tree, v2 or v1.
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
//! `kubelet.slice/kubelet-kubepods.slice/…`; any name with cgroupfs). On cgroup v2
//! a pod's CPU time is `usage_usec` in its `cpu.stat`; on cgroup v1 (still the
//! default on many nodes) the tree is per controller, and the time is in the
//! `cpuacct` hierarchy's `cpuacct.usage`, in nanoseconds. Either way a pod
//! cgroup counts its containers too, so the walk stops at pod cgroups.

use std::collections::HashMap;
use std::io;
use std::path::{Path, PathBuf};

/// Pod CPU time in microseconds, keyed by pod UID.
pub type CpuUsage = HashMap<String, u64>;

/// Deep enough for `kubepods/<qos>/pod<uid>` below a kubelet root, shallow
/// enough that a wrong `--cgroup-root` (say `/`) cannot make the walk expensive.
const MAX_DEPTH: usize = 3;

/// Where a cgroup v1 host mounts the CPU accounting controller, under the
/// cgroup mount: alone, or co-mounted with `cpu` (either order).
const V1_ACCOUNTING: [&str; 3] = ["cpuacct", "cpu,cpuacct", "cpuacct,cpu"];

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
    dir_name.contains("kubepods") || matches!(dir_name, "burstable" | "besteffort")
}

fn subdirectories(dir: &Path) -> impl Iterator<Item = PathBuf> {
    std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
        .map(|e| e.path())
}

fn is_kubepods_name(dir: &Path) -> bool {
    dir.file_name()
        .is_some_and(|n| n.to_string_lossy().contains("kubepods"))
}

fn holds_kubepods(dir: &Path) -> bool {
    subdirectories(dir).any(|d| is_kubepods_name(&d))
}

/// The kubelet roots under `root`: `root` itself when a kubepods branch is
/// right there, and every directory one level down that holds one (a custom
/// `--cgroup-root`; several where several kubelets share a host, as in tests).
fn kubelet_roots(root: &Path) -> Vec<PathBuf> {
    let here = holds_kubepods(root).then(|| root.to_path_buf());
    let below = subdirectories(root).filter(|d| !is_kubepods_name(d) && holds_kubepods(d));
    here.into_iter().chain(below).collect()
}

/// The tree to read pod CPU time from, given the host's cgroup mount: its v1
/// `cpuacct` hierarchy on a cgroup v1 host (the other v1 hierarchies have pod
/// cgroups too, but no CPU time), else the mount itself (cgroup v2, or pointed
/// straight at a hierarchy). None without any kubepods branch: attribution is
/// then off (the container's own cgroup namespace instead of the host's, say).
pub fn accounting_root(root: &Path) -> Option<PathBuf> {
    V1_ACCOUNTING
        .iter()
        .map(|h| root.join(h))
        .chain(std::iter::once(root.to_path_buf()))
        .find(|candidate| !kubelet_roots(candidate).is_empty())
}

/// The `usage_usec` line of a cgroup v2 `cpu.stat`.
pub fn usage_usec(cpu_stat: &str) -> Option<u64> {
    cpu_stat
        .lines()
        .find_map(|line| line.strip_prefix("usage_usec "))
        .and_then(|value| value.trim().parse().ok())
}

/// A cgroup v1 `cpuacct.usage` (nanoseconds), in microseconds.
pub fn cpuacct_usage_usec(cpuacct_usage: &str) -> Option<u64> {
    cpuacct_usage.trim().parse::<u64>().ok().map(|ns| ns / 1000)
}

/// A pod cgroup's CPU time: v2 `cpu.stat`, else v1 `cpuacct.usage`. (A v1
/// `cpu,cpuacct` hierarchy has a `cpu.stat` too, without `usage_usec`.)
fn pod_usage_usec(dir: &Path) -> Option<u64> {
    let read = |file: &str| std::fs::read_to_string(dir.join(file)).ok();
    read("cpu.stat")
        .as_deref()
        .and_then(usage_usec)
        .or_else(|| {
            read("cpuacct.usage")
                .as_deref()
                .and_then(cpuacct_usage_usec)
        })
}

/// CPU time of every pod cgroup under `root` (from [`accounting_root`]). A
/// pod whose cgroup vanishes mid-walk is skipped, not an error: pods come and
/// go all the time.
pub fn pod_cpu_usage(root: &Path) -> io::Result<CpuUsage> {
    std::fs::metadata(root)?;
    let mut usage = CpuUsage::new();
    for kubelet_root in kubelet_roots(root) {
        walk(&kubelet_root, 0, &mut usage);
    }
    Ok(usage)
}

fn walk(dir: &Path, depth: usize, usage: &mut CpuUsage) {
    for path in subdirectories(dir) {
        let name = path.file_name().unwrap_or_default().to_string_lossy();
        if let Some(uid) = pod_uid(&name) {
            if let Some(usec) = pod_usage_usec(&path) {
                usage.insert(uid, usec);
            }
        } else if depth < MAX_DEPTH && is_kubepods_branch(&name) {
            // A branch that disappears under us is as harmless as a pod that does.
            walk(&path, depth + 1, usage);
        }
    }
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

    fn fake_root(name: &str) -> PathBuf {
        let root = std::env::temp_dir().join(format!("ck-cgroup-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        root
    }

    #[test]
    fn the_walk_finds_pods_of_both_drivers_and_stops_at_pods() {
        let root = fake_root("v2");
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
        assert_eq!(accounting_root(&root), Some(root.clone()));
        let usage = pod_cpu_usage(&root).unwrap();
        assert_eq!(
            usage,
            CpuUsage::from([(UID.into(), 500), (other.into(), 70)])
        );
        assert_eq!(accounting_root(&root.join("system.slice")), None);
        assert!(pod_cpu_usage(&root.join("missing")).is_err());
        std::fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn cpuacct_usage_is_nanoseconds() {
        assert_eq!(cpuacct_usage_usec("1234567890\n"), Some(1_234_567));
        assert_eq!(cpuacct_usage_usec("0"), Some(0));
        assert_eq!(cpuacct_usage_usec("-1"), None);
        assert_eq!(cpuacct_usage_usec(""), None);
    }

    /// A pod's cgroups on a v1 host, as the kubelet with the cgroupfs driver makes
    /// them: one per hierarchy, CPU time in cpuacct's `cpuacct.usage` (ns).
    fn write_v1_pod(hierarchy: &Path, kubelet_root: &str, uid: &str, ns: u64) {
        let dir = hierarchy
            .join(kubelet_root)
            .join("kubepods/burstable")
            .join(format!("pod{uid}"));
        std::fs::create_dir_all(dir.join("a1b2c3")).unwrap();
        std::fs::write(dir.join("cpuacct.usage"), format!("{ns}\n")).unwrap();
        std::fs::write(dir.join("a1b2c3/cpuacct.usage"), "999\n").unwrap();
    }

    #[test]
    fn a_v1_host_is_read_from_its_cpuacct_hierarchy() {
        let other = "11111111-2222-3333-4444-555555555555";
        for hierarchy in V1_ACCOUNTING {
            let mount = fake_root("v1");
            for controller in ["cpuset", "memory", "pids", "systemd", "unified"] {
                std::fs::create_dir_all(mount.join(controller).join("kubepods/burstable")).ok();
            }
            std::fs::create_dir_all(mount.join(hierarchy).join("system.slice")).unwrap();
            // Default cgroup root, and a custom one beside it (two kubelets on one host).
            write_v1_pod(&mount.join(hierarchy), "", UID, 2_500_000_000);
            write_v1_pod(&mount.join(hierarchy), "node-b", other, 7_000);
            let accounting = accounting_root(&mount).expect("the cpuacct hierarchy");
            assert_eq!(accounting, mount.join(hierarchy), "{hierarchy}");
            assert_eq!(
                pod_cpu_usage(&accounting).unwrap(),
                CpuUsage::from([(UID.into(), 2_500_000), (other.into(), 7)]),
                "{hierarchy}"
            );
            std::fs::remove_dir_all(&mount).unwrap();
        }
    }

    #[test]
    fn a_custom_cgroup_root_of_any_name_is_found_one_level_down() {
        let mount = fake_root("custom");
        write_v1_pod(&mount.join("cpuacct"), "carbon-kube-node-1", UID, 4_000);
        std::fs::create_dir_all(mount.join("cpuacct/user.slice/deep/kubepods")).unwrap();
        assert_eq!(accounting_root(&mount), Some(mount.join("cpuacct")));
        assert_eq!(
            pod_cpu_usage(&mount.join("cpuacct")).unwrap(),
            CpuUsage::from([(UID.into(), 4)])
        );
        std::fs::remove_dir_all(&mount).unwrap();
    }
}
