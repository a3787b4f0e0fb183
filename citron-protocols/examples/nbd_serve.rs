//! Serves one NBD export to 127.0.0.1 until killed: for the crash test and the benchmark, until
//! `citron serve --nbd` exists.
//!
//! `nbd_serve DATA_DIR PORT NAME raw:SIZE|image:PATH [boot|job_start|never] [ro]`
//! prints `listening on ADDR` once it accepts connections.

use std::sync::Arc;

use citron_core::job::{DiskKind, DiskSpec, ResetOn, ResolvedJob, Source, Step};
use citron_core::lab::LabConfig;
use citron_core::namespace::Dut;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    if args.len() < 5 {
        return Err("usage: nbd_serve DATA_DIR PORT NAME raw:SIZE|image:PATH [boot|job_start|never] [ro]".into());
    }
    let kind = match args[4].split_once(':') {
        Some(("raw", n)) => DiskKind::Raw { size_bytes: n.parse()? },
        Some(("image", p)) => DiskKind::Image { source: Source::File(std::fs::canonicalize(p)?), sha256: None },
        _ => return Err(format!("bad disk {:?}", args[4]).into()),
    };
    let reset_on = match args.get(5).map(String::as_str) {
        Some("boot") => ResetOn::Boot,
        Some("never") => ResetOn::Never,
        _ => ResetOn::JobStart,
    };
    let readonly = args.get(6).is_some_and(|a| a == "ro");
    // Every client of this server is one address (127.0.0.1): the idle-connection test and the
    // benchmark open hundreds of connections from it, which a lab's per-DUT caps would refuse.
    let mut lab = LabConfig::default_lab();
    lab.limits.nbd_connections_per_dut = 4096;
    lab.limits.connections_per_peer = 4096;
    let gw = citron_fetch::gateway(lab, std::path::Path::new(&args[1]))?;
    gw.add_dut(Dut::new("local", ["127.0.0.1".parse()?]))?;
    let disk = DiskSpec { name: args[3].clone(), readonly, kind, reset_on, shared: false, expiration: None };
    let job = ResolvedJob {
        name: None,
        results: None,
        origin: "nbd_serve".into(),
        start: Step { nbd: vec![disk], ..Step::default() },
        continue_: None,
    };
    gw.set_resolved_job(&"local".into(), job).await?;
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", args[2].parse::<u16>()?)).await?;
    println!("listening on {}", listener.local_addr()?);
    citron_protocols::nbd::serve(listener, Arc::new(gw), std::future::pending()).await?;
    Ok(())
}
