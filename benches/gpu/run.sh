#!/usr/bin/env bash
# The GPU measurement of the cubecl backend, as one command on a machine with
# a GPU, a Vulkan driver and Rust (torch with CUDA optional):
#
#   bash benches/gpu/run.sh [OUT_DIR]
#
# Adam, AdamW, Lion and SGD with momentum at 16M and 256M parameters, in 1
# and in 200 tensors: optc's step (`optc bench --backend cubecl`: parameters,
# gradients and state in device memory) against the device copy kernel that
# moves the same bytes in the same run, and torch.optim.Adam(fused=True) on
# the same GPU where torch can use CUDA. Prints a table (report.py) and
# leaves the raw JSON lines in OUT_DIR (default target/gpu-bench).
# NUMELS="65536 262144" STEPS=5 runs a smaller version (lavapipe smoke test).
set -euo pipefail
cd "$(dirname "$0")/../.."
out=${1:-target/gpu-bench}
numels=${NUMELS:-16777216 268435456}
steps=${STEPS:-20}
mkdir -p "$out"
rm -f "$out/optc.jsonl" "$out/torch.jsonl"
cargo build --release --features cubecl
target/release/optc bench adam --backend cubecl --numel 1024 --steps 1 > /dev/null
for rule in adam adamw lion sgd_momentum; do
    for numel in $numels; do
        for tensors in 1 200; do
            target/release/optc bench "$rule" --backend cubecl --numel "$numel" \
                --tensors "$tensors" --steps "$steps" --json >> "$out/optc.jsonl"
        done
    done
done
python=${PYTHON:-python3}
if "$python" -c 'import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)' 2> /dev/null; then
    NUMELS="$numels" STEPS="$steps" "$python" benches/gpu/torch_fused.py >> "$out/torch.jsonl"
else
    echo "benches/gpu/run.sh: torch with CUDA is not importable; no torch comparison" >&2
fi
python3 benches/gpu/report.py "$out"
