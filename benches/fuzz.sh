#!/usr/bin/env bash
# Runs every fuzz target of fuzz/ (optc-fuzz list) for MINUTES minutes each
# (default 10), two at a time, and prints each one's executions and findings;
# exits 1 if any target had a finding. Findings land in fuzz/findings/; once
# fixed, copy each into fuzz/regressions/TARGET/ so the tests replay it.
#   benches/fuzz.sh [MINUTES]
set -uo pipefail
cd "$(dirname "$0")/.."
minutes="${1:-10}"
cargo build --release --locked -q -p optc-fuzz -p optc || exit 1
fuzz=target/release/optc-fuzz
set -- $("$fuzz" list | awk '{print $1}')
status=0
run() {
    # Allocations past 8 GiB fail (and abort) instead of exhausting the machine.
    (ulimit -v 8388608; exec "$fuzz" "$1" --seconds "$((minutes * 60))" --seed "$RANDOM")
}
while [ $# -gt 0 ]; do
    run "$1" & first=$!
    second=""
    if [ $# -gt 1 ]; then run "$2" & second=$!; shift; fi
    shift
    wait "$first" || status=1
    if [ -n "$second" ]; then wait "$second" || status=1; fi
done
exit $status
