//! HTTP backend (placeholder until the HTTP branch lands: refuses to start).

use std::future::Future;
use std::io;
use std::sync::Arc;

use citron_core::serve::Catalog;

/// Serves HTTP GET and HEAD on `listener` until `shutdown` completes.
pub async fn serve(
    _listener: tokio::net::TcpListener,
    _catalog: Arc<dyn Catalog>,
    _shutdown: impl Future<Output = ()> + Send + 'static,
) -> io::Result<()> {
    Err(io::Error::new(io::ErrorKind::Unsupported, "the HTTP backend is not built yet"))
}
