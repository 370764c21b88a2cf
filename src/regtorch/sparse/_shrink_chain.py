"""Turn a model into the chain of layers that :func:`regtorch.shrink` analyses.

A model is read as a list of :class:`Step` objects, in the order its forward pass calls them:

* ``nn.Sequential`` (nested too) contributes its children in order;
* any other custom module is traced with :func:`torch.fx.symbolic_trace`; if its graph is a
  simple chain (one input, every value used exactly once by the next operation, one output) the
  called submodules and functions become steps, otherwise the module is one opaque *barrier*;
* built-in layers are classified into the kinds below; layers of any other type are barriers.

Barriers are never modified. Layers on either side of a barrier are shrunk independently, as if
the barrier were the model's input or output.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import fx, nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.nn.utils import parametrize

__all__ = ["Step", "batch_norm_of", "display_name", "extract_steps", "infer_shapes"]

LINEAR, CONV, BATCHNORM, ELEMENTWISE, DROPOUT, FLATTEN, POOL, BARRIER = (
    "linear",
    "conv",
    "batchnorm",
    "elementwise",
    "dropout",
    "flatten",
    "pool",
    "barrier",
)

_ELEMENTWISE_MODULES: tuple[type, ...] = (
    nn.Identity, nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.ELU, nn.SELU, nn.CELU, nn.GELU, nn.SiLU,
    nn.Mish, nn.Sigmoid, nn.Hardsigmoid, nn.Tanh, nn.Hardtanh, nn.Hardswish, nn.Softplus,
    nn.Softsign, nn.Tanhshrink, nn.Softshrink, nn.Hardshrink, nn.LogSigmoid, nn.Threshold,
)  # fmt: skip
_DROPOUT_MODULES: tuple[type, ...] = (
    nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout, nn.FeatureAlphaDropout,
)  # fmt: skip
_CONV_TYPES: tuple[type[nn.Conv1d | nn.Conv2d | nn.Conv3d], ...] = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
_BN_TYPES: tuple[type, ...] = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)
_POOL_DIMS: dict[type, int] = {
    nn.MaxPool1d: 1, nn.MaxPool2d: 2, nn.MaxPool3d: 3,
    nn.AdaptiveMaxPool1d: 1, nn.AdaptiveMaxPool2d: 2, nn.AdaptiveMaxPool3d: 3,
    nn.AdaptiveAvgPool1d: 1, nn.AdaptiveAvgPool2d: 2, nn.AdaptiveAvgPool3d: 3,
    nn.AvgPool1d: 1, nn.AvgPool2d: 2, nn.AvgPool3d: 3,
}  # fmt: skip
_ELEMENTWISE_FUNCTIONS = {
    torch.relu, F.relu, F.relu6, F.leaky_relu, F.elu, F.selu, F.celu, F.gelu, F.silu, F.mish,
    F.softplus, F.hardswish, F.hardsigmoid, F.hardtanh, torch.sigmoid, F.sigmoid, torch.tanh,
    F.tanh, F.logsigmoid, F.softsign, F.tanhshrink,
}  # fmt: skip
_ELEMENTWISE_METHODS = {"relu", "sigmoid", "tanh", "contiguous"}
_DROPOUT_FUNCTIONS = {
    F.dropout, F.dropout1d, F.dropout2d, F.dropout3d, F.alpha_dropout, F.feature_alpha_dropout,
}  # fmt: skip


@dataclass
class Step:
    """One operation of the chain.

    Attributes:
        kind: One of the kind constants of this module.
        name: Qualified module name, or ``"<module>:<node>"`` for a traced function call.
        label: Short type description for messages (``"Linear"``, ``"torch.flatten"``).
        fn: Calls the operation on one tensor (used for shape inference and constants).
        module: The module, for module steps.
        dims: Spatial dimensions of a convolution or pooling layer.
        keeps_constants: For pooling: whether a spatially constant channel stays constant (zero
            channels always stay zero).
        reason: For barriers: why the step cannot be looked through.
        structural: For barriers: the module is not a simple chain (a residual connection, a
            branch, several inputs) or cannot be traced, as opposed to an unsupported layer type.
    """

    kind: str
    name: str
    label: str
    fn: Callable[[torch.Tensor], Any]
    module: nn.Module | None = None
    dims: int = 0
    keeps_constants: bool = True
    reason: str = ""
    structural: bool = False


def display_name(name: str) -> str:
    """Return a quoted layer name for messages (the root module is ``'(model)'``)."""
    return repr(name) if name else "'(model)'"


def batch_norm_of(step: Step) -> _BatchNorm:
    """Return the BatchNorm layer of a :data:`BATCHNORM` step."""
    assert isinstance(step.module, _BatchNorm), "a BATCHNORM step holds its BatchNorm layer"
    return step.module


def _join(prefix: str, name: str) -> str:
    return f"{prefix}.{name}" if prefix else name


def _barrier(
    name: str, label: str, fn: Callable[[torch.Tensor], Any], reason: str, structural: bool = False
) -> Step:
    return Step(
        BARRIER, name, label, fn, reason=f"{display_name(name)} ({label}): {reason}", structural=structural
    )


def _recomputes_weight(module: nn.Module) -> bool:
    """Whether ``torch.nn.utils.prune`` or the old ``spectral_norm`` reparametrize ``module.weight``:
    they keep the learned tensor as ``weight_orig`` and rebuild ``weight`` in a forward pre-hook.
    (Other forward hooks cannot be seen through public APIs; a model with hooks that change a
    layer's output should not be shrunk.)"""
    names = {n for n, _ in module.named_parameters(recurse=False)} | {
        n for n, _ in module.named_buffers(recurse=False)
    }
    return any(n.endswith("_orig") or n.endswith("_mask") for n in names)


def _classify_module(name: str, module: nn.Module) -> Step | None:
    """Return the step of a supported built-in layer, a barrier for a refused one, else None."""
    label = type(module).__name__
    if parametrize.is_parametrized(module):
        return _barrier(name, label, module, "parametrized modules are not shrunk; left unchanged")
    if any(isinstance(p, nn.parameter.UninitializedParameter) for p in module.parameters()):
        return _barrier(name, label, module, "lazy module not initialized yet; left unchanged")
    if _recomputes_weight(module):
        return _barrier(
            name, label, module,
            "its weight is recomputed before each forward (torch.nn.utils.prune or spectral_norm: a "
            "'weight_orig' parameter); left unchanged (make it permanent first, e.g. prune.remove)",
        )  # fmt: skip
    if isinstance(module, nn.Linear) and type(module).forward is nn.Linear.forward:
        return Step(LINEAR, name, label, module, module)
    for conv_type in _CONV_TYPES:
        if isinstance(module, conv_type) and type(module).forward is conv_type.forward:
            if module.groups != 1:
                return _barrier(
                    name, label, module,
                    f"grouped convolution (groups={module.groups}) is not shrunk; its inputs "
                    "and outputs are kept",
                )  # fmt: skip
            return Step(CONV, name, label, module, module, dims=len(module.kernel_size))
    if isinstance(module, _BN_TYPES) and type(module).forward is _BatchNorm.forward:
        return Step(BATCHNORM, name, label, module, module)
    if type(module) in _ELEMENTWISE_MODULES:
        return Step(ELEMENTWISE, name, label, module, module)
    if isinstance(module, nn.PReLU) and type(module) is nn.PReLU:
        if module.num_parameters == 1:
            return Step(ELEMENTWISE, name, label, module, module)
        return _barrier(name, label, module, "per-channel PReLU is not shrunk; left unchanged")
    if type(module) in _DROPOUT_MODULES:
        return Step(DROPOUT, name, label, module, module)
    if type(module) is nn.Flatten:
        if module.start_dim == 1 and module.end_dim == -1:
            return Step(FLATTEN, name, label, module, module)
        return _barrier(
            name, label, module,
            f"only Flatten(start_dim=1, end_dim=-1) is looked through; got start_dim="
            f"{module.start_dim}, end_dim={module.end_dim}",
        )  # fmt: skip
    if type(module) in _POOL_DIMS:
        if getattr(module, "return_indices", False):
            return _barrier(name, label, module, "pooling with return_indices=True")
        keeps = True
        if isinstance(module, (nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d)):
            padding = module.padding if isinstance(module.padding, tuple) else (module.padding,)
            keeps = getattr(module, "divisor_override", None) is None and (
                not module.count_include_pad or all(p == 0 for p in padding)
            )
        return Step(POOL, name, label, module, module, _POOL_DIMS[type(module)], keeps)
    if type(module).__module__.startswith("torch."):
        return _barrier(name, label, module, "layer type not supported by shrink; left unchanged")
    return None


def _node_fn(node: fx.Node) -> Callable[[torch.Tensor], Any]:
    """Return a callable that runs a traced function/method node on one tensor."""

    def run(tensor: torch.Tensor) -> Any:
        args = fx.node.map_arg(node.args, lambda _: tensor)
        kwargs = fx.node.map_arg(node.kwargs, lambda _: tensor)
        target = node.target
        if node.op == "call_method":
            assert isinstance(target, str)  # torch.fx: a call_method node's target is the method name
            return getattr(args[0], target)(*args[1:], **kwargs)
        assert callable(target)  # torch.fx: a call_function node's target is the function
        return target(*args, **kwargs)

    return run


def _flatten_dims(node: fx.Node) -> tuple[Any, Any]:
    args, kwargs = node.args, node.kwargs
    start = args[1] if len(args) > 1 else kwargs.get("start_dim", 0)
    end = args[2] if len(args) > 2 else kwargs.get("end_dim", -1)
    return start, end


def _classify_node(prefix: str, node: fx.Node) -> Step:
    """Return the step for a traced ``call_function`` / ``call_method`` node."""
    target = node.target
    label = target if isinstance(target, str) else getattr(target, "__name__", str(target))
    label = f".{label}()" if node.op == "call_method" else f"{label}()"
    name = f"{prefix}:{node.name}" if prefix else node.name
    fn = _node_fn(node)
    is_method = node.op == "call_method"
    if (is_method and target in _ELEMENTWISE_METHODS) or (not is_method and target in _ELEMENTWISE_FUNCTIONS):
        return Step(ELEMENTWISE, name, label, fn)
    if not is_method and target in _DROPOUT_FUNCTIONS:
        return Step(DROPOUT, name, label, fn)
    if (is_method and target == "flatten") or (not is_method and target is torch.flatten):
        start, end = _flatten_dims(node)
        if start == 1 and end == -1:
            return Step(FLATTEN, name, label, fn)
        return _barrier(name, label, fn, f"flatten(start_dim={start}, end_dim={end})")
    return _barrier(name, label, fn, "operation not looked through by shrink")


def _chain_nodes(graph: fx.Graph) -> list[fx.Node] | str:
    """Return the nodes of a simple chain graph, or the reason it is not one."""
    nodes = list(graph.nodes)
    inputs = [n for n in nodes if n.op == "placeholder" and n.users]
    if len(inputs) != 1:
        return f"its forward uses {len(inputs)} inputs; only single-input chains are shrunk"
    current, chain = inputs[0], []
    while True:
        users = list(current.users)
        if len(users) != 1:
            return (
                f"the value {current.name!r} is used {len(users)} times (a branch or residual "
                "connection); only simple chains are shrunk"
            )
        (following,) = users
        if following.op == "output":
            if following.args[0] is not current:
                return "its forward does not return a single tensor"
            break
        if following.all_input_nodes != [current]:
            return (
                f"the operation {following.name!r} ({following.op} {following.target}) combines "
                "several values; only simple chains are shrunk"
            )
        chain.append(following)
        current = following
    stray = [n for n in nodes if n.op != "placeholder" and n.op != "output" and n not in chain]
    if stray:
        return f"the operation {stray[0].name!r} ({stray[0].op}) is outside the chain"
    return chain


def _expand(module: nn.Module, name: str, steps: list[Step]) -> None:
    if isinstance(module, nn.Sequential) and type(module).forward is nn.Sequential.forward:
        children = [(n, m) for n, m in module.named_modules(remove_duplicate=False) if n and "." not in n]
        for child_name, child in children:  # in forward order, a layer used twice twice
            _expand(child, _join(name, child_name), steps)
        return
        for child_name, child in children:  # in forward order
            _expand(child, _join(name, child_name), steps)
        return
    step = _classify_module(name, module)
    if step is not None:
        steps.append(step)
        return
    label = type(module).__name__
    try:
        graph = fx.symbolic_trace(module).graph
    except Exception as error:  # any tracing failure makes the module opaque
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else ""
        reason = f"torch.fx cannot trace it ({type(error).__name__}: {first_line}); left unchanged"
        steps.append(_barrier(name, label, module, reason, structural=True))
        return
    chain = _chain_nodes(graph)
    if isinstance(chain, str):
        steps.append(_barrier(name, label, module, chain + "; left unchanged", structural=True))
        return
    for node in chain:
        if node.op == "call_module":
            assert isinstance(node.target, str)  # torch.fx: a call_module node's target is its name
            _expand(module.get_submodule(node.target), _join(name, node.target), steps)
        elif node.op in ("call_function", "call_method"):
            steps.append(_classify_node(name, node))
        else:
            reason = f"the operation {node.name!r} ({node.op}) is not looked through"
            steps.append(_barrier(_join(name, node.name), node.op, _node_fn(node), reason))


def _refuse_shared(model: nn.Module, steps: list[Step]) -> None:
    """Turn layers that are called twice or share parameters into barriers."""
    owners: dict[int, set[int]] = defaultdict(set)
    for module in model.modules():
        for param in module.parameters(recurse=False):
            owners[id(param)].add(id(module))
    calls = Counter(id(s.module) for s in steps if s.kind in (LINEAR, CONV, BATCHNORM))
    for index, step in enumerate(steps):
        if step.kind not in (LINEAR, CONV, BATCHNORM):
            continue
        assert step.module is not None
        reason = ""
        if calls[id(step.module)] > 1:
            reason = "is called more than once in the forward pass; left unchanged"
        elif any(len(owners[id(p)]) > 1 for p in step.module.parameters(recurse=False)):
            reason = "shares a parameter with another module (tied weights); left unchanged"
        if reason:
            steps[index] = _barrier(step.name, step.label, step.fn, reason)


def extract_steps(model: nn.Module) -> list[Step]:
    """Return the model's forward pass as a list of steps (see the module docstring)."""
    steps: list[Step] = []
    _expand(model, "", steps)
    _refuse_shared(model, steps)
    return steps


def infer_shapes(
    model: nn.Module, steps: list[Step], example_input: torch.Tensor, owner: str
) -> list[torch.Size | None]:
    """Run ``example_input`` through the steps in eval mode; return each step's output shape.

    The model's training flags are restored afterwards; eval mode leaves BatchNorm statistics
    untouched.
    """
    flags = {module: module.training for module in model.modules()}
    shapes: list[torch.Size | None] = []
    try:
        model.eval()
        with torch.no_grad():
            value: Any = example_input
            for step in steps:
                value = step.fn(value)
                shapes.append(value.shape if isinstance(value, torch.Tensor) else None)
    except Exception as error:
        raise ValueError(
            f"The 'example_input' argument of {owner} must be a batch the model accepts; running "
            f"a tensor of shape {tuple(example_input.shape)} through it failed with "
            f"{type(error).__name__}: {error}"
        ) from error
    finally:
        for module, flag in flags.items():
            module.training = flag
    return shapes
