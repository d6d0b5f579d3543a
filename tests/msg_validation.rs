//! What is acked comes back unchanged: a `msg` that could not be returned as sent (nested too
//! deep, invalid Unicode escapes) is refused with 400 before the ack, and every accepted one is
//! returned equal by live delivery, sync and history. Also the old service's field types:
//! `"chat_id":0` / `""` and numeric `msg_id`s.

mod common;

use common::*;
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;

/// A `single_chat` frame to `to` whose `msg` is the raw JSON text `msg`, sent as is.
fn raw_single(to: u64, msg_id: &str, msg_type: &str, msg: &str) -> String {
    format!(
        r#"{{"action":"single_chat","chat_type":1,"msg_type":"{msg_type}","msg_id":"{msg_id}","to_uid":{to},"msg":{msg}}}"#
    )
}

/// Sends a raw text frame and returns the next frame (its reply).
async fn send_raw(ws: &mut Ws, text: String) -> Value {
    ws.send_raw(Message::text(text)).await;
    ws.recv().await
}

/// `depth` nested containers: an object holding `depth - 1` nested arrays.
fn nested(depth: usize) -> String {
    format!(r#"{{"x":{}1{}}}"#, "[".repeat(depth - 1), "]".repeat(depth - 1))
}

#[tokio::test]
async fn deep_nesting_and_lone_surrogates_are_refused_and_not_stored() {
    let server = Server::start().await;
    let (alice, alice_t) = server.register("alice").await;
    let (bob, bob_t) = server.register("bob").await;
    let chat = single_chat_id(alice, bob);
    let (mut a, _) = server.connect(&alice_t).await;
    let (mut b, _) = server.connect(&bob_t).await;

    let refused = [
        ("deep-9000", "card", nested(9000)),
        ("deep-33", "card", nested(33)),
        ("lone-low", "text", r#""x\udfff""#.to_string()),
        ("lone-high", "text", r#""\ud800""#.to_string()),
        ("high-then-letter", "text", r#""\ud83dA""#.to_string()),
        ("lone-in-object", "card", r#"{"t":"a\udc00b"}"#.to_string()),
        ("lone-in-key", "card", r#"{"\udfff":1}"#.to_string()),
        ("huge-number", "card", r#"{"n":1e400}"#.to_string()),
    ];
    for (msg_id, msg_type, msg) in &refused {
        let r = send_raw(&mut a, raw_single(bob, msg_id, msg_type, msg)).await;
        assert_frame_error(&r, 400, Some(msg_id), msg_id);
    }

    // At the limit, and a proper surrogate pair: accepted.
    let r = send_raw(&mut a, raw_single(bob, "deep-32", "card", &nested(32))).await;
    assert_ack(&r, "deep-32", &chat);
    let r = send_raw(&mut a, raw_single(bob, "pair", "text", r#""ok \ud83d\ude00""#)).await;
    assert_ack(&r, "pair", &chat);

    let f = b.recv_action("single_chat").await;
    assert_eq!(f["msg_id"], "deep-32", "the refused ones were not delivered: {f}");
    let f = b.recv_action("single_chat").await;
    assert_eq!(f["msg"], "ok 😀", "{f}");
    b.expect_nothing_pending().await;

    let (status, body) = history(&server, &alice_t, &chat).await;
    let data = ok(status, &body, "history");
    let messages = data["messages"].as_array().expect("messages");
    let ids: Vec<&Value> = messages.iter().map(|m| &m["msg_id"]).collect();
    assert_eq!(ids, ["deep-32", "pair"], "only the accepted messages are stored: {body}");
    assert_eq!(messages[0]["msg"], serde_json::from_str::<Value>(&nested(32)).unwrap(), "{body}");

    // The broadcast's `data` cannot carry a lone surrogate either.
    let body = r#"{"data":"x\udfff"}"#.to_string();
    let (status, text) =
        http_raw(server.addr, "POST", "/message/sendPublicMessage", Some(("application/json", body)), None).await;
    assert_eq!(status, 400, "{text}");
}

#[tokio::test]
async fn accepted_messages_come_back_equal_via_live_delivery_sync_and_history() {
    let server = Server::start().await;
    let (alice, alice_t) = server.register("alice").await;
    let (bob, bob_t) = server.register("bob").await;
    let chat = single_chat_id(alice, bob);
    let (mut a, _) = server.connect(&alice_t).await;
    let (mut b, _) = server.connect(&bob_t).await;

    let sent = [
        ("text", r#""héllo 😀 \"quoted\" \\ back\/slash\nline\ttab \u0000 \u2028 \u00e9 \ud83d\ude00 </script>""#),
        (
            "card",
            r#"{"title":"ẞ 😀","n":[1,-2,3.5,1e2,12345678901234567890,0.1,-0],"deep":{"a":{"b":[true,false,null,{},[]]}},"empty":"","\u00e9\n":"escaped key","dup":1,"dup":2}"#,
        ),
        ("image", r#"{"url":"https://example.com/a.png?x=1&y=2","w":640,"h":480}"#),
    ];
    let mut expected = Vec::new();
    for (i, (msg_type, msg)) in sent.iter().enumerate() {
        let id = format!("m-{i}");
        let r = send_raw(&mut a, raw_single(bob, &id, msg_type, msg)).await;
        assert_ack(&r, &id, &chat);
        expected.push(serde_json::from_str::<Value>(msg).expect("the test's msg is JSON"));
    }

    let check = |how: &str, got: &[Value]| {
        let msgs: Vec<&Value> = got.iter().map(|m| &m["msg"]).collect();
        let want: Vec<&Value> = expected.iter().collect();
        assert_eq!(msgs, want, "{how} returns every msg as sent");
    };
    let mut live = Vec::new();
    for _ in &sent {
        live.push(b.recv_action("single_chat").await);
    }
    check("live delivery", &live);

    let (_b2, synced) = server.connect_device(&bob_t, "phone").await;
    check("sync", &synced);

    let (status, body) = history(&server, &bob_t, &chat).await;
    let data = ok(status, &body, "history");
    check("history", data["messages"].as_array().expect("messages"));
    let (status, body) = server.get("/message/conversations", Some(&bob_t)).await;
    let data = ok(status, &body, "conversations");
    let list = data["conversations"].as_array().expect("conversations");
    let conv = list.iter().find(|c| c["chat_id"] == json!(chat)).expect("the conversation is listed");
    assert_eq!(conv["last"]["msg"], expected[2], "{body}");
}

#[tokio::test]
async fn old_service_chat_id_zero_and_numeric_msg_ids() {
    let server = Server::start().await;
    let ShopSetup { shop, agents: [(_g1, g1_t)], .. } = shop_with_agents(&server, "Shop", ["agent1"]).await;
    let (cust, cust_t) = server.register("customer").await;
    let (_alice, alice_t) = server.register("alice").await;
    let room = create_room(&server, &alice_t).await;
    let (mut g, _) = server.connect(&g1_t).await;
    let (mut c, _) = server.connect(&cust_t).await;
    let chat = service_chat_id(shop, cust);

    // What the old service's clients send: "chat_id":0 and a numeric msg_id.
    let frame = json!({"action": "service_user_chat", "chat_type": 3, "msg_type": "text", "msg_id": 12345,
                       "chat_id": 0, "shop_id": shop, "msg": "hello"});
    let ack = reply(&mut c, frame.clone()).await;
    assert_ack(&ack, "12345", &chat);
    let f = g.recv_action("service_chat").await;
    assert_eq!(f["msg_id"], "12345", "{f}");
    // The numeric msg_id deduplicates like its string.
    let again = reply(&mut c, frame).await;
    assert_eq!(again["duplicate"], true, "{again}");
    assert_eq!(again["id"], ack["id"], "{again}");
    let dup = reply(
        &mut c,
        json!({"action": "service_chat", "chat_type": 3, "msg_type": "text", "msg_id": "12345", "shop_id": shop,
               "msg": "hello"}),
    )
    .await;
    assert_eq!(dup["duplicate"], true, "\"12345\" and 12345 are one msg_id: {dup}");

    let ack = reply(
        &mut c,
        json!({"action": "service_chat", "chat_type": 3, "msg_type": "text", "msg_id": "s-2", "chat_id": "",
               "shop_id": shop, "msg": "again"}),
    )
    .await;
    assert_ack(&ack, "s-2", &chat);

    // Other numeric chat_ids are their decimal string, refused as unknown as usual.
    let r = reply(
        &mut c,
        json!({"action": "service_user_chat", "chat_type": 3, "msg_type": "text", "msg_id": "s-3", "chat_id": 77,
               "msg": "who?"}),
    )
    .await;
    assert_frame_error(&r, 403, Some("s-3"), "a service chat_id that is not the sender's");
    let (mut a, _) = server.connect(&alice_t).await;
    let r =
        reply(&mut a, json!({"action": "group_chat", "chat_type": 2, "msg_id": 7, "chat_id": 77, "msg": "x"})).await;
    assert_frame_error(&r, 404, Some("7"), "numeric room id");
    assert!(r["message"].as_str().is_some_and(|m| m.contains("77")), "{r}");
    let r = reply(&mut a, json!({"action": "read", "chat_id": 12, "seq": 1})).await;
    assert_frame_error(&r, 403, None, "read of the conversation \"12\"");
    let r =
        reply(&mut a, json!({"action": "group_chat", "chat_type": 2, "msg_id": "g-0", "chat_id": 0, "msg": "x"})).await;
    assert_frame_error(&r, 400, Some("g-0"), "chat_id 0 is no chat_id");
    let ack =
        reply(&mut a, json!({"action": "group_chat", "chat_type": 2, "msg_id": 8, "chat_id": room, "msg": "x"})).await;
    assert_ack(&ack, "8", &room);

    // Other types stay refused.
    for bad in [json!(1.5), json!(true), json!([1]), json!({"a": 1})] {
        let r =
            reply(&mut a, json!({"action": "group_chat", "chat_type": 2, "msg_id": bad, "chat_id": room, "msg": "x"}))
                .await;
        assert_frame_error(&r, 400, None, &format!("msg_id {bad}"));
        let r =
            reply(&mut a, json!({"action": "group_chat", "chat_type": 2, "msg_id": "c", "chat_id": bad, "msg": "x"}))
                .await;
        assert_frame_error(&r, 400, Some("c"), &format!("chat_id {bad}"));
    }
}
