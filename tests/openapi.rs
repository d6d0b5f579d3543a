//! docs/openapi.json against the running daemon: it is served at `/openapi.json`, and a
//! schemathesis run (property-based API fuzzing, from the venv `bash .ci/run` makes) finds no
//! 5xx and no answer the document does not describe.

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::*;
use serde_json::Value;

/// The file in the repository; `src/http` embeds the same one.
const DOCUMENT: &str = include_str!("../docs/openapi.json");

/// `--admin-token` of the fuzzed daemon (at least 32 bytes).
const ADMIN_SECRET: &str = "openapi-fuzz-admin-secret-0123456789";

/// Where `.ci/run` installs schemathesis (pinned there).
const VENV_BIN: &str = "target/ci-venv/bin/schemathesis";

/// Test cases per operation and phase: enough to reach every status, fast enough for CI.
const MAX_EXAMPLES: &str = "40";

/// A whole schemathesis pass may take this long before the test fails.
const PASS_TIMEOUT: Duration = Duration::from_secs(180);

#[tokio::test]
async fn the_served_document_is_the_repository_file() {
    let server = Server::start().await;
    let (status, headers, body) = http_with_headers(server.addr, "GET", "/openapi.json", None, None).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(headers.get("content-type").and_then(|v| v.to_str().ok()), Some("application/json"));
    assert_eq!(body, DOCUMENT, "GET /openapi.json must serve docs/openapi.json unchanged");
    let doc: Value = serde_json::from_str(&body).expect("the document is JSON");
    assert_eq!(doc["openapi"], "3.1.0");

    let (status, body) = server.post_json("/openapi.json", serde_json::json!({}), None).await;
    assert_error(status, &body, 405, "POST /openapi.json");
}

/// The schemathesis CLI, or None (with a loud note) when the venv was not made; under CI the
/// venv must be there.
fn schemathesis() -> Option<PathBuf> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(VENV_BIN);
    if path.exists() {
        return Some(path);
    }
    let hint = format!(
        "{VENV_BIN} is missing: run `bash .ci/run` once (or: python3 -m venv target/ci-venv && \
         target/ci-venv/bin/pip install schemathesis==4.32.5)"
    );
    assert!(std::env::var_os("CI").is_none(), "CI is set but {hint}");
    eprintln!("\n*** SKIPPED the schemathesis run: {hint} ***\n");
    None
}

/// One schemathesis pass over the operations `selection` picks; panics with its report unless
/// every check passed. `config` is a schemathesis.toml (per-operation headers).
async fn schemathesis_pass(bin: &Path, server: &Server, dir: &Path, name: &str, config: &str, selection: &[&str]) {
    let config_path = dir.join(format!("{name}.toml"));
    std::fs::write(&config_path, config).expect("write schemathesis config");
    let mut cmd = tokio::process::Command::new(bin);
    cmd.arg("--config-file").arg(&config_path).arg("run").arg(format!("http://{}/openapi.json", server.addr));
    cmd.args([
        "--checks",
        "not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance,response_headers_conformance,unsupported_method,allow_header_conformance,ignored_auth",
        "--max-examples",
        MAX_EXAMPLES,
        "--seed",
        "1",
        "--generation-database",
        "none",
        "--workers",
        "1",
        "--request-timeout",
        "10",
        "--no-color",
    ]);
    cmd.args(selection);
    // Hypothesis and schemathesis write their caches into the working directory.
    cmd.current_dir(dir).stdin(std::process::Stdio::null()).kill_on_drop(true);
    let started = std::time::Instant::now();
    let output = tokio::time::timeout(PASS_TIMEOUT, cmd.output())
        .await
        .unwrap_or_else(|_| panic!("schemathesis pass {name} took over {PASS_TIMEOUT:?}"))
        .expect("run schemathesis");
    let report = String::from_utf8_lossy(&output.stdout);
    eprintln!("schemathesis pass {name}: {:.1} s\n{report}", started.elapsed().as_secs_f64());
    assert!(
        output.status.success(),
        "schemathesis pass {name} failed:\n{report}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(report.contains(" passed"), "schemathesis pass {name} ran no test case:\n{report}");
}

/// A schemathesis.toml giving the listed operations the admin secret as their credential.
fn admin_config(paths: &[&str]) -> String {
    paths
        .iter()
        .map(|path| {
            format!("[[operations]]\ninclude-path = \"{path}\"\nheaders = {{ Authorization = \"Bearer {ADMIN_SECRET}\" }}\n\n")
        })
        .collect()
}

#[tokio::test]
async fn schemathesis_finds_no_server_error_and_no_undocumented_answer() {
    let Some(bin) = schemathesis() else { return };
    let server = Server::start_with(&["--admin-token", ADMIN_SECRET]).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let (_, token) = server.register("fuzzer").await;
    let user_header = format!("Authorization: Bearer {token}");

    // First everything that keeps the fuzzing user's token valid, as that user (broadcast with
    // the admin secret); `/` is the WebSocket upgrade, not a JSON API.
    let selection = [
        "-H",
        &user_header,
        "--exclude-path",
        "/",
        "--exclude-path",
        "/user/logout",
        "--exclude-path",
        "/admin/user/revoke",
    ];
    schemathesis_pass(&bin, &server, dir.path(), "main", &admin_config(&["/message/sendPublicMessage"]), &selection)
        .await;

    // Then logout and revoke, which end tokens (perhaps the fuzzing user's own).
    let selection = ["-H", &user_header, "--include-path", "/user/logout", "--include-path", "/admin/user/revoke"];
    schemathesis_pass(&bin, &server, dir.path(), "revoking", &admin_config(&["/admin/user/revoke"]), &selection).await;

    // The daemon is still up and answering after the run.
    let (status, body) = server.get("/health", None).await;
    ok(status, &body, "/health after fuzzing");
}
