//! The serial console: split into clean lines, copied to stdout and the DUT's log, and fed to
//! the [`Watch`] of the boot until a verdict. [`LineSplitter`] does no I/O and is unit-tested.

use std::io::{self, Write as _};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use tokio::sync::{mpsc, oneshot};

use super::plan::Target;
use super::watch::{Failure, Seen, Watch};
use super::BootTestError;

/// How long a guest may take to power off by itself once the pattern was seen (job boots; a
/// booted image is stopped at once, as a real system would not power off).
pub(super) const POWEROFF_GRACE: Duration = Duration::from_secs(10);

/// One console log per DUT, shared by its boots.
pub(super) type Log = Arc<Mutex<(PathBuf, std::fs::File)>>;

pub(super) fn open_logs(dir: &Path, targets: &[Target]) -> Result<Vec<Log>, BootTestError> {
    let io_err = |path: &Path| {
        let path = path.to_path_buf();
        move |source| BootTestError::Io { path, source }
    };
    std::fs::create_dir_all(dir).map_err(io_err(dir))?;
    targets
        .iter()
        .map(|t| {
            let path = dir.join(format!("boot-test-{}.log", t.id));
            let f = std::fs::File::create(&path).map_err(io_err(&path))?;
            Ok(Arc::new(Mutex::new((path, f))))
        })
        .collect()
}

pub(super) fn log_line(log: &Log, line: &str) {
    let mut g = log.lock();
    let _ = writeln!(g.1, "{line}");
}

/// Where console lines go.
pub(super) struct Console {
    pub(super) log: Log,
    pub(super) prefix: Option<String>,
}

impl Console {
    /// A line of citron's own, in the log and on stderr.
    pub(super) fn note(&self, msg: &str) {
        log_line(&self.log, &format!("=== citron: {msg}"));
        eprintln!("{}citron boot-test: {msg}", self.prefix.as_deref().unwrap_or(""));
    }

    pub(super) fn line(&self, line: &str, from_stderr: bool) {
        log_line(&self.log, line);
        let p = self.prefix.as_deref().unwrap_or("");
        if from_stderr {
            eprintln!("{p}{line}");
        } else {
            let mut out = io::stdout().lock();
            let _ = writeln!(out, "{p}{line}");
            let _ = out.flush();
        }
    }
}

/// Reads QEMU's console (`(from stderr, bytes)` from `rx`) into `watch` until a verdict; stops
/// QEMU once there is one. `phone_home` fires when citron served `_citron/ready` to the DUT.
/// Once the run passed, the guest gets `grace` to power off by itself.
pub(super) async fn verdict(
    child: &mut tokio::process::Child,
    mut rx: mpsc::Receiver<(bool, Vec<u8>)>,
    console: &Console,
    watch: &mut Watch,
    mut phone_home: Option<oneshot::Receiver<()>>,
    grace: Duration,
    timeout: Duration,
) -> Result<(), Failure> {
    let started = tokio::time::Instant::now();
    let mut out = LineSplitter::default();
    let mut err = LineSplitter::default();
    let deadline = started + timeout;
    let mut grace_until: Option<tokio::time::Instant> = None;
    let verdict: Option<Result<(), Failure>> = loop {
        // A zero grace (a booted image) ends the run as soon as it passed.
        if grace_until.is_some_and(|g| g <= tokio::time::Instant::now()) {
            break Some(Ok(()));
        }
        let until = grace_until.unwrap_or(deadline);
        let msg = tokio::select! {
            m = rx.recv() => m,
            _ = tokio::time::sleep_until(until) => {
                break if grace_until.is_some() { Some(Ok(())) } else { Some(Err(watch.timeout(timeout))) };
            }
            r = async { match phone_home.as_mut() { Some(p) => p.await, None => std::future::pending().await } } => {
                phone_home = None;
                if r.is_ok() && watch.phoned_home(started.elapsed()) {
                    console.note("citron served _citron/ready: the system phoned home");
                    grace_until = Some(tokio::time::Instant::now() + grace);
                }
                continue;
            }
        };
        let Some((is_err, bytes)) = msg else { break None };
        let at = started.elapsed();
        let split = if is_err { &mut err } else { &mut out };
        let mut failed = None;
        for line in split.feed(&bytes) {
            console.line(&line, is_err);
            match watch.line(&line, at) {
                Seen::Nothing => {}
                Seen::Matched => {
                    grace_until.get_or_insert_with(|| tokio::time::Instant::now() + grace);
                }
                Seen::Failed(f) => {
                    failed = Some(f);
                    break;
                }
            }
        }
        if let Some(f) = failed {
            break Some(Err(f));
        }
        if !is_err && grace_until.is_none() && watch.partial(&split.partial(), at) {
            grace_until = Some(tokio::time::Instant::now() + grace);
        }
    };
    if let Some(v) = verdict {
        let _ = child.start_kill();
        let _ = child.wait().await;
        return v;
    }
    // Both streams ended: QEMU is exiting.
    let at = started.elapsed();
    for (split, is_err) in [(&mut out, false), (&mut err, true)] {
        if let Some(line) = split.finish() {
            console.line(&line, is_err);
            if let Seen::Failed(f) = watch.line(&line, at) {
                return Err(f);
            }
        }
    }
    let status = match tokio::time::timeout(Duration::from_secs(10), child.wait()).await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => return Err(Failure::Spawn(e.to_string())),
        Err(_) => {
            let _ = child.start_kill();
            return Err(Failure::Exited { status: "closed its console but did not exit".into(), awaited: None });
        }
    };
    watch.at_exit(status.success(), &status.to_string(), at)
}

/// Splits a byte stream into console lines: `\r` dropped, terminal escape sequences removed,
/// other control characters dropped, invalid UTF-8 replaced.
#[derive(Debug, Default)]
pub(super) struct LineSplitter {
    buf: Vec<u8>,
}

impl LineSplitter {
    pub(super) fn feed(&mut self, bytes: &[u8]) -> Vec<String> {
        self.buf.extend_from_slice(bytes);
        let mut lines = Vec::new();
        while let Some(i) = self.buf.iter().position(|&b| b == b'\n') {
            let raw: Vec<u8> = self.buf.drain(..=i).collect();
            lines.push(clean(&raw[..raw.len() - 1]));
        }
        // A console that never ends its line (a prompt) must not grow without bound.
        if self.buf.len() > 64 * 1024 {
            let raw = std::mem::take(&mut self.buf);
            lines.push(clean(&raw));
        }
        lines
    }
    pub(super) fn partial(&self) -> String {
        clean(&self.buf)
    }
    pub(super) fn finish(&mut self) -> Option<String> {
        if self.buf.is_empty() {
            return None;
        }
        Some(clean(&std::mem::take(&mut self.buf)))
    }
}

/// Drops `ESC [ … final`, `ESC x` and control characters (SeaBIOS clears the screen with them).
pub(super) fn clean(raw: &[u8]) -> String {
    let text = String::from_utf8_lossy(raw);
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            if chars.peek() == Some(&'[') {
                chars.next();
                // Parameters and intermediates, then one final byte in @..~.
                for c in chars.by_ref() {
                    if ('@'..='~').contains(&c) {
                        break;
                    }
                }
            } else {
                chars.next();
            }
        } else if c == '\t' || !c.is_control() {
            out.push(c);
        }
    }
    out.trim_end().to_string()
}
