//! The lab's durable state: what a restart keeps.
//!
//! [`State::open`] connects to the database (SQLite in `<data>/state.sqlite` by default, or
//! PostgreSQL with `--state postgres://…`), migrates it, and gives the gateway its stores
//! ([`State::stores`]), each answering reads from memory and writing through:
//!
//! - `duts.rs`: DUTs added through the API (the lab file's DUTs are not stored: the file is
//!   authoritative for the DUTs it lists),
//! - `jobs.rs`: every DUT's job (YAML, origin, when), loaded again at start by
//!   [`Gateway::restore_jobs`](citron_core::Gateway::restore_jobs),
//! - `lifetimes.rs`: reads counted against `access_count` and each DUT's last events,
//! - `feed.rs`: the lab's event feed ([`Feed`]: every change and notable happening, with a
//!   durable increasing `seq`, written in batches off the serving path), which
//! - `events.rs` reads back as each DUT's `boot`/`job_start`/`job_end` history,
//! - `access.rs`: the DUTs' access logs (written in batches off the serving path, bounded),
//! - `disks.rs`: the job disks' records (lifetime, last use, overlays), so that a disk expires
//!   on schedule across restarts.
//!
//! `db.rs` owns the connection pool on a thread of its own (why: see there).
//!
//! ```
//! use citron_lab::state::{State, StateUrl};
//! let dir = tempfile::tempdir().unwrap();
//! let state = State::open(&StateUrl::default_in(dir.path())).unwrap();
//! assert_eq!(state.schema_version(), citron_lab::state::known_version());
//! ```

mod access;
mod db;
mod disks;
mod duts;
mod events;
pub mod feed;
mod jobs;
mod lifetimes;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use citron_core::gateway::Stores;
use citron_core::lab::LabConfig;

pub use db::known_version;
pub(crate) use db::Db;
pub use feed::Feed;

/// The file the default SQLite state lives in, under `--data`.
pub const SQLITE_FILE: &str = "state.sqlite";

/// The two engines.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Engine {
    /// An SQLite file.
    Sqlite,
    /// A PostgreSQL server.
    Postgres,
}

/// Where the state is: `--state`, or SQLite under `--data`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StateUrl {
    /// An SQLite file.
    Sqlite(PathBuf),
    /// A PostgreSQL URL (`postgres://user:pass@host:port/db?sslmode=require`).
    Postgres(String),
}

impl StateUrl {
    /// The default: `<data>/state.sqlite`.
    pub fn default_in(data_dir: &Path) -> StateUrl {
        StateUrl::Sqlite(data_dir.join(SQLITE_FILE))
    }

    /// `--state`: `postgres://…` / `postgresql://…`, or `sqlite://PATH` / `sqlite:PATH`; `None`
    /// is the default in `data_dir`.
    pub fn parse(arg: Option<&str>, data_dir: &Path) -> Result<StateUrl, StateError> {
        let Some(s) = arg else { return Ok(Self::default_in(data_dir)) };
        if s.starts_with("postgres://") || s.starts_with("postgresql://") {
            url::Url::parse(s).map_err(|e| StateError::BadUrl(format!("{}: {e}", redact(s))))?;
            return Ok(StateUrl::Postgres(s.to_string()));
        }
        if let Some(p) = s.strip_prefix("sqlite://").or_else(|| s.strip_prefix("sqlite:")) {
            return Ok(StateUrl::Sqlite(PathBuf::from(p)));
        }
        Err(StateError::BadUrl(format!("{}: expected postgres://… or sqlite://PATH", redact(s))))
    }

    /// Which engine.
    pub fn engine(&self) -> Engine {
        match self {
            StateUrl::Sqlite(_) => Engine::Sqlite,
            StateUrl::Postgres(_) => Engine::Postgres,
        }
    }

    /// The URL with any password replaced by `***`: what errors and logs show.
    pub fn redacted(&self) -> String {
        match self {
            StateUrl::Sqlite(p) => format!("sqlite://{}", p.display()),
            StateUrl::Postgres(u) => redact(u),
        }
    }

    pub(crate) fn connect_string(&self) -> String {
        match self {
            // rwc: create the file if missing (its mode is set first, see `State::open`).
            StateUrl::Sqlite(p) => format!("sqlite://{}?mode=rwc", p.display()),
            StateUrl::Postgres(u) => u.clone(),
        }
    }
}

fn redact(s: &str) -> String {
    match url::Url::parse(s) {
        Ok(mut u) => {
            if u.password().is_some() {
                let _ = u.set_password(Some("***"));
            }
            u.to_string()
        }
        Err(_) => "(an unparsable URL)".into(),
    }
}

/// Why the state could not be opened.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StateError {
    /// `--state` is not a URL citron knows.
    #[error("--state {0}")]
    BadUrl(String),
    /// The database cannot be reached or opened.
    #[error("cannot open the lab's state at {url}: {source}; check that the database runs and the URL, user and password are right")]
    Connect {
        /// The URL, without password.
        url: String,
        /// Why.
        source: sqlx::Error,
    },
    /// The database was migrated by a newer citron.
    #[error("the lab's state at {url} has schema version {found}, newer than this citron knows ({known}); run the newer citron (citron never downgrades the state)")]
    NewerSchema {
        /// The URL, without password.
        url: String,
        /// The version found.
        found: i64,
        /// The newest version this binary knows.
        known: i64,
    },
    /// A migration failed.
    #[error("cannot migrate the lab's state at {url}: {source}")]
    Migrate {
        /// The URL, without password.
        url: String,
        /// Why.
        source: sqlx::migrate::MigrateError,
    },
    /// The SQLite file's permissions cannot be set to 0600.
    #[error("cannot create {path} with mode 0600 (it holds every job's secrets): {source}")]
    File {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The database thread could not start.
    #[error("cannot start the state store's thread: {0}")]
    Runtime(std::io::Error),
    /// The database thread stopped.
    #[error("the state store's thread stopped")]
    ThreadGone,
    /// The stored state could not be read back.
    #[error("cannot read the lab's state back: {0}")]
    Load(#[from] citron_core::store::StoreError),
}

/// What the API and `/metrics` say of the state: its engine and schema version.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StateInfo {
    /// `sqlite` or `postgres`.
    pub engine: &'static str,
    /// The schema version in use.
    pub schema_version: i64,
}

/// An open, migrated state database.
pub struct State {
    db: Arc<Db>,
    url: StateUrl,
    feed: Arc<Feed>,
}

impl std::fmt::Debug for State {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("State").field("url", &self.url.redacted()).field("version", &self.db.version).finish()
    }
}

impl State {
    /// Opens (creating and migrating as needed) the state at `url`, logging what was done.
    pub fn open(url: &StateUrl) -> Result<State, StateError> {
        if let StateUrl::Sqlite(path) = url {
            secure_file(path)?;
        }
        let db = Db::open(url)?;
        let u = url.redacted();
        if db.found < db.version {
            tracing::info!(state = %u, from = db.found, to = db.version, "state: schema migrated from version {} to {}", db.found, db.version);
        } else {
            tracing::info!(state = %u, version = db.version, "state: schema version {} is current", db.version);
        }
        let db = Arc::new(db);
        Ok(State { feed: Arc::new(Feed::new(db.clone())), db, url: url.clone() })
    }

    /// The schema version in use.
    pub fn schema_version(&self) -> i64 {
        self.db.version
    }

    /// What the API and `/metrics` show of it.
    pub fn info(&self) -> StateInfo {
        let engine = match self.url.engine() {
            Engine::Sqlite => "sqlite",
            Engine::Postgres => "postgres",
        };
        StateInfo { engine, schema_version: self.db.version }
    }

    /// Where the state is (without password).
    pub fn url(&self) -> String {
        self.url.redacted()
    }

    /// Where the state is.
    pub fn state_url(&self) -> &StateUrl {
        &self.url
    }

    /// The lab's event feed.
    pub fn feed(&self) -> &Arc<Feed> {
        &self.feed
    }

    /// The database, for the lab's other stores (gateways, tokens, results).
    pub(crate) fn db(&self) -> &Arc<Db> {
        &self.db
    }

    /// The gateway's stores for `lab`, filled from the database. The lab file's DUTs are left
    /// out of the stored ones (a stored DUT with the id or an address of one of them is
    /// ignored, with a warning): `Gateway::with_stores` adds them, and they are kept in memory
    /// only.
    pub fn stores(&self, lab: &LabConfig) -> Result<Stores, StateError> {
        self.stores_of(lab, None)
    }

    /// [`stores`](Self::stores) for the gateway `gateway` of a lab of several: only its own
    /// stored DUTs are loaded, and a DUT it adds is claimed for it (refused when another
    /// gateway has one with that id).
    pub fn stores_of(&self, lab: &LabConfig, gateway: Option<&str>) -> Result<Stores, StateError> {
        Ok(Stores {
            duts: Box::new(duts::SqlDuts::load(self.db.clone(), &lab.duts, gateway)?),
            jobs: Box::new(jobs::SqlJobs::load(self.db.clone())?),
            lifetimes: Box::new(lifetimes::SqlLifetimes::load(self.db.clone())?),
            access: Box::new(access::SqlAccess::load(self.db.clone(), self.feed.clone())?),
            events: Box::new(events::SqlEvents::new(self.db.clone(), self.feed.clone())),
            disks: Box::new(disks::SqlDisks::load(self.db.clone())?),
        })
    }
}

/// Why a lab's gateway could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    /// The state database.
    #[error(transparent)]
    State(#[from] StateError),
    /// The data directory, the cache or the lab's DUTs.
    #[error(transparent)]
    Gateway(#[from] citron_core::GatewayError),
    /// The lab's other gateways refuse this one.
    #[error(transparent)]
    Join(#[from] crate::gateways::JoinError),
}

/// The gateway of a running lab, as `citron serve` and Python's `Server` start it: the state
/// opened at `state` (`None`: SQLite in `data_dir`; `postgres://…`), migrated, and filled into
/// the gateway's stores; network sources from `citron_fetch`. Stored jobs are not loaded yet:
/// call [`Gateway::restore_jobs`](citron_core::Gateway::restore_jobs) once the servers are bound,
/// so that their templates see the real ports.
///
/// ```
/// use citron_core::lab::LabConfig;
/// let dir = tempfile::tempdir().unwrap();
/// let (gw, state) = citron_lab::state::open_gateway(LabConfig::default_lab(), dir.path(), None).unwrap();
/// assert_eq!(state.info().engine, "sqlite");
/// assert!(gw.dut(&"dut1".into()).is_some());
/// ```
pub fn open_gateway(lab: LabConfig, data_dir: &Path, state: Option<&str>) -> Result<(citron_core::Gateway, State), OpenError> {
    let state = State::open(&StateUrl::parse(state, data_dir)?)?;
    let stores = state.stores(&lab)?;
    let network = Arc::new(citron_fetch::Network::for_lab(&lab).map_err(citron_core::GatewayError::from)?);
    let gateway = citron_core::Gateway::with_stores(lab, data_dir, network, stores)?;
    Ok((gateway, state))
}

/// [`open_gateway`] for the gateway `name` of a lab of several (`citron serve --gateway`):
/// joins the lab ([`Membership::join`](crate::gateways::Membership::join): its lab-file DUTs
/// claimed, a clash refused) and builds the gateway over its own DUTs only.
pub fn open_lab_gateway(
    lab: LabConfig,
    data_dir: &Path,
    state: Option<&str>,
    name: &str,
) -> Result<(citron_core::Gateway, State, Arc<crate::gateways::Membership>), OpenError> {
    let state = State::open(&StateUrl::parse(state, data_dir)?)?;
    let (membership, own) = crate::gateways::Membership::join(&state, name, &lab)?;
    let stores = state.stores_of(&own, Some(name))?;
    let network = Arc::new(citron_fetch::Network::for_lab(&own).map_err(citron_core::GatewayError::from)?);
    let gateway = citron_core::Gateway::with_stores(own, data_dir, network, stores)?;
    Ok((gateway, state, membership))
}

/// Creates the SQLite file with mode 0600 (or sets it): it holds every job's secrets.
fn secure_file(path: &Path) -> Result<(), StateError> {
    use std::os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _};
    let err = |source| StateError::File { path: path.to_path_buf(), source };
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(err)?;
    }
    std::fs::OpenOptions::new().create(true).append(true).mode(0o600).open(path).map_err(err)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(err)
}

/// A time as stored: microseconds since the Unix epoch.
pub(crate) fn to_micros(t: SystemTime) -> i64 {
    t.duration_since(UNIX_EPOCH).map(|d| i64::try_from(d.as_micros()).unwrap_or(i64::MAX)).unwrap_or(0)
}

fn from_micros(us: i64) -> SystemTime {
    UNIX_EPOCH + Duration::from_micros(u64::try_from(us).unwrap_or(0))
}

#[cfg(test)]
mod tests;
