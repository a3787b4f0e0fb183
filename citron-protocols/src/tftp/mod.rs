//! TFTP backend (placeholder until the TFTP branch lands: refuses to start).

use std::future::Future;
use std::io;
use std::sync::Arc;

use citron_core::serve::Catalog;

/// Serves TFTP read requests on `socket` until `shutdown` completes.
pub async fn serve(
    _socket: tokio::net::UdpSocket,
    _catalog: Arc<dyn Catalog>,
    _shutdown: impl Future<Output = ()> + Send + 'static,
) -> io::Result<()> {
    Err(io::Error::new(io::ErrorKind::Unsupported, "the TFTP backend is not built yet"))
}
