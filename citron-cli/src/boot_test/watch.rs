//! The verdict of one boot, fed console lines with their time since QEMU started: what passes
//! a run ([`Ready`]), what fails it ([`Failure`], the [`Catalogue`]), the warnings, and where
//! each boot stage started. No I/O, so the rules are unit-tested.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use regex::Regex;

use super::catalogue::{Catalogue, Hit, Stage};

/// What passes a boot.
#[derive(Debug, Clone)]
pub(super) enum Ready {
    /// `--expect REGEX` on the console.
    Pattern(Regex),
    /// The real system reached userspace (image boots without `--expect`).
    Userspace,
    /// The guest powers off by itself with status 0 (job boots without `--expect`).
    PowerOff,
    /// The system read `_citron/ready` from citron (`--ready phone-home`).
    PhoneHome,
}

impl Ready {
    /// What is awaited, as failures say it.
    pub(super) fn awaited(&self) -> Option<String> {
        match self {
            Ready::Pattern(r) => Some(format!("/{}/", r.as_str())),
            Ready::Userspace => {
                Some("userspace (systemd's multi-user or graphical target, \"Startup finished\", or a login prompt)".into())
            }
            Ready::PowerOff => None,
            Ready::PhoneHome => Some("the phone-home (a read of _citron/ready)".into()),
        }
    }
}

/// How one boot failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Failure {
    /// The time ran out.
    Timeout {
        /// The allowed time.
        after: Duration,
        /// What was not seen, if anything was awaited.
        awaited: Option<String>,
    },
    /// A line of the failure catalogue: why, and the line.
    Console {
        /// The catalogue's reason (`kernel panic`, `emergency shell`, …).
        reason: &'static str,
        /// The console line.
        line: String,
    },
    /// The firmware found nothing to boot; the last iPXE error seen.
    NothingToBoot(Option<String>),
    /// KVM cannot run this guest here.
    Kvm,
    /// QEMU ended before the run passed (or with an error status when nothing was awaited).
    Exited {
        /// QEMU's exit status.
        status: String,
        /// What was not seen.
        awaited: Option<String>,
    },
    /// QEMU could not be started.
    Spawn(String),
}

impl Failure {
    /// A short reason for tables and JUnit's `type`.
    pub(super) fn kind(&self) -> &str {
        match self {
            Failure::Timeout { .. } => "timeout",
            Failure::Console { reason, .. } => reason,
            Failure::NothingToBoot(_) => "nothing to boot",
            Failure::Kvm => "KVM error",
            Failure::Exited { .. } => "QEMU exited",
            Failure::Spawn(_) => "QEMU did not start",
        }
    }
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Failure::Timeout { after, awaited: Some(p) } => write!(f, "timeout: {p} not seen within {}s", after.as_secs()),
            Failure::Timeout { after, awaited: None } => {
                write!(f, "timeout: the guest did not power off within {}s", after.as_secs())
            }
            Failure::Console { reason, line } => write!(f, "{reason}: {line}"),
            Failure::NothingToBoot(Some(e)) => write!(f, "the firmware found nothing to boot; last iPXE error: {e}"),
            Failure::NothingToBoot(None) => write!(f, "the firmware found nothing to boot (no iPXE error seen)"),
            Failure::Kvm => write!(f, "KVM internal error: KVM cannot run this guest on this host; use --accel tcg"),
            Failure::Exited { status, awaited: Some(p) } => write!(f, "pattern never seen: QEMU exited ({status}) before {p} appeared"),
            Failure::Exited { status, awaited: None } => write!(f, "QEMU exited with {status}"),
            Failure::Spawn(e) => write!(f, "cannot start QEMU: {e}"),
        }
    }
}

/// What a console line means for the verdict.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Seen {
    Nothing,
    Matched,
    Failed(Failure),
}

/// Where each stage started (time since QEMU started, and the line that showed it), and when
/// the run passed.
#[derive(Debug, Clone, Default)]
pub(super) struct Timeline {
    pub(super) starts: BTreeMap<Stage, (Duration, String)>,
    pub(super) ready: Option<Duration>,
}

impl Timeline {
    /// How long each stage lasted: from its start to the next stage's (the last one to the
    /// moment the run passed). Stages not seen are left out, and the one before takes their time.
    pub(super) fn durations(&self) -> Vec<(Stage, Duration)> {
        let mut starts: Vec<(Stage, Duration)> = vec![(Stage::Firmware, Duration::ZERO)];
        starts.extend(self.starts.iter().filter(|(s, _)| **s != Stage::Firmware).map(|(s, (t, _))| (*s, *t)));
        let mut out = Vec::new();
        for (i, (s, t)) in starts.iter().enumerate() {
            let end = match starts.get(i + 1) {
                Some((_, next)) => Some(*next),
                None => self.ready,
            };
            if let Some(end) = end {
                out.push((*s, end.saturating_sub(*t)));
            }
        }
        out
    }
}

/// The verdict logic, fed line by line.
#[derive(Debug)]
pub(super) struct Watch {
    ready: Ready,
    catalogue: Arc<Catalogue>,
    matched: bool,
    last_ipxe_error: Option<String>,
    pub(super) timeline: Timeline,
    /// Warnings: what, and the line.
    pub(super) warnings: Vec<(&'static str, String)>,
}

/// At most this many warnings are kept (a failing unit may repeat forever).
const MAX_WARNINGS: usize = 100;

impl Watch {
    pub(super) fn new(ready: Ready, catalogue: Arc<Catalogue>) -> Watch {
        Watch { ready, catalogue, matched: false, last_ipxe_error: None, timeline: Timeline::default(), warnings: Vec::new() }
    }

    /// The time a run passed, once it did.
    fn pass(&mut self, at: Duration) -> Seen {
        self.matched = true;
        self.timeline.ready = Some(at);
        Seen::Matched
    }

    pub(super) fn line(&mut self, line: &str, at: Duration) -> Seen {
        if line.contains("KVM internal error") {
            return Seen::Failed(Failure::Kvm);
        }
        if let Some(stage) = self.catalogue.stage(line) {
            self.timeline.starts.entry(stage).or_insert_with(|| (at, line.trim().to_string()));
        }
        // iPXE ends each error message with its explanation URL.
        if line.contains("(https://ipxe.org/") || line.contains("(http://ipxe.org/") {
            self.last_ipxe_error = Some(line.trim().to_string());
        }
        if self.last_ipxe_error.is_some() && line.contains("No bootable device") {
            return Seen::Failed(Failure::NothingToBoot(self.last_ipxe_error.clone()));
        }
        let kernel_started = self.timeline.starts.keys().any(|s| *s >= Stage::Kernel);
        match self.catalogue.check(line, kernel_started) {
            Some(Hit::Fail(reason, line)) => return Seen::Failed(Failure::Console { reason, line }),
            Some(Hit::Warn(what, line)) if self.warnings.len() < MAX_WARNINGS => self.warnings.push((what, line)),
            _ => {}
        }
        if self.matched {
            return Seen::Nothing;
        }
        let hit = match &self.ready {
            Ready::Pattern(r) => r.is_match(line),
            Ready::Userspace => self.catalogue.userspace(line),
            Ready::PowerOff | Ready::PhoneHome => false,
        };
        if hit {
            return self.pass(at);
        }
        Seen::Nothing
    }

    /// A prompt that does not end its line (`login: `) may pass a run too.
    pub(super) fn partial(&mut self, text: &str, at: Duration) -> bool {
        if self.matched || text.is_empty() {
            return false;
        }
        let hit = match &self.ready {
            Ready::Pattern(r) => r.is_match(text),
            Ready::Userspace => self.catalogue.userspace(text),
            Ready::PowerOff | Ready::PhoneHome => false,
        };
        hit && self.pass(at) == Seen::Matched
    }

    /// citron served `_citron/ready` to the DUT.
    pub(super) fn phoned_home(&mut self, at: Duration) -> bool {
        matches!(self.ready, Ready::PhoneHome) && !self.matched && self.pass(at) == Seen::Matched
    }

    /// QEMU exited by itself at `at`.
    pub(super) fn at_exit(&mut self, success: bool, status: &str, at: Duration) -> Result<(), Failure> {
        match (&self.ready, self.matched) {
            (_, true) => Ok(()),
            (Ready::PowerOff, false) if success => {
                self.timeline.ready = Some(at);
                Ok(())
            }
            (r, false) => Err(Failure::Exited { status: status.into(), awaited: r.awaited() }),
        }
    }

    pub(super) fn timeout(&self, after: Duration) -> Failure {
        Failure::Timeout { after, awaited: self.ready.awaited() }
    }
}
