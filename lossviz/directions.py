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

from . import validate
from .errors import ArgumentTypeError, CheckpointError, LossvizError, named
from .interrupt import api
from .objective import Objective
from .points import as_points
from .provenance import Provenance
from .results import DataResult
from .weights import Layout, Weights, as_state

_BUFFER_SUFFIXES = ("running_mean", "running_var", "num_batches_tracked")
#: the normalizations of a random direction (see :func:`random_directions`)
NORMS = ("filter", "layer", "none")


def point_params(point, name: str = "point") -> Weights:
    """The parameters of a point in weight space (buffers left out), as :class:`Weights`.

    Args:
        point: An :class:`~lossviz.Objective` (its varying parameters at the model), an
            ``nn.Module`` (its parameters), :class:`Weights`, or a state dict / checkpoint
            path (floating-point entries except BatchNorm statistics).
        name: The argument's name, prefixed to error messages.

    Returns:
        The parameters as :class:`Weights` (not copied).

    Raises:
        ArgumentTypeError: if ``point`` is of none of these types.
        CheckpointError: if a checkpoint path cannot be loaded.
    """
    with named(name):
        return _point_params(point)


def _point_params(point) -> Weights:
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
    raise ArgumentTypeError(
        "expected an Objective, an nn.Module, Weights, a state dict or a checkpoint path; "
        f"got {type(point).__name__}"
    )


def _layout_of(w: Weights, name: str = "obj_or_weights") -> tuple[Layout, Tensor]:
    if len(w) == 0 or sum(v.numel() for v in w.values()) == 0:
        raise LossvizError(f"{name} has no parameters (with elements) to draw directions for")
    bad = [k for k, v in w.items() if not v.is_floating_point()]
    if bad:
        raise LossvizError(f"{name}: {bad[:10]} are not floating-point tensors")
    layout = Layout([(k, v.shape) for k, v in w.items()])
    v0 = next(v for v in w.values() if v.numel())
    flat = layout.flatten(w, dtype=v0.dtype, device=v0.device)
    if not bool(torch.isfinite(flat).all()):
        bad = [k for k, v in w.items() if not bool(torch.isfinite(v).all())]
        raise LossvizError(
            f"{name} holds NaN or inf in {bad[:10]}: directions cannot be normalized to it"
        )
    return layout, flat


def normalize_directions(
    d: Tensor, theta: Tensor, layout: Layout, *, norm: str = "filter", ignore: str | None = "biasbn"
) -> Tensor:
    """Rescale flat directions ``d`` (``(..., P)``) in place, relative to weights ``theta``.

    Filter normalization (Li, Xu, Taylor, Studer, Goldstein 2018, "Visualizing the Loss
    Landscape of Neural Nets"): for every tensor with ``ndim >= 2`` and every filter ``j``
    (a slice along dim 0)::

        d[j] <- d[j] · ||θ[j]|| / (||d[j]|| + 1e-10)

    ``norm="layer"``: the same with the whole tensor as one filter. ``norm="none"``: as
    drawn. Tensors with ``ndim <= 1`` are zeroed with ``ignore="biasbn"``; otherwise they are
    scaled as a single filter (``"filter"``/``"layer"``). A tensor with no elements has an
    empty direction; a filter of zero norm gets a zero direction.

    Args:
        d: Flat directions, shape ``(..., P)``; modified in place.
        theta: The flat weights, shape ``(P,)``.
        layout: The names, shapes and offsets of the ``P`` entries.
        norm: ``"filter"``, ``"layer"`` or ``"none"``.
        ignore: ``"biasbn"`` (zero the tensors with ``ndim <= 1``) or None.

    Returns:
        ``d`` itself, rescaled.

    Raises:
        LossvizError: if ``norm`` or ``ignore`` is not one of its choices.
    """
    validate.choice(norm, "norm", NORMS)
    validate.choice(ignore, "ignore", ("biasbn", None))
    lead = d.shape[:-1]
    for shape, k, a in zip(layout.shapes, layout.numels, layout.offsets):
        if k == 0:  # a tensor with no elements: nothing to scale
            continue
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
    """Flat normalized random directions, one at a time.

    The stream behind :func:`random_directions`: the j-th direction does not depend on how
    many are drawn. Draws happen on the CPU from ``torch.Generator().manual_seed(seed)``
    (so a seed gives the same directions on every device), in float64 for float64 weights
    and float32 otherwise, then move to ``theta``'s device and dtype and are normalized
    with :func:`normalize_directions`.

    Args:
        theta: The flat weights, shape ``(P,)``.
        layout: The names, shapes and offsets of the ``P`` entries.
        n: How many directions to yield.
        norm: ``"filter"``, ``"layer"`` or ``"none"``.
        ignore: ``"biasbn"`` or None (see :func:`normalize_directions`).
        seed: The seed of the CPU generator.

    Yields:
        Flat directions of shape ``(P,)``.

    Raises:
        LossvizError: if ``norm`` or ``ignore`` is not one of its choices (on the first
            ``next``).
    """
    validate.choice(norm, "norm", NORMS)
    validate.choice(ignore, "ignore", ("biasbn", None))
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
    """``n`` random Gaussian directions, filter-normalized.

    Filter normalization (Li, Xu, Taylor, Studer, Goldstein 2018, "Visualizing the Loss
    Landscape of Neural Nets"): draw ``d ~ N(0, I)`` shaped like the weights ``θ``; for
    every weight tensor with ``ndim >= 2`` and each filter ``j`` (a slice along dim 0)::

        d[j] <- d[j] · ||θ[j]|| / (||d[j]|| + 1e-10)

    Tensors with ``ndim <= 1`` (biases, norm gains) are zeroed with ``ignore="biasbn"``,
    otherwise scaled as one filter. Buffers (BatchNorm statistics) are never part of a
    direction. The directions live on the weights' device and dtype; the j-th direction
    for a seed does not depend on ``n`` nor on the device.

    Args:
        obj_or_weights: An :class:`~lossviz.Objective` (its varying parameters), a model,
            :class:`Weights`, a state dict or a checkpoint path.
        n: The number of directions.
        norm: ``"filter"`` (per filter, as above), ``"layer"`` (each tensor as one
            filter) or ``"none"`` (as drawn).
        ignore: ``"biasbn"`` (zero the tensors with ``ndim <= 1``) or None.
        seed: The seed of the draws (an integer >= 0).

    Returns:
        A list of ``n`` :class:`Weights` with the keys and shapes of the parameters.

    Raises:
        ArgumentTypeError: if ``n`` or ``seed`` is not an integer, or ``obj_or_weights`` is
            not a point (None or another type).
        LossvizError: if ``n < 1``, ``seed < 0``, ``norm`` or ``ignore`` is not one of its
            choices, or the weights are empty, not floating-point, or hold NaN or inf.
        CheckpointError: if a checkpoint path cannot be loaded.

    Examples:
        >>> model = torch.nn.Linear(3, 2)
        >>> d, = random_directions(model, 1)
        >>> torch.allclose(d["weight"].norm(dim=1), model.weight.detach().norm(dim=1))
        True
        >>> float(d["bias"].abs().sum())
        0.0
    """
    n = validate.integer(n, "n", low=1)
    validate.choice(norm, "norm", NORMS)
    validate.choice(ignore, "ignore", ("biasbn", None))
    seed = validate.seed(seed)
    w = point_params(obj_or_weights, "obj_or_weights")
    layout, theta = _layout_of(w)
    return [
        layout.to_weights(d)
        for d in iter_random_flat(theta, layout, n, norm=norm, ignore=ignore, seed=seed)
    ]


@api
def model_direction(a, b) -> Weights:
    """The direction from model ``a`` to model ``b``: ``b - a`` (parameters only).

    Args:
        a: The start point: an Objective, a model, :class:`Weights`, a state dict or a
            checkpoint path (buffers left out).
        b: The end point, in any of the same forms.

    Returns:
        ``b - a`` as :class:`Weights`.

    Raises:
        ArgumentTypeError: if ``a`` or ``b`` is not a point.
        CheckpointError: if they have different parameter names (or order) or shapes, or
            a checkpoint cannot be loaded.
    """
    pa, pb = point_params(a, "a"), point_params(b, "b")
    if list(pa.keys()) != list(pb.keys()):
        ka, kb = set(pa.keys()), set(pb.keys())
        raise CheckpointError(
            f"a and b have different parameters: only in a {sorted(ka - kb)[:10]}, only in b "
            f"{sorted(kb - ka)[:10]}" + ("" if ka != kb else " (same names in another order)")
        )
    bad = [
        f"{k}: {tuple(pa[k].shape)} vs {tuple(pb[k].shape)}"
        for k in pa
        if pa[k].shape != pb[k].shape
    ]
    if bad:
        raise CheckpointError(f"a and b differ in shape: {'; '.join(bad[:10])}")
    return pb - pa


@api
def eigen_directions(obj: Objective, n: int = 2, at=None, **kw) -> list[Weights]:
    """The top-``n`` Hessian eigenvectors at ``at`` (unit norm, largest eigenvalue first).

    Computed by :func:`lossviz.hessian.hessian_eigs` (Lanczos with full
    reorthogonalization). Unit directions: choose a ``span`` in weight units (e.g. a few
    times ``||θ||/√P``).

    Args:
        obj: The :class:`~lossviz.Objective` (model, data, loss).
        n: The number of eigenvectors (at most the number of parameters).
        at: The point (None: the model's current parameters).
        **kw: Passed on to :func:`~lossviz.hessian_eigs` (``tol``, ``curvature``, ...).

    Returns:
        A list of ``n`` unit :class:`Weights`.

    Raises:
        ArgumentTypeError: if ``obj`` is not an Objective or ``n`` not an integer.
        LossvizError: if ``n < 1`` or ``n`` exceeds the number of parameters; whatever
            :func:`~lossviz.hessian_eigs` raises for ``at`` and ``**kw``.
    """
    from .hessian import hessian_eigs

    if not isinstance(obj, Objective):
        raise ArgumentTypeError(f"obj must be a lossviz.Objective, got {type(obj).__name__}")
    n = validate.integer(n, "n", low=1)
    if n > obj.layout.size:
        raise LossvizError(f"n must be <= the number of parameters ({obj.layout.size}), got {n}")
    return list(hessian_eigs(obj, k=n, at=at, **kw).vectors)


def _stack(
    points: Sequence, what: str, names: Sequence[str] | None = None
) -> tuple[list[str], list[Weights], Tensor]:
    names = list(names) if names is not None else [f"{what} {i}" for i in range(len(points))]
    ws = [point_params(p, nm) for p, nm in zip(points, names)]
    keys = list(ws[0].keys())
    for i, w in enumerate(ws[1:], 1):
        if list(w.keys()) != keys:
            a, b = set(keys), set(w.keys())
            raise CheckpointError(
                f"{names[i]} has different parameters than {names[0]}: "
                f"missing {sorted(a - b)[:10]}, extra {sorted(b - a)[:10]}"
            )
        bad = [k for k in keys if w[k].shape != ws[0][k].shape]
        if bad:
            raise CheckpointError(
                f"{names[i]}: shape mismatch with {names[0]} in "
                + "; ".join(
                    f"{k}: {tuple(w[k].shape)} vs {tuple(ws[0][k].shape)}" for k in bad[:10]
                )
            )
    if not keys or sum(v.numel() for v in ws[0].values()) == 0:
        raise LossvizError(f"{names[0]} has no parameters (with elements)")
    v0 = ws[0][keys[0]]
    dtype = torch.float64 if v0.dtype == torch.float64 else torch.float32
    layout = Layout([(k, ws[0][k].shape) for k in keys])
    X = torch.stack([layout.flatten(w, dtype=dtype, device=v0.device) for w in ws])
    bad = [i for i in range(len(ws)) if not bool(torch.isfinite(X[i]).all())]
    if bad:
        raise LossvizError(f"{', '.join(names[i] for i in bad[:10])}: NaN or inf in the weights")
    return keys, ws, X


@dataclass(kw_only=True, repr=False)
class PCAResult(DataResult):
    """Principal directions of a training trajectory (:func:`pca_directions`).

    Li et al. 2018, §7, "Visualizing the Loss Landscape of Neural Nets".

    Attributes:
        directions: Unit, orthogonal :class:`Weights`, by decreasing variance.
        explained_variance_ratio: The share of the trajectory's variance along each,
            ``λ_k / Σ_i λ_i``.
        coords: ``(T, n)`` coordinates of the checkpoints relative to ``center``,
            ``(θ_t - center)·d_k``.
        center: The origin of ``coords`` (and of a surface drawn with the result).
        labels: The checkpoints' labels (dict keys or recorder steps; empty for a list).
        provenance: The :class:`~lossviz.provenance.Provenance` record of where the result
            was computed.
    """

    directions: list
    explained_variance_ratio: np.ndarray
    coords: np.ndarray
    center: Weights
    labels: list = field(default_factory=list)

    @property
    def points(self) -> dict:
        """The first and last checkpoints' coordinates, ``{"start": ..., "end": ...}``."""
        return {"start": tuple(self.coords[0, :2]), "end": tuple(self.coords[-1, :2])}

    def __repr__(self) -> str:
        ev = ", ".join(f"{100 * v:.1f}%" for v in self.explained_variance_ratio)
        return (
            f"PCAResult({len(self.directions)} directions from {len(self.coords)} checkpoints, "
            f"explained variance {ev})"
        )

    def _repr_html_(self) -> str:
        from .formatting import html_table

        rows = [
            [f"PC{i + 1}", f"{100 * v:.2f}%"] for i, v in enumerate(self.explained_variance_ratio)
        ]
        return html_table(
            ["direction", "explained variance"],
            rows,
            f"PCA of a trajectory of {len(self.coords)} checkpoints",
        )

    def plot(self):
        """The trajectory in its first two principal coordinates (a plotly Figure)."""
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
def pca_directions(trajectory, n: int = 2, *, center="last") -> PCAResult:
    """The top-``n`` principal directions of a trajectory of checkpoints.

    As in Li, Xu, Taylor, Studer, Goldstein 2018, "Visualizing the Loss Landscape of Neural
    Nets", §7. PCA of the checkpoints' parameters ``X`` (``T×P``, mean-centred:
    ``Xc = X - mean``) through the ``T×T`` Gram matrix, so memory stays ``O(T·P)``::

        Xc Xcᵀ = U Λ Uᵀ,   d_k = Xcᵀ u_k / √λ_k,   ratio_k = λ_k / Σ_i λ_i

    Each ``u_k`` is signed so that its largest-magnitude entry is positive (as
    scikit-learn's ``svd_flip``).

    Args:
        trajectory: Checkpoints as models, state dicts, :class:`Weights` or paths, in a
            list, a dict ``label -> checkpoint`` or a :class:`~lossviz.TrajectoryRecorder`
            (the dict's keys or the recorder's steps label the points in plots).
        n: The number of directions; the trajectory needs at least ``n + 1`` checkpoints.
        center: ``"last"`` (the reference tool's choice, the final model), ``"first"``,
            ``"mean"``, or an index into the trajectory: the origin of ``coords`` and of a
            surface drawn with the result.

    Returns:
        A :class:`PCAResult`.

    Raises:
        ArgumentTypeError: if ``n`` is not an integer, ``trajectory`` is a single point
            or not a collection of points, or a checkpoint is not a point.
        LossvizError: if ``n < 1``, there are fewer than ``n + 1`` checkpoints, ``center``
            is not a valid choice or index, the checkpoints are all equal, span fewer
            than ``n`` dimensions, hold NaN or inf, or have no parameters.
        CheckpointError: if checkpoints differ in parameter names or shapes, or one cannot
            be loaded.
    """
    n = validate.integer(n, "n", low=1)
    labels, trajectory, keyed = as_points(
        trajectory, "trajectory", at_least=n + 1, what=f"{n} principal direction(s)"
    )
    if not keyed:
        labels = []
    T = len(trajectory)
    if isinstance(center, str) and center in ("last", "first", "mean"):
        ci = {"last": T - 1, "first": 0, "mean": None}[center]
    elif (
        isinstance(center, (int, np.integer))
        and not isinstance(center, (bool, np.bool_))
        and -T <= int(center) < T
    ):
        ci = int(center) % T
    else:
        raise LossvizError(
            f"center must be 'last', 'first', 'mean' or an index in [-{T}, {T}), got {center!r}"
        )
    keys, ws, X = _stack(trajectory, "checkpoint")
    if all(torch.equal(X[i], X[0]) for i in range(1, T)):
        raise LossvizError(
            "trajectory: all checkpoints are the same point: no direction to find (PCA needs "
            "at least 2 distinct checkpoints)"
        )
    c = X.mean(0) if ci is None else X[ci]
    Xc = X - X.mean(0)
    G = (Xc @ Xc.T).to(torch.float64)
    lam, U = torch.linalg.eigh(G)
    lam, U = lam.flip(0), U.flip(1)
    # variances below the rounding of the given weights are no direction
    eps = float(torch.finfo(X.dtype).eps)
    floor = (T * eps * float(X.norm(dim=1).max())) ** 2
    if float(lam[n - 1]) <= max(1e-12 * float(lam[0]), floor):
        raise LossvizError(
            f"trajectory: the checkpoints span fewer than {n} dimension(s) (variances "
            f"{[float(f'{v:.3g}') for v in lam[:n].tolist()]}); ask for fewer directions (n=)"
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
    return PCAResult(
        directions=dirs,
        explained_variance_ratio=evr,
        coords=coords,
        center=layout.to_weights(c.to(dt).clone()),
        labels=labels,
        provenance=Provenance.of(dirs, kernel="pca_directions"),
    )


@dataclass(kw_only=True, repr=False)
class Plane(DataResult):
    """An orthonormal plane through three models (:func:`plane_through`).

    Attributes:
        origin: The first model's parameters, the plane's origin.
        directions: The unit directions ``[e1, e2]``: ``e1 = (b-a)/||b-a||`` and ``e2``
            the part of ``c-a`` orthogonal to ``e1``, normalized.
        points: The three models' plane coordinates, ``name -> (x, y)``.
        provenance: The :class:`~lossviz.provenance.Provenance` record of where the result
            was computed.
    """

    origin: Weights
    directions: list
    points: dict

    def span(self, margin: float = 0.25) -> tuple[tuple[float, float], tuple[float, float]]:
        """A surface span that shows the three points with a relative ``margin``.

        Args:
            margin: The margin on each side, as a fraction of the points' largest extent.

        Returns:
            ``((x_lo, x_hi), (y_lo, y_hi))``.
        """
        xy = np.array(list(self.points.values()))
        lo, hi = xy.min(0), xy.max(0)
        w = max(float((hi - lo).max()), 1e-12)
        return ((lo[0] - margin * w, hi[0] + margin * w), (lo[1] - margin * w, hi[1] + margin * w))

    def __repr__(self) -> str:
        pts = ", ".join(f"{k}=({x:.4g}, {y:.4g})" for k, (x, y) in self.points.items())
        return f"Plane(through {pts})"


@api
def plane_through(a, b, c, *, names: Sequence[str] = ("a", "b", "c")) -> Plane:
    """The plane through models ``a``, ``b``, ``c`` (e.g. A, B and their merge).

    As in Garipov, Izmailov, Podoprikhin, Vetrov, Wilson 2018, "Loss Surfaces, Mode
    Connectivity, and Fast Ensembling of DNNs". The orthonormal basis comes from
    Gram-Schmidt (in float64), with ``a`` as the origin::

        e1 = (b-a) / ||b-a||,   e2 = (c-a - ((c-a)·e1) e1) / ||c-a - ((c-a)·e1) e1||

    Args:
        a: The first model (the origin): an Objective, a model, :class:`Weights`, a state
            dict or a checkpoint path.
        b: The second model (along ``e1``).
        c: The third model.
        names: Three distinct labels of the points in :attr:`Plane.points`.

    Returns:
        A :class:`Plane`.

    Raises:
        ArgumentTypeError: if ``a``, ``b`` or ``c`` is not a point.
        LossvizError: if ``names`` is not three distinct strings, ``a == b``, the three
            points lie on one line, or the weights hold NaN or inf or are empty.
        CheckpointError: if the models differ in parameter names or shapes.

    Examples:
        >>> A = {"w": torch.zeros(2, 2)}
        >>> B = {"w": torch.tensor([[2.0, 0], [0, 0]])}
        >>> C = {"w": torch.tensor([[1.0, 3.0], [0, 0]])}
        >>> plane_through(A, B, C).points
        {'a': (0.0, 0.0), 'b': (2.0, 0.0), 'c': (1.0, 3.0)}
    """
    if (
        isinstance(names, (str, bytes))
        or not isinstance(names, Sequence)
        or len(names) != 3
        or not all(isinstance(s, str) for s in names)
        or len(set(names)) != 3
    ):
        raise LossvizError(f"names must be three distinct strings, got {names!r}")
    keys, ws, X = _stack([a, b, c], "model", ("a", "b", "c"))
    Xd = X.to(torch.float64)
    u, v = Xd[1] - Xd[0], Xd[2] - Xd[0]
    nu = u.norm()
    if float(nu) == 0:
        raise LossvizError("a and b are the same point: no plane through them")
    e1 = u / nu
    w = v - (v @ e1) * e1
    nw = w.norm()
    tol = float(torch.finfo(X.dtype).eps) ** 0.5  # the rounding of the given weights
    if float(nw) <= tol * max(float(v.norm()), 1e-300):
        raise LossvizError("a, b and c lie on one line: no unique plane through them")
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
        provenance=Provenance.of(ws[0], kernel="plane_through"),
    )
