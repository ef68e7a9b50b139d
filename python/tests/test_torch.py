"""optc.torch against torch.optim: the same training run, the same parameters;
groups, schedulers, state_dict round trips, skipped parameters, bf16 and bad input."""

import copy
import math
import os
import pathlib
import subprocess

import pytest
import torch

import optc
import optc.torch as ot
from conftest import max_relative_difference, mlp, train

# (torch.optim class, arguments): torch's own arithmetic and ours over 200 steps.
CASES = [
    ("Adam", {"lr": 1e-2}),
    ("Adam", {"lr": 1e-2, "weight_decay": 0.01}),
    ("Adam", {"lr": 1e-2, "amsgrad": True}),
    ("AdamW", {"lr": 1e-2, "weight_decay": 0.1}),
    ("SGD", {"lr": 0.1}),
    ("SGD", {"lr": 0.1, "momentum": 0.9}),
    ("SGD", {"lr": 0.1, "momentum": 0.9, "nesterov": True, "weight_decay": 1e-3}),
    ("RMSprop", {"lr": 1e-3}),
    ("RMSprop", {"lr": 1e-3, "momentum": 0.9, "centered": True}),
    ("Adagrad", {"lr": 0.05, "lr_decay": 0.01, "initial_accumulator_value": 0.1}),
    ("RAdam", {"lr": 1e-2}),
    ("RAdam", {"lr": 1e-2, "weight_decay": 0.1, "decoupled_weight_decay": True}),
    ("NAdam", {"lr": 1e-2}),
    ("Adamax", {"lr": 1e-2, "weight_decay": 0.01}),
]

TOLERANCE = 1e-6


@pytest.mark.parametrize("name,kwargs", CASES, ids=[f"{n}-{'-'.join(k)}" for n, k in CASES])
def test_a_training_run_matches_torch_optim(digits, name, kwargs):
    ours, theirs = mlp(), mlp()
    train(ours, getattr(ot, name)(ours.parameters(), **kwargs), digits, 200)
    train(theirs, getattr(torch.optim, name)(theirs.parameters(), **kwargs), digits, 200)
    assert max_relative_difference(ours, theirs) <= TOLERANCE


def groups_of(model, weight_lr):
    weights = [p for n, p in model.named_parameters() if n.endswith("weight")]
    biases = [p for n, p in model.named_parameters() if n.endswith("bias")]
    return [{"params": weights, "lr": weight_lr}, {"params": biases, "weight_decay": 0.0}]


def test_param_groups_and_one_cycle_lr_match_torch(digits):
    ours, theirs = mlp(), mlp()
    runs = []
    for model, cls in ((ours, ot.AdamW), (theirs, torch.optim.AdamW)):
        opt = cls(groups_of(model, 3e-3), lr=1e-2, weight_decay=0.1)
        schedule = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=[3e-2, 1e-2], total_steps=200)
        runs.append(train(model, opt, digits, 200, scheduler=schedule))
    assert max_relative_difference(ours, theirs) <= TOLERANCE
    assert runs[0][-1] < runs[0][0] / 2, "the run learns"


def resumes_bit_for_bit(digits, make):
    """Steps 0..29 of one run equal steps 0..14, a state_dict round trip
    into a new optimizer from ``make``, then steps 15..29."""
    whole, resumed = mlp(), mlp()
    train(whole, make(whole.parameters()), digits, 30)
    first = make(resumed.parameters())
    train(resumed, first, digits, 15)
    saved = copy.deepcopy(first.state_dict())
    again = make(resumed.parameters())
    again.load_state_dict(saved)
    train(resumed, again, digits, 15, start=15)
    for p, q in zip(resumed.parameters(), whole.parameters()):
        assert torch.equal(p, q)
    return saved


def test_state_dict_resumes_bit_for_bit(digits):
    resumes_bit_for_bit(digits, lambda params: ot.Adam(params, lr=1e-2))


@pytest.mark.parametrize("name,kwargs", [("AdamW", {"lr": 1e-2}), ("SGD", {"lr": 0.1, "momentum": 0.9}),
                                         ("NAdam", {"lr": 1e-2}), ("RMSprop", {"lr": 1e-3, "centered": True})])
def test_torch_state_dict_loads_into_optc_and_back(digits, name, kwargs):
    reference, ours, back = mlp(), mlp(), mlp()
    torch_opt = getattr(torch.optim, name)(reference.parameters(), **kwargs)
    train(reference, torch_opt, digits, 20)
    ours.load_state_dict(reference.state_dict())
    back.load_state_dict(reference.state_dict())
    optc_opt = getattr(ot, name)(ours.parameters(), **kwargs)
    optc_opt.load_state_dict(torch_opt.state_dict())
    # optc continues the torch run...
    train(reference, torch_opt, digits, 20)
    train(ours, optc_opt, digits, 20)
    assert max_relative_difference(ours, reference) <= TOLERANCE
    # ...and torch continues an optc run.
    torch_again = getattr(torch.optim, name)(back.parameters(), **kwargs)
    torch_again.load_state_dict(optc_opt.state_dict())
    back.load_state_dict(ours.state_dict())
    train(back, torch_again, digits, 10)
    train(ours, optc_opt, digits, 10)
    assert max_relative_difference(back, ours) <= TOLERANCE


def test_parameters_without_grad_are_skipped_as_torch_skips_them(digits):
    ours, theirs = mlp(), mlp()
    frozen = lambda m: m[2].bias  # noqa: E731
    def drop(model):
        return lambda step: setattr(frozen(model), "grad", None) if step % 3 == 0 else None
    opt_ours = ot.Adam(ours.parameters(), lr=1e-2)
    opt_theirs = torch.optim.Adam(theirs.parameters(), lr=1e-2)
    train(ours, opt_ours, digits, 30, on_step=drop(ours))
    train(theirs, opt_theirs, digits, 30, on_step=drop(theirs))
    assert max_relative_difference(ours, theirs) <= TOLERANCE
    index = [p is frozen(ours) for p in ours.parameters()].index(True)
    assert opt_ours.state_dict()["state"][index]["step"].item() == 20
    assert opt_theirs.state_dict()["state"][index]["step"].item() == 20


def test_bf16_parameters_step_in_place(digits):
    model = mlp(dtype=torch.bfloat16)
    opt = ot.AdamW(model.parameters(), lr=1e-2)
    before = [p.detach().clone() for p in model.parameters()]
    addresses = [p.data_ptr() for p in model.parameters()]
    losses = train(model, opt, digits, 50)
    assert [p.data_ptr() for p in model.parameters()] == addresses
    assert all(not torch.equal(a, p) for a, p in zip(before, model.parameters()))
    assert losses[-1] < losses[0]
    state = opt.state_dict()["state"][0]
    assert state["exp_avg"].dtype == torch.bfloat16


def test_generic_rules_from_the_stdlib_source_text_and_files(tmp_path, digits):
    model = mlp()
    lion = ot.Optimizer(model.parameters(), rule="lion", lr=1e-3, betas=(0.9, 0.99))
    assert lion.param_groups[0]["betas"] == (0.9, 0.99)
    losses = train(model, lion, digits, 50)
    assert losses[-1] < losses[0]
    source = "optimizer half_sgd(learning_rate = 0.1) {\n    p -= 0.5 * learning_rate * g;\n}\n"
    path = tmp_path / "found.opt"
    path.write_text(source)
    for rule in (source, str(path), optc.compile(str(path))):
        w = torch.ones(3, requires_grad=True)
        opt = ot.Optimizer([w], rule=rule, lr=0.2)
        w.grad = torch.full((3,), 2.0)
        opt.step()
        assert torch.allclose(w.detach(), torch.full((3,), 0.8))


def test_a_schedule_given_as_text_drives_the_learning_rate():
    w = torch.zeros(1, requires_grad=True)
    opt = ot.Optimizer([w], rule="sgd", lr="linear(1.0, 0.0, 4)")
    seen = []
    for _ in range(3):
        before = w.item()
        w.grad = torch.ones(1)
        opt.step()
        seen.append(before - w.item())
    assert seen == pytest.approx([1.0, 0.75, 0.5])


def bad_input_cases():
    # torch itself refuses a .grad of another dtype or size than its parameter,
    # but not a parameter whose data was replaced, nor a strided gradient.
    def wrong_dtype(p):
        p.data = p.data.double()
        p.grad = torch.ones_like(p)
    def non_contiguous(p):
        p.grad = torch.ones(p.shape[::-1]).t()
    def wrong_size(p):
        p.data = torch.zeros(p.numel() + 1)
        p.grad = torch.ones_like(p)
    return [(wrong_dtype, "is torch.float64"), (non_contiguous, "not contiguous"),
            (wrong_size, "elements")]


@pytest.mark.parametrize("spoil,message", bad_input_cases(), ids=["dtype", "contiguous", "size"])
def test_bad_gradients_raise_and_change_nothing(digits, spoil, message):
    model = mlp()
    opt = ot.Adam(model.parameters(), lr=1e-2)
    train(model, opt, digits, 3)
    before = [p.detach().clone() for p in model.parameters()]
    state = copy.deepcopy(opt.state_dict())
    spoil(model[0].weight)
    with pytest.raises(optc.OptimizerError, match=message):
        opt.step()
    assert all(torch.equal(a, p) for a, p in zip(before[1:], list(model.parameters())[1:]))
    after = opt.state_dict()
    for i, entry in state["state"].items():
        for k, v in entry.items():
            assert torch.equal(v, after["state"][i][k])


# Adafactor against torch.optim.Adafactor on every parameter (matrices and
# vectors) over a training run.
ADAFACTOR_CASES = [{"lr": 1e-2}, {"lr": 1e-2, "weight_decay": 0.05, "beta2_decay": -0.5}]


def matrices(model):
    return [p for p in model.parameters() if p.dim() == 2]


@pytest.mark.parametrize("kwargs", ADAFACTOR_CASES, ids=["-".join(k) for k in ADAFACTOR_CASES])
def test_adafactor_trains_as_torch_optim_does(digits, kwargs):
    ours, theirs = mlp(), mlp()
    optimizer = ot.Adafactor(ours.parameters(), **kwargs)
    losses = train(ours, optimizer, digits, 200)
    train(theirs, torch.optim.Adafactor(theirs.parameters(), **kwargs), digits, 200)
    assert optimizer.backend == "staged"
    assert max_relative_difference(ours, theirs) <= TOLERANCE
    assert losses[-1] < losses[0] / 2, "the run learns"


def test_muon_steps_as_torch_optim_does(digits):
    # On the matrices (torch's Muon refuses vectors: the biases keep their
    # initial values in both runs). Newton-Schulz runs in bf16 in both, its
    # products summed in other orders, so an entry of an iterate can round
    # to the neighbouring bf16 value (2^-8 relative): one step agrees within
    # two such ulps of the update; a run compounds them, so 200 steps are
    # compared by their losses.
    start, ours, theirs = mlp(), mlp(), mlp()
    train(ours, ot.Muon(matrices(ours), lr=1e-2), digits, 1)
    train(theirs, torch.optim.Muon(matrices(theirs), lr=1e-2), digits, 1)
    for p, q, p0 in zip(matrices(ours), matrices(theirs), matrices(start)):
        update = (q - p0).abs().max().item()
        assert update > 0 and (p - q).abs().max().item() <= 2 * 2**-8 * update
    runs = []
    for model, cls in ((mlp(), ot.Muon), (mlp(), torch.optim.Muon)):
        losses = train(model, cls(matrices(model), lr=1e-2), digits, 200)
        runs.append(sum(losses[-20:]) / 20)
        assert losses[-1] < losses[0] / 2, "the run learns"
    assert abs(runs[0] - runs[1]) <= 0.01 * runs[1], runs


def test_adafactor_state_dicts_resume_and_cross_to_torch_and_back(digits):
    saved = resumes_bit_for_bit(digits, lambda params: ot.Adafactor(params))
    # torch's layout: per row (rows, 1) and per column (1, cols) of the 32 x 64
    # weight; a vector's second moment whole in col_var.
    weight, bias = saved["state"][0], saved["state"][1]
    assert weight["row_var"].shape == (32, 1) and weight["col_var"].shape == (1, 64)
    assert bias["row_var"].shape == (1,) and bias["col_var"].shape == (32,)
    # torch -> optc -> torch on the matrices (torch calls a vector's moment
    # `variance`): each continues the other's run.
    runs = []
    for first, second in ((torch.optim.Adafactor, ot.Adafactor),
                          (ot.Adafactor, torch.optim.Adafactor)):
        model, reference = mlp(), mlp()
        before = first(matrices(model))
        train(model, before, digits, 15)
        after = second(matrices(model))
        after.load_state_dict(copy.deepcopy(before.state_dict()))
        train(model, after, digits, 15, start=15)
        train(reference, torch.optim.Adafactor(matrices(reference)), digits, 30)
        runs.append(max_relative_difference(model, reference))
    assert max(runs) <= 1e-6, runs


def test_matrix_rules_refuse_what_they_cannot_run():
    w = torch.zeros(4, 3, dtype=torch.bfloat16, requires_grad=True)
    with pytest.raises(optc.OptimizerError, match="bf16 storage"):
        ot.Adafactor([w])
    with pytest.raises(optc.OptimizerError, match="ns_steps=5"):
        ot.Muon([torch.zeros(4, 3, requires_grad=True)], ns_steps=6)


def test_cuda_tensors_and_unknown_hyperparameters_are_refused():
    w = torch.zeros(3, requires_grad=True)
    with pytest.raises(TypeError, match="unknown hyperparameter lookahead"):
        ot.Adam([w], lookahead=5)
    with pytest.raises(optc.OptimizerError, match="unknown hyperparameter `momentum`"):
        ot.Adam([{"params": [w], "momentum": 0.9}])
    with pytest.raises(optc.OptimizerError, match="unknown hyperparameter `bogus`"):
        ot.Optimizer([w], rule="adam", bogus=1)
    opt = ot.Adam([w])
    opt.param_groups[0]["amsgrad"] = True
    w.grad = torch.ones(3)
    with pytest.raises(optc.OptimizerError, match="amsgrad=True"):
        opt.step()
    assert torch.equal(w.detach(), torch.zeros(3))
    meta = torch.zeros(3, device="meta", requires_grad=True)
    with pytest.raises(optc.OptimizerError, match="is on meta: optc steps CPU tensors"):
        ot.Adam([meta])
    with pytest.raises(optc.OptimizerError, match="float32 or bfloat16"):
        ot.Adam([torch.zeros(3, dtype=torch.float64, requires_grad=True)])


def test_compile_errors_carry_the_rendered_diagnostic():
    with pytest.raises(optc.CompileError) as error:
        optc.compile("optimizer broken(learning_rate = 1e-3) {\n    p -= learning_rat * g;\n}\n")
    message = str(error.value)
    assert "learning_rat" in message and "<source>:2" in message
    with pytest.raises(optc.CompileError, match="did you mean `adamax`"):
        optc.compile("adma")


def test_a_rule_optc_search_saved_trains_a_torch_model(tmp_path):
    # The CLI that tests/all.sh built before this suite (OPTC overrides it).
    binary = os.environ.get("OPTC", str(pathlib.Path(__file__).resolve().parents[2] / "target" / "release" / "optc"))
    found = tmp_path / "found.opt"
    script = tmp_path / "search.txt"
    script.write_text("\n".join([
        "set population 16", "set seed 5", "set threads 1", "tasks quadratic",
        "load adam", "run 16", f"save 0 {found}",
    ]))
    run = subprocess.run([binary, "search", "--script", str(script)], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    assert found.read_text().startswith("// Found by `optc search`")
    rule = optc.compile(str(found))
    # The search's own task, in torch: a quadratic bowl (no exact-zero
    # gradients, which a winner that dropped `eps` would divide by).
    w = torch.linspace(-2.0, 3.0, 10).requires_grad_()
    opt = ot.Optimizer([w], rule=rule, lr=0.05)
    losses = []
    for _ in range(30):
        opt.zero_grad()
        loss = (w * w).sum()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert all(math.isfinite(x) for x in losses) and losses[-1] < losses[0] / 2


def test_add_param_group_after_steps_keeps_the_state_of_the_others():
    a, b = torch.ones(3, requires_grad=True), torch.ones(2, requires_grad=True)
    ours = ot.Adam([a], lr=0.1)
    a2, b2 = torch.ones(3, requires_grad=True), torch.ones(2, requires_grad=True)
    theirs = torch.optim.Adam([a2], lr=0.1)
    for opt, x in ((ours, a), (theirs, a2)):
        x.grad = torch.tensor([1.0, -2.0, 3.0])
        opt.step()
    ours.add_param_group({"params": [b], "lr": 0.5})
    theirs.add_param_group({"params": [b2], "lr": 0.5})
    for opt, x, y in ((ours, a, b), (theirs, a2, b2)):
        x.grad, y.grad = torch.tensor([0.5, 0.5, -1.0]), torch.tensor([2.0, -1.0])
        opt.step()
    assert torch.allclose(a, a2, rtol=1e-6) and torch.allclose(b, b2, rtol=1e-6)
    assert [ours.state_dict()["state"][i]["step"].item() for i in (0, 1)] == [2, 1]


def test_optc_checkpoints_resume_bit_for_bit_and_a_bad_one_changes_nothing(tmp_path, digits):
    model, again = mlp(), mlp()
    opt = ot.AdamW(model.parameters(), lr=1e-2)
    train(model, opt, digits, 10)
    opt.save_checkpoint(tmp_path / "opt.ckpt")
    again.load_state_dict(model.state_dict())
    resumed = ot.AdamW(again.parameters(), lr=1e-2)
    resumed.load_checkpoint(tmp_path / "opt.ckpt")
    train(model, opt, digits, 5)
    train(again, resumed, digits, 5)
    assert all(torch.equal(p, q) for p, q in zip(model.parameters(), again.parameters()))
    (tmp_path / "bad.ckpt").write_bytes(b"not a checkpoint")
    before = copy.deepcopy(resumed.state_dict())
    with pytest.raises(optc.OptimizerError, match="checkpoint"):
        resumed.load_checkpoint(tmp_path / "bad.ckpt")
    after = resumed.state_dict()
    assert all(torch.equal(v, after["state"][i][k]) for i, e in before["state"].items() for k, v in e.items())


def test_non_finite_gradients_skip_the_step_when_asked():
    w = torch.ones(4, requires_grad=True)
    opt = ot.Optimizer([w], rule="adam", lr=0.1, non_finite="skip")
    w.grad = torch.tensor([1.0, float("nan"), 1.0, 1.0])
    opt.step()
    assert opt.skipped == (0, 1) and torch.equal(w.detach(), torch.ones(4))
    assert opt.state_dict()["state"] == {}
    w.grad = torch.ones(4)
    opt.step()
    assert opt.skipped is None and w[0].item() < 1.0
