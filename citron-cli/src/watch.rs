//! `citron results watch JOB --exec CMD`: deploy on change without polling (seed 004).
//!
//! The watcher follows the lab's event feed (`GET /api/v1/events?job=JOB`, Server-Sent Events)
//! from *now* (`after=now`: the server's first message carries only the position) and runs CMD
//! once for every `run_finished` event that matches `--status` and `--platform`. The feed is
//! read by citron-client's `Events`, the one SSE reader of citron (Python's `Client.events`
//! is it too): when the connection drops (a restart, a proxy, a network cut) it connects again
//! with the id of the last message it read as `Last-Event-ID`, after a bounded, growing pause,
//! and so does a first connection that fails; the feed's `seq` is the same on every gateway and
//! survives restarts, so nothing is missed and nothing is run twice. A refusal (401, 403, 404: a
//! wrong, revoked or out-of-scope token) ends it with an error: retrying would not help.

use std::process::ExitCode;

use anyhow::Context as _;
use clap::Args;
use serde_json::Value;

use citron_client::{Client, EventQuery, FeedEvent, Progress};

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

/// Runs the watch until `--once` is satisfied (or forever); an error for a refusal.
pub async fn watch(c: &Client, a: WatchArgs) -> anyhow::Result<ExitCode> {
    let query = EventQuery { job: Some(a.job.clone()), ..EventQuery::default() };
    let events = c.events(query, a.after.unwrap_or(0));
    let events = if a.after.is_some() { events } else { events.from_now() };
    let (job, server) = (a.job.clone(), base(c).to_string());
    let mut events = events.retrying().on_progress(move |p| say(&job, &server, p));
    loop {
        let ev = events.next().await?;
        let ran = match ev.kind.as_str() {
            "run_finished" => on_finished(c, &a, &ev).await?,
            _ => None,
        };
        if let (Some(code), true) = (ran, a.once) {
            return Ok(code);
        }
    }
}

/// What the watcher says of its connection.
fn say(job: &str, server: &str, p: Progress) {
    match p {
        // The position is settled once the server answered: from here nothing is missed.
        Progress::Connected { after } => {
            let after = after.map_or("now".to_string(), |n| n.to_string());
            eprintln!("citron: watch: following {job} on {server} (after event {after})");
        }
        Progress::Dropped { why } => eprintln!("citron: watch: {why}; connecting again"),
        Progress::Retrying { why, pause } => eprintln!("citron: watch: {why}; connecting again in {} ms", pause.as_millis()),
        other => eprintln!("citron: watch: {other:?}"),
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
async fn on_finished(c: &Client, a: &WatchArgs, ev: &FeedEvent) -> anyhow::Result<Option<ExitCode>> {
    let Some(d) = &ev.detail else { return Ok(None) };
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
        .env("CITRON_EVENT_ID", ev.seq.to_string())
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
