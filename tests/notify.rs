//! sd_notify: a daemon started with `NOTIFY_SOCKET` (as systemd's `Type=notify` does) says
//! `READY=1` once it listens, and `STOPPING=1` when SIGTERM starts its graceful stop.

mod common;

use std::process::Stdio;

use common::{BIN, WAIT};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::net::UnixDatagram;
use tokio::process::Command;

/// Waits for the next datagram on `socket` and returns it as text.
async fn next_datagram(socket: &UnixDatagram, what: &str) -> String {
    let mut buf = vec![0u8; 4096];
    let n = tokio::time::timeout(WAIT, socket.recv(&mut buf))
        .await
        .unwrap_or_else(|_| panic!("no {what} datagram within {WAIT:?}"))
        .expect("recv");
    String::from_utf8_lossy(&buf[..n]).into_owned()
}

#[tokio::test]
async fn ready_once_listening_and_stopping_on_sigterm() {
    let dir = tempfile::tempdir().expect("tempdir");
    let sock_path = dir.path().join("notify.sock");
    let socket = UnixDatagram::bind(&sock_path).expect("bind notify socket");
    let mut child = Command::new(BIN)
        .args(["start", "0", "--host", "127.0.0.1", "--bcrypt-cost", "4", "--db"])
        .arg(dir.path().join("imd.db"))
        .env("NOTIFY_SOCKET", &sock_path)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn imd");
    let pid = child.id().expect("pid");

    let ready = next_datagram(&socket, "READY").await;
    let lines: Vec<&str> = ready.lines().collect();
    assert!(lines.contains(&"READY=1"), "{ready:?}");
    assert!(lines.contains(&format!("MAINPID={pid}").as_str()), "{ready:?}");

    // Ready means listening: the port printed on stdout answers /health now.
    let stdout = child.stdout.take().expect("stdout");
    let mut out = BufReader::new(stdout).lines();
    let addr = tokio::time::timeout(WAIT, async {
        while let Some(line) = out.next_line().await.expect("stdout") {
            if let Some(rest) = line.strip_prefix("listening on ") {
                return rest.trim().parse::<std::net::SocketAddr>().expect("address");
            }
        }
        panic!("imd exited before listening");
    })
    .await
    .expect("listening line");
    let (status, body) = common::http(addr, "GET", "/health", None, None).await;
    assert_eq!(status, 200, "{body}");

    // SAFETY: kill(2) on the child this test spawned and has not yet reaped.
    unsafe { libc::kill(pid as i32, libc::SIGTERM) };
    let stopping = next_datagram(&socket, "STOPPING").await;
    assert!(stopping.lines().any(|l| l == "STOPPING=1"), "{stopping:?}");
    let status = tokio::time::timeout(WAIT, child.wait()).await.expect("exit after SIGTERM").expect("wait");
    assert!(status.success(), "{status:?}");
}

#[tokio::test]
async fn nothing_is_sent_and_nothing_breaks_without_notify_socket() {
    // The harness never sets NOTIFY_SOCKET; a daemon that then tried to notify would still
    // have to start and stop cleanly.
    let mut server = common::Server::start().await;
    let (status, body) = server.get("/health", None).await;
    assert_eq!(status, 200, "{body}");
    assert!(server.terminate().await.success());
}
