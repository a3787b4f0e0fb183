//! `citron results …`: the client side of a remote citron's results API.
//!
//! Every client command reaches the server given by `--server URL` (or `$CITRON_SERVER`) with the
//! token of `--token-file FILE` (or `$CITRON_TOKEN`). Answers are the API's JSON, printed as
//! they come; files are streamed in and out with their SHA-256 checked on both sides.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{bail, Context as _};
use citron_lab::results::{Run, Status};
use clap::{Args, Subcommand};
use futures::StreamExt as _;
use sha2::{Digest as _, Sha256};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

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
    /// JOB's runs (the first page), optionally of one revision.
    Runs {
        /// The job's name.
        job: String,
        /// Only the runs of this revision.
        #[arg(long)]
        revision: Option<String>,
    },
}

/// A remote citron's API.
pub(crate) struct Client {
    pub(crate) base: String,
    pub(crate) token: Option<String>,
    http: reqwest::Client,
}

impl Client {
    pub(crate) fn new(r: &Remote) -> anyhow::Result<Client> {
        let Some(server) = r.server.as_deref() else { bail!("no server: give --server URL or set $CITRON_SERVER") };
        let token = match &r.token_file {
            Some(f) => {
                Some(std::fs::read_to_string(f).with_context(|| format!("cannot read --token-file {}", f.display()))?.trim().to_string())
            }
            None => std::env::var("CITRON_TOKEN").ok().map(|t| t.trim().to_string()),
        };
        citron_fetch::install_crypto_provider();
        // Redirects are followed by hand: the blob is on the same server, with the same token.
        let http = reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build().context("cannot build an HTTP client")?;
        Ok(Client { base: server.trim_end_matches('/').to_string(), token, http })
    }

    pub(crate) fn req(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        let r = self.http.request(method, format!("{}{path}", self.base));
        match &self.token {
            Some(t) => r.bearer_auth(t),
            None => r,
        }
    }

    /// Sends `r`; an answer outside 2xx/3xx is an error with the server's message.
    pub(crate) async fn send(&self, r: reqwest::RequestBuilder) -> anyhow::Result<reqwest::Response> {
        let resp = r.send().await.with_context(|| format!("cannot reach {}", self.base))?;
        if resp.status().is_client_error() || resp.status().is_server_error() {
            let code = resp.status();
            let body: serde_json::Value = resp.json().await.unwrap_or_default();
            bail!("{code}: {}", body["error"].as_str().unwrap_or("(no message)"));
        }
        Ok(resp)
    }

    async fn json<T: serde::de::DeserializeOwned>(&self, r: reqwest::RequestBuilder) -> anyhow::Result<T> {
        self.send(r).await?.json().await.context("the server's answer is not what this citron expects")
    }
}

/// Runs a `citron results` command.
pub fn run(a: ResultsArgs) -> anyhow::Result<ExitCode> {
    let rt = tokio::runtime::Runtime::new().context("cannot start the async runtime")?;
    rt.block_on(async move {
        let c = Client::new(&a.remote)?;
        match a.command {
            ResultsCommand::Upload { job, files, revision, platform, status } => {
                upload(&c, &job, &files, revision, platform, &status).await
            }
            ResultsCommand::Latest { job, file, platform, output } => latest(&c, &job, file.as_deref(), platform, output.as_deref()).await,
            ResultsCommand::Watch(w) => crate::watch::watch(&c, w).await,
            ResultsCommand::Runs { job, revision } => {
                let mut r = c.req(reqwest::Method::GET, &format!("/api/v1/results/{job}/runs"));
                if let Some(rev) = revision {
                    r = r.query(&[("revision", rev)]);
                }
                let runs: Vec<Run> = c.json(r).await?;
                println!("{}", serde_json::to_string_pretty(&runs)?);
                Ok(ExitCode::SUCCESS)
            }
        }
    })
}

/// SHA-256 of a file, read in chunks.
async fn sha256_of(path: &Path) -> anyhow::Result<String> {
    let mut f = tokio::fs::File::open(path).await.with_context(|| format!("cannot open {}", path.display()))?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf).await.with_context(|| format!("cannot read {}", path.display()))?;
        if n == 0 {
            return Ok(hex::encode(h.finalize()));
        }
        h.update(&buf[..n]);
    }
}

async fn upload(
    c: &Client,
    job: &str,
    files: &[String],
    revision: Option<String>,
    platform: Option<String>,
    status: &str,
) -> anyhow::Result<ExitCode> {
    let run: Run = c
        .json(
            c.req(reqwest::Method::POST, &format!("/api/v1/results/{job}/runs"))
                .json(&serde_json::json!({"revision": revision, "platform": platform})),
        )
        .await
        .context("cannot open a run")?;
    for spec in files {
        let (name, file) = match spec.split_once('=') {
            Some((n, f)) => (n.to_string(), PathBuf::from(f)),
            None => {
                let p = PathBuf::from(spec);
                let n = p.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
                (n, p)
            }
        };
        let sha = sha256_of(&file).await?;
        let f = tokio::fs::File::open(&file).await.with_context(|| format!("cannot open {}", file.display()))?;
        let len = f.metadata().await?.len();
        let stream = futures::stream::unfold(f, |mut f| async move {
            let mut buf = vec![0u8; 1 << 20];
            match f.read(&mut buf).await {
                Ok(0) => None,
                Ok(n) => {
                    buf.truncate(n);
                    Some((Ok::<_, std::io::Error>(bytes::Bytes::from(buf)), f))
                }
                Err(e) => Some((Err(e), f)),
            }
        });
        let path: String =
            name.split('/').map(|s| url::form_urlencoded::byte_serialize(s.as_bytes()).collect::<String>()).collect::<Vec<_>>().join("/");
        let r = c
            .req(reqwest::Method::PUT, &format!("/api/v1/results/{job}/runs/{}/files/{path}", run.id))
            .header("X-Checksum-SHA256", &sha)
            .header(reqwest::header::CONTENT_LENGTH, len)
            .body(reqwest::Body::wrap_stream(stream));
        c.send(r).await.with_context(|| format!("cannot upload {} as {name}", file.display()))?;
        eprintln!("citron: {name}: sha256 {sha}, {len} bytes");
    }
    let done: Run = c
        .json(
            c.req(reqwest::Method::POST, &format!("/api/v1/results/{job}/runs/{}/finish", run.id))
                .json(&serde_json::json!({"status": status})),
        )
        .await
        .context("cannot finish the run")?;
    println!("{}", serde_json::to_string_pretty(&done)?);
    Ok(ExitCode::SUCCESS)
}

async fn latest(c: &Client, job: &str, file: Option<&str>, platform: Option<String>, output: Option<&Path>) -> anyhow::Result<ExitCode> {
    let mut q = vec![("status", Status::Success.name().to_string())];
    if let Some(p) = platform {
        q.push(("platform", p));
    }
    let path = match file {
        Some(f) => format!("/api/v1/results/{job}/latest/files/{f}"),
        None => format!("/api/v1/results/{job}/latest"),
    };
    let resp = c.send(c.req(reqwest::Method::GET, &path).query(&q)).await?;
    let Some(to) = resp.headers().get(reqwest::header::LOCATION).and_then(|v| v.to_str().ok()).map(String::from) else {
        bail!("the server did not redirect to the run ({})", resp.status());
    };
    let Some(_) = file else {
        let run: Run = c.json(c.req(reqwest::Method::GET, &to)).await?;
        println!("{}", serde_json::to_string_pretty(&run)?);
        return Ok(ExitCode::SUCCESS);
    };
    let sha = resp.headers().get("x-checksum-sha256").and_then(|v| v.to_str().ok()).unwrap_or_default().to_string();
    let Some(out) = output else {
        println!("{sha}");
        return Ok(ExitCode::SUCCESS);
    };
    // Written beside the target and renamed once its digest is checked: never a partial file.
    let dir = out.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let tmp = tempfile::NamedTempFile::new_in(dir).with_context(|| format!("cannot write in {}", dir.display()))?;
    let mut f = tokio::fs::File::from_std(tmp.reopen()?);
    let mut body = c.send(c.req(reqwest::Method::GET, &to)).await?.bytes_stream();
    let mut h = Sha256::new();
    while let Some(chunk) = body.next().await {
        let chunk = chunk.context("the download was cut off")?;
        h.update(&chunk);
        f.write_all(&chunk).await?;
    }
    f.sync_all().await?;
    let got = hex::encode(h.finalize());
    if got != sha {
        bail!("the download's SHA-256 is {got}, not {sha}: nothing written");
    }
    tmp.persist(out).with_context(|| format!("cannot write {}", out.display()))?;
    println!("{sha}");
    Ok(ExitCode::SUCCESS)
}
