//! Serves every regular file of a directory over TFTP to one DUT, for benchmarks
//! (`benches/tftp.sh`) until `citron serve --tftp` can do it.
//!
//! ```text
//! cargo run --release -p citron-protocols --example tftp_serve -- DIR 127.0.0.1:6969 [CLIENT_IP]
//! ```
//! The DUT `dut1` gets address CLIENT_IP (default 127.0.0.1, where tftp-hpa, atftp and curl
//! send from on loopback). Prints `ready` once listening; stops on Ctrl-C or SIGTERM.

use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::Arc;

use citron_core::job::{FileSpec, Lifetime, ResolvedJob, Source, Step};
use citron_core::lab::LabConfig;
use citron_core::namespace::{Dut, DutId};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()))
        .init();
    let mut args = std::env::args().skip(1);
    let usage = "usage: tftp_serve DIR ADDR [CLIENT_IP]";
    let dir = PathBuf::from(args.next().ok_or(usage)?).canonicalize()?;
    let addr = args.next().ok_or(usage)?;
    let client: IpAddr = args.next().as_deref().unwrap_or("127.0.0.1").parse()?;

    let state = tempfile::tempdir()?;
    let mut lab = LabConfig::default_lab();
    lab.duts = vec![Dut::new("dut1", [client])];
    let gw = citron_fetch::gateway(lab, state.path())?;
    let mut files = Vec::new();
    for e in std::fs::read_dir(&dir)? {
        let e = e?;
        if e.file_type()?.is_file() {
            let name = e.file_name().into_string().map_err(|n| format!("file name {n:?} is not UTF-8"))?;
            files.push(FileSpec { path: name, source: Source::File(e.path()), sha256: None, lifetime: Lifetime::default() });
        }
    }
    let job = ResolvedJob {
        name: None,
        results: None,
        origin: dir.display().to_string(),
        start: Step { files: [(citron_core::serve::Space::TFTP, files)].into(), ..Step::default() },
        continue_: None,
    };
    gw.set_resolved_job(&DutId::from("dut1"), job).await?;

    let socket = tokio::net::UdpSocket::bind(&addr).await?;
    println!("ready {}", socket.local_addr()?);
    let shutdown = async {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).expect("SIGTERM handler");
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
    };
    citron_protocols::tftp::serve(socket, Arc::new(gw), shutdown).await?;
    Ok(())
}
