//! End-to-end tests (one binary): the real `citron` binary or in-process servers, driven by
//! real clients over loopback sockets.

mod api;
mod cli;
mod extract;
mod http;
mod nbd;
mod vdut;
