//! Child processes of the service helpers (own PostgreSQL, own NATS, the shared PostgreSQL):
//! free ports, bounded waits, signals by PID, and the skip-or-panic rule for missing tools.

use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, ExitStatus, Output, Stdio};
use std::time::{Duration, Instant};

/// How often a readiness or exit poll looks again.
pub const POLL: Duration = Duration::from_millis(20);

/// A port that was free on 127.0.0.1 a moment ago (the OS picked it), for a server that must
/// keep its port across restarts and so cannot be started on port 0.
pub fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    listener.local_addr().expect("local address").port()
}

pub fn loopback(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

/// Whether something accepts TCP connections on 127.0.0.1:`port` right now.
pub async fn port_accepts(port: u16) -> bool {
    let connect = tokio::net::TcpStream::connect(loopback(port));
    matches!(tokio::time::timeout(Duration::from_secs(1), connect).await, Ok(Ok(_)))
}

/// A tool the test needs is missing: None and a loud note, or a panic under CI (where
/// `.ci/run` provides every tool, so a missing one is a broken set-up, not a reason to skip).
pub fn missing<T>(what: &str) -> Option<T> {
    assert!(std::env::var_os("CI").is_none(), "CI is set but {what}");
    eprintln!("\n!!! SKIPPED: {what} !!!\n");
    None
}

/// `name` on PATH, else in `fallbacks`.
pub fn find_program(name: &str, fallbacks: &[&str]) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .chain(fallbacks.iter().map(PathBuf::from))
        .find(|candidate| is_executable(candidate))
}

pub fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// Sends `sig` to the process `pid` (one we started).
pub fn signal(pid: u32, sig: libc::c_int) {
    // SAFETY: kill has no memory preconditions; a PID that already exited only yields ESRCH.
    unsafe { libc::kill(pid as libc::pid_t, sig) };
}

/// Polls `child` (without blocking the runtime) until it exits or `within` passes.
pub async fn wait_exit(child: &mut Child, within: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + within;
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            return Some(status);
        }
        if Instant::now() >= deadline {
            return None;
        }
        tokio::time::sleep(POLL).await;
    }
}

/// [`wait_exit`] for `Drop`, which cannot await.
pub fn wait_exit_blocking(child: &mut Child, within: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + within;
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            return Some(status);
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(POLL);
    }
}

/// SIGKILL and reap, so nothing of ours outlives a test.
pub fn kill_and_reap(child: &mut Child) {
    signal(child.id(), libc::SIGKILL);
    let _ = child.wait();
}

/// Runs a command to completion within `within` (killed on timeout); its output, or why not.
pub async fn run(cmd: &mut tokio::process::Command, within: Duration) -> Result<Output, String> {
    let what = format!("{:?}", cmd.as_std());
    let output = cmd.stdin(Stdio::null()).kill_on_drop(true).output();
    match tokio::time::timeout(within, output).await {
        Err(_) => Err(format!("{what} did not finish within {within:?}")),
        Ok(Err(e)) => Err(format!("{what}: {e}")),
        Ok(Ok(out)) => Ok(out),
    }
}

/// [`run`] for `Drop`: the command's output is collected on a thread and the wait is bounded;
/// on timeout the command is killed by its PID.
pub fn run_blocking(cmd: &mut std::process::Command, within: Duration) -> Result<Output, String> {
    let what = format!("{cmd:?}");
    let child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("{what}: {e}"))?;
    let pid = child.id();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    match rx.recv_timeout(within) {
        Ok(Ok(out)) => Ok(out),
        Ok(Err(e)) => Err(format!("{what}: {e}")),
        Err(_) => {
            signal(pid, libc::SIGKILL);
            Err(format!("{what} did not finish within {within:?}"))
        }
    }
}

/// A command's failure as text for a panic message.
pub fn failure(out: &Output) -> String {
    format!(
        "{}\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout).trim(),
        String::from_utf8_lossy(&out.stderr).trim()
    )
}

/// The last `n` lines of a log file, for a failure message.
pub fn log_tail(path: &Path, n: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// A database name we made up or a test chose: only letters, digits and `_`, so it can be
/// written into SQL without quoting rules.
pub fn check_db_name(name: &str) {
    let ok = !name.is_empty()
        && name.len() <= 63
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
        && !name.as_bytes()[0].is_ascii_digit();
    assert!(ok, "database name {name:?}: use 1..=63 of A-Za-z0-9_, not starting with a digit");
}
