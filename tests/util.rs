//! Helpers for the end-to-end tests: find the `citron` binary, start it, find real clients.
