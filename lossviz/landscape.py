"""Loss landscapes: 1-D slices and 2-D surfaces, evaluated in batches.

``f(a, b) = L(θ + a·d1 + b·d2)`` on a grid (Li, Xu, Taylor, Studer, Goldstein 2018,
"Visualizing the Loss Landscape of Neural Nets"). Many grid points go through one forward
pass: ``torch.func.functional_call`` under ``torch.vmap`` over chunks of points, with a
per-point fallback where vmap cannot run. :func:`evaluate` is the shared engine: any set of
flat points (grid points, points on a curve between checkpoints) with one or more metrics,
combined over the batches exactly like :meth:`Objective.loss`.

Off the happy path: every argument is checked before any work starts (a
:class:`~lossviz.errors.LossvizError` naming it); a metric that does not apply to the
model's outputs and targets (accuracy of a regression) is refused; non-finite values are
kept as they are (``inf`` stays ``inf``, ``NaN`` stays ``NaN``) and reported with where
they occur; after Ctrl-C the points not evaluated are NaN and ``complete`` is False.
"""

from __future__ import annotations

import contextlib
import copy
import html
import os
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import partial

import numpy as np
import torch
from torch import Tensor, nn

from . import validate
from .directions import PCAResult, Plane, point_params, random_directions
from .errors import ArgumentTypeError, CheckpointError, DataError, LossvizError, is_oom, named, warn
from .formatting import short
from .interrupt import api, keep_partial
from .objective import (
    Objective,
    batch_size,
    call_model,
    is_one_of,
    is_single_batch,
    loss_target,
    to_device,
)
from .weights import Weights

try:
    from torch.nn.utils.stateless import _reparametrize_module
except ImportError:  # pragma: no cover
    _reparametrize_module = None

_BUILTIN = ("loss", "accuracy", "error")


def _progress(progress) -> bool:
    if progress is None:
        return os.environ.get("LOSSVIZ_PROGRESS", "1") not in ("0", "false", "False")
    return bool(progress)


# argument checks -------------------------------------------------------------------------
def check_objective(obj, name: str = "obj") -> Objective:
    if not isinstance(obj, Objective):
        raise ArgumentTypeError(
            f"{name} must be a lossviz.Objective (Objective(model, loss_fn, data)), got "
            f"{type(obj).__name__}"
        )
    return obj


_PRECISIONS = (None, "fp32", "float32", "bf16", "bfloat16", "fp16", "float16")


def check_precision(precision, name: str = "precision"):
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
    """Batches for BatchNorm re-estimation: a batch (tuple / tensor / mapping) or a
    non-empty iterable of batches; returned as a list."""
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
    """``bn`` against the Objective: ``"eval"``/``"train"`` must be the Objective's own,
    ``"recompute"`` needs ``bn="eval"`` and a BatchNorm layer with running statistics."""
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
            for m in obj._shadow.modules()
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
    """Validate the engine's keyword arguments (before any work); returns them normalized."""
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
    """The engine's keywords out of ``**kw`` (``progress`` is read separately); an unknown
    keyword is an error naming it."""
    bad = [k for k in kw if k not in tuple(allowed) + ("progress",)]
    if bad:
        raise ArgumentTypeError(
            f"unexpected keyword argument(s) {bad}; accepted: {list(allowed) + ['progress']}"
        )
    return {k: v for k, v in kw.items() if k in allowed}


# metrics ---------------------------------------------------------------------------------
def resolve_metrics(obj: Objective, metrics, name: str = "metrics") -> dict[str, str | Callable]:
    """``metrics`` as an ordered ``name -> "loss" | "accuracy" | "error" | callable``."""
    if isinstance(metrics, str) or callable(metrics):
        metrics = (metrics,)
    if isinstance(metrics, Mapping):
        items = list(metrics.items())
    elif isinstance(metrics, Iterable) and not isinstance(metrics, (bytes, Tensor)):
        items = []
        for i, m in enumerate(metrics):
            if isinstance(m, str):
                items.append((m, m))
            elif callable(m):
                mname = getattr(m, "__name__", "") or f"metric{i}"
                items.append((f"metric{i}" if mname == "<lambda>" else mname, m))
            else:
                raise ArgumentTypeError(
                    f"{name}: a metric is 'loss', 'accuracy', 'error' or a callable "
                    f"(outputs, targets) -> scalar, got {validate.show(m)}"
                )
    else:
        raise ArgumentTypeError(
            f"{name} must be a metric name, a callable, or a list / mapping of them, got "
            f"{type(metrics).__name__}"
        )
    out: dict[str, str | Callable] = {}
    for mname, m in items:
        if isinstance(m, str) and m not in _BUILTIN:
            raise LossvizError(
                f"{name}: unknown metric {m!r}; use one of {_BUILTIN} or a callable "
                "(outputs, targets) -> scalar"
            )
        if not isinstance(m, str) and not callable(m):
            raise ArgumentTypeError(
                f"{name}: metric {mname!r} must be a name or a callable, got {validate.show(m)}"
            )
        if mname in out:
            raise LossvizError(f"{name}: metric name {mname!r} given twice")
        out[str(mname)] = m
    if not out:
        raise LossvizError(f"{name} is empty: no metric to compute")
    if obj.forward is not None and any(m != "loss" for m in out.values()):
        raise LossvizError(
            f"{name}: with a custom forward= only the 'loss' metric is available "
            "(outputs and targets are not known)"
        )
    return out


# losses whose outputs are probabilities or values compared with 0/1 targets directly
# (threshold ½); the logit losses (BCEWithLogits) and unknown ones threshold at 0
_F = nn.functional
_HALF_THRESHOLD = (
    nn.BCELoss,
    _F.binary_cross_entropy,
    nn.MSELoss,
    _F.mse_loss,
    nn.L1Loss,
    _F.l1_loss,
    nn.SmoothL1Loss,
    _F.smooth_l1_loss,
    nn.HuberLoss,
    _F.huber_loss,
)


def _is_binary(ys: list[Tensor]) -> bool:
    return all(bool(((y == 0) | (y == 1)).all()) for y in ys)


def accuracy_rule(out, ys: list[Tensor], loss_fn=None, ignore_index: int = -100):
    """How accuracy is read from ``out`` and targets like ``ys`` — a tuple — or a string
    saying why it does not apply.

    - class scores ``(..., C)``, ``C >= 2``, with integer labels ``(...)`` in ``[0, C)``:
      ``argmax == label`` (labels equal to ``ignore_index`` are left out);
    - one output per sample (``(N,)`` or ``(N, 1)``) with targets that are all 0 or 1
      (integer, bool or float): ``(output > t) == target``, ``t = 0.5`` when the loss takes
      probabilities or is a regression loss on 0/1 targets (``BCELoss``, ``MSELoss``, …),
      else ``t = 0`` (logits, ``BCEWithLogitsLoss``);
    - targets shaped like the outputs ``(N, C)`` that are class probabilities (one-hot, or
      non-negative rows summing to 1): ``argmax == argmax``.

    Anything else (float regression targets, multi-label 0/1 rows, mismatched shapes) has no
    accuracy.
    """
    y = ys[0]
    if not isinstance(out, Tensor) or not isinstance(y, Tensor):
        return (
            f"the outputs ({type(out).__name__}) and targets ({type(y).__name__}) are not "
            "both tensors"
        )
    if y.is_complex() or out.is_complex() or not out.is_floating_point():
        return f"outputs {out.dtype} / targets {y.dtype} are not real-valued scores and labels"
    f, _ = loss_target(loss_fn) if loss_fn is not None else (None, {})
    thr = 0.5 if f is not None and is_one_of(f, _HALF_THRESHOLD) else 0.0
    integral = not y.is_floating_point()
    if out.ndim >= 1 and out.ndim == y.ndim + 1 and out.shape[:-1] == y.shape:
        c = int(out.shape[-1])
        if c >= 2:
            if not integral:
                return "class scores need integer class labels, the targets are floating-point"
            for yy in ys:
                ok = ((yy >= 0) & (yy < c)) | (yy == ignore_index)
                if not bool(ok.all()):
                    return f"the targets hold labels outside 0..{c - 1}"
            return ("classes", ignore_index)
        if c == 1 and _is_binary(ys):
            return ("binary1", thr)
        return "one output per sample with targets that are not all 0 or 1 (a regression)"
    if out.shape == y.shape and out.ndim >= 1:
        if out.ndim == 1 or out.shape[-1] == 1:
            if _is_binary(ys):
                return ("binary", thr)
            return "one output per sample with targets that are not all 0 or 1 (a regression)"
        if all(
            bool((yy >= 0).all()) and bool(((yy.to(torch.float64).sum(-1) - 1).abs() <= 1e-3).all())
            for yy in ys
        ):
            return ("onehot",)
        return (
            "targets shaped like the outputs that are not class probabilities (rows of "
            "non-negative numbers summing to 1): a regression or multi-label task"
        )
    return "the outputs and targets do not have the shapes of class scores and labels"


def _accuracy(out: Tensor, y: Tensor, rule=None) -> Tensor:
    if rule is None:
        rule = accuracy_rule(out, [y])
        if isinstance(rule, str):
            raise LossvizError(
                f"accuracy does not apply to outputs {tuple(out.shape)} and targets "
                f"{tuple(y.shape)}: {rule}"
            )
    kind = rule[0]
    if kind == "classes":
        valid = y != rule[1]
        correct = (out.argmax(-1) == y) & valid
        return correct.sum(dtype=torch.float64) / valid.sum(dtype=torch.float64)
    if kind == "binary1":
        correct = (out[..., 0] > rule[1]) == (y > 0.5)
    elif kind == "binary":
        correct = (out > rule[1]) == (y > 0.5)
    else:
        correct = out.argmax(-1) == y.argmax(-1)
    return correct.to(torch.float64).mean()


def _scalar(v, name: str) -> Tensor:
    if not isinstance(v, Tensor) or v.numel() != 1:
        shape = tuple(v.shape) if isinstance(v, Tensor) else type(v).__name__
        raise LossvizError(
            f"metric {name!r} must return a scalar tensor (mean over the batch), got {shape}"
        )
    return v.reshape(()).to(torch.float64)


def check_metrics(
    obj: Objective,
    metrics: dict,
    flat: Tensor,
    fixed: Mapping[str, Tensor],
    *,
    optional: Sequence[str] = (),
    precision=None,
    name: str = "metrics",
) -> tuple[dict, dict]:
    """``(metrics that apply, accuracy rules)``: one forward on the first batch at ``flat``
    shows the outputs; accuracy / error are checked against the targets of every batch held
    in memory (the first batch of a streamed source). A metric that does not apply raises a
    :class:`LossvizError` naming it and the shapes, unless it is in ``optional`` (the
    defaults): then it is left out with a warning. Callables are tried once, so one that
    does not return a scalar is reported before any work."""
    if obj.forward is not None or all(m == "loss" for m in metrics.values()):
        return dict(metrics), {}  # nothing to check: no forward needed
    batch, _ = obj.first_batch()
    held = obj.held_batches()
    ys = [b[1] for b in held] if held is not None else [batch[1]]
    with torch.no_grad(), _autocast(precision, obj.device)():
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
            _scalar(v, mname)
        kept[mname] = m
    if not kept:
        raise LossvizError(f"{name}: none of the metrics applies to this model and data")
    return kept, rules


# the engine ------------------------------------------------------------------------------


def _autocast(precision, device: torch.device):
    precision = check_precision(precision)
    if precision in (None, "fp32", "float32", torch.float32):
        return contextlib.nullcontext
    if precision in ("bf16", "bfloat16", torch.bfloat16):
        dt = torch.bfloat16
    else:
        dt = torch.float16
    return lambda: torch.autocast(device_type=device.type, dtype=dt)


class _Engine:
    """Evaluates metrics at chunks of flat points; see :func:`evaluate`.

    ``metrics``: a spec or an already resolved ``name -> metric`` dict; ``rules``: the
    accuracy rules from :func:`check_metrics` (the callers check the metrics first)."""

    def __init__(
        self,
        obj: Objective,
        metrics,
        fixed,
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
        self.rules = rules
        self.fixed = dict(fixed)
        self.precision = check_precision(precision)
        self.autocast = _autocast(precision, obj.device)
        if bn not in (None, "eval", "train", "recompute"):
            raise LossvizError(
                f"{bn_name} must be 'eval', 'recompute' (or None: the Objective's setting), "
                f"got {bn!r}"
            )
        check_bn(obj, bn, bn_name)
        if bn_data is not None and bn != "recompute":
            raise LossvizError(f"{data_name}= is only used with {bn_name}='recompute'")
        self.recompute = bn == "recompute"
        self.batched = batched  # None: try vmap, fall back per point
        self.strategy = None if batched is None else ("vmap" if batched else "loop")
        self.chunk_size = validate.integer(chunk_size, "chunk_size", low=1, none=True)
        if self.recompute:
            self._setup_recompute(check_data(bn_data, data_name), bn_name)

    # BatchNorm statistics ------------------------------------------------------------
    def _setup_recompute(self, bn_batches, bn_name="bn"):
        obj = self.obj
        shadow = obj._shadow
        params = {id(p): p for p in shadow.parameters()}
        stats = copy.deepcopy(shadow, params)  # parameters shared, buffers private copies
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
                self.bn_buffers[pre + "running_mean"] = torch.zeros_like(m.running_mean)
                self.bn_buffers[pre + "running_var"] = torch.ones_like(m.running_var)
                self.bn_buffers[pre + "num_batches_tracked"] = torch.zeros_like(
                    m.num_batches_tracked
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
        tensors = {
            k: (v.clone() if k in self.obj.buffer_names else v) for k, v in self.fixed.items()
        }
        tensors.update(self.obj.layout.unflatten(flat))
        tensors.update(bufs)
        with _reparametrize_module(self.stats_module, tensors, tie_weights=True, strict=False):
            if self.obj.forward is not None:
                self.obj.forward(self.stats_module, batch)
            else:
                x = batch[0] if isinstance(batch, (tuple, list)) else batch
                call_model(self.stats_module, x)
        return torch.zeros((), device=flat.device)

    def _recompute(self, pts: Tensor, vmapped: bool) -> dict[str, Tensor]:
        """Running statistics at each point: a sample-weighted cumulative average of the
        batch statistics over the BN data (momentum ``n_b / (n_seen + n_b)``), estimated on
        private buffers, never the model's."""
        c = pts.shape[0]
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
        return bufs

    # metrics at points ---------------------------------------------------------------
    def _point(self, flat, bufs, batch) -> Tensor:
        obj = self.obj
        fixed = self.fixed if bufs is None else {**self.fixed, **bufs}
        if obj.forward is not None:
            return _scalar(obj.batch_loss(flat, fixed, batch), "loss")[None]
        out = obj.batch_outputs(flat, fixed, batch)
        y = batch[1]
        rules = self.rules or {}
        vals = []
        for name, m in self.metrics.items():
            if m == "loss":
                v = obj.loss_fn(out, y)
            elif m == "accuracy":
                v = _accuracy(out, y, rules.get(name))
            elif m == "error":
                v = 1 - _accuracy(out, y, rules.get(name))
            else:
                v = m(out, y)
            vals.append(_scalar(v, name))
        return torch.stack(vals)

    def values(self, pts: Tensor, vmapped: bool) -> Tensor:
        """``(n_metrics, c)`` float64 values over all batches: the loss combined as the
        Objective's (``Σ_b w_b·L_b / normalizer``: a sample-weighted mean, or the sum of a
        summed loss), every other metric a sample-weighted mean."""
        c = pts.shape[0]
        obj = self.obj
        # the loss combines over batches as the Objective says (mean or sum); every other
        # metric is a sample-weighted mean
        is_loss = torch.tensor(
            [isinstance(m, str) and m == "loss" for m in self.metrics.values()],
            device=pts.device,
        )[:, None]
        with torch.no_grad():
            bufs = self._recompute(pts, vmapped) if self.recompute else None
            total = torch.zeros(len(self.metrics), c, dtype=torch.float64, device=pts.device)
            n = 0
            for batch, nb in obj.batches():
                with self.autocast():
                    if vmapped:
                        if bufs is None:
                            v = torch.func.vmap(partial(self._point, bufs=None, batch=batch))(pts)
                        else:
                            v = torch.func.vmap(partial(self._point, batch=batch))(pts, bufs)
                    else:
                        v = torch.stack(
                            [
                                self._point(
                                    pts[i],
                                    None if bufs is None else {k: b[i] for k, b in bufs.items()},
                                    batch,
                                )
                                for i in range(c)
                            ]
                        )
                w = torch.where(is_loss, obj.batch_weight(nb), float(nb))
                total += v.T.to(torch.float64) * w
                n += nb
        return total / torch.where(is_loss, obj.normalizer(n), float(n))

    def auto_chunk(self, n: int) -> int:
        if self.chunk_size is not None:
            return min(self.chunk_size, n)
        obj = self.obj
        itemsize = torch.empty((), dtype=obj.dtype).element_size()
        batch_bytes = 0
        if obj._batches is not None:
            stack = [obj._batches[0]]
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
        if obj.device.type == "cuda":
            free, _ = torch.cuda.mem_get_info(obj.device)
            budget, cap = 0.5 * free, 512
        else:
            try:
                free = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
            except (ValueError, OSError, AttributeError):  # pragma: no cover
                free = 4 << 30
            budget, cap = 0.25 * free, 8
        return int(max(1, min(n, cap, budget // per_point)))

    def run(
        self,
        make_points: Callable[[np.ndarray, Tensor], Tensor],
        order: np.ndarray,
        out: np.ndarray,
        done: np.ndarray,
        *,
        progress=None,
        desc="evaluating",
        on_chunk: Callable | None = None,
        flush_seconds: float = 0.5,
        where: Callable[[int], str] | None = None,
    ) -> bool:
        """Evaluate the points ``order`` (indices) into ``out[:, idx]``; ``True`` if all
        were evaluated, ``False`` after a KeyboardInterrupt (the rest stays NaN) when this
        is the outermost lossviz call (otherwise the interrupt propagates).

        ``make_points(idx, idx_on_device) -> (c, P)``. Values stay on the device and are
        copied to ``out`` every ``flush_seconds`` (each chunk with ``on_chunk``), so the
        device is never waited on between chunks. Non-finite values are kept (``inf``,
        ``NaN``); with ``where(i) -> "t=0.5"`` they are reported in a warning.
        """
        from tqdm.auto import tqdm

        order = np.asarray(order, dtype=np.int64)
        order_t = torch.as_tensor(order, device=self.obj.device)
        buf = torch.full(out.shape, float("nan"), dtype=torch.float64, device=self.obj.device)
        launched = np.zeros_like(done)
        last = [time.perf_counter()]

        def flush():
            out[:, launched] = buf.cpu().numpy()[:, launched]
            done[launched] = True
            last[0] = time.perf_counter()

        chunk = self.auto_chunk(max(len(order), 1))
        # on a CPU a per-point loop can beat vmap (big batches are compute-bound and the
        # batched matmuls are slower there): time one chunk of each, keep the faster
        probe = (
            [True, True, False]
            if (self.obj.device.type == "cpu" and self.batched is None and len(order) >= 4 * chunk)
            else []
        )
        times: dict[int, float] = {}
        ci = 0
        pos = 0
        complete = True
        bar = tqdm(
            total=len(order), desc=desc, unit="pt", disable=not _progress(progress), leave=False
        )
        try:
            while pos < len(order):
                idx, idx_t = order[pos : pos + chunk], order_t[pos : pos + chunk]
                pts = make_points(idx, idx_t)
                vmapped = self.strategy != "loop" and (ci >= len(probe) or probe[ci])
                try:
                    t0 = time.perf_counter()
                    vals = self.values(pts, vmapped)
                    times[ci] = (time.perf_counter() - t0) / len(idx)
                except Exception as e:
                    if is_oom(e) and chunk > 1:
                        chunk = max(1, chunk // 2)
                        del pts
                        if self.obj.device.type == "cuda":
                            torch.cuda.empty_cache()
                        continue
                    if isinstance(e, LossvizError):  # bad input: the same point by point
                        raise
                    if vmapped and self.strategy is None and not is_oom(e):
                        warn(
                            "batched (vmap) evaluation is not possible for this model "
                            f"({type(e).__name__}: {str(e).splitlines()[0][:200]}); "
                            "evaluating one point at a time"
                        )
                        self.strategy = "loop"
                        continue
                    raise
                if self.strategy is None:
                    self.strategy = "vmap"
                if ci == 2 and probe and self.strategy == "vmap" and times[2] < times[1]:
                    self.strategy = "loop"
                ci += 1
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
        if where is not None:
            warn_nonfinite(list(self.metrics), out, done, where)
        return complete


def warn_nonfinite(names, out: np.ndarray, done: np.ndarray, where, what: str = "") -> None:
    """One warning per metric that is not finite at an evaluated point, naming where."""
    for i, k in enumerate(names):
        bad = np.flatnonzero(done & ~np.isfinite(out[i]))
        if len(bad):
            shown = ", ".join(f"{where(int(j))} ({out[i, j]:g})" for j in bad[:5])
            more = f" and {len(bad) - 5} more" if len(bad) > 5 else ""
            warn(
                f"{what}{k} is not finite at {len(bad)} of {int(done.sum())} evaluated points: "
                f"{shown}{more}; kept as NaN / inf (summaries over them are not finite)"
            )


class Evaluations(dict):
    """``metric name -> (n,) numpy array`` with ``complete``, ``strategy`` and ``seconds``
    (NaN where not evaluated after Ctrl-C; non-finite values kept as they are)."""

    complete: bool = True
    strategy: str | None = None
    seconds: float = 0.0
    #: which points were evaluated (all unless interrupted)
    evaluated: np.ndarray | None = None


def _flat_direction(obj: Objective, d, name: str = "direction") -> Tensor:
    """A direction over the Objective's varying parameters, as a flat tensor. Extra
    entries are accepted only for buffers or all-zero tensors (never silently dropped).
    Errors name the argument; a direction holding NaN or inf is refused."""
    if isinstance(d, Tensor):
        if d.ndim != 1:
            raise LossvizError(
                f"{name} must be a flat tensor of {obj.layout.size} numbers (or Weights), got "
                f"shape {tuple(d.shape)}"
            )
        flat = obj.as_flat(d, name=name)
    elif isinstance(d, Mapping):
        bad = [k for k, v in d.items() if not isinstance(v, Tensor)]
        if bad:
            raise ArgumentTypeError(f"{name} has non-tensor entries: {bad[:10]}")
        extra = [k for k in d if k not in obj.layout.names]
        moved = [k for k in extra if k not in obj.buffer_names and bool(d[k].ne(0).any())]
        if moved:
            raise CheckpointError(
                f"{name} moves parameters that do not vary in this Objective: {moved[:10]}; "
                "draw directions from the Objective (random_directions(obj)) or build it with "
                "params= including them"
            )
        flat = obj.as_flat({n: d[n] for n in obj.layout.names if n in d} if extra else d, name=name)
    else:
        raise ArgumentTypeError(
            f"{name} must be Weights, a mapping name -> tensor or a flat tensor, got "
            f"{type(d).__name__}"
        )
    if not bool(torch.isfinite(flat).all()):
        raise LossvizError(f"{name} holds NaN or inf entries")
    return flat


def _flat_points(obj: Objective, points) -> Tensor:
    if isinstance(points, Tensor):
        if points.ndim != 2 or points.shape[1] != obj.layout.size:
            raise LossvizError(
                f"points must be a (n, {obj.layout.size}) tensor, got {tuple(points.shape)}"
            )
        if points.shape[0] == 0:
            raise LossvizError("points is empty: no point to evaluate")
        if not (points.is_floating_point() or points.dtype in (torch.int32, torch.int64)):
            raise ArgumentTypeError(f"points must be a real tensor, got {points.dtype}")
        return points.to(obj.device, obj.dtype)
    if isinstance(points, (str, bytes, nn.Module)) or not isinstance(points, Iterable):
        raise ArgumentTypeError(
            f"points must be a (n, {obj.layout.size}) tensor or a list of points (models, "
            f"Weights, state dicts, paths), got {type(points).__name__}"
        )
    if isinstance(points, Mapping) and all(isinstance(v, Tensor) for v in points.values()):
        raise ArgumentTypeError(
            "points is a single state dict / Weights: pass a list of points ([point])"
        )
    pts = list(points.values()) if isinstance(points, Mapping) else list(points)
    if not pts:
        raise LossvizError("points is empty: no point to evaluate")
    flats = []
    for i, p in enumerate(pts):
        if isinstance(p, Tensor):
            if p.ndim != 1:
                raise LossvizError(
                    f"points[{i}] must be a flat tensor of {obj.layout.size} numbers, got "
                    f"shape {tuple(p.shape)}"
                )
            flats.append(obj.as_flat(p, name=f"points[{i}]"))
        else:
            flats.append(obj.resolve(p, name=f"points[{i}]")[0])
    return torch.stack(flats)


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
    """:func:`evaluate` without argument checks or the public-call wrapper (the shared
    engine of composite calls: an interrupt here is theirs to handle)."""
    t0 = time.perf_counter()
    eng = _Engine(obj, metrics, fixed, rules=rules, **ekw)
    if eng.rules is None:  # the metrics that apply, checked before the arrays are laid out
        eng.metrics, eng.rules = check_metrics(
            obj, eng.metrics, P[0], fixed, precision=eng.precision
        )
    n = P.shape[0]
    out = np.full((len(eng.metrics), n), np.nan)
    done = np.zeros(n, dtype=bool)
    complete = eng.run(lambda idx, k: P[k], np.arange(n), out, done, progress=progress, where=where)
    res = Evaluations({k: out[i] for i, k in enumerate(eng.metrics)})
    res.complete, res.strategy, res.seconds = complete, eng.strategy, time.perf_counter() - t0
    res.evaluated = done
    return res


@api
def evaluate(
    obj: Objective,
    points,
    *,
    metrics=("loss",),
    at=None,
    bn=None,
    bn_data=None,
    precision=None,
    batched=None,
    chunk_size=None,
    progress=None,
) -> Evaluations:
    """Metrics at many points in weight space, batched.

    ``points``: a ``(n, P)`` tensor of flat varying parameters (``obj.layout`` order) or a
    list of points (models, Weights, state dicts, paths; only their varying parameters are
    used). Parameters that do not vary and buffers come from ``at`` (default: the model).
    The loss combines over the batches as :meth:`Objective.loss` does (``Σ_b n_b·L_b / N``
    for a mean loss, ``Σ_b L_b`` with ``reduction="sum"``); every other metric is the
    sample-weighted mean ``Σ_b n_b·m_b / Σ_b n_b``.

    ``metrics``: ``"loss"``, ``"accuracy"``, ``"error"`` or callables
    ``(outputs, targets) -> scalar`` (all from one forward pass); a metric that does not
    apply to the outputs and targets (accuracy of a regression) is refused, naming the
    shapes. ``bn="recompute"`` re-estimates BatchNorm running statistics at every point on
    ``bn_data`` (default: the Objective's data). ``precision="bf16"`` runs the forward under
    autocast. ``batched``: ``None`` tries vmap and falls back to one point at a time;
    ``True`` / ``False`` force one. Non-finite values are kept (``inf`` / ``NaN``) and
    reported in a warning naming the points; after Ctrl-C the points not evaluated are NaN
    and ``.complete`` is False.

    >>> from lossviz.data import digits, mlp
    >>> x, y = digits()
    >>> obj = Objective(mlp((64, 10)), torch.nn.functional.cross_entropy, (x, y))
    >>> flat, _ = obj.resolve()
    >>> r = evaluate(obj, torch.stack([flat, 2 * flat]), metrics=("loss", "accuracy"))
    >>> bool(abs(r["loss"][0] - obj.loss()) < 1e-6)
    True
    """
    check_objective(obj)
    ekw = check_engine_args(
        obj,
        bn=bn,
        bn_data=bn_data,
        precision=precision,
        batched=batched,
        chunk_size=chunk_size,
        progress=progress,
    )
    mk = resolve_metrics(obj, metrics)
    P = _flat_points(obj, points)
    _, fixed = obj.resolve(at, name="at")
    return evaluate_points(
        obj, P, mk, fixed, progress=progress, where=lambda i: f"point {i}", **ekw
    )


# results ---------------------------------------------------------------------------------


def _summary(name: str, v: np.ndarray, evaluated: np.ndarray | None, at) -> str:
    """``"loss: min … at …, max …"`` over the non-NaN values (an inf shows as inf), and
    the points where the metric is not finite (never a plausible summary that hides
    them)."""
    v = np.asarray(v, dtype=np.float64).reshape(-1)
    ev = np.ones(v.shape, bool) if evaluated is None else np.asarray(evaluated).reshape(-1)
    ok = ev & ~np.isnan(v)
    if ok.any():
        i = int(np.flatnonzero(ok)[np.argmin(v[ok])])
        s = f"{name}: min {short(v[i])} at {at(i)}, max {short(v[ok].max())}"
    else:
        s = f"{name}: no value"
    bad = np.flatnonzero(ev & ~np.isfinite(v))
    if len(bad):
        shown = ", ".join(f"{at(int(j))} ({short(v[j])})" for j in bad[:3])
        s += f", NOT FINITE at {len(bad)} point(s): {shown}" + (" …" if len(bad) > 3 else "")
    return s


def _minmax(v: np.ndarray, evaluated: np.ndarray | None) -> list[str]:
    """``[min, max, number of non-finite points]`` for an HTML table row."""
    v = np.asarray(v, dtype=np.float64).reshape(-1)
    ev = np.ones(v.shape, bool) if evaluated is None else np.asarray(evaluated).reshape(-1)
    ok = ev & ~np.isnan(v)
    bad = int((ev & ~np.isfinite(v)).sum())
    if not ok.any():
        return ["nan", "nan", str(bad)]
    return [short(v[ok].min()), short(v[ok].max()), str(bad)]


def _point_xy(surface, p) -> tuple[float, float]:
    if (
        isinstance(p, (tuple, list))
        and len(p) == 2
        and all(isinstance(v, (int, float, np.floating, np.integer)) for v in p)
    ):
        return float(p[0]), float(p[1])
    return surface.project(p)


@dataclass(repr=False)
class Slice1D:
    """A 1-D slice ``f(t) = L(θ + t·d)``: ``t`` and one array per metric in ``values``."""

    t: np.ndarray
    values: dict
    direction: Weights | None = None
    center: Weights | None = None
    complete: bool = True
    strategy: str | None = None
    seconds: float = 0.0
    #: which points were evaluated (all unless interrupted)
    evaluated: np.ndarray | None = field(default=None, compare=False)

    def __getitem__(self, metric: str) -> np.ndarray:
        if metric not in self.values:
            raise LossvizError(f"no metric {metric!r}; have {list(self.values)}")
        return self.values[metric]

    @property
    def loss(self) -> np.ndarray:
        return self["loss"]

    @property
    def n_evaluated(self) -> int:
        if self.evaluated is not None:
            return int(np.asarray(self.evaluated).sum())
        return int((~np.isnan(next(iter(self.values.values())))).sum())

    def nonfinite(self, metric: str = "loss") -> np.ndarray:
        """The ``t`` where ``metric`` was evaluated and is NaN or infinite."""
        v = np.asarray(self[metric], dtype=np.float64)
        ev = np.ones(v.shape, bool) if self.evaluated is None else self.evaluated
        return self.t[ev & ~np.isfinite(v)]

    def __repr__(self) -> str:
        parts = [
            _summary(k, v, self.evaluated, lambda i: f"t={self.t[i]:.3g}")
            for k, v in self.values.items()
        ]
        state = (
            "" if self.complete else f", INCOMPLETE ({self.n_evaluated} of {len(self.t)} points)"
        )
        return (
            f"Slice1D({len(self.t)} points, t in [{self.t[0]:.3g}, {self.t[-1]:.3g}]; "
            + "; ".join(parts)
            + f"; {self.seconds:.2f} s, {self.strategy}{state})"
        )

    def _repr_html_(self) -> str:
        from .formatting import html_table

        rows = [[k, *_minmax(v, self.evaluated)] for k, v in self.values.items()]
        cap = f"1-D slice, {len(self.t)} points" + ("" if self.complete else " (incomplete)")
        return html_table(["metric", "min", "max", "not finite"], rows, cap)

    def plot(self):
        import plotly.graph_objects as go
        from plotly.subplots import make_subplots

        names = list(self.values)
        fig = make_subplots(
            rows=len(names),
            cols=1,
            shared_xaxes=True,
            subplot_titles=names if len(names) > 1 else None,
        )
        for i, k in enumerate(names, 1):
            fig.add_trace(
                go.Scatter(x=self.t, y=self.values[k], mode="lines", name=k), row=i, col=1
            )
            fig.update_yaxes(title_text=k, row=i, col=1)
        fig.update_xaxes(title_text="t", row=len(names), col=1)
        fig.update_layout(
            title="1-D slice L(θ + t·d)" + ("" if self.complete else " (incomplete)"),
            template="plotly_white",
        )
        return fig


@dataclass(repr=False)
class Surface:
    """A 2-D slice ``f(a, b) = L(θ + a·d1 + b·d2)``.

    ``values[m][i, j]`` is metric ``m`` at ``a = x[j]``, ``b = y[i]`` (rows follow ``y``, as
    in plotly and ``np.meshgrid``). ``paths`` and ``points`` hold overlays in plane
    coordinates (:meth:`add_path`, :meth:`add_point`).
    """

    x: np.ndarray
    y: np.ndarray
    values: dict
    directions: list = field(default_factory=list)
    center: Weights | None = None
    complete: bool = True
    strategy: str | None = None
    seconds: float = 0.0
    paths: dict = field(default_factory=dict)
    points: dict = field(default_factory=dict)
    # where it was computed (set by surface(); used by .dashboard() to recompute and inspect)
    objective: object = field(default=None, compare=False, repr=False)
    #: which grid points were evaluated, shaped like the values (all unless interrupted)
    evaluated: np.ndarray | None = field(default=None, compare=False, repr=False)

    def __getitem__(self, metric: str) -> np.ndarray:
        if metric not in self.values:
            raise LossvizError(f"no metric {metric!r}; have {list(self.values)}")
        return self.values[metric]

    @property
    def loss(self) -> np.ndarray:
        return self["loss"]

    def nonfinite(self, metric: str = "loss") -> np.ndarray:
        """``(k, 2)`` coordinates ``(a, b)`` where ``metric`` was evaluated and is NaN or
        infinite."""
        v = np.asarray(self[metric], dtype=np.float64)
        ev = np.ones(v.shape, bool) if self.evaluated is None else self.evaluated
        i, j = np.nonzero(ev & ~np.isfinite(v))
        return np.stack([self.x[j], self.y[i]], 1)

    def dashboard(self, **kw):
        """The live landscape explorer (:func:`lossviz.dash.landscape`) showing this surface
        at once; recomputing it (resolution, span, other directions) and inspecting a
        clicked point need the Objective it was computed with (``surface()`` stores it)."""
        from lossviz import dash

        return dash.landscape(self, **kw)

    @property
    def n_evaluated(self) -> int:
        if self.evaluated is not None:
            return int(np.asarray(self.evaluated).sum())
        v = next(iter(self.values.values()))
        return int((~np.isnan(v)).sum())

    # overlays ------------------------------------------------------------------------
    def project(self, point) -> tuple[float, float]:
        """Plane coordinates ``(a, b)`` of a point: the least-squares solution of
        ``θ_p - θ ≈ a·d1 + b·d2``."""
        if self.center is None or len(self.directions) != 2:
            raise LossvizError("this surface has no center/directions to project onto")
        try:
            p = point_params(point)
        except TypeError as e:
            raise ArgumentTypeError(f"point: {e}") from None
        keys = list(self.center.keys())
        missing = [k for k in keys if k not in p]
        if missing:
            raise CheckpointError(f"the point lacks parameters of the surface: {missing[:10]}")
        bad = [k for k in keys if tuple(p[k].shape) != tuple(self.center[k].shape)]
        if bad:
            raise CheckpointError(
                "the point's parameters have other shapes than the surface's: "
                + "; ".join(
                    f"{k}: {tuple(p[k].shape)} vs {tuple(self.center[k].shape)}" for k in bad[:10]
                )
            )
        dev = next(iter(self.center.values())).device

        def flat(w):
            return torch.cat([w[k].reshape(-1).to(dev, torch.float64) for k in keys])

        delta = flat(p) - flat(self.center)
        D = torch.stack([flat(d) for d in self.directions])
        G = D @ D.T
        if float(torch.linalg.det(G)) <= 1e-12 * float(G.diagonal().prod()) or not bool(
            torch.isfinite(G).all()
        ):
            raise LossvizError(
                "the surface's two directions are parallel (or zero): a point cannot be "
                "projected onto the plane"
            )
        coef = torch.linalg.solve(G, D @ delta)
        return float(coef[0]), float(coef[1])

    def add_point(self, name: str, point) -> tuple[float, float]:
        """Mark a point (a model / checkpoint, projected; or ``(a, b)`` coordinates)."""
        with named(f"point {name!r}"):
            xy = _point_xy(self, point)
        self.points[str(name)] = xy
        return xy

    def add_path(self, name: str, trajectory) -> np.ndarray:
        """Overlay a trajectory: checkpoints (projected) or an ``(T, 2)`` array of
        coordinates."""
        if isinstance(trajectory, np.ndarray) or (
            isinstance(trajectory, Sequence)
            and trajectory
            and isinstance(trajectory[0], (tuple, list))
            and len(trajectory[0]) == 2
            and not isinstance(trajectory[0][0], (Tensor, Mapping))
        ):
            try:
                xy = np.asarray(trajectory, dtype=np.float64)
            except (TypeError, ValueError):
                xy = np.empty(0)
            if xy.ndim != 2 or xy.shape[1] != 2 or not np.isfinite(xy).all():
                raise LossvizError(
                    f"trajectory {name!r}: coordinates must be a finite (T, 2) array, got "
                    f"shape {xy.shape}"
                )
        else:
            if isinstance(trajectory, Mapping):
                if trajectory and all(isinstance(v, Tensor) for v in trajectory.values()):
                    raise ArgumentTypeError(
                        f"trajectory {name!r} is a single state dict: pass a list of "
                        "checkpoints or a dict label -> checkpoint"
                    )
                trajectory = list(trajectory.values())
            if isinstance(trajectory, (str, bytes, nn.Module)) or not isinstance(
                trajectory, Iterable
            ):
                raise ArgumentTypeError(
                    f"trajectory {name!r} must be a list of checkpoints or a (T, 2) array of "
                    f"coordinates, got {type(trajectory).__name__}"
                )
            pts = list(trajectory)
            if not pts:
                raise LossvizError(f"trajectory {name!r} is empty")
            xy = []
            for i, p in enumerate(pts):
                with named(f"trajectory {name!r}, checkpoint {i}"):
                    xy.append(self.project(p))
            xy = np.array(xy, dtype=np.float64)
        self.paths[str(name)] = xy
        return xy

    # display -------------------------------------------------------------------------
    def __repr__(self) -> str:
        nx = len(self.x)

        def at(k):
            return f"({self.x[k % nx]:.3g}, {self.y[k // nx]:.3g})"

        parts = [_summary(k, v, self.evaluated, at) for k, v in self.values.items()]
        n = self.x.size * self.y.size
        state = "" if self.complete else f", INCOMPLETE ({self.n_evaluated} of {n} points)"
        return (
            f"Surface({len(self.x)}×{len(self.y)} grid, x in [{self.x[0]:.3g}, "
            f"{self.x[-1]:.3g}], y in [{self.y[0]:.3g}, {self.y[-1]:.3g}]; "
            + "; ".join(parts)
            + f"; {self.seconds:.2f} s, {self.strategy}{state})"
        )

    def _repr_html_(self) -> str:
        from .formatting import html_table

        rows = [[k, *_minmax(v, self.evaluated)] for k, v in self.values.items()]
        cap = f"surface {len(self.x)}×{len(self.y)}, {self.seconds:.2f} s" + (
            ""
            if self.complete
            else f" (incomplete: {self.n_evaluated} of {self.x.size * self.y.size} points)"
        )
        return html_table(["metric", "min", "max", "not finite"], rows, html.escape(cap))

    def _interp(self, z: np.ndarray, xy: np.ndarray) -> np.ndarray:
        from scipy.interpolate import RegularGridInterpolator

        f = RegularGridInterpolator((self.y, self.x), z, bounds_error=False, fill_value=np.nan)
        return f(np.stack([xy[:, 1], xy[:, 0]], 1))

    def plot(self, kind: str = "contour", metric: str | None = None, *, log: bool = False):
        """A plotly figure: ``kind="contour"`` (default), ``"heatmap"`` or ``"surface"``
        (3-D), with the trajectories and named points overlaid. ``log=True`` shows
        ``log10`` of the metric."""
        import plotly.graph_objects as go

        metric = metric or next(iter(self.values))
        if metric not in self.values:
            raise LossvizError(f"no metric {metric!r}; have {list(self.values)}")
        z = np.array(self.values[metric], dtype=np.float64)
        label = metric
        if log:
            with np.errstate(divide="ignore", invalid="ignore"):
                z = np.where(z > 0, np.log10(np.where(z > 0, z, 1)), np.nan)
            label = f"log10 {metric}"
        if kind == "contour":
            fig = go.Figure(
                go.Contour(
                    x=self.x,
                    y=self.y,
                    z=z,
                    colorbar={"title": label},
                    connectgaps=False,
                    ncontours=30,
                )
            )
        elif kind == "heatmap":
            fig = go.Figure(go.Heatmap(x=self.x, y=self.y, z=z, colorbar={"title": label}))
        elif kind == "surface":
            fig = go.Figure(go.Surface(x=self.x, y=self.y, z=z, colorbar={"title": label}))
        else:
            raise LossvizError(f"kind must be 'contour', 'heatmap' or 'surface', got {kind!r}")
        for name, xy in self.paths.items():
            if kind == "surface":
                fig.add_trace(
                    go.Scatter3d(
                        x=xy[:, 0],
                        y=xy[:, 1],
                        z=self._interp(z, xy),
                        mode="lines+markers",
                        name=name,
                    )
                )
            else:
                fig.add_trace(
                    go.Scatter(
                        x=xy[:, 0],
                        y=xy[:, 1],
                        mode="lines+markers",
                        name=name,
                        line={"color": "white", "width": 2},
                        marker={"size": 4},
                    )
                )
        if self.points:
            xy = np.array(list(self.points.values()), dtype=np.float64)
            names = list(self.points)
            if kind == "surface":
                fig.add_trace(
                    go.Scatter3d(
                        x=xy[:, 0],
                        y=xy[:, 1],
                        z=self._interp(z, xy),
                        mode="markers+text",
                        text=names,
                        name="points",
                    )
                )
            else:
                fig.add_trace(
                    go.Scatter(
                        x=xy[:, 0],
                        y=xy[:, 1],
                        mode="markers+text",
                        text=names,
                        textposition="top center",
                        name="points",
                        marker={
                            "size": 10,
                            "color": "white",
                            "line": {"color": "black", "width": 1},
                        },
                    )
                )
        title = f"{label} surface L(θ + a·d1 + b·d2)" + ("" if self.complete else " (incomplete)")
        if kind == "surface":
            fig.update_layout(scene={"xaxis_title": "a", "yaxis_title": "b", "zaxis_title": label})
        else:
            fig.update_layout(xaxis_title="a", yaxis_title="b")
        fig.update_layout(title=title, template="plotly_white")
        return fig


# slices ----------------------------------------------------------------------------------
def _check_span(span, name="span") -> tuple[float, float]:
    if isinstance(span, (str, bytes, Mapping)) or not isinstance(span, Iterable):
        raise ArgumentTypeError(f"{name} must be (low, high), got {validate.show(span)}")
    vals = list(span)
    if len(vals) != 2:
        raise LossvizError(f"{name} must be (low, high): two numbers, got {validate.show(span)}")
    lo = validate.number(vals[0], f"{name}[0]")
    hi = validate.number(vals[1], f"{name}[1]")
    if not lo < hi:
        raise LossvizError(f"{name} must have low < high, got ({lo:g}, {hi:g})")
    return lo, hi


def _check_finite_center(theta: Tensor) -> None:
    if not bool(torch.isfinite(theta).all()):
        raise LossvizError(
            "center holds NaN or inf weights: random directions cannot be normalized to it "
            "(give the direction(s) explicitly)"
        )


def _check_surface_n(n) -> tuple[int, int]:
    if isinstance(n, (int, np.integer)) and not isinstance(n, (bool, np.bool_)):
        n = (n, n)
    if isinstance(n, (str, bytes, Mapping)) or not isinstance(n, Iterable):
        raise ArgumentTypeError(f"n must be an int or (nx, ny), got {validate.show(n)}")
    n = list(n)
    if len(n) != 2:
        raise LossvizError(f"n must be an int or (nx, ny), got {validate.show(n)}")
    return validate.integer(n[0], "n[0]", low=2), validate.integer(n[1], "n[1]", low=2)


def _check_surface_span(span) -> tuple[tuple[float, float], tuple[float, float]]:
    if isinstance(span, (str, bytes, Mapping)) or not isinstance(span, Iterable):
        raise ArgumentTypeError(
            f"span must be ((a_lo, a_hi), (b_lo, b_hi)), got {validate.show(span)}"
        )
    sp = list(span)
    if len(sp) != 2:
        raise LossvizError(f"span must be ((a_lo, a_hi), (b_lo, b_hi)), got {validate.show(span)}")
    return _check_span(sp[0], "span[0]"), _check_span(sp[1], "span[1]")


@api
def line(
    obj: Objective,
    center=None,
    direction=None,
    *,
    span=(-1, 1),
    n: int = 51,
    metrics=("loss",),
    **kw,
) -> Slice1D:
    """The 1-D slice ``f(t) = L(θ + t·d)`` at ``n`` evenly spaced ``t`` in ``span``.

    ``center``: the point θ (default: the model); ``direction``: Weights / mapping / flat
    tensor over the varying parameters (default: one filter-normalized random direction,
    seed 0). Keyword arguments as :func:`evaluate` (``bn``, ``bn_data``, ``precision``,
    ``batched``, ``chunk_size``, ``progress``).

    >>> from lossviz.data import digits, mlp
    >>> x, y = digits()
    >>> obj = Objective(mlp((64, 10)), torch.nn.functional.cross_entropy, (x, y))
    >>> s = line(obj, n=5)
    >>> bool(abs(s.loss[2] - obj.loss()) < 1e-6)  # t = 0 is the model itself
    True
    """
    t0 = time.perf_counter()
    check_objective(obj)
    n = validate.integer(n, "n", low=2)
    lo, hi = _check_span(span)
    ekw = check_engine_args(obj, progress=kw.get("progress"), **kw_engine(kw))
    mk = resolve_metrics(obj, metrics)
    theta, fixed = obj.resolve(center, name="center")
    if direction is None:
        _check_finite_center(theta)
        direction = random_directions(obj.layout.to_weights(theta), 1)[0]
    d = _flat_direction(obj, direction, "direction")
    t = np.linspace(lo, hi, n)
    tt = torch.as_tensor(t, device=obj.device, dtype=obj.dtype)
    mk, rules = check_metrics(obj, mk, theta, fixed, precision=ekw["precision"])
    eng = _Engine(obj, mk, fixed, rules=rules, **ekw)
    out = np.full((len(eng.metrics), n), np.nan)
    done = np.zeros(n, dtype=bool)

    def make(idx, k):
        return theta + tt[k][:, None] * d

    complete = eng.run(
        make,
        np.arange(n),
        out,
        done,
        progress=kw.get("progress"),
        desc="slice",
        where=lambda i: f"t={t[i]:.4g}",
    )
    return Slice1D(
        t,
        {k: out[i] for i, k in enumerate(eng.metrics)},
        obj.layout.to_weights(d.clone()),
        obj.layout.to_weights(theta.clone()),
        complete,
        eng.strategy,
        time.perf_counter() - t0,
        done,
    )


def coarse_to_fine(nx: int, ny: int) -> np.ndarray:
    """Grid indices (``i·nx + j``) ordered coarse to fine: every ``s``-th row and column
    first, for ``s`` = a power of two down to 1 (each point once)."""
    s = 1
    while (max(nx, ny) - 1) // (2 * s) >= 4:
        s *= 2
    seen = np.zeros(nx * ny, dtype=bool)
    order = []
    while s >= 1:
        ii, jj = np.meshgrid(np.arange(0, ny, s), np.arange(0, nx, s), indexing="ij")
        k = (ii * nx + jj).reshape(-1)
        # the last row / column join the coarse level so the corners are drawn early
        k = k[~seen[k]]
        seen[k] = True
        order.append(k)
        s //= 2
    rest = np.flatnonzero(~seen)
    order.append(rest)
    return np.concatenate(order)


@api
def surface(
    obj: Objective,
    center=None,
    directions=None,
    *,
    span=None,
    n=(51, 51),
    metrics=("loss",),
    refine: bool = False,
    precision=None,
    trajectory=None,
    points: Mapping | None = None,
    callback: Callable | None = None,
    **kw,
) -> Surface:
    """The 2-D slice ``f(a, b) = L(θ + a·d1 + b·d2)`` on an ``n`` grid (Li et al. 2018).

    ``center``: θ (default: the model, or the PCA center / plane origin); ``directions``:
    two Weights / mappings / flat tensors, a :class:`~lossviz.directions.PCAResult` or
    :class:`~lossviz.directions.Plane` (their trajectory / points are overlaid), or
    ``None`` for two filter-normalized random directions (seed 0). ``span``: ``((a_lo,
    a_hi), (b_lo, b_hi))`` (default ``(-1, 1)`` each, or around a plane's points / a PCA
    trajectory). ``refine=True`` evaluates a coarse grid first, then fills in.
    ``callback(surface)`` is called after each chunk with the growing result (NaN where not
    yet evaluated); an exception it raises stops the evaluation and propagates.
    ``trajectory`` (checkpoints) and ``points`` (``name -> point``) are projected onto the
    plane and overlaid. The result keeps ``obj`` as ``.objective`` (for
    :meth:`Surface.dashboard`). Other keywords as :func:`evaluate`.

    >>> from lossviz.data import digits, mlp
    >>> x, y = digits()
    >>> obj = Objective(mlp((64, 10)), torch.nn.functional.cross_entropy, (x, y))
    >>> s = surface(obj, n=(5, 3), metrics=("loss", "accuracy"))
    >>> s["loss"].shape, bool(abs(s.loss[1, 2] - obj.loss()) < 1e-6)
    ((3, 5), True)
    """
    t0 = time.perf_counter()
    check_objective(obj)
    nx, ny = _check_surface_n(n)
    if span is not None:
        _check_surface_span(span)
    validate.boolean(refine, "refine")
    validate.callable_(callback, "callback", "a function callback(surface)", none=True)
    if points is not None and not isinstance(points, Mapping):
        raise ArgumentTypeError(
            f"points must be a mapping name -> point (or (a, b) coordinates), got "
            f"{type(points).__name__}"
        )
    ekw = check_engine_args(obj, precision=precision, progress=kw.get("progress"), **kw_engine(kw))
    mk = resolve_metrics(obj, metrics)
    overlay_points: dict = {}
    overlay_path = None
    if isinstance(directions, PCAResult):
        if len(directions.directions) < 2:
            raise LossvizError("directions: the PCAResult has fewer than 2 directions")
        if center is None:
            center = directions.center
            overlay_path = directions.coords[:, :2]
        pca = directions
        directions = pca.directions[:2]
        if span is None and overlay_path is not None:
            lo, hi = overlay_path.min(0), overlay_path.max(0)
            w = max(float((hi - lo).max()), 1e-12)
            span = tuple((float(lo[i] - 0.25 * w), float(hi[i] + 0.25 * w)) for i in range(2))
    elif isinstance(directions, Plane):
        plane = directions
        if center is None:
            center = plane.origin
            overlay_points = dict(plane.points)
            if span is None:
                span = plane.span()
        directions = plane.directions
    elif directions is not None and (
        isinstance(directions, (str, bytes, Tensor, Mapping))
        or not isinstance(directions, Iterable)
    ):
        if not (isinstance(directions, Tensor) and directions.ndim == 2):
            raise ArgumentTypeError(
                "directions must be two directions (Weights / mappings / flat tensors, or a "
                "(2, P) tensor), a PCAResult or a Plane, got "
                + (
                    f"a tensor of shape {tuple(directions.shape)}"
                    if isinstance(directions, Tensor)
                    else type(directions).__name__
                )
            )
    if span is None:
        span = ((-1, 1), (-1, 1))
    (x0, x1), (y0, y1) = _check_surface_span(span)

    theta, fixed = obj.resolve(center, name="center")
    if directions is None:
        _check_finite_center(theta)
        directions = random_directions(obj.layout.to_weights(theta), 2)
    directions = list(directions)
    if len(directions) != 2:
        raise LossvizError(f"directions: a surface needs 2 directions, got {len(directions)}")
    D = torch.stack([_flat_direction(obj, d, f"directions[{i}]") for i, d in enumerate(directions)])
    x, y = np.linspace(x0, x1, nx), np.linspace(y0, y1, ny)
    # overlays first: a bad trajectory or point is reported before any forward pass
    proto = Surface(
        x,
        y,
        {},
        [obj.layout.to_weights(d.clone()) for d in D],
        obj.layout.to_weights(theta.clone()),
        points=overlay_points,
    )
    if overlay_path is not None:
        proto.paths["trajectory"] = np.asarray(overlay_path, dtype=np.float64)
    if trajectory is not None:
        proto.add_path("trajectory", trajectory)
    for name, p in (points or {}).items():
        proto.add_point(name, p)
    mk, rules = check_metrics(obj, mk, theta, fixed, precision=ekw["precision"])
    eng = _Engine(obj, mk, fixed, rules=rules, **ekw)
    out = np.full((len(eng.metrics), ny * nx), np.nan)
    done = np.zeros(ny * nx, dtype=bool)
    xt = torch.as_tensor(x, device=obj.device, dtype=obj.dtype)
    yt = torch.as_tensor(y, device=obj.device, dtype=obj.dtype)
    res = Surface(
        x,
        y,
        {k: out[i].reshape(ny, nx) for i, k in enumerate(eng.metrics)},
        proto.directions,
        proto.center,
        False,
        None,
        0.0,
        proto.paths,
        proto.points,
        objective=obj,
        evaluated=done.reshape(ny, nx),
    )

    def make(idx, k):
        return (theta + xt[k % nx][:, None] * D[0]) + yt[k // nx][:, None] * D[1]

    order = coarse_to_fine(nx, ny) if refine else np.arange(nx * ny)

    def on_chunk():
        res.strategy = eng.strategy
        res.seconds = time.perf_counter() - t0
        if callback is not None:
            callback(res)

    complete = eng.run(
        make,
        order,
        out,
        done,
        progress=kw.get("progress"),
        desc="surface",
        on_chunk=on_chunk,
        where=lambda k: f"(a, b) = ({x[k % nx]:.4g}, {y[k // nx]:.4g})",
    )
    res.complete, res.strategy, res.seconds = complete, eng.strategy, time.perf_counter() - t0
    return res
