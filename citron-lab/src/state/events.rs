//! The DUTs' `boot`/`job_start`/`job_end` history: the lifecycle events of the lab's
//! [`Feed`], read back per DUT.

use std::sync::Arc;

use citron_core::gateway::{EventLog, EventRecord};
use citron_core::namespace::DutId;
use citron_core::store::StoreError;
use sqlx::{AnyPool, Row as _};

use super::feed::{Feed, NewEvent};
use super::lifetimes::{event_name, event_named};
use super::{from_micros, Db};

/// The event history in the feed. An event has been applied (and its lifetime effects
/// stored) before it is appended, so [`append`](EventLog::append) only queues it.
pub struct SqlEvents {
    db: Arc<Db>,
    feed: Arc<Feed>,
}

impl SqlEvents {
    /// Over `feed`, in `db`.
    pub fn new(db: Arc<Db>, feed: Arc<Feed>) -> SqlEvents {
        SqlEvents { db, feed }
    }
}

/// The most events [`EventLog::recent`] answers, whatever is asked (the API pages smaller).
const MAX_RECENT: usize = 10_000;

impl EventLog for SqlEvents {
    fn append(&self, dut: &DutId, record: EventRecord) -> Result<(), StoreError> {
        self.feed.emit(NewEvent::new(event_name(record.event)).dut(dut.0.clone()).at(record.time));
        Ok(())
    }

    /// The DUT's lifecycle events since it was last removed (a DUT added again with the same id
    /// starts a new history; the feed keeps the old one).
    fn recent(&self, dut: &DutId, limit: usize) -> Vec<EventRecord> {
        if let Err(e) = self.feed.flush() {
            tracing::error!(dut = %dut, error = %e, "cannot write the event feed");
        }
        let (d, limit) = (dut.0.clone(), i64::try_from(limit.min(MAX_RECENT)).unwrap_or(0));
        let query = move |pool: AnyPool| async move {
            sqlx::query(
                "SELECT event, at FROM events WHERE dut = $1 AND event IN ('boot', 'job_start', 'job_end') \
                 AND seq > COALESCE((SELECT MAX(seq) FROM events WHERE dut = $1 AND event = 'dut_removed'), 0) \
                 ORDER BY seq DESC LIMIT $2",
            )
            .bind(d)
            .bind(limit)
            .fetch_all(&pool)
            .await
        };
        let mut out = self.db.rows_or_log(format_args!("DUT {dut}'s event history"), query, |r| {
            let ev = event_named(&r.try_get::<String, _>(0).ok()?)?;
            Some(EventRecord { event: ev, time: from_micros(r.try_get(1).ok()?) })
        });
        out.reverse();
        out
    }

    /// Nothing is deleted: the feed is the lab's audit trail. The `dut_removed` event the
    /// removal records ends the DUT's history for [`recent`](EventLog::recent).
    fn forget(&self, _dut: &DutId) {}
}
