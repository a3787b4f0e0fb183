//! The heartbeat: this gateway says it is alive, and marks the silent ones offline.
//!
//! Every beat (a third of `gateways.heartbeat_timeout`) is one transaction: this gateway's
//! `heartbeat_at` (and, if another gateway had marked it offline, back online with its DUTs:
//! `gateway_online`, `dut_online`), then every other gateway silent for longer than the timeout
//! and not yet marked gets `offline_since` (`gateway_offline`, `dut_offline` for each of its
//! DUTs). The marking is one `UPDATE … RETURNING`, so when several gateways notice the same
//! silence only one of them records it. Nothing is deleted: a DUT offline stays in the lab.

use std::sync::Weak;
use std::time::{Duration, SystemTime};

use sqlx::Row as _;

use super::Membership;
use crate::state::feed::NewEvent;
use crate::state::to_micros;

/// Beats every `every` on a thread of its own (the state's calls block) until `m` is dropped.
pub(super) fn spawn(m: Weak<Membership>, every: Duration) {
    let every = every.max(Duration::from_millis(100));
    let spawned = std::thread::Builder::new().name("citron-heartbeat".into()).spawn(move || loop {
        std::thread::sleep(every);
        let Some(m) = m.upgrade() else { return };
        if let Err(e) = m.beat() {
            tracing::warn!(error = %e, "heartbeat: the state store failed; trying again at the next beat");
        }
    });
    if let Err(e) = spawned {
        tracing::error!(error = %e, "cannot start the heartbeat thread: other gateways will see this one offline");
    }
}

impl Membership {
    /// One beat (see the module doc).
    pub(super) fn beat(&self) -> Result<(), citron_core::store::StoreError> {
        let (me, now, cutoff) = (self.name.clone(), to_micros(SystemTime::now()), self.cutoff());
        let (was_offline, silent) = self.db.call(move |pool| async move {
            let mut tx = pool.begin().await?;
            let was = sqlx::query("SELECT offline_since FROM gateways WHERE name = $1").bind(&me).fetch_optional(&mut *tx).await?;
            let was_offline = was.map(|r| r.try_get::<Option<i64>, _>(0)).transpose()?.flatten().is_some();
            sqlx::query(
                "INSERT INTO gateways (name, started_at, heartbeat_at, offline_since) VALUES ($1, $2, $2, NULL) \
                 ON CONFLICT (name) DO UPDATE SET heartbeat_at = excluded.heartbeat_at, offline_since = NULL",
            )
            .bind(&me)
            .bind(now)
            .execute(&mut *tx)
            .await?;
            let silent = sqlx::query(
                "UPDATE gateways SET offline_since = $1 WHERE heartbeat_at < $2 AND offline_since IS NULL AND name <> $3 RETURNING name",
            )
            .bind(now)
            .bind(cutoff)
            .bind(&me)
            .fetch_all(&mut *tx)
            .await?
            .iter()
            .map(|r| r.try_get::<String, _>(0))
            .collect::<Result<Vec<_>, _>>()?;
            tx.commit().await?;
            Ok((was_offline, silent))
        })?;
        if was_offline {
            tracing::warn!("this gateway had been marked offline (its heartbeats were late): back online");
            let actor = format!("gateway:{}", self.name);
            self.feed.emit(NewEvent::new("gateway_online").actor(actor.clone()));
            for id in self.duts_of(&self.name) {
                self.feed.emit(NewEvent::new("dut_online").dut(id).actor(actor.clone()));
            }
        }
        for g in silent {
            tracing::warn!(gateway = %g, timeout = ?self.timeout, "gateway silent for longer than gateways.heartbeat_timeout: its DUTs are marked offline");
            self.mark_offline_events(&g, "silent for longer than gateways.heartbeat_timeout");
        }
        Ok(())
    }
}
