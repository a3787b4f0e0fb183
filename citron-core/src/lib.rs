//! # citron-core
//!
//! Everything citron decides, with no sockets: a backend in `citron-protocols` (or your own)
//! asks the core "this DUT wants this name" and passes the answer on in its protocol.
//!
//! # Layout
//! - [`job`]: job descriptions — YAML parsed with positions, validated, rendered per DUT
//!   ([`job::RenderContext::for_dut`]), listed ([`job::listing`]).
//! - [`template`]: `{{ variable }}` expansion.
//! - [`artifact`]: where bytes come from ([`artifact::ArtifactSource`]) and the sha256-keyed
//!   [`artifact::Cache`] they are fetched into.
//! - [`lifetime`]: [`lifetime::LifetimePolicy`] — access counts, expiration, resets on events.
//! - [`namespace`]: DUTs, the registry that finds them by address, path normalisation.
//! - [`block`]: block devices for NBD.
//! - [`serve`]: the seam — [`serve::Catalog`], [`serve::Artifact`], [`serve::ServeError`], the
//!   file spaces ([`serve::Space`]); a leaf: it names no other module of the core.
//! - [`gateway`]: [`Gateway`], the catalog a lab runs, composed of pieces (DUTs, jobs, files,
//!   lifetime counters, events, access log, [`Endpoints`]) whose state lives behind the
//!   traits of [`store`].
//! - [`bootfiles`]: the boot files generated per DUT (`boot.ipxe`, `boot/<machine_id>/…`),
//!   names and contents, pure.
//! - [`limits`]: every bound against hostile input, the lab file's `limits:`.
//! - [`datadir`]: the `--data` directory, locked by one gateway at a time.
//! - [`diag`]: a positioned problem in a job or lab file, said one way for both.
//! - [`lab`]: the lab file. [`access`]: access logs and metrics. [`units`]: `20G`, `7 days`.
//!   [`timing`]: durations counted in buckets (the histograms of `/metrics`).
//!
//! # Example
//! ```
//! use citron_core::job::{JobDescription, Origin};
//! let job = JobDescription::parse("deployment:\n  start:\n    cmdline: [console=ttyS0, quiet]\n", Origin::named("job.yaml"));
//! assert!(job.is_ok());
//! ```
#![deny(missing_docs)]

pub mod access;
pub mod artifact;
pub mod block;
pub mod bootfiles;
pub mod datadir;
pub mod diag;
pub mod gateway;
pub mod job;
pub mod lab;
pub mod lifetime;
pub mod namespace;
pub mod serve;
pub mod store;
pub mod template;
pub mod timing;
mod yaml;

pub use gateway::{Endpoints, Gateway, GatewayError};
pub use serve::digest::{Digest, DigestParseError, Hasher};
// The seam's children, under the names the rest of the core (and its users) know them by.
use serve::{digest, nowait};
pub use serve::{limits, units};
