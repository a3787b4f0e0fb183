//! A running VM: QEMU as a child process (inside its namespace when it has one), supervised by
//! a task that streams its console out and reports how it ended, and stops it on request.

use std::process::Stdio;
use std::time::Duration;

use tokio::io::AsyncReadExt as _;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

use super::netns::HostLink;
use super::VmError;

/// How long a stopped QEMU gets to exit after SIGTERM before it is killed.
const STOP_GRACE: Duration = Duration::from_secs(5);

/// How a VM ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Exit {
    /// Stopped by citron (powered off).
    Stopped,
    /// QEMU exited by itself: the guest powered off (`success`), or QEMU failed or was killed.
    Exited {
        /// Whether QEMU exited with status 0.
        success: bool,
        /// Its status, as words.
        status: String,
    },
}

/// A running VM; dropping it stops it.
#[derive(Debug)]
pub struct Machine {
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<Exit>,
}

impl Machine {
    /// Starts `argv` (`argv[0]` the program), inside `netns` when given (`ip netns exec`; the
    /// namespace is deleted once QEMU is gone). Its stdout and stderr go to `console` as they
    /// come; `on_exit` is called once, however it ended.
    pub fn start(
        argv: Vec<String>,
        netns: Option<HostLink>,
        console: mpsc::Sender<Vec<u8>>,
        on_exit: impl FnOnce(&Exit) + Send + 'static,
    ) -> Result<Machine, VmError> {
        let mut full: Vec<String> = Vec::new();
        if let Some(ns) = &netns {
            full.extend(["ip", "netns", "exec", ns.name()].map(String::from));
        }
        full.extend(argv);
        let program = full.first().cloned().ok_or_else(|| VmError::Qemu("no command".into()))?;
        let mut child = tokio::process::Command::new(&program)
            .args(&full[1..])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| VmError::Qemu(format!("cannot start {program}: {e}")))?;
        for stream in [
            child.stdout.take().map(|s| Box::new(s) as Box<dyn tokio::io::AsyncRead + Unpin + Send>),
            child.stderr.take().map(|s| Box::new(s) as Box<dyn tokio::io::AsyncRead + Unpin + Send>),
        ] {
            let Some(mut stream) = stream else { continue };
            let tx = console.clone();
            tokio::spawn(async move {
                let mut buf = vec![0u8; 8192];
                while let Ok(n @ 1..) = stream.read(&mut buf).await {
                    if tx.send(buf[..n].to_vec()).await.is_err() {
                        break;
                    }
                }
            });
        }
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            let exit = tokio::select! {
                st = child.wait() => match st {
                    Ok(st) => Exit::Exited { success: st.success(), status: st.to_string() },
                    Err(e) => Exit::Exited { success: false, status: e.to_string() },
                },
                // Asked to stop, or the Machine was dropped.
                _ = stopped => {
                    if let Some(pid) = child.id().and_then(|p| i32::try_from(p).ok()) {
                        // SAFETY: kill(2) on our own child's pid; no memory is touched.
                        unsafe {
                            libc::kill(pid, libc::SIGTERM);
                        }
                    }
                    if tokio::time::timeout(STOP_GRACE, child.wait()).await.is_err() {
                        let _ = child.kill().await;
                    }
                    Exit::Stopped
                }
            };
            if let Some(ns) = netns {
                let _ = tokio::task::spawn_blocking(move || drop(ns)).await;
            }
            on_exit(&exit);
            exit
        });
        Ok(Machine { stop: Some(stop), task })
    }

    /// Whether QEMU still runs.
    pub fn running(&self) -> bool {
        !self.task.is_finished()
    }

    /// Stops it (SIGTERM, then SIGKILL after a grace period) and answers how it ended (it may
    /// have ended by itself before).
    pub async fn stop(mut self) -> Exit {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        (&mut self.task).await.unwrap_or(Exit::Stopped)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn console_streams_and_the_end_is_reported() {
        let (tx, mut rx) = mpsc::channel(8);
        let (etx, erx) = oneshot::channel();
        let m = Machine::start(vec!["sh".into(), "-c".into(), "echo booted; exit 3".into()], None, tx, move |e| {
            let _ = etx.send(e.clone());
        })
        .unwrap();
        assert_eq!(rx.recv().await.unwrap(), b"booted\n");
        let e = erx.await.unwrap();
        assert!(matches!(&e, Exit::Exited { success: false, status } if status.contains('3')), "{e:?}");
        // Stopping one that ended by itself answers how it ended.
        assert_eq!(m.stop().await, e);

        let (tx, _rx) = mpsc::channel(8);
        let m = Machine::start(vec!["sleep".into(), "30".into()], None, tx, |_| {}).unwrap();
        assert!(m.running());
        assert_eq!(m.stop().await, Exit::Stopped);
    }
}
