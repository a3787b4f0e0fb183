//! Progress bars for downloads and disk preparation (a tarball or container image unpacked into
//! a filesystem) when stderr is a terminal.
//!
//! The core reports their progress (`citron_core::artifact::Progress`) as `tracing` events with target
//! [`PROGRESS_TARGET`]: `trace` ticks a few times a second, and an `info` line every few
//! seconds. Off a terminal (a service, a CI log) the `info` lines are what the log keeps; on a
//! terminal this layer draws one bar per download from the ticks, and the log drops the
//! `info` lines, which would only repeat the bar.

use std::collections::HashMap;

use citron_core::artifact::PROGRESS_TARGET;
use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use parking_lot::Mutex;
use tracing::field::{Field, Visit};
use tracing::{Event, Subscriber};
use tracing_subscriber::layer::Context;
use tracing_subscriber::Layer;

/// Draws a bar per download or disk being unpacked on stderr.
pub struct Bars {
    multi: MultiProgress,
    bars: Mutex<HashMap<String, ProgressBar>>,
}

impl Bars {
    /// Bars drawn on stderr.
    pub fn new() -> Self {
        Bars { multi: MultiProgress::with_draw_target(ProgressDrawTarget::stderr()), bars: Mutex::default() }
    }
}

/// The fields of one progress tick.
#[derive(Default)]
struct Tick {
    source: String,
    bytes: u64,
    total: u64,
    done: bool,
}

impl Visit for Tick {
    fn record_str(&mut self, f: &Field, v: &str) {
        if f.name() == "source" {
            self.source = v.to_string();
        }
    }
    fn record_u64(&mut self, f: &Field, v: u64) {
        match f.name() {
            "bytes" => self.bytes = v,
            "total" => self.total = v,
            _ => {}
        }
    }
    fn record_bool(&mut self, f: &Field, v: bool) {
        if f.name() == "done" {
            self.done = v;
        }
    }
    fn record_debug(&mut self, _: &Field, _: &dyn std::fmt::Debug) {}
}

impl<S: Subscriber> Layer<S> for Bars {
    fn on_event(&self, event: &Event<'_>, _: Context<'_, S>) {
        let meta = event.metadata();
        if meta.target() != PROGRESS_TARGET || *meta.level() != tracing::Level::TRACE {
            return;
        }
        let mut t = Tick::default();
        event.record(&mut t);
        let mut bars = self.bars.lock();
        if t.done {
            if let Some(b) = bars.remove(&t.source) {
                b.finish_and_clear();
                self.multi.remove(&b);
            }
            return;
        }
        let bar = bars.entry(t.source.clone()).or_insert_with(|| {
            let b = self.multi.add(ProgressBar::no_length());
            let style = ProgressStyle::with_template("{msg} {wide_bar} {binary_bytes}/{binary_total_bytes} {binary_bytes_per_sec} {eta}")
                .unwrap_or_else(|_| ProgressStyle::default_bar());
            b.set_style(style);
            b.set_message(t.source.clone());
            b
        });
        if t.total > 0 {
            bar.set_length(t.total);
        }
        bar.set_position(t.bytes);
    }
}
