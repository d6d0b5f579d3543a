//! `SharedPgDatabase`: a uniquely named database on the machine's shared PostgreSQL
//! (127.0.0.1:5432, user `postgres`, trust), dropped with the value, so runs never meet.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use super::process;

/// The shared server: never stopped or reconfigured by a test, only used.
pub const SHARED_PORT: u16 = 5432;

/// Longest wait for one psql call.
const STEP_WAIT: Duration = Duration::from_secs(30);

/// Databases made by this test process so far (a part of each name).
static MADE: AtomicU64 = AtomicU64::new(0);

pub struct SharedPgDatabase {
    name: String,
}

impl SharedPgDatabase {
    /// Creates `imd_t_<pid>_<n>_<random>`; None (with a loud note) when the shared server or
    /// psql is missing, a panic instead under CI.
    pub async fn create() -> Option<SharedPgDatabase> {
        if !process::port_accepts(SHARED_PORT).await {
            return process::missing("the shared PostgreSQL at 127.0.0.1:5432 is not reachable");
        }
        if process::find_program("psql", &[]).is_none() {
            return process::missing("no psql on PATH for the shared PostgreSQL");
        }
        let n = MADE.fetch_add(1, Ordering::Relaxed);
        let name = format!("imd_t_{}_{n}_{:08x}", std::process::id(), rand::random::<u32>());
        psql("postgres", &format!("CREATE DATABASE {name}")).await;
        Some(SharedPgDatabase { name })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// `postgres://postgres@127.0.0.1:5432/<name>`.
    pub fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{SHARED_PORT}/{}", self.name)
    }

    /// Runs `sql` in this database (see [`psql`]).
    pub async fn query(&self, sql: &str) -> String {
        psql(&self.name, sql).await
    }
}

impl Drop for SharedPgDatabase {
    fn drop(&mut self) {
        // FORCE: an imd a test left running (or one just killed) may still hold connections.
        let sql = format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name);
        let mut cmd = std::process::Command::new("psql");
        cmd.args(psql_args("postgres", &sql));
        match process::run_blocking(&mut cmd, STEP_WAIT) {
            Ok(out) if out.status.success() => {}
            Ok(out) => eprintln!("could not drop the test database {}: {}", self.name, process::failure(&out)),
            Err(e) => eprintln!("could not drop the test database {}: {e}", self.name),
        }
    }
}

/// Runs `sql` on database `db` of the shared server with psql; returns its unaligned,
/// tuples-only output (`a|b` per row), trimmed. Panics when psql fails.
pub async fn psql(db: &str, sql: &str) -> String {
    let mut cmd = tokio::process::Command::new("psql");
    cmd.args(psql_args(db, sql));
    let out = process::run(&mut cmd, STEP_WAIT).await.unwrap_or_else(|e| panic!("psql: {e}"));
    assert!(out.status.success(), "psql {sql:?} on {db}: {}", process::failure(&out));
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

fn psql_args(db: &str, sql: &str) -> Vec<String> {
    process::check_db_name(db);
    let fixed = ["-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-h", "127.0.0.1", "-U", "postgres", "-p"];
    let mut args: Vec<String> = fixed.iter().map(|a| a.to_string()).collect();
    args.extend([SHARED_PORT.to_string(), "-d".into(), db.into(), "-c".into(), sql.into()]);
    args
}
