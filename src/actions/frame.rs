//! A client frame, read into a typed struct straight from the text: no JSON tree is built.
//! Each command takes the fields it needs from it (`parse` in each action's file).

use std::borrow::Cow;
use std::fmt;

use serde::Deserialize;
use serde::de::{self, Deserializer, Visitor};
use serde_json::value::RawValue;

use super::Refusal;
use crate::rules::message::{self, Content};

/// Every field any action reads. Unknown fields (such as a client's `from_uid`) are ignored:
/// identity comes from the token.
#[derive(Debug, Deserialize)]
pub struct ClientFrame<'a> {
    #[serde(borrow)]
    pub action: Cow<'a, str>,
    #[serde(default, deserialize_with = "number")]
    pub chat_type: Option<u64>,
    #[serde(default, borrow)]
    pub msg_type: Option<Cow<'a, str>>,
    #[serde(default, borrow, deserialize_with = "text_or_number")]
    pub msg_id: Option<Cow<'a, str>>,
    #[serde(default, deserialize_with = "number")]
    pub to_uid: Option<u64>,
    #[serde(default, deserialize_with = "number")]
    pub shop_id: Option<u64>,
    #[serde(default, borrow, deserialize_with = "conversation")]
    pub chat_id: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    pub msg: Option<&'a RawValue>,
    #[serde(default, deserialize_with = "number")]
    pub seq: Option<u64>,
}

impl ClientFrame<'_> {
    /// The conversation named, which the action requires.
    pub fn require_chat_id(&self) -> Result<&str, Refusal> {
        self.chat_id.as_deref().ok_or_else(|| Refusal::new(400, "chat_id is required"))
    }

    /// The conversation and seq of `read` and `received`, both required.
    pub fn position(&self) -> Result<(&str, i64), Refusal> {
        let chat_id = self.require_chat_id()?;
        let seq = self.seq.ok_or_else(|| Refusal::new(400, "seq is required"))?;
        let seq = i64::try_from(seq).map_err(|_| Refusal::new(400, "seq is too large"))?;
        Ok((chat_id, seq))
    }

    /// The message a chat action carries, checked (`rules::message`).
    pub fn content(&self) -> Result<Content, Refusal> {
        message::content(self.msg_id.as_deref(), self.msg_type.as_deref(), self.msg).map_err(Refusal::invalid)
    }
}

/// Reads the `msg_id` of a frame that did not parse, so that its error can carry it.
pub fn msg_id_of(text: &str) -> Option<String> {
    #[derive(Deserialize)]
    struct JustId<'a> {
        #[serde(default, borrow, deserialize_with = "text_or_number")]
        msg_id: Option<Cow<'a, str>>,
    }
    serde_json::from_str::<JustId>(text).ok().and_then(|f| f.msg_id).map(Cow::into_owned)
}

/// A string, or a whole number read as its decimal string (the old PHP service's clients send
/// `"msg_id":12345`); null counts as absent. With `empty_is_none`, `""` and `0` count as absent
/// too (those clients send `"chat_id":0` or `""` when there is no conversation).
struct TextOrNumber {
    empty_is_none: bool,
}

impl<'de> Visitor<'de> for TextOrNumber {
    type Value = Option<Cow<'de, str>>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a string or a whole number")
    }
    fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Self::Value, E> {
        Ok((!(self.empty_is_none && v.is_empty())).then_some(Cow::Borrowed(v)))
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
        Ok((!(self.empty_is_none && v.is_empty())).then(|| Cow::Owned(v.to_owned())))
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Self::Value, E> {
        Ok((!(self.empty_is_none && v == 0)).then(|| Cow::Owned(v.to_string())))
    }
    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Self::Value, E> {
        Ok((!(self.empty_is_none && v == 0)).then(|| Cow::Owned(v.to_string())))
    }
    fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
        Ok(None)
    }
    fn visit_none<E: de::Error>(self) -> Result<Self::Value, E> {
        Ok(None)
    }
}

fn text_or_number<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<Cow<'de, str>>, D::Error> {
    deserializer.deserialize_any(TextOrNumber { empty_is_none: false })
}

/// A `chat_id`: as `text_or_number`, where `0` and `""` mean no conversation given.
fn conversation<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<Cow<'de, str>>, D::Error> {
    deserializer.deserialize_any(TextOrNumber { empty_is_none: true })
}

/// A non-negative whole number, given as a JSON number or a string of digits (the old PHP
/// service's clients send both); null counts as absent.
fn number<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<u64>, D::Error> {
    struct NumberVisitor;

    impl<'de> Visitor<'de> for NumberVisitor {
        type Value = Option<u64>;

        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            f.write_str("a non-negative whole number")
        }
        fn visit_u64<E: de::Error>(self, v: u64) -> Result<Self::Value, E> {
            Ok(Some(v))
        }
        fn visit_i64<E: de::Error>(self, v: i64) -> Result<Self::Value, E> {
            u64::try_from(v).map(Some).map_err(|_| E::custom("expected a non-negative whole number"))
        }
        fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
            v.trim().parse().map(Some).map_err(|_| E::custom(format!("expected a whole number, got {v:?}")))
        }
        fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
            Ok(None)
        }
        fn visit_none<E: de::Error>(self) -> Result<Self::Value, E> {
            Ok(None)
        }
    }

    deserializer.deserialize_any(NumberVisitor)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_contract_frame_and_ignores_claimed_identity() {
        let text = r#"{"action":"single_chat","chat_type":1,"msg_type":"text","msg_id":"c-1","to_uid":2,"msg":"hello","from_uid":99}"#;
        let frame: ClientFrame = serde_json::from_str(text).unwrap();
        assert_eq!(frame.action, "single_chat");
        assert_eq!(frame.to_uid, Some(2));
        assert_eq!(frame.msg.unwrap().get(), "\"hello\"");
    }

    #[test]
    fn numbers_may_be_strings_but_not_other_types() {
        let frame: ClientFrame = serde_json::from_str(r#"{"action":"x","to_uid":"12","shop_id":null}"#).unwrap();
        assert_eq!((frame.to_uid, frame.shop_id), (Some(12), None));
        assert!(serde_json::from_str::<ClientFrame>(r#"{"action":"x","to_uid":true}"#).is_err());
        assert!(serde_json::from_str::<ClientFrame>(r#"{"action":"x","to_uid":-1}"#).is_err());
        assert!(serde_json::from_str::<ClientFrame>(r#"{"action":"x","to_uid":"abc"}"#).is_err());
    }

    #[test]
    fn msg_id_is_found_in_frames_that_do_not_parse() {
        assert_eq!(msg_id_of(r#"{"action":5,"msg_id":"m"}"#).as_deref(), Some("m"));
        assert_eq!(msg_id_of(r#"{"action":5,"msg_id":12}"#).as_deref(), Some("12"));
        assert_eq!(msg_id_of(r#"{"action":5,"msg_id":1.5}"#), None);
        assert_eq!(msg_id_of("not json"), None);
    }

    fn ids(text: &str) -> (Option<String>, Option<String>) {
        let frame: ClientFrame = serde_json::from_str(text).unwrap();
        (frame.msg_id.map(Cow::into_owned), frame.chat_id.map(Cow::into_owned))
    }

    #[test]
    fn numeric_msg_ids_are_their_decimal_string() {
        assert_eq!(ids(r#"{"action":"x","msg_id":12345}"#).0.as_deref(), Some("12345"));
        assert_eq!(ids(r#"{"action":"x","msg_id":0}"#).0.as_deref(), Some("0"));
        assert_eq!(ids(r#"{"action":"x","msg_id":-7}"#).0.as_deref(), Some("-7"));
        assert_eq!(ids(r#"{"action":"x","msg_id":"c-1"}"#).0.as_deref(), Some("c-1"));
        assert_eq!(ids(r#"{"action":"x","msg_id":"a\"b"}"#).0.as_deref(), Some("a\"b"));
        assert_eq!(ids(r#"{"action":"x","msg_id":null}"#).0, None);
        for bad in ["1.5", "true", "[1]", "{}"] {
            let text = format!(r#"{{"action":"x","msg_id":{bad}}}"#);
            assert!(serde_json::from_str::<ClientFrame>(&text).is_err(), "{bad}");
        }
    }

    #[test]
    fn chat_id_zero_or_empty_is_no_chat_id() {
        assert_eq!(ids(r#"{"action":"x","chat_id":0}"#).1, None);
        assert_eq!(ids(r#"{"action":"x","chat_id":""}"#).1, None);
        assert_eq!(ids(r#"{"action":"x","chat_id":77}"#).1.as_deref(), Some("77"));
        assert_eq!(ids(r#"{"action":"x","chat_id":"1_1_2"}"#).1.as_deref(), Some("1_1_2"));
        assert!(serde_json::from_str::<ClientFrame>(r#"{"action":"x","chat_id":false}"#).is_err());
    }
}
