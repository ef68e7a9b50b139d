"""The numpy functional API: a compiled rule with bound hyperparameters,
``init`` for the state of some shapes, ``step`` in place on float32 arrays.

The state is an opaque ``State`` (it lives in the optimizer's own memory,
next to the compiled kernels); ``state[slot]`` copies a slot out.
"""


import numpy as np

from . import _optc


def default_value(text):
    """A hyperparameter default's source text as a Python value, or None
    where it is not a constant (a schedule of ``t``)."""
    if text in ("true", "false"):
        return text == "true"
    try:
        return float(text)
    except (TypeError, ValueError):
        return None


class Rule:
    """A compiled rule and hyperparameter values for every ``step``."""

    def __init__(self, native, hypers):
        self.native = native
        known = {name for name, _, _ in native.hypers}
        unknown = sorted(set(hypers) - known)
        if unknown:
            raise _optc.OptimizerError(
                f"unknown hyperparameter {', '.join(unknown)} for `{native.name}` "
                f"(it has: {', '.join(sorted(known))})"
            )
        self.hypers = dict(hypers)

    @property
    def name(self):
        return self.native.name

    @property
    def defaults(self):
        """Every hyperparameter's default (None where it has none or it is a schedule)."""
        return {name: default_value(text) for name, _, text in self.native.hypers}

    @property
    def states(self):
        """``(slot, shape)`` per state slot; shape ``elem``, ``rows``, ``cols``,
        ``tensor`` or ``group``."""
        return self.native.states

    def __repr__(self):
        bound = ", ".join(f"{k}={v!r}" for k, v in self.hypers.items())
        return f"optc.Rule({self.name}{', ' if bound else ''}{bound})"

    def __str__(self):
        return str(self.native)

    def init(self, shapes, *, threads=1, backend=None, scalars="f64"):
        """The state of a step over arrays of ``shapes`` (all slots at their
        initial values; the first ``step`` is step 1)."""
        shapes = [tuple(int(d) for d in s) for s in shapes]
        tensors = [(str(i), list(s)) for i, s in enumerate(shapes)]
        engine = _optc.Engine(
            self.native, tensors, [], list(self.hypers.items()), "float32", "float32",
            threads=threads, backend=backend, scalars=scalars,
        )
        return State(engine, shapes, self.native.states, dict(self.hypers))

    def step(self, params, grads, state, **hypers):
        """One step, in place: ``params`` (float32, C-contiguous, writeable
        arrays of the shapes ``init`` was given) from ``grads``; ``hypers``
        override this call's (and later calls') values. On error nothing
        changes."""
        if not isinstance(state, State):
            raise TypeError(f"state must come from {self.name}.init, not {type(state).__name__}")
        params, grads = list(params), list(grads)
        if len(params) != len(state.shapes) or len(grads) != len(state.shapes):
            raise _optc.OptimizerError(
                f"expected {len(state.shapes)} parameters and gradients (as init was given), "
                f"got {len(params)} and {len(grads)}"
            )
        addresses = [
            _address(a, s, "parameter", i, writeable=True)
            for i, (a, s) in enumerate(zip(params, state.shapes))
        ]
        gradients = [
            _address(a, s, "gradient", i, writeable=False)
            for i, (a, s) in enumerate(zip(grads, state.shapes))
        ]
        state.apply(hypers)
        return state.engine.step(addresses, gradients)


class State:
    """A rule's state for some shapes; ``state[slot]`` copies one slot out
    (one array per tensor for per-element slots, of the tensor's shape, and
    for per-row and per-column ones, of its rows or columns; one float per
    tensor or group for the others), ``state.steps`` is each tensor's step count."""

    def __init__(self, engine, shapes, slots, hypers):
        self.engine, self.shapes, self.slots = engine, shapes, slots
        self.applied = hypers

    @property
    def steps(self):
        return self.engine.tensor_steps()

    def apply(self, hypers):
        """Sets the hyperparameters that differ from the ones in force."""
        for name, value in hypers.items():
            if self.applied.get(name, object()) != value:
                self.engine.set("default", name, value)
                self.applied[name] = value

    def __getitem__(self, slot):
        names = [name for name, _ in self.slots]
        if slot not in names:
            raise KeyError(f"no state slot {slot!r} (slots: {', '.join(names)})")
        lengths = self.engine.state_lengths()
        outs = [
            None if n is None
            else [np.empty(s if shape == "elem" else (m,), np.float32)
                  for s, m in zip(self.shapes, n)]
            for (_, shape), n in zip(self.slots, lengths)
        ]
        addresses = [None if o is None else [a.ctypes.data for a in o] for o in outs]
        scalars = self.engine.export_state(addresses)
        k = names.index(slot)
        return outs[k] if outs[k] is not None else scalars[k]


def _address(array, shape, what, index, writeable):
    """The address of a float32 C-contiguous array of ``shape``, or a clear error."""
    if not isinstance(array, np.ndarray):
        raise TypeError(f"{what} {index}: a numpy array, not {type(array).__name__}")
    problem = None
    if array.dtype != np.float32:
        problem = f"is {array.dtype}; the numpy API steps float32 arrays"
    elif array.shape != shape:
        problem = f"has shape {array.shape}, expected {shape} (as init was given)"
    elif not array.flags.c_contiguous:
        problem = "is not C-contiguous (np.ascontiguousarray makes a copy to step)"
    elif writeable and not array.flags.writeable:
        problem = "is read-only"
    if problem:
        raise _optc.OptimizerError(f"{what} {index} {problem}")
    return array.ctypes.data


def compile(source, rule=None, **hypers):
    """A rule from the stdlib by name (``"adamw"``), a path to a ``.opt`` file
    (one ``optc search`` saved, say) or ``.opt`` source text, with
    hyperparameter values (numbers, bools, or schedules as text:
    ``learning_rate="warmup_cosine_decay(0.0, 1e-3, 100, 1000)"``).
    ``rule`` picks one optimizer of a file with several. Raises
    ``optc.CompileError`` with the rendered diagnostic."""
    return Rule(_optc.compile(str(source), rule), hypers)
