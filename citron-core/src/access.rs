//! The per-DUT access log and the counters behind `/metrics`.
//!
//! Every read a DUT makes ends as one [`AccessRecord`]: refusals are written by the core when it
//! refuses, served reads by the [`AccessTicket`] an artifact carries, when the backend completes
//! or drops it. Backends therefore cannot forget to log.

use std::collections::{BTreeMap, VecDeque};
use std::fmt::Write as _;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use parking_lot::Mutex;
use serde::Serialize;

use crate::namespace::DutId;
use crate::serve::Protocol;

/// How a read ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", content = "reason", rename_all = "snake_case")]
pub enum Outcome {
    /// Everything was delivered.
    Served,
    /// The transfer started but did not finish (client gone, timeout, shutdown).
    Aborted,
    /// Refused before any byte, with the reason.
    Refused(String),
}

/// One line of a DUT's access log.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AccessRecord {
    /// When the request arrived, as seconds since the Unix epoch (fractional).
    pub time: f64,
    /// The protocol name.
    pub protocol: String,
    /// The path as requested (or the export name for NBD).
    pub path: String,
    /// Bytes delivered (read plus written, for NBD).
    pub bytes: u64,
    /// How it ended.
    pub outcome: Outcome,
}

/// The most records kept per DUT; older ones are dropped first.
pub const LOG_CAPACITY: usize = 10_000;

#[derive(Default)]
struct Counters {
    requests: u64,
    bytes: u64,
    refusals: u64,
}

/// Access logs and counters, shared by every backend.
#[derive(Default)]
pub struct AccessLog {
    logs: Mutex<BTreeMap<DutId, VecDeque<AccessRecord>>>,
    counters: Mutex<BTreeMap<(String, String), Counters>>,
    /// Artifacts found in the cache when a job was loaded.
    pub cache_hits: AtomicU64,
    /// Artifacts that had to be fetched.
    pub cache_misses: AtomicU64,
}

impl std::fmt::Debug for AccessLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AccessLog").finish_non_exhaustive()
    }
}

fn now_secs() -> f64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs_f64()).unwrap_or(0.0)
}

impl AccessLog {
    /// Appends a record to `dut`'s log (`None`: an unknown peer, counted under `unknown`).
    pub fn record(&self, dut: Option<&DutId>, rec: AccessRecord) {
        let key = (rec.protocol.clone(), dut.map(|d| d.0.clone()).unwrap_or_else(|| "unknown".into()));
        {
            let mut c = self.counters.lock();
            let c = c.entry(key).or_default();
            c.requests += 1;
            c.bytes += rec.bytes;
            if matches!(rec.outcome, Outcome::Refused(_)) {
                c.refusals += 1;
            }
        }
        if let Some(dut) = dut {
            let mut logs = self.logs.lock();
            let log = logs.entry(dut.clone()).or_default();
            if log.len() >= LOG_CAPACITY {
                log.pop_front();
            }
            log.push_back(rec);
        }
    }

    /// Records a refusal made before any byte.
    pub fn refuse(&self, dut: Option<&DutId>, protocol: Protocol, path: &str, why: impl ToString) {
        self.record(
            dut,
            AccessRecord {
                time: now_secs(),
                protocol: protocol.0.to_string(),
                path: path.to_string(),
                bytes: 0,
                outcome: Outcome::Refused(why.to_string()),
            },
        );
    }

    /// A copy of `dut`'s log, oldest first.
    pub fn entries(&self, dut: &DutId) -> Vec<AccessRecord> {
        self.logs.lock().get(dut).map(|l| l.iter().cloned().collect()).unwrap_or_default()
    }

    /// Forgets `dut`'s log (when the DUT is removed).
    pub fn forget(&self, dut: &DutId) {
        self.logs.lock().remove(dut);
    }

    /// The counters in Prometheus' text format.
    pub fn prometheus(&self) -> String {
        let mut out = String::new();
        let c = self.counters.lock();
        for (name, help, get) in [
            ("citron_requests_total", "Requests by protocol and DUT.", (|c: &Counters| c.requests) as fn(&Counters) -> u64),
            ("citron_bytes_total", "Bytes delivered by protocol and DUT.", |c| c.bytes),
            ("citron_refusals_total", "Refused requests by protocol and DUT.", |c| c.refusals),
        ] {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter");
            for ((proto, dut), v) in c.iter() {
                let _ = writeln!(out, "{name}{{protocol=\"{}\",dut=\"{}\"}} {}", esc(proto), esc(dut), get(v));
            }
        }
        for (name, v) in [("citron_cache_hits_total", &self.cache_hits), ("citron_cache_misses_total", &self.cache_misses)] {
            let _ = writeln!(out, "# TYPE {name} counter\n{name} {}", v.load(Ordering::Relaxed));
        }
        out
    }
}

fn esc(s: &str) -> String {
    s.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

/// An open read: becomes one [`AccessRecord`] when dropped.
pub struct AccessTicket {
    log: Arc<AccessLog>,
    dut: DutId,
    protocol: Protocol,
    path: String,
    time: f64,
    bytes: AtomicU64,
    done: AtomicBool,
    /// Set by [`refuse`](AccessTicket::refuse) or [`discard`](AccessTicket::discard).
    end: parking_lot::Mutex<Option<Ending>>,
}

/// How a ticket ends other than by its transfer.
#[derive(Debug)]
enum Ending {
    Refused(String),
    Discarded,
}

impl std::fmt::Debug for AccessTicket {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AccessTicket").field("dut", &self.dut).field("path", &self.path).finish()
    }
}

impl AccessTicket {
    /// Opens a ticket for `dut` reading `path`.
    pub fn new(log: Arc<AccessLog>, dut: DutId, protocol: Protocol, path: &str) -> Self {
        AccessTicket {
            log,
            dut,
            protocol,
            path: path.to_string(),
            time: now_secs(),
            bytes: AtomicU64::new(0),
            done: AtomicBool::new(false),
            end: parking_lot::Mutex::new(None),
        }
    }
    /// The protocol answered the request with a refusal of its own after all (an HTTP range
    /// that does not fit, say): logged as refused with `why`, not as a read.
    pub fn refuse(&self, why: impl ToString) {
        *self.end.lock() = Some(Ending::Refused(why.to_string()));
    }
    /// The artifact was only looked at to decide how to answer, and another ticket records the
    /// request: nothing is logged for this one.
    pub fn discard(&self) {
        *self.end.lock() = Some(Ending::Discarded);
    }
    /// Adds delivered bytes.
    pub fn add_bytes(&self, n: u64) {
        self.bytes.fetch_add(n, Ordering::Relaxed);
    }
    /// Marks the read as complete.
    pub fn complete(&self) {
        self.done.store(true, Ordering::Relaxed);
    }
}

impl Drop for AccessTicket {
    fn drop(&mut self) {
        let outcome = match self.end.lock().take() {
            Some(Ending::Discarded) => return,
            Some(Ending::Refused(why)) => Outcome::Refused(why),
            None if self.done.load(Ordering::Relaxed) => Outcome::Served,
            None => Outcome::Aborted,
        };
        self.log.record(
            Some(&self.dut),
            AccessRecord {
                time: self.time,
                protocol: self.protocol.0.to_string(),
                path: std::mem::take(&mut self.path),
                bytes: self.bytes.load(Ordering::Relaxed),
                outcome,
            },
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ticket_logs_once_with_outcome() {
        let log = Arc::new(AccessLog::default());
        let d = DutId::from("d");
        {
            let t = AccessTicket::new(log.clone(), d.clone(), Protocol::HTTP, "a");
            t.add_bytes(5);
            t.complete();
        }
        drop(AccessTicket::new(log.clone(), d.clone(), Protocol::TFTP, "b"));
        log.refuse(Some(&d), Protocol::HTTP, "c", "nope");
        AccessTicket::new(log.clone(), d.clone(), Protocol::HTTP, "looked at").discard();
        let t = AccessTicket::new(log.clone(), d.clone(), Protocol::HTTP, "d");
        t.complete();
        t.refuse("range not satisfiable");
        drop(t);
        let e = log.entries(&d);
        assert_eq!(e.len(), 4, "{e:?}");
        assert_eq!(e[3].outcome, Outcome::Refused("range not satisfiable".into()));
        assert_eq!((e[0].bytes, &e[0].outcome), (5, &Outcome::Served));
        assert_eq!(e[1].outcome, Outcome::Aborted);
        assert_eq!(e[2].outcome, Outcome::Refused("nope".into()));
        let m = log.prometheus();
        assert!(m.contains("citron_refusals_total{protocol=\"http\",dut=\"d\"} 2"), "{m}");
    }
}
