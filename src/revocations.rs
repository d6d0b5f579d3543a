//! Notices revocations made by another process on the database (`imd user revoke`) and
//! closes the sockets of the users they revoke, within about a second.

use std::sync::Arc;
use std::time::Duration;

use crate::app::App;
use crate::registry::TOKEN_CLOSE;

/// How often the database's revocation count is read: one primary-key lookup.
const CHECK_EVERY: Duration = Duration::from_secs(1);

/// Watches until the daemon shuts down.
pub fn spawn(app: Arc<App>) {
    tokio::spawn(watch(app));
}

async fn watch(app: Arc<App>) {
    let mut tick = tokio::time::interval(CHECK_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // None also before the first revocation: one made between start-up (which loaded the
    // generations) and the first check shows as a change.
    let mut seen: Option<String> = None;
    loop {
        tokio::select! {
            _ = app.shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        let count = match app.store.revocation_count().await {
            Ok(count) => count,
            Err(e) => {
                tracing::debug!("reading the revocation count: {e}");
                continue;
            }
        };
        if count == seen {
            continue;
        }
        // Only the whole table tells whose generation moved; this runs once per revocation.
        match app.store.token_generations().await {
            Ok(generations) => {
                for uid in app.directory.reload_token_gens(&generations) {
                    let closed = app.registry.close_user(uid, TOKEN_CLOSE, crate::registry::TOKEN_REVOKED);
                    tracing::info!(uid, closed, "tokens revoked on the database");
                }
                seen = count;
            }
            Err(e) => tracing::warn!("reloading token generations: {e}"),
        }
    }
}
