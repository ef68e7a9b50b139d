#!/usr/bin/env bash
# Every test: the Rust workspace, then the Python package's pytest suite in a
# virtual environment under target/ (made on first use, from PyPI:
# python/requirements-test.txt; the package itself is built by maturin).
set -euo pipefail
cd "$(dirname "$0")/.."
cargo test --workspace --release --locked
venv=target/python-venv
if [ ! -x "$venv/bin/python" ]; then
    python3 -m venv "$venv"
fi
pip() { "$venv/bin/python" -m pip --disable-pip-version-check --quiet "$@"; }
pip install -r python/requirements-test.txt
pip install ./python
"$venv/bin/python" -m pytest -q python/tests
