//! Running as a daemon, and controlling one: `start -d`, `stop`, `status`.

use std::io::{Read, Write};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use daemonize::{Daemonize, Outcome};

use super::locate::{Daemon, locate, running};
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
    let daemon = Daemonize::new()
        .pid_file(&pid_file)
        .working_directory(cwd)
        // Its default (0o027) would make the pid file and the database group-readable.
        .umask(super::PRIVATE_UMASK)
        .stdout(log)
        .stderr(log_err);
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
            super::init_logging(config.log_format);
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

pub fn stop(port: u16, host: &str, pid_file: Option<PathBuf>, timeout: u64) -> i32 {
    let pid_file = pid_file.unwrap_or_else(|| default_pid_file(port));
    let Some(daemon) = locate(host, port, &pid_file) else {
        eprintln!("imd not running on port {port}");
        return 1;
    };
    let pid = daemon.pid();
    if let Daemon::Answering { local: false, .. } = daemon {
        eprintln!("imd on port {port} names pid {pid}, which is no imd process here: not signalled");
        return 1;
    }
    // SAFETY: kill(2) on a pid just checked to be an imd daemon serving this port.
    unsafe { libc::kill(pid, libc::SIGTERM) };
    let deadline = Instant::now() + Duration::from_secs(timeout);
    while running(pid) {
        if Instant::now() > deadline {
            eprintln!("imd (pid {pid}) did not exit within {timeout}s");
            return 1;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    println!("imd on port {port} stopped (pid {pid})");
    0
}

pub fn status(port: u16, host: &str, pid_file: Option<PathBuf>) -> i32 {
    let pid_file = pid_file.unwrap_or_else(|| default_pid_file(port));
    match locate(host, port, &pid_file) {
        Some(Daemon::Answering { pid, data, .. }) if data["status"] == "ok" => {
            println!(
                "imd running on port {port}: pid {pid}, uptime {}s, online {}",
                data["uptime_secs"], data["online"]
            );
            0
        }
        // Degraded still serves; failed is about to exit (BEHAVIOUR.md "Running").
        Some(Daemon::Answering { pid, data, .. }) => {
            println!("imd on port {port}: pid {pid}, status {}: {data}", data["status"]);
            if data["status"] == "failed" { 1 } else { 0 }
        }
        Some(Daemon::Silent { pid }) => {
            println!("imd on port {port}: pid {pid} exists but does not answer");
            1
        }
        None => {
            println!("imd not running on port {port}");
            1
        }
    }
}
