//! Rooms over HTTP: create, invite, join, leave, members.

use crate::cluster::Invalidation;
use serde_json::{Value, json};

use super::envelope::{ApiError, ApiResult};
use super::params::Params;
use crate::app::App;
use crate::read_through::Fact;
use crate::rooms::{self, RoomError, RoomPolicy};

impl From<RoomError> for ApiError {
    fn from(e: RoomError) -> Self {
        match e {
            RoomError::NoSuchRoom => ApiError::not_found("no such room"),
            RoomError::NoSuchUser(uid) => ApiError::not_found(format!("no such user: {uid}")),
            RoomError::Forbidden(why) => ApiError::forbidden(why),
            RoomError::Store(e) => e.into(),
        }
    }
}

pub async fn create(app: &App, params: Params) -> ApiResult {
    let claims = params.user(app)?;
    let name = params.get("name").map(str::to_string);
    let policy = policy(&params)?;
    let chat_id = rooms::create(&app.store, &app.directory, claims.uid, name, policy).await?;
    app.invalidate(Invalidation::Room { chat_id: chat_id.to_string() }).await;
    let history = if policy.history_from_join { "joined" } else { "shared" };
    Ok(json!({"chat_id": chat_id, "private": policy.private, "history": history}))
}

/// `private` (1/true/0/false) and `history` (`shared` or `joined`; default `joined` for a
/// private room, `shared` for a public one) of `/room/create`.
fn policy(params: &Params) -> Result<RoomPolicy, ApiError> {
    let private = match params.get("private").map(|v| v.trim().to_ascii_lowercase()).as_deref() {
        None | Some("") | Some("0") | Some("false") => false,
        Some("1") | Some("true") => true,
        Some(_) => return Err(ApiError::bad_request("`private` must be 1, true, 0 or false")),
    };
    let history_from_join = match params.get("history").map(str::trim).filter(|h| !h.is_empty()) {
        None => private,
        Some("joined") => true,
        Some("shared") => false,
        Some(_) => return Err(ApiError::bad_request("`history` must be shared or joined")),
    };
    Ok(RoomPolicy { private, history_from_join })
}

/// `POST /room/invite`: a member lets `uid` join the room (needed for a private room).
pub async fn invite(app: &App, params: Params) -> ApiResult {
    let claims = params.user(app)?;
    let chat_id = params.require("chat_id")?;
    let uid = params.require_number("uid")?;
    rooms::invite(&app.store, &app.directory, &app.read_through, chat_id, claims.uid, uid).await?;
    app.invalidate(Invalidation::Room { chat_id: chat_id.to_string() }).await;
    Ok(json!({"chat_id": chat_id, "uid": uid}))
}

pub async fn join(app: &App, params: Params) -> ApiResult {
    let claims = params.user(app)?;
    let chat_id = params.require("chat_id")?;
    rooms::join(&app.store, &app.directory, &app.read_through, chat_id, claims.uid).await?;
    app.invalidate(Invalidation::Room { chat_id: chat_id.to_string() }).await;
    Ok(json!({"chat_id": chat_id}))
}

pub async fn leave(app: &App, params: Params) -> ApiResult {
    let claims = params.user(app)?;
    let chat_id = params.require("chat_id")?;
    rooms::leave(&app.store, &app.directory, &app.read_through, chat_id, claims.uid).await?;
    app.invalidate(Invalidation::Room { chat_id: chat_id.to_string() }).await;
    Ok(json!({"chat_id": chat_id}))
}

pub async fn members(app: &App, params: Params) -> ApiResult {
    let claims = params.user(app)?;
    let chat_id = params.require("chat_id")?;
    // Cluster mode: the room or the caller's join may come from another node a moment ago.
    app.read_through.confirm(&Fact::Member(chat_id.to_string(), claims.uid)).await;
    let members = app.directory.room_members(chat_id).ok_or_else(|| ApiError::not_found("no such room"))?;
    if !members.contains(&claims.uid) {
        return Err(ApiError::forbidden(format!("not a member of {chat_id}")));
    }
    let mut uids: Vec<u64> = members.iter().copied().collect();
    uids.sort_unstable();
    Ok(json!({"chat_id": chat_id, "members": user_list(app, &uids)}))
}

/// `[{"uid","username","online"}]` for the given users.
pub fn user_list(app: &App, uids: &[u64]) -> Vec<Value> {
    uids.iter()
        .map(|&uid| {
            json!({
                "uid": uid,
                "username": app.directory.username(uid).as_deref().unwrap_or(""),
                "online": app.is_online(uid),
            })
        })
        .collect()
}
