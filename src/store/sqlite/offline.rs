//! Opening an existing imd database from the command line (`imd backup`, `imd user …`):
//! nothing is created or migrated, and a database of another schema version is not written.

use std::path::Path;
use std::time::Duration;

use rusqlite::{Connection, OpenFlags};

use super::schema;

/// What the command will do with the database.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Only read (a backup): any schema version will do.
    Read,
    /// Write: only this binary's schema version, which it knows how to write.
    Write,
}

/// An imd database a command opened (`open_existing`); `accounts` and `backup` work on it.
pub struct Database(pub(super) Connection);

/// Opens the imd database at `db`, which must exist; the error says why not, for the operator.
pub fn open_existing(db: &Path, access: Access) -> Result<Database, String> {
    if !db.is_file() {
        return Err(format!("{}: no such database file (start the daemon once to create it)", db.display()));
    }
    // Read-write even to read: a reader of a WAL database may have to create its -shm file.
    let flags = OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX;
    let conn = Connection::open_with_flags(db, flags).map_err(|e| format!("{}: {e}", db.display()))?;
    // A daemon's writer may hold the lock for a batch.
    conn.busy_timeout(Duration::from_secs(5)).map_err(|e| e.to_string())?;
    let users: i64 = conn
        .query_row("SELECT COUNT(*) FROM sqlite_master WHERE type = 'table' AND name = 'users'", [], |r| r.get(0))
        .map_err(|e| format!("{}: {e}", db.display()))?;
    if users == 0 {
        return Err(format!("{}: not an imd database (no users table)", db.display()));
    }
    if access == Access::Write {
        let version: i64 = conn.pragma_query_value(None, "user_version", |r| r.get(0)).map_err(|e| e.to_string())?;
        check_version(version).map_err(|why| format!("{}: {why}", db.display()))?;
    }
    Ok(Database(conn))
}

/// Whether this binary may write a database of schema `version`.
fn check_version(version: i64) -> Result<(), String> {
    let known = schema::VERSION as i64;
    if version > known {
        Err(format!(
            "schema version {version} is newer than this imd knows ({known}): a newer imd owns it; use that one"
        ))
    } else if version < known {
        Err(format!(
            "schema version {version} is older than this imd's ({known}): start the daemon once to migrate it, then retry"
        ))
    } else {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_this_binarys_version_is_written() {
        let known = schema::VERSION as i64;
        assert!(check_version(known).is_ok());
        assert!(check_version(known + 1).unwrap_err().contains("newer"));
        assert!(check_version(known - 1).unwrap_err().contains("start the daemon once"));
    }
}
