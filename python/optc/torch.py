"""Every optc rule as a ``torch.optim.Optimizer``.

``Optimizer(params, rule="adamw", lr=..., **hypers)`` runs any rule (a stdlib
name, a ``.opt`` path, source text, or an ``optc.compile`` result) with
torch's names where torch has one (``lr`` for ``learning_rate``,
``betas=(b1, b2)``) and the rule's own otherwise. ``Adam``, ``AdamW``,
``SGD``, ``RMSprop``, ``Adagrad``, ``RAdam``, ``NAdam``, ``Adamax``,
``Adafactor`` and ``Muon`` take torch's arguments and defaults, and their
``state_dict`` is torch's layout: a checkpoint of ``torch.optim.AdamW``
loads into ``optc.torch.AdamW`` and back. Rules that see a tensor as a
matrix (Adafactor, SM3, Muon) get each parameter's shape.

Parameters are CPU float32 or bfloat16 tensors, contiguous, updated in place
through their addresses (no copies). Parameter groups step together; a
parameter whose ``.grad`` is None is skipped; writes to
``param_groups[i]["lr"]`` (what ``torch.optim.lr_scheduler`` does) and to
any other hyperparameter take effect at the next step without recompiling.
A step that fails (a wrong dtype, a CUDA tensor, an unknown
hyperparameter) raises and changes nothing. Under FSDP2 (DTensor
parameters) each rank steps its local shards, reductions gathered across
ranks; ``Optimizer.shard`` does the same for a ZeRO-style sharding.
"""

import math

import torch

from . import _optc
from .functional import Rule
from .functional import compile as compile_rule

# Keys torch and its schedulers keep in param groups that are not hyperparameters.
_BOOKKEEPING = {
    "params", "param_names", "name", "initial_lr", "max_lr", "min_lr", "max_momentum",
    "base_momentum", "foreach", "fused", "capturable", "differentiable",
}
_DTYPES = {torch.float32: "float32", torch.bfloat16: "bfloat16"}
_STATE_DTYPES = {"f32": torch.float32, "f64": torch.float32, "bf16": torch.bfloat16}


class Spec:
    """How a torch-style optimizer maps onto a rule: each param-group key
    to the rule's hyperparameters (``betas`` to two), values the group dicts
    do not show (``fixed``), keys that chose the rule and must not change
    (``selectors``), and torch's names of the state slots."""

    def __init__(self, rule, keys, defaults, fixed=None, selectors=None, state_names=None):
        self.rule, self.keys, self.defaults = rule, keys, defaults
        self.fixed = fixed or {}
        self.selectors = selectors or {}
        self.state_names = state_names or {}

    @classmethod
    def of_rule(cls, rule, hypers):
        """Torch's names for a rule's hyperparameters: ``lr``, ``betas``, the
        rule's own otherwise; defaults the rule's, then ``hypers``."""
        native = rule.native
        names = [name for name, _, _ in native.hypers]
        keys = {}
        for name in names:
            if name == "learning_rate":
                keys["lr"] = ("learning_rate",)
            elif name in ("b1", "b2") and "b1" in names and "b2" in names:
                keys["betas"] = ("b1", "b2")
            else:
                keys[name] = (name,)
        own = {**rule.defaults, **rule.hypers}
        defaults = {}
        for key, targets in keys.items():
            values = [own.get(t) for t in targets]
            if all(v is not None for v in values):
                defaults[key] = tuple(values) if len(values) > 1 else values[0]
        for key, value in hypers.items():
            key = "lr" if key == "learning_rate" else key
            if key not in keys:
                raise _optc.OptimizerError(
                    f"unknown hyperparameter `{key}` for `{native.name}` "
                    f"(it has: {', '.join(keys)})"
                )
            defaults[key] = value
        return cls(rule, keys, defaults)

    def check_group(self, group):
        for key in group:
            if key not in self.keys and key not in self.selectors and key not in _BOOKKEEPING:
                if key == "maximize" and not group[key]:
                    continue
                raise _optc.OptimizerError(
                    f"unknown hyperparameter `{key}` for `{self.rule.name}` "
                    f"(it has: {', '.join(list(self.keys) + list(self.selectors))})"
                )
        for key, chosen in self.selectors.items():
            if key in group and group[key] != chosen:
                raise _optc.OptimizerError(
                    f"`{key}={group[key]!r}` in a param group, but this optimizer was built "
                    f"with {key}={chosen!r} (it chose the rule `{self.rule.name}`): build a new one"
                )

    def values(self, group):
        """The rule's ``(name, value)`` pairs for a param group."""
        pairs = []
        for key, targets in self.keys.items():
            if key not in group:
                continue
            value = group[key]
            if len(targets) > 1:
                value = tuple(value)
                if len(value) != len(targets):
                    raise _optc.OptimizerError(
                        f"`{key}` is {len(targets)} values ({', '.join(targets)}), got {value!r}"
                    )
            else:
                value = (value,)
            for target, v in zip(targets, value):
                if v is None:
                    # torch's "the default" (Adafactor's eps=(None, 1e-3)): the rule's.
                    v = self.rule.defaults[target]
                pairs.append((target, v.item() if isinstance(v, torch.Tensor) else v))
        return pairs


class Optimizer(torch.optim.Optimizer):
    """An optc rule as a torch optimizer (see the module documentation).

    ``threads``: threads a step runs on. ``backend``: ``tiered`` and
    ``llvm`` (in builds with the LLVM tier), ``cranelift``, ``reference`` or
    ``interp`` (default: the fastest here; the compiled tiers agree bit for
    bit).
    ``group_reductions``: ``"per_group"`` (torch's semantics) or ``"across"``.
    ``state_dtype``: per-element state's dtype (default: the parameters').
    ``non_finite="skip"``: skip steps with non-finite gradients; ``opt.skipped``
    says where (None when the step ran).
    """

    def __init__(self, params, rule="adamw", *, threads=1, backend=None,
                 group_reductions="per_group", scalars="f64", non_finite="propagate",
                 state_dtype=None, stochastic_rounding=False, seed=0, **hypers):
        if not isinstance(rule, Rule):
            rule = compile_rule(rule)
        self._init(params, Spec.of_rule(rule, hypers), threads=threads, backend=backend,
                   group_reductions=group_reductions, scalars=scalars, non_finite=non_finite,
                   state_dtype=state_dtype, stochastic_rounding=stochastic_rounding, seed=seed)

    def _init(self, params, spec, **settings):
        self._spec, self._settings, self._engine = spec, settings, None
        super().__init__(params, spec.defaults)
        self._build()

    @property
    def rule(self):
        """The compiled rule (``print(opt.rule)`` shows its IR)."""
        return self._spec.rule

    @property
    def backend(self):
        return self._engine.backend

    def add_param_group(self, param_group):
        self._spec.check_group({k: v for k, v in param_group.items() if k != "params"})
        super().add_param_group(param_group)
        if self._engine is not None:
            # New tensors: a new engine, with the state of the old ones.
            state = self._torch_state()
            self._build()
            self._load_torch_state(state)

    def _flat(self):
        return [p for group in self.param_groups for p in group["params"]]

    def _build(self):
        full = self._flat()
        # FSDP2's DTensor parameters: this rank steps its local shards.
        self._distributed = any(_is_dtensor(p) for p in full)
        params = [_local(p) for p in full]
        if not params:
            raise _optc.OptimizerError("optimizer got an empty parameter list")
        dtypes = {p.dtype for p in params}
        if len(dtypes) > 1:
            raise _optc.OptimizerError(
                f"parameters of several dtypes ({', '.join(map(str, dtypes))}): give each "
                "dtype its own optimizer"
            )
        dtype = dtypes.pop()
        for i, p in enumerate(params):
            self._check(p, i, "parameter", dtype, p.numel())
        state_dtype = self._settings["state_dtype"] or dtype
        names = [f"{g}.{j}" for g, group in enumerate(self.param_groups)
                 for j in range(len(group["params"]))]
        # With their shapes: rules with per-row or per-column values factor by them.
        tensors = [(name, list(p.shape)) for name, p in zip(names, params)]
        groups = [(f"group{g}", [f"{g}.*"], self._spec.values(group))
                  for g, group in enumerate(self.param_groups)]
        settings = {k: v for k, v in self._settings.items() if k != "state_dtype"}
        self._engine = _optc.Engine(
            self._spec.rule.native, tensors, groups, list(self._spec.fixed.items()),
            _name_of(dtype), _name_of(state_dtype), **settings,
        )
        self._dtype, self._numels = dtype, [p.numel() for p in params]
        self._shapes = [p.shape for p in params]
        self._applied = [dict(values) for _, _, values in groups]
        if self._distributed:
            self.shard([p.numel() for p in full])

    @staticmethod
    def _check(t, i, what, dtype, numel):
        problem = None
        if t.is_sparse:
            problem = "is sparse; optc steps dense tensors"
        elif not t.is_cpu:
            problem = (f"is on {t.device}: optc steps CPU tensors (a GPU backend that "
                       "addresses CUDA memory is not there yet)")
        elif t.dtype is not dtype:
            problem = f"is {t.dtype}, the parameters are {dtype} (float32 or bfloat16)"
        elif t.numel() != numel:
            problem = f"has {t.numel()} elements, its parameter {numel}"
        elif not t.is_contiguous():
            problem = "is not contiguous (optc updates memory in place: make it .contiguous())"
        if problem:
            raise _optc.OptimizerError(f"{what} {i} (shape {tuple(t.shape)}) {problem}")

    def _push_hypers(self):
        """Sets, group by group, the values that changed since the last step."""
        updates = []
        for g, group in enumerate(self.param_groups):
            self._spec.check_group({k: v for k, v in group.items() if k != "params"})
            for name, value in self._spec.values(group):
                if self._applied[g].get(name, object()) != value:
                    updates.append((g, name, value))
        for g, name, value in updates:
            self._engine.set(f"group{g}", name, value)
            self._applied[g][name] = value

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        params = self._flat()
        if len(params) != len(self._numels):
            raise _optc.OptimizerError("param_groups' parameters changed: use add_param_group")
        dtype, numels, check = self._dtype, self._numels, self._check
        addresses, gradients = [], []
        distributed = self._distributed
        for i, p in enumerate(params):
            g = p.grad
            if distributed:
                p, g = _local(p), None if g is None else _local(g)
            if (p.dtype is not dtype or not p.is_cpu or not p.is_contiguous()
                    or p.numel() != numels[i]):
                check(p, i, "parameter", dtype, numels[i])
            addresses.append(p.data_ptr())
            if g is None:
                gradients.append(None)
                continue
            if (g.dtype is not dtype or g.is_sparse or not g.is_cpu or not g.is_contiguous()
                    or g.numel() != numels[i]):
                check(g, i, "gradient", dtype, numels[i])
            gradients.append(g.data_ptr())
        self._push_hypers()
        skipped = self._engine.step(addresses, gradients)
        self.skipped = skipped
        return loss

    # -- state ------------------------------------------------------------

    def _slot_sizes(self):
        """Per state slot, the shape of its tensor per parameter, or None for
        slots of one number per tensor or group: the parameter's shape for
        per-element slots; for per-row and per-column ones (leading
        dimensions fold into the rows) torch.optim.Adafactor's layout,
        ``(..., rows, 1)`` and ``(1, ..., cols)`` for a matrix, flat for a
        vector."""
        def shaped(slot, lengths):
            if lengths is None:
                return None
            if slot == "elem":
                return list(self._shapes)
            return [(n,) if len(shape) < 2
                    else (*shape[:-1], 1) if slot == "rows" else (*(1,) * (len(shape) - 1), n)
                    for shape, n in zip(self._shapes, lengths)]
        return [shaped(slot, lengths) for (_, slot), lengths
                in zip(self._spec.rule.native.states, self._engine.state_lengths())]

    def _slot_names(self):
        return [(slot, shape, self._spec.state_names.get(slot, slot))
                for slot, shape in self._spec.rule.native.states]

    def _torch_state(self):
        """The state in torch's layout: ``{index: {"step": tensor, name: tensor}}``
        for every parameter that has stepped."""
        dtype = _STATE_DTYPES[self._engine.state_dtype()]
        slots = self._slot_names()
        # Sized by the engine's tensors (a parameter's data may have been replaced since).
        outs = [None if sizes is None else [torch.empty(size, dtype=dtype) for size in sizes]
                for sizes in self._slot_sizes()]
        scalars = self._engine.export_state(
            [None if o is None else [t.data_ptr() for t in o] for o in outs])
        group_of = [g for g, group in enumerate(self.param_groups) for _ in group["params"]]
        state = {}
        for i, steps in enumerate(self._engine.tensor_steps()):
            if steps == 0:
                continue
            entry = {"step": torch.tensor(float(steps), dtype=torch.float32)}
            for k, (_, shape, name) in enumerate(slots):
                if outs[k] is not None:
                    entry[name] = outs[k][i]
                elif shape == "tensor":
                    entry[name] = torch.tensor(scalars[k][i], dtype=torch.float32)
                else:  # group slots: the engine's groups are the default one, then ours
                    entry[name] = torch.tensor(scalars[k][group_of[i] + 1], dtype=torch.float32)
            state[i] = entry
        return state

    def _load_torch_state(self, state):
        dtype = _STATE_DTYPES[self._engine.state_dtype()]
        slots = self._slot_names()
        steps, keep = [], []
        sizes = self._slot_sizes()
        elems = [None if n is None else [] for n in sizes]
        scalars = [[] if n is None else None for n in sizes]
        groups = len(self.param_groups) + 1
        for k, (_, shape, _) in enumerate(slots):
            if shape == "group":
                scalars[k] = [math.nan] * groups
        group_of = [g for g, group in enumerate(self.param_groups) for _ in group["params"]]
        for i in range(len(self._numels)):
            entry = state.get(i, state.get(str(i), {}))
            step = entry.get("step")
            if step is None:
                # torch.optim.SGD keeps no step count: a momentum buffer means it stepped.
                step = 1 if any(v is not None for v in entry.values()) else 0
            steps.append(int(step.item() if isinstance(step, torch.Tensor) else step))
            for k, (slot, shape, name) in enumerate(slots):
                value = entry.get(name)
                if steps[i] > 0 and name not in entry:
                    raise _optc.OptimizerError(
                        f"state of parameter {i} has no `{name}` (it has: {', '.join(entry)})")
                if sizes[k] is not None:
                    if value is None:
                        value = torch.zeros(sizes[k][i], dtype=dtype)
                    value = value.detach().to(device="cpu", dtype=dtype).contiguous()
                    wanted = math.prod(sizes[k][i])
                    if value.numel() != wanted:
                        whose = "the parameter" if shape == "elem" else f"its {shape}"
                        raise _optc.OptimizerError(
                            f"state `{name}` of parameter {i} has {value.numel()} elements, "
                            f"{whose} {wanted}")
                    keep.append(value)
                    elems[k].append(value.data_ptr())
                else:
                    number = math.nan if value is None else float(value)
                    if shape == "tensor":
                        scalars[k].append(number)
                    elif steps[i] > 0:
                        scalars[k][group_of[i] + 1] = number
        self._engine.import_state(steps, elems, scalars)

    def state_dict(self):
        """torch's layout: ``state`` per parameter index (``step`` and the
        rule's slots under torch's names, see docs/python.md), and
        ``param_groups`` with their hyperparameters."""
        saved = super().state_dict()
        saved["state"] = self._torch_state()
        return saved

    def load_state_dict(self, state_dict):
        """Loads a ``state_dict`` of this optimizer, or of the torch.optim
        optimizer its rule matches. On error nothing changes."""
        groups = [dict(g) for g in self.param_groups]
        for saved in state_dict["param_groups"]:
            self._spec.check_group({k: v for k, v in saved.items() if k != "params"})
        super().load_state_dict({"state": {}, "param_groups": state_dict["param_groups"]})
        try:
            self._load_torch_state(state_dict["state"])
        except Exception:
            for group, old in zip(self.param_groups, groups):
                group.clear()
                group.update(old)
            raise
        self.state.clear()

    def save_checkpoint(self, path):
        """An optc checkpoint (atomic; restores bit for bit with ``load_checkpoint``)."""
        self._engine.save(str(path))

    def load_checkpoint(self, path):
        self._engine.load(str(path))

    # -- sharding ---------------------------------------------------------

    def shard(self, full_numels, group=None):
        """Makes this optimizer's parameters this rank's shards of tensors of
        ``full_numels`` elements under ``torch.distributed`` (``group``: the
        process group). Reductions (LAMB's trust ratio, global-norm
        clipping) gather every rank's partials; with shards from
        ``optc.shard_range`` the result equals an unsharded step bit for bit.
        Called by the optimizer itself for FSDP2's DTensor parameters (their
        local shards are row ranges: reductions agree within rounding)."""
        import torch.distributed as dist

        def all_gather(local):
            out = [None] * dist.get_world_size(group)
            dist.all_gather_object(out, local, group=group)
            return out

        self._engine.shard(list(full_numels), all_gather)


def _is_dtensor(t):
    return type(t).__name__ == "DTensor" and hasattr(t, "to_local")


def _local(t):
    """A DTensor's local shard (the same storage), or the tensor itself."""
    return t.to_local() if _is_dtensor(t) else t


def _name_of(dtype):
    if dtype not in _DTYPES:
        raise _optc.OptimizerError(f"parameters are float32 or bfloat16, not {dtype}")
    return _DTYPES[dtype]


# -- torch.optim's optimizers, with torch's arguments and state names -------


def _l2(base):
    """``base`` with torch's L2 weight decay (``g += weight_decay * p``) in front."""
    return compile_rule(
        f"optimizer {base}_l2(weight_decay = 0.0) {{\n    g += weight_decay * p;\n    use {base};\n}}\n")


def _weight_decays(params, weight_decay):
    groups = list(params)
    if groups and isinstance(groups[0], dict):
        return groups, any(g.get("weight_decay", weight_decay) for g in groups)
    return groups, bool(weight_decay)


def _torch_class(name, torch_defaults, choose, doc):
    """A torch.optim look-alike: ``choose(args, any_weight_decay)`` gives
    ``(rule, keys, fixed, selectors, state_names)``."""

    def __init__(self, params, *args, threads=1, backend=None, group_reductions="per_group",
                 state_dtype=None, stochastic_rounding=False, seed=0, **kwargs):
        names = list(torch_defaults)
        if len(args) > len(names):
            raise TypeError(f"{name}() takes at most {len(names)} positional hyperparameters")
        given = dict(zip(names, args))
        unknown = sorted(set(kwargs) - set(names) - {"maximize", "foreach", "fused",
                                                      "capturable", "differentiable"})
        if unknown:
            raise TypeError(f"{name}() got unknown hyperparameter {', '.join(unknown)} "
                            f"(it takes: {', '.join(names)})")
        if kwargs.get("maximize"):
            raise _optc.OptimizerError(f"{name}(maximize=True): negate the loss instead")
        given.update({k: v for k, v in kwargs.items() if k in names})
        values = {**torch_defaults, **given}
        params, decays = _weight_decays(params, values.get("weight_decay", 0))
        rule, keys, fixed, selectors, state_names = choose(values, decays)
        # Selectors stay in the groups, as torch keeps them (and needs them on load).
        defaults = {k: values[k] for k in list(keys) + list(selectors)}
        # The bookkeeping torch.optim's own steps read, so our state_dict loads into them.
        defaults.update(maximize=False, foreach=None)
        spec = Spec(rule, keys, defaults, fixed, {k: values[k] for k in selectors}, state_names)
        self._init(params, spec, threads=threads, backend=backend,
                   group_reductions=group_reductions, scalars="f64", non_finite="propagate",
                   state_dtype=state_dtype, stochastic_rounding=stochastic_rounding, seed=seed)

    return type(name, (Optimizer,), {"__init__": __init__, "__doc__": doc})


_ADAM_KEYS = {"lr": ("learning_rate",), "betas": ("b1", "b2"), "eps": ("eps",)}
_ADAM_STATE = {"mu": "exp_avg", "nu": "exp_avg_sq", "nu_max": "max_exp_avg_sq"}


def _adam(v, decays):
    keys = dict(_ADAM_KEYS)
    if v["decoupled_weight_decay"]:
        rule = compile_rule("adamw_amsgrad" if v["amsgrad"] else "adamw")
        keys["weight_decay"] = ("weight_decay",)
    elif decays:
        rule = _l2("adam_amsgrad") if v["amsgrad"] else compile_rule("adam_l2")
        keys["weight_decay"] = ("weight_decay",)
    else:
        rule = compile_rule("adam_amsgrad" if v["amsgrad"] else "adam")
    selectors = ["amsgrad", "decoupled_weight_decay"]
    if "weight_decay" not in keys:
        selectors.append("weight_decay")
    return rule, keys, {}, selectors, _ADAM_STATE


Adam = _torch_class(
    "Adam", {"lr": 1e-3, "betas": (0.9, 0.999), "eps": 1e-8, "weight_decay": 0.0, "amsgrad": False,
             "decoupled_weight_decay": False},
    _adam, "torch.optim.Adam on optc's `adam`, `adam_l2` or `adam_amsgrad`.")
AdamW = _torch_class(
    "AdamW", {"lr": 1e-3, "betas": (0.9, 0.999), "eps": 1e-8, "weight_decay": 1e-2, "amsgrad": False,
              "decoupled_weight_decay": True},
    _adam, "torch.optim.AdamW on optc's `adamw` or `adamw_amsgrad`.")


def _sgd(v, decays):
    if v["nesterov"] and (v["momentum"] <= 0 or v["dampening"] != 0):
        raise _optc.OptimizerError("Nesterov momentum requires a momentum and zero dampening")
    keys = {k: (k,) for k in ("momentum", "dampening", "weight_decay", "nesterov")}
    keys["lr"] = ("learning_rate",)
    return compile_rule("sgd_momentum"), keys, {}, [], {"trace": "momentum_buffer"}


SGD = _torch_class(
    "SGD", {"lr": 1e-3, "momentum": 0.0, "dampening": 0.0, "weight_decay": 0.0, "nesterov": False},
    _sgd, "torch.optim.SGD on optc's `sgd_momentum` (its `trace` is torch's momentum_buffer).")


def _rmsprop(v, decays):
    name = "rmsprop" + ("_centered" if v["centered"] else "") + ("_momentum" if v["momentum"] else "")
    rule = _l2(name) if decays else compile_rule(name)
    keys = {"lr": ("learning_rate",), "alpha": ("decay",), "eps": ("eps",)}
    selectors = ["centered"]
    if v["momentum"]:
        keys["momentum"] = ("momentum",)
    else:
        selectors.append("momentum")
    if decays:
        keys["weight_decay"] = ("weight_decay",)
    else:
        selectors.append("weight_decay")
    state = {"nu": "square_avg", "mu": "grad_avg", "trace": "momentum_buffer"}
    return rule, keys, {"eps_in_sqrt": False}, selectors, state


RMSprop = _torch_class(
    "RMSprop", {"lr": 1e-2, "alpha": 0.99, "eps": 1e-8, "weight_decay": 0.0, "momentum": 0.0,
                "centered": False},
    _rmsprop, "torch.optim.RMSprop on optc's `rmsprop`, `rmsprop_momentum`, "
              "`rmsprop_centered` or `rmsprop_centered_momentum` (eps outside the square root).")


def _adagrad(v, decays):
    keys = {k: (k,) for k in ("lr_decay", "weight_decay", "initial_accumulator_value", "eps")}
    keys["lr"] = ("learning_rate",)
    return compile_rule("adagrad"), keys, {}, [], {"sum_of_squares": "sum"}


Adagrad = _torch_class(
    "Adagrad", {"lr": 1e-2, "lr_decay": 0.0, "weight_decay": 0.0, "initial_accumulator_value": 0.0,
                "eps": 1e-10},
    _adagrad, "torch.optim.Adagrad on optc's `adagrad`.")


def _decoupled(base, extra_keys, state):
    def choose(v, decays):
        keys = {**_ADAM_KEYS, **{k: (k,) for k in extra_keys}}
        if v.get("decoupled_weight_decay"):
            rule = compile_rule(base + "w")
            keys["weight_decay"] = ("weight_decay",)
        elif decays:
            rule = _l2(base)
            keys["weight_decay"] = ("weight_decay",)
        else:
            rule = compile_rule(base)
        selectors = [k for k in ("decoupled_weight_decay",) if k in v]
        if "weight_decay" not in keys:
            selectors.append("weight_decay")
        return rule, keys, {}, selectors, state
    return choose


RAdam = _torch_class(
    "RAdam", {"lr": 1e-3, "betas": (0.9, 0.999), "eps": 1e-8, "weight_decay": 0.0,
              "decoupled_weight_decay": False},
    _decoupled("radam", [], {"mu": "exp_avg", "nu": "exp_avg_sq"}),
    "torch.optim.RAdam on optc's `radam`, `radamw` or `radam` behind L2 weight decay.")
NAdam = _torch_class(
    "NAdam", {"lr": 2e-3, "betas": (0.9, 0.999), "eps": 1e-8, "weight_decay": 0.0,
              "momentum_decay": 4e-3, "decoupled_weight_decay": False},
    _decoupled("nadam", ["momentum_decay"],
               {"mu": "exp_avg", "nu": "exp_avg_sq", "mu_product": "mu_product"}),
    "torch.optim.NAdam on optc's `nadam`, `nadamw` or `nadam` behind L2 weight decay.")


def _adamax(v, decays):
    keys = dict(_ADAM_KEYS)
    if decays:
        keys["weight_decay"] = ("weight_decay",)
    return (_l2("adamax") if decays else compile_rule("adamax")), keys, {}, \
        ([] if decays else ["weight_decay"]), {"mu": "exp_avg", "nu": "exp_inf"}


Adamax = _torch_class(
    "Adamax", {"lr": 2e-3, "betas": (0.9, 0.999), "eps": 1e-8, "weight_decay": 0.0},
    _adamax, "torch.optim.Adamax on optc's `adamax` (behind L2 weight decay where asked).")


def _adafactor(v, decays):
    # eps=(None, ...) is torch's float32 machine epsilon: the rule's default.
    keys = {"lr": ("learning_rate",), "beta2_decay": ("beta2_decay",), "eps": ("eps1", "eps2"),
            "d": ("d",), "weight_decay": ("weight_decay",)}
    return compile_rule("adafactor"), keys, {}, [], {}


Adafactor = _torch_class(
    "Adafactor", {"lr": 1e-2, "beta2_decay": -0.8, "eps": (None, 1e-3), "d": 1.0,
                  "weight_decay": 0.0},
    _adafactor, "torch.optim.Adafactor on optc's `adafactor` (state `row_var` and `col_var`: "
                "per row and per column of a matrix, `col_var` the whole second moment of a "
                "vector).")


def _muon(v, decays):
    if v["ns_steps"] != 5 or v["adjust_lr_fn"] is not None:
        raise _optc.OptimizerError(
            "optc's `muon` writes out torch's five Newton-Schulz steps and its default "
            "learning-rate adjustment: ns_steps=5 and adjust_lr_fn=None")
    keys = {"lr": ("learning_rate",), "weight_decay": ("weight_decay",),
            "momentum": ("momentum",), "nesterov": ("nesterov",),
            "ns_coefficients": ("a", "b", "c"), "eps": ("eps",)}
    return compile_rule("muon"), keys, {}, ["ns_steps", "adjust_lr_fn"], {}


Muon = _torch_class(
    "Muon", {"lr": 1e-3, "weight_decay": 0.1, "momentum": 0.95, "nesterov": True,
             "ns_coefficients": (3.4445, -4.775, 2.0315), "eps": 1e-7, "ns_steps": 5,
             "adjust_lr_fn": None},
    _muon, "torch.optim.Muon on optc's `muon` (which also steps vectors, as 1 x n matrices, "
           "where torch refuses them: pair it with AdamW through `muon_adamw`).")
