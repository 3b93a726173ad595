"""The roughness index of a loss landscape.

From Wu, Jian, Du, Chen, Zhou 2021, "Roughness Index for Loss Landscapes of Neural
Network Models of PDEs" (arXiv 2103.11069). Along ``M`` filter-normalized random
directions ``d_j`` (biases and norm parameters ignored), sample
``f_j(t_k) = L(θ* + t_k·d_j)`` at ``m+1`` evenly spaced ``t_k`` in ``[-ℓ, ℓ]``; the
normalized total variation of each slice is

    TV_j = Σ_k |f_j(t_{k+1}) - f_j(t_k)| / (2ℓ · (max_k f_j - min_k f_j))

and the roughness index is their coefficient of variation ``RI = std(TV, ddof=1) /
mean(TV)``. A slice that is exactly flat has no TV: it is reported (``flat``) and left out.
A slice with a loss that is not finite makes the index NaN (with a warning naming the
directions; ``tv`` still holds the other slices' values), and so does an interrupted
evaluation (``complete=False``).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np
import torch

from . import validate
from .directions import NORMS, iter_random_flat
from .engine import (
    Engine,
    check_engine_args,
    check_metrics,
    check_objective,
    kw_engine,
)
from .errors import warn
from .formatting import short
from .interrupt import api
from .objective import Objective
from .provenance import Provenance
from .results import DataResult


def total_variation(slices: np.ndarray, radius: float) -> tuple[np.ndarray, np.ndarray]:
    """``(TV_j, flat_j)`` of slices ``(M, m+1)`` sampled on ``[-radius, radius]``.

    ``TV_j = Σ_k |f_j(t_{k+1}) - f_j(t_k)| / (2·radius·(max_k f_j - min_k f_j))`` (Wu,
    Jian, Du, Chen, Zhou 2021, "Roughness Index for Loss Landscapes of Neural Network
    Models of PDEs"); NaN where a slice is exactly flat (``flat_j``) or holds a NaN or
    an infinity.

    Args:
        slices: ``(M, m+1)`` losses, one row per direction.
        radius: ``ℓ``, the half-width of the sampled interval.

    Returns:
        ``(tv, flat)``: the ``(M,)`` float64 normalized total variations and the ``(M,)``
        bool mask of the exactly flat slices.

    Raises:
        ValueError: ``slices`` is not 2-D with at least one column (from NumPy).

    >>> tv, flat = total_variation(np.array([[1.0, 0, 1], [0, 1, 2], [3, 3, 3]]), 0.5)
    >>> tv.tolist(), flat.tolist()
    ([2.0, 1.0, nan], [False, False, True])
    """
    f = np.asarray(slices, dtype=np.float64)
    rng = f.max(1) - f.min(1)
    flat = rng == 0
    tv = np.abs(np.diff(f, axis=1)).sum(1)
    with np.errstate(divide="ignore", invalid="ignore"):
        out = np.where(flat | ~np.isfinite(rng), np.nan, tv / (2 * radius * rng))
    return out, flat


def coefficient_of_variation(tv: np.ndarray, axis: int = -1) -> np.ndarray:
    """``std(tv, ddof=1) / mean(tv)``: the roughness index of a set of TVs.

    Args:
        tv: the normalized total variations.
        axis: the axis along which the directions lie.

    Returns:
        The coefficient of variation (NaN with fewer than 2 values along ``axis``).

    Raises:
        ValueError: ``axis`` is out of range (NumPy's ``AxisError``).

    >>> float(coefficient_of_variation(np.array([1.0, 3.0])))
    0.7071067811865476
    """
    return np.std(tv, ddof=1, axis=axis) / np.mean(tv, axis=axis)


@dataclass(kw_only=True, repr=False)
class RoughnessResult(DataResult):
    """The roughness index at one point (:func:`roughness_index`).

    ``value`` with a bootstrap confidence interval ``ci`` over directions, the
    per-direction normalized total variations ``tv`` (NaN for ``flat`` slices, which are
    left out, and for slices with a non-finite loss, which make ``value`` NaN), the
    ``slices`` ``(M, m+1)`` and ``ts``. ``complete`` is False after Ctrl-C (``value`` is
    then NaN; the slices evaluated are kept).

    Attributes:
        value: ``RI = std(TV_j, ddof=1) / mean(TV_j)`` over the slices with a defined TV;
            NaN when a slice has a non-finite loss, fewer than 2 TVs are defined, or the
            evaluation was interrupted.
        ci: ``(low, high)`` percentile bootstrap interval of ``value`` over directions
            (``(value, value)`` when all TVs are equal; NaN when ``value`` is).
        tv: ``(M,)`` normalized total variation of each slice (NaN where undefined).
        slices: ``(M, m+1)`` losses ``f_j(t_k) = L(θ* + t_k·d_j)``.
        ts: ``(m+1,)`` the offsets ``t_k``, evenly spaced in ``[-radius, radius]``.
        flat: ``(M,)`` bool: the slices that are exactly flat (left out).
        radius: ``ℓ``.
        norm: the normalization of the directions (``"filter"``, ``"layer"``,
            ``"none"``).
        seed: the seed of the directions and of the bootstrap.
        confidence: the confidence level of ``ci``.
        complete: False after Ctrl-C.
        seconds: wall time.
        evaluated: ``(M, m+1)`` bool: which samples of ``slices`` were evaluated (all
            unless interrupted); None for a result built by hand.
        provenance: where it comes from (:class:`~lossviz.provenance.Provenance`;
            None when built by hand).
    """

    value: float
    ci: tuple
    tv: np.ndarray
    slices: np.ndarray
    ts: np.ndarray
    flat: np.ndarray
    radius: float
    norm: str = "filter"
    seed: int = 0
    confidence: float = 0.95
    complete: bool = True
    seconds: float = 0.0
    #: which samples of ``slices`` were evaluated (all unless interrupted)
    evaluated: np.ndarray | None = None

    @property
    def mean_tv(self) -> float:
        """The mean of the defined TVs (NaN if none)."""
        ok = self.tv[np.isfinite(self.tv)]
        return float(ok.mean()) if len(ok) else float("nan")

    @property
    def n_flat(self) -> int:
        """The number of exactly flat slices."""
        return int(self.flat.sum())

    @property
    def n_used(self) -> int:
        """The number of slices with a defined TV."""
        return int(np.isfinite(self.tv).sum())

    @property
    def nonfinite(self) -> np.ndarray:
        """Indices of the directions whose slice holds a non-finite loss (where evaluated)."""
        ev = np.ones(self.slices.shape, bool) if self.evaluated is None else self.evaluated
        return np.flatnonzero((ev & ~np.isfinite(self.slices)).any(1))

    def __repr__(self) -> str:
        extra = ""
        if self.n_flat:
            extra += f", {self.n_flat} flat slice(s) left out"
        bad = len(self.nonfinite)
        if bad:
            extra += f", NOT FINITE in {bad} slice(s) (RI undefined)"
        if not self.complete:
            extra += ", INCOMPLETE (RI undefined)"
        return (
            f"RoughnessResult(RI = {short(self.value)}, {100 * self.confidence:.0f}% CI "
            f"[{short(self.ci[0])}, {short(self.ci[1])}]; mean TV {short(self.mean_tv)}; "
            f"{len(self.tv)} directions × {len(self.ts)} points in ±{self.radius:g}"
            f"{extra}; {self.seconds:.2f} s)"
        )

    def _repr_html_(self) -> str:
        from .formatting import html_table

        return html_table(
            [
                "RI",
                f"{100 * self.confidence:.0f}% CI",
                "mean TV",
                "directions",
                "points",
                "radius",
                "flat",
            ],
            [
                [
                    f"{self.value:.4g}",
                    f"[{self.ci[0]:.4g}, {self.ci[1]:.4g}]",
                    f"{self.mean_tv:.4g}",
                    len(self.tv),
                    len(self.ts),
                    self.radius,
                    self.n_flat,
                ]
            ],
            "roughness index (Wu et al. 2021)",
        )

    def plot(self):
        """The slices, one line per direction (a plotly figure)."""
        import plotly.graph_objects as go

        fig = go.Figure()
        for j, f in enumerate(self.slices):
            fig.add_trace(
                go.Scatter(
                    x=self.ts,
                    y=f,
                    mode="lines",
                    showlegend=False,
                    opacity=0.4,
                    line={"width": 1},
                    hovertemplate=f"direction {j}, TV {self.tv[j]:.3g}<br>t=%{{x:.3g}}, "
                    "L=%{y:.5g}<extra></extra>",
                )
            )
        fig.update_layout(
            title=f"{len(self.tv)} random slices: RI = {self.value:.3g} "
            f"({100 * self.confidence:.0f}% CI {self.ci[0]:.3g}–{self.ci[1]:.3g})",
            xaxis_title="t",
            yaxis_title="loss",
            template="plotly_white",
        )
        return fig


def _summarize(slices, ts, radius, *, n_bootstrap, confidence, seed, complete=True):
    nan = (float("nan"), (float("nan"), float("nan")))
    tv, flat = total_variation(slices, radius)
    if not complete:
        return *nan, tv, flat
    bad = np.flatnonzero(~np.isfinite(slices).all(1))
    if len(bad):
        warn(
            f"the loss is not finite on {len(bad)} of {len(slices)} slices (directions "
            f"{bad[:10].tolist()}{' …' if len(bad) > 10 else ''}): the roughness index is "
            "NaN (a smaller radius may stay where the loss is finite)"
        )
        return *nan, tv, flat
    if flat.any():
        warn(
            f"{int(flat.sum())} slice(s) are exactly flat (TV undefined); left out "
            "of the roughness index"
        )
    ok = tv[np.isfinite(tv)]
    if len(ok) < 2:
        warn("fewer than 2 slices with a defined TV: the roughness index is NaN")
        return *nan, tv, flat
    value = float(coefficient_of_variation(ok))
    if np.all(ok == ok[0]):
        ci = (value, value)
    else:
        from scipy.stats import bootstrap

        b = bootstrap(
            (ok,),
            coefficient_of_variation,
            n_resamples=n_bootstrap,
            confidence_level=confidence,
            method="percentile",
            vectorized=True,
            random_state=np.random.default_rng(seed),
        )
        ci = (float(b.confidence_interval.low), float(b.confidence_interval.high))
    return value, ci, tv, flat


def _check_args(
    obj, n_directions, n_points, radius, norm, seed, n_bootstrap, confidence, kw
) -> tuple[dict, dict]:
    """Every argument of :func:`roughness_index`, checked before any work."""
    check_objective(obj)
    args = {
        "n_directions": validate.integer(n_directions, "n_directions", low=2),
        "n_points": validate.integer(n_points, "n_points", low=2),
        "radius": validate.number(radius, "radius", low=0, low_open=True),
        "norm": validate.choice(norm, "norm", NORMS),
        "seed": validate.seed(seed),
        "n_bootstrap": validate.integer(n_bootstrap, "n_bootstrap", low=1),
        "confidence": validate.number(
            confidence, "confidence", low=0, high=1, low_open=True, high_open=True
        ),
    }
    ekw = check_engine_args(obj, progress=kw.get("progress"), **kw_engine(kw))
    return args, ekw


def _roughness(
    obj,
    theta,
    fixed,
    *,
    n_directions,
    n_points,
    radius,
    norm,
    seed,
    n_bootstrap,
    confidence,
    progress=None,
    **ekw,
) -> RoughnessResult:
    """:func:`roughness_index` at a resolved point (no checks, no public-call wrapper)."""
    t0 = time.perf_counter()
    mk, rules = check_metrics(obj, {"loss": "loss"}, theta, fixed, precision=ekw["precision"])
    eng = Engine(obj, mk, fixed, rules=rules, **ekw)
    ts = np.linspace(-radius, radius, n_points)
    tt = torch.as_tensor(ts, device=obj.device, dtype=obj.dtype)
    stream = iter_random_flat(
        theta, obj.layout, n_directions, norm=norm, ignore="biasbn", seed=seed
    )
    rows: dict[int, torch.Tensor] = {}
    drawn = [0]

    def make(idx, idx_t):
        j = idx // n_points
        while drawn[0] <= int(j.max()):
            rows[drawn[0]] = next(stream)
            drawn[0] += 1
        for old in [k for k in rows if k < int(j.min())]:
            del rows[old]
        D = torch.stack([rows[int(a)] for a in j])
        return theta + tt[idx_t % n_points][:, None] * D

    total = n_directions * n_points
    out = np.full((1, total), np.nan)
    done = np.zeros(total, dtype=bool)
    complete = eng.run(make, np.arange(total), out, done, progress=progress, desc="roughness")
    slices = out[0].reshape(n_directions, n_points)
    value, ci, tv, flat = _summarize(
        slices,
        ts,
        radius,
        n_bootstrap=n_bootstrap,
        confidence=confidence,
        seed=seed,
        complete=complete,
    )
    return RoughnessResult(
        value=value,
        ci=ci,
        tv=tv,
        slices=slices,
        ts=ts,
        flat=flat,
        radius=float(radius),
        norm=norm,
        seed=seed,
        confidence=confidence,
        complete=complete,
        seconds=time.perf_counter() - t0,
        evaluated=done.reshape(n_directions, n_points),
    )


@api
def roughness_index(
    obj: Objective,
    at=None,
    *,
    n_directions: int = 100,
    n_points: int = 11,
    radius: float = 0.1,
    norm: str = "filter",
    seed: int = 0,
    n_bootstrap: int = 2000,
    confidence: float = 0.95,
    **kw,
) -> RoughnessResult:
    """The roughness index of the loss landscape at ``at`` (default: the model's weights).

    Wu, Jian, Du, Chen, Zhou 2021, "Roughness Index for Loss Landscapes of Neural Network
    Models of PDEs" (arXiv 2103.11069): along ``M`` random directions ``d_j``
    (filter-normalized at ``at``, biases / norm parameters ignored), the slices
    ``f_j(t_k) = L(θ* + t_k·d_j)`` at ``m+1`` evenly spaced ``t_k`` in ``[-ℓ, ℓ]`` give

        TV_j = Σ_k |f_j(t_{k+1}) - f_j(t_k)| / (2ℓ · (max_k f_j - min_k f_j))

    and ``RI = std(TV_j, ddof=1) / mean(TV_j)``. The authors' defaults are ``M = 100``,
    ``m + 1 = 11``, ``ℓ = 0.1``. All ``M·(m+1)`` losses are evaluated in batches
    (:func:`lossviz.landscape.evaluate`'s engine). Exactly flat slices are left out (with
    a warning); a non-finite loss on any slice makes the index NaN (with a warning naming
    the directions); after Ctrl-C the result is incomplete and the index NaN.

    Args:
        obj: the :class:`~lossviz.Objective` (model, loss, data).
        at: the point ``θ*`` (default: the model's weights).
        n_directions: ``M``, the number of random directions (at least 2).
        n_points: ``m + 1``, the samples per direction (at least 2).
        radius: ``ℓ > 0``.
        norm: ``"filter"`` (the paper's), ``"layer"`` or ``"none"``: how the directions
            are scaled to the weights.
        seed: the seed of the directions and of the bootstrap.
        n_bootstrap: bootstrap resamples for ``ci`` (at least 1).
        confidence: the confidence level of ``ci``, in ``(0, 1)``.
        **kw: the evaluation engine's keywords, as for :func:`lossviz.landscape.evaluate`:
            ``bn``, ``bn_data``, ``precision``, ``batched``, ``chunk_size``, ``progress``.

    Returns:
        :class:`RoughnessResult`: ``value`` (the RI), ``ci`` (a percentile bootstrap
        interval over directions, ``scipy.stats.bootstrap``), ``tv``, ``slices``, ``ts``.

    Raises:
        ArgumentTypeError: ``obj`` is not an Objective, an unknown keyword in ``**kw``,
            or an argument of the wrong type.
        LossvizError: a bad value (``n_directions < 2``, ``n_points < 2``,
            ``radius <= 0``, an unknown ``norm``, ``confidence`` outside ``(0, 1)``,
            ``bn_data`` without ``bn="recompute"``, ...), before any work.
        CheckpointError: ``at`` does not match the model (keys, shapes).

    A loss linear in the weights has monotone slices, so every ``TV_j = 1/(2ℓ)`` and
    ``RI = 0``:

    >>> _ = torch.manual_seed(0)
    >>> x, y = torch.randn(8, 3), torch.zeros(8, 1)
    >>> obj = Objective(torch.nn.Linear(3, 1), lambda out, t: (out - t).mean(), (x, y))
    >>> r = roughness_index(obj, n_directions=5, n_points=5, progress=False)
    >>> r.tv.round(6).tolist(), round(r.value, 6)
    ([5.0, 5.0, 5.0, 5.0, 5.0], 0.0)
    """
    args, ekw = _check_args(
        obj, n_directions, n_points, radius, norm, seed, n_bootstrap, confidence, kw
    )
    theta, fixed = obj.resolve(at, name="at")
    res = _roughness(obj, theta, fixed, progress=kw.get("progress"), **args, **ekw)
    res.provenance = Provenance.of(obj, kernel="roughness_index", at=at)
    return res


@dataclass(kw_only=True, repr=False)
class RoughnessAlong(DataResult):
    """The roughness index at each checkpoint of a run (:func:`roughness_along`).

    After Ctrl-C ``complete`` is False: the interrupted checkpoint's result is incomplete
    (RI NaN), the checkpoints after it were not evaluated (``results[i]`` is None, RI NaN).
    ``values`` and ``ci`` collect the index and its interval per checkpoint.

    Attributes:
        labels: the label of each checkpoint (dict keys, recorder steps or ``0, 1, …``).
        results: a :class:`RoughnessResult` per checkpoint (None where not evaluated).
        complete: False after Ctrl-C.
        provenance: where it comes from (:class:`~lossviz.provenance.Provenance`;
            None when built by hand).
    """

    labels: list
    results: list = field(default_factory=list)
    complete: bool = True

    @property
    def values(self) -> np.ndarray:
        """The RI at each checkpoint (NaN where not evaluated)."""
        return np.array([np.nan if r is None else r.value for r in self.results])

    @property
    def ci(self) -> np.ndarray:
        """``(n, 2)`` the confidence interval at each checkpoint (NaN where not evaluated)."""
        return np.array(
            [(np.nan, np.nan) if r is None else r.ci for r in self.results], dtype=np.float64
        ).reshape(-1, 2)

    def __getitem__(self, i):
        return self.results[i]

    def __len__(self):
        return len(self.results)

    def __repr__(self) -> str:
        state = "" if self.complete else ", INCOMPLETE"
        lines = [f"RoughnessAlong({len(self.results)} checkpoints{state})"]
        for lab, r in zip(self.labels, self.results):
            if r is None:
                lines.append(f"  {lab!s:>8}  not evaluated")
            else:
                lines.append(
                    f"  {lab!s:>8}  RI {short(r.value)}  [{short(r.ci[0])}, {short(r.ci[1])}]"
                    + ("" if r.complete else "  (interrupted)")
                )
        return "\n".join(lines)

    def _repr_html_(self) -> str:
        from .formatting import html_table

        rows = [
            [lab, "-", "not evaluated"]
            if r is None
            else [lab, short(r.value), f"[{short(r.ci[0])}, {short(r.ci[1])}]"]
            for lab, r in zip(self.labels, self.results)
        ]
        return html_table(
            ["checkpoint", "RI", "CI"],
            rows,
            "roughness index along a run" + ("" if self.complete else " (incomplete)"),
        )

    def plot(self):
        """The RI against the checkpoint, with bootstrap error bars (a plotly figure)."""
        import plotly.graph_objects as go

        v, ci = self.values, self.ci
        fig = go.Figure(
            go.Scatter(
                x=[str(lab) for lab in self.labels]
                if not all(isinstance(lab, (int, float)) for lab in self.labels)
                else self.labels,
                y=v,
                mode="lines+markers",
                name="RI",
                error_y={
                    "type": "data",
                    "symmetric": False,
                    "array": ci[:, 1] - v,
                    "arrayminus": v - ci[:, 0],
                },
            )
        )
        fig.update_layout(
            title="roughness index along training (bars: bootstrap CI)",
            xaxis_title="checkpoint",
            yaxis_title="RI",
            template="plotly_white",
        )
        return fig


@api
def roughness_along(
    obj: Objective,
    checkpoints,
    *,
    n_directions: int = 100,
    n_points: int = 11,
    radius: float = 0.1,
    norm: str = "filter",
    seed: int = 0,
    n_bootstrap: int = 2000,
    confidence: float = 0.95,
    **kw,
) -> RoughnessAlong:
    """The roughness index (:func:`roughness_index`) at each checkpoint of a training run.

    The same seed is used at every checkpoint (the same Gaussian draws, normalized to
    each checkpoint's filters). Wu, Jian, Du, Chen, Zhou 2021 ("Roughness Index for Loss
    Landscapes of Neural Network Models of PDEs") observe a rise, then a fall, along the
    gradient-descent path. Every argument and checkpoint is checked before any work;
    Ctrl-C stops at the checkpoint it interrupts (``complete=False``).

    Args:
        obj: the :class:`~lossviz.Objective` (model, loss, data).
        checkpoints: a list, a dict ``label -> checkpoint`` such as
            ``{step: state_dict}``, or a :class:`~lossviz.TrajectoryRecorder`.
        n_directions: ``M``, the number of random directions (at least 2).
        n_points: ``m + 1``, the samples per direction (at least 2).
        radius: ``ℓ > 0``.
        norm: ``"filter"``, ``"layer"`` or ``"none"``.
        seed: the seed of the directions and of the bootstrap (the same at every
            checkpoint).
        n_bootstrap: bootstrap resamples for each ``ci`` (at least 1).
        confidence: the confidence level of ``ci``, in ``(0, 1)``.
        **kw: the evaluation engine's keywords, as for :func:`roughness_index`.

    Returns:
        :class:`RoughnessAlong`: one :class:`RoughnessResult` per checkpoint, with
        ``values`` and ``ci``.

    Raises:
        ArgumentTypeError: ``obj`` is not an Objective, ``checkpoints`` is a single point
            or not a list / dict / recorder, an unknown keyword in ``**kw``, or an
            argument of the wrong type.
        LossvizError: no checkpoints, or a bad value (as for :func:`roughness_index`),
            before any work.
        CheckpointError: a checkpoint does not match the model (keys, shapes).
    """
    args, ekw = _check_args(
        obj, n_directions, n_points, radius, norm, seed, n_bootstrap, confidence, kw
    )
    from .points import as_points  # a list, a dict label -> point or a TrajectoryRecorder

    labels, points, _ = as_points(checkpoints, "checkpoints")
    resolved = [obj.resolve(p, name=f"checkpoints[{lab!r}]") for lab, p in zip(labels, points)]
    res = RoughnessAlong(
        labels=labels,
        results=[None] * len(points),
        provenance=Provenance.of(obj, kernel="roughness_along"),
    )
    for i, (theta, fixed) in enumerate(resolved):
        r = _roughness(obj, theta, fixed, progress=kw.get("progress"), **args, **ekw)
        r.provenance = Provenance.of(obj, kernel="roughness_index", at=points[i])
        res.results[i] = r
        if not r.complete:  # interrupted: stop here, the rest is not evaluated
            res.complete = False
            break
    return res
