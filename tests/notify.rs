//! sd_notify: a daemon started with `NOTIFY_SOCKET` (as systemd's `Type=notify` does) says
//! `READY=1` once it listens, and `STOPPING=1` when SIGTERM starts its graceful stop.

mod common;

use std::net::SocketAddr;
use std::path::Path;

use common::WAIT;
use tokio::net::UnixDatagram;
use tokio::process::Child;

/// Waits for the next datagram on `socket` and returns it as text.
async fn next_datagram(socket: &UnixDatagram, what: &str) -> String {
    let mut buf = vec![0u8; 4096];
    let n = tokio::time::timeout(WAIT, socket.recv(&mut buf))
        .await
        .unwrap_or_else(|_| panic!("no {what} datagram within {WAIT:?}"))
        .expect("recv");
    String::from_utf8_lossy(&buf[..n]).into_owned()
}

/// Starts imd in the foreground with `NOTIFY_SOCKET` set to `notify`; returns it and the
/// address from its `listening on` line.
async fn start_with_notify_socket(dir: &Path, notify: &Path) -> (Child, SocketAddr) {
    let mut child = common::imd_start(&dir.join("imd.db")).env("NOTIFY_SOCKET", notify).spawn().expect("spawn imd");
    let addr = common::listening_address(&mut child).await;
    (child, addr)
}

/// SIGTERM to `child`; it must exit 0 within the timeout.
async fn terminate(mut child: Child) {
    let pid = child.id().expect("pid");
    // SAFETY: kill(2) on the child this test spawned and has not yet reaped.
    unsafe { libc::kill(pid as i32, libc::SIGTERM) };
    let status = tokio::time::timeout(WAIT, child.wait()).await.expect("exit after SIGTERM").expect("wait");
    assert!(status.success(), "{status:?}");
}

#[tokio::test]
async fn ready_once_listening_and_stopping_on_sigterm() {
    let dir = tempfile::tempdir().expect("tempdir");
    let sock_path = dir.path().join("notify.sock");
    let socket = UnixDatagram::bind(&sock_path).expect("bind notify socket");
    let (mut child, addr) = start_with_notify_socket(dir.path(), &sock_path).await;
    let pid = child.id().expect("pid");

    let ready = next_datagram(&socket, "READY").await;
    let lines: Vec<&str> = ready.lines().collect();
    assert!(lines.contains(&"READY=1"), "{ready:?}");
    assert!(lines.contains(&format!("MAINPID={pid}").as_str()), "{ready:?}");
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
async fn an_unreachable_notify_socket_does_not_stop_the_daemon() {
    // systemd gone, or a stale variable: the send fails, is logged, and imd serves anyway.
    let dir = tempfile::tempdir().expect("tempdir");
    let (child, addr) = start_with_notify_socket(dir.path(), &dir.path().join("nobody-listens.sock")).await;
    let (status, body) = common::http(addr, "GET", "/health", None, None).await;
    assert_eq!(status, 200, "{body}");
    terminate(child).await;
}
