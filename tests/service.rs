//! Customer service: shops and agents over HTTP, routing of `service_chat` to one agent
//! (sticky, failover, offline), agent replies, and who may read a service conversation
//! (PROTOCOL.md 2, 3.1, 3.2, 3.4).

mod common;

use common::*;
use serde_json::{Value, json};
use util::*;

#[tokio::test]
async fn shop_create_and_agent_management() {
    let server = Server::start().await;
    let (_owner, owner_t) = server.register("owner").await;
    let (g1, g1_t) = server.register("agent1").await;
    let (g2, g2_t) = server.register("agent2").await;
    let (_rand, rand_t) = server.register("random").await;

    // Creating a shop: token and name required.
    let (status, body) = server.post_json("/shop/create", json!({"name": "shop"}), None).await;
    assert_error(status, &body, 401, "create shop without a token");
    let (status, body) = server.post_json("/shop/create", json!({}), Some(&owner_t)).await;
    assert_error(status, &body, 400, "create shop without a name");
    let shop = create_shop(&server, &owner_t, "Shoes").await;
    let unknown_shop = shop + 100_000;

    // Adding agents: owner only, known shop, known user.
    let (status, body) = add_agent(&server, &rand_t, shop, g1).await;
    assert_error(status, &body, 403, "a non-owner adds an agent");
    let (status, body) = add_agent(&server, &g1_t, shop, g1).await;
    assert_error(status, &body, 403, "a user adds itself as agent");
    let (status, body) = add_agent(&server, &owner_t, unknown_shop, g1).await;
    assert_error(status, &body, 404, "add an agent to an unknown shop");
    let (status, body) = add_agent(&server, &owner_t, shop, 987_654).await;
    assert_error(status, &body, 404, "add an unknown uid as agent");
    let (status, body) = server.post_json("/shop/agent/add", json!({"shop_id": shop, "uid": g1}), None).await;
    assert_error(status, &body, 401, "add an agent without a token");
    for (g, g_t) in [(g1, &g1_t), (g2, &g2_t)] {
        let (status, body) = add_agent(&server, &owner_t, shop, g).await;
        let data = ok(status, &body, "owner adds an agent");
        assert_eq!(data["shop_id"], json!(shop), "{body}");
        assert_eq!(data["uid"], json!(g), "{body}");
        accept_agent(&server, g_t, shop).await;
    }

    // Listing agents: owner and agents may, with online flags; others may not.
    let (status, body) = agents(&server, &owner_t, shop).await;
    let data = ok(status, &body, "owner lists agents");
    assert_eq!(data["shop_id"], json!(shop), "{body}");
    let uids = uids_in(&data, "agents");
    assert!(uids.contains(&g1) && uids.contains(&g2), "both agents listed: {body}");
    assert_eq!(online_in(&data, "agents", g1), Some(false), "{body}");
    assert_eq!(online_in(&data, "agents", g2), Some(false), "{body}");
    let entry = data["agents"].as_array().unwrap().iter().find(|a| a["uid"] == json!(g1)).unwrap();
    assert_eq!(entry["username"], "agent1", "{body}");

    let (_g1_ws, _) = server.connect(&g1_t).await;
    let (status, body) = agents(&server, &g2_t, shop).await;
    let data = ok(status, &body, "an agent lists agents");
    assert_eq!(online_in(&data, "agents", g1), Some(true), "agent1 is connected: {body}");
    assert_eq!(online_in(&data, "agents", g2), Some(false), "agent2 is not: {body}");
    let (status, body) = agents(&server, &rand_t, shop).await;
    assert_error(status, &body, 403, "a stranger lists agents");
    let (status, body) = agents(&server, &owner_t, unknown_shop).await;
    assert_error(status, &body, 404, "agents of an unknown shop");
    let (status, body) = server.get(&format!("/shop/agents?shop_id={shop}"), None).await;
    assert_error(status, &body, 401, "agents without a token");

    // Removing agents: owner only, known shop, known user.
    let (status, body) = remove_agent(&server, &rand_t, shop, g2).await;
    assert_error(status, &body, 403, "a non-owner removes an agent");
    let (status, body) = remove_agent(&server, &g1_t, shop, g2).await;
    assert_error(status, &body, 403, "an agent removes another agent");
    let (status, body) = remove_agent(&server, &owner_t, unknown_shop, g2).await;
    assert_error(status, &body, 404, "remove an agent of an unknown shop");
    let (status, body) = remove_agent(&server, &owner_t, shop, 987_654).await;
    assert_error(status, &body, 404, "remove an unknown uid");
    let (status, body) = remove_agent(&server, &owner_t, shop, g2).await;
    let data = ok(status, &body, "owner removes agent2");
    assert_eq!(data["shop_id"], json!(shop), "{body}");
    assert_eq!(data["uid"], json!(g2), "{body}");

    let (status, body) = agents(&server, &owner_t, shop).await;
    let data = ok(status, &body, "agents after removal");
    let uids = uids_in(&data, "agents");
    assert!(uids.contains(&g1) && !uids.contains(&g2), "agent2 removed: {body}");
    let (status, body) = agents(&server, &g2_t, shop).await;
    assert_error(status, &body, 403, "a removed agent lists agents");

    // Form bodies work too.
    let (status, body) = server.post_form("/shop/create", &[("name", "Hats")], Some(&owner_t)).await;
    let data = ok(status, &body, "create shop (form)");
    let hats = data["shop_id"].as_u64().expect("shop_id");
    assert_ne!(hats, shop, "two shops, two ids");
    let (status, body) = server
        .post_form("/shop/agent/add", &[("shop_id", &hats.to_string()), ("uid", &g2.to_string())], Some(&owner_t))
        .await;
    ok(status, &body, "add agent (form)");
    accept_agent(&server, &g2_t, hats).await;
    let (status, body) = agents(&server, &g2_t, hats).await;
    let data = ok(status, &body, "agent2 lists the hats shop");
    assert!(uids_in(&data, "agents").contains(&g2), "{body}");
}

#[tokio::test]
async fn customer_message_goes_to_exactly_one_agent_who_keeps_the_conversation() {
    let server = Server::start().await;
    let ShopSetup { shop, agents: [(g1, g1_t), (g2, g2_t)], .. } =
        shop_with_agents(&server, "Shoes", ["agent1", "agent2"]).await;
    let (cust, cust_t) = server.register("customer").await;
    let (g1_ws, _) = server.connect(&g1_t).await;
    let (g2_ws, _) = server.connect(&g2_t).await;
    let (mut c, _) = server.connect(&cust_t).await;
    let chat_id = service_chat_id(shop, cust);

    let ack = reply(&mut c, customer_frame(shop, "s-1", "hello, shop service.")).await;
    assert_ack(&ack, "s-1", &chat_id);
    let handler = ack["agent_uid"].as_u64().unwrap_or_else(|| panic!("ack agent_uid of an online agent: {ack}"));
    assert!(handler == g1 || handler == g2, "agent_uid {handler} is an agent of the shop: {ack}");
    let (mut h, mut other) = if handler == g1 { (g1_ws, g2_ws) } else { (g2_ws, g1_ws) };

    let f = h.recv_action("service_chat").await;
    assert_service_message(&f, &chat_id, shop, handler, &ack, cust, "customer", "hello, shop service.");
    h.expect_nothing_pending().await;
    other.expect_nothing_pending().await;
    c.expect_nothing_pending().await;

    // Sticky: the same agent gets every following message while online.
    let first_seq = ack["seq"].as_u64().unwrap();
    for i in 2..=6u64 {
        let msg_id = format!("s-{i}");
        let text = format!("message {i}");
        let ack = reply(&mut c, customer_frame(shop, &msg_id, &text)).await;
        assert_ack(&ack, &msg_id, &chat_id);
        assert_eq!(ack["agent_uid"], json!(handler), "message {i} stays with the handling agent: {ack}");
        assert_eq!(ack["seq"].as_u64(), Some(first_seq + i - 1), "seq counts up by one: {ack}");
        let f = h.recv_action("service_chat").await;
        assert_service_message(&f, &chat_id, shop, handler, &ack, cust, "customer", &text);
        other.expect_nothing_pending().await;
    }
    h.expect_nothing_pending().await;
}

#[tokio::test]
async fn customer_cannot_choose_the_conversation_chat_id() {
    let server = Server::start().await;
    let ShopSetup { shop, agents: [(g1, g1_t)], .. } = shop_with_agents(&server, "Shoes", ["agent1"]).await;
    let (c1, c1_t) = server.register("customer1").await;
    let (c2, c2_t) = server.register("customer2").await;
    let (mut g, _) = server.connect(&g1_t).await;
    let (mut w1, _) = server.connect(&c1_t).await;
    let (mut w2, _) = server.connect(&c2_t).await;
    let conv1 = service_chat_id(shop, c1);
    let conv2 = service_chat_id(shop, c2);

    let ack = reply(&mut w1, customer_frame(shop, "c1-1", "I am customer one")).await;
    assert_ack(&ack, "c1-1", &conv1);
    g.recv_action("service_chat").await;

    // Customer two names customer one's conversation (and then a made-up one): the server
    // puts both messages in customer two's own conversation.
    for (i, fake) in [conv1.clone(), "3_424242_999999".to_string()].iter().enumerate() {
        let msg_id = format!("c2-{i}");
        let mut frame = customer_frame(shop, &msg_id, "sneaky");
        frame["chat_id"] = json!(fake);
        let ack = reply(&mut w2, frame).await;
        assert_ack(&ack, &msg_id, &conv2);
        assert_eq!(ack["agent_uid"], json!(g1), "{ack}");
        let f = g.recv_action("service_chat").await;
        assert_service_message(&f, &conv2, shop, g1, &ack, c2, "customer2", "sneaky");
        w1.expect_nothing_pending().await;
    }
    g.expect_nothing_pending().await;

    // Customer one's conversation holds only customer one's message.
    let (status, body) = history(&server, &c1_t, &conv1).await;
    let data = ok(status, &body, "history of customer one");
    let msgs = data["messages"].as_array().unwrap_or_else(|| panic!("messages: {body}"));
    assert_eq!(msgs.len(), 1, "{body}");
    assert_eq!(msgs[0]["from_uid"], json!(c1), "{body}");
}

#[tokio::test]
async fn failover_moves_the_conversation_to_another_online_agent() {
    let server = Server::start().await;
    let ShopSetup { owner: (_, owner_t), shop, agents: [(g1, g1_t), (g2, g2_t)] } =
        shop_with_agents(&server, "Shoes", ["agent1", "agent2"]).await;
    let (cust, cust_t) = server.register("customer").await;
    let (g1_ws, _) = server.connect(&g1_t).await;
    let (g2_ws, _) = server.connect(&g2_t).await;
    let (mut c, _) = server.connect(&cust_t).await;
    let chat_id = service_chat_id(shop, cust);

    let ack1 = reply(&mut c, customer_frame(shop, "f-1", "first")).await;
    assert_ack(&ack1, "f-1", &chat_id);
    let first = ack1["agent_uid"].as_u64().unwrap_or_else(|| panic!("agent_uid: {ack1}"));
    let (mut h, mut o, h_t, second) =
        if first == g1 { (g1_ws, g2_ws, g1_t.clone(), g2) } else { (g2_ws, g1_ws, g2_t.clone(), g1) };
    let f = h.recv_action("service_chat").await;
    assert_eq!(f["id"], ack1["id"], "{f}");

    // The handling agent goes away; once the server sees it offline the conversation moves.
    go_offline(&server, &owner_t, shop, h, first).await;

    let ack2 = reply(&mut c, customer_frame(shop, "f-2", "second")).await;
    assert_ack(&ack2, "f-2", &chat_id);
    assert_eq!(ack2["agent_uid"], json!(second), "failover to the other online agent: {ack2}");
    let f = o.recv_action("service_chat").await;
    assert_service_message(&f, &chat_id, shop, second, &ack2, cust, "customer", "second");

    // The new agent now handles it, even after the first comes back.
    let (mut h, _) = server.connect(&h_t).await;
    let ack3 = reply(&mut c, customer_frame(shop, "f-3", "third")).await;
    assert_ack(&ack3, "f-3", &chat_id);
    assert_eq!(ack3["agent_uid"], json!(second), "the agent who took over keeps it: {ack3}");
    let f = o.recv_action("service_chat").await;
    assert_service_message(&f, &chat_id, shop, second, &ack3, cust, "customer", "third");
    h.expect_nothing_pending().await;
    o.expect_nothing_pending().await;

    // The second agent answers.
    let ack4 = reply(&mut o, agent_frame(&chat_id, "f-4", "how can I help?")).await;
    assert_ack(&ack4, "f-4", &chat_id);
    let f = c.recv_action("service_chat").await;
    assert_eq!(f["id"], ack4["id"], "{f}");

    // History records who handled what.
    let (status, body) = history(&server, &cust_t, &chat_id).await;
    let data = ok(status, &body, "service history");
    let msgs = data["messages"].as_array().unwrap_or_else(|| panic!("messages: {body}"));
    let handled: Vec<(Value, Value)> = msgs.iter().map(|m| (m["id"].clone(), m["agent_uid"].clone())).collect();
    assert_eq!(
        handled,
        vec![
            (ack1["id"].clone(), json!(first)),
            (ack2["id"].clone(), json!(second)),
            (ack3["id"].clone(), json!(second)),
            (ack4["id"].clone(), json!(second)),
        ],
        "agent_uid per message in history: {body}"
    );
}

#[tokio::test]
async fn no_agent_online_stores_and_delivers_to_every_agent_through_sync() {
    let server = Server::start().await;
    let ShopSetup { shop, agents: [(g1, g1_t), (g2, g2_t)], .. } =
        shop_with_agents(&server, "Shoes", ["agent1", "agent2"]).await;
    let (cust, cust_t) = server.register("customer").await;
    let (mut c, _) = server.connect(&cust_t).await;
    let chat_id = service_chat_id(shop, cust);

    let ack = reply(&mut c, customer_frame(shop, "n-1", "anybody there?")).await;
    assert_ack(&ack, "n-1", &chat_id);
    assert_eq!(ack.get("agent_uid"), Some(&Value::Null), "nobody online: agent_uid is null: {ack}");
    c.expect_nothing_pending().await;

    // Nobody handles the conversation yet: every agent gets it when they connect.
    for (g, t) in [(g1, &g1_t), (g2, &g2_t)] {
        let (mut ws, synced) = server.connect(t).await;
        let got: Vec<&Value> = synced.iter().filter(|f| f["id"] == ack["id"]).collect();
        assert_eq!(got.len(), 1, "agent {g} gets the waiting message through sync: {synced:?}");
        let f = got[0];
        assert_eq!(f["action"], "service_chat", "{f}");
        assert_eq!(f["chat_type"], 3, "{f}");
        assert_eq!(f["chat_id"], json!(chat_id), "{f}");
        assert_eq!(f["shop_id"], json!(shop), "{f}");
        assert_eq!(f["from_uid"], json!(cust), "{f}");
        assert_eq!(f["msg"], "anybody there?", "{f}");
        ws.expect_nothing_pending().await;
    }
}

#[tokio::test]
async fn handling_agent_offline_gets_the_message_through_sync() {
    let server = Server::start().await;
    let ShopSetup { owner: (_, owner_t), shop, agents: [(g1, g1_t), _] } =
        shop_with_agents(&server, "Shoes", ["agent1", "agent2"]).await;
    let (cust, cust_t) = server.register("customer").await;
    let chat_id = service_chat_id(shop, cust);
    let (mut g, _) = server.connect(&g1_t).await;
    let (mut c, _) = server.connect(&cust_t).await;
    let ack1 = reply(&mut c, customer_frame(shop, "h-1", "first")).await;
    assert_eq!(ack1["agent_uid"], json!(g1), "the only online agent: {ack1}");
    let f = g.recv_action("service_chat").await;
    assert_eq!(f["id"], ack1["id"], "{f}");
    let r = reply(&mut g, json!({"action": "read", "chat_id": chat_id, "seq": ack1["seq"]})).await;
    assert_eq!(r["code"], 200, "{r}");

    go_offline(&server, &owner_t, shop, g, g1).await;

    let ack2 = reply(&mut c, customer_frame(shop, "h-2", "are you still there?")).await;
    assert_ack(&ack2, "h-2", &chat_id);
    assert_eq!(ack2.get("agent_uid"), Some(&Value::Null), "nobody online: agent_uid is null: {ack2}");

    let (mut g, synced) = server.connect(&g1_t).await;
    let got: Vec<&Value> = synced.iter().filter(|f| f["chat_id"] == json!(chat_id)).collect();
    assert_eq!(got.len(), 1, "the handling agent gets the new message through sync: {synced:?}");
    assert_eq!(got[0]["id"], ack2["id"], "{synced:?}");
    assert_eq!(got[0]["msg"], "are you still there?", "{synced:?}");
    g.expect_nothing_pending().await;
}

#[tokio::test]
async fn a_removed_handler_stops_getting_the_conversation_and_the_other_agents_get_it() {
    let server = Server::start().await;
    let ShopSetup { owner: (_, owner_t), shop, agents: [(g1, g1_t), (_, g2_t)] } =
        shop_with_agents(&server, "Shoes", ["agent1", "agent2"]).await;
    let (cust, cust_t) = server.register("customer").await;
    let chat_id = service_chat_id(shop, cust);

    // agent1 is the only one online, so agent1 handles the conversation.
    let (mut g, _) = server.connect(&g1_t).await;
    let (mut c, _) = server.connect(&cust_t).await;
    let ack1 = reply(&mut c, customer_frame(shop, "r-1", "first")).await;
    assert_eq!(ack1["agent_uid"], json!(g1), "{ack1}");
    g.recv_action("service_chat").await;
    go_offline(&server, &owner_t, shop, g, g1).await;

    let (status, body) = remove_agent(&server, &owner_t, shop, g1).await;
    ok(status, &body, "remove the handling agent");

    // Nobody is online: the message waits for the shop's agents.
    let ack2 = reply(&mut c, customer_frame(shop, "r-2", "hello?")).await;
    assert_eq!(ack2.get("agent_uid"), Some(&Value::Null), "{ack2}");

    let (mut g, synced) = server.connect(&g1_t).await;
    assert!(
        synced.iter().all(|f| f["chat_id"] != json!(chat_id)),
        "a removed agent gets nothing more of the shop's conversations: {synced:?}"
    );
    g.expect_nothing_pending().await;
    let (_, synced) = server.connect(&g2_t).await;
    let waiting: Vec<&Value> = synced.iter().filter(|f| f["id"] == ack2["id"]).collect();
    assert_eq!(waiting.len(), 1, "the remaining agent gets the waiting message through sync: {synced:?}");
    assert_eq!(waiting[0]["msg"], "hello?", "{synced:?}");
}

#[tokio::test]
async fn agent_reply_reaches_every_customer_device() {
    let server = Server::start().await;
    let ShopSetup { shop, agents: [(g1, g1_t)], .. } = shop_with_agents(&server, "Shoes", ["agent1"]).await;
    let (cust, cust_t) = server.register("customer").await;
    let chat_id = service_chat_id(shop, cust);
    let (mut g, _) = server.connect(&g1_t).await;
    let (mut web, _) = server.connect_device(&cust_t, "web").await;
    let (mut mobile, _) = server.connect_device(&cust_t, "mobile").await;

    let ack = reply(&mut web, customer_frame(shop, "r-1", "hello")).await;
    assert_ack(&ack, "r-1", &chat_id);
    let f = g.recv_action("service_chat").await;
    assert_eq!(f["id"], ack["id"], "{f}");
    // The customer's other device sees what the customer wrote.
    let f = mobile.recv_action("service_chat").await;
    assert_service_message(&f, &chat_id, shop, g1, &ack, cust, "customer", "hello");
    web.expect_nothing_pending().await;

    let ack = reply(&mut g, agent_frame(&chat_id, "r-2", "how can I help?")).await;
    assert_ack(&ack, "r-2", &chat_id);
    for ws in [&mut web, &mut mobile] {
        let f = ws.recv_action("service_chat").await;
        assert_service_message(&f, &chat_id, shop, g1, &ack, g1, "agent1", "how can I help?");
        ws.expect_nothing_pending().await;
    }
    g.expect_nothing_pending().await;
}

#[tokio::test]
async fn only_agents_of_the_shop_may_reply() {
    let server = Server::start().await;
    let ShopSetup { owner: (_, owner_t), shop, agents: [(g1, g1_t), (g2, g2_t)] } =
        shop_with_agents(&server, "Shoes", ["agent1", "agent2"]).await;
    let (cust, cust_t) = server.register("customer").await;
    let (_c2, c2_t) = server.register("customer2").await;
    let (_rand, rand_t) = server.register("random").await;
    let chat_id = service_chat_id(shop, cust);
    let (mut a1, _) = server.connect(&g1_t).await;
    let (mut c, _) = server.connect(&cust_t).await;
    let ack = reply(&mut c, customer_frame(shop, "o-1", "hello")).await;
    assert_eq!(ack["agent_uid"], json!(g1), "{ack}");
    a1.recv_action("service_chat").await;

    // Any agent of the shop may answer.
    let (mut a2, _) = server.connect(&g2_t).await;
    let ack = reply(&mut a2, agent_frame(&chat_id, "g2-1", "agent two here")).await;
    assert_ack(&ack, "g2-1", &chat_id);
    let f = c.recv_action("service_chat").await;
    assert_eq!(f["id"], ack["id"], "{f}");
    assert_eq!(f["from_uid"], json!(g2), "{f}");
    // Whether the handling agent sees a colleague's reply is not specified: take it if it came.
    for f in drain(&mut a1).await {
        assert_eq!(f["id"], ack["id"], "agent one got something other than agent two's reply: {f}");
    }

    // Another customer and a stranger may not.
    let (mut w2, _) = server.connect(&c2_t).await;
    let err = reply(&mut w2, agent_frame(&chat_id, "x-1", "I am an agent, honest")).await;
    assert_frame_error(&err, 403, Some("x-1"), "agent reply by another customer");
    let (mut r, _) = server.connect(&rand_t).await;
    let err = reply(&mut r, agent_frame(&chat_id, "x-2", "me too")).await;
    assert_frame_error(&err, 403, Some("x-2"), "agent reply by a stranger");

    // A removed agent may not either.
    let (status, body) = remove_agent(&server, &owner_t, shop, g2).await;
    ok(status, &body, "remove agent2");
    let err = reply(&mut a2, agent_frame(&chat_id, "g2-2", "one more thing")).await;
    assert_frame_error(&err, 403, Some("g2-2"), "agent reply by a removed agent");

    // None of the refused replies reached anyone.
    c.expect_nothing_pending().await;
    a1.expect_nothing_pending().await;
    let (status, body) = history(&server, &cust_t, &chat_id).await;
    let data = ok(status, &body, "history");
    let msgs = data["messages"].as_array().unwrap_or_else(|| panic!("messages: {body}"));
    assert_eq!(msgs.len(), 2, "only the customer's message and agent two's first reply: {body}");
}

#[tokio::test]
async fn service_history_is_for_the_customer_and_the_shops_agents() {
    let server = Server::start().await;
    let ShopSetup { shop, agents: [(g1, g1_t), (_, g2_t)], .. } =
        shop_with_agents(&server, "Shoes", ["agent1", "agent2"]).await;
    let (cust, cust_t) = server.register("customer").await;
    let (_c2, c2_t) = server.register("customer2").await;
    let (_rand, rand_t) = server.register("random").await;
    let chat_id = service_chat_id(shop, cust);
    let (mut a1, _) = server.connect(&g1_t).await;
    let (mut c, _) = server.connect(&cust_t).await;
    let ack1 = reply(&mut c, customer_frame(shop, "p-1", "question")).await;
    assert_eq!(ack1["agent_uid"], json!(g1), "{ack1}");
    a1.recv_action("service_chat").await;
    let ack2 = reply(&mut a1, agent_frame(&chat_id, "p-2", "answer")).await;
    assert_ack(&ack2, "p-2", &chat_id);

    for (who, t) in [("customer", &cust_t), ("agent1", &g1_t), ("agent2", &g2_t)] {
        let (status, body) = history(&server, t, &chat_id).await;
        let data = ok(status, &body, &format!("history read by {who}"));
        assert_eq!(data["chat_id"], json!(chat_id), "{body}");
        let msgs = data["messages"].as_array().unwrap_or_else(|| panic!("messages: {body}"));
        assert_eq!(msgs.len(), 2, "{who}: {body}");
        assert_eq!(msgs[0]["id"], ack1["id"], "{body}");
        assert_eq!(msgs[0]["from_uid"], json!(cust), "{body}");
        assert_eq!(msgs[0]["agent_uid"], json!(g1), "{body}");
        assert_eq!(msgs[1]["id"], ack2["id"], "{body}");
        assert_eq!(msgs[1]["from_uid"], json!(g1), "{body}");
        assert_eq!(msgs[1]["agent_uid"], json!(g1), "{body}");
        assert_eq!(msgs[1]["seq"].as_u64(), Some(msgs[0]["seq"].as_u64().unwrap() + 1), "{body}");
    }
    for (who, t) in [("customer2", &c2_t), ("random", &rand_t)] {
        let (status, body) = history(&server, t, &chat_id).await;
        assert_error(status, &body, 403, &format!("service history read by {who}"));
    }
}

mod util {
    use super::common::*;
    use serde_json::{Value, json};

    /// Everything queued for this connection up to the pong of a fresh ping.
    pub async fn drain(ws: &mut Ws) -> Vec<Value> {
        ws.send(json!({"action": "ping"})).await;
        let mut got = Vec::new();
        loop {
            let f = ws.recv().await;
            if f["action"] == "pong" {
                return got;
            }
            got.push(f);
        }
    }

    pub fn customer_frame(shop: u64, msg_id: &str, msg: &str) -> Value {
        json!({"action": "service_chat", "chat_type": 3, "msg_type": "text", "msg_id": msg_id,
               "shop_id": shop, "msg": msg})
    }

    pub fn agent_frame(chat_id: &str, msg_id: &str, msg: &str) -> Value {
        json!({"action": "service_chat", "chat_type": 3, "msg_type": "text", "msg_id": msg_id,
               "chat_id": chat_id, "msg": msg})
    }

    /// Closes an agent's only connection and waits until the shop lists them offline.
    pub async fn go_offline(server: &Server, owner_token: &str, shop: u64, mut ws: Ws, uid: u64) {
        ws.stream.close(None).await.ok();
        drop(ws);
        wait_online_in(server, owner_token, &format!("/shop/agents?shop_id={shop}"), "agents", uid, false).await;
    }

    pub async fn remove_agent(server: &Server, token: &str, shop: u64, uid: u64) -> (u16, Value) {
        server.post_json("/shop/agent/remove", json!({"shop_id": shop, "uid": uid}), Some(token)).await
    }

    pub async fn agents(server: &Server, token: &str, shop: u64) -> (u16, Value) {
        server.get(&format!("/shop/agents?shop_id={shop}"), Some(token)).await
    }
}
