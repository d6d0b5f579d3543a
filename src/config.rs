//! Settings of a running daemon, from the command line or `IMD_*` environment variables.

use std::path::PathBuf;

use clap::{Args, ValueEnum};

#[derive(Args, Debug, Clone)]
pub struct Config {
    /// Address to listen on.
    #[arg(long, env = "IMD_HOST", default_value = "0.0.0.0")]
    pub host: String,

    /// SQLite database file; a `postgres://` or `postgresql://` URL names a PostgreSQL
    /// server instead (read by `store::DbTarget::parse` where the server opens the store).
    #[arg(long, env = "IMD_DB", default_value = "./imd.db")]
    pub db: PathBuf,

    /// HS256 secret for access tokens, at least 32 bytes (default: generated once and kept in
    /// the database).
    #[arg(long, env = "IMD_JWT_SECRET", hide_env_values = true)]
    pub jwt_secret: Option<String>,

    /// File holding the JWT secret (a trailing newline is ignored); keeps it out of `ps`.
    #[arg(long, env = "IMD_JWT_SECRET_FILE", conflicts_with = "jwt_secret")]
    pub jwt_secret_file: Option<PathBuf>,

    /// Lifetime of an access token, in seconds.
    #[arg(long, env = "IMD_TOKEN_TTL", default_value_t = 86_400)]
    pub token_ttl: u64,

    /// Shared secret, at least 32 bytes, accepted as an admin credential (broadcast) in the
    /// `Authorization: Bearer` header.
    #[arg(long, env = "IMD_ADMIN_TOKEN", hide_env_values = true)]
    pub admin_token: Option<String>,

    /// File holding the admin secret (a trailing newline is ignored); keeps it out of `ps`.
    #[arg(long, env = "IMD_ADMIN_TOKEN_FILE", conflicts_with = "admin_token")]
    pub admin_token_file: Option<PathBuf>,

    /// Pid file (default with -d: ./imd-PORT.pid).
    #[arg(long, env = "IMD_PID_FILE")]
    pub pid_file: Option<PathBuf>,

    /// Log file (default with -d: ./imd-PORT.log; in the foreground logs go to stderr).
    #[arg(long, env = "IMD_LOG_FILE")]
    pub log_file: Option<PathBuf>,

    /// Largest WebSocket message accepted; larger ones close the connection with 1009.
    #[arg(long, env = "IMD_MAX_FRAME_BYTES", default_value_t = 65_536)]
    pub max_frame_bytes: usize,

    /// Messages per second per connection (0 turns the limit off).
    #[arg(long, env = "IMD_RATE_LIMIT", default_value_t = 50)]
    pub rate_limit: u32,

    /// Burst allowance of the rate limit.
    #[arg(long, env = "IMD_RATE_BURST", default_value_t = 200)]
    pub rate_burst: u32,

    /// bcrypt cost for new passwords.
    #[arg(long, env = "IMD_BCRYPT_COST", default_value_t = 10)]
    pub bcrypt_cost: u32,

    /// Seconds of silence before the server pings a connection; two intervals drop it.
    #[arg(long, env = "IMD_PING_INTERVAL", default_value_t = 30)]
    pub ping_interval: u64,

    /// Bound of each connection's outbound queue, in bytes.
    #[arg(long, env = "IMD_OUTBOX_BYTES", default_value_t = 1 << 20)]
    pub outbox_bytes: usize,

    /// When a commit is on disk: `full` fsyncs the WAL at every commit (an ack survives power
    /// loss); `normal` leaves it to the checkpoints (an ack survives a crash or kill -9 of
    /// imd, but the last commits before a power cut or kernel crash can be lost).
    #[arg(long, env = "IMD_SYNC", value_enum, default_value_t = SyncMode::Full)]
    pub sync: SyncMode,

    /// Benchmarks only: keep messages in memory, never on disk (measures durability's cost).
    /// Only builds with the `bench` feature have the option; elsewhere it is always false.
    #[cfg_attr(feature = "bench", arg(long, env = "IMD_NO_STORE", hide = true))]
    #[cfg_attr(not(feature = "bench"), arg(skip))]
    pub no_store: bool,

    /// Seconds a client may take to send a request's head (line and headers); then it is closed.
    #[arg(long, env = "IMD_HTTP_HEADER_TIMEOUT", default_value_t = 10)]
    pub http_header_timeout: u64,

    /// Seconds an HTTP connection may wait with no request in flight before it is closed.
    #[arg(long, env = "IMD_HTTP_IDLE_TIMEOUT", default_value_t = 60)]
    pub http_idle_timeout: u64,

    /// Largest HTTP request body accepted; larger ones are refused with 413.
    #[arg(long, env = "IMD_MAX_BODY_BYTES", default_value_t = 65_536)]
    pub max_body_bytes: usize,

    /// Open TCP connections (HTTP and WebSocket) in total; 0: the file limit minus a reserve.
    #[arg(long, env = "IMD_MAX_CONNECTIONS", default_value_t = 0)]
    pub max_connections: usize,

    /// Open TCP connections (HTTP and WebSocket) per client IP address; 0: no limit.
    #[arg(long, env = "IMD_MAX_CONNECTIONS_PER_IP", default_value_t = 1000)]
    pub max_connections_per_ip: usize,

    /// Open WebSocket sessions per user; 0: no limit.
    #[arg(long, env = "IMD_MAX_CONNECTIONS_PER_USER", default_value_t = 20)]
    pub max_connections_per_user: usize,

    /// Failed logins per username per minute before it is answered 429 (0: no limit).
    #[arg(long, env = "IMD_LOGIN_FAILURES_PER_USER", default_value_t = 10)]
    pub login_failures_per_user: u32,

    /// Failed logins and registrations per client IP per minute before 429 (0: no limit).
    #[arg(long, env = "IMD_LOGIN_FAILURES_PER_IP", default_value_t = 30)]
    pub login_failures_per_ip: u32,

    /// Threads hashing and checking passwords; 0: half the cores, at least one.
    #[arg(long, env = "IMD_BCRYPT_THREADS", default_value_t = 0)]
    pub bcrypt_threads: usize,

    /// Password checks that may wait for a bcrypt thread; beyond, 503 "busy, retry".
    #[arg(long, env = "IMD_BCRYPT_QUEUE", default_value_t = 64)]
    pub bcrypt_queue: usize,

    /// Origins (`scheme://host[:port]`, comma-separated) whose web pages may open a WebSocket
    /// and get CORS answers; `*` allows any. Default: only pages of the host and port the
    /// request was sent to. Clients that send no Origin (curl, wscat) are always allowed.
    #[arg(long, env = "IMD_ALLOWED_ORIGINS", value_delimiter = ',')]
    pub allowed_origins: Vec<String>,

    /// Log lines as `text` (for people) or `json` (one object per line, for collectors).
    #[arg(long, env = "IMD_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,

    /// NATS server that joins this node to a cluster (`nats://HOST:4222`); without it the
    /// node runs alone.
    #[arg(long, env = "IMD_NATS")]
    pub nats: Option<String>,

    /// This node's name in the cluster (letters, digits, `-`, `_`, `.`; at most 64); default:
    /// random, and logged at start.
    #[arg(long, env = "IMD_NODE_ID", value_parser = parse_node_id)]
    pub node_id: Option<String>,

    /// First token(s) of the cluster's NATS subjects (`PREFIX.msg`, ...); every node of one
    /// cluster uses the same.
    #[arg(long, env = "IMD_CLUSTER_PREFIX", default_value = "imd", value_parser = parse_cluster_prefix)]
    pub cluster_prefix: String,
}

/// `--node-id`: a name that reads well in logs and /health.
fn parse_node_id(text: &str) -> Result<String, String> {
    let ok = !text.is_empty()
        && text.len() <= 64
        && text.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if ok { Ok(text.to_string()) } else { Err("letters, digits, `-`, `_` or `.`, 1 to 64 of them".into()) }
}

/// `--cluster-prefix`: dot-separated NATS tokens without wildcards, so that `PREFIX.msg` is a
/// literal subject.
fn parse_cluster_prefix(text: &str) -> Result<String, String> {
    let token_ok = |t: &str| !t.is_empty() && t.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_'));
    if text.len() <= 128 && text.split('.').all(token_ok) {
        Ok(text.to_string())
    } else {
        Err("dot-separated tokens of letters, digits, `-` or `_` (no wildcards), like `imd` or `prod.imd`".into())
    }
}

/// How log lines are written.
#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

/// Shortest secret accepted: 256 bits, HS256's key size.
pub const MIN_SECRET_BYTES: usize = 32;

impl Config {
    /// Reads the secret files into `jwt_secret` and `admin_token` and checks every secret's
    /// length; the error is for the operator, naming the option.
    pub fn load_secrets(&mut self) -> Result<(), String> {
        if let Some(path) = &self.jwt_secret_file {
            self.jwt_secret = Some(read_secret(path)?);
        }
        if let Some(path) = &self.admin_token_file {
            self.admin_token = Some(read_secret(path)?);
        }
        // An empty inline value means none (an `IMD_*=` left empty), as before.
        check_secret("--jwt-secret", self.jwt_secret_file.is_some(), self.jwt_secret.as_deref())?;
        check_secret("--admin-token", self.admin_token_file.is_some(), self.admin_token.as_deref())
    }
}

/// A secret file's content without its trailing line break.
fn read_secret(path: &std::path::Path) -> Result<String, String> {
    let text =
        std::fs::read_to_string(path).map_err(|e| format!("cannot read the secret file {}: {e}", path.display()))?;
    Ok(text.trim_end_matches(['\n', '\r']).to_string())
}

fn check_secret(option: &str, from_file: bool, secret: Option<&str>) -> Result<(), String> {
    match secret {
        Some(secret) if (from_file || !secret.is_empty()) && secret.len() < MIN_SECRET_BYTES => {
            let source = if from_file { format!("{option}-file") } else { option.to_string() };
            Err(format!(
                "{option} must be at least {MIN_SECRET_BYTES} bytes (the one from {source} has {}); \
                 `openssl rand -hex 32` makes one",
                secret.len()
            ))
        }
        _ => Ok(()),
    }
}

/// SQLite's `synchronous` setting for the writer.
#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum SyncMode {
    Full,
    Normal,
}

impl SyncMode {
    pub fn pragma(self) -> &'static str {
        match self {
            SyncMode::Full => "FULL",
            SyncMode::Normal => "NORMAL",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_shorter_than_32_bytes_are_refused() {
        let long = "x".repeat(MIN_SECRET_BYTES);
        assert!(check_secret("--admin-token", false, Some(&long)).is_ok());
        assert!(check_secret("--admin-token", false, None).is_ok());
        assert!(check_secret("--admin-token", false, Some("")).is_ok(), "empty inline: no secret");
        let error = check_secret("--admin-token", true, Some("")).unwrap_err();
        assert!(error.contains("--admin-token-file") && error.contains("32 bytes"), "{error}");
        let error = check_secret("--jwt-secret", false, Some(&long[1..])).unwrap_err();
        assert!(error.contains("--jwt-secret") && error.contains("has 31"), "{error}");
    }

    #[test]
    fn cluster_names_are_checked() {
        assert_eq!(parse_node_id("node-1.eu_west").as_deref(), Ok("node-1.eu_west"));
        for bad in ["", "a b", "n*", &"x".repeat(65)] {
            assert!(parse_node_id(bad).is_err(), "{bad:?}");
        }
        assert_eq!(parse_cluster_prefix("prod.imd-2").as_deref(), Ok("prod.imd-2"));
        for bad in ["", "a..b", "imd.", "imd.*", "imd.>", "a b"] {
            assert!(parse_cluster_prefix(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn secret_files_lose_their_trailing_newline_only() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("secret");
        std::fs::write(&path, " spaced secret \r\n").unwrap();
        assert_eq!(read_secret(&path).unwrap(), " spaced secret ");
        let error = read_secret(&dir.path().join("missing")).unwrap_err();
        assert!(error.contains("missing"), "{error}");
    }
}
