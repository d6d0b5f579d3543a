//! Which database `--db` names: a SQLite file (a path, as always) or a PostgreSQL server (a
//! `postgres://` or `postgresql://` URL).

use std::path::{Path, PathBuf};

/// The database the store opens, parsed from the `--db` value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DbTarget {
    /// A SQLite database file.
    Sqlite(PathBuf),
    /// A PostgreSQL connection URL.
    Postgres(String),
}

/// The schemes that make a `--db` value a PostgreSQL URL rather than a path.
const POSTGRES_SCHEMES: &[&str] = &["postgres://", "postgresql://"];

impl DbTarget {
    /// A value starting with a PostgreSQL scheme is a URL; anything else is a path, exactly as
    /// `--db` was read before it could name a server.
    pub fn parse(value: &Path) -> DbTarget {
        match value.to_str() {
            Some(url) if POSTGRES_SCHEMES.iter().any(|scheme| url.starts_with(scheme)) => {
                DbTarget::Postgres(url.to_string())
            }
            _ => DbTarget::Sqlite(value.to_path_buf()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn postgres_urls_are_servers_and_everything_else_a_path() {
        for url in ["postgres://postgres@127.0.0.1/imd", "postgresql://u:p@db:5432/imd?sslmode=disable"] {
            assert_eq!(DbTarget::parse(Path::new(url)), DbTarget::Postgres(url.to_string()), "{url}");
        }
        for path in ["./imd.db", "/var/lib/imd/imd.db", "imd.db", "postgres.db", "postgres:/x", "Postgres://x", ""] {
            assert_eq!(DbTarget::parse(Path::new(path)), DbTarget::Sqlite(PathBuf::from(path)), "{path}");
        }
    }

    #[test]
    fn a_path_that_is_not_utf8_stays_a_path() {
        use std::os::unix::ffi::OsStrExt;
        let path = Path::new(std::ffi::OsStr::from_bytes(b"postgres://\xff"));
        assert_eq!(DbTarget::parse(path), DbTarget::Sqlite(path.to_path_buf()));
    }
}
