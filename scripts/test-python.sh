#!/usr/bin/env bash
# Builds the Python bindings (citron-py) the way users install them (`pip install ./citron-py`,
# PEP 517 with maturin) into a private virtualenv under target/, then runs the pytest suite,
# `mypy --strict` on the example script and `mypy.stubtest` (the stubs must match the module).
# Usable by CI: needs python3 (>= 3.9) with venv, cargo, and PyPI for maturin, pytest and mypy.
# With CI=true (or CITRON_E2E_STRICT=1) a test skipped for a missing tool fails instead.
#   PYTHON=python3.12 scripts/test-python.sh      # another interpreter
#   CITRON_PY_PROFILE=release scripts/test-python.sh   # optimised build (default: dev, faster to build)
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
if [ "${CI:-}" = true ]; then export CITRON_E2E_STRICT=1; fi

python=${PYTHON:-python3}
command -v "$python" >/dev/null || { echo "test-python.sh: $python is missing; install python3 (>= 3.9) and python3-venv" >&2; exit 2; }
command -v cargo >/dev/null || { echo "test-python.sh: cargo is missing; install a Rust toolchain (rustup) first" >&2; exit 2; }

venv=$root/target/python-venv
if [ ! -x "$venv/bin/python" ]; then
  "$python" -m venv "$venv" || { echo "test-python.sh: '$python -m venv' failed; install python3-venv" >&2; exit 2; }
fi
py=$venv/bin/python
# maturin's PEP 517 backend runs the `maturin` executable found on PATH.
export PATH="$venv/bin:$PATH"
"$py" -m pip install -q --disable-pip-version-check "maturin>=1.9,<2" "pytest>=7" "mypy>=1.8"

# The build: maturin through pip, as `pip install ./citron-py` does (no build isolation: maturin is
# already in the venv, and CI need not fetch it twice). The dev profile reuses most of the
# workspace's debug build.
export MATURIN_PEP517_ARGS="--profile ${CITRON_PY_PROFILE:-dev}"
# The wheel as a user's `pip install ./citron-py` builds it: PEP 517 in an isolated build
# environment (pip fetches maturin itself); it must be one abi3 wheel for CPython >= 3.9.
rm -rf "$root/target/wheels"
"$py" -m pip wheel -q --disable-pip-version-check --no-deps -w "$root/target/wheels" ./citron-py
whl=$(ls "$root"/target/wheels/citron-*.whl)
case "$(basename "$whl")" in
  *-cp39-abi3-*) echo "test-python.sh: built $(basename "$whl")" ;;
  *) echo "test-python.sh: $(basename "$whl") is not a cp39-abi3 wheel" >&2; exit 1 ;;
esac
"$py" -m pip install -q --disable-pip-version-check --force-reinstall --no-deps "$whl"

cd "$root/citron-py"
# Run from the tests' own directory so that `import citron` is the installed package.
"$py" -m pytest -q -p no:cacheprovider tests
"$py" -m mypy --strict --no-incremental examples/lab_script.py tests
# stubtest imports the installed package; run it outside the source tree for the same reason.
(cd "$root/target" && "$py" -m mypy.stubtest --mypy-config-file "$root/citron-py/pyproject.toml" citron)
echo "test-python.sh: pytest, mypy --strict and stubtest passed"
