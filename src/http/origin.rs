//! Browser safety: whether a web page's `Origin` may use this daemon (`--allowed-origins`;
//! by default only pages served from the daemon's own host and port), for the WebSocket
//! upgrade and for CORS. Requests without an `Origin` (curl, wscat, native apps) are not
//! from a browser page and are not restricted here.

use hyper::header::{self, HeaderMap, HeaderValue};
use hyper::{Response, StatusCode};

use super::envelope::Body;

/// What the `Origin` header of a request means for it.
#[derive(Debug, PartialEq, Eq)]
pub enum Verdict {
    /// No `Origin`: not a browser page.
    Absent,
    /// A page of an allowed origin; the value to echo in `Access-Control-Allow-Origin`.
    Allowed(HeaderValue),
    /// A page of another site: no upgrade, no CORS headers.
    Refused,
}

/// Checks the request's `Origin` against `allowed` (empty: the request's own `Host`; `*`: any).
pub fn check(allowed: &[String], headers: &HeaderMap) -> Verdict {
    let Some(origin) = headers.get(header::ORIGIN) else {
        return Verdict::Absent;
    };
    let text = origin.to_str().unwrap_or("").trim().trim_end_matches('/');
    let ok = if allowed.is_empty() {
        let host = headers.get(header::HOST).and_then(|h| h.to_str().ok()).unwrap_or("");
        same_host(text, host)
    } else {
        allowed.iter().map(|a| a.trim().trim_end_matches('/')).any(|a| a == "*" || a.eq_ignore_ascii_case(text))
    };
    if ok { Verdict::Allowed(origin.clone()) } else { Verdict::Refused }
}

/// Whether `origin` (`scheme://host[:port]`) names the host and port the request was sent to;
/// a scheme's default port may be left out on either side. `null` (a sandboxed page or a file)
/// never matches.
fn same_host(origin: &str, host: &str) -> bool {
    let Some((scheme, authority)) = origin.split_once("://") else {
        return false;
    };
    let default_port = match scheme.to_ascii_lowercase().as_str() {
        "http" | "ws" => ":80",
        "https" | "wss" => ":443",
        _ => return false,
    };
    let strip = |s: &str| s.strip_suffix(default_port).unwrap_or(s).to_ascii_lowercase();
    !host.is_empty() && strip(authority) == strip(host.trim())
}

/// Adds `Access-Control-Allow-Origin` for an allowed origin; other answers vary by origin too.
pub fn add_cors_headers(response: &mut Response<Body>, verdict: &Verdict) {
    let headers = response.headers_mut();
    if let Verdict::Allowed(origin) = verdict {
        headers.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin.clone());
    }
    if *verdict != Verdict::Absent {
        headers.append(header::VARY, HeaderValue::from_static("Origin"));
    }
}

/// The answer to `OPTIONS` (a CORS preflight) on any path: 204 with `allow`, the path's own
/// methods; the CORS headers only for an allowed origin, so that the browser blocks the others.
pub fn preflight(verdict: &Verdict, allow: &'static str) -> Response<Body> {
    let mut response = Response::new(Body::default());
    *response.status_mut() = StatusCode::NO_CONTENT;
    let headers = response.headers_mut();
    headers.insert(header::ALLOW, HeaderValue::from_static(allow));
    if let Verdict::Allowed(_) = verdict {
        headers.insert(header::ACCESS_CONTROL_ALLOW_METHODS, HeaderValue::from_static("GET, POST, OPTIONS"));
        headers.insert(header::ACCESS_CONTROL_ALLOW_HEADERS, HeaderValue::from_static("authorization, content-type"));
        headers.insert(header::ACCESS_CONTROL_MAX_AGE, HeaderValue::from_static("600"));
    }
    add_cors_headers(&mut response, verdict);
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    fn verdict(allowed: &[&str], origin: Option<&str>, host: &str) -> Verdict {
        let mut headers = HeaderMap::new();
        headers.insert(header::HOST, HeaderValue::from_str(host).unwrap());
        if let Some(origin) = origin {
            headers.insert(header::ORIGIN, HeaderValue::from_str(origin).unwrap());
        }
        let allowed: Vec<String> = allowed.iter().map(|s| s.to_string()).collect();
        check(&allowed, &headers)
    }

    fn allowed(origin: &str) -> Verdict {
        Verdict::Allowed(HeaderValue::from_str(origin).unwrap())
    }

    #[test]
    fn by_default_only_the_own_host_and_port() {
        assert_eq!(verdict(&[], None, "chat.example:9501"), Verdict::Absent);
        let own = "http://chat.example:9501";
        assert_eq!(verdict(&[], Some(own), "chat.example:9501"), allowed(own));
        assert_eq!(
            verdict(&[], Some("HTTP://Chat.Example:9501/"), "chat.example:9501"),
            allowed("HTTP://Chat.Example:9501/")
        );
        assert_eq!(verdict(&[], Some("http://chat.example:9502"), "chat.example:9501"), Verdict::Refused);
        assert_eq!(verdict(&[], Some("http://evil.example:9501"), "chat.example:9501"), Verdict::Refused);
        assert_eq!(verdict(&[], Some("null"), "chat.example:9501"), Verdict::Refused);
        // Behind a TLS proxy: the default port is left out on one side or the other.
        assert_eq!(verdict(&[], Some("https://chat.example"), "chat.example"), allowed("https://chat.example"));
        assert_eq!(verdict(&[], Some("https://chat.example"), "chat.example:443"), allowed("https://chat.example"));
        assert_eq!(verdict(&[], Some("http://chat.example"), "chat.example:443"), Verdict::Refused);
    }

    #[test]
    fn a_list_or_a_star() {
        let list = ["https://app.example", "http://localhost:3000/"];
        assert_eq!(verdict(&list, Some("https://app.example"), "x"), allowed("https://app.example"));
        assert_eq!(verdict(&list, Some("http://localhost:3000"), "x"), allowed("http://localhost:3000"));
        assert_eq!(verdict(&list, Some("http://app.example"), "app.example"), Verdict::Refused);
        assert_eq!(verdict(&["*"], Some("http://evil.example"), "x"), allowed("http://evil.example"));
    }
}
