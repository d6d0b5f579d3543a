//! Invalidations: a node that changed shared state (a user, a room, a shop) tells the
//! others, whose caches reload it from the store; and the login throttle's per-username
//! failures, which every node counts. Serde-tagged JSON on `<prefix>.inval`.

use serde::{Deserialize, Serialize};

/// What changed; the receiver reloads it (the notice carries no state of its own, except
/// where the new value is all there is to know).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Invalidation {
    /// A user was added or changed (name, password).
    User { uid: u64 },
    /// A user's tokens were revoked: those of older generations are void. `logged_out`: by the
    /// user's own logout (their sockets close saying so), else by an admin.
    TokenGeneration {
        uid: u64,
        generation: u64,
        #[serde(default)]
        logged_out: bool,
    },
    /// A room's policy or members changed.
    Room { chat_id: String },
    /// A shop's owner, agents or invitations changed.
    Shop { shop_id: u64 },
    // No handler notice: every committed service message carries the handler the store
    // settled (`StoredMessage::agent_uid`) in the batch every node receives, and each node's
    // sequenced delivery takes it from there, in the conversation's order.
    /// A login (or registration) under the throttle key `username` failed on the publishing
    /// node: the receiver counts it as one of its own (`--login-failures-per-user`).
    LoginFailed { username: String },
    /// A login under `username` succeeded on the publishing node after failures: the
    /// receiver forgets the name's failures, as that node did.
    LoginSucceeded { username: String },
    /// A user's read position in a conversation moved: their connections on the other nodes
    /// get the same `read` frame as those on the node that stored it.
    ReadPosition { uid: u64, chat_id: String, seq: i64 },
}

/// An invalidation with the node that published it.
#[derive(Serialize, Deserialize)]
struct Envelope {
    node: String,
    #[serde(flatten)]
    what: Invalidation,
}

pub fn encode(node: &str, what: &Invalidation) -> Result<Vec<u8>, serde_json::Error> {
    serde_json::to_vec(&Envelope { node: node.to_string(), what: what.clone() })
}

/// The publishing node and the invalidation.
pub fn decode(payload: &[u8]) -> Result<(String, Invalidation), serde_json::Error> {
    let envelope: Envelope = serde_json::from_slice(payload)?;
    Ok((envelope.node, envelope.what))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn invalidations_are_tagged_json_and_come_back() {
        let all = [
            Invalidation::User { uid: 1 },
            Invalidation::TokenGeneration { uid: 2, generation: 5, logged_out: true },
            Invalidation::ReadPosition { uid: 2, chat_id: "1_2_3".into(), seq: 7 },
            Invalidation::Room { chat_id: "g_9".into() },
            Invalidation::Shop { shop_id: 4 },
            Invalidation::LoginFailed { username: "Alice".into() },
            Invalidation::LoginSucceeded { username: "alice".into() },
        ];
        for what in all {
            let payload = encode("n1", &what).unwrap();
            assert_eq!(decode(&payload).unwrap(), ("n1".to_string(), what));
        }
        let revoked = Invalidation::TokenGeneration { uid: 2, generation: 5, logged_out: false };
        let text = String::from_utf8(encode("n1", &revoked).unwrap());
        assert_eq!(
            text.unwrap(),
            r#"{"node":"n1","kind":"token_generation","uid":2,"generation":5,"logged_out":false}"#
        );
        // From a node that does not say why yet: a revocation.
        let old = br#"{"node":"n1","kind":"token_generation","uid":2,"generation":5}"#;
        assert_eq!(decode(old).unwrap(), ("n1".to_string(), revoked));
        assert!(decode(br#"{"node":"n1","kind":"planet","uid":1}"#).is_err());
    }
}
