//! `imd backup`: a consistent online copy of a database a daemon may be writing, with
//! SQLite's online backup API, a few hundred pages per step.

use std::time::Duration;

use rusqlite::Connection;
use rusqlite::backup::{Backup, StepResult};

use super::StoreResult;

/// Pages copied per step: small steps keep each lock on the source short.
const PAGES_PER_STEP: i32 = 256;
/// How many times a busy or locked step is retried (with [`RETRY_PAUSE`]) before giving up.
const RETRIES: u32 = 600;
const RETRY_PAUSE: Duration = Duration::from_millis(50);

/// Copies `source` into `dest` (an empty database file), calling `progress(copied, total)`
/// in pages after every step.
pub fn copy(source: &Connection, dest: &mut Connection, mut progress: impl FnMut(u64, u64)) -> StoreResult<()> {
    // One read transaction for the whole copy: it sees one snapshot (WAL readers do not block
    // the daemon's writer), so the daemon's commits neither tear the copy nor restart it.
    source.execute_batch("BEGIN")?;
    let result = copy_snapshot(source, dest, &mut progress);
    let _ = source.execute_batch("COMMIT");
    result
}

/// Copies the database `source` into the new, empty file `dest` and closes it (an error
/// closing is reported, not hidden behind a finished copy).
pub fn copy_to_file(
    source: &super::offline::Database,
    dest: &std::path::Path,
    progress: impl FnMut(u64, u64),
) -> Result<(), String> {
    let mut conn = Connection::open(dest).map_err(|e| format!("{}: {e}", dest.display()))?;
    copy(&source.0, &mut conn, progress).map_err(|e| e.to_string())?;
    conn.close().map_err(|(_, e)| format!("{}: {e}", dest.display()))
}

fn copy_snapshot(source: &Connection, dest: &mut Connection, progress: &mut impl FnMut(u64, u64)) -> StoreResult<()> {
    // The snapshot starts at the first read.
    source.query_row("SELECT COUNT(*) FROM sqlite_master", [], |r| r.get::<_, i64>(0))?;
    let backup = Backup::new(source, dest)?;
    let mut retries = 0;
    loop {
        let step = backup.step(PAGES_PER_STEP)?;
        let p = backup.progress();
        let total = p.pagecount.max(0) as u64;
        progress(total.saturating_sub(p.remaining.max(0) as u64), total);
        match step {
            StepResult::Done => return Ok(()),
            StepResult::More => retries = 0,
            StepResult::Busy | StepResult::Locked => {
                retries += 1;
                if retries > RETRIES {
                    return Err(super::StoreError::Unavailable("the database stayed locked".into()));
                }
                std::thread::sleep(RETRY_PAUSE);
            }
            _ => std::thread::sleep(RETRY_PAUSE),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn copies_every_row_and_reports_the_last_page() {
        let dir = tempfile::tempdir().unwrap();
        let source = Connection::open(dir.path().join("a.db")).unwrap();
        source.execute_batch("PRAGMA journal_mode = WAL; CREATE TABLE t (x TEXT);").unwrap();
        source.execute_batch("BEGIN").unwrap();
        for i in 0..2000 {
            source.execute("INSERT INTO t (x) VALUES (?1)", [format!("row {i} {}", "x".repeat(1000))]).unwrap();
        }
        source.execute_batch("COMMIT").unwrap();
        let mut dest = Connection::open(dir.path().join("b.db")).unwrap();
        let mut last = (0, 0);
        let mut steps = 0;
        copy(&source, &mut dest, |copied, total| {
            last = (copied, total);
            steps += 1;
        })
        .unwrap();
        assert!(steps > 1, "a database of {} pages takes several steps", last.1);
        assert_eq!(last.0, last.1);
        let rows: i64 = dest.query_row("SELECT COUNT(*) FROM t", [], |r| r.get(0)).unwrap();
        assert_eq!(rows, 2000);
    }

    /// Another connection (the daemon's writer) commits between the steps: the copy is the
    /// snapshot of when it began, and it finishes rather than restarting.
    #[test]
    fn commits_during_the_copy_are_not_in_it_and_do_not_restart_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.db");
        let source = Connection::open(&path).unwrap();
        source.execute_batch("PRAGMA journal_mode = WAL; CREATE TABLE t (x TEXT);").unwrap();
        source.execute_batch("BEGIN").unwrap();
        for i in 0..2000 {
            source.execute("INSERT INTO t (x) VALUES (?1)", [format!("row {i} {}", "x".repeat(1000))]).unwrap();
        }
        source.execute_batch("COMMIT").unwrap();
        let writer = Connection::open(&path).unwrap();
        let mut dest = Connection::open(dir.path().join("b.db")).unwrap();
        let mut steps = 0;
        copy(&source, &mut dest, |_, _| {
            steps += 1;
            assert!(steps < 100, "the copy keeps restarting");
            writer.execute("INSERT INTO t (x) VALUES (?1)", [format!("late {}", "y".repeat(1000))]).unwrap();
        })
        .unwrap();
        assert!(steps > 1);
        let copied: i64 = dest.query_row("SELECT COUNT(*) FROM t", [], |r| r.get(0)).unwrap();
        assert_eq!(copied, 2000, "the rows of when the copy began");
        let now: i64 = writer.query_row("SELECT COUNT(*) FROM t", [], |r| r.get(0)).unwrap();
        assert_eq!(now, 2000 + steps);
    }
}
