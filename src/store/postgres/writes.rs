//! Writes other than messages: users, rooms, shops, read and delivered positions, the JWT
//! secret. Each runs at once on a pooled connection, in a transaction of its own when it takes
//! more than one statement; each function owns its rule, as in the SQLite backend.

use std::collections::BTreeMap;
use std::sync::Arc;

use deadpool_postgres::Pool;

use super::PgStore;
use crate::store::{Joined, StoreError, StoreResult};

impl PgStore {
    /// Creates the user `name` (normalised, with its `key`) with a password `hash`; its uid,
    /// or None when the name key is taken.
    pub async fn create_user(&self, name: String, key: String, hash: String) -> StoreResult<Option<u64>> {
        match self.note(insert_user(&self.pool, &name, &key, &hash).await) {
            Ok(uid) => Ok(Some(uid)),
            Err(StoreError::Conflict(_)) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Revokes every token issued to `uid` so far; the new generation, or None when there is
    /// no such user.
    pub async fn bump_token_generation(&self, uid: u64) -> StoreResult<Option<u64>> {
        self.note(
            async {
                let client = self.pool.get().await?;
                let row = client
                    .query_opt(
                        "UPDATE users SET token_gen = token_gen + 1 WHERE uid = $1 RETURNING token_gen",
                        &[&(uid as i64)],
                    )
                    .await?;
                Ok(row.map(|r| r.try_get::<_, i64>(0)).transpose()?.map(|g| g as u64))
            }
            .await,
        )
    }

    /// Moves `uid`'s read position in `chat_id` to `seq`, never back and never past the
    /// newest message; the position now, or None when `uid` is not a participant.
    pub async fn mark_read(&self, uid: u64, chat_id: String, seq: i64) -> StoreResult<Option<i64>> {
        self.note(
            async {
                let client = self.pool.get().await?;
                let update = client
                    .prepare_cached(
                        "UPDATE participants p SET read_seq = GREATEST(p.read_seq, LEAST($3, c.last_seq)),
                            floor_seq = GREATEST(p.floor_seq, LEAST($3, c.last_seq))
                         FROM conversations c WHERE c.chat_id = p.chat_id AND p.uid = $1 AND p.chat_id = $2
                         RETURNING p.read_seq",
                    )
                    .await?;
                let row = client.query_opt(&update, &[&(uid as i64), &chat_id, &seq]).await?;
                Ok(row.map(|r| r.try_get(0)).transpose()?)
            }
            .await,
        )
    }

    /// Creates a room owned (and joined) by `owner_uid`; returns its chat id
    /// `2_<uid>_<yymmddHHMMSS>`, with `_2`, `_3`, … for more rooms of that user in one second.
    pub async fn create_room(
        &self,
        owner_uid: u64,
        name: Option<String>,
        private: bool,
        history_from_join: bool,
    ) -> StoreResult<String> {
        self.note(create_room(&self.pool, owner_uid, name, private, history_from_join).await)
    }

    /// Keeps `by_uid`'s invitation of `uid` into the room until `uid` joins.
    pub async fn invite_to_room(&self, chat_id: String, by_uid: u64, uid: u64) -> StoreResult<()> {
        self.note(
            async {
                let client = self.pool.get().await?;
                client
                    .execute(
                        "INSERT INTO room_invites (chat_id, uid, invited_by, created_at) VALUES ($1, $2, $3, $4)
                         ON CONFLICT (chat_id, uid) DO UPDATE SET invited_by = excluded.invited_by, created_at = excluded.created_at",
                        &[&chat_id, &(uid as i64), &(by_uid as i64), &crate::now_ms()],
                    )
                    .await?;
                Ok(())
            }
            .await,
        )
    }

    /// Adds `uid` to the room; in a `private` one only with an invitation, which is used up.
    pub async fn join_room(&self, chat_id: String, uid: u64, private: bool) -> StoreResult<Joined> {
        self.note(join_room(&self.pool, &chat_id, uid as i64, private).await)
    }

    /// Removes `uid` from the room and its conversation; not being in it is not an error.
    pub async fn leave_room(&self, chat_id: String, uid: u64) -> StoreResult<()> {
        self.note(
            async {
                let mut client = self.pool.get().await?;
                let tx = client.transaction().await?;
                let uid = uid as i64;
                tx.execute("DELETE FROM room_members WHERE chat_id = $1 AND uid = $2", &[&chat_id, &uid]).await?;
                tx.execute("DELETE FROM participants WHERE chat_id = $1 AND uid = $2", &[&chat_id, &uid]).await?;
                tx.commit().await?;
                Ok(())
            }
            .await,
        )
    }

    /// Creates a shop owned by `owner_uid`; its id.
    pub async fn create_shop(&self, name: String, owner_uid: u64) -> StoreResult<u64> {
        self.note(
            async {
                let client = self.pool.get().await?;
                let row = client
                    .query_one(
                        "INSERT INTO shops (name, owner_uid, created_at) VALUES ($1, $2, $3) RETURNING shop_id",
                        &[&name, &(owner_uid as i64), &crate::now_ms()],
                    )
                    .await?;
                Ok(row.try_get::<_, i64>(0)? as u64)
            }
            .await,
        )
    }

    /// Adds `uid` as an agent of the shop, accepted at once when `accepted`, else invited.
    /// Adding again changes nothing; whether `uid` has accepted.
    pub async fn add_agent(&self, shop_id: u64, uid: u64, accepted: bool) -> StoreResult<bool> {
        self.note(
            async {
                let mut client = self.pool.get().await?;
                let tx = client.transaction().await?;
                let (shop, uid) = (shop_id as i64, uid as i64);
                tx.execute(
                    "INSERT INTO shop_agents (shop_id, uid, accepted) VALUES ($1, $2, $3) ON CONFLICT DO NOTHING",
                    &[&shop, &uid, &accepted],
                )
                .await?;
                let row = tx
                    .query_one("SELECT accepted FROM shop_agents WHERE shop_id = $1 AND uid = $2", &[&shop, &uid])
                    .await?;
                let accepted = row.try_get(0)?;
                tx.commit().await?;
                Ok(accepted)
            }
            .await,
        )
    }

    /// The invited `uid` accepts; false when there is no invitation (any more).
    pub async fn accept_agent(&self, shop_id: u64, uid: u64) -> StoreResult<bool> {
        self.note(
            async {
                let client = self.pool.get().await?;
                let changed = client
                    .execute(
                        "UPDATE shop_agents SET accepted = TRUE WHERE shop_id = $1 AND uid = $2",
                        &[&(shop_id as i64), &(uid as i64)],
                    )
                    .await?;
                Ok(changed > 0)
            }
            .await,
        )
    }

    /// `uid` is no longer an agent (or invited) of the shop, and gives up its conversations.
    pub async fn remove_agent(&self, shop_id: u64, uid: u64) -> StoreResult<()> {
        self.note(remove_agent(&self.pool, shop_id as i64, uid as i64).await)
    }

    /// Saves a device's delivered positions, moving each forward only.
    pub async fn advance_delivered(
        &self,
        uid: u64,
        device: String,
        positions: Vec<(Arc<str>, i64)>,
    ) -> StoreResult<()> {
        // One row per conversation (the furthest), in chat_id order: one statement may not
        // touch a row twice, and two of them lock rows in the same order.
        let mut furthest: BTreeMap<&str, i64> = BTreeMap::new();
        for (chat_id, seq) in &positions {
            let entry = furthest.entry(chat_id).or_insert(*seq);
            *entry = (*entry).max(*seq);
        }
        let (chats, seqs): (Vec<&str>, Vec<i64>) = furthest.into_iter().unzip();
        self.note(
            async {
                let client = self.pool.get().await?;
                let upsert = client
                    .prepare_cached(
                        "INSERT INTO delivered (uid, device, chat_id, seq)
                         SELECT $1, $2, chat_id, seq FROM unnest($3::text[], $4::bigint[]) AS u(chat_id, seq)
                         ON CONFLICT (uid, device, chat_id) DO UPDATE SET seq = GREATEST(delivered.seq, excluded.seq)",
                    )
                    .await?;
                client.execute(&upsert, &[&(uid as i64), &device, &chats, &seqs]).await?;
                Ok(())
            }
            .await,
        )
    }

    /// A device says it has received `chat_id` up to `seq`: moves its position there (never
    /// back, never past the newest message). Returns where sync now resumes for that device,
    /// or None if the user does not take part in `chat_id`.
    pub async fn receive(&self, uid: u64, device: String, chat_id: String, seq: i64) -> StoreResult<Option<i64>> {
        self.note(
            async {
                let mut client = self.pool.get().await?;
                let tx = client.transaction().await?;
                let uid = uid as i64;
                let found = tx
                    .query_opt(
                        "SELECT p.floor_seq, c.last_seq FROM participants p
                         LEFT JOIN conversations c ON c.chat_id = p.chat_id WHERE p.uid = $1 AND p.chat_id = $2",
                        &[&uid, &chat_id],
                    )
                    .await?;
                let Some(row) = found else { return Ok(None) };
                let (floor_seq, last_seq): (i64, Option<i64>) = (row.try_get(0)?, row.try_get(1)?);
                let seq = seq.min(last_seq.unwrap_or(0));
                let stored: i64 = tx
                    .query_one(
                        "INSERT INTO delivered (uid, device, chat_id, seq) VALUES ($1, $2, $3, $4)
                         ON CONFLICT (uid, device, chat_id) DO UPDATE SET seq = GREATEST(delivered.seq, excluded.seq)
                         RETURNING seq",
                        &[&uid, &device, &chat_id, &seq],
                    )
                    .await?
                    .try_get(0)?;
                tx.commit().await?;
                Ok(Some(stored.max(floor_seq)))
            }
            .await,
        )
    }
}

/// Inserts the user and makes them a participant of the system conversation at its newest
/// message: broadcasts from before the account are not for it.
async fn insert_user(pool: &Pool, name: &str, key: &str, hash: &str) -> StoreResult<u64> {
    let mut client = pool.get().await?;
    let tx = client.transaction().await?;
    let uid: i64 = tx
        .query_one(
            "INSERT INTO users (username, name_key, password_hash, created_at) VALUES ($1, $2, $3, $4) RETURNING uid",
            &[&name, &key, &hash, &crate::now_ms()],
        )
        .await?
        .try_get(0)?;
    tx.execute(
        "INSERT INTO participants (uid, chat_id, read_seq, floor_seq)
         SELECT $1, chat_id, last_seq, last_seq FROM conversations WHERE chat_id = $2",
        &[&uid, &crate::chat_id::SYSTEM],
    )
    .await?;
    tx.commit().await?;
    Ok(uid as u64)
}

async fn create_room(
    pool: &Pool,
    owner_uid: u64,
    name: Option<String>,
    private: bool,
    history_from_join: bool,
) -> StoreResult<String> {
    let history = if history_from_join { "joined" } else { "shared" };
    let owner = owner_uid as i64;
    let mut client = pool.get().await?;
    let tx = client.transaction().await?;
    let stamp: String =
        tx.query_one("SELECT to_char(now() AT TIME ZONE 'UTC', 'YYMMDDHH24MISS')", &[]).await?.try_get(0)?;
    let base = format!("2_{owner_uid}_{stamp}");
    let now = crate::now_ms();
    // The first free name; another node may take one at the same moment, so the insert is
    // what decides.
    let mut chat_id = None;
    for suffix in 1..=1000 {
        let candidate = if suffix == 1 { base.clone() } else { format!("{base}_{suffix}") };
        let inserted = tx
            .execute(
                "INSERT INTO rooms (chat_id, owner_uid, name, created_at, private, history)
                 VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (chat_id) DO NOTHING",
                &[&candidate, &owner, &name, &now, &private, &history],
            )
            .await?;
        if inserted == 1 {
            chat_id = Some(candidate);
            break;
        }
    }
    let Some(chat_id) = chat_id else {
        return Err(StoreError::Refused(format!("no free room id after {base}_1000")));
    };
    tx.execute(
        "INSERT INTO conversations (chat_id, kind, last_seq, created_at, updated_at) VALUES ($1, 2, 0, $2, $2)",
        &[&chat_id, &now],
    )
    .await?;
    tx.execute("INSERT INTO room_members (chat_id, uid, joined_at) VALUES ($1, $2, $3)", &[&chat_id, &owner, &now])
        .await?;
    tx.execute("INSERT INTO participants (uid, chat_id) VALUES ($1, $2)", &[&owner, &chat_id]).await?;
    tx.commit().await?;
    Ok(chat_id)
}

/// A new member's read position starts at the room's newest message, and that seq is kept as
/// where their history starts in a room whose history is not shared.
async fn join_room(pool: &Pool, room: &str, uid: i64, private: bool) -> StoreResult<Joined> {
    let mut client = pool.get().await?;
    let tx = client.transaction().await?;
    let member = tx.query_opt("SELECT 1 FROM room_members WHERE chat_id = $1 AND uid = $2", &[&room, &uid]).await?;
    if member.is_some() {
        return Ok(Joined::Yes);
    }
    // Used up in this transaction, so two joins cannot share one invitation.
    let invited = tx.execute("DELETE FROM room_invites WHERE chat_id = $1 AND uid = $2", &[&room, &uid]).await?;
    if private && invited == 0 {
        return Ok(Joined::NotInvited);
    }
    tx.execute(
        "INSERT INTO room_members (chat_id, uid, joined_at, joined_seq)
         SELECT $1, $2, $3, last_seq FROM conversations WHERE chat_id = $1
         ON CONFLICT DO NOTHING",
        &[&room, &uid, &crate::now_ms()],
    )
    .await?;
    tx.execute(
        "INSERT INTO participants (uid, chat_id, read_seq, floor_seq)
         SELECT $1, chat_id, last_seq, last_seq FROM conversations WHERE chat_id = $2
         ON CONFLICT DO NOTHING",
        &[&uid, &room],
    )
    .await?;
    tx.commit().await?;
    Ok(Joined::Yes)
}

async fn remove_agent(pool: &Pool, shop: i64, uid: i64) -> StoreResult<()> {
    let mut client = pool.get().await?;
    let tx = client.transaction().await?;
    tx.execute("DELETE FROM shop_agents WHERE shop_id = $1 AND uid = $2", &[&shop, &uid]).await?;
    // The conversations they handled wait for the shop's other agents again, and sync stops
    // offering the shop's conversations to them (unless they are its customer).
    tx.execute("UPDATE conversations SET handler_uid = NULL WHERE shop_id = $1 AND handler_uid = $2", &[&shop, &uid])
        .await?;
    tx.execute(
        "DELETE FROM participants WHERE uid = $2 AND chat_id IN
            (SELECT chat_id FROM conversations WHERE shop_id = $1 AND customer_uid IS DISTINCT FROM $2)",
        &[&shop, &uid],
    )
    .await?;
    tx.commit().await?;
    Ok(())
}

/// The JWT secret kept in `meta`, generated by the first node that asks (the others read it).
pub(super) async fn stored_jwt_secret(pool: &Pool) -> StoreResult<String> {
    let client = pool.get().await?;
    let fresh: String = rand::random::<[u8; 32]>().iter().map(|b| format!("{b:02x}")).collect();
    client.execute("INSERT INTO meta (key, value) VALUES ('jwt_secret', $1) ON CONFLICT DO NOTHING", &[&fresh]).await?;
    Ok(client.query_one("SELECT value FROM meta WHERE key = 'jwt_secret'", &[]).await?.try_get(0)?)
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use tokio::sync::mpsc;

    use super::*;
    use crate::domain::{Kind, NewMessage, ServiceRoute, Ticket};
    use crate::metrics::Metrics;
    use crate::store::postgres::testdb::TestDb;
    use crate::store::{Outcome, WriterSettings};
    use crate::supervisor::Supervisor;

    const SETTINGS: WriterSettings = WriterSettings { durable: true, sync: crate::config::SyncMode::Normal };

    struct Node {
        store: PgStore,
        outcomes: mpsc::Receiver<Vec<Outcome>>,
    }

    impl Node {
        async fn start(db: &TestDb) -> Node {
            let prepared = PgStore::prepare(&db.url).await.unwrap();
            let (tx, outcomes) = mpsc::channel(64);
            let (store, _tasks) =
                prepared.start(SETTINGS, tx, Arc::new(Metrics::new()), &Supervisor::new(None)).unwrap();
            Node { store, outcomes }
        }

        /// Sends one message and waits for its commit; its seq.
        async fn send(
            &mut self,
            kind: Kind,
            chat_id: &str,
            from: u64,
            to: Option<u64>,
            service: Option<ServiceRoute>,
        ) -> i64 {
            let message = NewMessage {
                kind,
                chat_id: Arc::from(chat_id),
                from_uid: from,
                to_uid: to,
                msg_id: None,
                msg_type: "text".into(),
                body: serde_json::value::RawValue::from_string("\"hi\"".into()).unwrap(),
                service,
                ticket: Ticket::new(()),
            };
            self.store.submit(message).await.unwrap();
            let batch =
                tokio::time::timeout(std::time::Duration::from_secs(10), self.outcomes.recv()).await.unwrap().unwrap();
            match batch.into_iter().next() {
                Some(Outcome::Committed(c)) => c.message.seq,
                Some(Outcome::Refused { error, .. }) => panic!("refused: {error}"),
                None => panic!("an empty batch"),
            }
        }
    }

    async fn user(store: &PgStore, name: &str) -> u64 {
        store.create_user(name.into(), crate::usernames::key(name), "hash".into()).await.unwrap().expect("a free name")
    }

    /// The rules of users, rooms, reads and sync, as the SQLite backend has them.
    #[tokio::test]
    async fn users_rooms_and_sync_keep_the_sqlite_rules() {
        let Some(db) = TestDb::create().await else { return };
        let mut node = Node::start(&db).await;
        let store = node.store.clone();
        let (alice, bob, carol) = (user(&store, "Alice").await, user(&store, "bob").await, user(&store, "carol").await);
        assert_eq!(store.create_user("alice".into(), crate::usernames::key("alice"), "h".into()).await.unwrap(), None);
        assert!(store.name_taken(crate::usernames::key("ALICE")).await.unwrap());
        assert_eq!(store.user_for_login("alice".into()).await.unwrap().map(|u| u.uid), Some(alice));
        assert_eq!(store.user_by_name("bob".into()).await.unwrap().map(|u| u.uid), Some(bob));
        assert_eq!(store.bump_token_generation(bob).await.unwrap(), Some(1));
        assert_eq!(store.bump_token_generation(999).await.unwrap(), None);
        assert_eq!(store.user_by_uid(bob).await.unwrap().map(|u| u.token_gen), Some(1));
        assert!(store.token_generations().await.unwrap().contains(&(bob, 1)));
        assert_eq!(store.revocation_count().await.unwrap(), None);

        // A single chat: both take part, the sender has read it, the other has not.
        let chat = format!("1_{alice}_{bob}");
        for expected in 1..=3 {
            assert_eq!(node.send(Kind::Single, &chat, alice, Some(bob), None).await, expected);
        }
        let sync = store.sync_for(bob, "web".into()).await.unwrap();
        assert_eq!(sync.messages.iter().map(|m| m.seq).collect::<Vec<_>>(), [1, 2, 3]);
        assert!(!sync.all_read);
        let own = store.sync_for(alice, "web".into()).await.unwrap();
        assert!(own.messages.is_empty(), "own messages are not synced back");
        assert_eq!(store.receive(bob, "web".into(), chat.clone(), 99).await.unwrap(), Some(3), "clamped");
        assert!(store.sync_for(bob, "web".into()).await.unwrap().messages.is_empty());
        assert_eq!(store.sync_for(bob, "phone".into()).await.unwrap().messages.len(), 3, "per device");
        store
            .advance_delivered(bob, "phone".into(), vec![(Arc::from(chat.as_str()), 2), (Arc::from(chat.as_str()), 1)])
            .await
            .unwrap();
        assert_eq!(store.sync_for(bob, "phone".into()).await.unwrap().messages.len(), 1);
        assert_eq!(store.mark_read(bob, chat.clone(), 99).await.unwrap(), Some(3));
        assert_eq!(store.mark_read(carol, chat.clone(), 1).await.unwrap(), None, "not a participant");
        let (rows, more) = store.conversations_of(alice, 0, 10).await.unwrap();
        assert!(!more);
        assert_eq!(
            rows.iter().map(|r| (r.chat_id.as_str(), r.last_seq, r.read_seq)).collect::<Vec<_>>(),
            [(chat.as_str(), 3, 3)]
        );
        assert_eq!(rows[0].last.as_ref().map(|m| m.seq), Some(3));
        let (page, more) = store.history_page(chat.clone(), alice, false, Some(3), 1).await.unwrap();
        assert_eq!((page.iter().map(|m| m.seq).collect::<Vec<_>>(), more), (vec![2], true));

        // A private room whose history starts at the join.
        let room = store.create_room(alice, Some("r".into()), true, true).await.unwrap();
        assert!(room.starts_with(&format!("2_{alice}_")), "{room}");
        let second = store.create_room(alice, None, false, false).await.unwrap();
        assert_ne!(room, second);
        assert_eq!(node.send(Kind::Group, &room, alice, None, None).await, 1);
        assert_eq!(store.join_room(room.clone(), bob, true).await.unwrap(), Joined::NotInvited);
        store.invite_to_room(room.clone(), alice, bob).await.unwrap();
        assert_eq!(store.join_room(room.clone(), bob, true).await.unwrap(), Joined::Yes);
        assert_eq!(store.join_room(room.clone(), bob, true).await.unwrap(), Joined::Yes, "already a member");
        assert_eq!(node.send(Kind::Group, &room, alice, None, None).await, 2);
        let (page, _) = store.history_page(room.clone(), bob, true, None, 10).await.unwrap();
        assert_eq!(page.iter().map(|m| m.seq).collect::<Vec<_>>(), [2], "from the join on");
        let sync = store.sync_for(bob, "web".into()).await.unwrap();
        assert_eq!(
            sync.messages.iter().map(|m| (m.chat_id.to_string(), m.seq)).collect::<Vec<_>>(),
            [(room.clone(), 2)]
        );
        let info = store.room(room.clone()).await.unwrap().unwrap();
        assert_eq!((info.private, info.history_from_join, info.members.clone()), (true, true, vec![alice, bob]));
        store.leave_room(room.clone(), bob).await.unwrap();
        assert_eq!(store.room(room.clone()).await.unwrap().unwrap().members, vec![alice]);
        assert!(store.conversations_changed_since(0).await.unwrap().iter().any(|(c, s)| **c == *room && *s == 2));
        assert_eq!(store.messages_between(room.clone(), 0, 2).await.unwrap().len(), 2);

        // A shop: the first message waits for every agent; once one handles it, only they see it.
        let shop = store.create_shop("tea".into(), carol).await.unwrap();
        assert!(store.add_agent(shop, carol, true).await.unwrap());
        assert!(!store.add_agent(shop, bob, false).await.unwrap());
        assert!(store.accept_agent(shop, bob).await.unwrap());
        let service = format!("3_{shop}_{alice}");
        let route = |agent: Option<u64>| ServiceRoute {
            shop_id: shop,
            customer_uid: alice,
            agent_uid: agent,
            all_agents: vec![bob, carol],
            seen_handler: None,
        };
        assert_eq!(node.send(Kind::Service, &service, alice, None, Some(route(None))).await, 1);
        assert_eq!(store.sync_for(bob, "x".into()).await.unwrap().messages.len(), 1);
        assert_eq!(node.send(Kind::Service, &service, carol, Some(alice), Some(route(Some(carol)))).await, 2);
        assert!(store.sync_for(bob, "y".into()).await.unwrap().messages.is_empty(), "handled by carol");
        let info = store.shop(shop).await.unwrap().unwrap();
        assert_eq!((info.owner_uid, info.agents.clone(), info.invited.clone()), (carol, vec![bob, carol], vec![]));
        store.remove_agent(shop, carol).await.unwrap();
        assert_eq!(store.sync_for(bob, "z".into()).await.unwrap().messages.len(), 2, "waits for the others again");

        // What a starting node reads.
        let prepared = PgStore::prepare(&db.url).await.unwrap();
        let secret = prepared.jwt_secret().await.unwrap();
        assert_eq!(prepared.jwt_secret().await.unwrap(), secret, "generated once");
        let snapshot = prepared.snapshot(None).await.unwrap();
        assert_eq!(snapshot.users.len(), 3);
        assert_eq!(snapshot.rooms.len(), 2);
        assert_eq!(snapshot.agents.len(), 1);
        assert!(snapshot.handlers.is_empty(), "carol left the shop");
        assert_eq!(store.user(bob).await.unwrap().map(|u| u.username), Some("bob".into()));
        assert_eq!(store.degraded(), None);
    }
}
