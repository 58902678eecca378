//! A fake host cgroup v2 tree whose pods burn CPU at set rates: a thread
//! advances every pod's `cpu.stat` usage_usec, as the kernel would.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// The kubelet's cgroup driver, which decides how pod cgroups are spelt.
#[derive(Clone, Copy, Debug)]
pub enum Driver {
    Systemd,
    Cgroupfs,
}

impl Driver {
    fn pod_dir(self, root: &Path, uid: &str) -> PathBuf {
        match self {
            Self::Systemd => root
                .join("kubepods.slice/kubepods-burstable.slice")
                .join(format!(
                    "kubepods-burstable-pod{}.slice",
                    uid.replace('-', "_")
                )),
            Self::Cgroupfs => root.join("kubepods/burstable").join(format!("pod{uid}")),
        }
    }
}

struct Pod {
    dir: PathBuf,
    millicores: u64,
    usage_usec: u64,
}

pub struct FakeCgroups {
    pub root: PathBuf,
    driver: Driver,
    pods: Arc<Mutex<BTreeMap<String, Pod>>>,
    stop: Arc<AtomicBool>,
    ticker: Option<JoinHandle<()>>,
}

const TICK: Duration = Duration::from_millis(100);

impl FakeCgroups {
    pub fn new(root: PathBuf, driver: Driver) -> Self {
        // Non-pod cgroups the walk must pass over.
        std::fs::create_dir_all(root.join("system.slice/containerd.service")).expect("fake tree");
        std::fs::create_dir_all(driver.pod_dir(&root, "x").parent().expect("qos dir"))
            .expect("fake tree");
        let pods: Arc<Mutex<BTreeMap<String, Pod>>> = Arc::default();
        let stop = Arc::new(AtomicBool::new(false));
        let ticker = {
            let (pods, stop) = (pods.clone(), stop.clone());
            std::thread::spawn(move || {
                let mut last = Instant::now();
                while !stop.load(Ordering::Relaxed) {
                    std::thread::sleep(TICK);
                    let elapsed_usec = last.elapsed().as_micros() as u64;
                    last = Instant::now();
                    for pod in pods.lock().expect("pods").values_mut() {
                        pod.usage_usec += elapsed_usec * pod.millicores / 1000;
                        write_stat(&pod.dir, pod.usage_usec);
                    }
                }
            })
        };
        Self {
            root,
            driver,
            pods,
            stop,
            ticker: Some(ticker),
        }
    }

    /// A pod cgroup burning `millicores` of CPU.
    pub fn add_pod(&self, uid: &str, millicores: u64) {
        let dir = self.driver.pod_dir(&self.root, uid);
        std::fs::create_dir_all(dir.join("cri-containerd-0123abcd.scope")).expect("pod cgroup");
        write_stat(&dir, 0);
        let pod = Pod {
            dir,
            millicores,
            usage_usec: 0,
        };
        self.pods.lock().expect("pods").insert(uid.to_string(), pod);
    }

    /// The pod's cgroup goes, as when the kubelet tears the pod down.
    pub fn remove_pod(&self, uid: &str) {
        if let Some(pod) = self.pods.lock().expect("pods").remove(uid) {
            std::fs::remove_dir_all(pod.dir).expect("removing pod cgroup");
        }
    }
}

impl Drop for FakeCgroups {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(ticker) = self.ticker.take() {
            let _ = ticker.join();
        }
        let _ = std::fs::remove_dir_all(&self.root);
    }
}

/// Replaces the file in one step, so a reader never sees half of it (the
/// kernel's files have that property too).
fn write_stat(dir: &Path, usage_usec: u64) {
    let tmp = dir.join(".cpu.stat.tmp");
    let text = format!("usage_usec {usage_usec}\nuser_usec {usage_usec}\nsystem_usec 0\n");
    if std::fs::write(&tmp, text).is_ok() {
        let _ = std::fs::rename(&tmp, dir.join("cpu.stat"));
    }
}
