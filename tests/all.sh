#!/usr/bin/env bash
# Every test: the Rust workspace, then the Python package's pytest suite in a
# virtual environment under target/ (made on first use, from PyPI:
# python/requirements-test.txt; the package itself is built by maturin).
#
# Optional backends are built and tested where what they need is installed,
# skipped with a note otherwise (OPTC_REQUIRE_LLVM=1 / OPTC_REQUIRE_GPU=1
# make an absence an error, as .ci/run does):
# - the LLVM tier (backends/llvm, the `llvm` feature): LLVM 19 (Debian:
#   llvm-19-dev libpolly-19-dev libzstd-dev);
# - the GPU backend (backends/cubecl, the `cubecl` feature): a Vulkan loader
#   and driver (Debian: mesa-vulkan-drivers libvulkan1, whose lavapipe runs
#   Vulkan on the CPU).
set -euo pipefail
cd "$(dirname "$0")/.."
features=()
args=()
if command -v llvm-config-19 > /dev/null || [ -x /usr/lib/llvm-19/bin/llvm-config ]; then
    features+=(optc/llvm optc-runtime/llvm)
    export MATURIN_PEP517_ARGS="--features llvm"
elif [ "${OPTC_REQUIRE_LLVM:-0}" = 1 ]; then
    echo "tests/all.sh: LLVM 19 is required (OPTC_REQUIRE_LLVM=1) but not installed" >&2
    exit 1
else
    echo "tests/all.sh: LLVM 19 not installed; testing without the LLVM tier" >&2
    args+=(--exclude optc-llvm)
fi
# (The library list is read whole before matching: under pipefail,
# `ldconfig -p | grep -q` fails whenever grep's early exit kills ldconfig.)
libraries=$(ldconfig -p)
if [[ $libraries == *libvulkan.so.1* ]] && ls /usr/share/vulkan/icd.d/*.json > /dev/null 2>&1; then
    features+=(optc/cubecl optc-runtime/cubecl)
elif [ "${OPTC_REQUIRE_GPU:-0}" = 1 ]; then
    echo "tests/all.sh: a Vulkan driver is required (OPTC_REQUIRE_GPU=1) but not installed" >&2
    exit 1
else
    echo "tests/all.sh: no Vulkan driver; testing without the GPU backend" >&2
    args+=(--exclude optc-cubecl)
fi
if [ ${#features[@]} -gt 0 ]; then
    args+=(--features "$(IFS=,; echo "${features[*]}")")
fi
# The Python suite's requirements (torch is a few GB of wheels) install in
# the background while cargo builds: downloading and unpacking them is
# mostly waiting, and a cold build spends long stretches on one core.
venv=target/python-venv
mkdir -p target
pip() { "$venv/bin/python" -m pip --disable-pip-version-check --quiet "$@"; }
(
    if [ ! -x "$venv/bin/python" ]; then
        python3 -m venv "$venv"
    fi
    pip install -r python/requirements-test.txt
) > target/python-requirements.log 2>&1 &
requirements=$!
if ! cargo test --workspace --release --locked "${args[@]}"; then
    wait "$requirements" || true
    exit 1
fi
if ! wait "$requirements"; then
    echo "tests/all.sh: installing python/requirements-test.txt failed:" >&2
    cat target/python-requirements.log >&2
    exit 1
fi
pip install ./python
"$venv/bin/python" -m pytest -q python/tests
