"""The roughness index of a loss landscape (Wu, Jian, Du, Chen, Zhou 2021, "Roughness Index
for Loss Landscapes of Neural Network Models of PDEs", arXiv 2103.11069).

Along ``M`` filter-normalized random directions ``d_j`` (biases and norm parameters
ignored), sample ``f_j(t_k) = L(θ* + t_k·d_j)`` at ``m+1`` evenly spaced ``t_k`` in
``[-ℓ, ℓ]``; the normalized total variation of each slice is

    TV_j = Σ_k |f_j(t_{k+1}) - f_j(t_k)| / (2ℓ · (max_k f_j - min_k f_j))

and the roughness index is their coefficient of variation ``RI = std(TV, ddof=1) /
mean(TV)``. A slice that is exactly flat has no TV: it is reported (``flat``) and left out.
A slice with a loss that is not finite makes the index NaN (with a warning naming the
directions; ``tv`` still holds the other slices' values), and so does an interrupted
evaluation (``complete=False``).
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from . import validate
from .directions import _NORMS, iter_random_flat
from .errors import ArgumentTypeError, LossvizError, warn
from .formatting import short
from .interrupt import api
from .landscape import (
    _Engine,
    check_engine_args,
    check_metrics,
    check_objective,
    kw_engine,
)
from .objective import Objective


def total_variation(slices: np.ndarray, radius: float) -> tuple[np.ndarray, np.ndarray]:
    """``(TV_j, flat_j)`` of slices ``(M, m+1)`` sampled on ``[-radius, radius]``.

    ``TV_j = Σ_k |f_j(t_{k+1}) - f_j(t_k)| / (2·radius·(max_k f_j - min_k f_j))``; NaN where
    a slice is exactly flat (``flat_j``) or holds a NaN.

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
    """``std(tv, ddof=1) / mean(tv)`` (the roughness index of a set of TVs)."""
    return np.std(tv, ddof=1, axis=axis) / np.mean(tv, axis=axis)


@dataclass(repr=False)
class RoughnessResult:
    """The roughness index ``value`` with a bootstrap confidence interval ``ci`` over
    directions, the per-direction normalized total variations ``tv`` (NaN for ``flat``
    slices, which are left out, and for slices with a non-finite loss, which make ``value``
    NaN), the ``slices`` ``(M, m+1)`` and ``ts``. ``complete`` is False after Ctrl-C
    (``value`` is then NaN; the slices evaluated are kept)."""

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
        ok = self.tv[np.isfinite(self.tv)]
        return float(ok.mean()) if len(ok) else float("nan")

    @property
    def n_flat(self) -> int:
        return int(self.flat.sum())

    @property
    def n_used(self) -> int:
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
        "norm": validate.choice(norm, "norm", _NORMS),
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
    eng = _Engine(obj, mk, fixed, rules=rules, **ekw)
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
        value,
        ci,
        tv,
        slices,
        ts,
        flat,
        float(radius),
        norm,
        seed,
        confidence,
        complete,
        time.perf_counter() - t0,
        done.reshape(n_directions, n_points),
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
    """The roughness index at ``at`` (default: the model), Wu et al. 2021.

    ``n_directions`` = M random directions (filter-normalized at ``at``, biases/norm params
    ignored, seed ``seed``), ``n_points`` = m+1 samples in ``[-radius, radius]`` (the
    authors' defaults: 100, 11, 0.1). ``RI = std(TV_j, ddof=1) / mean(TV_j)``;
    ``ci``: a percentile bootstrap interval over directions (``scipy.stats.bootstrap``).
    All M·(m+1) losses are evaluated in batches (keywords as
    :func:`lossviz.landscape.evaluate`: ``bn``, ``precision``, ``batched``, ``progress``…).
    A non-finite loss on any slice makes the index NaN (with a warning naming the
    directions); after Ctrl-C the result is incomplete and the index NaN.
    """
    args, ekw = _check_args(
        obj, n_directions, n_points, radius, norm, seed, n_bootstrap, confidence, kw
    )
    theta, fixed = obj.resolve(at, name="at")
    return _roughness(obj, theta, fixed, progress=kw.get("progress"), **args, **ekw)


@dataclass(repr=False)
class RoughnessAlong:
    """The roughness index at each checkpoint of a run (``labels``, ``values``, ``ci``).

    After Ctrl-C ``complete`` is False: the interrupted checkpoint's result is incomplete
    (RI NaN), the checkpoints after it were not evaluated (``results[i]`` is None, RI NaN).
    """

    labels: list
    results: list = field(default_factory=list)
    complete: bool = True

    @property
    def values(self) -> np.ndarray:
        return np.array([np.nan if r is None else r.value for r in self.results])

    @property
    def ci(self) -> np.ndarray:
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
    """:func:`roughness_index` at each checkpoint of a training run (a list, or a dict
    ``label -> checkpoint`` such as ``{step: state_dict}``), with the same seed at every
    checkpoint (the same Gaussian draws, normalized to each checkpoint's filters).
    Wu et al. 2021 observe a rise, then a fall, along the gradient-descent path. Every
    argument and checkpoint is checked before any work; Ctrl-C stops at the checkpoint it
    interrupts (``complete=False``)."""
    args, ekw = _check_args(
        obj, n_directions, n_points, radius, norm, seed, n_bootstrap, confidence, kw
    )
    if isinstance(checkpoints, Mapping):
        labels, points = list(checkpoints.keys()), list(checkpoints.values())
        if points and all(isinstance(v, torch.Tensor) for v in points):
            raise ArgumentTypeError(
                "checkpoints is a single state dict: pass a list of checkpoints or a dict "
                "label -> checkpoint"
            )
    elif isinstance(checkpoints, Sequence) and not isinstance(checkpoints, (str, bytes)):
        points = list(checkpoints)
        labels = list(range(len(points)))
    else:
        raise ArgumentTypeError(
            "checkpoints must be a list or a dict label -> checkpoint, got "
            f"{type(checkpoints).__name__}"
            + (" (a single model: wrap it in a list)" if isinstance(checkpoints, nn.Module) else "")
        )
    if not points:
        raise LossvizError("checkpoints is empty: no checkpoints given")
    resolved = [obj.resolve(p, name=f"checkpoints[{lab!r}]") for lab, p in zip(labels, points)]
    res = RoughnessAlong(labels, [None] * len(points))
    for i, (theta, fixed) in enumerate(resolved):
        r = _roughness(obj, theta, fixed, progress=kw.get("progress"), **args, **ekw)
        res.results[i] = r
        if not r.complete:  # interrupted: stop here, the rest is not evaluated
            res.complete = False
            break
    return res
