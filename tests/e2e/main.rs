//! End-to-end tests (one binary): the real `citron` binary or in-process servers, driven by
//! real clients over loopback sockets.

mod api;
mod cache;
mod cli;
mod conns;
mod datadir;
mod disk_expiry;
mod dut_runs;
mod extract;
mod feed_revoked;
mod fetch_errors;
mod fulldisk;
mod gateways;
mod http;
mod image;
mod nbd;
mod nbd_limits;
mod ops;
mod pool;
mod pool_duffy;
mod pool_health;
mod pool_vm;
mod qemu;
mod replay;
mod result_sources;
mod results;
mod schema;
mod shared_bases;
mod shared_store;
mod state;
mod state_pg;
mod state_store;
mod vdut;
mod watch;
