#!/usr/bin/env bash
# Builds citron and serves the example job on the embedded default lab (dut1 = 127.0.0.2,
# dut2 = 127.0.0.3, all on loopback). Try, from another shell:
#   curl --interface 127.0.0.2 http://127.0.0.1:8080/boot.ipxe
#   curl --interface 127.0.0.2 http://127.0.0.1:8080/hello.txt
set -euo pipefail
cd "$(dirname "$0")/.."
command -v cargo >/dev/null || { echo "run.sh: cargo is missing; install a Rust toolchain (rustup) first" >&2; exit 2; }
cargo build --release --locked -p citron-cli
exec target/release/citron serve --job dut1=examples/job-hello.yaml --job dut2=examples/job-other.yaml "$@"
