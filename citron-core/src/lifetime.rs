//! Lifetimes: how often and how long a DUT may read an artifact, how long a job's disk keeps
//! its writes, and which events reset them.
//!
//! One rule says "on this event, this thing resets": [`Resets`]. Files and disks both use it.
//! - Files: a [`LifetimePolicy`] is asked before every read ([`LifetimePolicy::admit`]) and told
//!   of every DUT event ([`LifetimePolicy::on_event`]). The seed's rule is that `access_count`
//!   "gets reset after every reboot", so the counting policies reset on `boot` and `job_start`;
//!   expiration restarts at `job_start`.
//! - Disks: a [`DiskLifetime`] (the job's `reset_on` and `expiration`) says on which events a
//!   DUT's writes are dropped and, through a [`DiskLease`], when a disk no job asks for any more
//!   is removed. The disk store asks it and only carries the decision out.

use std::fmt;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use serde::{Deserialize, Serialize};

use crate::job::{DiskSpec, Lifetime, ResetOn};

/// Something that happened to a DUT, sent by the lab (API, Python, `boot-test`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Event {
    /// The DUT (re)booted.
    Boot,
    /// A job started on the DUT.
    JobStart,
    /// The DUT's job ended: the job is unloaded, so nothing of it (secrets included) stays
    /// readable between jobs; its disks are released as `reset_on` says (`job_start` disks are
    /// dropped, `never` disks are kept for the next job).
    JobEnd,
}

impl std::str::FromStr for Event {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "boot" => Ok(Event::Boot),
            "job_start" => Ok(Event::JobStart),
            "job_end" => Ok(Event::JobEnd),
            other => Err(format!("unknown event {other:?}; expected boot, job_start or job_end")),
        }
    }
}

/// The events that reset something. Every lifetime rule, a file's read count, its expiration
/// clock or a disk's writes, names its events with this one type, so "on this event, this
/// resets" is decided in one place ([`Resets::on`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Resets {
    boot: bool,
    job_start: bool,
}

impl Resets {
    /// Nothing resets it.
    pub const NEVER: Resets = Resets { boot: false, job_start: false };
    /// Every `boot` event.
    pub const BOOT: Resets = Resets { boot: true, job_start: false };
    /// Every `job_start` event (and a new job being set, which is a job start).
    pub const JOB_START: Resets = Resets { boot: false, job_start: true };
    /// Both.
    pub const BOOT_OR_JOB_START: Resets = Resets { boot: true, job_start: true };

    /// Does `event` reset it? `job_end` resets nothing: what a job end drops is decided by the
    /// job being unloaded, not by a reset.
    pub fn on(self, event: Event) -> bool {
        match event {
            Event::Boot => self.boot,
            Event::JobStart => self.job_start,
            Event::JobEnd => false,
        }
    }
}

impl From<ResetOn> for Resets {
    fn from(r: ResetOn) -> Resets {
        match r {
            ResetOn::Boot => Resets::BOOT,
            ResetOn::JobStart => Resets::JOB_START,
            ResetOn::Never => Resets::NEVER,
        }
    }
}

/// What resets an `access_count`: the seed says it "gets reset after every reboot", and a new
/// job starts from zero too.
const ACCESS_COUNT_RESETS: Resets = Resets::BOOT_OR_JOB_START;
/// What restarts an `expiration` clock: the job's start.
const EXPIRATION_RESTARTS: Resets = Resets::JOB_START;

/// A job disk's lifetime (`reset_on` and `expiration` in `storage.nbd[]`): when a DUT's writes
/// to it are dropped, and how long an unused disk is kept.
///
/// ```
/// use std::time::Duration;
/// use citron_core::job::ResetOn;
/// use citron_core::lifetime::{DiskLifetime, Event};
/// let l = DiskLifetime::new(ResetOn::Boot, Some(Duration::from_secs(60)));
/// assert!(l.resets_on(Event::Boot));
/// assert!(!l.resets_on(Event::JobStart));
/// assert!(!l.resets_with_job());
/// let lease = l.lease(1_000);
/// assert!(!lease.expired(1_059) && lease.expired(1_060));
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DiskLifetime {
    resets: Resets,
    expiration: Option<Duration>,
}

impl DiskLifetime {
    /// Writes are dropped on the events `reset_on` names; a disk no job asked for in
    /// `expiration` is removed (never, without one).
    pub fn new(reset_on: ResetOn, expiration: Option<Duration>) -> DiskLifetime {
        DiskLifetime { resets: reset_on.into(), expiration }
    }

    /// The lifetime a job's disk asks for.
    pub fn of(spec: &DiskSpec) -> DiskLifetime {
        DiskLifetime::new(spec.reset_on, spec.expiration)
    }

    /// Does `event` drop the DUT's writes to this disk?
    pub fn resets_on(&self, event: Event) -> bool {
        self.resets.on(event)
    }

    /// When the disk's job changes (it ends, or a new job replaces it): are its overlays dropped?
    /// A new job is a job start, so disks that reset on `job_start` start from their base; when
    /// their job ends they are dropped at once, as the next job would reset them anyway. Other
    /// disks keep their writes for a later job naming them, until they expire.
    pub fn resets_with_job(&self) -> bool {
        self.resets.on(Event::JobStart)
    }

    /// The lease a job asking for the disk at `now_unix` (seconds) gives it.
    pub fn lease(&self, now_unix: u64) -> DiskLease {
        DiskLease { since_unix: now_unix, expiration: self.expiration }
    }
}

/// When a job last asked for a disk and how long the disk outlives that: kept on disk next to the
/// overlays, so expirations hold across restarts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DiskLease {
    /// When a job last asked for the disk (or released it), seconds since the epoch.
    pub since_unix: u64,
    /// How long after that it is removed; `None`: kept.
    pub expiration: Option<Duration>,
}

impl DiskLease {
    /// Has the disk expired at `now_unix`, if no job holds it? Never without an expiration.
    pub fn expired(&self, now_unix: u64) -> bool {
        match self.expiration {
            Some(e) => now_unix >= self.since_unix.saturating_add(e.as_secs()),
            None => false,
        }
    }
}

/// Why a policy refused a read: the seam's [`GoneReason`](crate::serve::GoneReason), which
/// backends receive in [`ServeError::Gone`](crate::serve::ServeError::Gone).
pub use crate::serve::GoneReason as Refusal;

/// A rule deciding whether one more read is allowed.
///
/// Policies are shared by every connection of a DUT, so `admit` must be exact under concurrency:
/// with a limit of N, N racing readers get in and the rest are refused.
pub trait LifetimePolicy: Send + Sync + fmt::Debug {
    /// Would a read be allowed now? Consumes nothing; called for every policy before any
    /// [`admit`](Self::admit), so that a refusal by one policy never uses up another.
    fn check(&self, now: Instant) -> Result<(), Refusal>;
    /// Allows one read and accounts for it, or refuses. Default: same as `check`.
    fn admit(&self, now: Instant) -> Result<(), Refusal> {
        self.check(now)
    }
    /// Gives back an admission whose read never started (another policy refused).
    fn release(&self) {}
    /// A DUT event happened.
    fn on_event(&self, event: Event, now: Instant);
    /// `reads` reads were counted before a restart (from the lifetime store): a job loaded
    /// again resumes its counts instead of starting from zero. Default: nothing to resume.
    fn resume_reads(&self, _reads: u32) {}
}

/// At most `limit` reads between resets (`lifetime: {access_count: N}`).
#[derive(Debug)]
pub struct AccessCount {
    limit: u32,
    used: AtomicU32,
}

impl AccessCount {
    /// A fresh counter.
    pub fn new(limit: u32) -> Self {
        AccessCount { limit, used: AtomicU32::new(0) }
    }
    /// Reads served since the last reset.
    pub fn used(&self) -> u32 {
        self.used.load(Ordering::SeqCst)
    }
}

impl LifetimePolicy for AccessCount {
    fn check(&self, _now: Instant) -> Result<(), Refusal> {
        if self.used.load(Ordering::SeqCst) >= self.limit {
            Err(Refusal::Exhausted { limit: self.limit })
        } else {
            Ok(())
        }
    }
    fn admit(&self, _now: Instant) -> Result<(), Refusal> {
        self.used
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |u| (u < self.limit).then_some(u + 1))
            .map(|_| ())
            .map_err(|_| Refusal::Exhausted { limit: self.limit })
    }
    fn release(&self) {
        let _ = self.used.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |u| u.checked_sub(1));
    }
    fn on_event(&self, event: Event, _now: Instant) {
        if ACCESS_COUNT_RESETS.on(event) {
            self.used.store(0, Ordering::SeqCst);
        }
    }
    fn resume_reads(&self, reads: u32) {
        self.used.store(reads, Ordering::SeqCst);
    }
}

/// Readable for `after` from the job's start (`lifetime: {expiration: 12h}`).
#[derive(Debug)]
pub struct Expiration {
    after: Duration,
    since: Mutex<Instant>,
}

impl Expiration {
    /// Starts counting now.
    pub fn new(after: Duration, now: Instant) -> Self {
        Expiration { after, since: Mutex::new(now) }
    }
}

impl LifetimePolicy for Expiration {
    fn check(&self, now: Instant) -> Result<(), Refusal> {
        if now.saturating_duration_since(*self.since.lock()) >= self.after {
            Err(Refusal::Expired(self.after))
        } else {
            Ok(())
        }
    }
    fn on_event(&self, event: Event, now: Instant) {
        if EXPIRATION_RESTARTS.on(event) {
            *self.since.lock() = now;
        }
    }
}

/// The policies of one artifact, applied together.
#[derive(Debug, Default)]
pub struct Policies(Vec<Box<dyn LifetimePolicy>>);

impl Policies {
    /// The policies a job's `lifetime:` asks for.
    pub fn from_spec(spec: &Lifetime, now: Instant) -> Policies {
        let mut v: Vec<Box<dyn LifetimePolicy>> = Vec::new();
        if let Some(after) = spec.expiration {
            v.push(Box::new(Expiration::new(after, now)));
        }
        if let Some(n) = spec.access_count {
            v.push(Box::new(AccessCount::new(n)));
        }
        Policies(v)
    }

    /// Adds a policy (for lab-defined rules).
    pub fn push(&mut self, p: Box<dyn LifetimePolicy>) {
        self.0.push(p);
    }

    /// Would a read be allowed now? Uses up nothing (HTTP HEAD, a look before a range).
    pub fn check(&self, now: Instant) -> Result<(), Refusal> {
        self.0.iter().try_for_each(|p| p.check(now))
    }

    /// Every policy checks, then every policy admits; an admission refused half-way is rolled
    /// back so that nothing is used up by a refused read.
    pub fn admit(&self, now: Instant) -> Result<(), Refusal> {
        for p in &self.0 {
            p.check(now)?;
        }
        for (i, p) in self.0.iter().enumerate() {
            if let Err(e) = p.admit(now) {
                for q in &self.0[..i] {
                    q.release();
                }
                return Err(e);
            }
        }
        Ok(())
    }

    /// Resumes counts stored before a restart ([`LifetimePolicy::resume_reads`]).
    pub fn resume_reads(&self, reads: u32) {
        for p in &self.0 {
            p.resume_reads(reads);
        }
    }

    /// Passes an event to every policy.
    pub fn on_event(&self, event: Event, now: Instant) {
        for p in &self.0 {
            p.on_event(event, now);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn access_count_is_exact_under_50_racing_readers() {
        for limit in [0u32, 1, 7] {
            let p = Arc::new(Policies::from_spec(&Lifetime { access_count: Some(limit), expiration: None }, Instant::now()));
            let barrier = Arc::new(std::sync::Barrier::new(50));
            let ok: u32 = (0..50)
                .map(|_| {
                    let (p, b) = (p.clone(), barrier.clone());
                    std::thread::spawn(move || {
                        b.wait();
                        p.admit(Instant::now()).is_ok() as u32
                    })
                })
                .collect::<Vec<_>>()
                .into_iter()
                .map(|h| h.join().unwrap())
                .sum();
            assert_eq!(ok, limit);
            p.on_event(Event::Boot, Instant::now());
            assert_eq!(p.admit(Instant::now()).is_ok(), limit > 0);
        }
    }

    #[test]
    fn expiration_refuses_after_and_restarts_on_job_start() {
        let t0 = Instant::now();
        let p = Policies::from_spec(&Lifetime { access_count: Some(1), expiration: Some(Duration::from_secs(10)) }, t0);
        let late = t0 + Duration::from_secs(11);
        assert_eq!(p.admit(late), Err(Refusal::Expired(Duration::from_secs(10))));
        // The refused read did not use up the access count.
        assert!(p.admit(t0).is_ok());
        p.on_event(Event::JobStart, late);
        assert_eq!(p.admit(late), Ok(()));
    }

    #[test]
    fn disk_lifetimes_reset_on_the_events_they_name() {
        use Event::*;
        for (reset_on, events, with_job) in [
            (ResetOn::Boot, [true, false, false], false),
            (ResetOn::JobStart, [false, true, false], true),
            (ResetOn::Never, [false; 3], false),
        ] {
            let l = DiskLifetime::new(reset_on, None);
            assert_eq!([Boot, JobStart, JobEnd].map(|e| l.resets_on(e)), events, "{reset_on:?}");
            assert_eq!(l.resets_with_job(), with_job, "{reset_on:?}");
            assert!(!l.lease(0).expired(u64::MAX), "no expiration: kept");
        }
        let lease = DiskLease { since_unix: u64::MAX - 1, expiration: Some(Duration::from_secs(10)) };
        assert!(!lease.expired(u64::MAX - 1), "no overflow");
    }

    #[test]
    fn job_end_does_not_reset_counts() {
        let p = AccessCount::new(1);
        p.admit(Instant::now()).unwrap();
        p.on_event(Event::JobEnd, Instant::now());
        assert!(p.admit(Instant::now()).is_err());
    }
}
