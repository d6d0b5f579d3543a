//! A connection's outbound queue, bounded in bytes. Producers (the store's fan-out, the
//! session's own replies) push shared frame bytes without blocking; the session drains the
//! whole queue at once and writes it with one flush. A message frame travels with the
//! (chat_id, seq) it carries, so that the session knows what it has delivered once written.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use tokio::sync::Notify;
use tokio_tungstenite::tungstenite::{Message, Utf8Bytes};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutboxState {
    Open,
    /// The reader fell too far behind: the session closes the connection with 1008.
    Overflowed,
    Closed,
}

/// The conversation and seq of the message a frame carries.
pub type Mark = (Arc<str>, i64);

/// A queued frame, with its mark if it carries a message.
pub struct Queued {
    pub frame: Message,
    pub mark: Option<Mark>,
}

struct Queue {
    frames: VecDeque<Queued>,
    bytes: usize,
    state: OutboxState,
}

pub struct Outbox {
    queue: Mutex<Queue>,
    limit: usize,
    /// Signalled when the queue becomes non-empty or changes state.
    ready: Notify,
    /// Signalled on overflow, so that a session stuck writing to a slow socket gives up.
    overflow: Notify,
}

impl Outbox {
    pub fn new(limit: usize) -> Outbox {
        Outbox {
            queue: Mutex::new(Queue { frames: VecDeque::new(), bytes: 0, state: OutboxState::Open }),
            limit,
            ready: Notify::new(),
            overflow: Notify::new(),
        }
    }

    /// Queues a text frame; false when the connection is closed or has just overflowed.
    pub fn push(&self, frame: &Utf8Bytes) -> bool {
        self.push_marked(frame, None)
    }

    /// Queues a text frame that carries the message `mark`.
    pub fn push_marked(&self, frame: &Utf8Bytes, mark: Option<Mark>) -> bool {
        let Ok(mut queue) = self.queue.lock() else { return false };
        if queue.state != OutboxState::Open {
            return false;
        }
        if queue.bytes + frame.len() > self.limit {
            queue.state = OutboxState::Overflowed;
            queue.frames.clear();
            queue.bytes = 0;
            drop(queue);
            self.ready.notify_one();
            self.overflow.notify_one();
            return false;
        }
        queue.bytes += frame.len();
        queue.frames.push_back(Queued { frame: Message::Text(frame.clone()), mark });
        let was_empty = queue.frames.len() == 1;
        drop(queue);
        if was_empty {
            self.ready.notify_one();
        }
        true
    }

    /// Moves every queued frame into `out`; returns the state.
    pub fn drain_into(&self, out: &mut Vec<Queued>) -> OutboxState {
        let Ok(mut queue) = self.queue.lock() else { return OutboxState::Closed };
        out.extend(queue.frames.drain(..));
        queue.bytes = 0;
        queue.state
    }

    pub fn close(&self) {
        if let Ok(mut queue) = self.queue.lock() {
            queue.state = OutboxState::Closed;
            queue.frames.clear();
            queue.bytes = 0;
        }
        self.ready.notify_one();
    }

    /// Waits until there is something to drain (or the state changed).
    pub async fn ready(&self) {
        self.ready.notified().await
    }

    /// Waits until the queue overflows.
    pub async fn overflowed(&self) {
        self.overflow.notified().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overflow_drops_the_queue_and_refuses_more() {
        let outbox = Outbox::new(10);
        let frame = Utf8Bytes::from_static("12345");
        assert!(outbox.push(&frame));
        assert!(outbox.push(&frame));
        assert!(!outbox.push(&frame), "the third frame exceeds 10 bytes");
        let mut out = Vec::new();
        assert_eq!(outbox.drain_into(&mut out), OutboxState::Overflowed);
        assert!(out.is_empty());
        assert!(!outbox.push(&Utf8Bytes::from_static("1")));
    }

    #[test]
    fn drain_takes_frames_in_order() {
        let outbox = Outbox::new(100);
        for text in ["a", "b", "c"] {
            assert!(outbox.push(&Utf8Bytes::from_static(text)));
        }
        let mut out = Vec::new();
        assert_eq!(outbox.drain_into(&mut out), OutboxState::Open);
        let texts: Vec<String> = out.iter().map(|q| q.frame.to_text().unwrap().to_string()).collect();
        assert_eq!(texts, ["a", "b", "c"]);
        assert!(outbox.push(&Utf8Bytes::from_static("d")), "draining frees the budget");
    }

    #[test]
    fn a_message_frame_keeps_its_mark() {
        let outbox = Outbox::new(100);
        assert!(outbox.push_marked(&Utf8Bytes::from_static("m"), Some((Arc::from("1_1_2"), 7))));
        assert!(outbox.push(&Utf8Bytes::from_static("r")));
        let mut out = Vec::new();
        outbox.drain_into(&mut out);
        let marks: Vec<Option<(&str, i64)>> = out.iter().map(|q| q.mark.as_ref().map(|(c, s)| (&**c, *s))).collect();
        assert_eq!(marks, [Some(("1_1_2", 7)), None]);
    }
}
