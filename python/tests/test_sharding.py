"""Sharded training under torch.distributed (gloo, 2 processes on this machine):
each rank steps chunk-aligned shards of every parameter (a ZeRO-style flat
sharding), reductions see the whole tensors through all-gathers, and the
result equals the unsharded run bit for bit; under FSDP2's fully_shard the
optimizer steps the DTensors' local shards and agrees with one process."""

import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

import optc
import optc.torch as ot

RULES = {
    "adam": lambda params: ot.Optimizer(params, rule="adam", lr=1e-2),
    "lamb": lambda params: ot.Optimizer(params, rule="lamb", lr=1e-2, weight_decay=0.01),
    "clipped_adamw": lambda params: ot.Optimizer(
        params, rule=os.path.join(os.path.dirname(__file__), "..", "..", "examples", "clipped_adamw.opt"),
        max_norm=0.5, lr=1e-2),
}
# Larger than a chunk, so that both ranks hold part of it.
SHAPES = [(3 * optc.CHUNK + 11,), (257, 3), (40,)]


def gradients(step):
    generator = torch.Generator().manual_seed(100 + step)
    return [torch.randn(s, generator=generator) for s in SHAPES]


def initial():
    generator = torch.Generator().manual_seed(7)
    return [torch.randn(s, generator=generator) for s in SHAPES]


def unsharded(rule, steps):
    params = [p.requires_grad_() for p in initial()]
    opt = RULES[rule](params)
    for step in range(steps):
        for p, g in zip(params, gradients(step)):
            p.grad = g
        opt.step()
    return [p.detach() for p in params]


def rank_main(rank, world, port, rule, steps, out):
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        full = [p.reshape(-1) for p in initial()]
        ranges = [optc.shard_range(p.numel(), world, rank) for p in full]
        shards = [p[a:b].clone().requires_grad_() for p, (a, b) in zip(full, ranges)]
        opt = RULES[rule](shards)
        opt.shard([p.numel() for p in full])
        for step in range(steps):
            for s, g, (a, b) in zip(shards, gradients(step), ranges):
                s.grad = g.reshape(-1)[a:b].clone()
            opt.step()
        # Put the parameters back together on every rank.
        gathered = [None] * world
        dist.all_gather_object(gathered, [s.detach() for s in shards])
        if rank == 0:
            whole = [torch.cat([gathered[r][i] for r in range(world)]) for i in range(len(full))]
            torch.save(whole, out)
    finally:
        # No rank tears its process group down while another still talks to it.
        dist.barrier()
        dist.destroy_process_group()


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("rule", list(RULES))
def test_two_ranks_equal_one_bit_for_bit(tmp_path, rule):
    out = tmp_path / "sharded.pt"
    mp.spawn(rank_main, args=(2, free_port(), rule, 5, str(out)), nprocs=2, join=True)
    sharded = torch.load(out)
    for whole, joined, shape in zip(unsharded(rule, 5), sharded, SHAPES):
        assert torch.equal(whole.reshape(-1), joined), rule


FSDP_RULES = {
    "adam": lambda params: ot.Adam(params, lr=1e-2),
    "lamb": lambda params: ot.Optimizer(params, rule="lamb", lr=1e-2, weight_decay=0.01),
}
FSDP_TOLERANCE = 1e-5


def fsdp_model():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(64, 32), torch.nn.Tanh(), torch.nn.Linear(32, 10))


def fsdp_train(model, opt, steps):
    from conftest import DATA
    import numpy as np

    table = np.loadtxt(DATA, delimiter=",", skiprows=1, dtype=np.float32)
    x, y = torch.from_numpy(table[:, :-1] / 16.0), torch.from_numpy(table[:, -1].astype(np.int64))
    for step in range(steps):
        rows = slice(step * 64, step * 64 + 64)
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(x[rows]), y[rows]).backward()
        opt.step()


def fsdp_rank(rank, world, port, rule, steps, out):
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        model = fsdp_model()
        fully_shard(model, mesh=init_device_mesh("cpu", (world,)))
        opt = FSDP_RULES[rule](model.parameters())
        # Every rank trains on the same batches: FSDP's averaged gradients are one rank's.
        fsdp_train(model, opt, steps)
        full = [p.full_tensor() for p in model.parameters()]
        if rank == 0:
            torch.save(full, out)
    finally:
        # No rank tears its process group down while another still talks to it.
        dist.barrier()
        dist.destroy_process_group()


@pytest.mark.parametrize("rule", list(FSDP_RULES))
def test_fsdp2_fully_shard_steps_local_shards_like_one_process(tmp_path, rule):
    out = tmp_path / "fsdp.pt"
    mp.spawn(fsdp_rank, args=(2, free_port(), rule, 20, str(out)), nprocs=2, join=True)
    sharded = torch.load(out)
    model = fsdp_model()
    fsdp_train(model, FSDP_RULES[rule](model.parameters()), 20)
    for whole, joined in zip(model.parameters(), sharded):
        difference = ((whole.detach() - joined).abs() / whole.detach().abs().clamp(min=1)).max().item()
        assert difference <= FSDP_TOLERANCE, (rule, difference)
