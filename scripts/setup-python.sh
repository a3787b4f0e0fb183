#!/usr/bin/env bash
# Installs the Python tools citron's tests start as peers: moto's S3-compatible server
# (`moto_server`, used by the s3:// artifact test in citron-fetch). Idempotent.
# Usage: scripts/setup-python.sh
# It uses the first python3 on PATH; if that interpreter refuses system-wide installs
# (Debian's "externally managed" python), it creates a venv in ~/.local/share/citron-venv and
# links moto_server into ~/.local/bin (put that on PATH).
set -euo pipefail

if command -v moto_server >/dev/null 2>&1; then
  exit 0
fi

py=$(command -v python3)
if "$py" -m pip install --quiet 'moto[server]' 2>/dev/null; then
  command -v pyenv >/dev/null 2>&1 && pyenv rehash || true
  command -v moto_server >/dev/null 2>&1 && exit 0
fi

venv="$HOME/.local/share/citron-venv"
[ -x "$venv/bin/python" ] || "$py" -m venv "$venv"
"$venv/bin/pip" install --quiet 'moto[server]'
mkdir -p "$HOME/.local/bin"
ln -sf "$venv/bin/moto_server" "$HOME/.local/bin/moto_server"
echo "moto_server installed in $venv; ~/.local/bin must be on PATH" >&2
