#!/usr/bin/env bash
# Builds the Python bindings (citron-py, distribution `citron-lab`) as the wheel that is
# published: PEP 517 with maturin, linked by zig against glibc 2.28 so that it is a manylinux_2_28
# wheel (checked by `auditwheel show`); installs it into a private virtualenv under target/, then
# runs the pytest suite (the pytest plugin included, loaded by its entry point), `mypy --strict`
# on the example script, the tests and the README's Python examples, and `mypy.stubtest` (the
# stubs must match the module).
# Usable by CI: needs python3 (>= 3.9) with venv, cargo, and PyPI for maturin, ziglang,
# auditwheel, pytest and mypy.
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
"$py" -m pip install -q --disable-pip-version-check "maturin>=1.9,<2" "ziglang>=0.14,<0.18" "auditwheel>=6" "pytest>=7" "mypy>=1.8"

# The build: maturin through pip's PEP 517 path, as `pip install ./citron-py` runs it, without
# build isolation (maturin and zig are already in the venv; CI need not fetch them twice). The
# dev profile reuses most of the workspace's debug build. `--zig` links against zig's glibc 2.28
# stubs instead of this machine's glibc, which is what makes the wheel run on older systems
# (manylinux_2_28: RHEL 8, Debian 10, Ubuntu 18.10 and later); maturin refuses to tag a wheel
# that needs a newer symbol.
export MATURIN_PEP517_ARGS="--profile ${CITRON_PY_PROFILE:-dev} --zig --compatibility manylinux_2_28"
rm -rf "$root/target/wheels"
"$py" -m pip wheel -q --disable-pip-version-check --no-build-isolation --no-deps -w "$root/target/wheels" ./citron-py
whl=$(ls "$root"/target/wheels/citron_lab-*.whl)
case "$(basename "$whl")" in
  *-cp39-abi3-manylinux_2_28_*) echo "test-python.sh: built $(basename "$whl")" ;;
  *) echo "test-python.sh: $(basename "$whl") is not a cp39-abi3 manylinux_2_28 wheel" >&2; exit 1 ;;
esac
# auditwheel (the PyPA tool that decides what a manylinux tag may claim) must agree.
audit=$("$venv/bin/auditwheel" show "$whl")
echo "$audit" | tr '\n' ' ' | grep -q 'consistent with the following platform tag: "manylinux_2_28_' || {
  echo "test-python.sh: auditwheel does not accept the wheel as manylinux_2_28:" >&2
  echo "$audit" >&2
  exit 1
}
"$py" -m pip install -q --disable-pip-version-check --force-reinstall --no-deps "$whl"

# The pool and OpenAPI tests drive a real `citron serve` (the binary, as a lab runs it).
cargo build -q -p citron-cli
export CITRON_BIN=${CITRON_BIN:-$root/target/debug/citron}

cd "$root/citron-py"
# Run from the tests' own directory so that `import citron` is the installed package.
"$py" -m pytest -q -p no:cacheprovider tests
# The README's Python examples, as a user copies them: each README's blocks in order, one module.
mkdir -p "$root/target/readme-examples"
for pair in "README.md:root_readme" "citron-py/README.md:citron_py_readme"; do
  readme=$root/${pair%%:*}
  out=$root/target/readme-examples/${pair##*:}.py
  awk '/^```python$/ {on=1; next} /^```$/ {on=0} on' "$readme" >"$out"
  [ -s "$out" ] || { echo "test-python.sh: no Python example found in $readme" >&2; exit 1; }
done
"$py" -m mypy --strict --no-incremental examples/lab_script.py tests "$root"/target/readme-examples/*.py
# stubtest imports the installed package; run it outside the source tree for the same reason.
(cd "$root/target" && "$py" -m mypy.stubtest --mypy-config-file "$root/citron-py/pyproject.toml" citron)
echo "test-python.sh: pytest, mypy --strict and stubtest passed"
