//! Where log lines go and how they look: `--log-format text|json`, colour only on a terminal,
//! written by a thread of their own.
//!
//! Every request writes an access line (`citron_core::access`), so writing must cost the
//! serving threads little: lines go through `tracing_appender::non_blocking` to a writer
//! thread, which writes whatever has queued up in one `write(2)` (a `BufWriter` flushed when the
//! queue is empty). Under a flood the queue is bounded and lines beyond it are dropped, never the
//! requests held up.

use std::io::{BufWriter, IsTerminal as _};

use clap::ValueEnum;
use tracing_appender::non_blocking::WorkerGuard;
use tracing_subscriber::EnvFilter;

/// How log lines are written (`--log-format`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// One human-readable line per event, `key=value` fields (strings quoted); colours only when
    /// stderr is a terminal.
    Text,
    /// One JSON object per line: `timestamp`, `level`, `target`, `message` and every field at
    /// the top level (an access line: `peer`, `dut`, `protocol`, `path`, `outcome`, `reason`,
    /// `bytes`, `duration_ms`).
    Json,
}

/// Installs the global subscriber: `RUST_LOG` sets the filter (default `info`). On a terminal,
/// downloads show progress bars ([`crate::progress`]) instead of progress lines. Keep the guard
/// until the end of `main`: dropping it writes what is still queued.
pub fn init(format: LogFormat) -> WorkerGuard {
    use tracing_subscriber::layer::SubscriberExt as _;
    use tracing_subscriber::util::SubscriberInitExt as _;
    use tracing_subscriber::Layer as _;
    let (writer, guard) = tracing_appender::non_blocking(BufWriter::new(std::io::stderr()));
    let terminal = std::io::stderr().is_terminal();
    let mut filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    if terminal {
        // The bars say it.
        filter = filter.add_directive(format!("{}=off", citron_core::artifact::PROGRESS_TARGET).parse().expect("a valid directive"));
    }
    let ansi = terminal && std::env::var_os("NO_COLOR").is_none();
    let fmt = tracing_subscriber::fmt::layer().with_writer(writer);
    let fmt = match format {
        LogFormat::Text => fmt.with_ansi(ansi).with_filter(filter).boxed(),
        LogFormat::Json => fmt.json().flatten_event(true).with_ansi(false).with_filter(filter).boxed(),
    };
    // Only the progress ticks reach the bars (no other `trace` event is enabled by them).
    let ticks = tracing_subscriber::filter::Targets::new().with_target(citron_core::artifact::PROGRESS_TARGET, tracing::Level::TRACE);
    let bars = terminal.then(|| crate::progress::Bars::new().with_filter(ticks));
    tracing_subscriber::registry().with(fmt).with(bars).init();
    guard
}
