//! The old PHP/Swoole service's action names (`exit_group`, `service_user_chat`,
//! `service_review_chat`) and an end-to-end replay of that service's README flow with form
//! bodies (PROTOCOL.md 3.1).

mod common;

use common::*;
use serde_json::json;
use util::*;

#[tokio::test]
async fn exit_group_works_as_leave_group() {
    let server = Server::start().await;
    let (alice, alice_t) = server.register("alice").await;
    let (_bob, bob_t) = server.register("bob").await;
    let room = create_room(&server, &alice_t).await;
    let (mut a, _) = server.connect(&alice_t).await;
    let (mut b, _) = server.connect(&bob_t).await;

    let r = reply(&mut b, json!({"action": "join_group", "chat_type": 2, "chat_id": room})).await;
    assert_eq!(r["code"], 200, "{r}");
    let ack = reply(&mut a, group_frame(&room, "a-1", "welcome bob")).await;
    assert_eq!(ack["code"], 200, "{ack}");
    let f = b.recv_action("group_chat").await;
    assert_eq!(f["id"], ack["id"], "{f}");

    let r = reply(&mut b, json!({"action": "exit_group", "chat_type": 2, "chat_id": room})).await;
    assert!(r["action"] == "leave_group" || r["action"] == "exit_group", "reply to exit_group: {r}");
    assert_eq!(r["code"], 200, "{r}");
    assert_eq!(r["chat_id"], json!(room), "{r}");

    // Bob is out: not listed, gets nothing, may not post.
    let (status, body) = server.get(&format!("/room/members?chat_id={room}"), Some(&alice_t)).await;
    let data = ok(status, &body, "members after exit_group");
    let uids: Vec<u64> = data["members"].as_array().unwrap().iter().map(|m| m["uid"].as_u64().unwrap()).collect();
    assert_eq!(uids, vec![alice], "bob left by exit_group: {body}");
    let ack = reply(&mut a, group_frame(&room, "a-2", "bye bob")).await;
    assert_eq!(ack["code"], 200, "{ack}");
    b.expect_nothing_pending().await;
    let err = reply(&mut b, group_frame(&room, "b-1", "wait")).await;
    assert_eq!(err["action"], "error", "{err}");
    assert_eq!(err["code"], 403, "{err}");
}

#[tokio::test]
async fn service_user_chat_works_as_a_customer_service_chat() {
    let server = Server::start().await;
    let ServiceScene { shop, agent: g1, agent_ws: mut g, customer: cust, customer_ws: mut c, chat_id } =
        ServiceScene::new(&server).await;

    let ack = reply(
        &mut c,
        json!({"action": "service_user_chat", "chat_type": 3, "msg_type": "text", "msg_id": "u-1",
               "shop_id": shop, "msg": "hello, shop service."}),
    )
    .await;
    assert_eq!(ack["action"], "ack", "{ack}");
    assert_eq!(ack["code"], 200, "{ack}");
    assert_eq!(ack["chat_id"], json!(chat_id), "{ack}");
    assert_eq!(ack["agent_uid"], json!(g1), "{ack}");
    let f = g.recv_action("service_chat").await;
    assert_service_message(&f, &chat_id, shop, g1, &ack, cust, "customer", "hello, shop service.");
    assert_eq!(f["agent_uid"], json!(g1), "{f}");

    // shop_id as a string of digits, without chat_type.
    let ack = reply(
        &mut c,
        json!({"action": "service_user_chat", "msg_type": "text", "msg_id": "u-2",
               "shop_id": shop.to_string(), "msg": "are you there?"}),
    )
    .await;
    assert_eq!(ack["code"], 200, "{ack}");
    assert_eq!(ack["chat_id"], json!(chat_id), "{ack}");
    assert_eq!(ack["agent_uid"], json!(g1), "{ack}");
    let f = g.recv_action("service_chat").await;
    assert_service_message(&f, &chat_id, shop, g1, &ack, cust, "customer", "are you there?");
    c.expect_nothing_pending().await;
    g.expect_nothing_pending().await;
}

#[tokio::test]
async fn service_review_chat_names_the_customer_with_to_uid_and_shop_id() {
    let server = Server::start().await;
    let ServiceScene { shop, agent: g1, agent_ws: mut g, customer: cust, customer_ws: mut c, chat_id } =
        ServiceScene::new(&server).await;
    let (other, other_t) = server.register("other").await;

    let ack = reply(
        &mut c,
        json!({"action": "service_user_chat", "chat_type": 3, "msg_type": "text", "msg_id": "u-1",
               "shop_id": shop, "msg": "my order is late"}),
    )
    .await;
    assert_eq!(ack["code"], 200, "{ack}");
    g.recv_action("service_chat").await;

    // Numbers.
    let ack = reply(
        &mut g,
        json!({"action": "service_review_chat", "chat_type": 3, "msg_type": "text", "msg_id": "r-1",
               "to_uid": cust, "shop_id": shop, "msg": "let me check"}),
    )
    .await;
    assert_eq!(ack["action"], "ack", "{ack}");
    assert_eq!(ack["code"], 200, "{ack}");
    assert_eq!(ack["chat_id"], json!(chat_id), "{ack}");
    let f = c.recv_action("service_chat").await;
    assert_service_message(&f, &chat_id, shop, g1, &ack, g1, "agent1", "let me check");

    // Strings of digits.
    let ack = reply(
        &mut g,
        json!({"action": "service_review_chat", "chat_type": 3, "msg_type": "text", "msg_id": "r-2",
               "to_uid": cust.to_string(), "shop_id": shop.to_string(), "msg": "it ships today"}),
    )
    .await;
    assert_eq!(ack["code"], 200, "{ack}");
    assert_eq!(ack["chat_id"], json!(chat_id), "{ack}");
    let f = c.recv_action("service_chat").await;
    assert_service_message(&f, &chat_id, shop, g1, &ack, g1, "agent1", "it ships today");

    // With the chat_id, as the new name does.
    let ack = reply(
        &mut g,
        json!({"action": "service_review_chat", "chat_type": 3, "msg_type": "text", "msg_id": "r-3",
               "chat_id": chat_id, "msg": "anything else?"}),
    )
    .await;
    assert_eq!(ack["code"], 200, "{ack}");
    assert_eq!(ack["chat_id"], json!(chat_id), "{ack}");
    let f = c.recv_action("service_chat").await;
    assert_service_message(&f, &chat_id, shop, g1, &ack, g1, "agent1", "anything else?");
    c.expect_nothing_pending().await;
    g.expect_nothing_pending().await;

    // Somebody who is not an agent of the shop cannot use it to reach the customer: the frame
    // is refused, or (being a `service_chat` with a `shop_id` from a non-agent) it becomes that
    // user's own customer message to the shop. Either way the customer gets nothing.
    let (mut o, _) = server.connect(&other_t).await;
    let r = reply(
        &mut o,
        json!({"action": "service_review_chat", "chat_type": 3, "msg_type": "text", "msg_id": "x-1",
               "to_uid": cust, "shop_id": shop, "msg": "I am staff, trust me"}),
    )
    .await;
    if r["action"] == "error" {
        assert_eq!(r["code"], 403, "{r}");
    } else {
        assert_eq!(r["code"], 200, "{r}");
        assert_eq!(
            r["chat_id"],
            json!(format!("3_{shop}_{other}")),
            "a non-agent's service_review_chat landed in a conversation not its own: {r}"
        );
    }
    c.expect_nothing_pending().await;
}

/// The old service ordered a service chat_id `3_<customer>_<shop>` (imd: `3_<shop>_<customer>`).
/// An agent's client that still holds one, and names the customer with `shop_id` and `to_uid`
/// as the old README does, must reach that customer, not become a message of its own to the shop.
#[tokio::test]
async fn service_review_chat_with_an_old_order_chat_id_goes_by_shop_id_and_to_uid() {
    let server = Server::start().await;
    let ServiceScene { shop, agent: g1, agent_ws: mut g, customer: cust, customer_ws: mut c, chat_id } =
        ServiceScene::new(&server).await;
    let old_order = format!("3_{cust}_{shop}");
    assert_ne!(old_order, chat_id, "the test needs a shop id and a uid that differ");

    let ack = reply(
        &mut g,
        json!({"action": "service_review_chat", "chat_type": 3, "msg_type": "text", "chat_id": old_order,
               "shop_id": shop, "to_uid": cust, "msg": "ok,i get you message."}),
    )
    .await;
    assert_eq!(ack["action"], "ack", "{ack}");
    assert_eq!(ack["code"], 200, "{ack}");
    assert_eq!(ack["chat_id"], json!(chat_id), "the reply went to another conversation: {ack}");
    assert_eq!(ack["agent_uid"], json!(g1), "{ack}");
    let f = c.recv_action("service_chat").await;
    assert_service_message(&f, &chat_id, shop, g1, &ack, g1, "agent1", "ok,i get you message.");
    c.expect_nothing_pending().await;
    g.expect_nothing_pending().await;
}

/// The old README sends `"msg_id":""` in every frame: an empty msg_id names no message, so it
/// must not make the next message a duplicate (which would silently drop every message an old
/// client sends after its first).
#[tokio::test]
async fn empty_msg_id_of_old_clients_is_not_a_dedup_key() {
    let server = Server::start().await;
    let (alice, alice_t) = server.register("alice").await;
    let (bob, bob_t) = server.register("bob").await;
    let (mut a, _) = server.connect(&alice_t).await;
    let (mut b, _) = server.connect(&bob_t).await;
    let pair = format!("1_{}_{}", alice.min(bob), alice.max(bob));
    let mut ids = Vec::new();
    for text in ["hello", "hello again"] {
        let ack = reply(
            &mut a,
            json!({"action": "single_chat", "chat_type": 1, "msg_type": "text", "msg_id": "",
                   "chat_id": "", "to_uid": bob, "msg": text}),
        )
        .await;
        assert_eq!(ack["action"], "ack", "{ack}");
        assert_eq!(ack["code"], 200, "{ack}");
        assert_eq!(ack["chat_id"], json!(pair), "{ack}");
        assert_ne!(ack["duplicate"], json!(true), "an empty msg_id is no id: {text:?} was dropped: {ack}");
        let f = b.recv_action("single_chat").await;
        assert_eq!(f["id"], ack["id"], "{f}");
        assert_eq!(f["msg"], text, "{f}");
        ids.push(ack["id"].clone());
    }
    assert_ne!(ids[0], ids[1], "two messages, two ids");
    b.expect_nothing_pending().await;
}

/// The flow of the old service's README (register and log in with form bodies, connect with
/// `?access_token=`, a 1:1 text message in its frame shape, then rooms, customer service and a
/// broadcast posted as `data=...`), run against imd.
#[tokio::test]
async fn swoole_readme_flow_with_form_bodies() {
    let admin = "readme-admin-secret-0123456789abcdef";
    let server = Server::start_with(&["--admin-token", admin]).await;

    // 2.1 register (curl -X POST -d "username=a&password=123456" .../user/register)
    let mut uids = Vec::new();
    for name in ["alice", "bob", "carol", "dave"] {
        let (status, body) =
            server.post_form("/user/register", &[("username", name), ("password", "123456")], None).await;
        let data = ok(status, &body, "register (form)");
        assert_eq!(data["username"], name, "{body}");
        assert!(data["access_token"].as_str().is_some_and(|t| !t.is_empty()), "{body}");
        assert!(data["expires_in"].as_u64().is_some(), "{body}");
        uids.push(data["uid"].as_u64().unwrap_or_else(|| panic!("uid: {body}")));
    }
    let (alice, bob, carol, dave) = (uids[0], uids[1], uids[2], uids[3]);
    let (status, body) =
        server.post_form("/user/register", &[("username", "alice"), ("password", "123456")], None).await;
    assert_eq!(status, 409, "name taken: {body}");

    // 2.2 log in for an access_token (form)
    let mut tokens = Vec::new();
    for (name, uid) in [("alice", alice), ("bob", bob), ("carol", carol), ("dave", dave)] {
        let (status, body) = server.post_form("/user/login", &[("username", name), ("password", "123456")], None).await;
        let data = ok(status, &body, "login (form)");
        assert_eq!(data["token_type"], "Bearer", "{body}");
        assert_eq!(data["uid"], json!(uid), "{body}");
        assert_eq!(data["username"], name, "{body}");
        assert!(data["expires_in"].as_u64().is_some(), "{body}");
        tokens.push(data["access_token"].as_str().unwrap_or_else(|| panic!("token: {body}")).to_string());
    }
    let (alice_t, bob_t, carol_t, dave_t) = (&tokens[0], &tokens[1], &tokens[2], &tokens[3]);
    let (status, body) = server.post_form("/user/login", &[("username", "alice"), ("password", "1234567")], None).await;
    assert_eq!(status, 401, "wrong password: {body}");

    // 3. ws://HOST:PORT?access_token=...
    let mut a = open(&server, alice_t, alice, "alice").await;
    let mut b = open(&server, bob_t, bob, "bob").await;

    // 4. the README's frame (empty msg_id and chat_id; see also
    // empty_msg_id_of_old_clients_is_not_a_dedup_key).
    let readme_frame = json!({"action": "single_chat", "chat_type": 1, "msg_type": "text", "msg_id": "",
                              "chat_id": "", "to_uid": bob, "msg": "hello"});
    let pair = format!("1_{}_{}", alice.min(bob), alice.max(bob));
    let ack = reply(&mut a, readme_frame).await;
    assert_eq!(ack["action"], "ack", "{ack}");
    assert_eq!(ack["code"], 200, "{ack}");
    assert_eq!(ack["chat_id"], json!(pair), "{ack}");
    let f = b.recv_action("single_chat").await;
    assert_eq!(f["chat_type"], 1, "{f}");
    assert_eq!(f["chat_id"], json!(pair), "{f}");
    assert_eq!(f["id"], ack["id"], "{f}");
    assert_eq!(f["seq"], ack["seq"], "{f}");
    assert_eq!(f["from_uid"], json!(alice), "{f}");
    assert_eq!(f["uid"], json!(alice), "uid repeats from_uid: {f}");
    assert_eq!(f["from_name"], "alice", "{f}");
    assert_eq!(f["to_uid"], json!(bob), "{f}");
    assert_eq!(f["msg_type"], "text", "{f}");
    assert_eq!(f["msg"], "hello", "{f}");
    b.expect_nothing_pending().await;

    // Rooms: create and join with form bodies, then a group message.
    let (status, body) = server.post_form("/room/create", &[("name", "readme room")], Some(alice_t)).await;
    let data = ok(status, &body, "room/create (form)");
    let room = data["chat_id"].as_str().unwrap_or_else(|| panic!("chat_id: {body}")).to_string();
    assert!(room.starts_with(&format!("2_{alice}_")), "{room}");
    let (status, body) = server.post_form("/room/join", &[("chat_id", &room)], Some(bob_t)).await;
    let data = ok(status, &body, "room/join (form)");
    assert_eq!(data["chat_id"], json!(room), "{body}");
    let ack = reply(
        &mut a,
        json!({"action": "group_chat", "chat_type": 2, "msg_type": "text", "msg_id": "c-2",
               "chat_id": room, "msg": "hello, everyone."}),
    )
    .await;
    assert_eq!(ack["code"], 200, "{ack}");
    let f = b.recv_action("group_chat").await;
    assert_eq!(f["id"], ack["id"], "{f}");
    assert_eq!(f["chat_type"], 2, "{f}");
    assert_eq!(f["chat_id"], json!(room), "{f}");
    assert_eq!(f["msg"], "hello, everyone.", "{f}");

    // Customer service: dave's shop, carol its agent, bob a customer.
    let (status, body) = server.post_form("/shop/create", &[("name", "readme shop")], Some(dave_t)).await;
    let data = ok(status, &body, "shop/create (form)");
    let shop = data["shop_id"].as_u64().unwrap_or_else(|| panic!("shop_id: {body}"));
    let (status, body) = server
        .post_form("/shop/agent/add", &[("shop_id", &shop.to_string()), ("uid", &carol.to_string())], Some(dave_t))
        .await;
    ok(status, &body, "shop/agent/add (form)");
    accept_agent(&server, carol_t, shop).await;
    let mut c = open(&server, carol_t, carol, "carol").await;
    let service = format!("3_{shop}_{bob}");
    let ack = reply(
        &mut b,
        json!({"action": "service_chat", "chat_type": 3, "msg_type": "text", "msg_id": "c-3",
               "shop_id": shop, "msg": "hello, shop service."}),
    )
    .await;
    assert_eq!(ack["code"], 200, "{ack}");
    assert_eq!(ack["chat_id"], json!(service), "{ack}");
    assert_eq!(ack["agent_uid"], json!(carol), "{ack}");
    let f = c.recv_action("service_chat").await;
    assert_service_message(&f, &service, shop, carol, &ack, bob, "bob", "hello, shop service.");
    let ack = reply(
        &mut c,
        json!({"action": "service_chat", "chat_type": 3, "msg_type": "text", "msg_id": "c-4",
               "chat_id": service, "msg": "how can I help?"}),
    )
    .await;
    assert_eq!(ack["code"], 200, "{ack}");
    let f = b.recv_action("service_chat").await;
    assert_service_message(&f, &service, shop, carol, &ack, carol, "carol", "how can I help?");

    // 5. broadcast (curl -X POST -d "data=..." .../message/sendPublicMessage), now with the
    // admin credential (in the Authorization header: never in the query string).
    let text = "这是广播消息abc123";
    let (status, body) = server.post_form("/message/sendPublicMessage", &[("data", text)], None).await;
    assert_eq!(status, 401, "broadcast without a credential: {body}");
    let (status, body) = server.post_form("/message/sendPublicMessage", &[("data", text)], Some(admin)).await;
    let data = ok(status, &body, "sendPublicMessage (form)");
    assert_eq!(data["delivered"], 3, "alice, bob and carol are connected: {body}");
    for ws in [&mut a, &mut b, &mut c] {
        let f = ws.recv_action("public_message").await;
        assert_eq!(f["chat_type"], 0, "{f}");
        assert_eq!(f["chat_id"], "0_system", "{f}");
        assert_eq!(f["id"], data["id"], "{f}");
        assert_eq!(f["msg"], text, "{f}");
        ws.expect_nothing_pending().await;
    }
    // Dave was offline: the broadcast waits for him.
    let (_d, synced) = server.connect(dave_t).await;
    assert!(
        synced.iter().any(|f| f["action"] == "public_message" && f["id"] == data["id"] && f["msg"] == text),
        "dave gets the broadcast through sync: {synced:?}"
    );
}

mod util {
    use super::common::*;
    use serde_json::json;

    /// The customer-service tests' start: a shop whose one agent ("agent1") and a customer
    /// ("customer") are both connected, and their conversation's chat_id.
    pub struct ServiceScene {
        pub shop: u64,
        pub agent: u64,
        pub agent_ws: Ws,
        pub customer: u64,
        pub customer_ws: Ws,
        pub chat_id: String,
    }

    impl ServiceScene {
        pub async fn new(server: &Server) -> ServiceScene {
            let ShopSetup { shop, agents: [(agent, agent_token)], .. } =
                shop_with_agents(server, "Shop", ["agent1"]).await;
            let (customer, customer_token) = server.register("customer").await;
            let (agent_ws, _) = server.connect(&agent_token).await;
            let (customer_ws, _) = server.connect(&customer_token).await;
            ServiceScene { shop, agent, agent_ws, customer, customer_ws, chat_id: service_chat_id(shop, customer) }
        }
    }

    /// Connects as the README does (`/?access_token=`, no device) and checks the greeting.
    pub async fn open(server: &Server, token: &str, uid: u64, name: &str) -> Ws {
        let mut ws = Ws::connect(server.addr, &format!("/?access_token={token}")).await.expect("websocket upgrade");
        let hello = ws.recv().await;
        assert_eq!(hello["action"], "connected", "{hello}");
        assert_eq!(hello["uid"], json!(uid), "{hello}");
        assert_eq!(hello["username"], name, "{hello}");
        assert!(hello.get("device").is_some(), "connected names the device: {hello}");
        let done = ws.recv().await;
        assert_eq!(done["action"], "sync_done", "nothing to sync for {name}: {done}");
        assert_eq!(done["count"], 0, "{done}");
        ws
    }
}
