//! `imd user role NAME admin|user` and `imd user revoke NAME`: change the database directly
//! (also while a daemon runs: it reads roles fresh when it needs them, and watches for
//! revocations). `list`, `add` and `passwd` are in `accounts`.

use std::path::Path;

use super::Role;
use crate::store::sqlite::accounts;
use crate::store::sqlite::offline::{Access, open_existing};

pub fn set_role(db: &Path, name: &str, role: Role) -> i32 {
    let conn = match open_existing(db, Access::Write) {
        Ok(conn) => conn,
        Err(why) => {
            eprintln!("imd: cannot open {why}");
            return 1;
        }
    };
    match accounts::set_role(&conn, name, role.as_str()) {
        Ok(false) => {
            eprintln!("imd: no user named {name} in {}", db.display());
            1
        }
        Ok(true) => {
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
    match accounts::revoke(&conn, name) {
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
