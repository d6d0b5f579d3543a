//! What a valid chat message is: its `msg_id`, `msg_type` and `msg` as a client sends them.

use serde_json::value::RawValue;

use super::msg_check;

/// Longest client `msg_id` kept for deduplication.
pub const MAX_MSG_ID: usize = 64;

/// The parts of a message every chat kind shares, checked and ready to store.
pub struct Content {
    pub msg_id: Option<Box<str>>,
    pub msg_type: Box<str>,
    pub body: Box<RawValue>,
}

/// Checks a message's parts; the error is the text of the client's 400. A missing `msg_type`
/// is `text`.
pub fn content(msg_id: Option<&str>, msg_type: Option<&str>, msg: Option<&RawValue>) -> Result<Content, String> {
    // The old service's clients send "msg_id":"" on every frame: that is no id, not a key.
    let msg_id = msg_id.filter(|id| !id.is_empty());
    if msg_id.is_some_and(|id| id.chars().count() > MAX_MSG_ID) {
        return Err(format!("msg_id is longer than {MAX_MSG_ID} characters"));
    }
    let msg_type = msg_type.unwrap_or("text");
    if !valid_msg_type(msg_type) {
        return Err("msg_type must be 1-32 letters, digits, _ or -".into());
    }
    let msg = msg.ok_or("msg is required")?;
    let raw = msg.get();
    // Text is a non-empty string; every other msg_type carries an object.
    if msg_type == "text" {
        if !raw.starts_with('"') {
            return Err("msg must be a string for msg_type text".into());
        }
        if raw == "\"\"" {
            return Err("empty text".into());
        }
    } else if !raw.starts_with('{') {
        return Err(format!("msg must be a JSON object for msg_type {msg_type}"));
    }
    // Before the ack: what is acked must come back unchanged from history too.
    msg_check::check(raw).map_err(|e| format!("msg cannot be stored as sent: {e}"))?;
    Ok(Content { msg_id: msg_id.map(Into::into), msg_type: msg_type.into(), body: msg.to_owned() })
}

fn valid_msg_type(msg_type: &str) -> bool {
    !msg_type.is_empty()
        && msg_type.len() <= 32
        && msg_type.bytes().all(|c| c.is_ascii_alphanumeric() || c == b'_' || c == b'-')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw(json: &str) -> Box<RawValue> {
        RawValue::from_string(json.to_string()).unwrap()
    }

    fn check(msg_id: Option<&str>, msg_type: Option<&str>, msg: Option<&str>) -> Result<Content, String> {
        let msg = msg.map(raw);
        content(msg_id, msg_type, msg.as_deref())
    }

    #[test]
    fn text_is_the_default_and_is_stored_raw() {
        let content = check(Some("c-1"), None, Some(r#""hi \u00e9""#)).unwrap();
        assert_eq!((content.msg_id.as_deref(), &*content.msg_type), (Some("c-1"), "text"));
        assert_eq!(content.body.get(), r#""hi \u00e9""#);
    }

    #[test]
    fn an_empty_msg_id_is_no_msg_id_and_a_long_one_is_refused() {
        assert_eq!(check(Some(""), None, Some(r#""x""#)).unwrap().msg_id, None);
        assert!(check(Some(&"é".repeat(MAX_MSG_ID)), None, Some(r#""x""#)).is_ok(), "characters, not bytes");
        let long = "a".repeat(MAX_MSG_ID + 1);
        assert_eq!(check(Some(&long), None, Some(r#""x""#)).err().unwrap(), "msg_id is longer than 64 characters");
    }

    #[test]
    fn msg_type_is_a_short_token() {
        assert!(check(None, Some("image_v-2"), Some("{}")).is_ok());
        for bad in ["", "a b", "é", &"a".repeat(33)] {
            assert_eq!(
                check(None, Some(bad), Some("{}")).err().unwrap(),
                "msg_type must be 1-32 letters, digits, _ or -",
                "{bad}"
            );
        }
    }

    #[test]
    fn the_body_matches_the_type() {
        assert_eq!(check(None, None, None).err().unwrap(), "msg is required");
        assert_eq!(check(None, None, Some("{}")).err().unwrap(), "msg must be a string for msg_type text");
        assert_eq!(check(None, None, Some(r#""""#)).err().unwrap(), "empty text");
        assert_eq!(
            check(None, Some("card"), Some(r#""x""#)).err().unwrap(),
            "msg must be a JSON object for msg_type card"
        );
        assert!(check(None, Some("card"), Some(r#"{"a":1}"#)).is_ok());
    }

    #[test]
    fn what_history_could_not_return_is_refused() {
        let error = check(None, None, Some(r#""\ud800""#)).err().unwrap();
        assert!(error.starts_with("msg cannot be stored as sent: "), "{error}");
    }
}
