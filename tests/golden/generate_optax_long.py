#!/usr/bin/env python3
"""Longer optax trajectories (40 steps, in the recorded style of the other
golden files) for the optax rules with bias corrections and step-dependent
scalars, where computing those scalars in f64 (torch's way, optc's default)
instead of f32 (optax's) makes a replay drift away from optax step by step.
tests/golden.rs replays them with `Scalars::F32` (`--scalars f32`) and holds
that to a tenth of the golden tolerance. Run from the repository root with
jax and optax installed (`pip install "jax[cpu]" optax==0.2.8`):

    python3 tests/golden/generate_optax_long.py

It writes tests/golden/long/NAME.json; tests/golden/long/cases.txt maps them
to rules.
"""

import inspect
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import optax

HERE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "long")
STEPS = 40
SHAPES = [[37], [5, 8]]
CASES = [
    ("adabelief", optax.adabelief, {"learning_rate": 0.01}),
    ("ademamix", optax.contrib.ademamix, {"learning_rate": 0.01}),
    ("amsgrad", optax.amsgrad, {"learning_rate": 0.01}),
    ("yogi", optax.yogi, {"learning_rate": 0.01}),
    ("adan", optax.adan, {"learning_rate": 0.01}),
    ("adamaxw", optax.adamaxw, {"learning_rate": 0.01, "weight_decay": 0.1}),
    ("adam", optax.adam, {"learning_rate": 0.01}),
    ("schedule_free_adamw", optax.contrib.schedule_free_adamw, {"learning_rate": 0.01}),
]


def defaults(function):
    out = {}
    for name, parameter in inspect.signature(function).parameters.items():
        if name in out or parameter.default is inspect.Parameter.empty:
            continue
        value = parameter.default
        out[name] = value if isinstance(value, (int, float, bool, str, type(None))) else repr(value)
    return out


def case(name, function, hyper, seed):
    rng = np.random.default_rng(seed)
    p0 = [rng.standard_normal(shape).astype(np.float32) for shape in SHAPES]
    params = [jnp.asarray(p) for p in p0]
    optimizer = function(**hyper)
    state = optimizer.init(params)
    grads_record = [[] for _ in params]
    params_record = [[] for _ in params]
    for _ in range(STEPS):
        grads = []
        for i, shape in enumerate(SHAPES):
            g = rng.standard_normal(shape).astype(np.float32)
            g = g * (rng.random(shape) >= 0.05)
            grads.append(jnp.asarray(g, dtype=jnp.float32))
            grads_record[i].append(g.flatten().tolist())
        updates, state = optimizer.update(grads, state, params)
        params = optax.apply_updates(params, updates)
        for i, p in enumerate(params):
            params_record[i].append(np.asarray(p).flatten().tolist())
    record = {
        "name": name,
        "peer": f"optax {optax.__version__} optax.{function.__module__.removeprefix('optax.')}.{function.__name__}"
        if "contrib" in function.__module__
        else f"optax {optax.__version__} optax.{function.__name__}",
        "hyper": hyper,
        "peer_defaults": {k: v for k, v in defaults(function).items() if k not in hyper},
        "dtype": "float32",
        "steps": STEPS,
        "tensors": [
            {"shape": shape, "p0": p0[i].flatten().tolist(), "grads": grads_record[i],
             "params": params_record[i]}
            for i, shape in enumerate(SHAPES)
        ],
    }
    with open(os.path.join(HERE, f"{name}.json"), "w") as out:
        json.dump(record, out)


if __name__ == "__main__":
    jax.config.update("jax_platform_name", "cpu")
    os.makedirs(HERE, exist_ok=True)
    for index, (name, function, hyper) in enumerate(CASES):
        case(name, function, hyper, seed=100 + index)
