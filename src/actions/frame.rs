//! A client frame, read into a typed struct straight from the text: no JSON tree is built.

use std::borrow::Cow;
use std::fmt;

use serde::Deserialize;
use serde::de::{self, Deserializer, Visitor};
use serde_json::value::RawValue;

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
    #[serde(default, borrow)]
    pub msg_id: Option<Cow<'a, str>>,
    #[serde(default, deserialize_with = "number")]
    pub to_uid: Option<u64>,
    #[serde(default, deserialize_with = "number")]
    pub shop_id: Option<u64>,
    #[serde(default, borrow)]
    pub chat_id: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    pub msg: Option<&'a RawValue>,
    #[serde(default, deserialize_with = "number")]
    pub seq: Option<u64>,
}

/// Reads the `msg_id` of a frame that did not parse, so that its error can carry it.
pub fn msg_id_of(text: &str) -> Option<String> {
    #[derive(Deserialize)]
    struct JustId {
        msg_id: Option<String>,
    }
    serde_json::from_str::<JustId>(text).ok().and_then(|f| f.msg_id)
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
        assert_eq!(msg_id_of("not json"), None);
    }
}
