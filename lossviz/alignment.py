"""Permutation alignment (Git Re-Basin) and BatchNorm statistics for merged weights.

Hidden units of a network can be permuted without changing the function it computes.
:func:`weight_matching` (Ainsworth, Hayase, Srinivasa 2023, "Git Re-Basin") permutes the
units of B to maximize ``Σ_layers <W_A, P_l W_B P_{l-1}ᵀ>`` by coordinate descent over the
permutations, each step a linear assignment problem
(``scipy.optimize.linear_sum_assignment``).

The permutation structure is derived from the model by tracing it with ``torch.fx``
(:func:`permutation_spec`): which axes of which tensors share a permutation follows from
the data flow (Linear / Conv in and out features, BatchNorm / LayerNorm / GroupNorm
parameters and running statistics, elementwise activations, pooling, flattening, and
residual additions that tie the spaces they add). Spaces that reach the output, come from
the input, or pass through an operation whose permutation behaviour is unknown stay fixed
(always correct, only less aligned). Layers with parameters lossviz does not know how to
permute raise a :class:`~lossviz.errors.LossvizError` naming them.

:func:`reset_bn` re-estimates BatchNorm running statistics of a point
(``torch.optim.swa_utils.update_bn``), optionally with REPAIR (Jordan, Sedghi, Saukh,
Entezari, Neyshabur 2023): every channel of an interpolated network rescaled so that its
activation mean and standard deviation are the interpolation of the endpoints'.
"""

from __future__ import annotations

import copy
import operator
from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor, nn

from .errors import CheckpointError, DataError, LossvizError
from .interrupt import api
from .objective import Objective, is_single_batch
from .weights import Weights, as_state

FIXED = 0

_ELEMENTWISE_MODULES = (
    nn.ReLU,
    nn.ReLU6,
    nn.LeakyReLU,
    nn.ELU,
    nn.SELU,
    nn.CELU,
    nn.GELU,
    nn.SiLU,
    nn.Mish,
    nn.Sigmoid,
    nn.Tanh,
    nn.Hardtanh,
    nn.Hardswish,
    nn.Hardsigmoid,
    nn.Softplus,
    nn.Softsign,
    nn.Tanhshrink,
    nn.LogSigmoid,
    nn.Identity,
    nn.Dropout,
    nn.Dropout1d,
    nn.Dropout2d,
    nn.Dropout3d,
    nn.AlphaDropout,
)
_POOL_MODULES = (
    nn.MaxPool1d,
    nn.MaxPool2d,
    nn.MaxPool3d,
    nn.AvgPool1d,
    nn.AvgPool2d,
    nn.AvgPool3d,
    nn.AdaptiveAvgPool1d,
    nn.AdaptiveAvgPool2d,
    nn.AdaptiveAvgPool3d,
    nn.AdaptiveMaxPool1d,
    nn.AdaptiveMaxPool2d,
    nn.AdaptiveMaxPool3d,
    nn.LPPool1d,
    nn.LPPool2d,
)
_F = nn.functional
_ELEMENTWISE_FUNCS = {
    torch.relu,
    torch.tanh,
    torch.sigmoid,
    torch.abs,
    torch.neg,
    torch.exp,
    torch.clamp,
    _F.relu,
    _F.relu6,
    _F.leaky_relu,
    _F.elu,
    _F.selu,
    _F.celu,
    _F.gelu,
    _F.silu,
    _F.mish,
    _F.sigmoid,
    _F.tanh,
    _F.hardtanh,
    _F.hardswish,
    _F.hardsigmoid,
    _F.softplus,
    _F.softsign,
    _F.dropout,
    _F.dropout1d,
    _F.dropout2d,
    _F.dropout3d,
    _F.logsigmoid,
    operator.neg,
    operator.pos,
}
_ELEMENTWISE_METHODS = {
    "relu",
    "relu_",
    "tanh",
    "tanh_",
    "sigmoid",
    "sigmoid_",
    "abs",
    "neg",
    "exp",
    "clamp",
    "clamp_",
    "contiguous",
    "clone",
    "detach",
    "float",
    "double",
    "half",
    "to",
    "type_as",
}
_POOL_FUNCS = {
    _F.max_pool1d,
    _F.max_pool2d,
    _F.max_pool3d,
    _F.avg_pool1d,
    _F.avg_pool2d,
    _F.avg_pool3d,
    _F.adaptive_avg_pool1d,
    _F.adaptive_avg_pool2d,
    _F.adaptive_avg_pool3d,
    _F.adaptive_max_pool1d,
    _F.adaptive_max_pool2d,
    _F.adaptive_max_pool3d,
}
_ADD_FUNCS = {operator.add, operator.sub, operator.iadd, operator.isub, torch.add, torch.sub}
_ADD_METHODS = {"add", "add_", "sub", "sub_"}
_MUL_FUNCS = {
    operator.mul,
    operator.imul,
    operator.truediv,
    operator.itruediv,
    torch.mul,
    torch.div,
}
_MUL_METHODS = {"mul", "mul_", "div", "div_"}
_REDUCE = {"mean", "sum", "amax", "amin"}
_REDUCE_FUNCS = {torch.mean, torch.sum, torch.amax, torch.amin}
_SHAPE_METHODS = {"size", "dim", "numel"}


class _UF:
    def __init__(self):
        self.parent = [FIXED]

    def new(self) -> int:
        self.parent.append(len(self.parent))
        return len(self.parent) - 1

    def find(self, x: int) -> int:
        while self.parent[x] != x:
            self.parent[x] = self.parent[self.parent[x]]
            x = self.parent[x]
        return x

    def union(self, a: int, b: int) -> int:
        ra, rb = self.find(a), self.find(b)
        if ra == rb:
            return ra
        if rb == FIXED:  # FIXED stays the root of its set
            ra, rb = rb, ra
        self.parent[rb] = ra
        return ra


@dataclass
class _Info:
    """What a traced value's feature axis carries: a space, where the axis is
    (``"c1"``: dim 1, conv-like; ``"last"``), the tensor's ndim if known, and for a flattened
    value the order (``"cmajor"``: index c·k + r; ``"cminor"``: r·C + c)."""

    space: int
    axis: str = "last"
    ndim: int | None = None
    flat: str | None = None


@dataclass
class _Axis:
    space: int
    flat: str | None = None


@dataclass(repr=False)
class PermutationSpec:
    """Which axes of which tensors share a permutation, derived from a model.

    ``spaces[s]`` lists ``(tensor name, axis, flat)`` entries of permutation space ``s``
    (``flat``: None, or ``"cmajor"`` / ``"cminor"`` for the input axis of a Linear layer after
    a flatten, whose ``C·k`` features are permuted in blocks); ``sizes[s]`` is the number of
    units. Tensors not listed are never permuted.
    """

    spaces: dict = field(default_factory=dict)
    sizes: dict = field(default_factory=dict)
    names: dict = field(default_factory=dict)
    fixed_by: list = field(default_factory=list)

    def axes_of(self) -> dict:
        """``tensor name -> [(axis, space, flat)]``."""
        out: dict = {}
        for s, entries in self.spaces.items():
            for name, axis, flat in entries:
                out.setdefault(name, []).append((axis, s, flat))
        return out

    def __repr__(self) -> str:
        lines = [
            f"PermutationSpec({len(self.spaces)} permutable spaces, "
            f"{sum(self.sizes.values())} units)"
        ]
        for s, entries in self.spaces.items():
            lines.append(
                f"  {self.names[s]} ({self.sizes[s]} units): "
                + ", ".join(f"{n}[{a}]" + (f"({f})" if f else "") for n, a, f in entries)
            )
        if self.fixed_by:
            lines.append("  kept fixed by: " + ", ".join(self.fixed_by[:10]))
        return "\n".join(lines)


def _model_of(model) -> nn.Module:
    if isinstance(model, Objective):
        return model.model
    if not isinstance(model, nn.Module):
        raise TypeError(f"expected an nn.Module (the architecture), got {type(model).__name__}")
    return model


@api
def permutation_spec(model: nn.Module) -> PermutationSpec:
    """The permutation symmetries of ``model``, found by tracing it with ``torch.fx``.

    >>> spec = permutation_spec(nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2)))
    >>> [(spec.sizes[s], [f"{n}[{a}]" for n, a, _ in e]) for s, e in spec.spaces.items()]
    [(8, ['0.weight[0]', '0.bias[0]', '2.weight[1]'])]
    """
    model = _model_of(model)
    try:
        gm = torch.fx.symbolic_trace(model)
    except Exception as e:  # noqa: BLE001 - reported with advice
        raise LossvizError(
            f"weight_matching traces the model with torch.fx to find its permutation "
            f"symmetries, and tracing {type(model).__name__} failed ({type(e).__name__}: "
            f"{str(e).splitlines()[0][:300]}); data-dependent control flow in forward() "
            "cannot be traced"
        ) from None
    return _Tracer(model).run(gm)


class _Tracer:
    def __init__(self, model: nn.Module):
        self.model = model
        self.uf = _UF()
        self.info: dict = {}
        self.axes: dict[str, dict[int, _Axis]] = {}  # tensor name -> axis -> space
        self.module_spaces: dict[str, dict] = {}
        self.space_names: dict[int, str] = {}
        self.fixed_by: list[str] = []
        self.canon = {}
        for n, p in model.named_parameters():
            self.canon.setdefault(id(p), n)
        for n, b in model.named_buffers():
            self.canon.setdefault(id(b), n)

    # helpers ------------------------------------------------------------------------------
    def new(self, name: str) -> int:
        s = self.uf.new()
        self.space_names[s] = name
        return s

    def fix(self, info: _Info | None, why: str | None = None):
        if info is None:
            return
        if self.uf.find(info.space) != FIXED and why and why not in self.fixed_by:
            self.fixed_by.append(why)
        self.uf.union(FIXED, info.space)

    def tensor_axis(self, mod_name: str, attr: str, axis: int, space: int, flat=None):
        t = getattr(self.model.get_submodule(mod_name), attr, None)
        if t is None or not isinstance(t, Tensor):
            return
        name = self.canon.get(id(t))
        if name is None:
            return
        cur = self.axes.setdefault(name, {})
        if axis in cur:
            old = cur[axis]
            if old.flat != flat:  # the same tensor seen flattened and not: keep it fixed
                self.uf.union(FIXED, old.space)
                self.uf.union(FIXED, space)
            else:
                self.uf.union(old.space, space)
        else:
            cur[axis] = _Axis(space, flat)

    def arg_infos(self, node) -> list[_Info]:
        out = []

        def visit(a):
            if isinstance(a, torch.fx.Node):
                i = self.info.get(a)
                if i is not None:
                    out.append(i)
            elif isinstance(a, (list, tuple)):
                for v in a:
                    visit(v)
            elif isinstance(a, dict):
                for v in a.values():
                    visit(v)

        visit(node.args)
        visit(node.kwargs)
        return out

    def unknown(self, node, what: str) -> _Info:
        for i in self.arg_infos(node):
            self.fix(i, what)
        return _Info(FIXED)

    # the walk -----------------------------------------------------------------------------
    def run(self, gm) -> PermutationSpec:
        for node in gm.graph.nodes:
            if node.op == "placeholder":
                self.info[node] = _Info(FIXED, "c1")
            elif node.op == "get_attr":
                raise LossvizError(
                    f"weight_matching cannot permute tensor {node.target!r}: it is used "
                    "directly in forward() (not through a Linear / Conv / norm layer), so "
                    "which of its axes follow which permutation is unknown"
                )
            elif node.op == "call_module":
                self.info[node] = self.call_module(node)
            elif node.op == "call_function":
                self.info[node] = self.call_function(node)
            elif node.op == "call_method":
                self.info[node] = self.call_method(node)
            elif node.op == "output":
                for i in self.arg_infos(node):
                    self.uf.union(FIXED, i.space)
        return self.spec()

    def call_module(self, node) -> _Info | None:
        name = node.target
        m = self.model.get_submodule(name)
        args = [self.info.get(a) if isinstance(a, torch.fx.Node) else None for a in node.args]
        x = args[0] if args else None
        if x is None:
            x = _Info(FIXED)
        ms = self.module_spaces.setdefault(name, {})
        if isinstance(m, nn.Linear):
            if "out" not in ms:
                ms["out"] = self.new(name)
            out = ms["out"]
            if x.flat or (x.axis == "c1" and x.ndim not in (None, 2)):
                if x.flat and x.axis == "last":
                    self.tensor_axis(name, "weight", 1, x.space, x.flat)
                else:
                    self.fix(x, f"{name} (Linear on a non-feature axis)")
            elif x.axis == "c1" and x.ndim is None and self.uf.find(x.space) != FIXED:
                self.fix(x, f"{name} (Linear on a tensor of unknown shape)")
            else:
                self.tensor_axis(name, "weight", 1, x.space)
            self.tensor_axis(name, "weight", 0, out)
            self.tensor_axis(name, "bias", 0, out)
            return _Info(out, "last", x.ndim)
        if isinstance(m, nn.modules.conv._ConvNd):
            if isinstance(m, (nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)):
                raise LossvizError(
                    f"weight_matching cannot permute layer {name!r} "
                    f"({type(m).__name__}): transposed convolutions are not "
                    "supported"
                )
            nd = len(m.kernel_size) + 2
            if x.axis != "c1" or x.flat:
                self.fix(x, f"{name} (input channels not on dim 1)")
                x = _Info(FIXED, "c1")
            if m.groups == 1:
                if "out" not in ms:
                    ms["out"] = self.new(name)
                out = ms["out"]
                self.tensor_axis(name, "weight", 1, x.space)
            elif m.groups == m.in_channels == m.out_channels:  # depthwise: one space
                out = x.space
            else:
                raise LossvizError(
                    f"weight_matching cannot permute layer {name!r}: grouped "
                    f"convolution with groups={m.groups} (only groups=1 and "
                    "depthwise convolutions are supported)"
                )
            self.tensor_axis(name, "weight", 0, out)
            self.tensor_axis(name, "bias", 0, out)
            return _Info(out, "c1", nd)
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            if x.flat or not (x.axis == "c1" or x.ndim == 2 or isinstance(m, nn.BatchNorm1d)):
                self.fix(x, f"{name} (BatchNorm on a non-channel axis)")
            elif x.axis == "last" and x.ndim not in (2, None):
                self.fix(x, f"{name} (BatchNorm1d on a 3-D tensor with features last)")
            for attr in ("weight", "bias", "running_mean", "running_var"):
                self.tensor_axis(name, attr, 0, x.space)
            return x
        if isinstance(m, nn.LayerNorm):
            ok = len(m.normalized_shape) == 1 and not x.flat and (x.axis == "last" or x.ndim == 2)
            if not ok:
                self.fix(x, f"{name} (LayerNorm not over the feature axis alone)")
            for attr in ("weight", "bias"):
                self.tensor_axis(name, attr, 0, x.space)
            return x
        if isinstance(m, nn.GroupNorm):
            ok = m.num_groups in (1, m.num_channels) and x.axis == "c1" and not x.flat
            if not ok:
                self.fix(x, f"{name} (GroupNorm with {m.num_groups} groups)")
            for attr in ("weight", "bias"):
                self.tensor_axis(name, attr, 0, x.space)
            return x
        if isinstance(m, nn.PReLU):
            if m.weight.numel() > 1:
                self.tensor_axis(name, "weight", 0, x.space)
            return x
        if isinstance(m, nn.Embedding):
            if "out" not in ms:
                ms["out"] = self.new(name)
            self.tensor_axis(name, "weight", 1, ms["out"])
            return _Info(ms["out"], "last", None)
        if isinstance(m, _ELEMENTWISE_MODULES):
            return x
        if isinstance(m, _POOL_MODULES):
            if x.axis != "c1" or x.flat:
                return self.unknown(node, f"{name} ({type(m).__name__} on a non-channel axis)")
            return x
        if isinstance(m, nn.Flatten):
            return self.flatten(node, x, m.start_dim, m.end_dim, name)
        if any(True for _ in m.parameters(recurse=False)):
            raise LossvizError(
                f"weight_matching cannot permute layer {name!r} ({type(m).__name__}): only "
                "Linear, Conv, BatchNorm, LayerNorm, GroupNorm, PReLU and Embedding layers "
                "are supported"
            )
        return self.unknown(node, f"{name} ({type(m).__name__})")

    def flatten(self, node, x: _Info, start, end, what) -> _Info:
        if x is None:
            return None
        if start != 1 or end != -1:
            return self.unknown(node, f"{what} (flatten from dim {start} to {end})")
        if x.flat:
            return x
        if x.ndim == 2 or (x.axis == "last" and x.ndim == 2):
            return _Info(x.space, "last", 2)
        if x.axis == "c1":
            return _Info(x.space, "last", 2, "cmajor")
        return _Info(x.space, "last", 2, "cminor")

    def elementwise(self, node) -> _Info | None:
        infos = [self.info.get(a) for a in node.args if isinstance(a, torch.fx.Node)]
        infos += [self.info.get(v) for v in node.kwargs.values() if isinstance(v, torch.fx.Node)]
        infos = [i for i in infos if i is not None]
        if not infos:
            return None
        if len(infos) == 1:
            return infos[0]
        first = infos[0]
        for i in infos[1:]:
            if (i.axis, i.flat) != (first.axis, first.flat) or (
                i.ndim is not None and first.ndim is not None and i.ndim != first.ndim
            ):
                for j in infos:
                    self.fix(j, f"{node.name} (adds tensors of different layouts)")
                return _Info(FIXED, first.axis, first.ndim, first.flat)
        s = first.space
        for i in infos[1:]:
            s = self.uf.union(s, i.space)
        ndim = next((i.ndim for i in infos if i.ndim is not None), None)
        return _Info(s, first.axis, ndim, first.flat)

    def reduce(self, node, x: _Info, dims, keepdim) -> _Info:
        if x is None:
            return None
        if dims is None:
            return self.unknown(node, f"{node.name} (reduction over all dims)")
        dims = [dims] if isinstance(dims, int) else list(dims)
        if x.flat:
            return self.unknown(node, f"{node.name} (reduction of a flattened tensor)")
        if x.ndim is None:
            if x.axis == "last" and all(isinstance(d, int) and d < -1 for d in dims):
                return x
            return self.unknown(node, f"{node.name} (reduction over dims {dims})")
        ch = 1 if x.axis == "c1" else x.ndim - 1
        norm = [d % x.ndim for d in dims]
        if ch in norm or 0 in norm:
            return self.unknown(node, f"{node.name} (reduction over the feature axis)")
        if keepdim:
            return x
        nd = x.ndim - len(norm)
        return _Info(x.space, "last" if nd == 2 else x.axis, nd)

    def call_function(self, node) -> _Info | None:
        f = node.target
        if f in _ADD_FUNCS or f in _MUL_FUNCS:
            return self.elementwise(node)
        x = (
            self.info.get(node.args[0])
            if node.args and isinstance(node.args[0], torch.fx.Node)
            else None
        )
        if f in _ELEMENTWISE_FUNCS:
            return x
        if f in _POOL_FUNCS:
            if x is not None and (x.axis != "c1" or x.flat):
                return self.unknown(node, f"{node.name} (pooling a non-channel axis)")
            return x
        if f is torch.flatten:
            start = node.args[1] if len(node.args) > 1 else node.kwargs.get("start_dim", 0)
            end = node.args[2] if len(node.args) > 2 else node.kwargs.get("end_dim", -1)
            return self.flatten(node, x, start, end, node.name)
        if f in _REDUCE_FUNCS:
            dims = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim")
            keep = node.args[2] if len(node.args) > 2 else node.kwargs.get("keepdim", False)
            return self.reduce(node, x, dims, keep)
        if f is getattr:
            return None
        if f is operator.getitem and x is None:
            return None
        return self.unknown(node, f"{node.name} ({getattr(f, '__name__', f)})")

    def call_method(self, node) -> _Info | None:
        meth = node.target
        x = (
            self.info.get(node.args[0])
            if node.args and isinstance(node.args[0], torch.fx.Node)
            else None
        )
        if meth in _SHAPE_METHODS:
            return None
        if meth in _ADD_METHODS or meth in _MUL_METHODS:
            return self.elementwise(node)
        if meth in _ELEMENTWISE_METHODS:
            return x
        if meth == "flatten":
            start = node.args[1] if len(node.args) > 1 else node.kwargs.get("start_dim", 0)
            end = node.args[2] if len(node.args) > 2 else node.kwargs.get("end_dim", -1)
            return self.flatten(node, x, start, end, node.name)
        if meth in ("view", "reshape"):
            shape = node.args[1:]
            if len(shape) == 1 and isinstance(shape[0], (tuple, list)):
                shape = tuple(shape[0])
            if len(shape) == 2 and shape[1] == -1 and _is_batch_size(shape[0], node.args[0]):
                return self.flatten(node, x, 1, -1, node.name)
            return self.unknown(node, f"{node.name} ({meth}{tuple(shape)})")
        if meth in _REDUCE:
            dims = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim")
            keep = node.args[2] if len(node.args) > 2 else node.kwargs.get("keepdim", False)
            return self.reduce(node, x, dims, keep)
        return self.unknown(node, f"{node.name} (.{meth})")

    # the result ---------------------------------------------------------------------------
    def spec(self) -> PermutationSpec:
        spaces: dict[int, list] = {}
        sizes: dict[int, int] = {}
        names: dict[int, str] = {}
        state = dict(self.model.named_parameters())
        state.update(dict(self.model.named_buffers()))
        for tname, axes in self.axes.items():
            for axis, ax in sorted(axes.items()):
                root = self.uf.find(ax.space)
                if root == FIXED:
                    continue
                spaces.setdefault(root, []).append((tname, axis, ax.flat))
        sized: dict[int, list] = {}
        for s, entries in spaces.items():
            for tname, axis, flat in entries:
                if not flat:
                    sized.setdefault(s, []).append((tname, axis, state[tname].shape[axis]))
        out_spaces, k = {}, 0
        for s, entries in spaces.items():
            if s not in sized:  # only flattened uses: the unit count is unknown, keep fixed
                continue
            ns = {n for _, _, n in sized[s]}
            if len(ns) != 1:
                raise LossvizError(
                    "weight_matching: tensors tied by the model's data flow have different "
                    "sizes: " + ", ".join(f"{t}[{a}] = {n}" for t, a, n in sized[s][:10])
                )
            n = ns.pop()
            bad = [(t, a) for t, a, f in entries if f and state[t].shape[a] % n]
            if bad:
                raise LossvizError(
                    f"weight_matching: flattened features of {bad} are not a "
                    f"multiple of the {n} channels feeding them"
                )
            k += 1
            out_spaces[k] = entries
            sizes[k] = n
            members = sorted(
                {
                    self.space_names.get(i, "")
                    for i in range(1, len(self.uf.parent))
                    if self.uf.find(i) == s
                }
                - {""}
            )
            names[k] = "+".join(members) or f"space{k}"
        return PermutationSpec(out_spaces, sizes, names, list(self.fixed_by))


def _is_batch_size(arg, src) -> bool:
    """``x.size(0)`` / ``x.shape[0]`` of the same tensor (the usual ``view(n, -1)``)."""
    if not isinstance(arg, torch.fx.Node):
        return False
    if arg.op == "call_method" and arg.target == "size" and len(arg.args) == 2:
        return arg.args[1] == 0
    if arg.op == "call_function" and arg.target is operator.getitem and arg.args[1] == 0:
        s = arg.args[0]
        return isinstance(s, torch.fx.Node) and (
            (s.op == "call_function" and s.target is getattr and s.args[1] == "shape")
            or (s.op == "call_method" and s.target == "size" and len(s.args) == 1)
        )
    return False


# applying and finding permutations --------------------------------------------------------
def _as_units(w: Tensor, axis: int, flat: str | None, n: int) -> Tensor:
    """``w`` as ``(n, rest)`` with the permuted units first."""
    w = w.movedim(axis, 0)
    if flat == "cmajor":
        return w.reshape(n, -1)
    if flat == "cminor":
        k = w.shape[0] // n
        return w.reshape(k, n, -1).transpose(0, 1).reshape(n, -1)
    return w.reshape(n, -1)


def _permute(w: Tensor, axis: int, flat: str | None, perm: Tensor) -> Tensor:
    n = perm.numel()
    if flat is None:
        return w.index_select(axis, perm)
    w0 = w.movedim(axis, 0)
    shape = w0.shape
    if flat == "cmajor":
        w1 = w0.reshape(n, shape[0] // n, *shape[1:]).index_select(0, perm)
    else:
        w1 = w0.reshape(shape[0] // n, n, *shape[1:]).index_select(1, perm)
    return w1.reshape(shape).movedim(0, axis)


@api
def apply_permutation(spec: PermutationSpec, state, perms: Mapping[int, Tensor]) -> Weights:
    """``state`` with unit ``i`` of space ``s`` taken from unit ``perms[s][i]`` (all tensors
    the spec names; the others copied). The result computes the same function."""
    st = as_state(state)
    axes = spec.axes_of()
    out = {}
    for name, t in st.items():
        w = t.detach().clone()
        for axis, s, flat in axes.get(name, []):
            if s in perms:
                w = _permute(w, axis, flat, perms[s].to(w.device))
        out[name] = w
    return Weights(out)


def _check_pair(model: nn.Module, a: dict, b: dict):
    params = dict(model.named_parameters())
    for what, st in (("a", a), ("b", b)):
        missing = [k for k in params if k not in st]
        shapes = [
            f"{k}: model {tuple(p.shape)} vs {what} {tuple(st[k].shape)}"
            for k, p in params.items()
            if k in st and st[k].shape != p.shape
        ]
        if missing or shapes:
            raise CheckpointError(
                f"{what} does not match the model: missing {missing[:10]}; shape "
                f"mismatches: {shapes[:10]}"
            )
    extra = sorted(set(a) ^ set(b))
    if extra:
        raise CheckpointError(f"a and b have different keys: {extra[:10]}")


@api
def weight_matching(
    model: nn.Module,
    a,
    b,
    *,
    max_iter: int = 100,
    seed: int = 0,
    spec: PermutationSpec | None = None,
) -> Weights:
    """``b`` with its hidden units permuted to align with ``a`` (Git Re-Basin weight
    matching, Ainsworth et al. 2023); the result computes the same function as ``b``.

    Maximizes ``Σ_layers <W_A, P_l W_B P_{l-1}ᵀ>`` by coordinate descent: in random order
    (``seed``), each permutation ``P_l`` solves a linear assignment problem
    (``scipy.optimize.linear_sum_assignment``) with the others held fixed, until no
    permutation changes (at most ``max_iter`` sweeps). ``model`` gives the architecture (its
    permutation structure comes from :func:`permutation_spec`); ``a``, ``b``: models, state
    dicts or checkpoint paths. Returns every entry of ``b`` (buffers such as BatchNorm
    running statistics permuted too).
    """
    from scipy.optimize import linear_sum_assignment

    model = _model_of(model)
    A, B = as_state(a), as_state(b)
    _check_pair(model, A, B)
    if isinstance(max_iter, bool) or not isinstance(max_iter, int) or max_iter < 1:
        raise LossvizError(f"max_iter must be a positive integer, got {max_iter!r}")
    spec = spec if spec is not None else permutation_spec(model)
    params = set(dict(model.named_parameters()))
    axes = spec.axes_of()
    dev = next(iter(B.values())).device
    perms = {s: torch.arange(n, device=dev) for s, n in spec.sizes.items()}
    # the objective uses the parameters (buffers are permuted, never matched on)
    Af = {k: A[k].detach().to(dev, torch.float64) for k in axes if k in params}
    Bf = {k: B[k].detach().to(dev, torch.float64) for k in axes if k in params}
    rng = np.random.default_rng(seed)
    order = list(spec.sizes)
    for _ in range(max_iter):
        changed = False
        for s in rng.permutation(order):
            s = int(s)
            n = spec.sizes[s]
            C = torch.zeros(n, n, dtype=torch.float64, device=dev)
            for name, axis, flat in spec.spaces[s]:
                if name not in Af:
                    continue
                wb = Bf[name]
                for ax2, s2, flat2 in axes[name]:
                    if (ax2, s2) != (axis, s):
                        wb = _permute(wb, ax2, flat2, perms[s2])
                C += _as_units(Af[name], axis, flat, n) @ _as_units(wb, axis, flat, n).T
            Cn = C.cpu().numpy()
            _, col = linear_sum_assignment(Cn, maximize=True)
            old = Cn[np.arange(n), perms[s].cpu().numpy()].sum()
            new = Cn[np.arange(n), col].sum()
            if new > old + 1e-12 * max(1.0, abs(old)):
                perms[s] = torch.as_tensor(col, device=dev)
                changed = True
        if not changed:
            break
    return apply_permutation(spec, B, perms)


# BatchNorm statistics and REPAIR ----------------------------------------------------------
def _loader(data):
    if data is None:
        raise DataError(
            "data is required: a batch (inputs, targets), an inputs tensor or "
            "an iterable of batches"
        )
    if isinstance(data, Tensor):
        return [data]
    if is_single_batch(data):
        return [data]
    batches = list(data)
    if not batches:
        raise DataError("data is empty: no batch")
    return batches


def _inputs(batch):
    if isinstance(batch, (list, tuple)):
        return batch[0]
    return batch


def _private_model(obj_or_model, weights) -> tuple[nn.Module, list, torch.device]:
    """A deep copy of the model with ``weights`` loaded (missing entries from the model)."""
    if isinstance(obj_or_model, Objective):
        model, default = obj_or_model.model, list(b for b, _ in obj_or_model.batches())
    elif isinstance(obj_or_model, nn.Module):
        model, default = obj_or_model, None
    else:
        raise TypeError(f"expected an Objective or an nn.Module, got {type(obj_or_model).__name__}")
    m = copy.deepcopy(model)
    cur = m.state_dict()
    given = as_state(weights)
    unknown = [k for k in given if k not in cur]
    shapes = [
        f"{k}: model {tuple(cur[k].shape)} vs given {tuple(v.shape)}"
        for k, v in given.items()
        if k in cur and cur[k].shape != v.shape
    ]
    if unknown or shapes:
        raise CheckpointError(
            f"weights do not match the model: keys not in the model "
            f"{unknown[:10]}; shape mismatches {shapes[:10]}"
        )
    with torch.no_grad():
        for k, v in given.items():
            cur[k].copy_(v)
    dev = next(iter(cur.values())).device if cur else torch.device("cpu")
    return m, default, dev


@api
def reset_bn(obj_or_model, weights, data=None, *, repair=None, alpha: float = 0.5) -> Weights:
    """``weights`` with BatchNorm running statistics re-estimated on ``data``
    (``torch.optim.swa_utils.update_bn``: the running averages are reset and recomputed as
    the cumulative average over the batches, on a private copy of the model).

    ``data``: batches ``(inputs, ...)``, an inputs tensor or an iterable (default: the
    Objective's data). ``repair=(a, b)``: REPAIR (Jordan et al. 2023) for ``weights`` =
    ``(1-alpha)·θA + alpha·θB``: every output channel of each Linear / Conv layer (and each
    BatchNorm) is rescaled so its mean and standard deviation on ``data`` are
    ``(1-alpha)·(μ_A, σ_A) + alpha·(μ_B, σ_B)``, layer by layer in forward order. Returns
    all parameters and buffers.
    """
    m, default, dev = _private_model(obj_or_model, weights)
    batches = _loader(data if data is not None else default)
    xs = [_inputs(b) for b in batches]
    xs = [x.to(dev) if isinstance(x, Tensor) else x for x in xs]
    if repair is not None:
        _repair(obj_or_model, m, repair, xs, float(alpha))
    if any(isinstance(mod, nn.modules.batchnorm._BatchNorm) for mod in m.modules()):
        torch.optim.swa_utils.update_bn(xs, m)
    m.eval()
    return Weights({k: v.detach().clone() for k, v in m.state_dict().items()})


def _repair_layers(m: nn.Module) -> list[str]:
    return [
        n
        for n, mod in m.named_modules()
        if isinstance(mod, (nn.Linear, nn.modules.conv._ConvNd, nn.modules.batchnorm._BatchNorm))
    ]


def _channel_stats(model: nn.Module, name: str, xs) -> tuple[Tensor, Tensor]:
    """Per-channel mean and std of a layer's output over the data (train-mode BatchNorm
    statistics are not used: the model runs in eval mode except for modules asked)."""
    mod = model.get_submodule(name)
    acc = {"s": 0, "ss": 0, "n": 0}

    def hook(_m, _inp, out):
        ch = 1 if out.ndim > 2 else -1
        o = out.detach().to(torch.float64).movedim(ch, 0).reshape(out.shape[ch], -1)
        acc["s"] = acc["s"] + o.sum(1)
        acc["ss"] = acc["ss"] + (o * o).sum(1)
        acc["n"] += o.shape[1]

    h = mod.register_forward_hook(hook)
    try:
        with torch.no_grad():
            for x in xs:
                model(x)
    finally:
        h.remove()
    mean = acc["s"] / acc["n"]
    var = (acc["ss"] / acc["n"] - mean * mean).clamp_min(0)
    return mean, var.sqrt()


def _repair(obj_or_model, m: nn.Module, repair, xs, alpha: float):
    if not (isinstance(repair, (tuple, list)) and len(repair) == 2):
        raise LossvizError("repair must be (a, b): the endpoints of the interpolation")
    ends = []
    for p in repair:
        e, _, _ = _private_model(obj_or_model, p)
        e.eval()
        ends.append(e)
    m.eval()
    has_bn = any(isinstance(mod, nn.modules.batchnorm._BatchNorm) for mod in m.modules())
    for name in _repair_layers(m):
        mod = m.get_submodule(name)
        if has_bn and not isinstance(mod, nn.modules.batchnorm._BatchNorm):
            continue  # with BatchNorm, correcting the norm layers suffices
        mu_a, sd_a = _channel_stats(ends[0], name, xs)
        mu_b, sd_b = _channel_stats(ends[1], name, xs)
        if isinstance(mod, nn.modules.batchnorm._BatchNorm):
            torch.optim.swa_utils.update_bn(xs, m)  # statistics of the current network
            m.eval()
        mu, sd = _channel_stats(m, name, xs)
        tmu = (1 - alpha) * mu_a + alpha * mu_b
        tsd = (1 - alpha) * sd_a + alpha * sd_b
        scale = tsd / sd.clamp_min(1e-12)
        with torch.no_grad():
            w = mod.weight
            shape = (-1,) + (1,) * (w.ndim - 1)
            w.mul_(scale.to(w.dtype).reshape(shape))
            if mod.bias is None:
                raise LossvizError(f"REPAIR needs a bias in layer {name!r}")
            mod.bias.copy_(((mod.bias.to(torch.float64) - mu) * scale + tmu).to(mod.bias.dtype))
