//! Supervision: when the store writer, the checkpoint thread or the fan-out task dies, imd
//! says so on /health (503, `"status":"failed"`) and exits non-zero instead of staying up
//! half-alive (BEHAVIOUR.md "Running"). The workers are made to die for real with the
//! test-only `IMD_FAULT` switch.
mod common;

use std::net::SocketAddr;
use std::process::{ExitStatus, Stdio};
use std::time::Instant;

use common::{BIN, WAIT, Ws, text_frame};
use http_body_util::{BodyExt, Empty};
use hyper::body::Bytes;
use serde_json::{Value, json};
use tokio::process::{Child, Command};

/// A foreground daemon started with `IMD_FAULT` set; killed if the test ends first.
struct Faulty {
    child: Child,
    addr: SocketAddr,
    _dir: tempfile::TempDir,
}

async fn start_with_fault(fault: &str) -> Faulty {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut child = common::imd_start(&dir.path().join("imd.db")).env("IMD_FAULT", fault).spawn().expect("spawn imd");
    let addr = common::listening_address(&mut child).await;
    Faulty { child, addr, _dir: dir }
}

/// `GET /health`: (HTTP status, body), or None once nothing answers any more.
async fn try_health(addr: SocketAddr) -> Option<(u16, Value)> {
    let ask = async {
        let stream = tokio::net::TcpStream::connect(addr).await.ok()?;
        let (mut sender, conn) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream)).await.ok()?;
        tokio::spawn(conn);
        let request =
            hyper::Request::get("/health").header("host", addr.to_string()).body(Empty::<Bytes>::new()).ok()?;
        let response = sender.send_request(request).await.ok()?;
        let status = response.status().as_u16();
        let body = response.into_body().collect().await.ok()?.to_bytes();
        Some((status, serde_json::from_slice(&body).ok()?))
    };
    tokio::time::timeout(WAIT, ask).await.ok().flatten()
}

/// Polls /health until it reports the failure of `worker`, then waits for the exit. Returns
/// the exit status. Fails if /health keeps saying ok, or if imd does not exit.
async fn expect_failure_and_exit(server: &mut Faulty, worker: &str) -> ExitStatus {
    let deadline = Instant::now() + WAIT;
    let mut seen = None;
    while Instant::now() < deadline {
        match try_health(server.addr).await {
            Some((503, body)) => {
                seen = Some(body);
                break;
            }
            Some((200, body)) => assert_eq!(body["data"]["status"], "ok", "{body}"),
            Some((status, body)) => panic!("/health answered {status}: {body}"),
            None => break,
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    let body = seen.unwrap_or_else(|| panic!("/health never reported the {worker} failure (503)"));
    assert_eq!(body["code"], 503, "{body}");
    assert_eq!(body["data"]["status"], "failed", "{body}");
    assert_eq!(body["data"]["failed"], worker, "{body}");
    assert_eq!(body["data"]["pid"].as_u64(), server.child.id().map(u64::from), "{body}");
    tokio::time::timeout(WAIT, server.child.wait())
        .await
        .unwrap_or_else(|_| panic!("imd stayed up after the {worker} died"))
        .expect("wait")
}

async fn register(addr: SocketAddr, name: &str) -> (u16, Value) {
    common::http(
        addr,
        "POST",
        "/user/register",
        Some(("application/json", json!({"username": name, "password": "secret-pw"}).to_string())),
        None,
    )
    .await
}

#[tokio::test]
async fn a_dead_store_writer_fails_health_and_exits_non_zero() {
    let mut server = start_with_fault("writer-panic").await;
    // Registration is the writer's first command: it panics on it.
    let (status, body) = register(server.addr, "alice").await;
    assert_ne!(status, 200, "nothing can be stored once the writer is dead: {body}");
    let status = expect_failure_and_exit(&mut server, "store writer").await;
    assert_eq!(status.code(), Some(1), "a clean non-zero exit, not a signal: {status:?}");
}

#[tokio::test]
async fn a_dead_fanout_fails_health_and_exits_non_zero() {
    let mut server = start_with_fault("fanout-panic").await;
    let (status, alice) = register(server.addr, "alice").await;
    assert_eq!(status, 200, "{alice}");
    let (status, bob) = register(server.addr, "bob").await;
    assert_eq!(status, 200, "{bob}");
    let token = alice["data"]["access_token"].as_str().expect("token");
    let mut ws = Ws::connect(server.addr, &format!("/?access_token={token}")).await.expect("connect");
    ws.recv_action("sync_done").await;
    // The first committed message is the fan-out's first batch: it panics delivering it.
    ws.send(text_frame(bob["data"]["uid"].as_u64().expect("uid"), "f-1", "hello")).await;
    let status = expect_failure_and_exit(&mut server, "fan-out").await;
    assert_eq!(status.code(), Some(1), "{status:?}");
}

#[tokio::test]
async fn a_dead_checkpoint_thread_fails_health_and_exits_non_zero() {
    // The checkpoint thread panics at its first round, a quarter of a second after start.
    let mut server = start_with_fault("checkpoint-panic").await;
    let status = expect_failure_and_exit(&mut server, "checkpoint").await;
    assert_eq!(status.code(), Some(1), "{status:?}");
}

#[tokio::test]
async fn an_unknown_fault_name_is_refused_at_start() {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = tokio::time::timeout(
        WAIT,
        Command::new(BIN)
            .args(["start", "0", "--host", "127.0.0.1", "--db"])
            .arg(dir.path().join("imd.db"))
            .env("IMD_FAULT", "writer-panik")
            .stdin(Stdio::null())
            .kill_on_drop(true)
            .output(),
    )
    .await
    .expect("imd did not exit")
    .expect("run imd");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "stdout: {stdout}\nstderr: {stderr}");
    assert!(!stdout.contains("listening on"), "{stdout}");
    assert!(stderr.contains("IMD_FAULT"), "the error names the variable: {stderr}");
}
