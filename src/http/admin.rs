//! Admin endpoints: `POST /admin/user/revoke` ends a user's sessions and tokens.

use serde_json::json;

use super::envelope::{ApiError, ApiResult};
use super::message::admin_uid;
use super::params::Params;
use super::user::revoke;
use crate::app::App;

/// `POST /admin/user/revoke` with `username` or `uid`: every token issued to that user so far
/// stops working and their open sockets close with 4001 "token revoked", as a logout would.
pub async fn revoke_user(app: &App, params: Params) -> ApiResult {
    admin_uid(app, &params).await.map_err(|e| match e.code {
        403 => ApiError::forbidden("only admins may revoke users"),
        _ => e,
    })?;
    let (uid, username) = target(app, &params).await?;
    if !revoke(app, uid, crate::registry::TOKEN_REVOKED).await? {
        return Err(ApiError::not_found(format!("no user with uid {uid}")));
    }
    tracing::info!(uid, username = %username, "tokens revoked by an admin");
    Ok(json!({"uid": uid, "username": username}))
}

/// The user `username` or `uid` names (both: they must name the same one), or 400/404.
async fn target(app: &App, params: &Params) -> Result<(u64, String), ApiError> {
    let uid = params.number("uid")?;
    let Some(name) = params.get("username").filter(|n| !n.is_empty()) else {
        let uid = uid.ok_or_else(|| ApiError::bad_request("`username` or `uid` is required"))?;
        let name = app.directory.username(uid).ok_or_else(|| ApiError::not_found(format!("no user with uid {uid}")))?;
        return Ok((uid, name.to_string()));
    };
    let lookup = name.to_string();
    let user =
        app.store.user_by_name(lookup).await?.ok_or_else(|| ApiError::not_found(format!("no user named {name}")))?;
    if uid.is_some_and(|uid| uid != user.uid) {
        return Err(ApiError::bad_request(format!("`uid` is not the uid of {name}")));
    }
    Ok((user.uid, user.username))
}
