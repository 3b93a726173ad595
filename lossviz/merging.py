"""Merging weights: averages, Fisher merging, task arithmetic, greedy soups, and the
variance of averaged weights.

- uniform soup (Wortsman et al. 2022, "Model soups"): ``θ = (1/k) Σ_i θ_i``;
- weighted: ``θ = Σ_i w_i θ_i / Σ_i w_i``;
- Fisher merging (Matena & Raffel 2022): ``θ = Σ_i λ_i F_i ⊙ θ_i / Σ_i λ_i F_i`` with ``F_i``
  the diagonal empirical Fisher ``mean_n (∇_θ ℓ(x_n, y_n; θ_i))²`` (per-sample gradients with
  ``torch.func``);
- task arithmetic (Ilharco et al. 2023): ``θ = θ0 + λ Σ_i (θ_i - θ0)``.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor, nn

from .errors import CheckpointError, LossvizError
from .interrupt import api
from .objective import Objective
from .weights import Weights, as_state

_METHODS = ("uniform", "weighted", "fisher", "task_arithmetic")


def _named(points) -> tuple[list, list[dict]]:
    if isinstance(points, Mapping) and not all(isinstance(v, Tensor) for v in points.values()):
        names, pts = list(points), list(points.values())
    elif isinstance(points, Sequence) and not isinstance(points, (str, bytes)):
        pts = list(points)
        names = list(range(len(pts)))
    else:
        raise TypeError(
            f"points must be a list of points or a mapping name -> point, got "
            f"{type(points).__name__}"
        )
    if not pts:
        raise LossvizError("no points to merge")
    return names, [as_state(p) for p in pts]


def _check_same(states: list[dict], names: list, what="point") -> None:
    ref = states[0]
    for nm, st in zip(names[1:], states[1:]):
        only_ref = [k for k in ref if k not in st]
        only_st = [k for k in st if k not in ref]
        shapes = [
            f"{k}: {tuple(ref[k].shape)} vs {tuple(st[k].shape)}"
            for k in ref
            if k in st and ref[k].shape != st[k].shape
        ]
        if only_ref or only_st or shapes:
            raise CheckpointError(
                f"{what} {nm!r} does not match {what} {names[0]!r}: keys only in "
                f"{names[0]!r}: {only_ref[:10]}; keys only in {nm!r}: {only_st[:10]}; shape "
                f"mismatches: {shapes[:10]}"
            )


def _coeffs(weights, k: int, what: str) -> list[float]:
    if isinstance(weights, (int, float)) and not isinstance(weights, bool):
        return [float(weights)] * k
    w = [float(v) for v in weights]
    if len(w) != k:
        raise LossvizError(f"{what}: {len(w)} weights for {k} points")
    if not all(np.isfinite(w)):
        raise LossvizError(f"{what}: weights must be finite, got {w}")
    return w


@api
def empirical_fisher(obj: Objective, at=None) -> Weights:
    """Diagonal empirical Fisher ``F = mean_n (∇_θ ℓ(x_n, y_n; θ))²`` over the Objective's
    samples, from per-sample gradients (``torch.func.vmap`` of ``torch.func.grad``)."""
    if obj.forward is not None:
        raise LossvizError(
            "the empirical Fisher needs per-sample losses: build the "
            "Objective with loss_fn and (inputs, targets) batches"
        )
    flat, fixed = obj.resolve(at)
    theta = obj.layout.unflatten(flat.detach())

    def one(params, x, y):
        return obj.batch_loss(params, fixed, (x[None], y[None]))

    g = torch.func.grad(one)
    total = {k: torch.zeros_like(v, dtype=torch.float64) for k, v in theta.items()}
    n = 0
    for batch, nb in obj.batches():
        x, y = batch[0], batch[1]
        try:
            gs = torch.func.vmap(g, in_dims=(None, 0, 0))(theta, x, y)
        except Exception:  # noqa: BLE001 - modules vmap cannot batch: one sample at a time
            gs = None
        if gs is None:
            for i in range(nb):
                gi = torch.func.grad(one)(theta, x[i], y[i])
                for k in total:
                    total[k] += gi[k].detach().to(torch.float64) ** 2
        else:
            for k in total:
                total[k] += (gs[k].detach().to(torch.float64) ** 2).sum(0)
        n += nb
    return Weights({k: (v / n).to(theta[k].dtype) for k, v in total.items()})


@api
def merge(
    points, *, method: str = "uniform", weights=None, base=None, obj: Objective | None = None
) -> Weights:
    """Merge checkpoints into one set of weights.

    ``method``: ``"uniform"`` ``(1/k)Σθ_i``; ``"weighted"`` ``Σw_iθ_i / Σw_i`` (``weights``
    required); ``"fisher"`` ``Σλ_iF_i⊙θ_i / Σλ_iF_i`` with ``F_i`` the diagonal empirical
    Fisher of ``obj`` at ``θ_i`` (``weights`` = optional ``λ_i``; where every ``F_i`` is 0 the
    uniform mean is used); ``"task_arithmetic"`` ``θ0 + λΣ(θ_i - θ0)`` with ``θ0 = base``
    and ``λ = weights`` (a number, or one per task; default 1).

    ``points``: models, state dicts, Weights or checkpoint paths with identical keys and
    shapes. Integer buffers (``num_batches_tracked``) come from the first point (the base
    for task arithmetic); floating-point buffers are averaged like the parameters (the
    Fisher is only defined for the Objective's varying parameters: other entries get the
    uniform or weighted mean). Returns every entry of the points.
    """
    if method not in _METHODS:
        raise LossvizError(f"method must be one of {_METHODS}, got {method!r}")
    names, states = _named(points)
    _check_same(states, names)
    k = len(states)
    ref = states[0]
    if method == "task_arithmetic":
        if base is None:
            raise LossvizError("task_arithmetic needs base= (the pre-trained weights θ0)")
        b = as_state(base)
        _check_same([b] + states, ["base"] + names)
        lam = _coeffs(1.0 if weights is None else weights, k, "task_arithmetic")
        out = {}
        for key, v0 in b.items():
            if not v0.is_floating_point():
                out[key] = v0.clone()
                continue
            acc = v0.to(torch.float64).clone()
            for li, st in zip(lam, states):
                acc += li * (st[key].to(torch.float64) - v0.to(torch.float64))
            out[key] = acc.to(v0.dtype)
        return Weights(out)
    if base is not None:
        raise LossvizError(f"base= is only used with method='task_arithmetic', not {method!r}")
    if method == "weighted":
        if weights is None:
            raise LossvizError("method='weighted' needs weights= (one per point)")
        w = _coeffs(weights, k, "weighted")
    else:
        w = [1.0] * k if weights is None else _coeffs(weights, k, method)
    if method == "uniform" and weights is not None:
        raise LossvizError("method='uniform' takes no weights; use method='weighted'")
    if sum(w) == 0:
        raise LossvizError(f"the weights sum to 0: {w}")
    out = {}
    for key, v0 in ref.items():
        if not v0.is_floating_point():
            out[key] = v0.clone()
            continue
        acc = sum(wi * st[key].to(torch.float64) for wi, st in zip(w, states))
        out[key] = (acc / sum(w)).to(v0.dtype)
    if method == "fisher":
        if obj is None:
            raise LossvizError(
                "method='fisher' needs obj= (an Objective whose data defines the Fisher)"
            )
        fishers = [empirical_fisher(obj, st) for st in states]
        for key in obj.layout.names:
            if key not in ref:
                raise CheckpointError(f"the points lack parameter {key!r} of the Objective")
            num = sum(
                wi * F[key].to(torch.float64) * st[key].to(torch.float64)
                for wi, F, st in zip(w, fishers, states)
            )
            den = sum(wi * F[key].to(torch.float64) for wi, F in zip(w, fishers))
            ok = den != 0
            merged = torch.where(
                ok, num / torch.where(ok, den, torch.ones_like(den)), out[key].to(torch.float64)
            )
            out[key] = merged.to(ref[key].dtype)
    return Weights(out)


@api
def greedy_soup(
    obj_val: Objective,
    points,
    *,
    metric: str = "accuracy",
    bn: str = "eval",
    recompute_data=None,
    progress=None,
):
    """Greedy soup (Wortsman et al. 2022): sort the ingredients by their held-out
    ``metric`` on ``obj_val`` (best first), start from the best and add each next one only
    if the uniform soup of the chosen ones strictly improves it. Returns
    ``(Weights, chosen)`` (``chosen``: indices, or names for a mapping, in the order
    added). ``metric``: ``"accuracy"`` (higher is better), ``"loss"`` or ``"error"``."""
    from .landscape import evaluate

    if not isinstance(obj_val, Objective):
        raise TypeError(f"expected an Objective, got {type(obj_val).__name__}")
    if metric not in ("accuracy", "loss", "error"):
        raise LossvizError(f"metric must be 'accuracy', 'loss' or 'error', got {metric!r}")
    names, states = _named(points)
    _check_same(states, names)
    sign = 1.0 if metric == "accuracy" else -1.0
    kw = {"bn": "recompute", "bn_data": recompute_data} if bn == "recompute" else {}
    if bn not in ("eval", "recompute"):
        raise LossvizError(f"bn must be 'eval' or 'recompute', got {bn!r}")

    def score(sts: list[dict]) -> list[float]:
        # grouped by their buffers: one batched pass per distinct set
        out = []
        for st in sts:
            flat, _ = obj_val.resolve(st)
            out.append(
                float(
                    evaluate(
                        obj_val, flat[None], metrics=(metric,), at=st, progress=progress, **kw
                    )[metric][0]
                )
            )
        return out

    same_buffers = all(
        all(torch.equal(states[0][k], st[k]) for k in states[0] if k not in obj_val.layout.names)
        for st in states[1:]
    )
    if same_buffers:
        P = torch.stack([obj_val.resolve(st)[0] for st in states])
        single = evaluate(obj_val, P, metrics=(metric,), at=states[0], progress=progress, **kw)[
            metric
        ].tolist()
    else:
        single = score(states)
    order = sorted(range(len(states)), key=lambda i: -sign * single[i])
    chosen = [order[0]]
    best = single[order[0]]
    for i in order[1:]:
        cand = merge([states[j] for j in chosen + [i]])
        val = score([cand])[0]
        if sign * val > sign * best:
            chosen.append(i)
            best = val
    soup = (
        merge([states[j] for j in chosen])
        if len(chosen) > 1
        else Weights({k: v.clone() for k, v in states[chosen[0]].items()})
    )
    return soup, [names[j] for j in chosen]


@dataclass(repr=False)
class VarianceTable:
    """Per-layer weight variance before and after averaging k models (the "vanishing
    variance" of averaged uncorrelated weights: ``Var(mean) ≈ Var/k``), and the Xavier
    target ``2/(fan_in + fan_out)``."""

    rows: list
    k: int
    seconds: float = 0.0

    @property
    def table(self) -> list[dict]:
        return self.rows

    def to_pandas(self):
        import pandas as pd

        return pd.DataFrame(self.rows).set_index("layer")

    def __repr__(self) -> str:
        cols = ["layer", "before", "after", "ratio", "1/k", "xavier"]
        cells = [[r["layer"]] + [f"{r[c]:.4g}" for c in cols[1:]] for r in self.rows]
        w = [max(len(c), *(len(x[i]) for x in cells)) for i, c in enumerate(cols)]
        fmt = lambda cs: "  ".join(  # noqa: E731
            s.ljust(w[i]) if i == 0 else s.rjust(w[i]) for i, s in enumerate(cs)
        )
        return "\n".join(
            [f"VarianceTable({len(self.rows)} layers, k={self.k} models)", fmt(cols)]
            + [fmt(c) for c in cells]
        )

    def _repr_html_(self) -> str:
        from .results import _html_table

        cols = ["layer", "before", "after", "ratio", "1/k", "xavier"]
        return _html_table(
            cols,
            [[r["layer"]] + [f"{r[c]:.4g}" for c in cols[1:]] for r in self.rows],
            f"weight variance before / after averaging {self.k} models",
        )

    def plot(self):
        import plotly.graph_objects as go

        x = [r["layer"] for r in self.rows]
        fig = go.Figure(
            [
                go.Bar(x=x, y=[r["before"] for r in self.rows], name="before (mean over models)"),
                go.Bar(x=x, y=[r["after"] for r in self.rows], name="after averaging"),
                go.Scatter(
                    x=x,
                    y=[r["xavier"] for r in self.rows],
                    mode="markers+lines",
                    name="Xavier 2/(fan_in+fan_out)",
                    line={"dash": "dash"},
                ),
            ]
        )
        fig.update_layout(
            title=f"weight variance, averaging {self.k} models",
            barmode="group",
            yaxis_title="variance",
            template="plotly_white",
        )
        return fig


@api
def averaging_variance(points) -> VarianceTable:
    """Per layer (weights with ``ndim >= 2``): ``before`` = mean over the k models of the
    variance of their weights, ``after`` = variance of the uniform average, ``ratio`` =
    after / before (about ``1/k`` for uncorrelated models, about 1 for models near one
    another), and the Xavier target ``2/(fan_in + fan_out)``."""
    t0 = time.perf_counter()
    names, states = _named(points)
    _check_same(states, names)
    if len(states) < 2:
        raise LossvizError("averaging_variance needs at least 2 models")
    rows = []
    for key, v0 in states[0].items():
        if not v0.is_floating_point() or v0.ndim < 2:
            continue
        ws = [st[key].to(torch.float64) for st in states]
        before = float(np.mean([float(w.var(correction=0)) for w in ws]))
        after = float(torch.stack(ws).mean(0).var(correction=0))
        fan_in, fan_out = nn.init._calculate_fan_in_and_fan_out(v0)
        rows.append(
            {
                "layer": key,
                "before": before,
                "after": after,
                "ratio": after / before if before > 0 else float("nan"),
                "1/k": 1.0 / len(states),
                "xavier": 2.0 / (fan_in + fan_out),
            }
        )
    if not rows:
        raise LossvizError("no weight with ndim >= 2 to compare")
    return VarianceTable(rows, len(states), time.perf_counter() - t0)
