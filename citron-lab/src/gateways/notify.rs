//! One `LISTEN citron` connection per gateway (PostgreSQL), on a thread of its own.
//!
//! Payloads: `events` (a gateway committed events: the SSE readers query again),
//! `forward:<gateway>` (a request was forwarded to that gateway), `answered` (a forwarded
//! request was answered), `tokens` (a token was revoked: the API reads the revocations again). Each becomes a bump of a watch; whoever waits re-reads the state,
//! so a notification only says *when* to look, never *what* is there, and one lost while the
//! connection was down costs nothing: on reconnecting every watch is bumped.

use std::sync::Weak;
use std::time::Duration;

use sqlx::postgres::PgListener;

use super::Membership;
use crate::state::feed::CHANNEL;

/// Listens until `m` is dropped.
pub(super) fn spawn(m: Weak<Membership>, url: String) {
    let spawned = std::thread::Builder::new().name("citron-listen".into()).spawn(move || {
        let rt = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
            Ok(rt) => rt,
            Err(e) => {
                tracing::error!(error = %e, "cannot start the notification listener");
                return;
            }
        };
        rt.block_on(listen(m, url));
    });
    if let Err(e) = spawned {
        tracing::error!(error = %e, "cannot start the notification listener's thread");
    }
}

async fn listen(m: Weak<Membership>, url: String) {
    loop {
        let mut l = match PgListener::connect(&url).await {
            Ok(l) => l,
            Err(e) => {
                tracing::warn!(error = %e, "notifications: cannot connect; trying again in 1 s");
                tokio::time::sleep(Duration::from_secs(1)).await;
                if m.strong_count() == 0 {
                    return;
                }
                continue;
            }
        };
        if let Err(e) = l.listen(CHANNEL).await {
            tracing::warn!(error = %e, "notifications: LISTEN failed; trying again in 1 s");
            tokio::time::sleep(Duration::from_secs(1)).await;
            continue;
        }
        // Anything sent before LISTEN took effect is read from the state by whoever wakes.
        let Some(me) = m.upgrade() else { return };
        me.wake_all();
        drop(me);
        loop {
            // Not cancelled by a timeout (a message half read would be lost): the thread
            // notices that the gateway is gone at the next notification.
            let next = l.try_recv().await;
            let Some(me) = m.upgrade() else { return };
            match next {
                Ok(Some(n)) => me.on_notification(n.payload()),
                // The connection was lost; it reconnects on the next call.
                Ok(None) => me.wake_all(),
                Err(e) => {
                    tracing::warn!(error = %e, "notifications: the listener failed; reconnecting");
                    me.wake_all();
                    break;
                }
            }
        }
    }
}

impl Membership {
    fn on_notification(&self, payload: &str) {
        match payload {
            "events" => self.feed.notified(),
            "answered" => self.answers.send_modify(|n| *n = n.wrapping_add(1)),
            "tokens" => self.revocations.send_modify(|n| *n = n.wrapping_add(1)),
            p => {
                if p.strip_prefix("forward:") == Some(self.name.as_str()) {
                    self.work.send_modify(|n| *n = n.wrapping_add(1));
                }
            }
        }
    }

    /// Every watch bumped: whatever waits reads the state again.
    fn wake_all(&self) {
        self.feed.notified();
        self.answers.send_modify(|n| *n = n.wrapping_add(1));
        self.work.send_modify(|n| *n = n.wrapping_add(1));
        self.revocations.send_modify(|n| *n = n.wrapping_add(1));
    }
}
