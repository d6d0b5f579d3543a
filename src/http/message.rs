//! Messages over HTTP: system broadcast, history, conversation list.

use std::sync::Arc;

use serde_json::value::RawValue;
use serde_json::{Value, json};
use tokio::sync::oneshot;

use super::envelope::{ApiError, ApiResult};
use super::params::Params;
use crate::app::App;
use crate::chat_id;
use crate::fanout::Origin;
use crate::frames;
use crate::read_through::ReadThrough;
use crate::rules::reader::{self, NotReadable};
use crate::store::{Kind, NewMessage, StoredMessage};

/// `POST /message/sendPublicMessage`: an admin's broadcast to everyone.
pub async fn broadcast(app: &App, params: Params) -> ApiResult {
    let from_uid = admin_uid(app, &params).await?;
    let text = params.get("data").unwrap_or("");
    if text.trim().is_empty() {
        return Err(ApiError::bad_request("`data` (the text to broadcast) is required"));
    }
    let body = RawValue::from_string(Value::String(text.to_string()).to_string())
        .map_err(|_| ApiError::bad_request("`data` is not valid text"))?;
    let (reply, accepted) = oneshot::channel();
    app.store
        .submit(NewMessage {
            kind: Kind::System,
            chat_id: Arc::from(chat_id::SYSTEM),
            from_uid,
            to_uid: None,
            msg_id: None,
            msg_type: "text".into(),
            body,
            service: None,
            ticket: Origin::Http(reply).ticket(),
        })
        .await?;
    let accepted = accepted.await.map_err(|_| ApiError::new(503, "the server is shutting down"))??;
    let mut data = json!({"id": accepted.id, "seq": accepted.seq, "delivered": accepted.delivered});
    if app.cluster.is_some() {
        // Each node delivers to its own connections: `delivered` counts this node's.
        data["delivered_scope"] = json!("node");
    }
    Ok(data)
}

/// The uid behind an admin credential (0 for the `--admin-token` secret), or 401/403.
pub(super) async fn admin_uid(app: &App, params: &Params) -> Result<u64, ApiError> {
    if params.bearer().is_some_and(|bearer| app.auth.is_admin_token(bearer)) {
        return Ok(0);
    }
    // The admin secret anywhere else is only an invalid user token (401).
    let token = params.token().ok_or_else(|| ApiError::unauthorized("an admin credential is required"))?;
    let claims = app
        .authenticate(token)
        .ok_or_else(|| ApiError::unauthorized("the access token is invalid, expired or revoked"))?;
    let uid = claims.uid;
    // The role is read fresh: `imd user role` changes it in the database directly.
    let user = app.store.user_by_uid(uid).await?;
    match user {
        Some(user) if user.role == "admin" => Ok(uid),
        _ => Err(ApiError::forbidden("only admins may broadcast")),
    }
}

/// Whether `uid` may read the conversation (`rules::reader`); 404 for one that cannot exist.
async fn check_reader(app: &App, uid: u64, chat_id: &str) -> Result<(), ApiError> {
    if reader::may_read(&*app.directory, uid, chat_id).is_err() {
        // Cluster mode: what the refusal rests on may have changed on another node.
        app.read_through.confirm_all(&ReadThrough::reader_facts(uid, chat_id)).await;
    }
    reader::may_read(&*app.directory, uid, chat_id).map_err(|refused| match refused {
        NotReadable::Missing(why) => ApiError::not_found(why),
        NotReadable::Forbidden(why) => ApiError::forbidden(why),
    })
}

/// A stored message in the shape of its live frame.
fn message_json(app: &App, message: &StoredMessage) -> Value {
    let name = app.directory.username(message.from_uid);
    frames::message_json(message, name.as_deref().unwrap_or("system"))
}

pub async fn history(app: &App, params: Params) -> ApiResult {
    let claims = params.user(app)?;
    let chat_id = params.require("chat_id")?.to_string();
    check_reader(app, claims.uid, &chat_id).await?;
    let before = params.number("before")?.map(|b| b as i64);
    let limit = params.number("limit")?.unwrap_or(50);
    if !(1..=200).contains(&limit) {
        return Err(ApiError::bad_request("`limit` must be 1-200"));
    }
    let id = chat_id.clone();
    // In a room whose history is not shared, a member sees only what came after their join.
    let from_join = app.directory.room_policy(&chat_id).history_from_join;
    let uid = claims.uid;
    let (page, has_more) = app.store.history_page(id, uid, from_join, before, limit as i64).await?;
    let messages: Vec<Value> = page.iter().map(|m| message_json(app, m)).collect();
    Ok(json!({"chat_id": chat_id, "messages": messages, "has_more": has_more}))
}

/// Conversations per `/message/conversations` page when `limit` is not given, and at most.
const CONVERSATIONS_DEFAULT: u64 = 100;
const CONVERSATIONS_MAX: u64 = 500;

pub async fn conversations(app: &App, params: Params) -> ApiResult {
    let claims = params.user(app)?;
    let uid = claims.uid;
    let limit = params.number("limit")?.unwrap_or(CONVERSATIONS_DEFAULT);
    if !(1..=CONVERSATIONS_MAX).contains(&limit) {
        return Err(ApiError::bad_request(format!("`limit` must be 1-{CONVERSATIONS_MAX}")));
    }
    let offset = usize::try_from(params.number("offset")?.unwrap_or(0)).unwrap_or(usize::MAX);
    let (rows, has_more) = app.store.conversations_of(uid, offset, limit as usize).await?;
    let list: Vec<Value> = rows
        .iter()
        .map(|row| {
            json!({
                "chat_id": row.chat_id,
                "chat_type": row.kind,
                "last_seq": row.last_seq,
                "read_seq": row.read_seq,
                "unread": (row.last_seq - row.read_seq).max(0),
                "name": row.name,
                "last": row.last.as_ref().map(|m| message_json(app, m)),
            })
        })
        .collect();
    Ok(json!({"conversations": list, "has_more": has_more}))
}
