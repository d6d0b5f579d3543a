//! Users: creating one (with the rule that broadcasts from before are not theirs), finding
//! one by any spelling of the name, and token revocation (a generation per user, and a count
//! in `meta` by which a running daemon notices revocations made by another process).

use rusqlite::{Connection, ErrorCode, OptionalExtension, params};

use super::queries::user_by_name;
use super::{SqliteStore, StoreError, StoreResult};
use crate::store::UserRow;
use crate::usernames;

/// The `meta` key that `imd user revoke` counts up, so that a running daemon notices
/// revocations made by another process (see `revocations`).
const REVOCATIONS_KEY: &str = "token_revocations";

impl SqliteStore {
    /// Whether a user holds the name key `key` (`usernames::key`).
    pub async fn name_taken(&self, key: String) -> StoreResult<bool> {
        self.read(move |conn| Ok(name_holder(conn, &key)?.is_some())).await
    }

    /// Creates the user `name` (normalised, with its `key`) with a password `hash`; its uid,
    /// or None when the name key is taken.
    pub async fn create_user(&self, name: String, key: String, hash: String) -> StoreResult<Option<u64>> {
        // The constraint is told apart here, after the job: inside it, an Ok would keep the
        // job's savepoint.
        match self.write(move |conn| insert_user(conn, &name, &key, &hash)).await {
            Ok(uid) => Ok(Some(uid)),
            Err(StoreError::Conflict(_)) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// The user a login names, by any spelling (case, NFC, look-alikes): the exact name first,
    /// for an old account whose key an older look-alike holds, then the key.
    pub async fn user_for_login(&self, name: String) -> StoreResult<Option<UserRow>> {
        self.read(move |conn| {
            let name: String = unicode_normalization::UnicodeNormalization::nfc(name.as_str()).collect();
            if let Some(user) = user_by_name(conn, &name)? {
                return Ok(Some(user));
            }
            match name_holder(conn, &usernames::key(&name))? {
                Some(holder) => user_by_name(conn, &holder),
                None => Ok(None),
            }
        })
        .await
    }

    /// The user named exactly `name`.
    pub async fn user_by_name(&self, name: String) -> StoreResult<Option<UserRow>> {
        self.read(move |conn| user_by_name(conn, &name)).await
    }

    /// The user `uid`.
    pub async fn user_by_uid(&self, uid: u64) -> StoreResult<Option<UserRow>> {
        self.read(move |conn| super::queries::user_by_uid(conn, uid)).await
    }

    /// Revokes every token issued to `uid` so far; the new generation, or None when there is
    /// no such user.
    pub async fn bump_token_generation(&self, uid: u64) -> StoreResult<Option<u64>> {
        self.write(move |conn| bump_token_generation(conn, uid)).await
    }

    /// The count of revocations made outside the daemon (None before the first).
    pub async fn revocation_count(&self) -> StoreResult<Option<String>> {
        self.read(revocation_count).await
    }

    /// Every user's (uid, token generation).
    pub async fn token_generations(&self) -> StoreResult<Vec<(u64, u64)>> {
        self.read(token_generations).await
    }
}

/// Inserts the user and makes them a participant of the system conversation at its newest
/// message: broadcasts from before the account are not for it.
pub(super) fn insert_user(conn: &Connection, name: &str, key: &str, hash: &str) -> StoreResult<u64> {
    conn.execute(
        "INSERT INTO users (username, name_key, password_hash, created_at) VALUES (?1, ?2, ?3, ?4)",
        params![name, key, hash, crate::now_ms()],
    )?;
    let uid = conn.last_insert_rowid() as u64;
    conn.execute(
        "INSERT INTO participants (uid, chat_id, read_seq, floor_seq) SELECT ?1, chat_id, last_seq, last_seq FROM conversations WHERE chat_id = ?2",
        params![uid, crate::chat_id::SYSTEM],
    )?;
    Ok(uid)
}

/// The username that holds `key`, if any.
pub(super) fn name_holder(conn: &Connection, key: &str) -> StoreResult<Option<String>> {
    Ok(conn
        .prepare_cached("SELECT username FROM users WHERE name_key = ?1")?
        .query_row([key], |r| r.get(0))
        .optional()?)
}

/// Fills `name_key` for users created before it existed, oldest first. When two old names
/// share a key, the older user holds it and the other keeps a NULL key: both accounts stay,
/// and the second logs in by its exact name.
pub(super) fn fill_name_keys(conn: &Connection) -> StoreResult<()> {
    let users: Vec<(u64, String)> = conn
        .prepare("SELECT uid, username FROM users WHERE name_key IS NULL ORDER BY uid")?
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
        .collect::<Result<_, _>>()?;
    for (uid, name) in users {
        match conn.execute("UPDATE users SET name_key = ?1 WHERE uid = ?2", params![usernames::key(&name), uid]) {
            Ok(_) => {}
            Err(rusqlite::Error::SqliteFailure(e, _)) if e.code == ErrorCode::ConstraintViolation => {
                tracing::warn!(
                    "username {name:?} (uid {uid}) collides with an older one; it logs in by exact name only"
                );
            }
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

/// Moves `uid`'s token generation on, which revokes every token issued to them so far;
/// returns the new generation, or None when there is no such user.
pub(super) fn bump_token_generation(conn: &Connection, uid: u64) -> StoreResult<Option<u64>> {
    Ok(conn
        .query_row("UPDATE users SET token_gen = token_gen + 1 WHERE uid = ?1 RETURNING token_gen", [uid], |r| {
            r.get::<_, u64>(0)
        })
        .optional()?)
}

/// Counts a revocation made outside the daemon up (see `REVOCATIONS_KEY`).
pub(super) fn note_revocation(conn: &Connection) -> StoreResult<()> {
    conn.execute(
        "INSERT INTO meta (key, value) VALUES (?1, '1')
         ON CONFLICT (key) DO UPDATE SET value = CAST(value AS INTEGER) + 1",
        [REVOCATIONS_KEY],
    )?;
    Ok(())
}

/// The count of `note_revocation`, None before the first.
fn revocation_count(conn: &Connection) -> StoreResult<Option<String>> {
    Ok(conn.query_row("SELECT value FROM meta WHERE key = ?1", [REVOCATIONS_KEY], |r| r.get(0)).optional()?)
}

fn token_generations(conn: &Connection) -> StoreResult<Vec<(u64, u64)>> {
    let mut users = conn.prepare("SELECT uid, token_gen FROM users")?;
    let rows = users.query_map([], |r| Ok((r.get::<_, u64>(0)?, r.get::<_, u64>(1)?)))?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// Sets the role of the user named `name`; false when there is no such user.
pub(super) fn set_role(conn: &Connection, name: &str, role: &str) -> StoreResult<bool> {
    Ok(conn.execute("UPDATE users SET role = ?1 WHERE username = ?2", [role, name])? > 0)
}

/// The JWT secret kept in the database, generated on first use.
pub fn stored_jwt_secret(conn: &Connection) -> StoreResult<String> {
    let existing: Option<String> =
        conn.query_row("SELECT value FROM meta WHERE key = 'jwt_secret'", [], |r| r.get(0)).optional()?;
    if let Some(secret) = existing {
        return Ok(secret);
    }
    let secret: String = rand::random::<[u8; 32]>().iter().map(|b| format!("{b:02x}")).collect();
    conn.execute("INSERT INTO meta (key, value) VALUES ('jwt_secret', ?1)", [&secret])?;
    Ok(secret)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_generated_secret_is_long_enough_and_kept() {
        let conn = Connection::open_in_memory().unwrap();
        conn.execute_batch("CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)").unwrap();
        let secret = stored_jwt_secret(&conn).unwrap();
        assert!(secret.len() >= crate::config::MIN_SECRET_BYTES, "{} bytes", secret.len());
        assert_eq!(stored_jwt_secret(&conn).unwrap(), secret, "generated once");
    }

    #[test]
    fn revocations_move_the_generation_and_the_count() {
        let dir = tempfile::tempdir().expect("tempdir");
        let conn = crate::store::sqlite::open_writable(&dir.path().join("imd.db")).expect("database");
        for name in ["alice", "bob"] {
            insert_user(&conn, name, &usernames::key(name), "x").expect("user");
        }
        assert_eq!(revocation_count(&conn).expect("count"), None);
        assert_eq!(token_generations(&conn).expect("generations"), vec![(1, 0), (2, 0)]);
        assert_eq!(bump_token_generation(&conn, 2).expect("bump"), Some(1));
        assert_eq!(bump_token_generation(&conn, 99).expect("bump"), None, "no such user");
        note_revocation(&conn).expect("note");
        note_revocation(&conn).expect("note");
        assert_eq!(revocation_count(&conn).expect("count").as_deref(), Some("2"));
        assert_eq!(token_generations(&conn).expect("generations"), vec![(1, 0), (2, 1)]);
    }
}
