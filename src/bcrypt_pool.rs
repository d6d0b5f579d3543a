//! A few dedicated, low-priority threads for bcrypt with a bounded queue in front, so a login
//! flood waits in line (or is told "busy") instead of taking the CPU from the message path.

use std::sync::mpsc::{Receiver, SyncSender, TrySendError, sync_channel};
use std::sync::{Arc, Mutex};

use tokio::sync::oneshot;

type Job = Box<dyn FnOnce() + Send>;

/// Nice value of the bcrypt threads: the lowest priority, so they use mostly what CPU the
/// workers, the store writer and the fan-out leave idle. (Not SCHED_IDLE: on a host busy
/// with other work, logins would then never finish.)
const NICE: libc::c_int = 19;

/// The queue is full: the caller answers 503 "busy, retry".
#[derive(Debug, PartialEq, Eq)]
pub struct Busy;

pub struct BcryptPool {
    jobs: SyncSender<Job>,
}

impl BcryptPool {
    /// `threads` workers (0: half the cores, at least one) and `queue` jobs waiting at most.
    /// Should no thread start (out of resources), every job is answered Busy.
    pub fn new(threads: usize, queue: usize) -> BcryptPool {
        let threads = match threads {
            0 => std::thread::available_parallelism().map_or(1, |n| n.get() / 2).max(1),
            n => n,
        };
        let (jobs, receiver) = sync_channel::<Job>(queue);
        let receiver = Arc::new(Mutex::new(receiver));
        for i in 0..threads {
            let receiver = receiver.clone();
            if let Err(e) = std::thread::Builder::new().name(format!("imd-bcrypt-{i}")).spawn(move || work(&receiver)) {
                tracing::error!("cannot start a bcrypt thread: {e}");
            }
        }
        BcryptPool { jobs }
    }

    /// Runs `f` on a pool thread and returns its result, or Busy when the queue is full.
    pub async fn run<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> Result<T, Busy> {
        let (tx, rx) = oneshot::channel();
        let job: Job = Box::new(move || {
            let _ = tx.send(f());
        });
        match self.jobs.try_send(job) {
            Ok(()) => rx.await.map_err(|_| Busy),
            Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => Err(Busy),
        }
    }
}

/// A pool thread: lower its priority, then run jobs until the pool is dropped.
fn work(receiver: &Mutex<Receiver<Job>>) {
    // SAFETY: setpriority on the calling thread (tid) only changes its scheduling priority.
    unsafe {
        let tid = libc::syscall(libc::SYS_gettid) as libc::id_t;
        libc::setpriority(libc::PRIO_PROCESS, tid, NICE);
    }
    loop {
        let job = match receiver.lock() {
            Ok(receiver) => receiver.recv(),
            Err(_) => return,
        };
        match job {
            Ok(job) => job(),
            Err(_) => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn jobs_run_and_a_full_queue_is_busy() {
        let pool = BcryptPool::new(1, 1);
        assert_eq!(pool.run(|| 2 + 2).await, Ok(4));
        // Block the only thread, fill the one queue place, then the next is refused.
        let (release, gate) = std::sync::mpsc::channel::<()>();
        let (started_tx, started) = oneshot::channel();
        let blocker = pool.run(move || {
            let _ = started_tx.send(());
            let _ = gate.recv();
        });
        tokio::pin!(blocker);
        tokio::select! {
            _ = &mut blocker => panic!("the blocker finished early"),
            _ = started => {}
        }
        let queued = pool.run(|| 1);
        tokio::pin!(queued);
        // Poll once so the job is queued.
        assert!(futures_util::poll!(&mut queued).is_pending());
        assert_eq!(pool.run(|| 0).await, Err(Busy));
        release.send(()).unwrap();
        assert_eq!(blocker.await, Ok(()));
        assert_eq!(queued.await, Ok(1));
    }
}
