#!/usr/bin/env python3
"""Measurements for docs/performance.md, printed as markdown tables.

    python3 benches/perf/report.py targets   # Adam, AdamW, Lion, SGD-momentum: 1 and 200
                                             # tensors, 1 and 2 threads, against the
                                             # same-run floor and the C programs
    python3 benches/perf/report.py stdlib    # every standard-library optimizer, once, on
                                             # the Cranelift and the LLVM tier
    python3 benches/perf/report.py tiers     # the LLVM tier's targets: Adam, AdamW, Lion,
                                             # SGD-momentum with state in cache (32K and
                                             # 256K elements, 1 and 200 tensors) against
                                             # the C programs, and bf16 Adam at 16M
    python3 benches/perf/report.py matrix    # Adafactor and Muon on one 1024x4096 and one
                                             # 4096x4096 parameter (staged backend, 2
                                             # threads) against the same-run floor, the
                                             # step's matrix products alone, and
                                             # torch.optim.Adafactor / torch.optim.Muon on
                                             # the CPU, in the same run (PYTHON: a Python
                                             # with torch, default this one)
    python3 benches/perf/report.py compare OLD_OPTC
                                             # this tree's optc against another build
                                             # (OLD_OPTC: a path to its binary), row by
                                             # row in the same run (alternating, medians
                                             # of 3): the targets' rows, then every
                                             # stdlib rule

Each row is one `optc bench RULE ... --json` run (the command is printed with
the table). `targets` also compiles benches/perf/opt_c.c (hand-fused C steps
and the C data-movement floor, gcc -O3 -march=native -fopenmp) and runs it
in the same run, interleaved with optc, so both see the same machine.
Needs python3, cargo, LLVM 19 (the `llvm` feature) and, for `targets` and
`tiers`, gcc with OpenMP.
"""

import json
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
OPTC = os.path.join(ROOT, "target", "release", "optc")
OPT_C = os.path.join(ROOT, "target", "opt_c")
NUMEL = 1 << 24
STEPS = 20


def build():
    subprocess.run(["cargo", "build", "--release", "--locked", "-q", "--features", "llvm"],
                   cwd=ROOT, check=True)
    subprocess.run(["gcc", "-O3", "-march=native", "-fno-math-errno", "-fopenmp",
                    os.path.join(ROOT, "benches", "perf", "opt_c.c"), "-lm", "-o", OPT_C],
                   check=True)


def bench(rule, threads=1, tensors=1, steps=STEPS, optc=OPTC, numel=NUMEL, backend=None,
          extra=()):
    args = [optc, "bench", rule, "--numel", str(numel), "--threads", str(threads),
            "--tensors", str(tensors), "--steps", str(steps), "--json", *extra]
    if backend:
        args += ["--backend", backend]
    out = subprocess.run(args, capture_output=True, text=True, check=True).stdout
    return json.loads(out)


def c_programs(threads, numel=NUMEL, steps=STEPS):
    """ns/param of the C programs, by kernel name (copy28/copy20 are the C floors)."""
    env = dict(os.environ, OMP_NUM_THREADS=str(threads))
    out = subprocess.run([OPT_C, str(numel), str(steps), "adam,adamw,lion,sgdm,copy28,copy20"],
                         capture_output=True, text=True, check=True, env=env).stdout
    rows = [line.split(",") for line in out.splitlines() if line.startswith("c_")]
    return {row[1]: float(row[7]) for row in rows}


C_NAME = {"adam": "adam", "adamw": "adamw", "lion": "lion", "sgd_momentum": "sgdm"}


def targets():
    c_floor = {"adam": "copy28", "adamw": "copy28", "lion": "copy20", "sgd_momentum": "copy20"}
    print(f"`optc bench RULE --numel {NUMEL} --threads T --tensors K --steps {STEPS} --json`; "
          f"C: `OMP_NUM_THREADS=T target/opt_c {NUMEL} {STEPS} ...` in the same run.\n")
    print("| rule | threads | tensors | ns/param | optc floor | ratio | C floor | ratio to C floor "
          "| C fused | target |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for threads in (1, 2):
        c = c_programs(threads)
        for tensors in (1, 200):
            for rule in ("adam", "adamw", "lion", "sgd_momentum"):
                r = bench(rule, threads, tensors)
                target = 1.10 if tensors == 1 else 1.15
                floor = c[c_floor[rule]]
                met = "met" if r["ratio_to_floor"] <= target else "missed"
                print(f"| {rule} | {threads} | {tensors} | {r['ns_per_param']:.3f} "
                      f"| {r['floor_ns_per_param']:.3f} | {r['ratio_to_floor']:.2f} "
                      f"| {floor:.3f} | {r['ns_per_param'] / floor:.2f} "
                      f"| {c[C_NAME[rule]]:.3f} | ≤ {target:.2f}: {met} |")


def stdlib():
    rules = subprocess.run([OPTC, "list"], capture_output=True, text=True,
                           check=True).stdout.split("\n")
    rules = [line.split()[0] for line in rules if line.strip()]
    print(f"`optc bench RULE --numel {NUMEL} --steps 10 --backend TIER --json`, one run "
          f"per tier, 1 thread; ratios to the floor measured in the same run.\n")
    print("| rule | passes | B/param | cranelift ns/param | ratio | llvm ns/param | ratio "
          "| llvm / cranelift | compile ms (cranelift / llvm) |")
    print("|---|---|---|---|---|---|---|---|---|")
    llvm_compiles = []
    for rule in rules:
        plan = subprocess.run([OPTC, "show", rule, "--plan"], capture_output=True, text=True,
                              check=True).stdout
        if "no pass plan" in plan:
            # Per-row values or matrix products: the staged backend runs them (`matrix`).
            print(f"| {rule} | staged backend | | | | | | | |", flush=True)
            continue
        c = bench(rule, steps=10, backend="cranelift")
        r = bench(rule, steps=10, backend="llvm")
        llvm_compiles.append(r["compile_ms"])
        print(f"| {rule} | {r['passes']} | {r['bytes_per_param']} | {c['ns_per_param']:.3f} "
              f"| {c['ratio_to_floor']:.2f} | {r['ns_per_param']:.3f} | {r['ratio_to_floor']:.2f} "
              f"| {r['ns_per_param'] / c['ns_per_param']:.2f} "
              f"| {c['compile_ms']:.2f} / {r['compile_ms']:.1f} |", flush=True)
    llvm_compiles.sort()
    print(f"\nLLVM compile time per rule (both plans), median over the stdlib: "
          f"{llvm_compiles[len(llvm_compiles) // 2]:.1f} ms")


def tiers():
    steps = 200
    print(f"`optc bench RULE --numel N --tensors K --steps {steps} --backend TIER --json`, "
          f"1 thread; C: `OMP_NUM_THREADS=1 target/opt_c N {steps} ...` (gcc -O3 -march=native "
          f"-fno-math-errno), in the same run.\n")
    print("| rule | numel | tensors | C fused ns/param | cranelift | llvm | llvm / C | target |")
    print("|---|---|---|---|---|---|---|---|")
    for numel in (32768, 262144):
        c = c_programs(1, numel, steps)
        for tensors in (1, 200):
            for rule in ("adam", "adamw", "lion", "sgd_momentum"):
                cl = bench(rule, 1, tensors, steps, numel=numel, backend="cranelift")
                ll = bench(rule, 1, tensors, steps, numel=numel, backend="llvm")
                ratio = ll["ns_per_param"] / c[C_NAME[rule]]
                met = "met" if ratio <= 1.05 else "missed"
                print(f"| {rule} | {numel} | {tensors} | {c[C_NAME[rule]]:.3f} "
                      f"| {cl['ns_per_param']:.3f} | {ll['ns_per_param']:.3f} | {ratio:.2f} "
                      f"| ≤ 1.05: {met} |", flush=True)
    print(f"\n`optc bench adam --numel {NUMEL} --steps {STEPS} --backend TIER [--dtype bf16 "
          f"[--stochastic-rounding]] --json`, 1 thread.\n")
    print("| tier | f32 ns/param | bf16 | bf16 / f32 | bf16, stochastic | its / f32 | target |")
    print("|---|---|---|---|---|---|---|")
    for backend in ("cranelift", "llvm"):
        f = bench("adam", backend=backend)["ns_per_param"]
        h = bench("adam", backend=backend, extra=("--dtype", "bf16"))["ns_per_param"]
        sr = bench("adam", backend=backend,
                   extra=("--dtype", "bf16", "--stochastic-rounding"))["ns_per_param"]
        met = "met" if max(h, sr) / f <= 0.55 else "missed"
        print(f"| {backend} | {f:.3f} | {h:.3f} | {h / f:.2f} | {sr:.3f} | {sr / f:.2f} "
              f"| ≤ 0.55: {met} |", flush=True)


TORCH_STEP = """
import sys, time, torch
rule, rows, cols, threads, warmup, steps = sys.argv[1], *map(int, sys.argv[2:])
torch.set_num_threads(threads)
torch.manual_seed(0)
p = torch.nn.Parameter(torch.randn(rows, cols))
p.grad = torch.randn(rows, cols)
make = {"adafactor": lambda: torch.optim.Adafactor([p], lr=1e-2),
        "muon": lambda: torch.optim.Muon([p], lr=1e-3)}
optimizer = make[rule]()
for _ in range(warmup):
    optimizer.step()
times = []
for _ in range(steps):
    start = time.perf_counter()
    optimizer.step()
    times.append(time.perf_counter() - start)
print(sorted(times)[len(times) // 2] * 1e9 / (rows * cols))
"""


def torch_ns(rule, rows, cols, threads, warmup, steps):
    """ns/param of torch.optim's own CPU step (median of `steps`)."""
    python = os.environ.get("PYTHON", sys.executable)
    out = subprocess.run([python, "-c", TORCH_STEP, rule, str(rows), str(cols), str(threads),
                          str(warmup), str(steps)], capture_output=True, text=True, check=True)
    return float(out.stdout)


def matrix(threads=2):
    # (rule, rows, cols, optc steps, torch warm-up and timed steps; None: not timed).
    # torch.optim.Muon runs Newton-Schulz in bf16, whose CPU matmuls are slow
    # without AVX512_BF16: a 4096x4096 step takes many minutes there, so
    # it is timed only where the CPU has it.
    bf16_matmuls = "avx512_bf16" in open("/proc/cpuinfo").read()
    rows = [("adafactor", 1024, 4096, 20, (2, 10)), ("adafactor", 4096, 4096, 10, (2, 10)),
            ("muon", 1024, 4096, 5, (1, 1)),
            ("muon", 4096, 4096, 3, (1, 2) if bf16_matmuls else None)]
    print(f"`optc bench RULE --shape RxC --threads {threads} --steps S --json` (staged backend) "
          f"and torch.optim on the CPU ({threads} threads) in the same run; medians, ns/param.\n")
    print("| rule | shape | passes | B/param | optc | floor | optc / floor | products alone "
          "| optc / products | torch.optim | torch / optc |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for rule, r, c, steps, torch_steps in rows:
        run = bench(rule, threads, steps=steps, extra=("--shape", f"{r}x{c}"))
        products = run["products_ns_per_param"]
        theirs = torch_ns(rule, r, c, threads, *torch_steps) if torch_steps else None
        cell = lambda x, fmt: fmt.format(x) if x is not None else "—"
        print(f"| {rule} | {r}x{c} | {run['passes']} | {run['bytes_per_param']} "
              f"| {run['ns_per_param']:.2f} | {run['floor_ns_per_param']:.2f} "
              f"| {run['ratio_to_floor']:.2f} | {cell(products, '{:.2f}')} "
              f"| {cell(run['ratio_to_products'], '{:.2f}')} | {cell(theirs, '{:.1f}')} "
              f"| {cell(theirs and theirs / run['ns_per_param'], '{:.1f}')} |", flush=True)


def compare(old, repeats=3):
    """Each row runs the old binary and this tree's alternately, `repeats`
    times each, and reports the median over the runs of each binary's
    median-of-steps ns/param, and their ratio (alternating runs see the same
    machine conditions on a shared machine whose speed drifts)."""
    rules = subprocess.run([OPTC, "list"], capture_output=True, text=True,
                           check=True).stdout.split("\n")
    rules = [line.split()[0] for line in rules if line.strip()]
    # Small tensors (200 of 1024 elements) show the per-step host work.
    small = 200 * 1024
    rows = [(rule, 1, 200, 500, small) for rule in ("adam", "lion", "lamb")]
    rows += [(rule, threads, tensors, STEPS, NUMEL) for threads in (1, 2)
             for tensors in (1, 200) for rule in ("adam", "adamw", "lion", "sgd_momentum")]
    rows += [(rule, 1, 1, 10, NUMEL) for rule in rules]
    print(f"`optc bench RULE --numel N --threads T --tensors K --steps S --json` (N = {NUMEL}, "
          f"or {small} in the first rows), before (`{old}`) and after (this tree), "
          f"alternating, {repeats} runs each per row; medians.\n")
    print("| rule | numel | threads | tensors | before ns/param | after ns/param | after / before "
          "| before / its floor | after / its floor |")
    print("|---|---|---|---|---|---|---|---|---|")
    median = lambda xs: sorted(xs)[len(xs) // 2]
    for rule, threads, tensors, steps, numel in rows:
        olds, news = [], []
        for _ in range(repeats):
            olds.append(bench(rule, threads, tensors, steps, optc=old, numel=numel))
            news.append(bench(rule, threads, tensors, steps, numel=numel))
        before = median([r["ns_per_param"] for r in olds])
        after = median([r["ns_per_param"] for r in news])
        old_ratio = median([r["ratio_to_floor"] for r in olds])
        ratio = median([r["ratio_to_floor"] for r in news])
        print(f"| {rule} | {numel} | {threads} | {tensors} | {before:.3f} | {after:.3f} "
              f"| {after / before:.2f} | {old_ratio:.2f} | {ratio:.2f} |", flush=True)


if __name__ == "__main__":
    what = sys.argv[1] if len(sys.argv) > 1 else ""
    if what not in ("targets", "stdlib", "tiers", "matrix", "compare") \
            or (what == "compare") != (len(sys.argv) == 3):
        sys.exit(__doc__)
    build()
    if what == "compare":
        compare(sys.argv[2])
    else:
        {"targets": targets, "stdlib": stdlib, "tiers": tiers, "matrix": matrix}[what]()
