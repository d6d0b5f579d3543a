//! `imd user role NAME admin|user` and `imd user revoke NAME`: change the database directly
//! (also while a daemon runs: it reads roles fresh when it needs them, and watches for
//! revocations). `list`, `add` and `passwd` are in `accounts`.

use std::path::Path;

use rusqlite::{Connection, Transaction, TransactionBehavior};

use super::Role;
use crate::directory;
use crate::store::StoreResult;
use crate::store::offline::{Access, open_existing};

pub fn set_role(db: &Path, name: &str, role: Role) -> i32 {
    let conn = match open_existing(db, Access::Write) {
        Ok(conn) => conn,
        Err(why) => {
            eprintln!("imd: cannot open {why}");
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
    let conn = match open_existing(db, Access::Write) {
        Ok(conn) => conn,
        Err(why) => {
            eprintln!("imd: cannot open {why}");
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
