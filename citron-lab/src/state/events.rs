//! The DUTs' event history, stored off the serving path.

use std::sync::Arc;

use citron_core::gateway::{EventLog, EventRecord};
use citron_core::namespace::DutId;
use citron_core::store::StoreError;
use sqlx::Row as _;

use super::lifetimes::{event_name, event_named};
use super::{from_micros, to_micros, Db};

/// The event history in the database. An event has been applied (and its lifetime effects
/// stored) before it is appended, so [`append`](EventLog::append) does not wait for the write.
pub struct SqlEvents {
    db: Arc<Db>,
}

impl SqlEvents {
    /// Over `db`.
    pub fn new(db: Arc<Db>) -> SqlEvents {
        SqlEvents { db }
    }
}

/// The most events [`EventLog::recent`] answers, whatever is asked (the API pages smaller).
const MAX_RECENT: usize = 10_000;

impl EventLog for SqlEvents {
    fn append(&self, dut: &DutId, record: EventRecord) -> Result<(), StoreError> {
        let (d, name, at) = (dut.0.clone(), event_name(record.event), to_micros(record.time));
        self.db.spawn("an event", move |pool| async move {
            sqlx::query("INSERT INTO events (dut, event, at) VALUES ($1, $2, $3)")
                .bind(d)
                .bind(name)
                .bind(at)
                .execute(&pool)
                .await
                .map(|_| ())
        });
        Ok(())
    }

    fn recent(&self, dut: &DutId, limit: usize) -> Vec<EventRecord> {
        let (d, limit) = (dut.0.clone(), i64::try_from(limit.min(MAX_RECENT)).unwrap_or(0));
        let rows = self.db.call(move |pool| async move {
            sqlx::query("SELECT event, at FROM events WHERE dut = $1 ORDER BY seq DESC LIMIT $2").bind(d).bind(limit).fetch_all(&pool).await
        });
        let rows = match rows {
            Ok(r) => r,
            Err(e) => {
                tracing::error!(dut = %dut, error = %e, "cannot read the event history");
                return Vec::new();
            }
        };
        let mut out: Vec<EventRecord> = rows
            .iter()
            .filter_map(|r| {
                let ev = event_named(&r.try_get::<String, _>(0).ok()?)?;
                Some(EventRecord { event: ev, time: from_micros(r.try_get(1).ok()?) })
            })
            .collect();
        out.reverse();
        out
    }

    fn forget(&self, dut: &DutId) {
        let d = dut.0.clone();
        self.db.spawn("the removal of a DUT's events", move |pool| async move {
            sqlx::query("DELETE FROM events WHERE dut = $1").bind(d).execute(&pool).await.map(|_| ())
        });
    }
}
