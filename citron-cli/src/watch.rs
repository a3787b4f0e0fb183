//! `citron results watch JOB --exec CMD`: deploy on change without polling (seed 004).
//!
//! The watcher follows the lab's event feed (`GET /api/v1/events?job=JOB`, Server-Sent Events)
//! from *now* (`after=now`: the server's first message carries only the position) and runs CMD
//! once for every `run_finished` event that matches `--status` and `--platform`. When the
//! connection drops (a restart, a proxy, a network cut) it connects again with the id of the
//! last message it read as `Last-Event-ID`, after a bounded, growing pause: the feed's `seq` is
//! the same on every gateway and survives restarts, so nothing is missed and nothing is run
//! twice. A refusal (401, 403, 404: a wrong, revoked or out-of-scope token) ends it with an
//! error: retrying would not help.
//!
//! - [`Parser`]: the SSE wire format (pure, bounded).
//! - [`watch`]: the loop: connect, read, match, run, reconnect.

use std::process::ExitCode;
use std::time::Duration;

use anyhow::{bail, Context as _};
use clap::Args;
use futures::StreamExt as _;
use serde_json::Value;

use citron_client::Client;

/// The first pause before connecting again; doubled after each failure.
const BACKOFF_MIN: Duration = Duration::from_millis(250);
/// The longest pause before connecting again.
const BACKOFF_MAX: Duration = Duration::from_secs(15);
/// A connection silent this long is taken for dead (the server sends a comment every 15 s).
const SILENCE_MAX: Duration = Duration::from_secs(45);
/// The longest SSE line accepted: a server is trusted no further than this.
const LINE_MAX: usize = 1 << 20;

/// `citron results watch`.
#[derive(Debug, Args)]
pub struct WatchArgs {
    /// The job's name.
    job: String,
    /// The command to run (with `sh -c`) for every matching run.
    #[arg(long, value_name = "CMD")]
    exec: String,
    /// Only runs that ended so (`any`: every finished run).
    #[arg(long, default_value = "success", value_parser = ["success", "failure", "unknown", "any"])]
    status: String,
    /// Only runs on this platform.
    #[arg(long)]
    platform: Option<String>,
    /// The run's file whose digest and URLs CMD gets (default: the run's only file, if it has
    /// one); a run without it is skipped.
    #[arg(long, value_name = "PATH")]
    file: Option<String>,
    /// Stop after the first matching run, with CMD's exit status.
    #[arg(long)]
    once: bool,
    /// Start after this event id (`CITRON_EVENT_ID` of an earlier run) instead of now.
    #[arg(long, value_name = "ID")]
    after: Option<u64>,
}

/// One dispatched SSE message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    /// `event:` (`message` when absent).
    pub event: String,
    /// `data:` lines joined with `\n`.
    pub data: String,
    /// The last event id as of this message.
    pub id: Option<String>,
}

/// The SSE wire format (the WHATWG `text/event-stream` rules), fed bytes as they come.
#[derive(Debug, Default)]
pub struct Parser {
    line: Vec<u8>,
    event: String,
    data: String,
    has_data: bool,
    /// The last event id: set by `id:` fields, even of messages without data.
    pub last_id: Option<String>,
    /// A `\r` ended the last line: a `\n` right after it is part of that line end.
    after_cr: bool,
}

impl Parser {
    /// Takes `bytes`; answers the messages they complete. A line longer than [`LINE_MAX`] is
    /// an error.
    pub fn push(&mut self, bytes: &[u8]) -> anyhow::Result<Vec<Message>> {
        let mut out = Vec::new();
        for &b in bytes {
            if std::mem::take(&mut self.after_cr) && b == b'\n' {
                continue;
            }
            if b == b'\n' || b == b'\r' {
                self.after_cr = b == b'\r';
                let line = std::mem::take(&mut self.line);
                if let Some(m) = self.line_done(&String::from_utf8_lossy(&line)) {
                    out.push(m);
                }
                continue;
            }
            if self.line.len() >= LINE_MAX {
                bail!("the server sent an event line longer than {LINE_MAX} bytes");
            }
            self.line.push(b);
        }
        Ok(out)
    }

    fn line_done(&mut self, line: &str) -> Option<Message> {
        if line.is_empty() {
            let event = std::mem::take(&mut self.event);
            let data = std::mem::take(&mut self.data);
            if !std::mem::take(&mut self.has_data) {
                return None;
            }
            let event = if event.is_empty() { "message".to_string() } else { event };
            return Some(Message { event, data, id: self.last_id.clone() });
        }
        if line.starts_with(':') {
            return None;
        }
        let (field, value) = match line.split_once(':') {
            Some((f, v)) => (f, v.strip_prefix(' ').unwrap_or(v)),
            None => (line, ""),
        };
        match field {
            "event" => self.event = value.to_string(),
            "data" => {
                if self.has_data {
                    self.data.push('\n');
                }
                self.data.push_str(value);
                self.has_data = true;
            }
            "id" if !value.contains('\0') => self.last_id = Some(value.to_string()),
            _ => {}
        }
        None
    }
}

/// Why a connection ended.
enum Ended {
    /// Dropped or silent: connect again.
    Dropped(String),
    /// `--once` and CMD ran: this exit status.
    Done(ExitCode),
}

/// Runs the watch until `--once` is satisfied (or forever); an error for a refusal.
pub async fn watch(c: &Client, a: WatchArgs) -> anyhow::Result<ExitCode> {
    let mut last = a.after.map(|n| n.to_string());
    let mut backoff = BACKOFF_MIN;
    loop {
        let mut r = c
            .request(reqwest::Method::GET, "/api/v1/events")?
            .header(reqwest::header::ACCEPT, "text/event-stream")
            .query(&[("job", a.job.as_str()), ("after", last.as_deref().unwrap_or("now"))]);
        if let Some(id) = &last {
            r = r.header("Last-Event-ID", id);
        }
        let why = match r.send().await {
            Err(e) => format!("cannot reach {}: {e}", base(c)),
            Ok(resp) if resp.status().is_success() => {
                // The position is settled once the server answered: from here nothing is missed.
                eprintln!("citron: watch: following {} on {} (after event {})", a.job, base(c), last.as_deref().unwrap_or("now"));
                match follow(c, &a, resp, &mut last, &mut backoff).await? {
                    Ended::Done(code) => return Ok(code),
                    Ended::Dropped(why) => why,
                }
            }
            Ok(resp) => {
                let code = resp.status();
                let body: Value = resp.json().await.unwrap_or_default();
                let msg = body["error"].as_str().unwrap_or("(no message)").to_string();
                if code.is_client_error() {
                    bail!("{code}: {msg}");
                }
                format!("{code}: {msg}")
            }
        };
        eprintln!("citron: watch: {why}; connecting again in {} ms", backoff.as_millis());
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(BACKOFF_MAX);
    }
}

/// Reads one connection's messages until it drops; runs CMD for the matching runs.
async fn follow(
    c: &Client,
    a: &WatchArgs,
    resp: reqwest::Response,
    last: &mut Option<String>,
    backoff: &mut Duration,
) -> anyhow::Result<Ended> {
    let mut body = resp.bytes_stream();
    let mut p = Parser { last_id: last.clone(), ..Parser::default() };
    loop {
        let chunk = match tokio::time::timeout(SILENCE_MAX, body.next()).await {
            Err(_) => return Ok(Ended::Dropped(format!("no word from the server for {} s", SILENCE_MAX.as_secs()))),
            Ok(None) => return Ok(Ended::Dropped("the server closed the connection".into())),
            Ok(Some(Err(e))) => return Ok(Ended::Dropped(format!("the connection failed: {e}"))),
            Ok(Some(Ok(b))) => b,
        };
        // Connected and reading: the next drop starts over with a short pause.
        *backoff = BACKOFF_MIN;
        let messages = p.push(&chunk)?;
        if messages.is_empty() {
            // A position-only message (`after=now`) or a keep-alive.
            *last = p.last_id.clone().or(last.take());
        }
        for m in messages {
            let ran = match m.event.as_str() {
                "run_finished" => on_finished(c, a, &m).await?,
                _ => None,
            };
            *last = m.id.clone().or(last.take());
            if let (Some(code), true) = (ran, a.once) {
                return Ok(Ended::Done(code));
            }
        }
    }
}

/// The file CMD is told about: `--file`, else the run's only one. `(path, sha256)`.
async fn the_file(c: &Client, a: &WatchArgs, run: i64, d: &Value) -> anyhow::Result<Option<(String, String)>> {
    let listed: Vec<(String, String)> = d["files"]
        .as_array()
        .map(|fs| fs.iter().filter_map(|f| Some((f["path"].as_str()?.to_string(), f["sha256"].as_str()?.to_string()))).collect())
        .unwrap_or_default();
    let count = d["files_count"].as_u64().unwrap_or(listed.len() as u64);
    let Some(want) = &a.file else {
        return Ok(if count == 1 { listed.into_iter().next() } else { None });
    };
    if let Some(f) = listed.iter().find(|(p, _)| p == want) {
        return Ok(Some(f.clone()));
    }
    if count as usize <= listed.len() {
        return Ok(None);
    }
    // More files than the event lists: the run says.
    let run = c.run(&a.job, run).await?;
    Ok(run.files.unwrap_or_default().into_iter().find(|f| &f.path == want).map(|f| (f.path, f.sha256)))
}

/// A `run_finished` event: CMD's exit status if it matched and CMD ran.
async fn on_finished(c: &Client, a: &WatchArgs, m: &Message) -> anyhow::Result<Option<ExitCode>> {
    let Ok(ev) = serde_json::from_str::<Value>(&m.data) else {
        eprintln!("citron: watch: an event that is not JSON: skipped");
        return Ok(None);
    };
    let d = &ev["detail"];
    let (Some(run), Some(status)) = (d["run"].as_i64(), d["status"].as_str()) else { return Ok(None) };
    if d["job"].as_str() != Some(a.job.as_str())
        || (a.status != "any" && status != a.status)
        || a.platform.as_deref().is_some_and(|p| d["platform"].as_str() != Some(p))
    {
        return Ok(None);
    }
    let file = the_file(c, a, run, d).await?;
    if let (Some(want), None) = (&a.file, &file) {
        eprintln!("citron: watch: run {run} of {} has no file {want:?}: skipped", a.job);
        return Ok(None);
    }
    let enc = |s: &str| url::form_urlencoded::byte_serialize(s.as_bytes()).collect::<String>();
    let mut q = Vec::new();
    if a.status != "any" {
        q.push(format!("status={}", a.status));
    }
    if let Some(p) = &a.platform {
        q.push(format!("platform={}", enc(p)));
    }
    let q = if q.is_empty() { String::new() } else { format!("?{}", q.join("&")) };
    let job_url = format!("{}/api/v1/results/{}", base(c), a.job);
    let mut cmd = tokio::process::Command::new("sh");
    cmd.arg("-c").arg(&a.exec);
    let text = |k: &str| d[k].as_str().unwrap_or("").to_string();
    cmd.env("CITRON_JOB", &a.job)
        .env("CITRON_RUN", run.to_string())
        .env("CITRON_REVISION", text("revision"))
        .env("CITRON_PLATFORM", text("platform"))
        .env("CITRON_STATUS", status)
        .env("CITRON_EVENT_ID", m.id.clone().unwrap_or_default())
        .env("CITRON_SERVER", base(c))
        .env("CITRON_RUN_URL", format!("{job_url}/runs/{run}"));
    match &file {
        Some((path, sha)) => {
            let p: Vec<String> = path.split('/').map(enc).collect();
            cmd.env("CITRON_FILE", path)
                .env("CITRON_SHA256", sha)
                .env("CITRON_BLOB_URL", format!("{}/api/v1/results/blobs/sha256/{sha}", base(c)))
                .env("CITRON_LATEST_URL", format!("{job_url}/latest/files/{}{q}", p.join("/")));
        }
        None => {
            cmd.env("CITRON_LATEST_URL", format!("{job_url}/latest{q}"));
        }
    }
    if let Some(t) = c.token() {
        cmd.env("CITRON_TOKEN", t);
    }
    eprintln!("citron: watch: run {run} of {} ({status}, revision {}): running {}", a.job, text("revision"), a.exec);
    let st = cmd.status().await.with_context(|| format!("cannot run {}", a.exec))?;
    if !st.success() {
        eprintln!("citron: watch: {} for run {run}: {st}", a.exec);
    }
    let code = st.code().and_then(|c| u8::try_from(c).ok()).unwrap_or(1);
    Ok(Some(ExitCode::from(code)))
}

/// The server's address without its final `/`, to build the URLs CMD is given.
fn base(c: &Client) -> &str {
    c.server().trim_end_matches('/')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sse_messages_ids_and_comments() {
        let mut p = Parser::default();
        // A position-only message: the id is taken, nothing dispatched.
        assert!(p.push(b"id: 41\n\n: keep-alive\n\n").unwrap().is_empty());
        assert_eq!(p.last_id.as_deref(), Some("41"));
        // Split anywhere, CRLF line ends, several data lines.
        let mut got = p.push(b"id: 42\r\nevent: run_fin").unwrap();
        got.extend(p.push(b"ished\r\ndata: {\"a\":\r\ndata:1}\r\n\r").unwrap());
        got.extend(p.push(b"\ndata: x\n\n").unwrap());
        assert_eq!(
            got,
            vec![
                Message { event: "run_finished".into(), data: "{\"a\":\n1}".into(), id: Some("42".into()) },
                Message { event: "message".into(), data: "x".into(), id: Some("42".into()) },
            ]
        );
        // A line without end past the bound is refused, not buffered.
        let mut p = Parser::default();
        assert!(p.push(&vec![b'x'; LINE_MAX + 1]).is_err());
    }
}
