//! `imd start -d`, `imd status`, `imd stop` and port conflicts (PROTOCOL.md 1;
//! BEHAVIOUR.md "Running"). Every daemon started here is stopped by a guard, even when a
//! test fails.
mod common;

use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use common::{BIN, WAIT};

fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    listener.local_addr().expect("addr").port()
}

struct Output {
    status: ExitStatus,
    stdout: String,
    stderr: String,
}

impl Output {
    fn describe(&self) -> String {
        format!("{:?}\nstdout: {}\nstderr: {}", self.status, self.stdout, self.stderr)
    }
}

/// Runs `imd ARGS` with stdout/stderr going to files (a daemon that keeps inherited pipes
/// open could otherwise hang the test), within the common timeout.
async fn imd(dir: &Path, args: &[&str]) -> Output {
    imd_in(dir, dir, args).await
}

async fn imd_in(dir: &Path, cwd: &Path, args: &[&str]) -> Output {
    let n = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).expect("clock").as_nanos();
    let out_path = dir.join(format!("cmd-{n}.out"));
    let err_path = dir.join(format!("cmd-{n}.err"));
    let out = std::fs::File::create(&out_path).expect("stdout file");
    let err = std::fs::File::create(&err_path).expect("stderr file");
    let mut child = tokio::process::Command::new(BIN)
        .args(args)
        .current_dir(cwd)
        .stdin(Stdio::null())
        .stdout(Stdio::from(out))
        .stderr(Stdio::from(err))
        .kill_on_drop(true)
        .spawn()
        .expect("spawn imd");
    let status = tokio::time::timeout(WAIT, child.wait())
        .await
        .unwrap_or_else(|_| panic!("imd {args:?} did not finish within {WAIT:?}"))
        .expect("wait");
    Output {
        status,
        stdout: std::fs::read_to_string(&out_path).unwrap_or_default(),
        stderr: std::fs::read_to_string(&err_path).unwrap_or_default(),
    }
}

fn read_pid(pid_file: &Path) -> Option<i32> {
    std::fs::read_to_string(pid_file).ok()?.trim().parse().ok()
}

/// True while `pid` is a live (non-zombie) process.
fn alive(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => {
            // The state follows the parenthesised command name.
            let state = stat.rsplit_once(')').and_then(|(_, rest)| rest.trim_start().chars().next());
            state != Some('Z')
        }
        Err(_) => false,
    }
}

/// True if `pid` is a live imd process whose command line mentions `marker` (our temp dir),
/// so the guard never signals a process it did not start.
fn ours(pid: i32, marker: &str) -> bool {
    if !alive(pid) {
        return false;
    }
    match std::fs::read(format!("/proc/{pid}/cmdline")) {
        Ok(bytes) => String::from_utf8_lossy(&bytes).contains(marker),
        Err(_) => false,
    }
}

/// Stops every daemon this test may have started (SIGTERM, then SIGKILL), on drop.
struct DaemonGuard {
    marker: String,
    pid_files: Vec<PathBuf>,
    pids: Vec<i32>,
}

impl DaemonGuard {
    fn new(dir: &Path) -> DaemonGuard {
        DaemonGuard { marker: dir.to_string_lossy().into_owned(), pid_files: Vec::new(), pids: Vec::new() }
    }

    fn watch(&mut self, pid_file: &Path) {
        self.pid_files.push(pid_file.to_path_buf());
        if let Some(pid) = read_pid(pid_file) {
            self.pids.push(pid);
        }
    }
}

impl Drop for DaemonGuard {
    fn drop(&mut self) {
        let mut pids = self.pids.clone();
        pids.extend(self.pid_files.iter().filter_map(|p| read_pid(p)));
        pids.sort_unstable();
        pids.dedup();
        for pid in pids {
            if !ours(pid, &self.marker) {
                continue;
            }
            unsafe { libc::kill(pid, libc::SIGTERM) };
            let deadline = std::time::Instant::now() + Duration::from_secs(5);
            while ours(pid, &self.marker) && std::time::Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(50));
            }
            if ours(pid, &self.marker) {
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
        }
    }
}

struct Paths {
    dir: tempfile::TempDir,
    db: String,
    pid: String,
    log: String,
}

fn paths(name: &str) -> Paths {
    let dir = tempfile::tempdir().expect("tempdir");
    let p = |suffix: &str| dir.path().join(format!("{name}.{suffix}")).to_string_lossy().into_owned();
    let (db, pid, log) = (p("db"), p("pid"), p("log"));
    Paths { dir, db, pid, log }
}

async fn start_daemon(p: &Paths, port: u16) -> Output {
    let port = port.to_string();
    imd(
        p.dir.path(),
        &[
            "start",
            &port,
            "-d",
            "--host",
            "127.0.0.1",
            "--db",
            &p.db,
            "--pid-file",
            &p.pid,
            "--log-file",
            &p.log,
            "--bcrypt-cost",
            "4",
        ],
    )
    .await
}

async fn health(port: u16) -> serde_json::Value {
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().expect("addr");
    let (status, body) = common::http(addr, "GET", "/health", None, None).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["data"]["status"], "ok", "{body}");
    body["data"].clone()
}

async fn port_closed(port: u16) -> bool {
    tokio::net::TcpStream::connect(("127.0.0.1", port)).await.is_err()
}

#[tokio::test]
async fn daemon_start_status_stop() {
    let p = paths("main");
    let mut guard = DaemonGuard::new(p.dir.path());
    let port = free_port();
    let port_s = port.to_string();

    let out = start_daemon(&p, port).await;
    guard.watch(Path::new(&p.pid));
    assert!(out.status.success(), "imd start -d: {}", out.describe());
    assert_eq!(out.status.code(), Some(0));

    // Listening as soon as the command returned.
    let data = health(port).await;
    let pid = read_pid(Path::new(&p.pid)).expect("pid file written");
    assert_eq!(data["pid"].as_i64(), Some(i64::from(pid)), "/health pid matches the pid file: {data}");
    assert!(alive(pid));
    assert!(Path::new(&p.log).exists(), "log file created");
    // Private: the database holds the JWT secret and password hashes (issue 9).
    for file in [&p.db, &p.pid, &p.log] {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(file).expect("created").permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "{file} is mode {mode:o}");
    }
    // It serves real traffic.
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().expect("addr");
    let (status, body) = common::http(
        addr,
        "POST",
        "/user/register",
        Some(("application/json", r#"{"username":"daemonuser","password":"secret-pw"}"#.to_string())),
        None,
    )
    .await;
    assert_eq!(status, 200, "{body}");

    let out = imd(p.dir.path(), &["status", &port_s, "--pid-file", &p.pid]).await;
    assert_eq!(out.status.code(), Some(0), "imd status: {}", out.describe());
    assert!(out.stdout.contains("running"), "{}", out.describe());
    assert!(!out.stdout.contains("not running"), "{}", out.describe());
    assert!(out.stdout.contains(&pid.to_string()), "status names the pid: {}", out.describe());

    let out = imd(p.dir.path(), &["stop", &port_s, "--pid-file", &p.pid]).await;
    assert_eq!(out.status.code(), Some(0), "imd stop: {}", out.describe());
    assert!(!alive(pid), "imd stop returned but pid {pid} is still running");
    assert!(port_closed(port).await, "port still accepting after stop");

    let out = imd(p.dir.path(), &["status", &port_s, "--pid-file", &p.pid]).await;
    assert_ne!(out.status.code(), Some(0), "status after stop: {}", out.describe());
    assert!(out.stdout.contains("not running"), "{}", out.describe());

    // Stopping again: nothing runs there.
    let out = imd(p.dir.path(), &["stop", &port_s, "--pid-file", &p.pid]).await;
    assert_eq!(out.status.code(), Some(1), "stop with nothing running: {}", out.describe());
}

#[tokio::test]
async fn second_daemon_on_the_same_port_fails() {
    let first = paths("first");
    let second = paths("second");
    let mut guard1 = DaemonGuard::new(first.dir.path());
    let mut guard2 = DaemonGuard::new(second.dir.path());
    let port = free_port();

    let out = start_daemon(&first, port).await;
    guard1.watch(Path::new(&first.pid));
    assert!(out.status.success(), "first daemon: {}", out.describe());
    let pid = read_pid(Path::new(&first.pid)).expect("pid file");

    let out = start_daemon(&second, port).await;
    guard2.watch(Path::new(&second.pid));
    assert!(!out.status.success(), "a second daemon on port {port} must fail: {}", out.describe());
    assert_eq!(out.status.code(), Some(1), "{}", out.describe());
    let text = format!("{}{}", out.stdout, out.stderr).to_lowercase();
    assert!(text.contains("in use"), "the error says the address is in use: {}", out.describe());

    // The first one is untouched.
    let data = health(port).await;
    assert_eq!(data["pid"].as_i64(), Some(i64::from(pid)), "{data}");

    let out = imd(first.dir.path(), &["stop", &port.to_string(), "--pid-file", &first.pid]).await;
    assert_eq!(out.status.code(), Some(0), "{}", out.describe());
    assert!(!alive(pid));
}

#[tokio::test]
async fn stop_without_pid_file_asks_health() {
    let p = paths("nopid");
    let mut guard = DaemonGuard::new(p.dir.path());
    let port = free_port();
    let out = start_daemon(&p, port).await;
    guard.watch(Path::new(&p.pid));
    assert!(out.status.success(), "{}", out.describe());
    let pid = read_pid(Path::new(&p.pid)).expect("pid file");

    // An empty working directory: no ./imd-PORT.pid, so stop must ask /health for the pid.
    let empty = tempfile::tempdir().expect("tempdir");
    let out = imd_in(p.dir.path(), empty.path(), &["stop", &port.to_string()]).await;
    assert_eq!(out.status.code(), Some(0), "imd stop without pid file: {}", out.describe());
    assert!(!alive(pid), "pid {pid} still running after stop");
    assert!(port_closed(port).await);
}

#[tokio::test]
async fn status_of_nothing_is_not_running() {
    let p = paths("none");
    let port = free_port();
    let out = imd(p.dir.path(), &["status", &port.to_string(), "--pid-file", &p.pid]).await;
    assert_eq!(out.status.code(), Some(1), "{}", out.describe());
    assert!(out.stdout.contains("not running"), "{}", out.describe());
}

#[tokio::test]
async fn foreground_start_on_a_busy_port_fails_clearly() {
    let p = paths("busy");
    let mut guard = DaemonGuard::new(p.dir.path());
    guard.watch(Path::new(&p.pid));
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("addr").port().to_string();
    let out = imd(p.dir.path(), &["start", &port, "--host", "127.0.0.1", "--db", &p.db, "--bcrypt-cost", "4"]).await;
    assert!(!out.status.success(), "start on a busy port must fail: {}", out.describe());
    let text = format!("{}{}", out.stdout, out.stderr).to_lowercase();
    assert!(text.contains("in use"), "the error says the address is in use: {}", out.describe());
    assert!(!out.stdout.contains("listening on"), "{}", out.describe());
    drop(listener);
}

/// Spawns `sleep 30`, a live process that is not imd, for a stale pid file to name.
fn spawn_sleeper() -> std::process::Child {
    std::process::Command::new("sleep").arg("30").stdin(Stdio::null()).spawn().expect("spawn sleep")
}

/// Kills and reaps the test's own sleeper; true if it was still running (never signalled).
fn reap_sleeper(mut sleeper: std::process::Child) -> bool {
    let untouched = matches!(sleeper.try_wait(), Ok(None));
    let _ = sleeper.kill();
    let _ = sleeper.wait();
    untouched
}

#[tokio::test]
async fn stop_never_signals_the_process_a_stale_pid_file_names() {
    let p = paths("stale");
    let port = free_port().to_string();
    let sleeper = spawn_sleeper();
    std::fs::write(&p.pid, format!("{}\n", sleeper.id())).expect("write pid file");

    let stop = imd(p.dir.path(), &["stop", &port, "--pid-file", &p.pid]).await;
    let status = imd(p.dir.path(), &["status", &port, "--pid-file", &p.pid]).await;
    let untouched = reap_sleeper(sleeper);
    assert!(untouched, "imd stop signalled the unrelated process named by a stale pid file: {}", stop.describe());
    assert_eq!(stop.status.code(), Some(1), "{}", stop.describe());
    assert!(stop.stderr.contains("not running"), "{}", stop.describe());
    assert_eq!(status.status.code(), Some(1), "{}", status.describe());
    assert!(status.stdout.contains("not running"), "status names no foreign process: {}", status.describe());
}

#[tokio::test]
async fn stop_with_a_stale_pid_file_stops_the_daemon_on_the_port_only() {
    let p = paths("stale2");
    let mut guard = DaemonGuard::new(p.dir.path());
    let port = free_port();
    let out = start_daemon(&p, port).await;
    guard.watch(Path::new(&p.pid));
    assert!(out.status.success(), "{}", out.describe());
    let pid = read_pid(Path::new(&p.pid)).expect("pid file");

    // Another pid file, left over from an earlier run, now names an unrelated process.
    let sleeper = spawn_sleeper();
    let stale = p.dir.path().join("stale.pid");
    std::fs::write(&stale, format!("{}\n", sleeper.id())).expect("write pid file");
    let stale = stale.to_string_lossy().into_owned();
    let out = imd(p.dir.path(), &["stop", &port.to_string(), "--pid-file", &stale]).await;
    let untouched = reap_sleeper(sleeper);
    assert!(untouched, "imd stop signalled the process named by a stale pid file: {}", out.describe());
    assert_eq!(out.status.code(), Some(0), "the daemon serving the port is stopped: {}", out.describe());
    assert!(!alive(pid), "pid {pid} still running after stop");
}

#[tokio::test]
async fn status_and_stop_reach_a_daemon_on_a_specific_host() {
    let p = paths("host");
    let mut guard = DaemonGuard::new(p.dir.path());
    guard.watch(Path::new(&p.pid));
    let port = free_port().to_string();
    // 127.0.0.2 is loopback on Linux, but nothing listens on 127.0.0.1 for this daemon.
    let out = imd(
        p.dir.path(),
        &["start", &port, "-d", "--host", "127.0.0.2", "--db", &p.db, "--pid-file", &p.pid, "--log-file", &p.log],
    )
    .await;
    guard.watch(Path::new(&p.pid));
    assert!(out.status.success(), "imd start -d --host 127.0.0.2: {}", out.describe());
    let pid = read_pid(Path::new(&p.pid)).expect("pid file");

    let out = imd(p.dir.path(), &["status", &port, "--host", "127.0.0.2"]).await;
    assert_eq!(out.status.code(), Some(0), "{}", out.describe());
    assert!(out.stdout.contains(&pid.to_string()), "{}", out.describe());

    // No pid file in this directory: stop finds the pid through /health on that host.
    let empty = tempfile::tempdir().expect("tempdir");
    let out = imd_in(p.dir.path(), empty.path(), &["stop", &port, "--host", "127.0.0.2"]).await;
    assert_eq!(out.status.code(), Some(0), "{}", out.describe());
    assert!(!alive(pid), "pid {pid} still running after stop");
}
