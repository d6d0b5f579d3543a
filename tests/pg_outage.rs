//! PostgreSQL stopped under a running imd and started again (issue 13): while it is away,
//! sends are answered with error 503 (never an ack) and `/health` says so; once it is back,
//! imd serves again by itself, without a restart, and what was acked is all there. Runs on a
//! PostgreSQL of its own (`PgInstance`), since the shared one is never stopped.

mod common;

use std::path::Path;
use std::time::Instant;

use serde_json::json;

use common::pg_instance::PgInstance;
use common::{Server, WAIT, assert_ack, single_chat_id, text_frame};

#[tokio::test]
async fn a_stopped_postgresql_is_answered_503_and_served_again_once_back() {
    let Some(mut pg) = PgInstance::start().await else { return };
    pg.create_database("imd").await;
    let server = Server::start_on_db(Path::new(&pg.url("imd")), &[]).await;
    let (alice, alice_token) = server.register("alice").await;
    let (bob, _) = server.register("bob").await;
    let chat = single_chat_id(alice, bob);
    let (mut ws, _) = server.connect(&alice_token).await;
    let ack = ws.request(text_frame(bob, "before", "one")).await;
    assert_ack(&ack, "before", &chat);

    pg.stop().await;
    let refused = ws.request(text_frame(bob, "away", "two")).await;
    assert_eq!(refused["action"], "error", "never an ack while PostgreSQL is away: {refused}");
    assert_eq!(refused["code"], 503, "{refused}");
    assert_eq!(refused["msg_id"], "away", "{refused}");
    assert!(refused["message"].as_str().is_some_and(|m| m.starts_with("storage unavailable: ")), "{refused}");
    let (status, health) = server.get("/health", None).await;
    assert_eq!(status, 503, "{health}");
    assert_eq!(health["data"]["status"], "degraded", "{health}");
    let (status, body) =
        server.post_json("/user/register", json!({"username": "carol", "password": "secret-pw"}), None).await;
    assert_eq!(status, 503, "{body}");

    pg.start_again().await;
    // Nothing is sent meanwhile: the idle writer's probe finds the database back.
    let deadline = Instant::now() + WAIT;
    loop {
        let (status, health) = server.get("/health", None).await;
        if status == 200 {
            assert_eq!(health["data"]["status"], "ok", "{health}");
            break;
        }
        assert!(Instant::now() < deadline, "/health still degraded after PostgreSQL came back: {health}");
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let ack = ws.request(text_frame(bob, "after", "three")).await;
    assert_ack(&ack, "after", &chat);
    assert_eq!(ack["seq"], 2, "the refused message took no seq: {ack}");
    server.register("carol").await;
    let (status, body) = common::history(&server, &alice_token, &chat).await;
    let data = common::ok(status, &body, "history");
    let ids: Vec<&str> =
        data["messages"].as_array().expect("messages").iter().filter_map(|m| m["msg_id"].as_str()).collect();
    assert_eq!(ids, ["before", "after"], "{data}");
}
