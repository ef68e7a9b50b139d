"""The numpy functional API: init/step in place, state read back, hyperparameters
per call, and clear errors that change nothing."""

import numpy as np
import pytest

import optc


def adam_reference(p, grads, lr, b1=0.9, b2=0.999, eps=1e-8):
    """Adam in float64 numpy, as the paper writes it."""
    p, m, v = p.astype(np.float64), 0.0, 0.0
    for t, g in enumerate(grads, start=1):
        m = b1 * m + (1 - b1) * g
        v = b2 * v + (1 - b2) * g * g
        p = p - lr * (m / (1 - b1**t)) / (np.sqrt(v / (1 - b2**t)) + eps)
    return p


def test_steps_in_place_and_matches_the_update_equations():
    rng = np.random.default_rng(0)
    shapes = [(7, 3), (5,)]
    params = [rng.standard_normal(s).astype(np.float32) for s in shapes]
    start = [p.copy() for p in params]
    grads = [[rng.standard_normal(s).astype(np.float32) for s in shapes] for _ in range(10)]
    rule = optc.compile("adam", learning_rate=0.01)
    state = rule.init(shapes)
    addresses = [p.ctypes.data for p in params]
    for g in grads:
        rule.step(params, g, state)
    assert [p.ctypes.data for p in params] == addresses
    for i in range(2):
        expected = adam_reference(start[i], [g[i] for g in grads], 0.01)
        assert np.allclose(params[i], expected, rtol=1e-5, atol=1e-6)
    assert state.steps == [10, 10]
    assert [m.shape for m in state["mu"]] == shapes


def test_matrix_rules_keep_state_per_row_and_column():
    rng = np.random.default_rng(1)
    shapes = [(4, 3), (5,)]
    params = [np.ones(s, np.float32) for s in shapes]
    grads = [rng.standard_normal(s).astype(np.float32) for s in shapes]
    rule = optc.compile("adafactor")
    state = rule.init(shapes)
    rule.step(params, grads, state)
    rows, cols = state["row_var"], state["col_var"]
    assert [r.shape for r in rows] == [(4,), (1,)]
    assert [c.shape for c in cols] == [(3,), (5,)]
    # Step 1: beta = 1^beta2_decay = 1, so the moments are the means of g^2
    # over each row and each column; a vector's is g^2 itself.
    squares = [g.astype(np.float64) ** 2 for g in grads]
    assert np.allclose(rows[0], squares[0].mean(axis=1), rtol=1e-6)
    assert np.allclose(cols[0], squares[0].mean(axis=0), rtol=1e-6)
    assert np.allclose(cols[1], squares[1], rtol=1e-6)
    assert all((p != 1).all() for p in params)


def test_hyperparameters_per_call_take_effect():
    rule = optc.compile("sgd")
    state = rule.init([(2,)])
    p = np.zeros(2, np.float32)
    rule.step([p], [np.ones(2, np.float32)], state, learning_rate=0.5)
    rule.step([p], [np.ones(2, np.float32)], state, learning_rate=0.25)
    assert np.array_equal(p, np.full(2, -0.75, np.float32))


@pytest.mark.parametrize(
    "spoil,message",
    [
        (lambda p, g: (p.astype(np.float64), g), "float64"),
        (lambda p, g: (p, g[:, :2]), "shape"),
        (lambda p, g: (np.asfortranarray(p), g), "C-contiguous"),
        (lambda p, g: (p[::2], g[::2]), "shape"),
    ],
    ids=["dtype", "shape", "contiguous", "strided"],
)
def test_bad_arrays_raise_and_change_nothing(spoil, message):
    rule = optc.compile("adam")
    state = rule.init([(4, 3)])
    p, g = np.ones((4, 3), np.float32), np.ones((4, 3), np.float32)
    rule.step([p], [g], state)
    before, mu = p.copy(), state["mu"][0].copy()
    bad_p, bad_g = spoil(p, g)
    with pytest.raises(optc.OptimizerError, match=message):
        rule.step([bad_p], [bad_g], state)
    assert np.array_equal(p, before) and np.array_equal(state["mu"][0], mu)
    assert state.steps == [1]


def test_read_only_arrays_and_unknown_names_are_refused():
    rule = optc.compile("adam")
    state = rule.init([(3,)])
    p = np.ones(3, np.float32)
    p.flags.writeable = False
    with pytest.raises(optc.OptimizerError, match="read-only"):
        rule.step([p], [np.ones(3, np.float32)], state)
    with pytest.raises(optc.OptimizerError, match="unknown hyperparameter lr"):
        optc.compile("adam", lr=0.1)
    with pytest.raises(KeyError, match="slots: mu, nu"):
        state["exp_avg"]
