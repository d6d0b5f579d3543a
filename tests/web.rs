//! The web client's files on `/` and `/web/...` (types, CSP, caching), the WebSocket upgrade
//! still on `/`, and `GET /user/lookup`.
mod common;

use common::{Server, Ws, assert_error, http_raw, ok};

/// (status, headers, body) of a GET with extra headers.
async fn get(server: &Server, path: &str, headers: &[(&str, &str)]) -> (u16, hyper::HeaderMap, String) {
    use http_body_util::{BodyExt, Empty};
    let stream = tokio::net::TcpStream::connect(server.addr).await.expect("connect");
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream)).await.expect("handshake");
    tokio::spawn(conn);
    let mut req = hyper::Request::get(path).header("host", server.addr.to_string());
    for (name, value) in headers {
        req = req.header(*name, *value);
    }
    let req = req.body(Empty::<hyper::body::Bytes>::new()).expect("request");
    let resp = tokio::time::timeout(common::WAIT, sender.send_request(req)).await.expect("timeout").expect("HTTP");
    let (parts, body) = resp.into_parts();
    let bytes = body.collect().await.expect("body").to_bytes();
    (parts.status.as_u16(), parts.headers, String::from_utf8_lossy(&bytes).into_owned())
}

#[tokio::test]
async fn root_serves_the_page_and_still_upgrades() {
    let server = Server::start().await;
    let (status, headers, body) = get(&server, "/", &[]).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(headers["content-type"], "text/html; charset=utf-8");
    assert!(body.contains("<script type=\"module\" src=\"/web/app.js\">"), "{body}");
    let csp = headers["content-security-policy"].to_str().expect("ascii");
    assert!(csp.starts_with("default-src 'self'; connect-src 'self' ws: wss:"), "{csp}");
    assert_eq!(headers["cache-control"], "no-cache");
    assert_eq!(headers["x-content-type-options"], "nosniff");
    // Nothing from another host: no absolute URLs in any file.
    for (path, kind) in [
        ("/web/app.js", "text/javascript"),
        ("/web/net.js", "text/javascript"),
        ("/web/view.js", "text/javascript"),
        ("/web/style.css", "text/css"),
        ("/web/icon.svg", "image/svg+xml"),
    ] {
        let (status, headers, text) = get(&server, path, &[]).await;
        assert_eq!(status, 200, "{path}");
        assert!(headers["content-type"].to_str().expect("ascii").starts_with(kind), "{path}: {headers:?}");
        // (An SVG's namespace is a name, not something fetched.)
        let text = text.replace("xmlns=\"http://www.w3.org/2000/svg\"", "");
        assert!(!text.contains("http://") && !text.contains("https://"), "{path} names another host");
    }
    // Revalidation: the same ETag answers 304 with no body.
    let etag = headers["etag"].to_str().expect("ascii").to_string();
    let (status, _, body) = get(&server, "/", &[("if-none-match", &etag)]).await;
    assert_eq!((status, body.as_str()), (304, ""));
    // Other paths keep their JSON answers.
    let (status, body) = http_raw(server.addr, "GET", "/web/nothing.js", None, None).await;
    assert_eq!(status, 404, "{body}");

    // An upgrade on `/` is the WebSocket exactly as before.
    let (_, token) = server.register("alice").await;
    let (mut ws, synced) = server.connect(&token).await;
    assert!(synced.is_empty());
    let pong = ws.request(serde_json::json!({"action": "ping"})).await;
    assert_eq!(pong["action"], "pong");
    // ...and an upgrade without a token is still refused before it, not served the page.
    assert_eq!(Ws::connect(server.addr, "/").await.err(), Some(401));
    // A broken upgrade (no Sec-WebSocket-Key) is still 400 in the envelope, not the page.
    let (status, _, body) = get(&server, "/", &[("connection", "upgrade"), ("upgrade", "websocket")]).await;
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("takes a WebSocket upgrade"), "{body}");
}

#[tokio::test]
async fn lookup_finds_a_user_by_name_or_uid() {
    let server = Server::start().await;
    let (alice, token) = server.register("Alice").await;
    let (bob, _) = server.register("bob").await;
    // Any spelling login accepts.
    let (status, body) = server.get("/user/lookup?username=BOB", Some(&token)).await;
    assert_eq!(ok(status, &body, "lookup by name"), serde_json::json!({"uid": bob, "username": "bob"}));
    let (status, body) = server.get(&format!("/user/lookup?uid={alice}"), Some(&token)).await;
    assert_eq!(ok(status, &body, "lookup by uid"), serde_json::json!({"uid": alice, "username": "Alice"}));
    let (status, body) = server.get("/user/lookup?username=nobody", Some(&token)).await;
    assert_error(status, &body, 404, "unknown name");
    let (status, body) = server.get("/user/lookup?uid=999", Some(&token)).await;
    assert_error(status, &body, 404, "unknown uid");
    let (status, body) = server.get("/user/lookup?uid=x", Some(&token)).await;
    assert_error(status, &body, 400, "uid not a number");
    let (status, body) = server.get("/user/lookup", Some(&token)).await;
    assert_error(status, &body, 400, "neither");
    let (status, body) = server.get("/user/lookup?username=bob", None).await;
    assert_error(status, &body, 401, "no token");
}

/// The conversation list names rooms (the client's titles): a named room has its name, an
/// unnamed one and a 1:1 chat have null.
#[tokio::test]
async fn conversations_carry_room_names() {
    let server = Server::start().await;
    let (_, token) = server.register("alice").await;
    let (status, body) = server.post_json("/room/create", serde_json::json!({"name": "tea club"}), Some(&token)).await;
    let named = ok(status, &body, "create a named room")["chat_id"].as_str().expect("chat_id").to_string();
    let unnamed = common::create_room(&server, &token).await;
    let (status, body) = server.get("/message/conversations", Some(&token)).await;
    let data = ok(status, &body, "conversations");
    let name_of = |chat_id: &str| {
        let list = data["conversations"].as_array().expect("a list");
        list.iter().find(|c| c["chat_id"] == chat_id).map(|c| c["name"].clone()).expect("the room is listed")
    };
    assert_eq!(name_of(&named), "tea club");
    assert!(name_of(&unnamed).is_null(), "{data}");
}
