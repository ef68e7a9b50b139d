#!/usr/bin/env bash
# Every test: the Rust workspace, then the Python package's pytest suite in a
# virtual environment under target/ (made on first use, from PyPI:
# python/requirements-test.txt; the package itself is built by maturin).
#
# The LLVM tier (backends/llvm, the `llvm` feature) is built and tested when
# LLVM 19 is installed (Debian: llvm-19-dev libpolly-19-dev libzstd-dev, as
# .ci/run installs them), skipped with a note otherwise; OPTC_REQUIRE_LLVM=1
# makes its absence an error.
set -euo pipefail
cd "$(dirname "$0")/.."
if command -v llvm-config-19 > /dev/null || [ -x /usr/lib/llvm-19/bin/llvm-config ]; then
    tiers=(--features optc/llvm,optc-runtime/llvm)
    export MATURIN_PEP517_ARGS="--features llvm"
elif [ "${OPTC_REQUIRE_LLVM:-0}" = 1 ]; then
    echo "tests/all.sh: LLVM 19 is required (OPTC_REQUIRE_LLVM=1) but not installed" >&2
    exit 1
else
    echo "tests/all.sh: LLVM 19 not installed; testing without the LLVM tier" >&2
    tiers=(--exclude optc-llvm)
fi
cargo test --workspace --release --locked "${tiers[@]}"
venv=target/python-venv
if [ ! -x "$venv/bin/python" ]; then
    python3 -m venv "$venv"
fi
pip() { "$venv/bin/python" -m pip --disable-pip-version-check --quiet "$@"; }
pip install -r python/requirements-test.txt
pip install ./python
"$venv/bin/python" -m pytest -q python/tests
