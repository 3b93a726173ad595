"""Loss landscapes: 1-D slices and 2-D surfaces, evaluated in batches.

``f(a, b) = L(θ + a·d1 + b·d2)`` on a grid (Li, Xu, Taylor, Studer, Goldstein 2018,
"Visualizing the Loss Landscape of Neural Nets"). The points go through the evaluation
engine (:class:`lossviz.engine.Engine`): chunks of grid points per forward, the first
layer from three products for the whole grid where that is exact, the fastest way timed
on the CPU. :func:`evaluate` is the engine's public entry point: any set of flat points
(grid points, points on a curve between checkpoints) with one or more metrics, combined
over the batches exactly like :meth:`Objective.loss`. The results are the classes of
:mod:`lossviz.slices` (:class:`Slice1D`, :class:`Surface`, :class:`Evaluations`, also
importable from here).

Off the happy path: every argument is checked before any work starts (a
:class:`~lossviz.errors.LossvizError` naming it); a metric that does not apply to the
model's outputs and targets (accuracy of a regression) is refused; non-finite values are
kept as they are (``inf`` stays ``inf``, ``NaN`` stays ``NaN``) and reported with where
they occur; after Ctrl-C the points not evaluated are NaN and ``complete`` is False.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping

import numpy as np
import torch
from torch import Tensor, nn

from . import validate
from .directions import PCAResult, Plane, random_directions
from .engine import (
    Engine,
    check_engine_args,
    check_metrics,
    check_objective,
    evaluate_points,
    kw_engine,
    warn_nonfinite,
)
from .errors import ArgumentTypeError, CheckpointError, LossvizError
from .interrupt import api
from .metrics import resolve_metrics
from .objective import Objective
from .provenance import Provenance
from .sharding import check_shard, fingerprints
from .slices import Evaluations, Slice1D, Surface

__all__ = [
    "Evaluations",
    "Slice1D",
    "Surface",
    "coarse_to_fine",
    "evaluate",
    "flat_direction",
    "line",
    "surface",
]


def flat_direction(obj: Objective, d, name: str = "direction") -> Tensor:
    """A direction ``d`` over the Objective's varying parameters, as a flat tensor.

    Extra entries of a mapping are accepted only for buffers or all-zero tensors (never
    silently dropped). Errors name the argument; a direction holding NaN or inf is
    refused.

    Args:
        obj: the :class:`Objective` whose varying parameters (``obj.layout``) the
            direction spans.
        d: :class:`~lossviz.weights.Weights` / a mapping ``name -> tensor`` over the
            varying parameters, or a flat ``(P,)`` tensor in ``obj.layout`` order.
        name: the argument's name, used in the error messages.

    Returns:
        The ``(P,)`` tensor on the Objective's device and dtype.

    Raises:
        LossvizError: if a tensor ``d`` is not 1-D or not of size ``P``, or the direction
            holds NaN or inf.
        ArgumentTypeError: if ``d`` is neither a mapping nor a tensor, a mapping holds
            non-tensor entries, or a tensor is not real.
        CheckpointError: if a mapping moves parameters that do not vary in the
            Objective, lacks some of its varying parameters, or has other shapes.
    """
    if isinstance(d, Tensor):
        if d.ndim != 1:
            raise LossvizError(
                f"{name} must be a flat tensor of {obj.layout.size} numbers (or Weights), got "
                f"shape {tuple(d.shape)}"
            )
        flat = obj.as_flat(d, name=name)
    elif isinstance(d, Mapping):
        bad = [k for k, v in d.items() if not isinstance(v, Tensor)]
        if bad:
            raise ArgumentTypeError(f"{name} has non-tensor entries: {bad[:10]}")
        extra = [k for k in d if k not in obj.layout.names]
        moved = [k for k in extra if k not in obj.buffer_names and bool(d[k].ne(0).any())]
        if moved:
            raise CheckpointError(
                f"{name} moves parameters that do not vary in this Objective: {moved[:10]}; "
                "draw directions from the Objective (random_directions(obj)) or build it with "
                "params= including them"
            )
        flat = obj.as_flat({n: d[n] for n in obj.layout.names if n in d} if extra else d, name=name)
    else:
        raise ArgumentTypeError(
            f"{name} must be Weights, a mapping name -> tensor or a flat tensor, got "
            f"{type(d).__name__}"
        )
    if not bool(torch.isfinite(flat).all()):
        raise LossvizError(f"{name} holds NaN or inf entries")
    return flat


def _flat_points(obj: Objective, points) -> Tensor:
    if isinstance(points, Tensor):
        if points.ndim != 2 or points.shape[1] != obj.layout.size:
            raise LossvizError(
                f"points must be a (n, {obj.layout.size}) tensor, got {tuple(points.shape)}"
            )
        if points.shape[0] == 0:
            raise LossvizError("points is empty: no point to evaluate")
        if not (points.is_floating_point() or points.dtype in (torch.int32, torch.int64)):
            raise ArgumentTypeError(f"points must be a real tensor, got {points.dtype}")
        return points.to(obj.device, obj.dtype)
    if isinstance(points, (str, bytes, nn.Module)) or not isinstance(points, Iterable):
        raise ArgumentTypeError(
            f"points must be a (n, {obj.layout.size}) tensor or a list of points (models, "
            f"Weights, state dicts, paths), got {type(points).__name__}"
        )
    if isinstance(points, Mapping) and all(isinstance(v, Tensor) for v in points.values()):
        raise ArgumentTypeError(
            "points is a single state dict / Weights: pass a list of points ([point])"
        )
    pts = list(points.values()) if isinstance(points, Mapping) else list(points)
    if not pts:
        raise LossvizError("points is empty: no point to evaluate")
    flats = []
    for i, p in enumerate(pts):
        if isinstance(p, Tensor):
            if p.ndim != 1:
                raise LossvizError(
                    f"points[{i}] must be a flat tensor of {obj.layout.size} numbers, got "
                    f"shape {tuple(p.shape)}"
                )
            flats.append(obj.as_flat(p, name=f"points[{i}]"))
        else:
            flats.append(obj.resolve(p, name=f"points[{i}]")[0])
    return torch.stack(flats)


@api
def evaluate(
    obj: Objective,
    points,
    *,
    metrics=("loss",),
    at=None,
    bn=None,
    bn_data=None,
    precision=None,
    batched=None,
    chunk_size=None,
    progress=None,
) -> Evaluations:
    """Metrics at many points in weight space, batched.

    The loss combines over the batches as :meth:`Objective.loss` does (``Σ_b n_b·L_b / N``
    for a mean loss, ``Σ_b L_b`` with ``reduction="sum"``); every other metric is the
    sample-weighted mean ``Σ_b n_b·m_b / Σ_b n_b``. The points go through the evaluation
    engine (:class:`lossviz.engine.Engine`).

    Args:
        obj: the :class:`Objective` (model, loss, data); never changed.
        points: a ``(n, P)`` tensor of flat varying parameters (``obj.layout`` order) or
            a list of points (models, Weights, state dicts, paths; only their varying
            parameters are used).
        metrics: ``"loss"``, ``"accuracy"``, ``"error"`` or callables
            ``(outputs, targets) -> scalar`` (all from one forward pass), or a list /
            mapping name -> metric of them.
        at: where the parameters that do not vary and the buffers come from (default:
            the model).
        bn: None (the Objective's mode) or ``"recompute"``: BatchNorm running statistics
            re-estimated at every point on ``bn_data``.
        bn_data: batches for ``bn="recompute"`` (default: the Objective's data).
        precision: None, ``"bf16"`` or ``"fp16"``: the forward under autocast.
        batched: None (the engine times its ways and keeps the fastest), True (vmap) or
            False (one point at a time).
        chunk_size: points per chunk (default: from the free memory).
        progress: show a progress bar (None: unless ``LOSSVIZ_PROGRESS=0``).

    Returns:
        :class:`~lossviz.slices.Evaluations`: ``metric -> (n,)`` float64 array, with
        ``complete``, ``evaluated``, ``strategy``, ``seconds`` and ``provenance``
        (kernel ``"evaluate"``). Non-finite values are
        kept (``inf`` / ``NaN``) and reported in a warning naming the points; after
        Ctrl-C the points not evaluated are NaN and ``complete`` is False.

    Raises:
        LossvizError: a bad argument (naming it), before any work: ``points`` empty or not
            ``(n, P)``, an unknown metric, a ``bn`` the Objective was not built for,
            ``bn_data`` without ``bn="recompute"``, ``chunk_size < 1``; a metric that does
            not apply to the outputs and targets (accuracy of a regression), naming the
            shapes.
        ArgumentTypeError: an argument of the wrong type (``obj`` not an Objective,
            ``points`` a single state dict, a non-boolean ``batched`` / ``progress``).
        CheckpointError: a point or ``at`` whose parameters do not match the model's.
        DataError: an empty ``bn_data``.

    >>> from lossviz.data import digits, mlp
    >>> x, y = digits()
    >>> obj = Objective(mlp((64, 10)), torch.nn.functional.cross_entropy, (x, y))
    >>> flat, _ = obj.resolve()
    >>> r = evaluate(obj, torch.stack([flat, 2 * flat]), metrics=("loss", "accuracy"))
    >>> bool(abs(r["loss"][0] - obj.loss()) < 1e-6)
    True
    """
    check_objective(obj)
    ekw = check_engine_args(
        obj,
        bn=bn,
        bn_data=bn_data,
        precision=precision,
        batched=batched,
        chunk_size=chunk_size,
        progress=progress,
    )
    mk = resolve_metrics(obj, metrics)
    P = _flat_points(obj, points)
    _, fixed = obj.resolve(at, name="at")
    res = evaluate_points(obj, P, mk, fixed, progress=progress, where=lambda i: f"point {i}", **ekw)
    res.provenance = Provenance.of(obj, kernel="evaluate", at=at)
    return res


# slices ----------------------------------------------------------------------------------
def _check_span(span, name="span") -> tuple[float, float]:
    if isinstance(span, (str, bytes, Mapping)) or not isinstance(span, Iterable):
        raise ArgumentTypeError(f"{name} must be (low, high), got {validate.show(span)}")
    vals = list(span)
    if len(vals) != 2:
        raise LossvizError(f"{name} must be (low, high): two numbers, got {validate.show(span)}")
    lo = validate.number(vals[0], f"{name}[0]")
    hi = validate.number(vals[1], f"{name}[1]")
    if not lo < hi:
        raise LossvizError(f"{name} must have low < high, got ({lo:g}, {hi:g})")
    return lo, hi


def _check_finite_center(theta: Tensor) -> None:
    if not bool(torch.isfinite(theta).all()):
        raise LossvizError(
            "center holds NaN or inf weights: random directions cannot be normalized to it "
            "(give the direction(s) explicitly)"
        )


def _check_surface_n(n) -> tuple[int, int]:
    if isinstance(n, (int, np.integer)) and not isinstance(n, (bool, np.bool_)):
        n = (n, n)
    if isinstance(n, (str, bytes, Mapping)) or not isinstance(n, Iterable):
        raise ArgumentTypeError(f"n must be an int or (nx, ny), got {validate.show(n)}")
    n = list(n)
    if len(n) != 2:
        raise LossvizError(f"n must be an int or (nx, ny), got {validate.show(n)}")
    return validate.integer(n[0], "n[0]", low=2), validate.integer(n[1], "n[1]", low=2)


def _check_surface_span(span) -> tuple[tuple[float, float], tuple[float, float]]:
    if isinstance(span, (str, bytes, Mapping)) or not isinstance(span, Iterable):
        raise ArgumentTypeError(
            f"span must be ((a_lo, a_hi), (b_lo, b_hi)), got {validate.show(span)}"
        )
    sp = list(span)
    if len(sp) != 2:
        raise LossvizError(f"span must be ((a_lo, a_hi), (b_lo, b_hi)), got {validate.show(span)}")
    return _check_span(sp[0], "span[0]"), _check_span(sp[1], "span[1]")


@api
def line(
    obj: Objective,
    center=None,
    direction=None,
    *,
    span=(-1, 1),
    n: int = 51,
    metrics=("loss",),
    **kw,
) -> Slice1D:
    """The 1-D slice ``f(t) = L(θ + t·d)`` at ``n`` evenly spaced ``t`` in ``span``.

    The default direction is filter-normalized (Li, Xu, Taylor, Studer, Goldstein 2018,
    "Visualizing the Loss Landscape of Neural Nets"): ``d ~ N(0, I)``, then for every
    weight tensor with ``ndim >= 2`` and each filter ``j``,
    ``d[j] <- d[j]·||θ[j]|| / (||d[j]|| + 1e-10)``; biases and norm-layer parameters get
    ``d = 0`` (:func:`~lossviz.directions.random_directions` with ``ignore="biasbn"``).
    Each metric at each ``t`` is combined over the batches as in :func:`evaluate`.

    Args:
        obj: the :class:`Objective`; never changed.
        center: the point θ (default: the model).
        direction: Weights / mapping / flat tensor over the varying parameters (default:
            one filter-normalized random direction, seed 0).
        span: ``(low, high)`` of ``t``.
        n: number of points (at least 2).
        metrics: as in :func:`evaluate`.
        **kw: the engine's keywords, as in :func:`evaluate`: ``bn``, ``bn_data``,
            ``precision``, ``batched``, ``chunk_size``, ``progress``.

    Returns:
        :class:`~lossviz.slices.Slice1D` with ``t`` and one array per metric, the
        direction and center used, and ``provenance`` (kernel ``"line"``). After Ctrl-C
        the points not evaluated are NaN and ``complete`` is False.

    Raises:
        LossvizError: a bad argument (naming it), before any work: ``n < 2``, a ``span``
            that is not ``(low, high)`` with ``low < high``, a direction holding NaN / inf
            (or a center holding NaN / inf when the direction is drawn), a metric that
            does not apply, bad engine keywords (as in :func:`evaluate`).
        ArgumentTypeError: an argument of the wrong type (or an unknown keyword).
        CheckpointError: a ``center`` or ``direction`` that does not match the varying
            parameters.
        DataError: an empty ``bn_data``.

    >>> from lossviz.data import digits, mlp
    >>> x, y = digits()
    >>> obj = Objective(mlp((64, 10)), torch.nn.functional.cross_entropy, (x, y))
    >>> s = line(obj, n=5)
    >>> bool(abs(s.loss[2] - obj.loss()) < 1e-6)  # t = 0 is the model itself
    True
    """
    t0 = time.perf_counter()
    check_objective(obj)
    n = validate.integer(n, "n", low=2)
    lo, hi = _check_span(span)
    ekw = check_engine_args(obj, progress=kw.get("progress"), **kw_engine(kw))
    mk = resolve_metrics(obj, metrics)
    theta, fixed = obj.resolve(center, name="center")
    if direction is None:
        _check_finite_center(theta)
        direction = random_directions(obj.layout.to_weights(theta), 1)[0]
    d = flat_direction(obj, direction, "direction")
    t = np.linspace(lo, hi, n)
    tt = torch.as_tensor(t, device=obj.device, dtype=obj.dtype)
    mk, rules = check_metrics(obj, mk, theta, fixed, precision=ekw["precision"])
    eng = Engine(obj, mk, fixed, rules=rules, **ekw)
    out = np.full((len(eng.metrics), n), np.nan)
    done = np.zeros(n, dtype=bool)

    def make(idx, k):
        return theta + tt[k][:, None] * d

    complete = eng.run(
        make,
        np.arange(n),
        out,
        done,
        plane=(theta, d[None], lambda idx, k: tt[k][:, None]),
        progress=kw.get("progress"),
        desc="slice",
        where=lambda i: f"t={t[i]:.4g}",
    )
    return Slice1D(
        t=t,
        values={k: out[i] for i, k in enumerate(eng.metrics)},
        direction=obj.layout.to_weights(d.clone()),
        center=obj.layout.to_weights(theta.clone()),
        complete=complete,
        strategy=eng.strategy,
        seconds=time.perf_counter() - t0,
        evaluated=done,
        provenance=Provenance.of(obj, kernel="line", at=center),
    )


def coarse_to_fine(nx: int, ny: int) -> np.ndarray:
    """Grid indices (``i·nx + j``) ordered coarse to fine, each point once.

    Every ``s``-th row and column first (starting at row / column 0), for ``s`` a power
    of two halving down to 1; the first ``s`` is the smallest power of two with
    ``(max(nx, ny) - 1) // (2s) < 4`` (at most 8 steps along the longer axis). The last
    row / column join a level only where ``s`` divides ``n - 1``.

    Args:
        nx: number of columns (points along ``a``).
        ny: number of rows (points along ``b``).

    Returns:
        An int64 array holding each of ``0 .. nx·ny - 1`` once, row ``i = k // nx``,
        column ``j = k % nx``.
    """
    s = 1
    while (max(nx, ny) - 1) // (2 * s) >= 4:
        s *= 2
    seen = np.zeros(nx * ny, dtype=bool)
    order = []
    while s >= 1:
        ii, jj = np.meshgrid(np.arange(0, ny, s), np.arange(0, nx, s), indexing="ij")
        k = (ii * nx + jj).reshape(-1)
        # skip the points a coarser level already took
        k = k[~seen[k]]
        seen[k] = True
        order.append(k)
        s //= 2
    rest = np.flatnonzero(~seen)
    order.append(rest)
    return np.concatenate(order)


@api
def surface(
    obj: Objective,
    center=None,
    directions=None,
    *,
    span=None,
    n=(51, 51),
    metrics=("loss",),
    refine: bool = False,
    precision=None,
    trajectory=None,
    points: Mapping | None = None,
    callback: Callable | None = None,
    shard=None,
    **kw,
) -> Surface:
    """The 2-D slice ``f(a, b) = L(θ + a·d1 + b·d2)`` on an ``n`` grid.

    The surface plots of Li, Xu, Taylor, Studer, Goldstein 2018, "Visualizing the Loss
    Landscape of Neural Nets". The default directions are filter-normalized: ``d ~ N(0,
    I)``, then for every weight tensor with ``ndim >= 2`` and each filter ``j``,
    ``d[j] <- d[j]·||θ[j]|| / (||d[j]|| + 1e-10)``; biases and norm-layer parameters get
    ``d = 0`` (:func:`~lossviz.directions.random_directions` with ``ignore="biasbn"``).
    The grid is ``a = linspace(a_lo, a_hi, nx)``, ``b = linspace(b_lo, b_hi, ny)``; each
    metric at each grid point is combined over the batches as in :func:`evaluate`.

    Args:
        obj: the :class:`Objective`; never changed. The result keeps it as
            ``.objective`` (for :meth:`Surface.dashboard`).
        center: θ (default: the model, or the PCA center / plane origin).
        directions: two Weights / mappings / flat tensors (or a ``(2, P)`` tensor), a
            :class:`~lossviz.directions.PCAResult` or :class:`~lossviz.directions.Plane`
            (their trajectory / points are overlaid), or None for two filter-normalized
            random directions (seed 0).
        span: ``((a_lo, a_hi), (b_lo, b_hi))`` (default ``(-1, 1)`` each, or around a
            plane's points / a PCA trajectory).
        n: grid points per axis, an int or ``(nx, ny)`` (at least 2 each).
        metrics: as in :func:`evaluate`.
        refine: evaluate a coarse grid first, then fill in.
        precision: None, ``"bf16"`` or ``"fp16"`` (autocast).
        trajectory: checkpoints (or ``(T, 2)`` coordinates) overlaid on the plane.
        points: ``name -> point`` (or ``(a, b)``) marked on the plane.
        callback: ``callback(surface)`` after each chunk with the growing result (NaN
            where not yet evaluated); an exception it raises stops the evaluation and
            propagates. With ``shard="grid"`` each rank's callback sees its own share
            of the points, then once the gathered result.
        shard: None (default: no sharding; every rank of a job evaluates every point,
            and a data-parallel Objective, ``distributed=``, reduces each value over
            the ranks' shards of the data) or ``"grid"``: in a ``torch.distributed``
            job where every rank holds all the data (a plain Objective), the grid
            points are split between the ranks (contiguous shares of the evaluation
            order) and gathered, so that every rank returns the identical full surface
            (see :mod:`lossviz.sharding`).
        **kw: the other engine keywords, as in :func:`evaluate`: ``bn``, ``bn_data``,
            ``batched``, ``chunk_size``, ``progress``.

    Returns:
        :class:`~lossviz.slices.Surface`: ``values[m][i, j]`` at ``a = x[j]``,
        ``b = y[i]``, with the directions, center, overlays and ``provenance`` (kernel
        ``"surface"``). After Ctrl-C the points not evaluated are NaN and ``complete``
        is False.

    Raises:
        LossvizError: a bad argument (naming it), before any forward pass (overlays
            included): ``n`` below 2 per axis, a ``span`` that is not two ``(low,
            high)`` with ``low < high``, not exactly 2 directions (a PCAResult with
            fewer), a direction holding NaN / inf (or a center holding NaN / inf when the
            directions are drawn), parallel directions with a checkpoint overlay, a bad
            trajectory, a metric that does not apply, bad engine keywords (as in
            :func:`evaluate`); ``shard`` not None / ``"grid"``, ``"grid"`` without an
            initialised process group or with a data-parallel Objective; with
            ``"grid"``, a model, data or points that differ between the ranks (naming
            them) and a failure on another rank (naming it).
        ArgumentTypeError: an argument of the wrong type (``points`` not a mapping, a
            ``callback`` that is not callable, a non-boolean ``refine``, an unknown
            keyword).
        CheckpointError: a ``center``, direction or overlaid checkpoint that does not
            match the varying parameters.
        DataError: an empty ``bn_data``.

    >>> from lossviz.data import digits, mlp
    >>> x, y = digits()
    >>> obj = Objective(mlp((64, 10)), torch.nn.functional.cross_entropy, (x, y))
    >>> s = surface(obj, n=(5, 3), metrics=("loss", "accuracy"))
    >>> s["loss"].shape, bool(abs(s.loss[1, 2] - obj.loss()) < 1e-6)
    ((3, 5), True)
    """
    t0 = time.perf_counter()
    check_objective(obj)
    sh = check_shard(shard, obj, bn=kw.get("bn"))
    err = None
    try:  # with shard='grid' a failure on one rank is raised on every rank, below
        nx, ny = _check_surface_n(n)
        if span is not None:
            _check_surface_span(span)
        validate.boolean(refine, "refine")
        validate.callable_(callback, "callback", "a function callback(surface)", none=True)
        if points is not None and not isinstance(points, Mapping):
            raise ArgumentTypeError(
                f"points must be a mapping name -> point (or (a, b) coordinates), got "
                f"{type(points).__name__}"
            )
        ekw = check_engine_args(
            obj, precision=precision, progress=kw.get("progress"), **kw_engine(kw)
        )
        mk = resolve_metrics(obj, metrics)
        overlay_points: dict = {}
        overlay_path = None
        if isinstance(directions, PCAResult):
            if len(directions.directions) < 2:
                raise LossvizError("directions: the PCAResult has fewer than 2 directions")
            if center is None:
                center = directions.center
                overlay_path = directions.coords[:, :2]
            pca = directions
            directions = pca.directions[:2]
            if span is None and overlay_path is not None:
                lo, hi = overlay_path.min(0), overlay_path.max(0)
                w = max(float((hi - lo).max()), 1e-12)
                span = tuple((float(lo[i] - 0.25 * w), float(hi[i] + 0.25 * w)) for i in range(2))
        elif isinstance(directions, Plane):
            plane = directions
            if center is None:
                center = plane.origin
                overlay_points = dict(plane.points)
                if span is None:
                    span = plane.span()
            directions = plane.directions
        elif directions is not None and (
            isinstance(directions, (str, bytes, Tensor, Mapping))
            or not isinstance(directions, Iterable)
        ):
            if not (isinstance(directions, Tensor) and directions.ndim == 2):
                raise ArgumentTypeError(
                    "directions must be two directions (Weights / mappings / flat tensors, or a "
                    "(2, P) tensor), a PCAResult or a Plane, got "
                    + (
                        f"a tensor of shape {tuple(directions.shape)}"
                        if isinstance(directions, Tensor)
                        else type(directions).__name__
                    )
                )
        if span is None:
            span = ((-1, 1), (-1, 1))
        (x0, x1), (y0, y1) = _check_surface_span(span)

        theta, fixed = obj.resolve(center, name="center")
        if directions is None:
            _check_finite_center(theta)
            directions = random_directions(obj.layout.to_weights(theta), 2)
        directions = list(directions)
        if len(directions) != 2:
            raise LossvizError(f"directions: a surface needs 2 directions, got {len(directions)}")
        D = torch.stack(
            [flat_direction(obj, d, f"directions[{i}]") for i, d in enumerate(directions)]
        )
        x, y = np.linspace(x0, x1, nx), np.linspace(y0, y1, ny)
        # overlays first: a bad trajectory or point is reported before any forward pass
        proto = Surface(
            x=x,
            y=y,
            values={},
            directions=[obj.layout.to_weights(d.clone()) for d in D],
            center=obj.layout.to_weights(theta.clone()),
            points=overlay_points,
        )
        if overlay_path is not None:
            proto.paths["trajectory"] = np.asarray(overlay_path, dtype=np.float64)
        if trajectory is not None:
            proto.add_path("trajectory", trajectory)
        for name, p in (points or {}).items():
            proto.add_point(name, p)
        mk, rules = check_metrics(obj, mk, theta, fixed, precision=ekw["precision"])
        eng = Engine(obj, mk, fixed, rules=rules, **ekw)
    except Exception as e:
        if sh is None:
            raise
        err = e
    if sh is not None:
        sh.agree(
            err,
            "surface",
            lambda: fingerprints(
                obj, (theta, fixed, D, x, y), (list(eng.metrics), refine, ekw["bn"], precision)
            ),
        )
    out = np.full((len(eng.metrics), ny * nx), np.nan)
    done = np.zeros(ny * nx, dtype=bool)
    xt = torch.as_tensor(x, device=obj.device, dtype=obj.dtype)
    yt = torch.as_tensor(y, device=obj.device, dtype=obj.dtype)
    res = Surface(
        x=x,
        y=y,
        values={k: out[i].reshape(ny, nx) for i, k in enumerate(eng.metrics)},
        directions=proto.directions,
        center=proto.center,
        complete=False,
        strategy=None,
        seconds=0.0,
        paths=proto.paths,
        points=proto.points,
        evaluated=done.reshape(ny, nx),
        provenance=Provenance.of(obj, kernel="surface", at=center),
    )

    def make(idx, k):
        return (theta + xt[k % nx][:, None] * D[0]) + yt[k // nx][:, None] * D[1]

    order = coarse_to_fine(nx, ny) if refine else np.arange(nx * ny)

    def on_chunk():
        res.strategy = eng.strategy
        res.seconds = time.perf_counter() - t0
        if callback is not None:
            callback(res)

    def coords(idx, k):
        return torch.stack([xt[k % nx], yt[k // nx]], 1)

    def where(k):
        return f"(a, b) = ({x[k % nx]:.4g}, {y[k // nx]:.4g})"

    err, complete = None, False
    try:
        complete = eng.run(
            make,
            order if sh is None else order[sh.share(len(order))],
            out,
            done,
            plane=(theta, D, coords),
            progress=kw.get("progress"),
            desc="surface",
            on_chunk=on_chunk,
            where=where if sh is None else None,
        )
    except Exception as e:
        if sh is None:
            raise
        err = e
    if sh is not None:  # every rank's share, on every rank; then the warnings over all
        _, _, complete = sh.gather(out, done, complete, err, "surface", order)
        warn_nonfinite(list(eng.metrics), out, done, where)
        on_chunk()
    res.complete, res.strategy, res.seconds = complete, eng.strategy, time.perf_counter() - t0
    return res
