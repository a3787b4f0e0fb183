//! # citron-lab
//!
//! What a running lab is: the home of everything above the protocol backends. The core
//! (`citron-core`) decides, the backends (`citron-protocols`) speak; this crate starts them
//! together, lets people and tools steer the lab, and counts.
//!
//! # Layout
//! - [`server`]: [`ServerBuilder`] binds every enabled backend (HTTP, TFTP, NBD, the API),
//!   tells the gateway how DUTs reach them, and stops them together ([`RunningServer`]).
//! - [`api`]: the control API (axum), its OpenAPI document generated from the code
//!   ([`api::openapi`]).
//! - [`metrics`]: `/metrics`, one Prometheus registry where every feature registers its
//!   collectors.
//!
//! - [`gateways`]: several gateways, one lab: DUT ownership, heartbeats, requests carried out
//!   by the DUT's gateway.
//! - [`state`]: the lab's durable state (SQLite by default, PostgreSQL), the stores the gateway
//!   keeps DUTs, jobs, counted reads and events in, so that a restart keeps them.
//!
//! - [`auth`]: who may do what: the administrator's token and the lab's signed tokens (scopes,
//!   job patterns, runs, expiry, revocation), checked at the API's door.
//! - [`results`]: runs of jobs, their files (blobs by SHA-256 behind `object_store`), consoles,
//!   `latest`, retention.
//!
//! - [`pool`]: the DUT pool: reservations queued in the state store, allocation, power
//!   commands, VM DUTs, health jobs, recycling.
//! - [`vm`]: QEMU machines, each in a network namespace of its own (the pool's VM DUTs and
//!   `citron boot-test`).
//!
//! ```
//! use citron_core::{Gateway, lab::LabConfig};
//! use citron_lab::ServerBuilder;
//! # tokio::runtime::Runtime::new().unwrap().block_on(async {
//! let dir = tempfile::tempdir().unwrap();
//! let gw = Gateway::new(LabConfig::default_lab(), dir.path()).unwrap();
//! let any = Some("127.0.0.1:0".parse().unwrap());
//! let server = ServerBuilder::new(gw).http(None).tftp(None).nbd(None).api(any).start().await.unwrap();
//! assert!(server.api_addr().is_some());
//! server.shutdown().await;
//! # });
//! ```
#![deny(missing_docs)]

pub mod api;
pub mod auth;
pub mod gateways;
pub mod metrics;
pub mod pool;
pub mod results;
pub mod server;
pub mod state;
pub mod vm;

pub use server::{RunningServer, ServerBuilder, ServerError};
