//! Power commands of `baremetal` DUTs: a shell command with the DUT in its environment,
//! bounded by the DUT's `power.timeout`, its output kept (bounded) for the log and, when it
//! fails, for the quarantine's reason.

use std::process::Stdio;
use std::time::Duration;

use tokio::io::AsyncReadExt as _;

use super::request::DutAttrs;

/// The most output of one command that is kept.
pub const OUTPUT_MAX_BYTES: u64 = 16 << 10;

/// Why a power command did not do its work.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{reason}")]
pub struct PowerFailure {
    /// What went wrong (`power off exited with 3`, `power on did not finish within 5s`).
    pub reason: String,
    /// What it printed (stdout and stderr, at most [`OUTPUT_MAX_BYTES`]).
    pub output: String,
}

/// Runs `cmd` (`what`: `on`, `off`, `cycle`) for `dut` with `sh -c`, its process group killed
/// after `timeout`. `CITRON_DUT_ID`, `CITRON_DUT_IP` (addresses, space-separated),
/// `CITRON_DUT_MAC` are set. Answers its output.
pub async fn run(what: &str, cmd: &str, dut: &DutAttrs, timeout: Duration) -> Result<String, PowerFailure> {
    let ips: Vec<String> = dut.ip.iter().map(|i| i.to_string()).collect();
    let mut c = tokio::process::Command::new("sh");
    c.arg("-c")
        .arg(format!("{{\n{cmd}\n}} 2>&1"))
        .env("CITRON_DUT_ID", &dut.id)
        .env("CITRON_DUT_IP", ips.join(" "))
        .env("CITRON_DUT_MAC", dut.mac.as_deref().unwrap_or(""))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .process_group(0)
        .kill_on_drop(true);
    let mut child = c.spawn().map_err(|e| PowerFailure { reason: format!("power {what}: cannot start sh: {e}"), output: String::new() })?;
    let pid = child.id();
    let mut out = Vec::new();
    let stdout = child.stdout.take();
    let work = async {
        if let Some(s) = stdout {
            // Past the bound, the rest is read and dropped so that the command is not blocked.
            let mut s = s.take(OUTPUT_MAX_BYTES);
            let _ = s.read_to_end(&mut out).await;
            let _ = tokio::io::copy(&mut s.into_inner(), &mut tokio::io::sink()).await;
        }
        child.wait().await
    };
    let res = tokio::time::timeout(timeout, work).await;
    let output = String::from_utf8_lossy(&out).into_owned();
    match res {
        Ok(Ok(st)) if st.success() => {
            tracing::info!(dut = %dut.id, what, output = %output.trim_end(), "pool: power command done");
            Ok(output)
        }
        Ok(Ok(st)) => Err(PowerFailure { reason: format!("power {what} failed ({st})"), output }),
        Ok(Err(e)) => Err(PowerFailure { reason: format!("power {what}: {e}"), output }),
        Err(_) => {
            if let Some(pid) = pid.and_then(|p| i32::try_from(p).ok()) {
                // The whole group: `sh -c` and whatever it started.
                // SAFETY: kill(2) with a negative pid signals that process group; no memory is touched.
                unsafe {
                    libc::kill(-pid, libc::SIGKILL);
                }
            }
            Err(PowerFailure { reason: format!("power {what} did not finish within {}s", timeout.as_secs_f64()), output })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d() -> DutAttrs {
        DutAttrs {
            id: "m1".into(),
            kind: Default::default(),
            arch: None,
            model: None,
            tags: vec![],
            mac: Some("52:54:00:00:00:01".into()),
            ip: vec!["10.0.0.7".parse().unwrap()],
            gateway: None,
        }
    }

    #[tokio::test]
    async fn commands_see_the_dut_fail_and_time_out() {
        let s = Duration::from_secs(5);
        assert_eq!(
            run("on", "echo $CITRON_DUT_ID $CITRON_DUT_IP $CITRON_DUT_MAC", &d(), s).await.unwrap(),
            "m1 10.0.0.7 52:54:00:00:00:01\n"
        );
        let e = run("off", "echo broken >&2; exit 3", &d(), s).await.unwrap_err();
        assert!(e.reason.contains("failed") && e.output == "broken\n", "{e:?}");
        let e = run("on", "echo started; sleep 30", &d(), Duration::from_millis(300)).await.unwrap_err();
        assert!(e.reason.contains("did not finish"), "{e:?}");
        assert_eq!(e.output, "started\n");
    }
}
