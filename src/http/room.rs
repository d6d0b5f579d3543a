//! Rooms over HTTP: create, join, leave, members.

use serde_json::{Value, json};

use super::envelope::{ApiError, ApiResult};
use super::params::Params;
use crate::app::App;
use crate::rooms::{self, RoomError};

impl From<RoomError> for ApiError {
    fn from(e: RoomError) -> Self {
        match e {
            RoomError::NoSuchRoom => ApiError::not_found("no such room"),
            RoomError::Store(e) => e.into(),
        }
    }
}

pub async fn create(app: &App, params: Params) -> ApiResult {
    let claims = params.user(app)?;
    let name = params.get("name").map(str::to_string);
    let chat_id = rooms::create(app, claims.uid, name).await?;
    Ok(json!({"chat_id": chat_id}))
}

pub async fn join(app: &App, params: Params) -> ApiResult {
    let claims = params.user(app)?;
    let chat_id = params.require("chat_id")?;
    rooms::join(app, chat_id, claims.uid).await?;
    Ok(json!({"chat_id": chat_id}))
}

pub async fn leave(app: &App, params: Params) -> ApiResult {
    let claims = params.user(app)?;
    let chat_id = params.require("chat_id")?;
    rooms::leave(app, chat_id, claims.uid).await?;
    Ok(json!({"chat_id": chat_id}))
}

pub fn members(app: &App, params: Params) -> ApiResult {
    let claims = params.user(app)?;
    let chat_id = params.require("chat_id")?;
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
                "online": app.registry.is_online(uid),
            })
        })
        .collect()
}
