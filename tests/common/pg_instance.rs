//! `PgInstance`: a PostgreSQL server of the test's own (never the shared one), in a temporary
//! directory on a free loopback port, so a test may stop, crash and restart it.

use std::ffi::OsString;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use super::process::{self, POLL};

/// Longest wait for the server to accept queries after a start (crash recovery included).
const START_WAIT: Duration = Duration::from_secs(30);
/// Longest wait for initdb, a shutdown, or one psql call.
const STEP_WAIT: Duration = Duration::from_secs(30);

/// A PostgreSQL server with its own data directory, trust authentication for `postgres`,
/// listening on 127.0.0.1 only, its unix socket inside its directory. Drop stops it and
/// removes the directory.
pub struct PgInstance {
    /// The `bin` directory of the installed PostgreSQL (initdb, postgres, psql, pg_isready).
    bin: PathBuf,
    /// uid and gid of the `postgres` OS user when we are root (PostgreSQL refuses root).
    run_as: Option<(u32, u32)>,
    port: u16,
    child: Option<Child>,
    /// Set by kill9: the dead server's shared-memory segment is left until a start removes it.
    crashed: bool,
    dir: tempfile::TempDir,
}

impl PgInstance {
    /// initdb and start; None (with a loud note) when PostgreSQL's server binaries are not
    /// installed, a panic instead under CI.
    pub async fn start() -> Option<PgInstance> {
        let Some(bin) = server_bin_dir() else {
            return process::missing(
                "no PostgreSQL server binaries (initdb, postgres) under /usr/lib/postgresql/*/bin",
            );
        };
        // SAFETY: geteuid has no preconditions.
        let run_as = if unsafe { libc::geteuid() } == 0 {
            match os_user("postgres") {
                Some(ids) => Some(ids),
                None => {
                    return process::missing("running as root and there is no `postgres` OS user to run PostgreSQL");
                }
            }
        } else {
            None
        };
        // As root, under /tmp: the postgres user must reach it, which a TMPDIR such as
        // /root/tmp would not allow.
        let mut builder = tempfile::Builder::new();
        builder.prefix("imd-pg-");
        let dir = match run_as {
            Some(_) => builder.tempdir_in("/tmp"),
            None => builder.tempdir(),
        }
        .expect("temp dir");
        std::fs::create_dir(dir.path().join("sock")).expect("socket dir");
        if let Some((uid, gid)) = run_as {
            for path in [dir.path().to_path_buf(), dir.path().join("sock")] {
                std::os::unix::fs::chown(&path, Some(uid), Some(gid)).expect("chown to postgres");
            }
        }
        let mut pg = PgInstance { bin, run_as, port: process::free_port(), child: None, crashed: false, dir };
        pg.initdb().await;
        pg.launch().await;
        Some(pg)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// `postgres://postgres@127.0.0.1:PORT/db`.
    pub fn url(&self, db: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{db}", self.port)
    }

    /// The server's log (stdout and stderr of every start), for failure messages.
    pub fn log_path(&self) -> PathBuf {
        self.dir.path().join("postgres.log")
    }

    pub async fn create_database(&self, name: &str) {
        process::check_db_name(name);
        self.query("postgres", &format!("CREATE DATABASE {name}")).await;
    }

    /// Runs `sql` on database `db` with psql; returns its unaligned, tuples-only output
    /// (`a|b` per row), trimmed. Panics when psql fails.
    pub async fn query(&self, db: &str, sql: &str) -> String {
        let mut cmd = tokio::process::Command::new(self.bin.join("psql"));
        cmd.args(["-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-h", "127.0.0.1", "-U", "postgres"]).args([
            "-p",
            &self.port.to_string(),
            "-d",
            db,
            "-c",
            sql,
        ]);
        let out = process::run(&mut cmd, STEP_WAIT).await.unwrap_or_else(|e| panic!("psql: {e}"));
        assert!(out.status.success(), "psql {sql:?} on {db}: {}", process::failure(&out));
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    /// Fast shutdown (SIGINT: clients are disconnected, the data is checkpointed), waited for.
    pub async fn stop(&mut self) {
        let mut child = self.child.take().expect("stop: the server is not running");
        process::signal(child.id(), libc::SIGINT);
        let status = process::wait_exit(&mut child, STEP_WAIT).await;
        if status.is_none() {
            process::kill_and_reap(&mut child);
            panic!("PostgreSQL did not stop within {STEP_WAIT:?}:\n{}", process::log_tail(&self.log_path(), 20));
        }
    }

    /// SIGKILL to the server and all its processes, as a machine crash would: the next start
    /// runs crash recovery.
    pub async fn kill9(&mut self) {
        let mut child = self.child.take().expect("kill9: the server is not running");
        // Backends are the postmaster's children, each in a session of its own, so they are
        // found by parent PID rather than by process group; listed before the parent dies.
        let backends = children_of(child.id());
        process::signal(child.id(), libc::SIGKILL);
        for pid in backends {
            process::signal(pid, libc::SIGKILL);
        }
        process::wait_exit(&mut child, STEP_WAIT).await.expect("the killed postmaster is reaped");
        self.crashed = true;
    }

    /// Starts the server again on the same port and data (after stop or kill9).
    pub async fn start_again(&mut self) {
        assert!(self.child.is_none(), "start_again: the server is still running");
        self.launch().await;
    }

    /// `program` of the PostgreSQL bin directory, as the postgres OS user when we are root.
    fn argv(&self, program: &str) -> Vec<OsString> {
        let mut argv = Vec::new();
        if let Some((uid, gid)) = self.run_as {
            // setpriv execs the program (runuser would stay as its parent), so the PID we hold
            // is the server's own.
            for a in ["setpriv", &format!("--reuid={uid}"), &format!("--regid={gid}"), "--init-groups", "--"] {
                argv.push(OsString::from(a));
            }
        }
        argv.push(self.bin.join(program).into_os_string());
        argv
    }

    async fn initdb(&self) {
        let argv = self.argv("initdb");
        let mut cmd = tokio::process::Command::new(&argv[0]);
        // --no-sync: initdb's own files only, which a test's crash never loses; the server
        // itself runs with fsync on.
        cmd.args(&argv[1..])
            .arg("-D")
            .arg(self.data_dir())
            .args(["-U", "postgres", "-A", "trust", "--no-locale", "-E", "UTF8", "--no-sync"])
            .current_dir(self.dir.path());
        let out = process::run(&mut cmd, STEP_WAIT).await.unwrap_or_else(|e| panic!("initdb: {e}"));
        assert!(out.status.success(), "initdb: {}", process::failure(&out));
    }

    fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// Starts `postgres` in the foreground as our child and waits until it accepts queries.
    async fn launch(&mut self) {
        use std::os::unix::process::CommandExt;
        let log = File::options().create(true).append(true).open(self.log_path()).expect("postgres log");
        let argv = self.argv("postgres");
        let mut cmd = std::process::Command::new(&argv[0]);
        cmd.args(&argv[1..])
            .arg("-D")
            .arg(self.data_dir())
            .args(["-p", &self.port.to_string()])
            .args(["-c", "listen_addresses=127.0.0.1"])
            .arg("-c")
            .arg(format!("unix_socket_directories={}", self.dir.path().join("sock").display()))
            // Small: a test server holds little data, and several may run at once.
            .args(["-c", "shared_buffers=16MB", "-c", "max_connections=100", "-c", "fsync=on"])
            .current_dir(self.dir.path())
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log handle"))
            .stderr(log)
            // Its own process group: a Ctrl-C on the test run is not the server's business.
            .process_group(0);
        let child = cmd.spawn().unwrap_or_else(|e| panic!("spawn postgres: {e}"));
        self.child = Some(child);
        self.wait_ready().await;
        self.crashed = false;
    }

    /// Polls `pg_isready` until the server accepts connections (not merely the TCP port: it
    /// refuses queries while it recovers), bounded by [`START_WAIT`].
    async fn wait_ready(&mut self) {
        let deadline = Instant::now() + START_WAIT;
        loop {
            let mut probe = tokio::process::Command::new(self.bin.join("pg_isready"));
            probe
                .args(["-q", "-h", "127.0.0.1", "-U", "postgres", "-d", "postgres", "-t", "2"])
                .args(["-p", &self.port.to_string()]);
            if process::run(&mut probe, Duration::from_secs(5)).await.is_ok_and(|out| out.status.success()) {
                return;
            }
            let child = self.child.as_mut().expect("a started server");
            if let Ok(Some(status)) = child.try_wait() {
                self.child = None;
                panic!("postgres exited ({status}) before it was ready:\n{}", process::log_tail(&self.log_path(), 20));
            }
            if Instant::now() >= deadline {
                panic!("postgres not ready within {START_WAIT:?}:\n{}", process::log_tail(&self.log_path(), 20));
            }
            tokio::time::sleep(POLL).await;
        }
    }
}

impl Drop for PgInstance {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            // Immediate shutdown: the data goes with the directory, so nothing to checkpoint;
            // the postmaster still stops its backends and frees its shared memory.
            process::signal(child.id(), libc::SIGQUIT);
            if process::wait_exit_blocking(&mut child, Duration::from_secs(10)).is_none() {
                let backends = children_of(child.id());
                process::kill_and_reap(&mut child);
                for pid in backends {
                    process::signal(pid, libc::SIGKILL);
                }
                self.crashed = true;
            }
        }
        if self.crashed {
            remove_orphan_shm(&self.data_dir());
        }
    }
}

/// The newest installed PostgreSQL's `bin` directory: `/usr/lib/postgresql/<version>/bin`
/// with initdb and postgres in it (the version is looked up, not assumed).
fn server_bin_dir() -> Option<PathBuf> {
    let entries = std::fs::read_dir("/usr/lib/postgresql").ok()?;
    let mut found: Vec<(u32, PathBuf)> = entries
        .flatten()
        .filter_map(|entry| {
            let version: u32 = entry.file_name().to_str()?.split('.').next()?.parse().ok()?;
            let bin = entry.path().join("bin");
            let complete = ["initdb", "postgres", "psql", "pg_isready"]
                .iter()
                .all(|program| process::is_executable(&bin.join(program)));
            complete.then_some((version, bin))
        })
        .collect();
    found.sort();
    found.pop().map(|(_, bin)| bin)
}

/// uid and gid of the OS user `name` (getpwnam_r: tests start instances on several threads).
fn os_user(name: &str) -> Option<(u32, u32)> {
    let name = std::ffi::CString::new(name).ok()?;
    let mut buf = vec![0 as libc::c_char; 16 * 1024];
    // SAFETY: name is a valid C string, pwd and result are valid out-pointers, and buf with its
    // true length holds the record's strings; pwd is read only when result points to it.
    unsafe {
        let mut pwd: libc::passwd = std::mem::zeroed();
        let mut result: *mut libc::passwd = std::ptr::null_mut();
        let rc = libc::getpwnam_r(name.as_ptr(), &mut pwd, buf.as_mut_ptr(), buf.len(), &mut result);
        (rc == 0 && !result.is_null()).then_some((pwd.pw_uid, pwd.pw_gid))
    }
}

/// PIDs whose parent is `parent`, from `/proc/*/stat`.
fn children_of(parent: u32) -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir("/proc") else { return Vec::new() };
    entries
        .flatten()
        .filter_map(|entry| {
            let pid: u32 = entry.file_name().to_str()?.parse().ok()?;
            let stat = std::fs::read_to_string(entry.path().join("stat")).ok()?;
            // After the command name in parentheses: state, then the parent PID.
            let ppid: u32 = stat[stat.rfind(')')? + 1..].split_whitespace().nth(1)?.parse().ok()?;
            (ppid == parent).then_some(pid)
        })
        .collect()
}

/// After a kill9 that no start followed: removes the dead server's System V shared-memory
/// segment (key and id on line 7 of `postmaster.pid`), which would otherwise outlive the
/// test; only when that id still has the key and nothing attached, so never a stranger's.
fn remove_orphan_shm(data_dir: &Path) {
    let Ok(text) = std::fs::read_to_string(data_dir.join("postmaster.pid")) else { return };
    let Some(line) = text.lines().nth(6) else { return };
    let mut fields = line.split_whitespace().map(|f| f.parse::<i64>().ok());
    let (Some(Some(key)), Some(Some(id))) = (fields.next(), fields.next()) else { return };
    let Ok(id) = i32::try_from(id) else { return };
    // SAFETY: shmid_ds is plain data (zeroes are valid); IPC_STAT writes only into it, and
    // IPC_RMID takes no buffer.
    unsafe {
        let mut ds: libc::shmid_ds = std::mem::zeroed();
        if libc::shmctl(id, libc::IPC_STAT, &mut ds) == 0 && i64::from(ds.shm_perm.__key) == key && ds.shm_nattch == 0 {
            libc::shmctl(id, libc::IPC_RMID, std::ptr::null_mut());
        }
    }
}
