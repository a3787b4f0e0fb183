//! `citron pool …`: the client side of a remote citron's DUT pool (`--server`, `--token-file`
//! as for `citron results`). Answers are the API's types (`citron_client::Reservation`…),
//! printed as the API's JSON.

use std::process::ExitCode;

use anyhow::Context as _;
use citron_client::Request;
use clap::{Args, Subcommand};

use crate::client::{client, Remote};

/// `citron pool …`.
#[derive(Debug, Args)]
pub struct PoolArgs {
    #[command(flatten)]
    remote: Remote,
    #[command(subcommand)]
    command: PoolCommand,
}

/// The pool commands.
#[derive(Debug, Subcommand)]
pub enum PoolCommand {
    /// Asks for DUTs; prints the reservation (with --wait, once allocated or after that long).
    Request {
        /// Tags every DUT must have.
        #[arg(long = "tag", value_name = "TAG")]
        tags: Vec<String>,
        /// `baremetal` or `vm`.
        #[arg(long)]
        kind: Option<String>,
        /// The architecture.
        #[arg(long)]
        arch: Option<String>,
        /// The model.
        #[arg(long)]
        model: Option<String>,
        /// How many DUTs (all or none).
        #[arg(long, default_value_t = 1)]
        count: u32,
        /// How long to hold them once allocated (`30m`).
        #[arg(long)]
        lifetime: Option<String>,
        /// Higher is served first (capped by the tenant's maximum).
        #[arg(long, default_value_t = 0)]
        priority: i64,
        /// A job file to set on every DUT once allocated.
        #[arg(long, value_name = "FILE")]
        job: Option<std::path::PathBuf>,
        /// Wait until allocated, at most this long (`10m`); exit 1 if still waiting.
        #[arg(long, value_name = "DURATION")]
        wait: Option<String>,
    },
    /// Your reservations (every one for the administrator).
    List {
        /// Only those in this state (`waiting`, `allocated`, ...).
        #[arg(long)]
        state: Option<String>,
    },
    /// Done with a reservation.
    Release {
        /// The reservation's id.
        id: i64,
    },
    /// A reservation failed; keep its DUTs aside for debugging with --keep.
    Fail {
        /// The reservation's id.
        id: i64,
        /// How long to keep the DUTs (`24h`).
        #[arg(long)]
        keep: Option<String>,
    },
    /// A new lifetime for a reservation, within the tenant's maximum.
    Extend {
        /// The reservation's id.
        id: i64,
        /// The new lifetime, from its allocation (`4h`).
        lifetime: String,
    },
    /// One reservation (with an id), or every DUT of the pool and its state (the
    /// administrator's).
    Status {
        /// The reservation's id.
        id: Option<i64>,
    },
    /// Takes a DUT out of the pool or puts it back (the administrator's).
    Dut {
        /// `enable` or `disable`.
        #[arg(value_parser = ["enable", "disable"])]
        action: String,
        /// The DUT's id.
        id: String,
    },
}

/// A duration argument (`24h`, `30m`), or a usage error naming the flag.
fn duration(flag: &str, s: &str) -> anyhow::Result<std::time::Duration> {
    citron_core::units::parse_duration(s).map_err(|e| anyhow::anyhow!("{flag}: {e}"))
}

/// Prints `v` as pretty JSON: the API's answer, as it would come from curl.
fn print(v: &impl serde::Serialize) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string_pretty(v)?);
    Ok(())
}

/// Runs a `citron pool` command.
pub fn run(a: PoolArgs) -> anyhow::Result<ExitCode> {
    let rt = tokio::runtime::Runtime::new().context("cannot start the async runtime")?;
    rt.block_on(async move {
        let c = client(&a.remote)?;
        match a.command {
            PoolCommand::Request { tags, kind, arch, model, count, lifetime, priority, job, wait } => {
                let job = match job {
                    Some(f) => Some(std::fs::read_to_string(&f).with_context(|| format!("cannot read the job {}", f.display()))?),
                    None => None,
                };
                let kind = match kind {
                    Some(k) => Some(
                        serde_json::from_value(serde_json::Value::String(k.clone()))
                            .map_err(|_| anyhow::anyhow!("--kind {k:?}: use baremetal or vm"))?,
                    ),
                    None => None,
                };
                let req = Request { tags, kind, arch, model, count, lifetime, priority, job };
                let mut r = c.request_reservation(&req).await?;
                if let Some(w) = wait {
                    r = c.wait_reservation(r, duration("--wait", &w)?).await?;
                    if r.state == "waiting" {
                        print(&r)?;
                        return Ok(ExitCode::from(1));
                    }
                }
                print(&r)?;
            }
            PoolCommand::List { state } => {
                let mut all = Vec::new();
                let mut after = 0;
                loop {
                    let page = c.reservations(state.as_deref(), after, citron_lab::pool::LIST_PAGE_MAX as u32).await?;
                    all.extend(page.reservations);
                    match page.next {
                        Some(n) => after = n,
                        None => break,
                    }
                }
                print(&all)?;
            }
            PoolCommand::Release { id } => print(&c.release(id).await?)?,
            PoolCommand::Fail { id, keep } => {
                let keep = keep.map(|k| duration("--keep", &k)).transpose()?;
                print(&c.fail(id, keep).await?)?
            }
            PoolCommand::Extend { id, lifetime } => print(&c.extend(id, duration("lifetime", &lifetime)?).await?)?,
            PoolCommand::Status { id: Some(id) } => print(&c.reservation(id, None).await?)?,
            PoolCommand::Status { id: None } => print(&c.pool_duts().await?)?,
            PoolCommand::Dut { action, id } => match action.as_str() {
                "enable" => print(&c.set_pool_dut(&id, true).await?)?,
                "disable" => print(&c.set_pool_dut(&id, false).await?)?,
                other => anyhow::bail!("citron pool dut {other:?}: use enable or disable"),
            },
        }
        Ok(ExitCode::SUCCESS)
    })
}
