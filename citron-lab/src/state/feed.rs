//! The lab's event feed: every change and notable happening, with a durable, increasing `seq`.
//!
//! # Written off the serving path, in batches
//! [`Feed::emit`] queues an event and returns; the first event queued sends one flush to the
//! database thread, which writes everything queued by then in one transaction (as the access log
//! does). The queue is bounded ([`MAX_QUEUED`]): beyond it the oldest queued events are dropped,
//! and the log says so.
//!
//! # `seq` order is commit order
//! A reader resumes from the last `seq` it saw (`Last-Event-ID`), so an event must never become
//! visible with a `seq` below one already read. SQLite has one writer at a time, so that holds
//! by itself. PostgreSQL hands out `BIGSERIAL` values to concurrent transactions and they may
//! commit in either order; so a batch first takes `LOCK TABLE events IN SHARE ROW EXCLUSIVE
//! MODE` (which conflicts with itself): batches of every gateway are written one after the
//! other, each drawing its numbers after the previous one committed.
//!
//! # Telling readers
//! A committed batch bumps [`Feed::subscribe`]'s watch on this gateway and, on PostgreSQL, sends
//! `NOTIFY citron, 'events'` in the same transaction, which the other gateways' listeners
//! (`crate::gateways`) turn into a bump of their own watch: readers query again only when
//! something was written, anywhere.

use std::collections::VecDeque;
use std::sync::{Arc, OnceLock};
use std::time::SystemTime;

use citron_core::store::StoreError;
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use sqlx::{AnyPool, Row as _};
use tokio::sync::watch;

use super::{from_micros, to_micros, Db, Engine};

/// The most events waiting for the database; older ones are dropped first.
pub const MAX_QUEUED: usize = 100_000;

/// The most events one [`Feed::page`] answers.
pub const PAGE_MAX: usize = 1000;

/// The PostgreSQL channel every gateway listens on.
pub const CHANNEL: &str = "citron";

/// One event of the feed, as `GET /api/v1/events` sends it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[schema(as = FeedEvent)]
pub struct FeedEvent {
    /// Its position in the feed: increasing, never reused, the same on every gateway.
    pub seq: u64,
    /// When it happened, seconds since the Unix epoch.
    pub time: f64,
    /// What happened: `boot`, `job_start`, `job_end`, `dut_added`, `dut_removed`,
    /// `dut_offline`, `dut_online`, `job_set`, `job_dropped`, `gateway_started`,
    /// `gateway_offline`, `request_refused`; for results ([`RUN_EVENTS`]) `run_opened`,
    /// `file_uploaded`, `run_finished`.
    #[serde(rename = "type")]
    pub kind: String,
    /// The DUT, if it is about one.
    #[schema(required = true)]
    pub dut: Option<String>,
    /// The job (its origin: `api:<dut>`, the job file; for the [`RUN_EVENTS`], the results
    /// job's name), if it is about one.
    #[schema(required = true)]
    pub job: Option<String>,
    /// Who did it: `api` (+ `:<token name>`), `lab-file`, `serve --job`, `gateway:<name>`.
    #[schema(required = true)]
    pub actor: Option<String>,
    /// The gateway that recorded it.
    #[schema(required = true)]
    pub gateway: Option<String>,
    /// What else it says (an error, a path), as an object.
    #[schema(required = true, value_type = Option<Object>)]
    pub detail: Option<serde_json::Value>,
}

/// An event to record ([`Feed::emit`]).
#[derive(Debug, Clone, PartialEq)]
pub struct NewEvent {
    /// Its type (see [`FeedEvent::kind`]).
    pub kind: String,
    /// The DUT.
    pub dut: Option<String>,
    /// The job.
    pub job: Option<String>,
    /// Who did it.
    pub actor: Option<String>,
    /// What else it says.
    pub detail: Option<serde_json::Value>,
    /// When.
    pub at: SystemTime,
}

impl NewEvent {
    /// An event of type `kind`, now.
    pub fn new(kind: impl Into<String>) -> NewEvent {
        NewEvent { kind: kind.into(), dut: None, job: None, actor: None, detail: None, at: SystemTime::now() }
    }
    /// About `dut`.
    pub fn dut(mut self, dut: impl Into<String>) -> Self {
        self.dut = Some(dut.into());
        self
    }
    /// About `job`.
    pub fn job(mut self, job: Option<String>) -> Self {
        self.job = job;
        self
    }
    /// Done by `actor`.
    pub fn actor(mut self, actor: impl Into<String>) -> Self {
        self.actor = Some(actor.into());
        self
    }
    /// Saying `detail` too.
    pub fn detail(mut self, detail: serde_json::Value) -> Self {
        self.detail = Some(detail);
        self
    }
    /// At `at`.
    pub fn at(mut self, at: SystemTime) -> Self {
        self.at = at;
        self
    }
}

/// The events about results: their `job` is the results job's name and their detail says
/// the run (`run`, `revision`, `platform`, `status`, ...). A `read` token may follow these, and
/// only these, of the jobs it may read.
pub const RUN_EVENTS: &[&str] = &["run_opened", "file_uploaded", "run_finished"];

/// Which events a reader wants (`?dut=&job=&type=`); `None` is any.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Filter {
    /// Only this DUT's.
    pub dut: Option<String>,
    /// Only this job's.
    pub job: Option<String>,
    /// Only this type.
    pub kind: Option<String>,
    /// Only these types (empty: any); the reader's rights set it, not the query.
    pub kinds: &'static [&'static str],
    /// Only events of results jobs owned by this tenant (`Some(None)`: the lab's own); the
    /// reader's rights set it. A job nobody owns yet shows nothing until its first run opens.
    pub tenant: Option<Option<String>>,
}

type Queue = Arc<Mutex<VecDeque<NewEvent>>>;

/// The feed of one state database.
pub struct Feed {
    db: Arc<Db>,
    queue: Queue,
    /// Bumped whenever events were committed (here, or by another gateway as NOTIFY says).
    changed: Arc<watch::Sender<u64>>,
    /// The gateway that writes (set once it joined the lab).
    gateway: Arc<OnceLock<String>>,
}

impl std::fmt::Debug for Feed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Feed").field("queued", &self.queue.lock().len()).finish_non_exhaustive()
    }
}

impl Feed {
    pub(super) fn new(db: Arc<Db>) -> Feed {
        Feed { db, queue: Arc::default(), changed: Arc::new(watch::channel(0).0), gateway: Arc::default() }
    }

    /// Names the gateway its events are written by (once; later calls are ignored).
    pub fn set_gateway(&self, name: &str) {
        let _ = self.gateway.set(name.to_string());
    }

    /// Records `ev` (queued, written in the next batch).
    pub fn emit(&self, ev: NewEvent) {
        let first = {
            let mut q = self.queue.lock();
            if q.len() >= MAX_QUEUED {
                q.pop_front();
                tracing::warn!("the event feed's queue is full: its oldest event is dropped");
            }
            q.push_back(ev);
            q.len() == 1
        };
        if first {
            let (queue, changed, gw, engine) = (self.queue.clone(), self.changed.clone(), self.gateway.clone(), self.db.engine);
            self.db.spawn("events", move |pool| async move { flush(&pool, engine, &queue, &changed, gw.get().map(String::as_str)).await });
        }
    }

    /// Writes every queued event now and waits for it.
    pub fn flush(&self) -> Result<(), StoreError> {
        let (queue, changed, gw, engine) = (self.queue.clone(), self.changed.clone(), self.gateway.clone(), self.db.engine);
        self.db.call(move |pool| async move { flush(&pool, engine, &queue, &changed, gw.get().map(String::as_str)).await })
    }

    /// A watch bumped whenever events may have been added: query [`page`](Self::page) again
    /// after each change.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.changed.subscribe()
    }

    /// Another gateway committed events (its NOTIFY arrived).
    pub(crate) fn notified(&self) {
        self.changed.send_modify(|n| *n = n.wrapping_add(1));
    }

    /// The events after `after` that `filter` wants, oldest first, at most `limit`
    /// ([`PAGE_MAX`] at most). Blocking: call it off the async threads.
    pub fn page(&self, filter: &Filter, after: u64, limit: usize) -> Result<Vec<FeedEvent>, StoreError> {
        self.flush()?;
        let mut sql = String::from("SELECT seq, at, event, dut, job, actor, gateway, detail FROM events WHERE seq > $1");
        let mut binds = Vec::new();
        for (col, v) in [("dut", &filter.dut), ("job", &filter.job), ("event", &filter.kind)] {
            if let Some(v) = v {
                binds.push(v.clone());
                sql.push_str(&format!(" AND {col} = ${}", binds.len() + 1));
            }
        }
        match &filter.tenant {
            None => {}
            Some(None) => sql.push_str(" AND EXISTS (SELECT 1 FROM result_jobs j WHERE j.name = events.job AND j.tenant IS NULL)"),
            Some(Some(t)) => {
                binds.push(t.clone());
                sql.push_str(&format!(
                    " AND EXISTS (SELECT 1 FROM result_jobs j WHERE j.name = events.job AND j.tenant = ${})",
                    binds.len() + 1
                ));
            }
        }
        if !filter.kinds.is_empty() {
            // Fixed words (never the client's), so written into the query as they are.
            let list: Vec<String> = filter.kinds.iter().map(|k| format!("'{k}'")).collect();
            sql.push_str(&format!(" AND event IN ({})", list.join(", ")));
        }
        sql.push_str(&format!(" ORDER BY seq LIMIT {}", limit.clamp(1, PAGE_MAX)));
        let after = i64::try_from(after).unwrap_or(i64::MAX);
        let rows = self.db.call(move |pool| async move {
            let mut q = sqlx::query(&sql).bind(after);
            for b in binds {
                q = q.bind(b);
            }
            q.fetch_all(&pool).await
        })?;
        Ok(rows.iter().filter_map(row_event).collect())
    }

    /// The newest `seq` written so far (0: none).
    pub fn last_seq(&self) -> Result<u64, StoreError> {
        self.flush()?;
        Ok(u64::try_from(self.db.number("SELECT MAX(seq) FROM events")?).unwrap_or(0))
    }
}

fn row_event(r: &sqlx::any::AnyRow) -> Option<FeedEvent> {
    let none_if_empty = |s: Option<String>| s.filter(|s| !s.is_empty());
    let time = from_micros(r.try_get(1).ok()?).duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs_f64()).unwrap_or(0.0);
    Some(FeedEvent {
        seq: u64::try_from(r.try_get::<i64, _>(0).ok()?).ok()?,
        time,
        kind: r.try_get(2).ok()?,
        dut: none_if_empty(r.try_get(3).ok()?),
        job: r.try_get(4).ok()?,
        actor: r.try_get(5).ok()?,
        gateway: r.try_get(6).ok()?,
        detail: r.try_get::<Option<String>, _>(7).ok()?.and_then(|s| serde_json::from_str(&s).ok()),
    })
}

/// Writes everything queued in one transaction (see the module doc for the lock), then bumps
/// the local watch.
async fn flush(
    pool: &AnyPool,
    engine: Engine,
    queue: &Queue,
    changed: &watch::Sender<u64>,
    gateway: Option<&str>,
) -> Result<(), sqlx::Error> {
    let batch = std::mem::take(&mut *queue.lock());
    if batch.is_empty() {
        return Ok(());
    }
    let mut tx = pool.begin().await?;
    if engine == Engine::Postgres {
        sqlx::query("LOCK TABLE events IN SHARE ROW EXCLUSIVE MODE").execute(&mut *tx).await?;
    }
    for e in &batch {
        sqlx::query("INSERT INTO events (dut, event, at, job, actor, gateway, detail) VALUES ($1, $2, $3, $4, $5, $6, $7)")
            .bind(e.dut.clone().unwrap_or_default())
            .bind(&e.kind)
            .bind(to_micros(e.at))
            .bind(&e.job)
            .bind(&e.actor)
            .bind(gateway)
            .bind(e.detail.as_ref().map(|d| d.to_string()))
            .execute(&mut *tx)
            .await?;
    }
    if engine == Engine::Postgres {
        sqlx::query("SELECT pg_notify($1, 'events')").bind(CHANNEL).execute(&mut *tx).await?;
    }
    tx.commit().await?;
    changed.send_modify(|n| *n = n.wrapping_add(1));
    Ok(())
}
