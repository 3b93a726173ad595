"""Mode-connecting curves: low-loss paths between two solutions, trained.

Garipov, Izmailov, Podoprikhin, Vetrov, Wilson 2018, "Loss Surfaces, Mode Connectivity,
and Fast Ensembling of DNNs". Two minima θA, θB whose straight line has a barrier are
often joined by a simple curve along which the loss stays low. The curve ``φ_w(t)``,
``t ∈ [0, 1]``, has fixed ends ``φ(0) = θA``, ``φ(1) = θB`` and ``k`` trainable bends
``w_1..w_k`` (flat vectors over the varying parameters); with ``w_0 = θA`` and
``w_{k+1} = θB``:

- ``curve="bezier"``: ``φ(t) = Σ_{i=0}^{k+1} C(k+1, i)·t^i·(1-t)^(k+1-i)·w_i`` (one bend:
  the quadratic Bezier ``(1-t)²·θA + 2t(1-t)·w_1 + t²·θB``);
- ``curve="polychain"``: the broken line through ``w_0, ..., w_{k+1}`` at
  ``t_i = i/(k+1)``: ``φ(t) = (1-s)·w_i + s·w_{i+1}`` for ``t ∈ [t_i, t_{i+1}]``,
  ``s = (k+1)·t - i``.

The bends minimise the expected loss along the curve, ``ℓ(w) = E_{t~U(0,1)} L(φ_w(t))``,
by stochastic gradient steps that each draw one ``t`` and one batch (as Garipov et al.
do), with ``torch.optim``. :func:`connect` does it; :class:`CurveResult` holds the bends,
the metrics along the curve and along the straight line at the same ``t``, and both
barriers (:func:`lossviz.connectivity.curve_barrier`).

The user's models are never changed: the curve lives in flat parameter vectors and every
forward runs on private copies through the Objective.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor, nn

from . import validate
from .connectivity import curve_barrier
from .engine import (
    Engine,
    check_engine_args,
    check_metrics,
    check_objective,
    kw_engine,
)
from .errors import ArgumentTypeError, LossvizError, warn
from .formatting import short
from .interrupt import api, keep_partial
from .metrics import resolve_metrics
from .objective import Objective, call_model, reparametrized, to_device
from .provenance import Provenance
from .results import ByMetric, DataResult
from .weights import Layout, Weights

__all__ = ["CURVES", "CurveResult", "connect", "curve_coefficients"]

#: the curve families of :func:`connect`
CURVES = ("bezier", "polychain")
_OPTIMIZERS = ("sgd", "adam")
_SCHEDULES = ("garipov", "constant")
_KINDS = ("linear", "mean")
_HIGHER_IS_BETTER = ("accuracy",)
_BN_STATS = ("running_mean", "running_var", "num_batches_tracked")


# the curve's formula --------------------------------------------------------------------
def curve_coefficients(curve: str, t, bends: int) -> np.ndarray:
    """The weights ``c_i(t)`` of the control points in ``φ(t) = Σ_i c_i(t)·w_i``.

    ``w_0 = θA``, ``w_1..w_k`` the bends, ``w_{k+1} = θB`` (``k = bends``):

    - ``"bezier"``: ``c_i(t) = C(k+1, i)·t^i·(1-t)^(k+1-i)`` (Bernstein polynomials);
    - ``"polychain"``: ``c_i(t) = 1-s``, ``c_{i+1}(t) = s`` for ``t ∈ [i/(k+1),
      (i+1)/(k+1)]`` with ``s = (k+1)·t - i``, all others 0.

    Every row sums to 1; ``t = 0`` gives exactly ``(1, 0, ..., 0)`` and ``t = 1`` exactly
    ``(0, ..., 0, 1)``.

    Args:
        curve: ``"bezier"`` or ``"polychain"``.
        t: a number or an array of numbers in [0, 1].
        bends: the number of bends ``k`` (at least 1).

    Returns:
        A float64 array ``(len(t), k + 2)`` (``(k + 2,)`` for a number).

    Raises:
        LossvizError: an unknown ``curve``, ``bends < 1``, ``t`` outside [0, 1] or not
            finite.
        ArgumentTypeError: ``bends`` is not an integer, ``t`` is not numeric.

    >>> curve_coefficients("bezier", 0.5, 1).tolist()
    [0.25, 0.5, 0.25]
    >>> curve_coefficients("polychain", [0.25, 0.75], 1).tolist()
    [[0.5, 0.5, 0.0], [0.0, 0.5, 0.5]]
    """
    validate.choice(curve, "curve", CURVES)
    k = validate.integer(bends, "bends", low=1)
    scalar = np.ndim(t) == 0
    try:
        ts = np.atleast_1d(np.asarray(t, dtype=np.float64))
    except (TypeError, ValueError):
        raise ArgumentTypeError(
            f"t must be a number or an array of numbers, got {validate.show(t)}"
        ) from None
    if ts.ndim != 1 or not np.isfinite(ts).all() or (ts < 0).any() or (ts > 1).any():
        raise LossvizError(f"t must be numbers in [0, 1], got {validate.show(t)}")
    n = k + 1
    if curve == "bezier":
        i = np.arange(n + 1)
        binom = np.array([math.comb(n, j) for j in i], dtype=np.float64)
        c = binom * ts[:, None] ** i * (1 - ts[:, None]) ** (n - i)
    else:
        c = np.zeros((len(ts), n + 1))
        seg = np.minimum(np.floor(ts * n).astype(np.int64), n - 1)
        s = ts * n - seg
        rows = np.arange(len(ts))
        c[rows, seg] = 1 - s
        c[rows, seg + 1] += s
    # exact ends (0·x and 1·x are exact, but say so for every t = 0 / 1)
    c[ts == 0] = np.eye(n + 1)[0]
    c[ts == 1] = np.eye(n + 1)[n]
    return c[0] if scalar else c


def _points(controls: Tensor, coef: Tensor, ts: np.ndarray) -> Tensor:
    """``φ(t)`` for each row of ``coef``: ``coef @ controls``, exactly the ends at t = 0 / 1."""
    pts = coef.to(controls.dtype) @ controls
    ts = np.asarray(ts)
    for j in np.flatnonzero(ts == 0):
        pts[int(j)] = controls[0]
    for j in np.flatnonzero(ts == 1):
        pts[int(j)] = controls[-1]
    return pts


def _line(fa: Tensor, fb: Tensor, ts: np.ndarray) -> Tensor:
    """``(1-t)·θA + t·θB`` at every ``t`` (``torch.lerp``, exactly the ends at t = 0 / 1)."""
    w = torch.as_tensor(ts, dtype=fa.dtype, device=fa.device)[:, None]
    pts = torch.lerp(fa.expand(len(ts), -1), fb.expand(len(ts), -1), w)
    for j in np.flatnonzero(np.asarray(ts) == 0):
        pts[int(j)] = fa
    for j in np.flatnonzero(np.asarray(ts) == 1):
        pts[int(j)] = fb
    return pts


def _sign(kind) -> float:
    return -1.0 if kind in _HIGHER_IS_BETTER else 1.0


# the result ------------------------------------------------------------------------------
@dataclass(kw_only=True, repr=False)
class CurveResult(ByMetric, DataResult):
    """A trained mode-connecting curve and the metrics along it (:func:`connect`).

    ``φ(t) = Σ_i c_i(t)·w_i`` with ``w_0 = θA``, the bends ``w_1..w_k`` and
    ``w_{k+1} = θB`` (:func:`curve_coefficients`; Garipov et al. 2018). ``values`` holds
    each metric along the curve and ``line_values`` the same metric on the straight line
    ``(1-t)·θA + t·θB`` at the same ``t``; :meth:`barrier` gives either path's barrier,
    ``kind="linear"`` (``max_t [f(t) - ((1-t)·f(0) + t·f(1))]``, Entezari et al. 2022) or
    ``kind="mean"`` (``max_t f(t) - ½(f(0) + f(1))``, Frankle et al. 2020), sign flipped
    for accuracy.

    Attributes:
        curve: ``"bezier"`` or ``"polychain"``.
        ts: the ``t`` where the metrics were evaluated (float64, 0 and 1 included).
        values: ``metric -> array`` along the curve (NaN where not evaluated).
        line_values: ``metric -> array`` along the straight line at the same ``t``.
        metric_kinds: ``metric -> kind`` (``"loss"``, ``"accuracy"``, ``"error"`` or a
            callable's name); decides the sign of the barriers.
        a: the first endpoint θA (:class:`~lossviz.Weights` over the varying parameters).
        b: the second endpoint θB.
        bends: the trained bends ``w_1..w_k`` (a list of Weights).
        train_loss: the loss of every training step (at its random ``t`` and batch).
        steps: the training steps asked for.
        trained_steps: the steps done (fewer after divergence or Ctrl-C).
        lr: the learning rate.
        optimizer: ``"sgd"`` or ``"adam"``.
        bn: how BatchNorm statistics were handled at the evaluated points: ``"eval"``
            (the Objective's own setting) or ``"recompute"`` (re-estimated at every
            point).
        stopped: why training ended early: None (it did not), ``"diverged"`` (a
            non-finite loss: the last bends with a finite loss are kept) or
            ``"interrupted"`` (Ctrl-C: the bends trained so far are kept).
        seconds: wall time.
        complete: False after divergence or Ctrl-C (or an evaluation cut short: NaN
            where not evaluated).
        evaluated: ``(2, n)`` bool mask of the points evaluated (curve, line); None means
            all.
        provenance: where it comes from (:class:`~lossviz.provenance.Provenance`; None
            when built by hand).
    """

    curve: str
    ts: np.ndarray
    values: dict
    line_values: dict
    metric_kinds: dict = field(default_factory=dict)
    a: Weights
    b: Weights
    bends: list
    train_loss: np.ndarray = field(default_factory=lambda: np.zeros(0))
    steps: int = 0
    trained_steps: int = 0
    lr: float = 0.0
    optimizer: str = "sgd"
    bn: str = "eval"
    stopped: str | None = None
    seconds: float = 0.0
    complete: bool = True
    evaluated: np.ndarray | None = None

    # access -----------------------------------------------------------------------------

    def _mask(self, which: int) -> np.ndarray:
        if self.evaluated is None:
            return np.ones(len(self.ts), dtype=bool)
        return np.asarray(self.evaluated, dtype=bool)[which]

    def _path(self, path: str) -> tuple[dict, int]:
        validate.choice(path, "path", ("curve", "line"))
        return (self.values, 0) if path == "curve" else (self.line_values, 1)

    def _barrier(self, metric: str, kind: str, path: str) -> tuple[float, float]:
        validate.choice(kind, "kind", _KINDS)
        vals, which = self._path(path)
        self[metric]  # an unknown metric: a clear error
        f = np.asarray(vals[metric], dtype=np.float64)
        if not self._mask(which).all():
            return float("nan"), float("nan")
        b, i = curve_barrier(self.ts, f, kind, _sign(self.metric_kinds.get(metric, metric)))
        return b, float(self.ts[i])

    def barrier(self, metric: str = "loss", kind: str = "linear", path: str = "curve") -> float:
        """The barrier of ``metric`` along the curve or the straight line.

        Args:
            metric: a metric of this result (``"loss"``, ``"accuracy"``, ...).
            kind: ``"linear"`` (above the chord) or ``"mean"`` (above the endpoints'
                mean).
            path: ``"curve"`` or ``"line"``.

        Returns:
            The barrier as a float (``inf`` / NaN where the metric is not finite on the
            path, NaN where not every point was evaluated).

        Raises:
            LossvizError: no such metric, or an unknown ``kind`` / ``path``.
        """
        return self._barrier(metric, kind, path)[0]

    def max(self, metric: str = "loss", path: str = "curve") -> float:
        """The largest value of ``metric`` on the path (the smallest, for accuracy).

        Args:
            metric: a metric of this result.
            path: ``"curve"`` or ``"line"``.

        Returns:
            The worst value as a float (NaN when a value is NaN or not evaluated).

        Raises:
            LossvizError: no such metric, or an unknown ``path``.
        """
        vals, which = self._path(path)
        self[metric]
        f = np.asarray(vals[metric], dtype=np.float64)
        if not self._mask(which).all() or np.isnan(f).any():
            return float("nan")
        s = _sign(self.metric_kinds.get(metric, metric))
        return float(s * np.max(s * f))

    # points on the curve ----------------------------------------------------------------
    def _controls(self) -> Tensor:
        layout = Layout([(k, v.shape) for k, v in self.a.items()])
        return torch.stack([layout.flatten(w) for w in [self.a, *self.bends, self.b]]), layout

    def point(self, t: float) -> Weights:
        """The weights ``φ(t)`` on the curve (over the varying parameters).

        Exactly :attr:`a` at ``t = 0`` and :attr:`b` at ``t = 1``. BatchNorm running
        statistics are not part of it: re-estimate them at the point
        (:func:`lossviz.reset_bn`) before using it as a network with BatchNorm.

        Args:
            t: a number in [0, 1].

        Returns:
            :class:`~lossviz.Weights` (new tensors).

        Raises:
            LossvizError: ``t`` outside [0, 1] or not finite.
            ArgumentTypeError: ``t`` is not a number.
        """
        t = validate.number(t, "t", low=0.0, high=1.0)
        if t == 0.0:
            return self.a.clone()
        if t == 1.0:
            return self.b.clone()
        W, layout = self._controls()
        c = torch.as_tensor(curve_coefficients(self.curve, [t], len(self.bends)))
        return layout.to_weights(_points(W, c.to(W.device), np.array([t]))[0].clone())

    def plane(self, bend: int | None = None):
        """The plane through θA, θB and a bend (:func:`lossviz.plane_through`).

        Gram-Schmidt with θA as the origin, as in Garipov et al.'s ``plane.py``:
        ``e1 = (θB - θA)/||θB - θA||``, ``e2`` the part of ``w - θA`` orthogonal to ``e1``,
        normalised. With one bend the curve lies in this plane exactly (a Bezier curve
        or polychain is a combination of its control points); with more it is projected.

        Args:
            bend: which bend (0-based; default the middle one, ``k // 2``).

        Returns:
            A :class:`~lossviz.Plane` with the points ``"A"``, ``"B"`` and ``"bend"``.

        Raises:
            LossvizError: ``bend`` out of range; the three points lie on one line (as
                :func:`lossviz.plane_through`).
            ArgumentTypeError: ``bend`` is not an integer.
        """
        from .directions import plane_through

        k = len(self.bends)
        i = k // 2 if bend is None else validate.integer(bend, "bend", low=0, high=k - 1)
        return plane_through(self.a, self.b, self.bends[i], names=("A", "B", "bend"))

    def coords(self, plane=None, n: int = 101) -> np.ndarray:
        """The curve in plane coordinates: ``(n, 2)`` projections of ``φ(t)``.

        With an orthonormal plane (origin ``o``, directions ``e1``, ``e2``), the point
        ``φ(t)`` is at ``((φ(t) - o)·e1, (φ(t) - o)·e2)`` (in float64).

        Args:
            plane: a :class:`~lossviz.Plane` (default :meth:`plane`).
            n: the number of ``t``, evenly spaced in [0, 1] (at least 2).

        Returns:
            A float64 array ``(n, 2)``.

        Raises:
            LossvizError: ``n < 2``; as :meth:`plane`.
            ArgumentTypeError: ``plane`` is not a Plane; ``n`` not an integer.
        """
        from .directions import Plane

        n = validate.integer(n, "n", low=2)
        if plane is None:
            plane = self.plane()
        if not isinstance(plane, Plane):
            raise ArgumentTypeError(f"plane must be a lossviz.Plane, got {validate.show(plane)}")
        W, layout = self._controls()
        ts = np.linspace(0.0, 1.0, n)
        c = torch.as_tensor(curve_coefficients(self.curve, ts, len(self.bends)))
        P = _points(W.to(torch.float64), c.to(W.device), ts)
        o = layout.flatten(plane.origin).to(torch.float64)
        E = torch.stack([layout.flatten(d).to(torch.float64) for d in plane.directions])
        return ((P - o) @ E.T).cpu().numpy()

    def surface(self, obj: Objective | None = None, *, n=(31, 31), span=None, margin=0.25, **kw):
        """The loss on the plane through θA, θB and the bend, with the curve drawn on it.

        :func:`lossviz.surface` on :meth:`plane` (over a span that shows the three points
        and the curve, with ``margin``), the curve overlaid as the path ``"curve"`` and the
        straight line as ``"line"``. With ``bn="recompute"`` (this result's, unless given)
        the BatchNorm statistics are re-estimated at every grid point.

        Args:
            obj: the :class:`~lossviz.Objective` (default: the one this result was
                computed with).
            n: grid points per axis (as :func:`lossviz.surface`).
            span: ``((x_lo, x_hi), (y_lo, y_hi))`` (default: around the points and the
                curve).
            margin: the margin around them, a fraction of their extent.
            **kw: other keywords of :func:`lossviz.surface` (``metrics``, ``bn``,
                ``bn_data``, ``progress``, ...).

        Returns:
            A :class:`~lossviz.Surface` with ``paths["curve"]``, ``paths["line"]`` and
            the points ``"A"``, ``"B"``, ``"bend"``.

        Raises:
            LossvizError: no Objective (none given, none kept); as :meth:`plane` and
                :func:`lossviz.surface`.
            ArgumentTypeError: as :func:`lossviz.surface`.
        """
        from .landscape import surface

        obj = self.objective if obj is None else obj
        if obj is None:
            raise LossvizError("this CurveResult has no Objective: pass obj=")
        margin = validate.number(margin, "margin", low=0.0)
        plane = self.plane()
        xy = self.coords(plane)
        if span is None:
            pts = np.concatenate([xy, np.array(list(plane.points.values()))])
            lo, hi = pts.min(0), pts.max(0)
            w = max(float((hi - lo).max()), 1e-12)
            span = tuple((float(lo[i] - margin * w), float(hi[i] + margin * w)) for i in range(2))
        if self.bn == "recompute":
            kw.setdefault("bn", "recompute")
        center = plane.origin
        at = self.at
        if isinstance(at, tuple) and len(at) == 2:  # the tensors that do not vary: A's
            center = {**obj.resolve(at[0], name="a")[1], **plane.origin}
        s = surface(obj, center, plane, n=n, span=span, **kw)
        s.add_path("curve", xy)
        s.add_path("line", np.array([plane.points["A"], plane.points["B"]]))
        for name, p in plane.points.items():
            s.add_point(name, p)
        return s

    def dashboard(self, **kw):
        """The interpolation dashboard with this curve drawn next to the straight path.

        :func:`lossviz.dash.interpolation` between the endpoints (as given to
        :func:`connect` when they are known, else :attr:`a` and :attr:`b`), on this
        result's ``t`` grid, metrics and ``bn``; the curve is this result's own numbers
        (``InterpolationDashboard.show_curve``), nothing is recomputed for it.

        Args:
            **kw: keywords for the dashboard (e.g. ``bn_data``, ``groups``, ``samples``).

        Returns:
            The dashboard widget.

        Raises:
            LossvizError: this result has no Objective (built by hand, or loaded).
        """
        if self.objective is None:
            raise LossvizError("this CurveResult has no Objective to build a dashboard from")
        from lossviz import dash

        at = self.at
        a, b = at if isinstance(at, tuple) and len(at) == 2 else (self.a, self.b)
        metrics = {k: self.metric_kinds.get(k, k) for k in self.values}
        opts = {"n": len(self.ts), "metrics": metrics, "bn": self.bn}
        d = dash.interpolation(self.objective, a, b, **{**opts, **kw})
        d.show_curve(self)
        return d

    # display ----------------------------------------------------------------------------
    def _state(self) -> str:
        out = []
        if self.stopped == "diverged":
            out.append(
                f"DIVERGED after {self.trained_steps} of {self.steps} steps: the last bends "
                "with a finite loss kept"
            )
        elif self.stopped == "interrupted":
            out.append(
                f"INTERRUPTED after {self.trained_steps} of {self.steps} steps: the bends "
                "trained so far kept"
            )
        if self.evaluated is not None and not np.asarray(self.evaluated).all():
            out.append("INCOMPLETE evaluation: NaN where not evaluated")
        return "; ".join(out)

    def _rows(self):
        rows = []
        for k, v in self.values.items():
            rows.append(
                [
                    k,
                    short(v[0]),
                    short(v[-1]),
                    short(self.max(k, "curve")),
                    short(self.barrier(k, "linear", "curve")),
                    short(self.max(k, "line")),
                    short(self.barrier(k, "linear", "line")),
                ]
            )
        return rows

    def __repr__(self) -> str:
        k = len(self.bends)
        parts = [
            f"{r[0]}: A {r[1]}, B {r[2]}, worst on curve {r[3]} (barrier {r[4]}) vs line "
            f"{r[5]} (barrier {r[6]})"
            for r in self._rows()
        ]
        state = self._state()
        return (
            f"CurveResult({self.curve}, {k} bend{'s' if k > 1 else ''}, "
            f"{self.trained_steps} steps ({self.optimizer}, lr={self.lr:g}), "
            f"{len(self.ts)} t, bn={self.bn!r}; "
            + "; ".join(parts)
            + f"; {self.seconds:.2f} s"
            + (f"; {state}" if state else "")
            + ")"
        )

    def _repr_html_(self) -> str:
        from .formatting import html_table

        k = len(self.bends)
        state = self._state()
        return html_table(
            [
                "metric",
                "at A",
                "at B",
                "worst on curve",
                "curve barrier (linear)",
                "worst on line",
                "line barrier (linear)",
            ],
            self._rows(),
            f"{self.curve} curve, {k} bend(s), {self.trained_steps} steps, bn={self.bn}"
            + (f" ({state})" if state else ""),
        )

    def plot(self, metrics=None):
        """One panel per metric: the curve and the straight line against ``t``.

        Args:
            metrics: a metric name or a list of them (default: all of this result's).

        Returns:
            A plotly ``Figure``.

        Raises:
            LossvizError: an unknown metric.
        """
        import plotly.graph_objects as go
        from plotly.subplots import make_subplots

        names = (
            list(self.values)
            if metrics is None
            else ([metrics] if isinstance(metrics, str) else list(metrics))
        )
        for m in names:
            self[m]
        fig = make_subplots(
            rows=len(names),
            cols=1,
            shared_xaxes=True,
            subplot_titles=[
                f"{m}: barrier {short(self.barrier(m))} on the curve, "
                f"{short(self.barrier(m, path='line'))} on the line"
                for m in names
            ],
        )
        for r, m in enumerate(names, 1):
            show = r == 1
            fig.add_trace(
                go.Scatter(
                    x=self.ts,
                    y=self.values[m],
                    mode="lines+markers",
                    name=f"{self.curve} curve",
                    line={"color": "#d62728"},
                    showlegend=show,
                ),
                row=r,
                col=1,
            )
            fig.add_trace(
                go.Scatter(
                    x=self.ts,
                    y=self.line_values[m],
                    mode="lines+markers",
                    name="straight line",
                    line={"color": "#1f77b4", "dash": "dash"},
                    showlegend=show,
                ),
                row=r,
                col=1,
            )
            fig.update_yaxes(title_text=m, row=r, col=1)
        fig.update_xaxes(title_text="t", row=len(names), col=1)
        state = self._state()
        fig.update_layout(
            title=f"{self.curve} curve with {len(self.bends)} bend(s) vs the straight line"
            + (f" ({state})" if state else ""),
            template="plotly_white",
        )
        return fig

    def plot_training(self):
        """The loss of every training step (at its random ``t``) and a running mean.

        Returns:
            A plotly ``Figure``.
        """
        import plotly.graph_objects as go

        y = np.asarray(self.train_loss, dtype=np.float64)
        x = np.arange(1, len(y) + 1)
        w = max(1, len(y) // 20)
        run = np.convolve(y, np.ones(w) / w, mode="valid") if len(y) >= w else y
        fig = go.Figure(
            [
                go.Scatter(x=x, y=y, mode="markers", name="step loss", marker={"size": 3}),
                go.Scatter(x=x[w - 1 :], y=run, mode="lines", name=f"mean of {w}"),
            ]
        )
        fig.update_layout(
            title="training the bends: E_t L(φ(t))",
            xaxis_title="step",
            yaxis_title="loss",
            template="plotly_white",
        )
        return fig


# training -------------------------------------------------------------------------------
def _bn_layers(model: nn.Module) -> list[str]:
    """Names (prefixes) of the BatchNorm layers that keep running statistics."""
    return [
        name
        for name, m in model.named_modules()
        if isinstance(m, nn.modules.batchnorm._BatchNorm)
        and m.track_running_stats
        and m.running_mean is not None
    ]


def _check_fixed(obj: Objective, fa: dict, fb: dict, bn_free: bool) -> None:
    """The tensors that do not vary must be the same at both ends.

    A curve moves the varying parameters only; BatchNorm running statistics may differ
    when they are re-estimated (``bn_free``).
    """
    stats = {(f"{p}." if p else "") + s for p in _bn_layers(obj.model) for s in _BN_STATS}
    bad = [
        k
        for k in fa
        if not (bn_free and k in stats)
        and not (
            fa[k].shape == fb[k].shape and fa[k].dtype == fb[k].dtype and torch.equal(fa[k], fb[k])
        )
    ]
    if bad:
        bn_hint = (
            "; they are BatchNorm statistics: use bn='recompute'"
            if all(k in stats for k in bad)
            else "; a curve moves only the varying parameters: make them vary (params= of "
            "the Objective) or give a and b the same values"
        )
        raise LossvizError(
            f"a and b differ in tensors that do not vary: {bad[:6]}"
            + (" …" if len(bad) > 6 else "")
            + bn_hint
        )


class _TrainLoss:
    """The loss on one batch at a flat point, differentiable in the point.

    Through the Objective (:meth:`Objective.batch_loss`), except with BatchNorm statistics
    re-estimated for evaluation (``bn="recompute"``): then the BatchNorm layers of a private
    copy of the model run in training mode (batch statistics, as Garipov et al. train their
    curves), on copies of the buffers.
    """

    def __init__(self, obj: Objective, fixed: dict, batch_stats: bool):
        self.obj, self.fixed = obj, fixed
        self.module = None
        if batch_stats:
            m = obj.module_copy()
            for mod in m.modules():
                if isinstance(mod, nn.modules.batchnorm._BatchNorm):
                    mod.train()
            self.module = m
            self.buffers = {n for n, _ in m.named_buffers()}

    def __call__(self, theta: Tensor, batch) -> Tensor:
        obj = self.obj
        if self.module is None:
            return obj.batch_loss(theta, self.fixed, batch)
        tensors = {k: (v.clone() if k in self.buffers else v) for k, v in self.fixed.items()}
        tensors.update(obj.layout.unflatten(theta))
        m = self.module
        with reparametrized(m, tensors):
            if obj.forward is not None:
                loss = obj.forward(m, batch)
            else:
                loss = obj.loss_fn(call_model(m, batch[0]), batch[1])
        if not isinstance(loss, Tensor) or loss.numel() != 1:
            raise LossvizError("the loss must be a scalar tensor")
        return loss.reshape(())


def _batch_source(obj: Objective, data):
    """An endless iterator of training batches: ``data`` (or the Objective's) in turn."""
    if data is None:
        while True:
            for b, _ in obj.batches():
                yield b
    else:
        batches = [to_device(b, obj.device) for b in data]
        while True:
            yield from batches


def _schedule(kind: str, steps: int):
    """The learning-rate factor at step ``s``: Garipov et al.'s schedule, or 1.

    ``"garipov"``: 1 for the first half, then linearly to 0.01 at 90 % of the steps, then
    0.01.
    """
    if kind == "constant":
        return lambda s: 1.0

    def f(s):
        a = s / steps
        if a <= 0.5:
            return 1.0
        if a <= 0.9:
            return 1.0 - (a - 0.5) / 0.4 * 0.99
        return 0.01

    return f


def _train(fa, fb, bends, loss_at, batches, coef_all, opt, sched, wd, progress, check_every):
    """Train ``bends`` in place; ``(losses, steps done, stop reason)``.

    No host synchronisation inside a block of ``check_every`` steps: the loss of each step
    and whether it is finite stay on the device; the bends of the last step whose loss was
    finite (before the first non-finite one) are kept in ``good``.
    """
    from tqdm.auto import tqdm

    steps = coef_all.shape[0]
    dev = fa.device
    hist = torch.full((steps,), float("nan"), dtype=torch.float64, device=dev)
    good = bends.detach().clone()
    bad = torch.zeros((), dtype=torch.bool, device=dev)
    first_bad = torch.full((), -1, dtype=torch.int64, device=dev)
    bar = tqdm(total=steps, desc="curve: training", unit="step", disable=not progress, leave=False)
    done, stop = 0, None
    try:
        for s in range(steps):
            c = coef_all[s]
            theta = c[0] * fa + c[-1] * fb + c[1:-1] @ bends
            loss = loss_at(theta, next(batches))
            total = loss + 0.5 * wd * theta.pow(2).sum() if wd else loss
            hist[s] = loss.detach().to(torch.float64)
            ok = torch.isfinite(total.detach()) & torch.isfinite(bends.detach()).all() & ~bad
            good.copy_(torch.where(ok, bends.detach(), good))
            first_bad.copy_(torch.where(~ok & ~bad, s, first_bad))
            bad |= ~ok
            opt.zero_grad(set_to_none=True)
            total.backward()
            opt.step()
            done = s + 1
            sched.step()
            bar.update(1)
            if done % check_every == 0 or done == steps:
                if bool(bad):
                    stop = "diverged"
                    break
                bar.set_postfix(
                    loss=f"{float(hist[max(0, s - check_every + 1) : s + 1].mean()):.4g}"
                )
    except KeyboardInterrupt:
        if not keep_partial():
            raise
        stop = "interrupted"
    finally:
        bar.close()
    if bool(bad):  # (also when interrupted before the divergence was seen)
        stop = "diverged"
    losses = hist.cpu().numpy()
    if stop == "diverged":
        # back to the bends of the last step whose loss was finite
        with torch.no_grad():
            bends.copy_(good)
        # step ``first_bad`` (0-based) met a non-finite loss at the bends of
        # ``first_bad`` updates; the last finite one was at ``first_bad - 1`` updates
        first = int(first_bad)
        losses = losses[: first + 1]
        done = max(first - 1, 0)
    else:
        # finished or interrupted: the bends of the last completed step (an update is
        # one tensor operation, so an interrupt never leaves half of one)
        losses = losses[:done]
    return losses, done, stop


@api
def connect(
    obj: Objective,
    a,
    b,
    *,
    curve: str = "bezier",
    bends: int = 1,
    steps: int = 500,
    lr: float = 0.05,
    optimizer: str = "sgd",
    momentum: float = 0.9,
    weight_decay: float = 0.0,
    schedule: str = "garipov",
    init=None,
    data=None,
    n: int = 25,
    metrics=None,
    bn: str | None = None,
    bn_data=None,
    seed: int = 0,
    progress=None,
    **kw,
) -> CurveResult:
    """Train a low-loss curve between ``a`` and ``b`` (mode connectivity).

    Garipov, Izmailov, Podoprikhin, Vetrov, Wilson 2018, "Loss Surfaces, Mode
    Connectivity, and Fast Ensembling of DNNs". The curve ``φ_w(t) = Σ_i c_i(t)·w_i``
    (:func:`curve_coefficients`: a Bezier curve or a polygonal chain) has the fixed ends
    ``w_0 = θA``, ``w_{k+1} = θB`` and ``k = bends`` bends, initialised on the straight line
    (``w_j = θA + j/(k+1)·(θB - θA)``) and trained to minimise

        ``ℓ(w) = E_{t~U(0,1)} [ L(φ_w(t)) ]  (+ ½·weight_decay·||φ_w(t)||²)``

    by stochastic gradient steps: each step draws one ``t`` uniformly and takes the next
    batch of ``data``, as Garipov et al. do. Then every metric is evaluated at ``n`` evenly
    spaced ``t`` along the curve and along the straight line ``(1-t)·θA + t·θB`` (one
    batched pass through :class:`lossviz.engine.Engine`).

    BatchNorm: with ``bn="recompute"`` (the default for a model with BatchNorm running
    statistics) the running statistics are re-estimated at every evaluated point, on
    ``bn_data`` (evaluating with the endpoints' or interpolated statistics is wrong on a
    curve; Garipov et al.). While training, the BatchNorm layers then use batch
    statistics (training mode, on private copies of the buffers), as Garipov et al.
    train their curves. Without BatchNorm, or with ``bn="eval"``, training and evaluation
    use the Objective as it is.

    The tensors that do not vary (buffers, frozen parameters) must be the same in ``a``
    and ``b`` (BatchNorm statistics excepted with ``bn="recompute"``): a curve moves the
    varying parameters only. The endpoints are never changed: ``φ(0)`` is exactly θA and
    ``φ(1)`` exactly θB.

    A non-finite loss while training (a learning rate too large) stops the training with
    a warning; the last bends whose loss was finite are kept and the result says so
    (``stopped="diverged"``, ``complete=False``). Ctrl-C while training keeps the bends
    trained so far (``stopped="interrupted"``) and still evaluates them; Ctrl-C while
    evaluating leaves NaN where not evaluated. Either way ``complete`` is False.

    Args:
        obj: the :class:`~lossviz.Objective` (model, loss, data; never changed).
        a: the first endpoint θA: a model, a state dict, :class:`~lossviz.Weights` or a
            checkpoint path.
        b: the second endpoint θB (same forms, same architecture).
        curve: ``"bezier"`` or ``"polychain"``.
        bends: the number of bends ``k`` (at least 1; 1 gives the quadratic Bezier).
        steps: training steps (at least 1).
        lr: the learning rate (> 0).
        optimizer: ``"sgd"`` (with ``momentum``, as Garipov et al.) or ``"adam"``.
        momentum: the SGD momentum in [0, 1) (ignored by Adam).
        weight_decay: ``wd >= 0`` of the ``½·wd·||φ(t)||²`` term (Garipov et al. use
            5e-4 on CIFAR).
        schedule: ``"garipov"`` (the learning rate constant for half the steps, then
            linearly down to 1 % at 90 %, then 1 %) or ``"constant"``.
        init: where the bends start: None (on the straight line), a list of ``bends``
            points (models, state dicts, Weights, checkpoint paths; their varying
            parameters), or a :class:`CurveResult` with as many bends (to train on from
            its bends, e.g. after Ctrl-C).
        data: the training batches: one batch or an iterable of batches (default: the
            Objective's data), used in turn.
        n: the number of ``t`` evaluated, evenly spaced, both ends included (at least 2).
        metrics: as :func:`lossviz.interpolate` (default loss and, where it applies,
            accuracy).
        bn: None (``"recompute"`` for a model with BatchNorm running statistics and an
            Objective built with ``bn="eval"``, else the Objective's setting),
            ``"eval"`` (the Objective's setting) or ``"recompute"``.
        bn_data: the batches for ``bn="recompute"`` (default: the Objective's data).
        seed: the seed of the random ``t`` (an integer >= 0).
        progress: show progress bars (default on unless ``LOSSVIZ_PROGRESS=0``).
        **kw: ``precision``, ``batched``, ``chunk_size`` of the evaluation (as
            :func:`lossviz.evaluate`).

    Returns:
        :class:`CurveResult`: the bends, the metrics along the curve and the line, their
        barriers, ``.point(t)``, ``.plot()``, ``.surface()``.

    Raises:
        ArgumentTypeError: ``obj`` is not an Objective; an argument of the wrong type; an
            unknown keyword.
        LossvizError: an unknown ``curve`` / ``optimizer`` / ``schedule`` / ``bn``;
            ``init`` with another number of points than ``bends``; ``bends < 1``,
            ``steps < 1``, ``n < 2``; ``lr <= 0``, ``momentum`` outside [0, 1),
            ``weight_decay < 0``; ``a`` and ``b`` differ in tensors that do not vary;
            ``bn="recompute"`` without BatchNorm running statistics; a metric that does
            not apply; a distributed Objective.
        CheckpointError: ``a``, ``b`` or a point of ``init`` does not match the model
            (another architecture: other parameter names or shapes).
        DataError: ``data`` or ``bn_data`` is empty.

    On ``L(w) = (|w|² - 1)²`` (a ring-shaped valley) the straight line between two points
    of the ring cuts through the middle, a quadratic Bezier curve goes round:

    >>> class Ring(nn.Module):
    ...     def __init__(self):
    ...         super().__init__()
    ...         self.w = nn.Parameter(torch.zeros(2, dtype=torch.float64))
    ...     def forward(self, x):
    ...         return x * self.w.pow(2).sum()
    >>> x = torch.ones(1, 1, dtype=torch.float64)
    >>> obj = Objective(Ring(), nn.functional.mse_loss, (x, x))
    >>> a = {"w": torch.tensor([1.0, 0.0], dtype=torch.float64)}
    >>> b = {"w": torch.tensor([-0.5, 0.75**0.5], dtype=torch.float64)}
    >>> r = connect(obj, a, b, steps=300, lr=0.1, n=21, metrics="loss", progress=False)
    >>> bool(r.max("loss") < 0.05 < 0.5 < r.max("loss", path="line"))
    True
    """
    t0 = time.perf_counter()
    check_objective(obj)
    obj.require_local("connect")
    validate.choice(curve, "curve", CURVES)
    k = validate.integer(bends, "bends", low=1)
    steps = validate.integer(steps, "steps", low=1)
    lr = validate.number(lr, "lr", low=0.0, low_open=True)
    validate.choice(optimizer, "optimizer", _OPTIMIZERS)
    momentum = validate.number(momentum, "momentum", low=0.0, high=1.0, high_open=True)
    wd = validate.number(weight_decay, "weight_decay", low=0.0)
    validate.choice(schedule, "schedule", _SCHEDULES)
    n = validate.integer(n, "n", low=2)
    seed = validate.seed(seed)
    show = validate.progress(progress)
    validate.choice(bn, "bn", (None, "eval", "recompute"))
    if bn is None:
        bn = "recompute" if obj.bn == "eval" and _bn_layers(obj.model) else "eval"
    ekw = check_engine_args(
        obj,
        bn=None if bn == "eval" else bn,
        bn_data=bn_data,
        progress=progress,
        bn_choices=(None, "recompute"),
        **kw_engine(kw, ("precision", "batched", "chunk_size")),
    )
    if init is not None:
        pts = init.bends if isinstance(init, CurveResult) else init
        if isinstance(pts, (str, bytes, Tensor, nn.Module)) or not isinstance(pts, (list, tuple)):
            raise ArgumentTypeError(
                f"init must be None, a list of {k} points or a CurveResult, got "
                f"{type(init).__name__}"
            )
        if len(pts) != k:
            raise LossvizError(f"init holds {len(pts)} point(s), bends={k} asks for {k}")
    train_data = None
    if data is not None:
        from .engine import check_data

        train_data = check_data(data, "data")
    optional: tuple = ()
    if metrics is None:
        metrics, optional = (
            (("loss",), ()) if obj.forward is not None else (("loss", "accuracy"), ("accuracy",))
        )
    resolve_metrics(obj, metrics)
    fa, xa = obj.resolve(a, name="a")
    fb, xb = obj.resolve(b, name="b")
    recompute = bn == "recompute"
    _check_fixed(obj, xa, xb, bn_free=recompute or obj.bn == "train")
    mk, rules = check_metrics(
        obj, resolve_metrics(obj, metrics), fa, xa, optional=optional, precision=ekw["precision"]
    )
    loss_at = _TrainLoss(obj, xa, batch_stats=recompute)

    # the bends (on the straight line unless given); the t of every step, drawn up front
    if init is None:
        j = torch.arange(1, k + 1, dtype=torch.float64, device=fa.device)[:, None] / (k + 1)
        w = (fa.to(torch.float64) + j * (fb - fa).to(torch.float64)).to(fa.dtype)
    else:
        w = torch.stack([obj.resolve(p, name=f"init[{i}]")[0] for i, p in enumerate(pts)])
    w.requires_grad_(True)
    g = torch.Generator().manual_seed(seed)
    t_all = torch.rand(steps, generator=g, dtype=torch.float64).numpy()
    coef_all = torch.as_tensor(curve_coefficients(curve, t_all, k)).to(fa.device, fa.dtype)
    if optimizer == "sgd":
        opt = torch.optim.SGD([w], lr=lr, momentum=momentum)
    else:
        opt = torch.optim.Adam([w], lr=lr)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, _schedule(schedule, steps))
    with torch.enable_grad():
        losses, done, stop = _train(
            fa,
            fb,
            w,
            loss_at,
            _batch_source(obj, train_data),
            coef_all,
            opt,
            sched,
            wd,
            show,
            check_every=10,
        )
    bends_flat = w.detach()
    if stop == "diverged":
        warn(
            f"connect: the loss became non-finite at training step {len(losses)} of {steps} "
            f"(lr={lr:g} too large?); training stopped and the bends of the last step with "
            "a finite loss are kept (result marked stopped='diverged')"
        )
    elif stop == "interrupted":
        warn(
            f"connect: interrupted after {done} of {steps} training steps; the bends trained "
            "so far are kept and evaluated (result marked stopped='interrupted')"
        )

    # evaluation: the curve and the straight line at the same t, in one batched pass
    ts = np.linspace(0.0, 1.0, n)
    controls = torch.cat([fa[None], bends_flat, fb[None]])
    coef = torch.as_tensor(curve_coefficients(curve, ts, k)).to(fa.device)
    P = torch.cat([_points(controls, coef, ts), _line(fa, fb, ts)])
    eng = Engine(obj, mk, xa, rules=rules, **ekw)
    ev = eng.evaluate(
        P,
        progress=progress,
        desc="curve: evaluating",
        where=lambda i: f"{'curve' if i < n else 'line'} t={ts[i % n]:.3g}",
    )
    names = list(eng.metrics)
    values = {m: np.asarray(ev[m][:n]) for m in names}
    line_values = {m: np.asarray(ev[m][n:]) for m in names}
    evaluated = np.asarray(ev.evaluated, dtype=bool).reshape(2, n)
    layout = obj.layout
    return CurveResult(
        curve=curve,
        ts=ts,
        values=values,
        line_values=line_values,
        metric_kinds={m: v if isinstance(v, str) else m for m, v in mk.items()},
        a=layout.to_weights(fa.clone()),
        b=layout.to_weights(fb.clone()),
        bends=[layout.to_weights(bends_flat[i].clone()) for i in range(k)],
        train_loss=losses,
        steps=steps,
        trained_steps=done,
        lr=lr,
        optimizer=optimizer,
        bn=bn,
        stopped=stop,
        seconds=time.perf_counter() - t0,
        complete=bool(ev.complete and stop is None and evaluated.all()),
        evaluated=evaluated,
        provenance=Provenance.of(obj, kernel="connect", at=(a, b)),
    )
