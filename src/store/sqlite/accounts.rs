//! The SQL of `imd user list|add|passwd|role|revoke`: accounts changed on the database
//! directly, in transactions that wait for a running daemon's writer.

use rusqlite::{Transaction, TransactionBehavior, params};

use super::StoreResult;
use super::offline::Database;
use super::users::{bump_token_generation, insert_user, name_holder, note_revocation};

/// One account as `imd user list` shows it.
pub struct Account {
    pub uid: u64,
    pub username: String,
    pub role: String,
}

/// Every account, by uid.
pub fn list(db: &Database) -> StoreResult<Vec<Account>> {
    let mut stmt = db.0.prepare("SELECT uid, username, role FROM users ORDER BY uid")?;
    let rows = stmt.query_map([], |r| Ok(Account { uid: r.get(0)?, username: r.get(1)?, role: r.get(2)? }))?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// Creates the account `name` (already normalised) with `hash`, as `/user/register` does; its
/// uid, or None when the name (or a look-alike of it) is taken.
pub fn add(db: &Database, name: &str, hash: &str) -> StoreResult<Option<u64>> {
    let key = crate::usernames::key(name);
    // Immediate: the name check and the insert see the same database.
    let tx = Transaction::new_unchecked(&db.0, TransactionBehavior::Immediate)?;
    if name_holder(&tx, &key)?.is_some() {
        return Ok(None);
    }
    let uid = insert_user(&tx, name, &key, hash)?;
    tx.commit()?;
    Ok(Some(uid))
}

/// Sets `name`'s password hash and revokes every token they hold (a running daemon notices
/// the revocation counter and closes their sockets); their uid, or None when there is no such
/// user.
pub fn set_password(db: &Database, name: &str, hash: &str) -> StoreResult<Option<u64>> {
    let tx = Transaction::new_unchecked(&db.0, TransactionBehavior::Immediate)?;
    let Some(user) = super::queries::user_by_name(&tx, name)? else { return Ok(None) };
    tx.execute("UPDATE users SET password_hash = ?1 WHERE uid = ?2", params![hash, user.uid])?;
    if bump_token_generation(&tx, user.uid)?.is_none() {
        return Ok(None);
    }
    note_revocation(&tx)?;
    tx.commit()?;
    Ok(Some(user.uid))
}

/// Sets the role (`admin` or `user`) of the user named `name`; false when there is no such
/// user. A running daemon reads roles fresh when it needs them.
pub fn set_role(db: &Database, name: &str, role: &str) -> StoreResult<bool> {
    super::users::set_role(&db.0, name, role)
}

/// Bumps `name`'s token generation and counts the revocation for a running daemon, in one
/// transaction; the user's uid, or None when there is no such user.
pub fn revoke(db: &Database, name: &str) -> StoreResult<Option<u64>> {
    // Immediate: takes the write lock (waiting for a daemon's batch) before reading, so the
    // read cannot go stale before the write.
    let tx = Transaction::new_unchecked(&db.0, TransactionBehavior::Immediate)?;
    let Some(user) = super::queries::user_by_name(&tx, name)? else { return Ok(None) };
    if bump_token_generation(&tx, user.uid)?.is_none() {
        return Ok(None);
    }
    note_revocation(&tx)?;
    tx.commit()?;
    Ok(Some(user.uid))
}
