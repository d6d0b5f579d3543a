//! `NatsServer`: a `nats-server` of the test's own (JetStream on, its store in a temporary
//! directory) on a free loopback port, so a test may stop, crash and restart it.

use std::fs::File;
use std::path::PathBuf;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use super::process::{self, POLL};

/// Longest wait for the port to accept after a start, or for the process to exit.
const STEP_WAIT: Duration = Duration::from_secs(10);

/// A running (or stopped, between `stop`/`kill9` and `start_again`) nats-server; Drop kills it
/// by PID, reaps it and removes its directory.
pub struct NatsServer {
    bin: PathBuf,
    port: u16,
    child: Option<Child>,
    dir: tempfile::TempDir,
}

impl NatsServer {
    /// Starts `nats-server -a 127.0.0.1 -p PORT -js -sd DIR`; None (with a loud note) when
    /// nats-server is not installed, a panic instead under CI.
    pub async fn start() -> Option<NatsServer> {
        let Some(bin) = process::find_program("nats-server", &["/usr/sbin/nats-server", "/usr/bin/nats-server"]) else {
            return process::missing("no nats-server binary on PATH or in /usr/sbin");
        };
        let dir = tempfile::Builder::new().prefix("imd-nats-").tempdir().expect("temp dir");
        let mut nats = NatsServer { bin, port: process::free_port(), child: None, dir };
        nats.launch().await;
        Some(nats)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// `nats://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// The server's log (stdout and stderr of every start), for failure messages.
    pub fn log_path(&self) -> PathBuf {
        self.dir.path().join("nats.log")
    }

    /// SIGTERM (a clean shutdown) and wait for the exit.
    pub async fn stop(&mut self) {
        let mut child = self.child.take().expect("stop: nats-server is not running");
        process::signal(child.id(), libc::SIGTERM);
        if process::wait_exit(&mut child, STEP_WAIT).await.is_none() {
            process::kill_and_reap(&mut child);
            panic!("nats-server did not exit within {STEP_WAIT:?} of SIGTERM");
        }
    }

    /// SIGKILL, as a crash would, and reap.
    pub async fn kill9(&mut self) {
        let mut child = self.child.take().expect("kill9: nats-server is not running");
        process::signal(child.id(), libc::SIGKILL);
        process::wait_exit(&mut child, STEP_WAIT).await.expect("the killed nats-server is reaped");
    }

    /// Starts it again on the same port and JetStream directory (after stop or kill9).
    pub async fn start_again(&mut self) {
        assert!(self.child.is_none(), "start_again: nats-server is still running");
        self.launch().await;
    }

    async fn launch(&mut self) {
        let log = File::options().create(true).append(true).open(self.log_path()).expect("nats log");
        let child = std::process::Command::new(&self.bin)
            .args(["-a", "127.0.0.1", "-p", &self.port.to_string(), "-js", "-sd"])
            .arg(self.dir.path().join("jetstream"))
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log handle"))
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {}: {e}", self.bin.display()));
        let child = self.child.insert(child);
        // Ready when the port accepts; bounded, and a server that exited is an error at once.
        let deadline = Instant::now() + STEP_WAIT;
        while !process::port_accepts(self.port).await {
            if let Ok(Some(status)) = child.try_wait() {
                self.child = None;
                panic!(
                    "nats-server exited ({status}) before it accepted:\n{}",
                    process::log_tail(&self.log_path(), 20)
                );
            }
            if Instant::now() >= deadline {
                panic!("nats-server did not accept within {STEP_WAIT:?}:\n{}", process::log_tail(&self.log_path(), 20));
            }
            tokio::time::sleep(POLL).await;
        }
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            process::kill_and_reap(&mut child);
        }
    }
}
