//! `citron results …`: the client side of a remote citron's results API.
//!
//! Every client command reaches the server given by `--server URL` (or `$CITRON_SERVER`) with the
//! token of `--token-file FILE` (or `$CITRON_TOKEN`). Answers are the API's JSON, printed as
//! they come; files are streamed in and out with their SHA-256 checked on both sides. The HTTP
//! side is `citron-client`, the same client as Python's `citron.Client`.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{bail, Context as _};
use citron_client::{Client, Select, Status, Upload};
use clap::{Args, Subcommand};

/// Runs `citron results runs` prints: the first page.
const RUNS_PAGE: u32 = 100;

/// Where the server is and who is asking: the same two for every client command.
#[derive(Debug, Args)]
pub struct Remote {
    /// The citron API to talk to (`http://HOST:PORT`).
    #[arg(long, value_name = "URL", env = "CITRON_SERVER", global = true)]
    server: Option<String>,
    /// A file holding the token (the lab's `api_token` or one it minted).
    #[arg(long, value_name = "FILE", global = true)]
    token_file: Option<PathBuf>,
}

/// `citron results …`.
#[derive(Debug, Args)]
pub struct ResultsArgs {
    #[command(flatten)]
    remote: Remote,
    #[command(subcommand)]
    command: ResultsCommand,
}

/// The results commands.
#[derive(Debug, Subcommand)]
pub enum ResultsCommand {
    /// Opens a run of JOB, uploads FILEs into it (each under its file name, or the path given
    /// as `NAME=FILE`), and finishes it; prints the run.
    Upload {
        /// The job's name.
        job: String,
        /// The files: `FILE` or `PATH_IN_RUN=FILE`.
        #[arg(required = true)]
        files: Vec<String>,
        /// What was built or tested.
        #[arg(long)]
        revision: Option<String>,
        /// What it ran on.
        #[arg(long)]
        platform: Option<String>,
        /// How the run ended.
        #[arg(long, default_value = "success", value_parser = ["success", "failure", "unknown"])]
        status: String,
    },
    /// The newest successful run of JOB (printed), or with --file the SHA-256 of one of its
    /// files (printed), downloaded and checked with -o.
    Latest {
        /// The job's name.
        job: String,
        /// A file of the run.
        #[arg(long, value_name = "PATH")]
        file: Option<String>,
        /// Only runs on this platform.
        #[arg(long)]
        platform: Option<String>,
        /// Where to write the file (with --file).
        #[arg(short = 'o', long, value_name = "OUT", requires = "file")]
        output: Option<PathBuf>,
    },
    /// Follows the lab's event feed and runs CMD (with `sh -c`) once for every new finished
    /// run of JOB that matches, with the run in its environment: CITRON_JOB, CITRON_RUN,
    /// CITRON_REVISION, CITRON_PLATFORM, CITRON_STATUS, CITRON_EVENT_ID, CITRON_SERVER,
    /// CITRON_TOKEN, CITRON_RUN_URL, CITRON_LATEST_URL, and for the --file (or the run's only
    /// file) CITRON_FILE, CITRON_SHA256 and CITRON_BLOB_URL. No polling: a dropped connection
    /// is resumed where it stopped (Last-Event-ID).
    Watch(crate::watch::WatchArgs),
    /// Replay by revision: computes the input key JOB would have on the DUT now (the lab's
    /// salt, the revision, the job rendered for the DUT, its tags and the digests of the job's
    /// artifacts) and prints the answer (JSON) with the newest successful run of that key.
    /// Exit codes: 0 such a run exists (replay it: `citron results replay RUN`), 1 none
    /// (run the test), 2 error. A key whose runs both succeeded and failed is `"flaky": true`.
    Find {
        /// The job's name.
        #[arg(long)]
        job: String,
        /// The revision to find (default: the job's `results.revision`).
        #[arg(long)]
        revision: Option<String>,
        /// The DUT to compute the key for (default: the DUT of the job's newest run).
        #[arg(long)]
        dut: Option<String>,
    },
    /// Prints run RUN's stored console to stdout and exits with its stored status: 0 success,
    /// 1 failure, 3 unknown (2: error, or a run still running).
    Replay {
        /// The run's id.
        run: i64,
    },
    /// JOB's runs (the first page), optionally of one revision.
    Runs {
        /// The job's name.
        job: String,
        /// Only the runs of this revision.
        #[arg(long)]
        revision: Option<String>,
    },
}

/// The shared client (`citron-client`, the one Python's `citron.Client` is made of) for
/// `--server` / `--token-file` or their environment variables.
pub(crate) fn client(r: &Remote) -> anyhow::Result<Client> {
    let Some(server) = r.server.as_deref() else { bail!("no server: give --server URL or set $CITRON_SERVER") };
    let token = match &r.token_file {
        Some(f) => Some(Client::token_from_file(f).with_context(|| format!("cannot read --token-file {}", f.display()))?),
        None => std::env::var("CITRON_TOKEN").ok().map(|t| t.trim().to_string()),
    };
    Ok(Client::new(server, token)?)
}

/// Runs a `citron results` command.
pub fn run(a: ResultsArgs) -> anyhow::Result<ExitCode> {
    let rt = tokio::runtime::Runtime::new().context("cannot start the async runtime")?;
    rt.block_on(async move {
        let c = client(&a.remote)?;
        match a.command {
            ResultsCommand::Upload { job, files, revision, platform, status } => {
                upload(&c, &job, &files, revision, platform, &status).await
            }
            ResultsCommand::Latest { job, file, platform, output } => latest(&c, &job, file.as_deref(), platform, output.as_deref()).await,
            ResultsCommand::Watch(w) => crate::watch::watch(&c, w).await,
            ResultsCommand::Find { job, revision, dut } => {
                let found = c.find(&job, revision.as_deref(), dut.as_deref()).await?;
                println!("{}", serde_json::to_string_pretty(&found)?);
                if found.flaky {
                    eprintln!("citron: runs with this key both succeeded and failed: flaky");
                }
                Ok(match found.run {
                    Some(_) => ExitCode::SUCCESS,
                    None => ExitCode::from(FIND_NONE),
                })
            }
            ResultsCommand::Replay { run } => replay(&c, run).await,
            ResultsCommand::Runs { job, revision } => {
                let page = c.runs(&job, revision.as_deref(), 0, RUNS_PAGE).await?;
                println!("{}", serde_json::to_string_pretty(&page.runs)?);
                Ok(ExitCode::SUCCESS)
            }
        }
    })
}

/// `find`'s exit code when no successful run has the key.
const FIND_NONE: u8 = 1;
/// `replay`'s exit code for a run that ended without saying how.
const REPLAY_UNKNOWN: u8 = 3;

async fn replay(c: &Client, id: i64) -> anyhow::Result<ExitCode> {
    use std::io::Write as _;
    let run = c.run_by_id(id).await.with_context(|| format!("cannot read run {id}"))?;
    let code = match run.status {
        Status::Success => ExitCode::SUCCESS,
        Status::Failure => ExitCode::from(1),
        Status::Unknown => ExitCode::from(REPLAY_UNKNOWN),
        Status::Running => bail!("run {id} of {} is still running: nothing to replay yet", run.job),
    };
    let console = c.console(&run.job, id, citron_lab::results::CONSOLE_MAX_BYTES).await.context("cannot read the run's console")?;
    let mut out = std::io::stdout().lock();
    out.write_all(&console).and_then(|()| out.flush()).context("cannot write the console")?;
    eprintln!(
        "citron: replayed run {id} of {} (revision {}): {}{}",
        run.job,
        run.revision.as_deref().unwrap_or("none"),
        run.status.name(),
        if run.flaky { ", flaky: another run with the same inputs ended otherwise" } else { "" }
    );
    Ok(code)
}

async fn upload(
    c: &Client,
    job: &str,
    files: &[String],
    revision: Option<String>,
    platform: Option<String>,
    status: &str,
) -> anyhow::Result<ExitCode> {
    let run = c.open_run(job, revision.as_deref(), platform.as_deref()).await.context("cannot open a run")?;
    for spec in files {
        let (name, file) = match spec.split_once('=') {
            Some((n, f)) => (n.to_string(), PathBuf::from(f)),
            None => {
                let p = PathBuf::from(spec);
                let n = p.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
                (n, p)
            }
        };
        let f = c
            .upload(job, run.id, &name, Upload::File(file.clone()))
            .await
            .with_context(|| format!("cannot upload {} as {name}", file.display()))?;
        eprintln!("citron: {name}: sha256 {}, {} bytes", f.sha256, f.size);
    }
    let status = Status::parse(status).with_context(|| format!("no status {status:?}"))?;
    let done = c.finish(job, run.id, status).await.context("cannot finish the run")?;
    println!("{}", serde_json::to_string_pretty(&done)?);
    Ok(ExitCode::SUCCESS)
}

async fn latest(c: &Client, job: &str, file: Option<&str>, platform: Option<String>, output: Option<&Path>) -> anyhow::Result<ExitCode> {
    let sel = Select { platform, status: Some(Status::Success.name().to_string()) };
    let Some(file) = file else {
        let run = c.latest_run(job, &sel).await?;
        println!("{}", serde_json::to_string_pretty(&run)?);
        return Ok(ExitCode::SUCCESS);
    };
    let l = c.latest_file(job, file, &sel).await?;
    if let Some(out) = output {
        // Written beside the target and renamed once its digest is checked: never a partial file.
        c.download_blob(&l, out).await?;
    }
    println!("{}", l.sha256);
    Ok(ExitCode::SUCCESS)
}
