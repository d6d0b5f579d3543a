//! Conversation ids of the contract: `0_system`, `1_<a>_<b>` (a < b), `2_<uid>_<yymmddHHMMSS>`
//! (plus `_N` for a second room in the same second), `3_<shop_id>_<customer_uid>`.

use crate::domain::Kind;

pub const SYSTEM: &str = "0_system";

pub fn single(a: u64, b: u64) -> String {
    format!("1_{}_{}", a.min(b), a.max(b))
}

pub fn service(shop_id: u64, customer_uid: u64) -> String {
    format!("3_{shop_id}_{customer_uid}")
}

/// A chat id taken apart.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChatId {
    System,
    Single(u64, u64),
    Group,
    Service { shop_id: u64, customer_uid: u64 },
}

pub fn parse(chat_id: &str) -> Option<ChatId> {
    let (kind, rest) = chat_id.split_once('_')?;
    match kind {
        "0" if rest == "system" => Some(ChatId::System),
        "1" => {
            let (a, b) = two_numbers(rest)?;
            (a < b).then_some(ChatId::Single(a, b))
        }
        "2" if !rest.is_empty() && rest.bytes().all(|c| c.is_ascii_digit() || c == b'_') => Some(ChatId::Group),
        "3" => two_numbers(rest).map(|(shop_id, customer_uid)| ChatId::Service { shop_id, customer_uid }),
        _ => None,
    }
}

pub fn kind_of(chat_id: &str) -> Option<Kind> {
    match chat_id.as_bytes().first()? {
        b'0' => Some(Kind::System),
        b'1' => Some(Kind::Single),
        b'2' => Some(Kind::Group),
        b'3' => Some(Kind::Service),
        _ => None,
    }
}

fn two_numbers(text: &str) -> Option<(u64, u64)> {
    let (a, b) = text.split_once('_')?;
    Some((a.parse().ok()?, b.parse().ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn single_ids_put_the_smaller_uid_first() {
        assert_eq!(single(7, 3), "1_3_7");
        assert_eq!(parse("1_3_7"), Some(ChatId::Single(3, 7)));
        assert_eq!(parse("1_7_3"), None);
    }

    #[test]
    fn parses_every_kind_and_rejects_junk() {
        assert_eq!(parse("0_system"), Some(ChatId::System));
        assert_eq!(parse("2_1_221227173250"), Some(ChatId::Group));
        assert_eq!(parse("2_1_221227173250_2"), Some(ChatId::Group));
        assert_eq!(parse("3_2_7"), Some(ChatId::Service { shop_id: 2, customer_uid: 7 }));
        for junk in ["", "x", "1_a_b", "2_", "3_1", "9_1_2", "0_other", "2_1_x"] {
            assert_eq!(parse(junk), None, "{junk}");
        }
    }
}
