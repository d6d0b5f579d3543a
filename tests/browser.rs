//! The web client in a real browser: runs tests/browser/scenarios.mjs (playwright-core driving
//! Debian's chromium) against the real daemon, which this test stops and restarts on the same
//! port and database when the script asks. Without chromium or node_modules it skips with a
//! message, or fails under CI (`bash .ci/run` installs both).
mod common;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use common::{imd_start_on, listening_address};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, Command};

const CHROMIUM: &str = "/usr/bin/chromium";
/// The whole script; its own waits are 15 s each.
const SCRIPT_LIMIT: Duration = Duration::from_secs(240);
/// The admin secret the script broadcasts with (imd wants at least 32 bytes).
const SECRET: &str = "browser-test-admin-secret-not-for-production";

/// tests/browser, when chromium and the script's packages are there.
fn browser_dir() -> Option<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/browser");
    let missing: Vec<&str> = [
        (!Path::new(CHROMIUM).exists()).then_some(CHROMIUM),
        (!dir.join("node_modules/playwright-core").exists()).then_some("tests/browser/node_modules (npm ci)"),
    ]
    .into_iter()
    .flatten()
    .collect();
    if missing.is_empty() {
        return Some(dir);
    }
    let message = format!("browser tests need {}: run `bash .ci/run` (it installs them)", missing.join(" and "));
    assert!(std::env::var_os("CI").is_none(), "{message}");
    // Straight to stderr: the test harness would swallow eprintln! of a passing test.
    let _ = writeln!(std::io::stderr(), "\n!!! SKIPPED the browser tests: {message} !!!\n");
    None
}

async fn start(db: &Path, port: u16) -> (Child, u16) {
    let mut child = imd_start_on(db, port).args(["--admin-token", SECRET]).spawn().expect("spawn imd");
    let addr = listening_address(&mut child).await;
    (child, addr.port())
}

/// SIGTERM to the daemon this test started, and its exit.
async fn stop(child: &mut Child) {
    let pid = child.id().expect("imd runs") as i32;
    unsafe { libc::kill(pid, libc::SIGTERM) };
    let status =
        tokio::time::timeout(common::WAIT, child.wait()).await.expect("imd exits after SIGTERM").expect("wait");
    assert!(status.success(), "imd exit after SIGTERM: {status}");
}

#[tokio::test]
async fn web_client_in_chromium() {
    let Some(dir) = browser_dir() else { return };
    let tmp = tempfile::tempdir().expect("tempdir");
    let db = tmp.path().join("imd.db");
    let (mut daemon, port) = start(&db, 0).await;
    let mut node = Command::new("node");
    node.arg("scenarios.mjs")
        .current_dir(&dir)
        .env("IMD_URL", format!("http://127.0.0.1:{port}"))
        .env("IMD_BROADCAST_SECRET", SECRET)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true);
    // `IMD_SCREENSHOTS=docs/screenshots cargo test --release --test browser` refreshes the PNGs.
    if let Some(shots) = std::env::var_os("IMD_SCREENSHOTS") {
        node.env("IMD_SCREENSHOTS", Path::new(env!("CARGO_MANIFEST_DIR")).join(shots));
    }
    let mut node = node.spawn().expect("run node (Node.js 18 or later)");
    let mut answers = node.stdin.take().expect("piped stdin");
    let mut lines = BufReader::new(node.stdout.take().expect("piped stdout")).lines();
    let mut passed = Vec::new();
    let run = async {
        while let Some(line) = lines.next_line().await.expect("read the script's output") {
            match line.as_str() {
                "@@stop" => {
                    stop(&mut daemon).await;
                    answers.write_all(b"stopped\n").await.expect("answer the script");
                }
                "@@start" => {
                    daemon = start(&db, port).await.0;
                    answers.write_all(b"started\n").await.expect("answer the script");
                }
                _ => {
                    eprintln!("browser: {line}");
                    if line.starts_with("ok: ") {
                        passed.push(line);
                    }
                }
            }
        }
        node.wait().await.expect("wait for node")
    };
    let status = tokio::time::timeout(SCRIPT_LIMIT, run).await.expect("the browser scenarios finish in time");
    assert!(status.success(), "browser scenarios failed ({status}); see the output above");
    assert_eq!(passed.len(), 7, "every scenario reported ok: {passed:?}");
}
