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

Every set of points goes through :func:`lossviz.landscape.evaluate` in batched passes (one
pass per distinct set of buffers). The model is never changed.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor

from .errors import CheckpointError, LossvizError
from .interrupt import api
from .landscape import _check_n, evaluate, resolve_metrics
from .objective import Objective

_KINDS = ("linear", "mean")
_HIGHER_IS_BETTER = ("accuracy",)


# helpers ---------------------------------------------------------------------------------
def _check_obj(obj) -> Objective:
    if not isinstance(obj, Objective):
        raise TypeError(f"expected an Objective, got {type(obj).__name__}")
    return obj


def _check_kind(kind: str) -> str:
    if kind not in _KINDS:
        raise LossvizError(
            f"kind must be 'linear' (Entezari et al.) or 'mean' (Frankle et al.), got {kind!r}"
        )
    return kind


def _check_bn(bn: str, recompute_data) -> str:
    if bn not in ("eval", "recompute"):
        raise LossvizError(f"bn must be 'eval' or 'recompute', got {bn!r}")
    if recompute_data is not None and bn != "recompute":
        raise LossvizError("recompute_data= is only used with bn='recompute'")
    return bn


def _metric_name(metric) -> str:
    if not isinstance(metric, str):
        raise LossvizError("metric must be a name: 'loss', 'accuracy' or 'error'")
    return metric


def _metric(obj, metric: str):
    """The one named metric a barrier is computed on, resolved for ``obj``."""
    return resolve_metrics(obj, (_metric_name(metric),))


def _sign(metric_kind) -> float:
    """+1 where lower is better (loss, error, callables), -1 for accuracy."""
    return -1.0 if metric_kind in _HIGHER_IS_BETTER else 1.0


def _point(obj: Objective, p, what: str) -> tuple[Tensor, dict[str, Tensor]]:
    try:
        return obj.resolve(p)
    except CheckpointError as e:
        raise CheckpointError(f"{what}: {e}") from None


def _lerp_fixed(fa: dict, fb: dict, alpha: float) -> dict:
    """Non-varying tensors on the line: floating ones interpolated, integer ones
    (``num_batches_tracked``) from A."""
    out = {}
    for k, va in fa.items():
        vb = fb[k]
        if va.is_floating_point() and not torch.equal(va, vb):
            out[k] = torch.lerp(va, vb.to(va.dtype), float(alpha)) if alpha else va
        else:
            out[k] = va
    return out


def _same_fixed(fa: dict, fb: dict) -> bool:
    return fa.keys() == fb.keys() and all(
        fa[k] is fb[k] or (fa[k].shape == fb[k].shape and torch.equal(fa[k], fb[k])) for k in fa
    )


class _Batch:
    """Points to evaluate, grouped by their non-varying tensors (buffers): one batched
    :func:`evaluate` call per group."""

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

    def run(self, metrics, *, bn: str, bn_data=None, progress=None, **kw) -> dict[str, np.ndarray]:
        obj = self.obj
        outs = []
        for fixed, pts in self.groups:
            P = torch.stack(pts)
            at = dict(fixed)
            at.update(obj.layout.unflatten(P[0]))
            ekw = dict(kw)
            if bn == "recompute":
                ekw.update(bn="recompute", bn_data=bn_data)
            outs.append(evaluate(obj, P, metrics=metrics, at=at, progress=progress, **ekw))
        names = list(outs[0]) if outs else []
        return {m: np.array([outs[g][m][i] for g, i in self.where]) for m in names}


# straight-line paths -----------------------------------------------------------------------
def _barrier_of(alphas: np.ndarray, f: np.ndarray, kind: str, sign: float) -> tuple[float, int]:
    """``(barrier, index of the maximizing α)`` of a curve (sign -1: higher is better)."""
    _check_kind(kind)
    f0, f1 = f[0], f[-1]
    ref = (1 - alphas) * f0 + alphas * f1 if kind == "linear" else np.full_like(f, 0.5 * (f0 + f1))
    gap = sign * (f - ref)
    if not np.isfinite(gap).any():
        return float("nan"), 0
    i = int(np.nanargmax(gap))
    return float(gap[i]), i


@dataclass(repr=False)
class PathResult:
    """Metrics along ``θ(α) = (1-α)·θA + α·θB``: ``alphas`` and one array per metric
    (``result["loss"]`` or ``result.loss``).

    :meth:`barrier` gives ``kind="linear"`` (Entezari et al. 2022, height above the chord)
    or ``kind="mean"`` (Frankle et al. 2020, height above the endpoints' mean).
    """

    alphas: np.ndarray
    values: dict
    metric_kinds: dict = field(default_factory=dict)
    bn: str = "eval"
    obj: Objective | None = None
    a: object = None
    b: object = None
    seconds: float = 0.0

    def __getitem__(self, metric: str) -> np.ndarray:
        if metric not in self.values:
            raise LossvizError(f"no metric {metric!r}; have {list(self.values)}")
        return self.values[metric]

    def __getattr__(self, name: str):
        values = self.__dict__.get("values")
        if values is not None and name in values:
            return values[name]
        raise AttributeError(name)

    def barrier(self, metric: str = "loss", kind: str = "linear") -> float:
        """The barrier of ``metric`` along the path (see the class docstring)."""
        f = np.asarray(self[metric], dtype=np.float64)
        return _barrier_of(self.alphas, f, kind, _sign(self.metric_kinds.get(metric, metric)))[0]

    def barrier_alpha(self, metric: str = "loss", kind: str = "linear") -> float:
        """The α where the barrier is reached."""
        f = np.asarray(self[metric], dtype=np.float64)
        i = _barrier_of(self.alphas, f, kind, _sign(self.metric_kinds.get(metric, metric)))[1]
        return float(self.alphas[i])

    def dashboard(self, **kw):
        """An interactive view of this path (:func:`lossviz.dash.interpolation`)."""
        if self.obj is None:
            raise LossvizError("this PathResult has no Objective to build a dashboard from")
        from lossviz import dash

        return dash.interpolation(self.obj, self.a, self.b, **kw)

    def _rows(self):
        rows = []
        for k, v in self.values.items():
            rows.append(
                [
                    k,
                    _fmt(v[0]),
                    _fmt(v[-1]),
                    _fmt(self.barrier(k, "linear")),
                    _fmt(self.barrier(k, "mean")),
                    f"{self.barrier_alpha(k):.3g}",
                ]
            )
        return rows

    def __repr__(self) -> str:
        parts = [
            f"{r[0]}: A {r[1]}, B {r[2]}, barrier linear {r[3]} / mean {r[4]} at α={r[5]}"
            for r in self._rows()
        ]
        return (
            f"PathResult({len(self.alphas)} points, bn={self.bn!r}; "
            + "; ".join(parts)
            + f"; {self.seconds:.2f} s)"
        )

    def _repr_html_(self) -> str:
        from .results import _html_table

        return _html_table(
            ["metric", "at A", "at B", "barrier (linear)", "barrier (mean)", "α of max"],
            self._rows(),
            f"linear path, {len(self.alphas)} points, bn={self.bn}",
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
            subplot_titles=[f"{k}: {kind} barrier {_fmt(self.barrier(k, kind))}" for k in names],
        )
        a = self.alphas
        for r, k in enumerate(names, 1):
            f = np.asarray(self.values[k], dtype=np.float64)
            ref = (
                (1 - a) * f[0] + a * f[-1]
                if kind == "linear"
                else np.full_like(f, 0.5 * (f[0] + f[-1]))
            )
            b, i = _barrier_of(a, f, kind, _sign(self.metric_kinds.get(k, k)))
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
        fig.update_layout(title=f"linear interpolation (bn={self.bn})", template="plotly_white")
        return fig


def _fmt(x) -> str:
    x = float(x)
    return "nan" if not np.isfinite(x) else f"{x:.4g}"


@api
def interpolate(
    obj: Objective,
    a,
    b,
    *,
    n: int = 25,
    metrics=("loss", "accuracy"),
    bn: str = "eval",
    recompute_data=None,
    progress=None,
    **kw,
) -> PathResult:
    """Metrics along the straight line ``θ(α) = (1-α)·θA + α·θB`` at ``n`` evenly spaced
    α in [0, 1] (both ends included), all in batched passes.

    ``a``, ``b``: models, state dicts, :class:`~lossviz.Weights` or checkpoint paths.
    Parameters that do not vary in ``obj`` and buffers are interpolated too where A and B
    differ (floating-point ones; integer buffers come from A). ``bn="recompute"``
    re-estimates BatchNorm running statistics at every α on ``recompute_data`` (default: the
    Objective's data), as curve-finding code does (Garipov et al. 2018); with BatchNorm,
    ``bn="eval"`` evaluates with interpolated running statistics, which is often wrong.
    Other keywords go to :func:`lossviz.landscape.evaluate` (``precision``, ``batched``,
    ``chunk_size``).

    >>> from lossviz.data import digits, mlp
    >>> x, y = digits()
    >>> obj = Objective(mlp((64, 10)), torch.nn.functional.cross_entropy, (x, y))
    >>> r = interpolate(obj, mlp((64, 10), seed=1), mlp((64, 10), seed=2), n=5)
    >>> r.alphas.tolist(), bool(r.barrier("loss", "linear") >= 0)
    ([0.0, 0.25, 0.5, 0.75, 1.0], True)
    """
    t0 = time.perf_counter()
    _check_obj(obj)
    n = _check_n(n)
    bn = _check_bn(bn, recompute_data)
    mk = resolve_metrics(obj, metrics)
    fa_flat, fa = _point(obj, a, "a")
    fb_flat, fb = _point(obj, b, "b")
    alphas = np.linspace(0.0, 1.0, n)
    batch = _Batch(obj)
    same = _same_fixed(fa, fb)
    for al in alphas:
        batch.add(torch.lerp(fa_flat, fb_flat, float(al)), fa if same else _lerp_fixed(fa, fb, al))
    vals = batch.run(mk, bn=bn, bn_data=recompute_data, progress=progress, **kw)
    return PathResult(
        alphas,
        vals,
        {k: v if isinstance(v, str) else k for k, v in mk.items()},
        bn,
        obj,
        a,
        b,
        time.perf_counter() - t0,
    )


@api
def barrier(
    obj: Objective, a, b, *, metric: str = "loss", kind: str = "linear", n: int = 25, **kw
) -> float:
    """The barrier between ``a`` and ``b`` on the straight line (``n`` α values):
    ``kind="linear"``: ``max_α [L(θ(α)) - ((1-α)L(θA) + αL(θB))]`` (Entezari et al. 2022);
    ``kind="mean"``: ``max_α L(θ(α)) - ½(L(θA) + L(θB))`` (Frankle et al. 2020).
    Keywords as :func:`interpolate`."""
    _check_kind(kind)
    _metric_name(metric)
    return interpolate(obj, a, b, n=n, metrics=(metric,), **kw).barrier(metric, kind)


# barrier matrix ----------------------------------------------------------------------------
def _named_points(points, what="points") -> tuple[list[str], list]:
    if isinstance(points, Mapping) and not _looks_like_state(points):
        names, pts = [str(k) for k in points], list(points.values())
    elif isinstance(points, Sequence) and not isinstance(points, (str, bytes)):
        pts = list(points)
        names = [str(i) for i in range(len(pts))]
    else:
        raise TypeError(
            f"{what} must be a list of points or a mapping name -> point, got "
            f"{type(points).__name__}"
        )
    return names, pts


def _looks_like_state(m: Mapping) -> bool:
    return bool(m) and all(isinstance(v, Tensor) for v in m.values())


@dataclass(repr=False)
class BarrierMatrix:
    """Pairwise barriers between N points: ``values[i, j]`` (symmetric, zero diagonal)."""

    names: list
    values: np.ndarray
    metric: str = "loss"
    kind: str = "linear"
    endpoint_values: np.ndarray | None = None
    n: int = 25
    seconds: float = 0.0

    def __repr__(self) -> str:
        w = max(len(s) for s in self.names)
        lines = [
            f"BarrierMatrix({len(self.names)} points, {self.metric} barrier, "
            f"kind={self.kind!r}, {self.n} α per pair, {self.seconds:.2f} s)",
            " " * w + "  " + "  ".join(s.rjust(9) for s in self.names),
        ]
        for nm, row in zip(self.names, self.values):
            lines.append(nm.ljust(w) + "  " + "  ".join(_fmt(v).rjust(9) for v in row))
        return "\n".join(lines)

    def _repr_html_(self) -> str:
        from .results import _html_table

        rows = [[nm] + [_fmt(v) for v in row] for nm, row in zip(self.names, self.values)]
        return _html_table([""] + list(self.names), rows, f"{self.metric} barrier ({self.kind})")

    def plot(self):
        import plotly.graph_objects as go

        fig = go.Figure(
            go.Heatmap(
                z=self.values,
                x=self.names,
                y=self.names,
                colorscale="Viridis",
                colorbar={"title": "barrier"},
                text=[[_fmt(v) for v in r] for r in self.values],
                texttemplate="%{text}",
            )
        )
        fig.update_layout(
            title=f"pairwise {self.metric} barriers ({self.kind})",
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
    through batched passes. Definitions as :func:`barrier`."""
    t0 = time.perf_counter()
    _check_obj(obj)
    _check_kind(kind)
    n = _check_n(n)
    bn = _check_bn(bn, recompute_data)
    mk = _metric(obj, metric)
    names, pts = _named_points(points)
    if len(pts) < 2:
        raise LossvizError(f"barrier_matrix needs at least 2 points, got {len(pts)}")
    resolved = [_point(obj, p, f"point {nm!r}") for nm, p in zip(names, pts)]
    alphas = np.linspace(0.0, 1.0, n)
    batch = _Batch(obj)
    ends = [batch.add(f, fx) for f, fx in resolved]
    pairs = {}
    for i in range(len(pts)):
        for j in range(i + 1, len(pts)):
            (fi, xi), (fj, xj) = resolved[i], resolved[j]
            same = _same_fixed(xi, xj)
            pairs[i, j] = [
                batch.add(torch.lerp(fi, fj, float(al)), xi if same else _lerp_fixed(xi, xj, al))
                for al in alphas[1:-1]
            ]
    vals = batch.run(mk, bn=bn, bn_data=recompute_data, progress=progress, **kw)[metric]
    M = np.zeros((len(pts), len(pts)))
    sign = _sign(mk[metric])
    for (i, j), idx in pairs.items():
        f = np.concatenate([[vals[ends[i]]], vals[idx], [vals[ends[j]]]])
        M[i, j] = M[j, i] = _barrier_of(alphas, f, kind, sign)[0]
    return BarrierMatrix(names, M, metric, kind, vals[ends], n, time.perf_counter() - t0)


# layer-wise barriers -----------------------------------------------------------------------
def _module_groups(obj: Objective) -> dict[str, list[str]]:
    """Varying parameters grouped by the module that owns them, in layout order."""
    groups: dict[str, list[str]] = {}
    for name in obj.layout.names:
        mod = name.rsplit(".", 1)[0] if "." in name else name
        groups.setdefault(mod, []).append(name)
    return groups


def resolve_groups(obj: Objective, groups) -> tuple[dict[str, list[str]], str]:
    """``groups`` as ``name -> list of varying parameter names`` and its kind.

    ``"module"``: one group per module (all parameters of one layer); ``"cumulative"``: the
    first k modules, k = 1..L (named after the k-th module); a mapping ``name -> list of
    parameter or module names`` (a module name stands for all its parameters)."""
    mods = _module_groups(obj)
    if groups == "module":
        return mods, "module"
    if groups == "cumulative":
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
                    f"group {gname!r}: {unknown[:10]} name no varying parameter or module; "
                    f"modules: {list(mods)[:20]}"
                )
            out[str(gname)] = ps
        if not out:
            raise LossvizError("groups is an empty mapping")
        return out, "custom"
    raise LossvizError(
        f"groups must be 'module', 'cumulative' or a mapping name -> parameter "
        f"or module names, got {groups!r}"
    )


def _bases(base) -> list[str]:
    if base == "both":
        return ["A", "B"]
    if base in ("A", "B"):
        return [base]
    raise LossvizError(f"base must be 'A', 'B' or 'both', got {base!r}")


@dataclass(repr=False)
class LayerwiseResult:
    """Layer-wise barriers (Adilova et al., ICLR 2024).

    ``barriers[base][group] = L(θ_base^S) - ½(L(θA) + L(θB))`` where ``θ_base^S`` is the
    base model with block ``S`` replaced by ``½(θA[S] + θB[S])``; ``full`` is the
    full-model counterpart ``L(½θA + ½θB) - ½(L(θA) + L(θB))``. With ``n``, ``curves[base]
    [group]`` holds the metric as block S moves from the base toward the average:
    ``θ_base[S] + α·(θ_other[S] - θ_base[S])`` at ``alphas`` in [0, ½].
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
            f"L(A) {_fmt(self.endpoint_values[0])}, L(B) {_fmt(self.endpoint_values[1])}; "
            f"full-model barrier {_fmt(self.full)})",
            what.ljust(w) + "  " + "  ".join(f"base {b}".rjust(10) for b in bases),
        ]
        for g in self.groups:
            lines.append(
                g.ljust(w) + "  " + "  ".join(_fmt(self.barriers[b][g]).rjust(10) for b in bases)
            )
        return "\n".join(lines)

    def _repr_html_(self) -> str:
        from .results import _html_table

        bases = list(self.barriers)
        rows = [[g] + [_fmt(self.barriers[b][g]) for b in bases] for g in self.groups]
        rows.append(["(all layers)"] + [_fmt(self.full)] * len(bases))
        return _html_table(
            ["group"] + [f"base {b}" for b in bases],
            rows,
            f"layer-wise {self.metric} barriers ({self.group_kind})",
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
            text=[[_fmt(v) for v in r] for r in z],
            texttemplate="%{text}",
        )
        title = (
            f"layer-wise {self.metric} barriers ({self.group_kind}); full model {_fmt(self.full)}"
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
        fig.add_hline(y=ref, line_dash="dash", line_color="gray", row=2, col=1)
        fig.update_xaxes(
            title_text="α (block S = θ_base[S] + α·(θ_other[S] - θ_base[S]))", row=2, col=1
        )
        fig.update_yaxes(title_text=self.metric, row=2, col=1)
        fig.update_layout(title=title, template="plotly_white", height=750)
        return fig


def _layerwise_points(obj, batch, fa_flat, fa, fb_flat, fb, gidx, bases, alphas):
    """Add the points of one pair to ``batch``; returns the index bookkeeping."""
    same = _same_fixed(fa, fb)
    idx = {
        "A": batch.add(fa_flat, fa),
        "B": batch.add(fb_flat, fb if not same else fa),
        "full": batch.add(0.5 * (fa_flat + fb_flat), fa if same else _lerp_fixed(fa, fb, 0.5)),
    }
    avg = 0.5 * (fa_flat + fb_flat)
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
            idx["blocks"][b][g] = batch.add(p, fixed)
            if alphas is not None:
                row = []
                for al in alphas:
                    q = theta.clone()
                    q[ix] = torch.lerp(theta[ix], other[ix], float(al))
                    row.append(batch.add(q, fixed))
                idx["curves"][b][g] = row
    return idx


def _layerwise_result(vals, idx, groups, kind, bases, metric, sign, alphas, seconds):
    la, lb = float(vals[idx["A"]]), float(vals[idx["B"]])
    ref = 0.5 * (la + lb)
    bar = {
        b: {g: sign * (float(vals[i]) - ref) for g, i in idx["blocks"][b].items()} for b in bases
    }
    curves = None
    if alphas is not None:
        curves = {b: {g: vals[ix] for g, ix in idx["curves"][b].items()} for b in bases}
    return LayerwiseResult(
        groups,
        bar,
        sign * (float(vals[idx["full"]]) - ref),
        (la, lb),
        metric,
        kind,
        alphas,
        curves,
        seconds,
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
    return np.linspace(0.0, 0.5, _check_n(n))


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
    swap). The base keeps its own buffers (``bn="recompute"`` re-estimates them). All points
    in batched passes.
    """
    t0 = time.perf_counter()
    _check_obj(obj)
    bn = _check_bn(bn, recompute_data)
    mk = _metric(obj, metric)
    gmap, kind = resolve_groups(obj, groups)
    bases = _bases(base)
    alphas = _check_alpha_n(n)
    fa_flat, fa = _point(obj, a, "a")
    fb_flat, fb = _point(obj, b, "b")
    batch = _Batch(obj)
    idx = _layerwise_points(
        obj, batch, fa_flat, fa, fb_flat, fb, _group_index(obj, gmap), bases, alphas
    )
    vals = batch.run(mk, bn=bn, bn_data=recompute_data, progress=progress, **kw)[metric]
    return _layerwise_result(
        vals, idx, gmap, kind, bases, metric, _sign(mk[metric]), alphas, time.perf_counter() - t0
    )


@dataclass(repr=False)
class LayerwiseOver:
    """Layer-wise barriers over a training run: ``results[label]`` per pair of checkpoints;
    ``matrix(base)`` is the (pairs × groups) array of barriers."""

    labels: list
    results: list

    @property
    def groups(self) -> list:
        return list(self.results[0].groups)

    def matrix(self, base: str = "A") -> np.ndarray:
        return np.array([[r.barriers[base][g] for g in self.groups] for r in self.results])

    @property
    def full(self) -> np.ndarray:
        return np.array([r.full for r in self.results])

    def __repr__(self) -> str:
        r0 = self.results[0]
        return (
            f"LayerwiseOver({len(self.labels)} pairs × {len(self.groups)} groups, "
            f"{r0.metric}; full-model barriers "
            + ", ".join(f"{lab}: {_fmt(v)}" for lab, v in zip(self.labels, self.full))
            + ")"
        )

    def _repr_html_(self) -> str:
        from .results import _html_table

        bases = list(self.results[0].barriers)
        rows = []
        for lab, r in zip(self.labels, self.results):
            for b in bases:
                rows.append(
                    [lab, b] + [_fmt(r.barriers[b][g]) for g in self.groups] + [_fmt(r.full)]
                )
        return _html_table(
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
    same batched passes. ``.plot()`` is the epoch × layer heatmap of the paper's figures."""
    t0 = time.perf_counter()
    _check_obj(obj)
    bn = _check_bn(bn, recompute_data)
    mk = _metric(obj, metric)
    if isinstance(pairs, Mapping):
        labels, plist = list(pairs), list(pairs.values())
    else:
        plist = list(pairs)
        labels = list(range(len(plist)))
    if not plist:
        raise LossvizError("no pairs given")
    gmap, kind = resolve_groups(obj, groups)
    gidx = _group_index(obj, gmap)
    bases = _bases(base)
    batch = _Batch(obj)
    idxs = []
    for lab, pr in zip(labels, plist):
        if not isinstance(pr, (tuple, list)) or len(pr) != 2:
            raise LossvizError(f"pair {lab!r} must be (a, b), got {type(pr).__name__}")
        fa_flat, fa = _point(obj, pr[0], f"pair {lab!r}, a")
        fb_flat, fb = _point(obj, pr[1], f"pair {lab!r}, b")
        idxs.append(_layerwise_points(obj, batch, fa_flat, fa, fb_flat, fb, gidx, bases, None))
    vals = batch.run(mk, bn=bn, bn_data=recompute_data, progress=progress, **kw)[metric]
    sec = time.perf_counter() - t0
    return LayerwiseOver(
        labels,
        [
            _layerwise_result(vals, ix, gmap, kind, bases, metric, _sign(mk[metric]), None, sec)
            for ix in idxs
        ],
    )
