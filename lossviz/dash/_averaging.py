"""``dash.averaging``: weight averages of a run next to its last iterate.

A view of :func:`lossviz.averaging.compare_averages` (loss, accuracy, ``λ_max`` of the
last iterate, SWA, EMA(β) and LAWA(k)) and :func:`lossviz.averaging.average_coefficients`
(the weight of each snapshot in each average), with an EMA decay slider and a LAWA ``k``
slider. No numerics here: every number drawn is a kernel's.
"""

from __future__ import annotations

import threading

from .. import validate
from ..averaging import average_coefficients, compare_averages
from ..errors import LossvizError
from ..formatting import html_table, short
from ..points import as_points
from ._common import Dashboard, figure_widget, slider, style

#: the decays the EMA slider offers
DECAYS = (0.0, 0.5, 0.8, 0.9, 0.95, 0.98, 0.99, 0.995, 0.999)
COLORS = {"last": "firebrick", "swa": "seagreen", "ema": "steelblue", "lawa": "darkorange"}


class AveragingDashboard(Dashboard):
    """The averaging dashboard (see :func:`lossviz.dash.averaging`).

    Attributes:
        base: the :class:`~lossviz.averaging.AveragesComparison` of ``last`` and ``swa``.
        rows: ``("ema", β)`` / ``("lawa", k)`` -> the one-row comparison computed there.
        decay: the EMA decay slider; ``k``: the LAWA slider.
        fig_coef: the coefficients of each average against the snapshot.
        fig_bars: the metrics of each average.
    """

    def __init__(
        self,
        obj,
        points,
        decay,
        k,
        swa_start,
        per,
        accuracy,
        curvature,
        bn,
        tol,
        seed,
        start,
    ):
        import ipywidgets as W
        import plotly.graph_objects as go
        from plotly.subplots import make_subplots

        super().__init__()
        labels, _, _ = as_points(points, "points")
        n = len(labels)
        decay = validate.number(decay, "decay", low=0, high=1, high_open=True)
        if decay not in DECAYS:
            raise LossvizError(f"decay must be one of the slider's values {DECAYS}, got {decay}")
        k = validate.integer(k, "k", low=1)
        if k > n:
            raise LossvizError(f"k={k} but there are only {n} snapshots")
        self.obj, self.points, self.labels = obj, points, list(labels)
        self.kw = dict(
            swa_start=swa_start,
            per=per,
            accuracy=accuracy,
            curvature=curvature,
            sharpness=False,
            bn=bn,
            tol=tol,
            seed=seed,
            progress=False,
        )
        # every argument checked now, on the first row set (no work yet: coefficients only)
        average_coefficients(points, kind="ema", decay=decay, per=per)
        average_coefficients(points, kind="swa", start=swa_start)
        self.metrics = (
            ["loss"] + (["accuracy"] if accuracy else []) + (["λ_max"] if curvature else [])
        )
        self.base = None
        self.rows: dict = {}
        self._lock = threading.Lock()

        self.decay = W.SelectionSlider(options=list(DECAYS), value=decay, description="EMA decay β")
        self.k = slider("LAWA k", k, 1, n, 1, kind="int")
        self.status = W.HTML("")
        self.table = W.HTML("")
        x = self.labels if all(isinstance(v, (int, float)) for v in self.labels) else list(range(n))
        self.x = x
        coef = go.Figure(
            [
                go.Scatter(x=x, y=[0.0] * n, mode="lines+markers", name=nm, line=dict(color=c))
                for nm, c in (
                    ("swa", COLORS["swa"]),
                    ("ema", COLORS["ema"]),
                    ("lawa", COLORS["lawa"]),
                )
            ]
        )
        style(
            coef,
            560,
            300,
            (50, 10, 40, 40),
            title="weight of each snapshot",
            xaxis_title="snapshot (step)",
            yaxis_title="c_i",
        )
        self.fig_coef = figure_widget(coef)
        bars = make_subplots(rows=1, cols=len(self.metrics), subplot_titles=self.metrics)
        for j, _ in enumerate(self.metrics, 1):
            bars.add_trace(
                go.Bar(
                    x=["last", "swa", "ema", "lawa"],
                    y=[None] * 4,
                    showlegend=False,
                    marker_color=[COLORS[r] for r in ("last", "swa", "ema", "lawa")],
                ),
                row=1,
                col=j,
            )
        style(bars, 220 * len(self.metrics) + 80, 300, (40, 10, 40, 40))
        self.fig_bars = figure_widget(bars)
        self.decay.observe(lambda ch: self._changed(), names="value")
        self.k.observe(lambda ch: self._changed(), names="value")
        self.widget = W.VBox(
            [
                W.HBox([self.decay, self.k]),
                self.status,
                W.HBox([self.fig_coef, self.fig_bars]),
                self.table,
            ]
        )
        self._draw_coefficients()
        if start:
            self._changed()

    # kernels ----------------------------------------------------------------------------
    def coefficients(self) -> dict:
        """The coefficients drawn now: ``name -> array`` (:func:`average_coefficients`)."""
        per = self.kw["per"]
        return {
            "swa": average_coefficients(self.points, kind="swa", start=self.kw["swa_start"]),
            "ema": average_coefficients(self.points, kind="ema", decay=self.decay.value, per=per),
            "lawa": average_coefficients(self.points, kind="lawa", k=self.k.value),
        }

    def _compute(self, key) -> None:
        with self._lock:
            if key == "base" and self.base is None:
                self.base = compare_averages(
                    self.obj, self.points, ema_decays=(), lawa_k=None, **self.kw
                )
            elif key[0] == "ema" and key not in self.rows:
                self.rows[key] = compare_averages(
                    self.obj,
                    self.points,
                    ema_decays=(key[1],),
                    lawa_k=None,
                    last=False,
                    swa=False,
                    **self.kw,
                )
            elif key[0] == "lawa" and key not in self.rows:
                self.rows[key] = compare_averages(
                    self.obj,
                    self.points,
                    ema_decays=(),
                    lawa_k=key[1],
                    last=False,
                    swa=False,
                    **self.kw,
                )

    def _work(self, keys) -> None:
        for key in keys:
            self._compute(key)
        with self._lock:  # one thread draws at a time
            self._draw_bars()

    def _changed(self) -> None:
        self._draw_coefficients()
        keys = ["base", ("ema", self.decay.value), ("lawa", self.k.value)]
        self.status.value = "computing…"
        self._spawn(self._work, keys, name="lossviz-averaging")

    def _on_error(self, e: Exception) -> None:
        self.status.value = f"<span style='color:firebrick'>{type(e).__name__}: {e}</span>"

    # drawing ----------------------------------------------------------------------------
    def _draw_coefficients(self) -> None:
        c = self.coefficients()
        with self.fig_coef.batch_update():
            for tr in self.fig_coef.data:
                tr.y = c[tr.name].tolist()

    def shown(self) -> dict:
        """``row -> {metric -> value}`` of the rows drawn now (None where not computed)."""
        out = {}
        ema = self.rows.get(("ema", self.decay.value))
        lawa = self.rows.get(("lawa", self.k.value))
        for name, res, i in (
            ("last", self.base, 0),
            ("swa", self.base, 1),
            ("ema", ema, 0),
            ("lawa", lawa, 0),
        ):
            if res is None:
                out[name] = None
                continue
            out[name] = {
                "loss": float(res.loss[i]),
                "accuracy": float(res.accuracy[i]),
                "λ_max": float(res.lambda_max[i]),
            }
        return out

    def _draw_bars(self) -> None:
        rows = self.shown()
        names = ["last", "swa", "ema", "lawa"]
        with self.fig_bars.batch_update():
            for tr, metric in zip(self.fig_bars.data, self.metrics):
                tr.y = [None if rows[r] is None else rows[r][metric] for r in names]
                tr.x = ["last", "swa", f"ema({self.decay.value:g})", f"lawa({self.k.value})"]
        body = [
            [r] + ["…" if rows[r] is None else short(rows[r][m]) for m in self.metrics]
            for r in names
        ]
        self.table.value = html_table(["average"] + self.metrics, body, "")
        done = all(rows[r] is not None for r in names)
        self.status.value = "" if done else "computing…"
