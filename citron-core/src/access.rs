//! The per-DUT access log and the counters behind `/metrics`.
//!
//! Every read a DUT makes ends as one [`AccessRecord`]: refusals are written by the core when it
//! refuses, served reads by the [`AccessTicket`] an artifact carries ([`AccessLog::ticket`]), when
//! the backend completes or drops it. Backends therefore cannot forget to log.
//!
//! The same place writes the **access line**: one `info` event with target [`ACCESS_TARGET`]
//! per request and per refusal, whatever the protocol, with the fields `peer`, `dut` (absent for
//! a peer that is no DUT), `protocol`, `path`, `outcome` (`served`, `aborted`, `refused`),
//! `reason` (refusals only), `bytes` and `duration_ms`. `citron serve --log-format json` prints
//! each as one JSON object; the text format as `key=value` pairs.

use std::collections::{BTreeMap, VecDeque};
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use parking_lot::Mutex;
use serde::Serialize;

use crate::namespace::DutId;
use crate::serve::{AccessReport, AccessTicket, Protocol};
use crate::store::StoreError;
use crate::timing::{TimingSnapshot, Timings};

/// The `tracing` target of the access lines (`RUST_LOG=citron::access=off` silences them).
pub const ACCESS_TARGET: &str = "citron::access";

/// How a read ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Everything was delivered.
    Served,
    /// The transfer started but did not finish (client gone, timeout, shutdown).
    Aborted,
    /// Refused before any byte, with the reason.
    Refused(String),
}

/// One line of a DUT's access log.
///
/// Its JSON (the REST API's `/accesses` and Python's `Server.accesses`, which converts this
/// same JSON) is flat: `{"seq", "time", "protocol", "path", "bytes", "outcome": "served" |
/// "aborted" | "refused", "reason": why it was refused or null}`.
///
/// ```
/// use citron_core::access::{AccessRecord, Outcome};
/// let r = AccessRecord { seq: 1, time: 2.5, protocol: "http".into(), path: "/a".into(), bytes: 0, outcome: Outcome::Refused("gone".into()) };
/// let v = serde_json::to_value(&r).unwrap();
/// assert_eq!((&v["outcome"], &v["reason"]), (&serde_json::json!("refused"), &serde_json::json!("gone")));
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct AccessRecord {
    /// Position in the log: increases by one with every record of any DUT, never reused, so
    /// `?after=SEQ` pages through a log that grows meanwhile without skipping or repeating.
    pub seq: u64,
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

impl Outcome {
    /// `served`, `aborted` or `refused`: the `outcome` of the record's JSON.
    pub fn kind(&self) -> &'static str {
        match self {
            Outcome::Served => "served",
            Outcome::Aborted => "aborted",
            Outcome::Refused(_) => "refused",
        }
    }
    /// Why it was refused (`None` unless refused).
    pub fn reason(&self) -> Option<&str> {
        match self {
            Outcome::Refused(why) => Some(why),
            _ => None,
        }
    }
}

impl Serialize for AccessRecord {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeStruct as _;
        let mut st = s.serialize_struct("AccessRecord", 7)?;
        st.serialize_field("seq", &self.seq)?;
        st.serialize_field("time", &self.time)?;
        st.serialize_field("protocol", &self.protocol)?;
        st.serialize_field("path", &self.path)?;
        st.serialize_field("bytes", &self.bytes)?;
        st.serialize_field("outcome", self.outcome.kind())?;
        st.serialize_field("reason", &self.outcome.reason())?;
        st.end()
    }
}

/// The most records kept per DUT, whatever their size; older ones are dropped first. The
/// byte bound (`limits.access_log_bytes_per_dut`) usually comes first.
pub const LOG_CAPACITY: usize = 10_000;

/// Bytes counted per record besides its strings (the fields, the queue slot), so that a log of
/// empty paths is bounded by the byte limit too.
const RECORD_OVERHEAD: usize = 96;

impl AccessRecord {
    /// What the record counts against `limits.access_log_bytes_per_dut`.
    fn cost(&self) -> usize {
        let reason = match &self.outcome {
            Outcome::Refused(r) => r.len(),
            _ => 0,
        };
        RECORD_OVERHEAD + self.protocol.len() + self.path.len() + reason
    }
}

/// `s` cut to at most `max` bytes (at a character boundary), marked with how much was cut:
/// request paths come from anyone and may be 64 KiB long.
pub fn truncate_logged(s: &str, max: usize) -> std::borrow::Cow<'_, str> {
    if s.len() <= max {
        return s.into();
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…[{} more bytes]", &s[..end], s.len() - end).into()
}

/// Where access records are kept. See [`crate::store`] for why it is synchronous.
///
/// Records are appended when a transfer ends or is refused, after the answer: an implementation
/// may buffer and write them later, as long as it gives each its `seq` at once and
/// [`page`](Self::page) returns a DUT's records in `seq` order.
pub trait AccessStore: Send + Sync + 'static {
    /// Appends `rec` to `dut`'s log and returns the `seq` it gave it: one sequence over every
    /// DUT, increasing with each record, never reused.
    fn append(&self, dut: &DutId, rec: AccessRecord) -> Result<u64, StoreError>;
    /// At most `limit` of `dut`'s records with a `seq` above `after`, oldest first.
    fn page(&self, dut: &DutId, after: u64, limit: usize) -> Vec<AccessRecord>;
    /// Forgets `dut`'s log (the DUT was removed).
    fn forget(&self, dut: &DutId);
}

/// One DUT's records and their cost.
#[derive(Default)]
struct DutLog {
    records: VecDeque<AccessRecord>,
    bytes: usize,
}

/// Access records in memory: today's store, at most [`LOG_CAPACITY`] records and
/// `limits.access_log_bytes_per_dut` bytes per DUT, the oldest dropped first.
pub struct MemoryAccess {
    logs: Mutex<BTreeMap<DutId, DutLog>>,
    /// The last `seq` given.
    seq: AtomicU64,
    /// `limits.access_log_bytes_per_dut`.
    bytes_per_dut: usize,
}

impl MemoryAccess {
    /// An empty store bounded by `limits.access_log_bytes_per_dut`.
    pub fn new(limits: &crate::limits::Limits) -> Self {
        MemoryAccess {
            logs: Mutex::default(),
            seq: AtomicU64::new(0),
            bytes_per_dut: usize::try_from(limits.access_log_bytes_per_dut.bytes()).unwrap_or(usize::MAX),
        }
    }
}

impl AccessStore for MemoryAccess {
    fn append(&self, dut: &DutId, mut rec: AccessRecord) -> Result<u64, StoreError> {
        let cost = rec.cost();
        let mut logs = self.logs.lock();
        // Under the lock, so that each DUT's records are in `seq` order.
        rec.seq = self.seq.fetch_add(1, Ordering::Relaxed) + 1;
        let seq = rec.seq;
        let log = logs.entry(dut.clone()).or_default();
        while !log.records.is_empty() && (log.records.len() >= LOG_CAPACITY || log.bytes + cost > self.bytes_per_dut) {
            if let Some(old) = log.records.pop_front() {
                log.bytes -= old.cost();
            }
        }
        log.bytes += cost;
        log.records.push_back(rec);
        Ok(seq)
    }

    fn page(&self, dut: &DutId, after: u64, limit: usize) -> Vec<AccessRecord> {
        let logs = self.logs.lock();
        let Some(l) = logs.get(dut) else { return Vec::new() };
        // Records are in `seq` order: find the first one after `after` by bisection.
        let start = l.records.partition_point(|r| r.seq <= after);
        l.records.range(start..).take(limit).cloned().collect()
    }

    fn forget(&self, dut: &DutId) {
        self.logs.lock().remove(dut);
    }
}

#[derive(Default)]
struct Counters {
    requests: u64,
    bytes: u64,
    refusals: u64,
}

/// A read still in progress (an NBD connection lasts as long as the DUT runs): what
/// [`AccessLog::in_flight`] shows before its [`AccessRecord`] exists. `citron boot-test` times
/// a boot's stages with it (when the firmware first read the disk, how much it read by when).
#[derive(Debug, Clone, PartialEq)]
pub struct InFlight {
    /// The protocol name.
    pub protocol: String,
    /// The path as requested (or the export name for NBD).
    pub path: String,
    /// When it started, as seconds since the Unix epoch.
    pub time: f64,
    /// When its first byte was reported, as seconds since the Unix epoch.
    pub first_byte: Option<f64>,
    /// Bytes so far.
    pub bytes: u64,
}

/// What a ticket and the in-flight view share.
struct Live {
    peer: IpAddr,
    dut: DutId,
    protocol: Protocol,
    path: String,
    time: f64,
    started: Instant,
    bytes: AtomicU64,
    /// `f64::to_bits` of the first byte's time; 0 until then.
    first_byte: AtomicU64,
}

/// Everything counted, under one lock taken once per request.
#[derive(Default)]
struct Counts {
    /// By (protocol, DUT).
    by_dut: BTreeMap<(String, String), Counters>,
    /// Transfers open now (tickets not yet dropped), by protocol.
    active: BTreeMap<&'static str, u64>,
    /// How long requests took, from the request to the last byte (or the refusal), by protocol.
    durations: BTreeMap<&'static str, Timings>,
}

/// Access logs and counters, shared by every backend: bounds what is logged, counts for
/// `/metrics`, and keeps the records in an [`AccessStore`].
pub struct AccessLog {
    store: Box<dyn AccessStore>,
    /// The reads in progress, by ticket number.
    live: Mutex<BTreeMap<u64, Arc<Live>>>,
    next_live: AtomicU64,
    /// `limits.logged_path_max`.
    path_max: usize,
    counters: Mutex<Counts>,
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

impl Default for AccessLog {
    fn default() -> Self {
        Self::new(&crate::limits::Limits::default())
    }
}

fn now_secs() -> f64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs_f64()).unwrap_or(0.0)
}

impl AccessLog {
    /// An empty log in memory bounded by `limits` (`access_log_bytes_per_dut`, `logged_path_max`).
    pub fn new(limits: &crate::limits::Limits) -> Self {
        Self::with_store(limits, Box::new(MemoryAccess::new(limits)))
    }

    /// A log keeping its records in `store`, paths cut to `limits.logged_path_max`.
    pub fn with_store(limits: &crate::limits::Limits, store: Box<dyn AccessStore>) -> Self {
        AccessLog {
            store,
            live: Mutex::default(),
            next_live: AtomicU64::new(0),
            counters: Mutex::default(),
            path_max: limits.logged_path_max,
            cache_hits: AtomicU64::new(0),
            cache_misses: AtomicU64::new(0),
        }
    }

    /// Ends one request of `peer` (the DUT `dut`, `None` for a peer that is no DUT, counted
    /// under `unknown`) that took `elapsed`: counts it, writes its access line and appends its
    /// record to the DUT's log. Its path and refusal reason are cut to `limits.logged_path_max`
    /// bytes and the store gives it its `seq`. `ticket`: it ends a transfer counted as active.
    fn finish(&self, peer: IpAddr, dut: Option<&DutId>, protocol: Protocol, mut rec: AccessRecord, elapsed: Duration, ticket: bool) {
        let key = (rec.protocol.clone(), dut.map(|d| d.0.clone()).unwrap_or_else(|| "unknown".into()));
        {
            let mut counts = self.counters.lock();
            let c = counts.by_dut.entry(key).or_default();
            c.requests += 1;
            c.bytes += rec.bytes;
            if matches!(rec.outcome, Outcome::Refused(_)) {
                c.refusals += 1;
            }
            counts.durations.entry(protocol.0).or_default().observe(elapsed);
            if ticket {
                if let Some(n) = counts.active.get_mut(protocol.0) {
                    *n = n.saturating_sub(1);
                }
            }
        }
        if let std::borrow::Cow::Owned(p) = truncate_logged(&rec.path, self.path_max) {
            rec.path = p;
        }
        if let Outcome::Refused(why) = &mut rec.outcome {
            if let std::borrow::Cow::Owned(w) = truncate_logged(why, self.path_max) {
                *why = w;
            }
        }
        // Strings as `&str` (not `%`/`?`): the JSON format writes them as JSON strings, the text
        // format quotes them, so a path with spaces or quotes stays one field.
        tracing::info!(
            target: ACCESS_TARGET,
            %peer,
            dut = dut.map(|d| d.0.as_str()),
            protocol = protocol.0,
            path = rec.path.as_str(),
            outcome = rec.outcome.kind(),
            reason = rec.outcome.reason(),
            bytes = rec.bytes,
            duration_ms = elapsed.as_secs_f64() * 1e3,
            "access"
        );
        let Some(dut) = dut else { return };
        if let Err(e) = self.store.append(dut, rec) {
            tracing::error!(%dut, error = %e, "an access record could not be stored");
        }
    }

    /// Records a refusal of a request of `peer` (the DUT `dut`, if it is one) made before any
    /// byte.
    pub fn refuse(&self, peer: IpAddr, dut: Option<&DutId>, protocol: Protocol, path: &str, why: impl ToString) {
        let rec = AccessRecord {
            seq: 0,
            time: now_secs(),
            protocol: protocol.0.to_string(),
            path: path.to_string(),
            bytes: 0,
            outcome: Outcome::Refused(why.to_string()),
        };
        self.finish(peer, dut, protocol, rec, Duration::ZERO, false);
    }

    /// A copy of `dut`'s log, oldest first.
    pub fn entries(&self, dut: &DutId) -> Vec<AccessRecord> {
        self.store.page(dut, 0, usize::MAX)
    }

    /// At most `limit` of `dut`'s records with a `seq` above `after`, oldest first: one page of
    /// `GET /api/v1/duts/{id}/accesses?after=SEQ&limit=N`.
    pub fn page(&self, dut: &DutId, after: u64, limit: usize) -> Vec<AccessRecord> {
        self.store.page(dut, after, limit)
    }

    /// Forgets `dut`'s log (when the DUT is removed).
    pub fn forget(&self, dut: &DutId) {
        self.store.forget(dut);
    }

    /// The request counters, by protocol and DUT (sorted): what `/metrics` exports. The core
    /// only counts; the lab crate registers these with its Prometheus registry.
    pub fn request_counts(&self) -> Vec<RequestCounts> {
        self.counters
            .lock()
            .by_dut
            .iter()
            .map(|((protocol, dut), c)| RequestCounts {
                protocol: protocol.clone(),
                dut: dut.clone(),
                requests: c.requests,
                bytes: c.bytes,
                refusals: c.refusals,
            })
            .collect()
    }

    /// Transfers open now (read or NBD connection started, not yet ended), by protocol.
    pub fn active_transfers(&self) -> Vec<(&'static str, u64)> {
        self.counters.lock().active.iter().map(|(p, n)| (*p, *n)).collect()
    }

    /// How long requests took (the request to the last byte, or to the refusal), by protocol.
    pub fn durations(&self) -> Vec<(&'static str, TimingSnapshot)> {
        self.counters.lock().durations.iter().map(|(p, t)| (*p, t.snapshot())).collect()
    }
}

/// The counters of one protocol and DUT since start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestCounts {
    /// The protocol name.
    pub protocol: String,
    /// The DUT id, or `unknown` for a peer that is no DUT.
    pub dut: String,
    /// Requests, whatever their outcome.
    pub requests: u64,
    /// Bytes delivered.
    pub bytes: u64,
    /// Requests refused.
    pub refusals: u64,
}

impl AccessLog {
    /// The ticket of a read (or NBD connection) of `path` by `dut`, from `peer`, that starts
    /// now: one [`AccessRecord`] and one access line when the backend drops it, and in
    /// [`in_flight`](Self::in_flight) until then.
    pub fn ticket(self: &Arc<Self>, peer: IpAddr, dut: DutId, protocol: Protocol, path: &str) -> AccessTicket {
        *self.counters.lock().active.entry(protocol.0).or_default() += 1;
        let live = Arc::new(Live {
            peer,
            dut,
            protocol,
            path: path.to_string(),
            time: now_secs(),
            started: Instant::now(),
            bytes: AtomicU64::new(0),
            first_byte: AtomicU64::new(0),
        });
        let id = self.next_live.fetch_add(1, Ordering::Relaxed);
        self.live.lock().insert(id, live.clone());
        AccessTicket::new(LogTicket { log: self.clone(), id, live, done: AtomicBool::new(false) })
    }

    /// `dut`'s reads still in progress (NBD connections above all), oldest first.
    pub fn in_flight(&self, dut: &DutId) -> Vec<InFlight> {
        self.live
            .lock()
            .values()
            .filter(|l| &l.dut == dut)
            .map(|l| {
                let first = l.first_byte.load(Ordering::Relaxed);
                InFlight {
                    protocol: l.protocol.0.to_string(),
                    path: l.path.clone(),
                    time: l.time,
                    first_byte: (first != 0).then(|| f64::from_bits(first)),
                    bytes: l.bytes.load(Ordering::Relaxed),
                }
            })
            .collect()
    }
}

/// An open read: becomes one [`AccessRecord`] when dropped.
struct LogTicket {
    log: Arc<AccessLog>,
    id: u64,
    live: Arc<Live>,
    done: AtomicBool,
}

impl AccessReport for LogTicket {
    fn add_bytes(&self, n: u64) {
        if n > 0 && self.live.first_byte.load(Ordering::Relaxed) == 0 {
            let _ = self.live.first_byte.compare_exchange(0, now_secs().to_bits(), Ordering::Relaxed, Ordering::Relaxed);
        }
        self.live.bytes.fetch_add(n, Ordering::Relaxed);
    }
    fn complete(&self) {
        self.done.store(true, Ordering::Relaxed);
    }
}

impl Drop for LogTicket {
    fn drop(&mut self) {
        self.log.live.lock().remove(&self.id);
        let outcome = if self.done.load(Ordering::Relaxed) { Outcome::Served } else { Outcome::Aborted };
        let rec = AccessRecord {
            seq: 0,
            time: self.live.time,
            protocol: self.live.protocol.0.to_string(),
            path: self.live.path.clone(),
            bytes: self.live.bytes.load(Ordering::Relaxed),
            outcome,
        };
        let live = &self.live;
        self.log.finish(live.peer, Some(&live.dut), live.protocol, rec, live.started.elapsed(), true);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PEER: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(127, 0, 0, 2));

    #[test]
    fn open_tickets_are_in_flight_until_dropped() {
        let log = Arc::new(AccessLog::default());
        let (d, other) = (DutId::from("d"), DutId::from("o"));
        let t = log.ticket(PEER, d.clone(), Protocol::NBD, "disk");
        let _o = log.ticket(PEER, other.clone(), Protocol::NBD, "disk");
        let f = log.in_flight(&d);
        assert_eq!((f.len(), f[0].bytes, f[0].first_byte), (1, 0, None), "{f:?}");
        t.add_bytes(0);
        assert_eq!(log.in_flight(&d)[0].first_byte, None, "no byte yet");
        t.add_bytes(512);
        let first = log.in_flight(&d)[0].first_byte.expect("the first byte is timed");
        assert!(first >= f[0].time, "{first} before {}", f[0].time);
        t.add_bytes(512);
        let f = log.in_flight(&d);
        assert_eq!((f[0].bytes, f[0].first_byte), (1024, Some(first)), "the first byte's time stays");
        drop(t);
        assert!(log.in_flight(&d).is_empty());
        assert_eq!(log.in_flight(&other).len(), 1);
        assert_eq!(log.entries(&d)[0].bytes, 1024);
    }

    #[test]
    fn ticket_logs_once_with_outcome() {
        let log = Arc::new(AccessLog::default());
        let d = DutId::from("d");
        {
            let t = log.ticket(PEER, d.clone(), Protocol::HTTP, "a");
            assert_eq!(log.active_transfers(), [("http", 1)]);
            t.add_bytes(5);
            t.complete();
        }
        assert_eq!(log.active_transfers(), [("http", 0)]);
        drop(log.ticket(PEER, d.clone(), Protocol::TFTP, "b"));
        log.refuse(PEER, Some(&d), Protocol::HTTP, "c", "nope");
        log.refuse(PEER, Some(&d), Protocol::HTTP, "d", "range not satisfiable");
        let e = log.entries(&d);
        assert_eq!(e.len(), 4, "{e:?}");
        assert_eq!(e[3].outcome, Outcome::Refused("range not satisfiable".into()));
        assert_eq!((e[0].bytes, &e[0].outcome), (5, &Outcome::Served));
        assert_eq!(e[1].outcome, Outcome::Aborted);
        assert_eq!(e[2].outcome, Outcome::Refused("nope".into()));
        let c = log.request_counts();
        assert_eq!(
            c,
            [
                RequestCounts { protocol: "http".into(), dut: "d".into(), requests: 3, bytes: 5, refusals: 2 },
                RequestCounts { protocol: "tftp".into(), dut: "d".into(), requests: 1, bytes: 0, refusals: 0 }
            ]
        );
        let counts: Vec<(&str, u64)> = log.durations().into_iter().map(|(p, t)| (p, t.count)).collect();
        assert_eq!(counts, [("http", 3), ("tftp", 1)]);
    }

    #[test]
    fn paths_are_cut_and_the_log_is_bounded_in_bytes() {
        let limits =
            crate::limits::Limits { access_log_bytes_per_dut: crate::limits::Size(64 << 10), logged_path_max: 100, ..Default::default() };
        let log = AccessLog::new(&limits);
        let d = DutId::from("d");
        let long = "/é".repeat(30_000);
        for _ in 0..1000 {
            log.refuse(PEER, Some(&d), Protocol::HTTP, &long, format!("no such file: {long}"));
        }
        let e = log.entries(&d);
        assert!(e[0].path.len() < 140 && e[0].path.ends_with("more bytes]"), "{}", e[0].path);
        let Outcome::Refused(why) = &e[0].outcome else { panic!() };
        assert!(why.len() < 140, "{why}");
        let bytes: usize = e.iter().map(AccessRecord::cost).sum();
        assert!(bytes <= 64 << 10 && e.len() > 100, "{bytes} bytes in {} records", e.len());
        // The newest stay, the oldest went.
        assert_eq!(e.last().unwrap().seq, 1000);
        assert!(e[0].seq > 1);
    }

    #[test]
    fn pages_walk_every_record_once() {
        let log = AccessLog::default();
        let (a, b) = (DutId::from("a"), DutId::from("b"));
        for i in 0..250 {
            log.refuse(PEER, Some(if i % 3 == 0 { &a } else { &b }), Protocol::HTTP, &format!("/{i}"), "x");
        }
        let mut after = 0;
        let mut seen = Vec::new();
        loop {
            let p = log.page(&b, after, 7);
            let Some(last) = p.last() else { break };
            after = last.seq;
            seen.extend(p.into_iter().map(|r| r.path));
        }
        let want: Vec<String> = (0..250).filter(|i| i % 3 != 0).map(|i| format!("/{i}")).collect();
        assert_eq!(seen, want);
        assert!(log.page(&a, u64::MAX, 10).is_empty());
    }
}
