//! What a run leaves behind: one [`RunReport`] per DUT, the stage timings it prints, the
//! summary table of a matrix, the JUnit XML file (`--junit`) and `boot-test-results.json`.
//!
//! Stage timings come from two clocks that agree: the console markers of the [`Timeline`]
//! (time since QEMU started) and citron's own view of the DUT's disk ([`DiskTimes`], sampled
//! from the access log's in-flight NBD connection: when QEMU connected, when the firmware first
//! read the disk, how much was read by each stage).

use std::io;
use std::path::{Path, PathBuf};
use std::time::Duration;

use citron_core::namespace::DutId;
use quick_xml::events::BytesText;
use quick_xml::Writer;

use super::catalogue::Stage;
use super::watch::{Failure, Timeline};

/// citron's view of the DUT's NBD disk during a boot, relative to QEMU's start.
#[derive(Debug, Clone, Default)]
pub(super) struct DiskTimes {
    /// QEMU opened the export.
    pub(super) connected: Option<Duration>,
    /// The first byte read (the firmware reading the boot sector).
    pub(super) first_read: Option<Duration>,
    /// `(when, bytes read so far)`, in time order.
    pub(super) samples: Vec<(Duration, u64)>,
}

/// At most this many samples are kept (10 minutes at 10 a second).
const MAX_SAMPLES: usize = 6000;

impl DiskTimes {
    pub(super) fn sample(&mut self, at: Duration, bytes: u64) {
        if self.samples.len() < MAX_SAMPLES && self.samples.last().is_none_or(|(_, b)| *b != bytes) {
            self.samples.push((at, bytes));
        }
    }

    /// Bytes read by `at` (the last sample not after it).
    pub(super) fn bytes_by(&self, at: Duration) -> u64 {
        self.samples.iter().take_while(|(t, _)| *t <= at).last().map(|(_, b)| *b).unwrap_or(0)
    }

    pub(super) fn total(&self) -> u64 {
        self.samples.last().map(|(_, b)| *b).unwrap_or(0)
    }
}

/// How one DUT's boot went.
#[derive(Debug, Clone)]
pub(super) struct RunReport {
    pub(super) id: DutId,
    /// What it booted (`bios.img [uefi]` or the job file).
    pub(super) label: String,
    pub(super) result: Result<(), Failure>,
    /// Boots started (the failed one is the last).
    pub(super) boots_run: u32,
    /// The timeline of the last boot.
    pub(super) timeline: Timeline,
    pub(super) disk: DiskTimes,
    pub(super) warnings: Vec<(&'static str, String)>,
    pub(super) log: PathBuf,
    pub(super) elapsed: Duration,
}

fn secs(d: Duration) -> String {
    format!("{:.1}s", d.as_secs_f64())
}

fn mib(b: u64) -> String {
    format!("{:.1} MiB", b as f64 / (1024.0 * 1024.0))
}

impl RunReport {
    /// `firmware 0.4s, bootloader 0.3s, kernel 2.6s, userspace 3.1s`.
    pub(super) fn stages_line(&self) -> String {
        let d = self.timeline.durations();
        if d.is_empty() {
            return "no stage seen".into();
        }
        d.iter().map(|(s, t)| format!("{} {}", s.name(), secs(*t))).collect::<Vec<_>>().join(", ")
    }

    /// citron's side: `NBD connected at 0.1s, first read at 0.4s; 9.8 MiB read by the kernel, 12.0 MiB in all`.
    pub(super) fn disk_line(&self) -> Option<String> {
        let first = self.disk.first_read?;
        let mut s = match self.disk.connected {
            Some(c) => format!("NBD connected at {}, first read at {}", secs(c), secs(first)),
            None => format!("first NBD read at {}", secs(first)),
        };
        for stage in [Stage::Kernel, Stage::Userspace] {
            if let Some((t, _)) = self.timeline.starts.get(&stage) {
                s.push_str(&format!("; {} read by the {} stage", mib(self.disk.bytes_by(*t)), stage.name()));
            }
        }
        s.push_str(&format!("; {} in all", mib(self.disk.total())));
        Some(s)
    }

    fn result_word(&self) -> &'static str {
        if self.result.is_ok() {
            "PASS"
        } else {
            "FAIL"
        }
    }

    /// The report as JSON, for `boot-test-results.json`.
    pub(super) fn json(&self) -> serde_json::Value {
        let stages: serde_json::Map<String, serde_json::Value> =
            self.timeline.durations().iter().map(|(s, t)| (s.name().to_string(), serde_json::json!(t.as_secs_f64()))).collect();
        let (reason, line) = match &self.result {
            Ok(()) => (None, None),
            Err(Failure::Console { reason, line }) => (Some(reason.to_string()), Some(line.clone())),
            Err(f) => (Some(f.to_string()), None),
        };
        serde_json::json!({
            "dut": self.id.0,
            "boots": self.label,
            "result": self.result_word().to_lowercase(),
            "reason": reason,
            "line": line,
            "seconds": self.elapsed.as_secs_f64(),
            "stages": stages,
            "ready_at": self.timeline.ready.map(|t| t.as_secs_f64()),
            "nbd": {
                "connected_at": self.disk.connected.map(|t| t.as_secs_f64()),
                "first_read_at": self.disk.first_read.map(|t| t.as_secs_f64()),
                "bytes": self.disk.total(),
            },
            "warnings": self.warnings.iter().map(|(w, l)| serde_json::json!({"what": w, "line": l})).collect::<Vec<_>>(),
            "console_log": self.log.display().to_string(),
        })
    }
}

/// The summary table: one row per DUT, its result, its stage timings and why it failed.
pub(super) fn summary_table(reports: &[RunReport]) -> String {
    let headers = ["DUT", "BOOTS", "RESULT", "FIRMWARE", "BOOTLOADER", "KERNEL", "USERSPACE", "TOTAL", "REASON"];
    let rows: Vec<Vec<String>> = reports
        .iter()
        .map(|r| {
            let d = r.timeline.durations();
            let stage = |s: Stage| d.iter().find(|(x, _)| *x == s).map(|(_, t)| secs(*t)).unwrap_or_else(|| "-".into());
            let total = r.timeline.ready.map(secs).unwrap_or_else(|| "-".into());
            let reason = match &r.result {
                Ok(()) if r.warnings.is_empty() => String::new(),
                Ok(()) => format!("{} warning(s)", r.warnings.len()),
                Err(f) => f.to_string(),
            };
            vec![
                r.id.0.clone(),
                r.label.clone(),
                r.result_word().into(),
                stage(Stage::Firmware),
                stage(Stage::Bootloader),
                stage(Stage::Kernel),
                stage(Stage::Userspace),
                total,
                reason.chars().take(100).collect(),
            ]
        })
        .collect();
    let mut widths: Vec<usize> = headers.iter().map(|h| h.len()).collect();
    for row in &rows {
        for (w, c) in widths.iter_mut().zip(row) {
            *w = (*w).max(c.chars().count());
        }
    }
    let fmt_row = |cells: Vec<String>| {
        let mut line = String::new();
        for (i, (c, w)) in cells.iter().zip(&widths).enumerate() {
            if i + 1 == cells.len() {
                line.push_str(c);
            } else {
                line.push_str(&format!("{c:<w$}  "));
            }
        }
        line.trim_end().to_string()
    };
    let mut out = vec![fmt_row(headers.iter().map(|h| h.to_string()).collect())];
    out.extend(rows.into_iter().map(fmt_row));
    let failed = reports.iter().filter(|r| r.result.is_err()).count();
    out.push(format!("{} passed, {failed} failed", reports.len() - failed));
    out.join("\n")
}

/// The JUnit XML report: one `<testsuite name="citron boot-test">` with one `<testcase>` per
/// DUT (`classname` the DUT, `name` what it booted). Stage timings are testsuite properties
/// (`<DUT>.stage.<stage>` in seconds) and lines of the case's `system-out`, with the warnings
/// and the console log's path; a failure carries its reason (`type`) and the line that ended
/// the run (`message`).
pub(super) fn junit(reports: &[RunReport], timestamp: &str, hostname: &str) -> io::Result<Vec<u8>> {
    let failures = reports.iter().filter(|r| r.result.is_err()).count().to_string();
    let tests = reports.len().to_string();
    let time: f64 = reports.iter().map(|r| r.elapsed.as_secs_f64()).fold(0.0, f64::max);
    let time = format!("{time:.3}");
    let mut w = Writer::new_with_indent(Vec::new(), b' ', 2);
    w.write_event(quick_xml::events::Event::Decl(quick_xml::events::BytesDecl::new("1.0", Some("UTF-8"), None)))?;
    w.create_element("testsuites")
        .with_attributes([
            ("name", "citron boot-test"),
            ("tests", tests.as_str()),
            ("failures", failures.as_str()),
            ("errors", "0"),
            ("time", time.as_str()),
        ])
        .write_inner_content(|w| {
            w.create_element("testsuite")
                .with_attributes([
                    ("name", "citron boot-test"),
                    ("tests", tests.as_str()),
                    ("failures", failures.as_str()),
                    ("errors", "0"),
                    ("skipped", "0"),
                    ("time", time.as_str()),
                    ("timestamp", timestamp),
                    ("hostname", hostname),
                ])
                .write_inner_content(|w| {
                    w.create_element("properties").write_inner_content(|w| {
                        for r in reports {
                            for (s, t) in r.timeline.durations() {
                                let name = format!("{}.stage.{}", r.id, s.name());
                                let value = format!("{:.3}", t.as_secs_f64());
                                w.create_element("property")
                                    .with_attributes([("name", name.as_str()), ("value", value.as_str())])
                                    .write_empty()?;
                            }
                        }
                        Ok(())
                    })?;
                    for r in reports {
                        testcase(w, r)?;
                    }
                    Ok(())
                })?;
            Ok(())
        })?;
    let mut out = w.into_inner();
    out.push(b'\n');
    Ok(out)
}

fn testcase(w: &mut Writer<Vec<u8>>, r: &RunReport) -> io::Result<()> {
    let time = format!("{:.3}", r.elapsed.as_secs_f64());
    let mut out = vec![format!("stages: {}", r.stages_line())];
    out.extend(r.disk_line().map(|d| format!("citron: {d}")));
    out.extend(r.warnings.iter().map(|(what, line)| format!("warning: {what}: {line}")));
    out.push(format!("console log: {}", r.log.display()));
    let out = out.join("\n");
    w.create_element("testcase")
        .with_attributes([("classname", r.id.0.as_str()), ("name", r.label.as_str()), ("time", time.as_str())])
        .write_inner_content(|w| {
            if let Err(f) = &r.result {
                let message = f.to_string();
                w.create_element("failure")
                    .with_attributes([("type", f.kind()), ("message", message.as_str())])
                    .write_text_content(BytesText::new(&message))?;
            }
            w.create_element("system-out").write_text_content(BytesText::new(&out))?;
            Ok(())
        })?;
    Ok(())
}

/// Writes `bytes` to `path`.
pub(super) fn write(path: &Path, bytes: &[u8]) -> Result<(), super::BootTestError> {
    std::fs::write(path, bytes).map_err(|source| super::BootTestError::Io { path: path.to_path_buf(), source })
}

/// Now, as JUnit's `timestamp` (ISO 8601, UTC, no zone).
pub(super) fn timestamp() -> String {
    let secs = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
    let (days, rem) = (secs / 86_400, secs % 86_400);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + if m <= 2 { 1 } else { 0 };
    format!("{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}", rem / 3600, rem % 3600 / 60, rem % 60)
}

pub(super) fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname").map(|h| h.trim().to_string()).unwrap_or_else(|_| "localhost".into())
}
