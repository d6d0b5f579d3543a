//! Schema migrations from `sql/`, applied in order at start; `PRAGMA user_version` records
//! how many have run.

use rusqlite::Connection;

use super::StoreResult;

const MIGRATIONS: &[&str] = &[
    include_str!("../../sql/001_init.sql"),
    include_str!("../../sql/002_service_by_shop.sql"),
    include_str!("../../sql/003_delivered.sql"),
];

pub fn migrate(conn: &Connection) -> StoreResult<()> {
    let applied: usize = conn.pragma_query_value(None, "user_version", |row| row.get(0))?;
    for (index, sql) in MIGRATIONS.iter().enumerate().skip(applied) {
        let tx = conn.unchecked_transaction()?;
        tx.execute_batch(sql)?;
        tx.pragma_update(None, "user_version", index + 1)?;
        tx.commit()?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn migrating_twice_is_a_no_op() {
        let conn = Connection::open_in_memory().unwrap();
        migrate(&conn).unwrap();
        migrate(&conn).unwrap();
        let version: usize = conn.pragma_query_value(None, "user_version", |r| r.get(0)).unwrap();
        assert_eq!(version, MIGRATIONS.len());
        let system: i64 =
            conn.query_row("SELECT COUNT(*) FROM conversations WHERE chat_id = '0_system'", [], |r| r.get(0)).unwrap();
        assert_eq!(system, 1);
        let index: i64 = conn
            .query_row("SELECT COUNT(*) FROM sqlite_master WHERE name = 'conversations_by_shop'", [], |r| r.get(0))
            .unwrap();
        assert_eq!(index, 1, "migration 002 ran");
        let table: i64 =
            conn.query_row("SELECT COUNT(*) FROM sqlite_master WHERE name = 'delivered'", [], |r| r.get(0)).unwrap();
        assert_eq!(table, 1, "migration 003 ran");
    }
}
