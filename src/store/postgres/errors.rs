//! PostgreSQL's and the pool's errors in the store's backend-neutral terms: a database that is
//! away (refused, closed, shutting down, pool timeout) is `Unavailable` (clients get 503 and
//! may retry), a unique violation is `Conflict`, the rest `Backend`.

use deadpool_postgres::PoolError;
use tokio_postgres::error::SqlState;

use crate::store::StoreError;

impl From<tokio_postgres::Error> for StoreError {
    fn from(e: tokio_postgres::Error) -> StoreError {
        let text = describe(&e);
        match e.code() {
            Some(code) if *code == SqlState::UNIQUE_VIOLATION => StoreError::Conflict(text),
            Some(code) if database_away(code.code()) => StoreError::Unavailable(text),
            Some(_) => StoreError::Backend(text),
            // No code: the client failed, not a statement. Only a value that would not convert
            // (the other client-side failures are all about the connection) is the command's.
            None if converting(&text) => StoreError::Backend(text),
            None => StoreError::Unavailable(text),
        }
    }
}

impl From<PoolError> for StoreError {
    fn from(e: PoolError) -> StoreError {
        match e {
            PoolError::Backend(e) => e.into(),
            PoolError::Closed => StoreError::Closed,
            // Waiting for, making or checking a connection took too long: the database is away.
            PoolError::Timeout(_) => StoreError::Unavailable(format!("PostgreSQL: {e}")),
            other => StoreError::Backend(format!("PostgreSQL pool: {other}")),
        }
    }
}

/// A deadlock or serialization failure: the same transaction may simply be run again.
pub(super) fn is_retryable(e: &tokio_postgres::Error) -> bool {
    e.code()
        .is_some_and(|code| *code == SqlState::T_R_DEADLOCK_DETECTED || *code == SqlState::T_R_SERIALIZATION_FAILURE)
}

/// SQLSTATEs of a server that cannot serve now, whatever the command: connection exceptions
/// (08), insufficient resources (53: disk full, out of memory, too many connections), operator
/// intervention (57P01 admin shutdown, 57P02 crash shutdown, 57P03 cannot connect now), and
/// read-only transactions on a standby (25006).
fn database_away(code: &str) -> bool {
    code.starts_with("08") || code.starts_with("53") || matches!(code, "57P01" | "57P02" | "57P03" | "25006")
}

fn converting(text: &str) -> bool {
    text.contains("serializing parameter") || text.contains("deserializing column") || text.contains("invalid column")
}

/// The server's own message when there is one ("db error" alone says nothing), else the client's.
fn describe(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => format!("PostgreSQL: {} ({})", db.message(), db.code().code()),
        None => match std::error::Error::source(e) {
            Some(cause) => format!("PostgreSQL: {e}: {cause}"),
            None => format!("PostgreSQL: {e}"),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn away_states_are_told_from_the_others() {
        for code in ["08006", "08001", "57P01", "57P02", "57P03", "53100", "53300"] {
            assert!(database_away(code), "{code}");
        }
        for code in ["23505", "42P01", "40P01", "22P02"] {
            assert!(!database_away(code), "{code}");
        }
    }

    #[test]
    fn a_pool_timeout_is_unavailable_and_a_closed_pool_is_closed() {
        let timeout = StoreError::from(PoolError::Timeout(deadpool_postgres::TimeoutType::Wait));
        assert!(timeout.unavailable().is_some(), "{timeout:?}");
        assert!(matches!(StoreError::from(PoolError::Closed), StoreError::Closed));
    }
}
