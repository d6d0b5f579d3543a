//! Committed messages as they travel between nodes: a batch names its publishing node and
//! carries each `StoredMessage` as JSON, its `body` the stored JSON as is.

use std::sync::Arc;

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use crate::domain::{Kind, StoredMessage};

/// Largest payload of one NATS message we publish: the server refuses more than its
/// `max_payload` (1 MiB by default), so a larger batch goes out in several parts, in order.
pub const MAX_PAYLOAD: usize = 512 * 1024;

/// One message as encoded (borrowed from the `StoredMessage`).
#[derive(Serialize)]
struct MessageOut<'a> {
    id: i64,
    kind: u8,
    chat_id: &'a str,
    seq: i64,
    from_uid: u64,
    to_uid: Option<u64>,
    msg_id: Option<&'a str>,
    msg_type: &'a str,
    body: &'a RawValue,
    ts: i64,
    shop_id: Option<u64>,
    agent_uid: Option<u64>,
}

/// One message as decoded.
#[derive(Deserialize)]
struct MessageIn {
    id: i64,
    kind: u8,
    chat_id: String,
    seq: i64,
    from_uid: u64,
    to_uid: Option<u64>,
    msg_id: Option<String>,
    msg_type: String,
    body: Box<RawValue>,
    ts: i64,
    shop_id: Option<u64>,
    agent_uid: Option<u64>,
}

#[derive(Deserialize)]
struct BatchIn {
    node: String,
    messages: Vec<MessageIn>,
}

/// A batch received from another node.
#[derive(Debug)]
pub struct Batch {
    pub node: String,
    pub messages: Vec<StoredMessage>,
}

#[derive(Debug, thiserror::Error)]
pub enum WireError {
    #[error("not a batch: {0}")]
    Json(#[from] serde_json::Error),
    #[error("unknown message kind {0}")]
    Kind(u8),
}

fn kind_code(kind: Kind) -> u8 {
    kind as u8
}

fn kind_of(code: u8) -> Result<Kind, WireError> {
    match code {
        0 => Ok(Kind::System),
        1 => Ok(Kind::Single),
        2 => Ok(Kind::Group),
        3 => Ok(Kind::Service),
        other => Err(WireError::Kind(other)),
    }
}

/// The payloads that carry `messages` from `node`: one, unless together they pass
/// `MAX_PAYLOAD` (a message larger than that alone still goes, in a part of its own).
pub fn encode_batch(node: &str, messages: &[StoredMessage]) -> Result<Vec<Vec<u8>>, WireError> {
    let head = format!("{{\"node\":{},\"messages\":[", serde_json::to_string(node)?);
    let mut parts = Vec::new();
    let mut part = head.clone().into_bytes();
    let mut in_part = 0usize;
    for message in messages {
        let encoded = serde_json::to_vec(&MessageOut {
            id: message.id,
            kind: kind_code(message.kind),
            chat_id: &message.chat_id,
            seq: message.seq,
            from_uid: message.from_uid,
            to_uid: message.to_uid,
            msg_id: message.msg_id.as_deref(),
            msg_type: &message.msg_type,
            body: &message.body,
            ts: message.ts,
            shop_id: message.shop_id,
            agent_uid: message.agent_uid,
        })?;
        if in_part > 0 && part.len() + encoded.len() + 2 > MAX_PAYLOAD {
            part.extend_from_slice(b"]}");
            parts.push(std::mem::replace(&mut part, head.clone().into_bytes()));
            in_part = 0;
        }
        if in_part > 0 {
            part.push(b',');
        }
        part.extend_from_slice(&encoded);
        in_part += 1;
    }
    if in_part > 0 {
        part.extend_from_slice(b"]}");
        parts.push(part);
    }
    Ok(parts)
}

/// A payload of `encode_batch` back into the node and its messages.
pub fn decode_batch(payload: &[u8]) -> Result<Batch, WireError> {
    let batch: BatchIn = serde_json::from_slice(payload)?;
    let messages = batch
        .messages
        .into_iter()
        .map(|m| {
            Ok(StoredMessage {
                id: m.id,
                kind: kind_of(m.kind)?,
                chat_id: Arc::from(m.chat_id),
                seq: m.seq,
                from_uid: m.from_uid,
                to_uid: m.to_uid,
                msg_id: m.msg_id.map(String::into_boxed_str),
                msg_type: m.msg_type.into_boxed_str(),
                body: m.body,
                ts: m.ts,
                shop_id: m.shop_id,
                agent_uid: m.agent_uid,
            })
        })
        .collect::<Result<Vec<_>, WireError>>()?;
    Ok(Batch { node: batch.node, messages })
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A stored message of `chat_id` at `seq` (for the cluster module's tests).
    pub(crate) fn message(chat_id: &str, seq: i64) -> StoredMessage {
        StoredMessage {
            id: seq * 10,
            kind: Kind::Group,
            chat_id: Arc::from(chat_id),
            seq,
            from_uid: 7,
            to_uid: None,
            msg_id: Some(format!("m{seq}").into_boxed_str()),
            msg_type: "text".into(),
            body: RawValue::from_string(format!("{{\"text\":\"n\\u00e9 {seq}\",\"n\":[1, 2]}}")).unwrap(),
            ts: 1_700_000_000_000 + seq,
            shop_id: None,
            agent_uid: Some(3),
        }
    }

    #[test]
    fn a_batch_comes_back_as_it_went_with_the_body_untouched() {
        let sent =
            vec![message("g_1", 1), StoredMessage { kind: Kind::Service, shop_id: Some(9), ..message("s_1", 4) }];
        let parts = encode_batch("node \"a\"", &sent).unwrap();
        assert_eq!(parts.len(), 1, "one NATS message per batch");
        let got = decode_batch(&parts[0]).unwrap();
        assert_eq!(got.node, "node \"a\"");
        assert_eq!(format!("{:?}", got.messages), format!("{sent:?}"));
        assert_eq!(got.messages[0].body.get(), sent[0].body.get(), "raw body byte for byte");
    }

    #[test]
    fn a_large_batch_is_split_in_order_under_the_payload_limit() {
        let big = format!("\"{}\"", "x".repeat(60_000));
        let sent: Vec<StoredMessage> = (1..=40)
            .map(|seq| StoredMessage { body: RawValue::from_string(big.clone()).unwrap(), ..message("g_1", seq) })
            .collect();
        let parts = encode_batch("a", &sent).unwrap();
        assert!(parts.len() > 1, "{} parts", parts.len());
        let mut seqs = Vec::new();
        for part in &parts {
            assert!(part.len() <= MAX_PAYLOAD, "{}", part.len());
            seqs.extend(decode_batch(part).unwrap().messages.iter().map(|m| m.seq));
        }
        assert_eq!(seqs, (1..=40).collect::<Vec<_>>());
        assert!(encode_batch("a", &[]).unwrap().is_empty(), "nothing to publish");
    }

    #[test]
    fn garbage_and_unknown_kinds_are_refused() {
        assert!(decode_batch(b"{\"node\":\"a\"").is_err());
        let text = String::from_utf8(encode_batch("a", &[message("g", 1)]).unwrap().remove(0)).unwrap();
        let bad = text.replace("\"kind\":2", "\"kind\":9");
        assert!(matches!(decode_batch(bad.as_bytes()), Err(WireError::Kind(9))), "{bad}");
    }
}
