//! The DUTs' access logs, stored in batches off the serving path.
//!
//! A record is appended when a transfer ends, on a backend's task: [`append`](AccessStore::append)
//! gives it its `seq` at once and queues it; the first record queued sends one flush to the
//! database thread, which writes everything queued by then in one transaction (so a busy lab
//! pays one commit for many records). The queue is bounded ([`MAX_QUEUED`]): beyond it, the
//! oldest queued records are dropped and counted in the log. A page is read after a flush, so
//! it sees every record appended before it was asked for. Each DUT keeps its newest
//! [`LOG_CAPACITY`] records.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use citron_core::access::{AccessRecord, AccessStore, Outcome, LOG_CAPACITY};
use citron_core::namespace::DutId;
use citron_core::store::StoreError;
use parking_lot::Mutex;
use sqlx::{AnyPool, Row as _};

use super::feed::{Feed, NewEvent};
use super::Db;

/// The most records waiting for the database; older ones are dropped first.
pub const MAX_QUEUED: usize = 100_000;

type Queue = Arc<Mutex<VecDeque<(DutId, AccessRecord)>>>;

/// Access logs in the database.
pub struct SqlAccess {
    db: Arc<Db>,
    /// Where refused requests are told too.
    feed: Arc<Feed>,
    seq: AtomicU64,
    queue: Queue,
}

impl SqlAccess {
    /// Continues the stored sequence.
    pub fn load(db: Arc<Db>, feed: Arc<Feed>) -> Result<SqlAccess, StoreError> {
        let last = db.number("SELECT MAX(seq) FROM accesses")?;
        Ok(SqlAccess { db, feed, seq: AtomicU64::new(u64::try_from(last).unwrap_or(0)), queue: Arc::default() })
    }
}

/// Writes everything queued in one transaction, then trims each DUT written to its newest
/// [`LOG_CAPACITY`] records.
async fn flush(pool: &AnyPool, queue: &Queue) -> Result<(), sqlx::Error> {
    let batch = std::mem::take(&mut *queue.lock());
    if batch.is_empty() {
        return Ok(());
    }
    let mut tx = pool.begin().await?;
    let mut duts: Vec<&DutId> = Vec::new();
    for (dut, r) in &batch {
        sqlx::query(
            "INSERT INTO accesses (seq, dut, time, protocol, path, bytes, outcome, reason) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
        )
        .bind(i64::try_from(r.seq).unwrap_or(i64::MAX))
        .bind(&dut.0)
        .bind(r.time)
        .bind(&r.protocol)
        .bind(&r.path)
        .bind(i64::try_from(r.bytes).unwrap_or(i64::MAX))
        .bind(r.outcome.kind())
        .bind(r.outcome.reason())
        .execute(&mut *tx)
        .await?;
        if !duts.contains(&dut) {
            duts.push(dut);
        }
    }
    for dut in duts {
        sqlx::query(
            "DELETE FROM accesses WHERE dut = $1 AND seq <= (SELECT seq FROM accesses WHERE dut = $1 ORDER BY seq DESC LIMIT 1 OFFSET $2)",
        )
        .bind(&dut.0)
        .bind(LOG_CAPACITY as i64)
        .execute(&mut *tx)
        .await?;
    }
    tx.commit().await
}

impl AccessStore for SqlAccess {
    fn append(&self, dut: &DutId, mut rec: AccessRecord) -> Result<u64, StoreError> {
        if let Outcome::Refused(reason) = &rec.outcome {
            let detail = serde_json::json!({"protocol": rec.protocol, "path": rec.path, "reason": reason});
            self.feed.emit(NewEvent::new("request_refused").dut(dut.0.clone()).detail(detail));
        }
        let first = {
            let mut q = self.queue.lock();
            // Under the lock, so that the queue is in `seq` order.
            rec.seq = self.seq.fetch_add(1, Ordering::Relaxed) + 1;
            if q.len() >= MAX_QUEUED {
                q.pop_front();
                tracing::warn!("the access log's queue is full: its oldest record is dropped");
            }
            q.push_back((dut.clone(), rec.clone()));
            q.len() == 1
        };
        if first {
            let queue = self.queue.clone();
            self.db.spawn("access records", move |pool| async move { flush(&pool, &queue).await });
        }
        Ok(rec.seq)
    }

    fn page(&self, dut: &DutId, after: u64, limit: usize) -> Vec<AccessRecord> {
        let (queue, d) = (self.queue.clone(), dut.0.clone());
        let (after, limit) = (i64::try_from(after).unwrap_or(i64::MAX), i64::try_from(limit.min(LOG_CAPACITY)).unwrap_or(0));
        let query = move |pool: AnyPool| async move {
            flush(&pool, &queue).await?;
            sqlx::query(
                "SELECT seq, time, protocol, path, bytes, outcome, reason FROM accesses WHERE dut = $1 AND seq > $2 ORDER BY seq LIMIT $3",
            )
            .bind(d)
            .bind(after)
            .bind(limit)
            .fetch_all(&pool)
            .await
        };
        self.db.rows_or_log(format_args!("DUT {dut}'s access log"), query, |r| {
            let outcome = match r.try_get::<String, _>(5).ok()?.as_str() {
                "served" => Outcome::Served,
                "aborted" => Outcome::Aborted,
                _ => Outcome::Refused(r.try_get::<Option<String>, _>(6).ok()?.unwrap_or_default()),
            };
            Some(AccessRecord {
                seq: u64::try_from(r.try_get::<i64, _>(0).ok()?).ok()?,
                time: r.try_get(1).ok()?,
                protocol: r.try_get(2).ok()?,
                path: r.try_get(3).ok()?,
                bytes: u64::try_from(r.try_get::<i64, _>(4).ok()?).ok()?,
                outcome,
            })
        })
    }

    fn forget(&self, dut: &DutId) {
        let (queue, d) = (self.queue.clone(), dut.0.clone());
        self.db.spawn("the removal of a DUT's access log", move |pool| async move {
            flush(&pool, &queue).await?;
            sqlx::query("DELETE FROM accesses WHERE dut = $1").bind(d).execute(&pool).await.map(|_| ())
        });
    }
}
