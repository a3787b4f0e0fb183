//! How a long piece of work on bytes (a download, a disk being built) tells how far it is:
//! `tracing` events with target [`PROGRESS_TARGET`], `info` lines for a log and `trace` ticks for
//! a terminal's progress bar (`citron` draws one per piece of work from the ticks).

use std::time::{Duration, Instant};

/// How often a long piece of work reports its progress in a log line.
pub const PROGRESS_INTERVAL: Duration = Duration::from_secs(5);

/// How often a piece of work tells a progress bar how far it is (a `trace` event).
pub const PROGRESS_TICK: Duration = Duration::from_millis(200);

/// The `tracing` target of progress events: `info` lines every [`PROGRESS_INTERVAL`] (what a
/// log keeps), `trace` ticks every [`PROGRESS_TICK`] with `source`, `bytes`, `total` (0:
/// unknown) and a last one with `done = true` (what a terminal's progress bar follows: `citron`
/// shows one when stderr is a terminal, and drops the `info` lines then).
pub const PROGRESS_TARGET: &str = "citron::progress";

/// The progress of one piece of work, reported as it advances; its bar ends when it is dropped.
///
/// ```
/// use citron_core::artifact::Progress;
/// let mut p = Progress::new("disk rootfs: unpacking rootfs.tar.gz", "unpacking", Some(10));
/// p.advance(4);
/// p.advance(6);
/// assert_eq!(p.done(), 10);
/// p.finish("unpacked");
/// ```
#[derive(Debug)]
pub struct Progress {
    name: String,
    /// The line's message while the work goes on (`downloading`, `unpacking`).
    doing: &'static str,
    done: u64,
    total: Option<u64>,
    interval: Duration,
    started: Instant,
    last_report: Instant,
    last_tick: Instant,
}

impl Progress {
    /// The work on `name` (shown in lines and bars), of `total` bytes if known.
    pub fn new(name: impl Into<String>, doing: &'static str, total: Option<u64>) -> Progress {
        let now = Instant::now();
        Progress { name: name.into(), doing, done: 0, total, interval: PROGRESS_INTERVAL, started: now, last_report: now, last_tick: now }
    }

    /// Logs a line every `interval` instead of every [`PROGRESS_INTERVAL`].
    pub fn with_interval(mut self, interval: Duration) -> Progress {
        self.interval = interval;
        self
    }

    /// The total, once known.
    pub fn set_total(&mut self, total: Option<u64>) {
        self.total = total;
    }

    /// The total, if known.
    pub fn total(&self) -> Option<u64> {
        self.total
    }

    /// Bytes done so far.
    pub fn done(&self) -> u64 {
        self.done
    }

    /// `n` more bytes done: a tick and a line when they are due.
    pub fn advance(&mut self, n: u64) {
        self.done += n;
        let now = Instant::now();
        if now.duration_since(self.last_tick) >= PROGRESS_TICK {
            self.last_tick = now;
            tracing::trace!(target: PROGRESS_TARGET, source = self.name.as_str(), bytes = self.done, total = self.total.unwrap_or(0), "{}", self.doing);
        }
        if now.duration_since(self.last_report) >= self.interval {
            self.last_report = now;
            self.report(self.doing);
        }
    }

    /// The work is done: a last line (`done`, like `downloaded`) if it took long enough to
    /// have had one.
    pub fn finish(&self, done: &str) {
        if self.started.elapsed() >= self.interval {
            self.report(done);
        }
    }

    fn report(&self, what: &str) {
        let secs = self.started.elapsed().as_secs_f64();
        let mib_s = self.done as f64 / (1 << 20) as f64 / secs.max(0.001);
        match self.total {
            Some(t) => tracing::info!(
                target: PROGRESS_TARGET,
                source = %self.name,
                bytes = self.done,
                total = t,
                percent = format_args!("{:.0}", self.done as f64 * 100.0 / t.max(1) as f64),
                mib_per_s = format_args!("{mib_s:.1}"),
                "{what}"
            ),
            None => {
                tracing::info!(target: PROGRESS_TARGET, source = %self.name, bytes = self.done, mib_per_s = format_args!("{mib_s:.1}"), "{what}")
            }
        }
    }
}

impl Drop for Progress {
    /// The progress bar ends (finished or not).
    fn drop(&mut self) {
        if self.last_tick != self.started {
            tracing::trace!(target: PROGRESS_TARGET, source = self.name.as_str(), bytes = self.done, total = self.total.unwrap_or(0), done = true, "{}", self.doing);
        }
    }
}

/// A reader that reports how much of it was read (a disk's tarball or layer as it is unpacked),
/// and says `finished` (`unpacked`) at its end.
#[derive(Debug)]
pub struct ProgressReader<R> {
    inner: R,
    progress: Progress,
    finished: Option<&'static str>,
}

impl<R> ProgressReader<R> {
    /// `inner`, its reads counted in `progress`; `finished` is the last line's message.
    pub fn new(inner: R, progress: Progress, finished: &'static str) -> ProgressReader<R> {
        ProgressReader { inner, progress, finished: Some(finished) }
    }
}

impl<R: std::io::Read> std::io::Read for ProgressReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.progress.advance(n as u64);
        if n == 0 && !buf.is_empty() {
            if let Some(done) = self.finished.take() {
                self.progress.finish(done);
            }
        }
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use parking_lot::Mutex;

    use super::*;

    /// Chunks of 100 bytes, each after a pause.
    struct Slow(usize);
    impl std::io::Read for Slow {
        fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
            if self.0 == 0 {
                return Ok(0);
            }
            self.0 -= 1;
            std::thread::sleep(PROGRESS_TICK + Duration::from_millis(10));
            let n = buf.len().min(100);
            buf[..n].fill(7);
            Ok(n)
        }
    }

    #[test]
    fn a_slow_reader_ticks_logs_and_ends_its_bar() {
        #[derive(Clone, Default)]
        struct Captured(Arc<Mutex<Vec<u8>>>);
        impl std::io::Write for Captured {
            fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
                self.0.lock().extend_from_slice(b);
                Ok(b.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let captured = Captured::default();
        let c = captured.clone();
        let subscriber =
            tracing_subscriber::fmt().with_ansi(false).with_max_level(tracing::Level::TRACE).with_writer(move || c.clone()).finish();
        let _guard = tracing::subscriber::set_default(subscriber);
        let p = Progress::new("unpacking rootfs.tar", "unpacking", Some(200)).with_interval(Duration::from_millis(10));
        let mut r = ProgressReader::new(Slow(2), p, "unpacked");
        assert_eq!(std::io::copy(&mut r, &mut std::io::sink()).unwrap(), 200);
        drop(r);
        let log = String::from_utf8(captured.0.lock().clone()).unwrap();
        let lines: Vec<&str> = log.lines().collect();
        // A tick for the bar, a line for the log, the last line, the bar's end.
        assert!(lines.iter().any(|l| l.contains("TRACE") && l.contains("bytes=100") && l.contains("total=200")), "{log}");
        assert!(lines.iter().any(|l| l.contains("INFO") && l.contains("unpacking") && l.contains("percent=50")), "{log}");
        assert!(lines.iter().any(|l| l.contains("INFO") && l.contains("unpacked") && l.contains("bytes=200")), "{log}");
        assert!(lines.last().is_some_and(|l| l.contains("done=true")), "{log}");
    }
}
