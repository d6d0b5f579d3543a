//! `imd config init` / `check` and `imd start --config FILE`: the file's values are used,
//! the command line overrides them, and every problem names its line and key.

mod common;

use common::*;

/// Writes `text` to a fresh file and runs `imd config check` on it.
async fn check(text: &str) -> (std::process::Output, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("imd.toml");
    std::fs::write(&path, text).expect("write config");
    let out = run_imd(&["config", "check", path.to_str().expect("utf-8 path")]).await;
    (out, dir)
}

#[tokio::test]
async fn init_prints_a_file_that_check_accepts() {
    let init = run_imd(&["config", "init"]).await;
    assert!(init.status.success(), "{init:?}");
    let text = String::from_utf8(init.stdout).expect("utf-8");
    for line in
        ["max_frame_bytes = 65536", "token_ttl = 86400", "sync = \"full\"", "# jwt_secret = ", "# admin_token = "]
    {
        assert!(text.lines().any(|l| l.starts_with(line)), "`{line}` missing:\n{text}");
    }
    assert!(text.contains("# Largest WebSocket message accepted"), "help texts are comments:\n{text}");
    let (out, _dir) = check(&text).await;
    assert!(out.status.success(), "{out:?}");
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "ok");
}

#[tokio::test]
async fn check_names_the_line_key_and_expectation_of_each_problem() {
    let cases = [
        (
            "db = \"a.db\"\n\nmax_fram_bytes = 1024\n",
            "line 3: unknown key `max_fram_bytes` (did you mean `max_frame_bytes`?)",
        ),
        ("# ttl\ntoken_ttl = \"a day\"\n", "line 2: `token_ttl`: expected a whole number, found string"),
        ("host = \"::\"\nrate_limit = 5\nsync = \"fast\"\n", "line 3: `sync` = \"fast\""),
        ("max_frame_bytes = = 3\n", "line 1: "),
    ];
    for (text, want) in cases {
        let (out, _dir) = check(text).await;
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{text}: {out:?}");
        assert!(stderr.contains(want), "{text}: want `{want}` in: {stderr}");
    }
    let (out, _dir) = check("sync = \"fast\"\n").await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("\"full\", \"normal\""), "the enum's values are listed: {stderr}");
}

#[tokio::test]
async fn start_takes_options_from_the_file_and_the_command_line_wins() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("imd.toml");
    std::fs::write(&path, "max_frame_bytes = 1024\ntoken_ttl = 3600\n").expect("write config");
    let config = path.to_str().expect("utf-8 path");

    let server = Server::start_with(&["--config", config, "--token-ttl", "120"]).await;
    let (_, ta) = server.register("alice").await;
    let (b, _) = server.register("bob").await;
    let (status, body) = login(&server, "alice", "secret-pw").await;
    let data = ok(status, &body, "login");
    let expires_in = data["expires_in"].as_u64().unwrap_or_else(|| panic!("expires_in: {body}"));
    assert!((100..=120).contains(&expires_in), "--token-ttl 120 beats the file's 3600: {body}");

    let (mut wa, _) = server.connect(&ta).await;
    let ack = wa.request(text_frame(b, "fits", "small")).await;
    assert_eq!(ack["action"], "ack", "{ack}");
    wa.send(text_frame(b, "too-big", &"b".repeat(2000))).await;
    assert_eq!(wa.recv_close().await, Some(1009), "the file's max_frame_bytes = 1024 applies");
}

#[tokio::test]
async fn start_refuses_a_bad_file_with_its_line() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("imd.toml");
    std::fs::write(&path, "\nmax_fram_bytes = 1024\n").expect("write config");
    let out = run_imd(&["start", "0", "--config", path.to_str().expect("utf-8 path")]).await;
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("line 2: unknown key `max_fram_bytes`"), "{stderr}");
}

#[tokio::test]
async fn imd_config_names_the_file_and_environment_variables_beat_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("imd.toml");
    std::fs::write(&path, "max_frame_bytes = 1024\ntoken_ttl = 3600\n").expect("write config");
    let db = dir.path().join("imd.db");
    let mut child = imd_start(&db).env("IMD_CONFIG", &path).env("IMD_TOKEN_TTL", "77").spawn().expect("spawn imd");
    let addr = common::listening_address(&mut child).await;
    let server = Server { child, addr, db, dir: Some(dir), extra_args: Vec::new(), cluster: None, pg: None };

    let (_, ta) = server.register("alice").await;
    let (b, _) = server.register("bob").await;
    let (status, body) = login(&server, "alice", "secret-pw").await;
    let data = ok(status, &body, "login");
    let expires_in = data["expires_in"].as_u64().unwrap_or_else(|| panic!("expires_in: {body}"));
    assert!((60..=77).contains(&expires_in), "IMD_TOKEN_TTL=77 beats the file's 3600: {body}");
    let (mut wa, _) = server.connect(&ta).await;
    wa.send(text_frame(b, "too-big", &"b".repeat(2000))).await;
    assert_eq!(wa.recv_close().await, Some(1009), "IMD_CONFIG's max_frame_bytes = 1024 applies");
}
