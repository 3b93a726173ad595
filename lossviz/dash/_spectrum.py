"""``dash.spectrum``: the Hessian spectrum explorer.

Density, top-k, outliers, per layer, over checkpoints. The density is stochastic Lanczos
quadrature (Ghorbani, Krishnan, Xiao 2019, "An Investigation into Neural Net
Optimization via Hessian Eigenvalue Density"), smoothed as
``φ(t) = mean_v Σ_i w_i · N(t; λ_i, σ²)``.
"""

from __future__ import annotations

import html
import math
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from numbers import Real

import numpy as np

from .. import validate
from ..errors import LossvizError
from ..hessian import (
    hessian_blocks,
    hessian_density,
    hessian_eigs,
    point_version,
    resolve_groups,
)
from ..objective import Objective
from ..results import BlockResults, EigenResult, SpectralDensity
from ._common import Dashboard, figure_widget, finite_list, slider, style, sync_figures

TASKS = ("density", "eigs", "blocks")
GRID = 1500  # points of the density curve
SIGMA_EXP = (-3.0, -1.0)  # smoothing slider: log10 of σ / spectral range


@dataclass(eq=False)
class SpectrumPoint:
    """One point of the explorer (a checkpoint, or a result's point) and what was computed.

    Attributes:
        label: the checkpoint's label (``"step 100"``, ``"checkpoint 2"``, …).
        x: its position on the checkpoint axis (the step, or the index).
        at: the point (model, state dict, Weights, checkpoint path; None: the current
            weights).
        obj: the Objective computations use there (None: nothing can be computed).
        curvature: ``"hessian"`` or ``"ggn"``.
        stepped: ``x`` is the checkpoint's own number (a training step).
        why: why nothing can be computed here (no Objective, weights changed).
        density: the :class:`~lossviz.results.SpectralDensity` (None until computed).
        eigs: the top-k :class:`~lossviz.results.EigenResult` (None until computed).
        blocks: the per-layer :class:`~lossviz.results.BlockResults` (None until
            computed).
        failed: ``task -> error message`` of the tasks that failed.
    """

    label: str
    x: float
    at: object = None
    obj: Objective | None = None
    curvature: str = "hessian"
    stepped: bool = False  # x is the checkpoint's own number (a training step)
    why: str = ""  # why nothing can be computed here (no Objective, weights changed)
    density: SpectralDensity | None = None
    eigs: EigenResult | None = None
    blocks: BlockResults | None = None
    failed: dict = field(default_factory=dict)  # task -> error message
    _cache: dict = field(default_factory=dict, repr=False)

    def grid(self) -> tuple[np.ndarray, float]:
        """The x grid of the curve (the support padded by 6 %) and the spectral range."""
        if "grid" not in self._cache:
            lo, hi = float(self.density.nodes.min()), float(self.density.nodes.max())
            span = max(hi - lo, 1e-12)  # as SpectralDensity.default_sigma
            pad = 0.06 * span
            self._cache["grid"] = (np.linspace(lo - pad, hi + pad, GRID), span)
        return self._cache["grid"]

    def outliers(self) -> np.ndarray:
        """The density's outlier eigenvalues (``density.outliers()``, cached)."""
        if "outliers" not in self._cache:
            self._cache["outliers"] = self.density.outliers()
        return self._cache["outliers"]


def _result_point(res, label: str, x: float) -> SpectrumPoint:
    p = SpectrumPoint(label=label, x=x, curvature=res.curvature)
    if isinstance(res, SpectralDensity):
        p.density = res
    else:
        p.eigs = res
    obj = getattr(res, "objective", None)
    what = type(res).__name__
    if not isinstance(obj, Objective):
        p.why = f"this {what} carries no Objective (computed on an operator, or unpickled)"
    elif obj.distributed:
        obj.require_local("the spectrum dashboard")
    elif point_version(obj, res.at) != res.at_version:
        p.why = (
            f"the weights this {what} was computed at have changed since "
            "(e.g. the model was trained further)"
        )
    else:
        p.obj, p.at = obj, res.at
    return p


def _label(key) -> tuple[str, float | None]:
    if isinstance(key, Real) and not isinstance(key, bool):
        return (f"step {key}" if float(key).is_integer() else f"{key:g}"), float(key)
    return str(key), None


def _points(source, checkpoints, curvature) -> list[SpectrumPoint]:
    results = (SpectralDensity, EigenResult)
    if isinstance(source, Objective):
        if checkpoints is None:
            return [SpectrumPoint("current weights", 0.0, None, source, curvature)]
        if isinstance(checkpoints, Mapping):
            items = list(checkpoints.items())
        elif isinstance(checkpoints, (list, tuple)):
            items = [(f"checkpoint {i}", v) for i, v in enumerate(checkpoints)]
        else:
            raise LossvizError(
                "checkpoints must be a dict step -> point or a list of points, "
                f"got {type(checkpoints).__name__}"
            )
        if not items:
            raise LossvizError("checkpoints is empty")
        out = []
        for i, (k, at) in enumerate(items):
            if not isinstance(at, str) and not hasattr(at, "__fspath__"):
                source.resolve(at)  # a clear error now for a point that does not fit
            label, x = _label(k)
            out.append(
                SpectrumPoint(
                    label,
                    float(i) if x is None else x,
                    at,
                    source,
                    curvature,
                    stepped=x is not None,
                )
            )
        if len({p.x for p in out}) < len(out):
            for i, p in enumerate(out):  # repeated steps: plot by position
                p.x, p.stepped = float(i), False
        return out
    if checkpoints is not None:
        raise LossvizError(
            "checkpoints= needs an Objective as the source (a result holds "
            "one point; pass a dict label -> result instead)"
        )
    if isinstance(source, results):
        return [_result_point(source, "this result", 0.0)]
    if isinstance(source, Mapping) or isinstance(source, (list, tuple)):
        items = (
            list(source.items())
            if isinstance(source, Mapping)
            else [(f"checkpoint {i}", v) for i, v in enumerate(source)]
        )
        if not items or not all(isinstance(v, results) for _, v in items):
            raise TypeError(
                "a dict/list source must hold SpectralDensity or EigenResult "
                "objects (one per checkpoint)"
            )
        out = []
        for i, (k, r) in enumerate(items):
            label, x = _label(k)
            out.append(_result_point(r, label, float(i) if x is None else x))
            out[-1].stepped = x is not None
        return out
    raise TypeError(
        "source must be a lossviz.Objective, a SpectralDensity, an EigenResult, "
        f"or a dict/list of them; got {type(source).__name__}"
    )


class SpectrumDashboard(Dashboard):
    """See :func:`lossviz.dash.spectrum` (which holds the arguments and defaults)."""

    def __init__(
        self,
        source,
        checkpoints,
        *,
        n_probes,
        steps,
        k,
        groups,
        log,
        seed,
        curvature,
        start,
    ):
        """Arguments as :func:`lossviz.dash.spectrum` (which holds the defaults)."""
        super().__init__()
        import ipywidgets as W
        import plotly.graph_objects as go

        for name, v, lo in (("n_probes", n_probes, 1), ("steps", steps, 2), ("k", k, 0)):
            validate.integer(v, name, low=lo)
        validate.choice(curvature, "curvature", ("hessian", "ggn"))
        self.points = _points(source, checkpoints, curvature)
        if groups is not None:
            for obj in {id(p.obj): p.obj for p in self.points if p.obj is not None}.values():
                resolve_groups(obj, groups)  # checked now, not in the thread
        self.n_probes, self.steps, self.k = int(n_probes), int(steps), int(k)
        self.groups_spec, self.seed = groups, validate.seed(seed)
        self._lock = threading.RLock()
        self._gen = 0
        self._worker: threading.Thread | None = None
        self._closed = False

        # ---- widgets ----------------------------------------------------------------
        self.smoothing = slider(
            "σ / range",
            1 / 200,
            *SIGMA_EXP,
            0.05,
            kind="log",
            width="380px",
            readout_format=".4f",
            continuous_update=True,
        )
        self.sigma_label = W.HTML("", layout=W.Layout(width="130px"))
        self.axis = W.ToggleButtons(
            options=["log", "linear"],
            value="log" if log else "linear",
            style={"button_width": "60px"},
            tooltips=[
                "logarithmic density axis: outliers visible",
                "linear density axis: the bulk",
            ],
        )
        self.ckpt = W.SelectionSlider(
            options=[(p.label, i) for i, p in enumerate(self.points)],
            value=0,
            description="checkpoint",
            continuous_update=True,
            layout=W.Layout(width="520px"),
        )
        self.ckpt_status = W.HTML("")
        self.progress = W.IntProgress(value=0, min=0, max=1, layout=W.Layout(width="260px"))
        self.status = W.HTML("")
        self.button = W.Button(description="compute", icon="play", layout=W.Layout(width="130px"))
        self.readout = W.HTML("", layout=W.Layout(width="290px"))
        self.table = W.HTML("")
        self.note = W.HTML("")

        # ---- figures (complete before wrapping) ---------------------------------------
        base = go.Figure(
            [
                go.Scatter(
                    x=[],
                    y=[],
                    mode="lines",
                    name="density (SLQ)",
                    line={"color": "#1f77b4", "width": 1.6},
                    hovertemplate="λ = %{x:.4g}<br>φ = %{y:.3g}<extra></extra>",
                ),
                go.Scatter(
                    x=[],
                    y=[],
                    mode="lines",
                    name=f"top-{self.k} (Lanczos)",
                    yaxis="y2",
                    line={"color": "#d62728", "width": 1.2, "dash": "dot"},
                    hoverinfo="skip",
                ),
                go.Scatter(
                    x=[],
                    y=[],
                    mode="text",
                    text=[],
                    yaxis="y2",
                    showlegend=False,
                    textposition="middle left",
                    textfont={"size": 11, "color": "#a11"},
                    hoverinfo="skip",
                    cliponaxis=False,
                ),
                go.Scatter(
                    x=[],
                    y=[],
                    mode="markers",
                    name="outliers",
                    yaxis="y2",
                    marker={
                        "symbol": "triangle-up",
                        "size": 10,
                        "color": "#ff7f0e",
                        "line": {"width": 1, "color": "#8a4500"},
                    },
                    hovertemplate="outlier λ = %{x:.5g}<extra></extra>",
                ),
            ]
        )
        style(
            base,
            680,
            400,
            (60, 20, 50, 50),
            title={"text": "waiting for the spectrum", "x": 0.01, "font": {"size": 13}},
            xaxis={"title": {"text": "eigenvalue λ"}, "zeroline": False},
            yaxis={
                "title": {"text": "density φ(λ)"},
                "type": "log" if log else "linear",
                "exponentformat": "power",
            },
            yaxis2={"overlaying": "y", "range": [0, 1], "visible": False, "fixedrange": True},
            legend={
                "orientation": "h",
                "x": 1,
                "xanchor": "right",
                "y": 1.0,
                "yanchor": "bottom",
                "font": {"size": 11},
            },
        )
        self.fig = figure_widget(base)
        self.lmax_fig = None
        if len(self.points) > 1:
            xs = [p.x for p in self.points]
            lf = go.Figure(
                [
                    go.Scatter(
                        x=xs,
                        y=[None] * len(xs),
                        mode="lines+markers",
                        name="λ_max",
                        text=[p.label for p in self.points],
                        line={"color": "#d62728"},
                        hovertemplate="%{text}: λ_max = %{y:.4g}<extra></extra>",
                    ),
                    go.Scatter(
                        x=[xs[0]],
                        y=[None],
                        mode="markers",
                        name="shown",
                        marker={
                            "size": 14,
                            "symbol": "circle-open",
                            "color": "black",
                            "line": {"width": 2.5},
                        },
                        hoverinfo="skip",
                    ),
                ]
            )
            numeric = all(p.stepped for p in self.points)
            style(
                lf,
                400,
                260,
                (50, 15, 40, 45),
                showlegend=False,
                title={"text": "λ_max over checkpoints", "x": 0.02, "font": {"size": 12}},
                xaxis={"title": {"text": "step" if numeric else "checkpoint"}},
                yaxis={"title": {"text": "λ_max"}, "rangemode": "tozero"},
            )
            if not numeric:
                lf.update_xaxes(tickvals=xs, ticktext=[p.label for p in self.points])
            self.lmax_fig = figure_widget(lf)

        # ---- wiring -----------------------------------------------------------------
        self.smoothing.observe(lambda ch: self._show(), names="value")
        self.axis.observe(lambda ch: self._show(), names="value")
        self.ckpt.observe(lambda ch: self._show(), names="value")
        self.button.on_click(lambda b: self.start())

        notes = sorted({p.why for p in self.points if p.why})
        if notes:
            missing = [
                t
                for t, have in (
                    ("the density", any(p.density is None for p in self.points)),
                    (
                        f"the top-{self.k} markers",
                        self.k and any(p.eigs is None for p in self.points),
                    ),
                    ("the per-layer table", groups is not None),
                )
                if have
            ]
            self.note.value = (
                "<div class='lossviz-spectrum-note' style='color:#8a4500'>"
                + html.escape(
                    f"{' and '.join(missing) or 'nothing more'} "
                    "cannot be computed: " + "; ".join(notes)
                )
                + "</div>"
            )
        controls = [
            W.HBox(
                [
                    self.smoothing,
                    self.sigma_label,
                    W.HTML("density axis", layout=W.Layout(margin="0 6px 0 12px")),
                    self.axis,
                ]
            )
        ]
        if len(self.points) > 1:
            controls.append(W.HBox([self.ckpt, self.ckpt_status]))
        layers = W.VBox(
            [
                W.HTML(
                    "<b>curvature per layer</b><br><small>diagonal blocks H<sub>SS</sub>: top "
                    "eigenvalue (Lanczos), trace (Hutchinson)</small>"
                ),
                self.table,
            ],
            layout=W.Layout(margin="0 0 0 12px"),
        )
        bottom = [layers] if self.lmax_fig is None else [self.lmax_fig, layers]
        self.widget = W.VBox(
            [
                *controls,
                W.HBox(
                    [
                        self.fig,
                        W.VBox(
                            [W.HTML("<b>spectrum</b>"), self.readout],
                            layout=W.Layout(margin="0 0 0 8px"),
                        ),
                    ]
                ),
                W.HBox([self.button, self.progress, self.status]),
                self.note,
                W.HBox(bottom),
            ],
            layout=W.Layout(padding="4px"),
        )
        self.widget.add_class("lossviz-dash-spectrum")
        self._update_lmax()
        self._show()
        self._update_button()
        if start:
            self.start()

    # ---- state ----------------------------------------------------------------------
    @property
    def point(self) -> SpectrumPoint:
        """The point shown now."""
        return self.points[int(self.ckpt.value)]

    @property
    def sigma(self) -> float | None:
        """The absolute σ of the shown curve (``σ/range`` × the spectral range)."""
        p = self.point
        if p.density is None:
            return None
        return float(self.smoothing.value) * p.grid()[1]

    def _wanted(self, p: SpectrumPoint, task: str) -> bool:
        if p.obj is None or task in p.failed:
            return False
        if task == "density":
            return p.density is None
        if task == "eigs":
            return self.k > 0 and p.eigs is None
        return self.groups_spec is not None and p.blocks is None

    def _pending(self) -> list[tuple[int, str]]:
        return [(i, t) for i, p in enumerate(self.points) for t in TASKS if self._wanted(p, t)]

    def _next_task(self):
        """The next ``(point index, task)`` to compute, or None.

        The shown checkpoint first (all of it), then density and top-k of the others,
        then their per-layer tables.
        """
        cur = int(self.ckpt.value)
        order = [cur] + [i for i in range(len(self.points)) if i != cur]
        for t in TASKS:
            if self._wanted(self.points[cur], t):
                return cur, t
        for tasks in (("density", "eigs"), ("blocks",)):
            for i in order:
                for t in tasks:
                    if self._wanted(self.points[i], t):
                        return i, t
        return None

    def running(self) -> bool:
        """Whether the background worker is computing."""
        w = self._worker
        return w is not None and w.is_alive()

    # ---- background work --------------------------------------------------------------
    def start(self) -> None:
        """Compute what is missing in a background thread.

        Failed tasks are tried again; a second call while it runs (or after
        :meth:`close`) does nothing.
        """
        with self._lock:
            if self.running() or self._closed:
                return
            for p in self.points:
                p.failed.clear()
            todo = self._pending()
            if not todo:
                self._update_button()
                return
            self._gen += 1
            gen = self._gen
            self.progress.max, self.progress.value = len(todo), 0
            self.status.value = "starting…"
            self._worker = self._spawn(self._work, gen, name="lossviz-spectrum")
            self._update_button()

    def _compute(self, p: SpectrumPoint, task: str):
        kw = {"at": p.at, "seed": self.seed, "curvature": p.curvature, "progress": False}
        if task == "density":
            return hessian_density(p.obj, n_probes=self.n_probes, steps=self.steps, **kw)
        if task == "eigs":
            return hessian_eigs(p.obj, self.k, **kw)
        return hessian_blocks(p.obj, self.groups_spec, k=1, **kw)

    def _work(self, gen):
        t0 = time.perf_counter()
        while True:
            with self._lock:
                if gen != self._gen or self._closed:
                    return
                task = self._next_task()
            if task is None:
                break
            i, t = task
            p = self.points[i]
            self.status.value = f"{html.escape(p.label)}: {_TASK_NAMES[t]}…"
            self._show_status_of(i)
            try:
                res = self._compute(p, t)
            except Exception as e:  # shown for this checkpoint, the others go on
                msg = f"{type(e).__name__}: {e}"
                with self._lock:
                    p.failed[t] = msg
                self.errors.append(f"{p.label} ({t}): {msg}")
            else:
                with self._lock:
                    if gen != self._gen:
                        return
                    setattr(p, t, res)
            self.progress.value = min(self.progress.max, self.progress.value + 1)
            if t == "eigs":
                self._update_lmax()
            if i == int(self.ckpt.value):
                self._show()
            else:
                self._show_status_of(int(self.ckpt.value))
        sync_figures(*self.figures())  # a reload / second view shows the results
        n_err = sum(len(p.failed) for p in self.points)
        dt = time.perf_counter() - t0
        self.status.value = (
            f"done in {dt:.1f} s"
            if not n_err
            else f"<span style='color:#b00'>done, {n_err} failed: "
            f"{html.escape(self.errors[-1])}</span>"
        )
        self._worker = None
        self._update_button()

    def _on_error(self, e):
        self.status.value = f"<span style='color:#b00'>error: {html.escape(str(e))}</span>"
        self._worker = None
        self._update_button()

    def _update_button(self):
        if self.running():
            self.button.description, self.button.disabled = "computing", True
        elif any(p.failed for p in self.points):
            self.button.description, self.button.disabled = "retry failed", False
        elif self._pending():
            self.button.description, self.button.disabled = "compute", False
        else:
            self.button.description, self.button.disabled = "up to date", True

    def close(self) -> None:
        """Stop the background work (after its current task) and close the widgets."""
        with self._lock:
            self._closed = True
            self._gen += 1
        super().close()

    # ---- drawing ----------------------------------------------------------------------
    def _state_of(self, p: SpectrumPoint, task: str) -> str:
        if getattr(p, task) is not None:
            return "ready"
        if task in p.failed:
            return "failed"
        if (
            p.obj is None
            or (task == "eigs" and not self.k)
            or (task == "blocks" and self.groups_spec is None)
        ):
            return "unavailable"
        return "computing…" if self.running() else "not computed"

    def _show_status_of(self, i: int):
        p = self.points[i]
        st = [self._state_of(p, t) for t in ("density", "eigs")]
        if all(s == "ready" for s in st):
            txt = "<span style='color:#2a7'>ready</span>"
        elif "computing…" in st:
            n = sum(q.density is not None for q in self.points)
            txt = f"computing… ({n}/{len(self.points)} ready)"
        else:
            txt = " · ".join(sorted(set(st)))
        self.ckpt_status.value = f"<span class='lossviz-ckpt-status'>{txt}</span>"

    def curve(self) -> tuple[np.ndarray, np.ndarray] | None:
        """``(x, φ(x))`` of the shown curve: ``density.smooth(x, sigma)``.

        ``φ(x) = mean_v Σ_i w_i · N(x; λ_i, σ²)`` over the probes' Lanczos nodes ``λ_i``
        and weights ``w_i``, with ``σ = (σ/range slider) × the spectral range``, on the
        support padded by 6 %.

        Returns:
            ``(x, φ(x))`` as arrays, or None while the shown point has no density.
        """
        p = self.point
        if p.density is None:
            return None
        x, span = p.grid()
        return p.density.smooth(x, float(self.smoothing.value) * span)

    def _show(self):
        with self._lock:
            p = self.point
            log = self.axis.value == "log"
            cur = self.curve()
            f = self.fig
            dens, lines, labels, outs = f.data[0], f.data[1], f.data[2], f.data[3]
            with f.batch_update():
                if cur is not None:
                    x, y = cur
                    dens.x, dens.y = x, y
                    peak = max(float(np.max(y)), 1e-300)
                    if log:
                        top = math.log10(peak)
                        f.layout.yaxis.update(
                            type="log", range=[top - 7, top + 0.35], autorange=False
                        )
                    else:
                        f.layout.yaxis.update(
                            type="linear", range=[0, 1.08 * peak], autorange=False
                        )
                    o = p.outliers()
                    outs.x, outs.y = finite_list(o), [0.025] * len(o)
                else:
                    dens.x, dens.y = [], []
                    outs.x, outs.y = [], []
                    f.layout.yaxis.update(type="log" if log else "linear", autorange=True)
                if p.eigs is not None:
                    v = [float(e) for e in p.eigs.values]
                    lines.x = [a for e in v for a in (e, e, None)]
                    lines.y = [a for _ in v for a in (0.0, 1.0, None)]
                    labels.x = v
                    labels.y = [0.95 - 0.075 * (r % 8) for r in range(len(v))]
                    labels.text = [f"λ{r + 1} = {e:.4g} " for r, e in enumerate(v)]
                else:
                    lines.x, lines.y, labels.x, labels.y, labels.text = [], [], [], [], []
                f.layout.title.text = self._title(p)
            self.sigma_label.value = (
                ""
                if self.sigma is None
                else f"<span class='lossviz-sigma'>σ = {self.sigma:.4g}</span>"
            )
            self.readout.value = self._readout(p)
            self.table.value = self._table(p)
            if self.lmax_fig is not None:
                lm = self.points
                i = int(self.ckpt.value)
                m = self.lmax_fig.data[1]
                m.x = [lm[i].x]
                m.y = [float(np.max(lm[i].eigs.values)) if lm[i].eigs is not None else None]
            self._show_status_of(int(self.ckpt.value))

    def _title(self, p: SpectrumPoint) -> str:
        head = html.escape(p.label)
        if p.density is not None:
            n = len(p.outliers())
            return f"{head} · σ = {self.sigma:.3g} · {n} outlier{'s' * (n != 1)}"
        st = self._state_of(p, "density")
        if st == "failed":
            return f"{head} · density failed"
        if st == "unavailable":
            return f"{head} · density unavailable"
        return f"{head} · {st}"

    def _readout(self, p: SpectrumPoint) -> str:
        rows = [("checkpoint", html.escape(p.label))]
        if p.eigs is not None:
            vals = ", ".join(f"{v:.5g}" for v in p.eigs.values)
            rows.append((f"top-{len(p.eigs.values)} λ", f"<span class='lv-topk'>{vals}</span>"))
        else:
            rows.append((f"top-{self.k} λ", self._why(p, "eigs")))
        if p.density is not None:
            o = p.outliers()
            shown = ", ".join(f"{v:.4g}" for v in o[:10]) + (" …" if len(o) > 10 else "")
            rows.append(
                (
                    "outliers",
                    f"<span class='lv-outliers' data-n='{len(o)}'>{len(o)}"
                    f"</span>{': ' + shown if len(o) else ''}",
                )
            )
            d = p.density
            rows.append(("support", f"[{d.nodes.min():.4g}, {d.nodes.max():.4g}]"))
            rows.append(
                (
                    "SLQ",
                    f"{d.nodes.shape[0]} probes × {d.nodes.shape[1]} steps, "
                    f"{d.n_hvp} HVPs, {d.seconds:.2f} s",
                )
            )
        else:
            rows.append(("density", self._why(p, "density")))
        body = "".join(
            f"<tr><td style='padding-right:8px;color:#555'>{a}</td><td>{b}</td></tr>"
            for a, b in rows
        )
        return f"<table class='lossviz-spectrum-readout'>{body}</table>"

    def _why(self, p: SpectrumPoint, task: str) -> str:
        st = self._state_of(p, task)
        if st == "failed":
            return f"<span style='color:#b00'>failed: {html.escape(p.failed[task])}</span>"
        if st == "unavailable":
            if p.obj is None:
                return f"<i>unavailable: {html.escape(p.why)}</i>"
            return "<i>off</i>"
        return f"<i>{st}</i>"

    def _table(self, p: SpectrumPoint) -> str:
        if p.blocks is None:
            return f"<div class='lossviz-spectrum-layers'>{self._why(p, 'blocks')}</div>"
        head = ["layer", "params", "λ_max", "trace", "± std. error"]
        rows = []
        for r in p.blocks.table:
            name = str(r["block"])
            try:  # "0 (Linear)" for a module block
                name += f" ({type(p.obj.model.get_submodule(name)).__name__})"
            except (AttributeError, TypeError):
                pass
            rows.append(
                [
                    html.escape(name),
                    f"{r['params']:,}",
                    f"{r['λ1']:.6g}",
                    f"{r['trace']:.6g}",
                    f"{r['std. error']:.3g}",
                ]
            )
        cell = lambda tag, c, j: (
            f"<{tag} style='padding:2px 10px;text-align:"
            f"{'left' if j == 0 else 'right'}'>{c}</{tag}>"
        )
        th = "".join(cell("th", h, j) for j, h in enumerate(head))
        body = "".join(
            "<tr>" + "".join(cell("td", c, j) for j, c in enumerate(r)) + "</tr>" for r in rows
        )
        return (
            f"<table class='lossviz-spectrum-layers'><thead><tr>{th}</tr></thead>"
            f"<tbody>{body}</tbody></table>"
        )

    def _update_lmax(self):
        if self.lmax_fig is None:
            return
        y = [float(np.max(p.eigs.values)) if p.eigs is not None else None for p in self.points]
        self.lmax_fig.data[0].y = y


_TASK_NAMES = {
    "density": "spectral density (SLQ)",
    "eigs": "top eigenvalues (Lanczos)",
    "blocks": "per-layer curvature",
}
