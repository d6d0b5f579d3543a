//! The browser client: the files under `web/`, embedded in the binary, served at `/` (a plain
//! GET; an upgrade on `/` stays the WebSocket) and `/web/...`.

use std::hash::{Hash, Hasher};

use http_body_util::Full;
use hyper::body::Bytes;
use hyper::{Method, Request, Response, StatusCode, header};

use super::envelope::Body;

/// Only our own files and our own WebSocket: nothing inline, nothing from another host.
const CSP: &str = "default-src 'self'; connect-src 'self' ws: wss:; img-src 'self'; style-src 'self'; \
                   script-src 'self'; object-src 'none'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

/// (path, content type, bytes) of every embedded file.
const FILES: &[(&str, &str, &[u8])] = &[
    ("/", "text/html; charset=utf-8", include_bytes!("../../web/index.html")),
    ("/web/app.js", "text/javascript; charset=utf-8", include_bytes!("../../web/app.js")),
    ("/web/net.js", "text/javascript; charset=utf-8", include_bytes!("../../web/net.js")),
    ("/web/view.js", "text/javascript; charset=utf-8", include_bytes!("../../web/view.js")),
    ("/web/style.css", "text/css; charset=utf-8", include_bytes!("../../web/style.css")),
    ("/web/icon.svg", "image/svg+xml", include_bytes!("../../web/icon.svg")),
];

/// The answer for a request of the web client, or None when the request is not one (an
/// upgrade on `/`, another path, another method).
pub fn page<B>(req: &Request<B>) -> Option<Response<Body>> {
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return None;
    }
    if req.headers().contains_key(header::UPGRADE) {
        return None;
    }
    let (_, content_type, bytes) = FILES.iter().find(|(path, _, _)| *path == req.uri().path())?;
    // The files change only with the binary: a browser revalidates (no-cache) and gets 304.
    let etag = etag(bytes);
    let fresh = req.headers().get(header::IF_NONE_MATCH).is_some_and(|v| v.as_bytes() == etag.as_bytes());
    let body = if fresh || req.method() == Method::HEAD { Bytes::new() } else { Bytes::from_static(bytes) };
    let mut response = Response::new(Full::new(body));
    if fresh {
        *response.status_mut() = StatusCode::NOT_MODIFIED;
    }
    let headers = response.headers_mut();
    let pairs = [
        (header::CONTENT_TYPE, *content_type),
        (header::CACHE_CONTROL, "no-cache"),
        (header::CONTENT_SECURITY_POLICY, CSP),
        (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        (header::REFERRER_POLICY, "no-referrer"),
    ];
    for (name, value) in pairs {
        headers.insert(name, header::HeaderValue::from_static(value));
    }
    if let Ok(value) = header::HeaderValue::from_str(&etag) {
        headers.insert(header::ETAG, value);
    }
    Some(response)
}

fn etag(bytes: &[u8]) -> String {
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    bytes.hash(&mut hasher);
    format!("\"{:016x}\"", hasher.finish())
}
