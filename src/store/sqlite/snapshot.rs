//! Reads the directory's rows (`store::snapshot::Snapshot`) from SQLite at start.

use rusqlite::Connection;

use super::StoreResult;
use crate::store::snapshot::{AgentRow, RoomRow, Snapshot, UserEntryRow, Watch};

/// Reads the directory's rows; blocking (called once at start, before the writer starts).
/// `watch`, when given, follows the two tables that grow with use (users, room members);
/// without it, nothing is counted.
pub fn read_snapshot(conn: &Connection, mut watch: Option<Watch<'_>>) -> StoreResult<Snapshot> {
    let users = collect_watched(conn, "users", "SELECT uid, username, token_gen FROM users", &mut watch, |r| {
        Ok(UserEntryRow { uid: r.get(0)?, username: r.get(1)?, token_gen: r.get(2)? })
    })?;
    let rooms = collect(conn, "SELECT chat_id, private, history FROM rooms", |r| {
        Ok(RoomRow { chat_id: r.get(0)?, private: r.get(1)?, history_from_join: r.get::<_, String>(2)? == "joined" })
    })?;
    let members = collect_watched(conn, "room_members", "SELECT chat_id, uid FROM room_members", &mut watch, |r| {
        Ok((r.get(0)?, r.get(1)?))
    })?;
    let shops = collect(conn, "SELECT shop_id, owner_uid FROM shops", |r| Ok((r.get(0)?, r.get(1)?)))?;
    let agents = collect(conn, "SELECT shop_id, uid, accepted FROM shop_agents", |r| {
        Ok(AgentRow { shop_id: r.get(0)?, uid: r.get(1)?, accepted: r.get(2)? })
    })?;
    let handlers =
        collect(conn, "SELECT chat_id, handler_uid FROM conversations WHERE handler_uid IS NOT NULL", |r| {
            Ok((r.get(0)?, r.get(1)?))
        })?;
    Ok(Snapshot { users, rooms, members, shops, agents, handlers })
}

/// Every row of `sql` (which reads `table`, a name of ours), mapped, telling `watch` how far.
fn collect_watched<T>(
    conn: &Connection,
    table: &'static str,
    sql: &str,
    watch: &mut Option<Watch<'_>>,
    mut map: impl FnMut(&rusqlite::Row<'_>) -> rusqlite::Result<T>,
) -> StoreResult<Vec<T>> {
    let Some(watch) = watch else { return collect(conn, sql, map) };
    let total: u64 = conn.query_row(&format!("SELECT count(*) FROM {table}"), [], |r| r.get(0))?;
    let mut stmt = conn.prepare(sql)?;
    let mut rows = stmt.query([])?;
    let mut out = Vec::with_capacity(usize::try_from(total).unwrap_or(0));
    watch(table, 0, total);
    while let Some(row) = rows.next()? {
        out.push(map(row)?);
        watch(table, out.len() as u64, total);
    }
    Ok(out)
}

/// Every row of `sql`, mapped.
fn collect<T>(
    conn: &Connection,
    sql: &str,
    map: impl FnMut(&rusqlite::Row<'_>) -> rusqlite::Result<T>,
) -> StoreResult<Vec<T>> {
    let mut stmt = conn.prepare(sql)?;
    let rows = stmt.query_map([], map)?;
    Ok(rows.collect::<Result<_, _>>()?)
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use rusqlite::params;

    use crate::directory::Directory;

    /// Members of one room, as a large deployment has them.
    const MEMBERS: u64 = 200_000;

    #[test]
    fn loading_a_huge_room_is_linear() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut conn = crate::store::sqlite::open_writable(&dir.path().join("imd.db")).expect("database");
        let tx = conn.transaction().expect("transaction");
        tx.execute("INSERT INTO rooms (chat_id, owner_uid, created_at) VALUES ('2_1_1', 1, 0)", []).expect("room");
        tx.execute("INSERT INTO rooms (chat_id, owner_uid, created_at) VALUES ('2_1_2', 1, 0)", []).expect("room");
        {
            let mut member =
                tx.prepare("INSERT INTO room_members (chat_id, uid, joined_at) VALUES (?1, ?2, 0)").expect("prepare");
            for uid in 1..=MEMBERS {
                member.execute(params!["2_1_1", uid]).expect("member");
            }
            member.execute(params!["2_1_2", 7]).expect("member");
            // A member row of a room that is gone is ignored, as before.
            member.execute(params!["2_9_9", 7]).expect("member");
        }
        tx.commit().expect("commit");

        let started = Instant::now();
        let directory = Directory::load(super::read_snapshot(&conn, None).expect("snapshot"));
        let took = started.elapsed();
        // Measured on a 2-core VM: 0.08 s; adding the members one by one, the set copied each
        // time, took 16 s.
        assert!(took < Duration::from_secs(3), "loading {MEMBERS} members took {took:?}");
        assert_eq!(directory.room_members("2_1_1").map(|m| m.len()), Some(MEMBERS as usize));
        assert!(directory.is_member("2_1_1", MEMBERS) && directory.is_member("2_1_1", 1));
        assert_eq!(directory.room_members("2_1_2").map(|m| m.len()), Some(1));
        assert!(!directory.room_exists("2_9_9"));
    }
}
