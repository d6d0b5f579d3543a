//! `imd user role NAME admin|user`: changes the database directly (also while a daemon runs;
//! the daemon reads roles fresh when it needs them).

use std::path::Path;

use super::Role;
use crate::store::Store;

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
