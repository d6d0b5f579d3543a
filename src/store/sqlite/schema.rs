//! Schema migrations from `sql/`, applied in order at start; `PRAGMA user_version` records
//! how many have run.

use rusqlite::Connection;

use super::StoreResult;

const MIGRATIONS: &[&str] = &[
    include_str!("../../../sql/001_init.sql"),
    include_str!("../../../sql/002_service_by_shop.sql"),
    include_str!("../../../sql/003_delivered.sql"),
    include_str!("../../../sql/004_usernames.sql"),
    include_str!("../../../sql/005_private_rooms.sql"),
    include_str!("../../../sql/006_sync_floor.sql"),
];

/// The schema version (`PRAGMA user_version`) this binary writes: every migration applied.
pub const VERSION: usize = MIGRATIONS.len();

/// The migration (1-based) that adds `users.name_key`, which only code can fill.
const NAME_KEYS: usize = 4;

pub fn migrate(conn: &Connection) -> StoreResult<()> {
    let applied: usize = conn.pragma_query_value(None, "user_version", |row| row.get(0))?;
    for (index, sql) in MIGRATIONS.iter().enumerate().skip(applied) {
        let tx = conn.unchecked_transaction()?;
        tx.execute_batch(sql)?;
        if index + 1 == NAME_KEYS {
            super::users::fill_name_keys(&tx)?;
        }
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
        let invites: i64 =
            conn.query_row("SELECT COUNT(*) FROM sqlite_master WHERE name = 'room_invites'", [], |r| r.get(0)).unwrap();
        assert_eq!(invites, 1, "migration 005 ran");
    }

    /// A database from before private rooms: its agents keep getting customers, its rooms stay
    /// public with their history shared.
    #[test]
    fn existing_agents_and_rooms_keep_their_meaning() {
        let conn = Connection::open_in_memory().unwrap();
        let before = MIGRATIONS.iter().position(|sql| sql.contains("private rooms")).unwrap();
        for sql in &MIGRATIONS[..before] {
            conn.execute_batch(sql).unwrap();
        }
        conn.pragma_update(None, "user_version", before).unwrap();
        conn.execute_batch(
            "INSERT INTO shops (shop_id, name, owner_uid, created_at) VALUES (1, 'tea', 1, 0);
             INSERT INTO shop_agents (shop_id, uid) VALUES (1, 2);
             INSERT INTO rooms (chat_id, owner_uid, created_at) VALUES ('2_1_1', 1, 0);
             INSERT INTO room_members (chat_id, uid, joined_at) VALUES ('2_1_1', 3, 0);",
        )
        .unwrap();
        migrate(&conn).unwrap();
        let accepted: i64 = conn.query_row("SELECT accepted FROM shop_agents", [], |r| r.get(0)).unwrap();
        assert_eq!(accepted, 1);
        let (private, history): (i64, String) =
            conn.query_row("SELECT private, history FROM rooms", [], |r| Ok((r.get(0)?, r.get(1)?))).unwrap();
        assert_eq!((private, history.as_str()), (0, "shared"));
        let joined: i64 = conn.query_row("SELECT joined_seq FROM room_members", [], |r| r.get(0)).unwrap();
        assert_eq!(joined, 0);
    }

    #[test]
    fn existing_users_get_name_keys_and_colliding_ones_are_kept() {
        let conn = Connection::open_in_memory().unwrap();
        for sql in &MIGRATIONS[..NAME_KEYS - 1] {
            conn.execute_batch(sql).unwrap();
        }
        conn.pragma_update(None, "user_version", NAME_KEYS - 1).unwrap();
        for name in ["Alice", "alice", "bob"] {
            conn.execute("INSERT INTO users (username, password_hash, created_at) VALUES (?1, 'x', 0)", [name])
                .unwrap();
        }
        migrate(&conn).unwrap();
        let keys: Vec<(String, Option<String>)> = conn
            .prepare("SELECT username, name_key FROM users ORDER BY uid")
            .unwrap()
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        let key = crate::usernames::key;
        assert_eq!(
            keys,
            vec![("Alice".into(), Some(key("Alice"))), ("alice".into(), None), ("bob".into(), Some(key("bob")))],
            "the older of two colliding names holds the key; both accounts stay"
        );
    }
}
