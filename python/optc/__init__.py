"""optc: neural-network optimizers written in the .opt language, compiled into
fused kernels, for PyTorch (``optc.torch``) and numpy (``optc.compile``).

    import optc
    rule = optc.compile("adam", learning_rate=1e-3)   # a stdlib rule, a path or .opt source
    state = rule.init([w.shape for w in weights])
    rule.step(weights, grads, state)                  # in place, float32 arrays

    from optc.torch import AdamW                      # a torch.optim.Optimizer
    opt = AdamW(model.parameters(), lr=1e-3, weight_decay=0.1)

See docs/python.md.
"""

from ._optc import CHUNK, CompileError, OptimizerError, shard_range, stdlib
from .functional import Rule, State, compile

__all__ = [
    "CHUNK",
    "CompileError",
    "OptimizerError",
    "Rule",
    "State",
    "compile",
    "shard_range",
    "stdlib",
]
