"""The table of benches/gpu/run.sh: optc's step against its same-run device
floor, and torch's fused Adam where it ran."""

import json
import os
import sys


def lines(path):
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def main():
    out = sys.argv[1]
    torch = {(t["numel"], t["tensors"]): t for t in lines(os.path.join(out, "torch.jsonl"))}
    print("| rule | params | tensors | optc ns/param | floor ns/param | floor/optc | GB/s | torch fused Adam ns/param | torch/optc |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in lines(os.path.join(out, "optc.jsonl")):
        t = torch.get((r["numel"], r["tensors"])) if r["rule"] == "adam" else None
        print("| {} | {} | {} | {:.4f} | {:.4f} | {:.0%} | {:.2f} | {} | {} |".format(
            r["rule"], r["numel"], r["tensors"], r["ns_per_param"], r["floor_ns_per_param"],
            r["floor_ns_per_param"] / r["ns_per_param"], r["gb_per_s"],
            "{:.4f}".format(t["ns_per_param"]) if t else "-",
            "{:.2f}x".format(t["ns_per_param"] / r["ns_per_param"]) if t else "-"))


if __name__ == "__main__":
    main()
