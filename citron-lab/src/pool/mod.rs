//! The DUT pool: CI jobs ask for machines, wait in a durable queue, get them with a token that
//! drives exactly them, and give them back; the pool powers them off and offers them again.
//!
//! A **reservation** (`POST /api/v1/reservations`, a `reserve`-scope token; its tenant is the
//! token's) is `waiting`, then `allocated` (its DUTs and a `dut`-scope token for exactly them),
//! then `released` (by its holder), `expired` (its lifetime ran out) or `failed` (its holder
//! says so; the DUTs may be kept aside for debugging). Everything is in the lab's state store,
//! so a restart (or another gateway on the same PostgreSQL) keeps every reservation and its
//! place in the queue; every change is an event of the lab's feed.
//!
//! Each DUT's pool state: `free`, `starting` (allocated with a job: its gateway sets the job and
//! powers it on), `allocated` (a job its holder sets later powers it on), `recycling` (its
//! gateway ends the job and powers it off), `checking` (running its health job), `kept`,
//! `quarantined` (a power command failed or hung, or the health job failed: reason and output
//! kept) or `disabled` (by hand). Power commands run on the gateway that serves the DUT; a
//! `kind: vm` DUT's power is its QEMU, started by that gateway.
//!
//! - `request.rs`: a request and its checks against the pool, before it may wait (pure).
//! - `queue.rs`: queue order, all-or-nothing, affinity and LRU ([`plan`], pure), and the reads
//!   of one allocation pass.
//! - `store.rs`: the reservations in the state store (each change one transaction).
//! - `power.rs`: power commands, bounded.
//! - `vms.rs`: `kind: vm` DUTs: their QEMU, its namespace, its console.
//! - `worker.rs`: starting and recycling this gateway's DUTs; `health.rs`: health jobs.
//!
//! Duffy's legacy API (`api/duffy.rs`, off unless `pool: {duffy: true}`) is a second door onto
//! the same [`Pool::request`] / [`Pool::release`] / [`Pool::fail`].

mod health;
mod power;
mod queue;
mod request;
mod store;
mod vms;
mod worker;

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use citron_core::lab::{PoolSettings, Tenants};
use citron_core::store::StoreError;
use citron_core::Gateway;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use serde::{Deserialize, Serialize};

use crate::auth::{Principal, Scope, TokenStore};
use crate::state::feed::{Feed, NewEvent};
use crate::state::Db;

pub use power::{PowerFailure, OUTPUT_MAX_BYTES};
pub use queue::{plan, Context, Free, Waiting};
pub use request::{check, Checked, DutAttrs, Request, COUNT_MAX, JOB_MAX_BYTES};

/// The longest `?wait=` of a long poll.
pub const WAIT_MAX: Duration = Duration::from_secs(300);
/// Reservations one page of the list holds when the request gives no `limit`.
pub const LIST_PAGE: usize = 100;
/// The largest `limit` of one page.
pub const LIST_PAGE_MAX: usize = 1000;
/// The longest a failed reservation's DUTs may be kept aside.
pub const KEEP_MAX: Duration = Duration::from_secs(7 * 24 * 3600);
/// How often each gateway runs the pool's work (expiry, the queue, recycling) when nothing
/// wakes it earlier.
pub const TICK: Duration = Duration::from_millis(500);

/// Why a pool request failed, and so its status.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PoolError {
    /// A request the pool can never meet, or bad input (400): the message names the limit.
    #[error("{0}")]
    Bad(String),
    /// No such reservation or DUT (404).
    #[error("{0}")]
    NotFound(String),
    /// Not this token's (403).
    #[error("{0}")]
    Forbidden(String),
    /// Not in a state that allows it (409).
    #[error("{0}")]
    Conflict(String),
    /// The state store failed (500).
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl PoolError {
    /// The HTTP status it answers.
    pub fn status(&self) -> http::StatusCode {
        use http::StatusCode as S;
        match self {
            PoolError::Bad(_) => S::BAD_REQUEST,
            PoolError::NotFound(_) => S::NOT_FOUND,
            PoolError::Forbidden(_) => S::FORBIDDEN,
            PoolError::Conflict(_) => S::CONFLICT,
            PoolError::Store(_) => S::INTERNAL_SERVER_ERROR,
        }
    }
}

/// A reservation as its holder sees it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Reservation {
    /// Its id.
    pub id: i64,
    /// Its tenant (`None`: the lab's own).
    pub tenant: Option<String>,
    /// `waiting`, `allocated`, `released`, `expired` or `failed`.
    pub state: String,
    /// Tags asked for.
    pub tags: Vec<String>,
    /// Kind asked for.
    pub kind: Option<String>,
    /// Arch asked for.
    pub arch: Option<String>,
    /// Model asked for.
    pub model: Option<String>,
    /// How many DUTs.
    pub count: u32,
    /// Its priority in the queue (after the tenant's cap).
    pub priority: i64,
    /// Its lifetime once allocated, in seconds.
    pub lifetime: u64,
    /// When it was asked for, seconds since the Unix epoch.
    pub created_at: f64,
    /// When it was allocated.
    pub allocated_at: Option<f64>,
    /// When it expires.
    pub expires_at: Option<f64>,
    /// When it ended.
    pub ended_at: Option<f64>,
    /// Failed and kept: when its DUTs go back to the pool.
    pub keep_until: Option<f64>,
    /// Its DUTs, once allocated.
    pub duts: Vec<AllocatedDut>,
    /// A token with the `dut` scope on exactly these DUTs (set jobs, send events, read
    /// accesses), valid until the reservation ends.
    pub token: Option<String>,
    /// Why it ended or went back to the queue, when it did.
    pub reason: Option<String>,
}

/// One DUT of an allocation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct AllocatedDut {
    /// What it is.
    #[serde(flatten)]
    pub dut: DutAttrs,
    /// Where its job is set (`PUT`, with the reservation's token).
    pub job_url: String,
    /// Where its access log is read.
    pub accesses_url: String,
    /// Where its events (and so its console's runs, once a job opens one) are read.
    pub events_url: String,
}

impl AllocatedDut {
    fn of(dut: DutAttrs) -> AllocatedDut {
        let id = &dut.id;
        AllocatedDut {
            job_url: format!("/api/v1/duts/{id}/job"),
            accesses_url: format!("/api/v1/duts/{id}/accesses"),
            events_url: format!("/api/v1/events?dut={id}"),
            dut,
        }
    }
}

/// A DUT of the pool as the administrator sees it (`citron pool status`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct PoolDut {
    /// What it is.
    #[serde(flatten)]
    pub dut: DutAttrs,
    /// `free`, `starting`, `allocated`, `recycling`, `checking`, `kept`, `quarantined` or
    /// `disabled`.
    pub state: String,
    /// The reservation holding it.
    pub reservation: Option<i64>,
    /// How often it was given.
    pub uses: i64,
    /// Why it is quarantined or disabled.
    pub reason: Option<String>,
    /// What its failed power command printed.
    pub output: Option<String>,
}

/// The pool of one lab, as one gateway sees it.
pub struct Pool {
    db: Arc<Db>,
    tokens: Arc<TokenStore>,
    gateway: Gateway,
    settings: PoolSettings,
    tenants: Tenants,
    feed: Option<Arc<Feed>>,
    /// Woken whenever this gateway changed the pool (long polls wait on it, and on a timer for
    /// the changes of other gateways).
    changed: tokio::sync::Notify,
    /// `citron_pool_dut_uses{dut}`: how often each DUT was given, as the state store says.
    uses: Family<Vec<(&'static str, String)>, Gauge>,
    /// One pass at a time on this gateway.
    busy: tokio::sync::Mutex<()>,
    /// The `kind: vm` DUTs' machines this gateway runs.
    vms: vms::Vms,
    /// The health jobs under way on this gateway's DUTs.
    checks: tokio::sync::Mutex<std::collections::HashMap<String, health::Check>>,
    /// Wakes this gateway's worker before its next tick: DUTs to start or recycle.
    work_due: Arc<tokio::sync::Notify>,
    /// This gateway's DUTs it powered on (and not off since): a job set later power-cycles
    /// them instead of powering them on.
    on: std::sync::Mutex<std::collections::HashSet<String>>,
}

impl std::fmt::Debug for Pool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pool").finish_non_exhaustive()
    }
}

/// Microseconds since the Unix epoch, now.
pub(crate) fn now_micros() -> i64 {
    crate::auth::now_micros()
}

fn secs(us: i64) -> f64 {
    us as f64 / 1e6
}

/// The tenant key of a principal (`""`: the lab's own), and whether it is the administrator.
fn who(p: &Principal) -> (String, bool) {
    match p {
        Principal::Admin => (String::new(), true),
        Principal::Token(c) => (c.tenant.clone().unwrap_or_default(), c.has(Scope::Admin)),
    }
}

impl Pool {
    /// The pool of the lab `gateway` serves, on the state store of `tokens`: the lab file's DUTs
    /// are entered (new ones free; known ones keep their state, with their attributes updated).
    pub fn open(gateway: Gateway, tokens: Arc<TokenStore>, feed: Option<Arc<Feed>>) -> Result<Pool, StoreError> {
        let lab = gateway.lab();
        let duts: Vec<DutAttrs> = lab.duts.iter().map(DutAttrs::of).collect();
        let db = tokens.db().clone();
        db.call(move |pool| store::enter(pool, duts))?;
        if lab.duts.iter().any(|d| d.kind == citron_core::lab::DutKind::Vm) {
            if let Err(e) = crate::vm::netns::check_privileges() {
                tracing::error!(error = %e, "pool: this lab has `kind: vm` DUTs that cannot be powered on");
            }
        }
        let vms = vms::Vms::new(gateway.data_dir(), crate::results::Runs::new(db.clone()), feed.clone());
        Ok(Pool {
            db,
            tokens,
            settings: lab.pool.clone(),
            tenants: lab.tenants.clone(),
            gateway,
            feed,
            changed: tokio::sync::Notify::new(),
            uses: Family::default(),
            busy: tokio::sync::Mutex::new(()),
            vms,
            checks: Default::default(),
            work_due: Default::default(),
            on: Default::default(),
        })
    }

    /// Registers the pool's metrics.
    pub fn register(&self, registry: &mut prometheus_client::registry::Registry) {
        registry.register("citron_pool_dut_uses", "How often the pool gave each DUT", self.uses.clone());
    }

    fn emit(&self, kind: &str, actor: &str, detail: serde_json::Value) {
        if let Some(f) = &self.feed {
            f.emit(NewEvent::new(kind).actor(actor).detail(detail));
        }
    }

    fn emit_dut(&self, kind: &str, dut: &str, detail: serde_json::Value) {
        if let Some(f) = &self.feed {
            f.emit(NewEvent::new(kind).dut(dut).actor("pool").detail(detail));
        }
    }

    /// Asks for DUTs: checked at once (400 naming the limit), then queued; one allocation pass
    /// runs before the answer, so a request that can be met is `allocated` in it.
    pub async fn request(&self, p: &Principal, req: Request, actor: &str) -> Result<Reservation, PoolError> {
        let (tenant, admin) = who(p);
        if let Principal::Token(c) = p {
            if !admin && !c.has(Scope::Reserve) {
                return Err(PoolError::Forbidden("the token has no `reserve` scope".into()));
            }
        }
        let quota = if admin { None } else { Some(self.tenants.get(&tenant).cloned().unwrap_or_default()) };
        let inventory = self.inventory().await?;
        let checked = check(req, &inventory, &self.settings, quota.as_ref(), admin).map_err(PoolError::Bad)?;
        let t = tenant.clone();
        let c = checked.clone();
        let id = crate::auth::call(&self.db, move |pool| store::insert(pool, t, c, now_micros())).await?;
        let detail = serde_json::json!({"reservation": id, "tenant": tenant, "count": checked.count, "tags": checked.tags, "priority": checked.priority});
        self.emit("reservation_waiting", actor, detail);
        self.pass().await;
        self.get(p, id).await
    }

    /// Every DUT the pool knows, in any state.
    async fn inventory(&self) -> Result<Vec<DutAttrs>, StoreError> {
        Ok(self.duts().await?.into_iter().map(|d| d.dut).collect())
    }

    /// Every DUT with its pool state.
    pub async fn duts(&self) -> Result<Vec<PoolDut>, StoreError> {
        crate::auth::call(&self.db, store::duts).await
    }

    /// The reservation `id`, if `p` may see it (its tenant's, or the administrator).
    pub async fn get(&self, p: &Principal, id: i64) -> Result<Reservation, PoolError> {
        let r = crate::auth::call(&self.db, move |pool| store::get(pool, id)).await?;
        let r = r.ok_or_else(|| PoolError::NotFound(format!("no reservation {id}")))?;
        let (tenant, admin) = who(p);
        if !admin && r.tenant.clone().unwrap_or_default() != tenant {
            return Err(PoolError::Forbidden(format!("reservation {id} belongs to another tenant")));
        }
        Ok(r)
    }

    /// [`get`](Self::get), waiting up to `wait` (at most [`WAIT_MAX`]) while it is `waiting`.
    pub async fn wait(&self, p: &Principal, id: i64, wait: Duration) -> Result<Reservation, PoolError> {
        let deadline = tokio::time::Instant::now() + wait.min(WAIT_MAX);
        loop {
            let notified = self.changed.notified();
            let r = self.get(p, id).await?;
            if r.state != "waiting" || tokio::time::Instant::now() >= deadline {
                return Ok(r);
            }
            // Another gateway's change wakes nobody here: read again on the pool's tick.
            let _ = tokio::time::timeout_at(deadline.min(tokio::time::Instant::now() + TICK), notified).await;
        }
    }

    /// The caller's reservations (all for the administrator), `state` if given, ids after
    /// `after`, at most `limit`.
    pub async fn list(&self, p: &Principal, state: Option<String>, after: i64, limit: usize) -> Result<Vec<Reservation>, PoolError> {
        let (tenant, admin) = who(p);
        let tenant = (!admin).then_some(tenant);
        let limit = limit.clamp(1, LIST_PAGE_MAX) as i64;
        Ok(crate::auth::call(&self.db, move |pool| store::list(pool, tenant, state, after, limit)).await?)
    }

    /// Done with it (idempotent): a waiting one leaves the queue, an allocated or kept one's
    /// DUTs are recycled, its token revoked.
    pub async fn release(&self, p: &Principal, id: i64, actor: &str) -> Result<Reservation, PoolError> {
        self.get(p, id).await?;
        let ended = crate::auth::call(&self.db, move |pool| store::end(pool, id, "released", None, now_micros())).await?;
        if let Some(token) = ended {
            self.revoke(token).await;
            self.emit("reservation_released", actor, serde_json::json!({"reservation": id}));
            self.work_due.notify_one();
        }
        self.pass().await;
        self.get(p, id).await
    }

    /// Failed: the DUTs are kept aside for `keep` (none: recycled now), then recycled.
    pub async fn fail(&self, p: &Principal, id: i64, keep: Option<Duration>, actor: &str) -> Result<Reservation, PoolError> {
        let r = self.get(p, id).await?;
        if r.state != "allocated" {
            return Err(PoolError::Conflict(format!("reservation {id} is {}: only an allocated one can fail", r.state)));
        }
        if keep.is_some_and(|k| k > KEEP_MAX) {
            return Err(PoolError::Bad(format!("keep is above the maximum of {}s", KEEP_MAX.as_secs())));
        }
        let until = keep.filter(|k| !k.is_zero()).map(|k| now_micros() + i64::try_from(k.as_micros()).unwrap_or(i64::MAX));
        let ended = crate::auth::call(&self.db, move |pool| store::end(pool, id, "failed", until, now_micros())).await?;
        if let Some(token) = ended {
            if until.is_none() {
                self.revoke(token).await;
            }
            self.emit("reservation_failed", actor, serde_json::json!({"reservation": id, "keep_until": until.map(secs)}));
            self.work_due.notify_one();
        }
        self.pass().await;
        self.get(p, id).await
    }

    /// A new lifetime (from its allocation, or for when it is allocated), within the tenant's
    /// maximum. An allocated one gets a new token (valid as long), the old one is revoked.
    pub async fn extend(&self, p: &Principal, id: i64, lifetime: &str, actor: &str) -> Result<Reservation, PoolError> {
        let r = self.get(p, id).await?;
        let (tenant, admin) = who(p);
        let quota = if admin { None } else { self.tenants.get(&tenant) };
        let owner_quota = r.tenant.as_ref().and_then(|t| self.tenants.get(t));
        let max = request::max_lifetime(&self.settings, quota.or(owner_quota));
        let life = request::lifetime(lifetime, max).map_err(PoolError::Bad)?;
        if !matches!(r.state.as_str(), "waiting" | "allocated") {
            return Err(PoolError::Conflict(format!("reservation {id} is {}: only a waiting or allocated one can be extended", r.state)));
        }
        let tokens = self.tokens.clone();
        let old = crate::auth::call(&self.db, move |pool| store::extend(pool, tokens, id, life)).await?;
        if let Some(old) = old {
            self.revoke(old).await;
        }
        self.emit("reservation_extended", actor, serde_json::json!({"reservation": id, "lifetime": life.as_secs()}));
        self.changed.notify_waiters();
        self.get(p, id).await
    }

    /// Takes the DUT `id` out of the pool by hand (`enable: false`), or puts it back (also out of
    /// quarantine).
    pub async fn set_enabled(&self, id: &str, enable: bool, actor: &str) -> Result<PoolDut, PoolError> {
        let i = id.to_string();
        let found = crate::auth::call(&self.db, move |pool| store::set_enabled(pool, i, enable, now_micros())).await?;
        match found.as_deref() {
            None => return Err(PoolError::NotFound(format!("no DUT {id:?} in the pool"))),
            Some(s) if !enable && s != "disabled" => {
                return Err(PoolError::Conflict(format!("DUT {id:?} is {s}: disable it once it is back in the pool")));
            }
            _ => {}
        }
        if let Some(f) = &self.feed {
            f.emit(NewEvent::new(if enable { "dut_enabled" } else { "dut_disabled" }).dut(id).actor(actor));
        }
        self.pass().await;
        let d = self.duts().await?.into_iter().find(|d| d.dut.id == id);
        d.ok_or_else(|| PoolError::NotFound(format!("no DUT {id:?} in the pool")))
    }

    async fn revoke(&self, token_id: impl Into<Option<String>>) {
        let Some(token_id) = token_id.into().filter(|t| !t.is_empty()) else { return };
        if let Err(e) = self.tokens.revoke(&token_id).await {
            tracing::warn!(error = %e, "pool: cannot revoke a reservation's token");
        }
    }

    /// One allocation pass: expiry, kept DUTs whose time is up, then the queue. Its changes are
    /// events; failures are logged (the next tick tries again).
    pub async fn pass(&self) {
        let _one = self.busy.lock().await;
        let tokens = self.tokens.clone();
        let max_duts: std::collections::HashMap<String, u32> =
            self.tenants.iter().filter_map(|(t, q)| Some((t.clone(), q.max_duts?))).collect();
        let out = crate::auth::call(&self.db, move |pool| store::pass(pool, tokens, max_duts, now_micros())).await;
        let out = match out {
            Ok(o) => o,
            Err(e) => {
                tracing::warn!(error = %e, "pool: the allocation pass failed; the next one tries again");
                return;
            }
        };
        for (id, token) in &out.expired {
            self.revoke(token.clone()).await;
            self.emit("reservation_expired", "pool", serde_json::json!({"reservation": id}));
        }
        for (id, token) in &out.unkept {
            self.revoke(token.clone()).await;
            self.emit("reservation_unkept", "pool", serde_json::json!({"reservation": id}));
        }
        for (id, tenant, duts) in &out.allocated {
            self.emit("reservation_allocated", "pool", serde_json::json!({"reservation": id, "tenant": tenant, "duts": duts}));
        }
        for (dut, n) in &out.uses {
            self.uses.get_or_create(&vec![("dut", dut.clone())]).set(*n);
        }
        if !(out.expired.is_empty() && out.unkept.is_empty() && out.allocated.is_empty()) {
            self.changed.notify_waiters();
            self.work_due.notify_one();
        }
    }

    /// Runs the pool's work every [`TICK`], and at once when a change leaves DUTs to start or
    /// recycle, for as long as `pool` lives elsewhere.
    pub fn spawn_ticker(pool: &Arc<Pool>) {
        let weak = Arc::downgrade(pool);
        let due = pool.work_due.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(TICK);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = tick.tick() => {}
                    _ = due.notified() => {}
                }
                let Some(pool) = weak.upgrade() else { return };
                pool.pass().await;
                pool.work().await;
            }
        });
    }

    /// Unix seconds, now.
    pub fn now_secs() -> u64 {
        SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
    }
}
