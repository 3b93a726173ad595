"""Directions in weight space for loss landscapes.

* :func:`random_directions`: Gaussian directions with filter normalization (Li, Xu, Taylor,
  Studer, Goldstein 2018, "Visualizing the Loss Landscape of Neural Nets").
* :func:`pca_directions`: principal components of a training trajectory (Li et al. 2018, §7).
* :func:`eigen_directions`: top Hessian eigenvectors.
* :func:`plane_through`: the orthonormal plane through three models (Garipov et al. 2018).
* :func:`model_direction`: ``b - a``.

Directions only ever cover *parameters*: BatchNorm running statistics and other buffers are
never perturbed.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor, nn

from .errors import CheckpointError, LossvizError
from .interrupt import api
from .objective import Objective
from .weights import Layout, Weights, as_state

_BUFFER_SUFFIXES = ("running_mean", "running_var", "num_batches_tracked")
_NORMS = ("filter", "layer", "none")


def point_params(point) -> Weights:
    """The parameters of a point in weight space (buffers left out), as :class:`Weights`.

    ``point``: an :class:`~lossviz.Objective` (its varying parameters at the model), an
    ``nn.Module`` (its parameters), :class:`Weights`, or a state dict / checkpoint path
    (floating-point entries except BatchNorm statistics).
    """
    if isinstance(point, Objective):
        return point.weights()
    if isinstance(point, Weights):
        return point
    if isinstance(point, nn.Module):
        return Weights({n: p.detach() for n, p in point.named_parameters()})
    if isinstance(point, (Mapping, str, os.PathLike)):
        state = as_state(point)
        return Weights(
            {
                k: v
                for k, v in state.items()
                if v.is_floating_point() and not k.endswith(_BUFFER_SUFFIXES)
            }
        )
    raise TypeError(
        "expected an Objective, an nn.Module, Weights, a state dict or a checkpoint path; "
        f"got {type(point).__name__}"
    )


def _layout_of(w: Weights) -> tuple[Layout, Tensor]:
    if len(w) == 0:
        raise LossvizError("no parameters to draw directions for")
    layout = Layout([(k, v.shape) for k, v in w.items()])
    v0 = next(iter(w.values()))
    return layout, layout.flatten(w, dtype=v0.dtype, device=v0.device)


def normalize_directions(
    d: Tensor, theta: Tensor, layout: Layout, *, norm: str = "filter", ignore: str | None = "biasbn"
) -> Tensor:
    """Rescale flat directions ``d`` (``(..., P)``) in place, relative to weights ``theta``.

    ``norm="filter"``: for every tensor with ``ndim >= 2`` and every filter ``j`` (a slice
    along dim 0), ``d[j] <- d[j]·||θ[j]|| / (||d[j]|| + 1e-10)`` (Li et al. 2018).
    ``norm="layer"``: the same with the whole tensor as one filter. ``norm="none"``: as
    drawn. Tensors with ``ndim <= 1`` are zeroed with ``ignore="biasbn"``; otherwise they are
    scaled as a single filter (``"filter"``/``"layer"``).
    """
    if norm not in _NORMS:
        raise LossvizError(f"norm must be one of {_NORMS}, got {norm!r}")
    if ignore not in ("biasbn", None):
        raise LossvizError(f"ignore must be 'biasbn' or None, got {ignore!r}")
    lead = d.shape[:-1]
    for shape, k, a in zip(layout.shapes, layout.numels, layout.offsets):
        seg = d[..., a : a + k]
        th = theta[a : a + k]
        if len(shape) <= 1:
            if ignore == "biasbn":
                seg.zero_()
            elif norm != "none":
                seg.mul_(th.norm() / (seg.norm(dim=-1, keepdim=True) + 1e-10))
        elif norm == "filter":
            rows = shape[0]
            s = seg.reshape(*lead, rows, k // rows)
            t = th.reshape(rows, k // rows)
            s.mul_(t.norm(dim=-1, keepdim=True) / (s.norm(dim=-1, keepdim=True) + 1e-10))
            seg.copy_(s.reshape(*lead, k))
        elif norm == "layer":
            seg.mul_(th.norm() / (seg.norm(dim=-1, keepdim=True) + 1e-10))
    return d


def iter_random_flat(
    theta: Tensor,
    layout: Layout,
    n: int,
    *,
    norm: str = "filter",
    ignore: str | None = "biasbn",
    seed: int = 0,
) -> Iterator[Tensor]:
    """Flat normalized random directions, one at a time (the stream behind
    :func:`random_directions`: the j-th direction does not depend on how many are drawn).

    Draws happen on the CPU from ``torch.Generator().manual_seed(seed)`` (so a seed gives
    the same directions on every device), then move to ``theta``'s device and dtype.
    """
    if norm not in _NORMS:
        raise LossvizError(f"norm must be one of {_NORMS}, got {norm!r}")
    if ignore not in ("biasbn", None):
        raise LossvizError(f"ignore must be 'biasbn' or None, got {ignore!r}")
    gen = torch.Generator().manual_seed(int(seed))
    draw = torch.float64 if theta.dtype == torch.float64 else torch.float32
    for _ in range(int(n)):
        d = torch.randn(theta.numel(), generator=gen, dtype=draw)
        if theta.device.type == "cuda":  # an asynchronous copy: no wait on the device
            d = d.pin_memory().to(theta.device, non_blocking=True)
        d = d.to(device=theta.device, dtype=theta.dtype)
        yield normalize_directions(d, theta, layout, norm=norm, ignore=ignore)


@api
def random_directions(
    obj_or_weights,
    n: int = 2,
    *,
    norm: str = "filter",
    ignore: str | None = "biasbn",
    seed: int = 0,
) -> list[Weights]:
    """``n`` random Gaussian directions, filter-normalized (Li et al. 2018).

    ``d ~ N(0, I)``; for every weight tensor with ``ndim >= 2`` and each filter ``j``:
    ``d[j] <- d[j]·||θ[j]|| / (||d[j]|| + 1e-10)``; 1-D tensors (biases, norm gains) are
    zeroed with ``ignore="biasbn"``. Buffers (BatchNorm statistics) are never part of a
    direction. The directions live on the weights' device and dtype.

    ``obj_or_weights``: an :class:`~lossviz.Objective` (its varying parameters), a model,
    :class:`Weights`, a state dict or a checkpoint path.

    >>> model = torch.nn.Linear(3, 2)
    >>> d, = random_directions(model, 1)
    >>> torch.allclose(d["weight"].norm(dim=1), model.weight.detach().norm(dim=1))
    True
    >>> float(d["bias"].abs().sum())
    0.0
    """
    if int(n) < 1:
        raise LossvizError(f"n must be at least 1, got {n}")
    w = point_params(obj_or_weights)
    layout, theta = _layout_of(w)
    return [
        layout.to_weights(d)
        for d in iter_random_flat(theta, layout, n, norm=norm, ignore=ignore, seed=seed)
    ]


@api
def model_direction(a, b) -> Weights:
    """The direction from model ``a`` to model ``b``: ``b - a`` (parameters only)."""
    return point_params(b) - point_params(a)


@api
def eigen_directions(obj: Objective, n: int = 2, at=None, **kw) -> list[Weights]:
    """The top-``n`` Hessian eigenvectors at ``at`` (unit norm, largest eigenvalue first),
    from :func:`lossviz.hessian.hessian_eigs` (keyword arguments are passed on).

    Unit directions: choose a ``span`` in weight units (e.g. a few times ``||θ||/√P``).
    """
    from .hessian import hessian_eigs

    if not isinstance(obj, Objective):
        raise TypeError(f"eigen_directions needs an Objective, got {type(obj).__name__}")
    return list(hessian_eigs(obj, k=n, at=at, **kw).vectors)


def _stack(points: Sequence, what: str) -> tuple[list[str], list[Weights], Tensor]:
    ws = [point_params(p) for p in points]
    keys = list(ws[0].keys())
    for i, w in enumerate(ws[1:], 1):
        if list(w.keys()) != keys:
            a, b = set(keys), set(w.keys())
            raise CheckpointError(
                f"{what} {i} has different parameters than {what} 0: "
                f"missing {sorted(a - b)[:10]}, extra {sorted(b - a)[:10]}"
            )
        bad = [k for k in keys if w[k].shape != ws[0][k].shape]
        if bad:
            raise CheckpointError(f"{what} {i}: shape mismatch in {bad[:10]}")
    v0 = ws[0][keys[0]]
    dtype = torch.float64 if v0.dtype == torch.float64 else torch.float32
    layout = Layout([(k, ws[0][k].shape) for k in keys])
    X = torch.stack([layout.flatten(w, dtype=dtype, device=v0.device) for w in ws])
    return keys, ws, X


@dataclass(repr=False)
class PCAResult:
    """Principal directions of a training trajectory (Li et al. 2018, §7).

    ``directions``: unit, orthogonal :class:`Weights`; ``explained_variance_ratio``: the share
    of the trajectory's variance along each; ``coords``: ``(T, n)`` coordinates of the
    checkpoints relative to ``center`` (``(θ_t - center)·d_k``).
    """

    directions: list
    explained_variance_ratio: np.ndarray
    coords: np.ndarray
    center: Weights
    labels: list = field(default_factory=list)

    @property
    def points(self) -> dict:
        return {"start": tuple(self.coords[0, :2]), "end": tuple(self.coords[-1, :2])}

    def __repr__(self) -> str:
        ev = ", ".join(f"{100 * v:.1f}%" for v in self.explained_variance_ratio)
        return (
            f"PCAResult({len(self.directions)} directions from {len(self.coords)} checkpoints, "
            f"explained variance {ev})"
        )

    def _repr_html_(self) -> str:
        from .results import _html_table

        rows = [
            [f"PC{i + 1}", f"{100 * v:.2f}%"] for i, v in enumerate(self.explained_variance_ratio)
        ]
        return _html_table(
            ["direction", "explained variance"],
            rows,
            f"PCA of a trajectory of {len(self.coords)} checkpoints",
        )

    def plot(self):
        import plotly.graph_objects as go

        c = self.coords
        ev = self.explained_variance_ratio
        y = c[:, 1] if c.shape[1] > 1 else np.zeros(len(c))
        text = [str(t) for t in self.labels] if self.labels else None
        fig = go.Figure(
            go.Scatter(x=c[:, 0], y=y, mode="lines+markers", text=text, name="trajectory")
        )
        fig.add_trace(
            go.Scatter(
                x=[c[0, 0]],
                y=[y[0]],
                mode="markers",
                name="start",
                marker={"size": 12, "symbol": "circle-open"},
            )
        )
        fig.add_trace(
            go.Scatter(
                x=[c[-1, 0]],
                y=[y[-1]],
                mode="markers",
                name="end",
                marker={"size": 12, "symbol": "star"},
            )
        )
        fig.update_layout(
            title="trajectory in its PCA plane",
            xaxis_title=f"PC1 ({100 * ev[0]:.1f}%)",
            yaxis_title=f"PC2 ({100 * ev[1]:.1f}%)" if len(ev) > 1 else "",
            template="plotly_white",
        )
        return fig


@api
def pca_directions(trajectory: Sequence, n: int = 2, *, center="last") -> PCAResult:
    """The top-``n`` principal directions of a trajectory of checkpoints (Li et al. 2018).

    PCA of the checkpoints' parameters (mean-centred, through the ``T×T`` Gram matrix, so
    memory stays ``O(T·P)``). ``center``: ``"last"`` (the reference tool's choice, the final
    model), ``"first"``, ``"mean"``, or an index into the trajectory: the origin of
    ``coords`` and of a surface drawn with the result.

    ``trajectory``: checkpoints as models, state dicts, :class:`Weights` or paths; a dict
    ``label -> checkpoint`` keeps the labels for plots.
    """
    labels: list = []
    if isinstance(trajectory, Mapping):
        labels = list(trajectory.keys())
        trajectory = list(trajectory.values())
    trajectory = list(trajectory)
    if len(trajectory) < n + 1:
        raise LossvizError(
            f"{n} principal directions need at least {n + 1} checkpoints, got {len(trajectory)}"
        )
    keys, ws, X = _stack(trajectory, "checkpoint")
    T = X.shape[0]
    if center == "last":
        ci = T - 1
    elif center == "first":
        ci = 0
    elif center == "mean":
        ci = None
    elif isinstance(center, (int, np.integer)) and -T <= int(center) < T:
        ci = int(center) % T
    else:
        raise LossvizError(
            f"center must be 'last', 'first', 'mean' or an index < {T}, got {center!r}"
        )
    c = X.mean(0) if ci is None else X[ci]
    Xc = X - X.mean(0)
    G = (Xc @ Xc.T).to(torch.float64)
    lam, U = torch.linalg.eigh(G)
    lam, U = lam.flip(0), U.flip(1)
    if float(lam[n - 1]) <= 1e-12 * max(float(lam[0]), 1e-300):
        raise LossvizError(
            f"the trajectory spans fewer than {n} dimensions (variances {lam[:n].tolist()})"
        )
    U = U[:, :n]
    # sign convention (as scikit-learn's svd_flip): the largest |u| entry is positive
    sign = torch.sign(U.gather(0, U.abs().argmax(0, keepdim=True)))
    U = U * sign
    D = (U.T.to(X.dtype) @ Xc) / lam[:n].sqrt().to(X.dtype)[:, None]
    coords = ((X - c) @ D.T).to(torch.float64).cpu().numpy()
    layout = Layout([(k, ws[0][k].shape) for k in keys])
    dt = ws[0][keys[0]].dtype
    dirs = [layout.to_weights(d.to(dt).clone()) for d in D]
    evr = (lam[:n] / lam.clamp_min(0).sum()).cpu().numpy()
    return PCAResult(dirs, evr, coords, layout.to_weights(c.to(dt).clone()), labels)


@dataclass(repr=False)
class Plane:
    """An orthonormal plane through three models: ``origin`` (the first), unit
    ``directions`` ``e1 = (b-a)/||b-a||`` and ``e2`` (the part of ``c-a`` orthogonal to
    ``e1``, normalized), and the three ``points`` as plane coordinates."""

    origin: Weights
    directions: list
    points: dict

    def span(self, margin: float = 0.25) -> tuple[tuple[float, float], tuple[float, float]]:
        """A surface span that shows the three points with a relative ``margin``."""
        xy = np.array(list(self.points.values()))
        lo, hi = xy.min(0), xy.max(0)
        w = max(float((hi - lo).max()), 1e-12)
        return ((lo[0] - margin * w, hi[0] + margin * w), (lo[1] - margin * w, hi[1] + margin * w))

    def __repr__(self) -> str:
        pts = ", ".join(f"{k}=({x:.4g}, {y:.4g})" for k, (x, y) in self.points.items())
        return f"Plane(through {pts})"


@api
def plane_through(a, b, c, *, names: Sequence[str] = ("a", "b", "c")) -> Plane:
    """The plane through models ``a``, ``b``, ``c`` (e.g. A, B and their merge), with an
    orthonormal basis from Gram-Schmidt: ``e1 = (b-a)/||b-a||``,
    ``e2 = (c-a - ((c-a)·e1)e1) / ||…||``; ``a`` is the origin.

    >>> A = {"w": torch.zeros(2, 2)}
    >>> B = {"w": torch.tensor([[2.0, 0], [0, 0]])}
    >>> C = {"w": torch.tensor([[1.0, 3.0], [0, 0]])}
    >>> plane_through(A, B, C).points
    {'a': (0.0, 0.0), 'b': (2.0, 0.0), 'c': (1.0, 3.0)}
    """
    if len(names) != 3 or len(set(names)) != 3:
        raise LossvizError(f"names must be three distinct labels, got {names!r}")
    keys, ws, X = _stack([a, b, c], "model")
    Xd = X.to(torch.float64)
    u, v = Xd[1] - Xd[0], Xd[2] - Xd[0]
    nu = u.norm()
    if float(nu) == 0:
        raise LossvizError("models a and b are identical: no plane through them")
    e1 = u / nu
    w = v - (v @ e1) * e1
    nw = w.norm()
    tol = float(torch.finfo(X.dtype).eps) ** 0.5  # the rounding of the given weights
    if float(nw) <= tol * max(float(v.norm()), 1e-300):
        raise LossvizError("the three models lie on one line: no unique plane through them")
    e2 = w / nw
    layout = Layout([(k, ws[0][k].shape) for k in keys])
    dt = ws[0][keys[0]].dtype
    pts = {
        names[0]: (0.0, 0.0),
        names[1]: (float(nu), 0.0),
        names[2]: (float(v @ e1), float(nw)),
    }
    return Plane(
        origin=layout.to_weights(X[0].to(dt).clone()),
        directions=[layout.to_weights(e.to(dt)) for e in (e1, e2)],
        points=pts,
    )
