"""Averages of the weights along a training run: SWA, EMA, LAWA, Switch-EMA.

Every average here is a fixed linear combination ``θ̄ = Σ_i c_i θ_i`` of the stored
snapshots ``θ_0, …, θ_{n-1}`` (at steps ``s_0 < … < s_{n-1}``) with ``Σ_i c_i = 1``;
:func:`average_coefficients` gives the ``c_i``, :func:`average_trajectory` the weights
(sums in float64), :func:`compare_averages` each average's loss, accuracy, ``λ_max``,
``tr(H)`` and ρ-sharpness next to the last iterate's.

- ``"swa"``: stochastic weight averaging (Izmailov, Podoprikhin, Garipov, Vetrov, Wilson
  2018, "Averaging Weights Leads to Wider Optima and Better Generalization"): the uniform
  mean of the snapshots with ``s_i >= start`` (default: the later half, ``i >= n // 2``).
- ``"ema"``: the exponential moving average with decay ``β`` computed post hoc from the
  snapshots. A run that updated its EMA every step has ``e_t = β e_{t-1} + (1-β) θ_t``;
  between two stored snapshots the iterates are not known, so each of the
  ``Δ_i = s_i - s_{i-1}`` steps of the gap is taken to hold ``θ_{s_i}`` (the iterate
  recorded at its end):

      e_0 = θ_0,    e_i = β^{Δ_i} e_{i-1} + (1 - β^{Δ_i}) θ_i

  which is the training-time EMA exactly when every step is stored (``Δ_i = 1``), and
  with unequal gaps weights each snapshot by the length of the gap it closes.
  ``per="snapshot"`` takes ``Δ_i = 1`` for every gap (one EMA update per snapshot).
- ``"lawa"``: latest weight averaging (Kaddour 2022, "Stop Wasting My Time! Saving Days of
  ImageNet and BERT Training with Latest Weight Averaging"; Sanyal, Neelakantan, Bengio,
  Sun 2023, "Early Weight Averaging meets High Learning Rates for LLM Pre-training"): the
  uniform mean of the last ``k`` snapshots.
- ``"switch_ema"``: Switch-EMA (Li, Liu, Tian, Wang, Tang, Lin, Wu, Li, Li 2024, "Switch
  EMA: A Free Lunch for Better Flatness and Sharpness") copies the EMA into the iterate at
  every switch (each epoch) and trains on from there: the iterates of a switched run differ
  from the recorded ones, so it cannot be recomputed from a run that did not switch. What
  is computed is a *replay*: the recorded updates ``θ_i - θ_{i-1}`` are re-applied to the
  switched iterate ``u`` (``u_0 = θ_0``, ``u_i = u_{i-1} + θ_i - θ_{i-1}``, ``e_i`` as for
  ``"ema"`` on ``u_i``, and ``u_i ← e_i`` after a switch at ``i``). This equals the switched
  run exactly when the updates do not depend on the weights (e.g. SGD on a loss linear in
  them); on a curved loss it ignores that the gradient at the switched point differs, and
  with a switch after every snapshot it reduces to ``θ_0 + Σ_i (1-β^{Δ_i})(θ_i - θ_{i-1})``
  (the updates scaled down): far behind the real Switch-EMA. It warns each time. For the
  real thing, switch in the training loop, record that run and use ``"ema"``.

Tensors that are not floating point (BatchNorm's ``num_batches_tracked``) are not averaged:
the last snapshot's are taken. Floating-point buffers (BatchNorm running mean and
variance) are averaged with the same coefficients (for ``"switch_ema"``, whose replay
coefficients can be negative, tensors named ``*.running_mean`` / ``*.running_var`` get the
``"ema"`` coefficients so a variance stays positive); the averaged statistics are not the
statistics of the averaged network, so :func:`compare_averages` offers
``bn="recompute"`` (re-estimated with :func:`lossviz.reset_bn`, as
``torch.optim.swa_utils.update_bn`` does for SWA).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from numbers import Real

import numpy as np
import torch

from . import validate
from .engine import check_bn, check_objective
from .errors import CheckpointError, LossvizError, warn
from .formatting import html_table, short
from .interrupt import api, keep_partial
from .points import as_points
from .provenance import Provenance
from .results import DataResult
from .weights import Weights, state_of

__all__ = [
    "KINDS",
    "AveragesComparison",
    "average_coefficients",
    "average_trajectory",
    "compare_averages",
]

#: the averages :func:`average_trajectory` computes
KINDS = ("swa", "ema", "lawa", "switch_ema")
_BN_STATS = ("running_mean", "running_var")


# coefficients ---------------------------------------------------------------------------
def _steps(labels: list, keyed: bool, per: str) -> np.ndarray:
    """The snapshots' steps as float64 (positions for ``per="snapshot"`` or a list)."""
    if per == "snapshot" or not keyed:
        return np.arange(len(labels), dtype=np.float64)
    bad = [lab for lab in labels if isinstance(lab, bool) or not isinstance(lab, Real)]
    if bad:
        raise LossvizError(
            f"per='step' needs numeric steps as labels, got {bad[:5]}: label the checkpoints "
            "by their training step (a dict step -> checkpoint) or pass per='snapshot'"
        )
    s = np.asarray([float(lab) for lab in labels], dtype=np.float64)
    if not np.all(np.isfinite(s)):
        raise LossvizError(f"the steps must be finite, got {labels[:10]}")
    if len(s) > 1 and not np.all(np.diff(s) > 0):
        i = int(np.flatnonzero(np.diff(s) <= 0)[0])
        raise LossvizError(
            f"the steps must increase strictly: step {labels[i + 1]!r} follows {labels[i]!r} "
            "(a recorder's steps repeat after snapshot(step=...)? pass per='snapshot')"
        )
    return s


def _ema(s: np.ndarray, decay: float) -> np.ndarray:
    c = np.zeros(len(s))
    c[0] = 1.0
    for i in range(1, len(s)):
        a = decay ** (s[i] - s[i - 1])
        c *= a
        c[i] += 1.0 - a
    return c


def _switch_ema(s: np.ndarray, decay: float, every: float | None) -> np.ndarray:
    n = len(s)
    eye = np.eye(n)
    u, e = eye[0].copy(), eye[0].copy()
    for i in range(1, n):
        a = decay ** (s[i] - s[i - 1])
        u = u + eye[i] - eye[i - 1]
        e = a * e + (1.0 - a) * u
        if every is None or math.floor(s[i] / every) > math.floor(s[i - 1] / every):
            u = e.copy()
    return e


def _check_kind_args(kind, decay, start, k, per, switch_every):
    kind = validate.choice(kind, "kind", KINDS)
    per = validate.choice(per, "per", ("step", "snapshot"))
    if kind in ("ema", "switch_ema"):
        if decay is None:
            raise LossvizError(f"kind={kind!r} needs decay= (β in [0, 1), e.g. 0.99)")
        decay = validate.number(decay, "decay", low=0, high=1, high_open=True)
    elif decay is not None:
        raise LossvizError(f"decay= is only used with kind='ema' or 'switch_ema', not {kind!r}")
    if kind == "lawa":
        if k is None:
            raise LossvizError("kind='lawa' needs k= (how many of the latest snapshots)")
        k = validate.integer(k, "k", low=1)
    elif k is not None:
        raise LossvizError(f"k= is only used with kind='lawa', not {kind!r}")
    if kind == "swa":
        start = validate.number(start, "start", none=True)
    elif start is not None:
        raise LossvizError(f"start= is only used with kind='swa', not {kind!r}")
    if kind == "switch_ema":
        switch_every = validate.number(
            switch_every, "switch_every", low=0, low_open=True, none=True
        )
    elif switch_every is not None:
        raise LossvizError(f"switch_every= is only used with kind='switch_ema', not {kind!r}")
    return kind, decay, start, k, per, switch_every


def _coefficients(labels, keyed, kind, decay, start, k, per, switch_every) -> np.ndarray:
    n = len(labels)
    if kind == "swa":
        s = _steps(labels, keyed, "step")
        if start is None:
            sel = np.arange(n) >= n // 2
        else:
            sel = s >= start
            if not sel.any():
                raise LossvizError(
                    f"start={start:g} is after the last snapshot (step {labels[-1]!r}): no "
                    "snapshot to average"
                )
        c = sel.astype(np.float64)
        return c / c.sum()
    if kind == "lawa":
        if k > n:
            raise LossvizError(f"k={k} but there are only {n} snapshots")
        c = np.zeros(n)
        c[n - k :] = 1.0 / k
        return c
    s = _steps(labels, keyed, per)
    if kind == "ema":
        return _ema(s, decay)
    return _switch_ema(s, decay, switch_every)


def average_coefficients(
    points,
    *,
    kind: str,
    decay: float | None = None,
    start: float | None = None,
    k: int | None = None,
    per: str = "step",
    switch_every: float | None = None,
) -> np.ndarray:
    """The coefficients ``c_i`` of an average ``θ̄ = Σ_i c_i θ_i`` of snapshots (``Σ c_i = 1``).

    See the module docstring for each ``kind``; ``"ema"``: ``e_0 = θ_0``,
    ``e_i = β^{Δ_i} e_{i-1} + (1 - β^{Δ_i}) θ_i`` with ``Δ_i = s_i - s_{i-1}`` (the steps
    between snapshots; 1 with ``per="snapshot"``), so ``c_i = (1 - β^{Δ_i}) Π_{j>i} β^{Δ_j}``
    and ``c_0 = Π_{j>0} β^{Δ_j}``.

    Args:
        points: the snapshots (a list, a dict ``step -> point`` or a
            :class:`~lossviz.TrajectoryRecorder`; only their labels are read: for bare
            steps pass ``dict.fromkeys(steps)``).
        kind: ``"swa"``, ``"ema"``, ``"lawa"`` or ``"switch_ema"``.
        decay: ``β`` in ``[0, 1)`` for ``"ema"`` / ``"switch_ema"`` (per step).
        start: ``"swa"``: average the snapshots with step ``>= start`` (default: the later
            half by position, ``i >= n // 2``).
        k: ``"lawa"``: the number of latest snapshots.
        per: ``"step"`` (``Δ_i`` from the labels, which must be increasing numbers; a plain
            list is labelled ``0, 1, …``) or ``"snapshot"`` (``Δ_i = 1``).
        switch_every: ``"switch_ema"``: switch at each snapshot ``i`` whose gap
            ``(s_{i-1}, s_i]`` holds a multiple of ``switch_every`` steps (None: at every
            snapshot).

    Returns:
        A float64 array of one coefficient per snapshot.

    Raises:
        ArgumentTypeError: ``points`` is a single point or not a list / dict / recorder;
            a number of the wrong type.
        LossvizError: an unknown ``kind`` or ``per``; an argument missing for the kind
            or given to another kind; ``decay`` outside ``[0, 1)``; ``k`` above the number
            of snapshots; ``start`` after the last step; labels that are not increasing
            numbers with ``per="step"``.

    >>> average_coefficients({0: None, 1: None, 3: None}, kind="ema", decay=0.5).tolist()
    [0.125, 0.125, 0.75]
    >>> average_coefficients([None] * 4, kind="lawa", k=3).tolist()
    [0.0, 0.3333333333333333, 0.3333333333333333, 0.3333333333333333]
    """
    kind, decay, start, k, per, switch_every = _check_kind_args(
        kind, decay, start, k, per, switch_every
    )
    labels, _, keyed = as_points(points, "points")
    return _coefficients(labels, keyed, kind, decay, start, k, per, switch_every)


# averaging ------------------------------------------------------------------------------
def _states(points, name: str) -> tuple[list, list[dict], bool]:
    labels, pts, keyed = as_points(points, name)
    states = [state_of(p, f"{name}[{lab!r}]") for lab, p in zip(labels, pts)]
    ref, r = states[0], f"{name}[{labels[0]!r}]"
    for lab, st in zip(labels[1:], states[1:]):
        only_ref = [key for key in ref if key not in st]
        only_st = [key for key in st if key not in ref]
        shapes = [
            f"{key}: {tuple(ref[key].shape)} vs {tuple(st[key].shape)}"
            for key in ref
            if key in st and ref[key].shape != st[key].shape
        ]
        kinds = [
            f"{key}: {ref[key].dtype} vs {st[key].dtype}"
            for key in ref
            if key in st and ref[key].is_floating_point() != st[key].is_floating_point()
        ]
        if only_ref or only_st or shapes or kinds:
            parts = [f"keys only in {r}: {only_ref[:10]}"] if only_ref else []
            parts += [f"keys only in {name}[{lab!r}]: {only_st[:10]}"] if only_st else []
            parts += [f"shape mismatches: {shapes[:10]}"] if shapes else []
            parts += [f"floating vs integer: {kinds[:10]}"] if kinds else []
            raise CheckpointError(
                f"{name}[{lab!r}] and {r} are not the same architecture (cannot average "
                "them): " + "; ".join(parts)
            )
    return labels, states, keyed


def _combine(states: list[dict], c: np.ndarray, c_stats: np.ndarray | None = None) -> Weights:
    """``Σ_i c_i θ_i`` per tensor in float64 (non-floating tensors: the last snapshot's)."""
    last = states[-1]
    out = {}
    for key, v in last.items():
        if not v.is_floating_point():
            out[key] = v.clone()
            continue
        cc = c_stats if c_stats is not None and key.rsplit(".", 1)[-1] in _BN_STATS else c
        acc = torch.zeros(v.shape, dtype=torch.float64, device=v.device)
        for ci, st in zip(cc.tolist(), states):
            if ci != 0.0:
                acc.add_(st[key].to(v.device, torch.float64), alpha=ci)
        out[key] = acc.to(v.dtype)
    return Weights(out)


_REPLAY = (
    "kind='switch_ema' is a post-hoc replay: the recorded updates are re-applied to the "
    "switched iterate, exact only when the updates do not depend on the weights; on a "
    "curved loss it is an approximation (see lossviz.averaging). For the real Switch-EMA, "
    "switch in the training loop and use kind='ema' on that run"
)


@api
def average_trajectory(
    points,
    *,
    kind: str = "swa",
    decay: float | None = None,
    start: float | None = None,
    k: int | None = None,
    per: str = "step",
    switch_every: float | None = None,
) -> Weights:
    """The average of the snapshots of a training run: SWA, EMA, LAWA or Switch-EMA.

    ``θ̄ = Σ_i c_i θ_i`` with the coefficients of :func:`average_coefficients` (summed in
    float64, cast back to each tensor's dtype):

    - ``"swa"`` (Izmailov et al. 2018): uniform over the snapshots with step ``>= start``;
    - ``"ema"``: ``e_i = β^{Δ_i} e_{i-1} + (1 - β^{Δ_i}) θ_i``, ``e_0 = θ_0``, ``Δ_i`` the
      steps between snapshots (each step of a gap taken to hold the snapshot that ends
      it; exact when every step is stored);
    - ``"lawa"`` (Kaddour 2022; Sanyal et al. 2023): uniform over the latest ``k``;
    - ``"switch_ema"`` (Li et al. 2024): a replay of the recorded updates with the EMA
      switched into the iterate (an approximation on a curved loss: it warns; the module
      docstring says exactly what it is).

    Non-floating tensors (``num_batches_tracked``) come from the last snapshot; floating
    buffers (BatchNorm running statistics) are averaged like the parameters. The
    checkpoints are only read.

    Args:
        points: the snapshots: a :class:`~lossviz.TrajectoryRecorder`, a dict
            ``step -> point`` or a list of points (models, state dicts, Weights,
            checkpoint paths; a list is labelled ``0, 1, …``) of one architecture.
        kind: ``"swa"``, ``"ema"``, ``"lawa"`` or ``"switch_ema"``.
        decay: ``β`` in ``[0, 1)`` (``"ema"``, ``"switch_ema"``), per step.
        start: ``"swa"``: the first step averaged (default: the later half of the
            snapshots).
        k: ``"lawa"``: how many of the latest snapshots.
        per: ``"step"`` (gaps from the labels) or ``"snapshot"`` (one EMA update per
            snapshot).
        switch_every: ``"switch_ema"``: the switch period in steps (None: at every
            snapshot).

    Returns:
        :class:`~lossviz.Weights` with every tensor of the snapshots.

    Raises:
        ArgumentTypeError: ``points`` is a single point or not a list / dict / recorder;
            a point or a number of the wrong type.
        LossvizError: as :func:`average_coefficients` (an unknown kind, a missing or
            misplaced argument, a bad value).
        CheckpointError: snapshots of different architectures (different keys, shapes,
            or a tensor floating in one and integer in another), naming both; a
            checkpoint that cannot be read.

    >>> pts = {0: {"w": torch.tensor([0.0])}, 1: {"w": torch.tensor([2.0])}}
    >>> average_trajectory(pts, kind="ema", decay=0.5)["w"].tolist()
    [1.0]
    """
    kind, decay, start, k, per, switch_every = _check_kind_args(
        kind, decay, start, k, per, switch_every
    )
    labels, states, keyed = _states(points, "points")
    c = _coefficients(labels, keyed, kind, decay, start, k, per, switch_every)
    c_stats = None
    if kind == "switch_ema":
        warn(_REPLAY)
        c_stats = _coefficients(labels, keyed, "ema", decay, None, None, per, None)
    return _combine(states, c, c_stats)


# comparison -----------------------------------------------------------------------------
@dataclass(kw_only=True, repr=False)
class AveragesComparison(DataResult):
    """Weight averages of a run next to its last iterate (:func:`compare_averages`).

    One row per point: ``"last"`` (the raw last snapshot), ``"swa"``, ``"ema(β)"``,
    ``"lawa(k)"``, ``"switch_ema(β)"``. NaN where a column was not computed (interrupted,
    or the column left out).

    Attributes:
        names: the row names.
        coefficients: ``(rows, snapshots)`` the ``c_i`` of each row (``"last"``: a one on
            the last snapshot).
        labels: the snapshots' labels (steps).
        loss: the loss of each row (:func:`lossviz.evaluate`).
        accuracy: the accuracy of each row (NaN when ``accuracy=False``).
        lambda_max: ``λ_max`` of the Hessian (:func:`lossviz.hessian_eigs`; NaN when
            ``curvature=False``).
        lambda_residual: the relative residual of each ``λ_max``.
        trace: ``tr(H)`` (:func:`lossviz.hessian_trace`, Hutchinson).
        trace_stderr: its standard error.
        sharpness: the ρ-sharpness of :func:`lossviz.sharpness` (None when left out).
        sharpness_stderr: its standard error (``kind="average"``; NaN otherwise).
        sharpness_kind: the sharpness ``kind`` used.
        rho: the sharpness radius ρ.
        bn: ``"average"`` (the averaged BatchNorm statistics) or ``"recompute"``.
        notes: what was left out and why.
        complete: False after Ctrl-C: the rows after the interrupted one are NaN.
        seconds: wall time.
        provenance: where it comes from (:class:`~lossviz.provenance.Provenance`;
            None when built by hand).
    """

    names: list
    coefficients: np.ndarray
    labels: list
    loss: np.ndarray
    accuracy: np.ndarray
    lambda_max: np.ndarray
    lambda_residual: np.ndarray
    trace: np.ndarray
    trace_stderr: np.ndarray
    sharpness: np.ndarray | None = None
    sharpness_stderr: np.ndarray | None = None
    sharpness_kind: str = "worst"
    rho: float = 0.05
    bn: str = "average"
    notes: list = field(default_factory=list)
    complete: bool = True
    seconds: float = 0.0

    @property
    def table(self) -> list[dict]:
        """One dict per row: name, loss, accuracy, ``λ_max``, trace, sharpness.

        A column left out (``accuracy=False``, ``curvature=False``) is not in the rows.
        """
        rows = []
        # columns that were left out (all NaN although complete) are not shown
        show = {
            "accuracy": not self.complete or bool(np.isfinite(self.accuracy).any()),
            "curvature": not self.complete or bool(np.isfinite(self.lambda_max).any()),
        }
        for i, nm in enumerate(self.names):
            row = {"average": nm, "loss": float(self.loss[i])}
            if show["accuracy"]:
                row["accuracy"] = float(self.accuracy[i])
            if show["curvature"]:
                row["λ_max"] = float(self.lambda_max[i])
                row["trace"] = float(self.trace[i])
                row["trace std. error"] = float(self.trace_stderr[i])
            if self.sharpness is not None:
                row[f"sharpness({self.sharpness_kind}, ρ={self.rho:g})"] = float(self.sharpness[i])
            rows.append(row)
        return rows

    def row(self, name: str) -> dict:
        """The row named ``name`` (e.g. ``"swa"``, ``"ema(0.99)"``, ``"last"``).

        Args:
            name: a row name (see :attr:`names`).

        Returns:
            The row as a dict.

        Raises:
            KeyError: no row of that name.
        """
        if name not in self.names:
            raise KeyError(f"no row {name!r}; rows: {self.names}")
        return self.table[self.names.index(name)]

    def to_pandas(self):
        """:attr:`table` as a ``pandas.DataFrame`` indexed by the average's name."""
        import pandas as pd

        return pd.DataFrame(self.table).set_index("average")

    def __repr__(self) -> str:
        rows = self.table
        cols = [c for c in rows[0] if c != "trace std. error"]
        cells = [[str(r["average"])] + [short(r[c]) for c in cols[1:]] for r in rows]
        widths = [max(len(c), *(len(r[i]) for r in cells)) for i, c in enumerate(cols)]

        def line(xs):
            return "  ".join(
                s.rjust(w) if i else s.ljust(w) for i, (s, w) in enumerate(zip(xs, widths))
            )

        state = "" if self.complete else ", INCOMPLETE: interrupted"
        head = (
            f"AveragesComparison({len(self.names)} points from {len(self.labels)} snapshots, "
            f"BatchNorm {self.bn}{state})"
        )
        return "\n".join([head, line(cols)] + [line(c) for c in cells] + self.notes)

    def _repr_html_(self) -> str:
        rows = self.table
        cols = list(rows[0])
        body = [[r["average"]] + [short(r[c]) for c in cols[1:]] for r in rows]
        cap = "weight averages vs the last iterate" + (
            "" if self.complete else " INCOMPLETE: interrupted"
        )
        if self.notes:
            cap += " (" + "; ".join(self.notes) + ")"
        return html_table(cols, body, cap)

    def plot(self, what: str = "metrics"):
        """The rows side by side (a plotly figure).

        Args:
            what: ``"metrics"``: one panel per column (loss, accuracy, ``λ_max``, trace
                with ±2 standard errors, sharpness), one bar per row; ``"coefficients"``:
                each average's ``c_i`` against the snapshot.

        Returns:
            The figure.

        Raises:
            LossvizError: an unknown ``what``.
        """
        import plotly.graph_objects as go
        from plotly.subplots import make_subplots

        what = validate.choice(what, "what", ("metrics", "coefficients"))
        if what == "coefficients":
            fig = go.Figure(
                [
                    go.Scatter(x=list(self.labels), y=c, mode="lines+markers", name=nm)
                    for nm, c in zip(self.names, self.coefficients)
                ]
            )
            fig.update_layout(
                title="weight of each snapshot in each average",
                xaxis_title="snapshot (step)",
                yaxis_title="coefficient c_i",
                template="plotly_white",
            )
            return fig
        panels = [("loss", self.loss, None), ("accuracy", self.accuracy, None)]
        panels += [("λ_max", self.lambda_max, None), ("trace", self.trace, 2 * self.trace_stderr)]
        if self.sharpness is not None:
            se = self.sharpness_stderr
            panels.append(
                (
                    f"sharpness ({self.sharpness_kind}, ρ={self.rho:g})",
                    self.sharpness,
                    None if se is None or not np.isfinite(se).any() else 2 * se,
                )
            )
        panels = [p for p in panels if np.isfinite(p[1]).any()]
        fig = make_subplots(rows=1, cols=len(panels), subplot_titles=[p[0] for p in panels])
        for j, (title, v, err) in enumerate(panels, 1):
            fig.add_trace(
                go.Bar(
                    x=list(self.names),
                    y=v,
                    name=title,
                    showlegend=False,
                    error_y=None if err is None else dict(type="data", array=err),
                    marker_color=["firebrick" if n == "last" else "steelblue" for n in self.names],
                ),
                row=1,
                col=j,
            )
        fig.update_layout(
            title="weight averages vs the last iterate (red)",
            template="plotly_white",
            height=380,
            width=max(600, 300 * len(panels)),
        )
        return fig


def _decays(v, name: str) -> list[float]:
    if v is None:
        return []
    if isinstance(v, (str, bytes)) or not hasattr(v, "__iter__"):
        v = [v]
    return [
        validate.number(d, f"{name}[{i}]", low=0, high=1, high_open=True) for i, d in enumerate(v)
    ]


@api
def compare_averages(
    obj,
    points,
    *,
    ema_decays=(0.9, 0.99),
    lawa_k: int | None = 5,
    swa_start: float | None = None,
    last: bool = True,
    swa: bool = True,
    switch_decays=(),
    switch_every: float | None = None,
    per: str = "step",
    accuracy: bool = True,
    curvature: bool = True,
    sharpness: bool = True,
    rho: float = 0.05,
    sharpness_kind: str = "worst",
    bn: str = "average",
    bn_data=None,
    tol: float = 1e-3,
    rtol: float = 0.05,
    max_hvp: int = 300,
    seed: int = 0,
    progress: bool | None = None,
) -> AveragesComparison:
    """Each weight average's loss, accuracy, ``λ_max``, trace and sharpness vs the last iterate.

    The averages of :func:`average_trajectory` (SWA: Izmailov et al. 2018, "Averaging
    Weights Leads to Wider Optima and Better Generalization"; EMA; LAWA: Kaddour 2022;
    Switch-EMA, a replay: Li et al. 2024), side by side with the raw last snapshot. At
    each point: the loss (and accuracy) with :func:`lossviz.evaluate`, ``λ_max`` with
    :func:`lossviz.hessian_eigs`, ``tr(H)`` with :func:`lossviz.hessian_trace`
    (Hutchinson, stopping at ``rtol``) and, when :mod:`lossviz.sharpness` is importable,
    :func:`lossviz.sharpness` at radius ``rho`` (left out otherwise, with a note). SWA's
    claim is that the average sits in a flatter region (lower ``λ_max`` / trace) than the
    iterates it averages. The model is never changed.

    Args:
        obj: the :class:`~lossviz.Objective` (model, loss, data) to evaluate on.
        points: the snapshots (a :class:`~lossviz.TrajectoryRecorder`, a dict
            ``step -> point`` or a list), matching ``obj``'s model.
        ema_decays: the EMA decays ``β`` to compare (``()`` for none).
        lawa_k: LAWA's ``k`` (None: no LAWA row).
        swa_start: SWA's first step (None: the later half of the snapshots).
        last: include the raw last snapshot (row ``"last"``).
        swa: include SWA (row ``"swa"``).
        switch_decays: decays of Switch-EMA replays to add (``()``: none; they warn).
        switch_every: the Switch-EMA switch period in steps (None: every snapshot).
        per: ``"step"`` or ``"snapshot"``: how the EMA counts gaps
            (:func:`average_coefficients`).
        accuracy: also the accuracy (a classification loss).
        curvature: compute ``λ_max`` and the trace.
        sharpness: compute the ρ-sharpness (if :mod:`lossviz.sharpness` is importable).
        rho: the sharpness radius (> 0).
        sharpness_kind: ``"worst"`` or ``"average"`` (:func:`lossviz.sharpness`).
        bn: ``"average"`` (BatchNorm statistics averaged like the weights) or
            ``"recompute"`` (re-estimated at every point with :func:`lossviz.reset_bn`
            on ``bn_data``, for every column).
        bn_data: the batches ``bn="recompute"`` re-estimates on (default: the Objective's
            data).
        tol: the relative residual tolerance of ``λ_max``.
        rtol: the relative standard error the trace stops at.
        max_hvp: the most Hessian-vector products per trace.
        seed: the seed of the Lanczos start, the trace probes and the sharpness.
        progress: show a progress bar over the points (None: unless
            ``LOSSVIZ_PROGRESS=0``).

    Returns:
        :class:`AveragesComparison`: one row per point, ``.plot()``, ``.table``.

    Raises:
        ArgumentTypeError: ``obj`` is not an Objective; ``points`` not a list / dict /
            recorder; an argument of the wrong type.
        LossvizError: a bad value (a decay outside ``[0, 1)``, ``lawa_k`` above the
            number of snapshots, ``rho <= 0``, an unknown ``bn`` or ``sharpness_kind``,
            ``bn_data`` without ``bn="recompute"``, ``bn="recompute"`` on a model without
            BatchNorm running statistics, every row left out), before any work; a metric
            that does not apply (``accuracy`` of a regression: pass ``accuracy=False``).
        CheckpointError: snapshots of different architectures, or not matching ``obj``.
    """
    from tqdm.auto import tqdm

    from .hessian import hessian_eigs, hessian_trace
    from .landscape import evaluate

    check_objective(obj)
    decays = _decays(ema_decays, "ema_decays")
    sdecays = _decays(switch_decays, "switch_decays")
    lawa_k = validate.integer(lawa_k, "lawa_k", low=1, none=True)
    swa_start = validate.number(swa_start, "swa_start", none=True)
    switch_every = validate.number(switch_every, "switch_every", low=0, low_open=True, none=True)
    per = validate.choice(per, "per", ("step", "snapshot"))
    accuracy = validate.boolean(accuracy, "accuracy")
    curvature = validate.boolean(curvature, "curvature")
    sharpness = validate.boolean(sharpness, "sharpness")
    rho = validate.number(rho, "rho", low=0, low_open=True)
    sharpness_kind = validate.choice(sharpness_kind, "sharpness_kind", ("worst", "average"))
    bn = validate.choice(bn, "bn", ("average", "recompute"))
    if bn_data is not None and bn != "recompute":
        raise LossvizError("bn_data= is only used with bn='recompute'")
    if bn == "recompute":
        check_bn(obj, "recompute")
    tol = validate.number(tol, "tol", low=0, low_open=True, high=1, high_open=True)
    rtol = validate.number(rtol, "rtol", low=0)
    max_hvp = validate.integer(max_hvp, "max_hvp", low=2)
    seed = validate.seed(seed)
    show = validate.progress(progress)
    last = validate.boolean(last, "last")
    swa = validate.boolean(swa, "swa")

    labels, states, keyed = _states(points, "points")
    for lab, st in zip(labels, states):
        obj.resolve(st, name=f"points[{lab!r}]")
    n = len(states)
    rows: list[tuple[str, np.ndarray, np.ndarray | None]] = []
    one_hot = np.zeros(n)
    one_hot[-1] = 1.0
    if last:
        rows.append(("last", one_hot, None))
    if swa:
        rows.append(
            ("swa", _coefficients(labels, keyed, "swa", None, swa_start, None, per, None), None)
        )
    for d in decays:
        rows.append(
            (f"ema({d:g})", _coefficients(labels, keyed, "ema", d, None, None, per, None), None)
        )
    if lawa_k is not None:
        rows.append(
            (
                f"lawa({lawa_k})",
                _coefficients(labels, keyed, "lawa", None, None, lawa_k, per, None),
                None,
            )
        )
    for d in sdecays:
        warn(_REPLAY)
        c = _coefficients(labels, keyed, "switch_ema", d, None, None, per, switch_every)
        cs = _coefficients(labels, keyed, "ema", d, None, None, per, None)
        rows.append((f"switch_ema({d:g})", c, cs))

    notes: list[str] = []
    rho_sharpness = None
    if sharpness:
        try:
            from .sharpness import sharpness as rho_sharpness
        except ImportError as e:  # not there yet: the column is left out, and said so
            notes.append(f"sharpness left out: lossviz.sharpness is not importable ({e})")
    if bn == "recompute":
        from .alignment import reset_bn

    m = len(rows)
    if m == 0:
        raise LossvizError("nothing to compare: every row was left out")
    nan = lambda: np.full(m, np.nan)  # noqa: E731
    res = AveragesComparison(
        names=[r[0] for r in rows],
        coefficients=np.stack([r[1] for r in rows]),
        labels=list(labels),
        loss=nan(),
        accuracy=nan(),
        lambda_max=nan(),
        lambda_residual=nan(),
        trace=nan(),
        trace_stderr=nan(),
        sharpness=nan() if rho_sharpness is not None else None,
        sharpness_stderr=nan() if rho_sharpness is not None else None,
        sharpness_kind=sharpness_kind,
        rho=rho,
        bn=bn,
        notes=notes,
        provenance=Provenance.of(obj, kernel="compare_averages"),
    )
    if not curvature:
        notes.append("λ_max and trace left out (curvature=False)")
    t0 = time.perf_counter()
    metrics = ("loss", "accuracy") if accuracy else ("loss",)
    bar = tqdm(total=m, desc="averages", disable=not show, leave=False)
    try:
        for i, (_, c, cs) in enumerate(rows):
            pt = _combine(states, c, cs)
            if bn == "recompute":
                pt = reset_bn(obj, pt, bn_data)
            ev = evaluate(obj, [pt], metrics=metrics, at=pt, progress=False)
            res.loss[i] = ev["loss"][0]
            if accuracy:
                res.accuracy[i] = ev["accuracy"][0]
            if curvature:
                e = hessian_eigs(obj, 1, at=pt, tol=tol, seed=seed, progress=False)
                res.lambda_max[i] = float(e.values[0])
                res.lambda_residual[i] = float(e.residuals[0])
                tr = hessian_trace(
                    obj, at=pt, rtol=rtol, max_hvp=max_hvp, seed=seed, progress=False
                )
                res.trace[i], res.trace_stderr[i] = tr.value, tr.stderr
            if rho_sharpness is not None:
                s = rho_sharpness(obj, rho, kind=sharpness_kind, at=pt, seed=seed, progress=False)
                res.sharpness[i] = s.value
                if s.stderr is not None:
                    res.sharpness_stderr[i] = s.stderr
            obj.release()
            bar.update(1)
    except KeyboardInterrupt:
        if not keep_partial():
            raise
        res.complete = False
    finally:
        bar.close()
        obj.release()
    res.seconds = time.perf_counter() - t0
    return res
