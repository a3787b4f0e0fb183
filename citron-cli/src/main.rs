//! The `citron` command: validate, render and serve job descriptions.

mod args;
mod boot_test;
mod client;
mod logging;
mod pool;
mod progress;
mod render;
mod validate;
mod watch;

use std::io::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{bail, Context as _};
use citron_core::job::RenderContext;
use citron_core::lab::LabConfig;
use citron_core::namespace::{Dut, DutId};
use citron_core::GatewayError;
use citron_lab::server::ServerBuilder;
use clap::Parser;

use args::{Cli, Command, StateCommand};
use citron_lab::state::feed::NewEvent;
use citron_lab::state::{State, StateUrl};

fn main() -> ExitCode {
    let cli = Cli::parse();
    // Held to the end: dropping it writes the log lines still queued.
    let _logs = logging::init(cli.log_format);
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("citron: error: {}", chain_once(&e));
            ExitCode::from(2)
        }
    }
}

/// The error and its causes joined by `: ` (as `{:#}` does), each said once: many errors
/// already include their cause in their own message, which `{:#}` would print a second time.
fn chain_once(e: &anyhow::Error) -> String {
    let mut out = String::new();
    for cause in e.chain() {
        let s = cause.to_string();
        if out.contains(&s) {
            continue;
        }
        if !out.is_empty() {
            out.push_str(": ");
        }
        out.push_str(&s);
    }
    out
}

fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Validate { lab, dut, jobs } => validate::run(lab.as_deref(), dut.as_deref(), &jobs),
        Command::Render { job, dut, lab, format } => {
            render::render(&load_lab(lab.as_deref())?, &job, &DutId(dut), format == args::RenderFormat::Json)
        }
        Command::BootTest(args) => Ok(boot_test::run(args)),
        Command::Results(args) => client::run(args),
        Command::Pool(args) => pool::run(args),
        Command::Openapi => {
            std::io::stdout().lock().write_all(citron_lab::api::openapi_json().as_bytes()).context("cannot write the document")?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Serve { lab, jobs, http, tftp, nbd, api, advertise, data, state, gateway } => {
            let rt = tokio::runtime::Runtime::new().context("cannot start the async runtime")?;
            rt.block_on(serve(ServeArgs { lab, jobs, http, tftp, nbd, api, advertise, data, state, gateway }))
        }
        Command::Completions { shell } => {
            let mut cmd = <Cli as clap::CommandFactory>::command();
            clap_complete::generate(shell, &mut cmd, "citron", &mut std::io::stdout().lock());
            Ok(ExitCode::SUCCESS)
        }
        Command::Schema { kind } => {
            let schema = match kind {
                args::SchemaKind::Job => citron_core::job::job_schema(),
                args::SchemaKind::Lab => LabConfig::schema(),
            };
            let text = serde_json::to_string_pretty(&schema).context("cannot encode the schema")?;
            writeln!(std::io::stdout().lock(), "{text}").context("cannot write the schema")?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Man => {
            let mut out = std::io::stdout().lock();
            clap_mangen::Man::new(<Cli as clap::CommandFactory>::command()).render(&mut out).context("cannot write the man page")?;
            Ok(ExitCode::SUCCESS)
        }
        Command::State(StateCommand::Migrate { state, data }) => {
            let s = State::open(&StateUrl::parse(state.as_deref(), &data)?)?;
            println!("citron: state {} at schema version {}", s.url(), s.schema_version());
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn load_lab(path: Option<&Path>) -> anyhow::Result<LabConfig> {
    Ok(match path {
        Some(p) => LabConfig::from_file(p)?,
        None => LabConfig::default_lab(),
    })
}

/// The render context `validate` and `render` use: the endpoints `citron serve` would have with
/// its default addresses, the lab's variables, and the job's own directory as a `file:` root
/// (jobs given on the command line are trusted, as with `serve --job`).
pub(crate) fn offline_context(lab: &LabConfig, dut: &Dut, job: &Path) -> RenderContext {
    let job_dir = job.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    RenderContext::for_dut(lab, dut, &citron_lab::server::default_endpoints(), Some(job_dir))
}

struct ServeArgs {
    lab: Option<PathBuf>,
    jobs: Vec<String>,
    http: String,
    tftp: String,
    nbd: String,
    api: String,
    advertise: Option<std::net::IpAddr>,
    data: PathBuf,
    state: Option<String>,
    gateway: Option<String>,
}

/// `off`, an `IP:PORT`, or a `HOST:PORT` (the first address the name resolves to, IPv4
/// first: `localhost:8080` listens on 127.0.0.1).
fn addr(flag: &str, v: &str) -> anyhow::Result<Option<SocketAddr>> {
    use std::net::ToSocketAddrs as _;
    if v == "off" {
        return Ok(None);
    }
    if let Ok(a) = v.parse() {
        return Ok(Some(a));
    }
    let expected = || format!("--{flag} {v:?}: expected IP:PORT (e.g. 127.0.0.1:0), HOST:PORT (localhost:8080) or off");
    let mut found: Vec<SocketAddr> = v.to_socket_addrs().with_context(expected)?.collect();
    found.sort_by_key(|a| a.is_ipv6());
    found.into_iter().next().map(Some).with_context(expected)
}

async fn serve(a: ServeArgs) -> anyhow::Result<ExitCode> {
    // First of all, so that a signal during start-up (a long --job download) stops citron
    // cleanly instead of killing it.
    let mut signals = Signals::install()?;
    let lab = load_lab(a.lab.as_deref())?;
    let mut jobs = Vec::new();
    for j in &a.jobs {
        let Some((dut, path)) = j.split_once('=') else { bail!("--job {j:?}: expected DUT=JOB.yaml") };
        let id = DutId::from(dut);
        if !lab.duts.iter().any(|d| d.id == id) {
            bail!("--job {j:?}: the lab has no DUT {dut:?}");
        }
        jobs.push((id, PathBuf::from(path)));
    }
    // Every argument is checked before anything is created on disk.
    let (http, tftp, nbd, api) = (addr("http", &a.http)?, addr("tftp", &a.tftp)?, addr("nbd", &a.nbd)?, addr("api", &a.api)?);
    // Connecting and migrating (a blocking call, once, before anything serves). Every error
    // names the state's URL (without password), the data directory or the job itself.
    let name = a.gateway.clone().unwrap_or_else(citron_lab::gateways::default_name);
    let (gw, state, membership) = citron_lab::state::open_lab_gateway(lab, &a.data, a.state.as_deref(), &name)?;
    if let Some((id, _)) = jobs.iter().find(|(id, _)| gw.dut(id).is_none()) {
        bail!("--job {id}=…: DUT {id:?} is served by another gateway (its `gateway:` in the lab file), not by {name:?}");
    }
    let feed = state.feed().clone();
    let mut results = citron_lab::results::Results::open(&state, &a.data).context("cannot open the lab's results")?;
    if let Some(store) = &gw.lab().store {
        results = results.with_shared_store(store).context("cannot use the lab's shared store for results")?;
    }
    let server = ServerBuilder::new(gw.clone())
        .feed(Some(feed.clone()))
        .membership(Some(membership.clone()))
        .http(http)
        .tftp(tftp)
        .nbd(nbd)
        .api(api)
        .advertise(a.advertise)
        .state(Some(state.info()))
        .results(Some(results))
        .start()
        .await?;
    // Jobs are loaded once the servers are bound, so that their templates see the real ports.
    // A signal meanwhile drops the loading: a download in flight stops and its temporary file
    // is deleted (at the latest when the runtime shuts down, before the process exits).
    // Until they are all loaded the lab is not ready (`/api/v1/ready`), and the DUTs given a
    // --job are marked as loading from the start, so that their requests wait for their job
    // instead of being told "not found" while the jobs before theirs load.
    let starting = gw.starting();
    let mut marks: Vec<_> = jobs.iter().map(|(id, _)| Some(gw.expect_job(id))).collect();
    let load = async {
        // Every stored job first (the DUTs given a --job get theirs below instead), so that
        // each DUT serves what it served before the restart.
        let skip: Vec<DutId> = jobs.iter().map(|(id, _)| id.clone()).collect();
        for (id, e) in gw.restore_jobs(&skip).await {
            tracing::error!(dut = %id, error = %e, "its stored job could not be loaded again: it has no job until one is set");
        }
        for (i, (id, path)) in jobs.iter().enumerate() {
            let r = gw.set_trusted_job_file(id, path).await;
            marks[i] = None;
            match r {
                Ok(()) => {
                    let job = gw.job_record(id).map(|r| r.origin.name);
                    feed.emit(NewEvent::new("job_set").dut(id.0.clone()).job(job).actor("serve --job"));
                }
                Err(GatewayError::Job(e)) => {
                    eprintln!("{e}");
                    return Ok(Some(ExitCode::from(1)));
                }
                // Every failed fetch, once each, at its `url:` (the lines name the file already).
                Err(GatewayError::Fetches(f)) => {
                    eprintln!("{f}");
                    return Ok(Some(ExitCode::from(1)));
                }
                Err(e) => return Err(anyhow::Error::new(e).context(format!("cannot load {} for {id}", path.display()))),
            }
        }
        Ok::<_, anyhow::Error>(None)
    };
    let leave = || {
        let m = membership.clone();
        async move {
            let _ = tokio::task::spawn_blocking(move || m.leave()).await;
        }
    };
    let loaded = tokio::select! {
        r = load => Some(r),
        s = signals.recv() => {
            tracing::info!("{s} during start-up: stopping before every job is loaded");
            None
        }
    };
    match loaded {
        Some(Ok(None)) => {}
        Some(Ok(Some(code))) => {
            server.shutdown().await;
            leave().await;
            return Ok(code);
        }
        Some(Err(e)) => {
            server.shutdown().await;
            leave().await;
            return Err(e);
        }
        None => {
            signals.exit_on_next();
            server.shutdown().await;
            leave().await;
            return Ok(ExitCode::SUCCESS);
        }
    }
    drop(starting);
    {
        let mut out = std::io::stdout().lock();
        writeln!(out, "{}", server.listening_line())?;
        out.flush()?;
    }
    tracing::info!("{}", server.listening_line());
    notify_systemd(&[sd_notify::NotifyState::Ready]);
    let s = signals.recv().await;
    notify_systemd(&[sd_notify::NotifyState::Stopping]);
    tracing::info!(
        "{s}: shutting down (transfers in flight may finish for {:?}; a second signal stops at once)",
        citron_protocols::http::SHUTDOWN_GRACE
    );
    signals.exit_on_next();
    server.shutdown().await;
    leave().await;
    Ok(ExitCode::SUCCESS)
}

/// Tells systemd (a `Type=notify` unit: $NOTIFY_SOCKET is set) how the service is; nothing
/// when not started by systemd.
fn notify_systemd(state: &[sd_notify::NotifyState]) {
    if std::env::var_os("NOTIFY_SOCKET").is_none() {
        return;
    }
    if let Err(e) = sd_notify::notify(false, state) {
        tracing::warn!(error = %e, "cannot notify systemd ($NOTIFY_SOCKET)");
    }
}

/// SIGINT and SIGTERM, handled from the start of `serve` on.
struct Signals {
    int: tokio::signal::unix::Signal,
    term: tokio::signal::unix::Signal,
}

impl Signals {
    fn install() -> anyhow::Result<Signals> {
        use tokio::signal::unix::{signal, SignalKind};
        Ok(Signals {
            int: signal(SignalKind::interrupt()).context("cannot install the SIGINT handler")?,
            term: signal(SignalKind::terminate()).context("cannot install the SIGTERM handler")?,
        })
    }

    /// The next signal's name.
    async fn recv(&mut self) -> &'static str {
        tokio::select! {
            _ = self.int.recv() => "SIGINT",
            _ = self.term.recv() => "SIGTERM",
        }
    }

    /// From now on a signal ends the process at once, without waiting for transfers: exit code
    /// 130 (SIGINT) or 143 (SIGTERM), as a shell reports a process killed by them. Partial
    /// downloads left in the cache's `tmp/` are deleted at the next start.
    fn exit_on_next(mut self) {
        tokio::spawn(async move {
            let s = self.recv().await;
            eprintln!("citron: {s} again: exiting without waiting for transfers");
            std::process::exit(if s == "SIGINT" { 130 } else { 143 });
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cause_already_in_the_message_is_not_repeated() {
        let inner = std::io::Error::other("connection refused");
        #[derive(Debug, thiserror::Error)]
        #[error("http://x/a: {0}")]
        struct Fetch(#[source] std::io::Error);
        let e = anyhow::Error::new(Fetch(inner)).context("cannot load job.yaml for dut1");
        assert_eq!(chain_once(&e), "cannot load job.yaml for dut1: http://x/a: connection refused");
        let e = anyhow::Error::new(std::io::Error::other("disk full")).context("cannot write");
        assert_eq!(chain_once(&e), "cannot write: disk full");
    }
}
