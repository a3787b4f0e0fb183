//! `citron serve` without a state store: the lab held in memory only, as the Python `Server`
//! and `citron boot-test` run it. The "no state" side of the state store's A/B benchmark
//! (`benches/state-ab.sh`, BENCHMARKS.md "The state store on the serving path"): the same
//! serving code, the same logging (one access line per request through a writer thread), but
//! nothing recorded beyond the process.
//!
//! ```text
//! cargo build --release -p citron-lab --example serve_in_memory
//! target/release/examples/serve_in_memory --lab LAB.yaml --job DUT=JOB.yaml --data DIR \
//!     [--http ADDR|off] [--tftp ADDR|off]
//! ```
//!
//! Prints `citron serve`'s listening line once the job is loaded; serves until killed.

use std::io::{BufWriter, Write as _};
use std::net::SocketAddr;
use std::path::PathBuf;

use citron_core::lab::LabConfig;
use citron_core::namespace::DutId;
use citron_lab::server::ServerBuilder;

fn arg(name: &str) -> Option<String> {
    let args: Vec<String> = std::env::args().collect();
    args.iter().position(|a| a == name).and_then(|i| args.get(i + 1).cloned())
}

fn addr(name: &str) -> Option<SocketAddr> {
    match arg(name).as_deref() {
        None | Some("off") => None,
        Some(a) => Some(a.parse().unwrap_or_else(|e| panic!("{name} {a}: {e}"))),
    }
}

/// As `citron serve` logs (`citron-cli/src/logging.rs`, text format): `RUST_LOG` (default
/// `info`), lines written by a thread of their own.
fn logging() -> tracing_appender::non_blocking::WorkerGuard {
    let (writer, guard) = tracing_appender::non_blocking(BufWriter::new(std::io::stderr()));
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt().with_writer(writer).with_ansi(false).with_env_filter(filter).init();
    guard
}

fn main() {
    let _logs = logging();
    let lab = LabConfig::from_file(&PathBuf::from(arg("--lab").expect("--lab LAB.yaml"))).expect("the lab file loads");
    let job = arg("--job").expect("--job DUT=JOB.yaml");
    let (dut, path) = job.split_once('=').expect("--job DUT=JOB.yaml");
    let data = PathBuf::from(arg("--data").expect("--data DIR"));
    let rt = tokio::runtime::Runtime::new().expect("a runtime");
    rt.block_on(async {
        let gw = citron_fetch::gateway(lab, &data).expect("the gateway opens");
        let server = ServerBuilder::new(gw.clone())
            .http(addr("--http"))
            .tftp(addr("--tftp"))
            .nbd(None)
            .api(None)
            .start()
            .await
            .expect("the servers start");
        gw.set_trusted_job_file(&DutId::from(dut), path.as_ref()).await.expect("the job loads");
        let mut out = std::io::stdout().lock();
        writeln!(out, "{}", server.listening_line()).expect("stdout");
        out.flush().expect("stdout");
        drop(out);
        std::future::pending::<()>().await;
    });
}
