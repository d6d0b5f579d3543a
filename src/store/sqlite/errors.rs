//! SQLite's errors in the store's backend-neutral terms, so no caller sees a `rusqlite` type.

use rusqlite::ErrorCode;

use super::StoreError;

impl From<rusqlite::Error> for StoreError {
    fn from(e: rusqlite::Error) -> StoreError {
        match e.sqlite_error_code() {
            Some(code) if storage_failed(code) => StoreError::Unavailable(e.to_string()),
            Some(ErrorCode::ConstraintViolation) => StoreError::Conflict(e.to_string()),
            _ => StoreError::Backend(e.to_string()),
        }
    }
}

/// SQLite's codes for a storage that cannot take writes now, whatever is written.
fn storage_failed(code: ErrorCode) -> bool {
    matches!(
        code,
        ErrorCode::DiskFull
            | ErrorCode::SystemIoFailure
            | ErrorCode::OutOfMemory
            | ErrorCode::DatabaseBusy
            | ErrorCode::DatabaseLocked
            | ErrorCode::ReadOnly
            | ErrorCode::CannotOpen
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sqlite(code: std::ffi::c_int) -> StoreError {
        StoreError::from(rusqlite::Error::SqliteFailure(rusqlite::ffi::Error::new(code), None))
    }

    #[test]
    fn storage_failures_constraints_and_the_rest_are_told_apart() {
        for code in [rusqlite::ffi::SQLITE_FULL, rusqlite::ffi::SQLITE_IOERR, rusqlite::ffi::SQLITE_BUSY] {
            let text = sqlite(code).unavailable().expect("a storage failure");
            assert!(text.starts_with("storage unavailable: "), "{text}");
        }
        let unique = sqlite(rusqlite::ffi::SQLITE_CONSTRAINT_UNIQUE);
        assert!(matches!(unique, StoreError::Conflict(_)), "{unique:?}");
        assert_eq!(unique.unavailable(), None);
        assert!(matches!(sqlite(rusqlite::ffi::SQLITE_MISMATCH), StoreError::Backend(_)));
        assert!(matches!(StoreError::from(rusqlite::Error::QueryReturnedNoRows), StoreError::Backend(_)));
    }
}
