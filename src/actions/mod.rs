//! Client actions, one file per action (as tokio's mini-redis `cmd/`): a frame is read once
//! into a `ClientFrame`, named as a typed `Command` (old names included), which takes its
//! fields, checks them and is applied to a `Ctx`: reply at once, store a message, or reply
//! once a change is committed.

mod ctx;
mod frame;
mod group_chat;
mod join_group;
mod leave_group;
mod ping;
mod read;
mod received;
mod service_chat;
mod single_chat;
mod unknown;

use tokio_tungstenite::tungstenite::Utf8Bytes;

pub use ctx::{Ctx, Refusal, Step, not_stored};
pub use frame::ClientFrame;
use group_chat::GroupChat;
use join_group::JoinGroup;
use leave_group::LeaveGroup;
use ping::Ping;
use read::Read;
use received::Received;
use service_chat::ServiceChat;
use single_chat::SingleChat;
use unknown::Unknown;

use crate::frames;
use crate::store::Kind;

/// A client frame as the command it names, its fields taken (borrowed from the frame).
pub enum Command<'f> {
    SingleChat(SingleChat),
    GroupChat(GroupChat<'f>),
    ServiceChat(ServiceChat<'f>),
    JoinGroup(JoinGroup<'f>),
    LeaveGroup(LeaveGroup<'f>),
    Read(Read<'f>),
    Received(Received<'f>),
    Ping(Ping),
    Unknown(Unknown<'f>),
}

impl<'f> Command<'f> {
    /// Names the command, checks a given `chat_type` against the one it implies, then lets
    /// the command take its fields. The old service's names map onto the same commands.
    pub fn from_frame(frame: &'f ClientFrame<'_>) -> Result<Command<'f>, Refusal> {
        let action = &*frame.action;
        let implied = match action {
            "single_chat" => Kind::Single,
            "group_chat" | "join_group" | "leave_group" | "exit_group" => Kind::Group,
            "service_chat" | "service_user_chat" | "service_review_chat" => Kind::Service,
            "read" => return Read::parse(frame).map(Command::Read),
            "received" => return Received::parse(frame).map(Command::Received),
            "ping" => return Ok(Command::Ping(Ping)),
            _ => return Ok(Command::Unknown(Unknown::new(action))),
        };
        if let Some(given) = frame.chat_type
            && given != implied as u64
        {
            return Err(Refusal::new(400, format!("chat_type {given} does not match action {action}")));
        }
        match action {
            "single_chat" => SingleChat::parse(frame).map(Command::SingleChat),
            "group_chat" => GroupChat::parse(frame).map(Command::GroupChat),
            "join_group" => JoinGroup::parse(frame).map(Command::JoinGroup),
            "leave_group" | "exit_group" => LeaveGroup::parse(frame).map(Command::LeaveGroup),
            _ => ServiceChat::parse(frame).map(Command::ServiceChat),
        }
    }

    pub fn apply(self, ctx: &Ctx<'_>) -> Result<Step, Refusal> {
        match self {
            Command::SingleChat(command) => command.apply(ctx),
            Command::GroupChat(command) => command.apply(ctx),
            Command::ServiceChat(command) => command.apply(ctx),
            Command::JoinGroup(command) => command.apply(ctx),
            Command::LeaveGroup(command) => command.apply(ctx),
            Command::Read(command) => command.apply(ctx),
            Command::Received(command) => command.apply(ctx),
            Command::Ping(command) => Ok(command.apply()),
            Command::Unknown(command) => Err(command.apply()),
        }
    }
}

/// Whether a refusal may still be checked against the store (`Step::Recheck`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pass {
    First,
    /// After the recheck: refusals stand.
    Again,
}

/// Handles one text frame. Every outcome, refusals included, is a step with a reply; a
/// refusal that may rest on a stale directory (cluster mode) first becomes a recheck.
pub fn handle(ctx: &Ctx<'_>, text: &str, pass: Pass) -> Step {
    let frame: ClientFrame<'_> = match serde_json::from_str(text) {
        Ok(frame) => frame,
        Err(e) => return Step::Reply(refuse(ctx, 400, &format!("bad frame: {e}"), frame::msg_id_of(text).as_deref())),
    };
    match Command::from_frame(&frame).and_then(|command| command.apply(ctx)) {
        Ok(step) => step,
        Err(Refusal { unless: Some(fact), .. }) if pass == Pass::First && ctx.read_through.active() => {
            let read_through = ctx.read_through.clone();
            Step::Recheck(Box::pin(async move {
                read_through.confirm(&fact).await;
            }))
        }
        Err(refusal) => Step::Reply(refuse(ctx, refusal.code, &refusal.message, frame.msg_id.as_deref())),
    }
}

fn refuse(ctx: &Ctx<'_>, code: u16, message: &str, msg_id: Option<&str>) -> Utf8Bytes {
    ctx.metrics.error(code);
    frames::error(code, message, msg_id)
}

/// An error frame for `text`, carrying its msg_id if it has one (for refusals made before a
/// frame is handled: rate limit, expired token).
pub fn refusal(text: &str, code: u16, message: &str) -> Utf8Bytes {
    frames::error(code, message, frame::msg_id_of(text).as_deref())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn command(text: &str) -> Result<&'static str, (u16, String)> {
        let frame: ClientFrame = serde_json::from_str(text).unwrap();
        let name = match Command::from_frame(&frame).map_err(|r| (r.code, r.message))? {
            Command::SingleChat(_) => "single_chat",
            Command::GroupChat(_) => "group_chat",
            Command::ServiceChat(_) => "service_chat",
            Command::JoinGroup(_) => "join_group",
            Command::LeaveGroup(_) => "leave_group",
            Command::Read(_) => "read",
            Command::Received(_) => "received",
            Command::Ping(_) => "ping",
            Command::Unknown(_) => "unknown",
        };
        Ok(name)
    }

    #[test]
    fn old_names_are_the_same_commands() {
        assert_eq!(command(r#"{"action":"exit_group","chat_id":"2_1_1"}"#), Ok("leave_group"));
        for old in ["service_user_chat", "service_review_chat"] {
            assert_eq!(command(&format!(r#"{{"action":"{old}","shop_id":1,"msg":"x"}}"#)), Ok("service_chat"));
        }
        assert_eq!(command(r#"{"action":"ping"}"#), Ok("ping"));
        assert_eq!(command(r#"{"action":"nope"}"#), Ok("unknown"));
    }

    #[test]
    fn chat_type_must_agree_and_is_checked_before_the_fields() {
        assert_eq!(command(r#"{"action":"single_chat","chat_type":"1","to_uid":2,"msg":"x"}"#), Ok("single_chat"));
        assert_eq!(
            command(r#"{"action":"exit_group","chat_type":1}"#),
            Err((400, "chat_type 1 does not match action exit_group".into()))
        );
        // read, received and ping imply no kind: any chat_type goes.
        assert_eq!(command(r#"{"action":"read","chat_type":9,"chat_id":"1_1_2","seq":1}"#), Ok("read"));
    }

    #[test]
    fn each_command_takes_its_fields_in_the_order_clients_see_errors() {
        assert_eq!(command(r#"{"action":"single_chat","msg":"x"}"#), Err((400, "to_uid is required".into())));
        assert_eq!(command(r#"{"action":"single_chat","to_uid":2}"#), Err((400, "msg is required".into())));
        assert_eq!(
            command(r#"{"action":"group_chat","msg":"x","chat_id":0}"#),
            Err((400, "chat_id is required".into()))
        );
        assert_eq!(command(r#"{"action":"read","seq":1}"#), Err((400, "chat_id is required".into())));
        assert_eq!(command(r#"{"action":"received","chat_id":"1_1_2"}"#), Err((400, "seq is required".into())));
        assert_eq!(
            command(r#"{"action":"read","chat_id":"1_1_2","seq":18446744073709551615}"#),
            Err((400, "seq is too large".into()))
        );
    }
}
