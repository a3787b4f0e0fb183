//! NBD backend: fixed-newstyle negotiation (`NBD_OPT_GO`, `INFO`, `LIST`, `EXPORT_NAME`,
//! `ABORT`, `STRUCTURED_REPLY`) and the transmission commands `READ`, `WRITE`, `FLUSH`, `TRIM`,
//! `WRITE_ZEROES` and `DISC`, with `FUA`.
//!
//! # Layout
//! - `wire`: bytes to messages and back, no I/O.
//! - `handshake`: the negotiation, asking the catalog for exports.
//! - `session`: the transmission phase of one connection.
//! - `slots`: connections per DUT.
//! - [`serve`]: the accept loop.
//!
//! # Bounds (the lab's `limits:`)
//! Negotiation must finish within `header_timeout`; a DUT may hold `nbd_connections_per_dut`
//! open exports; a connection holds at most `nbd_bytes_in_flight` of read data not yet written
//! to its socket (larger reads are sent in pieces), and is closed after `nbd_idle_timeout`
//! without requests when that is set.
//!
//! Each DUT (by source address) lists and opens only its own exports and the lab's shared ones;
//! all its connections to one export share one device (its copy-on-write overlay), so writes on
//! one are seen by the others and `NBD_FLAG_CAN_MULTI_CONN` holds.

use std::future::Future;
use std::io;
use std::sync::Arc;
use std::time::Duration;

use citron_core::serve::{Catalog, ServeError};
use tokio::sync::watch;

mod handshake;
mod session;
mod slots;
pub mod wire;

/// The largest read or write citron accepts (and advertises as maximum block size).
pub const MAX_PAYLOAD: u32 = 32 << 20;

/// How a [`ServeError`] is answered: the option reply during negotiation, the errno during
/// transmission.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct NbdError {
    /// `NBD_REP_ERR_*`.
    pub rep: u32,
    /// `NBD_E*`.
    pub errno: u32,
}

/// The one mapping from the core's refusals to NBD. Names a DUT may not see answer like names
/// that do not exist.
pub(crate) fn nbd_error(e: &ServeError) -> NbdError {
    use wire::{errno, rep};
    let (rep, errno) = match e {
        ServeError::UnknownDut(_) => (rep::ERR_UNKNOWN, errno::EPERM),
        ServeError::NotFound(_) => (rep::ERR_UNKNOWN, errno::EINVAL),
        ServeError::BadPath(_) => (rep::ERR_INVALID, errno::EINVAL),
        ServeError::Forbidden(_) => (rep::ERR_UNKNOWN, errno::EPERM),
        ServeError::Gone(_) => (rep::ERR_UNKNOWN, errno::ESHUTDOWN),
        ServeError::ReadOnly(_) => (rep::ERR_POLICY, errno::EPERM),
        // Writes past the end answer NBD_ENOSPC instead (`session::check`).
        ServeError::OutOfRange { .. } => (rep::ERR_INVALID, errno::EINVAL),
        ServeError::Io(io) => (
            rep::ERR_INVALID,
            match io.kind() {
                io::ErrorKind::StorageFull => errno::ENOSPC,
                io::ErrorKind::OutOfMemory => errno::ENOMEM,
                io::ErrorKind::PermissionDenied => errno::EPERM,
                _ => errno::EIO,
            },
        ),
    };
    NbdError { rep, errno }
}

/// Serves NBD clients on `listener` until `shutdown` completes; open connections are closed then.
/// The catalog's [`limits`](Catalog::limits) cap connections per listener and per peer.
///
/// ```no_run
/// # async fn run(catalog: std::sync::Arc<dyn citron_core::serve::Catalog>) -> std::io::Result<()> {
/// let listener = tokio::net::TcpListener::bind("127.0.0.1:10809").await?;
/// citron_protocols::nbd::serve(listener, catalog, tokio::signal::ctrl_c().map(|_| ())).await
/// # }
/// # use futures::FutureExt;
/// ```
pub async fn serve(
    listener: tokio::net::TcpListener,
    catalog: Arc<dyn Catalog>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> io::Result<()> {
    // The shared accept loop: connection caps, backoff on EMFILE, drain on shutdown.
    let limits = catalog.limits();
    let caps = crate::listen::Caps::from_limits(&limits);
    let slots = slots::DutSlots::new(limits.nbd_connections_per_dut);
    crate::listen::serve("nbd", listener, caps, shutdown, move |stream, addr, stop| {
        let _ = stream.set_nodelay(true);
        connection(stream, addr.ip().to_canonical(), catalog.clone(), slots.clone(), stop)
    })
    .await
}

async fn connection(
    mut stream: tokio::net::TcpStream,
    peer: std::net::IpAddr,
    catalog: Arc<dyn Catalog>,
    slots: Arc<slots::DutSlots>,
    mut stop: watch::Receiver<bool>,
) {
    let limits = catalog.limits();
    // A peer that connects and says nothing (or dribbles) would hold a descriptor forever.
    let deadline = limits.header_timeout.non_zero().unwrap_or(Duration::MAX);
    let negotiated = tokio::select! {
        r = tokio::time::timeout(deadline, handshake::negotiate(&mut stream, peer, &*catalog, &slots)) => match r {
            Ok(r) => r,
            Err(_) => {
                tracing::debug!(%peer, timeout = ?deadline, "NBD negotiation not finished in time (limits.header_timeout); closing");
                return;
            }
        },
        _ = stop.changed() => return,
    };
    drop(catalog);
    let n = match negotiated {
        Ok(Some(n)) => n,
        Ok(None) => return,
        Err(e) => {
            tracing::debug!(%peer, error = %e, "NBD negotiation ended");
            return;
        }
    };
    tracing::debug!(%peer, export = %n.export.info.name, structured = n.structured, "NBD transmission");
    let bounds = session::Bounds::new(&limits);
    let result = session::transmission(stream, n.export, n.structured, bounds, &mut stop).await;
    drop(n.slot);
    if let Err(e) = result {
        tracing::debug!(%peer, error = %e, "NBD connection ended");
    }
}
