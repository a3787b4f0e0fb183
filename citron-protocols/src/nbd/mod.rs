//! NBD backend (placeholder until the NBD branch lands: refuses to start).

use std::future::Future;
use std::io;
use std::sync::Arc;

use citron_core::serve::Catalog;

/// Serves NBD clients on `listener` until `shutdown` completes.
pub async fn serve(
    _listener: tokio::net::TcpListener,
    _catalog: Arc<dyn Catalog>,
    _shutdown: impl Future<Output = ()> + Send + 'static,
) -> io::Result<()> {
    Err(io::Error::new(io::ErrorKind::Unsupported, "the NBD backend is not built yet"))
}
