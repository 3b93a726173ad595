"""The roughness index of a loss landscape (Wu, Jian, Du, Chen, Zhou 2021, "Roughness Index
for Loss Landscapes of Neural Network Models of PDEs", arXiv 2103.11069).

Along ``M`` filter-normalized random directions ``d_j`` (biases and norm parameters
ignored), sample ``f_j(t_k) = L(θ* + t_k·d_j)`` at ``m+1`` evenly spaced ``t_k`` in
``[-ℓ, ℓ]``; the normalized total variation of each slice is

    TV_j = Σ_k |f_j(t_{k+1}) - f_j(t_k)| / (2ℓ · (max_k f_j - min_k f_j))

and the roughness index is their coefficient of variation ``RI = std(TV, ddof=1) /
mean(TV)``. A slice that is exactly flat has no TV: it is reported (``flat``) and left out.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from .directions import iter_random_flat
from .errors import LossvizError
from .interrupt import api
from .landscape import _Engine, kw_engine
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
    directions, the per-direction normalized total variations ``tv`` (NaN for ``flat`` or
    non-finite slices, which are left out), the ``slices`` ``(M, m+1)`` and ``ts``."""

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

    def __repr__(self) -> str:
        extra = ""
        if self.n_flat:
            extra += f", {self.n_flat} flat slice(s) left out"
        bad = len(self.tv) - self.n_used - self.n_flat
        if bad:
            extra += f", {bad} slice(s) with NaN left out"
        if not self.complete:
            extra += ", INCOMPLETE"
        return (
            f"RoughnessResult(RI = {self.value:.4g}, {100 * self.confidence:.0f}% CI "
            f"[{self.ci[0]:.4g}, {self.ci[1]:.4g}]; mean TV {self.mean_tv:.4g}; "
            f"{len(self.tv)} directions × {len(self.ts)} points in ±{self.radius:g}"
            f"{extra}; {self.seconds:.2f} s)"
        )

    def _repr_html_(self) -> str:
        from .results import _html_table

        return _html_table(
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


def _summarize(slices, ts, radius, *, n_bootstrap, confidence, seed):
    tv, flat = total_variation(slices, radius)
    if flat.any():
        warnings.warn(
            f"{int(flat.sum())} slice(s) are exactly flat (TV undefined); left out "
            "of the roughness index",
            stacklevel=3,
        )
    ok = tv[np.isfinite(tv)]
    if len(ok) < 2:
        warnings.warn(
            "fewer than 2 slices with a defined TV: the roughness index is NaN", stacklevel=3
        )
        return float("nan"), (float("nan"), float("nan")), tv, flat
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
    """
    t0 = time.perf_counter()
    if not isinstance(obj, Objective):
        raise TypeError(f"roughness_index needs an Objective, got {type(obj).__name__}")
    if isinstance(n_directions, bool) or not isinstance(n_directions, int) or n_directions < 2:
        raise LossvizError(f"n_directions must be an integer >= 2, got {n_directions!r}")
    if isinstance(n_points, bool) or not isinstance(n_points, int) or n_points < 2:
        raise LossvizError(f"n_points must be an integer >= 2, got {n_points!r}")
    if not (isinstance(radius, (int, float)) and np.isfinite(radius) and radius > 0):
        raise LossvizError(f"radius must be a positive number, got {radius!r}")
    if not 0 < confidence < 1:
        raise LossvizError(f"confidence must be in (0, 1), got {confidence!r}")
    theta, fixed = obj.resolve(at)
    eng = _Engine(obj, ("loss",), fixed, **kw_engine(kw))
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
    complete = eng.run(
        make, np.arange(total), out, done, progress=kw.get("progress"), desc="roughness"
    )
    slices = out[0].reshape(n_directions, n_points)
    value, ci, tv, flat = _summarize(
        slices, ts, radius, n_bootstrap=n_bootstrap, confidence=confidence, seed=seed
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
    )


@dataclass(repr=False)
class RoughnessAlong:
    """The roughness index at each checkpoint of a run (``labels``, ``values``, ``ci``)."""

    labels: list
    results: list = field(default_factory=list)

    @property
    def values(self) -> np.ndarray:
        return np.array([r.value for r in self.results])

    @property
    def ci(self) -> np.ndarray:
        return np.array([r.ci for r in self.results]).reshape(-1, 2)

    def __getitem__(self, i):
        return self.results[i]

    def __len__(self):
        return len(self.results)

    def __repr__(self) -> str:
        lines = [f"RoughnessAlong({len(self.results)} checkpoints)"]
        for lab, r in zip(self.labels, self.results):
            lines.append(f"  {lab!s:>8}  RI {r.value:.4g}  [{r.ci[0]:.4g}, {r.ci[1]:.4g}]")
        return "\n".join(lines)

    def _repr_html_(self) -> str:
        from .results import _html_table

        rows = [
            [lab, f"{r.value:.4g}", f"[{r.ci[0]:.4g}, {r.ci[1]:.4g}]"]
            for lab, r in zip(self.labels, self.results)
        ]
        return _html_table(["checkpoint", "RI", "CI"], rows, "roughness index along a run")

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
def roughness_along(obj: Objective, checkpoints, **kw) -> RoughnessAlong:
    """:func:`roughness_index` at each checkpoint of a training run (a list, or a dict
    ``label -> checkpoint`` such as ``{step: state_dict}``), with the same seed at every
    checkpoint (the same Gaussian draws, normalized to each checkpoint's filters).
    Wu et al. 2021 observe a rise, then a fall, along the gradient-descent path."""
    if isinstance(checkpoints, Mapping):
        labels, points = list(checkpoints.keys()), list(checkpoints.values())
    elif isinstance(checkpoints, Sequence) and not isinstance(checkpoints, (str, bytes)):
        points = list(checkpoints)
        labels = list(range(len(points)))
    else:
        raise TypeError("checkpoints must be a list or a dict label -> checkpoint")
    if not points:
        raise LossvizError("no checkpoints given")
    res = RoughnessAlong(labels)
    for p in points:
        res.results.append(roughness_index(obj, p, **kw))
    return res
