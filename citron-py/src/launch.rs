//! Starting and stopping the protocol backends inside the bindings' tokio runtime.
//!
//! Interim launcher over `citron_protocols::{http,tftp,nbd}::serve` until
//! `citron_protocols::server::ServerBuilder` is in the workspace.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use citron_core::serve::Catalog;
use citron_core::Gateway;
use tokio::runtime::Runtime;
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// Where each backend should listen (`None`: not started).
#[derive(Debug, Clone, Default)]
pub(crate) struct Listen {
    pub http: Option<SocketAddr>,
    pub tftp: Option<SocketAddr>,
    pub nbd: Option<SocketAddr>,
}

/// Running backends.
pub(crate) struct Running {
    /// The addresses actually bound (port 0 resolved).
    pub bound: Listen,
    stop: watch::Sender<bool>,
    tasks: Vec<(&'static str, JoinHandle<std::io::Result<()>>)>,
}

/// Ends when `true` is sent or the sender is dropped.
async fn shutdown(mut rx: watch::Receiver<bool>) {
    while !*rx.borrow() {
        if rx.changed().await.is_err() {
            break;
        }
    }
}

/// Binds every requested address and spawns its backend. On a bind error nothing stays open.
pub(crate) fn start(rt: &Runtime, gateway: &Gateway, listen: &Listen) -> Result<Running, String> {
    let catalog: Arc<dyn Catalog> = Arc::new(gateway.clone());
    rt.block_on(async {
        let (tx, rx) = watch::channel(false);
        let mut bound = Listen::default();
        // Bind everything first, so that a taken port fails before anything runs.
        let http = match listen.http {
            Some(a) => Some(tokio::net::TcpListener::bind(a).await.map_err(|e| format!("HTTP: cannot listen on {a}: {e}"))?),
            None => None,
        };
        let tftp = match listen.tftp {
            Some(a) => Some(tokio::net::UdpSocket::bind(a).await.map_err(|e| format!("TFTP: cannot bind {a}: {e}"))?),
            None => None,
        };
        let nbd = match listen.nbd {
            Some(a) => Some(tokio::net::TcpListener::bind(a).await.map_err(|e| format!("NBD: cannot listen on {a}: {e}"))?),
            None => None,
        };
        let mut tasks = Vec::new();
        if let Some(l) = http {
            bound.http = l.local_addr().ok();
            tasks.push(("HTTP", tokio::spawn(citron_protocols::http::serve(l, catalog.clone(), shutdown(rx.clone())))));
        }
        if let Some(s) = tftp {
            bound.tftp = s.local_addr().ok();
            tasks.push(("TFTP", tokio::spawn(citron_protocols::tftp::serve(s, catalog.clone(), shutdown(rx.clone())))));
        }
        if let Some(l) = nbd {
            bound.nbd = l.local_addr().ok();
            tasks.push(("NBD", tokio::spawn(citron_protocols::nbd::serve(l, catalog.clone(), shutdown(rx.clone())))));
        }
        Ok(Running { bound, stop: tx, tasks })
    })
}

impl Running {
    /// Tells every backend to stop and waits (bounded) for them; returns the backends' errors.
    pub(crate) fn stop(self, rt: &Runtime, grace: Duration) -> Result<(), String> {
        let _ = self.stop.send(true);
        rt.block_on(async move {
            let mut errors = Vec::new();
            for (name, mut task) in self.tasks {
                match tokio::time::timeout(grace, &mut task).await {
                    Ok(Ok(Ok(()))) => {}
                    Ok(Ok(Err(e))) => errors.push(format!("{name} backend: {e}")),
                    Ok(Err(e)) => errors.push(format!("{name} backend crashed: {e}")),
                    Err(_) => {
                        task.abort();
                        let _ = task.await;
                        errors.push(format!("{name} backend did not stop within {grace:?}; it was cancelled"));
                    }
                }
            }
            if errors.is_empty() {
                Ok(())
            } else {
                Err(errors.join("; "))
            }
        })
    }

    /// Stops without waiting (for `Drop`).
    pub(crate) fn abort(self) {
        let _ = self.stop.send(true);
        for (_, t) in self.tasks {
            t.abort();
        }
    }
}
