"""``dash.landscape``: a live 2-D loss surface.

With a direction picker, coarse-to-fine refinement, a trajectory overlay and
click-to-inspect (1-D slices and ``λ_max``). The surface is
``f(a, b) = L(θ + a·d1 + b·d2)`` (Li, Xu, Taylor, Studer, Goldstein 2018, "Visualizing
the Loss Landscape of Neural Nets").
"""

from __future__ import annotations

import html
import math
import threading
import time
from collections.abc import Mapping

import numpy as np
import torch

from .. import validate
from ..directions import pca_directions, plane_through, random_directions
from ..errors import LossvizError
from ..formatting import number
from ..hessian import hessian_eigs
from ..landscape import evaluate, flat_direction, line, surface
from ..metrics import resolve_metrics
from ..objective import Objective
from ..slices import Surface
from ..trajectory import TrajectoryRecorder
from ._common import Dashboard, Debounce, figure_widget, finite_list, slider, style, sync_figures

DIRECTIONS = {
    "given": "this surface",
    "random": "random",
    "pca": "PCA of the trajectory",
    "eigen": "Hessian eigenvectors",
    "plane": "plane through 3 models",
}
TIPS = {
    "given": "the directions and center of the Surface given",
    "random": "two Gaussian directions, filter-normalized (Li et al. 2018)",
    "pca": "the top-2 principal directions of the training trajectory",
    "eigen": "the top-2 Hessian eigenvectors at the center (Lanczos, in the background)",
    "plane": "the plane through three models (Gram-Schmidt, origin at the first)",
}
KINDS = (("contour", "contour"), ("heatmap", "heatmap"), ("3-D", "surface"))
# default span of the eigenvector plane: ±h with ½·λ1·h² = EIGEN_RISE (the rise the
# quadratic model predicts at the edge along the top eigenvector)
EIGEN_RISE = 4.0
NO_OBJECTIVE = (
    "this Surface carries no Objective (it was not made by lossviz.surface in "
    "this session): recomputing and inspecting need one; set "
    "surface.objective = Objective(...) or call dash.landscape(obj, ...)"
)
_BUILTIN = ("loss", "accuracy", "error")
_MAP, _HEAT, _PATH, _POINTS, _CLICK = range(5)  # traces of the 2-D map


class _Stale(Exception):
    """Raised in surface()'s callback to stop a computation that a newer one replaced."""


def _trajectory(traj):
    """``(labels, checkpoints)`` of a TrajectoryRecorder, a mapping or a sequence."""
    if traj is None:
        return [], None
    if isinstance(traj, TrajectoryRecorder):
        labels, pts = [f"step {s}" for s in traj.steps], traj.checkpoints
    elif isinstance(traj, Mapping):
        labels, pts = [str(k) for k in traj], list(traj.values())
    else:
        pts = list(traj)
        labels = [f"checkpoint {i}" for i in range(len(pts))]
    if len(pts) < 2:
        raise LossvizError(f"a trajectory needs at least 2 checkpoints, got {len(pts)}")
    return labels, pts


def _models(models) -> dict:
    if models is None:
        return {}
    if isinstance(models, Mapping):
        return {str(k): v for k, v in models.items()}
    models = list(models)
    names = ["a", "b", "c"] if len(models) == 3 else [f"m{i}" for i in range(len(models))]
    return dict(zip(names, models))


def _span(span):
    """``None`` or ``((a_lo, a_hi), (b_lo, b_hi))`` from a half-width or two ranges."""
    if span is None:
        return None
    if isinstance(span, (int, float)) and not isinstance(span, bool):
        h = float(span)
        if not (math.isfinite(h) and h > 0):
            raise LossvizError(f"span as a half-width must be positive, got {span!r}")
        return ((-h, h), (-h, h))
    try:
        (a0, a1), (b0, b1) = span
        out = ((float(a0), float(a1)), (float(b0), float(b1)))
    except (TypeError, ValueError):
        raise LossvizError(
            f"span must be a half-width or ((a_lo, a_hi), (b_lo, b_hi)), got {span!r}"
        ) from None
    if (
        not all(math.isfinite(v) for r in out for v in r)
        or out[0][0] >= out[0][1]
        or out[1][0] >= out[1][1]
    ):
        raise LossvizError(f"span must be finite with low < high, got {span!r}")
    return out


def _scaled(span, s: float):
    """``span`` widened (``s > 1``) or narrowed about its middle."""
    return tuple(
        (0.5 * (lo + hi) - 0.5 * s * (hi - lo), 0.5 * (lo + hi) + 0.5 * s * (hi - lo))
        for lo, hi in span
    )


class LandscapeDashboard(Dashboard):
    """See :func:`lossviz.dash.landscape` (which holds the arguments and defaults)."""

    def __init__(
        self,
        obj_or_surface,
        center,
        *,
        directions,
        trajectory,
        models,
        metrics,
        n,
        span,
        kind,
        log,
        refine,
        seed,
        throttle_ms,
        debounce_ms,
        start,
    ):
        """Arguments as :func:`lossviz.dash.landscape` (which holds the defaults)."""
        super().__init__()
        import ipywidgets as W
        import plotly.graph_objects as go
        from plotly.subplots import make_subplots

        given = None
        if isinstance(obj_or_surface, Surface):
            given = obj_or_surface
            if given.center is None or len(given.directions) != 2:
                raise LossvizError("the Surface has no center and two directions to show")
            obj = given.objective
            names = list(given.values)
            # a recomputation can reproduce the built-in metrics only
            self._compute_metrics = [k for k in names if k in _BUILTIN] or ["loss"]
        elif isinstance(obj_or_surface, Objective):
            obj = obj_or_surface
            if obj.forward is not None:
                metrics = ("loss",)
            names = list(resolve_metrics(obj, metrics))
            self._compute_metrics = metrics
        else:
            raise TypeError(
                f"expected an Objective or a lossviz Surface, got {type(obj_or_surface).__name__}"
            )
        if obj is not None and not isinstance(obj, Objective):
            raise TypeError(f"the Surface's objective is not an Objective: {type(obj).__name__}")
        if obj is not None:
            obj.require_local("the landscape dashboard")
        if kind not in [k for _, k in KINDS]:
            raise LossvizError(f"kind must be 'contour', 'heatmap' or 'surface', got {kind!r}")
        self.obj = obj
        self.given = given
        self.metrics = names
        self.center = center
        self.models = _models(models)
        self.traj_labels, self.trajectory = _trajectory(trajectory)
        self.user_span = _span(span)
        self.refine = bool(refine)
        self.throttle = float(throttle_ms) / 1000.0
        if n is None:
            n = (len(given.x), len(given.y)) if given is not None else (31, 31)
        if isinstance(n, (int, np.integer)) and not isinstance(n, bool):
            n = (int(n), int(n))
        try:
            nx, ny = (int(v) for v in n)
        except (TypeError, ValueError):
            raise LossvizError(f"n must be an int or (nx, ny), got {n!r}") from None
        if nx < 3 or ny < 3:
            raise LossvizError(f"the grid needs at least 3×3 points, got {nx}×{ny}")
        self._ratio = ny / nx

        avail = (["given"] if given is not None else []) + ["random"]
        if self.trajectory is not None and len(self.trajectory) >= 3:
            avail.append("pca")
        avail.append("eigen")
        if len(self.models) >= 3:
            avail.append("plane")
        directions = directions or ("given" if given is not None else "random")
        if directions not in DIRECTIONS:
            raise LossvizError(
                f"directions must be one of {list(DIRECTIONS)[1:]}, got {directions!r}"
            )
        if directions not in avail:
            why = {
                "pca": "trajectory= with at least 3 checkpoints",
                "plane": "models=(a, b, c) (three models)",
                "given": "a Surface as the first argument",
            }[directions]
            raise LossvizError(f"directions={directions!r} needs {why}")

        self._lock = threading.RLock()  # generations and the caches
        self._draw_lock = threading.RLock()  # figure updates (main thread and workers)
        self._gen = 0
        self._job_key = None
        self._click_gen = 0
        self._click_key = None
        self._dir_cache: dict = {}
        self._cache: dict = {}  # key -> (Surface, plane)
        self.surface: Surface | None = None
        self.plane: dict | None = None  # what the shown surface is a slice of
        self.inspection: dict | None = None

        # ---- widgets ------------------------------------------------------------------
        self.direction = W.ToggleButtons(
            options=[(DIRECTIONS[k], k) for k in avail],
            value=directions,
            tooltips=[TIPS[k] for k in avail],
            style={"button_width": "auto"},
        )
        self.seed = W.BoundedIntText(
            value=validate.seed(seed),
            min=0,
            max=2**31 - 1,
            description="seed",
            layout=W.Layout(width="150px"),
        )
        missing = []
        if "pca" not in avail:
            missing.append("PCA needs trajectory= (≥ 3 checkpoints)")
        if "plane" not in avail:
            missing.append("a plane needs models=(a, b, c)")
        self.note = W.HTML(
            "<small style='color:#777'>" + html.escape("; ".join(missing)) + "</small>"
        )
        self.kind = W.ToggleButtons(options=list(KINDS), value=kind, style={"button_width": "auto"})
        self.resolution = slider(
            "resolution",
            nx,
            5,
            max(101, nx),
            2,
            kind="int",
            width="330px",
            continuous_update=False,
        )
        self.span_scale = slider(
            "span ×",
            1.0,
            -3,
            3,
            0.25,
            kind="log",
            base=2,
            width="330px",
            continuous_update=False,
            readout_format=".3g",
        )
        self.log_box = W.Checkbox(
            value=bool(log), description="log scale", indent=False, layout=W.Layout(width="100px")
        )
        self.metric = W.Dropdown(
            options=names,
            value=names[0],
            description="metric",
            layout=W.Layout(width="200px", display=None if len(names) > 1 else "none"),
        )
        self.progress = W.IntProgress(
            value=0, min=0, max=1, description="grid", layout=W.Layout(width="330px")
        )
        self.status = W.HTML("")
        self.readout = W.HTML(
            "<small>click a point of the map: 1-D slices through it and λ_max there</small>"
        )
        for w, c in (
            (self.resolution, "resolution"),
            (self.span_scale, "span"),
            (self.direction, "directions"),
            (self.kind, "kind"),
            (self.readout, "readout"),
            (self.status, "status"),
        ):
            w.add_class(f"lossviz-landscape-{c}")

        # ---- figures (complete before wrapping) -----------------------------------------
        hover = "a=%{x:.4g}<br>b=%{y:.4g}<br>%{z:.5g}<extra></extra>"
        cbar = {"title": {"text": names[0], "side": "right"}, "len": 0.9}
        m = go.Figure(
            [
                go.Contour(
                    x=None,
                    y=None,
                    z=None,
                    name="surface",
                    colorscale="Viridis",
                    ncontours=30,
                    colorbar=cbar,
                    hovertemplate=hover,
                    contours={"coloring": "heatmap"},
                    line={"width": 0.5},
                ),
                go.Heatmap(
                    x=None,
                    y=None,
                    z=None,
                    name="surface",
                    colorscale="Viridis",
                    colorbar=cbar,
                    hovertemplate=hover,
                    visible=False,
                ),
                go.Scatter(
                    x=[],
                    y=[],
                    mode="lines+markers+text",
                    name="trajectory",
                    line={"color": "white", "width": 2},
                    marker={"size": 5, "color": "white", "line": {"color": "#333", "width": 1}},
                    textposition="top right",
                    textfont={"color": "white", "size": 12, "shadow": "1px 1px 2px black"},
                    hovertemplate="%{customdata}<br>a=%{x:.4g}, b=%{y:.4g}<extra></extra>",
                ),
                go.Scatter(
                    x=[],
                    y=[],
                    mode="markers+text",
                    name="models",
                    text=[],
                    textposition="top center",
                    textfont={"color": "white", "size": 13, "shadow": "1px 1px 2px black"},
                    marker={
                        "size": 11,
                        "color": "white",
                        "symbol": "diamond",
                        "line": {"color": "black", "width": 1},
                    },
                    hovertemplate="%{text}<br>a=%{x:.4g}, b=%{y:.4g}<extra></extra>",
                ),
                go.Scatter(
                    x=[],
                    y=[],
                    mode="markers",
                    name="inspected",
                    marker={
                        "size": 15,
                        "color": "#ff3b30",
                        "symbol": "x-thin-open",
                        "line": {"width": 3, "color": "#ff3b30"},
                    },
                    hovertemplate="inspected<br>a=%{x:.4g}, b=%{y:.4g}<extra></extra>",
                ),
            ]
        )
        style(
            m,
            640,
            540,
            (60, 10, 50, 50),
            showlegend=False,
            hovermode="closest",
            title={"text": "waiting for the surface", "x": 0.02, "font": {"size": 14}},
            xaxis={"title": {"text": "a"}, "showgrid": False, "zeroline": False},
            yaxis={"title": {"text": "b"}, "showgrid": False, "zeroline": False},
        )
        self.fig = figure_widget(m)

        s3 = go.Figure(
            [
                go.Surface(
                    x=None,
                    y=None,
                    z=None,
                    colorscale="Viridis",
                    colorbar=cbar,
                    name="surface",
                    hovertemplate=hover,
                ),
                go.Scatter3d(
                    x=[],
                    y=[],
                    z=[],
                    mode="lines+markers",
                    name="trajectory",
                    line={"color": "white", "width": 4},
                    marker={"size": 3},
                ),
                go.Scatter3d(
                    x=[],
                    y=[],
                    z=[],
                    mode="markers+text",
                    name="models",
                    text=[],
                    marker={"size": 5, "color": "white"},
                ),
                go.Scatter3d(
                    x=[],
                    y=[],
                    z=[],
                    mode="markers",
                    name="inspected",
                    marker={"size": 6, "color": "#ff3b30"},
                ),
            ]
        )
        style(
            s3,
            640,
            540,
            (0, 0, 50, 0),
            showlegend=False,
            title={"text": "", "x": 0.02, "font": {"size": 14}},
            scene={
                "camera": {"eye": {"x": 1.55, "y": 1.55, "z": 1.05}},
                "xaxis": {"title": {"text": "a"}},
                "yaxis": {"title": {"text": "b"}},
                "zaxis": {"title": {"text": names[0]}},
            },
        )
        self.fig3d = figure_widget(s3)

        sl = make_subplots(
            rows=2,
            cols=1,
            vertical_spacing=0.2,
            subplot_titles=("along d1 (b fixed)", "along d2 (a fixed)"),
        )
        for r in (1, 2):
            sl.add_trace(
                go.Scatter(x=[], y=[], mode="lines", name=f"slice {r}", line={"color": "#1f77b4"}),
                row=r,
                col=1,
            )
            sl.add_trace(
                go.Scatter(
                    x=[],
                    y=[],
                    mode="markers",
                    name=f"point {r}",
                    marker={"size": 11, "color": "#ff3b30", "symbol": "x"},
                ),
                row=r,
                col=1,
            )
        sl.update_xaxes(title_text="a", row=1, col=1)
        sl.update_xaxes(title_text="b", row=2, col=1)
        style(
            sl,
            420,
            540,
            (60, 15, 60, 50),
            showlegend=False,
            title={
                "text": "1-D slices through the inspected point",
                "x": 0.02,
                "font": {"size": 13},
            },
        )
        self.slice_fig = figure_widget(sl)

        for t in self.fig.data:
            t.on_click(self._on_click)
        self.fig3d.data[0].on_click(self._on_click)

        # ---- wiring -------------------------------------------------------------------
        self._later = Debounce(float(debounce_ms) / 1000.0, self._request)
        self._debouncers = [self._later]
        self.direction.observe(self._on_direction, names="value")
        self.seed.observe(self._on_seed, names="value")
        self.resolution.observe(lambda ch: self._later(), names="value")
        self.span_scale.observe(lambda ch: self._later(), names="value")
        self.kind.observe(lambda ch: self._show_kind(), names="value")
        self.log_box.observe(lambda ch: self._redraw(), names="value")
        self.metric.observe(lambda ch: self._redraw(), names="value")

        # figure views are only hidden, never removed: plotly's view keeps its listeners on
        # the model, and a removed view's failing listener would block the next view's
        three = kind == "surface"
        self._box2d = W.Box([self.fig], layout=W.Layout(display="none" if three else None))
        self._box3d = W.Box(
            [self.fig3d] if three else [], layout=W.Layout(display=None if three else "none")
        )
        self.map_box = W.Box([self._box2d, self._box3d])
        self._box2d.add_class("lossviz-landscape-map")
        self._box3d.add_class("lossviz-landscape-3d")
        slices = W.Box([self.slice_fig])
        slices.add_class("lossviz-landscape-slices")
        self.seed.layout.display = None if directions == "random" else "none"
        self.widget = W.VBox(
            [
                W.HBox([self.direction, self.seed]),
                self.note,
                W.HBox([self.kind, self.log_box, self.metric]),
                W.HBox([self.resolution, self.span_scale]),
                W.HBox([self.map_box, W.VBox([self.readout, slices])]),
                W.HBox([self.progress, self.status]),
            ],
            layout=W.Layout(padding="4px"),
        )
        self.widget.add_class("lossviz-dash-landscape")

        if given is not None:
            key = ("given", None, len(given.x), len(given.y), 1.0)
            plane = None
            if obj is not None:
                info = {
                    "center": given.center,
                    "dirs": list(given.directions),
                    "span": (
                        (float(given.x[0]), float(given.x[-1])),
                        (float(given.y[0]), float(given.y[-1])),
                    ),
                    "labels": ("a", "b"),
                    "points": dict(given.points),
                }
                self._dir_cache[("given", None)] = info
                plane = self._plane(
                    key, info, ((given.x[0], given.x[-1]), (given.y[0], given.y[-1]))
                )
            self._cache[key] = (given, plane)
        if given is not None and key == self._key():
            self.surface, self.plane = given, plane
            self._job_key = key
            self._draw(given, partial=False)
            self.progress.max = self.progress.value = given.x.size * given.y.size
            self.status.value = "the given surface" + (
                "" if obj is not None else " · " + html.escape(NO_OBJECTIVE)
            )
        elif start:
            self.recompute()

    # ---- settings -------------------------------------------------------------------
    def _key(self):
        d = self.direction.value
        nx = int(self.resolution.value)
        ny = max(3, int(round(nx * self._ratio)))
        return (
            d,
            int(self.seed.value) if d == "random" else None,
            nx,
            ny,
            float(self.span_scale.value),
        )

    def _on_direction(self, change):
        self.seed.layout.display = None if change["new"] == "random" else "none"
        self._request()

    def _on_seed(self, change):
        if self.direction.value == "random":
            self._later()

    def _request(self):
        """recompute() for a widget change: errors go to the status line."""
        try:
            self.recompute()
        except LossvizError as e:
            self._on_error(e)

    def _need_objective(self, what: str):
        if self.obj is None:
            self.status.value = f"<span style='color:#b00'>{html.escape(NO_OBJECTIVE)}</span>"
            raise LossvizError(f"{what}: {NO_OBJECTIVE}")

    @property
    def directions(self) -> list:
        """The two directions (Weights) of the plane shown."""
        return list(self.plane["dirs"]) if self.plane else []

    @property
    def span(self):
        """``((a_lo, a_hi), (b_lo, b_hi))`` of the surface shown."""
        return self.plane["span"] if self.plane else None

    # ---- the surface ----------------------------------------------------------------
    def recompute(self) -> None:
        """Compute the surface for the current settings in a background thread.

        Results are cached per setting; a newer request stops an older one at its next
        chunk.

        Raises:
            LossvizError: the surface is not cached and there is no Objective to compute
                it with (a Surface given without one).
        """
        key = self._key()
        with self._lock:
            busy = any(t.is_alive() and t.name == "lossviz-landscape" for t in self._threads)
            if key == self._job_key and (busy or key in self._cache):
                return  # the same request twice (a double click, a repeated key)
            cached = self._cache.get(key)
            if cached is None:
                self._need_objective("recomputing the surface")
            self._gen += 1
            gen = self._gen
            self._job_key = key
        if cached is not None:
            self._set_plane(*cached)
            self._draw(cached[0], partial=False)
            self.progress.value = self.progress.max = cached[0].x.size * cached[0].y.size
            self.status.value = f"{DIRECTIONS[key[0]]}: cached"
            return
        self.status.value = f"{DIRECTIONS[key[0]]}: starting…"
        self._spawn(self._surface_job, key, gen, name="lossviz-landscape")

    def _dir_info(self, d: str, seed):
        """Center, two directions, default span, axis labels and marked points.

        For a direction choice; cached (the Hessian eigenvectors are computed once). The
        eigenvector plane spans ``±h`` with ``½·λ1·h² = EIGEN_RISE`` (``h = 1`` when
        ``λ1 <= 0``).
        """
        ck = (d, seed)
        if ck in self._dir_cache:
            return self._dir_cache[ck]
        obj = self.obj
        others = {k: v for k, v in self.models.items()}
        if d == "random":
            theta, _ = obj.resolve(self.center)
            dirs = random_directions(obj.layout.to_weights(theta), 2, seed=seed)
            info = {
                "center": self.center,
                "dirs": dirs,
                "span": ((-1.0, 1.0), (-1.0, 1.0)),
                "labels": (f"a · d1 (random, seed {seed})", "b · d2"),
                "points": others,
            }
        elif d == "pca":
            pca = pca_directions(dict(zip(self.traj_labels, self.trajectory)), 2)
            xy = pca.coords[:, :2]
            lo, hi = xy.min(0), xy.max(0)
            w = max(float((hi - lo).max()), 1e-12)  # as surface() frames a PCA trajectory
            ev = pca.explained_variance_ratio
            info = {
                "center": pca.center,
                "dirs": list(pca.directions[:2]),
                "span": tuple((float(lo[i] - 0.25 * w), float(hi[i] + 0.25 * w)) for i in range(2)),
                "labels": (
                    f"PC1 ({100 * ev[0]:.1f}% of the variance)",
                    f"PC2 ({100 * ev[1]:.1f}%)",
                ),
                "points": others,
                "pca": pca,
            }
        elif d == "eigen":
            self.status.value = "computing the top-2 Hessian eigenvectors…"
            r = hessian_eigs(obj, k=2, at=self.center, progress=False)
            lam = [float(v) for v in r.values]
            h = math.sqrt(2 * EIGEN_RISE / lam[0]) if lam[0] > 0 else 1.0
            info = {
                "center": self.center,
                "dirs": list(r.vectors),
                "span": ((-h, h), (-h, h)),
                "labels": (f"v1 (λ1 = {lam[0]:.4g})", f"v2 (λ2 = {lam[1]:.4g})"),
                "points": others,
                "eigenvalues": lam,
            }
        elif d == "plane":
            names = list(self.models)[:3]
            plane = plane_through(*(self.models[k] for k in names), names=names)
            pts = dict(plane.points)
            pts.update({k: v for k, v in self.models.items() if k not in names})
            info = {
                "center": plane.origin,
                "dirs": list(plane.directions),
                "span": plane.span(),
                "labels": (f"e1 ({names[0]} → {names[1]})", f"e2 (toward {names[2]})"),
                "points": pts,
                "plane": plane,
            }
        else:
            raise LossvizError(f"no direction choice {d!r} here")
        self._dir_cache[ck] = info
        return info

    def _plane(self, key, info, span) -> dict:
        theta, fixed = self.obj.resolve(info["center"])
        D = torch.stack([flat_direction(self.obj, v) for v in info["dirs"]])
        span = tuple((float(lo), float(hi)) for lo, hi in span)
        return {
            "key": key[:2],
            "theta": theta,
            "fixed": fixed,
            "D": D,
            "dirs": list(info["dirs"]),
            "span": span,
            "n": key[2:4],
            "labels": info.get("labels", ("a", "b")),
        }

    def _set_plane(self, s, plane):
        old = self.plane
        self.surface, self.plane = s, plane
        if old is not None and plane is not None and old["key"] == plane["key"]:
            return
        with self._lock:  # another plane: the inspected point means something else there
            self._click_gen += 1
            self._click_key = None
            self.inspection = None
        with self._draw_lock:
            with self.fig.batch_update():
                self.fig.data[_CLICK].x, self.fig.data[_CLICK].y = [], []
            with self.fig3d.batch_update():
                t = self.fig3d.data[3]
                t.x, t.y, t.z = [], [], []
            with self.slice_fig.batch_update():
                for t in self.slice_fig.data:
                    t.x, t.y = [], []
                lay = self.slice_fig.layout
                lay.annotations[0].text = "along d1 (b fixed)"
                lay.annotations[1].text = "along d2 (a fixed)"
                if plane is not None:
                    lay.xaxis.title.text, lay.xaxis2.title.text = plane["labels"]
                    lay.xaxis.range, lay.xaxis2.range = plane["span"]
        self.readout.value = (
            "<small>click a point of the map: 1-D slices through it and λ_max there</small>"
        )

    def _surface_job(self, key, gen):
        d, seed, nx, ny, scale = key
        self.progress.max, self.progress.value = nx * ny, 0
        info = self._dir_info(d, seed)
        if gen != self._gen:
            return
        base = self.user_span if self.user_span is not None and d != "given" else info["span"]
        span = _scaled(base, scale)
        plane = self._plane(key, info, span)
        self.status.value = f"{DIRECTIONS[d]}: {nx}×{ny} grid, coarse to fine…"
        last = [0.0]
        first = [True]

        def progress(res):
            if gen != self._gen:
                raise _Stale
            if first[0]:
                first[0] = False
                with self._lock:
                    if gen == self._gen:
                        self._set_plane(res, plane)
            now = time.monotonic()
            k = res.n_evaluated
            if now - last[0] >= self.throttle and k < nx * ny:  # the last: drawn below
                last[0] = now
                self.progress.value = k
                self.status.value = f"{DIRECTIONS[d]}: refining, {k}/{nx * ny} points"
                self._draw(res, partial=True, gen=gen)

        try:
            s = surface(
                self.obj,
                info["center"],
                info["dirs"],
                span=span,
                n=(nx, ny),
                metrics=self._compute_metrics,
                refine=self.refine,
                trajectory=self.trajectory,
                points=info["points"],
                callback=progress,
                progress=False,
            )
        except _Stale:
            return
        if d == "given":
            for k, v in self.given.paths.items():
                s.paths.setdefault(k, v)
        with self._lock:
            if gen != self._gen:
                return
            self._cache[key] = (s, plane)
            while len(self._cache) > 16:
                self._cache.pop(next(iter(self._cache)))
            self._set_plane(s, plane)
        self._draw(s, partial=False, gen=gen)
        sync_figures(*self.figures())  # a reload / later view shows the finished surface
        self.progress.value = nx * ny
        done = "" if s.complete else " (incomplete)"
        self.status.value = (
            f"{DIRECTIONS[d]}: {nx}×{ny} points in {s.seconds:.2f} s ({s.strategy}){done}"
        )

    # ---- drawing --------------------------------------------------------------------
    def _z(self, values: np.ndarray) -> np.ndarray:
        z = np.array(values, dtype=np.float64)
        if self.log_box.value:
            with np.errstate(divide="ignore", invalid="ignore"):
                z = np.where(z > 0, np.log10(np.where(z > 0, z, 1)), np.nan)
        return z

    def _label(self) -> str:
        m = self.metric.value
        return f"log10 {m}" if self.log_box.value else m

    def _overlays(self, s):
        xs, ys, text, custom, where = [], [], [], [], []
        for name, xy in s.paths.items():
            if xs:
                xs.append(None)
                ys.append(None)
                text.append("")
                custom.append("")
                where.append("top right")
            labels = (
                self.traj_labels
                if name == "trajectory" and len(self.traj_labels) == len(xy)
                else [str(i) for i in range(len(xy))]
            )
            for i, (a, b) in enumerate(xy):
                xs.append(float(a))
                ys.append(float(b))
                text.append("start" if i == 0 else "end" if i == len(xy) - 1 else "")
                custom.append(f"{name}: {labels[i]}")
                where.append("top right" if i == 0 else "bottom left")  # apart when close
        pts = dict(s.points)
        return (xs, ys, text, custom, where), pts

    def _draw(self, s, partial: bool, gen=None):
        """Show surface ``s`` in the visible map.

        ``partial``: still refining, the gaps are drawn interpolated by plotly; the data
        holds only the computed values.
        """
        with self._draw_lock:
            if gen is not None and gen != self._gen:
                return
            metric = self.metric.value
            if metric not in s.values:
                metric = next(iter(s.values))
            z = self._z(s.values[metric])
            zl = [finite_list(r) for r in z]
            fin = np.isfinite(z)
            if partial and (fin.any(1).sum() < 2 or fin.any(0).sum() < 2):
                return  # nothing a contour can show yet
            label = self._label()
            (px, py, pt, pc, pw), pts = self._overlays(s)
            labels = self.plane["labels"] if self.plane else ("a", "b")
            nx, ny = len(s.x), len(s.y)
            title = f"{label} · {DIRECTIONS[self._job_key[0]] if self._job_key else ''} · {nx}×{ny}"
            if partial:
                title += f" · refining {int(fin.sum())}/{nx * ny}"
            if self.kind.value == "surface":
                f = self.fig3d
                with f.batch_update():
                    t = f.data[0]
                    t.x, t.y, t.z = s.x, s.y, zl
                    t.colorbar.title.text = label
                    xy = np.array(
                        [
                            [np.nan if a is None else a, np.nan if b is None else b]
                            for a, b in zip(px, py)
                        ],
                        dtype=np.float64,
                    ).reshape(-1, 2)
                    f.data[1].x, f.data[1].y = px, py
                    f.data[1].z = finite_list(s.interp(z, xy)) if len(xy) else []
                    pxy = np.array(list(pts.values()), dtype=np.float64).reshape(-1, 2)
                    f.data[2].x, f.data[2].y, f.data[2].text = pxy[:, 0], pxy[:, 1], list(pts)
                    f.data[2].z = finite_list(s.interp(z, pxy)) if len(pxy) else []
                    f.layout.scene.xaxis.title.text = labels[0]
                    f.layout.scene.yaxis.title.text = labels[1]
                    f.layout.scene.zaxis.title.text = label
                    f.layout.title.text = title
                return
            f = self.fig
            heat = self.kind.value == "heatmap"
            with f.batch_update():
                t = f.data[_HEAT if heat else _MAP]
                t.x, t.y, t.z = s.x, s.y, zl
                t.connectgaps = bool(partial)
                t.colorbar.title.text = label
                t.visible = True
                f.data[_MAP if heat else _HEAT].visible = False
                p = f.data[_PATH]
                p.x, p.y, p.text, p.customdata, p.textposition = px, py, pt, pc, pw
                q = f.data[_POINTS]
                xy = list(pts.values())
                q.x = [float(v[0]) for v in xy]
                q.y = [float(v[1]) for v in xy]
                q.text = list(pts)
                f.layout.xaxis.title.text = labels[0]
                f.layout.yaxis.title.text = labels[1]
                f.layout.xaxis.range = [float(s.x[0]), float(s.x[-1])]
                f.layout.yaxis.range = [float(s.y[0]), float(s.y[-1])]
                f.layout.title.text = title

    def _redraw(self):
        if self.surface is not None:
            self._draw(
                self.surface,
                partial=not self.surface.complete
                and self.surface.n_evaluated < self.surface.x.size * self.surface.y.size,
            )
        if self.inspection is not None:
            self._show_inspection(self.inspection)

    def _show_kind(self):
        """Show the 2-D map or the 3-D view.

        The 3-D view is created on first use; the hidden one is not redrawn.
        """
        three = self.kind.value == "surface"
        first = three and not self._box3d.children
        if first:
            self._redraw()
            sync_figures(self.fig3d)  # its first view is built from the synced state
            self._box3d.children = (self.fig3d,)
        self._box2d.layout.display = "none" if three else None
        self._box3d.layout.display = None if three else "none"
        if not first:
            self._redraw()

    # ---- inspecting a point -----------------------------------------------------------
    def _on_click(self, trace, points, state):
        if not points.point_inds:
            return  # plotly calls every trace's handler; only the clicked one has points
        try:
            self.inspect(points.xs[0], points.ys[0])
        except LossvizError as e:
            self._on_error(e)

    def point(self, a: float, b: float) -> dict:
        """The full state at plane coordinates ``(a, b)``: ``θ + a·d1 + b·d2``.

        Varying parameters ``θ + a·d1 + b·d2`` (flattened directions, as the grid
        evaluates it) and the fixed tensors (buffers) of the center.

        Args:
            a: the coordinate along ``d1``.
            b: the coordinate along ``d2``.

        Returns:
            A state dict ``name -> tensor``.

        Raises:
            LossvizError: no Objective (a Surface given without one), or no surface
                shown yet.
        """
        self._need_objective("a point of the plane")
        if self.plane is None:
            raise LossvizError("no surface yet: wait for the first one (d.wait())")
        return self._state(self.plane, a, b)

    def _state(self, plane, a, b) -> dict:
        theta, D = plane["theta"], plane["D"]
        at = torch.tensor(float(a), dtype=theta.dtype, device=theta.device)
        bt = torch.tensor(float(b), dtype=theta.dtype, device=theta.device)
        flat = (theta + at * D[0]) + bt * D[1]
        st = dict(plane["fixed"])
        st.update(self.obj.layout.unflatten(flat.clone()))
        return st

    def inspect(self, a: float, b: float) -> None:
        """Inspect the point ``(a, b)`` of the plane in a background thread.

        Computes the metrics at ``(a, b)``, the 1-D slices through it along both
        directions over the plane's span (:func:`~lossviz.line`) and ``λ_max``
        (:func:`~lossviz.hessian_eigs`, ``k=1``); the result lands in ``.inspection`` and
        the side panel. A newer click drops an older result.

        Args:
            a: the coordinate along ``d1``.
            b: the coordinate along ``d2``.

        Raises:
            LossvizError: no Objective (a Surface given without one), or no surface
                shown yet.
        """
        self._need_objective("inspecting a point")
        a, b = float(a), float(b)
        with self._lock:
            plane = self.plane
            if plane is None:
                raise LossvizError("no surface yet: wait for the first one (d.wait())")
            ck = (a, b, plane["key"], plane["span"])
            if ck == self._click_key:
                return  # a double click on the same point
            self._click_key = ck
            self._click_gen += 1
            gen = self._click_gen
        with self._draw_lock:
            with self.fig.batch_update():
                self.fig.data[_CLICK].x, self.fig.data[_CLICK].y = [a], [b]
        self.readout.value = (
            f"<div class='lossviz-inspecting'>inspecting a = {a:.4g}, b = {b:.4g}…</div>"
        )
        self._spawn(self._inspect_job, a, b, gen, plane, name="lossviz-inspect")

    def _inspect_job(self, a, b, gen, plane):
        obj = self.obj
        state = self._state(plane, a, b)
        flat, _ = obj.resolve(state)
        (x0, x1), (y0, y1) = plane["span"]
        nx, ny = plane["n"]
        here = evaluate(obj, flat[None], metrics=self._compute_metrics, at=state, progress=False)
        slices = []  # through the point along each direction, over the plane's span
        for d, (lo, hi), c, m in zip(plane["dirs"], ((x0, x1), (y0, y1)), (a, b), (nx, ny)):
            n = min(2 * m - 1, 201)
            kw = {"span": (lo - c, hi - c), "n": n, "metrics": self._compute_metrics}
            slices.append(line(obj, state, d, progress=False, **kw))
            if gen != self._click_gen:
                return
        s1, s2 = slices
        eig = hessian_eigs(obj, k=1, at=state, progress=False)
        with self._lock:
            if gen != self._click_gen:
                return  # a newer click
            self.inspection = {
                "a": a,
                "b": b,
                "values": {k: float(v[0]) for k, v in here.items()},
                "lambda_max": float(eig.values[0]),
                "slices": (s1, s2),
                "eig": eig,
                "span": plane["span"],
            }
            res = self.inspection
        self._show_inspection(res)
        sync_figures(self.slice_fig)

    def _show_inspection(self, res):
        a, b = res["a"], res["b"]
        metric = self.metric.value
        if metric not in res["values"]:
            metric = next(iter(res["values"]))
        label = self._label()
        s1, s2 = res["slices"]
        v = self._z(np.array([res["values"][metric]]))[0]
        labels = self.plane["labels"] if self.plane else ("a", "b")
        with self._draw_lock:
            with self.slice_fig.batch_update():
                d = self.slice_fig.data
                d[0].x, d[0].y = a + s1.t, finite_list(self._z(s1[metric]))
                d[1].x, d[1].y = [a], finite_list([v])
                d[2].x, d[2].y = b + s2.t, finite_list(self._z(s2[metric]))
                d[3].x, d[3].y = [b], finite_list([v])
                lay = self.slice_fig.layout
                lay.annotations[0].text = f"along d1 at b = {b:.3g}"
                lay.annotations[1].text = f"along d2 at a = {a:.3g}"
                lay.xaxis.title.text = labels[0]
                lay.xaxis2.title.text = labels[1]
                lay.xaxis.range, lay.xaxis2.range = res["span"]  # what the slices cover
                lay.yaxis.title.text = label
                lay.yaxis2.title.text = label
            with self.fig.batch_update():
                self.fig.data[_CLICK].x, self.fig.data[_CLICK].y = [a], [b]
            with self.fig3d.batch_update():
                t = self.fig3d.data[3]
                t.x, t.y, t.z = [a], [b], finite_list([v])
        lam = res["lambda_max"]
        rows = [f"<tr><td>point</td><td>a = {a:.4g}, b = {b:.4g}</td></tr>"]
        for k, val in res["values"].items():
            rows.append(
                f"<tr><td>{html.escape(k)}</td><td class='lv-{html.escape(k)}'>"
                f"{number(val)}</td></tr>"
            )
        rows.append(f"<tr><td>λ_max</td><td class='lv-lambda'>{number(lam)}</td></tr>")
        if lam > 0:
            rows.append(
                f"<tr><td>2/λ_max</td><td>{2 / lam:.4g} <small>(largest stable "
                "GD step)</small></td></tr>"
            )
        self.readout.value = (
            f"<table class='lossviz-readout' data-lambda='{lam!r}'>"
            + "".join(rows)
            + "</table><small>exact at the point: "
            "metrics, slices (line) and λ_max (hessian_eigs)</small>"
        )

    # ---- errors and closing ------------------------------------------------------------
    def _on_error(self, e):
        self.status.value = f"<span style='color:#b00'>error: {html.escape(str(e))}</span>"

    def close(self) -> None:
        """Stop the background work at its next step and close this dashboard's widgets."""
        with self._lock:
            self._gen += 1  # running computations stop at their next chunk
            self._click_gen += 1
        super().close()
