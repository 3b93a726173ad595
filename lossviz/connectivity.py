"""Mode connectivity: metrics along the straight line between two solutions, and barriers.

Along ``θ(α) = (1-α)·θA + α·θB`` (α in [0, 1]) lossviz reports both barriers in use:

- ``kind="linear"`` (Entezari, Sedghi, Saukh, Neyshabur 2022, "The Role of Permutation
  Invariance in Linear Mode Connectivity of Neural Networks"):
  ``B = max_α [ L(θ(α)) - ((1-α)·L(θA) + α·L(θB)) ]``, the height above the chord;
- ``kind="mean"`` (Frankle, Dziugaite, Roy, Carbin 2020, "Linear Mode Connectivity and the
  Lottery Ticket Hypothesis", on error; the Git Re-Basin code on loss):
  ``B = max_α L(θ(α)) - ½·(L(θA) + L(θB))``, the height above the endpoints' mean.

The two agree when ``L(θA) = L(θB)``.

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
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor, nn

from . import validate
from .deprecation import renamed
from .engine import (
    check_engine_args,
    check_metrics,
    check_objective,
    evaluate_points,
    kw_engine,
    warn_nonfinite,
)
from .errors import ArgumentTypeError, LossvizError, warn
from .formatting import short
from .interrupt import api
from .metrics import resolve_metrics
from .objective import Objective
from .provenance import Provenance
from .results import ByMetric, DataResult, deprecated_obj
from .sharding import check_shard, fingerprints

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


def _engine_args(obj, bn, bn_data, progress, kw) -> dict:
    """The evaluation keywords of a connectivity call, checked (before any work).

    ``bn="eval"`` means the Objective's own setting (running statistics interpolated with
    the weights for an Objective built with ``bn="eval"``).
    """
    validate.choice(bn, "bn", ("eval", "recompute"))
    return check_engine_args(
        obj,
        bn=None if bn == "eval" else bn,
        bn_data=bn_data,
        progress=progress,
        bn_name="bn",
        data_name="bn_data",
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
    """Non-varying tensors at ``α`` on the line from A to B.

    Exactly A's at α = 0 and B's at α = 1; in between floating-point ones interpolated
    where they differ, and integer / boolean ones (``num_batches_tracked``, counters) from
    the nearest endpoint (A for α ≤ ½, B for α > ½).
    """
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
    """Points to evaluate, grouped by their non-varying tensors (buffers).

    One batched evaluation per group.
    """

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
        self, metrics: dict, rules: dict, *, progress=None, shard=None, what="", **ekw
    ) -> tuple[dict[str, np.ndarray], np.ndarray, bool]:
        """``(values per metric, evaluated mask, complete)``.

        After Ctrl-C (outermost call) the groups not evaluated stay NaN and no further
        group runs; inside another lossviz call the interrupt propagates. With a
        :class:`~lossviz.sharding.GridShard` this rank evaluates its contiguous share of
        the points (in the order added) and every rank gets every value.
        """
        obj = self.obj
        names = list(metrics)
        n = len(self.where)
        mine = np.arange(n) if shard is None else shard.share(n)
        # this rank's points, grouped by their non-varying tensors: group -> positions
        by_group: dict[int, list[int]] = {}
        for p in mine:
            by_group.setdefault(self.where[p][0], []).append(int(p))
        out = np.full((len(names), n), np.nan)
        done = np.zeros(n, dtype=bool)
        complete, err = True, None
        try:
            for g, ps in by_group.items():
                if not complete:
                    break
                fixed, pts = self.groups[g]
                r = evaluate_points(
                    obj,
                    torch.stack([pts[self.where[p][1]] for p in ps]),
                    metrics,
                    fixed,
                    rules=rules,
                    progress=progress,
                    **ekw,
                )
                complete = complete and r.complete
                for j, m in enumerate(names):
                    out[j, ps] = r[m]
                done[ps] = r.evaluated
        except Exception as e:
            if shard is None:
                raise
            err = e
        if shard is not None:
            _, _, complete = shard.gather(out, done, complete, err, what)
        return {m: out[j] for j, m in enumerate(names)}, done, complete


def _prepare_metrics(obj, metrics, flat, fixed, *, optional=(), precision=None, name="metrics"):
    mk = resolve_metrics(obj, metrics, name=name)
    return check_metrics(obj, mk, flat, fixed, optional=optional, precision=precision, name=name)


# straight-line paths -----------------------------------------------------------------------
def curve_barrier(alphas: np.ndarray, f: np.ndarray, kind: str, sign: float) -> tuple[float, int]:
    """``(barrier, index of the maximizing α)`` of a curve sampled along a path.

    With ``f_0 = f[0]``, ``f_1 = f[-1]`` and ``s = sign``:

    - ``kind="linear"`` (Entezari, Sedghi, Saukh, Neyshabur 2022, "The Role of
      Permutation Invariance in Linear Mode Connectivity of Neural Networks"):
      ``max_i s·(f[i] - ((1-α_i)·f_0 + α_i·f_1))``;
    - ``kind="mean"`` (Frankle, Dziugaite, Roy, Carbin 2020, "Linear Mode Connectivity and
      the Lottery Ticket Hypothesis"): ``max_i s·(f[i] - ½·(f_0 + f_1))``.

    A curve with a non-finite value has no finite barrier: ``+inf`` (at the first such α)
    when the only non-finite values are worse-than-any (``+inf`` loss, ``-inf`` accuracy)
    between finite endpoints, otherwise ``NaN`` (at the first non-finite α).

    Args:
        alphas: the α of the samples, ``alphas[0] = 0`` and ``alphas[-1] = 1``.
        f: the metric at each α (same length as ``alphas``).
        kind: ``"linear"`` (height above the chord) or ``"mean"`` (height above the
            endpoints' mean).
        sign: ``+1`` where lower is better (loss, error), ``-1`` where higher is better
            (accuracy: the barrier is the largest drop).

    Returns:
        ``(barrier, i)``: the barrier as a float and the index of the α where it is reached
        (the first one on ties; the first non-finite one when the barrier is not finite).

    Raises:
        LossvizError: ``kind`` is not ``"linear"`` or ``"mean"``.

    A monotone path has no linear barrier, but its mean barrier is the gap to the worse
    endpoint; an infinite loss inside the path gives an infinite barrier:

    >>> a = np.array([0.0, 0.5, 1.0])
    >>> curve_barrier(a, np.array([1.0, 2.0, 3.0]), "linear", 1.0)
    (0.0, 0)
    >>> curve_barrier(a, np.array([1.0, 2.0, 3.0]), "mean", 1.0)
    (1.0, 2)
    >>> curve_barrier(a, np.array([1.0, np.inf, 3.0]), "linear", 1.0)
    (inf, 1)
    """
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


@dataclass(kw_only=True, repr=False)
class PathResult(ByMetric, DataResult):
    """Metrics along the straight line ``θ(α) = (1-α)·θA + α·θB`` (:func:`interpolate`).

    One array per metric: ``result["loss"]`` or ``result.loss``. :meth:`barrier` gives
    ``kind="linear"`` (Entezari et al. 2022, ``max_α [L(θ(α)) - ((1-α)·L(θA) +
    α·L(θB))]``, the height above the chord) or ``kind="mean"`` (Frankle et al. 2020,
    ``max_α L(θ(α)) - ½·(L(θA) + L(θB))``, the height above the endpoints' mean); for
    accuracy the sign flips (the largest drop). A metric that is not finite somewhere on
    the path (:meth:`nonfinite` lists the α) has a non-finite barrier; an interrupted path
    (``complete=False``, NaN where not evaluated) has NaN barriers.

    Attributes:
        alphas: the α in [0, 1] (float64, both ends included).
        values: ``metric name -> array`` of the metric at each α (NaN where not
            evaluated).
        metric_kinds: ``metric name -> kind`` (``"loss"``, ``"accuracy"``, ``"error"``, or
            the name of a callable metric); decides the sign of the barrier.
        bn: how BatchNorm statistics were handled: ``"eval"`` or ``"recompute"``.
        seconds: wall time.
        complete: False when interrupted (Ctrl-C): NaN where not evaluated.
        evaluated: which α were evaluated (boolean array; all unless interrupted; None
            means all).
        provenance: where it comes from (:class:`~lossviz.provenance.Provenance`; None
            when built by hand). Set by :func:`interpolate`, it keeps the Objective
            (``objective``) and the endpoints (``a``, ``b``) live for :meth:`dashboard`;
            they are not saved.
    """

    alphas: np.ndarray
    values: dict
    metric_kinds: dict = field(default_factory=dict)
    bn: str = "eval"
    seconds: float = 0.0
    complete: bool = True
    #: which α were evaluated (all unless interrupted)
    evaluated: np.ndarray | None = None

    obj = property(deprecated_obj)

    @property
    def a(self):
        """The first endpoint as given to :func:`interpolate` (live; None when unknown)."""
        at = self.at
        return at[0] if isinstance(at, tuple) and len(at) == 2 else None

    @property
    def b(self):
        """The second endpoint as given to :func:`interpolate` (live; None when unknown)."""
        at = self.at
        return at[1] if isinstance(at, tuple) and len(at) == 2 else None

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
        """The barrier of ``metric`` along the path (formulas in the class docstring).

        Args:
            metric: a metric of this result (``"loss"``, ``"accuracy"``, ...).
            kind: ``"linear"`` (above the chord) or ``"mean"`` (above the endpoints' mean).

        Returns:
            The barrier as a float: ``inf`` / ``NaN`` when the metric is not finite
            somewhere on the path, NaN when the path is incomplete.

        Raises:
            LossvizError: ``metric`` is not in this result, or ``kind`` is not
                ``"linear"`` / ``"mean"``.
        """
        return self._barrier(metric, kind)[0]

    def barrier_alpha(self, metric: str = "loss", kind: str = "linear") -> float:
        """The α where the barrier is reached.

        Args:
            metric: a metric of this result.
            kind: ``"linear"`` or ``"mean"``.

        Returns:
            The α as a float (the first non-finite α when the barrier is not finite; NaN
            for an incomplete path).

        Raises:
            LossvizError: ``metric`` is not in this result, or ``kind`` is not
                ``"linear"`` / ``"mean"``.
        """
        return self._barrier(metric, kind)[1]

    def dashboard(self, **kw):
        """An interactive view of this path (:func:`lossviz.dash.interpolation`).

        It opens on this result's own curve, with its ``bn``, ``n`` and metrics.

        Args:
            **kw: keywords for the dashboard (e.g. ``bn_data``, ``precision``, ``groups``).

        Returns:
            The dashboard widget.

        Raises:
            LossvizError: this result has no Objective (built by hand, or loaded).
        """
        if self.objective is None:
            raise LossvizError("this PathResult has no Objective to build a dashboard from")
        from lossviz import dash

        metrics = {k: self.metric_kinds.get(k, k) for k in self.values}
        opts = {"n": len(self.alphas), "metrics": metrics, "bn": self.bn}
        return dash.interpolation(self.objective, self.a, self.b, path=self, **{**opts, **kw})

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
        """One panel per metric: the curve, the endpoints, the reference, and the barrier.

        The reference is the chord (``kind="linear"``) or the endpoints' mean
        (``kind="mean"``); the barrier is marked where it is finite.

        Args:
            kind: ``"linear"`` or ``"mean"``.

        Returns:
            A plotly ``Figure``.

        Raises:
            LossvizError: ``kind`` is not ``"linear"`` / ``"mean"``.
        """
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
@renamed(recompute_data="bn_data")
def interpolate(
    obj: Objective,
    a,
    b,
    *,
    n: int = 25,
    metrics=None,
    bn: str = "eval",
    bn_data=None,
    progress=None,
    shard=None,
    **kw,
) -> PathResult:
    """Metrics along the straight line ``θ(α) = (1-α)·θA + α·θB``, α in [0, 1].

    ``n`` evenly spaced α, both ends included, all evaluated in batched passes. The
    barriers of the result (:meth:`PathResult.barrier`) are ``kind="linear"`` (Entezari,
    Sedghi, Saukh, Neyshabur 2022, "The Role of Permutation Invariance in Linear Mode
    Connectivity of Neural Networks"): ``max_α [L(θ(α)) - ((1-α)·L(θA) + α·L(θB))]``, and
    ``kind="mean"`` (Frankle, Dziugaite, Roy, Carbin 2020, "Linear Mode Connectivity and the
    Lottery Ticket Hypothesis"): ``max_α L(θ(α)) - ½·(L(θA) + L(θB))``.

    Parameters that do not vary in ``obj`` and buffers follow the path too: floating-point
    ones are interpolated where A and B differ, integer ones (``num_batches_tracked``,
    counters) come from the nearest endpoint (A for α ≤ ½, B for α > ½), so the values at
    α = 0 and 1 are exactly ``L(θA)`` and ``L(θB)``.

    A value that is not finite is kept (the barrier is then not finite) and reported in a
    warning naming the α (also :meth:`PathResult.nonfinite`). After Ctrl-C the result has
    ``complete=False``, NaN where not evaluated, and NaN barriers.

    Args:
        obj: the :class:`~lossviz.Objective` (model, loss, data; never changed).
        a: the first endpoint θA: a model, a state dict, :class:`~lossviz.Weights` or a
            checkpoint path.
        b: the second endpoint θB (same forms).
        n: the number of α (at least 2).
        metrics: a metric or a list of them (``"loss"``, ``"accuracy"``, ``"error"``, or a
            callable ``(outputs, targets) -> scalar``), or a mapping name -> metric.
            Default: loss and accuracy — accuracy only where it applies (class scores
            with labels, binary outputs with 0/1 targets; left out with a warning for a
            regression; only loss with a custom ``forward=``); given explicitly, a metric
            that does not apply is an error.
        bn: ``"eval"`` (the Objective's own setting: with BatchNorm, the running
            statistics are interpolated with the weights, which is often wrong) or
            ``"recompute"`` (BatchNorm running statistics re-estimated at every α, as
            curve-finding code does: Garipov, Izmailov, Podoprikhin, Vetrov, Wilson 2018,
            "Loss Surfaces, Mode Connectivity, and Fast Ensembling of DNNs").
        bn_data: the batches for ``bn="recompute"`` (default: the Objective's data);
            ``recompute_data=`` is its deprecated name.
        progress: show a progress bar (default on unless ``LOSSVIZ_PROGRESS=0``).
        shard: None (default: every rank of a job evaluates every α; a data-parallel
            Objective, ``distributed=``, reduces each value over the ranks' data) or
            ``"grid"``: in a ``torch.distributed`` job where every rank holds all the
            data (a plain Objective), the α are split between the ranks and gathered,
            so that every rank returns the identical full result (see
            :mod:`lossviz.sharding`).
        **kw: ``precision``, ``batched``, ``chunk_size`` (as
            :func:`lossviz.landscape.evaluate`).

    Returns:
        :class:`PathResult`: ``alphas`` and one array per metric, with its barriers.

    Raises:
        ArgumentTypeError: ``obj`` is not an Objective; an argument of the wrong type; an
            unknown keyword; both ``bn_data`` and ``recompute_data``.
        LossvizError: ``n < 2``; ``bn`` not ``"eval"`` / ``"recompute"``;
            ``bn="recompute"`` on a model without BatchNorm running statistics or an
            Objective not built with ``bn="eval"``; ``bn_data`` without
            ``bn="recompute"``; an unknown metric, or one given explicitly that does not
            apply to the model and data; a bad ``precision``; ``shard`` not None /
            ``"grid"``, ``"grid"`` without an initialised process group or with a
            data-parallel Objective; with ``"grid"``, a model, data or endpoints that
            differ between the ranks (naming them) and a failure on another rank.
        CheckpointError: ``a`` or ``b`` does not match the model (keys, shapes), or a
            checkpoint path that cannot be read.
        DataError: ``bn_data`` is empty.

    >>> from lossviz.data import digits, mlp
    >>> x, y = digits()
    >>> obj = Objective(mlp((64, 10)), torch.nn.functional.cross_entropy, (x, y))
    >>> r = interpolate(obj, mlp((64, 10), seed=1), mlp((64, 10), seed=2), n=5)
    >>> r.alphas.tolist(), bool(r.barrier("loss", "linear") >= 0)
    ([0.0, 0.25, 0.5, 0.75, 1.0], True)
    """
    t0 = time.perf_counter()
    _check_obj(obj)
    sh = check_shard(shard, obj, bn=bn)
    err = None
    try:  # with shard='grid' a failure on one rank is raised on every rank, below
        n = validate.integer(n, "n", low=2)
        ekw = _engine_args(obj, bn, bn_data, progress, kw)
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
    except Exception as e:
        if sh is None:
            raise
        err = e
    if sh is not None:
        sh.agree(
            err,
            "interpolate",
            lambda: fingerprints(
                obj, (fa_flat, fa, fb_flat, fb), (list(mk), n, bn, ekw["precision"])
            ),
        )
    alphas = np.linspace(0.0, 1.0, n)
    batch = _Batch(obj)
    same = _same_fixed(fa, fb)
    for al in alphas:
        batch.add(_lerp_flat(fa_flat, fb_flat, al), fa if same else _lerp_fixed(fa, fb, al))
    vals, done, complete = batch.run(
        mk, rules, progress=progress, shard=sh, what="interpolate", **ekw
    )
    warn_nonfinite(
        list(vals),
        np.stack([vals[k] for k in vals]),
        done,
        lambda i: f"α={alphas[i]:.3g}",
        "on the path: ",
    )
    return PathResult(
        alphas=alphas,
        values=vals,
        metric_kinds={k: v if isinstance(v, str) else k for k, v in mk.items()},
        bn=bn,
        seconds=time.perf_counter() - t0,
        complete=complete,
        evaluated=done,
        provenance=Provenance.of(obj, kernel="interpolate", at=(a, b)),
    )


@api
def path_point(obj: Objective, a, b, alpha: float) -> dict[str, Tensor]:
    """The full state at ``α`` on the straight line from ``a`` to ``b``.

    Varying parameters, other parameters and buffers, exactly as :func:`interpolate`
    evaluates them: parameters ``(1-α)·θA + α·θB``, floating-point buffers interpolated
    where A and B differ, integer ones from the nearest endpoint (A for α ≤ ½, B for
    α > ½); exactly A at α = 0 and B at α = 1.

    Args:
        obj: the :class:`~lossviz.Objective` (which parameters vary; never changed).
        a: the first endpoint (a model, state dict, Weights or checkpoint path).
        b: the second endpoint (same forms).
        alpha: a number in [0, 1].

    Returns:
        A dict ``name -> tensor`` (private copies), usable wherever a point is taken
        (``obj.loss(at=...)``, ``evaluate(obj, [p], at=p)``, ``model.load_state_dict``).

    Raises:
        ArgumentTypeError: ``obj`` is not an Objective, ``alpha`` is not a number, or
            ``a`` / ``b`` is not a point.
        LossvizError: ``alpha`` outside [0, 1] (or NaN).
        CheckpointError: ``a`` / ``b`` do not match the model (keys, shapes).

    >>> model = nn.Sequential(nn.Linear(1, 1, bias=False), nn.Linear(1, 1, bias=False))
    >>> obj = Objective(model, nn.functional.mse_loss, (torch.ones(1, 1), torch.ones(1, 1)))
    >>> def w(v):
    ...     return {"0.weight": torch.tensor([[v]]), "1.weight": torch.tensor([[v]])}
    >>> path_point(obj, w(1.0), w(-1.0), 0.25)
    {'0.weight': tensor([[0.5000]]), '1.weight': tensor([[0.5000]])}
    """
    _check_obj(obj)
    alpha = validate.number(alpha, "alpha", low=0.0, high=1.0)
    fa_flat, fa = obj.resolve(a, name="a")
    fb_flat, fb = obj.resolve(b, name="b")
    fixed = fa if _same_fixed(fa, fb) else _lerp_fixed(fa, fb, alpha)
    return {**fixed, **obj.layout.unflatten(_lerp_flat(fa_flat, fb_flat, alpha))}


@api
def barrier(
    obj: Objective, a, b, *, metric: str = "loss", kind: str = "linear", n: int = 25, **kw
) -> float:
    """The barrier between ``a`` and ``b`` on the straight line ``θ(α) = (1-α)·θA + α·θB``.

    - ``kind="linear"`` (Entezari, Sedghi, Saukh, Neyshabur 2022, "The Role of Permutation
      Invariance in Linear Mode Connectivity of Neural Networks"):
      ``max_α [L(θ(α)) - ((1-α)·L(θA) + α·L(θB))]``;
    - ``kind="mean"`` (Frankle, Dziugaite, Roy, Carbin 2020, "Linear Mode Connectivity and
      the Lottery Ticket Hypothesis", on test error: linearly connected below ~2%):
      ``max_α L(θ(α)) - ½·(L(θA) + L(θB))``.

    For accuracy the sign flips (the largest drop below the chord or the mean). The max is
    over ``n`` evenly spaced α in [0, 1], computed by :func:`interpolate`.

    Args:
        obj: the :class:`~lossviz.Objective` (never changed).
        a: the first endpoint (a model, state dict, Weights or checkpoint path).
        b: the second endpoint (same forms).
        metric: ``"loss"``, ``"accuracy"`` or ``"error"``.
        kind: ``"linear"`` (above the chord) or ``"mean"`` (above the endpoints' mean).
        n: the number of α (at least 2).
        **kw: as :func:`interpolate`: ``bn``, ``bn_data``, ``progress``, ``shard``,
            ``precision``, ``batched``, ``chunk_size``.

    Returns:
        The barrier as a float: not finite (with a warning naming the α) when the metric
        is not finite somewhere on the path. Ctrl-C propagates (a single number has no
        partial form).

    Raises:
        ArgumentTypeError: ``obj`` is not an Objective; ``metric`` is not a string; an
            argument of the wrong type or an unknown keyword.
        LossvizError: ``metric`` or ``kind`` not one of the names above; ``n < 2``; the
            metric does not apply to the model and data; a bad ``bn`` (as
            :func:`interpolate`).
        CheckpointError: ``a`` or ``b`` does not match the model.
        DataError: ``bn_data`` is empty.

    On ``L(w₁, w₂) = (w₁·w₂ - 1)²``, zero at ``(1, 1)`` and ``(-1, -1)``, the path crosses
    ``(0, 0)`` where the loss is 1:

    >>> model = nn.Sequential(nn.Linear(1, 1, bias=False), nn.Linear(1, 1, bias=False))
    >>> obj = Objective(model, nn.functional.mse_loss, (torch.ones(1, 1), torch.ones(1, 1)))
    >>> def w(v):
    ...     return {"0.weight": torch.tensor([[v]]), "1.weight": torch.tensor([[v]])}
    >>> barrier(obj, w(1.0), w(-1.0), n=3, progress=False)
    1.0
    """
    _check_obj(obj)
    _check_kind(kind)
    _metric_name(metric)
    validate.integer(n, "n", low=2)
    if "metrics" in kw:
        raise ArgumentTypeError("barrier takes one metric=, not metrics= (see interpolate)")
    return interpolate(obj, a, b, n=n, metrics=(metric,), **kw).barrier(metric, kind)


# barrier matrix ----------------------------------------------------------------------------
@dataclass(kw_only=True, repr=False)
class BarrierMatrix(DataResult):
    """Pairwise barriers between N points (:func:`barrier_matrix`).

    ``values[i, j]`` is the barrier of the straight path between points i and j (as
    :func:`barrier`): symmetric, zero diagonal. NaN for a pair not evaluated
    (``complete=False`` after Ctrl-C) or whose path has a NaN; ``inf`` for a path with an
    infinite loss between finite endpoints.

    Attributes:
        names: the points' names (strings), in order.
        values: the ``(N, N)`` barrier matrix (float64).
        metric: the metric the barriers are computed on.
        kind: ``"linear"`` (Entezari et al. 2022) or ``"mean"`` (Frankle et al. 2020).
        endpoint_values: the metric at each point, shape ``(N,)`` (NaN where not
            evaluated).
        n: the number of α per path, both ends included.
        seconds: wall time.
        complete: False when interrupted (Ctrl-C): NaN where not evaluated.
        provenance: where it comes from (:class:`~lossviz.provenance.Provenance`; None
            when built by hand).
    """

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
        """Heatmap of the pairwise barriers, each cell labelled with its value.

        Returns:
            A plotly ``Figure``.
        """
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
@renamed(recompute_data="bn_data")
def barrier_matrix(
    obj: Objective,
    points,
    *,
    metric: str = "loss",
    kind: str = "linear",
    n: int = 25,
    bn: str = "eval",
    bn_data=None,
    progress=None,
    shard=None,
    **kw,
) -> BarrierMatrix:
    """Barriers between every pair of ``points``, e.g. a soup's ingredients.

    Each endpoint is evaluated once; all interior α of all pairs go through batched
    passes. Definitions (and the non-finite rules) as :func:`barrier`:
    ``kind="linear"`` (Entezari et al. 2022) ``max_α [L(θ(α)) - ((1-α)·L(θ_i) +
    α·L(θ_j))]``, ``kind="mean"`` (Frankle et al. 2020) ``max_α L(θ(α)) - ½·(L(θ_i) +
    L(θ_j))``, with ``θ(α) = (1-α)·θ_i + α·θ_j``. A path with a non-finite value gets a
    non-finite barrier and a warning naming the pair and the α.

    Args:
        obj: the :class:`~lossviz.Objective` (never changed).
        points: at least two points: a list, a mapping name -> point or a
            :class:`~lossviz.TrajectoryRecorder` (each point a model, state dict,
            Weights or checkpoint path).
        metric: ``"loss"``, ``"accuracy"`` or ``"error"``.
        kind: ``"linear"`` or ``"mean"``.
        n: the number of α per path (at least 2), both ends included.
        bn: ``"eval"`` or ``"recompute"`` (as :func:`interpolate`).
        bn_data: the batches for ``bn="recompute"`` (default: the Objective's data);
            ``recompute_data=`` is its deprecated name.
        progress: show a progress bar (default on unless ``LOSSVIZ_PROGRESS=0``).
        shard: None (default: every rank of a job evaluates every point) or
            ``"grid"``: in a ``torch.distributed`` job where every rank holds all the
            data (a plain Objective), the endpoints and interior α of all pairs are
            split between the ranks and gathered, so that every rank returns the
            identical full matrix (see :mod:`lossviz.sharding`).
        **kw: ``precision``, ``batched``, ``chunk_size`` (as
            :func:`lossviz.landscape.evaluate`).

    Returns:
        :class:`BarrierMatrix`; after Ctrl-C the pairs not fully evaluated are NaN and
        ``complete`` is False.

    Raises:
        ArgumentTypeError: ``obj`` is not an Objective; ``points`` is not one of the
            forms; ``metric`` is not a string; an argument of the wrong type or an
            unknown keyword.
        LossvizError: fewer than two points; names that are not distinct as strings;
            ``metric`` or ``kind`` not one of the names above; ``n < 2``; the metric does
            not apply; a bad ``bn`` / ``bn_data`` combination (as :func:`interpolate`);
            a bad ``shard`` (as :func:`interpolate`).
        CheckpointError: a point does not match the model.
        DataError: ``bn_data`` is empty.

    >>> model = nn.Sequential(nn.Linear(1, 1, bias=False), nn.Linear(1, 1, bias=False))
    >>> obj = Objective(model, nn.functional.mse_loss, (torch.ones(1, 1), torch.ones(1, 1)))
    >>> def w(v):
    ...     return {"0.weight": torch.tensor([[v]]), "1.weight": torch.tensor([[v]])}
    >>> m = barrier_matrix(obj, {"A": w(1.0), "B": w(-1.0), "C": w(1.0)}, n=3, progress=False)
    >>> m.values.tolist()
    [[0.0, 1.0, 0.0], [1.0, 0.0, 1.0], [0.0, 1.0, 0.0]]
    """
    t0 = time.perf_counter()
    _check_obj(obj)
    sh = check_shard(shard, obj, bn=bn)
    err = None
    try:  # with shard='grid' a failure on one rank is raised on every rank, below
        _check_kind(kind)
        n = validate.integer(n, "n", low=2)
        ekw = _engine_args(obj, bn, bn_data, progress, kw)
        _metric(obj, metric)
        from .points import as_points  # a list, a dict name -> point or a TrajectoryRecorder

        labels, pts, _ = as_points(points, "points", at_least=2, what="barrier_matrix")
        names = [str(lab) for lab in labels]
        if len(set(names)) != len(names):
            raise LossvizError(f"points: names {names} are not distinct as strings")
        resolved = [obj.resolve(p, name=f"points[{nm!r}]") for nm, p in zip(names, pts)]
        mk, rules = _prepare_metrics(
            obj, (metric,), *resolved[0], precision=ekw["precision"], name="metric"
        )
    except Exception as e:
        if sh is None:
            raise
        err = e
    if sh is not None:
        sh.agree(
            err,
            "barrier_matrix",
            lambda: fingerprints(obj, resolved, (names, metric, kind, n, bn, ekw["precision"])),
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
    allvals, done, complete = batch.run(
        mk, rules, progress=progress, shard=sh, what="barrier_matrix", **ekw
    )
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
    return BarrierMatrix(
        names=names,
        values=M,
        metric=metric,
        kind=kind,
        endpoint_values=ev,
        n=n,
        seconds=time.perf_counter() - t0,
        complete=complete,
        provenance=Provenance.of(obj, kernel="barrier_matrix"),
    )


# layer-wise barriers -----------------------------------------------------------------------
def resolve_groups(obj: Objective, groups) -> tuple[dict[str, list[str]], str]:
    """``groups`` as ``name -> list of varying parameter names``, and its kind.

    Args:
        obj: the :class:`~lossviz.Objective` (its varying parameters and their modules).
        groups: ``"module"``: one group per module (all parameters of one layer);
            ``"cumulative"``: the first k modules, k = 1..L (named after the k-th module);
            or a mapping ``name -> list of parameter or module names`` (a module name
            stands for all its varying parameters; a single string is a one-name list).

    Returns:
        ``(mapping, kind)``: the groups as ``name -> parameter names`` and ``"module"``,
        ``"cumulative"`` or ``"custom"``.

    Raises:
        ArgumentTypeError: ``groups`` is not a string or a mapping, or a group is not a
            list of strings.
        LossvizError: an unknown string; an empty mapping or group; a name that is no
            varying parameter or module; a group name given twice (as a string).
    """
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


@dataclass(kw_only=True, repr=False)
class LayerwiseResult(DataResult):
    """Layer-wise barriers (:func:`layerwise_barriers`; Adilova et al., ICLR 2024).

    ``barriers[base][group] = L(θ_base^S) - ½(L(θA) + L(θB))`` where ``θ_base^S`` is the
    base model with block ``S`` replaced by ``½(θA[S] + θB[S])``; ``full`` is the
    full-model counterpart ``L(½θA + ½θB) - ½(L(θA) + L(θB))``. With ``n``, ``curves[base]
    [group]`` holds the metric as block S moves from the base toward the average:
    ``θ_base[S] + α·(θ_other[S] - θ_base[S])`` at ``alphas`` in [0, ½]. For accuracy the
    sign flips (a barrier is a drop below the mean).

    A barrier is NaN when a value it needs was not evaluated (``complete=False`` after
    Ctrl-C) or is NaN, or when ``L(A)`` / ``L(B)`` is not finite; ``inf`` when the
    block-averaged model's loss is ``+inf``.

    Attributes:
        groups: ``group name -> parameter names`` of each block S.
        barriers: ``base ("A" / "B") -> group -> barrier``.
        full: the full-model barrier ``L(½θA + ½θB) - ½(L(θA) + L(θB))``.
        endpoint_values: ``(L(θA), L(θB))``.
        metric: the metric the barriers are computed on.
        group_kind: ``"module"``, ``"cumulative"`` or ``"custom"``.
        alphas: the α of the curves in [0, ½] (None without ``n``).
        curves: ``base -> group -> array`` of the metric along ``alphas`` (None without
            ``n``).
        seconds: wall time.
        complete: False when interrupted (Ctrl-C): NaN where not evaluated.
        provenance: where it comes from (:class:`~lossviz.provenance.Provenance`; None
            when built by hand).
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
        """:attr:`table` as a ``pandas.DataFrame`` (rows: groups; columns: bases)."""
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
        """Heatmap of the barriers (groups × bases, and the full model).

        With curves (``n`` given), the curves are drawn below it with the endpoints' mean
        as a reference line.

        Returns:
            A plotly ``Figure``.
        """
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
    """Add the points of one pair to ``batch``.

    Returns the index bookkeeping (and ``labels``: index -> what the point is, for
    warnings).
    """
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
    """``sign·(v - ref)`` with the non-finite rule.

    NaN unless both are finite, except a worse-than-any value (``+inf`` loss) over a
    finite reference, which is ``+inf``.
    """
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
        groups=groups,
        barriers=bar,
        full=_gap(val(idx["full"]), ref, sign),
        endpoint_values=(la, lb),
        metric=metric,
        group_kind=kind,
        alphas=alphas,
        curves=curves,
        seconds=seconds,
        complete=bool(done[every].all()),
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
@renamed(recompute_data="bn_data")
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
    bn_data=None,
    progress=None,
    **kw,
) -> LayerwiseResult:
    """Layer-wise barriers: the cost of averaging one block of two models.

    Adilova, Andriushchenko, Kamp, Fischer, Jaggi, ICLR 2024, "Layer-wise Linear Mode
    Connectivity". For each group S and base ``b ∈ {A, B}``::

        B_S^(b) = L(θ_b^S) - ½(L(θA) + L(θB)),   θ_b^S = θ_b with θ_b[S] ← ½(θA[S] + θB[S])

    plus the full-model barrier ``L(½θA + ½θB) - ½(L(θA) + L(θB))``. The measure is
    asymmetric in the base, so both bases are reported by default. For accuracy the sign
    flips. The base keeps its own buffers (``bn="recompute"`` re-estimates them); the full
    average interpolates floating-point buffers and takes integer ones from A. All points
    go through batched passes. Non-finite values (a warning naming the points) and Ctrl-C
    (``complete=False``, NaN where not evaluated) as :func:`interpolate`.

    Args:
        obj: the :class:`~lossviz.Objective` (never changed).
        a: the first model θA (a model, state dict, Weights or checkpoint path).
        b: the second model θB (same forms).
        groups: the blocks S: ``"module"`` (one per layer, named as in
            ``model.named_modules()``), ``"cumulative"`` (the first k layers, k = 1..L) or
            a mapping ``name -> parameter / module names`` (see :func:`resolve_groups`).
        base: ``"A"``, ``"B"`` or ``"both"``.
        metric: ``"loss"``, ``"accuracy"`` or ``"error"``.
        n: with ``n`` (at least 2), also the curves moving block S from the base toward
            the average at ``n`` α in [0, ½] (never up to 1, which would be a layer swap
            between unrelated networks).
        bn: ``"eval"`` or ``"recompute"`` (as :func:`interpolate`).
        bn_data: the batches for ``bn="recompute"`` (default: the Objective's data);
            ``recompute_data=`` is its deprecated name.
        progress: show a progress bar (default on unless ``LOSSVIZ_PROGRESS=0``).
        **kw: ``precision``, ``batched``, ``chunk_size`` (as
            :func:`lossviz.landscape.evaluate`).

    Returns:
        :class:`LayerwiseResult` (``barriers[base][group]``, ``full``, and with ``n`` the
        ``curves``).

    Raises:
        ArgumentTypeError: ``obj`` is not an Objective; ``metric`` is not a string;
            ``groups`` of the wrong type; an argument of the wrong type or an unknown
            keyword.
        LossvizError: ``metric`` not one of the names above; ``base`` not ``"A"``,
            ``"B"`` or ``"both"``; ``n < 2``; bad ``groups`` (unknown names, empty
            groups); the metric does not apply; a bad ``bn`` / ``bn_data`` combination
            (as :func:`interpolate`).
        CheckpointError: ``a`` or ``b`` does not match the model.
        DataError: ``bn_data`` is empty.

    On ``L(w₁, w₂) = (w₁·w₂ - 1)²`` with A = (1, 1) and B = (-1, -1), averaging either
    weight alone already gives the loss at the midpoint (1):

    >>> model = nn.Sequential(nn.Linear(1, 1, bias=False), nn.Linear(1, 1, bias=False))
    >>> obj = Objective(model, nn.functional.mse_loss, (torch.ones(1, 1), torch.ones(1, 1)))
    >>> def w(v):
    ...     return {"0.weight": torch.tensor([[v]]), "1.weight": torch.tensor([[v]])}
    >>> r = layerwise_barriers(obj, w(1.0), w(-1.0), progress=False)
    >>> r.barriers, r.full
    ({'A': {'0': 1.0, '1': 1.0}, 'B': {'0': 1.0, '1': 1.0}}, 1.0)
    """
    t0 = time.perf_counter()
    _check_obj(obj)
    ekw = _engine_args(obj, bn, bn_data, progress, kw)
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
    res = _layerwise_result(
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
    res.provenance = Provenance.of(obj, kernel="layerwise_barriers", at=(a, b))
    return res


@dataclass(kw_only=True, repr=False)
class LayerwiseOver(DataResult):
    """Layer-wise barriers over a training run (:func:`layerwise_barriers_over`).

    One :class:`LayerwiseResult` per pair of checkpoints; :meth:`matrix` is the
    (pairs × groups) array of barriers (NaN where not evaluated after Ctrl-C:
    ``complete=False``).

    Attributes:
        labels: the pairs' labels (the mapping's keys, or 0, 1, ... for a list).
        results: one :class:`LayerwiseResult` per pair, in the order of ``labels``.
        complete: False when interrupted (Ctrl-C): NaN where not evaluated.
        provenance: where it comes from (:class:`~lossviz.provenance.Provenance`; None
            when built by hand).
    """

    labels: list
    results: list
    complete: bool = True

    @property
    def groups(self) -> list:
        """The group names (the same for every pair)."""
        return list(self.results[0].groups)

    def matrix(self, base: str = "A") -> np.ndarray:
        """The barriers with base ``base`` as a (pairs × groups) array.

        Args:
            base: ``"A"`` or ``"B"`` (one of the bases computed).

        Returns:
            A float64 array, rows in the order of ``labels``, columns of ``groups``.

        Raises:
            LossvizError: ``base`` was not computed.
        """
        if base not in self.results[0].barriers:
            raise LossvizError(f"no base {base!r}; have {list(self.results[0].barriers)}")
        return np.array([[r.barriers[base][g] for g in self.groups] for r in self.results])

    @property
    def full(self) -> np.ndarray:
        """The full-model barriers, one per pair."""
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
        """Heatmap: pairs (e.g. epochs) × layers, plus the full-model column.

        Args:
            base: ``"A"`` or ``"B"`` (one of the bases computed).

        Returns:
            A plotly ``Figure``.

        Raises:
            LossvizError: ``base`` was not computed.
        """
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
@renamed(recompute_data="bn_data")
def layerwise_barriers_over(
    obj: Objective,
    pairs,
    *,
    groups="module",
    base="both",
    metric: str = "loss",
    bn: str = "eval",
    bn_data=None,
    progress=None,
    **kw,
) -> LayerwiseOver:
    """:func:`layerwise_barriers` for many pairs ``(θA_t, θB_t)``, e.g. two runs at each epoch.

    For each pair, group S and base ``b``: ``B_S^(b) = L(θ_b^S) - ½(L(θA) + L(θB))`` with
    ``θ_b^S`` the base with block S replaced by ``½(θA[S] + θB[S])`` (Adilova,
    Andriushchenko, Kamp, Fischer, Jaggi, ICLR 2024, "Layer-wise Linear Mode
    Connectivity"). All pairs' points go through the same batched passes.
    ``.plot()`` is the epoch × layer heatmap of the paper's figures.

    Args:
        obj: the :class:`~lossviz.Objective` (never changed).
        pairs: a list of pairs ``(a, b)`` or a mapping label -> pair (each point a model,
            state dict, Weights or checkpoint path).
        groups: the blocks S, as :func:`layerwise_barriers`.
        base: ``"A"``, ``"B"`` or ``"both"``.
        metric: ``"loss"``, ``"accuracy"`` or ``"error"``.
        bn: ``"eval"`` or ``"recompute"`` (as :func:`interpolate`).
        bn_data: the batches for ``bn="recompute"`` (default: the Objective's data);
            ``recompute_data=`` is its deprecated name.
        progress: show a progress bar (default on unless ``LOSSVIZ_PROGRESS=0``).
        **kw: ``precision``, ``batched``, ``chunk_size`` (as
            :func:`lossviz.landscape.evaluate`).

    Returns:
        :class:`LayerwiseOver`: one :class:`LayerwiseResult` per pair. After Ctrl-C the
        barriers not evaluated are NaN and ``complete`` is False.

    Raises:
        ArgumentTypeError: ``obj`` is not an Objective; ``pairs`` is not a list or a
            mapping; ``metric`` is not a string; ``groups`` of the wrong type; an
            argument of the wrong type or an unknown keyword.
        LossvizError: ``pairs`` is empty or holds something that is not a pair;
            ``metric`` not one of the names above; a bad ``base`` or ``groups``; the
            metric does not apply; a bad ``bn`` / ``bn_data`` combination.
        CheckpointError: a point does not match the model.
        DataError: ``bn_data`` is empty.
    """
    t0 = time.perf_counter()
    _check_obj(obj)
    ekw = _engine_args(obj, bn, bn_data, progress, kw)
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
        labels=labels,
        results=[
            _layerwise_result(
                vals, done, ix, gmap, kind, bases, metric, _sign(mk[metric]), None, sec
            )
            for ix in idxs
        ],
        complete=complete,
        provenance=Provenance.of(obj, kernel="layerwise_barriers_over"),
    )
