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
residual additions that tie the spaces they add). Given ``data``, the tracer also runs the
model once and knows every tensor's shape; without it, a layer whose behaviour depends on
the input's rank (``BatchNorm1d`` / ``PReLU`` after a Linear layer: dim 1 is the features
only for 2-D inputs) keeps its units fixed. Spaces that reach the output, come from the
input, or pass through an operation whose permutation behaviour is unknown stay fixed
(always correct, only less aligned). Layers with parameters lossviz does not know how to
permute raise a :class:`~lossviz.errors.LossvizError` naming them.

Every result of :func:`weight_matching` is checked: the permuted B and B run on a few
inputs (``data``, or random inputs shaped for the model's first layer) in float64 and must
agree to a tolerance relative to the output scale; otherwise a ``LossvizError`` names the
permutation spaces (layers and axes) that change the function. No silently different model
is returned.

:func:`reset_bn` re-estimates BatchNorm running statistics of a point
(``torch.optim.swa_utils.update_bn``), optionally with REPAIR (Jordan, Sedghi, Saukh,
Entezari, Neyshabur 2023): every channel of an interpolated network rescaled so that its
activation mean and standard deviation are the interpolation of the endpoints'.
"""

from __future__ import annotations

import itertools
import operator
import os
import warnings
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace

import numpy as np
import torch
from torch import Tensor, nn

from . import validate
from .errors import ArgumentTypeError, CheckpointError, DataError, LossvizError
from .interrupt import api
from .objective import MAX_BATCHES, Objective, call_model, is_single_batch, private_copy
from .weights import Weights, check_matches, state_of

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
# attributes of a tensor that carry no values (``x.T`` / ``x.mT`` move axes: unknown)
_META_ATTRS = {"shape", "dtype", "device", "ndim", "is_cuda", "requires_grad", "layout"}


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
    """What a traced value's feature axis carries.

    A space, where the axis is (``"c1"``: dim 1, conv-like; ``"last"``), the tensor's ndim
    if known, and for a flattened value the order (``"cmajor"``: index c·k + r;
    ``"cminor"``: r·C + c).
    """

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

    Built by :func:`permutation_spec` (tracing the model with ``torch.fx``); used by
    :func:`apply_permutation` and :func:`weight_matching`. Tensors not listed in any space
    are never permuted.

    Attributes:
        spaces: ``space s -> [(tensor name, axis, flat)]``: the tensor axes permuted by
            space ``s`` (``flat``: None, or ``"cmajor"`` / ``"cminor"`` for the input axis
            of a Linear layer after a flatten, whose ``C·k`` features are permuted in
            blocks).
        sizes: ``space s -> number of units``.
        names: ``space s -> readable name`` (the layer whose units it permutes).
        fixed_by: the operations that kept units fixed (output, input, unknown
            operations, rank-dependent layers without data).
        aliases: the other names of a shared (tied) tensor -> the name used in
            ``spaces``.
        shaped: True when the model was traced with example inputs (every tensor's rank
            known).
        rank_unknown: the entries of ``fixed_by`` that only data would resolve (layers
            whose axes depend on the input's rank).
    """

    spaces: dict = field(default_factory=dict)
    sizes: dict = field(default_factory=dict)
    names: dict = field(default_factory=dict)
    fixed_by: list = field(default_factory=list)
    aliases: dict = field(default_factory=dict)
    shaped: bool = False
    rank_unknown: list = field(default_factory=list)

    def axes_of(self) -> dict:
        """``tensor name -> [(axis, space, flat)]`` (tied tensors under each of their names)."""
        out: dict = {}
        for s, entries in self.spaces.items():
            for name, axis, flat in entries:
                out.setdefault(name, []).append((axis, s, flat))
        for alias, name in self.aliases.items():
            if name in out:
                out[alias] = out[name]
        return out

    def describe(self, s: int) -> str:
        """Space ``s``: its layers and the tensor axes it permutes."""
        entries = ", ".join(f"{n}[{a}]" for n, a, _ in self.spaces[s][:8])
        more = " …" if len(self.spaces[s]) > 8 else ""
        return f"space {s} '{self.names.get(s, s)}' ({self.sizes[s]} units: {entries}{more})"

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


def _model_of(model, name: str = "model") -> nn.Module:
    if isinstance(model, Objective):
        return model.model
    if not isinstance(model, nn.Module):
        raise ArgumentTypeError(
            f"{name} must be an nn.Module (the architecture) or an Objective, got "
            f"{type(model).__name__}"
        )
    return model


# inputs: from data, or made up for the model's first layer -------------------------------
def _has_tensor(x) -> bool:
    if isinstance(x, Tensor):
        return True
    if isinstance(x, Mapping):
        return any(_has_tensor(v) for v in x.values())
    if isinstance(x, (list, tuple)):
        return any(_has_tensor(v) for v in x)
    return False


def _batch_inputs(batch, name: str):
    """The model inputs of one batch.

    A tensor, ``batch[0]`` of ``(inputs, targets)``, or a mapping of keyword inputs.
    """
    x = batch[0] if isinstance(batch, (list, tuple)) and batch else batch
    if not _has_tensor(x):
        raise DataError(
            f"{name} must hold model inputs: a tensor, a batch (inputs, targets) or an "
            f"iterable of batches; got a batch whose inputs are {type(x).__name__}"
        )
    t = _lead(x)
    if t is not None and t.ndim > 0 and t.shape[0] == 0:
        raise DataError(f"{name}: a batch with 0 samples")
    return x


def _lead(x):
    if isinstance(x, Tensor):
        return x
    vals = list(x.values()) if isinstance(x, Mapping) else list(x)
    for v in vals:
        t = _lead(v) if isinstance(v, (Tensor, Mapping, list, tuple)) else None
        if t is not None:
            return t
    return None


_END = object()


def _first_inputs(data, name: str = "data"):
    """The inputs of the first batch of ``data`` (None when ``data`` is None)."""
    if data is None:
        return None
    if isinstance(data, Objective):
        data.require_local("weight matching / activation matching on an Objective's data")
        if data.forward is not None:
            return None
        batch, _ = next(iter(data.batches()))
        return _batch_inputs(batch, name)
    if isinstance(data, (str, bytes, os.PathLike)) or not (
        is_single_batch(data) or isinstance(data, Iterable)
    ):
        raise ArgumentTypeError(
            f"{name} must be an inputs tensor, a batch (inputs, targets) or an iterable of "
            f"batches, got {type(data).__name__}"
        )
    if is_single_batch(data):
        return _batch_inputs(data, name)
    first = next(iter(data), _END)
    if first is _END:
        raise DataError(f"{name} is empty: no batch")
    return _batch_inputs(first, f"{name} batch 0")


def _all_inputs(data, name: str = "data") -> list:
    """The inputs of every batch of ``data`` (an endless iterator is refused)."""
    if isinstance(data, (str, bytes, os.PathLike)) or not (
        is_single_batch(data) or isinstance(data, Iterable)
    ):
        raise ArgumentTypeError(
            f"{name} must be an inputs tensor, a batch (inputs, targets) or an iterable of "
            f"batches, got {type(data).__name__}"
        )
    if is_single_batch(data):
        return [_batch_inputs(data, name)]
    batches = list(itertools.islice(iter(data), MAX_BATCHES + 1))
    if len(batches) > MAX_BATCHES:
        raise DataError(
            f"{name} yielded more than {MAX_BATCHES:,} batches and may be endless (an "
            "itertools.cycle?): pass a list of batches or a DataLoader"
        )
    if not batches:
        raise DataError(f"{name} is empty: no batch")
    return [_batch_inputs(b, f"{name} batch {i}") for i, b in enumerate(batches)]


def _map_tensors(x, fn):
    if isinstance(x, Tensor):
        return fn(x)
    if isinstance(x, Mapping):
        return {k: _map_tensors(v, fn) for k, v in x.items()}
    if isinstance(x, tuple) and hasattr(x, "_fields"):
        return type(x)(*(_map_tensors(v, fn) for v in x))
    if isinstance(x, (list, tuple)):
        return type(x)(_map_tensors(v, fn) for v in x)
    return x


def _cast(x, device, dtype=None):
    """Inputs on ``device``; floating tensors in ``dtype`` (when given)."""

    def one(t: Tensor) -> Tensor:
        t = t.to(device)
        if dtype is not None and t.is_floating_point():
            t = t.to(dtype)
        return t.clone() if t.is_inference() else t

    return _map_tensors(x, one)


def _few(x, n: int = 16):
    """At most ``n`` samples of the inputs (when every tensor has the same leading size)."""
    ts = []
    _map_tensors(x, lambda t: ts.append(t) or t)
    lead = {t.shape[0] if t.ndim else None for t in ts}
    if len(lead) != 1 or None in lead or lead.pop() <= n:
        return x
    return _map_tensors(x, lambda t: t[:n])


def _float_dtype(model: nn.Module) -> torch.dtype:
    for t in itertools.chain(model.parameters(), model.buffers()):
        if t.is_floating_point():
            return t.dtype
    return torch.get_default_dtype()


def _device(model: nn.Module) -> torch.device:
    for t in itertools.chain(model.parameters(), model.buffers()):
        return t.device
    return torch.device("cpu")


def _private_copy(model: nn.Module) -> nn.Module:
    """A copy of the module tree in eval mode with its own copies of every tensor.

    Every parameter and buffer is copied (the user's modules and tensors are never
    touched; tied tensors stay tied). No deep copy of arbitrary attributes is needed (see
    ``objective.private_copy``).
    """
    m = private_copy(model)
    memo: dict = {}
    with torch.no_grad():
        for mod in m.modules():
            for k, p in list(mod._parameters.items()):
                if p is not None:
                    if id(p) not in memo:
                        memo[id(p)] = nn.Parameter(p.detach().clone(), requires_grad=False)
                    mod._parameters[k] = memo[id(p)]
            for k, b in list(mod._buffers.items()):
                if b is not None:
                    if id(b) not in memo:
                        memo[id(b)] = b.detach().clone()
                    mod._buffers[k] = memo[id(b)]
    return m.eval()


def _trace(model: nn.Module):
    try:
        return torch.fx.symbolic_trace(model)
    except Exception as e:  # noqa: BLE001 - reported with advice
        raise LossvizError(
            f"weight_matching traces the model with torch.fx to find its permutation "
            f"symmetries, and tracing {type(model).__name__} failed ({type(e).__name__}: "
            f"{str(e).splitlines()[0][:300] if str(e) else ''}); data-dependent control flow "
            "in forward() cannot be traced"
        ) from None


class _ShapeRecorder(torch.fx.Interpreter):
    """Runs the traced graph once and records the shape of every tensor it produces."""

    def __init__(self, gm):
        super().__init__(gm)
        self.shapes: dict = {}

    def run_node(self, n):
        out = super().run_node(n)
        if isinstance(out, Tensor):
            self.shapes[n] = tuple(out.shape)
        return out


def _graph_args(gm, inputs) -> list:
    """Positional arguments for the traced graph from model inputs.

    The inputs: a tensor, a tuple of positional inputs, or a mapping of keyword inputs.
    """
    if isinstance(inputs, Mapping):
        names = [n.target for n in gm.graph.nodes if n.op == "placeholder"]
        missing = [k for k in inputs if k not in names]
        if missing:
            raise DataError(f"data: inputs {missing} are not arguments of the model's forward")
        args, n_given = [], 0
        for nm in names:
            if nm in inputs:
                args.append(inputs[nm])
                n_given += 1
            elif n_given == len(inputs):
                break
            else:
                raise DataError(f"data: the model's forward needs input {nm!r}")
        return args
    if isinstance(inputs, (list, tuple)):
        return list(inputs)
    return [inputs]


def _shapes_of(gm, inputs) -> dict:
    rec = _ShapeRecorder(gm)
    try:
        with torch.no_grad():
            rec.run(*_graph_args(gm, inputs))
    except LossvizError:
        raise
    except Exception as e:  # noqa: BLE001 - the data does not fit the model
        raise DataError(
            f"data: the model cannot run on these inputs ({type(e).__name__}: "
            f"{str(e).splitlines()[0][:300] if str(e) else ''})"
        ) from None
    return rec.shapes


def _made_up_inputs(model: nn.Module):
    """Candidate inputs for a model without data, from its first layer.

    A few samples, seeded: ``(n, in)`` for a Linear layer, ``(n, C, s, …)`` over a range of
    sizes ``s`` for a convolution, integer indices for an Embedding.
    """
    g = torch.Generator().manual_seed(0)
    dt, n = _float_dtype(model), 4
    first = next(
        (
            m
            for m in model.modules()
            if isinstance(
                m,
                (
                    nn.Linear,
                    nn.modules.conv._ConvNd,
                    nn.Embedding,
                    nn.modules.batchnorm._BatchNorm,
                    nn.LayerNorm,
                    nn.GroupNorm,
                ),
            )
        ),
        None,
    )
    sizes = list(range(8, 65)) + [96, 128, 160, 192, 224, 256] + list(range(1, 8))
    if isinstance(first, nn.Linear):
        for lead in ((), (5,), (5, 5)):
            yield torch.randn(n, *lead, first.in_features, generator=g, dtype=dt)
    elif isinstance(first, nn.Embedding):
        for shape in ((n, 5), (n,)):
            yield torch.randint(0, first.num_embeddings, shape, generator=g)
    elif isinstance(first, nn.LayerNorm):
        yield torch.randn(n, *first.normalized_shape, generator=g, dtype=dt)
    elif isinstance(first, (nn.modules.conv._ConvNd, nn.modules.batchnorm._BatchNorm)):
        if isinstance(first, nn.modules.conv._ConvNd):
            c, nd = first.in_channels, len(first.kernel_size)
        else:
            c = first.num_features
            nd = {nn.BatchNorm1d: 0, nn.BatchNorm2d: 2, nn.BatchNorm3d: 3}.get(type(first), 2)
            if nd == 0:
                yield torch.randn(n, c, generator=g, dtype=dt)
                nd = 1
        for s in sizes:
            yield torch.randn(n, c, *([s] * nd), generator=g, dtype=dt)
    elif isinstance(first, nn.GroupNorm):
        for s in sizes:
            yield torch.randn(n, first.num_channels, s, s, generator=g, dtype=dt)


def _runs(model: nn.Module, x) -> bool:
    try:
        with torch.no_grad():
            call_model(model, x)
        return True
    except Exception:  # noqa: BLE001 - this shape does not fit: try the next
        return False


def _traced(model: nn.Module, data, *, need_inputs: bool):
    """``(private copy, traced graph, shapes or None, inputs or None)``."""
    private = _private_copy(model)
    gm = _trace(private)
    dev, dt = _device(private), _float_dtype(private)
    inputs = _first_inputs(data)
    shapes = None
    if inputs is not None:
        inputs = _cast(_few(inputs), dev, dt)
        shapes = _shapes_of(gm, inputs)
    elif need_inputs:
        inputs = next(
            (x.to(dev) for x in _made_up_inputs(private) if _runs(private, x.to(dev))), None
        )
    return private, gm, shapes, inputs


@api
def permutation_spec(model: nn.Module, data=None) -> PermutationSpec:
    """The permutation symmetries of ``model``, found by tracing it with ``torch.fx``.

    Which axes of which tensors share a permutation follows from the data flow (Linear /
    Conv in and out features, norm-layer parameters and running statistics, elementwise
    activations, pooling, flattening, residual additions that tie the spaces they add).
    Spaces that reach the output, come from the input, or pass through an operation whose
    permutation behaviour is unknown stay fixed (always correct, only less aligned). This
    is the permutation structure of Git Re-Basin (Ainsworth, Hayase, Srinivasa 2023, "Git
    Re-Basin: Merging Models modulo Permutation Symmetries"), derived instead of written
    by hand.

    Args:
        model: the architecture: an ``nn.Module``, or an :class:`~lossviz.Objective`
            (its model, and its data when ``data`` is None).
        data: optional; a batch, an inputs tensor or an iterable of batches: the model
            runs once on its first batch so that every tensor's rank is known. Without
            it, layers whose axes depend on the input's rank (``BatchNorm1d`` or ``PReLU``
            right after a Linear layer) keep their units fixed (listed in
            ``spec.fixed_by``).

    Returns:
        :class:`PermutationSpec`: the permutation spaces, their sizes and the tensor axes
        each permutes.

    Raises:
        ArgumentTypeError: ``model`` is not an ``nn.Module`` or Objective, or ``data`` is
            not one of the forms above.
        LossvizError: ``torch.fx`` cannot trace the model (data-dependent control flow),
            or a layer with parameters lossviz cannot permute (a transposed or grouped
            convolution, an unsupported layer type, a parameter used directly in
            ``forward()``).
        DataError: ``data`` is empty, holds no model inputs, or the model cannot run on
            it.

    >>> spec = permutation_spec(nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2)))
    >>> [(spec.sizes[s], [f"{n}[{a}]" for n, a, _ in e]) for s, e in spec.spaces.items()]
    [(8, ['0.weight[0]', '0.bias[0]', '2.weight[1]'])]
    """
    if data is None and isinstance(model, Objective):
        data = model
    m = _model_of(model)
    private, gm, shapes, _ = _traced(m, data, need_inputs=False)
    return _Tracer(private, shapes).run(gm)


class _Tracer:
    def __init__(self, model: nn.Module, shapes: dict | None = None):
        self.model = model
        self.shapes = shapes  # node -> output shape, when traced with inputs
        self.uf = _UF()
        self.info: dict = {}
        self.axes: dict[str, dict[int, _Axis]] = {}  # tensor name -> axis -> space
        self.module_spaces: dict[str, dict] = {}
        self.space_names: dict[int, str] = {}
        self.fixed_by: list[str] = []
        self.rank_unknown: list[str] = []
        self.canon: dict = {}
        for n, t in itertools.chain(model.named_parameters(), model.named_buffers()):
            self.canon.setdefault(id(t), n)
        self.aliases = _aliases(model)

    # helpers ------------------------------------------------------------------------------
    def new(self, name: str) -> int:
        s = self.uf.new()
        self.space_names[s] = name
        return s

    def fix(self, info: _Info | None, why: str | None = None, *, rank: bool = False):
        if info is None:
            return
        if self.uf.find(info.space) != FIXED and why and why not in self.fixed_by:
            self.fixed_by.append(why)
            if rank:
                self.rank_unknown.append(why)
        self.uf.union(FIXED, info.space)

    def rank_dependent(self, x: _Info, name: str, kind: str) -> None:
        """Keep the units of ``x`` fixed unless ``kind`` is known to act on its features.

        ``kind`` (BatchNorm, PReLU) acts on dim 1, which holds a "last"-axis tensor's
        features only when it is 2-D: the units are fixed (and why is said) unless the
        layout is known to fit.
        """
        if x.flat:
            self.fix(x, f"{name} ({kind} on flattened features)")
        elif x.axis == "c1" or x.ndim == 2:
            return
        elif x.ndim is None:
            self.fix(
                x,
                f"{name} ({kind} after a Linear layer: it acts on dim 1, the features only "
                "for 2-D inputs; pass data= to tell)",
                rank=True,
            )
        else:
            self.fix(x, f"{name} ({kind} on a {x.ndim}-D tensor with features last)")

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
            self.visit(node)
        return self.spec()

    def visit(self, node):
        if node.op == "placeholder":
            shape = self.shapes.get(node) if self.shapes is not None else None
            self.info[node] = _Info(FIXED, "c1", None if shape is None else len(shape))
            return
        self._visit(node)
        info = self.info.get(node)
        shape = self.shapes.get(node) if self.shapes is not None else None
        if info is not None and shape is not None and info.ndim != len(shape):
            self.info[node] = replace(info, ndim=len(shape))

    def _visit(self, node):
        if node.op == "get_attr":
            raise LossvizError(
                f"weight_matching cannot permute tensor {node.target!r}: it is used "
                "directly in forward() (not through a Linear / Conv / norm layer), so "
                "which of its axes follow which permutation is unknown"
            )
        if node.op == "call_module":
            self.info[node] = self.call_module(node)
        elif node.op == "call_function":
            self.info[node] = self.call_function(node)
        elif node.op == "call_method":
            self.info[node] = self.call_method(node)
        elif node.op == "output":
            for i in self.arg_infos(node):
                self.uf.union(FIXED, i.space)

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
            self.rank_dependent(x, name, type(m).__name__)
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
                self.rank_dependent(x, name, "PReLU")
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
            if (
                (i.axis, i.flat) != (first.axis, first.flat)
                or (i.ndim is not None and first.ndim is not None and i.ndim != first.ndim)
                or self.broadcasts(node)
            ):
                for j in infos:
                    self.fix(j, f"{node.name} (adds tensors of different layouts)")
                return _Info(FIXED, first.axis, first.ndim, first.flat)
        s = first.space
        for i in infos[1:]:
            s = self.uf.union(s, i.space)
        ndim = next((i.ndim for i in infos if i.ndim is not None), None)
        return _Info(s, first.axis, ndim, first.flat)

    def broadcasts(self, node) -> bool:
        """Whether an operand is broadcast along the feature axis (with known shapes).

        True for an operand whose rank or feature size differs from the result's.
        """
        if self.shapes is None or node not in self.shapes:
            return False
        out = self.shapes[node]

        def feat(shape, info):
            if info.axis == "c1":
                return shape[1] if len(shape) > 1 else None
            return shape[-1] if shape else None

        for a in list(node.args) + list(node.kwargs.values()):
            i = self.info.get(a) if isinstance(a, torch.fx.Node) else None
            sh = self.shapes.get(a) if i is not None else None
            if sh is None:
                continue
            if len(sh) != len(out) or feat(sh, i) != feat(out, i) or feat(sh, i) is None:
                return True
        return False

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
            if len(node.args) > 1 and node.args[1] in _META_ATTRS:
                return None
            return self.unknown(
                node, f"{node.name} (.{node.args[1] if len(node.args) > 1 else '?'})"
            )
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
            if len(ns) != 1:  # tied by a broadcast (a gate of size 1?): keep them fixed
                self.fixed_by.append(
                    "tensors of different sizes tied by the data flow (a broadcast): "
                    + ", ".join(f"{t}[{a}] = {n}" for t, a, n in sized[s][:6])
                )
                continue
            n = ns.pop()
            bad = [(t, a) for t, a, f in entries if f and state[t].shape[a] % n]
            if bad:
                self.fixed_by.append(
                    f"flattened features of {bad[:6]} that are not a multiple of the {n} "
                    "channels feeding them"
                )
                continue
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
        return PermutationSpec(
            out_spaces,
            sizes,
            names,
            list(self.fixed_by),
            dict(self.aliases),
            self.shapes is not None,
            list(self.rank_unknown),
        )


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


def _as_perm(p, s, n: int) -> Tensor:
    name = f"perms[{s!r}]"
    if isinstance(p, np.ndarray) or isinstance(p, (list, tuple)):
        try:
            p = torch.as_tensor(np.asarray(p))
        except Exception:  # noqa: BLE001 - ragged or not numeric
            raise ArgumentTypeError(
                f"{name} must be a 1-D integer tensor, got {type(p).__name__}"
            ) from None
    if not isinstance(p, Tensor):
        raise ArgumentTypeError(f"{name} must be a 1-D integer tensor, got {type(p).__name__}")
    if p.dtype not in (torch.int64, torch.int32, torch.int16, torch.int8, torch.uint8):
        raise ArgumentTypeError(f"{name} must hold integers, got dtype {p.dtype}")
    if p.ndim != 1 or p.numel() != n:
        raise LossvizError(
            f"{name} must have {n} entries (the units of space {s}), got shape {tuple(p.shape)}"
        )
    p = p.to(torch.int64)
    if not torch.equal(torch.sort(p.cpu()).values, torch.arange(n)):
        raise LossvizError(f"{name} is not a permutation of 0 … {n - 1}")
    return p


def _check_spec_state(spec: PermutationSpec, st: dict, name: str) -> None:
    """Every tensor the spec permutes is in ``st``, with the spec's sizes."""
    missing, bad = [], []
    for s, entries in spec.spaces.items():
        n = spec.sizes[s]
        for t, axis, flat in entries:
            keys = [t] + [a for a, c in spec.aliases.items() if c == t]
            for k in [k for k in keys if k in st] or [None]:
                if k is None:
                    missing.append(t)
                    continue
                v = st[k]
                size = v.shape[axis] if -v.ndim <= axis < v.ndim else None
                if size is None or (size % n if flat else size != n):
                    bad.append(f"{k}[{axis}]: {size} vs {n} units")
    if missing:
        raise CheckpointError(
            f"{name} lacks {sorted(set(missing))[:10]}, which the permutation acts on"
            + (
                ""
                if name == "the model"
                else " (pass the full state dict, buffers such as BatchNorm running "
                "statistics included)"
            )
        )
    if bad:
        raise CheckpointError(f"{name} does not fit the permutation spec: {bad[:10]}")


def _apply(spec: PermutationSpec, st: dict, perms: Mapping) -> dict:
    axes = spec.axes_of()
    out = {}
    for name, t in st.items():
        w = t.detach().clone()
        for axis, s, flat in axes.get(name, []):
            if s in perms:
                w = _permute(w, axis, flat, perms[s].to(w.device))
        out[name] = w
    return out


@api
def apply_permutation(spec: PermutationSpec, state, perms: Mapping[int, Tensor]) -> Weights:
    """``state`` with its hidden units permuted: a point that computes the same function.

    Unit ``i`` of space ``s`` is taken from unit ``perms[s][i]``: every tensor axis the spec
    lists for ``s`` is indexed with ``perms[s]`` (for a Linear layer ``W_l ← P_l W_l
    P_{l-1}ᵀ``, its bias ``b_l ← P_l b_l``), tied tensors under each of their names; the
    tensors the spec does not name are copied.

    Args:
        spec: a :class:`PermutationSpec` from :func:`permutation_spec`.
        state: the point: a model, a state dict, :class:`~lossviz.Weights` or a checkpoint
            path (with every tensor the spec permutes, buffers included).
        perms: ``space -> permutation`` of ``0 … sizes[s]-1`` (an integer tensor, array or
            list); spaces not given stay as they are.

    Returns:
        :class:`~lossviz.weights.Weights` with every entry of ``state`` (private copies).

    Raises:
        ArgumentTypeError: ``spec`` is not a PermutationSpec; ``perms`` is not a mapping;
            a permutation that is not a 1-D integer tensor (or array / list); ``state`` is
            not a point.
        LossvizError: ``perms`` names a space the spec does not have, or a permutation of
            the wrong length or that is not a permutation.
        CheckpointError: ``state`` lacks a tensor the spec permutes, its shapes do not
            fit the spec, or a checkpoint cannot be read.

    Swapping two hidden units of an MLP swaps the rows of the first layer and the columns
    of the second:

    >>> _ = torch.manual_seed(0)
    >>> model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
    >>> spec = permutation_spec(model)
    >>> (s,) = spec.sizes
    >>> p = apply_permutation(spec, model, {s: torch.tensor([1, 0, 2, 3, 4, 5, 6, 7])})
    >>> torch.equal(p["0.weight"][0], model[0].weight[1])
    True
    >>> torch.equal(p["2.weight"][:, 0], model[2].weight[:, 1])
    True
    """
    if not isinstance(spec, PermutationSpec):
        raise ArgumentTypeError(
            f"spec must be a PermutationSpec (from permutation_spec(model)), got "
            f"{type(spec).__name__}"
        )
    st = state_of(state, "state")
    if not isinstance(perms, Mapping):
        raise ArgumentTypeError(
            f"perms must be a mapping space -> permutation tensor, got {type(perms).__name__}"
        )
    unknown = [s for s in perms if s not in spec.sizes]
    if unknown:
        raise LossvizError(
            f"perms: unknown spaces {unknown[:10]}; the spec's spaces are {list(spec.sizes)}"
        )
    perms = {s: _as_perm(p, s, spec.sizes[s]) for s, p in perms.items()}
    _check_spec_state(spec, st, "state")
    return Weights(_apply(spec, st, perms))


def _model_state(model: nn.Module) -> dict:
    return dict(model.state_dict(keep_vars=True)) | dict(
        model.named_parameters(remove_duplicate=False)
    )


def _aliases(model: nn.Module) -> dict:
    """``other name -> first name`` of tensors registered under several names (tied)."""
    first: dict = {}
    out = {}
    for n, t in itertools.chain(
        model.named_parameters(remove_duplicate=False),
        model.named_buffers(remove_duplicate=False),
    ):
        f = first.setdefault(id(t), n)
        if f != n:
            out[n] = f
    return out


def _check_pair(model: nn.Module, a: dict, b: dict, names=("a", "b")):
    params = dict(model.named_parameters())
    known = _model_state(model)
    for what, st in zip(names, (a, b)):
        check_matches(st, {k: v.shape for k, v in known.items()}, params, what=what)
        bad = [k for k in params if not st[k].is_floating_point()]
        if bad:
            raise ArgumentTypeError(
                f"{what}: parameters must be floating point, got {st[bad[0]].dtype} for {bad[:5]}"
            )
        inf = [k for k in params if not bool(torch.isfinite(st[k]).all())]
        if inf:
            raise LossvizError(f"{what} has NaN or infinite values in {inf[:10]}")
    canon = _aliases(model)
    extra = sorted({canon.get(k, k) for k in a} ^ {canon.get(k, k) for k in b})
    if extra:
        raise CheckpointError(f"{names[0]} and {names[1]} have different keys: {extra[:10]}")


def _check_spec_model(spec, model: nn.Module) -> None:
    if not isinstance(spec, PermutationSpec):
        raise ArgumentTypeError(
            f"spec must be a PermutationSpec (from permutation_spec(model)) or None, got "
            f"{type(spec).__name__}"
        )
    try:
        _check_spec_state(spec, _model_state(model), "the model")
    except CheckpointError as e:
        raise LossvizError(f"spec does not belong to this model: {e}") from None


# checking that a permuted point computes the same function --------------------------------
def _flat_outputs(out) -> list:
    if isinstance(out, Tensor):
        return [out]
    if isinstance(out, Mapping):
        out = list(out.values())
    if isinstance(out, (list, tuple)):
        return [t for v in out for t in _flat_outputs(v)]
    return []


class _Checker:
    """Forwards of the private copy with given tensors, in float64 when the model allows."""

    def __init__(self, private: nn.Module, inputs, spec: PermutationSpec):
        self.private, self.spec = private, spec
        self.names = [n for n, _ in private.named_parameters()] + [
            n for n, _ in private.named_buffers()
        ]
        self.own = dict(private.named_parameters()) | dict(private.named_buffers())
        self.inputs = inputs
        self.dtype = torch.float64
        self.tol = 1e-6
        try:
            self.reference = None
            self._forward({}, torch.float64)
        except Exception:  # noqa: BLE001 - a model that cannot run in float64
            self.dtype, self.tol = None, 1e-3

    def _tensors(self, st: dict, dtype) -> dict:
        out = {}
        for n in self.names:
            v = st.get(n)
            if v is None:
                v = next((st[a] for a, c in self.spec.aliases.items() if c == n and a in st), None)
            v = (self.own[n] if v is None else v).detach().to(self.own[n].device)
            if dtype is not None and v.is_floating_point():
                v = v.to(dtype)
            out[n] = v.clone()
        return out

    def _forward(self, st: dict, dtype) -> list:
        x = _cast(self.inputs, _device(self.private), dtype)
        tensors = self._tensors(st, dtype)
        with torch.no_grad():
            out = call_model(
                lambda *a, **k: torch.func.functional_call(self.private, tensors, a, k), x
            )
        return _flat_outputs(out)

    def outputs(self, st: dict) -> list:
        return self._forward(st, self.dtype)

    @staticmethod
    def difference(ref: list, out: list) -> tuple[float, float]:
        """``(max |out - ref|, max |ref|)`` over finite entries.

        The difference is inf when they differ in shape, in non-finite positions, or in
        non-floating values.
        """
        if len(ref) != len(out):
            return float("inf"), 1.0
        d, scale = 0.0, 0.0
        for r, o in zip(ref, out):
            if r.shape != o.shape:
                return float("inf"), 1.0
            if not r.is_floating_point():
                if not torch.equal(r, o):
                    return float("inf"), 1.0
                continue
            r, o = r.double(), o.double()
            fin = torch.isfinite(r)
            if not torch.equal(fin, torch.isfinite(o)) or not torch.equal(r[~fin], o[~fin]):
                return float("inf"), 1.0
            if fin.any():
                d = max(d, float((r[fin] - o[fin]).abs().max()))
                scale = max(scale, float(r[fin].abs().max()))
        return d, scale


def _check_function(private, spec, B: dict, R: dict, perms: dict, inputs, where: str) -> float:
    """Raise a LossvizError unless ``R`` computes ``B``'s function on ``inputs``.

    Returns the relative difference.
    """
    chk = _Checker(private, inputs, spec)
    ref = chk.outputs(B)
    if not any(t.is_floating_point() and bool(torch.isfinite(t).any()) for t in ref):
        raise LossvizError(
            f"weight_matching cannot check the permuted b: b's outputs on {where} are not "
            "finite; pass data= (a batch of inputs the model is meant for)"
        )
    d, scale = chk.difference(ref, chk.outputs(R))
    if d <= chk.tol * scale:
        return d / scale if scale else 0.0
    bad = []
    for s, p in perms.items():
        if torch.equal(p.cpu(), torch.arange(p.numel())):
            continue
        ds, sc = chk.difference(ref, chk.outputs(_apply(spec, B, {s: p})))
        if ds > chk.tol * sc:
            bad.append(s)
    bad = bad or [s for s in perms]
    hint = (
        ""
        if spec.shaped
        else " Pass data= (a batch of inputs) so that the tracer sees every tensor's shape."
    )
    raise LossvizError(
        f"weight_matching: the permuted b does not compute b's function (max output "
        f"difference {d:.3g} for outputs of magnitude up to {scale:.3g}, on {where}): "
        f"permuting {'; '.join(spec.describe(s) for s in bad)} changes it. The permutation "
        "structure traced from the model does not hold for these inputs (a layer that acts "
        "on an axis the tracer could not tell apart), so no result is returned." + hint + " "
        "To align the other units, pass spec= a permutation_spec(model) without these spaces."
    )


class _Missing:
    def __repr__(self) -> str:
        return "<not given: weight_matching(a, b)>"


_MISSING = _Missing()


@api
def weight_matching(
    model,
    a,
    b=_MISSING,
    *,
    data=None,
    max_iter: int = 100,
    seed: int = 0,
    spec: PermutationSpec | None = None,
) -> Weights:
    """``b`` with its hidden units permuted to align with ``a``: Git Re-Basin weight matching.

    Ainsworth, Hayase, Srinivasa 2023, "Git Re-Basin: Merging Models modulo Permutation
    Symmetries". Maximizes over the permutations ``P_l`` of the hidden units::

        Σ_l <W_l^A, P_l W_l^B P_{l-1}ᵀ>

    (Frobenius inner products over every parameter the spec permutes, biases included;
    buffers are permuted, never matched on) by coordinate descent: in random order
    (``seed``), each permutation ``P_l`` solves a linear assignment problem
    (``scipy.optimize.linear_sum_assignment``) with the others held fixed, until no
    permutation changes (at most ``max_iter`` sweeps). The permutation structure comes from
    :func:`permutation_spec` (or ``spec=``).

    Two forms: ``weight_matching(a, b)`` with ``a`` a module (the architecture is taken
    from ``a``), or ``weight_matching(model, a, b)`` with ``model`` a module (or an
    Objective) giving the architecture and ``a``, ``b`` models, state dicts, Weights or
    checkpoint paths.

    The result computes the same function as ``b``, and this is checked whenever a unit
    moved: the permuted ``b`` and ``b`` run on up to 16 samples of ``data`` (or random
    inputs shaped for the model's first layer) in float64 where the model allows, and must
    agree to ``1e-6`` of the output scale (``1e-3`` in the model's own precision).

    Args:
        model: the architecture (an ``nn.Module`` or an :class:`~lossviz.Objective`); in
            the two-argument form, the point ``a`` itself (an ``nn.Module``).
        a: the reference point (a model, state dict, Weights or checkpoint path); in the
            two-argument form, the point to permute.
        b: the point to permute (same forms); omitted in the two-argument form.
        data: a batch, an inputs tensor or an iterable of batches (default: the
            Objective's data when ``model`` is one): the tracer runs the model on it to
            know every tensor's shape, and the check uses up to 16 of its samples.
            Without it, units whose layout depends on the input's rank stay fixed (with a
            warning).
        max_iter: the most coordinate-descent sweeps (at least 1).
        seed: the random order of the permutations in each sweep.
        spec: a :class:`PermutationSpec` of ``model`` (default: traced from it).

    Returns:
        :class:`~lossviz.weights.Weights` with every entry of ``b`` (buffers such as
        BatchNorm running statistics permuted too): ``model.load_state_dict(result)``,
        ``result.state_dict()`` (a plain dict, e.g. for ``torch.save``), or any lossviz
        argument that takes a point.

    Raises:
        ArgumentTypeError: in the two-argument form ``a`` is not a module; ``model`` is not
            a module or an Objective; ``spec`` is not a PermutationSpec; ``data`` is not
            one of the forms; ``a`` / ``b`` is not a point or has non-floating-point
            parameters; ``max_iter`` / ``seed`` of the wrong type.
        LossvizError: ``max_iter < 1`` or a bad ``seed``; ``a`` or ``b`` has NaN or
            infinite parameters; ``spec`` does not belong to ``model``; the model cannot
            be traced or has layers lossviz cannot permute (as :func:`permutation_spec`);
            the permuted ``b`` does not compute ``b``'s function (the message names the
            permutation spaces, layers and tensor axes, that change it); no inputs could
            be made for the check (pass ``data``).
        CheckpointError: ``a`` or ``b`` does not match the model (keys, shapes), ``a`` and
            ``b`` have different keys, or ``b`` lacks a tensor the permutation acts on.
        DataError: ``data`` is empty, holds no model inputs, or the model cannot run on
            it.

    A permuted copy is aligned back exactly:

    >>> _ = torch.manual_seed(0)
    >>> a = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
    >>> spec = permutation_spec(a)
    >>> (s,) = spec.sizes
    >>> b = apply_permutation(spec, a, {s: torch.randperm(8)})
    >>> aligned = weight_matching(a, b)
    >>> all(torch.equal(aligned[k], v) for k, v in a.state_dict().items())
    True
    """
    from scipy.optimize import linear_sum_assignment

    if b is _MISSING:
        if not isinstance(model, (nn.Module, Objective)):
            raise ArgumentTypeError(
                "weight_matching(a, b) takes the architecture from a, which must then be an "
                f"nn.Module (or an Objective), got {type(model).__name__}; for state dicts, "
                "Weights or paths use weight_matching(model, a, b)"
            )
        a, b = (model.model if isinstance(model, Objective) else model), a
    names = ("a", "b")
    if data is None and isinstance(model, Objective):
        data = model
    model = _model_of(model, "model")
    max_iter = validate.integer(max_iter, "max_iter", low=1)
    seed = validate.seed(seed)
    if spec is not None:
        _check_spec_model(spec, model)
    A, B = state_of(a, names[0]), state_of(b, names[1])
    _check_pair(model, A, B, names)
    inputs = _first_inputs(data)
    private = _private_copy(model)
    dev_m, dt_m = _device(private), _float_dtype(private)
    if inputs is not None:
        inputs = _cast(_few(inputs), dev_m, dt_m)
    if spec is None:
        gm = _trace(private)
        spec = _Tracer(private, None if inputs is None else _shapes_of(gm, inputs)).run(gm)
    _check_spec_state(spec, B, names[1])
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
    if isinstance(b, nn.Module):  # in the order of b.state_dict()
        keys = [k for k in b.state_dict(keep_vars=True) if k in B]
        B = {k: B[k] for k in keys + [k for k in B if k not in set(keys)]}
    R = _apply(spec, B, perms)
    moved = {s: p for s, p in perms.items() if not torch.equal(p.cpu(), torch.arange(p.numel()))}
    if moved:
        where = "the first batch of data"
        if inputs is None:
            inputs = next(
                (x.to(dev_m) for x in _made_up_inputs(private) if _runs(private, x.to(dev_m))),
                None,
            )
            where = "random inputs shaped for the model's first layer"
        if inputs is None:
            raise LossvizError(
                "weight_matching must check that the permuted b computes b's function, and "
                "could not make inputs for this model: pass data= (a batch of inputs)"
            )
        _check_function(private, spec, B, R, moved, inputs, where)
    if spec.rank_unknown and not spec.shaped:
        warnings.warn(
            "weight_matching: units kept fixed because the input's rank is unknown without "
            f"data: {'; '.join(spec.rank_unknown[:3])}. Pass data= (a batch of inputs) to "
            "align them too.",
            stacklevel=3,
        )
    return Weights(R)


# BatchNorm statistics and REPAIR ----------------------------------------------------------
def _bn_layers(m: nn.Module) -> list:
    return [
        mod
        for mod in m.modules()
        if isinstance(mod, nn.modules.batchnorm._BatchNorm)
        and mod.track_running_stats
        and mod.running_mean is not None
    ]


def _load_private(model: nn.Module, given: dict) -> nn.Module:
    """A private copy of ``model`` with ``given`` loaded (missing entries from the model)."""
    m = _private_copy(model)
    cur = m.state_dict()
    with torch.no_grad():
        for k, v in given.items():
            cur[k].copy_(v)
    return m


def _check_against(model: nn.Module, given: dict, name: str) -> None:
    cur = _model_state(model)
    unknown = [k for k in given if k not in cur]
    shapes = [
        f"{k}: model {tuple(cur[k].shape)} vs {name} {tuple(v.shape)}"
        for k, v in given.items()
        if k in cur and cur[k].shape != v.shape
    ]
    if unknown or shapes:
        parts = [f"keys not in the model {unknown[:10]}"] if unknown else []
        parts += [f"shape mismatches {shapes[:10]}"] if shapes else []
        raise CheckpointError(f"{name} does not match the model: " + "; ".join(parts))


def _forward_all(m: nn.Module, xs: list) -> None:
    for i, x in enumerate(xs):
        try:
            call_model(m, x)
        except Exception as e:  # noqa: BLE001 - the data does not fit the model
            raise DataError(
                f"data batch {i}: the model cannot run on it ({type(e).__name__}: "
                f"{str(e).splitlines()[0][:300] if str(e) else ''})"
            ) from None


def _update_bn(m: nn.Module, xs: list) -> None:
    """``torch.optim.swa_utils.update_bn`` on ``m``, in place.

    Running statistics reset and recomputed as the cumulative average over the batches
    (only the BatchNorm layers in train mode).
    """
    bns = _bn_layers(m)
    momenta = {bn: bn.momentum for bn in bns}
    m.eval()
    for bn in bns:
        bn.reset_running_stats()
        bn.momentum = None
        bn.train()
    try:
        with torch.no_grad():
            _forward_all(m, xs)
    finally:
        for bn, mom in momenta.items():
            bn.momentum = mom
        m.eval()


@api
def reset_bn(obj_or_model, weights, data=None, *, repair=None, alpha=None) -> Weights:
    """``weights`` with BatchNorm running statistics re-estimated on ``data``.

    As ``torch.optim.swa_utils.update_bn``: the running averages are reset and recomputed
    as the cumulative average over the batches (``momentum=None``), on a private copy of
    the model with only the BatchNorm layers in train mode (dropout off).

    With ``repair=(a, b)``: REPAIR (Jordan, Sedghi, Saukh, Entezari, Neyshabur 2023,
    "REPAIR: REnormalizing Permuted Activations for Interpolation Repair") for
    ``weights = (1-alpha)·θA + alpha·θB``. Layer by layer in forward order, every output
    channel ``c`` is rescaled so that its mean and standard deviation on ``data`` become
    the interpolation of the endpoints'::

        μ* = (1-alpha)·μ_A + alpha·μ_B,   σ* = (1-alpha)·σ_A + alpha·σ_B
        W[c] ← W[c]·σ*/σ,   b[c] ← (b[c] - μ)·σ*/σ + μ*

    (``μ``, ``σ``: the channel's statistics in the current network; a channel constant on
    the data only gets its mean set). The layers corrected are the BatchNorm layers when
    the model has any, else every Linear / Conv layer. Running statistics are then
    re-estimated as above.

    Args:
        obj_or_model: an :class:`~lossviz.Objective` or an ``nn.Module`` (the
            architecture; never changed).
        weights: the point: a model, state dict, :class:`~lossviz.Weights` or checkpoint
            path (entries not given come from the model).
        data: batches ``(inputs, ...)``, an inputs tensor or an iterable of batches
            (default: the Objective's data).
        repair: ``(a, b)``: the endpoints of the interpolation (same forms as
            ``weights``), to apply REPAIR; None: only re-estimate the statistics.
        alpha: where ``weights`` lies between ``a`` and ``b``, in [0, 1] (default 0.5);
            only with ``repair``.

    Returns:
        :class:`~lossviz.weights.Weights` with all parameters and buffers of the model
        (private copies).

    Raises:
        ArgumentTypeError: ``obj_or_model`` is not an Objective or an ``nn.Module``;
            ``repair`` is not a pair; ``data`` is not one of the forms; a point that is
            not one; ``alpha`` is not a number.
        LossvizError: the model has no BatchNorm layer with running statistics and no
            ``repair`` is given; ``alpha`` without ``repair`` or outside [0, 1]; REPAIR on a
            layer without a bias.
        CheckpointError: ``weights`` or an endpoint does not match the model (unknown
            keys, shapes), or a checkpoint cannot be read.
        DataError: ``data`` is required (a bare module, or an Objective with a custom
            ``forward=``) but not given; ``data`` is empty, endless or holds no inputs; the
            model cannot run on a batch.

    On one batch the running mean is the batch mean and the running variance the
    unbiased batch variance:

    >>> model = nn.Sequential(nn.BatchNorm1d(2))
    >>> w = reset_bn(model, model, torch.tensor([[0.0, 1.0], [2.0, 5.0]]))
    >>> w["0.running_mean"], w["0.running_var"]
    (tensor([1., 3.]), tensor([2., 8.]))
    """
    if isinstance(obj_or_model, Objective):
        obj_or_model.require_local("reset_bn")
        model = obj_or_model.model
    elif isinstance(obj_or_model, nn.Module):
        model = obj_or_model
    else:
        raise ArgumentTypeError(
            f"obj_or_model must be an Objective or an nn.Module, got {type(obj_or_model).__name__}"
        )
    given = state_of(weights, "weights")
    _check_against(model, given, "weights")
    ends = None
    if repair is None:
        if alpha is not None:
            raise LossvizError("alpha is only used with repair=(a, b)")
        if not _bn_layers(model):
            raise LossvizError(
                "reset_bn: the model has no BatchNorm layer with running statistics, so there "
                "is nothing to re-estimate (repair=(a, b) rescales Linear / Conv channels "
                "without BatchNorm)"
            )
    else:
        if not (isinstance(repair, (tuple, list)) and len(repair) == 2):
            raise ArgumentTypeError(
                "repair must be (a, b): the endpoints of the interpolation, got "
                + (
                    f"{len(repair)} items"
                    if isinstance(repair, (tuple, list))
                    else type(repair).__name__
                )
            )
        ends = [state_of(p, f"repair[{i}]") for i, p in enumerate(repair)]
        for i, e in enumerate(ends):
            _check_against(model, e, f"repair[{i}]")
        alpha = validate.number(0.5 if alpha is None else alpha, "alpha", low=0, high=1)
        nobias = [n for n in _repair_layers(model) if model.get_submodule(n).bias is None]
        if nobias:
            raise LossvizError(f"repair: REPAIR needs a bias in layers {nobias[:10]}")
    if data is None:
        if not isinstance(obj_or_model, Objective):
            raise DataError(
                "data is required: a batch (inputs, targets), an inputs tensor or "
                "an iterable of batches"
            )
        if obj_or_model.forward is not None:
            raise DataError(
                "data is required: the Objective has a custom forward=, so lossviz cannot "
                "tell the model inputs in its batches"
            )
        xs = [_batch_inputs(b, "the Objective's data") for b, _ in obj_or_model.batches()]
    else:
        xs = _all_inputs(data, "data")
    dev, dt = _device(model), _float_dtype(model)
    xs = [_cast(x, dev, dt) for x in xs]
    m = _load_private(model, given)
    if ends is not None:
        _repair(model, m, ends, xs, alpha)
    if _bn_layers(m):
        _update_bn(m, xs)
    m.eval()
    return Weights({k: v.detach().clone() for k, v in m.state_dict().items()})


def _repair_layers(m: nn.Module) -> list[str]:
    mods = dict(m.named_modules())
    has_bn = any(isinstance(mod, nn.modules.batchnorm._BatchNorm) for mod in mods.values())
    kinds = (
        (nn.modules.batchnorm._BatchNorm,)  # with BatchNorm, correcting the norm layers suffices
        if has_bn
        else (nn.Linear, nn.modules.conv._ConvNd)
    )
    return [n for n, mod in mods.items() if isinstance(mod, kinds) and n]


def _channel_stats(model: nn.Module, name: str, xs) -> tuple[Tensor, Tensor]:
    """Per-channel mean and std of a layer's output over the data (eval mode)."""
    mod = model.get_submodule(name)
    ch = -1 if isinstance(mod, nn.Linear) else 1
    acc = {"s": 0, "ss": 0, "n": 0}

    def hook(_m, _inp, out):
        o = out.detach().to(torch.float64).movedim(ch, 0)
        o = o.reshape(o.shape[0], -1)
        acc["s"] = acc["s"] + o.sum(1)
        acc["ss"] = acc["ss"] + (o * o).sum(1)
        acc["n"] += o.shape[1]

    h = mod.register_forward_hook(hook)
    try:
        with torch.no_grad():
            _forward_all(model, xs)
    finally:
        h.remove()
    mean = acc["s"] / acc["n"]
    var = (acc["ss"] / acc["n"] - mean * mean).clamp_min(0)
    return mean, var.sqrt()


def _repair(model: nn.Module, m: nn.Module, ends: list, xs, alpha: float):
    nets = [_load_private(model, e) for e in ends]
    m.eval()
    for name in _repair_layers(m):
        mod = m.get_submodule(name)
        mu_a, sd_a = _channel_stats(nets[0], name, xs)
        mu_b, sd_b = _channel_stats(nets[1], name, xs)
        if isinstance(mod, nn.modules.batchnorm._BatchNorm):
            _update_bn(m, xs)  # statistics of the current network
        mu, sd = _channel_stats(m, name, xs)
        tmu = (1 - alpha) * mu_a + alpha * mu_b
        tsd = (1 - alpha) * sd_a + alpha * sd_b
        # a channel constant on the data cannot be rescaled: only its mean is set
        scale = torch.where(sd > 0, tsd / sd.clamp_min(1e-300), torch.ones_like(sd))
        with torch.no_grad():
            w = mod.weight
            shape = (-1,) + (1,) * (w.ndim - 1)
            w.mul_(scale.to(w.dtype).reshape(shape))
            mod.bias.copy_(((mod.bias.to(torch.float64) - mu) * scale + tmu).to(mod.bias.dtype))
