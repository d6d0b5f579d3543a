//! The `imd` command line: start, stop, status, backup, user, config.

mod accounts;
mod backup;
mod config_file;
mod control;
mod locate;
mod user;

use std::io::Write;
use std::path::{Path, PathBuf};

use clap::{CommandFactory, FromArgMatches, Parser, Subcommand, ValueEnum};

use crate::config::{Config, LogFormat};
use crate::server;
use crate::store::DbTarget;

#[derive(Parser)]
#[command(name = "imd", version, about = "Instant-messaging daemon: HTTP and WebSocket on one port, SQLite underneath")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

// Parsed once per run: the size of `Start`'s options does not matter.
#[derive(Subcommand)]
enum Command {
    /// Start the daemon on PORT (0: any free port).
    Start {
        port: u16,
        /// Detach: write the pid and log files, return once listening.
        #[arg(short = 'd', long = "daemon")]
        daemon: bool,
        /// TOML file of options (keys as the long options with `_`: `max_frame_bytes = 65536`);
        /// the command line and `IMD_*` variables override it. `imd config init` writes one.
        #[arg(long = "config", env = "IMD_CONFIG", value_name = "FILE")]
        config_file: Option<PathBuf>,
        #[command(flatten)]
        config: Box<Config>,
    },
    /// Stop the daemon on PORT (SIGTERM) and wait until it has exited.
    Stop {
        port: u16,
        /// Address the daemon listens on (its --host; 0.0.0.0 is reached at 127.0.0.1).
        #[arg(long, env = "IMD_HOST", default_value = "127.0.0.1")]
        host: String,
        /// Pid file (default ./imd-PORT.pid).
        #[arg(long, env = "IMD_PID_FILE")]
        pid_file: Option<PathBuf>,
        /// Seconds to wait for the exit.
        #[arg(long, default_value_t = 30)]
        timeout: u64,
    },
    /// Tell whether a daemon runs on PORT; exit 0 when it does.
    Status {
        port: u16,
        /// Address the daemon listens on (its --host; 0.0.0.0 is reached at 127.0.0.1).
        #[arg(long, env = "IMD_HOST", default_value = "127.0.0.1")]
        host: String,
        /// Pid file (default ./imd-PORT.pid).
        #[arg(long, env = "IMD_PID_FILE")]
        pid_file: Option<PathBuf>,
    },
    /// Copy the database (also while a daemon writes it) to PATH, consistently.
    Backup {
        path: PathBuf,
        /// SQLite database file (must exist).
        #[arg(long, env = "IMD_DB", default_value = "./imd.db")]
        db: PathBuf,
        /// Replace PATH if it exists.
        #[arg(long)]
        force: bool,
    },
    /// The TOML config file of `start --config`.
    Config {
        #[command(subcommand)]
        command: ConfigCommand,
    },
    /// Account tools that work on the database directly.
    User {
        #[command(subcommand)]
        command: UserCommand,
    },
}

#[derive(Subcommand)]
enum ConfigCommand {
    /// Print a commented file with every option at its default.
    Init,
    /// Check FILE; print "ok" (exit 0) or each problem with its line and key (exit 1).
    Check { file: PathBuf },
}

#[derive(Subcommand)]
enum UserCommand {
    /// List every account: uid, username and role, tab-separated, one per line.
    List {
        /// SQLite database file (must exist).
        #[arg(long, env = "IMD_DB", default_value = "./imd.db")]
        db: PathBuf,
    },
    /// Create an account; its password is the first line of stdin.
    Add {
        name: String,
        /// SQLite database file (must exist).
        #[arg(long, env = "IMD_DB", default_value = "./imd.db")]
        db: PathBuf,
        /// bcrypt cost of the password hash.
        #[arg(long, env = "IMD_BCRYPT_COST", default_value_t = 10)]
        bcrypt_cost: u32,
    },
    /// Set a user's password (the first line of stdin) and revoke every token they hold.
    Passwd {
        name: String,
        /// SQLite database file (must exist).
        #[arg(long, env = "IMD_DB", default_value = "./imd.db")]
        db: PathBuf,
        /// bcrypt cost of the password hash.
        #[arg(long, env = "IMD_BCRYPT_COST", default_value_t = 10)]
        bcrypt_cost: u32,
    },
    /// Set a user's role.
    Role {
        name: String,
        role: Role,
        /// SQLite database file (must exist).
        #[arg(long, env = "IMD_DB", default_value = "./imd.db")]
        db: PathBuf,
    },
    /// Revoke every token of a user (as a logout); a running daemon closes their sockets.
    Revoke {
        name: String,
        /// SQLite database file (must exist).
        #[arg(long, env = "IMD_DB", default_value = "./imd.db")]
        db: PathBuf,
    },
}

#[derive(Clone, Copy, ValueEnum)]
pub enum Role {
    Admin,
    User,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Admin => "admin",
            Role::User => "user",
        }
    }
}

impl Command {
    /// The database a command opens itself, offline (`backup`, `user`): SQLite only.
    fn offline_db(&self) -> Option<&Path> {
        match self {
            Command::Backup { db, .. } => Some(db),
            Command::User { command } => Some(match command {
                UserCommand::List { db }
                | UserCommand::Add { db, .. }
                | UserCommand::Passwd { db, .. }
                | UserCommand::Role { db, .. }
                | UserCommand::Revoke { db, .. } => db,
            }),
            _ => None,
        }
    }
}

/// Runs the command line; returns the exit code.
pub fn run() -> i32 {
    private_files();
    let cli = match parse_with_config_file() {
        Ok(cli) => cli,
        Err(code) => return code,
    };
    if let Some(db) = cli.command.offline_db()
        && let DbTarget::Postgres(_) = DbTarget::parse(db)
    {
        // The offline commands open the SQLite file themselves; a server has its own tools.
        // (The URL is not echoed: it may hold a password.)
        eprintln!("imd: `imd backup` and `imd user` work on a SQLite database file only, not a PostgreSQL URL");
        return 1;
    }
    match cli.command {
        Command::Start { port, daemon, config, .. } => start(port, daemon, *config),
        Command::Config { command: ConfigCommand::Init } => config_file::init(),
        Command::Config { command: ConfigCommand::Check { file } } => config_file::check(&file),
        Command::Stop { port, host, pid_file, timeout } => control::stop(port, &host, pid_file, timeout),
        Command::Status { port, host, pid_file } => control::status(port, &host, pid_file),
        Command::Backup { path, db, force } => backup::run(&db, &path, force),
        Command::User { command: UserCommand::List { db } } => accounts::list(&db),
        Command::User { command: UserCommand::Add { name, db, bcrypt_cost } } => accounts::add(&db, &name, bcrypt_cost),
        Command::User { command: UserCommand::Passwd { name, db, bcrypt_cost } } => {
            accounts::passwd(&db, &name, bcrypt_cost)
        }
        Command::User { command: UserCommand::Role { name, role, db } } => user::set_role(&db, &name, role),
        Command::User { command: UserCommand::Revoke { name, db } } => user::revoke(&db, &name),
    }
}

/// Parses the command line; under `start --config FILE`, the file's values fill every option
/// that neither the command line nor an `IMD_*` variable set (they are appended as flags and
/// the line parsed again, so clap checks them as it checks flags).
fn parse_with_config_file() -> Result<Cli, i32> {
    let argv: Vec<std::ffi::OsString> = std::env::args_os().collect();
    let matches = Cli::command().get_matches_from(&argv);
    let Some(("start", start)) = matches.subcommand() else {
        return from_matches(&matches);
    };
    let Some(path) = start.get_one::<PathBuf>("config_file") else {
        return from_matches(&matches);
    };
    let file = match config_file::load(path) {
        Ok(file) => file,
        Err(errors) => {
            for error in errors {
                eprintln!("imd: {}: {error}", path.display());
            }
            return Err(1);
        }
    };
    let command = Cli::command();
    let start_command = command.find_subcommand("start");
    let mut argv = argv;
    for (id, flags) in file {
        let set = |id: &str| {
            matches!(
                start.value_source(id),
                Some(clap::parser::ValueSource::CommandLine | clap::parser::ValueSource::EnvVariable)
            )
        };
        // A set option, or one that conflicts with a set one (`jwt_secret_file` on the
        // command line against `jwt_secret` in the file), keeps the command line's choice.
        let overridden = set(&id)
            || start_command.is_some_and(|c| {
                c.get_arguments()
                    .find(|a| a.get_id() == id.as_str())
                    .is_some_and(|a| c.get_arg_conflicts_with(a).iter().any(|other| set(other.get_id().as_str())))
            });
        if !overridden {
            argv.extend(flags.into_iter().map(Into::into));
        }
    }
    from_matches(&Cli::command().get_matches_from(&argv))
}

fn from_matches(matches: &clap::ArgMatches) -> Result<Cli, i32> {
    Cli::from_arg_matches(matches).map_err(|e| {
        let _ = e.print();
        2
    })
}

fn start(port: u16, daemon: bool, mut config: Config) -> i32 {
    if let Err(e) = config.load_secrets() {
        eprintln!("imd: {e}");
        return 1;
    }
    let listener = match server::bind(&config.host, port) {
        Ok(listener) => listener,
        Err(e) => {
            eprintln!("imd: cannot listen on {}:{port}: {e}", config.host);
            return 1;
        }
    };
    // Relative paths are taken from where the command ran, also after detaching (a
    // PostgreSQL URL is not a path).
    if let DbTarget::Sqlite(path) = DbTarget::parse(&config.db) {
        config.db = absolute(&path);
    }
    config.pid_file = config.pid_file.as_deref().map(absolute);
    config.log_file = config.log_file.as_deref().map(absolute);
    if daemon {
        return control::start_detached(port, config, listener);
    }
    init_logging(config.log_format);
    if let Some(pid_file) = &config.pid_file
        && let Err(e) = std::fs::write(pid_file, format!("{}\n", std::process::id()))
    {
        eprintln!("imd: cannot write {}: {e}", pid_file.display());
        return 1;
    }
    let pid_file = config.pid_file.clone();
    let result = server::run(config, listener, |addr| {
        let mut out = std::io::stdout();
        let _ = writeln!(out, "listening on {addr}");
        let _ = out.flush();
    });
    if let Some(pid_file) = pid_file {
        let _ = std::fs::remove_file(pid_file);
    }
    match result {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("imd: {e}");
            1
        }
    }
}

/// Every file imd creates (database, WAL, pid, log) is for its owner only: the database
/// holds the JWT secret and the password hashes.
fn private_files() {
    // SAFETY: umask(2) only sets the process's file-creation mask; it cannot fail.
    unsafe { libc::umask(PRIVATE_UMASK) };
}

/// Leaves only the owner's bits of a new file's mode.
pub const PRIVATE_UMASK: libc::mode_t = 0o077;

fn absolute(path: &Path) -> PathBuf {
    std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf())
}

/// Logs to stderr (the log file, once detached); `IMD_LOG` sets the filter (default info),
/// `--log-format` the shape of a line.
fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("IMD_LOG").unwrap_or_else(|_| "info".into());
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().try_init(),
    };
}
