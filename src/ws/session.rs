//! One WebSocket connection: the `connected` frame and offline sync, then a loop that reads
//! client frames, writes queued frames (all that are queued, one flush), pings idle peers,
//! and closes with the contract's codes.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use serde_json::json;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, Role, WebSocketConfig};
use tokio_tungstenite::tungstenite::{Bytes, Error as WsError, Message, Utf8Bytes};

use super::cork::Cork;
use super::liveness::{Liveness, Tick};
use super::positions;
use super::rate::RateLimit;
use crate::actions::{self, Pass, Step};
use crate::app::App;
use crate::auth::Claims;
use crate::delivery::outbox::{OutboxState, Queued};
use crate::frames;
use crate::metrics::CloseReason;
use crate::registry::{Connection, TOKEN_CLOSE};
use crate::unread::SyncNeed;

/// Socket read buffer per connection (tungstenite allocates it up front; it grows for larger
/// frames): small, because most connections are mostly idle. 4 KiB cost 3 KiB per connection.
const READ_BUFFER: usize = 1024;
/// Bytes gathered before tungstenite writes to the socket (a flush always writes).
const WRITE_BUFFER: usize = 16 * 1024;
/// How long a closing handshake may take before the socket is just dropped.
const CLOSE_GRACE: Duration = Duration::from_secs(5);
/// Longest the expiry timer is armed for at once; it is re-armed until `exp` (tokio's timers
/// do not reach arbitrarily far).
const EXPIRY_TIMER_MAX: Duration = Duration::from_secs(86_400);
/// The error frame of a frame over the rate limit.
const RATE_LIMITED: &str = "rate limited: slow down";

/// Why a session ends.
enum End {
    /// The peer went away or the socket failed: nothing more to write.
    Gone,
    /// Close with this code after writing what is queued; the reason counted in the metrics.
    Close(CloseCode, &'static str, CloseReason),
    /// Dropped without a close handshake, for this reason (a peer that stopped answering).
    Dropped(&'static str),
}

impl End {
    /// Why the connection ended, for the log line of its close.
    fn reason(&self) -> (&'static str, Option<u16>) {
        match self {
            End::Gone => ("peer closed", None),
            End::Close(code, reason, _) => (reason, Some(u16::from(*code))),
            End::Dropped(reason) => (reason, None),
        }
    }

    /// Why it ended, for `imd_connections_closed_total`.
    fn metric(&self) -> CloseReason {
        match self {
            End::Gone => CloseReason::Normal,
            End::Close(_, _, why) => *why,
            End::Dropped(_) => CloseReason::PingTimeout,
        }
    }
}

/// The close of a client that does not read fast enough: its outbound queue overflowed.
fn too_slow() -> End {
    End::Close(CloseCode::Policy, "too slow: outbound queue full", CloseReason::SlowConsumer)
}

struct Session<S> {
    app: Arc<App>,
    conn: Arc<Connection>,
    claims: Claims,
    ws: WebSocketStream<S>,
    rate: RateLimit,
    /// A WebSocket ping over the limit was answered with 429 since the last frame allowed:
    /// further ones get no 429 until the limit lets a frame through.
    pings_limited: bool,
    /// The current stretch over the rate limit is logged already: a flood makes one line.
    rate_logged: bool,
    liveness: Liveness,
    /// Holds the `101` until the sync is written (see `cork`).
    cork: Option<Cork>,
}

pub async fn run<S>(app: Arc<App>, io: S, claims: Claims, device: String, ip: IpAddr, cork: Option<Cork>)
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let max = app.config.max_frame_bytes;
    let config = WebSocketConfig::default()
        .read_buffer_size(READ_BUFFER)
        .write_buffer_size(WRITE_BUFFER)
        .max_write_buffer_size(app.config.outbox_bytes + WRITE_BUFFER + max)
        .max_message_size(Some(max))
        .max_frame_size(Some(max));
    let ws = WebSocketStream::from_raw_socket(io, Role::Server, Some(config)).await;
    let conn = app.registry.add(claims.uid, &device);
    app.metrics.opened();
    tracing::info!(conn = conn.id, uid = claims.uid, %ip, device = %conn.device, "connection opened");
    let rate = RateLimit::new(app.config.rate_limit, app.config.rate_burst);
    let liveness = Liveness::new(Duration::from_secs(app.config.ping_interval.max(1)), Instant::now());
    let mut session = Session {
        app: app.clone(),
        conn: conn.clone(),
        claims,
        ws,
        rate,
        pings_limited: false,
        rate_logged: false,
        liveness,
        cork,
    };
    let end = session.serve().await;
    let (reason, code) = end.reason();
    app.metrics.closed(end.metric());
    session.finish(end).await;
    tracing::info!(conn = conn.id, uid = conn.uid, %ip, device = %conn.device, reason, code, "connection closed");
    // Before leaving the registry, so that a reconnect that no longer finds this connection
    // finds its positions saved.
    positions::save(&app, &conn).await;
    app.registry.remove(&conn);
}

impl<S> Session<S>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    async fn serve(&mut self) -> End {
        // A logout between the upgrade's check and joining the registry did not find this
        // connection to close it.
        if let Some(end) = self.token_end() {
            return end;
        }
        if let Err(end) = self.sync().await {
            return end;
        }
        let interval = self.liveness.interval();
        let mut ping = tokio::time::interval_at(tokio::time::Instant::now() + interval, interval);
        // After a stall, late ticks must not fire back to back: the second would find the
        // first one's ping unanswered.
        ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut outgoing = Vec::new();
        // One registration with the shutdown token for the whole session, not one per turn.
        let shutdown = self.app.shutdown.clone().cancelled_owned();
        tokio::pin!(shutdown);
        // Revocation (logout, an admin) and expiry close the socket even if it never sends.
        let kicked = self.conn.kicked.clone().cancelled_owned();
        tokio::pin!(kicked);
        let expiry = tokio::time::sleep(self.until_expiry());
        tokio::pin!(expiry);
        loop {
            tokio::select! {
                biased;
                _ = &mut shutdown => return End::Close(CloseCode::Away, "server shutting down", CloseReason::Shutdown),
                _ = &mut kicked => {
                    let (code, reason) = self.conn.closing().unwrap_or((TOKEN_CLOSE, "token revoked"));
                    return End::Close(CloseCode::from(code), reason, CloseReason::Revoked);
                }
                _ = &mut expiry => match self.token_end() {
                    Some(end) => return end,
                    None => expiry.as_mut().reset(tokio::time::Instant::now() + self.until_expiry()),
                },
                _ = self.conn.outbox.ready() => {
                    if let Err(end) = self.write_queued(&mut outgoing).await {
                        return end;
                    }
                }
                incoming = self.ws.next() => {
                    if let Err(end) = self.on_incoming(incoming).await {
                        return end;
                    }
                }
                _ = ping.tick() => match self.liveness.on_tick(Instant::now()) {
                    Tick::Quiet => {}
                    Tick::Ping => {
                        if self.ws.send(Message::Ping(Bytes::new())).await.is_err() {
                            return End::Gone;
                        }
                    }
                    Tick::Dead => return End::Dropped("ping timeout"),
                },
            }
        }
    }

    /// `connected`, then every stored message this device has not received, then `sync_done`
    /// (with what the caps left out). A sync that fails is an error and closes with 1011.
    async fn sync(&mut self) -> Result<(), End> {
        let uid = self.claims.uid;
        let connected =
            json!({"action": "connected", "uid": uid, "username": self.claims.name, "device": &*self.conn.device});
        self.feed(frames::json(connected)).await?;
        // A cluster node cannot know "nothing unread" from memory: a message committed on
        // another node reaches its hints only when the batch arrives, maybe after this connect.
        let need = match self.app.cluster {
            Some(_) => self.app.directory.unread.query(uid),
            None => self.app.directory.unread.check(uid),
        };
        let batch = match need {
            SyncNeed::Nothing => {
                self.app.metrics.syncs_from_memory.inc();
                None
            }
            SyncNeed::Query(snapshot) => {
                self.app.metrics.syncs_from_store.inc();
                let device = self.conn.device.to_string();
                match self.app.store.sync_for(uid, device).await {
                    Ok(batch) => {
                        if batch.all_read {
                            self.app.directory.unread.synced(snapshot);
                        }
                        Some(batch)
                    }
                    Err(e) => return Err(self.sync_failed(&e.to_string()).await),
                }
            }
        };
        let (missed, cut, more) = match &batch {
            Some(batch) => (&batch.messages[..], &batch.cut[..], batch.more),
            None => (&[][..], &[][..], false),
        };
        self.app.metrics.sync_messages.observe(missed.len() as f64);
        for message in missed {
            let name = self.app.directory.username(message.from_uid);
            self.feed(frames::message(message, name.as_deref().unwrap_or("system"))).await?;
        }
        if !missed.is_empty() {
            // Saved before `sync_done`, so a client that reconnects once it has its sync is not
            // sent the same messages again.
            self.ws.flush().await.map_err(|_| End::Gone)?;
            self.conn.positions.advance(missed.iter().map(|m| (&m.chat_id, m.seq)));
            positions::save(&self.app, &self.conn).await;
        }
        let cut: Vec<_> =
            cut.iter().map(|(chat_id, first_seq)| json!({"chat_id": &**chat_id, "first_seq": first_seq})).collect();
        let done = json!({"action": "sync_done", "count": missed.len(), "cut": cut, "more": more});
        self.feed(frames::json(done)).await?;
        self.ws.flush().await.map_err(|_| End::Gone)?;
        if let Some(cork) = self.cork.take() {
            cork.release();
        }
        Ok(())
    }

    /// Tells the client its sync failed, instead of an empty `sync_done`; the session ends
    /// with 1011 so that the client reconnects (and syncs) later.
    async fn sync_failed(&mut self, error: &str) -> End {
        tracing::error!(uid = self.claims.uid, "sync failed: {error}");
        self.app.metrics.error(503);
        let _ = self.feed(frames::error(503, &format!("sync failed: {error}"), None)).await;
        let _ = self.ws.flush().await;
        if let Some(cork) = self.cork.take() {
            cork.release();
        }
        End::Close(CloseCode::Error, "sync failed", CloseReason::Error)
    }

    async fn feed(&mut self, frame: Utf8Bytes) -> Result<(), End> {
        self.ws.feed(Message::Text(frame)).await.map_err(|_| End::Gone)
    }

    /// Writes everything queued with one flush, then records the messages written. A peer too
    /// slow to take it all overflows the queue, which ends the wait even mid-write.
    async fn write_queued(&mut self, outgoing: &mut Vec<Queued>) -> Result<(), End> {
        match self.conn.outbox.drain_into(outgoing) {
            OutboxState::Open => {}
            OutboxState::Overflowed => return Err(too_slow()),
            OutboxState::Closed => return Err(End::Gone),
        }
        self.conn.positions.drop_written(outgoing);
        if outgoing.is_empty() {
            return Ok(());
        }
        let ws = &mut self.ws;
        let frames = &*outgoing;
        let write = async {
            for queued in frames {
                ws.feed(queued.frame.clone()).await?;
            }
            ws.flush().await
        };
        let result = tokio::select! {
            written = write => written.map_err(|_| End::Gone),
            _ = self.conn.outbox.overflowed() => Err(too_slow()),
        };
        if result.is_ok() {
            self.delivered(outgoing);
        }
        outgoing.clear();
        result
    }

    /// The messages among `written` are on the socket: this device has received them.
    fn delivered(&self, written: &[Queued]) {
        let marks = written.iter().filter_map(|queued| queued.mark.as_ref().map(|(chat_id, seq)| (chat_id, *seq)));
        self.conn.positions.advance(marks);
        positions::schedule_save(&self.app, &self.conn);
    }

    /// How long until the token's `exp` (at most `EXPIRY_TIMER_MAX`).
    fn until_expiry(&self) -> Duration {
        let exp_ms = i64::try_from(self.claims.exp).unwrap_or(i64::MAX / 1000).saturating_mul(1000);
        let left = u64::try_from(exp_ms.saturating_sub(crate::now_ms())).unwrap_or(0);
        Duration::from_millis(left.max(1)).min(EXPIRY_TIMER_MAX)
    }

    /// The close for a token that expired or was revoked; None while it is valid.
    fn token_end(&self) -> Option<End> {
        if self.app.token_still_valid(&self.claims) {
            return None;
        }
        let (reason, why) = if self.claims.exp <= crate::auth::now_secs() {
            ("token expired", CloseReason::Expired)
        } else {
            ("token revoked", CloseReason::Revoked)
        };
        Some(End::Close(CloseCode::from(TOKEN_CLOSE), reason, why))
    }

    /// Takes a token of the rate limit for any frame the client sends.
    fn allow_frame(&mut self) -> bool {
        let allowed = self.rate.allow(Instant::now());
        if allowed {
            self.pings_limited = false;
            self.rate_logged = false;
        } else if !self.rate_logged {
            self.rate_logged = true;
            tracing::warn!(conn = self.conn.id, uid = self.claims.uid, "frames refused: rate limit");
        }
        allowed
    }

    async fn on_incoming(&mut self, incoming: Option<Result<Message, WsError>>) -> Result<(), End> {
        let message = match incoming {
            None => return Err(End::Gone),
            Some(Ok(message)) => message,
            Some(Err(WsError::Capacity(_))) => {
                let limit = self.app.config.max_frame_bytes;
                self.refuse(frames::error(413, &format!("frame larger than {limit} bytes"), None), 413).await?;
                return Err(End::Close(CloseCode::Size, "frame too large", CloseReason::Limit));
            }
            Some(Err(_)) => return Err(End::Gone),
        };
        self.liveness.heard(Instant::now());
        match message {
            Message::Text(text) => self.on_text(&text).await,
            Message::Binary(_) if !self.allow_frame() => self.refuse(frames::error(429, RATE_LIMITED, None), 429).await,
            Message::Binary(_) => {
                self.refuse(frames::error(400, "binary frames are not supported: send JSON text frames", None), 400)
                    .await
            }
            // tungstenite queued the pong; send it now.
            Message::Ping(_) if self.allow_frame() => self.ws.flush().await.map_err(|_| End::Gone),
            // Over the limit: not flushed here, and one 429 per limited stretch, so that a
            // flood of pings costs one error frame. The pong itself cannot be withheld:
            // tungstenite sends the latest pending one at its next read or write.
            Message::Ping(_) if self.pings_limited => Ok(()),
            Message::Ping(_) => {
                self.pings_limited = true;
                self.refuse(frames::error(429, RATE_LIMITED, None), 429).await
            }
            // Counted like any frame; there is nothing to answer.
            Message::Pong(_) => {
                self.allow_frame();
                Ok(())
            }
            // tungstenite queued the reply to a close; send it now.
            Message::Close(_) => self.ws.flush().await.map_err(|_| End::Gone),
            Message::Frame(_) => Ok(()),
        }
    }

    /// Handles one frame to the end before the next is read, so that each frame sees what the
    /// ones before it changed (a join commits before the next frame is checked).
    async fn on_text(&mut self, text: &str) -> Result<(), End> {
        if let Some(end) = self.token_end() {
            let refusal = actions::refusal(text, 401, "the access token expired or was revoked: log in again");
            self.refuse(refusal, 401).await?;
            return Err(end);
        }
        if !self.allow_frame() {
            return self.refuse(actions::refusal(text, 429, RATE_LIMITED), 429).await;
        }
        let mut pass = Pass::First;
        let step = loop {
            let app = &self.app;
            let ctx = actions::Ctx {
                store: &app.store,
                directory: &app.directory,
                read_through: &app.read_through,
                registry: &app.registry,
                metrics: &app.metrics,
                conn: &self.conn,
                uid: self.claims.uid,
                cluster: app.cluster.as_ref().map(|node| &node.bus),
            };
            match actions::handle(&ctx, text, pass) {
                // Only on a refusal's path (cluster mode): the store is asked, then the frame
                // handled once more.
                Step::Recheck(check) => {
                    self.while_writing(check).await?;
                    pass = Pass::Again;
                }
                step => break step,
            }
        };
        match step {
            Step::Recheck(_) => Ok(()),
            Step::Reply(frame) => self.reply(frame).await,
            // Never waits for earlier acks: the writer and the fan-out keep messages in order.
            Step::Store(message) => match self.app.store.submit(message).await {
                Ok(()) => Ok(()),
                Err(_) => self.refuse(frames::error(503, "the server is shutting down", None), 503).await,
            },
            Step::Later(change) => {
                let frame = self.while_writing(change).await?;
                self.reply(frame).await
            }
        }
    }

    /// Queues a reply once the acks (or errors) of every message this connection sent before
    /// are queued, so that replies come in the order of the frames they answer.
    async fn reply(&mut self, frame: Utf8Bytes) -> Result<(), End> {
        if !self.conn.in_flight.is_settled() {
            let conn = self.conn.clone();
            self.while_writing(conn.in_flight.settled()).await?;
        }
        self.conn.send(&frame);
        Ok(())
    }

    async fn refuse(&mut self, frame: Utf8Bytes, code: u16) -> Result<(), End> {
        self.app.metrics.error(code);
        self.reply(frame).await
    }

    /// Awaits `work` (a commit, or earlier acks) while still writing what is queued for this
    /// connection, so that a long pipeline's acks do not pile up to an overflow meanwhile.
    async fn while_writing<T>(&mut self, work: impl Future<Output = T>) -> Result<T, End> {
        tokio::pin!(work);
        let conn = self.conn.clone();
        let mut outgoing = Vec::new();
        loop {
            tokio::select! {
                biased;
                done = &mut work => return Ok(done),
                _ = conn.outbox.ready() => self.write_queued(&mut outgoing).await?,
            }
        }
    }

    /// Writes what is still queued and closes with the reason's code, within a grace period.
    /// A revoked or expired session is sent no more messages (its replies, such as the 401,
    /// still go): they stay unreceived, and the next login syncs them.
    async fn finish(&mut self, end: End) {
        let End::Close(code, reason, _) = end else { return };
        let mut outgoing = Vec::new();
        self.conn.outbox.drain_into(&mut outgoing);
        if u16::from(code) == TOKEN_CLOSE {
            outgoing.retain(|queued| queued.mark.is_none());
        }
        let ws = &mut self.ws;
        let frames = &outgoing;
        let close = async {
            for queued in frames {
                ws.feed(queued.frame.clone()).await?;
            }
            ws.close(Some(CloseFrame { code, reason: reason.into() })).await
        };
        if let Ok(Ok(())) = tokio::time::timeout(CLOSE_GRACE, close).await {
            self.delivered(&outgoing);
        }
    }
}
