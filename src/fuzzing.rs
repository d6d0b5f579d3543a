//! The bodies of the fuzz targets in `fuzz/`, shared with `tests/fuzz_corpus.rs` so that every
//! corpus and crash input is replayed by the ordinary test suite: what fuzzing fixed stays fixed.
//! Each takes arbitrary bytes and panics only when an invariant breaks.

use serde_json::Value;

use crate::actions::{self, ClientFrame};
use crate::chat_id;
use crate::http::Params;
use crate::rules;

/// Every parameter name an HTTP handler reads, plus one nobody reads.
const PARAM_NAMES: &[&str] =
    &["before", "chat_id", "data", "limit", "name", "password", "shop_id", "uid", "username", "access_token", "x"];

/// A WebSocket text frame as the session reads it: the typed frame, the fields the actions
/// take apart without a store, and the error frame a frame that does not parse is answered with.
pub fn client_frame(data: &[u8]) {
    // A WebSocket text frame is valid UTF-8 (tungstenite checks that before the session sees it).
    let Ok(text) = std::str::from_utf8(data) else { return };
    match serde_json::from_str::<ClientFrame<'_>>(text) {
        Ok(frame) => {
            if let Some(chat_id) = frame.chat_id.as_deref() {
                let _ = chat_id::parse(chat_id);
                let _ = chat_id::kind_of(chat_id);
            }
            if let Some(msg) = frame.msg {
                // The raw `msg` is stored and sent as is: it must be one JSON value cut from the
                // frame itself, never something the parser made up.
                let raw = msg.get();
                assert!(!raw.is_empty() && text.contains(raw), "msg {raw:?} is not a part of the frame");
                // What the checks accept comes back unchanged: history reads it as a JSON value.
                if rules::msg_check::check(raw).is_ok() {
                    assert!(serde_json::from_str::<Value>(raw).is_ok(), "accepted msg {raw:?} does not read back");
                }
            }
        }
        Err(_) => check_error_frame(text, 400),
    }
    // Refusals made before parsing (rate limit, expired token) read the msg_id of any text.
    check_error_frame(text, 429);
}

/// The error frame answering `text` is JSON with the code, and any msg_id in it a string.
fn check_error_frame(text: &str, code: u16) {
    let reply = actions::refusal(text, code, "refused");
    let value: Value = match serde_json::from_str(reply.as_str()) {
        Ok(value) => value,
        Err(e) => panic!("error frame is not JSON ({e}): {}", reply.as_str()),
    };
    assert_eq!(value["code"], code, "error frame {value}");
    if let Some(id) = value.get("msg_id") {
        assert!(id.is_string(), "error frame {value}");
    }
}

/// An HTTP request's parameters: `data` is `content type NUL query NUL body` (a missing part is
/// absent; an empty content type is none). Whatever comes in is a map or a 400, never a panic.
pub fn http_params(data: &[u8]) {
    let mut parts = data.splitn(3, |&b| b == 0);
    let content_type = parts.next().and_then(|p| std::str::from_utf8(p).ok()).filter(|c| !c.is_empty());
    // hyper hands over the query as text; a URI never holds bytes that are not UTF-8.
    let query = parts.next().and_then(|p| std::str::from_utf8(p).ok());
    let body = parts.next().unwrap_or_default();
    match Params::parse(content_type, query, body) {
        Ok(params) => {
            for name in PARAM_NAMES {
                let _ = params.get(name);
                let _ = params.require(name);
                if let Ok(Some(n)) = params.number(name) {
                    assert_eq!(params.require_number(name).ok(), Some(n));
                }
            }
            let _ = params.token();
        }
        Err(e) => assert!(e.code == 400 || e.code == 413, "unexpected refusal {} {}", e.code, e.message),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_accept_real_input_and_garbage() {
        client_frame(
            br#"{"action":"single_chat","chat_type":1,"msg_type":"text","msg_id":"c-1","to_uid":2,"msg":"hello"}"#,
        );
        client_frame(br#"{"action":5,"msg_id":"m"}"#);
        client_frame(b"\xff\xfe");
        http_params(b"application/json\0\0{\"username\":\"alice\",\"password\":\"secret1\"}");
        http_params(b"\0chat_id=1_1_2&limit=50\0username=alice&password=secret1");
        http_params(b"");
    }
}
