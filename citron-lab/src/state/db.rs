//! The database behind the stores: one connection pool owned by a thread of its own.
//!
//! # Why a thread
//! The store traits are synchronous (`citron_core::store` says why: a counted read is recorded
//! inside `Catalog::open`, before its bytes leave), and they are called from async code: the
//! backends' tasks, the API's handlers, Python's runtime. sqlx is async. Blocking on a future
//! from inside a runtime panics, and `tokio::task::block_in_place` panics on a current-thread
//! runtime (tests, Python). So the pool lives on a dedicated thread with its own runtime; a
//! store method sends it a closure and waits on a plain channel for the answer. That works from
//! any thread, in or out of a runtime, and costs the caller one channel round trip on top of
//! the write itself; writes are carried out one after the other, which is what SQLite does
//! anyway (one writer). Writes whose answer nobody waits for ([`Db::spawn`]: the event history)
//! are sent the same way and not waited for.

use std::future::Future;
use std::pin::Pin;
use std::sync::mpsc;
use std::time::Duration;

use citron_core::store::StoreError;
use sqlx::any::{AnyPoolOptions, AnyRow};
use sqlx::migrate::{MigrateError, Migrator};
use sqlx::{AnyPool, Connection as _, Executor as _, Row as _};

use super::{Engine, StateError, StateUrl};

/// The SQLite migrations, numbered like the PostgreSQL ones (same version, same meaning).
static SQLITE: Migrator = sqlx::migrate!("migrations/sqlite");
/// The PostgreSQL migrations.
static POSTGRES: Migrator = sqlx::migrate!("migrations/postgres");

/// The newest schema version this binary knows.
pub fn known_version() -> i64 {
    let s = SQLITE.iter().map(|m| m.version).max().unwrap_or(0);
    debug_assert_eq!(Some(s), POSTGRES.iter().map(|m| m.version).max(), "both engines share version numbers");
    s
}

type Work = Box<dyn FnOnce(AnyPool) -> Pin<Box<dyn Future<Output = ()> + Send>> + Send>;

/// The database thread's mailbox.
pub struct Db {
    tx: mpsc::Sender<Work>,
    /// The schema version after migrating.
    pub version: i64,
    /// The schema version found before migrating (0: a new database).
    pub found: i64,
    /// Which engine.
    pub engine: Engine,
}

impl Db {
    /// Connects, migrates (refusing a newer schema than [`known_version`]) and starts the
    /// database thread.
    pub fn open(url: &StateUrl) -> Result<Db, StateError> {
        sqlx::any::install_default_drivers();
        let (tx, rx) = mpsc::channel::<Work>();
        let (ready_tx, ready_rx) = mpsc::sync_channel(1);
        let engine = url.engine();
        let url = url.clone();
        std::thread::Builder::new()
            .name("citron-state".into())
            .spawn(move || {
                let rt = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
                    Ok(rt) => rt,
                    Err(e) => {
                        let _ = ready_tx.send(Err(StateError::Runtime(e)));
                        return;
                    }
                };
                let pool = match rt.block_on(connect_and_migrate(&url)) {
                    Ok((pool, found, version)) => {
                        let _ = ready_tx.send(Ok((found, version)));
                        pool
                    }
                    Err(e) => {
                        let _ = ready_tx.send(Err(e));
                        return;
                    }
                };
                while let Ok(work) = rx.recv() {
                    rt.block_on(work(pool.clone()));
                }
                rt.block_on(pool.close());
            })
            .map_err(StateError::Runtime)?;
        let (found, version) = ready_rx.recv().map_err(|_| StateError::ThreadGone)??;
        Ok(Db { tx, version, found, engine })
    }

    /// Runs `f` on the database thread and waits for its answer.
    pub fn call<T, F>(&self, f: impl FnOnce(AnyPool) -> F + Send + 'static) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: Future<Output = Result<T, sqlx::Error>> + Send + 'static,
    {
        let (rtx, rrx) = mpsc::sync_channel(1);
        self.tx
            .send(Box::new(move |pool| {
                Box::pin(async move {
                    let _ = rtx.send(f(pool).await);
                })
            }))
            .map_err(|_| StoreError::backend(StateError::ThreadGone))?;
        rrx.recv().map_err(|_| StoreError::backend(StateError::ThreadGone))?.map_err(StoreError::backend)
    }

    /// Runs `f` on the database thread without waiting: for writes whose order with any answer
    /// does not matter. A failure is logged.
    pub fn spawn<F>(&self, what: &'static str, f: impl FnOnce(AnyPool) -> F + Send + 'static)
    where
        F: Future<Output = Result<(), sqlx::Error>> + Send + 'static,
    {
        let sent = self.tx.send(Box::new(move |pool| {
            Box::pin(async move {
                if let Err(e) = f(pool).await {
                    tracing::error!(error = %e, "the lab's state store could not write {what}");
                }
            })
        }));
        if sent.is_err() {
            tracing::error!("the lab's state store is gone: {what} not written");
        }
    }

    /// Every row `sql` selects (at start, to fill the in-memory indexes).
    pub fn rows(&self, sql: &'static str) -> Result<Vec<AnyRow>, StoreError> {
        self.call(move |pool| async move { sqlx::query(sql).fetch_all(&pool).await })
    }

    /// The number `sql` selects in its first row and column (a `MAX(…)`), 0 when there is
    /// none.
    pub fn number(&self, sql: &'static str) -> Result<i64, StoreError> {
        let rows = self.rows(sql)?;
        Ok(rows.first().and_then(|r| r.try_get::<Option<i64>, _>(0).ok().flatten()).unwrap_or(0))
    }

    /// The rows `query` fetches, each turned into a `T` by `map` (a row it cannot read is
    /// skipped): for the readers of the store traits that answer a list and cannot fail (an
    /// access log page, an event history), where a failed read is logged as "cannot read
    /// `what`" and answered with nothing.
    pub fn rows_or_log<T, F>(
        &self,
        what: impl std::fmt::Display,
        query: impl FnOnce(AnyPool) -> F + Send + 'static,
        map: impl FnMut(&AnyRow) -> Option<T>,
    ) -> Vec<T>
    where
        F: Future<Output = Result<Vec<AnyRow>, sqlx::Error>> + Send + 'static,
    {
        match self.call(query) {
            Ok(rows) => rows.iter().filter_map(map).collect(),
            Err(e) => {
                tracing::error!(error = %e, "cannot read {what}");
                Vec::new()
            }
        }
    }
}

async fn connect_and_migrate(url: &StateUrl) -> Result<(AnyPool, i64, i64), StateError> {
    let engine = url.engine();
    let options = AnyPoolOptions::new()
        .max_connections(if engine == Engine::Sqlite { 1 } else { 4 })
        // Work is carried out one job at a time, so a connection is never waited for: this only
        // bounds how long a write waits for a database that went away before it is refused.
        .acquire_timeout(Duration::from_secs(3))
        .after_connect(move |conn, _| {
            Box::pin(async move {
                if engine == Engine::Sqlite {
                    // WAL: readers never block the writer. synchronous=FULL: a commit is on disk
                    // when it returns, also across a power cut (NORMAL would survive a crash of
                    // citron but could lose the last commits on power loss, and a counted read of
                    // a read-once secret must never be forgotten). busy_timeout: a second process
                    // (`citron state migrate`) waits instead of failing.
                    conn.execute("PRAGMA journal_mode = WAL").await?;
                    conn.execute("PRAGMA synchronous = FULL").await?;
                    conn.execute("PRAGMA busy_timeout = 5000").await?;
                }
                Ok(())
            })
        });
    let connect_err = |e| StateError::Connect { url: url.redacted(), source: e };
    // One connection first: an unreachable server fails at once (the pool would retry until
    // its acquire timeout).
    sqlx::AnyConnection::connect(&url.connect_string()).await.map_err(connect_err)?.close().await.map_err(connect_err)?;
    let pool = options.connect(&url.connect_string()).await.map_err(connect_err)?;
    let found: i64 = match sqlx::query("SELECT MAX(version) FROM _sqlx_migrations WHERE success").fetch_one(&pool).await {
        Ok(row) => row.try_get::<Option<i64>, _>(0).ok().flatten().unwrap_or(0),
        Err(_) => 0, // no table yet: a new database
    };
    let migrator = if engine == Engine::Sqlite { &SQLITE } else { &POSTGRES };
    let known = known_version();
    if found > known {
        return Err(StateError::NewerSchema { url: url.redacted(), found, known });
    }
    migrator.run(&pool).await.map_err(|e| match e {
        MigrateError::VersionMissing(v) => StateError::NewerSchema { url: url.redacted(), found: v, known },
        e => StateError::Migrate { url: url.redacted(), source: e },
    })?;
    Ok((pool, found, known))
}
