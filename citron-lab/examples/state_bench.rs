//! The lab state's throughput: job loads per second, events per second, and the restart time
//! of a lab with many DUTs and jobs, on SQLite or PostgreSQL (BENCHMARKS.md, "Lab state").
//!
//! ```text
//! cargo run --release -p citron-lab --example state_bench -- [--state URL] [--duts N] [--events N]
//! ```
//!
//! Without `--state`, an SQLite file in a temporary directory. With a PostgreSQL URL, its
//! tables should be empty (a new database): the bench adds DUTs through the store.

use std::time::Instant;

use citron_core::job::Origin;
use citron_core::lab::LabConfig;
use citron_core::lifetime::Event;
use citron_lab::state::feed::NewEvent;

fn arg(name: &str) -> Option<String> {
    let args: Vec<String> = std::env::args().collect();
    args.iter().position(|a| a == name).and_then(|i| args.get(i + 1).cloned())
}

fn lab(n: usize) -> LabConfig {
    let mut y = String::from("duts:\n");
    for i in 0..n {
        y.push_str(&format!("  - id: d{i}\n    ip: [\"10.{}.{}.{}\"]\n", i >> 16 & 255, i >> 8 & 255, i & 255));
    }
    LabConfig::from_yaml(&y, "bench-lab.yaml").expect("the generated lab parses")
}

const JOB: &str = "deployment:\n  start:\n    storage:\n      http:\n        - path: /hello\n          data: \"hello {{ machine_id }}\"\n        - path: /secret\n          data: s3cr3t\n          lifetime:\n            access_count: 1\n";

fn main() {
    let n: usize = arg("--duts").and_then(|s| s.parse().ok()).unwrap_or(1000);
    let events: usize = arg("--events").and_then(|s| s.parse().ok()).unwrap_or(100_000);
    let state = arg("--state");
    let dir = tempfile::tempdir().expect("a temporary directory");
    let rt = tokio::runtime::Runtime::new().expect("a runtime");
    let lab = lab(n);
    let engine;
    {
        let (gw, st) = citron_lab::state::open_gateway(lab.clone(), dir.path(), state.as_deref()).expect("the state opens");
        engine = st.info().engine;
        let t = Instant::now();
        rt.block_on(async {
            for d in gw.duts() {
                gw.set_job_yaml(&d.id, JOB, Origin::named(format!("api:{}", d.id))).await.expect("the job loads");
            }
        });
        let s = t.elapsed().as_secs_f64();
        println!("{engine}: {n} job loads in {s:.2} s: {:.0} job loads/s", n as f64 / s);

        let t = Instant::now();
        for d in gw.duts() {
            gw.event(&d.id, Event::Boot).expect("an event");
        }
        st.feed().flush().expect("the feed is written");
        let s = t.elapsed().as_secs_f64();
        println!("{engine}: {n} DUT events (boot: counts reset, durable, then the feed) in {s:.2} s: {:.0} events/s", n as f64 / s);

        let t = Instant::now();
        for i in 0..events {
            st.feed().emit(NewEvent::new("bench").dut(format!("d{}", i % n)).actor("bench"));
        }
        st.feed().flush().expect("the feed is written");
        let s = t.elapsed().as_secs_f64();
        println!("{engine}: {events} feed events (queued, written in batches) in {s:.2} s: {:.0} events/s", events as f64 / s);
    }
    // A restart: open the state, fill the stores, load every stored job again.
    let t = Instant::now();
    let (gw, _st) = citron_lab::state::open_gateway(lab, dir.path(), state.as_deref()).expect("the state opens again");
    let opened = t.elapsed().as_secs_f64();
    let failed = rt.block_on(gw.restore_jobs(&[]));
    assert!(failed.is_empty(), "every job loads again: {:?}", failed.first().map(|f| f.1.to_string()));
    let s = t.elapsed().as_secs_f64();
    println!(
        "{engine}: restart with {n} DUTs and jobs: {s:.2} s ({opened:.2} s to open and load the state, the rest to load the jobs again)"
    );
}
