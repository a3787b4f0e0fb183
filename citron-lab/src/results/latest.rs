//! The `latest` cache: the newest finished run of a job per `(platform, status)`, and each
//! job's owner, kept in memory so that `GET …/latest` (a deploy step's poll, a DUT's
//! `result:` source) costs no state-store query when nothing changed.
//!
//! Only finished statuses are cached (`success`, `failure`, `unknown`): a run reaches one of
//! them once, in [`Runs::finish`](super::Runs::finish), which drops the job's entries before it
//! answers. Runs finished through another gateway arrive as `run_finished` events on the lab's
//! feed (its PostgreSQL NOTIFY wakes [`follow`]), which drop them too. Retention removes files,
//! never runs, so `latest` stays right; a job's owner never changes once set. A lookup that
//! raced with a finish is not kept (a generation counter), so a stale answer is never cached.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};

use parking_lot::Mutex;

use super::{Run, Status};
use crate::state::feed::{Feed, Filter, PAGE_MAX};

/// The most jobs the cache holds before it starts again empty.
const MAX_JOBS: usize = 4096;
/// The most `(platform, status)` entries one job holds.
const MAX_PER_JOB: usize = 64;

/// `(platform, status)`, the status by its name.
type Key = (Option<String>, &'static str);

/// The cache (shared by every clone of a [`super::Runs`]).
#[derive(Default)]
pub(super) struct LatestCache {
    jobs: Mutex<HashMap<String, HashMap<Key, Option<Run>>>>,
    owners: Mutex<HashMap<String, Option<String>>>,
    /// Bumped by every drop: a lookup started before one is not kept.
    generation: AtomicU64,
}

impl LatestCache {
    /// What to compare with at [`put`](Self::put) time.
    pub(super) fn generation(&self) -> u64 {
        self.generation.load(Ordering::SeqCst)
    }

    /// The cached answer of `latest(job, platform, status)`, if any.
    pub(super) fn get(&self, job: &str, platform: &Option<String>, status: Status) -> Option<Option<Run>> {
        self.jobs.lock().get(job).and_then(|m| m.get(&(platform.clone(), status.name())).cloned())
    }

    /// Keeps `run` as the answer, unless the cache was dropped from since `generation`.
    pub(super) fn put(&self, generation: u64, job: &str, platform: Option<String>, status: Status, run: Option<Run>) {
        let mut jobs = self.jobs.lock();
        if self.generation() != generation {
            return;
        }
        if jobs.len() >= MAX_JOBS && !jobs.contains_key(job) {
            jobs.clear();
        }
        let m = jobs.entry(job.to_string()).or_default();
        if m.len() >= MAX_PER_JOB {
            m.clear();
        }
        m.insert((platform, status.name()), run);
    }

    /// Drops what is known of `job`'s newest runs (a run of it finished).
    pub(super) fn invalidate(&self, job: &str) {
        let mut jobs = self.jobs.lock();
        self.generation.fetch_add(1, Ordering::SeqCst);
        jobs.remove(job);
    }

    /// `job`'s owner, once known.
    pub(super) fn owner(&self, job: &str) -> Option<Option<String>> {
        self.owners.lock().get(job).cloned()
    }

    /// Keeps `job`'s owner (it never changes once set).
    pub(super) fn set_owner(&self, job: &str, owner: Option<String>) {
        let mut o = self.owners.lock();
        if o.len() >= MAX_JOBS {
            o.clear();
        }
        o.insert(job.to_string(), owner);
    }
}

/// Drops the jobs whose runs finish on other gateways, as the lab's feed tells, until the
/// cache goes. Every gateway's own finishes drop them at once; this is for the others'.
pub(super) fn follow(cache: &Arc<LatestCache>, feed: Arc<Feed>) {
    let Ok(rt) = tokio::runtime::Handle::try_current() else { return };
    let weak: Weak<LatestCache> = Arc::downgrade(cache);
    let mut changed = feed.subscribe();
    rt.spawn(async move {
        let f = feed.clone();
        let Ok(Ok(mut last)) = tokio::task::spawn_blocking(move || f.last_seq()).await else { return };
        let filter = Filter { kind: Some("run_finished".into()), ..Filter::default() };
        loop {
            if changed.changed().await.is_err() {
                return;
            }
            loop {
                let (f, fl) = (feed.clone(), filter.clone());
                let page = match tokio::task::spawn_blocking(move || f.page(&fl, last, PAGE_MAX)).await {
                    Ok(Ok(p)) => p,
                    _ => {
                        // Unsure what was missed: start again from nothing.
                        let Some(c) = weak.upgrade() else { return };
                        c.generation.fetch_add(1, Ordering::SeqCst);
                        c.jobs.lock().clear();
                        break;
                    }
                };
                let Some(c) = weak.upgrade() else { return };
                for ev in &page {
                    last = last.max(ev.seq);
                    if let Some(job) = &ev.job {
                        c.invalidate(job);
                    }
                }
                if page.len() < PAGE_MAX {
                    break;
                }
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(id: i64) -> Run {
        Run {
            id,
            job: "j".into(),
            revision: None,
            platform: None,
            dut: None,
            status: Status::Success,
            started_at: 0.0,
            finished_at: Some(1.0),
            files: None,
            input_key: None,
            flaky: false,
            inputs: None,
        }
    }

    #[test]
    fn a_finish_drops_the_job_and_a_lookup_that_raced_with_it_is_not_kept() {
        let c = LatestCache::default();
        let g = c.generation();
        c.put(g, "j", None, Status::Success, Some(run(1)));
        c.put(g, "k", None, Status::Success, Some(run(5)));
        assert_eq!(c.get("j", &None, Status::Success), Some(Some(run(1))));
        assert_eq!(c.get("j", &None, Status::Failure), None, "not asked yet");
        c.invalidate("j");
        assert_eq!(c.get("j", &None, Status::Success), None);
        assert!(c.get("k", &None, Status::Success).is_some(), "other jobs stay");
        c.put(g, "j", None, Status::Success, Some(run(1)));
        assert_eq!(c.get("j", &None, Status::Success), None, "looked up before the finish: not kept");
        for i in 0..(MAX_PER_JOB + 1) {
            c.put(c.generation(), "j", Some(format!("p{i}")), Status::Success, None);
        }
        assert!(c.jobs.lock()["j"].len() <= MAX_PER_JOB);
    }
}
