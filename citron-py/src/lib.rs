//! # citron-py
//!
//! Python bindings (pyo3): the native module `citron._citron`, re-exported by the pure-Python
//! package `citron` (`python/citron/__init__.py`), with type stubs in `_citron.pyi`.
//!
//! # Layout
//! - `errors`: the exception hierarchy (`CitronError`, `JobError`, …) and the single
//!   `From<Error> for PyErr` mapping every Rust error to its class.
//! - `job`: `JobDescription`, and what rendering gives (`ResolvedJob`, `Artifact`).
//! - `lab`: `Lab`, the DUTs and variables of a lab that is not running.
//! - `server`: `Server`, a gateway and its backends (started by
//!   `citron_lab::server::ServerBuilder`) in the Python process, on its own tokio runtime.
//! - `client`: `Client`, a remote citron's API (every route: results, the pool, DUTs and
//!   jobs, tenants, tokens, the event feed) on the shared Rust client `citron_client`;
//!   `client::types` are the answers (`Run`, …), the same for a remote server and the
//!   in-process one (`Server.client()`).
//! - `aio`: `AsyncClient`, the same surface for asyncio (pyo3-async-runtimes: Rust futures
//!   as awaitables on a tokio runtime, no threads per call).
//!
//! ```python
//! import citron
//! with citron.Server() as srv:                # default lab: dut1 = 127.0.0.2, dut2 = 127.0.0.3
//!     srv.set_job("dut1", open("job.yaml").read())
//!     print(srv.http_address, srv.accesses("dut1"))
//! ```
#![deny(missing_docs)]

mod aio;
mod client;
mod errors;
mod job;
mod lab;
mod server;

use pyo3::prelude::*;

/// The environment variable that turns on citron's log (Rust `tracing`) on stderr, with an
/// `EnvFilter` value such as `info` or `citron_protocols=debug,citron_lab=debug`.
const LOG_ENV: &str = "CITRON_LOG";

/// Backends report failures and refusals through `tracing`; an embedding Python process has no
/// subscriber, so without this they would be invisible.
fn init_logging() {
    if let Ok(filter) = std::env::var(LOG_ENV) {
        let filter = tracing_subscriber::EnvFilter::try_new(&filter).unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
        // Fails only if the process already has a subscriber: keep that one.
        let _ = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).try_init();
    }
}

/// The native half of the `citron` package (import `citron`, not this).
#[pymodule]
fn _citron(m: &Bound<'_, PyModule>) -> PyResult<()> {
    init_logging();
    errors::register(m)?;
    m.add_class::<job::JobDescription>()?;
    m.add_class::<job::ResolvedJob>()?;
    m.add_class::<job::Artifact>()?;
    m.add_class::<lab::Lab>()?;
    m.add_class::<server::Server>()?;
    m.add_class::<client::Client>()?;
    m.add_class::<client::Tenants>()?;
    m.add_class::<client::Tokens>()?;
    m.add_class::<client::Events>()?;
    m.add_class::<client::results::Results>()?;
    m.add_class::<client::results::OpenRun>()?;
    m.add_class::<client::results::Latest>()?;
    m.add_class::<client::runs::RunsIter>()?;
    m.add_class::<client::runs::Watch>()?;
    m.add_class::<client::types::Run>()?;
    m.add_class::<client::types::ResultFile>()?;
    m.add_class::<client::types::HashHit>()?;
    m.add_class::<client::types::Found>()?;
    m.add_class::<client::types::Token>()?;
    m.add_class::<client::types::Tenant>()?;
    m.add_class::<client::types::Event>()?;
    m.add_class::<client::pool::Pool>()?;
    m.add_class::<client::pool::ReservationsIter>()?;
    m.add_class::<client::pool::Reserve>()?;
    m.add_class::<client::types::Reservation>()?;
    m.add_class::<client::types::AllocatedDut>()?;
    m.add_class::<client::types::PoolDut>()?;
    m.add_class::<client::types::Retention>()?;
    m.add_class::<aio::AsyncClient>()?;
    m.add_class::<aio::AsyncTenants>()?;
    m.add_class::<aio::AsyncTokens>()?;
    m.add_class::<aio::AsyncEvents>()?;
    m.add_class::<aio::results::AsyncResults>()?;
    m.add_class::<aio::results::AsyncOpenRun>()?;
    m.add_class::<aio::results::AsyncLatest>()?;
    m.add_class::<aio::runs::AsyncRunsIter>()?;
    m.add_class::<aio::runs::AsyncWatch>()?;
    m.add_class::<aio::pool::AsyncPool>()?;
    m.add_class::<aio::pool::AsyncReservationsIter>()?;
    m.add_class::<aio::pool::AsyncReserve>()?;
    m.add_class::<aio::lab::AsyncDuts>()?;
    m.add_class::<aio::lab::AsyncAccessesIter>()?;
    m.add_class::<client::lab::Duts>()?;
    m.add_class::<client::lab::AccessesIter>()?;
    m.add_class::<client::lab::Dut>()?;
    m.add_class::<client::lab::DutJob>()?;
    m.add_class::<client::lab::Version>()?;
    m.add_class::<client::lab::StateVersion>()?;
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    Ok(())
}
