"""Shared fixtures: the UCI digits (from the repository's data/) and a small MLP."""

import pathlib

import numpy as np
import pytest
import torch

DATA = pathlib.Path(__file__).resolve().parents[2] / "data" / "digits.csv"


@pytest.fixture(scope="session")
def digits():
    table = np.loadtxt(DATA, delimiter=",", skiprows=1, dtype=np.float32)
    x = torch.from_numpy(table[:, :-1] / 16.0)
    y = torch.from_numpy(table[:, -1].astype(np.int64))
    return x, y


def mlp(seed=0, dtype=torch.float32):
    torch.manual_seed(seed)
    model = torch.nn.Sequential(
        torch.nn.Linear(64, 32), torch.nn.Tanh(), torch.nn.Linear(32, 10)
    )
    return model.to(dtype)


def train(model, optimizer, digits, steps, batch=128, scheduler=None, on_step=None, start=0):
    """Minibatch training in a fixed order, steps ``start`` to ``start + steps - 1``
    of it; returns the losses."""
    x, y = digits
    losses = []
    for step in range(start, start + steps):
        rows = slice((step * batch) % (len(x) - batch), (step * batch) % (len(x) - batch) + batch)
        optimizer.zero_grad()
        loss = torch.nn.functional.cross_entropy(model(x[rows].to(next(model.parameters()).dtype)), y[rows])
        loss.backward()
        if on_step:
            on_step(step)
        optimizer.step()
        if scheduler:
            scheduler.step()
        losses.append(loss.item())
    return losses


def max_relative_difference(a, b):
    return max(
        ((p.detach().float() - q.detach().float()).abs() / q.detach().float().abs().clamp(min=1.0)).max().item()
        for p, q in zip(a.parameters(), b.parameters())
    )
