"""Results of landscape evaluations: :class:`Slice1D`, :class:`Surface`, :class:`Evaluations`.

Each holds numpy arrays (one per metric), whether the evaluation completed (after Ctrl-C
the points not evaluated are NaN and ``complete`` is False), which points were evaluated,
the evaluation strategy and the time it took. Their summaries (``repr`` and the HTML
table in a notebook) never hide a non-finite value: they name the points where a metric
is NaN or infinite. :meth:`Surface.interp` reads a metric between grid points (for
overlays); :meth:`Surface.plot` / :meth:`Slice1D.plot` draw them with plotly.
"""

from __future__ import annotations

import html
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor, nn

from .directions import point_params
from .errors import ArgumentTypeError, CheckpointError, LossvizError, named
from .formatting import short
from .provenance import Provenance
from .results import ByMetric, DataResult, Result
from .weights import Weights

__all__ = ["Evaluations", "Slice1D", "Surface"]


class Evaluations(dict, Result):
    """Metrics at a list of points: a dict ``metric name -> (n,)`` float64 numpy array.

    What :func:`lossviz.evaluate` and :meth:`lossviz.engine.Engine.evaluate` return. The
    values are NaN where not evaluated (after Ctrl-C); non-finite values are kept as they
    are.

    Attributes:
        complete: False when interrupted (Ctrl-C): the points not evaluated are NaN.
        strategy: how the engine ran the points, ``"vmap"`` or ``"loop"`` (None when no
            chunk ran).
        seconds: wall time.
        evaluated: ``(n,)`` bool mask of the points evaluated (all unless interrupted;
            None when built by hand).
        provenance: where it comes from (:class:`~lossviz.provenance.Provenance`; None
            when built by hand or by the engine directly).
    """

    complete: bool = True
    strategy: str | None = None
    seconds: float = 0.0
    #: which points were evaluated (all unless interrupted)
    evaluated: np.ndarray | None = None
    provenance: Provenance | None = None

    _ATTRS = ("complete", "strategy", "seconds", "evaluated", "provenance")

    def _fields(self) -> dict:
        return {"values": dict(self), **{k: getattr(self, k) for k in self._ATTRS}}

    @classmethod
    def _from_fields(cls, values: dict):
        values = dict(values)
        extra = set(values) - {"values", *cls._ATTRS}
        if extra or not isinstance(values.get("values"), dict):
            raise TypeError(f"unexpected fields {sorted(extra)} (or no values)")
        res = cls(values.pop("values"))
        for k, v in values.items():
            setattr(res, k, v)
        return res


def _summary(name: str, v: np.ndarray, evaluated: np.ndarray | None, at) -> str:
    """``"loss: min … at …, max …"`` over the non-NaN values (an inf shows as inf).

    Also names the points where the metric is not finite (never a plausible summary that
    hides them).
    """
    v = np.asarray(v, dtype=np.float64).reshape(-1)
    ev = np.ones(v.shape, bool) if evaluated is None else np.asarray(evaluated).reshape(-1)
    ok = ev & ~np.isnan(v)
    if ok.any():
        i = int(np.flatnonzero(ok)[np.argmin(v[ok])])
        s = f"{name}: min {short(v[i])} at {at(i)}, max {short(v[ok].max())}"
    else:
        s = f"{name}: no value"
    bad = np.flatnonzero(ev & ~np.isfinite(v))
    if len(bad):
        shown = ", ".join(f"{at(int(j))} ({short(v[j])})" for j in bad[:3])
        s += f", NOT FINITE at {len(bad)} point(s): {shown}" + (" …" if len(bad) > 3 else "")
    return s


def _minmax(v: np.ndarray, evaluated: np.ndarray | None) -> list[str]:
    """``[min, max, number of non-finite points]`` for an HTML table row."""
    v = np.asarray(v, dtype=np.float64).reshape(-1)
    ev = np.ones(v.shape, bool) if evaluated is None else np.asarray(evaluated).reshape(-1)
    ok = ev & ~np.isnan(v)
    bad = int((ev & ~np.isfinite(v)).sum())
    if not ok.any():
        return ["nan", "nan", str(bad)]
    return [short(v[ok].min()), short(v[ok].max()), str(bad)]


def _point_xy(surface, p) -> tuple[float, float]:
    if (
        isinstance(p, (tuple, list))
        and len(p) == 2
        and all(isinstance(v, (int, float, np.floating, np.integer)) for v in p)
    ):
        return float(p[0]), float(p[1])
    return surface.project(p)


@dataclass(kw_only=True, repr=False)
class Slice1D(ByMetric, DataResult):
    """A 1-D slice ``f(t) = L(θ + t·d)``: ``t`` and one array per metric in ``values``.

    What :func:`lossviz.line` returns (the 1-D plots of Li, Xu, Taylor, Studer, Goldstein
    2018, "Visualizing the Loss Landscape of Neural Nets"). Index it by metric name
    (``s["loss"]``, or ``s.loss``).

    Attributes:
        t: ``(n,)`` float64 offsets along the direction, evenly spaced.
        values: ``metric name -> (n,)`` float64 array, ``values[m][k]`` the metric at
            ``θ + t[k]·d`` (NaN where not evaluated; non-finite values kept).
        direction: the direction ``d`` (:class:`~lossviz.weights.Weights` over the
            varying parameters; None when built by hand).
        center: the point ``θ`` (Weights over the varying parameters; None when built by
            hand).
        complete: False when interrupted (Ctrl-C): the points not evaluated are NaN.
        strategy: how the engine ran the points, ``"vmap"`` or ``"loop"`` (None when no
            chunk ran).
        seconds: wall time.
        evaluated: ``(n,)`` bool mask of the points evaluated (all unless interrupted;
            None when built by hand).
        provenance: where it comes from (:class:`~lossviz.provenance.Provenance`; None
            when built by hand).
    """

    t: np.ndarray
    values: dict
    direction: Weights | None = None
    center: Weights | None = None
    complete: bool = True
    strategy: str | None = None
    seconds: float = 0.0
    #: which points were evaluated (all unless interrupted)
    evaluated: np.ndarray | None = field(default=None, compare=False)

    @property
    def n_evaluated(self) -> int:
        """Number of points evaluated (from ``evaluated``, else the non-NaN values)."""
        if self.evaluated is not None:
            return int(np.asarray(self.evaluated).sum())
        return int((~np.isnan(next(iter(self.values.values())))).sum())

    def nonfinite(self, metric: str = "loss") -> np.ndarray:
        """The ``t`` where ``metric`` was evaluated and is NaN or infinite.

        Args:
            metric: the metric's name.

        Returns:
            The offsets ``t`` (a float64 array, empty when every value is finite).

        Raises:
            LossvizError: if there is no metric ``metric``.
        """
        v = np.asarray(self[metric], dtype=np.float64)
        ev = np.ones(v.shape, bool) if self.evaluated is None else self.evaluated
        return self.t[ev & ~np.isfinite(v)]

    def __repr__(self) -> str:
        parts = [
            _summary(k, v, self.evaluated, lambda i: f"t={self.t[i]:.3g}")
            for k, v in self.values.items()
        ]
        state = (
            "" if self.complete else f", INCOMPLETE ({self.n_evaluated} of {len(self.t)} points)"
        )
        return (
            f"Slice1D({len(self.t)} points, t in [{self.t[0]:.3g}, {self.t[-1]:.3g}]; "
            + "; ".join(parts)
            + f"; {self.seconds:.2f} s, {self.strategy}{state})"
        )

    def _repr_html_(self) -> str:
        from .formatting import html_table

        rows = [[k, *_minmax(v, self.evaluated)] for k, v in self.values.items()]
        cap = f"1-D slice, {len(self.t)} points" + ("" if self.complete else " (incomplete)")
        return html_table(["metric", "min", "max", "not finite"], rows, cap)

    def plot(self):
        """A plotly figure: one line plot of the metric against ``t`` per metric.

        Returns:
            A ``plotly.graph_objects.Figure`` (metrics stacked, sharing the ``t`` axis).
        """
        import plotly.graph_objects as go
        from plotly.subplots import make_subplots

        names = list(self.values)
        fig = make_subplots(
            rows=len(names),
            cols=1,
            shared_xaxes=True,
            subplot_titles=names if len(names) > 1 else None,
        )
        for i, k in enumerate(names, 1):
            fig.add_trace(
                go.Scatter(x=self.t, y=self.values[k], mode="lines", name=k), row=i, col=1
            )
            fig.update_yaxes(title_text=k, row=i, col=1)
        fig.update_xaxes(title_text="t", row=len(names), col=1)
        fig.update_layout(
            title="1-D slice L(θ + t·d)" + ("" if self.complete else " (incomplete)"),
            template="plotly_white",
        )
        return fig


@dataclass(kw_only=True, repr=False)
class Surface(ByMetric, DataResult):
    """A 2-D slice ``f(a, b) = L(θ + a·d1 + b·d2)``.

    What :func:`lossviz.surface` returns: the surface plots of Li, Xu, Taylor, Studer,
    Goldstein 2018, "Visualizing the Loss Landscape of Neural Nets" (with
    filter-normalized directions ``d1``, ``d2`` by default). ``values[m][i, j]`` is metric
    ``m`` at ``a = x[j]``, ``b = y[i]`` (rows follow ``y``, as in plotly and
    ``np.meshgrid``). ``paths`` and ``points`` hold overlays in plane coordinates
    (:meth:`add_path`, :meth:`add_point`).

    Attributes:
        x: ``(nx,)`` float64 coordinates ``a`` along ``d1`` (the columns).
        y: ``(ny,)`` float64 coordinates ``b`` along ``d2`` (the rows).
        values: ``metric name -> (ny, nx)`` float64 array (NaN where not evaluated;
            non-finite values kept).
        directions: ``[d1, d2]`` (:class:`~lossviz.weights.Weights` over the varying
            parameters; empty when built by hand).
        center: the point ``θ`` at ``(a, b) = (0, 0)`` (Weights; None when built by
            hand).
        complete: False when interrupted (Ctrl-C): the points not evaluated are NaN.
        strategy: how the engine ran the points, ``"vmap"`` or ``"loop"`` (None when no
            chunk ran).
        seconds: wall time.
        paths: ``name -> (T, 2)`` array of plane coordinates (trajectories overlaid).
        points: ``name -> (a, b)`` (points marked on the plane).
        evaluated: ``(ny, nx)`` bool mask of the grid points evaluated (all unless
            interrupted; None when built by hand).
        provenance: where it comes from (:class:`~lossviz.provenance.Provenance`; None
            when built by hand).
    """

    x: np.ndarray
    y: np.ndarray
    values: dict
    directions: list = field(default_factory=list)
    center: Weights | None = None
    complete: bool = True
    strategy: str | None = None
    seconds: float = 0.0
    paths: dict = field(default_factory=dict)
    points: dict = field(default_factory=dict)
    #: which grid points were evaluated, shaped like the values (all unless interrupted)
    evaluated: np.ndarray | None = field(default=None, compare=False, repr=False)

    def nonfinite(self, metric: str = "loss") -> np.ndarray:
        """The grid points where ``metric`` was evaluated and is NaN or infinite.

        Args:
            metric: the metric's name.

        Returns:
            A ``(k, 2)`` float64 array of coordinates ``(a, b)`` (``k = 0`` when every
            value is finite).

        Raises:
            LossvizError: if there is no metric ``metric``.
        """
        v = np.asarray(self[metric], dtype=np.float64)
        ev = np.ones(v.shape, bool) if self.evaluated is None else self.evaluated
        i, j = np.nonzero(ev & ~np.isfinite(v))
        return np.stack([self.x[j], self.y[i]], 1)

    def topology(self, metric: str = "loss", **kw):
        """Basins, saddles, merge tree and SMAD of this surface (``lv.landscape_topology``).

        Args:
            metric: the metric's name.
            **kw: ``min_persistence``, ``nonfinite``, as in
                :func:`lossviz.landscape_topology`.

        Returns:
            A :class:`~lossviz.topology.TopologyResult` (axes ``(a, b)``).

        Raises:
            LossvizError: as :func:`lossviz.landscape_topology`.
            ImportError: GUDHI is not installed (``pip install 'lossviz[topology]'``).
        """
        from .topology import landscape_topology

        return landscape_topology(self, metric=metric, **kw)

    def animate(self, trajectory=None, **kw):
        """The trajectory animated over this surface (:func:`lossviz.animate`).

        Args:
            trajectory: the checkpoints (a recorder, list or dict), or None for
                ``paths[path]``.
            **kw: ``path``, ``metric``, ``values``, ``log``, ``frame_ms``, ``progress``,
                as in :func:`lossviz.animate`.

        Returns:
            A ``plotly.graph_objects.Figure`` with one frame per checkpoint.

        Raises:
            LossvizError: as :func:`lossviz.animate`.
        """
        from .animation import animate

        return animate(self, trajectory, **kw)

    def dashboard(self, **kw):
        """The live landscape explorer (:func:`lossviz.dash.landscape`) showing this surface.

        It shows the surface at once; recomputing it (resolution, span, other directions)
        and inspecting a clicked point need the Objective it was computed with
        (``surface()`` stores it).

        Args:
            **kw: keyword arguments of :func:`lossviz.dash.landscape` (``kind``, ``log``,
                ``n``, ``span``, …).

        Returns:
            A ``LandscapeDashboard`` (displays itself; ``.surface``, ``.inspect(a, b)``).

        Raises:
            ImportError: if the widget stack (``lossviz[widgets]``) is not installed.
            LossvizError: as :func:`lossviz.dash.landscape`: a bad keyword value, or a
                surface without a center and two directions.
        """
        from lossviz import dash

        return dash.landscape(self, **kw)

    @property
    def n_evaluated(self) -> int:
        """Number of grid points evaluated (from ``evaluated``, else the non-NaN values)."""
        if self.evaluated is not None:
            return int(np.asarray(self.evaluated).sum())
        v = next(iter(self.values.values()))
        return int((~np.isnan(v)).sum())

    # overlays ------------------------------------------------------------------------
    def project(self, point) -> tuple[float, float]:
        """Plane coordinates ``(a, b)`` of a point, by least squares: ``θ_p - θ ≈ a·d1 + b·d2``.

        With ``D`` the ``(2, P)`` matrix of the directions and ``G = D·Dᵀ`` its Gram
        matrix, ``(a, b) = G⁻¹·D·(θ_p - θ)`` (solved in float64): the orthogonal
        projection onto the plane, also for directions that are not orthogonal.

        Args:
            point: a model, Weights, state dict or checkpoint path holding (at least)
                the surface's varying parameters.

        Returns:
            ``(a, b)`` as floats.

        Raises:
            LossvizError: if the surface has no center / two directions, or the two
                directions are parallel (or zero).
            ArgumentTypeError: if ``point`` is not a point.
            CheckpointError: if the point lacks parameters of the surface or has other
                shapes.
        """
        if self.center is None or len(self.directions) != 2:
            raise LossvizError("this surface has no center/directions to project onto")
        try:
            p = point_params(point)
        except TypeError as e:
            raise ArgumentTypeError(f"point: {e}") from None
        keys = list(self.center.keys())
        missing = [k for k in keys if k not in p]
        if missing:
            raise CheckpointError(f"the point lacks parameters of the surface: {missing[:10]}")
        bad = [k for k in keys if tuple(p[k].shape) != tuple(self.center[k].shape)]
        if bad:
            raise CheckpointError(
                "the point's parameters have other shapes than the surface's: "
                + "; ".join(
                    f"{k}: {tuple(p[k].shape)} vs {tuple(self.center[k].shape)}" for k in bad[:10]
                )
            )
        dev = next(iter(self.center.values())).device

        def flat(w):
            return torch.cat([w[k].reshape(-1).to(dev, torch.float64) for k in keys])

        delta = flat(p) - flat(self.center)
        D = torch.stack([flat(d) for d in self.directions])
        G = D @ D.T
        if float(torch.linalg.det(G)) <= 1e-12 * float(G.diagonal().prod()) or not bool(
            torch.isfinite(G).all()
        ):
            raise LossvizError(
                "the surface's two directions are parallel (or zero): a point cannot be "
                "projected onto the plane"
            )
        coef = torch.linalg.solve(G, D @ delta)
        return float(coef[0]), float(coef[1])

    def add_point(self, name: str, point) -> tuple[float, float]:
        """Mark a point (a model / checkpoint, projected; or ``(a, b)`` coordinates).

        Args:
            name: the label shown in :meth:`plot` (a point of that name is replaced).
            point: ``(a, b)`` plane coordinates, or a point projected with
                :meth:`project`.

        Returns:
            The point's ``(a, b)``, also stored in ``points[name]``.

        Raises:
            LossvizError: as :meth:`project` (the message naming the point).
            ArgumentTypeError: if ``point`` is neither ``(a, b)`` nor a point.
            CheckpointError: as :meth:`project`.
        """
        with named(f"point {name!r}"):
            xy = _point_xy(self, point)
        self.points[str(name)] = xy
        return xy

    def add_path(self, name: str, trajectory) -> np.ndarray:
        """Overlay a trajectory: checkpoints (projected) or a ``(T, 2)`` array of coordinates.

        Args:
            name: the label shown in :meth:`plot` (a path of that name is replaced).
            trajectory: a ``(T, 2)`` array / list of ``(a, b)`` pairs, or a list of
                checkpoints (models, Weights, state dicts, paths) or a dict label ->
                checkpoint (its values, in order), each projected with :meth:`project`.

        Returns:
            The ``(T, 2)`` float64 coordinates, also stored in ``paths[name]``.

        Raises:
            LossvizError: if the coordinates are not a finite ``(T, 2)`` array or the
                list is empty; as :meth:`project` for a checkpoint (naming it).
            ArgumentTypeError: if ``trajectory`` is a single state dict, a string, a
                module or not iterable.
            CheckpointError: as :meth:`project`.
        """
        if isinstance(trajectory, np.ndarray) or (
            isinstance(trajectory, Sequence)
            and trajectory
            and isinstance(trajectory[0], (tuple, list))
            and len(trajectory[0]) == 2
            and not isinstance(trajectory[0][0], (Tensor, Mapping))
        ):
            try:
                xy = np.asarray(trajectory, dtype=np.float64)
            except (TypeError, ValueError):
                xy = np.empty(0)
            if xy.ndim != 2 or xy.shape[1] != 2 or not np.isfinite(xy).all():
                raise LossvizError(
                    f"trajectory {name!r}: coordinates must be a finite (T, 2) array, got "
                    f"shape {xy.shape}"
                )
        else:
            if isinstance(trajectory, Mapping):
                if trajectory and all(isinstance(v, Tensor) for v in trajectory.values()):
                    raise ArgumentTypeError(
                        f"trajectory {name!r} is a single state dict: pass a list of "
                        "checkpoints or a dict label -> checkpoint"
                    )
                trajectory = list(trajectory.values())
            if isinstance(trajectory, (str, bytes, nn.Module)) or not isinstance(
                trajectory, Iterable
            ):
                raise ArgumentTypeError(
                    f"trajectory {name!r} must be a list of checkpoints or a (T, 2) array of "
                    f"coordinates, got {type(trajectory).__name__}"
                )
            pts = list(trajectory)
            if not pts:
                raise LossvizError(f"trajectory {name!r} is empty")
            xy = []
            for i, p in enumerate(pts):
                with named(f"trajectory {name!r}, checkpoint {i}"):
                    xy.append(self.project(p))
            xy = np.array(xy, dtype=np.float64)
        self.paths[str(name)] = xy
        return xy

    # display -------------------------------------------------------------------------
    def __repr__(self) -> str:
        nx = len(self.x)

        def at(k):
            return f"({self.x[k % nx]:.3g}, {self.y[k // nx]:.3g})"

        parts = [_summary(k, v, self.evaluated, at) for k, v in self.values.items()]
        n = self.x.size * self.y.size
        state = "" if self.complete else f", INCOMPLETE ({self.n_evaluated} of {n} points)"
        return (
            f"Surface({len(self.x)}×{len(self.y)} grid, x in [{self.x[0]:.3g}, "
            f"{self.x[-1]:.3g}], y in [{self.y[0]:.3g}, {self.y[-1]:.3g}]; "
            + "; ".join(parts)
            + f"; {self.seconds:.2f} s, {self.strategy}{state})"
        )

    def _repr_html_(self) -> str:
        from .formatting import html_table

        rows = [[k, *_minmax(v, self.evaluated)] for k, v in self.values.items()]
        cap = f"surface {len(self.x)}×{len(self.y)}, {self.seconds:.2f} s" + (
            ""
            if self.complete
            else f" (incomplete: {self.n_evaluated} of {self.x.size * self.y.size} points)"
        )
        return html_table(["metric", "min", "max", "not finite"], rows, html.escape(cap))

    def interp(self, values: np.ndarray, xy: np.ndarray) -> np.ndarray:
        """A grid of values read at plane coordinates, interpolated linearly (NaN outside the grid).

        Args:
            values: a ``(len(y), len(x))`` grid such as ``self.values[m]``.
            xy: ``(k, 2)`` plane coordinates, rows ``(a, b)``.

        Returns:
            ``(k,)`` float64 array (``scipy.interpolate.RegularGridInterpolator``).

        Raises:
            ValueError: from scipy, if ``values`` is not shaped like the grid.
        """
        from scipy.interpolate import RegularGridInterpolator

        f = RegularGridInterpolator((self.y, self.x), values, bounds_error=False, fill_value=np.nan)
        return f(np.stack([xy[:, 1], xy[:, 0]], 1))

    def plot(self, kind: str = "contour", metric: str | None = None, *, log: bool = False):
        """A plotly figure of one metric, with the trajectories and named points overlaid.

        Args:
            kind: ``"contour"`` (default), ``"heatmap"`` or ``"surface"`` (3-D).
            metric: the metric's name (default: the first one).
            log: show ``log10`` of the metric (values <= 0 are left blank).

        Returns:
            A ``plotly.graph_objects.Figure``.

        Raises:
            LossvizError: for an unknown metric or ``kind``.
        """
        import plotly.graph_objects as go

        metric = metric or next(iter(self.values))
        if metric not in self.values:
            raise LossvizError(f"no metric {metric!r}; have {list(self.values)}")
        z = np.array(self.values[metric], dtype=np.float64)
        label = metric
        if log:
            with np.errstate(divide="ignore", invalid="ignore"):
                z = np.where(z > 0, np.log10(np.where(z > 0, z, 1)), np.nan)
            label = f"log10 {metric}"
        if kind == "contour":
            fig = go.Figure(
                go.Contour(
                    x=self.x,
                    y=self.y,
                    z=z,
                    colorbar={"title": label},
                    connectgaps=False,
                    ncontours=30,
                )
            )
        elif kind == "heatmap":
            fig = go.Figure(go.Heatmap(x=self.x, y=self.y, z=z, colorbar={"title": label}))
        elif kind == "surface":
            fig = go.Figure(go.Surface(x=self.x, y=self.y, z=z, colorbar={"title": label}))
        else:
            raise LossvizError(f"kind must be 'contour', 'heatmap' or 'surface', got {kind!r}")
        for name, xy in self.paths.items():
            if kind == "surface":
                fig.add_trace(
                    go.Scatter3d(
                        x=xy[:, 0],
                        y=xy[:, 1],
                        z=self.interp(z, xy),
                        mode="lines+markers",
                        name=name,
                    )
                )
            else:
                fig.add_trace(
                    go.Scatter(
                        x=xy[:, 0],
                        y=xy[:, 1],
                        mode="lines+markers",
                        name=name,
                        line={"color": "white", "width": 2},
                        marker={"size": 4},
                    )
                )
        if self.points:
            xy = np.array(list(self.points.values()), dtype=np.float64)
            names = list(self.points)
            if kind == "surface":
                fig.add_trace(
                    go.Scatter3d(
                        x=xy[:, 0],
                        y=xy[:, 1],
                        z=self.interp(z, xy),
                        mode="markers+text",
                        text=names,
                        name="points",
                    )
                )
            else:
                fig.add_trace(
                    go.Scatter(
                        x=xy[:, 0],
                        y=xy[:, 1],
                        mode="markers+text",
                        text=names,
                        textposition="top center",
                        name="points",
                        marker={
                            "size": 10,
                            "color": "white",
                            "line": {"color": "black", "width": 1},
                        },
                    )
                )
        title = f"{label} surface L(θ + a·d1 + b·d2)" + ("" if self.complete else " (incomplete)")
        if kind == "surface":
            fig.update_layout(scene={"xaxis_title": "a", "yaxis_title": "b", "zaxis_title": label})
        else:
            fig.update_layout(xaxis_title="a", yaxis_title="b")
        # the legend (paths, points) above the plot, clear of the colour bar's title
        legend = {"orientation": "h", "yanchor": "bottom", "y": 1.0, "xanchor": "right", "x": 1}
        fig.update_layout(title=title, template="plotly_white", legend=legend)
        return fig
