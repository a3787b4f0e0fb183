//! `citron pool …`: the client side of a remote citron's DUT pool (`--server`, `--token-file`
//! as for `citron results`). Answers are the API's JSON, printed as they come.

use std::process::ExitCode;

use anyhow::Context as _;
use clap::{Args, Subcommand};
use serde_json::{json, Value};

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

/// Runs a `citron pool` command.
pub fn run(a: PoolArgs) -> anyhow::Result<ExitCode> {
    let rt = tokio::runtime::Runtime::new().context("cannot start the async runtime")?;
    rt.block_on(async move {
        let c = client(&a.remote)?;
        let v: Value = match a.command {
            PoolCommand::Request { tags, kind, arch, model, count, lifetime, priority, job, wait } => {
                let job = match job {
                    Some(f) => Some(std::fs::read_to_string(&f).with_context(|| format!("cannot read the job {}", f.display()))?),
                    None => None,
                };
                let body = json!({"tags": tags, "kind": kind, "arch": arch, "model": model, "count": count, "lifetime": lifetime, "priority": priority, "job": job});
                let body = strip_nulls(body);
                let mut r: Value = c.request_reservation(&body).await?;
                if let Some(w) = wait {
                    let total = citron_core::units::parse_duration(&w).map_err(|e| anyhow::anyhow!("--wait: {e}"))?;
                    let end = std::time::Instant::now() + total;
                    while r["state"] == "waiting" && std::time::Instant::now() < end {
                        let left = end.saturating_duration_since(std::time::Instant::now()).min(citron_lab::pool::WAIT_MAX);
                        let id = r["id"].as_i64().context("the answer has no reservation id")?;
                        r = c.reservation(id, Some(left.max(std::time::Duration::from_secs(1)))).await?;
                    }
                    if r["state"] == "waiting" {
                        println!("{}", serde_json::to_string_pretty(&r)?);
                        return Ok(ExitCode::from(1));
                    }
                }
                r
            }
            PoolCommand::List { state } => c.reservations(state.as_deref()).await?,
            PoolCommand::Release { id } => c.release(id).await?,
            PoolCommand::Fail { id, keep } => c.fail(id, keep.as_deref()).await?,
            PoolCommand::Extend { id, lifetime } => c.extend(id, &lifetime).await?,
            PoolCommand::Status { id: Some(id) } => c.reservation(id, None).await?,
            PoolCommand::Status { id: None } => c.pool_duts().await?,
            PoolCommand::Dut { action, id } => match action.as_str() {
                "enable" => c.set_pool_dut(&id, true).await?,
                "disable" => c.set_pool_dut(&id, false).await?,
                other => anyhow::bail!("citron pool dut {other:?}: use enable or disable"),
            },
        };
        println!("{}", serde_json::to_string_pretty(&v)?);
        Ok(ExitCode::SUCCESS)
    })
}

/// `v` without its `null` members (the API takes absent, not null, for "not given").
fn strip_nulls(v: Value) -> Value {
    match v {
        Value::Object(m) => Value::Object(m.into_iter().filter(|(_, v)| !v.is_null()).collect()),
        v => v,
    }
}
