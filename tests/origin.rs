//! Browser safety (issue 9): the WebSocket upgrade checks `Origin` against `--allowed-origins`
//! (default: the request's own host), and HTTP answers CORS preflight only for allowed origins.

mod common;

use std::net::SocketAddr;

use common::*;
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use tokio::net::TcpStream;

/// One request with the given headers; returns the status and the response headers.
async fn request(addr: SocketAddr, method: &str, path: &str, headers: &[(&str, &str)]) -> (u16, hyper::HeaderMap) {
    let stream = TcpStream::connect(addr).await.expect("connect");
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream)).await.expect("handshake");
    tokio::spawn(conn);
    let mut req = hyper::Request::builder().method(method).uri(path).header("host", addr.to_string());
    for (name, value) in headers {
        req = req.header(*name, *value);
    }
    let req = req.body(Full::new(Bytes::new())).expect("request");
    let resp = tokio::time::timeout(WAIT, sender.send_request(req)).await.expect("HTTP timeout").expect("HTTP");
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    resp.into_body().collect().await.expect("body");
    (status, headers)
}

fn header<'a>(headers: &'a hyper::HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

#[tokio::test]
async fn the_upgrade_refuses_a_foreign_origin_by_default() {
    let server = Server::start().await;
    let (_, token) = server.register("alice").await;
    assert_eq!(upgrade_with_origin(&server, &token, Some("http://evil.example")).await, Err(403));
    assert_eq!(upgrade_with_origin(&server, &token, Some("null")).await, Err(403));
    // Same host and port as the request's Host header: allowed.
    let same = format!("http://{}", server.addr);
    assert_eq!(upgrade_with_origin(&server, &token, Some(&same)).await, Ok(101));
    // Same host on another port is another origin.
    let other_port = format!("http://127.0.0.1:{}", server.addr.port().wrapping_add(1).max(1));
    assert_eq!(upgrade_with_origin(&server, &token, Some(&other_port)).await, Err(403));
    // Native clients (wscat) send no Origin.
    assert_eq!(upgrade_with_origin(&server, &token, None).await, Ok(101));
}

#[tokio::test]
async fn allowed_origins_lists_who_may_connect_and_star_allows_any() {
    let server = Server::start_with(&["--allowed-origins", "https://app.example,http://localhost:3000"]).await;
    let (_, token) = server.register("alice").await;
    assert_eq!(upgrade_with_origin(&server, &token, Some("https://app.example")).await, Ok(101));
    assert_eq!(upgrade_with_origin(&server, &token, Some("http://localhost:3000")).await, Ok(101));
    assert_eq!(upgrade_with_origin(&server, &token, Some("http://evil.example")).await, Err(403));
    assert_eq!(upgrade_with_origin(&server, &token, None).await, Ok(101));

    let any = Server::start_with(&["--allowed-origins", "*"]).await;
    let (_, token) = any.register("alice").await;
    assert_eq!(upgrade_with_origin(&any, &token, Some("http://evil.example")).await, Ok(101));
}

#[tokio::test]
async fn cors_preflight_and_headers_only_for_allowed_origins() {
    let server = Server::start_with(&["--allowed-origins", "https://app.example"]).await;
    let preflight = |origin: &'static str| {
        let addr = server.addr;
        async move {
            request(
                addr,
                "OPTIONS",
                "/message/history",
                &[
                    ("origin", origin),
                    ("access-control-request-method", "GET"),
                    ("access-control-request-headers", "authorization"),
                ],
            )
            .await
        }
    };
    let (status, headers) = preflight("https://app.example").await;
    assert_eq!(status, 204, "{headers:?}");
    assert_eq!(header(&headers, "access-control-allow-origin"), Some("https://app.example"), "{headers:?}");
    let methods = header(&headers, "access-control-allow-methods").unwrap_or_default();
    assert!(methods.contains("GET") && methods.contains("POST"), "{headers:?}");
    assert_eq!(header(&headers, "access-control-allow-headers"), Some("authorization, content-type"), "{headers:?}");

    let (status, headers) = preflight("http://evil.example").await;
    assert_eq!(status, 204, "{headers:?}");
    assert!(header(&headers, "access-control-allow-origin").is_none(), "no CORS for a foreign origin: {headers:?}");
    assert!(header(&headers, "access-control-allow-methods").is_none(), "{headers:?}");

    // Ordinary answers carry the header for an allowed origin only.
    let (status, headers) = request(server.addr, "GET", "/health", &[("origin", "https://app.example")]).await;
    assert_eq!(status, 200);
    assert_eq!(header(&headers, "access-control-allow-origin"), Some("https://app.example"), "{headers:?}");
    let (status, headers) = request(server.addr, "GET", "/health", &[("origin", "http://evil.example")]).await;
    assert_eq!(status, 200);
    assert!(header(&headers, "access-control-allow-origin").is_none(), "{headers:?}");
    let (_, headers) = request(server.addr, "GET", "/no/such/path", &[("origin", "https://app.example")]).await;
    assert_eq!(header(&headers, "access-control-allow-origin"), Some("https://app.example"), "errors too: {headers:?}");
}
