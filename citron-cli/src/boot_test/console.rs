//! The serial console: split into clean lines, copied to stdout and the DUT's log, and watched
//! for the verdict of a boot (the `--expect` pattern, a kernel panic, nothing to boot, a KVM
//! error, QEMU exiting, the timeout). [`Watch`] and [`LineSplitter`] do no I/O, so the verdict
//! rules are unit-tested.

use std::fmt;
use std::io::{self, Write as _};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use regex::Regex;
use tokio::sync::mpsc;

use super::plan::Target;
use super::BootTestError;

/// How long a guest may take to power off by itself once the pattern was seen.
const POWEROFF_GRACE: Duration = Duration::from_secs(10);

/// How one boot failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Failure {
    /// The time ran out.
    Timeout {
        /// The allowed time.
        after: Duration,
        /// The pattern that was not seen, if any.
        pattern: Option<String>,
    },
    /// The guest kernel panicked; the panic line.
    Panic(String),
    /// The firmware found nothing to boot; the last iPXE error seen.
    NothingToBoot(Option<String>),
    /// KVM cannot run this guest here.
    Kvm,
    /// QEMU ended before the pattern was seen (or with an error status without one).
    Exited {
        /// QEMU's exit status.
        status: String,
        /// The pattern that was not seen.
        pattern: Option<String>,
    },
    /// QEMU could not be started.
    Spawn(String),
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Failure::Timeout { after, pattern: Some(p) } => write!(f, "timeout: /{p}/ not seen within {}s", after.as_secs()),
            Failure::Timeout { after, pattern: None } => {
                write!(f, "timeout: the guest did not power off within {}s", after.as_secs())
            }
            Failure::Panic(line) => write!(f, "kernel panic: {line}"),
            Failure::NothingToBoot(Some(e)) => write!(f, "the firmware found nothing to boot; last iPXE error: {e}"),
            Failure::NothingToBoot(None) => write!(f, "the firmware found nothing to boot (no iPXE error seen)"),
            Failure::Kvm => write!(f, "KVM internal error: KVM cannot run this guest on this host; use --accel tcg"),
            Failure::Exited { status, pattern: Some(p) } => write!(f, "pattern never seen: QEMU exited ({status}) before /{p}/ appeared"),
            Failure::Exited { status, pattern: None } => write!(f, "QEMU exited with {status}"),
            Failure::Spawn(e) => write!(f, "cannot start QEMU: {e}"),
        }
    }
}

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

/// Reads QEMU's console (`(from stderr, bytes)` from `rx`) until a verdict; stops QEMU once
/// there is one.
pub(super) async fn verdict(
    child: &mut tokio::process::Child,
    mut rx: mpsc::Receiver<(bool, Vec<u8>)>,
    console: &Console,
    expect: Option<&Regex>,
    timeout: Duration,
) -> Result<(), Failure> {
    let mut watch = Watch::new(expect.cloned());
    let mut out = LineSplitter::default();
    let mut err = LineSplitter::default();
    let deadline = tokio::time::Instant::now() + timeout;
    // Once the pattern is seen the guest gets a moment to power off by itself (and flush its
    // disks); then it is stopped.
    let mut grace: Option<tokio::time::Instant> = None;
    let verdict: Option<Result<(), Failure>> = loop {
        let until = grace.unwrap_or(deadline);
        let msg = tokio::select! {
            m = rx.recv() => m,
            _ = tokio::time::sleep_until(until) => {
                break if grace.is_some() { Some(Ok(())) } else {
                    Some(Err(Failure::Timeout { after: timeout, pattern: expect.map(|r| r.as_str().to_string()) }))
                };
            }
        };
        let Some((is_err, bytes)) = msg else { break None };
        let split = if is_err { &mut err } else { &mut out };
        let mut failed = None;
        for line in split.feed(&bytes) {
            console.line(&line, is_err);
            match watch.line(&line) {
                Seen::Nothing => {}
                Seen::Matched => {
                    grace.get_or_insert_with(|| tokio::time::Instant::now() + POWEROFF_GRACE);
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
        if !is_err && grace.is_none() && watch.partial(&split.partial()) {
            grace = Some(tokio::time::Instant::now() + POWEROFF_GRACE);
        }
    };
    if let Some(v) = verdict {
        let _ = child.start_kill();
        let _ = child.wait().await;
        return v;
    }
    // Both streams ended: QEMU is exiting.
    for (split, is_err) in [(&mut out, false), (&mut err, true)] {
        if let Some(line) = split.finish() {
            console.line(&line, is_err);
            if let Seen::Failed(f) = watch.line(&line) {
                return Err(f);
            }
        }
    }
    let status = match tokio::time::timeout(Duration::from_secs(10), child.wait()).await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => return Err(Failure::Spawn(e.to_string())),
        Err(_) => {
            let _ = child.start_kill();
            return Err(Failure::Exited { status: "closed its console but did not exit".into(), pattern: None });
        }
    };
    watch.at_exit(status.success(), &status.to_string())
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

/// What a console line means.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Seen {
    Nothing,
    Matched,
    Failed(Failure),
}

/// The verdict logic, fed line by line (no I/O, so it is unit-tested).
#[derive(Debug)]
pub(super) struct Watch {
    expect: Option<Regex>,
    matched: bool,
    last_ipxe_error: Option<String>,
}

impl Watch {
    pub(super) fn new(expect: Option<Regex>) -> Watch {
        Watch { expect, matched: false, last_ipxe_error: None }
    }

    pub(super) fn line(&mut self, line: &str) -> Seen {
        if line.contains("Kernel panic - not syncing") {
            return Seen::Failed(Failure::Panic(line.trim().to_string()));
        }
        if line.contains("KVM internal error") {
            return Seen::Failed(Failure::Kvm);
        }
        // iPXE ends each error message with its explanation URL.
        if line.contains("(https://ipxe.org/") || line.contains("(http://ipxe.org/") {
            self.last_ipxe_error = Some(line.trim().to_string());
        }
        if line.contains("No bootable device") {
            return Seen::Failed(Failure::NothingToBoot(self.last_ipxe_error.clone()));
        }
        if !self.matched && self.expect.as_ref().is_some_and(|r| r.is_match(line)) {
            self.matched = true;
            return Seen::Matched;
        }
        Seen::Nothing
    }

    /// A prompt that does not end its line (`login: `) may match too.
    pub(super) fn partial(&mut self, text: &str) -> bool {
        if !self.matched && !text.is_empty() && self.expect.as_ref().is_some_and(|r| r.is_match(text)) {
            self.matched = true;
            return true;
        }
        false
    }

    /// QEMU exited by itself.
    pub(super) fn at_exit(&self, success: bool, status: &str) -> Result<(), Failure> {
        match (&self.expect, self.matched) {
            (Some(_), true) => Ok(()),
            (Some(r), false) => Err(Failure::Exited { status: status.into(), pattern: Some(r.as_str().into()) }),
            (None, _) if success => Ok(()),
            (None, _) => Err(Failure::Exited { status: status.into(), pattern: None }),
        }
    }
}
