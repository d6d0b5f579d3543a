//! Watching the daemon's long-lived workers (the store writer, the checkpoint thread, the
//! fan-out task). One that dies while the daemon is not stopping fails the daemon: /health
//! turns 503 and the server exits non-zero, so that whatever supervises imd restarts it,
//! instead of a process that stays up refusing every message. Also the test-only fault
//! switch `IMD_FAULT`, which makes one of them die for real.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};

use tokio_util::sync::CancellationToken;

/// The environment variable of the fault switch (tests only; does nothing unless set).
pub const FAULT_VAR: &str = "IMD_FAULT";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Worker {
    Writer,
    Checkpoint,
    Fanout,
}

impl Worker {
    const ALL: [Worker; 3] = [Worker::Writer, Worker::Checkpoint, Worker::Fanout];

    /// How /health and the log name it.
    pub fn name(self) -> &'static str {
        match self {
            Worker::Writer => "store writer",
            Worker::Checkpoint => "checkpoint",
            Worker::Fanout => "fan-out",
        }
    }

    /// The `IMD_FAULT` value that makes it panic.
    fn fault(self) -> &'static str {
        match self {
            Worker::Writer => "writer-panic",
            Worker::Checkpoint => "checkpoint-panic",
            Worker::Fanout => "fanout-panic",
        }
    }
}

/// Shared by the server and every watched worker; cheap to clone.
#[derive(Clone)]
pub struct Supervisor {
    inner: Arc<Inner>,
}

/// Test-only faults of start-up itself (`IMD_FAULT`), struck right after the store started.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StartFault {
    /// `start-fail`: start-up returns an error.
    Fail,
    /// `start-panic`: start-up panics.
    Panic,
}

impl StartFault {
    const ALL: [StartFault; 2] = [StartFault::Fail, StartFault::Panic];

    fn name(self) -> &'static str {
        match self {
            StartFault::Fail => "start-fail",
            StartFault::Panic => "start-panic",
        }
    }
}

#[derive(Default)]
struct Inner {
    /// The worker `IMD_FAULT` makes panic, if any.
    fault: Option<Worker>,
    /// The start-up fault `IMD_FAULT` names, if any.
    start_fault: Option<StartFault>,
    /// The first worker that died.
    failed: OnceLock<&'static str>,
    /// Set once the daemon shuts down: from then on a worker may return.
    stopping: AtomicBool,
    /// Cancelled when a worker dies, to wake the server.
    failure: CancellationToken,
}

impl Supervisor {
    pub fn new(fault: Option<Worker>) -> Supervisor {
        Supervisor { inner: Arc::new(Inner { fault, ..Inner::default() }) }
    }

    /// A supervisor with the fault `IMD_FAULT` names (read once, here). Unset or empty: none;
    /// an unknown name is an error, so that a mistyped test fails instead of passing.
    pub fn from_env() -> Result<Supervisor, String> {
        let value = std::env::var(FAULT_VAR).unwrap_or_default();
        if value.is_empty() {
            return Ok(Supervisor::new(None));
        }
        if let Some(fault) = StartFault::ALL.into_iter().find(|f| f.name() == value) {
            tracing::warn!("{FAULT_VAR}={value}: start-up will fail (fault injection, tests only)");
            return Ok(Supervisor { inner: Arc::new(Inner { start_fault: Some(fault), ..Inner::default() }) });
        }
        match Worker::ALL.into_iter().find(|w| w.fault() == value) {
            Some(worker) => {
                tracing::warn!("{FAULT_VAR}={value}: the {} will panic (fault injection, tests only)", worker.name());
                Ok(Supervisor::new(Some(worker)))
            }
            None => {
                let known: Vec<&str> =
                    Worker::ALL.iter().map(|w| w.fault()).chain(StartFault::ALL.iter().map(|f| f.name())).collect();
                Err(format!("{FAULT_VAR}={value:?} is not one of {}", known.join(", ")))
            }
        }
    }

    /// Where start-up strikes its test-only fault (`IMD_FAULT=start-fail|start-panic`), if set.
    pub fn start_fault_point(&self) -> Result<(), String> {
        match self.inner.start_fault {
            Some(StartFault::Fail) => Err(format!("{FAULT_VAR}=start-fail: injected start-up failure")),
            Some(StartFault::Panic) => panic!("{FAULT_VAR}=start-panic: injected panic in start-up"),
            None => Ok(()),
        }
    }

    /// A guard for `worker` to hold for as long as it runs.
    pub fn watch(&self, worker: Worker) -> Watch {
        Watch { supervisor: self.clone(), worker, ended: false }
    }

    /// The daemon is shutting down: workers returning from now on are expected to.
    pub fn stopping(&self) {
        self.inner.stopping.store(true, Ordering::Release);
    }

    /// The name of the first worker that died, if one did.
    pub fn failed(&self) -> Option<&'static str> {
        self.inner.failed.get().copied()
    }

    /// Resolves once a worker has died (at once if one already has).
    pub async fn failure(&self) -> &'static str {
        self.inner.failure.cancelled().await;
        self.failed().unwrap_or("worker")
    }

    fn fail(&self, worker: Worker, how: &str) {
        if self.inner.failed.set(worker.name()).is_ok() {
            tracing::error!("the {} {how}: imd is failing and will exit with status 1", worker.name());
        }
        self.inner.failure.cancel();
    }
}

/// Held by a watched worker. Dropped without `returned`/`input_closed` (a panic unwinding,
/// or the task dropped after one), it reports the worker dead.
pub struct Watch {
    supervisor: Supervisor,
    worker: Worker,
    ended: bool,
}

impl Watch {
    /// True when `IMD_FAULT` names this worker.
    pub fn fault_armed(&self) -> bool {
        self.supervisor.inner.fault == Some(self.worker)
    }

    /// Panics when `IMD_FAULT` names this worker: the worker calls it at the moment the
    /// fault is documented to strike.
    pub fn fault_point(&self) {
        if self.fault_armed() {
            panic!("{FAULT_VAR}={}: injected panic in the {}", self.worker.fault(), self.worker.name());
        }
    }

    /// The worker's loop returned by itself: expected while the daemon stops, a failure
    /// otherwise.
    pub fn returned(mut self) {
        self.ended = true;
        if !self.supervisor.inner.stopping.load(Ordering::Acquire) {
            self.supervisor.fail(self.worker, "stopped unexpectedly");
        }
    }

    /// The worker ended because its input did, which is never its own failure (whoever
    /// dropped the other end is watched too).
    pub fn input_closed(mut self) {
        self.ended = true;
    }
}

impl Drop for Watch {
    fn drop(&mut self) {
        // Once the daemon stops, the runtime drops its tasks where they stand: only a panic
        // (seen on a thread; a task's panic is caught before its drop) is a death then.
        let stopping = self.supervisor.inner.stopping.load(Ordering::Acquire);
        if !self.ended && (!stopping || std::thread::panicking()) {
            self.supervisor.fail(self.worker, "died");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_panicking_worker_fails_the_daemon() {
        let supervisor = Supervisor::new(Some(Worker::Writer));
        let watch = supervisor.watch(Worker::Writer);
        let thread = std::thread::spawn(move || {
            watch.fault_point();
            watch.returned();
        });
        assert!(thread.join().is_err(), "the fault point panics");
        assert_eq!(supervisor.failed(), Some("store writer"));
    }

    #[test]
    fn returning_is_a_failure_only_before_the_daemon_stops() {
        let supervisor = Supervisor::new(None);
        let watch = supervisor.watch(Worker::Checkpoint);
        watch.fault_point();
        supervisor.stopping();
        watch.returned();
        assert_eq!(supervisor.failed(), None);

        let supervisor = Supervisor::new(None);
        supervisor.watch(Worker::Checkpoint).returned();
        assert_eq!(supervisor.failed(), Some("checkpoint"));
    }

    #[test]
    fn the_first_death_is_the_one_reported() {
        let supervisor = Supervisor::new(None);
        drop(supervisor.watch(Worker::Fanout));
        drop(supervisor.watch(Worker::Writer));
        assert_eq!(supervisor.failed(), Some("fan-out"));
        supervisor.watch(Worker::Writer).input_closed();
    }

    #[tokio::test]
    async fn the_server_is_woken_by_a_death() {
        let supervisor = Supervisor::new(None);
        let watch = supervisor.watch(Worker::Fanout);
        let task = tokio::spawn(async move {
            let _watch = watch;
            panic!("a bug");
        });
        assert!(task.await.is_err());
        assert_eq!(supervisor.failure().await, "fan-out");
    }
}
