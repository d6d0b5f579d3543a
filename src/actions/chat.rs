//! The chat actions: single_chat, group_chat, service_chat. Each checks who may send what to
//! whom and hands the message to the store; the writer acks and delivers it.

use std::sync::Arc;

use serde_json::value::RawValue;

use super::{ClientFrame, Ctx, Refusal, Step, msg_check};
use crate::chat_id;
use crate::fanout::Origin;
use crate::service;
use crate::store::{Kind, NewMessage};
use crate::ws::inflight::Unacked;

/// Longest client `msg_id` kept for deduplication.
const MAX_MSG_ID: usize = 64;

/// The parts of a message every chat kind shares, checked.
struct Content {
    msg_id: Option<Box<str>>,
    msg_type: Box<str>,
    body: Box<RawValue>,
}

fn content(frame: &ClientFrame<'_>) -> Result<Content, Refusal> {
    // The old service's clients send "msg_id":"" on every frame: that is no id, not a key.
    let msg_id = frame.msg_id.as_deref().filter(|id| !id.is_empty());
    if msg_id.is_some_and(|id| id.chars().count() > MAX_MSG_ID) {
        return Err(Refusal::new(400, format!("msg_id is longer than {MAX_MSG_ID} characters")));
    }
    let msg_type = frame.msg_type.as_deref().unwrap_or("text");
    if msg_type.is_empty()
        || msg_type.len() > 32
        || !msg_type.bytes().all(|c| c.is_ascii_alphanumeric() || c == b'_' || c == b'-')
    {
        return Err(Refusal::new(400, "msg_type must be 1-32 letters, digits, _ or -"));
    }
    let msg = frame.msg.ok_or_else(|| Refusal::new(400, "msg is required"))?;
    let raw = msg.get();
    // Text is a non-empty string; every other msg_type carries an object.
    if msg_type == "text" {
        if !raw.starts_with('"') {
            return Err(Refusal::new(400, "msg must be a string for msg_type text"));
        }
        if raw == "\"\"" {
            return Err(Refusal::new(400, "empty text"));
        }
    } else if !raw.starts_with('{') {
        return Err(Refusal::new(400, format!("msg must be a JSON object for msg_type {msg_type}")));
    }
    // Before the ack: what is acked must come back unchanged from history too.
    msg_check::check(raw).map_err(|e| Refusal::new(400, format!("msg cannot be stored as sent: {e}")))?;
    Ok(Content { msg_id: msg_id.map(Into::into), msg_type: msg_type.into(), body: msg.to_owned() })
}

fn new_message(ctx: &Ctx<'_>, kind: Kind, chat_id: String, to_uid: Option<u64>, content: Content) -> NewMessage {
    NewMessage {
        kind,
        chat_id: Arc::from(chat_id),
        from_uid: ctx.uid,
        to_uid,
        msg_id: content.msg_id,
        msg_type: content.msg_type,
        body: content.body,
        service: None,
        ticket: Origin::Connection(Unacked::new(ctx.conn.clone())).ticket(),
    }
}

pub fn single(ctx: &Ctx<'_>, frame: &ClientFrame<'_>) -> Result<Step, Refusal> {
    let content = content(frame)?;
    let to = frame.to_uid.ok_or_else(|| Refusal::new(400, "to_uid is required"))?;
    if to == ctx.uid {
        return Err(Refusal::new(400, "cannot send a message to yourself"));
    }
    if !ctx.app.directory.user_exists(to) {
        return Err(Refusal::new(404, format!("unknown user: {to}")));
    }
    Ok(Step::Store(new_message(ctx, Kind::Single, chat_id::single(ctx.uid, to), Some(to), content)))
}

pub fn group(ctx: &Ctx<'_>, frame: &ClientFrame<'_>) -> Result<Step, Refusal> {
    let content = content(frame)?;
    let chat_id = frame.chat_id.as_deref().ok_or_else(|| Refusal::new(400, "chat_id is required"))?;
    if !ctx.app.directory.room_exists(chat_id) {
        return Err(Refusal::new(404, format!("unknown room: {chat_id}")));
    }
    if !ctx.app.directory.is_member(chat_id, ctx.uid) {
        return Err(Refusal::new(403, format!("not a member of {chat_id}")));
    }
    Ok(Step::Store(new_message(ctx, Kind::Group, chat_id.to_string(), None, content)))
}

pub fn service(ctx: &Ctx<'_>, frame: &ClientFrame<'_>) -> Result<Step, Refusal> {
    let content = content(frame)?;
    let routed = service::route(ctx.app, ctx.uid, frame.shop_id, frame.chat_id.as_deref(), frame.to_uid)?;
    let mut message = new_message(ctx, Kind::Service, routed.chat_id, routed.to_uid, content);
    message.service = Some(routed.route);
    Ok(Step::Store(message))
}
