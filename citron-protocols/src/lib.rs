//! # citron-protocols
//!
//! The protocol backends. Each one owns its sockets and speaks its protocol; every decision
//! (which DUT, which file, may it be read) is asked of a [`citron_core::serve::Catalog`]. What
//! a running lab is (the control API, starting every backend together) lives in `citron-lab`.
//!
//! # Layout
//! - [`http`]: HTTP/1.1 GET and HEAD (hyper); [`http::serve_service`] serves any hyper service
//!   (the lab API) with the same connection handling.
//! - [`tftp`]: TFTP read requests with option negotiation.
//! - [`nbd`]: NBD fixed-newstyle with structured replies.
//! - [`listen`]: the accept loop every TCP listener shares (connection caps, backoff, drain).
#![deny(missing_docs)]

pub mod http;
pub mod listen;
pub mod nbd;
pub mod tftp;
