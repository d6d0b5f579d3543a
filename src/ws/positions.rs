//! Saves a connection's delivered positions (`delivery::positions`) through the store: at
//! most once a second per connection, and once when the session ends.

use std::sync::Arc;
use std::time::Instant;

use crate::app::App;
use crate::registry::Connection;

/// Saves `conn`'s unsaved positions soon: at once if the last save was a second ago or more,
/// else when that second is over. At most one save waits per connection; it is tracked with
/// the sessions, so shutdown waits for it (and cuts its wait short).
pub fn schedule_save(app: &Arc<App>, conn: &Arc<Connection>) {
    let Some(delay) = conn.positions.schedule(Instant::now()) else { return };
    let (app, conn) = (app.clone(), conn.clone());
    app.sessions.clone().spawn(async move {
        if !delay.is_zero() {
            tokio::select! {
                _ = tokio::time::sleep(delay) => {}
                _ = app.shutdown.cancelled() => {}
            }
        }
        save(&app, &conn).await;
    });
}

/// Saves `conn`'s unsaved positions now and waits for the commit.
pub async fn save(app: &App, conn: &Connection) {
    let positions = conn.positions.take(Instant::now());
    if positions.is_empty() {
        return;
    }
    let (uid, device) = (conn.uid, conn.device.to_string());
    let saving = positions.clone();
    let saved = app.store.advance_delivered(uid, device, saving).await;
    if let Err(e) = saved {
        tracing::warn!(uid, "delivered positions not saved: {e}");
        conn.positions.restore(positions);
    }
}
