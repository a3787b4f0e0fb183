//! TFTP backend: RFC 1350 read requests with RFC 2347 option negotiation (`blksize` RFC 2348,
//! `timeout` and `tsize` RFC 2349, `windowsize` RFC 7440), and write requests (uploads into the
//! DUT's run, where its job takes results: [`Catalog::write`] decides), lockstep, with
//! `blksize`, `timeout` and `tsize`.
//!
//! Every request is answered from the requesting DUT's namespace: the backend passes the source
//! address and the file name to the [`Catalog`], which decides (DUT, path, lifetime, generated
//! files, access log); refusals become ERROR packets in [`error_packet`].
//!
//! # Layout
//! - [`packet`]: pure decoding/encoding of the wire format.
//! - [`session`]: one transfer as a pure state machine (windows, retransmission, block-number
//!   rollover); option negotiation in `negotiate`, re-exported there.
//! - [`netascii`]: the netascii encoding as a streaming converter.
//! - [`receive`]: one write transfer as a pure state machine; `upload`: its task and socket.
//! - `server`: sockets, timers and tasks ([`serve`], [`serve_with`], [`Config`]).
//! - `body`: a transfer's bytes, read in chunks ahead (octet) or converted as they stream
//!   (netascii).
//! - `admission`: transfer slots (global and per DUT), the answer budget for sources that are no
//!   DUT, log lines once per source, ERRORs no larger than their request.
//! - `sys`: the per-packet system calls (a transfer's socket, non-blocking file reads).
//!
//! # Example
//! ```no_run
//! # async fn run(catalog: std::sync::Arc<dyn citron_core::serve::Catalog>) -> std::io::Result<()> {
//! let socket = tokio::net::UdpSocket::bind("127.0.0.1:6969").await?;
//! citron_protocols::tftp::serve(socket, catalog, async { let _ = tokio::signal::ctrl_c().await; }).await
//! # }
//! ```

use std::future::Future;
use std::io;
use std::sync::Arc;

use citron_core::serve::Catalog;

mod admission;
mod body;
mod error;
mod negotiate;
pub mod netascii;
pub mod packet;
pub mod receive;
mod server;
pub mod session;
mod sys;
mod upload;

pub use error::error_packet;
pub use server::{serve_with, Config};

/// Serves TFTP read requests on `socket` until `shutdown` completes, with [`Config::default`].
///
/// Each transfer runs on its own ephemeral socket bound to `socket`'s local address; `socket`
/// only receives requests. See [`serve_with`] for cancel safety.
pub async fn serve(
    socket: tokio::net::UdpSocket,
    catalog: Arc<dyn Catalog>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> io::Result<()> {
    serve_with(socket, catalog, Config::default(), shutdown).await
}
