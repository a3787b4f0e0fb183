//! Runs, their files and consoles in the state store.

use std::sync::Arc;

use serde::{Deserialize, Serialize};
use sqlx::any::AnyRow;
use sqlx::Row as _;
use utoipa::ToSchema;

use crate::auth::{call, now_micros};
use crate::state::feed::{Feed, NewEvent};
use crate::state::Db;
use citron_core::store::StoreError;

/// One execution of a job, and what it uploaded.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Run {
    /// The run's id (one sequence for the whole lab).
    pub id: i64,
    /// The job's name.
    pub job: String,
    /// What was built or tested (a commit, a version).
    #[schema(required = true)]
    pub revision: Option<String>,
    /// What it ran on (`arm64`, `rpi4`, ...).
    #[schema(required = true)]
    pub platform: Option<String>,
    /// The DUT it ran on, for a run a DUT's job opened.
    #[schema(required = true)]
    pub dut: Option<String>,
    /// `running`, `success`, `failure` or `unknown`.
    pub status: Status,
    /// When it was opened, seconds since the Unix epoch.
    pub started_at: f64,
    /// When it was finished, seconds since the Unix epoch.
    #[schema(required = true)]
    pub finished_at: Option<f64>,
    /// Its files (only when one run is asked for).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub files: Option<Vec<ResultFile>>,
    /// Its input key (SHA-256, hex), for a DUT's run that finished: what `citron results
    /// find` compares (salt, revision, rendered job, DUT tags, declared artifacts).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub input_key: Option<String>,
    /// Another finished run with the same input key ended otherwise (one succeeded, one
    /// failed): the test is flaky on these inputs (only when one run is asked for).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub flaky: bool,
    /// What went into it, for a DUT's run that finished (only when one run is asked for):
    /// `revision`, the DUT's `tags`, the digests of the job's `declared` artifacts (by name:
    /// `start/kernel`, `start/http/<path>`) and of those its DUT was `served`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub inputs: Option<serde_json::Value>,
}

/// A run's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    /// Open: files and console may be added.
    Running,
    /// Finished, and it passed.
    Success,
    /// Finished, and it failed.
    Failure,
    /// Finished without saying (a DUT's job ended without a status).
    Unknown,
}

impl Status {
    /// Its name.
    pub fn name(self) -> &'static str {
        match self {
            Status::Running => "running",
            Status::Success => "success",
            Status::Failure => "failure",
            Status::Unknown => "unknown",
        }
    }

    /// The status called `s`.
    pub fn parse(s: &str) -> Option<Status> {
        [Status::Running, Status::Success, Status::Failure, Status::Unknown].into_iter().find(|x| x.name() == s)
    }
}

/// One file of a run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ResultFile {
    /// Its path in the run (`images/kernel`).
    pub path: String,
    /// SHA-256 of its content, hex: the blob `/api/v1/results/blobs/sha256/{sha256}`.
    #[schema(pattern = "^[0-9a-f]{64}$")]
    pub sha256: String,
    /// Bytes.
    pub size: u64,
    /// Uploaded with a token (`false`: by a DUT's source address, which UDP lets anyone forge).
    pub tokened: bool,
    /// When, seconds since the Unix epoch.
    pub uploaded_at: f64,
}

fn secs(us: i64) -> f64 {
    us as f64 / 1e6
}

pub(super) const RUN_COLUMNS: &str = "id, job, revision, platform, dut, status, started_at, finished_at, input_key";

pub(super) fn run_of(r: &AnyRow) -> Option<Run> {
    Some(Run {
        id: r.try_get(0).ok()?,
        job: r.try_get(1).ok()?,
        revision: r.try_get(2).ok()?,
        platform: r.try_get(3).ok()?,
        dut: r.try_get(4).ok()?,
        status: Status::parse(&r.try_get::<String, _>(5).ok()?)?,
        started_at: secs(r.try_get(6).ok()?),
        finished_at: r.try_get::<Option<i64>, _>(7).ok()?.map(secs),
        files: None,
        input_key: r.try_get(8).ok()?,
        flaky: false,
        inputs: None,
    })
}

fn file_of(r: &AnyRow) -> Option<ResultFile> {
    Some(ResultFile {
        path: r.try_get(0).ok()?,
        sha256: r.try_get(1).ok()?,
        size: u64::try_from(r.try_get::<i64, _>(2).ok()?).ok()?,
        tokened: r.try_get::<i64, _>(3).ok()? != 0,
        uploaded_at: secs(r.try_get(4).ok()?),
    })
}

/// What a new run records.
#[derive(Debug, Clone, Default)]
pub struct NewRun {
    /// The job.
    pub job: String,
    /// Its tenant (`None`: the lab's).
    pub tenant: Option<String>,
    /// What was built.
    pub revision: Option<String>,
    /// What it ran on.
    pub platform: Option<String>,
    /// The DUT, for a DUT's run.
    pub dut: Option<String>,
}

/// How adding a file went.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Added {
    /// New.
    New,
    /// The same content was there already.
    Same,
    /// Other content is there (its digest).
    Other(String),
    /// The run is not open (finished, or no such run).
    Closed,
}

/// How appending to a console went.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Appended {
    /// The console's length now.
    Length(u64),
    /// The offset is past the end (the console's length).
    Gap(u64),
    /// It would grow past the bound.
    TooLong,
    /// The run is not open.
    Closed,
}

/// The most files a `run_finished` event lists (its `files` count says how many there are).
pub const EVENT_FILES_MAX: usize = 64;

/// The runs side of the state store. With the lab's feed, every run opened or finished and
/// every file added is an event there ([`crate::state::feed::RUN_EVENTS`]), whoever did it
/// (the API, a DUT's job): what `citron results watch` follows.
#[derive(Clone)]
pub struct Runs {
    pub(super) db: Arc<Db>,
    feed: Option<Arc<Feed>>,
    latest: Arc<super::latest::LatestCache>,
}

impl std::fmt::Debug for Runs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Runs")
    }
}

impl Runs {
    /// Over `db`.
    pub fn new(db: Arc<Db>) -> Runs {
        Runs { db, feed: None, latest: Arc::default() }
    }

    /// Telling `feed` about runs and files.
    pub fn with_feed(mut self, feed: Arc<Feed>) -> Runs {
        // Runs finished through other gateways drop their jobs from the `latest` cache.
        super::latest::follow(&self.latest, feed.clone());
        self.feed = Some(feed);
        self
    }

    fn emit(&self, kind: &str, run: &Run, detail: serde_json::Value) {
        let Some(feed) = &self.feed else { return };
        let mut d = serde_json::json!({
            "job": run.job, "run": run.id, "revision": run.revision, "platform": run.platform, "status": run.status.name(),
        });
        if let (Some(d), serde_json::Value::Object(more)) = (d.as_object_mut(), detail) {
            d.extend(more);
        }
        let mut ev = NewEvent::new(kind).job(Some(run.job.clone())).detail(d);
        if let Some(dut) = &run.dut {
            ev = ev.dut(dut.clone());
        }
        feed.emit(ev);
    }

    /// The tenant owning `job`: `None` if no run of it was ever opened, `Some(None)` for the
    /// lab's own.
    pub async fn owner(&self, job: &str) -> Result<Option<Option<String>>, StoreError> {
        if let Some(o) = self.latest.owner(job) {
            return Ok(Some(o));
        }
        let j = job.to_string();
        let row = call(&self.db, move |pool| async move {
            sqlx::query("SELECT tenant FROM result_jobs WHERE name = $1").bind(j).fetch_optional(&pool).await
        })
        .await?;
        let owner = row.map(|r| r.try_get::<Option<String>, _>(0).ok().flatten());
        if let Some(o) = &owner {
            self.latest.set_owner(job, o.clone());
        }
        Ok(owner)
    }

    /// Opens a run; `Err(owner)` if the job belongs to another tenant.
    pub async fn open(&self, n: NewRun) -> Result<Result<Run, Option<String>>, StoreError> {
        let now = now_micros();
        let opened = call(&self.db, move |pool| async move {
            let mut tx = pool.begin().await?;
            sqlx::query("INSERT INTO result_jobs (name, tenant, created_at) VALUES ($1, $2, $3) ON CONFLICT (name) DO NOTHING")
                .bind(&n.job)
                .bind(&n.tenant)
                .bind(now)
                .execute(&mut *tx)
                .await?;
            let owner: Option<String> =
                sqlx::query("SELECT tenant FROM result_jobs WHERE name = $1").bind(&n.job).fetch_one(&mut *tx).await?.try_get(0)?;
            if owner != n.tenant {
                tx.rollback().await?;
                return Ok(Err(owner));
            }
            let row = sqlx::query(&format!(
                "INSERT INTO runs (job, revision, platform, dut, status, started_at) VALUES ($1, $2, $3, $4, 'running', $5) RETURNING {RUN_COLUMNS}"
            ))
            .bind(&n.job)
            .bind(&n.revision)
            .bind(&n.platform)
            .bind(&n.dut)
            .bind(now)
            .fetch_one(&mut *tx)
            .await?;
            tx.commit().await?;
            run_of(&row).map(Ok).ok_or_else(|| sqlx::Error::Protocol("a run row that does not read back".into()))
        })
        .await?;
        if let Ok(run) = &opened {
            self.emit("run_opened", run, serde_json::json!({}));
        }
        Ok(opened)
    }

    /// Records the run's own upload token (revoked when the run ends).
    pub async fn set_token(&self, run: i64, token: &str) -> Result<(), StoreError> {
        let t = token.to_string();
        call(&self.db, move |pool| async move {
            sqlx::query("UPDATE runs SET token = $1 WHERE id = $2").bind(t).bind(run).execute(&pool).await.map(|_| ())
        })
        .await
    }

    /// The open run of the DUT `dut` (its job's), newest first: `(id, job, token, revision)`.
    pub async fn open_of_dut(&self, dut: &str) -> Result<Option<(i64, String, String, Option<String>)>, StoreError> {
        let d = dut.to_string();
        let row = call(&self.db, move |pool| async move {
            sqlx::query(
                "SELECT id, job, token, revision FROM runs WHERE dut = $1 AND status = 'running' AND token IS NOT NULL ORDER BY id DESC LIMIT 1",
            )
            .bind(d)
            .fetch_optional(&pool)
            .await
        })
        .await?;
        Ok(row.and_then(|r| Some((r.try_get(0).ok()?, r.try_get(1).ok()?, r.try_get(2).ok()?, r.try_get(3).ok()?))))
    }

    /// The run `id` of `job`, with its files.
    pub async fn get(&self, job: &str, id: i64) -> Result<Option<Run>, StoreError> {
        let j = job.to_string();
        let (run, files) = call(&self.db, move |pool| async move {
            let run = sqlx::query(&format!("SELECT {RUN_COLUMNS} FROM runs WHERE id = $1 AND job = $2"))
                .bind(id)
                .bind(j)
                .fetch_optional(&pool)
                .await?;
            let files = sqlx::query("SELECT path, sha256, size, tokened, uploaded_at FROM result_files WHERE run = $1 ORDER BY path")
                .bind(id)
                .fetch_all(&pool)
                .await?;
            Ok((run, files))
        })
        .await?;
        let Some(mut run) = run.as_ref().and_then(run_of) else { return Ok(None) };
        run.files = Some(files.iter().filter_map(file_of).collect());
        if let Some(key) = run.input_key.clone() {
            run.flaky = super::is_flaky(&self.keyed(&run.job, &key).await?);
            run.inputs = self.inputs_of(id).await?;
        }
        Ok(Some(run))
    }

    /// The run `id` of whichever job, with its files (`citron results replay ID`).
    pub async fn by_id(&self, id: i64) -> Result<Option<Run>, StoreError> {
        let job =
            call(
                &self.db,
                move |pool| async move { sqlx::query("SELECT job FROM runs WHERE id = $1").bind(id).fetch_optional(&pool).await },
            )
            .await?;
        match job.and_then(|r| r.try_get::<String, _>(0).ok()) {
            Some(job) => self.get(&job, id).await,
            None => Ok(None),
        }
    }

    /// Runs of `job` after `after` (by id), at most `limit`, optionally of one revision.
    pub async fn list(&self, job: &str, revision: Option<String>, after: i64, limit: i64) -> Result<Vec<Run>, StoreError> {
        let j = job.to_string();
        let rows = call(&self.db, move |pool| async move {
            sqlx::query(&format!(
                "SELECT {RUN_COLUMNS} FROM runs WHERE job = $1 AND id > $2 AND ($3 IS NULL OR revision = $3) ORDER BY id LIMIT $4"
            ))
            .bind(j)
            .bind(after)
            .bind(revision)
            .bind(limit)
            .fetch_all(&pool)
            .await
        })
        .await?;
        Ok(rows.iter().filter_map(run_of).collect())
    }

    /// The newest run of `job` with `status` (any when `None`) on `platform` (any when `None`).
    /// Answered from memory ([`super::latest`]) for a finished status once asked.
    pub async fn latest(&self, job: &str, platform: Option<String>, status: Option<Status>) -> Result<Option<Run>, StoreError> {
        let cached = status.filter(|s| *s != Status::Running);
        if let Some(s) = cached {
            if let Some(hit) = self.latest.get(job, &platform, s) {
                return Ok(hit);
            }
        }
        let generation = self.latest.generation();
        let found = self.latest_uncached(job, platform.clone(), status).await?;
        if let Some(s) = cached {
            self.latest.put(generation, job, platform, s, found.clone());
        }
        Ok(found)
    }

    async fn latest_uncached(&self, job: &str, platform: Option<String>, status: Option<Status>) -> Result<Option<Run>, StoreError> {
        let j = job.to_string();
        let st = status.map(|s| s.name().to_string());
        let row = call(&self.db, move |pool| async move {
            sqlx::query(&format!(
                "SELECT {RUN_COLUMNS} FROM runs WHERE job = $1 AND ($2 IS NULL OR platform = $2) AND ($3 IS NULL OR status = $3) ORDER BY id DESC LIMIT 1"
            ))
            .bind(j)
            .bind(platform)
            .bind(st)
            .fetch_optional(&pool)
            .await
        })
        .await?;
        Ok(row.as_ref().and_then(run_of))
    }

    /// The file `path` of run `run`.
    pub async fn file(&self, run: i64, path: &str) -> Result<Option<ResultFile>, StoreError> {
        let p = path.to_string();
        let row = call(&self.db, move |pool| async move {
            sqlx::query("SELECT path, sha256, size, tokened, uploaded_at FROM result_files WHERE run = $1 AND path = $2")
                .bind(run)
                .bind(p)
                .fetch_optional(&pool)
                .await
        })
        .await?;
        Ok(row.as_ref().and_then(file_of))
    }

    /// Adds the file `path` to the open run `run`, unless it has one by that path.
    pub async fn add_file(&self, run: i64, path: &str, sha256: &str, size: u64, tokened: bool) -> Result<Added, StoreError> {
        let (p, h) = (path.to_string(), sha256.to_string());
        let now = now_micros();
        let (added, the_run) = call(&self.db, move |pool| async move {
            let mut tx = pool.begin().await?;
            let row = sqlx::query(&format!("SELECT {RUN_COLUMNS} FROM runs WHERE id = $1")).bind(run).fetch_optional(&mut *tx).await?;
            let Some(the_run) = row.as_ref().and_then(run_of).filter(|r| r.status == Status::Running) else {
                return Ok((Added::Closed, None));
            };
            let n = sqlx::query(
                "INSERT INTO result_files (run, path, sha256, size, tokened, uploaded_at) VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (run, path) DO NOTHING",
            )
            .bind(run)
            .bind(&p)
            .bind(&h)
            .bind(i64::try_from(size).unwrap_or(i64::MAX))
            .bind(i64::from(tokened))
            .bind(now)
            .execute(&mut *tx)
            .await?
            .rows_affected();
            let there: String =
                sqlx::query("SELECT sha256 FROM result_files WHERE run = $1 AND path = $2").bind(run).bind(&p).fetch_one(&mut *tx).await?.try_get(0)?;
            tx.commit().await?;
            Ok((
                match (n, there == h) {
                    (1, _) => Added::New,
                    (_, true) => Added::Same,
                    _ => Added::Other(there),
                },
                Some(the_run),
            ))
        })
        .await?;
        if let (Added::New, Some(r)) = (&added, &the_run) {
            self.emit("file_uploaded", r, serde_json::json!({"path": path, "sha256": sha256, "size": size, "tokened": tokened}));
        }
        Ok(added)
    }

    /// Finishes the open run `run` with `status`; answers the run's status after (the one it
    /// had if it was finished already), and its own token to revoke.
    pub async fn finish(&self, run: i64, status: Status) -> Result<Option<(Status, Option<String>)>, StoreError> {
        let now = now_micros();
        let (after, finished, job) = call(&self.db, move |pool| async move {
            let mut tx = pool.begin().await?;
            let n = sqlx::query("UPDATE runs SET status = $1, finished_at = $2 WHERE id = $3 AND status = 'running'")
                .bind(status.name())
                .bind(now)
                .bind(run)
                .execute(&mut *tx)
                .await?
                .rows_affected();
            let row = sqlx::query("SELECT status, token, job FROM runs WHERE id = $1").bind(run).fetch_optional(&mut *tx).await?;
            tx.commit().await?;
            let job: Option<String> = row.as_ref().map(|r| r.try_get(2)).transpose()?;
            let after = match row {
                Some(r) => Some((Status::parse(&r.try_get::<String, _>(0)?).unwrap_or(Status::Unknown), r.try_get(1)?)),
                None => None,
            };
            Ok((after, n > 0, job))
        })
        .await?;
        // Before anyone hears of it: this gateway's `latest` never answers the run before.
        if let Some(job) = &job {
            self.latest.invalidate(job);
        }
        if finished {
            self.announce_finished(run).await;
        }
        Ok(after)
    }

    /// The `run_finished` event of `run`: the run, how many files it has and the first
    /// [`EVENT_FILES_MAX`] of them (path, sha256, size), so that a watcher knows what to fetch
    /// without asking.
    async fn announce_finished(&self, run: i64) {
        if self.feed.is_none() {
            return;
        }
        let read = call(&self.db, move |pool| async move {
            let r = sqlx::query(&format!("SELECT {RUN_COLUMNS} FROM runs WHERE id = $1")).bind(run).fetch_optional(&pool).await?;
            let n: i64 = sqlx::query("SELECT COUNT(*) FROM result_files WHERE run = $1").bind(run).fetch_one(&pool).await?.try_get(0)?;
            let files = sqlx::query(&format!(
                "SELECT path, sha256, size, tokened, uploaded_at FROM result_files WHERE run = $1 ORDER BY path LIMIT {EVENT_FILES_MAX}"
            ))
            .bind(run)
            .fetch_all(&pool)
            .await?;
            Ok((r, n, files))
        })
        .await;
        match read {
            Ok((Some(r), n, files)) => {
                let Some(r) = run_of(&r) else { return };
                let files: Vec<serde_json::Value> = files
                    .iter()
                    .filter_map(file_of)
                    .map(|f| serde_json::json!({"path": f.path, "sha256": f.sha256, "size": f.size, "tokened": f.tokened}))
                    .collect();
                self.emit("run_finished", &r, serde_json::json!({"files_count": n, "files": files, "finished_at": r.finished_at}));
            }
            Ok((None, ..)) => {}
            Err(e) => tracing::warn!(run, error = %e, "results: cannot read the finished run for its event"),
        }
    }

    /// Appends `data` at `offset` to the open run's console, idempotently: bytes it has
    /// already are skipped, a gap is refused, the total stays within `max_bytes`.
    pub async fn append_console(&self, run: i64, offset: u64, data: bytes::Bytes, max_bytes: u64) -> Result<Appended, StoreError> {
        call(&self.db, move |pool| async move {
            let mut tx = pool.begin().await?;
            let open = sqlx::query("SELECT status FROM runs WHERE id = $1").bind(run).fetch_optional(&mut *tx).await?;
            if open.map(|r| r.try_get::<String, _>(0)).transpose()?.as_deref() != Some("running") {
                return Ok(Appended::Closed);
            }
            let end: i64 = sqlx::query("SELECT COALESCE(MAX(at + len), 0) FROM console_chunks WHERE run = $1")
                .bind(run)
                .fetch_one(&mut *tx)
                .await?
                .try_get(0)?;
            let end = u64::try_from(end).unwrap_or(0);
            if offset > end {
                return Ok(Appended::Gap(end));
            }
            let skip = usize::try_from(end - offset).unwrap_or(usize::MAX);
            if skip >= data.len() {
                return Ok(Appended::Length(end));
            }
            let new = data.slice(skip..);
            if end + new.len() as u64 > max_bytes {
                return Ok(Appended::TooLong);
            }
            sqlx::query("INSERT INTO console_chunks (run, at, len, data) VALUES ($1, $2, $3, $4)")
                .bind(run)
                .bind(end as i64)
                .bind(new.len() as i64)
                .bind(new.to_vec())
                .execute(&mut *tx)
                .await?;
            tx.commit().await?;
            Ok(Appended::Length(end + new.len() as u64))
        })
        .await
    }

    /// The run's console.
    pub async fn console(&self, run: i64) -> Result<Vec<u8>, StoreError> {
        let rows = call(&self.db, move |pool| async move {
            sqlx::query("SELECT data FROM console_chunks WHERE run = $1 ORDER BY at").bind(run).fetch_all(&pool).await
        })
        .await?;
        Ok(rows.iter().filter_map(|r| r.try_get::<Vec<u8>, _>(0).ok()).flatten().collect())
    }

    /// Every `(job, run, path)` with content `sha256`, and the job's tenant.
    pub async fn by_hash(&self, sha256: &str) -> Result<Vec<(String, i64, String, Option<String>)>, StoreError> {
        let h = sha256.to_string();
        let rows = call(&self.db, move |pool| async move {
            sqlx::query(
                "SELECT r.job, r.id, f.path, j.tenant FROM result_files f JOIN runs r ON f.run = r.id JOIN result_jobs j ON j.name = r.job WHERE f.sha256 = $1 ORDER BY r.id, f.path LIMIT 1000",
            )
            .bind(h)
            .fetch_all(&pool)
            .await
        })
        .await?;
        Ok(rows.iter().filter_map(|r| Some((r.try_get(0).ok()?, r.try_get(1).ok()?, r.try_get(2).ok()?, r.try_get(3).ok()?))).collect())
    }
}
