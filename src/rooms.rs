//! Group rooms: creation, invitations and membership, shared by the HTTP routes and the
//! WebSocket actions. Each change is committed first, then mirrored into the directory.

use rusqlite::{OptionalExtension, params};

use crate::app::App;
pub use crate::directory::RoomPolicy;
use crate::store::StoreError;

#[derive(Debug)]
pub enum RoomError {
    NoSuchRoom,
    NoSuchUser(u64),
    /// Joining a private room uninvited, or inviting into a room one is not in.
    Forbidden(String),
    Store(StoreError),
}

impl From<StoreError> for RoomError {
    fn from(e: StoreError) -> Self {
        RoomError::Store(e)
    }
}

/// Creates a room owned (and joined) by `owner_uid`; returns its chat id
/// `2_<uid>_<yymmddHHMMSS>`, with `_2`, `_3`, … for more rooms of that user in one second.
pub async fn create(app: &App, owner_uid: u64, name: Option<String>, policy: RoomPolicy) -> Result<String, RoomError> {
    let history = if policy.history_from_join { "joined" } else { "shared" };
    let chat_id = app
        .store
        .write(move |conn| {
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
                params![chat_id, owner_uid, name, now, policy.private, history],
            )?;
            conn.execute(
                "INSERT INTO conversations (chat_id, kind, last_seq, created_at) VALUES (?1, 2, 0, ?2)",
                params![chat_id, now],
            )?;
            conn.execute(
                "INSERT INTO room_members (chat_id, uid, joined_at) VALUES (?1, ?2, ?3)",
                params![chat_id, owner_uid, now],
            )?;
            conn.execute(
                "INSERT INTO participants (uid, chat_id, read_seq) VALUES (?1, ?2, 0)",
                params![owner_uid, chat_id],
            )?;
            Ok(chat_id)
        })
        .await?;
    app.directory.add_room(&chat_id, owner_uid, policy);
    Ok(chat_id)
}

/// A member of the room invites `uid`; the invitation is kept until `uid` joins (then used
/// up). Inviting someone already in the room changes nothing.
pub async fn invite(app: &App, chat_id: &str, by_uid: u64, uid: u64) -> Result<(), RoomError> {
    let members = app.directory.room_members(chat_id).ok_or(RoomError::NoSuchRoom)?;
    if !members.contains(&by_uid) {
        return Err(RoomError::Forbidden(format!("only members of {chat_id} may invite")));
    }
    if !app.directory.user_exists(uid) {
        return Err(RoomError::NoSuchUser(uid));
    }
    if members.contains(&uid) {
        return Ok(());
    }
    let room = chat_id.to_string();
    app.store
        .write(move |conn| {
            conn.execute(
                "INSERT OR REPLACE INTO room_invites (chat_id, uid, invited_by, created_at) VALUES (?1, ?2, ?3, ?4)",
                params![room, uid, by_uid, crate::now_ms()],
            )?;
            Ok(())
        })
        .await?;
    Ok(())
}

/// Adds `uid` to the room; a private room needs an invitation, which the join uses up. A new
/// member's read position starts at the room's newest message, and that seq is kept as where
/// their history starts in a room whose history is not shared.
pub async fn join(app: &App, chat_id: &str, uid: u64) -> Result<(), RoomError> {
    if !app.directory.room_exists(chat_id) {
        return Err(RoomError::NoSuchRoom);
    }
    let private = app.directory.room_policy(chat_id).private;
    let room = chat_id.to_string();
    let joined = app
        .store
        .write(move |conn| {
            let member = conn
                .prepare_cached("SELECT 1 FROM room_members WHERE chat_id = ?1 AND uid = ?2")?
                .query_row(params![room, uid], |_| Ok(()))
                .optional()?
                .is_some();
            if member {
                return Ok(true);
            }
            // Checked and used up in the writer, so two joins cannot share one invitation.
            let invited =
                conn.execute("DELETE FROM room_invites WHERE chat_id = ?1 AND uid = ?2", params![room, uid])?;
            if private && invited == 0 {
                return Ok(false);
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
            Ok(true)
        })
        .await?;
    if !joined {
        return Err(RoomError::Forbidden(format!("{chat_id} is private: joining needs an invitation by a member")));
    }
    app.directory.add_member(chat_id, uid);
    // A message committed after the join but delivered before `add_member` reached neither
    // the new member's connections nor their hint: make their next connect ask the store.
    app.directory.unread.note([uid]);
    Ok(())
}

/// Removes `uid` from the room; leaving a room one is not in is not an error.
pub async fn leave(app: &App, chat_id: &str, uid: u64) -> Result<(), RoomError> {
    if !app.directory.room_exists(chat_id) {
        return Err(RoomError::NoSuchRoom);
    }
    let room = chat_id.to_string();
    app.store
        .write(move |conn| {
            conn.execute("DELETE FROM room_members WHERE chat_id = ?1 AND uid = ?2", params![room, uid])?;
            conn.execute("DELETE FROM participants WHERE chat_id = ?1 AND uid = ?2", params![room, uid])?;
            Ok(())
        })
        .await?;
    // After the commit, so a failed one leaves the user a member in memory and database alike;
    // before the reply, so deliveries that start once the user has it leave them out.
    app.directory.remove_member(chat_id, uid);
    Ok(())
}
