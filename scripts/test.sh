#!/usr/bin/env bash
# Runs every citron test: Rust unit and end-to-end tests (real curl, tftp, atftp, nbdinfo, qemu…)
# and the Python bindings' pytest suite. Installs what is missing first (Debian packages, Python
# packages in a private virtualenv). With CI=true every test that would skip for a missing tool
# fails instead (CITRON_E2E_STRICT=1).
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v cargo >/dev/null; then
  echo "test.sh: cargo is missing; install a Rust toolchain (rustup) first" >&2
  exit 2
fi
if [ "${CI:-}" = true ]; then export CITRON_E2E_STRICT=1; fi

scripts/setup-debian.sh --qemu
scripts/setup-python.sh

# Style and lints first: they take seconds and name the line to fix.
if ! cargo fmt --version >/dev/null 2>&1 || ! cargo clippy --version >/dev/null 2>&1; then
  rustup component add rustfmt clippy >&2 || { echo "test.sh: cargo fmt / cargo clippy are missing; rustup component add rustfmt clippy" >&2; exit 2; }
fi
cargo fmt --all -- --check
cargo clippy --locked --workspace --all-targets -- -D warnings

# Build first so the end-to-end tests find the `citron` binary next to them.
cargo build --locked --all-targets
cargo test --locked --no-fail-fast

scripts/test-python.sh
