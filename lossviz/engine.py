"""The evaluation engine: metrics at many points in weight space, batched.

Every kernel that evaluates a model at many points (landscape slices and surfaces, paths
between checkpoints, roughness, the dashboards) goes through one :class:`Engine`:

- ``Engine(obj, metrics, fixed, bn=..., bn_data=..., precision=..., batched=...,
  chunk_size=...)`` checks its arguments and prepares the evaluation (the metrics, the
  BatchNorm re-estimation model for ``bn="recompute"``);
- :meth:`Engine.evaluate` takes a ``(N, P)`` tensor of flat points (``obj.layout`` order)
  and returns :class:`~lossviz.slices.Evaluations`: one float64 array per metric, which
  points were evaluated, whether all were;
- :meth:`Engine.run` is the same with points made on demand, chunk by chunk (a 201×201
  grid of a large model never exists at once), written into the caller's arrays;
- :meth:`Engine.buffers_at` gives the BatchNorm running statistics re-estimated at
  points (``bn="recompute"``), never touching the model's.

How the points go through the model: chunks of points per forward with
``torch.func.functional_call`` under ``torch.vmap`` ("vmap"), or one point at a time
("loop": a private copy of the module tree, :meth:`Objective.module_copy`, whose varying
parameters are views into one flat tensor, so a point is loaded with one copy). When the
points lie on a line or plane ``θ + Σ_k c_k·d_k`` (``plane=`` of :meth:`Engine.run`) and
the first layer the inputs meet is an ``nn.Linear`` / ``nn.Conv*d`` whose weights come
straight from the point, that layer's output is ``f(x; θ) + Σ_k c_k·f(x; d_k)`` (it is
linear in its weights): ``k + 1`` products per batch for all the points, then a weighted
sum per point, instead of one product per point. Which of these runs is measured, not
guessed: on a CPU every candidate (vmap or loop, with or without the first-layer
products) runs one warm-up chunk and two timed chunks of the real job, and the fastest is
kept (vmap only when 10 % faster than the best loop, so the choice is not slower than the
per-point loop beyond timing noise); on a GPU the two vmap candidates are timed the same
way. Jobs too small to time take vmap (with the products where they apply). A chunk that
runs out of memory is halved and retried; a model vmap cannot run (data-dependent control
flow) falls back to the loop with a warning; after Ctrl-C the points not evaluated are NaN
and the result is marked incomplete.

Numbers: the loss combines over the batches as :meth:`Objective.loss` does (a
sample-weighted mean, or the sum of a summed loss), every other metric is a
sample-weighted mean; all accumulate in float64. Argument checks shared by every kernel
that runs the engine (:func:`check_engine_args`, :func:`kw_engine`, :func:`check_metrics`)
live here too, so bad input is reported, naming the argument, before any work.
"""

from __future__ import annotations

import contextlib
import os
import time
import weakref
from collections.abc import Callable, Iterable, Mapping, Sequence
from functools import partial

import numpy as np
import torch
from torch import Tensor, nn

from . import validate
from .errors import ArgumentTypeError, DataError, LossvizError, is_oom, warn
from .interrupt import keep_partial
from .metrics import accuracy_rule, accuracy_value, as_scalar, loss_evaluator, resolve_metrics
from .objective import (
    Objective,
    batch_size,
    call_model,
    is_single_batch,
    private_copy,
    reparametrized,
    to_device,
)
from .slices import Evaluations

__all__ = [
    "Engine",
    "autocast",
    "check_bn",
    "check_data",
    "check_engine_args",
    "check_metrics",
    "check_objective",
    "check_precision",
    "evaluate_points",
    "kw_engine",
    "warn_nonfinite",
]


def check_objective(obj, name: str = "obj") -> Objective:
    """``obj`` itself if it is an :class:`Objective`, else an error naming ``name``.

    Args:
        obj: the value to check.
        name: the argument's name, used in the error message.

    Returns:
        ``obj``.

    Raises:
        ArgumentTypeError: if ``obj`` is not an :class:`Objective`.
    """
    if not isinstance(obj, Objective):
        raise ArgumentTypeError(
            f"{name} must be a lossviz.Objective (Objective(model, loss_fn, data)), got "
            f"{type(obj).__name__}"
        )
    return obj


_PRECISIONS = (None, "fp32", "float32", "bf16", "bfloat16", "fp16", "float16")


def check_precision(precision, name: str = "precision"):
    """Check ``precision``: None / ``"fp32"`` (no autocast), ``"bf16"`` or ``"fp16"``.

    Also accepted: ``"float32"``, ``"bfloat16"``, ``"float16"`` and the torch dtypes
    ``torch.float32`` / ``torch.bfloat16`` / ``torch.float16``.

    Args:
        precision: the value to check.
        name: the argument's name, used in the error message.

    Returns:
        ``precision``, as given.

    Raises:
        ArgumentTypeError: if ``precision`` is neither None, a string nor a torch dtype.
        LossvizError: for another string or dtype.
    """
    want = f"{name} must be None, 'bf16' or 'fp16' (or torch.bfloat16 / torch.float16)"
    if precision is None:
        return None
    if isinstance(precision, torch.dtype):
        if precision not in (torch.float32, torch.bfloat16, torch.float16):
            raise LossvizError(f"{want}, got {precision}")
        return precision
    if not isinstance(precision, str):
        raise ArgumentTypeError(f"{want}, got {validate.show(precision)}")
    if precision not in _PRECISIONS:
        raise LossvizError(f"{want}, got {precision!r}")
    return precision


class _BatchList(list):
    """Batches already checked by :func:`check_data`."""


def check_data(data, name: str):
    """Batches for BatchNorm re-estimation: a batch or a non-empty iterable of batches.

    Args:
        data: None, one batch (a tuple / list starting with a tensor, a tensor or a
            mapping), or an iterable of batches (read once, here).
        name: the argument's name, used in the error messages.

    Returns:
        None for None, else the batches as a list (a list already returned by this
        function is returned as is).

    Raises:
        ArgumentTypeError: if ``data`` is a string or not iterable, or a batch is not a
            tuple / list starting with a tensor, a tensor or a mapping.
        DataError: if ``data`` holds no batch.
    """
    if data is None or isinstance(data, _BatchList):
        return data
    if isinstance(data, Tensor) or is_single_batch(data):
        return _BatchList([data])
    if isinstance(data, (str, bytes)) or not isinstance(data, Iterable):
        raise ArgumentTypeError(
            f"{name} must be a batch (inputs, targets), an input tensor or an iterable of "
            f"batches, got {type(data).__name__}"
        )
    batches = list(data)
    if not batches:
        raise DataError(f"{name} is empty: no batch")
    for i, b in enumerate(batches):
        if not (isinstance(b, Tensor) or is_single_batch(b)):
            raise ArgumentTypeError(
                f"{name}: batch {i} must be (inputs, targets), an input tensor or a mapping, "
                f"got {type(b).__name__}"
            )
    return _BatchList(batches)


def check_bn(obj: Objective, bn, bn_name: str = "bn") -> None:
    """Check ``bn`` against the Objective.

    ``"eval"`` / ``"train"`` must be the Objective's own mode; ``"recompute"`` needs an
    Objective built with ``bn="eval"`` and a BatchNorm layer with running statistics.
    Other values (None) are not checked here.

    Args:
        obj: the Objective.
        bn: the value to check.
        bn_name: the argument's name, used in the error messages.

    Raises:
        LossvizError: if ``bn`` does not fit the Objective (see above).
    """
    if bn in ("eval", "train") and bn != obj.bn:
        raise LossvizError(
            f"{bn_name}={bn!r} but the Objective was built with bn={obj.bn!r}; "
            f"build it with Objective(..., bn={bn!r})"
        )
    if bn == "recompute":
        if obj.bn != "eval":
            raise LossvizError(
                f"{bn_name}='recompute' needs an Objective built with bn='eval' (the "
                "re-estimated running statistics are used in eval mode)"
            )
        if not any(
            isinstance(m, nn.modules.batchnorm._BatchNorm)
            and m.track_running_stats
            and m.running_mean is not None
            for m in obj.model.modules()
        ):
            raise LossvizError(
                f"{bn_name}='recompute': the model has no BatchNorm layer with running statistics"
            )


def check_engine_args(
    obj: Objective | None = None,
    *,
    bn=None,
    bn_data=None,
    precision=None,
    batched=None,
    chunk_size=None,
    progress=None,
    bn_name: str = "bn",
    data_name: str = "bn_data",
    bn_choices=(None, "eval", "train", "recompute"),
) -> dict:
    """Validate the engine's keyword arguments (before any work); returns them normalized.

    Args:
        obj: the Objective ``bn`` is checked against (None: not checked against one).
        bn: one of ``bn_choices``: None (the Objective's mode), ``"eval"`` / ``"train"``
            (must be the Objective's) or ``"recompute"``.
        bn_data: batches for ``bn="recompute"`` (see :func:`check_data`).
        precision: see :func:`check_precision`.
        batched: None, True or False.
        chunk_size: None or an integer >= 1.
        progress: None, True or False.
        bn_name: the name ``bn`` has in the caller's signature (for messages).
        data_name: the name ``bn_data`` has in the caller's signature.
        bn_choices: the values ``bn`` may take.

    Returns:
        ``{"bn", "bn_data", "precision", "batched", "chunk_size"}``: the keywords of
        :class:`Engine` (``bn_data`` as a list of batches; ``progress`` is not included).

    Raises:
        LossvizError: ``bn`` not in ``bn_choices`` or not fitting the Objective,
            ``bn_data`` without ``bn="recompute"``, an unknown precision,
            ``chunk_size < 1``.
        ArgumentTypeError: a non-boolean ``batched`` / ``progress``, a non-integer
            ``chunk_size``, a precision or ``bn_data`` of the wrong type.
        DataError: an empty ``bn_data``.
    """
    validate.choice(bn, bn_name, bn_choices)
    if bn_data is not None and bn != "recompute":
        raise LossvizError(f"{data_name}= is only used with {bn_name}='recompute'")
    if obj is not None:
        check_bn(obj, bn, bn_name)
    check_precision(precision)
    if batched is not None:
        validate.boolean(batched, "batched")
    chunk_size = validate.integer(chunk_size, "chunk_size", low=1, none=True)
    if progress is not None:
        validate.boolean(progress, "progress")
    return {
        "bn": bn,
        "bn_data": check_data(bn_data, data_name),
        "precision": precision,
        "batched": batched,
        "chunk_size": chunk_size,
    }


_ENGINE_KW = ("bn", "bn_data", "precision", "batched", "chunk_size")


def kw_engine(kw: dict, allowed: Sequence[str] = _ENGINE_KW) -> dict:
    """The engine's keywords out of ``**kw``; an unknown keyword is an error naming it.

    Args:
        kw: the caller's ``**kw``.
        allowed: the keywords accepted (``progress`` is always accepted and read
            separately).

    Returns:
        The entries of ``kw`` named in ``allowed`` (not ``progress``).

    Raises:
        ArgumentTypeError: if ``kw`` holds a keyword that is neither in ``allowed`` nor
            ``progress``.
    """
    bad = [k for k in kw if k not in tuple(allowed) + ("progress",)]
    if bad:
        raise ArgumentTypeError(
            f"unexpected keyword argument(s) {bad}; accepted: {list(allowed) + ['progress']}"
        )
    return {k: v for k, v in kw.items() if k in allowed}


def check_metrics(obj: Objective, metrics: dict, flat: Tensor, fixed, **kw) -> tuple[dict, dict]:
    """``(metrics that apply, accuracy rules)``, checked with one forward before any work.

    See :func:`_check_metrics`; with ``distributed=`` every rank checks its first batch
    and the ranks must agree (a failure or a different outcome on one rank stops all).

    Args:
        obj: the Objective.
        metrics: the resolved ``name -> metric`` dict.
        flat: the ``(P,)`` point to run the forward at.
        fixed: the tensors that do not vary at that point.
        **kw: ``optional``, ``precision`` and ``name``, as in :func:`_check_metrics`.

    Returns:
        ``(kept, rules)``.
    """
    return obj.agree(
        lambda: _check_metrics(obj, metrics, flat, fixed, **kw),
        "checking the metrics",
        key=lambda out: ",".join(out[0]),
    )


def _check_metrics(
    obj: Objective,
    metrics: dict,
    flat: Tensor,
    fixed: Mapping[str, Tensor],
    *,
    optional: Sequence[str] = (),
    precision=None,
    name: str = "metrics",
) -> tuple[dict, dict]:
    """``(metrics that apply, accuracy rules)``, checked with one forward before any work.

    One forward on the first batch at ``flat`` shows the outputs (none when every metric
    is ``"loss"`` or the Objective has a custom ``forward=``: then ``metrics`` is returned
    as is); accuracy / error are checked against the targets of every batch held in
    memory (the first batch of a streamed source). A metric that does not apply raises a
    :class:`LossvizError` naming it and the shapes, unless it is in ``optional`` (the
    defaults): then it is left out with a warning. Callables are tried once on the first
    batch, so one that fails or does not return a scalar is reported before any work.

    Args:
        obj: the Objective.
        metrics: the resolved ``name -> metric`` dict
            (:func:`~lossviz.metrics.resolve_metrics`).
        flat: the ``(P,)`` point to run the forward at.
        fixed: the tensors that do not vary at that point (``obj.resolve(...)[1]``).
        optional: names of metrics left out with a warning (not an error) when they do
            not apply.
        precision: autocast for the forward (see :func:`check_precision`).
        name: the argument's name, used in the error messages.

    Returns:
        ``(kept, rules)``: the metrics that apply, in order, and ``name -> accuracy
        rule`` (:func:`~lossviz.metrics.accuracy_rule`) for accuracy / error.

    Raises:
        LossvizError: a metric that does not apply (not in ``optional``), a callable
            that fails or does not return a scalar on the first batch, or no metric left.
    """
    if obj.forward is not None or all(m == "loss" for m in metrics.values()):
        return dict(metrics), {}  # nothing to check: no forward needed
    batch, _ = obj.first_batch()
    held = obj.held_batches()
    ys = [b[1] for b in held] if held is not None else [batch[1]]
    with torch.no_grad(), autocast(precision, obj.device)():
        out = obj.batch_outputs(flat, dict(fixed), batch)
    y = batch[1]
    kept: dict = {}
    rules: dict = {}
    for mname, m in metrics.items():
        if m in ("accuracy", "error"):
            rule = accuracy_rule(out, ys, obj.loss_fn, obj.ignore_index)
            if isinstance(rule, str):
                shapes = (
                    f"outputs {tuple(out.shape)} {str(out.dtype)[6:]}, targets "
                    f"{tuple(y.shape)} {str(y.dtype)[6:]}"
                    if isinstance(out, Tensor) and isinstance(y, Tensor)
                    else ""
                )
                why = f"does not apply to this model and data ({shapes}): {rule}"
                if mname in optional:
                    warn(f"{m!r} (a default metric) is left out: it {why}")
                    continue
                raise LossvizError(f"{name}: {m!r} {why}")
            rules[mname] = rule
        elif callable(m) and not isinstance(m, str):
            try:
                with torch.no_grad():
                    v = m(out, y)
            except (LossvizError, KeyboardInterrupt):
                raise
            except Exception as e:  # noqa: BLE001 - reported with the metric's name
                raise LossvizError(
                    f"{name}: metric {mname!r} failed on the first batch (outputs "
                    f"{tuple(out.shape) if isinstance(out, Tensor) else type(out).__name__}"
                    f"): {type(e).__name__}: {str(e).strip().splitlines()[0][:200]}"
                ) from e
            as_scalar(v, mname)
        kept[mname] = m
    if not kept:
        raise LossvizError(f"{name}: none of the metrics applies to this model and data")
    return kept, rules


# the engine ------------------------------------------------------------------------------
def autocast(precision, device: torch.device):
    """A factory of the autocast context for ``precision`` on ``device``.

    Args:
        precision: see :func:`check_precision`.
        device: the device the forward runs on (its type is autocast's ``device_type``).

    Returns:
        A callable with no arguments that returns a fresh context manager:
        ``torch.autocast`` with ``torch.bfloat16`` / ``torch.float16``, or a no-op
        context for None / fp32.

    Raises:
        ArgumentTypeError: as :func:`check_precision` (a precision of the wrong type).
        LossvizError: as :func:`check_precision` (an unknown precision).
    """
    precision = check_precision(precision)
    if precision in (None, "fp32", "float32", torch.float32):
        return contextlib.nullcontext
    if precision in ("bf16", "bfloat16", torch.bfloat16):
        dt = torch.bfloat16
    else:
        dt = torch.float16
    return lambda: torch.autocast(device_type=device.type, dtype=dt)


_CONV = {nn.Conv1d: nn.functional.conv1d, nn.Conv2d: nn.functional.conv2d}
_CONV[nn.Conv3d] = nn.functional.conv3d


class _FirstLayer:
    """The layer the raw inputs meet first, when its output is linear in the point's weights.

    That is an ``nn.Linear`` or ``nn.Conv*d`` (exactly those types, zero padding, no
    parametrization) whose weight and bias are tensors of the point (varying or fixed, by
    their own names).

    Such a layer is linear in its weights: ``f(x; W, b) = x·Wᵀ + b`` (or the convolution),
    so at ``θ + Σ_k c_k·d_k`` its output is ``f(x; W₀, b₀) + Σ_k c_k·f(x; D_k, Db_k)``.
    :meth:`terms` computes the ``k + 1`` outputs once per batch; the forward of every point
    of the chunk combines them. The substitution happens only when the layer is called
    with the batch's input tensor itself, unchanged (the same object, the same version
    counter); any other call runs the layer as usual.
    """

    def __init__(self, path: str, module: nn.Module, weight: str, bias: str | None):
        self.path, self.weight, self.bias = path, weight, bias
        t = type(module)
        if t is nn.Linear:
            self.fn = nn.functional.linear
        else:
            conv = _CONV[t]
            stride, pad, dil, groups = module.stride, module.padding, module.dilation, module.groups

            def fn(x, w, b):
                return conv(x, w, b, stride, pad, dil, groups)

            self.fn = fn

    def terms(self, x: Tensor, origin: Mapping, dirs: list[Mapping], fixed: Mapping) -> Tensor:
        """``(k + 1, *out)``: the layer's output at the origin, then for each direction."""

        def get(d, name, zero_like):
            if name is None:
                return None
            if name in d:
                return d[name]
            return None if zero_like is None else torch.zeros_like(zero_like)

        w0 = origin[self.weight] if self.weight in origin else fixed[self.weight]
        b0 = None
        if self.bias is not None:
            b0 = origin[self.bias] if self.bias in origin else fixed[self.bias]
        outs = [self.fn(x, w0, b0)]
        for d in dirs:
            outs.append(self.fn(x, get(d, self.weight, w0), get(d, self.bias, b0)))
        return torch.stack(outs)


def _combine(terms: Tensor, coef: Tensor) -> Tensor:
    """``terms[0] + Σ_k coef[k]·terms[k + 1]`` (``coef`` may be batched under vmap)."""
    k = terms.shape[0] - 1
    rest = terms[1:].reshape(k, -1)
    return terms[0] + (coef.to(terms.dtype) @ rest).reshape(terms.shape[1:])


class _OwnModule:
    """The per-point path: a module copy whose varying parameters are views into one flat tensor.

    The copy is :meth:`Objective.module_copy`; loading a point is one ``copy_`` (no
    re-binding of tensors per point). The buffers are loaded before every forward (a
    forward that updates one in place changes no later point) and the modes are restored
    after it, as :meth:`Objective.bound` does.
    """

    def __init__(self, obj: Objective):
        m = obj.module_copy()
        lay = obj.layout
        self.flat = torch.zeros(lay.size, dtype=obj.dtype, device=obj.device)
        views = lay.unflatten(self.flat)
        old = dict(m.named_parameters())
        new = {id(old[n]): nn.Parameter(views[n], requires_grad=False) for n in lay.names}
        # every attribute holding a varying parameter (tied ones included) gets its view
        for mod in m.modules():
            for pname, p in list(mod.named_parameters(recurse=False)):
                if id(p) in new:
                    setattr(mod, pname, new[id(p)])
        m.to(obj.device)
        self.module = m
        self.params = dict(m.named_parameters())
        self.buffers = dict(m.named_buffers())
        self.modes = [
            (sub, sub.training, getattr(sub, "track_running_stats", None)) for sub in m.modules()
        ]

    def load_fixed(self, fixed: Mapping[str, Tensor]) -> list[tuple[Tensor, Tensor]]:
        """Copy the fixed parameters in; ``(buffer, value)`` pairs to load per point."""
        pairs = []
        for k, v in fixed.items():
            if k in self.buffers:
                pairs.append((self.buffers[k], v))
            elif k in self.params:
                self.params[k].copy_(v)
        return pairs

    def restore_modes(self) -> None:
        for sub, mode, track in self.modes:
            if sub.training != mode:
                sub.training = mode
            if track is not None and sub.track_running_stats != track:
                sub.track_running_stats = track


class Engine:
    """Evaluates metrics at many flat points of an :class:`Objective`, batched.

    How the points go through the model (vmap or a per-point loop, the first layer from
    ``k + 1`` products, the timed choice) is told in the module docstring. The loss
    combines over the batches ``b`` as :meth:`Objective.loss` does,
    ``L = Σ_b w_b·L_b / Z`` (``w_b = n_b``, ``Z = Σ_b n_b`` for a mean loss; ``w_b = 1``,
    ``Z = 1`` for a summed one); every other metric is ``Σ_b n_b·m_b / Σ_b n_b``; all
    accumulate in float64.

    Args:
        obj: the Objective (model, loss, data). Never changed, nor its model.
        metrics: a metric spec (``"loss"``, ``"accuracy"``, ``"error"``, callables
            ``(outputs, targets) -> scalar``, or a list / mapping of them) or an already
            resolved ``name -> metric`` dict (:func:`lossviz.metrics.resolve_metrics`).
        fixed: the tensors that do not vary (fixed parameters, buffers), ``name ->
            tensor``, as the second item of :meth:`Objective.resolve` (default: the
            model's).
        bn: None / ``"eval"`` / ``"train"`` (the Objective's own mode) or
            ``"recompute"``: BatchNorm running statistics re-estimated at every point on
            ``bn_data`` (see :meth:`buffers_at`).
        bn_data: batches for ``bn="recompute"`` (default: the Objective's data).
        precision: None, ``"bf16"`` or ``"fp16"`` (autocast around the forward).
        batched: None (choose), True (vmap) or False (one point at a time).
        chunk_size: points per chunk (default: from the memory available,
            :meth:`auto_chunk`).
        rules: the accuracy rules from :func:`check_metrics` (None: worked out per batch).
        bn_name: the name ``bn`` has in the caller's signature (for messages).
        data_name: the name ``bn_data`` has in the caller's signature.

    Attributes:
        metrics: the resolved ``name -> metric`` dict, in order.
        strategy: ``"vmap"`` or ``"loop"`` once a chunk ran (None before).
        first_layer: the module path of the first layer computed from ``k + 1``
            products per batch in the last :meth:`run` (None when not used).

    Raises:
        LossvizError: for bad arguments (naming them), before any work: an unknown
            metric or ``bn``, a ``bn`` that does not fit the Objective (``"recompute"``
            without a BatchNorm layer with running statistics), ``bn_data`` without
            ``bn="recompute"``, an unknown precision, ``chunk_size < 1``.
        ArgumentTypeError: ``obj`` not an Objective, metrics / ``batched`` /
            ``chunk_size`` / ``bn_data`` of the wrong type.
        DataError: an empty ``bn_data``.

    >>> from lossviz.data import digits, mlp
    >>> x, y = digits()
    >>> obj = Objective(mlp((64, 10)), torch.nn.functional.cross_entropy, (x, y))
    >>> flat, fixed = obj.resolve()
    >>> r = Engine(obj, ("loss", "accuracy"), fixed).evaluate(torch.stack([flat, 0 * flat]))
    >>> bool(abs(r["loss"][0] - obj.loss()) < 1e-6), r.complete
    (True, True)
    """

    def __init__(
        self,
        obj: Objective,
        metrics=("loss",),
        fixed: Mapping[str, Tensor] | None = None,
        *,
        bn=None,
        bn_data=None,
        precision=None,
        batched=None,
        chunk_size=None,
        rules: dict | None = None,
        bn_name: str = "bn",
        data_name: str = "bn_data",
    ):
        check_objective(obj)
        self.obj = obj
        self.metrics = resolve_metrics(obj, metrics)
        self.loss = loss_evaluator(obj.loss_fn)  # the same value (faster where known)
        self.rules = rules
        self.fixed = dict(obj.resolve()[1] if fixed is None else fixed)
        self.precision = check_precision(precision)
        self.autocast = autocast(precision, obj.device)
        if bn not in (None, "eval", "train", "recompute"):
            raise LossvizError(
                f"{bn_name} must be 'eval', 'recompute' (or None: the Objective's setting), "
                f"got {bn!r}"
            )
        check_bn(obj, bn, bn_name)
        if bn_data is not None and bn != "recompute":
            raise LossvizError(f"{data_name}= is only used with {bn_name}='recompute'")
        self.recompute = bn == "recompute"
        if batched is not None:
            validate.boolean(batched, "batched")
        self.batched = batched  # None: choose
        self.strategy = None if batched is None else ("vmap" if batched else "loop")
        self.chunk_size = validate.integer(chunk_size, "chunk_size", low=1, none=True)
        self.first_layer: str | None = None
        self._first: _FirstLayer | None | bool = False  # False: not looked for yet
        self._terms_cache: dict[int, Tensor] = {}
        self._plane = None
        self._own: _OwnModule | None | bool = False  # False: not built yet
        if self.recompute:
            self._setup_recompute(check_data(bn_data, data_name), bn_name)

    # BatchNorm statistics ------------------------------------------------------------
    def _setup_recompute(self, bn_batches, bn_name="bn"):
        obj = self.obj
        # a private module tree of our own (the Objective's stays in eval mode); every
        # buffer is swapped in at each forward, so the model's are never written
        stats = private_copy(obj.model)
        stats.eval()
        self.bn_modules = []
        self.bn_buffers: dict[str, Tensor] = {}
        for name, m in stats.named_modules():
            if (
                isinstance(m, nn.modules.batchnorm._BatchNorm)
                and m.track_running_stats
                and m.running_mean is not None
            ):
                m.train()
                self.bn_modules.append(m)
                pre = f"{name}." if name else ""
                self.bn_buffers[pre + "running_mean"] = torch.zeros_like(
                    m.running_mean, device=obj.device
                )
                self.bn_buffers[pre + "running_var"] = torch.ones_like(
                    m.running_var, device=obj.device
                )
                self.bn_buffers[pre + "num_batches_tracked"] = torch.zeros_like(
                    m.num_batches_tracked, device=obj.device
                )
        if not self.bn_modules:
            raise LossvizError(
                f"{bn_name}='recompute': the model has no BatchNorm layer with running statistics"
            )
        self.stats_module = stats
        if bn_batches is None:
            self._bn_batches = None
        else:
            self._bn_batches = [to_device(b, obj.device) for b in bn_batches]

    def _bn_iter(self):
        if self._bn_batches is None:
            yield from self.obj.batches()
        else:
            for b in self._bn_batches:
                yield b, batch_size(b)

    def _stats_forward(self, flat, bufs, batch):
        buffers = self.obj.buffer_names
        tensors = {k: (v.clone() if k in buffers else v) for k, v in self.fixed.items()}
        tensors.update(self.obj.layout.unflatten(flat))
        tensors.update(bufs)
        with reparametrized(self.stats_module, tensors):
            if self.obj.forward is not None:
                self.obj.forward(self.stats_module, batch)
            else:
                x = batch[0] if isinstance(batch, (tuple, list)) else batch
                call_model(self.stats_module, x)
        return torch.zeros((), device=flat.device)

    def _recompute(self, pts: Tensor, vmapped: bool) -> dict[str, Tensor]:
        """Running statistics at each point, estimated on private buffers (never the model's).

        A sample-weighted cumulative average of the batch statistics over the BN data
        (momentum ``n_b / (n_seen + n_b)``). With a data-parallel Objective each rank
        averages its own batches and one all-reduce combines them:
        ``Σ_r seen_r·avg_r / Σ_r seen_r``, the average one process would keep over the
        batches of every rank (the batch counts add up).
        """
        c = pts.shape[0]

        def local():
            bufs = {k: v.expand(c, *v.shape).clone() for k, v in self.bn_buffers.items()}
            seen = 0
            for batch, nb in self._bn_iter():
                for m in self.bn_modules:
                    m.momentum = nb / (seen + nb)
                seen += nb
                with self.autocast():
                    if vmapped:
                        torch.func.vmap(partial(self._stats_forward, batch=batch))(pts, bufs)
                    else:
                        for i in range(c):
                            self._stats_forward(pts[i], {k: v[i] for k, v in bufs.items()}, batch)
            return bufs, seen

        if not self.obj.distributed:
            return local()[0]
        names = list(self.bn_buffers)
        counts = {k: k.endswith("num_batches_tracked") for k in names}

        def sums():
            bufs, seen = local()
            parts = [
                (bufs[k].to(torch.float64) * (1 if counts[k] else seen)).reshape(c, -1)
                for k in names
            ]
            return torch.cat(parts, 1), seen

        width = sum(v.numel() for v in self.bn_buffers.values())
        total, n = self.obj.reduce_sums(
            sums, (c, width), "re-estimating the BatchNorm statistics", inputs=pts
        )
        out, start = {}, 0
        for k in names:
            ref = self.bn_buffers[k]
            v = total[:, start : start + ref.numel()].reshape(c, *ref.shape)
            start += ref.numel()
            out[k] = (v.round() if counts[k] else v / n).to(ref.dtype)
        return out

    def buffers_at(self, points: Tensor) -> dict[str, Tensor]:
        """The BatchNorm running statistics re-estimated at ``points`` (``bn="recompute"``).

        One pass over the BN data (``bn_data``, default the Objective's data) with the
        BatchNorm layers in training mode and momentum ``n_b / (n_seen + n_b)``, starting
        from mean 0 / variance 1: the result is the sample-weighted average of the batch
        statistics, ``running_mean = Σ_b n_b·μ_b / Σ_b n_b`` and ``running_var = Σ_b
        n_b·σ²_b / Σ_b n_b`` (``σ²_b`` the unbiased batch variance, as BatchNorm keeps
        it); ``num_batches_tracked`` counts the batches.

        Args:
            points: one flat point ``(P,)`` or several ``(c, P)`` (``obj.layout`` order).

        Returns:
            ``buffer name -> tensor``: the running mean / variance and batch count of every
            BatchNorm layer, with a leading ``c`` axis for several points. They are new
            tensors: the model's buffers are never read for them nor written.

        Raises:
            LossvizError: when the engine was not built with ``bn="recompute"``, or the
                points do not have ``P`` entries.
            ArgumentTypeError: if ``points`` is not a 1-D or 2-D tensor.
        """
        if not self.recompute:
            raise LossvizError("buffers_at needs an Engine built with bn='recompute'")
        if not isinstance(points, Tensor) or points.ndim not in (1, 2):
            raise ArgumentTypeError(
                f"points must be a ({self.obj.layout.size},) or (c, {self.obj.layout.size}) "
                f"tensor, got {validate.show(points)}"
            )
        if points.shape[-1] != self.obj.layout.size:
            raise LossvizError(
                f"points must have {self.obj.layout.size} entries (the varying parameters), "
                f"got shape {tuple(points.shape)}"
            )
        single = points.ndim == 1
        pts = points.to(self.obj.device, self.obj.dtype)
        pts = pts[None] if single else pts
        with torch.no_grad():
            bufs = self._recompute(pts, self.strategy == "vmap")
        return {k: v[0] for k, v in bufs.items()} if single else bufs

    # the first layer from k + 1 products ---------------------------------------------
    def _find_first_layer(self, origin: Tensor) -> _FirstLayer | None:
        """The first layer the inputs meet, if it can be computed from ``k + 1`` products.

        See :class:`_FirstLayer`; one forward at ``origin`` on the first batch shows it.
        """
        obj = self.obj
        if obj.forward is not None or self.precision not in (None, "fp32", "float32"):
            return None
        batch, _ = obj.first_batch()
        x = batch[0] if isinstance(batch, (tuple, list)) and len(batch) >= 1 else None
        if not isinstance(x, Tensor) or not x.is_floating_point():
            return None
        names = set(obj.layout.names) | set(self.fixed)
        found: list[str] = []
        with torch.no_grad(), obj.bound(origin, self.fixed) as m:
            handles = []
            for path, sub in m.named_modules():
                t = type(sub)
                if t is not nn.Linear and t not in _CONV:
                    continue
                if t in _CONV and sub.padding_mode != "zeros":
                    continue
                if nn.utils.parametrize.is_parametrized(sub):
                    continue

                def hook(mod, args, kwargs, path=path):
                    if len(args) == 1 and not kwargs and args[0] is x and path not in found:
                        found.append(path)

                handles.append(sub.register_forward_pre_hook(hook, with_kwargs=True))
            try:
                call_model(m, x)
            except Exception:  # noqa: BLE001 - the plain paths report it
                return None
            finally:
                for h in handles:
                    h.remove()
            if len(found) != 1:
                return None
            path = found[0]
            sub = m.get_submodule(path)
            pre = f"{path}." if path else ""
            weight, bias = pre + "weight", (pre + "bias" if sub.bias is not None else None)
        if weight not in names or (bias is not None and bias not in names):
            return None  # tied / aliased weights: not by their own names
        return _FirstLayer(path, sub, weight, bias)

    def _terms(self, i: int, x: Tensor) -> tuple[Tensor, Tensor, int]:
        """``(outputs, x, version)``: the first layer's ``k + 1`` outputs on batch ``i``.

        ``outputs`` on the inputs ``x`` of batch ``i`` (cached for held batches), and
        ``x``'s version counter then.
        """
        hit = self._terms_cache.get(i)
        if hit is not None and hit[1] is x and hit[2] == x._version:
            return hit
        origin, D = self._plane[0], self._plane[1]
        lay = self.obj.layout
        with torch.no_grad():
            t = self._first.terms(
                x, lay.unflatten(origin), [lay.unflatten(d) for d in D], self.fixed
            )
        hit = (t, x, x._version)
        if self._cache_terms:
            self._terms_cache[i] = hit
        return hit

    def _plan_first_layer(self, plane) -> bool:
        """Whether the points of this run may take the first layer from ``k + 1`` products."""
        self._plane, self._terms_cache = None, {}
        if plane is None or self.obj.distributed:  # a shard may be empty: the plain forward
            return False
        origin, D = plane[0], plane[1]
        if self._first is False:
            self._first = self._find_first_layer(origin)
        if self._first is None:
            return False
        self._plane = (origin, D, plane[2])
        # keep the k + 1 outputs of every held batch when they fit in a tenth of the memory
        n_held = self.obj.n_batches
        if n_held is None:
            self._cache_terms = False
        else:
            batch, _ = self.obj.first_batch()
            self._cache_terms = False
            hit = self._terms(0, batch[0])
            need = hit[0].numel() * hit[0].element_size() * n_held
            self._cache_terms = need <= 0.1 * _free_bytes(self.obj.device)
            if self._cache_terms:
                self._terms_cache[0] = hit
        return True

    # metrics at points ---------------------------------------------------------------
    def _point(self, flat, bufs, coef, *, batch, terms) -> Tensor:
        obj = self.obj
        fixed = self.fixed if bufs is None else {**self.fixed, **bufs}
        if obj.forward is not None:
            return as_scalar(obj.batch_loss(flat, fixed, batch), "loss")[None]
        x = batch[0]
        with obj.bound(flat, fixed) as m:
            if terms is None:
                out = call_model(m, x)
            else:
                sub = m.get_submodule(self._first.path)
                plain = type(sub).forward
                t, tx, version = terms

                def forward(inp, *args, **kwargs):
                    if inp is tx and not args and not kwargs and inp._version == version:
                        return _combine(t, coef)
                    return plain(sub, inp, *args, **kwargs)

                sub.forward = forward
                try:
                    out = call_model(m, x)
                finally:
                    del sub.forward
        return self._metrics_of(out, batch[1])

    def _metrics_of(self, out, y) -> Tensor:
        rules = self.rules or {}
        vals = []
        for name, mt in self.metrics.items():
            if mt == "loss":
                v = self.loss(out, y)
            elif mt == "accuracy":
                v = accuracy_value(out, y, rules.get(name))
            elif mt == "error":
                v = 1 - accuracy_value(out, y, rules.get(name))
            else:
                v = mt(out, y)
            vals.append(as_scalar(v, name))
        return torch.stack(vals)

    def _own_module(self) -> _OwnModule | None:
        """The module copy of the per-point path, or None.

        None when the model cannot be copied or the copy would take over a quarter of the
        free memory: then each point is bound with :meth:`Objective.bound`.
        """
        if self._own is False:
            self._own = None
            # a copy of every parameter and buffer: only where it takes a small share of
            # the free memory (a large model on a GPU is bound point by point instead)
            size = sum(
                t.numel() * t.element_size()
                for t in [*self.obj.model.parameters(), *self.obj.model.buffers()]
            )
            if size <= 0.25 * _free_bytes(self.obj.device):
                try:
                    self._own = _OwnModule(self.obj)
                except LossvizError:
                    pass
        return self._own

    def _loop(self, pts: Tensor, bufs, coefs, batch, terms, pairs) -> Tensor:
        """``(c, n_metrics)``: one forward per point on the module copy.

        ``pairs`` from :meth:`_OwnModule.load_fixed`.
        """
        own = self._own
        obj = self.obj
        if bufs is not None:  # re-estimated statistics: loaded per point below
            skip = {id(own.buffers[k]) for k in bufs}
            pairs = [(b, v) for b, v in pairs if id(b) not in skip]
        x = batch[0] if obj.forward is None else None
        sub = plain = None
        state: dict = {}
        if terms is not None:
            t, tx, version = terms
            k = t.shape[0] - 1
            cl = coefs.tolist()
            sub = own.module.get_submodule(self._first.path)
            plain = type(sub).forward

            def forward(inp, *args, **kwargs):
                if inp is tx and not args and not kwargs and inp._version == version:
                    a = state["coef"]
                    base = t[0]
                    if k > 1:
                        key = tuple(a[1:])
                        if state.get("key") != key:  # the part shared along a grid row
                            base = t[0].clone()
                            for j in range(1, k):
                                base.add_(t[j + 1], alpha=a[j])
                            state["key"], state["base"] = key, base
                        base = state["base"]
                    # one output buffer for all points (a fresh allocation of this size
                    # costs as much as the sum itself); see the check after the forward
                    if "out" not in state:
                        state["out"] = torch.empty_like(t[0])
                    return torch.add(base, t[1], alpha=a[0], out=state["out"])
                return plain(sub, inp, *args, **kwargs)

            sub.forward = forward
        rows = []
        try:
            for j in range(pts.shape[0]):
                own.flat.copy_(pts[j])
                for b, v in pairs:
                    b.copy_(v)
                if bufs is not None:
                    for name, v in bufs.items():
                        own.buffers[name].copy_(v[j])
                if terms is not None:
                    state["coef"] = cl[j]
                try:
                    if obj.forward is not None:
                        rows.append(as_scalar(obj.forward(own.module, batch), "loss")[None])
                        continue
                    out = call_model(own.module, x)
                finally:
                    own.restore_modes()
                rows.append(self._metrics_of(out, batch[1]))
                if "out" in state:
                    ptr = state["out"].untyped_storage().data_ptr()
                    if any(o.untyped_storage().data_ptr() == ptr for o in _tensors_in(out)):
                        del state["out"]  # the model returned it: never overwrite it later
        finally:
            if sub is not None:
                del sub.forward
        return torch.stack(rows)

    def values(self, pts: Tensor, vmapped: bool, coefs: Tensor | None = None) -> Tensor:
        """``(n_metrics, c)`` float64 values at the points ``pts``, over all batches.

        The loss combines as the Objective's, ``Σ_b w_b·L_b / Z`` with
        ``w_b = obj.batch_weight(n_b)`` and ``Z = obj.normalizer(N)`` (a sample-weighted
        mean, or the sum of a summed loss); every other metric is the sample-weighted mean
        ``Σ_b n_b·m_b / Σ_b n_b``. With ``bn="recompute"`` the running statistics are
        re-estimated at the points first (:meth:`buffers_at`).

        Args:
            pts: ``(c, P)`` flat points on the Objective's device and dtype.
            vmapped: one forward for all points (vmap) or one per point.
            coefs: ``(c, k)``: the points' coordinates on this run's plane, to take the
                first layer from its ``k + 1`` outputs (None: the plain forward).

        Returns:
            A ``(n_metrics, c)`` float64 tensor on the Objective's device.

        Raises:
            LossvizError: if a metric does not return a scalar, or accuracy does not
                apply to a batch.
        """
        c = pts.shape[0]
        obj = self.obj
        is_loss = torch.tensor(
            [isinstance(m, str) and m == "loss" for m in self.metrics.values()],
            device=pts.device,
        )[:, None]
        with torch.no_grad():
            bufs = self._recompute(pts, vmapped) if self.recompute else None

        def local():
            with torch.no_grad():
                total = torch.zeros(len(self.metrics), c, dtype=torch.float64, device=pts.device)
                n = 0
                own = None if vmapped else self._own_module()
                pairs = None if own is None else own.load_fixed(self.fixed)
                for i, (batch, nb) in enumerate(obj.batches()):
                    terms = None if coefs is None else self._terms(i, batch[0])
                    with self.autocast():
                        if vmapped:
                            fn = partial(self._point, batch=batch, terms=terms)
                            if coefs is None:
                                if bufs is None:
                                    v = torch.func.vmap(lambda p, f=fn: f(p, None, None))(pts)
                                else:
                                    v = torch.func.vmap(lambda p, b, f=fn: f(p, b, None))(pts, bufs)
                            elif bufs is None:
                                v = torch.func.vmap(lambda p, k, f=fn: f(p, None, k))(pts, coefs)
                            else:
                                v = torch.func.vmap(fn)(pts, bufs, coefs)
                        elif own is not None:
                            v = self._loop(pts, bufs, coefs, batch, terms, pairs)
                        else:
                            v = torch.stack(
                                [
                                    self._point(
                                        pts[j],
                                        None
                                        if bufs is None
                                        else {k: b[j] for k, b in bufs.items()},
                                        None if coefs is None else coefs[j],
                                        batch=batch,
                                        terms=terms,
                                    )
                                    for j in range(c)
                                ]
                            )
                    w = torch.where(is_loss, obj.batch_weight(nb), float(nb))
                    total += v.T.to(torch.float64) * w
                    n += nb
            return total, n

        total, n = obj.reduce_sums(
            local, (len(self.metrics), c), "evaluating the metrics", inputs=pts
        )
        return total / torch.where(is_loss, obj.normalizer(n), float(n))

    def auto_chunk(self, n: int) -> int:
        """Points per chunk for ``n`` points.

        ``chunk_size`` if given (at most ``n``); else what half the free GPU memory (a
        quarter of the available memory on a CPU) holds at about ``4·P·itemsize +
        32·(bytes of the first held batch; 0 for streamed data) + 1 MiB`` per point, at
        most 512 on a GPU and 8 on a CPU, at least 1.

        Args:
            n: the number of points to evaluate.

        Returns:
            The chunk size, between 1 and ``n``.
        """
        if self.chunk_size is not None:
            return min(self.chunk_size, n)
        obj = self.obj
        itemsize = torch.empty((), dtype=obj.dtype).element_size()
        batch_bytes = 0
        held = obj.held_batches()
        if held:
            stack = [held[0]]
            while stack:
                x = stack.pop()
                if isinstance(x, Tensor):
                    batch_bytes += x.numel() * max(x.element_size(), itemsize)
                elif isinstance(x, Mapping):
                    stack.extend(x.values())
                elif isinstance(x, (list, tuple)):
                    stack.extend(x)
        # the point itself plus working copies, and a rough allowance for activations
        per_point = 4 * obj.layout.size * itemsize + 32 * batch_bytes + (1 << 20)
        free = _free_bytes(obj.device)
        if obj.device.type == "cuda":
            budget, cap = 0.5 * free, 512
        else:
            budget, cap = 0.25 * free, 8
        return int(max(1, min(n, cap, budget // per_point)))

    def _candidates(self, affine: bool) -> list[tuple[bool, bool]]:
        """``(vmapped, first layer from products)`` pairs to choose from, the default first.

        On a CPU the per-point loop is always one (the choice is timed).
        """
        dev = self.obj.device.type
        if self.batched is not None:
            vm = [self.batched]
        elif self.strategy == "loop":  # vmap failed for this model before
            vm = [False]
        else:
            vm = [True, False] if dev == "cpu" else [True]
        aff = [True, False] if affine else [False]
        out = [(v, a) for v in vm for a in aff]
        if dev == "cpu" and len(vm) == 2 and affine:
            # vmap is timed once, with the products (on a CPU it is the slower way for
            # the models measured: timing both would cost more than it can win)
            out.remove((True, False))
        return out

    def run(
        self,
        make_points: Callable[[np.ndarray, Tensor], Tensor],
        order: np.ndarray,
        out: np.ndarray,
        done: np.ndarray,
        *,
        plane: tuple | None = None,
        progress=None,
        desc="evaluating",
        on_chunk: Callable | None = None,
        flush_seconds: float = 0.5,
        where: Callable[[int], str] | None = None,
    ) -> bool:
        """Evaluate the points ``order`` (indices) into ``out[:, idx]``.

        Args:
            make_points: ``make_points(idx, idx_on_device) -> (c, P)`` tensor: the points
                of a chunk of indices.
            order: the indices, in the order to evaluate them.
            out: ``(n_metrics, n)`` float array written in place (NaN where not
                evaluated).
            done: ``(n,)`` bool array, set where evaluated.
            plane: ``(origin (P,), directions (k, P), coords)`` when every point is
                ``origin + Σ_j coords(idx, idx_on_device)[:, j]·directions[j]`` (a line
                or a plane; ``coords`` returns ``(c, k)``): the first layer may then be
                computed from ``k + 1`` products per batch (exactly; see the module
                docstring). The caller vouches for the relation.
            progress: show a progress bar (None: unless ``LOSSVIZ_PROGRESS=0``).
            desc: the progress bar's label.
            on_chunk: called after each chunk, once ``out`` / ``done`` hold it.
            flush_seconds: without ``on_chunk``, values stay on the device and are copied
                to ``out`` this often (the device is not waited on between chunks).
            where: ``where(i) -> "t=0.5"``: non-finite values are reported in a warning
                naming the points.

        Returns:
            True if all points were evaluated; False after a KeyboardInterrupt (the rest
            stays NaN) when this is the outermost lossviz call (otherwise the interrupt
            propagates).

        Raises:
            LossvizError: bad input found on a chunk (a metric that does not return a
                scalar, accuracy that does not apply), raised as is.
            KeyboardInterrupt: when this is not the outermost lossviz call.
            Exception: what the forward raises when no other way is left: out of memory
                with chunks of one point, or an error of the plain forward (with
                ``batched=None`` a vmap failure falls back to the per-point loop with a
                warning; a failure with the first-layer products falls back to the plain
                forward).
        """
        from tqdm.auto import tqdm

        order = np.asarray(order, dtype=np.int64)
        dev = self.obj.device
        order_t = torch.as_tensor(order, device=dev)
        buf = torch.full(out.shape, float("nan"), dtype=torch.float64, device=dev)
        launched = np.zeros_like(done)
        last = [time.perf_counter()]

        def flush():
            out[:, launched] = buf.cpu().numpy()[:, launched]
            done[launched] = True
            last[0] = time.perf_counter()

        chunk = self.obj.agreed_min(self.auto_chunk(max(len(order), 1)))
        cands = self._candidates(self._plan_first_layer(plane))
        # time every candidate on real chunks when the job is large enough: one warm-up
        # chunk each, then two timed chunks each (the faster kept; one for vmap on a CPU,
        # where it is slow and far off), and keep the fastest
        # (not with distributed=: the ranks' timings differ, and they must all choose alike)
        timing = dev.type in ("cpu", "cuda") and len(cands) > 1 and not self.obj.distributed
        schedule = []
        # the choice is timed once per Objective and kind of job, then reused (a dashboard
        # runs many small jobs; a repeated surface does not pay for the timing again)
        key = (dev, self.batched, self.recompute, str(self.precision), tuple(self.metrics))
        key = (*key, tuple(cands), chunk)
        known = _CHOICES.get(self.obj, {}).get(key)
        if known is not None and known in cands:
            timing, chosen0 = False, known
        else:
            chosen0 = cands[0]
        if timing:
            reps = {c: 2 if c[0] and dev.type == "cpu" else 3 for c in cands}
            schedule = [c for r in range(3) for c in cands if r < reps[c]]
            if len(order) < (len(schedule) + 2) * chunk:
                schedule = []
        chosen = chosen0
        warmed: set = set()
        times: dict[tuple[bool, bool], float] = {}
        ci = 0
        pos = 0
        complete = True
        bar = tqdm(
            total=len(order),
            desc=desc,
            unit="pt",
            disable=not validate.progress(progress),
            leave=False,
        )
        try:
            while pos < len(order):
                idx, idx_t = order[pos : pos + chunk], order_t[pos : pos + chunk]
                pts = make_points(idx, idx_t)
                mode = schedule[ci] if ci < len(schedule) else chosen
                coefs = None
                if mode[1]:
                    coefs = self._plane[2](idx, idx_t).to(dev, self.obj.dtype)
                try:
                    t0 = time.perf_counter()
                    vals = self.values(pts, mode[0], coefs)
                    if ci < len(schedule) and dev.type == "cuda":
                        torch.cuda.synchronize(dev)
                    dt = (time.perf_counter() - t0) / len(idx)
                except Exception as e:
                    if is_oom(e) and chunk > 1:
                        chunk = max(1, chunk // 2)
                        del pts
                        if dev.type == "cuda":
                            torch.cuda.empty_cache()
                        continue
                    if isinstance(e, LossvizError):  # bad input: the same point by point
                        raise
                    if is_oom(e):
                        raise
                    if mode[0] and self.batched is None:
                        warn(
                            "batched (vmap) evaluation is not possible for this model "
                            f"({type(e).__name__}: {str(e).splitlines()[0][:200]}); "
                            "evaluating one point at a time"
                        )
                        self.strategy = "loop"
                        drop = 0
                    elif mode[1]:  # the products of the first layer: use the plain forward
                        drop = 1
                    else:
                        raise
                    cands = [c for c in cands if not c[drop]]
                    schedule = schedule[:ci] + [c for c in schedule[ci:] if not c[drop]]
                    chosen = cands[0]
                    continue
                if ci < len(schedule):
                    if mode in warmed:
                        times[mode] = min(times.get(mode, dt), dt)
                    warmed.add(mode)
                    ci += 1
                    if ci == len(schedule) and times:
                        chosen = _fastest(times)
                        with contextlib.suppress(TypeError):  # an Objective subclass
                            _CHOICES.setdefault(self.obj, {})[key] = chosen
                self.strategy = "vmap" if mode[0] else "loop"
                self.first_layer = self._first.path if mode[1] else None
                buf[:, idx_t] = vals
                launched[idx] = True
                pos += len(idx)
                bar.update(len(idx))
                if on_chunk is not None or time.perf_counter() - last[0] > flush_seconds:
                    flush()
                    if on_chunk is not None:
                        on_chunk()
        except KeyboardInterrupt:
            if not keep_partial():
                raise
            complete = False
            warn(
                f"interrupted: {int(launched.sum())} of {len(order)} points evaluated; the "
                "others are NaN (result marked incomplete)"
            )
        finally:
            bar.close()
            flush()
            self._terms_cache = {}
        if where is not None:
            warn_nonfinite(list(self.metrics), out, done, where)
        return complete

    def evaluate(
        self,
        points: Tensor,
        *,
        plane: tuple | None = None,
        progress=None,
        desc: str = "evaluating",
        where: Callable[[int], str] | None = None,
    ) -> Evaluations:
        """The metrics at the flat points ``points`` ``(N, P)`` (``obj.layout`` order).

        Args:
            points: ``(N, P)`` tensor on the Objective's device and dtype.
            plane: as in :meth:`run`, with ``coords(idx, idx_on_device)`` giving the
                coordinates of ``points[idx]``.
            progress: as in :meth:`run`.
            desc: as in :meth:`run`.
            where: as in :meth:`run`.

        Returns:
            :class:`~lossviz.slices.Evaluations`: ``metric -> (N,)`` float64 array, with
            ``evaluated`` (the done mask), ``complete``, ``strategy`` and ``seconds``
            (``provenance`` is None: the public callers set it).

        Raises:
            LossvizError: as :meth:`run` (bad input found on a chunk).
            KeyboardInterrupt: as :meth:`run` (when not the outermost lossviz call).
            Exception: as :meth:`run` (a forward that fails with no other way left).
        """
        t0 = time.perf_counter()
        n = points.shape[0]
        out = np.full((len(self.metrics), n), np.nan)
        done = np.zeros(n, dtype=bool)
        complete = self.run(
            lambda idx, k: points[k],
            np.arange(n),
            out,
            done,
            plane=plane,
            progress=progress,
            desc=desc,
            where=where,
        )
        res = Evaluations({k: out[i] for i, k in enumerate(self.metrics)})
        res.complete, res.strategy, res.seconds = complete, self.strategy, time.perf_counter() - t0
        res.evaluated = done
        return res


#: Objective -> {kind of job: the timed choice}; forgotten with the Objective
_CHOICES: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _fastest(times: dict[tuple[bool, bool], float]) -> tuple[bool, bool]:
    """The fastest ``(vmapped, first layer from products)`` candidate.

    vmap only when it beats the best per-point candidate by 10 % (one timed chunk each is
    noisy, and the per-point loop is the one that must never be beaten by the choice).
    """
    best = min(times, key=times.get)
    loops = {k: v for k, v in times.items() if not k[0]}
    if best[0] and loops:
        loop = min(loops, key=loops.get)
        if times[best] > 0.9 * loops[loop]:
            return loop
    return best


def _tensors_in(x) -> list[Tensor]:
    if isinstance(x, Tensor):
        return [x]
    if isinstance(x, Mapping):
        x = list(x.values())
    if isinstance(x, (list, tuple)):
        return [t for v in x for t in _tensors_in(v)]
    return []


def _free_bytes(device: torch.device) -> float:
    """Free memory on ``device`` (for a CPU, the available physical memory)."""
    if device.type == "cuda":
        return float(torch.cuda.mem_get_info(device)[0])
    try:
        return float(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
    except (ValueError, OSError, AttributeError):  # pragma: no cover
        return float(4 << 30)


def warn_nonfinite(names, out: np.ndarray, done: np.ndarray, where, what: str = "") -> None:
    """One warning per metric that is not finite at an evaluated point, naming where.

    Args:
        names: the metric names, in the order of the rows of ``out``.
        out: ``(n_metrics, n)`` values.
        done: ``(n,)`` bool mask of the points evaluated (the others are not checked).
        where: ``where(i) -> str`` naming point ``i`` (the first 5 are named).
        what: a prefix for the messages.
    """
    for i, k in enumerate(names):
        bad = np.flatnonzero(done & ~np.isfinite(out[i]))
        if len(bad):
            shown = ", ".join(f"{where(int(j))} ({out[i, j]:g})" for j in bad[:5])
            more = f" and {len(bad) - 5} more" if len(bad) > 5 else ""
            warn(
                f"{what}{k} is not finite at {len(bad)} of {int(done.sum())} evaluated points: "
                f"{shown}{more}; kept as NaN / inf (summaries over them are not finite)"
            )


def evaluate_points(
    obj: Objective,
    P: Tensor,
    metrics,
    fixed: Mapping[str, Tensor],
    *,
    rules: dict | None = None,
    progress=None,
    where=None,
    **ekw,
) -> Evaluations:
    """:func:`lossviz.landscape.evaluate` without its argument checks or public-call wrapper.

    The shared engine of composite calls (an interrupt here is theirs to handle): the
    metrics at the ``(N, P)`` flat points ``P``, combined over the batches as in
    :class:`Engine`; the metrics are checked first (:func:`check_metrics`, at ``P[0]``)
    when ``rules`` is None.

    Args:
        obj: the Objective.
        P: ``(N, P)`` flat points on the Objective's device and dtype.
        metrics: a metric spec or resolved dict (as :class:`Engine` takes).
        fixed: the tensors that do not vary (``obj.resolve(...)[1]``).
        rules: accuracy rules from :func:`check_metrics` (None: check the metrics here).
        progress: show a progress bar (None: unless ``LOSSVIZ_PROGRESS=0``).
        where: ``where(i) -> str`` naming point ``i`` in the warning about non-finite
            values (None: no warning).
        **ekw: the other keywords of :class:`Engine` (``bn``, ``bn_data``,
            ``precision``, ``batched``, ``chunk_size``).

    Returns:
        :class:`~lossviz.slices.Evaluations` (``provenance`` None; ``seconds`` includes
        the setup).

    Raises:
        LossvizError: bad arguments, as :class:`Engine` and :func:`check_metrics`;
            bad input found on a chunk, as :meth:`Engine.run`.
        ArgumentTypeError: arguments of the wrong type, as :class:`Engine`.
        DataError: an empty ``bn_data``.
        KeyboardInterrupt: as :meth:`Engine.run` (when not the outermost lossviz call).
    """
    t0 = time.perf_counter()
    eng = Engine(obj, metrics, fixed, rules=rules, **ekw)
    if eng.rules is None:  # the metrics that apply, checked before the arrays are laid out
        eng.metrics, eng.rules = check_metrics(
            obj, eng.metrics, P[0], fixed, precision=eng.precision
        )
    res = eng.evaluate(P, progress=progress, where=where)
    res.seconds = time.perf_counter() - t0
    return res
