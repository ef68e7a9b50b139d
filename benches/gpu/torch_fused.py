"""torch.optim.Adam(fused=True) on the GPU, at the sizes benches/gpu/run.sh
gives optc: one JSON line per (numel, tensors), median ns per parameter of a
step (CUDA events around each step), and of a device copy moving the same
bytes (Adam reads p, g, m, v and writes p, m, v: 28 bytes per parameter)."""

import json
import os
import statistics

import torch


def median_ms(run, steps):
    times = []
    for _ in range(steps):
        start = torch.cuda.Event(enable_timing=True)
        end = torch.cuda.Event(enable_timing=True)
        start.record()
        run()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)


def main():
    numels = [int(n) for n in os.environ.get("NUMELS", "16777216 268435456").split()]
    steps = int(os.environ.get("STEPS", "20"))
    for numel in numels:
        for tensors in (1, 200):
            sizes = [numel // tensors] * tensors
            sizes[-1] += numel - sum(sizes)
            params = [torch.randn(n, device="cuda", requires_grad=True) for n in sizes]
            for p in params:
                p.grad = torch.randn_like(p)
            adam = torch.optim.Adam(params, lr=1e-3, fused=True)
            for _ in range(3):
                adam.step()
            step_ms = median_ms(adam.step, steps)
            src = torch.empty(numel * 4, device="cuda")
            dst = torch.empty(numel * 3, device="cuda")
            copy_ms = median_ms(lambda: dst.copy_(src[: numel * 3]), steps)
            print(json.dumps({
                "rule": "torch.optim.Adam(fused=True)",
                "device": torch.cuda.get_device_name(),
                "numel": numel,
                "tensors": tensors,
                "ns_per_param": step_ms * 1e6 / numel,
                "copy_ns_per_param": copy_ms * 1e6 / numel,
            }))
            del params, adam, src, dst
            torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
