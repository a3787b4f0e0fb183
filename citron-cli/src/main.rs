//! The `citron` command: validate, render and serve job descriptions.

mod args;
mod boot_test;
mod client;
mod render;

use std::io::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{bail, Context as _};
use citron_core::job::{JobDescription, RenderContext};
use citron_core::lab::LabConfig;
use citron_core::namespace::{Dut, DutId};
use citron_core::GatewayError;
use citron_lab::server::ServerBuilder;
use clap::Parser;

use args::{Cli, Command, StateCommand};
use citron_lab::state::{State, StateUrl};

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("citron: error: {e:#}");
            ExitCode::from(2)
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Validate { lab, jobs } => validate(lab.as_deref(), &jobs),
        Command::Render { job, dut, lab } => render::render(&load_lab(lab.as_deref())?, &job, &DutId(dut)),
        Command::BootTest(args) => Ok(boot_test::run(args)),
        Command::Results(args) => client::run(args),
        Command::Openapi => {
            std::io::stdout().lock().write_all(citron_lab::api::openapi_json().as_bytes()).context("cannot write the document")?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Serve { lab, jobs, http, tftp, nbd, api, advertise, data, state } => {
            let rt = tokio::runtime::Runtime::new().context("cannot start the async runtime")?;
            rt.block_on(serve(ServeArgs { lab, jobs, http, tftp, nbd, api, advertise, data, state }))
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

fn validate(lab: Option<&Path>, jobs: &[PathBuf]) -> anyhow::Result<ExitCode> {
    let lab = load_lab(lab)?;
    let dut = lab.duts.first().cloned().unwrap_or_else(|| Dut::new("placeholder-dut", []));
    let mut bad = false;
    let stderr = std::io::stderr();
    for path in jobs {
        // Shape and render problems together: one run shows everything to fix.
        let r = JobDescription::check_file(path, &offline_context(&lab, &dut, path)).map(|_| ());
        if let Err(e) = r {
            bad = true;
            let _ = writeln!(stderr.lock(), "{e}");
        }
    }
    Ok(if bad { ExitCode::from(1) } else { ExitCode::SUCCESS })
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
}

/// `off` or an address.
fn addr(flag: &str, v: &str) -> anyhow::Result<Option<SocketAddr>> {
    if v == "off" {
        return Ok(None);
    }
    v.parse().map(Some).with_context(|| format!("--{flag} {v:?}: expected IP:PORT (e.g. 127.0.0.1:0) or off"))
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
    let (gw, state) = citron_lab::state::open_gateway(lab, &a.data, a.state.as_deref())?;
    let results = citron_lab::results::Results::open(&state, &a.data).context("cannot open the lab's results")?;
    let server = ServerBuilder::new(gw.clone())
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
    let load = async {
        // Every stored job first (the DUTs given a --job get theirs below instead), so that
        // each DUT serves what it served before the restart.
        let skip: Vec<DutId> = jobs.iter().map(|(id, _)| id.clone()).collect();
        for (id, e) in gw.restore_jobs(&skip).await {
            tracing::error!(dut = %id, error = %e, "its stored job could not be loaded again: it has no job until one is set");
        }
        for (id, path) in &jobs {
            match gw.set_trusted_job_file(id, path).await {
                Ok(()) => {}
                Err(GatewayError::Job(e)) => {
                    eprintln!("{e}");
                    return Ok(Some(ExitCode::from(1)));
                }
                Err(e) => return Err(anyhow::Error::new(e).context(format!("cannot load {} for {id}", path.display()))),
            }
        }
        Ok::<_, anyhow::Error>(None)
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
            return Ok(code);
        }
        Some(Err(e)) => {
            server.shutdown().await;
            return Err(e);
        }
        None => {
            signals.exit_on_next();
            server.shutdown().await;
            return Ok(ExitCode::SUCCESS);
        }
    }
    {
        let mut out = std::io::stdout().lock();
        writeln!(out, "{}", server.listening_line())?;
        out.flush()?;
    }
    tracing::info!("{}", server.listening_line());
    let s = signals.recv().await;
    tracing::info!(
        "{s}: shutting down (transfers in flight may finish for {:?}; a second signal stops at once)",
        citron_protocols::http::SHUTDOWN_GRACE
    );
    signals.exit_on_next();
    server.shutdown().await;
    Ok(ExitCode::SUCCESS)
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
