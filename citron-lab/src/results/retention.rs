//! Retention: which runs lose their files, and which blobs go with them.
//!
//! A job may keep the files of its newest `keep_last` finished runs and/or of those younger
//! than a `ttl`; a run beyond either bound loses its files and console, but its record (job,
//! revision, status, times) stays. Never collected: a running run, and the newest successful
//! run of each platform — what a `latest` link points at. A blob goes when no file of any run
//! refers to it any more.

use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use sqlx::Row as _;
use utoipa::ToSchema;

use super::runs::Status;
use crate::auth::{call, now_micros};
use crate::state::Db;
use citron_core::store::StoreError;

/// A job's retention.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Retention {
    /// Keep the files of the newest N finished runs (null: no such bound).
    #[schema(required = true, minimum = 1)]
    pub keep_last: Option<u64>,
    /// Keep the files of runs finished less than this many seconds ago (null: no such bound).
    #[schema(required = true, minimum = 1)]
    pub ttl_secs: Option<u64>,
}

/// A finished run, as retention sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct Finished {
    /// Its id.
    pub id: i64,
    /// Its status.
    pub status: Status,
    /// Its platform.
    pub platform: Option<String>,
    /// When it finished, microseconds since the Unix epoch.
    pub finished_at: i64,
}

/// The runs of `runs` (newest first) whose files go, under `r` at `now` (microseconds).
pub fn expired(runs: &[Finished], r: Retention, now: i64) -> Vec<i64> {
    let mut latest_success: Vec<&Option<String>> = Vec::new();
    let mut out = Vec::new();
    for (i, run) in runs.iter().enumerate() {
        if run.status == Status::Running {
            continue;
        }
        if run.status == Status::Success && !latest_success.contains(&&run.platform) {
            latest_success.push(&run.platform);
            continue; // what `latest` points at
        }
        let beyond_count = r.keep_last.is_some_and(|n| i as u64 >= n);
        let ttl_us = r.ttl_secs.map(|s| i64::try_from(Duration::from_secs(s).as_micros()).unwrap_or(i64::MAX));
        let too_old = ttl_us.is_some_and(|t| now.saturating_sub(run.finished_at) > t);
        if beyond_count || too_old {
            out.push(run.id);
        }
    }
    out
}

/// Retention in the state store.
#[derive(Clone)]
pub struct Sweeper {
    db: Arc<Db>,
}

impl std::fmt::Debug for Sweeper {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Sweeper")
    }
}

impl Sweeper {
    /// Over `db`.
    pub fn new(db: Arc<Db>) -> Sweeper {
        Sweeper { db }
    }

    /// `job`'s retention (`None`: no such job).
    pub async fn get(&self, job: &str) -> Result<Option<Retention>, StoreError> {
        let j = job.to_string();
        let row = call(&self.db, move |pool| async move {
            sqlx::query("SELECT keep_last, ttl_secs FROM result_jobs WHERE name = $1").bind(j).fetch_optional(&pool).await
        })
        .await?;
        Ok(row.map(|r| Retention {
            keep_last: r.try_get::<Option<i64>, _>(0).ok().flatten().and_then(|v| u64::try_from(v).ok()),
            ttl_secs: r.try_get::<Option<i64>, _>(1).ok().flatten().and_then(|v| u64::try_from(v).ok()),
        }))
    }

    /// Sets `job`'s retention; `false` if there is no such job.
    pub async fn set(&self, job: &str, r: Retention) -> Result<bool, StoreError> {
        let j = job.to_string();
        let k = r.keep_last.map(|v| i64::try_from(v).unwrap_or(i64::MAX));
        let t = r.ttl_secs.map(|v| i64::try_from(v).unwrap_or(i64::MAX));
        let n = call(&self.db, move |pool| async move {
            sqlx::query("UPDATE result_jobs SET keep_last = $1, ttl_secs = $2 WHERE name = $3").bind(k).bind(t).bind(j).execute(&pool).await
        })
        .await?
        .rows_affected();
        Ok(n > 0)
    }

    /// Every job with a retention.
    pub async fn jobs(&self) -> Result<Vec<String>, StoreError> {
        let rows = call(&self.db, |pool| async move {
            sqlx::query("SELECT name FROM result_jobs WHERE keep_last IS NOT NULL OR ttl_secs IS NOT NULL").fetch_all(&pool).await
        })
        .await?;
        Ok(rows.iter().filter_map(|r| r.try_get(0).ok()).collect())
    }

    /// Drops the files and console of `job`'s expired runs; answers the digests no file refers
    /// to any more (their blobs can go).
    pub async fn expire(&self, job: &str) -> Result<Vec<String>, StoreError> {
        let Some(r) = self.get(job).await? else { return Ok(Vec::new()) };
        if r == Retention::default() {
            return Ok(Vec::new());
        }
        let j = job.to_string();
        let now = now_micros();
        call(&self.db, move |pool| async move {
            let rows =
                sqlx::query("SELECT id, status, platform, finished_at FROM runs WHERE job = $1 AND status <> 'running' ORDER BY id DESC")
                    .bind(&j)
                    .fetch_all(&pool)
                    .await?;
            let runs: Vec<Finished> = rows
                .iter()
                .filter_map(|r| {
                    Some(Finished {
                        id: r.try_get(0).ok()?,
                        status: Status::parse(&r.try_get::<String, _>(1).ok()?)?,
                        platform: r.try_get(2).ok()?,
                        finished_at: r.try_get::<Option<i64>, _>(3).ok()?.unwrap_or(0),
                    })
                })
                .collect();
            let mut gone: Vec<String> = Vec::new();
            let mut tx = pool.begin().await?;
            for id in expired(&runs, r, now) {
                for h in sqlx::query("SELECT sha256 FROM result_files WHERE run = $1").bind(id).fetch_all(&mut *tx).await? {
                    let h: String = h.try_get(0)?;
                    if !gone.contains(&h) {
                        gone.push(h);
                    }
                }
                sqlx::query("DELETE FROM result_files WHERE run = $1").bind(id).execute(&mut *tx).await?;
                sqlx::query("DELETE FROM console_chunks WHERE run = $1").bind(id).execute(&mut *tx).await?;
            }
            let mut unreferenced = Vec::new();
            for h in gone {
                let still = sqlx::query("SELECT 1 FROM result_files WHERE sha256 = $1 LIMIT 1").bind(&h).fetch_optional(&mut *tx).await?;
                if still.is_none() {
                    unreferenced.push(h);
                }
            }
            tx.commit().await?;
            Ok(unreferenced)
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(id: i64, status: Status, platform: &str, finished_s: i64) -> Finished {
        Finished { id, status, platform: Some(platform.into()), finished_at: finished_s * 1_000_000 }
    }

    #[test]
    fn newest_success_per_platform_is_never_collected() {
        use Status::*;
        // Newest first.
        let runs = [
            run(6, Failure, "arm", 60),
            run(5, Failure, "arm", 50),
            run(4, Success, "x86", 40),
            run(3, Success, "arm", 30),
            run(2, Success, "arm", 20),
            run(1, Unknown, "arm", 10),
        ];
        let keep2 = Retention { keep_last: Some(2), ttl_secs: None };
        assert_eq!(expired(&runs, keep2, 100_000_000), vec![2, 1], "4 and 3 are latest; 6 and 5 the newest two");
        let ttl = Retention { keep_last: None, ttl_secs: Some(45) };
        assert_eq!(expired(&runs, ttl, 100_000_000), vec![5, 2, 1], "older than 45 s, except what latest points at");
        assert_eq!(expired(&runs, Retention::default(), 100_000_000), Vec::<i64>::new());
    }
}
