//! Idle NBD connections must be cheap: a lab keeps DUTs attached to their disks for hours.
//! Measured on the example server as a child process, so the client's sockets do not count.

mod nbd_util;

use nbd_util::*;

fn rss_kib(pid: u32) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = s.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

#[test]
fn idle_connections_cost_under_8_kib_each() {
    const N: usize = 256;
    let t = tempfile::tempdir().unwrap();
    let server = Child::spawn(&t.path().join("data"), "idle", "raw:1048576", "job_start");
    let addr: std::net::SocketAddr = server.addr.split('/').next().unwrap().parse().unwrap();
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(async {
        // Warm up: the first connection creates the overlay and the runtime's buffers.
        let mut warm = Vec::new();
        for _ in 0..8 {
            let mut r = Raw::connect(addr, "127.0.0.1").await;
            assert_eq!(r.go("idle").await, citron_protocols::nbd::wire::rep::ACK);
            assert_eq!(r.request(citron_protocols::nbd::wire::cmd::READ, 0, 0, 4096, b"").await.0, 0);
            warm.push(r);
        }
        drop(warm);
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        let before = rss_kib(server.pid());
        let mut conns = Vec::with_capacity(N);
        for _ in 0..N {
            let mut r = Raw::connect(addr, "127.0.0.1").await;
            assert_eq!(r.go("idle").await, citron_protocols::nbd::wire::rep::ACK);
            conns.push(r);
        }
        // One request on the last one proves they are all in transmission.
        let last = conns.last_mut().unwrap();
        assert_eq!(last.request(citron_protocols::nbd::wire::cmd::READ, 0, 0, 512, b"").await.0, 0);
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        let after = rss_kib(server.pid());
        let per_conn = (after.saturating_sub(before) * 1024) / N as u64;
        eprintln!("NBD idle connections: RSS {before} KiB -> {after} KiB, {per_conn} bytes per connection");
        assert!(per_conn < 8192, "{per_conn} bytes per idle connection");
    });
}
