//! Group rooms: creation, invitations and membership. Each function owns its rule, e.g. a
//! new member's read position starts at the room's newest message.

use rusqlite::{Connection, OptionalExtension, params};

use super::{SqliteStore, StoreResult};
use crate::store::Joined;

impl SqliteStore {
    /// Creates a room owned (and joined) by `owner_uid`; returns its chat id
    /// `2_<uid>_<yymmddHHMMSS>`, with `_2`, `_3`, … for more rooms of that user in one second.
    /// `history_from_join`: a member sees only messages after their join.
    pub async fn create_room(
        &self,
        owner_uid: u64,
        name: Option<String>,
        private: bool,
        history_from_join: bool,
    ) -> StoreResult<String> {
        self.write(move |conn| create_room(conn, owner_uid, name, private, history_from_join)).await
    }

    /// Keeps `by_uid`'s invitation of `uid` into the room until `uid` joins.
    pub async fn invite_to_room(&self, chat_id: String, by_uid: u64, uid: u64) -> StoreResult<()> {
        self.write(move |conn| invite_to_room(conn, &chat_id, by_uid, uid)).await
    }

    /// Adds `uid` to the room; in a `private` one only with an invitation, which is used up.
    pub async fn join_room(&self, chat_id: String, uid: u64, private: bool) -> StoreResult<Joined> {
        self.write(move |conn| join_room(conn, &chat_id, uid, private)).await
    }

    /// Removes `uid` from the room and its conversation; not being in it is not an error.
    pub async fn leave_room(&self, chat_id: String, uid: u64) -> StoreResult<()> {
        self.write(move |conn| leave_room(conn, &chat_id, uid)).await
    }
}

fn create_room(
    conn: &Connection,
    owner_uid: u64,
    name: Option<String>,
    private: bool,
    history_from_join: bool,
) -> StoreResult<String> {
    let history = if history_from_join { "joined" } else { "shared" };
    let stamp: String = conn.query_row("SELECT strftime('%Y%m%d%H%M%S', 'now')", [], |r| r.get(0))?;
    let base = format!("2_{owner_uid}_{}", &stamp[2..]);
    let mut chat_id = base.clone();
    let mut taken = conn.prepare_cached("SELECT 1 FROM rooms WHERE chat_id = ?1")?;
    let mut suffix = 1;
    while taken.query_row([&chat_id], |_| Ok(())).optional()?.is_some() {
        suffix += 1;
        chat_id = format!("{base}_{suffix}");
    }
    let now = crate::now_ms();
    conn.execute(
        "INSERT INTO rooms (chat_id, owner_uid, name, created_at, private, history)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
        params![chat_id, owner_uid, name, now, private, history],
    )?;
    conn.execute(
        "INSERT INTO conversations (chat_id, kind, last_seq, created_at) VALUES (?1, 2, 0, ?2)",
        params![chat_id, now],
    )?;
    conn.execute(
        "INSERT INTO room_members (chat_id, uid, joined_at) VALUES (?1, ?2, ?3)",
        params![chat_id, owner_uid, now],
    )?;
    conn.execute("INSERT INTO participants (uid, chat_id, read_seq) VALUES (?1, ?2, 0)", params![owner_uid, chat_id])?;
    Ok(chat_id)
}

fn invite_to_room(conn: &Connection, room: &str, by_uid: u64, uid: u64) -> StoreResult<()> {
    conn.execute(
        "INSERT OR REPLACE INTO room_invites (chat_id, uid, invited_by, created_at) VALUES (?1, ?2, ?3, ?4)",
        params![room, uid, by_uid, crate::now_ms()],
    )?;
    Ok(())
}

/// A new member's read position starts at the room's newest message, and that seq is kept
/// as where their history starts in a room whose history is not shared.
fn join_room(conn: &Connection, room: &str, uid: u64, private: bool) -> StoreResult<Joined> {
    let member = conn
        .prepare_cached("SELECT 1 FROM room_members WHERE chat_id = ?1 AND uid = ?2")?
        .query_row(params![room, uid], |_| Ok(()))
        .optional()?
        .is_some();
    if member {
        return Ok(Joined::Yes);
    }
    // Checked and used up in the writer, so two joins cannot share one invitation.
    let invited = conn.execute("DELETE FROM room_invites WHERE chat_id = ?1 AND uid = ?2", params![room, uid])?;
    if private && invited == 0 {
        return Ok(Joined::NotInvited);
    }
    conn.execute(
        "INSERT INTO room_members (chat_id, uid, joined_at, joined_seq)
         SELECT ?1, ?2, ?3, last_seq FROM conversations WHERE chat_id = ?1",
        params![room, uid, crate::now_ms()],
    )?;
    conn.execute(
        "INSERT OR IGNORE INTO participants (uid, chat_id, read_seq, floor_seq)
         SELECT ?1, chat_id, last_seq, last_seq FROM conversations WHERE chat_id = ?2",
        params![uid, room],
    )?;
    Ok(Joined::Yes)
}

fn leave_room(conn: &Connection, room: &str, uid: u64) -> StoreResult<()> {
    conn.execute("DELETE FROM room_members WHERE chat_id = ?1 AND uid = ?2", params![room, uid])?;
    conn.execute("DELETE FROM participants WHERE chat_id = ?1 AND uid = ?2", params![room, uid])?;
    Ok(())
}
