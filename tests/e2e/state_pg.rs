//! A real PostgreSQL for the state tests, started by the test itself: `initdb` and `pg_ctl` in a
//! temporary directory, on a free loopback port, as `nobody` when the tests run as root (the
//! server refuses to run as root). Stopped (`-m immediate`) when dropped.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use citron_tests::{run, strict};

/// A running PostgreSQL.
pub struct Postgres {
    dir: tempfile::TempDir,
    bin: PathBuf,
    /// `postgres://citron:PASSWORD@127.0.0.1:PORT/postgres` (trust auth: the password is there
    /// to check it never shows).
    pub url: String,
    /// The server's options (`pg_ctl -o`), to start it again.
    opts: String,
    /// The port.
    pub port: u16,
}

/// The directory of Debian's PostgreSQL binaries (the newest version), or `initdb` on PATH.
fn bin_dir() -> Option<PathBuf> {
    let mut versions: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql").ok()?.flatten().map(|e| e.path().join("bin")).collect();
    versions.sort();
    versions.into_iter().rev().find(|b| b.join("initdb").exists()).or_else(|| {
        let p = std::env::var_os("PATH")?;
        std::env::split_paths(&p).find(|d| d.join("initdb").exists() && d.join("pg_ctl").exists())
    })
}

fn as_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// `cmd args…`, as `nobody` when running as root.
fn pg_cmd(bin: &Path, tool: &str, args: &[&str]) -> Command {
    let exe = bin.join(tool);
    if as_root() {
        let mut c = Command::new("runuser");
        c.args(["-u", "nobody", "--"]).arg(exe).args(args);
        c
    } else {
        let mut c = Command::new(exe);
        c.args(args);
        c
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").expect("a free port").local_addr().expect("its address").port()
}

impl Postgres {
    /// Starts one, or `None` (with SKIPPED printed) when PostgreSQL is not installed; panics
    /// instead under `CITRON_E2E_STRICT=1`.
    pub fn start() -> Option<Postgres> {
        Self::start_with(false)
    }

    /// [`start`](Self::start) with TLS on (a self-signed certificate made by `openssl`), for
    /// `sslmode=require`.
    pub fn start_tls() -> Option<Postgres> {
        Self::start_with(true)
    }

    fn start_with(tls: bool) -> Option<Postgres> {
        let Some(bin) = bin_dir() else {
            let msg = "PostgreSQL (initdb, pg_ctl) is not installed (scripts/setup-debian.sh installs it)";
            assert!(!strict(), "{msg}; CITRON_E2E_STRICT=1 forbids skipping");
            eprintln!("SKIPPED: {msg}");
            return None;
        };
        let dir = tempfile::tempdir().expect("a temporary directory");
        let mut ssl = String::new();
        if tls {
            let (crt, key) = (dir.path().join("server.crt"), dir.path().join("server.key"));
            let (c, k) = (crt.to_str().unwrap(), key.to_str().unwrap());
            let args = ["req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", k, "-out", c, "-subj", "/CN=localhost", "-days", "1"];
            let o = run("openssl", &args, None, Duration::from_secs(60));
            assert_eq!(o.code, 0, "openssl: {}", o.stderr);
            std::fs::set_permissions(&key, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
            ssl = format!(" -c ssl=on -c ssl_cert_file={c} -c ssl_key_file={k}");
        }
        if as_root() {
            let st = Command::new("chown").args(["-R", "nobody"]).arg(dir.path()).status().expect("chown runs");
            assert!(st.success(), "chown nobody {}", dir.path().display());
        }
        let data = dir.path().join("data");
        let d = data.to_str().expect("a UTF-8 path");
        let out =
            pg_cmd(&bin, "initdb", &["-D", d, "-U", "citron", "--auth=trust", "-E", "UTF8", "--no-sync"]).output().expect("initdb runs");
        assert!(out.status.success(), "initdb: {}", String::from_utf8_lossy(&out.stderr));
        // A few tries: another test may take the port between our probe and the server's bind.
        for _ in 0..5 {
            let port = free_port();
            let opts = format!("-p {port} -c listen_addresses=127.0.0.1 -k {} -c fsync=off{ssl}", dir.path().display());
            let log = dir.path().join("log");
            let st = pg_cmd(&bin, "pg_ctl", &["-D", d, "-o", &opts, "-l", log.to_str().unwrap(), "-w", "-t", "30", "start"])
                .output()
                .expect("pg_ctl runs");
            if st.status.success() {
                let url = format!("postgres://citron:hunter2@127.0.0.1:{port}/postgres");
                return Some(Postgres { dir, bin, url, port, opts });
            }
            eprintln!("pg_ctl start: {}", std::fs::read_to_string(&log).unwrap_or_default());
        }
        panic!("PostgreSQL did not start");
    }

    /// Stops the server at once (`-m immediate`, as a crash).
    pub fn stop(&self) {
        let data = self.dir.path().join("data");
        let o =
            pg_cmd(&self.bin, "pg_ctl", &["-D", data.to_str().unwrap(), "-m", "immediate", "-w", "stop"]).output().expect("pg_ctl runs");
        assert!(o.status.success(), "pg_ctl stop: {}", String::from_utf8_lossy(&o.stderr));
    }

    /// Starts it again after [`stop`](Self::stop), on the same port.
    pub fn start_again(&self) {
        let data = self.dir.path().join("data");
        let log = self.dir.path().join("log");
        let args = ["-D", data.to_str().unwrap(), "-o", &self.opts, "-l", log.to_str().unwrap(), "-w", "-t", "30", "start"];
        let o = pg_cmd(&self.bin, "pg_ctl", &args).output().expect("pg_ctl runs");
        assert!(o.status.success(), "pg_ctl start: {}", std::fs::read_to_string(&log).unwrap_or_default());
    }

    /// `psql -c sql` on the database; its stdout.
    pub fn psql(&self, sql: &str) -> String {
        let port = self.port.to_string();
        let psql = self.bin.join("psql");
        let out =
            run(psql, &["-h", "127.0.0.1", "-p", &port, "-U", "citron", "-d", "postgres", "-tAc", sql], None, Duration::from_secs(30));
        assert_eq!(out.code, 0, "psql {sql}: {}", out.stderr);
        out.stdout
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        let data = self.dir.path().join("data");
        let _ = pg_cmd(&self.bin, "pg_ctl", &["-D", data.to_str().unwrap_or(""), "-m", "immediate", "stop"]).output();
    }
}
