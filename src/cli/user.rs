//! `imd user role NAME admin|user` and `imd user revoke NAME`: change the database directly
//! (also while a daemon runs: it reads roles fresh when it needs them, and watches for
//! revocations).

use std::path::Path;

use rusqlite::{Connection, OpenFlags, Transaction, TransactionBehavior};

use super::Role;
use crate::directory;
use crate::store::{Store, StoreResult};

pub fn set_role(db: &Path, name: &str, role: Role) -> i32 {
    let conn = match Store::prepare(db) {
        Ok(conn) => conn,
        Err(e) => {
            eprintln!("imd: cannot open {}: {e}", db.display());
            return 1;
        }
    };
    match conn.execute("UPDATE users SET role = ?1 WHERE username = ?2", [role.as_str(), name]) {
        Ok(0) => {
            eprintln!("imd: no user named {name} in {}", db.display());
            1
        }
        Ok(_) => {
            println!("{name} is now {}", role.as_str());
            0
        }
        Err(e) => {
            eprintln!("imd: {e}");
            1
        }
    }
}

pub fn revoke(db: &Path, name: &str) -> i32 {
    let conn = match open_existing(db) {
        Ok(conn) => conn,
        Err(why) => {
            eprintln!("imd: cannot open {}: {why}", db.display());
            return 1;
        }
    };
    match revoke_in(&conn, name) {
        Ok(Some(uid)) => {
            println!("{name} (uid {uid}): every token revoked");
            0
        }
        Ok(None) => {
            eprintln!("imd: no user named {name} in {}", db.display());
            1
        }
        Err(e) => {
            eprintln!("imd: {e}");
            1
        }
    }
}

/// Opens an imd database that exists, without creating or migrating anything.
fn open_existing(db: &Path) -> Result<Connection, String> {
    if !db.is_file() {
        return Err("no such database file".into());
    }
    let flags = OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX;
    let conn = Connection::open_with_flags(db, flags).map_err(|e| e.to_string())?;
    // A daemon's writer may hold the lock for a batch.
    conn.busy_timeout(std::time::Duration::from_secs(5)).map_err(|e| e.to_string())?;
    let users: i64 = conn
        .query_row("SELECT COUNT(*) FROM sqlite_master WHERE type = 'table' AND name = 'users'", [], |r| r.get(0))
        .map_err(|e| e.to_string())?;
    if users == 0 {
        return Err("not an imd database (no users table)".into());
    }
    Ok(conn)
}

/// Bumps `name`'s token generation and counts the revocation for a running daemon, in one
/// transaction; the user's uid, or None when there is no such user.
fn revoke_in(conn: &Connection, name: &str) -> StoreResult<Option<u64>> {
    // Immediate: takes the write lock (waiting for a daemon's batch) before reading, so the
    // read cannot go stale before the write.
    let tx = Transaction::new_unchecked(conn, TransactionBehavior::Immediate)?;
    let Some(user) = crate::store::queries::user_by_name(&tx, name)? else { return Ok(None) };
    if directory::bump_token_gen(&tx, user.uid)?.is_none() {
        return Ok(None);
    }
    directory::note_revocation(&tx)?;
    tx.commit()?;
    Ok(Some(user.uid))
}
