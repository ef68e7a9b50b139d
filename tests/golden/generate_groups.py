#!/usr/bin/env python3
"""Golden cases with parameter groups: torch.optim called with two
`param_groups` of their own hyperparameters, in the recorded style of the
other golden files (float32 on the CPU, standard-normal gradients with about
5% exact zeros, odd lengths), plus a `groups` field:

    groups: [{"params": [tensor indices], "hyper": {per-group arguments}}, ...]

and `hyper` holding the arguments every group shares. Run from the repository
root with torch installed (`pip install torch`):

    python3 tests/golden/generate_groups.py

It writes tests/golden/adamw_groups.json and tests/golden/sgd_groups.json;
tests/golden/cases.txt maps them to rules and `--group` settings.
"""

import inspect
import json
import os

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
STEPS = 10
SHAPES = [[37], [5, 8], [7], [3, 3]]


def defaults(optimizer):
    signature = inspect.signature(optimizer.__init__)
    out = {}
    for name, parameter in signature.parameters.items():
        if name in ("self", "params") or parameter.default is inspect.Parameter.empty:
            continue
        value = parameter.default
        if isinstance(value, torch.Tensor):
            value = value.item()
        if isinstance(value, tuple):
            value = list(value)
        out[name] = value
    return out


def case(name, optimizer, shared, groups, seed):
    generator = torch.Generator().manual_seed(seed)
    tensors = [torch.randn(*shape, generator=generator, dtype=torch.float32) for shape in SHAPES]
    p0 = [t.clone() for t in tensors]
    params = [torch.nn.Parameter(t) for t in tensors]
    param_groups = [dict(params=[params[i] for i in g["params"]], **g["hyper"]) for g in groups]
    opt = optimizer(param_groups, **shared)
    grads = [[] for _ in params]
    history = [[] for _ in params]
    for _ in range(STEPS):
        for i, p in enumerate(params):
            g = torch.randn(*p.shape, generator=generator, dtype=torch.float32)
            keep = torch.rand(*p.shape, generator=generator) >= 0.05
            g = g * keep
            p.grad = g.clone()
            grads[i].append(g.flatten().tolist())
        opt.step()
        for i, p in enumerate(params):
            history[i].append(p.detach().flatten().tolist())
    record = {
        "name": name,
        "peer": f"torch {torch.__version__.split('+')[0]} torch.optim.{optimizer.__name__}",
        "hyper": shared,
        "groups": groups,
        "peer_defaults": defaults(optimizer),
        "dtype": "float32",
        "steps": STEPS,
        "tensors": [
            {"shape": shape, "p0": p0[i].flatten().tolist(), "grads": grads[i], "params": history[i]}
            for i, shape in enumerate(SHAPES)
        ],
    }
    with open(os.path.join(HERE, f"{name}.json"), "w") as out:
        json.dump(record, out)


if __name__ == "__main__":
    # Weights decayed at one rate, biases (tensors 2 and 3) not decayed and at
    # another learning rate: the usual AdamW set-up.
    case(
        "adamw_groups",
        torch.optim.AdamW,
        {"lr": 0.01, "weight_decay": 0.1},
        [{"params": [0, 1], "hyper": {}}, {"params": [2, 3], "hyper": {"lr": 0.003, "weight_decay": 0.0}}],
        seed=11,
    )
    # Nesterov momentum everywhere; one group with another momentum and weight decay.
    case(
        "sgd_groups",
        torch.optim.SGD,
        {"lr": 0.05, "momentum": 0.9, "nesterov": True},
        [{"params": [0, 2], "hyper": {}}, {"params": [1, 3], "hyper": {"momentum": 0.5, "weight_decay": 0.01, "lr": 0.02}}],
        seed=12,
    )
