//! Cluster mode's directory read-through (issue 13): a user, room or shop made on one node is
//! usable at once on another, before (or without) the invalidation. Node B gets a subject
//! prefix of its own, so A's invalidations never reach it: only reading the shared database
//! through can make these pass. Skips loudly where PostgreSQL or nats-server is missing.

mod common;

use std::path::Path;

use common::nats::NatsServer;
use common::shared_pg::SharedPgDatabase;
use common::*;
use serde_json::json;

/// Two nodes on one database that do not hear each other's invalidations.
struct Deaf {
    a: Server,
    b: Server,
    // Dropped after the nodes (fields drop in order).
    _nats: NatsServer,
    _db: SharedPgDatabase,
}

async fn deaf_pair() -> Option<Deaf> {
    let db = SharedPgDatabase::create().await?;
    let nats = NatsServer::start().await?;
    let start = |node: &'static str| {
        let (url, db) = (nats.url(), db.url());
        async move {
            let prefix = format!("t{:08x}{node}", rand::random::<u32>());
            let args = ["--nats", url.as_str(), "--cluster-prefix", prefix.as_str(), "--node-id", node];
            Server::start_on_db(Path::new(&db), &args).await
        }
    };
    let a = start("a").await;
    let b = start("b").await;
    Some(Deaf { a, b, _nats: nats, _db: db })
}

#[tokio::test]
async fn a_user_registered_on_one_node_is_known_at_once_on_another() {
    let Some(pair) = deaf_pair().await else { return };
    let (a, b) = (&pair.a, &pair.b);
    let (alice, alice_token) = a.register("alice").await;
    let (bob, bob_token) = a.register("bob").await;
    // Login by name on B, and A's token on B's HTTP and WebSocket endpoints, with no wait.
    let alice_on_b = b.login("alice").await;
    let (status, body) = b.get("/user/me", Some(&bob_token)).await;
    assert_eq!(ok(status, &body, "me on B with A's token")["uid"], json!(bob));
    let (mut bob_ws, _) = b.connect(&bob_token).await;
    let (mut alice_ws, _) = b.connect(&alice_token).await;
    let ack = send_text(&mut alice_ws, bob, "m1", "hello").await;
    let f = bob_ws.recv_action("single_chat").await;
    assert_delivered_text(&f, &ack, alice, "alice", "hello");
    // A token B issued works there too, and the user's name is known for the other's frames.
    let (mut alice_b2, _) = b.connect_device(&alice_on_b, "b2").await;
    let ack = send_text(&mut bob_ws, alice, "m2", "back").await;
    let f = alice_b2.recv_action("single_chat").await;
    assert_delivered_text(&f, &ack, bob, "bob", "back");
}

#[tokio::test]
async fn a_room_made_on_one_node_is_joined_and_used_at_once_on_another() {
    let Some(pair) = deaf_pair().await else { return };
    let (a, b) = (&pair.a, &pair.b);
    let (_, owner_token) = a.register("owner").await;
    let (_, bob_token) = a.register("bob").await;
    let (carol, carol_token) = a.register("carol").await;
    let room = create_room(a, &owner_token).await;
    let (mut bob_ws, _) = b.connect(&bob_token).await;
    let joined = bob_ws.request(json!({"action": "join_group", "chat_id": room})).await;
    assert_eq!(joined["code"], 200, "join on B of a room made on A: {joined}");
    let ack = bob_ws.request(group_frame(&room, "g1", "hi")).await;
    assert_ack(&ack, "g1", &room);
    let (status, body) = b.get(&format!("/room/members?chat_id={room}"), Some(&owner_token)).await;
    assert_eq!(uids_in(&ok(status, &body, "members on B"), "members").len(), 2, "{body}");
    // B knows the room now; carol joins it on A, then writes at once on B.
    let (status, body) = a.post_form("/room/join", &[("chat_id", &room)], Some(&carol_token)).await;
    ok(status, &body, "join on A");
    let (mut carol_ws, _) = b.connect(&carol_token).await;
    let ack = carol_ws.request(group_frame(&room, "g2", "me too")).await;
    assert_ack(&ack, "g2", &room);
    let f = bob_ws.recv_action("group_chat").await;
    assert_delivered_text(&f, &ack, carol, "carol", "me too");
}

#[tokio::test]
async fn an_invitee_writes_at_once_on_another_node() {
    let Some(pair) = deaf_pair().await else { return };
    let (a, b) = (&pair.a, &pair.b);
    let (_, owner_token) = a.register("owner").await;
    let (guest, guest_token) = a.register("guest").await;
    let (status, body) = a.post_json("/room/create", json!({"private": true}), Some(&owner_token)).await;
    let room = ok(status, &body, "private room")["chat_id"].as_str().expect("chat_id").to_string();
    let (status, body) =
        a.post_form("/room/invite", &[("chat_id", &room), ("uid", &guest.to_string())], Some(&owner_token)).await;
    ok(status, &body, "invite on A");
    // The invitation is all B could know of: the guest joins on B, and writes there.
    let (mut guest_ws, _) = b.connect(&guest_token).await;
    let joined = guest_ws.request(json!({"action": "join_group", "chat_id": room})).await;
    assert_eq!(joined["code"], 200, "the invitee joins on B: {joined}");
    let ack = guest_ws.request(group_frame(&room, "g1", "thanks")).await;
    assert_ack(&ack, "g1", &room);
}

#[tokio::test]
async fn a_shop_and_its_agent_made_on_one_node_serve_a_customer_at_once_on_another() {
    let Some(pair) = deaf_pair().await else { return };
    let (a, b) = (&pair.a, &pair.b);
    let setup = shop_with_agents(a, "shop", ["agent"]).await;
    let (agent, agent_token) = &setup.agents[0];
    let (customer, customer_token) = a.register("customer").await;
    let (mut agent_ws, _) = b.connect(agent_token).await;
    let (mut customer_ws, _) = b.connect(&customer_token).await;
    let chat = service_chat_id(setup.shop, customer);
    let frame = json!({"action": "service_chat", "chat_type": 3, "msg_type": "text", "msg_id": "s1",
                       "shop_id": setup.shop, "msg": "help"});
    let ack = customer_ws.request(frame).await;
    assert_ack(&ack, "s1", &chat);
    let f = agent_ws.recv_action("service_chat").await;
    assert_service_message(&f, &chat, setup.shop, *agent, &ack, customer, "customer", "help");
    // The agent answers by chat_id on B.
    let frame = json!({"action": "service_chat", "chat_type": 3, "msg_type": "text", "msg_id": "s2",
                       "chat_id": chat, "msg": "hello"});
    let ack = agent_ws.request(frame).await;
    assert_ack(&ack, "s2", &chat);
    assert_eq!(customer_ws.recv_action("service_chat").await["seq"], ack["seq"]);
}

#[tokio::test]
async fn an_agent_accepted_on_one_node_answers_at_once_on_another_that_knew_the_shop() {
    let Some(pair) = deaf_pair().await else { return };
    let (a, b) = (&pair.a, &pair.b);
    let setup = shop_with_agents(a, "shop", ["first"]).await;
    let (late, late_token) = a.register("late").await;
    let (customer, customer_token) = a.register("customer").await;
    // B learns of the shop (the customer's first message), then a second agent joins on A.
    let (mut customer_ws, _) = b.connect(&customer_token).await;
    let chat = service_chat_id(setup.shop, customer);
    let first = json!({"action": "service_chat", "chat_type": 3, "msg_type": "text", "msg_id": "s1",
                       "shop_id": setup.shop, "msg": "anyone?"});
    assert_ack(&customer_ws.request(first).await, "s1", &chat);
    let (status, body) = add_agent(a, &setup.owner.1, setup.shop, late).await;
    ok(status, &body, "add agent on A");
    accept_agent(a, &late_token, setup.shop).await;
    let (mut late_ws, _) = b.connect(&late_token).await;
    let reply = json!({"action": "service_chat", "chat_type": 3, "msg_type": "text", "msg_id": "s2",
                       "chat_id": chat, "msg": "here"});
    let ack = late_ws.request(reply).await;
    assert_ack(&ack, "s2", &chat);
    assert_eq!(customer_ws.recv_action("service_chat").await["seq"], ack["seq"]);
}
