"""N-D slices of a loss landscape: the loss on an ``n^d`` grid in ``d >= 3`` directions.

``f(c) = L(θ + Σ_k c_k·d_k)`` for every ``c`` on the grid ``c_k ∈ linspace(lo_k, hi_k,
n_k)``: the N-dimensional grids of Landscaper (Chen, Hadler, Xie, et al. 2026,
"Landscaper: Understanding Loss Landscapes Through Multi-Dimensional Topological
Analysis"), with filter-normalized random directions by default (Li, Xu, Taylor, Studer,
Goldstein 2018, "Visualizing the Loss Landscape of Neural Nets"). The grid points go
through the evaluation engine (:class:`lossviz.engine.Engine`) in blocks of at most
65,536 points (each block in chunks, the first layer from ``d + 1`` products where that
is exact), so the grid of points never exists at once; the values are written into one
float64 array, in memory or, with ``path=``, a ``.npy`` file on disk
(``numpy.lib.format.open_memmap``) that is filled block by block. A grid too large for
the memory (or the disk) is refused before any work, saying how large it is.

:class:`HypercubeResult` gives 2-D projections (the minimum or mean over the other axes),
the topology of the grid (:func:`lossviz.landscape_topology`: basins, saddles, merge tree,
SMAD) and plots.
"""

from __future__ import annotations

import os
import shutil
import time
import warnings
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor

from . import validate
from .directions import random_directions
from .engine import Engine, check_engine_args, check_metrics, check_objective, kw_engine
from .errors import ArgumentTypeError, LossvizError, warn
from .formatting import short
from .interrupt import api, keep_partial
from .landscape import flat_direction
from .metrics import resolve_metrics
from .objective import Objective
from .provenance import Provenance
from .results import DataResult
from .topology import TopologyResult, landscape_topology

__all__ = ["HypercubeResult", "hypercube"]

#: grid points per block handed to the engine (its buffers hold one block)
BLOCK = 65536
#: the share of the available memory an in-memory grid may take
MEMORY_SHARE = 0.25


def _gib(b: float) -> str:
    if b >= 2**30:
        return f"{b / 2**30:.3g} GiB"
    return f"{b / 2**20:.3g} MiB"


def _available_memory() -> float:
    try:
        return float(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
    except (ValueError, OSError, AttributeError):  # pragma: no cover
        return float(4 << 30)


@dataclass(kw_only=True, repr=False)
class HypercubeResult(DataResult):
    """The loss on an N-D grid ``f(c) = L(θ + Σ_k c_k·d_k)`` (:func:`hypercube`).

    ``values[m][i_0, …, i_{d-1}]`` is metric ``m`` at ``c_k = axes[k][i_k]``. Index it by
    metric (``r["loss"]`` or ``r.loss``). The arrays are views of one ``(n_metrics,
    *shape)`` float64 array, a memory-mapped ``.npy`` file when computed with ``path=``
    (``numpy.load(path, mmap_mode="r")[i]`` reads metric ``i`` back). Grid points are
    evaluated in C order (the last axis fastest): after Ctrl-C the first ``n_evaluated``
    points hold values and the others are NaN.

    Attributes:
        axes: ``d`` float64 arrays, the coordinates ``c_k`` along each direction.
        values: ``metric name -> (n_0, …, n_{d-1})`` float64 array (NaN where not
            evaluated; non-finite values kept).
        directions: the ``d`` directions (:class:`~lossviz.weights.Weights` over the
            varying parameters; empty when built by hand).
        center: the point ``θ`` at ``c = 0`` (Weights; None when built by hand).
        path: the ``.npy`` file holding the values (None: in memory).
        complete: False when interrupted (Ctrl-C).
        n_evaluated: the number of grid points evaluated (the first ones in C order).
        strategy: how the engine ran the points, ``"vmap"`` or ``"loop"``.
        seconds: wall time.
        provenance: where it comes from (:class:`~lossviz.provenance.Provenance`; None
            when built by hand).
    """

    axes: list
    values: dict
    directions: list = field(default_factory=list)
    center: object = None
    path: str | None = None
    complete: bool = True
    n_evaluated: int = 0
    strategy: str | None = None
    seconds: float = 0.0

    def __getitem__(self, metric: str) -> np.ndarray:
        if metric not in self.values:
            raise LossvizError(f"no metric {metric!r}; have {list(self.values)}")
        return self.values[metric]

    @property
    def loss(self) -> np.ndarray:
        """The ``"loss"`` values (a :class:`~lossviz.errors.LossvizError` if not computed)."""
        return self["loss"]

    @property
    def shape(self) -> tuple:
        """The grid's shape ``(n_0, …, n_{d-1})``."""
        return tuple(len(a) for a in self.axes)

    @property
    def n_points(self) -> int:
        """The number of grid points."""
        return int(np.prod(self.shape))

    @property
    def evaluated(self) -> np.ndarray:
        """Bool mask shaped like the grid: which points were evaluated."""
        return (np.arange(self.n_points) < self.n_evaluated).reshape(self.shape)

    def _axes_pair(self, axes) -> tuple[int, int]:
        d = len(self.axes)
        if isinstance(axes, (str, bytes)) or not isinstance(axes, Sequence) or len(axes) != 2:
            raise ArgumentTypeError(f"axes must be two axis numbers (i, j), got {axes!r}")
        i = validate.integer(axes[0], "axes[0]", low=0, high=d - 1)
        j = validate.integer(axes[1], "axes[1]", low=0, high=d - 1)
        if i == j:
            raise LossvizError(f"axes must be two different axes, got ({i}, {j})")
        return i, j

    def projection(self, axes=(0, 1), reduce: str = "min", metric: str = "loss") -> np.ndarray:
        """The grid reduced over every axis but two: ``min`` or ``mean`` over the others.

        ``P[q, p] = reduce_{c_k, k ∉ {i, j}} f(c)`` at ``c_i = axes_i[p]``,
        ``c_j = axes_j[q]`` (rows follow the second axis, as :class:`Surface` rows follow
        ``b``). NaN (a point not evaluated, or a NaN loss) propagates: a projected value
        is NaN when any point it reduces is.

        Args:
            axes: ``(i, j)``: the axes kept (the x and y of the plot).
            reduce: ``"min"`` (the lowest loss reachable along the other directions) or
                ``"mean"``.
            metric: the metric's name.

        Returns:
            ``(n_j, n_i)`` float64 array.

        Raises:
            LossvizError: an unknown metric or ``reduce``, equal or out-of-range axes.
            ArgumentTypeError: ``axes`` not two integers.
        """
        i, j = self._axes_pair(axes)
        validate.choice(reduce, "reduce", ("min", "mean"))
        v = self[metric]
        others = tuple(k for k in range(v.ndim) if k not in (i, j))
        fn = np.min if reduce == "min" else np.mean
        out = fn(v, axis=others) if others else np.asarray(v)
        # the remaining axes are (i, j) in increasing order
        out = np.asarray(out, dtype=np.float64)
        return out if j < i else out.T

    def topology(
        self, metric: str = "loss", *, min_persistence: float = 0.0, nonfinite: str = "raise"
    ) -> TopologyResult:
        """Basins, saddles, merge tree and SMAD of the whole N-D grid.

        :func:`lossviz.landscape_topology` on ``values[metric]`` (the neighbours of a grid
        point differ by one step along one axis).

        Args:
            metric: the metric's name.
            min_persistence: leave out basins of depth ``<= min_persistence``.
            nonfinite: ``"raise"`` or ``"top"``, as in :func:`~lossviz.landscape_topology`.

        Returns:
            :class:`~lossviz.topology.TopologyResult` (axes in the grid's order).

        Raises:
            LossvizError: as :func:`~lossviz.landscape_topology` (an incomplete grid, NaN /
                inf values, a grid too large for the memory GUDHI needs).
            ImportError: GUDHI is not installed (``pip install 'lossviz[topology]'``).
        """
        return landscape_topology(
            self, metric=metric, min_persistence=min_persistence, nonfinite=nonfinite
        )

    def __repr__(self) -> str:
        grid = "×".join(str(n) for n in self.shape)
        parts = []
        for k, v in self.values.items():
            a = np.asarray(v).reshape(-1)[: self.n_evaluated]
            ok = a[~np.isnan(a)]
            s = f"{k}: min {short(ok.min())}, max {short(ok.max())}" if len(ok) else f"{k}: none"
            bad = int((~np.isfinite(a)).sum())
            if bad:
                s += f", NOT FINITE at {bad} point(s)"
            parts.append(s)
        state = (
            "" if self.complete else f", INCOMPLETE ({self.n_evaluated} of {self.n_points} points)"
        )
        where = f", on disk at {self.path}" if self.path else ""
        return (
            f"HypercubeResult({grid} grid in {len(self.axes)} directions; "
            + "; ".join(parts)
            + f"; {self.seconds:.2f} s, {self.strategy}{where}{state})"
        )

    def _repr_html_(self) -> str:
        from .formatting import html_table

        rows = []
        for k, v in self.values.items():
            a = np.asarray(v).reshape(-1)[: self.n_evaluated]
            ok = a[~np.isnan(a)]
            rows.append(
                [
                    k,
                    short(ok.min()) if len(ok) else "nan",
                    short(ok.max()) if len(ok) else "nan",
                    int((~np.isfinite(a)).sum()),
                ]
            )
        cap = f"{'×'.join(str(n) for n in self.shape)} grid, {self.seconds:.2f} s" + (
            "" if self.complete else f" (incomplete: {self.n_evaluated} of {self.n_points})"
        )
        return html_table(["metric", "min", "max", "not finite"], rows, cap)

    def plot(
        self,
        axes=(0, 1),
        reduce: str = "min",
        metric: str = "loss",
        *,
        topology: TopologyResult | None = None,
    ):
        """A contour plot of a 2-D projection (:meth:`projection`), minima and saddles marked.

        Args:
            axes: ``(i, j)``: the axes shown (x, y).
            reduce: ``"min"`` or ``"mean"`` over the other axes.
            metric: the metric's name.
            topology: a :class:`~lossviz.topology.TopologyResult` of this grid
                (:meth:`topology`): its minima and saddles are drawn at their coordinates
                along the two axes.

        Returns:
            A ``plotly.graph_objects.Figure``.

        Raises:
            LossvizError: as :meth:`projection`; a ``topology`` of another grid.
            ArgumentTypeError: ``topology`` not a TopologyResult.
        """
        import plotly.graph_objects as go

        z = self.projection(axes, reduce, metric)
        i, j = self._axes_pair(axes)
        fig = go.Figure(
            go.Contour(
                x=self.axes[i], y=self.axes[j], z=z, ncontours=30, colorbar={"title": metric}
            )
        )
        if topology is not None:
            if not isinstance(topology, TopologyResult):
                raise ArgumentTypeError(
                    f"topology must be a TopologyResult, got {type(topology).__name__}"
                )
            if [len(a) for a in topology.axes] != list(self.shape):
                raise LossvizError("topology: it was computed on a grid of another shape")
            mc = topology.coords(topology.minima)
            sc = topology.coords(topology.saddles[1:])
            sc = sc[np.isfinite(sc).all(1)]
            fig.add_trace(
                go.Scatter(
                    x=mc[:, i],
                    y=mc[:, j],
                    mode="markers",
                    marker={"color": "white", "size": 9, "line": {"color": "black", "width": 1}},
                    text=[f"basin {k}" for k in range(len(mc))],
                    name="minima",
                )
            )
            fig.add_trace(
                go.Scatter(
                    x=sc[:, i],
                    y=sc[:, j],
                    mode="markers",
                    marker={"color": "firebrick", "size": 9, "symbol": "x"},
                    name="saddles",
                )
            )
        fig.update_layout(
            title=f"{reduce} of {metric} over the other {len(self.shape) - 2} axes"
            + ("" if self.complete else " (incomplete)"),
            xaxis_title=f"c{i}",
            yaxis_title=f"c{j}",
            template="plotly_white",
        )
        return fig


# argument checks ---------------------------------------------------------------------------
def _check_n(n, d: int) -> list[int]:
    if isinstance(n, (int, np.integer)) and not isinstance(n, (bool, np.bool_)):
        return [validate.integer(n, "n", low=2)] * d
    if isinstance(n, (str, bytes, Mapping)) or not isinstance(n, Iterable):
        raise ArgumentTypeError(
            f"n must be an int or one int per direction, got {validate.show(n)}"
        )
    n = list(n)
    if len(n) != d:
        raise LossvizError(f"n: {len(n)} numbers for {d} directions")
    return [validate.integer(v, f"n[{i}]", low=2) for i, v in enumerate(n)]


def _check_one_span(span, name) -> tuple[float, float]:
    if isinstance(span, (str, bytes, Mapping)) or not isinstance(span, Iterable):
        raise ArgumentTypeError(f"{name} must be (low, high), got {validate.show(span)}")
    v = list(span)
    if len(v) != 2:
        raise LossvizError(f"{name} must be (low, high), got {validate.show(span)}")
    lo, hi = validate.number(v[0], f"{name}[0]"), validate.number(v[1], f"{name}[1]")
    if not lo < hi:
        raise LossvizError(f"{name} must have low < high, got ({lo:g}, {hi:g})")
    return lo, hi


def _check_spans(span, d: int) -> list[tuple[float, float]]:
    if isinstance(span, (str, bytes, Mapping)) or not isinstance(span, Iterable):
        raise ArgumentTypeError(
            f"span must be (low, high) or one (low, high) per direction, got {validate.show(span)}"
        )
    v = list(span)
    if len(v) == 2 and all(isinstance(x, (int, float, np.integer, np.floating)) for x in v):
        return [_check_one_span(v, "span")] * d
    if len(v) != d:
        raise LossvizError(f"span: {len(v)} ranges for {d} directions")
    return [_check_one_span(s, f"span[{i}]") for i, s in enumerate(v)]


def _check_directions(directions):
    """``(d, directions or None)``: the number of directions, and the list given."""
    if isinstance(directions, (int, np.integer)) and not isinstance(directions, bool):
        d = validate.integer(directions, "directions", low=1)
        dirs = None
    elif isinstance(directions, Tensor):
        if directions.ndim != 2:
            raise LossvizError(
                f"directions: a tensor must be (d, P), got shape {tuple(directions.shape)}"
            )
        dirs = list(directions)
        d = len(dirs)
    elif isinstance(directions, (str, bytes, Mapping)) or not isinstance(directions, Iterable):
        raise ArgumentTypeError(
            "directions must be a number of random directions, a list of directions "
            f"(Weights / mappings / flat tensors) or a (d, P) tensor, got "
            f"{type(directions).__name__}"
        )
    else:
        dirs = list(directions)
        d = len(dirs)
    if d < 3:
        raise LossvizError(
            f"directions: a hypercube needs d >= 3 directions, got {d}; use lossviz.surface "
            "(2) or lossviz.line (1)"
        )
    return d, dirs


def _check_size(n_points: int, n_metrics: int, path) -> str | None:
    need = float(n_points) * n_metrics * 8
    grid = f"{n_points:,} grid points × {n_metrics} metric(s) × 8 bytes = {_gib(need)}"
    if path is None:
        avail = _available_memory()
        if need > MEMORY_SHARE * avail:
            raise LossvizError(
                f"the grid is too large for the memory: {grid}, more than "
                f"{int(MEMORY_SHARE * 100)} % of the {_gib(avail)} available; pass "
                "path='grid.npy' to stream it to a file on disk, or use fewer points per axis "
                "(n=) or fewer directions"
            )
        return None
    if isinstance(path, bytes) or not isinstance(path, (str, os.PathLike)):
        raise ArgumentTypeError(f"path must be a str or a path, got {type(path).__name__}")
    path = os.fspath(path)
    if not path:
        raise LossvizError("path is empty")
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise LossvizError(f"path {path!r}: the folder {folder!r} does not exist")
    if os.path.isdir(path):
        raise LossvizError(f"path {path!r} is a folder; give a file name such as 'grid.npy'")
    free = float(shutil.disk_usage(folder).free)
    if need + (1 << 20) > free:
        raise LossvizError(
            f"the grid is too large for the disk: {grid}, but {folder!r} has {_gib(free)} "
            "free; use fewer points per axis (n=) or fewer directions, or a path on a larger "
            "disk"
        )
    return path


# the kernel --------------------------------------------------------------------------------
@api
def hypercube(
    obj: Objective,
    directions=3,
    *,
    center=None,
    n=11,
    span=(-1, 1),
    metrics=("loss",),
    path=None,
    seed: int = 0,
    **kw,
) -> HypercubeResult:
    """The loss on an ``n^d`` grid ``f(c) = L(θ + Σ_k c_k·d_k)`` in ``d >= 3`` directions.

    ``c_k = linspace(lo_k, hi_k, n_k)``; each metric at each grid point is combined over
    the batches as in :func:`lossviz.evaluate`. The default directions are
    filter-normalized (Li, Xu, Taylor, Studer, Goldstein 2018, "Visualizing the Loss
    Landscape of Neural Nets"): :func:`~lossviz.directions.random_directions` with
    ``seed``. N-D grids and their topology as in Landscaper (Chen, Hadler, Xie, et al.
    2026, arXiv 2602.07135). The points go through :class:`lossviz.engine.Engine` in
    blocks of at most 65,536 (chunked inside), written in C order into one float64 array
    (``path=``: a ``.npy`` file, filled block by block); see :mod:`lossviz.ndgrid`.

    Args:
        obj: the :class:`Objective`; never changed.
        directions: the number ``d >= 3`` of filter-normalized random directions, or
            ``d`` directions (Weights / mappings / flat tensors over the varying
            parameters, or a ``(d, P)`` tensor); they must be linearly independent.
        center: θ (default: the model).
        n: points per axis, an int or one per direction (at least 2 each).
        span: ``(low, high)`` for every axis, or one ``(low, high)`` per direction.
        metrics: as in :func:`lossviz.evaluate`.
        path: None (the values in memory) or a ``.npy`` file to write them to (replaced
            if it exists; ``numpy.lib.format.open_memmap``): needed when the grid is
            larger than a quarter of the available memory.
        seed: the seed of the random directions.
        **kw: the engine's keywords, as in :func:`lossviz.evaluate`: ``bn``,
            ``bn_data``, ``precision``, ``batched``, ``chunk_size``, ``progress``.

    Returns:
        :class:`HypercubeResult` with the values, axes, directions, center and
        ``provenance`` (kernel ``"hypercube"``). After Ctrl-C the first ``n_evaluated``
        grid points (C order) hold values, the others are NaN and ``complete`` is False.

    Raises:
        LossvizError: a bad argument (naming it), before any forward pass: fewer than 3
            directions, directions that are linearly dependent or hold NaN / inf, ``n``
            below 2, a bad ``span``, a grid too large for the memory (without ``path``)
            or for the disk (the message says how large and what to do), a missing
            folder for ``path``, ``path`` with a distributed Objective, a metric that does
            not apply, bad engine keywords.
        ArgumentTypeError: an argument of the wrong type (or an unknown keyword).
        CheckpointError: a ``center`` or direction that does not match the varying
            parameters.
        DataError: an empty ``bn_data``.

    >>> import lossviz as lv
    >>> from lossviz.data import digits, mlp
    >>> x, y = digits()
    >>> obj = lv.Objective(mlp((64, 10)), torch.nn.functional.cross_entropy, (x, y))
    >>> h = hypercube(obj, 3, n=3)
    >>> h.loss.shape, bool(abs(h.loss[1, 1, 1] - obj.loss()) < 1e-6)  # c = 0: the model
    ((3, 3, 3), True)
    """
    t0 = time.perf_counter()
    check_objective(obj)
    d, dirs = _check_directions(directions)
    sizes = _check_n(n, d)
    spans = _check_spans(span, d)
    seed = validate.seed(seed)
    ekw = check_engine_args(obj, progress=kw.get("progress"), **kw_engine(kw))
    mk = resolve_metrics(obj, metrics)
    n_points = int(np.prod([float(s) for s in sizes]))
    if float(np.prod([float(s) for s in sizes])) > 2**62:
        raise LossvizError(
            f"the grid is too large: {'×'.join(map(str, sizes))} points; use fewer points per "
            "axis (n=) or fewer directions"
        )
    if path is not None and obj.distributed:
        raise LossvizError(
            "path= is not supported with a distributed Objective yet (every rank would write "
            "the same file): compute the grid in memory and save it from rank 0"
        )
    path = _check_size(n_points, len(mk), path)
    theta, fixed = obj.resolve(center, name="center")
    if dirs is None:
        if not bool(torch.isfinite(theta).all()):
            raise LossvizError(
                "center holds NaN or inf weights: random directions cannot be normalized to it "
                "(give the directions explicitly)"
            )
        dirs = random_directions(obj.layout.to_weights(theta), d, seed=seed)
    D = torch.stack([flat_direction(obj, v, f"directions[{i}]") for i, v in enumerate(dirs)])
    G = (D.to(torch.float64) @ D.to(torch.float64).T).cpu()
    ev = torch.linalg.eigvalsh(G)
    if float(ev.min()) <= 1e-10 * max(float(ev.max()), 1e-300):
        zero = [i for i in range(d) if float(G[i, i]) == 0.0]
        raise LossvizError(
            "directions: "
            + (
                f"directions {zero} are zero"
                if zero
                else "the directions are linearly dependent (the grid would fold onto fewer "
                "dimensions)"
            )
        )
    mk, rules = check_metrics(obj, mk, theta, fixed, precision=ekw["precision"])
    eng = Engine(obj, mk, fixed, rules=rules, **ekw)
    names = list(eng.metrics)
    axes = [np.linspace(lo, hi, s) for (lo, hi), s in zip(spans, sizes)]
    shape = tuple(sizes)
    if path is not None:
        store = np.lib.format.open_memmap(
            path, mode="w+", dtype=np.float64, shape=(len(names), *shape)
        )
    else:
        store = np.full((len(names), *shape), np.nan)
    flat_out = store.reshape(len(names), n_points)
    dev = obj.device
    axes_t = [torch.as_tensor(a, device=dev, dtype=obj.dtype) for a in axes]
    strides = [int(np.prod(shape[k + 1 :])) for k in range(d)]

    def coords_of(start):
        def coords(idx, k):
            g = k + start
            return torch.stack([axes_t[i][(g // strides[i]) % shape[i]] for i in range(d)], 1)

        return coords

    from tqdm.auto import tqdm

    bar = tqdm(
        total=n_points,
        desc="hypercube",
        unit="pt",
        disable=not validate.progress(kw.get("progress")),
        leave=False,
    )
    done_pts = 0
    complete = True
    bad_counts = [0] * len(names)
    bad_where: list[list[str]] = [[] for _ in names]
    try:
        for start in range(0, n_points, BLOCK):
            size = min(BLOCK, n_points - start)
            out = np.full((len(names), size), np.nan)
            done = np.zeros(size, dtype=bool)
            coords = coords_of(start)

            def make(idx, k, coords=coords):
                return theta + coords(idx, k) @ D

            with warnings.catch_warnings():
                # the engine counts the points of this block; the warning below counts all
                warnings.filterwarnings("ignore", message=r"interrupted: \d+ of \d+ points")
                ok = eng.run(
                    make,
                    np.arange(size),
                    out,
                    done,
                    plane=(theta, D, coords),
                    progress=False,
                    desc="hypercube",
                )
            n_done = int(np.argmin(done)) if not done.all() else size
            out[:, n_done:] = np.nan  # the evaluated part is a prefix (C order)
            flat_out[:, start : start + size] = out
            done_pts = start + n_done
            bar.update(n_done)
            for i in range(len(names)):
                badi = np.flatnonzero(~np.isfinite(out[i, :n_done]))
                bad_counts[i] += len(badi)
                for b in badi[: 3 - len(bad_where[i])]:
                    c = np.unravel_index(start + int(b), shape)
                    pt = ", ".join(f"{axes[a][c[a]]:.3g}" for a in range(d))
                    bad_where[i].append(f"({pt}) ({out[i, b]:g})")
            if not ok:
                complete = False
                break
    except KeyboardInterrupt:
        if not keep_partial():
            raise
        complete = False
    finally:
        bar.close()
    if not complete:
        flat_out[:, done_pts:] = np.nan
        warn(
            f"hypercube interrupted: {done_pts} of {n_points} grid points evaluated (the first "
            "ones in C order); the others are NaN (result marked incomplete)"
        )
    if path is not None:
        store.flush()
    for i, k in enumerate(names):
        if bad_counts[i]:
            warn(
                f"{k} is not finite at {bad_counts[i]} of {done_pts} evaluated grid points: "
                f"{', '.join(bad_where[i])}{' …' if bad_counts[i] > 3 else ''}; kept as NaN / "
                "inf"
            )
    return HypercubeResult(
        axes=axes,
        values={k: store[i] for i, k in enumerate(names)},
        directions=[obj.layout.to_weights(v.clone()) for v in D],
        center=obj.layout.to_weights(theta.clone()),
        path=path,
        complete=complete,
        n_evaluated=done_pts,
        strategy=eng.strategy,
        seconds=time.perf_counter() - t0,
        provenance=Provenance.of(obj, kernel="hypercube", at=center),
    )
