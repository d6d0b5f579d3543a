//! `ping`: answered with `pong` at once (an application-level keep-alive for clients that
//! cannot send WebSocket pings).

use tokio_tungstenite::tungstenite::Utf8Bytes;

use super::Step;

pub struct Ping;

impl Ping {
    pub fn apply(self) -> Step {
        Step::Reply(Utf8Bytes::from_static(r#"{"action":"pong","code":200}"#))
    }
}
