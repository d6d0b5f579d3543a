//! Running as a daemon, and controlling one: `start -d`, `stop`, `status`.

use std::io::{Read, Write};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use daemonize::{Daemonize, Outcome};
use http_body_util::{BodyExt, Empty};
use hyper::body::Bytes;

use crate::config::Config;
use crate::server;

fn default_pid_file(port: u16) -> PathBuf {
    super::absolute(&PathBuf::from(format!("imd-{port}.pid")))
}

/// Detaches and returns 0 once the daemon says it is listening with its database open;
/// 1 if it died first.
pub fn start_detached(port: u16, mut config: Config, listener: std::net::TcpListener) -> i32 {
    let pid_file = config.pid_file.clone().unwrap_or_else(|| default_pid_file(port));
    let log_path =
        config.log_file.clone().unwrap_or_else(|| super::absolute(&PathBuf::from(format!("imd-{port}.log"))));
    let log = match std::fs::OpenOptions::new().create(true).append(true).open(&log_path) {
        Ok(log) => log,
        Err(e) => {
            eprintln!("imd: cannot open the log file {}: {e}", log_path.display());
            return 1;
        }
    };
    let Ok(log_err) = log.try_clone() else { return 1 };
    // The daemon writes one byte here once it is ready; the launcher waits for it.
    let (mut ready_rx, ready_tx) = match std::io::pipe() {
        Ok(pipe) => pipe,
        Err(e) => {
            eprintln!("imd: {e}");
            return 1;
        }
    };
    let cwd = std::env::current_dir().unwrap_or_else(|_| PathBuf::from("/"));
    let daemon = Daemonize::new().pid_file(&pid_file).working_directory(cwd).stdout(log).stderr(log_err);
    match daemon.execute() {
        Outcome::Parent(result) => {
            drop(ready_tx);
            let mut byte = [0u8; 1];
            match (result, ready_rx.read(&mut byte)) {
                (Ok(_), Ok(1)) => {
                    println!(
                        "imd started on port {port} (pid file {}, log {})",
                        pid_file.display(),
                        log_path.display()
                    );
                    0
                }
                _ => {
                    eprintln!("imd: the daemon did not start; see {}", log_path.display());
                    1
                }
            }
        }
        Outcome::Child(Err(e)) => {
            eprintln!("imd: cannot detach: {e}");
            std::process::exit(1);
        }
        Outcome::Child(Ok(_)) => {
            drop(ready_rx);
            super::init_logging();
            config.pid_file = Some(pid_file.clone());
            let mut ready_tx = Some(ready_tx);
            let result = server::run(config, listener, |_| {
                if let Some(mut tx) = ready_tx.take() {
                    let _ = tx.write_all(b"1");
                }
            });
            let _ = std::fs::remove_file(&pid_file);
            match result {
                Ok(()) => std::process::exit(0),
                Err(e) => {
                    tracing::error!("imd: {e}");
                    std::process::exit(1);
                }
            }
        }
    }
}

pub fn stop(port: u16, pid_file: Option<PathBuf>, timeout: u64) -> i32 {
    let pid_file = pid_file.unwrap_or_else(|| default_pid_file(port));
    let pid = read_pid(&pid_file).or_else(|| health(port).and_then(|h| h["data"]["pid"].as_i64()).map(|p| p as i32));
    let Some(pid) = pid.filter(|&pid| alive(pid)) else {
        eprintln!("imd not running on port {port}");
        return 1;
    };
    // SAFETY: kill(2) with a pid read from our own pid file or health reply.
    unsafe { libc::kill(pid, libc::SIGTERM) };
    let deadline = Instant::now() + Duration::from_secs(timeout);
    while alive(pid) {
        if Instant::now() > deadline {
            eprintln!("imd (pid {pid}) did not exit within {timeout}s");
            return 1;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    println!("imd on port {port} stopped (pid {pid})");
    0
}

pub fn status(port: u16, pid_file: Option<PathBuf>) -> i32 {
    if let Some(health) = health(port) {
        let data = &health["data"];
        println!(
            "imd running on port {port}: pid {}, uptime {}s, online {}",
            data["pid"], data["uptime_secs"], data["online"]
        );
        return 0;
    }
    let pid_file = pid_file.unwrap_or_else(|| default_pid_file(port));
    match read_pid(&pid_file).filter(|&pid| alive(pid)) {
        Some(pid) => println!("imd on port {port}: pid {pid} exists but does not answer"),
        None => println!("imd not running on port {port}"),
    }
    1
}

fn read_pid(path: &PathBuf) -> Option<i32> {
    std::fs::read_to_string(path).ok()?.trim().parse().ok()
}

fn alive(pid: i32) -> bool {
    // SAFETY: signal 0 only checks that the process exists.
    pid > 0 && unsafe { libc::kill(pid, 0) } == 0
}

/// `GET /health` on the local port, if something answers it within two seconds.
fn health(port: u16) -> Option<serde_json::Value> {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().ok()?;
    runtime
        .block_on(async {
            let ask = async {
                let stream = tokio::net::TcpStream::connect(("127.0.0.1", port)).await.ok()?;
                let (mut sender, conn) =
                    hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream)).await.ok()?;
                tokio::spawn(conn);
                let request =
                    hyper::Request::get("/health").header("host", "127.0.0.1").body(Empty::<Bytes>::new()).ok()?;
                let response = sender.send_request(request).await.ok()?;
                let body = response.into_body().collect().await.ok()?.to_bytes();
                serde_json::from_slice::<serde_json::Value>(&body).ok()
            };
            tokio::time::timeout(Duration::from_secs(2), ask).await.ok().flatten()
        })
        .filter(|h| h["data"]["status"] == "ok")
}
