"""Mode connectivity: loss along the straight line between two solutions, barriers, and
layer-wise barriers.

Along ``θ(α) = (1-α)·θA + α·θB`` (α in [0, 1]) lossviz reports both barriers in use:

- ``kind="linear"`` (Entezari, Sedghi, Saukh, Neyshabur 2022):
  ``B = max_α [ L(θ(α)) - ((1-α)·L(θA) + α·L(θB)) ]``;
- ``kind="mean"`` (Frankle, Dziugaite, Roy, Carbin 2020 on error; the Git Re-Basin code on
  loss): ``B = max_α L(θ(α)) - ½·(L(θA) + L(θB))``.

For accuracy, where higher is better, the sign flips (the barrier is the largest *drop*
below the chord or the mean).

Layer-wise barriers (Adilova, Andriushchenko, Kamp, Fischer, Jaggi, ICLR 2024,
"Layer-wise Linear Mode Connectivity"): ``θ_b^S`` is the base model ``b ∈ {A, B}`` with block
``S`` replaced by ``½(θA[S] + θB[S])`` and ``B_S^(b) = L(θ_b^S) - ½(L(θA) + L(θB))``.

Tensors that do not vary (buffers, frozen parameters) follow the path too: floating-point
ones are interpolated where A and B differ; integer and boolean ones
(``num_batches_tracked``, counters, masks) cannot be interpolated and come from the nearest
endpoint (A for α ≤ ½, B for α > ½). The endpoints are exactly A and B: the path's values at
α = 0 and α = 1 are ``L(θA)`` and ``L(θB)``.

A value that is not finite anywhere on a path makes its barrier non-finite (``inf`` when the
only non-finite values are ``+inf`` losses between finite endpoints, else ``NaN``), with a
warning naming the α; after Ctrl-C the results are marked ``complete=False`` and every
barrier that needs a value not computed is NaN.

Every set of points goes through the batched engine of :func:`lossviz.landscape.evaluate`
(one pass per distinct set of buffers). The model is never changed.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor, nn

from . import validate
from .errors import ArgumentTypeError, LossvizError, warn
from .formatting import short
from .interrupt import api
from .landscape import (
    check_engine_args,
    check_metrics,
    check_objective,
    evaluate_points,
    kw_engine,
    resolve_metrics,
    warn_nonfinite,
)
from .objective import Objective

_KINDS = ("linear", "mean")
_METRICS = ("loss", "accuracy", "error")
_HIGHER_IS_BETTER = ("accuracy",)


# helpers ---------------------------------------------------------------------------------
def _check_obj(obj) -> Objective:
    return check_objective(obj)


def _check_kind(kind: str) -> str:
    if not isinstance(kind, str) or kind not in _KINDS:
        raise LossvizError(
            "kind must be 'linear' (Entezari et al.) or 'mean' (Frankle et al.), got "
            + validate.show(kind)
        )
    return kind


def _engine_args(obj, bn, recompute_data, progress, kw) -> dict:
    """The evaluation keywords of a connectivity call, checked (before any work).
    ``bn="eval"`` means the Objective's own setting (running statistics interpolated with
    the weights for an Objective built with ``bn="eval"``)."""
    validate.choice(bn, "bn", ("eval", "recompute"))
    return check_engine_args(
        obj,
        bn=None if bn == "eval" else bn,
        bn_data=recompute_data,
        progress=progress,
        bn_name="bn",
        data_name="recompute_data",
        bn_choices=(None, "recompute"),
        **kw_engine(kw, ("precision", "batched", "chunk_size")),
    )


def _metric_name(metric) -> str:
    if not isinstance(metric, str) or metric not in _METRICS:
        raise (ArgumentTypeError if not isinstance(metric, str) else LossvizError)(
            f"metric must be one of {_METRICS} (a barrier is computed on one named metric), "
            f"got {validate.show(metric)}"
        )
    return metric


def _metric(obj, metric: str):
    """The one named metric a barrier is computed on, resolved for ``obj``."""
    return resolve_metrics(obj, (_metric_name(metric),), name="metric")


def _sign(metric_kind) -> float:
    """+1 where lower is better (loss, error, callables), -1 for accuracy."""
    return -1.0 if metric_kind in _HIGHER_IS_BETTER else 1.0


def _lerp_fixed(fa: dict, fb: dict, alpha: float) -> dict:
    """Non-varying tensors at ``α`` on the line from A to B: exactly A's at α = 0 and B's
    at α = 1; in between floating-point ones interpolated where they differ, and integer /
    boolean ones (``num_batches_tracked``, counters) from the nearest endpoint (A for
    α ≤ ½, B for α > ½)."""
    alpha = float(alpha)
    if alpha == 0.0:
        return fa
    if alpha == 1.0:
        return fb
    near = fa if alpha <= 0.5 else fb
    out = {}
    for k, va in fa.items():
        vb = fb[k]
        if (
            va.is_floating_point()
            and vb.is_floating_point()
            and va.shape == vb.shape
            and not torch.equal(va, vb)
        ):
            out[k] = torch.lerp(va, vb.to(va.dtype), alpha)
        else:
            out[k] = near[k]
    return out


def _lerp_flat(fa: Tensor, fb: Tensor, alpha: float) -> Tensor:
    alpha = float(alpha)
    if alpha == 0.0:
        return fa
    if alpha == 1.0:
        return fb
    return torch.lerp(fa, fb, alpha)


def _same_fixed(fa: dict, fb: dict) -> bool:
    return fa.keys() == fb.keys() and all(
        fa[k] is fb[k]
        or (fa[k].shape == fb[k].shape and fa[k].dtype == fb[k].dtype and torch.equal(fa[k], fb[k]))
        for k in fa
    )


class _Batch:
    """Points to evaluate, grouped by their non-varying tensors (buffers): one batched
    evaluation per group."""

    def __init__(self, obj: Objective):
        self.obj = obj
        self.groups: list[tuple[dict, list[Tensor]]] = []
        self.where: list[tuple[int, int]] = []

    def add(self, flat: Tensor, fixed: dict) -> int:
        gi = next((i for i, (f, _) in enumerate(self.groups) if _same_fixed(f, fixed)), None)
        if gi is None:
            self.groups.append((fixed, []))
            gi = len(self.groups) - 1
        pts = self.groups[gi][1]
        pts.append(flat)
        self.where.append((gi, len(pts) - 1))
        return len(self.where) - 1

    def run(
        self, metrics: dict, rules: dict, *, progress=None, **ekw
    ) -> tuple[dict[str, np.ndarray], np.ndarray, bool]:
        """``(values per metric, evaluated mask, complete)``. After Ctrl-C (outermost call)
        the groups not evaluated stay NaN and no further group runs; inside another
        lossviz call the interrupt propagates."""
        obj = self.obj
        outs: list = []
        complete = True
        for fixed, pts in self.groups:
            if not complete:
                outs.append(None)
                continue
            r = evaluate_points(
                obj, torch.stack(pts), metrics, fixed, rules=rules, progress=progress, **ekw
            )
            outs.append(r)
            complete = complete and r.complete
        names = list(metrics)
        n = len(self.where)
        vals = {m: np.full(n, np.nan) for m in names}
        done = np.zeros(n, dtype=bool)
        for p, (g, i) in enumerate(self.where):
            r = outs[g]
            if r is None:
                continue
            done[p] = bool(r.evaluated[i])
            for m in names:
                vals[m][p] = r[m][i]
        return vals, done, complete


def _prepare_metrics(obj, metrics, flat, fixed, *, optional=(), precision=None, name="metrics"):
    mk = resolve_metrics(obj, metrics, name=name)
    return check_metrics(obj, mk, flat, fixed, optional=optional, precision=precision, name=name)


# straight-line paths -----------------------------------------------------------------------
def curve_barrier(alphas: np.ndarray, f: np.ndarray, kind: str, sign: float) -> tuple[float, int]:
    """``(barrier, index of the maximizing α)`` of a curve (sign -1: higher is better).

    A curve with a non-finite value has no finite barrier: ``+inf`` (at the first such α)
    when the only non-finite values are worse-than-any (``+inf`` loss, ``-inf`` accuracy)
    between finite endpoints, otherwise ``NaN`` (at the first non-finite α)."""
    _check_kind(kind)
    f = np.asarray(f, dtype=np.float64)
    if not np.isfinite(f).all():
        fin = np.isfinite(f)
        worse = sign * f == np.inf
        if fin[0] and fin[-1] and (fin | worse).all():
            return float("inf"), int(np.flatnonzero(worse)[0])
        return float("nan"), int(np.flatnonzero(~fin)[0])
    f0, f1 = f[0], f[-1]
    ref = (1 - alphas) * f0 + alphas * f1 if kind == "linear" else np.full_like(f, 0.5 * (f0 + f1))
    gap = sign * (f - ref)
    i = int(np.argmax(gap))
    return float(gap[i]), i


@dataclass(repr=False)
class PathResult:
    """Metrics along ``θ(α) = (1-α)·θA + α·θB``: ``alphas`` and one array per metric
    (``result["loss"]`` or ``result.loss``).

    :meth:`barrier` gives ``kind="linear"`` (Entezari et al. 2022, height above the chord)
    or ``kind="mean"`` (Frankle et al. 2020, height above the endpoints' mean). A metric
    that is not finite somewhere on the path (:meth:`nonfinite` lists the α) has a
    non-finite barrier; an interrupted path (``complete=False``, NaN where not evaluated)
    has NaN barriers.
    """

    alphas: np.ndarray
    values: dict
    metric_kinds: dict = field(default_factory=dict)
    bn: str = "eval"
    obj: Objective | None = None
    a: object = None
    b: object = None
    seconds: float = 0.0
    complete: bool = True
    #: which α were evaluated (all unless interrupted)
    evaluated: np.ndarray | None = None

    def __getitem__(self, metric: str) -> np.ndarray:
        if not isinstance(metric, str) or metric not in self.values:
            raise LossvizError(f"no metric {metric!r}; have {list(self.values)}")
        return self.values[metric]

    def __getattr__(self, name: str):
        values = self.__dict__.get("values")
        if values is not None and name in values:
            return values[name]
        raise AttributeError(name)

    def _evaluated(self) -> np.ndarray:
        if self.evaluated is None:
            return np.ones(len(self.alphas), dtype=bool)
        return np.asarray(self.evaluated, dtype=bool)

    def nonfinite(self, metric: str = "loss") -> dict:
        """``{α: value}`` where ``metric`` was evaluated and is NaN or infinite."""
        f = np.asarray(self[metric], dtype=np.float64)
        bad = self._evaluated() & ~np.isfinite(f)
        return {float(self.alphas[i]): float(f[i]) for i in np.flatnonzero(bad)}

    def _barrier(self, metric: str, kind: str) -> tuple[float, float]:
        _check_kind(kind)
        f = np.asarray(self[metric], dtype=np.float64)
        if not self.complete or not self._evaluated().all():
            return float("nan"), float("nan")
        b, i = curve_barrier(self.alphas, f, kind, _sign(self.metric_kinds.get(metric, metric)))
        return b, float(self.alphas[i])

    def barrier(self, metric: str = "loss", kind: str = "linear") -> float:
        """The barrier of ``metric`` along the path (see the class docstring): ``inf`` /
        ``NaN`` when the metric is not finite somewhere on the path, NaN when the path is
        incomplete."""
        return self._barrier(metric, kind)[0]

    def barrier_alpha(self, metric: str = "loss", kind: str = "linear") -> float:
        """The α where the barrier is reached (the first non-finite α when the barrier is
        not finite; NaN for an incomplete path)."""
        return self._barrier(metric, kind)[1]

    def dashboard(self, **kw):
        """An interactive view of this path (:func:`lossviz.dash.interpolation`)."""
        if self.obj is None:
            raise LossvizError("this PathResult has no Objective to build a dashboard from")
        from lossviz import dash

        return dash.interpolation(self.obj, self.a, self.b, **kw)

    def _rows(self):
        rows = []
        for k, v in self.values.items():
            bl, al = self._barrier(k, "linear")
            bm, _ = self._barrier(k, "mean")
            rows.append(
                [
                    k,
                    short(v[0]),
                    short(v[-1]),
                    short(bl),
                    short(bm),
                    "nan" if np.isnan(al) else f"{al:.3g}",
                ]
            )
        return rows

    def _notes(self, metric: str) -> str:
        bad = self.nonfinite(metric)
        if not bad:
            return ""
        shown = ", ".join(f"{a:.3g} ({short(v)})" for a, v in list(bad.items())[:4])
        return f", NOT FINITE at α = {shown}" + (" …" if len(bad) > 4 else "")

    def __repr__(self) -> str:
        parts = [
            f"{r[0]}: A {r[1]}, B {r[2]}, barrier linear {r[3]} / mean {r[4]} at α={r[5]}"
            + self._notes(r[0])
            for r in self._rows()
        ]
        state = (
            ""
            if self.complete
            else f", INCOMPLETE ({int(self._evaluated().sum())} of {len(self.alphas)} α)"
        )
        return (
            f"PathResult({len(self.alphas)} points, bn={self.bn!r}; "
            + "; ".join(parts)
            + f"; {self.seconds:.2f} s{state})"
        )

    def _repr_html_(self) -> str:
        from .formatting import html_table

        rows = [r + [self._notes(r[0])[2:] or "-"] for r in self._rows()]
        return html_table(
            ["metric", "at A", "at B", "barrier (linear)", "barrier (mean)", "α of max", "notes"],
            rows,
            f"linear path, {len(self.alphas)} points, bn={self.bn}"
            + ("" if self.complete else " (incomplete)"),
        )

    def plot(self, kind: str = "linear"):
        """One panel per metric: the curve, the endpoints, the chord (``kind="linear"``)
        or the endpoints' mean (``kind="mean"``), and the barrier marked."""
        import plotly.graph_objects as go
        from plotly.subplots import make_subplots

        _check_kind(kind)
        names = list(self.values)
        fig = make_subplots(
            rows=len(names),
            cols=1,
            shared_xaxes=True,
            subplot_titles=[f"{k}: {kind} barrier {short(self.barrier(k, kind))}" for k in names],
        )
        a = self.alphas
        for r, k in enumerate(names, 1):
            f = np.asarray(self.values[k], dtype=np.float64)
            ref = (
                (1 - a) * f[0] + a * f[-1]
                if kind == "linear"
                else np.full_like(f, 0.5 * (f[0] + f[-1]))
            )
            b, at = self._barrier(k, kind)
            i = int(np.argmin(np.abs(a - at))) if np.isfinite(b) else 0
            show = r == 1
            fig.add_trace(
                go.Scatter(
                    x=a,
                    y=f,
                    mode="lines+markers",
                    name="path",
                    line={"color": "#1f77b4"},
                    showlegend=show,
                ),
                row=r,
                col=1,
            )
            fig.add_trace(
                go.Scatter(
                    x=a,
                    y=ref,
                    mode="lines",
                    name="chord" if kind == "linear" else "mean of endpoints",
                    line={"dash": "dash", "color": "gray"},
                    showlegend=show,
                ),
                row=r,
                col=1,
            )
            fig.add_trace(
                go.Scatter(
                    x=[a[0], a[-1]],
                    y=[f[0], f[-1]],
                    mode="markers+text",
                    text=["A", "B"],
                    textposition="top center",
                    marker={"size": 10, "color": "black"},
                    name="endpoints",
                    showlegend=show,
                ),
                row=r,
                col=1,
            )
            if np.isfinite(b):
                fig.add_trace(
                    go.Scatter(
                        x=[a[i], a[i]],
                        y=[ref[i], f[i]],
                        mode="lines+markers",
                        line={"color": "red", "width": 3},
                        name=f"barrier ({kind})",
                        showlegend=show,
                        hovertemplate=f"barrier {b:.4g} at α={a[i]:.3g}<extra></extra>",
                    ),
                    row=r,
                    col=1,
                )
            fig.update_yaxes(title_text=k, row=r, col=1)
        fig.update_xaxes(title_text="α  (θ = (1-α)·θA + α·θB)", row=len(names), col=1)
        fig.update_layout(
            title=f"linear interpolation (bn={self.bn})"
            + ("" if self.complete else " (incomplete)"),
            template="plotly_white",
        )
        return fig


_DEFAULT_METRICS = ("loss", "accuracy")


@api
def interpolate(
    obj: Objective,
    a,
    b,
    *,
    n: int = 25,
    metrics=None,
    bn: str = "eval",
    recompute_data=None,
    progress=None,
    **kw,
) -> PathResult:
    """Metrics along the straight line ``θ(α) = (1-α)·θA + α·θB`` at ``n`` evenly spaced
    α in [0, 1] (both ends included), all in batched passes.

    ``a``, ``b``: models, state dicts, :class:`~lossviz.Weights` or checkpoint paths.
    ``metrics``: default loss and accuracy — accuracy only where it applies (class scores
    with labels, binary outputs with 0/1 targets; left out with a warning for a
    regression); given explicitly, a metric that does not apply is an error. Parameters
    that do not vary in ``obj`` and buffers follow the path too: floating-point ones are
    interpolated where A and B differ, integer ones (``num_batches_tracked``, counters) come
    from the nearest endpoint (A for α ≤ ½, B for α > ½), so the values at α = 0 and 1 are
    exactly ``L(θA)`` and ``L(θB)``. ``bn="recompute"`` re-estimates BatchNorm running
    statistics at every α on ``recompute_data`` (default: the Objective's data), as
    curve-finding code does (Garipov et al. 2018); with BatchNorm, ``bn="eval"`` evaluates
    with interpolated running statistics, which is often wrong. Other keywords:
    ``precision``, ``batched``, ``chunk_size`` (as :func:`lossviz.landscape.evaluate`).

    A value that is not finite is kept (the barrier is then not finite) and reported in a
    warning naming the α (also :meth:`PathResult.nonfinite`). After Ctrl-C the result has
    ``complete=False``, NaN where not evaluated, and NaN barriers.

    >>> from lossviz.data import digits, mlp
    >>> x, y = digits()
    >>> obj = Objective(mlp((64, 10)), torch.nn.functional.cross_entropy, (x, y))
    >>> r = interpolate(obj, mlp((64, 10), seed=1), mlp((64, 10), seed=2), n=5)
    >>> r.alphas.tolist(), bool(r.barrier("loss", "linear") >= 0)
    ([0.0, 0.25, 0.5, 0.75, 1.0], True)
    """
    t0 = time.perf_counter()
    _check_obj(obj)
    n = validate.integer(n, "n", low=2)
    ekw = _engine_args(obj, bn, recompute_data, progress, kw)
    optional: tuple = ()
    if metrics is None:
        metrics, optional = (
            (("loss",), ()) if obj.forward is not None else (_DEFAULT_METRICS, ("accuracy",))
        )
    resolve_metrics(obj, metrics)
    fa_flat, fa = obj.resolve(a, name="a")
    fb_flat, fb = obj.resolve(b, name="b")
    mk, rules = _prepare_metrics(
        obj, metrics, fa_flat, fa, optional=optional, precision=ekw["precision"]
    )
    alphas = np.linspace(0.0, 1.0, n)
    batch = _Batch(obj)
    same = _same_fixed(fa, fb)
    for al in alphas:
        batch.add(_lerp_flat(fa_flat, fb_flat, al), fa if same else _lerp_fixed(fa, fb, al))
    vals, done, complete = batch.run(mk, rules, progress=progress, **ekw)
    warn_nonfinite(
        list(vals),
        np.stack([vals[k] for k in vals]),
        done,
        lambda i: f"α={alphas[i]:.3g}",
        "on the path: ",
    )
    return PathResult(
        alphas,
        vals,
        {k: v if isinstance(v, str) else k for k, v in mk.items()},
        bn,
        obj,
        a,
        b,
        time.perf_counter() - t0,
        complete,
        done,
    )


@api
def barrier(
    obj: Objective, a, b, *, metric: str = "loss", kind: str = "linear", n: int = 25, **kw
) -> float:
    """The barrier between ``a`` and ``b`` on the straight line (``n`` α values):
    ``kind="linear"``: ``max_α [L(θ(α)) - ((1-α)L(θA) + αL(θB))]`` (Entezari et al. 2022);
    ``kind="mean"``: ``max_α L(θ(α)) - ½(L(θA) + L(θB))`` (Frankle et al. 2020).
    Keywords as :func:`interpolate`. Not finite (with a warning naming the α) when the
    metric is not finite somewhere on the path; Ctrl-C propagates (a single number has no
    partial form)."""
    _check_obj(obj)
    _check_kind(kind)
    _metric_name(metric)
    validate.integer(n, "n", low=2)
    return interpolate(obj, a, b, n=n, metrics=(metric,), **kw).barrier(metric, kind)


# barrier matrix ----------------------------------------------------------------------------
def _named_points(points, what="points") -> tuple[list[str], list]:
    if isinstance(points, Mapping) and not _looks_like_state(points):
        names, pts = [str(k) for k in points], list(points.values())
        if len(set(names)) != len(names):
            raise LossvizError(f"{what}: names {names} are not distinct as strings")
    elif isinstance(points, Sequence) and not isinstance(points, (str, bytes)):
        pts = list(points)
        names = [str(i) for i in range(len(pts))]
    elif isinstance(points, Mapping):
        raise ArgumentTypeError(
            f"{what} is a single state dict: pass a list of points or a mapping name -> point"
        )
    else:
        raise ArgumentTypeError(
            f"{what} must be a list of points or a mapping name -> point, got "
            f"{type(points).__name__}"
        )
    return names, pts


def _looks_like_state(m: Mapping) -> bool:
    return bool(m) and all(isinstance(v, Tensor) for v in m.values())


@dataclass(repr=False)
class BarrierMatrix:
    """Pairwise barriers between N points: ``values[i, j]`` (symmetric, zero diagonal).

    NaN for a pair not evaluated (``complete=False`` after Ctrl-C) or whose path has a NaN;
    ``inf`` for a path with an infinite loss between finite endpoints."""

    names: list
    values: np.ndarray
    metric: str = "loss"
    kind: str = "linear"
    endpoint_values: np.ndarray | None = None
    n: int = 25
    seconds: float = 0.0
    complete: bool = True

    def __repr__(self) -> str:
        w = max(len(s) for s in self.names)
        state = "" if self.complete else ", INCOMPLETE: NaN where not evaluated"
        lines = [
            f"BarrierMatrix({len(self.names)} points, {self.metric} barrier, "
            f"kind={self.kind!r}, {self.n} α per pair, {self.seconds:.2f} s{state})",
            " " * w + "  " + "  ".join(s.rjust(9) for s in self.names),
        ]
        for nm, row in zip(self.names, self.values):
            lines.append(nm.ljust(w) + "  " + "  ".join(short(v).rjust(9) for v in row))
        return "\n".join(lines)

    def _repr_html_(self) -> str:
        from .formatting import html_table

        rows = [[nm] + [short(v) for v in row] for nm, row in zip(self.names, self.values)]
        return html_table(
            [""] + list(self.names),
            rows,
            f"{self.metric} barrier ({self.kind})" + ("" if self.complete else " (incomplete)"),
        )

    def plot(self):
        import plotly.graph_objects as go

        fig = go.Figure(
            go.Heatmap(
                z=self.values,
                x=self.names,
                y=self.names,
                colorscale="Viridis",
                colorbar={"title": "barrier"},
                text=[[short(v) for v in r] for r in self.values],
                texttemplate="%{text}",
            )
        )
        fig.update_layout(
            title=f"pairwise {self.metric} barriers ({self.kind})"
            + ("" if self.complete else " (incomplete)"),
            yaxis={"autorange": "reversed"},
            template="plotly_white",
        )
        return fig


@api
def barrier_matrix(
    obj: Objective,
    points,
    *,
    metric: str = "loss",
    kind: str = "linear",
    n: int = 25,
    bn: str = "eval",
    recompute_data=None,
    progress=None,
    **kw,
) -> BarrierMatrix:
    """Barriers between every pair of ``points`` (a list, or a mapping name -> point), e.g.
    a soup's ingredients. Each endpoint is evaluated once; all interior α of all pairs go
    through batched passes. Definitions (and the non-finite and Ctrl-C rules) as
    :func:`barrier` / :func:`interpolate`; after Ctrl-C the pairs not fully evaluated are
    NaN and ``complete`` is False."""
    t0 = time.perf_counter()
    _check_obj(obj)
    _check_kind(kind)
    n = validate.integer(n, "n", low=2)
    ekw = _engine_args(obj, bn, recompute_data, progress, kw)
    _metric(obj, metric)
    names, pts = _named_points(points)
    if len(pts) < 2:
        raise LossvizError(f"points: barrier_matrix needs at least 2 points, got {len(pts)}")
    resolved = [obj.resolve(p, name=f"points[{nm!r}]") for nm, p in zip(names, pts)]
    mk, rules = _prepare_metrics(
        obj, (metric,), *resolved[0], precision=ekw["precision"], name="metric"
    )
    alphas = np.linspace(0.0, 1.0, n)
    batch = _Batch(obj)
    ends = [batch.add(f, fx) for f, fx in resolved]
    pairs = {}
    for i in range(len(pts)):
        for j in range(i + 1, len(pts)):
            (fi, xi), (fj, xj) = resolved[i], resolved[j]
            same = _same_fixed(xi, xj)
            pairs[i, j] = [
                batch.add(_lerp_flat(fi, fj, al), xi if same else _lerp_fixed(xi, xj, al))
                for al in alphas[1:-1]
            ]
    allvals, done, complete = batch.run(mk, rules, progress=progress, **ekw)
    vals = allvals[metric]
    M = np.full((len(pts), len(pts)), np.nan)
    np.fill_diagonal(M, 0.0)
    sign = _sign(mk[metric])
    bad = []
    for (i, j), idx in pairs.items():
        ix = [ends[i], *idx, ends[j]]
        if not done[ix].all():
            continue  # not evaluated (interrupted): NaN
        f = vals[ix]
        M[i, j] = M[j, i] = curve_barrier(alphas, f, kind, sign)[0]
        nf = np.flatnonzero(~np.isfinite(f))
        if len(nf):
            bad.append(
                f"{names[i]}–{names[j]} at α = "
                + ", ".join(f"{alphas[k]:.3g} ({short(f[k])})" for k in nf[:3])
                + (" …" if len(nf) > 3 else "")
            )
    if bad:
        warn(
            f"{metric} is not finite on {len(bad)} path(s): "
            + "; ".join(bad[:5])
            + ("; …" if len(bad) > 5 else "")
            + "; their barriers are not finite"
        )
    ev = np.where(done[ends], vals[ends], np.nan)
    return BarrierMatrix(names, M, metric, kind, ev, n, time.perf_counter() - t0, complete)


# layer-wise barriers -----------------------------------------------------------------------
def resolve_groups(obj: Objective, groups) -> tuple[dict[str, list[str]], str]:
    """``groups`` as ``name -> list of varying parameter names`` and its kind.

    ``"module"``: one group per module (all parameters of one layer); ``"cumulative"``: the
    first k modules, k = 1..L (named after the k-th module); a mapping ``name -> list of
    parameter or module names`` (a module name stands for all its parameters)."""
    mods = obj.layout.by_module()
    if isinstance(groups, str) and groups == "module":
        return mods, "module"
    if isinstance(groups, str) and groups == "cumulative":
        out, acc = {}, []
        for name, ps in mods.items():
            acc = acc + ps
            out[name] = list(acc)
        return out, "cumulative"
    if isinstance(groups, Mapping):
        out = {}
        known = set(obj.layout.names)
        for gname, members in groups.items():
            if isinstance(members, str):
                members = [members]
            if not isinstance(members, Iterable) or isinstance(members, (bytes, Mapping)):
                raise ArgumentTypeError(
                    f"groups: group {gname!r} must be a list of parameter or module names, "
                    f"got {type(members).__name__}"
                )
            members = list(members)
            wrong = [m for m in members if not isinstance(m, str)]
            if wrong:
                raise ArgumentTypeError(
                    f"groups: group {gname!r} names parameters or modules by string, got "
                    f"{wrong[:5]}"
                )
            if not members:
                raise LossvizError(f"groups: group {gname!r} is empty")
            ps: list[str] = []
            unknown = []
            for m in members:
                if m in known:
                    hit = [m]
                else:
                    hit = [p for p in obj.layout.names if p.startswith(m + ".")]
                if not hit:
                    unknown.append(m)
                ps += [p for p in hit if p not in ps]
            if unknown:
                raise LossvizError(
                    f"groups: group {gname!r}: {unknown[:10]} name no varying parameter or "
                    f"module; modules: {list(mods)[:20]}"
                )
            if str(gname) in out:
                raise LossvizError(f"groups: group name {str(gname)!r} given twice")
            out[str(gname)] = ps
        if not out:
            raise LossvizError("groups is an empty mapping")
        return out, "custom"
    raise (LossvizError if isinstance(groups, str) else ArgumentTypeError)(
        "groups must be 'module', 'cumulative' or a mapping name -> parameter or module "
        f"names, got {validate.show(groups)}"
    )


def _bases(base) -> list[str]:
    validate.choice(base, "base", ("A", "B", "both"))
    return ["A", "B"] if base == "both" else [base]


@dataclass(repr=False)
class LayerwiseResult:
    """Layer-wise barriers (Adilova et al., ICLR 2024).

    ``barriers[base][group] = L(θ_base^S) - ½(L(θA) + L(θB))`` where ``θ_base^S`` is the
    base model with block ``S`` replaced by ``½(θA[S] + θB[S])``; ``full`` is the
    full-model counterpart ``L(½θA + ½θB) - ½(L(θA) + L(θB))``. With ``n``, ``curves[base]
    [group]`` holds the metric as block S moves from the base toward the average:
    ``θ_base[S] + α·(θ_other[S] - θ_base[S])`` at ``alphas`` in [0, ½].

    A barrier is NaN when a value it needs was not evaluated (``complete=False`` after
    Ctrl-C) or is NaN, or when ``L(A)`` / ``L(B)`` is not finite; ``inf`` when the
    block-averaged model's loss is ``+inf``.
    """

    groups: dict
    barriers: dict
    full: float
    endpoint_values: tuple
    metric: str = "loss"
    group_kind: str = "module"
    alphas: np.ndarray | None = None
    curves: dict | None = None
    seconds: float = 0.0
    complete: bool = True

    @property
    def table(self) -> dict:
        """``group -> {"A": barrier with base A, "B": ...}`` (rows = module names)."""
        return {g: {b: float(self.barriers[b][g]) for b in self.barriers} for g in self.groups}

    def to_pandas(self):
        import pandas as pd

        return pd.DataFrame(self.table).T

    def __repr__(self) -> str:
        bases = list(self.barriers)
        what = "first k layers up to" if self.group_kind == "cumulative" else "block"
        w = max(len(what), *(len(g) for g in self.groups))
        lines = [
            f"LayerwiseResult({self.metric}, {len(self.groups)} groups ({self.group_kind}), "
            f"L(A) {short(self.endpoint_values[0])}, L(B) {short(self.endpoint_values[1])}; "
            f"full-model barrier {short(self.full)}"
            + ("" if self.complete else "; INCOMPLETE: NaN where not evaluated")
            + ")",
            what.ljust(w) + "  " + "  ".join(f"base {b}".rjust(10) for b in bases),
        ]
        for g in self.groups:
            lines.append(
                g.ljust(w) + "  " + "  ".join(short(self.barriers[b][g]).rjust(10) for b in bases)
            )
        return "\n".join(lines)

    def _repr_html_(self) -> str:
        from .formatting import html_table

        bases = list(self.barriers)
        rows = [[g] + [short(self.barriers[b][g]) for b in bases] for g in self.groups]
        rows.append(["(all layers)"] + [short(self.full)] * len(bases))
        return html_table(
            ["group"] + [f"base {b}" for b in bases],
            rows,
            f"layer-wise {self.metric} barriers ({self.group_kind})"
            + ("" if self.complete else " (incomplete)"),
        )

    def plot(self):
        """Heatmap of the barriers (groups × bases, and the full model); with curves, the
        curves below it."""
        import plotly.graph_objects as go
        from plotly.subplots import make_subplots

        bases = list(self.barriers)
        names = list(self.groups) + ["(all layers)"]
        z = [[self.barriers[b][g] for g in self.groups] + [self.full] for b in bases]
        heat = go.Heatmap(
            z=z,
            x=names,
            y=[f"base {b}" for b in bases],
            colorscale="Viridis",
            colorbar={
                "title": "barrier",
                "len": 0.45 if self.curves else 1,
                "y": 0.78 if self.curves else 0.5,
            },
            text=[[short(v) for v in r] for r in z],
            texttemplate="%{text}",
        )
        title = (
            f"layer-wise {self.metric} barriers ({self.group_kind}); full model {short(self.full)}"
        )
        if not self.curves:
            fig = go.Figure(heat)
            fig.update_layout(title=title, xaxis_title="averaged block", template="plotly_white")
            return fig
        fig = make_subplots(
            rows=2,
            cols=1,
            vertical_spacing=0.15,
            subplot_titles=["barriers", "moving block S toward the average"],
        )
        fig.add_trace(heat, row=1, col=1)
        for b in bases:
            for g, f in self.curves[b].items():
                fig.add_trace(
                    go.Scatter(
                        x=self.alphas,
                        y=f,
                        mode="lines",
                        name=f"{g} (base {b})",
                        line={"dash": "solid" if b == "A" else "dot"},
                    ),
                    row=2,
                    col=1,
                )
        ref = 0.5 * (self.endpoint_values[0] + self.endpoint_values[1])
        if np.isfinite(ref):
            fig.add_hline(y=ref, line_dash="dash", line_color="gray", row=2, col=1)
        fig.update_xaxes(
            title_text="α (block S = θ_base[S] + α·(θ_other[S] - θ_base[S]))", row=2, col=1
        )
        fig.update_yaxes(title_text=self.metric, row=2, col=1)
        fig.update_layout(title=title, template="plotly_white", height=750)
        return fig


def _layerwise_points(obj, batch, fa_flat, fa, fb_flat, fb, gidx, bases, alphas):
    """Add the points of one pair to ``batch``; returns the index bookkeeping (and
    ``labels``: index -> what the point is, for warnings)."""
    same = _same_fixed(fa, fb)
    avg = 0.5 * (fa_flat + fb_flat)
    idx = {
        "A": batch.add(fa_flat, fa),
        "B": batch.add(fb_flat, fb if not same else fa),
        "full": batch.add(avg, fa if same else _lerp_fixed(fa, fb, 0.5)),
    }
    labels = {idx["A"]: "L(A)", idx["B"]: "L(B)", idx["full"]: "the full average"}
    own = {"A": (fa_flat, fa, fb_flat), "B": (fb_flat, fb, fa_flat)}
    idx["blocks"] = {}
    idx["curves"] = {}
    for b in bases:
        theta, fixed, other = own[b]
        idx["blocks"][b] = {}
        idx["curves"][b] = {}
        for g, ix in gidx.items():
            p = theta.clone()
            p[ix] = avg[ix]
            idx["blocks"][b][g] = k = batch.add(p, fixed)
            labels[k] = f"block {g!r} averaged in base {b}"
            if alphas is not None:
                row = []
                for al in alphas:
                    q = theta.clone()
                    q[ix] = torch.lerp(theta[ix], other[ix], float(al))
                    row.append(batch.add(q, fixed))
                    labels[row[-1]] = f"block {g!r} at α={al:.3g} in base {b}"
                idx["curves"][b][g] = row
    idx["labels"] = labels
    return idx


def _gap(v: float, ref: float, sign: float) -> float:
    """``sign·(v - ref)`` with the non-finite rule: NaN unless both are finite, except a
    worse-than-any value (``+inf`` loss) over a finite reference, which is ``+inf``."""
    v, ref = float(v), float(ref)
    if np.isfinite(v) and np.isfinite(ref):
        return sign * (v - ref)
    if np.isfinite(ref) and sign * v == np.inf:
        return float("inf")
    return float("nan")


def _layerwise_result(vals, done, idx, groups, kind, bases, metric, sign, alphas, seconds):
    def val(i):
        return float(vals[i]) if done[i] else float("nan")

    la, lb = val(idx["A"]), val(idx["B"])
    ref = 0.5 * (la + lb)
    bar = {b: {g: _gap(val(i), ref, sign) for g, i in idx["blocks"][b].items()} for b in bases}
    curves = None
    if alphas is not None:
        curves = {
            b: {g: np.where(done[ix], vals[ix], np.nan) for g, ix in idx["curves"][b].items()}
            for b in bases
        }
    labels = idx["labels"]
    every = np.array(sorted(labels))
    return LayerwiseResult(
        groups,
        bar,
        _gap(val(idx["full"]), ref, sign),
        (la, lb),
        metric,
        kind,
        alphas,
        curves,
        seconds,
        bool(done[every].all()),
    )


def _warn_layerwise(vals, done, idxs, metric, prefixes):
    bad = []
    for idx, pre in zip(idxs, prefixes):
        for i, what in idx["labels"].items():
            if done[i] and not np.isfinite(vals[i]):
                bad.append(f"{pre}{what} ({short(vals[i])})")
    if bad:
        warn(
            f"{metric} is not finite at {len(bad)} point(s): "
            + "; ".join(bad[:5])
            + ("; …" if len(bad) > 5 else "")
            + "; the barriers that use them are not finite"
        )


def _group_index(obj, groups) -> dict[str, Tensor]:
    sl = obj.layout.slices()
    out = {}
    for g, ps in groups.items():
        out[g] = torch.cat([torch.arange(sl[p].start, sl[p].stop, device=obj.device) for p in ps])
    return out


def _check_alpha_n(n):
    if n is None:
        return None
    return np.linspace(0.0, 0.5, validate.integer(n, "n", low=2))


@api
def layerwise_barriers(
    obj: Objective,
    a,
    b,
    *,
    groups="module",
    base="both",
    metric: str = "loss",
    n: int | None = None,
    bn: str = "eval",
    recompute_data=None,
    progress=None,
    **kw,
) -> LayerwiseResult:
    """Layer-wise barriers (Adilova, Andriushchenko, Kamp, Fischer, Jaggi, ICLR 2024).

    For each group S and base ``b ∈ {A, B}``: ``B_S^(b) = L(θ_b^S) - ½(L(θA) + L(θB))``,
    ``θ_b^S`` = θ_b with block S replaced by ``½(θA[S] + θB[S])``; plus the full-model
    barrier ``L(½θA + ½θB) - ½(L(θA) + L(θB))``. ``groups``: ``"module"`` (one per layer,
    named as in ``model.named_modules()``), ``"cumulative"`` (the first k layers) or a
    mapping ``name -> parameter / module names``. With ``n``, also the curves moving block S
    from the base toward the average (α in [0, ½]; never up to 1, which would be a layer
    swap). The base keeps its own buffers (``bn="recompute"`` re-estimates them); the full
    average interpolates floating-point buffers and takes integer ones from A. All points
    in batched passes. Non-finite values and Ctrl-C as :func:`interpolate`.
    """
    t0 = time.perf_counter()
    _check_obj(obj)
    ekw = _engine_args(obj, bn, recompute_data, progress, kw)
    _metric(obj, metric)
    gmap, kind = resolve_groups(obj, groups)
    bases = _bases(base)
    alphas = _check_alpha_n(n)
    fa_flat, fa = obj.resolve(a, name="a")
    fb_flat, fb = obj.resolve(b, name="b")
    mk, rules = _prepare_metrics(
        obj, (metric,), fa_flat, fa, precision=ekw["precision"], name="metric"
    )
    batch = _Batch(obj)
    idx = _layerwise_points(
        obj, batch, fa_flat, fa, fb_flat, fb, _group_index(obj, gmap), bases, alphas
    )
    allvals, done, _ = batch.run(mk, rules, progress=progress, **ekw)
    vals = allvals[metric]
    _warn_layerwise(vals, done, [idx], metric, [""])
    return _layerwise_result(
        vals,
        done,
        idx,
        gmap,
        kind,
        bases,
        metric,
        _sign(mk[metric]),
        alphas,
        time.perf_counter() - t0,
    )


@dataclass(repr=False)
class LayerwiseOver:
    """Layer-wise barriers over a training run: ``results[label]`` per pair of checkpoints;
    ``matrix(base)`` is the (pairs × groups) array of barriers (NaN where not evaluated
    after Ctrl-C: ``complete=False``)."""

    labels: list
    results: list
    complete: bool = True

    @property
    def groups(self) -> list:
        return list(self.results[0].groups)

    def matrix(self, base: str = "A") -> np.ndarray:
        if base not in self.results[0].barriers:
            raise LossvizError(f"no base {base!r}; have {list(self.results[0].barriers)}")
        return np.array([[r.barriers[base][g] for g in self.groups] for r in self.results])

    @property
    def full(self) -> np.ndarray:
        return np.array([r.full for r in self.results])

    def __repr__(self) -> str:
        r0 = self.results[0]
        return (
            f"LayerwiseOver({len(self.labels)} pairs × {len(self.groups)} groups, "
            f"{r0.metric}; full-model barriers "
            + ", ".join(f"{lab}: {short(v)}" for lab, v in zip(self.labels, self.full))
            + ("" if self.complete else "; INCOMPLETE: NaN where not evaluated")
            + ")"
        )

    def _repr_html_(self) -> str:
        from .formatting import html_table

        bases = list(self.results[0].barriers)
        rows = []
        for lab, r in zip(self.labels, self.results):
            for b in bases:
                rows.append(
                    [lab, b] + [short(r.barriers[b][g]) for g in self.groups] + [short(r.full)]
                )
        return html_table(
            ["pair", "base"] + self.groups + ["(all layers)"],
            rows,
            f"layer-wise {self.results[0].metric} barriers over a run",
        )

    def plot(self, base: str = "A"):
        """Heatmap: pairs (e.g. epochs) × layers, plus the full-model column."""
        import plotly.graph_objects as go

        if base not in self.results[0].barriers:
            raise LossvizError(f"no base {base!r}; have {list(self.results[0].barriers)}")
        z = np.concatenate([self.matrix(base), self.full[:, None]], axis=1)
        x = self.groups + ["(all layers)"]
        fig = go.Figure(
            go.Heatmap(
                z=z,
                x=x,
                y=[str(v) for v in self.labels],
                colorscale="Viridis",
                colorbar={"title": "barrier"},
            )
        )
        fig.update_layout(
            title=f"layer-wise {self.results[0].metric} barriers (base {base})",
            xaxis_title="averaged block",
            yaxis_title="pair / epoch",
            template="plotly_white",
        )
        return fig


@api
def layerwise_barriers_over(
    obj: Objective,
    pairs,
    *,
    groups="module",
    base="both",
    metric: str = "loss",
    bn: str = "eval",
    recompute_data=None,
    progress=None,
    **kw,
) -> LayerwiseOver:
    """:func:`layerwise_barriers` for many pairs ``(θA_t, θB_t)`` (e.g. two runs at each
    epoch): a list of pairs or a mapping label -> pair. All pairs' points go through the
    same batched passes. ``.plot()`` is the epoch × layer heatmap of the paper's figures.
    After Ctrl-C the barriers not evaluated are NaN and ``complete`` is False."""
    t0 = time.perf_counter()
    _check_obj(obj)
    ekw = _engine_args(obj, bn, recompute_data, progress, kw)
    _metric(obj, metric)
    if isinstance(pairs, Mapping):
        labels, plist = list(pairs), list(pairs.values())
    elif isinstance(pairs, Iterable) and not isinstance(pairs, (str, bytes, Tensor, nn.Module)):
        plist = list(pairs)
        labels = list(range(len(plist)))
    else:
        raise ArgumentTypeError(
            f"pairs must be a list of (a, b) pairs or a mapping label -> (a, b), got "
            f"{type(pairs).__name__}"
        )
    if not plist:
        raise LossvizError("pairs is empty: no pair given")
    for lab, pr in zip(labels, plist):
        if not isinstance(pr, (tuple, list)) or len(pr) != 2:
            raise LossvizError(
                f"pairs[{lab!r}] must be a pair (a, b), got "
                + (f"{len(pr)} items" if isinstance(pr, (tuple, list)) else type(pr).__name__)
            )
    gmap, kind = resolve_groups(obj, groups)
    gidx = _group_index(obj, gmap)
    bases = _bases(base)
    resolved = [
        (
            obj.resolve(pr[0], name=f"pairs[{lab!r}][0]"),
            obj.resolve(pr[1], name=f"pairs[{lab!r}][1]"),
        )
        for lab, pr in zip(labels, plist)
    ]
    mk, rules = _prepare_metrics(
        obj, (metric,), *resolved[0][0], precision=ekw["precision"], name="metric"
    )
    batch = _Batch(obj)
    idxs = [
        _layerwise_points(obj, batch, fa_flat, fa, fb_flat, fb, gidx, bases, None)
        for (fa_flat, fa), (fb_flat, fb) in resolved
    ]
    allvals, done, complete = batch.run(mk, rules, progress=progress, **ekw)
    vals = allvals[metric]
    _warn_layerwise(vals, done, idxs, metric, [f"pair {lab!r}: " for lab in labels])
    sec = time.perf_counter() - t0
    return LayerwiseOver(
        labels,
        [
            _layerwise_result(
                vals, done, ix, gmap, kind, bases, metric, _sign(mk[metric]), None, sec
            )
            for ix in idxs
        ],
        complete,
    )
