//! Resource limits: HTTP header and idle timeouts, the body cap, connection caps (total, per
//! IP, per user), the file limit, login throttling and the bounded bcrypt pool.

mod common;

use std::net::SocketAddr;
use std::process::Stdio;
use std::time::{Duration, Instant};

use common::{Server, WAIT, Ws, hold_connections, keep_alive_health};
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// One HTTP/1.1 request on a fresh connection; returns (status, Retry-After, JSON body).
async fn request(addr: SocketAddr, method: &str, path: &str, body: Option<Value>) -> (u16, Option<String>, Value) {
    let stream = TcpStream::connect(addr).await.expect("connect");
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream)).await.expect("handshake");
    tokio::spawn(conn);
    let mut req = hyper::Request::builder().method(method).uri(path).header("host", addr.to_string());
    let body = match body {
        Some(v) => {
            req = req.header("content-type", "application/json");
            Full::new(Bytes::from(v.to_string()))
        }
        None => Full::new(Bytes::new()),
    };
    let resp = tokio::time::timeout(WAIT, sender.send_request(req.body(body).expect("request")))
        .await
        .expect("HTTP timeout")
        .expect("HTTP");
    let status = resp.status().as_u16();
    let retry_after = resp.headers().get("retry-after").and_then(|v| v.to_str().ok()).map(str::to_string);
    let bytes = resp.into_body().collect().await.expect("body").to_bytes();
    let value = serde_json::from_slice(&bytes).unwrap_or_else(|e| panic!("{path}: not JSON ({e})"));
    (status, retry_after, value)
}

async fn login(addr: SocketAddr, username: &str, password: &str) -> (u16, Option<String>, Value) {
    request(addr, "POST", "/user/login", Some(json!({"username": username, "password": password}))).await
}

/// Reads until the server closes the connection; returns how long that took, or None if it
/// stayed open for `within`.
async fn wait_for_eof(stream: &mut TcpStream, within: Duration) -> Option<Duration> {
    let started = Instant::now();
    let mut buf = [0u8; 4096];
    loop {
        match tokio::time::timeout_at(tokio::time::Instant::from_std(started + within), stream.read(&mut buf)).await {
            Err(_) => return None,
            Ok(Ok(0)) | Ok(Err(_)) => return Some(started.elapsed()),
            Ok(Ok(_)) => continue,
        }
    }
}

#[tokio::test]
async fn a_slowloris_request_is_closed_within_the_header_timeout() {
    let server = Server::start_with(&["--http-header-timeout", "1", "--http-idle-timeout", "60"]).await;
    let mut stream = TcpStream::connect(server.addr).await.expect("connect");
    stream.write_all(b"GET /health HTTP/1.1\r\n").await.expect("write");
    let (mut reader, mut writer) = stream.into_split();
    // A header line one byte a second, never finished.
    let dribble = tokio::spawn(async move {
        for byte in b"X-Slow: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaa".iter().cycle().take(60) {
            if writer.write_all(&[*byte]).await.is_err() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(1000)).await;
        }
    });
    let started = Instant::now();
    let mut buf = [0u8; 1024];
    let closed = tokio::time::timeout(WAIT, async {
        loop {
            match reader.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => continue,
            }
        }
    })
    .await;
    dribble.abort();
    assert!(closed.is_ok(), "a request head dribbled for {:?} was not cut off", started.elapsed());
}

#[tokio::test]
async fn idle_connections_are_closed_within_the_idle_timeout() {
    let server = Server::start_with(&["--http-idle-timeout", "1", "--http-header-timeout", "60"]).await;
    // One that never sends anything, one that goes quiet after a keep-alive request.
    let mut silent = TcpStream::connect(server.addr).await.expect("connect");
    let mut quiet = TcpStream::connect(server.addr).await.expect("connect");
    assert_eq!(keep_alive_health(&mut quiet).await, 200);
    let silent_closed = wait_for_eof(&mut silent, WAIT).await;
    let quiet_closed = wait_for_eof(&mut quiet, WAIT).await;
    assert!(silent_closed.is_some(), "a connection that never sent a request stayed open");
    assert!(quiet_closed.is_some(), "an idle keep-alive connection stayed open");
}

#[tokio::test]
async fn the_body_limit_is_an_option() {
    let server = Server::start_with(&["--max-body-bytes", "1000"]).await;
    let big = json!({"username": "someone", "password": "x".repeat(1500)});
    let (status, _, body) = request(server.addr, "POST", "/user/login", Some(big)).await;
    assert_eq!((status, body["code"].as_u64()), (413, Some(413)), "{body}");
    let small = json!({"username": "someone", "password": "x".repeat(500)});
    let (status, _, body) = request(server.addr, "POST", "/user/login", Some(small)).await;
    assert_eq!(status, 401, "a body under the limit is read: {body}");
}

/// Retries `GET /health` on new connections until it answers 200 (a closed connection is
/// counted out a moment after the close).
async fn wait_until_admitted(addr: SocketAddr) {
    let deadline = Instant::now() + WAIT;
    loop {
        let (status, _, body) = request(addr, "GET", "/health", None).await;
        if status == 200 {
            return;
        }
        assert!(Instant::now() < deadline, "still refused after a connection closed: {status} {body}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn connections_over_the_per_ip_cap_are_refused_with_429() {
    let server = Server::start_with(&["--max-connections-per-ip", "3"]).await;
    let (_, token) = server.register("alice").await;
    let mut held = hold_connections(server.addr, 3).await;
    let (status, _, body) = request(server.addr, "GET", "/health", None).await;
    assert_eq!((status, body["code"].as_u64()), (429, Some(429)), "the newest connection is refused: {body}");
    let refused = Ws::connect(server.addr, &format!("/?access_token={token}")).await.err();
    assert_eq!(refused, Some(429), "a WebSocket over the per-IP cap is refused before the upgrade");
    // The held connections still work: the newest is refused, not the oldest.
    assert_eq!(keep_alive_health(&mut held[0]).await, 200);
    held.pop();
    wait_until_admitted(server.addr).await;
}

#[tokio::test]
async fn connections_over_the_total_cap_are_refused_with_503() {
    let server = Server::start_with(&["--max-connections", "3"]).await;
    let mut held = hold_connections(server.addr, 3).await;
    let (status, _, body) = request(server.addr, "GET", "/health", None).await;
    assert_eq!((status, body["code"].as_u64()), (503, Some(503)), "{body}");
    assert_eq!(keep_alive_health(&mut held[2]).await, 200);
    held.clear();
    wait_until_admitted(server.addr).await;
}

#[tokio::test]
async fn websockets_over_the_per_user_cap_are_refused_with_429() {
    // One node: each node counts only its own sockets of a user (README, "Cluster mode").
    let server = Server::start_single_with(&["--max-connections-per-user", "2"]).await;
    let (_, alice) = server.register("alice").await;
    let (_, bob) = server.register("bob").await;
    let (first, _) = server.connect_device(&alice, "phone").await;
    let (_second, _) = server.connect_device(&alice, "laptop").await;
    let third = Ws::connect(server.addr, &format!("/?access_token={alice}&device=tablet")).await.err();
    assert_eq!(third, Some(429), "a third socket of the same user is refused before the upgrade");
    let (_bob, _) = server.connect(&bob).await;
    drop(first);
    // The closed socket is counted out once its session ends.
    let deadline = Instant::now() + WAIT;
    loop {
        match Ws::connect(server.addr, &format!("/?access_token={alice}&device=tablet")).await {
            Ok(_) => break,
            Err(code) => assert!(Instant::now() < deadline && code == 429, "still refused: {code}"),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The soft and hard "Max open files" of a process.
fn open_files_limit(pid: u32) -> (String, String) {
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).expect("limits");
    let line = limits.lines().find(|l| l.starts_with("Max open files")).expect("Max open files line");
    let fields: Vec<&str> = line["Max open files".len()..].split_whitespace().collect();
    (fields[0].to_string(), fields[1].to_string())
}

/// Starts imd like [`Server::start_with`] but with exactly `args` after the database (the
/// harness fixes `--bcrypt-cost 4`, which may not be given twice) and, with `low_nofile`, a
/// soft file limit of 256 as a default shell would give it.
async fn start_custom(args: &[&str], low_nofile: bool) -> Server {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = dir.path().join("imd.db");
    let mut cmd = tokio::process::Command::new(common::BIN);
    cmd.args(["start", "0", "--host", "127.0.0.1", "--db"])
        .arg(&db)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .kill_on_drop(true);
    if low_nofile {
        unsafe {
            cmd.pre_exec(|| {
                let mut lim = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
                if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 {
                    lim.rlim_cur = lim.rlim_max.min(256);
                    libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
                }
                Ok(())
            });
        }
    }
    let mut child = cmd.spawn().expect("spawn imd");
    let addr = common::listening_address(&mut child).await;
    Server {
        child,
        addr,
        db,
        dir: Some(dir),
        extra_args: args.iter().map(|s| s.to_string()).collect(),
        cluster: None,
        pg: None,
    }
}

#[tokio::test]
async fn the_file_limit_is_raised_to_the_hard_limit() {
    let server = start_custom(&["--bcrypt-cost", "4"], true).await;
    let (soft, hard) = open_files_limit(server.child.id().expect("pid"));
    assert_eq!(soft, hard, "the soft file limit is raised to the hard one");
}

#[tokio::test]
async fn failed_logins_per_username_are_answered_429_with_retry_after() {
    let server = Server::start_with(&["--login-failures-per-user", "5", "--login-failures-per-ip", "1000"]).await;
    server.register("alice").await;
    server.register("bob").await;
    for i in 0..5 {
        let (status, _, body) = login(server.addr, "alice", "wrong-password").await;
        assert_eq!(status, 401, "failure {i} is an ordinary 401: {body}");
    }
    let (status, retry_after, body) = login(server.addr, "alice", "wrong-password").await;
    assert_eq!((status, body["code"].as_u64()), (429, Some(429)), "{body}");
    let secs: u64 = retry_after.expect("Retry-After header").parse().expect("Retry-After in seconds");
    assert!((1..=60).contains(&secs), "Retry-After {secs}");
    // While the name is throttled, even the right password waits (else guessing goes on).
    let (status, _, _) = login(server.addr, "alice", "secret-pw").await;
    assert_eq!(status, 429, "the throttled name is refused whatever the password");
    // Other names are not affected.
    let (status, _, body) = login(server.addr, "bob", "secret-pw").await;
    assert_eq!(status, 200, "another user logs in: {body}");
}

#[tokio::test]
async fn registering_a_taken_name_again_and_again_is_throttled_per_username() {
    let server = Server::start_with(&["--login-failures-per-user", "3", "--login-failures-per-ip", "1000"]).await;
    server.register("alice").await;
    let again = json!({"username": "alice", "password": "secret-pw"});
    for i in 0..3 {
        let (status, _, body) = request(server.addr, "POST", "/user/register", Some(again.clone())).await;
        assert_eq!(status, 409, "attempt {i} is an ordinary 409: {body}");
    }
    let (status, retry_after, body) = request(server.addr, "POST", "/user/register", Some(again)).await;
    assert_eq!((status, body["code"].as_u64()), (429, Some(429)), "{body}");
    assert!(retry_after.is_some(), "Retry-After");
    // Registration attempts do not lock the account's owner out of logging in.
    let (status, _, body) = login(server.addr, "alice", "secret-pw").await;
    assert_eq!(status, 200, "{body}");
    // Other names still register.
    server.register("bob").await;
}

#[tokio::test]
async fn failures_per_ip_throttle_login_and_register() {
    let server = Server::start_with(&["--login-failures-per-ip", "3", "--login-failures-per-user", "100"]).await;
    server.register("alice").await;
    for name in ["n1", "n2", "n3"] {
        let (status, _, body) = login(server.addr, name, "wrong-password").await;
        assert_eq!(status, 401, "{body}");
    }
    let (status, retry_after, body) = login(server.addr, "n4", "wrong-password").await;
    assert_eq!((status, body["code"].as_u64()), (429, Some(429)), "{body}");
    assert!(retry_after.is_some(), "Retry-After");
    let register = json!({"username": "newcomer", "password": "secret-pw"});
    let (status, retry_after, body) = request(server.addr, "POST", "/user/register", Some(register)).await;
    assert_eq!(status, 429, "registering from a throttled IP waits too: {body}");
    assert!(retry_after.is_some(), "Retry-After");
}

#[tokio::test]
async fn successful_logins_are_not_counted() {
    let server = Server::start_with(&["--login-failures-per-user", "2", "--login-failures-per-ip", "1000"]).await;
    server.register("alice").await;
    for round in 0..5 {
        let (status, _, body) = login(server.addr, "alice", "wrong-password").await;
        assert_eq!(status, 401, "round {round}: {body}");
        let (status, _, body) = login(server.addr, "alice", "secret-pw").await;
        assert_eq!(status, 200, "round {round}: a success clears the name's failures: {body}");
    }
}

/// A login that tolerates any outcome (refusals, resets): the flood only has to load the server.
async fn flood_login(addr: SocketAddr, body: &str) -> Option<u16> {
    let mut stream = TcpStream::connect(addr).await.ok()?;
    let req = format!(
        "POST /user/login HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(req.as_bytes()).await.ok()?;
    let mut buf = Vec::new();
    tokio::time::timeout(Duration::from_secs(60), stream.read_to_end(&mut buf)).await.ok()?.ok()?;
    String::from_utf8_lossy(&buf).split(' ').nth(1)?.parse().ok()
}

#[tokio::test]
async fn a_login_flood_leaves_health_and_message_acks_fast() {
    // Cost 12 makes every check some hundreds of milliseconds of CPU, as in production. The
    // throttle is off so that the whole flood reaches bcrypt.
    let server =
        start_custom(&["--bcrypt-cost", "12", "--login-failures-per-user", "0", "--login-failures-per-ip", "0"], false)
            .await;
    let (_, alice) = server.register("alice").await;
    let (bob_uid, _) = server.register("bob").await;
    let (mut ws, _) = server.connect(&alice).await;
    // Right passwords: successful logins are not throttled, so the flood reaches bcrypt.
    let body = json!({"username": "alice", "password": "secret-pw"}).to_string();
    let stop = tokio_util::sync::CancellationToken::new();
    let mut flood = Vec::new();
    for _ in 0..128 {
        let (addr, body, stop) = (server.addr, body.clone(), stop.clone());
        flood.push(tokio::spawn(async move {
            while !stop.is_cancelled() {
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = flood_login(addr, &body) => {}
                }
            }
        }));
    }
    // Let the flood fill the server first.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let mut worst_health = Duration::ZERO;
    let mut worst_ack = Duration::ZERO;
    for i in 0..20 {
        let started = Instant::now();
        let (status, _, body) = request(server.addr, "GET", "/health", None).await;
        assert_eq!(status, 200, "{body}");
        worst_health = worst_health.max(started.elapsed());
        let started = Instant::now();
        let ack = common::send_text(&mut ws, bob_uid, &format!("m{i}"), "hello").await;
        assert_eq!(ack["action"], "ack", "{ack}");
        worst_ack = worst_ack.max(started.elapsed());
    }
    stop.cancel();
    eprintln!("during a login flood: slowest /health {worst_health:?}, slowest ack {worst_ack:?}");
    for task in flood {
        let _ = task.await;
    }
    assert!(
        worst_health < Duration::from_millis(500) && worst_ack < Duration::from_millis(1000),
        "during a login flood: slowest /health {worst_health:?} (limit 500 ms), slowest ack {worst_ack:?} (limit 1 s)"
    );
}

#[tokio::test]
async fn password_checks_beyond_the_queue_are_answered_503() {
    let server = start_custom(
        &["--bcrypt-cost", "12", "--bcrypt-threads", "1", "--bcrypt-queue", "2", "--login-failures-per-user", "0"],
        false,
    )
    .await;
    server.register("alice").await;
    let body = json!({"username": "alice", "password": "secret-pw"}).to_string();
    let logins: Vec<_> = (0..12)
        .map(|_| {
            let (addr, body) = (server.addr, body.clone());
            tokio::spawn(async move { flood_login(addr, &body).await })
        })
        .collect();
    let mut statuses = Vec::new();
    for login in logins {
        statuses.push(login.await.expect("task").expect("an answer"));
    }
    assert!(statuses.iter().all(|s| *s == 200 || *s == 503), "{statuses:?}");
    assert!(statuses.contains(&503), "some were refused as busy: {statuses:?}");
    assert!(statuses.contains(&200), "the queued ones were answered: {statuses:?}");
}

#[tokio::test]
async fn many_registrations_at_once_from_one_address_are_not_throttled() {
    let server = Server::start().await;
    let registrations: Vec<_> = (0..64)
        .map(|i| {
            let addr = server.addr;
            tokio::spawn(async move {
                let body = json!({"username": format!("user{i}"), "password": "secret-pw"});
                request(addr, "POST", "/user/register", Some(body)).await
            })
        })
        .collect();
    for registration in registrations {
        let (status, _, body) = registration.await.expect("task");
        assert_eq!(status, 200, "{body}");
    }
}
