//! Accounts: register, login, logout, me.

use crate::cluster::Invalidation;
use serde_json::json;

use super::envelope::{ApiError, ApiResult};
use super::params::Params;
use crate::app::App;
use crate::passwords;
use crate::read_through::Fact;
use crate::store::StoreError;
use crate::usernames;

pub async fn register(app: &App, params: Params) -> ApiResult {
    let username = params.require("username")?;
    let password = params.require("password")?.to_string();
    let username = usernames::normalise(username).ok_or_else(|| ApiError::bad_request(usernames::RULE))?;
    if !passwords::is_valid(&password) {
        return Err(ApiError::bad_request(passwords::RULE));
    }
    let key = usernames::key(&username);
    // Before hashing: a taken name must not cost a bcrypt run. The UNIQUE index still decides
    // a race between two registrations of one name.
    let taken = app.store.name_taken(key.clone()).await?;
    if taken {
        return Err(ApiError::new(409, format!("username {username} is taken")));
    }
    let hash = app.auth.hash_password(password).await?.ok_or_else(|| ApiError::new(500, "cannot hash the password"))?;
    let name = username.clone();
    let shared_mark = app.directory.unread.shared_mark();
    let created = app.store.create_user(name, key, hash).await;
    let uid = match created {
        Ok(Some(uid)) => uid,
        Ok(None) => {
            return Err(ApiError::new(409, format!("username {username} is taken")));
        }
        Err(StoreError::Conflict(_)) => {
            return Err(ApiError::new(409, format!("username {username} is taken")));
        }
        Err(e) => return Err(e.into()),
    };
    app.directory.unread.registered(uid, shared_mark);
    app.directory.add_user(uid, &username, 0);
    app.invalidate(Invalidation::User { uid }).await;
    let (token, expires_in) = app.auth.issue(uid, &username, 0);
    Ok(json!({"uid": uid, "username": username, "access_token": token, "expires_in": expires_in}))
}

pub async fn login(app: &App, params: Params) -> ApiResult {
    let username = params.require("username")?.to_string();
    let password = params.require("password")?.to_string();
    let (ip, name) = (params.peer, username.clone());
    // Any spelling of the name works (case, NFC, look-alikes): the exact name first, for an old
    // account whose key an older look-alike holds, then the key.
    let user = app.store.user_for_login(username).await?;
    // No length check here: accounts made before the 72-byte limit log in as they always did.
    let hash = user.as_ref().map(|u| u.password_hash.clone());
    if !app.auth.check_password(password, hash).await? || user.is_none() {
        // The name tried, never the password.
        tracing::warn!(ip = ip.map(tracing::field::display), username = %name, "login failed: wrong username or password");
        return Err(ApiError::unauthorized("wrong username or password"));
    }
    let Some(user) = user else { return Err(ApiError::unauthorized("wrong username or password")) };
    // An account `imd user add` made while the daemon ran: the daemon learns it now (nothing
    // known as read: its unread hints start conservative).
    if !app.directory.user_exists(user.uid) {
        app.directory.unread.registered(user.uid, 0);
        app.directory.add_user(user.uid, &user.username, user.token_gen);
    } else {
        // Cluster mode: a logout on another node may have moved the generation on, and the
        // token issued now carries the new one.
        app.directory.set_token_gen(user.uid, user.token_gen);
    }
    let (token, expires_in) = app.auth.issue(user.uid, &user.username, user.token_gen);
    Ok(json!({
        "access_token": token,
        "token_type": "Bearer",
        "expires_in": expires_in,
        "uid": user.uid,
        "username": user.username,
    }))
}

pub async fn logout(app: &App, params: Params) -> ApiResult {
    let claims = params.user(app)?;
    revoke(app, claims.uid, crate::registry::LOGGED_OUT).await?;
    Ok(json!({}))
}

/// Revokes every token issued to `uid` so far and closes their open sockets with 4001 and
/// `reason`; false when there is no such user.
pub(super) async fn revoke(app: &App, uid: u64, reason: &'static str) -> Result<bool, ApiError> {
    let Some(token_gen) = app.store.bump_token_generation(uid).await? else {
        return Ok(false);
    };
    // The generation first: a socket joining the registry meanwhile checks it (`ws::session`).
    app.directory.set_token_gen(uid, token_gen);
    let logged_out = reason == crate::registry::LOGGED_OUT;
    app.invalidate(Invalidation::TokenGeneration { uid, generation: token_gen, logged_out }).await;
    app.registry.close_user(uid, crate::registry::TOKEN_CLOSE, reason);
    Ok(true)
}

pub async fn me(app: &App, params: Params) -> ApiResult {
    let claims = params.user(app)?;
    let uid = claims.uid;
    let user = app.store.user_by_uid(uid).await?.ok_or_else(|| ApiError::unauthorized("no such user"))?;
    Ok(json!({"uid": user.uid, "username": user.username, "role": user.role}))
}

/// `GET /user/lookup`: a user's uid and name, by `username` (any spelling login accepts) or
/// by `uid`, so that a client can start a chat with a name or show a uid as one.
pub async fn lookup(app: &App, params: Params) -> ApiResult {
    params.user(app)?;
    let user = match (params.get("username"), params.number("uid")?) {
        (Some(name), _) if !name.is_empty() => {
            app.store.user_for_login(name.to_string()).await?.map(|u| (u.uid, u.username))
        }
        (_, Some(uid)) => {
            app.read_through.confirm(&Fact::user(uid)).await;
            app.directory.username(uid).map(|name| (uid, name.to_string()))
        }
        _ => return Err(ApiError::bad_request("give `username` or `uid`")),
    };
    let (uid, username) = user.ok_or_else(|| ApiError::not_found("no such user"))?;
    Ok(json!({"uid": uid, "username": username}))
}
