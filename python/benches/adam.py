"""optc's Adam against torch.optim.Adam (fused=True and foreach=True) in one
process: 16M float32 parameters as 1 tensor and as 200 tensors, on 1 and 2
threads (torch.set_num_threads, optc's threads=). Times whole
``optimizer.step()`` calls, Python included, and reports medians; the
binding's overhead is the time of ``step()`` with the engine's step replaced
by one that returns at once (the Python side: checks, addresses, changed
hyperparameters), as a share of a real ``step()``.

    python python/benches/adam.py [--elements 16777216] [--repeats 15]
"""

import argparse
import statistics
import time

import torch

import optc.torch as ot


def tensors(total, count):
    sizes = [total // count] * count
    sizes[-1] += total - sum(sizes)
    generator = torch.Generator().manual_seed(0)
    params = [torch.randn(n, generator=generator).requires_grad_() for n in sizes]
    for p in params:
        p.grad = torch.randn(p.shape, generator=generator) * 1e-3
    return params


class Idle:
    """An engine whose step returns at once."""

    def step(self, params, grads):
        return None


def median_seconds(step, repeats, warmup=3):
    for _ in range(warmup):
        step()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--elements", type=int, default=1 << 24)
    parser.add_argument("--repeats", type=int, default=15)
    args = parser.parse_args()
    n = args.elements
    print(f"Adam, {n} float32 parameters; median of {args.repeats} steps; ns per parameter")
    print("| tensors | threads | optc step() | torch fused | torch foreach | fused / optc | binding overhead |")
    print("|---|---|---|---|---|---|---|")
    for count in (1, 200):
        for threads in (1, 2):
            torch.set_num_threads(threads)
            params = tensors(n, count)
            optc_opt = ot.Adam(params, lr=1e-3, threads=threads)
            optc_time = median_seconds(optc_opt.step, args.repeats)
            engine, optc_opt._engine = optc_opt._engine, Idle()
            python_time = median_seconds(optc_opt.step, args.repeats)
            optc_opt._engine = engine
            del optc_opt, engine
            fused = torch.optim.Adam(params, lr=1e-3, fused=True)
            fused_time = median_seconds(fused.step, args.repeats)
            del fused
            foreach = torch.optim.Adam(params, lr=1e-3, foreach=True)
            foreach_time = median_seconds(foreach.step, args.repeats)
            del foreach, params
            ns = lambda s: f"{s / n * 1e9:.3f}"  # noqa: E731
            overhead = python_time / optc_time
            print(f"| {count} | {threads} | {ns(optc_time)} | {ns(fused_time)} | {ns(foreach_time)} "
                  f"| {fused_time / optc_time:.2f}x | {overhead * 100:.1f}% |")


if __name__ == "__main__":
    main()
