//! Accounts: register, login, logout, me.

use rusqlite::{ErrorCode, params};
use serde_json::json;

use super::envelope::{ApiError, ApiResult};
use super::params::Params;
use crate::app::App;
use crate::store::{self, StoreError};

fn valid_username(name: &str) -> bool {
    (3..=32).contains(&name.len()) && name.bytes().all(|c| c.is_ascii_alphanumeric() || matches!(c, b'_' | b'.' | b'-'))
}

fn valid_password(password: &str) -> bool {
    (6..=128).contains(&password.chars().count())
}

pub async fn register(app: &App, params: Params) -> ApiResult {
    let username = params.require("username")?.to_string();
    let password = params.require("password")?.to_string();
    if !valid_username(&username) {
        return Err(ApiError::bad_request("username must be 3-32 characters of A-Z a-z 0-9 _ . -"));
    }
    if !valid_password(&password) {
        return Err(ApiError::bad_request("password must be 6-128 characters"));
    }
    let hash = app.auth.hash_password(password).await?.ok_or_else(|| ApiError::new(500, "cannot hash the password"))?;
    let name = username.clone();
    let shared_mark = app.directory.unread.shared_mark();
    let created = app
        .store
        .write(move |conn| {
            conn.execute(
                "INSERT INTO users (username, password_hash, created_at) VALUES (?1, ?2, ?3)",
                params![name, hash, crate::now_ms()],
            )?;
            let uid = conn.last_insert_rowid() as u64;
            // Broadcasts from before registration are not for this user.
            conn.execute(
                "INSERT INTO participants (uid, chat_id, read_seq) SELECT ?1, chat_id, last_seq FROM conversations WHERE chat_id = ?2",
                params![uid, crate::chat_id::SYSTEM],
            )?;
            Ok(uid)
        })
        .await;
    let uid = match created {
        Ok(uid) => uid,
        Err(StoreError::Sqlite(rusqlite::Error::SqliteFailure(e, _))) if e.code == ErrorCode::ConstraintViolation => {
            return Err(ApiError::new(409, format!("username {username} is taken")));
        }
        Err(StoreError::Refused(text)) if text.contains("UNIQUE") => {
            return Err(ApiError::new(409, format!("username {username} is taken")));
        }
        Err(e) => return Err(e.into()),
    };
    app.directory.unread.registered(uid, shared_mark);
    app.directory.add_user(uid, &username, 0);
    let (token, expires_in) = app.auth.issue(uid, &username, 0);
    Ok(json!({"uid": uid, "username": username, "access_token": token, "expires_in": expires_in}))
}

pub async fn login(app: &App, params: Params) -> ApiResult {
    let username = params.require("username")?.to_string();
    let password = params.require("password")?.to_string();
    let lookup = username.clone();
    let user = app.store.read(move |conn| store::queries::user_by_name(conn, &lookup)).await?;
    let hash = user.as_ref().map(|u| u.password_hash.clone());
    if !app.auth.check_password(password, hash).await? {
        return Err(ApiError::unauthorized("wrong username or password"));
    }
    let Some(user) = user else { return Err(ApiError::unauthorized("wrong username or password")) };
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
    let uid = claims.uid;
    let token_gen = app
        .store
        .write(move |conn| {
            Ok(conn.query_row(
                "UPDATE users SET token_gen = token_gen + 1 WHERE uid = ?1 RETURNING token_gen",
                [uid],
                |r| r.get::<_, u64>(0),
            )?)
        })
        .await?;
    app.directory.set_token_gen(uid, token_gen);
    Ok(json!({}))
}

pub async fn me(app: &App, params: Params) -> ApiResult {
    let claims = params.user(app)?;
    let uid = claims.uid;
    let user = app
        .store
        .read(move |conn| store::queries::user_by_uid(conn, uid))
        .await?
        .ok_or_else(|| ApiError::unauthorized("no such user"))?;
    Ok(json!({"uid": user.uid, "username": user.username, "role": user.role}))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn usernames_follow_the_contract() {
        for good in ["abc", "a.b-c_d", "A1234567890123456789012345678901"] {
            assert!(valid_username(good), "{good}");
        }
        for bad in ["ab", "a b", "ü-name", "x/y", "A12345678901234567890123456789012"] {
            assert!(!valid_username(bad), "{bad}");
        }
        assert!(valid_password("123456"));
        assert!(!valid_password("12345"));
    }
}
