//! # citron-protocols
//!
//! The protocol backends. Each one owns its sockets and speaks its protocol; every decision
//! (which DUT, which file, may it be read) is asked of a [`citron_core::serve::Catalog`].
//!
//! # Layout
//! - `http`: HTTP/1.1 GET and HEAD (hyper).
//! - `tftp`: TFTP read requests with option negotiation.
//! - `nbd`: NBD fixed-newstyle with structured replies.
//! - [`api`]: the lab control API (JSON over HTTP).
//! - [`listen`]: the accept loop every TCP listener shares (connection caps, backoff, drain).
//! - [`server`]: [`server::ServerBuilder`] runs every enabled backend of a lab in-process.
#![deny(missing_docs)]

pub mod api;
pub mod http;
pub mod listen;
pub mod nbd;
pub mod server;
pub mod tftp;
