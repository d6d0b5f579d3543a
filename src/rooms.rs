//! Group rooms: creation, invitations and membership, shared by the HTTP routes and the
//! WebSocket actions. Each change is committed first, then mirrored into the directory. A
//! check that would refuse asks the read-through first (cluster mode: the room, the user or
//! the membership may come from another node a moment ago).

use crate::directory::Directory;
pub use crate::directory::RoomPolicy;
use crate::read_through::{Fact, ReadThrough};
use crate::store::{Joined, Store, StoreError};

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
pub async fn create(
    store: &Store,
    directory: &Directory,
    owner_uid: u64,
    name: Option<String>,
    policy: RoomPolicy,
) -> Result<String, RoomError> {
    let chat_id = store.create_room(owner_uid, name, policy.private, policy.history_from_join).await?;
    directory.add_room(&chat_id, owner_uid, policy);
    Ok(chat_id)
}

/// A member of the room invites `uid`; the invitation is kept until `uid` joins (then used
/// up). Inviting someone already in the room changes nothing.
pub async fn invite(
    store: &Store,
    directory: &Directory,
    read_through: &ReadThrough,
    chat_id: &str,
    by_uid: u64,
    uid: u64,
) -> Result<(), RoomError> {
    if !read_through.confirm(&Fact::Member(chat_id.to_string(), by_uid)).await {
        if !directory.room_exists(chat_id) {
            return Err(RoomError::NoSuchRoom);
        }
        return Err(RoomError::Forbidden(format!("only members of {chat_id} may invite")));
    }
    if !read_through.confirm(&Fact::user(uid)).await {
        return Err(RoomError::NoSuchUser(uid));
    }
    let members = directory.room_members(chat_id).ok_or(RoomError::NoSuchRoom)?;
    if members.contains(&uid) {
        return Ok(());
    }
    store.invite_to_room(chat_id.to_string(), by_uid, uid).await?;
    Ok(())
}

/// Adds `uid` to the room; a private room needs an invitation, which the join uses up (the
/// store sets the new member's read position: `store::rooms`).
pub async fn join(
    store: &Store,
    directory: &Directory,
    read_through: &ReadThrough,
    chat_id: &str,
    uid: u64,
) -> Result<(), RoomError> {
    if !read_through.confirm(&Fact::Room(chat_id.to_string())).await {
        return Err(RoomError::NoSuchRoom);
    }
    let private = directory.room_policy(chat_id).private;
    let joined = store.join_room(chat_id.to_string(), uid, private).await?;
    if joined == Joined::NotInvited {
        return Err(RoomError::Forbidden(format!("{chat_id} is private: joining needs an invitation by a member")));
    }
    directory.add_member(chat_id, uid);
    // A message committed after the join but delivered before `add_member` reached neither
    // the new member's connections nor their hint: make their next connect ask the store.
    directory.unread.note([uid]);
    Ok(())
}

/// Removes `uid` from the room; leaving a room one is not in is not an error.
pub async fn leave(
    store: &Store,
    directory: &Directory,
    read_through: &ReadThrough,
    chat_id: &str,
    uid: u64,
) -> Result<(), RoomError> {
    if !read_through.confirm(&Fact::Room(chat_id.to_string())).await {
        return Err(RoomError::NoSuchRoom);
    }
    store.leave_room(chat_id.to_string(), uid).await?;
    // After the commit, so a failed one leaves the user a member in memory and database alike;
    // before the reply, so deliveries that start once the user has it leave them out.
    directory.remove_member(chat_id, uid);
    Ok(())
}
