//! Finding the imd that serves a port, for `stop` and `status`: a pid is trusted only once
//! the process behind it is known to be an imd daemon, never on a pid file's word alone.

use std::path::Path;
use std::time::Duration;

use http_body_util::{BodyExt, Empty};
use hyper::body::Bytes;
use serde_json::Value;

/// The daemon found on a port.
pub enum Daemon {
    /// It answered `GET /health`; `data` is the reply's data (`status`, `pid`, …). `local`:
    /// that pid is an imd daemon here (not so from another pid namespace, say a container).
    Answering { pid: i32, data: Value, local: bool },
    /// Its pid file names a live `imd start PORT`, but nothing answered on the port.
    Silent { pid: i32 },
}

impl Daemon {
    pub fn pid(&self) -> i32 {
        match self {
            Daemon::Answering { pid, .. } | Daemon::Silent { pid } => *pid,
        }
    }
}

/// The imd on `host:port`: the process `/health` names (a stale pid file cannot misdirect
/// us while the daemon answers), else the pid file's, if that process is `imd start PORT`.
pub fn locate(host: &str, port: u16, pid_file: &Path) -> Option<Daemon> {
    if let Some(data) = health(host, port) {
        let pid = data["pid"].as_i64().and_then(|p| i32::try_from(p).ok()).unwrap_or(0);
        return Some(Daemon::Answering { pid, local: is_imd(pid, None), data });
    }
    let pid = read_pid(pid_file)?;
    is_imd(pid, Some(port)).then_some(Daemon::Silent { pid })
}

fn read_pid(path: &Path) -> Option<i32> {
    std::fs::read_to_string(path).ok()?.trim().parse().ok()
}

/// True while `pid` is a live imd daemon (`imd … start …`, and `PORT` after `start` when
/// given), as its command line in /proc says. A zombie's command line is empty: not running.
pub fn is_imd(pid: i32, port: Option<u16>) -> bool {
    if pid <= 0 {
        return false;
    }
    let Ok(cmdline) = std::fs::read(format!("/proc/{pid}/cmdline")) else { return false };
    is_imd_cmdline(&cmdline, port)
}

/// True until `pid` has exited: it exists and is not a zombie. (A command line already reads
/// empty while an exiting process still closes its files.)
pub fn running(pid: i32) -> bool {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else { return false };
    // The state follows the command name, which is in parentheses and may hold anything.
    let state = stat.rsplit_once(')').and_then(|(_, rest)| rest.trim_start().chars().next());
    pid > 0 && !matches!(state, None | Some('Z' | 'X'))
}

/// The rule of `is_imd` on the NUL-separated arguments of a command line.
fn is_imd_cmdline(cmdline: &[u8], port: Option<u16>) -> bool {
    let mut args = cmdline.split(|&b| b == 0).map(String::from_utf8_lossy);
    let Some(program) = args.next() else { return false };
    if Path::new(program.as_ref()).file_name().is_none_or(|name| name != "imd") {
        return false;
    }
    let Some(mut after_start) = args.position(|arg| arg == "start").map(|_| args) else { return false };
    match port {
        Some(port) => after_start.any(|arg| arg == port.to_string()),
        None => true,
    }
}

/// `GET /health` on `host:port`, if something answers it within two seconds with the imd
/// envelope (whatever the status: a failed daemon answers 503 and still names its pid).
fn health(host: &str, port: u16) -> Option<Value> {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().ok()?;
    let authority = if host.contains(':') { format!("[{host}]:{port}") } else { format!("{host}:{port}") };
    runtime.block_on(async {
        let ask = async {
            let stream = tokio::net::TcpStream::connect((host, port)).await.ok()?;
            let (mut sender, conn) =
                hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream)).await.ok()?;
            tokio::spawn(conn);
            let request = hyper::Request::get("/health").header("host", authority).body(Empty::<Bytes>::new()).ok()?;
            let response = sender.send_request(request).await.ok()?;
            let body = response.into_body().collect().await.ok()?.to_bytes();
            let reply = serde_json::from_slice::<Value>(&body).ok()?;
            reply["data"]["pid"].is_i64().then(|| reply["data"].clone())
        };
        tokio::time::timeout(Duration::from_secs(2), ask).await.ok().flatten()
    })
}

#[cfg(test)]
mod tests {
    use super::is_imd_cmdline;

    #[test]
    fn only_an_imd_start_is_an_imd_daemon() {
        let daemon = b"/usr/bin/imd\0start\x009501\0-d\0--host\x00127.0.0.2\0";
        assert!(is_imd_cmdline(daemon, Some(9501)));
        assert!(is_imd_cmdline(daemon, None));
        assert!(is_imd_cmdline(b"imd\0start\0-d\x009501\0", Some(9501)));
        assert!(!is_imd_cmdline(daemon, Some(9502)), "another port");
        assert!(!is_imd_cmdline(b"sleep\x0030\0", None), "another program");
        assert!(!is_imd_cmdline(b"/usr/bin/imd\0stop\x009501\0", Some(9501)), "not a daemon");
        assert!(!is_imd_cmdline(b"/opt/imd-tools/x\0start\x009501\0", Some(9501)), "another program");
        assert!(!is_imd_cmdline(b"", None), "a zombie");
    }
}
