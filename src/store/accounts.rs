//! The SQL of `imd user list|add|passwd`: accounts changed on the database directly, in
//! transactions that wait for a running daemon's writer.

use rusqlite::{Connection, Transaction, TransactionBehavior, params};

use super::StoreResult;
use crate::directory;

/// One account as `imd user list` shows it.
pub struct Account {
    pub uid: u64,
    pub username: String,
    pub role: String,
}

/// Every account, by uid.
pub fn list(conn: &Connection) -> StoreResult<Vec<Account>> {
    let mut stmt = conn.prepare("SELECT uid, username, role FROM users ORDER BY uid")?;
    let rows = stmt.query_map([], |r| Ok(Account { uid: r.get(0)?, username: r.get(1)?, role: r.get(2)? }))?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// Creates the account `name` (already normalised) with `hash`, as `/user/register` does; its
/// uid, or None when the name (or a look-alike of it) is taken.
pub fn add(conn: &Connection, name: &str, hash: &str) -> StoreResult<Option<u64>> {
    let key = crate::usernames::key(name);
    // Immediate: the name check and the insert see the same database.
    let tx = Transaction::new_unchecked(conn, TransactionBehavior::Immediate)?;
    if crate::usernames::holder(&tx, &key)?.is_some() {
        return Ok(None);
    }
    tx.execute(
        "INSERT INTO users (username, name_key, password_hash, created_at) VALUES (?1, ?2, ?3, ?4)",
        params![name, key, hash, crate::now_ms()],
    )?;
    let uid = tx.last_insert_rowid() as u64;
    // Broadcasts from before the account are not for it (as at registration).
    tx.execute(
        "INSERT INTO participants (uid, chat_id, read_seq, floor_seq) SELECT ?1, chat_id, last_seq, last_seq FROM conversations WHERE chat_id = ?2",
        params![uid, crate::chat_id::SYSTEM],
    )?;
    tx.commit()?;
    Ok(Some(uid))
}

/// Sets `name`'s password hash and revokes every token they hold (a running daemon notices
/// the revocation counter and closes their sockets); their uid, or None when there is no such
/// user.
pub fn set_password(conn: &Connection, name: &str, hash: &str) -> StoreResult<Option<u64>> {
    let tx = Transaction::new_unchecked(conn, TransactionBehavior::Immediate)?;
    let Some(user) = super::queries::user_by_name(&tx, name)? else { return Ok(None) };
    tx.execute("UPDATE users SET password_hash = ?1 WHERE uid = ?2", params![hash, user.uid])?;
    if directory::bump_token_gen(&tx, user.uid)?.is_none() {
        return Ok(None);
    }
    directory::note_revocation(&tx)?;
    tx.commit()?;
    Ok(Some(user.uid))
}
