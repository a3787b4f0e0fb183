//! NBD backend: fixed-newstyle negotiation (`NBD_OPT_GO`, `INFO`, `LIST`, `EXPORT_NAME`,
//! `ABORT`, `STRUCTURED_REPLY`) and the transmission commands `READ`, `WRITE`, `FLUSH`, `TRIM`,
//! `WRITE_ZEROES` and `DISC`, with `FUA`.
//!
//! Shaped like the TFTP backend: pure codec, pure state machines, I/O in one place.
//!
//! # Layout
//! - [`wire`]: bytes to messages and back, no I/O.
//! - `negotiate`: the negotiation as a pure state machine (bytes in, replies out); what a DUT
//!   may list, describe or open is asked of the core through a small trait.
//! - `transmit`: the transmission phase as a pure state machine (requests in, commands and
//!   protocol refusals out, the bytes-in-flight budget, large reads, disconnect).
//! - `connection`: the one type that owns a connection's socket and buffers and drives both
//!   machines, carrying commands out on the core's checked
//!   [`Export`](citron_core::serve::Export).
//! - `error`: the one mapping from the core's refusals to option replies and errnos.
//! - `slots`: connections per DUT.
//! - [`serve`]: the shared accept loop (`crate::listen`).
//!
//! # Who decides
//! The core: what a DUT may list and open, the default export (the empty name), and for every
//! request its range, write permission and whether the disk is still there (the export answers
//! `OutOfRange`, `NoSpace`, `ReadOnly` or `Gone`). This backend only bounds what the protocol
//! itself bounds: option and payload sizes, the commands and flags it knows.
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

use citron_core::serve::Catalog;

mod connection;
mod error;
mod negotiate;
mod slots;
mod transmit;
pub mod wire;

/// The largest read or write citron accepts (and advertises as maximum block size).
pub const MAX_PAYLOAD: u32 = 32 << 20;

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
        connection::Connection::run(stream, addr.ip().to_canonical(), catalog.clone(), slots.clone(), stop)
    })
    .await
}
