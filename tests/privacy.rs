//! Who may see what (issue 9): private rooms need an invitation and show a new member history
//! only from their join on; a shop's agent must accept before they get customers, and only the
//! owner and accepted agents may list a shop's agents.

mod common;

use common::*;
use serde_json::json;

/// Creates a room with extra fields (`private`, `history`) and returns the reply's data.
async fn create_room_with(server: &Server, token: &str, fields: serde_json::Value) -> serde_json::Value {
    let (status, body) = server.post_json("/room/create", fields, Some(token)).await;
    ok(status, &body, "create room")
}

async fn join(server: &Server, token: &str, room: &str) -> (u16, serde_json::Value) {
    server.post_form("/room/join", &[("chat_id", room)], Some(token)).await
}

async fn invite(server: &Server, token: &str, room: &str, uid: u64) -> (u16, serde_json::Value) {
    server.post_json("/room/invite", json!({"chat_id": room, "uid": uid}), Some(token)).await
}

#[tokio::test]
async fn a_private_room_is_closed_to_everyone_not_invited() {
    let server = Server::start().await;
    let (_alice, alice_t) = server.register("alice").await;
    let (bob, bob_t) = server.register("bob").await;
    let (_carol, carol_t) = server.register("carol").await;

    // Form body with `private=1`, as curl sends it.
    let (status, body) =
        server.post_form("/room/create", &[("name", "secret"), ("private", "1")], Some(&alice_t)).await;
    let data = ok(status, &body, "create private room");
    assert_eq!(data["private"], true, "{data}");
    let room = data["chat_id"].as_str().expect("chat_id").to_string();

    let (status, body) = join(&server, &bob_t, &room).await;
    assert_error(status, &body, 403, "join without an invitation");
    let (status, body) = history(&server, &bob_t, &room).await;
    assert_error(status, &body, 403, "history of a private room by a stranger");
    let (status, body) = server.get(&format!("/room/members?chat_id={room}"), Some(&bob_t)).await;
    assert_error(status, &body, 403, "members of a private room by a stranger");
    let (mut ws, _) = server.connect(&bob_t).await;
    let reply = ws.request(json!({"action": "join_group", "chat_type": 2, "chat_id": room})).await;
    assert_frame_error(&reply, 403, None, "join_group without an invitation");

    // Only a member may invite; unknown rooms and users are 404.
    let (status, body) = invite(&server, &carol_t, &room, bob).await;
    assert_error(status, &body, 403, "invite by a non-member");
    let (status, body) = invite(&server, &alice_t, &room, 9999).await;
    assert_error(status, &body, 404, "invite of an unknown user");
    let (status, body) = invite(&server, &alice_t, "2_1_000000000000", bob).await;
    assert_error(status, &body, 404, "invite into an unknown room");

    let (status, body) = invite(&server, &alice_t, &room, bob).await;
    let data = ok(status, &body, "invite bob");
    assert_eq!(data["chat_id"], room.as_str(), "{data}");
    assert_eq!(data["uid"], json!(bob), "{data}");
    // Carol was not invited: still refused, bob's invitation is his alone.
    let (status, body) = join(&server, &carol_t, &room).await;
    assert_error(status, &body, 403, "join by someone else than the invited user");

    let reply = ws.request(json!({"action": "join_group", "chat_type": 2, "chat_id": room})).await;
    assert_eq!(reply["code"], 200, "invited bob joins over the socket: {reply}");
    let (status, body) = server.get(&format!("/room/members?chat_id={room}"), Some(&bob_t)).await;
    let data = ok(status, &body, "members as a member");
    assert!(uids_in(&data, "members").contains(&bob), "{data}");
    let (status, body) = history(&server, &bob_t, &room).await;
    ok(status, &body, "history as an invited member");

    // The invitation was used up by the join: after leaving, bob needs a new one.
    let reply = ws.request(json!({"action": "leave_group", "chat_type": 2, "chat_id": room})).await;
    assert_eq!(reply["code"], 200, "{reply}");
    let (status, body) = join(&server, &bob_t, &room).await;
    assert_error(status, &body, 403, "join again after leaving, without a new invitation");

    // A public room stays open to anyone, as before.
    let data = create_room_with(&server, &alice_t, json!({"name": "open"})).await;
    assert_eq!(data["private"], false, "{data}");
    let public = data["chat_id"].as_str().expect("chat_id").to_string();
    let (status, body) = join(&server, &carol_t, &public).await;
    ok(status, &body, "join a public room uninvited");
}

#[tokio::test]
async fn a_new_member_of_a_private_room_sees_history_from_their_join_on() {
    let server = Server::start().await;
    let (_alice, alice_t) = server.register("alice").await;
    let (bob, bob_t) = server.register("bob").await;
    let (carol, carol_t) = server.register("carol").await;
    let (mut alice_ws, _) = server.connect(&alice_t).await;

    let private = create_room_with(&server, &alice_t, json!({"private": true})).await;
    let private = private["chat_id"].as_str().expect("chat_id").to_string();
    let shared = create_room_with(&server, &alice_t, json!({"private": "true", "history": "shared"})).await;
    assert_eq!(shared["history"], "shared", "{shared}");
    let shared = shared["chat_id"].as_str().expect("chat_id").to_string();
    let public = create_room(&server, &alice_t).await;

    for room in [&private, &shared, &public] {
        for n in 1..=2 {
            let ack = alice_ws.request(group_frame(room, &format!("{room}-before-{n}"), "old news")).await;
            assert_ack(&ack, &format!("{room}-before-{n}"), room);
        }
    }
    for room in [&private, &shared] {
        ok_invite(&server, &alice_t, room, bob).await;
        ok_invite(&server, &alice_t, room, carol).await;
    }
    for room in [&private, &shared, &public] {
        let (status, body) = join(&server, &bob_t, room).await;
        ok(status, &body, "bob joins");
    }
    // The conversation list does not show the message before the join either.
    let (status, body) = server.get("/message/conversations", Some(&bob_t)).await;
    let data = ok(status, &body, "bob's conversations");
    let entry = |room: &str| {
        let list = data["conversations"].as_array().expect("conversations");
        list.iter().find(|c| c["chat_id"] == room).cloned().unwrap_or_else(|| panic!("{room} listed: {data}"))
    };
    assert!(entry(&private)["last"].is_null(), "{data}");
    assert_eq!(entry(&shared)["last"]["seq"], 2, "{data}");
    assert_eq!(entry(&public)["last"]["seq"], 2, "{data}");

    for room in [&private, &shared, &public] {
        let ack = alice_ws.request(group_frame(room, &format!("{room}-after"), "new news")).await;
        assert_ack(&ack, &format!("{room}-after"), room);
    }

    let (status, body) = history(&server, &bob_t, &private).await;
    let data = ok(status, &body, "private history");
    assert_eq!(seqs(&data["messages"]), vec![3], "only what came after the join: {data}");
    assert_eq!(data["has_more"], false, "{data}");
    // Paging back past the join finds nothing older.
    let (status, body) = server.get(&format!("/message/history?chat_id={private}&before=3"), Some(&bob_t)).await;
    let data = ok(status, &body, "private history before the join");
    assert_eq!(seqs(&data["messages"]), Vec::<u64>::new(), "{data}");
    assert_eq!(data["has_more"], false, "{data}");
    // The creator still sees everything.
    let (status, body) = history(&server, &alice_t, &private).await;
    assert_eq!(seqs(&ok(status, &body, "creator's history")["messages"]), vec![1, 2, 3]);

    for room in [&shared, &public] {
        let (status, body) = history(&server, &bob_t, room).await;
        let data = ok(status, &body, "shared or public history");
        assert_eq!(seqs(&data["messages"]), vec![1, 2, 3], "{room}: the whole history: {data}");
    }

    // A member who joins later, after a restart, still only sees from their join on.
    drop(alice_ws);
    let mut server = server;
    assert!(server.terminate().await.success());
    let server = server.restart().await;
    let (status, body) = join(&server, &carol_t, &private).await;
    ok(status, &body, "carol joins after a restart");
    let (status, body) = history(&server, &carol_t, &private).await;
    let data = ok(status, &body, "carol's history");
    assert_eq!(seqs(&data["messages"]), Vec::<u64>::new(), "{data}");
    let (status, body) = history(&server, &bob_t, &private).await;
    assert_eq!(seqs(&ok(status, &body, "bob's history after restart")["messages"]), vec![3]);
    let (status, body) = join(&server, &server.register("dave").await.1, &private).await;
    assert_error(status, &body, 403, "still private after a restart");
}

async fn ok_invite(server: &Server, token: &str, room: &str, uid: u64) {
    let (status, body) = invite(server, token, room, uid).await;
    ok(status, &body, "invite");
}

#[tokio::test]
async fn an_agent_gets_no_customers_until_they_accept() {
    let server = Server::start().await;
    let (_owner, owner_t) = server.register("owner").await;
    let (agent, agent_t) = server.register("agent").await;
    let (customer, customer_t) = server.register("customer").await;
    let (_stranger, stranger_t) = server.register("stranger").await;
    let shop = create_shop(&server, &owner_t, "tea").await;

    let (status, body) = add_agent(&server, &owner_t, shop, agent).await;
    let data = ok(status, &body, "add agent");
    assert_eq!(data["accepted"], false, "{data}");

    // A customer writes while the invited agent is offline, then while online: neither reaches them.
    let (mut customer_ws, _) = server.connect(&customer_t).await;
    let first = json!({"action": "service_chat", "chat_type": 3, "msg_type": "text", "msg_id": "c-1",
                       "shop_id": shop, "msg": "hello?"});
    let ack = customer_ws.request(first).await;
    assert_ack(&ack, "c-1", &service_chat_id(shop, customer));
    let (mut agent_ws, synced) = server.connect(&agent_t).await;
    assert!(synced.is_empty(), "an invited agent is not synced the shop's conversations: {synced:?}");
    let second = json!({"action": "service_chat", "chat_type": 3, "msg_type": "text", "msg_id": "c-2",
                        "shop_id": shop, "msg": "anyone?"});
    let ack = customer_ws.request(second).await;
    assert_ack(&ack, "c-2", &service_chat_id(shop, customer));
    assert!(ack["agent_uid"].is_null(), "not routed to an invited agent: {ack}");
    agent_ws.expect_nothing_pending().await;

    // The agent list is for the owner and accepted agents; the owner sees the pending invitation.
    let path = format!("/shop/agents?shop_id={shop}");
    let (status, body) = server.get(&path, Some(&agent_t)).await;
    assert_error(status, &body, 403, "agents listed by an invited agent");
    let (status, body) = server.get(&path, Some(&stranger_t)).await;
    assert_error(status, &body, 403, "agents listed by a stranger");
    let (status, body) = server.get(&path, Some(&owner_t)).await;
    let data = ok(status, &body, "agents listed by the owner");
    assert!(uids_in(&data, "agents").is_empty(), "{data}");
    assert_eq!(data["invited"], json!([agent]), "{data}");

    let (status, body) = server.post_json("/shop/agent/accept", json!({"shop_id": shop}), Some(&stranger_t)).await;
    assert_error(status, &body, 404, "accept without an invitation");
    let (status, body) = server.post_json("/shop/agent/accept", json!({"shop_id": 999}), Some(&agent_t)).await;
    assert_error(status, &body, 404, "accept for an unknown shop");
    let (status, body) =
        server.post_form("/shop/agent/accept", &[("shop_id", &shop.to_string())], Some(&agent_t)).await;
    let data = ok(status, &body, "accept");
    assert_eq!(data["shop_id"], json!(shop), "{data}");
    assert_eq!(data["accepted"], true, "{data}");

    let third = json!({"action": "service_chat", "chat_type": 3, "msg_type": "text", "msg_id": "c-3",
                       "shop_id": shop, "msg": "now?"});
    let ack = customer_ws.request(third).await;
    assert_eq!(ack["agent_uid"], json!(agent), "routed to the accepted agent: {ack}");
    let delivered = agent_ws.recv_action("service_chat").await;
    assert_service_message(
        &delivered,
        &service_chat_id(shop, customer),
        shop,
        agent,
        &ack,
        customer,
        "customer",
        "now?",
    );
    let (status, body) = server.get(&path, Some(&agent_t)).await;
    let data = ok(status, &body, "agents listed by an accepted agent");
    assert_eq!(uids_in(&data, "agents"), [agent].into(), "{data}");
    assert!(data.get("invited").is_none(), "only the owner sees pending invitations: {data}");

    // Acceptance survives a restart.
    drop((agent_ws, customer_ws));
    let mut server = server;
    assert!(server.terminate().await.success());
    let server = server.restart().await;
    let (status, body) = server.get(&path, Some(&agent_t)).await;
    let data = ok(status, &body, "agents after a restart");
    assert_eq!(uids_in(&data, "agents"), [agent].into(), "{data}");
}
