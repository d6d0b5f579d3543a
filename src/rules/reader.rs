//! Who may read a conversation (history): its two users, a room's members, a service
//! conversation's customer, shop owner and agents; everyone the system conversation.

use crate::chat_id::{self, ChatId};

/// The facts the rule needs, answered by the directory in the daemon.
pub trait Participants {
    fn user_exists(&self, uid: u64) -> bool;
    /// A room's members; None if there is no such room.
    fn is_room_member(&self, chat_id: &str, uid: u64) -> Option<bool>;
    fn shop_owner(&self, shop_id: u64) -> Option<u64>;
    fn is_agent(&self, shop_id: u64, uid: u64) -> bool;
}

/// Why a reader is turned away.
#[derive(Debug, PartialEq, Eq)]
pub enum NotReadable {
    /// No such conversation (404), with the text to say so.
    Missing(String),
    /// It exists, but `uid` is not in it (403).
    Forbidden(String),
}

/// Ok if `uid` may read `chat_id`.
pub fn may_read(facts: &impl Participants, uid: u64, chat_id: &str) -> Result<(), NotReadable> {
    let missing = || NotReadable::Missing(format!("no such conversation: {chat_id}"));
    let allowed = match chat_id::parse(chat_id).ok_or_else(missing)? {
        ChatId::System => true,
        ChatId::Single(a, b) => {
            if !facts.user_exists(a) || !facts.user_exists(b) {
                return Err(missing());
            }
            uid == a || uid == b
        }
        ChatId::Group => {
            facts.is_room_member(chat_id, uid).ok_or_else(|| NotReadable::Missing("no such room".into()))?
        }
        ChatId::Service { shop_id, customer_uid } => {
            let owner = facts.shop_owner(shop_id).ok_or_else(|| NotReadable::Missing("no such shop".into()))?;
            uid == customer_uid || uid == owner || facts.is_agent(shop_id, uid)
        }
    };
    if allowed { Ok(()) } else { Err(NotReadable::Forbidden(format!("not a participant of {chat_id}"))) }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Users 1-5; room `2_1_1` holds 1 and 2; shop 7 is owned by 3 with agent 4.
    struct Facts;

    impl Participants for Facts {
        fn user_exists(&self, uid: u64) -> bool {
            (1..=5).contains(&uid)
        }
        fn is_room_member(&self, chat_id: &str, uid: u64) -> Option<bool> {
            (chat_id == "2_1_1").then_some(uid == 1 || uid == 2)
        }
        fn shop_owner(&self, shop_id: u64) -> Option<u64> {
            (shop_id == 7).then_some(3)
        }
        fn is_agent(&self, shop_id: u64, uid: u64) -> bool {
            shop_id == 7 && uid == 4
        }
    }

    fn forbidden(chat_id: &str) -> Result<(), NotReadable> {
        Err(NotReadable::Forbidden(format!("not a participant of {chat_id}")))
    }

    #[test]
    fn single_conversations_are_read_by_their_two_users() {
        assert_eq!(may_read(&Facts, 1, "1_1_2"), Ok(()));
        assert_eq!(may_read(&Facts, 2, "1_1_2"), Ok(()));
        assert_eq!(may_read(&Facts, 3, "1_1_2"), forbidden("1_1_2"));
        assert_eq!(may_read(&Facts, 1, "1_1_9"), Err(NotReadable::Missing("no such conversation: 1_1_9".into())));
    }

    #[test]
    fn rooms_are_read_by_their_members() {
        assert_eq!(may_read(&Facts, 2, "2_1_1"), Ok(()));
        assert_eq!(may_read(&Facts, 3, "2_1_1"), forbidden("2_1_1"));
        assert_eq!(may_read(&Facts, 1, "2_1_2"), Err(NotReadable::Missing("no such room".into())));
    }

    #[test]
    fn service_conversations_are_read_by_customer_owner_and_agents() {
        for uid in [5, 3, 4] {
            assert_eq!(may_read(&Facts, uid, "3_7_5"), Ok(()), "{uid}");
        }
        assert_eq!(may_read(&Facts, 1, "3_7_5"), forbidden("3_7_5"));
        assert_eq!(may_read(&Facts, 5, "3_8_5"), Err(NotReadable::Missing("no such shop".into())));
    }

    #[test]
    fn everyone_reads_the_system_conversation_and_nobody_junk() {
        assert_eq!(may_read(&Facts, 5, "0_system"), Ok(()));
        assert_eq!(may_read(&Facts, 1, "9_x"), Err(NotReadable::Missing("no such conversation: 9_x".into())));
    }
}
