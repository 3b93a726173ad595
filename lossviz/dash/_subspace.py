"""``dash.subspace``: a live view of a :class:`~lossviz.SubspaceTracker` while it trains.

The gradient fraction ``‖V_kᵀg‖²/‖g‖²`` and the subspace overlap
``‖V_k(t_i)ᵀV_k(t_j)‖_F²/k`` (Gur-Ari, Roberts, Dyer 2018, "Gradient Descent Happens in a
Tiny Subspace"); ``λ_max`` against ``2/lr`` (Cohen, Kaur, Li, Kolter, Talwalkar 2021,
"Gradient Descent on Neural Networks Typically Occurs at the Edge of Stability").
"""

from __future__ import annotations

import html
import math
import threading
import time

import numpy as np

from .. import validate
from ._common import (
    Dashboard,
    figure_widget,
    finite_list,
    guard_messages,
    slider,
    style,
    sync_figures,
)

# trace indices of the line figure (rows: fraction, λ_max, loss)
FRAC, FRAC_AVG, FRAC_DATA, LAM, TWO, THR, LOSS, LOSS_AVG = range(8)


def moving_average(y, w: int) -> np.ndarray:
    """Trailing mean over the last ``w`` values (fewer at the start), ignoring NaN.

    ``out[i] = mean of the finite y[j], max(0, i−w+1) <= j <= i`` (NaN when none is).

    Args:
        y: the values (array-like, 1-D).
        w: the window length (``<= 1``: a copy of ``y``).

    Returns:
        A float64 array of ``y``'s length.

    >>> moving_average([1.0, 3.0, float("nan"), 5.0], 2).tolist()
    [1.0, 2.0, 3.0, 5.0]
    """
    y = np.asarray(y, dtype=np.float64)
    if w <= 1:
        return y.copy()
    ok = np.isfinite(y)
    c = np.concatenate([[0.0], np.cumsum(np.where(ok, y, 0.0))])
    n = np.concatenate([[0], np.cumsum(ok)])
    i = np.arange(1, len(y) + 1)
    lo = np.maximum(0, i - int(w))
    cnt = n[i] - n[lo]
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(cnt > 0, (c[i] - c[lo]) / np.maximum(cnt, 1), np.nan)


def thin(idx: np.ndarray, max_points: int | None) -> np.ndarray:
    """Every k-th index (and the last) so that at most about ``max_points`` remain.

    Args:
        idx: the indices (1-D array).
        max_points: the target count (None: keep all).

    Returns:
        ``idx[::k]`` with ``k = ceil(len(idx) / max_points)``, plus ``idx[-1]`` if it was
        dropped; ``idx`` itself when it is short enough.

    >>> thin(np.arange(10), 4).tolist()
    [0, 3, 6, 9]
    """
    if max_points is None or len(idx) <= max_points:
        return idx
    k = math.ceil(len(idx) / max_points)
    out = idx[::k]
    return out if out[-1] == idx[-1] else np.append(out, idx[-1])


def _num(r: dict, key: str) -> float:
    v = r.get(key)
    return math.nan if v is None else float(v)


class _Series:
    """The tracker's history as columns, appended to at each read."""

    def __init__(self):
        self.steps: list[int] = []
        self.frac: list[float] = []
        self.loss: list[float] = []
        self.train_loss: list[float] = []
        self.two: list[float] = []
        self.thr: list[float] = []
        self.refresh: list[dict] = []  # the records of the refreshes

    def extend(self, recs: list[dict]) -> bool:
        """Append records; True when one of them is a refresh."""
        new_refresh = False
        for r in recs:
            self.steps.append(int(r["step"]))
            self.frac.append(_num(r, "gradient_fraction"))
            self.loss.append(_num(r, "loss"))
            self.train_loss.append(_num(r, "train_loss"))
            self.two.append(_num(r, "two_over_lr"))
            self.thr.append(_num(r, "stability_threshold"))
            if r.get("refreshed"):
                self.refresh.append(r)
                new_refresh = True
        return new_refresh


class SubspaceDashboard(Dashboard):
    """See :func:`lossviz.dash.subspace`."""

    def __init__(
        self,
        tracker,
        *,
        every_s,
        window,
        smooth,
        total,
        max_points,
    ):
        """Arguments as :func:`lossviz.dash.subspace` (which holds the defaults)."""
        super().__init__()
        import ipywidgets as W
        import plotly.graph_objects as go
        from plotly.subplots import make_subplots

        from ..subspace import SubspaceTracker

        if not isinstance(tracker, SubspaceTracker):
            raise TypeError(f"expected a lossviz.SubspaceTracker, got {type(tracker).__name__}")
        validate.number(every_s, "every_s (seconds)", low=0)
        for name, v in (("window", window), ("total", total), ("max_points", max_points)):
            validate.integer(v, name, none=True)
        validate.integer(smooth, "smooth")
        self.tracker = tracker
        self.every_s = float(every_s)
        self.window = window
        self.max_points = max_points
        self.n_draws = 0
        self.data = _Series()
        self.overlap: tuple[list[int], np.ndarray] = ([], np.zeros((0, 0)))
        self._draw_lock = threading.RLock()  # one read + render at a time
        self._slock = threading.Lock()  # the throttle's state
        self._scheduled = False
        self._last_draw = -math.inf
        self._last_sync = -math.inf
        self._heat_key = None
        self._closed = False

        # ---- widgets ----------------------------------------------------------------
        self.smooth = slider(
            "smooth",
            smooth,
            1,
            max(200, smooth),
            1,
            kind="int",
            width="330px",
            continuous_update=True,
            tooltip="moving-average window (steps)",
        )
        # in percent of the run: the kernel never moves it (a slider moved by the kernel
        # while the browser drags it sends stale values back), and 100 % is the newest step
        self.steps = slider(
            "steps",
            (0.0, 100.0),
            0.0,
            100.0,
            0.5,
            kind="range",
            width="420px",
            readout=False,
            continuous_update=True,
        )
        self.range_label = W.HTML("", layout=W.Layout(width="170px"))
        self.range_label.add_class("lossviz-range-label")
        self.pause = W.ToggleButton(
            value=False,
            description="pause redraws",
            icon="pause",
            tooltip="stop redrawing (training goes on)",
            layout=W.Layout(width="150px"),
        )
        self.progress = W.IntProgress(
            value=0,
            min=0,
            max=total or 1,
            description="training",
            layout=W.Layout(width="360px", display=None if total else "none"),
        )
        self.status = W.HTML("")
        self.readout = W.HTML("")

        # ---- figures (complete before wrapping) -------------------------------------
        k = tracker.k
        base = make_subplots(
            rows=3,
            cols=1,
            shared_xaxes=True,
            vertical_spacing=0.08,
            row_heights=[0.36, 0.36, 0.28],
            subplot_titles=(
                f"gradient fraction ‖V_kᵀg‖²/‖g‖² in the top-{k} subspace",
                "sharpness λ_max and the stability threshold 2/lr",
                "training loss",
            ),
        )
        e: list = []

        def add(row: int, **kw) -> None:  # an empty line trace in row `row`
            base.add_trace(go.Scatter(x=e, y=e, **kw), row, 1)

        add(1, mode="lines", name="gradient fraction", line={"color": "#9ecae1", "width": 1})
        add(
            1,
            mode="lines",
            name=f"moving average ({smooth})",
            line={"color": "#1f77b4", "width": 2.5},
        )
        add(
            1,
            mode="markers+lines",
            name="full-data gradient",
            marker={"size": 6, "color": "#ff7f0e"},
            line={"color": "#ff7f0e", "width": 1},
        )
        add(
            2,
            mode="lines+markers",
            name="λ_max",
            marker={"size": 5},
            line={"color": "#d62728", "width": 2},
        )
        add(2, mode="lines", name="2/lr", line={"color": "black", "dash": "dash", "width": 1.5})
        add(
            2,
            mode="lines",
            name="(2+2β)/lr (momentum)",
            visible=False,
            line={"color": "#7f7f7f", "dash": "dot", "width": 1.5},
        )
        add(3, mode="lines", name="loss", line={"color": "#a1d99b", "width": 1})
        add(
            3,
            mode="lines",
            name=f"loss, average ({smooth})",
            line={"color": "#2ca02c", "width": 2.5},
        )
        base.update_yaxes(range=[0, 1.02], row=1, col=1)
        base.update_xaxes(title_text="step", row=3, col=1)
        style(
            base,
            620,
            640,
            (55, 20, 40, 40),
            legend={"orientation": "h", "y": -0.12, "x": 0, "font": {"size": 11}},
        )
        for a in base.layout.annotations:
            a.font.size = 13
        self.fig = figure_widget(base)

        heat = go.Figure(
            go.Heatmap(
                z=[],
                x=[],
                y=[],
                zmin=0,
                zmax=1,
                colorscale="Viridis",
                colorbar={"thickness": 12, "len": 0.9},
                hovertemplate="steps %{y} and %{x}: %{z:.3f}<extra></extra>",
            )
        )
        # numeric axes: a cell spans the steps around its refresh (thinned ones are wider)
        heat.update_xaxes(title_text="refresh step", nticks=6)
        heat.update_yaxes(autorange="reversed", nticks=6)
        style(
            heat,
            370,
            370,
            (50, 10, 50, 45),
            title={
                "text": f"overlap ‖V_iᵀV_j‖²_F/{k} of the top-{k} subspaces",
                "font": {"size": 13},
                "x": 0.02,
            },
        )
        self.heat = figure_widget(heat)

        # ---- wiring -----------------------------------------------------------------
        self.smooth.observe(self._on_view, names="value")
        self.steps.observe(self._on_range, names="value")
        self.pause.observe(self._on_pause, names="value")
        self.widget = W.VBox(
            [
                W.HBox([self.smooth, self.steps, self.range_label, self.pause]),
                W.HBox([self.fig, W.VBox([self.heat, self.readout])]),
                W.HBox([self.progress, self.status]),
            ],
            layout=W.Layout(padding="4px"),
        )
        self.widget.add_class("lossviz-dash-subspace")
        self._guard(self.fig, self.heat, self.steps)
        self._remove_listener = tracker.add_listener(self._on_step)
        self.update()

    def _guard(self, *widgets) -> None:
        """Handle the front end's messages to these widgets under the draw lock.

        A message is applied inside ``hold_trait_notifications``, which merges the
        changes made meanwhile to one trait: a FigureWidget update sent from a draw thread
        (``_py2js_update = msg`` then ``= None``) while the kernel applies the browser's
        reply to the previous one (``_js2py_traceDeltas``) would be lost.
        """
        for w in widgets:
            guard_messages(w, self._draw_lock)

    # ---- live updates ---------------------------------------------------------------
    def _on_step(self, tracker, rec) -> None:
        """Listener (the training thread): cheap, never reads the device."""
        if not self.pause.value and not self._closed:
            self._schedule()

    def _schedule(self) -> None:
        """At most one draw every ``every_s`` seconds; the last step is always drawn."""
        with self._slock:
            if self._scheduled:
                return
            self._scheduled = True
            delay = max(0.0, self._last_draw + self.every_s - time.monotonic())
        self._spawn(self._draw_later, delay, name="lossviz-subspace-draw")

    def _draw_later(self, delay: float) -> None:
        if delay > 0:
            time.sleep(delay)
        with self._slock:
            self._scheduled = False
        if not self._closed:
            self._draw()

    def update(self) -> None:
        """Read the tracker now and redraw, in the calling thread (also while paused)."""
        with self._draw_lock:
            self._draw()
            sync_figures(self.fig, self.heat)
            self._last_sync = time.monotonic()

    def _draw(self) -> None:
        with self._draw_lock:
            with self._slock:
                self._last_draw = time.monotonic()
            new = self.tracker.records(len(self.data.steps))  # the one host sync
            if self.data.extend(new) or self._heat_key is None:
                self.overlap = self.tracker.overlap_matrix()
                self._heat_key = None
            self._render()
            self.n_draws += 1
            if time.monotonic() - self._last_sync > 3.0:  # views created later stay current
                sync_figures(self.fig, self.heat)
                self._last_sync = time.monotonic()

    def view_range(self) -> tuple[int, int]:
        """The steps ``(lo, hi)`` shown.

        The range slider's percentages of the last step recorded; at 100 % the newest
        step, and with ``window`` then at most the last ``window`` steps.
        """
        last = self.data.steps[-1] if self.data.steps else 0
        a, b = self.steps.value
        lo, hi = round(a / 100 * last), round(b / 100 * last)
        if self.window is not None and b >= 100:
            lo = max(lo, last - self.window + 1)
        return lo, max(lo, hi)

    # ---- view changes (front end) ---------------------------------------------------
    def _on_view(self, change) -> None:
        with self._draw_lock:
            self._render()

    def _on_range(self, change) -> None:
        with self._draw_lock:
            self._render()

    def _on_pause(self, change) -> None:
        self.pause.description = "resume redraws" if change["new"] else "pause redraws"
        self.pause.icon = "play" if change["new"] else "pause"
        if not change["new"]:
            self._schedule()
        with self._draw_lock:
            self._render_status()

    # ---- rendering ------------------------------------------------------------------
    def loss_key(self) -> str:
        """``"train_loss"`` when the loop passed ``loss=`` to ``step``, else ``"loss"``."""
        return "train_loss" if np.isfinite(self.data.train_loss).any() else "loss"

    def _render(self) -> None:
        d = self.data
        if not d.steps:
            self._render_status()
            return
        w = int(self.smooth.value)
        lo, hi = self.view_range()
        self.range_label.value = f"{lo} – {hi} <small>of {d.steps[-1]}</small>"
        S = np.asarray(d.steps)
        idx = thin(np.flatnonzero((S >= lo) & (S <= hi)), self.max_points)
        xs = S[idx].tolist()
        frac = np.asarray(d.frac)
        lkey = self.loss_key()
        loss = np.asarray(d.train_loss if lkey == "train_loss" else d.loss)
        two, thr = np.asarray(d.two), np.asarray(d.thr)
        R = [r for r in d.refresh if lo <= r["step"] <= hi]
        rs = [r["step"] for r in R]
        fd = [
            (r["step"], r["gradient_fraction_data"])
            for r in R
            if r.get("gradient_fraction_data") is not None
        ]
        shown = loss[idx]
        log = bool(len(shown)) and bool(np.all(shown[np.isfinite(shown)] > 0))
        momentum = bool(np.any(np.isfinite(thr) & (np.abs(thr - two) > 1e-12 * np.abs(two))))
        f = self.fig
        with f.batch_update():
            f.data[FRAC].x, f.data[FRAC].y = xs, finite_list(frac[idx])
            f.data[FRAC_AVG].x = xs
            f.data[FRAC_AVG].y = finite_list(moving_average(frac, w)[idx])
            f.data[FRAC_AVG].name = f"moving average ({w})"
            f.data[FRAC_DATA].x = [s for s, _ in fd]
            f.data[FRAC_DATA].y = finite_list([v for _, v in fd])
            f.data[LAM].x = rs
            f.data[LAM].y = finite_list([_num(r, "lambda_max") for r in R])
            f.data[TWO].x, f.data[TWO].y = xs, finite_list(two[idx])
            f.data[THR].x, f.data[THR].y = xs, finite_list(thr[idx])
            f.data[THR].visible = momentum
            f.data[LOSS].x, f.data[LOSS].y = xs, finite_list(loss[idx])
            f.data[LOSS].name = lkey.replace("_", " ")
            f.data[LOSS_AVG].x = xs
            f.data[LOSS_AVG].y = finite_list(moving_average(loss, w)[idx])
            f.data[LOSS_AVG].name = f"{lkey.replace('_', ' ')}, average ({w})"
            f.layout.xaxis3.range = [lo - 0.5, hi + 0.5] if hi <= lo else [lo, hi]
            f.layout.yaxis3.type = "log" if log else "linear"
            ticks = _log_ticks(shown) if log else None
            f.layout.yaxis3.tickvals = ticks
            f.layout.yaxis3.ticktext = None if ticks is None else [f"{t:g}" for t in ticks]
        self._render_heat(lo, hi)
        self._render_readout(w, lkey)
        self._render_status()

    def _render_heat(self, lo: int, hi: int) -> None:
        steps, M = self.overlap
        key = (tuple(steps), lo, hi)
        if key == self._heat_key:
            return
        sel = [i for i, s in enumerate(steps) if lo <= s <= hi]
        at = [steps[i] for i in sel]
        z = M[np.ix_(sel, sel)] if sel else np.zeros((0, 0))
        with self.heat.batch_update():
            t = self.heat.data[0]
            t.z = [finite_list(row) for row in z]
            t.x, t.y = at, at
        self._heat_key = key

    def _render_readout(self, w: int, lkey: str) -> None:
        d = self.data
        i = len(d.steps) - 1
        frac = moving_average(d.frac, w)
        loss = moving_average(d.train_loss if lkey == "train_loss" else d.loss, w)
        rows = [
            ("step", f"{d.steps[i]}"),
            ("gradient fraction", f"{_f(d.frac[i])} (average {_f(frac[i])})"),
        ]
        last = d.refresh[-1] if d.refresh else None
        if last is not None and last.get("gradient_fraction_data") is not None:
            rows.append(
                (
                    "full-data gradient fraction",
                    f"{_f(last['gradient_fraction_data'])} (step {last['step']})",
                )
            )
        lam = _num(last, "lambda_max") if last is not None else math.nan
        rows.append(("λ_max", f"{_f(lam)}" + (f" (step {last['step']})" if last else "")))
        two_now = d.two[i]
        rows.append(
            ("2/lr", _f(two_now) if math.isfinite(two_now) else "– (give the tracker optimizer=)")
        )
        two_at = _num(last, "two_over_lr") if last is not None else math.nan
        rows.append(("λ_max·lr/2", _f(lam / two_at) if math.isfinite(lam / two_at) else "–"))
        thr_at = _num(last, "stability_threshold") if last is not None else math.nan
        if math.isfinite(thr_at) and abs(thr_at - two_at) > 1e-12 * abs(two_at):
            rows.append(("λ_max / ((2+2β)/lr)", _f(lam / thr_at)))
        raw = (d.train_loss if lkey == "train_loss" else d.loss)[i]
        rows.append((lkey.replace("_", " "), f"{_f(raw)} (average {_f(loss[i])})"))
        rows.append(("refreshes · HVPs", f"{len(d.refresh)} · {self.tracker.n_hvp}"))
        body = "".join(
            f"<tr><td>{html.escape(a)}</td><td>{html.escape(b)}</td></tr>" for a, b in rows
        )
        self.readout.value = (
            f"<table class='lossviz-readout lossviz-subspace-readout'>{body}"
            "</table><small>λ_max·lr/2 ≈ 1: the edge of stability "
            "(Cohen et al. 2021)</small>"
        )

    def _render_status(self) -> None:
        n = len(self.data.steps)
        if self.progress.layout.display != "none":
            self.progress.value = min(n, self.progress.max)
        parts = [f"{n} steps recorded · {len(self.data.refresh)} refreshes"]
        if self.pause.value:
            parts.append("<b>redraws paused</b> (training goes on)")
        msg = " · ".join(parts)
        errs = list(self.errors) + list(self.tracker.listener_errors)
        if errs:
            msg += f" · <span style='color:#b00'>error: {html.escape(errs[-1])}</span>"
        self.status.value = msg

    def _on_error(self, e: Exception) -> None:
        self._render_status()

    def close(self) -> None:
        """Stop listening to the tracker and close this dashboard's widgets."""
        self._closed = True
        self._remove_listener()

        def close(w):
            for c in getattr(w, "children", ()):
                close(c)
            w.close()

        close(self.widget)


def _log_ticks(y: np.ndarray) -> list[float] | None:
    """Log-axis ticks 1, 2, 5 × 10^k in the range of ``y``.

    Every digit in a narrow range; None within one digit. Plotly's own label the minor
    ticks with a bare digit.
    """
    y = y[np.isfinite(y)]
    if not len(y):
        return None
    lo, hi = float(y.min()), float(y.max())
    ticks = [
        m * 10.0**e
        for e in range(math.floor(math.log10(lo)) - 1, math.ceil(math.log10(hi)) + 1)
        for m in (1, 2, 5)
    ]
    inside = [t for t in ticks if lo <= t <= hi]
    if len(inside) < 2:  # a narrow range: every digit
        inside = [
            m * 10.0**e
            for e in range(math.floor(math.log10(lo)), math.ceil(math.log10(hi)) + 1)
            for m in range(1, 10)
            if lo <= m * 10.0**e <= hi
        ]
    if len(inside) < 2:  # within one digit: plotly's ticks are fine there
        return None
    return [float(f"{t:.6g}") for t in inside]


def _f(v) -> str:
    return "–" if v is None or not math.isfinite(v) else f"{v:.4g}"
