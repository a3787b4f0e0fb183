//! Several gateways, one lab: `citron serve --gateway NAME` on one `--state`.
//!
//! Every DUT belongs to one gateway: `gateway: NAME` on it in the lab file, else the gateway
//! that reads the lab file first (unlabelled DUTs suit a lab of one gateway), or the gateway
//! that registered it through the API. A gateway's own [`Gateway`](citron_core::Gateway) holds
//! only its own DUTs, so it serves only them; the lab's directory of DUTs (`lab_duts`) and the
//! gateways' heartbeats (`gateways`) are in the state, so that every gateway's API shows the
//! whole lab ([`Membership::others`]).
//!
//! - [`Membership::join`] claims this gateway's lab-file DUTs (refusing a DUT another live
//!   gateway has: both names in the error) and, on SQLite, refuses a second live gateway on the
//!   same file (one writer, no notifications: PostgreSQL is for several).
//! - `heartbeat.rs`: a beat every third of `gateways.heartbeat_timeout`; each beat also marks
//!   the gateways silent for longer offline (their DUTs too: events, never deletions).
//! - `notify.rs`: on PostgreSQL, one `LISTEN citron` connection per gateway turns NOTIFYs
//!   into wake-ups: new events (the SSE feed), requests forwarded to this gateway, answers to
//!   the ones it forwarded. No polling loop.
//! - `forward.rs`: an API request about another gateway's DUT is written to `forwarded` and
//!   carried out by the owner through its own router (so a job is rendered and fetched with
//!   the owner's endpoints and `file:` roots); the receiving gateway answers with the owner's
//!   status and body (a bad job's positioned errors included).

mod forward;
mod heartbeat;
mod notify;

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use citron_core::lab::LabConfig;
use citron_core::namespace::{Dut, DutId, RegistryError};
use citron_core::store::StoreError;
use sqlx::{AnyPool, Row as _};
use tokio::sync::watch;

use crate::state::feed::{Feed, NewEvent};
use crate::state::{to_micros, Db, Engine, State, StateUrl};

pub use forward::{ForwardError, Forwarded, Request as ForwardRequest, FORWARD_TIMEOUT};

/// Why a gateway cannot join its lab.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum JoinError {
    /// Another gateway already serves some of this gateway's DUTs.
    #[error("{}", .0.iter().map(|e| e.to_string()).collect::<Vec<_>>().join("\n"))]
    Claimed(Vec<RegistryError>),
    /// An SQLite state holds one live gateway.
    #[error("the state {url} is used by gateway {other:?} (its last heartbeat {ago:?} ago): an SQLite state serves one gateway; start several gateways on one PostgreSQL (--state postgres://…), or stop {other:?} first")]
    SqliteShared {
        /// The state, without password.
        url: String,
        /// The live gateway.
        other: String,
        /// Since its last heartbeat.
        ago: Duration,
    },
    /// The state store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The gateway name is unusable.
    #[error("--gateway {0:?}: a gateway name is 1-64 letters, digits, '-', '_' or '.'")]
    BadName(String),
}

/// A DUT of another gateway, as the lab's directory and the state know it.
#[derive(Debug, Clone, PartialEq)]
pub struct RemoteDut {
    /// The DUT.
    pub dut: Dut,
    /// Its gateway.
    pub gateway: String,
    /// Whether its gateway heartbeats.
    pub online: bool,
    /// Its job's origin, if it has one.
    pub job: Option<String>,
}

/// Whose a DUT is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Owner {
    /// The gateway.
    pub gateway: String,
    /// Whether it heartbeats.
    pub online: bool,
}

/// This gateway's place in its lab.
pub struct Membership {
    name: String,
    db: Arc<Db>,
    feed: Arc<Feed>,
    url: StateUrl,
    timeout: Duration,
    /// Bumped when requests were forwarded to this gateway.
    work: watch::Sender<u64>,
    /// Bumped when forwarded requests were answered (by any gateway).
    answers: watch::Sender<u64>,
    /// Bumped when a token was revoked (by any gateway): the API reads the revocations again.
    revocations: watch::Sender<u64>,
}

impl std::fmt::Debug for Membership {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Membership").field("name", &self.name).field("timeout", &self.timeout).finish_non_exhaustive()
    }
}

/// The default gateway name: the host name.
pub fn default_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "citron".into())
}

fn valid_name(s: &str) -> bool {
    (1..=64).contains(&s.len()) && s.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
}

/// The gateway a lab-file DUT belongs to when it names none: the one reading the file.
fn owner_in_file<'a>(d: &'a Dut, me: &'a str) -> &'a str {
    d.gateway.as_deref().unwrap_or(me)
}

impl Membership {
    /// Joins the lab as gateway `name`: registers its heartbeat, claims its lab-file DUTs
    /// (`gateway: name`, or none) and answers the part of `lab` it serves (its DUTs only).
    /// Refuses DUTs another live gateway serves (every clash, both names in each), and on
    /// SQLite a second live gateway.
    pub fn join(state: &State, name: &str, lab: &LabConfig) -> Result<(Arc<Membership>, LabConfig), JoinError> {
        if !valid_name(name) {
            return Err(JoinError::BadName(name.into()));
        }
        let timeout = lab.gateways.heartbeat_timeout.get();
        let now = to_micros(SystemTime::now());
        let cutoff = now - i64::try_from(timeout.as_micros()).unwrap_or(i64::MAX);
        let engine = state.state_url().engine();
        let mine: Vec<Dut> = lab.duts.iter().filter(|d| owner_in_file(d, name) == name).cloned().collect();
        let specs: Vec<(String, String)> = mine.iter().map(|d| (d.id.0.clone(), serde_json::to_string(d).unwrap_or_default())).collect();
        let theirs: Vec<(String, String, String)> = lab
            .duts
            .iter()
            .filter(|d| owner_in_file(d, name) != name)
            .map(|d| (d.id.0.clone(), owner_in_file(d, name).to_string(), serde_json::to_string(d).unwrap_or_default()))
            .collect();
        let me = name.to_string();
        let lab_ids: BTreeSet<String> = lab.duts.iter().map(|d| d.id.0.clone()).collect();
        let lab_ips: BTreeSet<std::net::IpAddr> = lab.duts.iter().flat_map(|d| d.ip.iter().copied()).collect();
        let outcome = state.db().call(move |pool| async move {
            let mut tx = pool.begin().await?;
            let live: Vec<(String, i64)> = sqlx::query("SELECT name, heartbeat_at FROM gateways WHERE offline_since IS NULL AND heartbeat_at >= $1 AND name <> $2")
                .bind(cutoff)
                .bind(&me)
                .fetch_all(&mut *tx)
                .await?
                .iter()
                .map(|r| Ok((r.try_get::<String, _>(0)?, r.try_get::<i64, _>(1)?)))
                .collect::<Result<_, sqlx::Error>>()?;
            if engine == Engine::Sqlite {
                if let Some((other, at)) = live.first() {
                    return Ok(Err(JoinRefusal::Sqlite(other.clone(), now - at)));
                }
                // One gateway per file: the DUTs another name added through its API are this
                // one's now (the lab file's go to whom it names).
                sqlx::query("UPDATE lab_duts SET gateway = $1 WHERE source = 'api'").bind(&me).execute(&mut *tx).await?;
            }
            let mut clashes = Vec::new();
            let mut added = Vec::new();
            for (id, spec) in &specs {
                let row = sqlx::query("SELECT gateway, source FROM lab_duts WHERE id = $1").bind(id).fetch_optional(&mut *tx).await?;
                match row {
                    Some(r) => {
                        let (owner, source): (String, String) = (r.try_get(0)?, r.try_get(1)?);
                        if owner != me && (source == "api" || live.iter().any(|(n, _)| *n == owner)) {
                            clashes.push((id.clone(), owner));
                            continue;
                        }
                        sqlx::query("UPDATE lab_duts SET gateway = $1, spec = $2, source = 'lab-file' WHERE id = $3")
                            .bind(&me)
                            .bind(spec)
                            .bind(id)
                            .execute(&mut *tx)
                            .await?;
                    }
                    None => {
                        sqlx::query("INSERT INTO lab_duts (id, gateway, spec, source) VALUES ($1, $2, $3, 'lab-file')")
                            .bind(id)
                            .bind(&me)
                            .bind(spec)
                            .execute(&mut *tx)
                            .await?;
                        added.push(id.clone());
                    }
                }
            }
            if !clashes.is_empty() {
                return Ok(Err(JoinRefusal::Claimed(clashes)));
            }
            // The lab file's DUTs of gateways that never started are in the lab too (offline
            // until their gateway claims them).
            for (id, gw, spec) in &theirs {
                sqlx::query("INSERT INTO lab_duts (id, gateway, spec, source) VALUES ($1, $2, $3, 'lab-file') ON CONFLICT (id) DO NOTHING")
                    .bind(id)
                    .bind(gw)
                    .bind(spec)
                    .execute(&mut *tx)
                    .await?;
            }
            // DUTs added through the API before the lab had a directory (schema 0003 and older)
            // have no row in it: the gateway that restores them serves them, so they are its
            // own. One that clashes with the lab file stays out, as the lab file wins.
            let ownerless = sqlx::query("SELECT d.id, d.spec FROM duts d WHERE NOT EXISTS (SELECT 1 FROM lab_duts o WHERE o.id = d.id)")
                .fetch_all(&mut *tx)
                .await?;
            for r in ownerless {
                let (id, spec): (String, String) = (r.try_get(0)?, r.try_get(1)?);
                let clashes = serde_json::from_str::<Dut>(&spec)
                    .map_or(true, |d| lab_ids.contains(&d.id.0) || d.ip.iter().any(|ip| lab_ips.contains(ip)));
                if !clashes {
                    // Another gateway starting at the same time may take it first.
                    sqlx::query("INSERT INTO lab_duts (id, gateway, spec, source) VALUES ($1, $2, $3, 'api') ON CONFLICT (id) DO NOTHING")
                        .bind(&id)
                        .bind(&me)
                        .bind(&spec)
                        .execute(&mut *tx)
                        .await?;
                    tracing::info!(dut = %id, gateway = %me, "a DUT added through the API before the lab's directory of DUTs existed is now this gateway's");
                }
            }
            // DUTs gone from the lab file are gone from the directory.
            let listed: BTreeSet<&String> = specs.iter().map(|(id, _)| id).collect();
            let old = sqlx::query("SELECT id FROM lab_duts WHERE gateway = $1 AND source = 'lab-file'").bind(&me).fetch_all(&mut *tx).await?;
            let mut removed = Vec::new();
            for r in old {
                let id: String = r.try_get(0)?;
                if !listed.contains(&id) {
                    sqlx::query("DELETE FROM lab_duts WHERE id = $1").bind(&id).execute(&mut *tx).await?;
                    removed.push(id);
                }
            }
            sqlx::query(
                "INSERT INTO gateways (name, started_at, heartbeat_at, offline_since) VALUES ($1, $2, $2, NULL) \
                 ON CONFLICT (name) DO UPDATE SET started_at = excluded.started_at, heartbeat_at = excluded.heartbeat_at, offline_since = NULL",
            )
            .bind(&me)
            .bind(now)
            .execute(&mut *tx)
            .await?;
            tx.commit().await?;
            Ok(Ok((added, removed)))
        })?;
        let (added, removed) = match outcome {
            Ok(x) => x,
            Err(JoinRefusal::Sqlite(other, ago)) => {
                let ago = Duration::from_micros(u64::try_from(ago).unwrap_or(0));
                return Err(JoinError::SqliteShared { url: state.url(), other, ago });
            }
            Err(JoinRefusal::Claimed(list)) => {
                let errs = list
                    .into_iter()
                    .map(|(dut, owner)| RegistryError::ClaimedElsewhere { dut: DutId(dut), owner, claimant: name.to_string() })
                    .collect();
                return Err(JoinError::Claimed(errs));
            }
        };
        let feed = state.feed().clone();
        feed.set_gateway(name);
        let actor = format!("gateway:{name}");
        feed.emit(NewEvent::new("gateway_started").actor(actor));
        for id in added {
            feed.emit(NewEvent::new("dut_added").dut(id).actor("lab-file"));
        }
        for id in removed {
            feed.emit(NewEvent::new("dut_removed").dut(id).actor("lab-file"));
        }
        let own = LabConfig { duts: mine, ..lab.clone() };
        let m = Membership {
            name: name.to_string(),
            db: state.db().clone(),
            feed,
            url: state.state_url().clone(),
            timeout,
            work: watch::channel(0).0,
            answers: watch::channel(0).0,
            revocations: watch::channel(0).0,
        };
        Ok((Arc::new(m), own))
    }

    /// This gateway's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// A watch bumped whenever a token may have been revoked through any gateway (and on
    /// every reconnection of the listener, which may have missed one).
    pub(crate) fn revocations(&self) -> watch::Receiver<u64> {
        self.revocations.subscribe()
    }

    /// The feed this gateway writes.
    pub fn feed(&self) -> &Arc<Feed> {
        &self.feed
    }

    /// Starts the heartbeat and, on PostgreSQL, the notification listener; both stop when the
    /// membership is dropped.
    pub fn start(self: &Arc<Self>) {
        heartbeat::spawn(Arc::downgrade(self), self.timeout / 3);
        if self.url.engine() == Engine::Postgres {
            notify::spawn(Arc::downgrade(self), self.url.connect_string());
        }
    }

    /// Leaves the lab (a clean stop): marked offline at once, with its DUTs.
    pub fn leave(&self) {
        let (me, now) = (self.name.clone(), to_micros(SystemTime::now()));
        let r = self.db.call(move |pool| async move {
            sqlx::query("UPDATE gateways SET offline_since = $1 WHERE name = $2").bind(now).bind(me).execute(&pool).await
        });
        if let Err(e) = r {
            tracing::warn!(error = %e, "cannot mark this gateway offline");
            return;
        }
        self.mark_offline_events(&self.name, "stopped");
        let _ = self.feed.flush();
    }

    /// Whose `dut` is, by the lab's directory; `None` if no gateway has it.
    pub fn owner(&self, dut: &DutId) -> Result<Option<Owner>, StoreError> {
        let (id, cutoff) = (dut.0.clone(), self.cutoff());
        let row = self.db.call(move |pool| async move {
            sqlx::query(
                "SELECT l.gateway, g.heartbeat_at, g.offline_since FROM lab_duts l LEFT JOIN gateways g ON g.name = l.gateway WHERE l.id = $1",
            )
            .bind(id)
            .fetch_optional(&pool)
            .await
        })?;
        Ok(row.and_then(|r| {
            let gateway: String = r.try_get(0).ok()?;
            let beat: Option<i64> = r.try_get(1).ok()?;
            let off: Option<i64> = r.try_get(2).ok()?;
            Some(Owner { gateway, online: off.is_none() && beat.is_some_and(|b| b >= cutoff) })
        }))
    }

    /// The DUTs of the other gateways, by id.
    pub fn others(&self) -> Result<Vec<RemoteDut>, StoreError> {
        let (me, cutoff) = (self.name.clone(), self.cutoff());
        let rows = self.db.call(move |pool| async move {
            sqlx::query(
                "SELECT l.spec, l.gateway, g.heartbeat_at, g.offline_since, j.origin_name FROM lab_duts l \
                 LEFT JOIN gateways g ON g.name = l.gateway LEFT JOIN jobs j ON j.dut = l.id WHERE l.gateway <> $1 ORDER BY l.id",
            )
            .bind(me)
            .fetch_all(&pool)
            .await
        })?;
        Ok(rows
            .iter()
            .filter_map(|r| {
                let dut: Dut = serde_json::from_str(&r.try_get::<String, _>(0).ok()?).ok()?;
                let beat: Option<i64> = r.try_get(2).ok()?;
                let off: Option<i64> = r.try_get(3).ok()?;
                Some(RemoteDut {
                    dut,
                    gateway: r.try_get(1).ok()?,
                    online: off.is_none() && beat.is_some_and(|b| b >= cutoff),
                    job: r.try_get(4).ok()?,
                })
            })
            .collect())
    }

    /// The oldest heartbeat that still counts as alive.
    fn cutoff(&self) -> i64 {
        to_micros(SystemTime::now()) - i64::try_from(self.timeout.as_micros()).unwrap_or(i64::MAX)
    }

    /// `dut_offline` for each DUT of `gateway`, and `gateway_offline`.
    fn mark_offline_events(&self, gateway: &str, why: &str) {
        let actor = format!("gateway:{}", self.name);
        let detail = serde_json::json!({"gateway": gateway, "why": why});
        self.feed.emit(NewEvent::new("gateway_offline").actor(actor.clone()).detail(detail.clone()));
        for id in self.duts_of(gateway) {
            self.feed.emit(NewEvent::new("dut_offline").dut(id).actor(actor.clone()).detail(detail.clone()));
        }
    }

    /// The ids of `gateway`'s DUTs, for the events that tell each of them; none (logged) if
    /// the store cannot say.
    fn duts_of(&self, gateway: &str) -> Vec<String> {
        let g = gateway.to_string();
        let query = move |pool: AnyPool| async move {
            sqlx::query("SELECT id FROM lab_duts WHERE gateway = $1 ORDER BY id").bind(g).fetch_all(&pool).await
        };
        self.db.rows_or_log(format_args!("gateway {gateway:?}'s DUTs"), query, |r| r.try_get::<String, _>(0).ok())
    }
}

enum JoinRefusal {
    Sqlite(String, i64),
    Claimed(Vec<(String, String)>),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_owners() {
        assert!(valid_name("rack-1.lab") && !valid_name("") && !valid_name("a b") && !valid_name(&"x".repeat(65)));
        let mut d = Dut::new("d", []);
        assert_eq!(owner_in_file(&d, "me"), "me");
        d.gateway = Some("other".into());
        assert_eq!(owner_in_file(&d, "me"), "other");
    }

    /// A state file made at schema 0003 (before the lab's directory of DUTs): the DUT added
    /// through the API then gets its `lab_duts` row, owned by the gateway that restores it, once
    /// the state is migrated and the gateway joins; one that clashes with the lab file does not.
    #[test]
    fn api_duts_from_before_0004_are_owned_by_the_gateway_that_restores_them() {
        let dir = tempfile::tempdir().unwrap();
        let old = Dut::new("old", ["127.0.0.9".parse().unwrap()]);
        // Clashes with the default lab's dut1 by address: the lab file wins.
        let clash = Dut::new("clash", ["127.0.0.2".parse().unwrap()]);
        // The migrations up to 0003, as a binary of that time applied them.
        let migs = dir.path().join("migrations-0003");
        std::fs::create_dir(&migs).unwrap();
        for e in std::fs::read_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/migrations/sqlite")).unwrap() {
            let p = e.unwrap().path();
            let n = p.file_name().unwrap().to_string_lossy().into_owned();
            if ["0001_", "0002_", "0003_"].iter().any(|v| n.starts_with(v)) {
                std::fs::copy(&p, migs.join(&n)).unwrap();
            }
        }
        let db = dir.path().join("state.sqlite");
        tokio::runtime::Runtime::new().unwrap().block_on(async {
            sqlx::any::install_default_drivers();
            let pool = sqlx::AnyPool::connect(&format!("sqlite://{}?mode=rwc", db.display())).await.unwrap();
            let m = sqlx::migrate::Migrator::new(migs.as_path()).await.unwrap();
            assert_eq!(m.iter().count(), 3);
            m.run(&pool).await.unwrap();
            for d in [&old, &clash] {
                sqlx::query("INSERT INTO duts (id, spec, added_at) VALUES ($1, $2, 0)")
                    .bind(&d.id.0)
                    .bind(serde_json::to_string(d).unwrap())
                    .execute(&pool)
                    .await
                    .unwrap();
            }
            pool.close().await;
        });

        let (gw, state, _m) = crate::state::open_lab_gateway(LabConfig::default_lab(), dir.path(), None, "gw1").unwrap();
        assert_eq!(state.schema_version(), crate::state::known_version());
        assert!(gw.dut(&old.id).is_some(), "the old DUT is served");
        let rows: Vec<(String, String, String)> = state
            .db()
            .call(|pool| async move {
                sqlx::query("SELECT id, gateway, source FROM lab_duts WHERE id IN ('old', 'clash') ORDER BY id")
                    .fetch_all(&pool)
                    .await?
                    .iter()
                    .map(|r| Ok((r.try_get(0)?, r.try_get(1)?, r.try_get(2)?)))
                    .collect()
            })
            .unwrap();
        assert_eq!(rows, [("old".to_string(), "gw1".to_string(), "api".to_string())]);
    }
}
