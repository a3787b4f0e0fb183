//! Replay by revision (issue 15 §7), the store side: a DUT's run records its input key and
//! what went into it when it finishes (the core computes them: `citron_core::gateway`'s
//! `inputs.rs` says what the key holds and why it is on the declared artifacts), and `find`
//! looks runs up by key. Two finished runs with one key that ended otherwise make it flaky.

use serde::{Deserialize, Serialize};
use sqlx::Row as _;
use utoipa::ToSchema;

use super::runs::{run_of, RUN_COLUMNS};
use super::{Run, Runs, Status};
use crate::auth::call;
use citron_core::store::StoreError;

/// The job a run ran, as recorded when it finished.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordedJob {
    /// Its text.
    pub yaml: String,
    /// Its `file:` root besides the lab's.
    pub dir: Option<String>,
    /// The DUT it ran on.
    pub dut: Option<String>,
}

/// The most runs with one input key that `find` and `flaky` look at.
pub const KEYED_RUNS_MAX: i64 = 1000;

/// Whether runs with one input key ended both in success and in failure.
pub fn is_flaky(runs: &[Run]) -> bool {
    runs.iter().any(|r| r.status == Status::Success) && runs.iter().any(|r| r.status == Status::Failure)
}

/// What `GET /api/v1/results/{job}/find` answers: the key the job would have on the DUT now,
/// and the newest successful run with that key, if there is one.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Found {
    /// The job.
    pub job: String,
    /// The DUT the key was computed for.
    pub dut: String,
    /// The revision it was computed for.
    #[schema(required = true)]
    pub revision: Option<String>,
    /// The input key (SHA-256, hex).
    pub key: String,
    /// The newest successful run with this key, with its files: replay it. `null`: none, run
    /// the test.
    #[schema(required = true)]
    pub run: Option<Run>,
    /// Finished runs with this key ended both in success and in failure.
    pub flaky: bool,
    /// The finished runs with this key, newest first (at most [`KEYED_RUNS_MAX`]).
    pub runs: Vec<i64>,
}

impl Runs {
    /// Records what went into the finished (or finishing) run `run`: its input key, the
    /// inputs document, and the job's text and `file:` root for `find`.
    pub async fn record_inputs(
        &self,
        run: i64,
        key: &str,
        inputs: &serde_json::Value,
        yaml: Option<String>,
        dir: Option<String>,
    ) -> Result<(), StoreError> {
        let (k, i) = (key.to_string(), inputs.to_string());
        call(&self.db, move |pool| async move {
            sqlx::query("UPDATE runs SET input_key = $1, inputs = $2, job_yaml = $3, job_dir = $4 WHERE id = $5")
                .bind(k)
                .bind(i)
                .bind(yaml)
                .bind(dir)
                .bind(run)
                .execute(&pool)
                .await
                .map(|_| ())
        })
        .await
    }

    /// The inputs document run `run` recorded.
    pub async fn inputs_of(&self, run: i64) -> Result<Option<serde_json::Value>, StoreError> {
        let row = call(&self.db, move |pool| async move {
            sqlx::query("SELECT inputs FROM runs WHERE id = $1").bind(run).fetch_optional(&pool).await
        })
        .await?;
        Ok(row.and_then(|r| r.try_get::<Option<String>, _>(0).ok().flatten()).and_then(|t| serde_json::from_str(&t).ok()))
    }

    /// The finished runs of `job` with input key `key`, newest first (at most
    /// [`KEYED_RUNS_MAX`]).
    pub async fn keyed(&self, job: &str, key: &str) -> Result<Vec<Run>, StoreError> {
        let (j, k) = (job.to_string(), key.to_string());
        let rows = call(&self.db, move |pool| async move {
            sqlx::query(&format!(
                "SELECT {RUN_COLUMNS} FROM runs WHERE job = $1 AND input_key = $2 AND status <> 'running' ORDER BY id DESC LIMIT {KEYED_RUNS_MAX}"
            ))
            .bind(j)
            .bind(k)
            .fetch_all(&pool)
            .await
        })
        .await?;
        Ok(rows.iter().filter_map(run_of).collect())
    }

    /// The job text the newest run of `job` that recorded one ran, with its `file:` root and
    /// DUT: what `find` renders again.
    pub async fn recorded_job(&self, job: &str) -> Result<Option<RecordedJob>, StoreError> {
        let j = job.to_string();
        let row = call(&self.db, move |pool| async move {
            sqlx::query("SELECT job_yaml, job_dir, dut FROM runs WHERE job = $1 AND job_yaml IS NOT NULL ORDER BY id DESC LIMIT 1")
                .bind(j)
                .fetch_optional(&pool)
                .await
        })
        .await?;
        Ok(row.and_then(|r| Some(RecordedJob { yaml: r.try_get(0).ok()?, dir: r.try_get(1).ok()?, dut: r.try_get(2).ok()? })))
    }
}
