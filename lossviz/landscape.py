"""Loss landscapes: 1-D slices and 2-D surfaces, evaluated in batches.

``f(a, b) = L(θ + a·d1 + b·d2)`` on a grid (Li, Xu, Taylor, Studer, Goldstein 2018,
"Visualizing the Loss Landscape of Neural Nets"). Many grid points go through one forward
pass: ``torch.func.functional_call`` under ``torch.vmap`` over chunks of points, with a
per-point fallback where vmap cannot run. :func:`evaluate` is the shared engine: any set of
flat points (grid points, points on a curve between checkpoints) with one or more metrics,
sample-weighted over the batches exactly like :meth:`Objective.loss`.
"""

from __future__ import annotations

import contextlib
import copy
import html
import math
import os
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import partial

import numpy as np
import torch
from torch import Tensor, nn

from .directions import PCAResult, Plane, point_params, random_directions
from .errors import CheckpointError, DataError, LossvizError
from .interrupt import api
from .objective import Objective, batch_size, call_model, is_single_batch, to_device
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


# metrics ---------------------------------------------------------------------------------
def resolve_metrics(obj: Objective, metrics) -> dict[str, str | Callable]:
    """``metrics`` as an ordered ``name -> "loss" | "accuracy" | "error" | callable``."""
    if isinstance(metrics, str) or callable(metrics):
        metrics = (metrics,)
    if isinstance(metrics, Mapping):
        items = list(metrics.items())
    else:
        items = []
        for i, m in enumerate(metrics):
            if isinstance(m, str):
                items.append((m, m))
            elif callable(m):
                name = getattr(m, "__name__", "") or f"metric{i}"
                items.append((f"metric{i}" if name == "<lambda>" else name, m))
            else:
                raise TypeError(f"a metric is 'loss', 'accuracy', 'error' or a callable, got {m!r}")
    out: dict[str, str | Callable] = {}
    for name, m in items:
        if isinstance(m, str) and m not in _BUILTIN:
            raise LossvizError(
                f"unknown metric {m!r}; use one of {_BUILTIN} or a callable "
                "(outputs, targets) -> scalar"
            )
        if not isinstance(m, str) and not callable(m):
            raise TypeError(f"metric {name!r} must be a name or a callable, got {m!r}")
        if name in out:
            raise LossvizError(f"metric name {name!r} given twice")
        out[str(name)] = m
    if not out:
        raise LossvizError("no metric to compute")
    if obj.forward is not None and any(m != "loss" for m in out.values()):
        raise LossvizError(
            "with a custom forward= only the 'loss' metric is available "
            "(outputs and targets are not known)"
        )
    return out


def _accuracy(out: Tensor, y: Tensor) -> Tensor:
    if out.ndim == y.ndim + 1:
        correct = out.argmax(-1) == y
    elif out.shape == y.shape and (out.ndim == 1 or out.shape[-1] == 1):
        correct = (out > 0) == (y > 0.5)  # binary logits
    elif out.shape == y.shape:
        correct = out.argmax(-1) == y.argmax(-1)  # one-hot / probability targets
    else:
        raise LossvizError(
            f"accuracy needs class scores (N, C) with labels (N,), got outputs "
            f"{tuple(out.shape)} and targets {tuple(y.shape)}"
        )
    return correct.to(torch.float64).mean()


def _scalar(v, name: str) -> Tensor:
    if not isinstance(v, Tensor) or v.numel() != 1:
        shape = tuple(v.shape) if isinstance(v, Tensor) else type(v).__name__
        raise LossvizError(
            f"metric {name!r} must return a scalar tensor (mean over the batch), got {shape}"
        )
    return v.reshape(()).to(torch.float64)


# the engine ------------------------------------------------------------------------------
def _is_oom(e: BaseException) -> bool:
    if isinstance(e, torch.cuda.OutOfMemoryError):
        return True
    s = str(e)
    return isinstance(e, RuntimeError) and ("out of memory" in s or "can't allocate" in s)


def _autocast(precision, device: torch.device):
    if precision in (None, "fp32", "float32", torch.float32):
        return contextlib.nullcontext
    if precision in ("bf16", "bfloat16", torch.bfloat16):
        dt = torch.bfloat16
    elif precision in ("fp16", "float16", torch.float16):
        dt = torch.float16
    else:
        raise LossvizError(f"precision must be None, 'bf16' or 'fp16', got {precision!r}")
    return lambda: torch.autocast(device_type=device.type, dtype=dt)


class _Engine:
    """Evaluates metrics at chunks of flat points; see :func:`evaluate`."""

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
    ):
        if not isinstance(obj, Objective):
            raise TypeError(f"expected an Objective, got {type(obj).__name__}")
        self.obj = obj
        self.metrics = resolve_metrics(obj, metrics)
        self.fixed = dict(fixed)
        self.autocast = _autocast(precision, obj.device)
        if bn not in (None, "eval", "train", "recompute"):
            raise LossvizError(
                f"bn must be 'eval', 'recompute' (or None: the Objective's setting), got {bn!r}"
            )
        if bn in ("eval", "train") and bn != obj.bn:
            raise LossvizError(
                f"bn={bn!r} but the Objective was built with bn={obj.bn!r}; "
                f"build it with Objective(..., bn={bn!r})"
            )
        if bn == "recompute" and obj.bn != "eval":
            raise LossvizError(
                "bn='recompute' needs an Objective built with bn='eval' (the "
                "re-estimated running statistics are used in eval mode)"
            )
        if bn_data is not None and bn != "recompute":
            raise LossvizError("bn_data= is only used with bn='recompute'")
        self.recompute = bn == "recompute"
        self.batched = batched  # None: try vmap, fall back per point
        self.strategy = None if batched is None else ("vmap" if batched else "loop")
        if chunk_size is not None and int(chunk_size) < 1:
            raise LossvizError(f"chunk_size must be positive, got {chunk_size}")
        self.chunk_size = None if chunk_size is None else int(chunk_size)
        if self.recompute:
            self._setup_recompute(bn_data)

    # BatchNorm statistics ------------------------------------------------------------
    def _setup_recompute(self, bn_data):
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
                "bn='recompute': the model has no BatchNorm layer with running statistics"
            )
        self.stats_module = stats
        if bn_data is None:
            self._bn_batches = None
        elif isinstance(bn_data, Tensor) or is_single_batch(bn_data):
            self._bn_batches = [to_device(bn_data, obj.device)]
        else:
            self._bn_batches = [to_device(b, obj.device) for b in bn_data]
            if not self._bn_batches:
                raise DataError("bn_data is empty: no batch")

    def _bn_iter(self):
        if self._bn_batches is None:
            yield from self.obj.batches()
        else:
            for b in self._bn_batches:
                yield b, batch_size(b)

    def _stats_forward(self, flat, bufs, batch):
        tensors = dict(self.fixed)
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
        vals = []
        for name, m in self.metrics.items():
            if m == "loss":
                v = obj.loss_fn(out, y)
            elif m == "accuracy":
                v = _accuracy(out, y)
            elif m == "error":
                v = 1 - _accuracy(out, y)
            else:
                v = m(out, y)
            vals.append(_scalar(v, name))
        return torch.stack(vals)

    def values(self, pts: Tensor, vmapped: bool) -> Tensor:
        """``(n_metrics, c)`` float64 sample-weighted means over all batches."""
        c = pts.shape[0]
        with torch.no_grad():
            bufs = self._recompute(pts, vmapped) if self.recompute else None
            total = torch.zeros(len(self.metrics), c, dtype=torch.float64, device=pts.device)
            n = 0
            for batch, nb in self.obj.batches():
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
                total += v.T.to(torch.float64) * nb
                n += nb
        return total / n

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
    ) -> bool:
        """Evaluate the points ``order`` (indices) into ``out[:, idx]``; ``True`` if all
        were evaluated, ``False`` after a KeyboardInterrupt (the rest stays NaN).

        ``make_points(idx, idx_on_device) -> (c, P)``. Values stay on the device and are
        copied to ``out`` every ``flush_seconds`` (each chunk with ``on_chunk``), so the
        device is never waited on between chunks.
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
                    if _is_oom(e) and chunk > 1:
                        chunk = max(1, chunk // 2)
                        del pts
                        if self.obj.device.type == "cuda":
                            torch.cuda.empty_cache()
                        continue
                    if isinstance(e, LossvizError):  # bad input: the same point by point
                        raise
                    if vmapped and self.strategy is None and not _is_oom(e):
                        warnings.warn(
                            "batched (vmap) evaluation is not possible for this model "
                            f"({type(e).__name__}: {str(e).splitlines()[0][:200]}); "
                            "evaluating one point at a time",
                            stacklevel=3,
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
            complete = False
            warnings.warn(
                f"interrupted: {int(launched.sum())} of {done.size} points evaluated; the "
                "others are NaN (result marked incomplete)",
                stacklevel=3,
            )
        finally:
            bar.close()
            flush()
        bad = done[None, :] & ~np.isfinite(out)
        if bad.any():
            out[bad] = np.nan
            warnings.warn(
                f"a metric is not finite at {int(bad.any(0).sum())} of {done.size} points; "
                "those entries are NaN",
                stacklevel=3,
            )
        return complete


class Evaluations(dict):
    """``metric name -> (n,) numpy array`` with ``complete``, ``strategy`` and ``seconds``."""

    complete: bool = True
    strategy: str | None = None
    seconds: float = 0.0


def _flat_direction(obj: Objective, d) -> Tensor:
    """A direction over the Objective's varying parameters, as a flat tensor. Extra
    entries are accepted only for buffers or all-zero tensors (never silently dropped)."""
    if isinstance(d, Tensor):
        return obj.as_flat(d)
    if not isinstance(d, Mapping):
        raise TypeError(
            f"a direction must be Weights, a mapping or a flat tensor, got {type(d).__name__}"
        )
    extra = [k for k in d if k not in obj.layout.names]
    moved = [k for k in extra if k not in obj._buffer_names and bool(d[k].ne(0).any())]
    if moved:
        raise CheckpointError(
            f"the direction moves parameters that do not vary in this Objective: {moved[:10]}; "
            "draw directions from the Objective (random_directions(obj)) or build it with "
            "params= including them"
        )
    return obj.as_flat({n: d[n] for n in obj.layout.names if n in d} if extra else d)


def _flat_points(obj: Objective, points) -> Tensor:
    if isinstance(points, Tensor):
        if points.ndim != 2 or points.shape[1] != obj.layout.size:
            raise LossvizError(
                f"points must be a (n, {obj.layout.size}) tensor, got {tuple(points.shape)}"
            )
        return points.to(obj.device, obj.dtype)
    pts = list(points)
    if not pts:
        raise LossvizError("no points to evaluate")
    return torch.stack(
        [obj.resolve(p)[0] if not isinstance(p, Tensor) else obj.as_flat(p) for p in pts]
    )


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
    Each metric is the sample-weighted mean over the batches, ``Σ_b n_b·m_b / Σ_b n_b``,
    exactly as :meth:`Objective.loss`.

    ``metrics``: ``"loss"``, ``"accuracy"``, ``"error"`` or callables
    ``(outputs, targets) -> scalar`` (all from one forward pass). ``bn="recompute"``
    re-estimates BatchNorm running statistics at every point on ``bn_data`` (default: the
    Objective's data). ``precision="bf16"`` runs the forward under autocast.
    ``batched``: ``None`` tries vmap and falls back to one point at a time; ``True`` /
    ``False`` force one. Non-finite values become NaN with a warning; after Ctrl-C the
    points not evaluated are NaN and ``.complete`` is False.

    >>> from lossviz.data import digits, mlp
    >>> x, y = digits()
    >>> obj = Objective(mlp((64, 10)), torch.nn.functional.cross_entropy, (x, y))
    >>> flat, _ = obj.resolve()
    >>> r = evaluate(obj, torch.stack([flat, 2 * flat]), metrics=("loss", "accuracy"))
    >>> bool(abs(r["loss"][0] - obj.loss()) < 1e-6)
    True
    """
    t0 = time.perf_counter()
    _, fixed = obj.resolve(at)
    eng = _Engine(
        obj,
        metrics,
        fixed,
        bn=bn,
        bn_data=bn_data,
        precision=precision,
        batched=batched,
        chunk_size=chunk_size,
    )
    P = _flat_points(obj, points)
    n = P.shape[0]
    out = np.full((len(eng.metrics), n), np.nan)
    done = np.zeros(n, dtype=bool)
    complete = eng.run(lambda idx, k: P[k], np.arange(n), out, done, progress=progress)
    res = Evaluations({k: out[i] for i, k in enumerate(eng.metrics)})
    res.complete, res.strategy, res.seconds = complete, eng.strategy, time.perf_counter() - t0
    return res


# results ---------------------------------------------------------------------------------
def _fmt(x) -> str:
    return "nan" if not np.isfinite(x) else f"{x:.4g}"


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

    def __getitem__(self, metric: str) -> np.ndarray:
        return self.values[metric]

    @property
    def loss(self) -> np.ndarray:
        return self.values["loss"]

    def __repr__(self) -> str:
        parts = []
        for k, v in self.values.items():
            if np.isfinite(v).any():
                i = int(np.nanargmin(v))
                parts.append(
                    f"{k}: min {_fmt(v[i])} at t={self.t[i]:.3g}, max {_fmt(np.nanmax(v))}"
                )
            else:
                parts.append(f"{k}: no finite value")
        state = (
            ""
            if self.complete
            else (
                f", INCOMPLETE ({int(np.isfinite(next(iter(self.values.values()))).sum())} of "
                f"{len(self.t)} points)"
            )
        )
        return (
            f"Slice1D({len(self.t)} points, t in [{self.t[0]:.3g}, {self.t[-1]:.3g}]; "
            + "; ".join(parts)
            + f"; {self.seconds:.2f} s, {self.strategy}{state})"
        )

    def _repr_html_(self) -> str:
        from .results import _html_table

        rows = [
            [
                k,
                _fmt(np.nanmin(v)) if np.isfinite(v).any() else "nan",
                _fmt(np.nanmax(v)) if np.isfinite(v).any() else "nan",
            ]
            for k, v in self.values.items()
        ]
        cap = f"1-D slice, {len(self.t)} points" + ("" if self.complete else " (incomplete)")
        return _html_table(["metric", "min", "max"], rows, cap)

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

    def __getitem__(self, metric: str) -> np.ndarray:
        return self.values[metric]

    @property
    def loss(self) -> np.ndarray:
        return self.values["loss"]

    def dashboard(self, **kw):
        """The live landscape explorer (:func:`lossviz.dash.landscape`) showing this surface
        at once; recomputing it (resolution, span, other directions) and inspecting a
        clicked point need the Objective it was computed with (``surface()`` stores it)."""
        from lossviz import dash

        return dash.landscape(self, **kw)

    @property
    def n_evaluated(self) -> int:
        v = next(iter(self.values.values()))
        return int(np.isfinite(v).sum())

    # overlays ------------------------------------------------------------------------
    def project(self, point) -> tuple[float, float]:
        """Plane coordinates ``(a, b)`` of a point: the least-squares solution of
        ``θ_p - θ ≈ a·d1 + b·d2``."""
        if self.center is None or len(self.directions) != 2:
            raise LossvizError("this surface has no center/directions to project onto")
        p = point_params(point)
        keys = list(self.center.keys())
        missing = [k for k in keys if k not in p]
        if missing:
            raise CheckpointError(f"the point lacks parameters of the surface: {missing[:10]}")
        dev = next(iter(self.center.values())).device

        def flat(w):
            return torch.cat([w[k].reshape(-1).to(dev, torch.float64) for k in keys])

        delta = flat(p) - flat(self.center)
        D = torch.stack([flat(d) for d in self.directions])
        coef = torch.linalg.solve(D @ D.T, D @ delta)
        return float(coef[0]), float(coef[1])

    def add_point(self, name: str, point) -> tuple[float, float]:
        """Mark a point (a model / checkpoint, projected; or ``(a, b)`` coordinates)."""
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
            xy = np.asarray(trajectory, dtype=np.float64).reshape(-1, 2)
        else:
            if isinstance(trajectory, Mapping):
                trajectory = list(trajectory.values())
            xy = np.array([self.project(p) for p in trajectory], dtype=np.float64)
        self.paths[str(name)] = xy
        return xy

    # display -------------------------------------------------------------------------
    def __repr__(self) -> str:
        parts = []
        for k, v in self.values.items():
            if np.isfinite(v).any():
                i, j = np.unravel_index(int(np.nanargmin(v)), v.shape)
                parts.append(
                    f"{k}: min {_fmt(v[i, j])} at ({self.x[j]:.3g}, {self.y[i]:.3g}), "
                    f"max {_fmt(np.nanmax(v))}"
                )
            else:
                parts.append(f"{k}: no finite value")
        n = self.x.size * self.y.size
        state = "" if self.complete else f", INCOMPLETE ({self.n_evaluated} of {n} points)"
        return (
            f"Surface({len(self.x)}×{len(self.y)} grid, x in [{self.x[0]:.3g}, "
            f"{self.x[-1]:.3g}], y in [{self.y[0]:.3g}, {self.y[-1]:.3g}]; "
            + "; ".join(parts)
            + f"; {self.seconds:.2f} s, {self.strategy}{state})"
        )

    def _repr_html_(self) -> str:
        from .results import _html_table

        rows = [
            [
                k,
                _fmt(np.nanmin(v)) if np.isfinite(v).any() else "nan",
                _fmt(np.nanmax(v)) if np.isfinite(v).any() else "nan",
            ]
            for k, v in self.values.items()
        ]
        cap = f"surface {len(self.x)}×{len(self.y)}, {self.seconds:.2f} s" + (
            ""
            if self.complete
            else f" (incomplete: {self.n_evaluated} of {self.x.size * self.y.size} points)"
        )
        return _html_table(["metric", "min", "max"], rows, html.escape(cap))

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
def _center(obj: Objective, center):
    flat, fixed = obj.resolve(center)
    return flat, fixed


def _check_n(n, name="n") -> int:
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 2:
        raise LossvizError(f"{name} must be an integer >= 2, got {n!r}")
    return int(n)


def _check_span(span, name="span") -> tuple[float, float]:
    try:
        lo, hi = (float(v) for v in span)
    except (TypeError, ValueError):
        raise LossvizError(f"{name} must be (low, high), got {span!r}") from None
    if not (math.isfinite(lo) and math.isfinite(hi) and lo < hi):
        raise LossvizError(f"{name} must be finite with low < high, got {span!r}")
    return lo, hi


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
    n = _check_n(n)
    lo, hi = _check_span(span)
    theta, fixed = _center(obj, center)
    if direction is None:
        direction = random_directions(obj.layout.to_weights(theta), 1)[0]
    d = _flat_direction(obj, direction)
    t = np.linspace(lo, hi, n)
    tt = torch.as_tensor(t, device=obj.device, dtype=obj.dtype)
    eng = _Engine(obj, metrics, fixed, **kw_engine(kw))
    out = np.full((len(eng.metrics), n), np.nan)
    done = np.zeros(n, dtype=bool)

    def make(idx, k):
        return theta + tt[k][:, None] * d

    complete = eng.run(make, np.arange(n), out, done, progress=kw.get("progress"), desc="slice")
    return Slice1D(
        t,
        {k: out[i] for i, k in enumerate(eng.metrics)},
        obj.layout.to_weights(d.clone()),
        obj.layout.to_weights(theta.clone()),
        complete,
        eng.strategy,
        time.perf_counter() - t0,
    )


_ENGINE_KW = ("bn", "bn_data", "precision", "batched", "chunk_size")


def kw_engine(kw: dict) -> dict:
    bad = [k for k in kw if k not in _ENGINE_KW + ("progress",)]
    if bad:
        raise TypeError(f"unexpected keyword argument(s) {bad}")
    return {k: v for k, v in kw.items() if k in _ENGINE_KW}


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
    overlay_points: dict = {}
    overlay_path = None
    if isinstance(directions, PCAResult):
        if len(directions.directions) < 2:
            raise LossvizError("the PCAResult has fewer than 2 directions")
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
    if span is None:
        span = ((-1, 1), (-1, 1))
    if isinstance(n, (int, np.integer)) and not isinstance(n, bool):
        n = (n, n)
    try:
        nx, ny = n
    except (TypeError, ValueError):
        raise LossvizError(f"n must be an int or (nx, ny), got {n!r}") from None
    nx, ny = _check_n(nx, "n[0]"), _check_n(ny, "n[1]")
    try:
        sx, sy = span
    except (TypeError, ValueError):
        raise LossvizError(f"span must be ((a_lo, a_hi), (b_lo, b_hi)), got {span!r}") from None
    (x0, x1), (y0, y1) = _check_span(sx, "span[0]"), _check_span(sy, "span[1]")

    theta, fixed = _center(obj, center)
    if directions is None:
        directions = random_directions(obj.layout.to_weights(theta), 2)
    directions = list(directions)
    if len(directions) != 2:
        raise LossvizError(f"a surface needs 2 directions, got {len(directions)}")
    D = torch.stack([_flat_direction(obj, d) for d in directions])
    eng = _Engine(obj, metrics, fixed, precision=precision, **kw_engine(kw))
    x, y = np.linspace(x0, x1, nx), np.linspace(y0, y1, ny)
    out = np.full((len(eng.metrics), ny * nx), np.nan)
    done = np.zeros(ny * nx, dtype=bool)
    xt = torch.as_tensor(x, device=obj.device, dtype=obj.dtype)
    yt = torch.as_tensor(y, device=obj.device, dtype=obj.dtype)
    res = Surface(
        x,
        y,
        {k: out[i].reshape(ny, nx) for i, k in enumerate(eng.metrics)},
        [obj.layout.to_weights(d.clone()) for d in D],
        obj.layout.to_weights(theta.clone()),
        False,
        None,
        0.0,
        {},
        overlay_points,
        objective=obj,
    )
    if overlay_path is not None:
        res.paths["trajectory"] = np.asarray(overlay_path, dtype=np.float64)
    if trajectory is not None:
        res.add_path("trajectory", trajectory)
    for name, p in (points or {}).items():
        res.add_point(name, p)

    def make(idx, k):
        return (theta + xt[k % nx][:, None] * D[0]) + yt[k // nx][:, None] * D[1]

    order = coarse_to_fine(nx, ny) if refine else np.arange(nx * ny)

    def on_chunk():
        res.strategy = eng.strategy
        res.seconds = time.perf_counter() - t0
        if callback is not None:
            callback(res)

    complete = eng.run(
        make, order, out, done, progress=kw.get("progress"), desc="surface", on_chunk=on_chunk
    )
    res.complete, res.strategy, res.seconds = complete, eng.strategy, time.perf_counter() - t0
    return res
