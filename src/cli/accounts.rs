//! `imd user list`, `imd user add NAME` and `imd user passwd NAME` (the password is read
//! from stdin, one line): on the database directly, also while a daemon runs.

use std::io::BufRead;
use std::path::Path;

use crate::store::sqlite::accounts;
use crate::store::sqlite::offline::{Access, Database, open_existing};
use crate::usernames;

pub fn list(db: &Path) -> i32 {
    // Read-only, yet the schema must be known: an older or newer one may mean other columns.
    let conn = match open_existing(db, Access::Write) {
        Ok(conn) => conn,
        Err(why) => return fail(&format!("cannot open {why}")),
    };
    match accounts::list(&conn) {
        Ok(users) => {
            for user in users {
                println!("{}\t{}\t{}", user.uid, user.username, user.role);
            }
            0
        }
        Err(e) => fail(&e.to_string()),
    }
}

pub fn add(db: &Path, name: &str, cost: u32) -> i32 {
    let Some(name) = usernames::normalise(name) else { return fail(usernames::RULE) };
    let (conn, hash) = match open_with_password(db, cost) {
        Ok(opened) => opened,
        Err(why) => return fail(&why),
    };
    match accounts::add(&conn, &name, &hash) {
        Ok(Some(uid)) => {
            println!("{name} (uid {uid}) added");
            0
        }
        Ok(None) => fail(&format!("username {name} is taken")),
        Err(e) => fail(&e.to_string()),
    }
}

pub fn passwd(db: &Path, name: &str, cost: u32) -> i32 {
    let (conn, hash) = match open_with_password(db, cost) {
        Ok(opened) => opened,
        Err(why) => return fail(&why),
    };
    match accounts::set_password(&conn, name, &hash) {
        Ok(Some(uid)) => {
            println!("{name} (uid {uid}): password set, every old token revoked");
            0
        }
        Ok(None) => fail(&format!("no user named {name} in {}", db.display())),
        Err(e) => fail(&e.to_string()),
    }
}

/// The database, open for writing, and the bcrypt hash of the password read from stdin.
fn open_with_password(db: &Path, cost: u32) -> Result<(Database, String), String> {
    let conn = open_existing(db, Access::Write).map_err(|why| format!("cannot open {why}"))?;
    let hash = read_password().and_then(|password| hash(&password, cost))?;
    Ok((conn, hash))
}

fn fail(why: &str) -> i32 {
    eprintln!("imd: {why}");
    1
}

/// The first line of stdin without its line end, checked as `/user/register` checks it.
fn read_password() -> Result<String, String> {
    let mut line = String::new();
    std::io::stdin().lock().read_line(&mut line).map_err(|e| format!("cannot read the password from stdin: {e}"))?;
    let password = line.strip_suffix('\n').unwrap_or(&line);
    let password = password.strip_suffix('\r').unwrap_or(password);
    if !crate::passwords::is_valid(password) {
        return Err(crate::passwords::RULE.into());
    }
    Ok(password.to_string())
}

fn hash(password: &str, cost: u32) -> Result<String, String> {
    bcrypt::hash(password, cost).map_err(|e| format!("cannot hash the password: {e}"))
}
