//! Server-to-client frames (contract 3.2), encoded once into shared bytes.

use serde::Serialize;
use serde_json::value::RawValue;
use tokio_tungstenite::tungstenite::Utf8Bytes;

use crate::domain::{Kind, StoredMessage};

#[derive(Serialize)]
struct MessageFrame<'a> {
    action: &'static str,
    chat_type: i64,
    chat_id: &'a str,
    seq: i64,
    id: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    msg_id: Option<&'a str>,
    msg_type: &'a str,
    msg: &'a RawValue,
    from_uid: u64,
    from_name: &'a str,
    /// `from_uid` again, for clients of the old service.
    uid: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    to_uid: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    shop_id: Option<u64>,
    /// Present (possibly null) on service frames only.
    #[serde(skip_serializing_if = "Option::is_none")]
    agent_uid: Option<Option<u64>>,
    ts: i64,
}

/// The frame that carries a stored message to its recipients.
pub fn message(m: &StoredMessage, from_name: &str) -> Utf8Bytes {
    encode(&message_frame(m, from_name))
}

/// The same, as a JSON value (for HTTP replies).
pub fn message_json(m: &StoredMessage, from_name: &str) -> serde_json::Value {
    serde_json::to_value(message_frame(m, from_name)).unwrap_or_default()
}

fn message_frame<'a>(m: &'a StoredMessage, from_name: &'a str) -> MessageFrame<'a> {
    let service = m.kind == Kind::Service;
    MessageFrame {
        action: m.kind.action(),
        chat_type: m.kind as i64,
        chat_id: &m.chat_id,
        seq: m.seq,
        id: m.id,
        msg_id: m.msg_id.as_deref(),
        msg_type: &m.msg_type,
        msg: &m.body,
        from_uid: m.from_uid,
        from_name,
        uid: m.from_uid,
        to_uid: m.to_uid,
        shop_id: m.shop_id,
        agent_uid: service.then_some(m.agent_uid),
        ts: m.ts,
    }
}

#[derive(Serialize)]
struct AckFrame<'a> {
    action: &'static str,
    code: u16,
    #[serde(skip_serializing_if = "Option::is_none")]
    msg_id: Option<&'a str>,
    id: i64,
    chat_id: &'a str,
    seq: i64,
    ts: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    agent_uid: Option<Option<u64>>,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    duplicate: bool,
}

/// The sender's confirmation that a message is stored.
pub fn ack(m: &StoredMessage, duplicate: bool) -> Utf8Bytes {
    encode(&AckFrame {
        action: "ack",
        code: 200,
        msg_id: m.msg_id.as_deref(),
        id: m.id,
        chat_id: &m.chat_id,
        seq: m.seq,
        ts: m.ts,
        agent_uid: (m.kind == Kind::Service).then_some(m.agent_uid),
        duplicate,
    })
}

#[derive(Serialize)]
struct ErrorFrame<'a> {
    action: &'static str,
    code: u16,
    message: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    msg_id: Option<&'a str>,
}

pub fn error(code: u16, message: &str, msg_id: Option<&str>) -> Utf8Bytes {
    encode(&ErrorFrame { action: "error", code, message, msg_id })
}

/// Any other frame, from a `serde_json::json!` value.
pub fn json(value: serde_json::Value) -> Utf8Bytes {
    Utf8Bytes::from(value.to_string())
}

fn encode<T: Serialize>(frame: &T) -> Utf8Bytes {
    // Serialising these structs cannot fail: every field is a plain value.
    Utf8Bytes::from(serde_json::to_string(frame).unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    fn sample(kind: Kind) -> StoredMessage {
        StoredMessage {
            id: 4051,
            kind,
            chat_id: Arc::from("1_1_2"),
            seq: 12,
            from_uid: 1,
            to_uid: Some(2),
            msg_id: Some("c-1".into()),
            msg_type: "text".into(),
            body: RawValue::from_string("\"hello\"".into()).unwrap(),
            ts: 1732238400123,
            shop_id: None,
            agent_uid: None,
        }
    }

    #[test]
    fn message_frame_has_the_contract_fields() {
        let frame: serde_json::Value = serde_json::from_str(message(&sample(Kind::Single), "a").as_str()).unwrap();
        assert_eq!(
            frame,
            serde_json::json!({"action":"single_chat","chat_type":1,"chat_id":"1_1_2","seq":12,"id":4051,"msg_id":"c-1",
                "msg_type":"text","msg":"hello","from_uid":1,"from_name":"a","uid":1,"to_uid":2,"ts":1732238400123u64})
        );
    }

    #[test]
    fn service_ack_carries_a_null_agent() {
        let ack: serde_json::Value = serde_json::from_str(ack(&sample(Kind::Service), false).as_str()).unwrap();
        assert_eq!(ack["agent_uid"], serde_json::Value::Null);
        assert!(ack.as_object().unwrap().contains_key("agent_uid"));
        assert!(!ack.as_object().unwrap().contains_key("duplicate"));
    }
}
