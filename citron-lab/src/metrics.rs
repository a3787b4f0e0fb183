//! `/metrics`: the lab's one Prometheus registry.
//!
//! The core only counts (the access log's [`request_counts`](AccessLog::request_counts), its
//! cache hit and miss counters, the cache's [`stats`](citron_core::artifact::Cache::stats)); it
//! knows nothing of Prometheus. The lab owns a [`Registry`] and registers, for each thing that
//! counts, either a metric it updates itself or a [`Collector`] that reads its counters at each
//! scrape. Every name starts with `citron_`; a counter's samples get `_total` from the encoder.
//!
//! # How a feature registers its metrics
//! Add one line to [`Metrics::new`] (the one place a lab's metrics are listed):
//!
//! - a feature that owns its counters registers them once and updates them itself:
//!   `registry.register("citron_results_uploaded", "Results uploaded.", feature.uploaded.clone())`
//!   with a [`Counter`](prometheus_client::metrics::counter::Counter) (or `Family`, `Gauge`...)
//!   kept in the feature;
//! - a feature whose counters live in the core (or anywhere without a registry) exposes a
//!   snapshot there and registers a [`Collector`] here that turns the snapshot into samples,
//!   as [`AccessCollector`] does for the access log.
//!
//! ```
//! use citron_core::{Gateway, lab::LabConfig};
//! let dir = tempfile::tempdir().unwrap();
//! let gw = Gateway::new(LabConfig::default_lab(), dir.path()).unwrap();
//! let text = citron_lab::metrics::Metrics::new(&gw).encode();
//! assert!(text.contains("# TYPE citron_cache_hits counter\n"));
//! assert!(text.contains("citron_cache_hits_total 0\n"));
//! assert!(text.ends_with("# EOF\n"));
//! ```

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use citron_core::access::AccessLog;
use citron_core::artifact::Cache;
use citron_core::Gateway;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::{ConstGauge, Gauge};
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;

/// What `/metrics` answers with: the OpenMetrics text format.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// A lab's metrics: every collector of the lab, in one registry.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    /// `citron_api_request_duration_seconds`, observed by the API for each request.
    api_durations: Histogram,
}

impl Metrics {
    /// The registry of a lab running `gateway`: the access log's request, byte and refusal
    /// counters by protocol and DUT, transfer durations and active transfers, the artifact
    /// cache's counters and sizes, loaded jobs and their load times, open connections, API
    /// request durations and `citron_build_info`.
    pub fn new(gateway: &Gateway) -> Self {
        let mut registry = Registry::default();
        registry.register_collector(Box::new(AccessCollector { log: gateway.access_log().clone() }));
        registry.register_collector(Box::new(CacheCollector { gateway: gateway.clone() }));
        registry.register_collector(Box::new(LabCollector { gateway: gateway.clone() }));
        let api_durations = Histogram::new(citron_core::timing::BUCKETS);
        registry.register(
            "citron_api_request_duration_seconds",
            "Time the lab API took to answer a request, from its head to its answer",
            api_durations.clone(),
        );
        let info: Family<Vec<(&'static str, &'static str)>, Gauge> = Family::default();
        info.get_or_create(&vec![("version", env!("CARGO_PKG_VERSION"))]).set(1);
        registry.register("citron_build_info", "The running citron's version (always 1)", info);
        Metrics { registry, api_durations }
    }

    /// Counts one API request that took `d`.
    pub fn observe_api_request(&self, d: Duration) {
        self.api_durations.observe(d.as_secs_f64());
    }

    /// The registry, for a feature to register its metrics in (see the module docs).
    pub fn registry_mut(&mut self) -> &mut Registry {
        &mut self.registry
    }

    /// Every metric in the OpenMetrics text format ([`CONTENT_TYPE`]), ending with `# EOF`.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing to a String cannot fail; a collector that fails leaves what it wrote.
        if let Err(e) = prometheus_client::encoding::text::encode(&mut out, &self.registry) {
            tracing::warn!(error = %e, "metrics: encoding failed");
        }
        out
    }
}

/// `citron_state_schema_version{engine="sqlite"}`: the schema version of the lab's state store.
pub fn register_state(metrics: &mut Metrics, state: crate::state::StateInfo) {
    let g: Family<Vec<(&'static str, &'static str)>, Gauge> = Family::default();
    g.get_or_create(&vec![("engine", state.engine)]).set(state.schema_version);
    metrics.registry_mut().register("citron_state_schema_version", "The schema version of the lab's state store", g);
}

/// The access log's counters, read at each scrape: `citron_requests_total`,
/// `citron_bytes_total` and `citron_refusals_total` labelled by `protocol` and `dut`, and
/// `citron_cache_hits_total` / `citron_cache_misses_total` (artifacts found in the cache or
/// fetched when a job was loaded).
#[derive(Debug)]
pub struct AccessCollector {
    log: Arc<AccessLog>,
}

impl Collector for AccessCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let counts = self.log.request_counts();
        type Get = fn(&citron_core::access::RequestCounts) -> u64;
        let families: [(&str, &str, Get); 3] = [
            ("citron_requests", "Requests by protocol and DUT (`unknown`: a peer that is no DUT).", |c| c.requests),
            ("citron_bytes", "Bytes delivered by protocol and DUT.", |c| c.bytes),
            ("citron_refusals", "Refused requests by protocol and DUT.", |c| c.refusals),
        ];
        for (name, help, get) in families {
            let mut family = encoder.encode_descriptor(name, help, None, prometheus_client::metrics::MetricType::Counter)?;
            for c in &counts {
                let labels = [("protocol", c.protocol.as_str()), ("dut", c.dut.as_str())];
                ConstCounter::new(get(c)).encode(family.encode_family(&labels)?)?;
            }
        }
        for (name, help, v) in [
            ("citron_cache_hits", "Artifacts found in the cache when a job was loaded.", &self.log.cache_hits),
            ("citron_cache_misses", "Artifacts that had to be fetched when a job was loaded.", &self.log.cache_misses),
        ] {
            let c = ConstCounter::new(v.load(Ordering::Relaxed));
            c.encode(encoder.encode_descriptor(name, help, None, c.metric_type())?)?;
        }
        let mut active = encoder.encode_descriptor(
            "citron_active_transfers",
            "Transfers running now (file reads in flight, open NBD exports), by protocol.",
            None,
            MetricType::Gauge,
        )?;
        for (protocol, n) in self.log.active_transfers() {
            ConstGauge::new(i64::try_from(n).unwrap_or(i64::MAX)).encode(active.encode_family(&[("protocol", protocol)])?)?;
        }
        let mut durations = encoder.encode_descriptor(
            "citron_transfer_duration_seconds",
            "Time from a DUT's request to its last byte (or to the refusal), by protocol.",
            None,
            MetricType::Histogram,
        )?;
        for (protocol, t) in self.log.durations() {
            encode_timings(durations.encode_family(&[("protocol", protocol)])?, &t)?;
        }
        Ok(())
    }
}

/// A core [`TimingSnapshot`](citron_core::timing::TimingSnapshot) (cumulative) as a Prometheus
/// histogram (the encoder takes per-bucket counts and a `+Inf` bucket).
fn encode_timings(
    mut m: prometheus_client::encoding::MetricEncoder<'_>,
    t: &citron_core::timing::TimingSnapshot,
) -> Result<(), std::fmt::Error> {
    let mut below = 0;
    let mut buckets: Vec<(f64, u64)> = t
        .buckets
        .iter()
        .map(|&(le, cumulative)| {
            let n = cumulative - below;
            below = cumulative;
            (le, n)
        })
        .collect();
    buckets.push((f64::INFINITY, t.count - below));
    m.encode_histogram::<prometheus_client::encoding::NoLabelSet>(t.sum, t.count, &buckets, None)
}

/// What the lab is doing, read at each scrape: `citron_loaded_jobs`,
/// `citron_job_load_duration_seconds` and `citron_open_connections{listener}`.
#[derive(Debug)]
struct LabCollector {
    gateway: Gateway,
}

impl Collector for LabCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let g = ConstGauge::new(i64::try_from(self.gateway.loaded_jobs()).unwrap_or(i64::MAX));
        g.encode(encoder.encode_descriptor("citron_loaded_jobs", "DUTs with a job serving.", None, g.metric_type())?)?;
        let m = encoder.encode_descriptor(
            "citron_job_load_duration_seconds",
            "Time loading a job took: rendering, fetching its artifacts, preparing its disks.",
            None,
            MetricType::Histogram,
        )?;
        encode_timings(m, &self.gateway.job_load_times())?;
        let mut conns = encoder.encode_descriptor(
            "citron_open_connections",
            "TCP connections open now, by listener (http, nbd, api), over every server of the process.",
            None,
            MetricType::Gauge,
        )?;
        for (listener, n) in citron_protocols::listen::open_connections() {
            ConstGauge::new(i64::try_from(n).unwrap_or(i64::MAX)).encode(conns.encode_family(&[("listener", listener)])?)?;
        }
        Ok(())
    }
}

/// The artifact cache's size, read at each scrape: `citron_cache_entries`,
/// `citron_cache_bytes` and `citron_cache_pinned_bytes` (gauges).
#[derive(Debug)]
struct CacheCollector {
    gateway: Gateway,
}

impl Collector for CacheCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let cache: &Cache = self.gateway.cache();
        let s = cache.stats();
        for (name, help, v) in [
            ("citron_cache_entries", "Artifacts in the cache.", s.entries as i64),
            ("citron_cache_bytes", "Bytes of the artifacts in the cache.", i64::try_from(s.bytes).unwrap_or(i64::MAX)),
            (
                "citron_cache_pinned_bytes",
                "Bytes of cached artifacts held by loaded jobs.",
                i64::try_from(s.pinned_bytes).unwrap_or(i64::MAX),
            ),
        ] {
            let g = ConstGauge::new(v);
            g.encode(encoder.encode_descriptor(name, help, None, g.metric_type())?)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use citron_core::namespace::DutId;
    use citron_core::serve::Protocol;

    #[test]
    fn counters_keep_their_names_and_labels() {
        let dir = tempfile::tempdir().unwrap();
        let gw = Gateway::new(citron_core::lab::LabConfig::default_lab(), dir.path()).unwrap();
        let log = gw.access_log();
        log.refuse([127, 0, 0, 9].into(), None, Protocol::HTTP, "/x", "unknown DUT");
        log.refuse([127, 0, 0, 2].into(), Some(&DutId::from("dut1")), Protocol::TFTP, "/y", "nope");
        log.cache_misses.fetch_add(2, Ordering::Relaxed);
        let m = Metrics::new(&gw).encode();
        for want in [
            "# HELP citron_requests Requests by protocol and DUT",
            "# TYPE citron_requests counter\n",
            "citron_requests_total{protocol=\"http\",dut=\"unknown\"} 1\n",
            "citron_refusals_total{protocol=\"tftp\",dut=\"dut1\"} 1\n",
            "citron_bytes_total{protocol=\"tftp\",dut=\"dut1\"} 0\n",
            "# HELP citron_cache_misses Artifacts that had to be fetched",
            "citron_cache_misses_total 2\n",
            "citron_cache_hits_total 0\n",
            "# TYPE citron_cache_entries gauge\ncitron_cache_entries 0\n",
            "# TYPE citron_transfer_duration_seconds histogram\n",
            "citron_transfer_duration_seconds_count{protocol=\"http\"} 1\n",
            "citron_transfer_duration_seconds_bucket{le=\"+Inf\",protocol=\"tftp\"} 1\n",
            "# HELP citron_loaded_jobs DUTs with a job serving.\n",
            "citron_loaded_jobs 0\n",
            "citron_job_load_duration_seconds_count 0\n",
            "citron_build_info{version=\"",
            "# HELP citron_api_request_duration_seconds ",
        ] {
            assert!(m.contains(want), "{want:?} missing from:\n{m}");
        }
        assert!(m.ends_with("# EOF\n"), "{m}");
        // Every metric says what it is.
        for line in m.lines().filter(|l| l.starts_with("# TYPE ")) {
            let name = line.split(' ').nth(2).unwrap();
            assert!(m.contains(&format!("# HELP {name} ")), "{name} has no HELP:\n{m}");
        }
    }
}
