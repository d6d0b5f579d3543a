//! `imd backup PATH`: an online copy of the database, written beside PATH under a temporary
//! name and renamed once complete, so PATH is never a half-written copy.

use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use crate::progress::Progress;
use crate::store::sqlite::backup;
use crate::store::sqlite::offline::{Access, Database, open_existing};

pub fn run(db: &Path, path: &Path, force: bool) -> i32 {
    match take(db, path, force) {
        Ok(pages) => {
            println!("backed up {} to {} ({pages} pages)", db.display(), path.display());
            0
        }
        Err(why) => {
            eprintln!("imd: backup failed: {why}");
            1
        }
    }
}

fn take(db: &Path, path: &Path, force: bool) -> Result<u64, String> {
    if path.exists() && !force {
        return Err(format!("{} exists (--force replaces it)", path.display()));
    }
    let source = open_existing(db, Access::Read)?;
    let temp = temp_name(path)?;
    // Created here, not by SQLite: for the owner only whatever the umask, and never a file
    // that was already there.
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&temp)
        .map_err(|e| format!("cannot create {}: {e}", temp.display()))?;
    let result = copy_into(&source, &temp).and_then(|pages| {
        std::fs::rename(&temp, path).map_err(|e| format!("cannot rename to {}: {e}", path.display()))?;
        Ok(pages)
    });
    if result.is_err() {
        let _ = std::fs::remove_file(&temp);
    }
    result
}

/// Copies into `temp`, showing progress on a terminal; the pages copied.
fn copy_into(source: &Database, temp: &Path) -> Result<u64, String> {
    let mut progress = Progress::new("backup", "pages");
    let mut pages = 0;
    // Closed before the rename, so an error closing is not hidden behind a finished name.
    backup::copy_to_file(source, temp, |copied, total| {
        pages = total;
        progress.update(copied, total);
    })?;
    progress.finish();
    Ok(pages)
}

/// `.NAME.tmp-PID` beside `path`: the same file system, so the rename is atomic.
fn temp_name(path: &Path) -> Result<PathBuf, String> {
    let name = path.file_name().ok_or_else(|| format!("{}: not a file name", path.display()))?;
    let mut temp = std::ffi::OsString::from(".");
    temp.push(name);
    temp.push(format!(".tmp-{}", std::process::id()));
    Ok(path.with_file_name(temp))
}
