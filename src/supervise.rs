//! The agent's long-running tasks, watched: each is meant to run until
//! shutdown, so one that ends or panics before then is a fault. The agent
//! then stops with an error naming the task, and the kubelet restarts it,
//! rather than a pod that looks healthy while part of it is gone.

use std::collections::HashMap;
use std::future::Future;
use std::time::Duration;

use tokio::task::{Id, JoinError, JoinSet};
use tracing::{error, warn};

use crate::error::Error;
use crate::metrics::Metrics;

/// Why the agent stops: a task ended before shutdown.
#[derive(Debug, thiserror::Error)]
#[error("task {task:?} {how}")]
pub struct TaskExit {
    pub task: &'static str,
    pub how: String,
}

#[derive(Default)]
pub struct Supervisor {
    tasks: JoinSet<()>,
    names: HashMap<Id, &'static str>,
}

impl Supervisor {
    pub fn spawn(&mut self, name: &'static str, task: impl Future<Output = ()> + Send + 'static) {
        let handle = self.tasks.spawn(injected_fault(name, task));
        self.names.insert(handle.id(), name);
    }

    /// Waits for the first task to end, however it ends. Pending forever
    /// with no tasks: nothing can fail then.
    pub async fn first_exit(&mut self) -> TaskExit {
        let Some(joined) = self.tasks.join_next_with_id().await else {
            return std::future::pending().await;
        };
        let (id, how) = match joined {
            Ok((id, ())) => (id, "ended".to_string()),
            Err(e) => (e.id(), describe(e)),
        };
        TaskExit {
            task: self.names.remove(&id).unwrap_or("unnamed"),
            how,
        }
    }

    /// Once shutdown is signalled: gives the tasks `grace` to finish (the
    /// elector releases its Lease), then aborts those still running.
    pub async fn stop(mut self, grace: Duration) {
        let names = &self.names;
        let tasks = &mut self.tasks;
        let drain = async {
            while let Some(joined) = tasks.join_next_with_id().await {
                if let Err(e) = joined {
                    let task = names.get(&e.id()).copied().unwrap_or("unnamed");
                    error!(task, "task {} while stopping", describe(e));
                }
            }
        };
        if tokio::time::timeout(grace, drain).await.is_err() {
            warn!(
                tasks = self.tasks.len(),
                ?grace,
                "tasks still running after the grace period; aborting them"
            );
            self.tasks.shutdown().await;
        }
    }
}

/// The longest a round of a leader loop (a poll, a deferral or migration
/// round) may take. The client's read timeout is long, since it must outlast
/// a quiet watch ([`crate::watches::READ_TIMEOUT`], 150 s), and a server that
/// trickles bytes never trips it, so a round could stall for minutes; past
/// this it is abandoned, counted, and the next one starts afresh from the
/// watched state.
pub const ROUND_DEADLINE: Duration = Duration::from_secs(60);

/// Runs one round of `part`'s loop under `deadline`: `None`, logged and
/// counted as a `timeout` error, when it is abandoned.
pub async fn bounded<T>(
    part: &'static str,
    deadline: Duration,
    metrics: &Metrics,
    round: impl Future<Output = T>,
) -> Option<T> {
    match tokio::time::timeout(deadline, round).await {
        Ok(done) => Some(done),
        Err(_) => {
            let stuck = Error::Stuck(deadline);
            warn!(part, error = %stuck, "a request hangs");
            metrics.record_error(part, &stuck);
            None
        }
    }
}

/// Debug builds only: `CARBON_KUBE_FAIL_TASK=<task name>` makes that task
/// panic [`FAULT_AFTER`] after it starts, so the integration tests (and the
/// chaos soak) can check that the agent stops and names it. The release
/// build, the one that ships, has no such hook.
#[cfg(debug_assertions)]
fn injected_fault(
    name: &'static str,
    task: impl Future<Output = ()> + Send + 'static,
) -> std::pin::Pin<Box<dyn Future<Output = ()> + Send>> {
    if std::env::var("CARBON_KUBE_FAIL_TASK").ok().as_deref() != Some(name) {
        return Box::pin(task);
    }
    Box::pin(async move {
        tokio::select! {
            () = task => {}
            () = tokio::time::sleep(FAULT_AFTER) => panic!("fault injected by CARBON_KUBE_FAIL_TASK"),
        }
    })
}

#[cfg(debug_assertions)]
pub const FAULT_AFTER: Duration = Duration::from_secs(3);

#[cfg(not(debug_assertions))]
fn injected_fault(
    _name: &'static str,
    task: impl Future<Output = ()> + Send + 'static,
) -> impl Future<Output = ()> + Send + 'static {
    task
}

fn describe(e: JoinError) -> String {
    if !e.is_panic() {
        return "was cancelled".into();
    }
    let panic = e.into_panic();
    let message = panic
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a non-string payload".into());
    format!("panicked: {message}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::sync::{oneshot, watch};

    /// A task that runs until it is dropped, and says so through `dropped`.
    async fn forever(dropped: oneshot::Sender<()>) {
        let _guard = dropped;
        std::future::pending::<()>().await
    }

    #[tokio::test]
    async fn a_task_that_returns_is_named_and_the_others_are_cancelled() {
        let mut supervisor = Supervisor::default();
        let (dropped_tx, dropped_rx) = oneshot::channel();
        supervisor.spawn("reconciler", forever(dropped_tx));
        supervisor.spawn("metrics server", async {});
        let exit = supervisor.first_exit().await;
        assert_eq!(exit.task, "metrics server");
        assert_eq!(exit.to_string(), "task \"metrics server\" ended");
        supervisor.stop(Duration::ZERO).await;
        assert!(
            dropped_rx.await.is_err(),
            "the task still running was not cancelled"
        );
    }

    #[tokio::test]
    async fn a_task_that_panics_is_named_with_its_message() {
        let mut supervisor = Supervisor::default();
        let (dropped_tx, dropped_rx) = oneshot::channel();
        supervisor.spawn("emissions", forever(dropped_tx));
        supervisor.spawn("leader election", async { panic!("lease watch gone") });
        let exit = supervisor.first_exit().await;
        assert_eq!(exit.task, "leader election");
        assert_eq!(exit.how, "panicked: lease watch gone");
        supervisor.stop(Duration::ZERO).await;
        assert!(dropped_rx.await.is_err());
    }

    #[tokio::test]
    async fn stopping_lets_tasks_finish_their_shutdown_work() {
        let mut supervisor = Supervisor::default();
        let (shutdown_tx, mut shutdown) = watch::channel(false);
        let (released_tx, released_rx) = oneshot::channel();
        supervisor.spawn("leader election", async move {
            let _ = shutdown.wait_for(|stop| *stop).await;
            // Yields once more, as a Lease release's request would.
            tokio::task::yield_now().await;
            let _ = released_tx.send(());
        });
        let _ = shutdown_tx.send(true);
        supervisor.stop(Duration::from_secs(60)).await;
        assert!(
            released_rx.await.is_ok(),
            "the task was aborted before its shutdown work"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_round_past_its_deadline_is_abandoned_and_counted_as_a_timeout() {
        let metrics = Metrics::new("n1");
        let hung = bounded(
            "poller",
            Duration::from_secs(60),
            &metrics,
            std::future::pending::<()>(),
        );
        assert_eq!(hung.await, None);
        let done = bounded("poller", Duration::from_secs(60), &metrics, async { 7 });
        assert_eq!(done.await, Some(7));
        let text = metrics.encode();
        assert_eq!(
            crate::testing::sample(
                &text,
                "carbon_kube_errors_total",
                &["part=\"poller\"", "kind=\"timeout\""]
            ),
            Some(1.0),
            "{text}"
        );
    }
}
