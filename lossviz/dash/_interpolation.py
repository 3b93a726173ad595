"""``dash.interpolation``: scrub the straight path between two checkpoints.

A pure view: every number it shows comes from a public kernel called with the
dashboard's settings — the α grid and its barrier from
:func:`lossviz.connectivity.interpolate`, the point at a resting α from
:func:`lossviz.landscape.evaluate` at :func:`lossviz.connectivity.path_point`, the
mixer's bars from :func:`lossviz.connectivity.layerwise_barriers` (base A).
"""

from __future__ import annotations

import html
import math
import threading

import numpy as np
import torch

from .. import validate
from ..connectivity import interpolate, layerwise_barriers, path_point, resolve_groups
from ..engine import Engine, check_bn, check_engine_args, check_metrics
from ..errors import LossvizError
from ..formatting import number
from ..landscape import evaluate
from ..metrics import resolve_metrics
from ..objective import Objective
from ._common import Dashboard, Debounce, figure_widget, finite_list, slider, style, sync_figures

#: keywords passed on to the kernels (as in :func:`lossviz.connectivity.interpolate`)
KERNEL_KW = ("bn_data", "precision", "batched", "chunk_size")


def bn_mode(bn) -> str:
    """The dashboard's ``bn`` as the kernels' ``"eval"`` / ``"recompute"``.

    Args:
        bn: ``"eval"`` or ``"recompute"``; ``False`` / ``True`` (the toggle's off / on)
            stand for ``"eval"`` / ``"recompute"``.

    Returns:
        ``"eval"`` or ``"recompute"``.

    Raises:
        LossvizError: ``bn`` is none of these.
    """
    if isinstance(bn, bool):
        return "recompute" if bn else "eval"
    return validate.choice(bn, "bn", ("eval", "recompute"))


def mixer_groups(obj: Objective, groups) -> dict[str, list[str]]:
    """The mixer's rows: disjoint groups of parameter names.

    The parameters no group names are collected in ``"(other)"``.

    Args:
        obj: the Objective whose parameters are grouped.
        groups: as :func:`lossviz.connectivity.resolve_groups` takes them (``"module"``
            or a mapping ``name -> parameter / module names``), ``"param"`` (one row per
            parameter) or None (one row per module).

    Returns:
        A dict ``row name -> parameter names``.

    Raises:
        LossvizError: ``groups="cumulative"`` (overlapping groups), a parameter in two
            groups, or what :func:`~lossviz.connectivity.resolve_groups` refuses.
    """
    names = list(obj.layout.names)
    if groups is None or (isinstance(groups, str) and groups == "param"):
        out = obj.layout.by_module() if groups is None else {n: [n] for n in names}
    elif isinstance(groups, str) and groups == "cumulative":
        raise LossvizError(
            "groups='cumulative' overlaps (the first k layers): the mixer needs disjoint "
            "groups; use 'module', 'param' or a mapping"
        )
    else:
        out = resolve_groups(obj, groups)[0]
    seen: dict[str, str] = {}
    for k, v in out.items():
        for n in v:
            if n in seen:
                raise LossvizError(f"groups: parameter {n!r} is in groups {seen[n]!r} and {k!r}")
            seen[n] = k
    rest = [n for n in names if n not in seen]
    if rest:
        out["(other)"] = rest
    return out


def _image_shape(x: torch.Tensor):
    """(H, W) to show one input as an image, or None."""
    per = x[0]
    if per.ndim == 3 and per.shape[0] in (1, 3):
        return tuple(per.shape[1:])
    if per.ndim == 2:
        return tuple(per.shape)
    if per.ndim == 1:
        s = int(round(math.sqrt(per.numel())))
        if s * s == per.numel() and s >= 4:
            return (s, s)
    return None


class InterpolationDashboard(Dashboard):
    """See :func:`lossviz.dash.interpolation` (which holds the arguments and defaults)."""

    def __init__(
        self,
        obj,
        a,
        b,
        *,
        metrics,
        groups,
        n,
        samples,
        bn,
        match,
        rest_ms,
        throttle_ms,
        start,
        path,
        kw,
    ):
        super().__init__()
        import ipywidgets as W

        from ._anywidgets import LayerMixer, PathScrubber

        if not isinstance(obj, Objective):
            raise TypeError(f"obj must be a lossviz.Objective, got {type(obj).__name__}")
        obj.require_local("the interpolation dashboard")
        n = validate.integer(n, "n (points on the α grid)", low=3)
        bn = bn_mode(bn)
        bad = [k for k in kw if k not in KERNEL_KW]
        if bad:
            raise TypeError(f"unexpected keyword argument(s) {bad}; accepted: {list(KERNEL_KW)}")
        self.obj = obj
        self._kw = dict(kw)
        try:  # BatchNorm recompute needs running statistics in eval mode (the kernel's check)
            check_bn(obj, "recompute")
            bn_msg = ""
        except LossvizError as e:
            bn_msg = str(e)
        if bn_msg and (bn == "recompute" or "bn_data" in self._kw):
            what = "bn='recompute'" if bn == "recompute" else "bn_data="
            raise LossvizError(f"{what} (recompute BatchNorm statistics): {bn_msg}")
        # the kernels' own checks of their keywords, now rather than in the background
        check_engine_args(
            obj,
            bn="recompute" if "bn_data" in self._kw else None,
            bn_data=self._kw.get("bn_data"),
            **{k: v for k, v in self._kw.items() if k != "bn_data"},
        )
        fa_flat, fa_fixed = obj.resolve(a, name="a")
        fb_flat, fb_fixed = obj.resolve(b, name="b")
        self._state_a = {**fa_fixed, **obj.layout.unflatten(fa_flat)}
        self._state_b = {**fb_fixed, **obj.layout.unflatten(fb_flat)}
        self._state_matched = None
        if obj.forward is not None:
            metrics = ("loss",)
        # accuracy only where it applies: left out of the defaults with a warning (regression)
        optional = ("accuracy",) if tuple(metrics) == ("loss", "accuracy") else ()
        spec, _ = check_metrics(
            obj, resolve_metrics(obj, metrics), fa_flat, fa_fixed, optional=optional
        )
        self.metric_spec = dict(spec)
        self.metrics = list(spec)
        self.groups = mixer_groups(obj, groups)
        self._lock = threading.RLock()
        self._gen = 0
        self._cache: dict = {}
        self._layerwise: dict = {}
        self._exact_gen = 0
        self.exact: dict | None = None  # metrics at the resting α (the kernel's values)
        self.curve = None  # a CurveResult drawn next to the straight path (show_curve)
        if path is not None:
            if path.objective is not obj or len(path.alphas) != n or path.bn != bn:
                raise LossvizError("path: a PathResult of this Objective with the same n and bn")
            if list(path.values) != self.metrics:
                raise LossvizError(f"path has metrics {list(path.values)}, not {self.metrics}")
            key = ((True,) * len(self.groups), bool(match), bn)
            if not match:
                self._cache[key] = {"path": path, "complete": False}

        # sample inputs for "what the model does at α"
        self._samples = None
        self._kind = None
        if obj.forward is None and samples:
            self._set_samples(samples)

        # ---- widgets ----------------------------------------------------------------
        self.alphas = np.linspace(0.0, 1.0, n)  # the grid interpolate() evaluates
        self.slider = slider(
            "α", 0.0, 0.0, 1.0, 0.01, width="560px", continuous_update=True, readout_format=".2f"
        )
        self.scrubber = PathScrubber(
            value=0.0,
            throttle_ms=int(throttle_ms),
            step=0.01,
            alphas=[float(x) for x in self.alphas],
            metric=self.metrics[0],
        )
        self._link = W.link((self.slider, "value"), (self.scrubber, "value"))
        self.progress = W.IntProgress(
            value=0, min=0, max=1, description="α grid", layout=W.Layout(width="360px")
        )
        self.status = W.HTML("")
        self.readout = W.HTML("")
        self.match_box = W.Checkbox(value=bool(match), description="weight matching", indent=False)
        self.bn_box = W.Checkbox(
            value=bn == "recompute",
            description="recompute BatchNorm",
            disabled=bool(bn_msg),
            indent=False,
        )
        note = f"BatchNorm recompute off: {bn_msg}" if bn_msg else ""
        self.toggle_note = W.HTML("<small>" + html.escape(note) + "</small>")
        names = list(self.groups)
        self.mixer = LayerMixer(
            layers=names,
            sizes=self._group_sizes(),
            mask=[True] * len(names),
            barriers=[None] * len(names),
            note="bars: layer-wise barrier (Adilova et al.), A with only that layer averaged, "
            "minus ½(L(a) + L(b))",
        )
        self.fig = self._build_fig()
        if self._current() is not None:
            # a given path is in the figure before it is wrapped (its construction state):
            # updates sent while the browser is still loading plotly's front end are lost
            self._show_grid(self._current())
        self.fig = figure_widget(self.fig)
        self.pred_fig = self._build_pred_fig() if self._kind else None

        # ---- wiring -----------------------------------------------------------------
        self._rest = Debounce(rest_ms / 1000.0, self._rest_eval)
        self._debouncers = [self._rest]
        self.slider.observe(self._on_alpha, names="value")
        self.mixer.observe(lambda ch: self.recompute(), names="mask")
        self.match_box.observe(lambda ch: self.recompute(), names="value")
        self.bn_box.observe(lambda ch: self.recompute(), names="value")

        left = [self.fig, W.HBox([self.progress, self.status])]
        right = [W.HTML("<b>at α</b>"), self.readout]
        if self.pred_fig is not None:
            right.append(self.pred_fig)
        self.widget = W.VBox(
            [
                W.HBox(
                    [
                        W.VBox([self.slider, self.scrubber]),
                        W.VBox([self.match_box, self.bn_box, self.toggle_note]),
                    ]
                ),
                W.HBox([W.VBox(left), W.VBox(right)]),
                self.mixer,
            ],
            layout=W.Layout(padding="4px"),
        )
        self.widget.add_class("lossviz-dash-interpolation")
        self._update_readout(0.0, None, "")
        if start or path is not None:
            self.recompute()

    def _group_sizes(self) -> list[int]:
        sl = self.obj.layout.slices()
        return [sum(sl[p].stop - sl[p].start for p in v) for v in self.groups.values()]

    def _set_samples(self, samples) -> None:
        obj = self.obj
        if isinstance(samples, (tuple, list)) and len(samples) == 2:
            xs, ys = samples
        else:
            batch, _ = next(iter(obj.batches()))
            xs, ys = batch[0], batch[1]
            k = validate.integer(samples, "samples (how many inputs to show)", low=1)
            if xs.ndim == 2 and xs.shape[-1] == 2:
                k = min(len(xs), 400)
            xs, ys = xs[:k], ys[:k]
        xs = torch.as_tensor(xs).to(obj.device)
        if xs.ndim == 2 and xs.shape[1] == 2:
            self._kind = "boundary"
            lo = xs.min(0).values.cpu().numpy()
            hi = xs.max(0).values.cpu().numpy()
            pad = 0.1 * (hi - lo + 1e-9)
            self._gx = np.linspace(lo[0] - pad[0], hi[0] + pad[0], 60)
            self._gy = np.linspace(lo[1] - pad[1], hi[1] + pad[1], 60)
            gx, gy = np.meshgrid(self._gx, self._gy)
            grid = np.stack([gx.ravel(), gy.ravel()], 1)
            self._grid = torch.as_tensor(grid, dtype=xs.dtype, device=obj.device)
        elif _image_shape(xs) is not None:
            self._kind = "images"
            self._img_shape = _image_shape(xs)
        else:
            self._kind = "table"
        self._samples = (xs, torch.as_tensor(ys).to(obj.device))

    # ---- points -----------------------------------------------------------------------
    def _endpoint_b(self, matched: bool) -> dict:
        """B's full state, or B permuted to align with A (weight matching)."""
        if not matched:
            return self._state_b
        if self._state_matched is None:
            from ..alignment import weight_matching

            wm = weight_matching(self.obj, self._state_a, self._state_b)
            self._state_matched = dict(wm)
        return self._state_matched

    def _target(self, mask, matched: bool) -> dict:
        """The far end of the path shown: B (or matched B) in the mixed layers, else A.

        A layer's buffers (BatchNorm running statistics) move with it: a
        buffer comes from B when every varying parameter of its module is mixed in.
        """
        b = self._endpoint_b(matched)
        if all(mask):
            return b
        moving = {p for on, ps in zip(mask, self.groups.values()) if on for p in ps}
        names = set(self.obj.layout.names)
        out = dict(self._state_a)
        for k in out:
            if k in names:
                if k in moving:
                    out[k] = b[k]
                continue
            mod = k.rpartition(".")[0]
            own = [p for p in names if p.rpartition(".")[0] == mod]
            if own and all(p in moving for p in own):
                out[k] = b[k]
        return out

    def point(self, alpha: float, *, mask=None, matched=None) -> dict:
        """The full state at ``alpha`` on the path shown.

        :func:`lossviz.connectivity.path_point` from A to the mixed end: parameters
        ``(1−α)·θ_A + α·θ_end``, where ``θ_end`` is B (or matched B) in the mixed layers
        and A elsewhere; buffers as ``path_point`` interpolates them.

        Args:
            alpha: the position on the path (0: A, 1: the mixed end).
            mask: one bool per mixer row (None: the mixer's current mask).
            matched: use weight-matched B (None: the toggle's current value).

        Returns:
            A state dict (parameters and buffers) at ``alpha``.

        Raises:
            ArgumentTypeError: ``alpha`` is not a number.
            LossvizError: ``alpha`` outside ``[0, 1]`` (as
                :func:`~lossviz.connectivity.path_point` checks it).
        """
        mask = self.mixer.mask if mask is None else mask
        matched = self.match_box.value if matched is None else matched
        return path_point(self.obj, self._state_a, self._target(mask, matched), alpha)

    # ---- kernels ----------------------------------------------------------------------
    def _key(self):
        bn = "recompute" if self.bn_box.value else "eval"
        return (tuple(self.mixer.mask), bool(self.match_box.value), bn)

    def _kernel_kw(self, bn: str) -> dict:
        """The kernels' keywords: ``bn_data`` only with ``bn="recompute"``."""
        return {k: v for k, v in self._kw.items() if bn == "recompute" or k != "bn_data"}

    def _path(self, target: dict, bn: str):
        return interpolate(
            self.obj,
            self._state_a,
            target,
            n=len(self.alphas),
            metrics=self.metric_spec,
            bn=bn,
            progress=False,
            **self._kernel_kw(bn),
        )

    def _evaluate(self, state: dict, bn: str) -> dict:
        """The kernel's metrics at one point, with the path's BatchNorm setting."""
        kw = self._kernel_kw(bn)
        r = evaluate(
            self.obj,
            [state],
            metrics=self.metric_spec,
            at=state,
            bn="recompute" if bn == "recompute" else None,
            bn_data=kw.pop("bn_data", None),
            progress=False,
            **kw,
        )
        return {k: float(r[k][0]) for k in self.metrics}

    def _layer_barriers(self, matched: bool, bn: str) -> list | None:
        """Base-A layer-wise barriers of the first metric (cached per matching and bn)."""
        metric = self.metric_spec[self.metrics[0]]
        if len(self.groups) < 2 or metric not in ("loss", "accuracy", "error"):
            return None
        key = (matched, bn)
        if key not in self._layerwise:
            lw = layerwise_barriers(
                self.obj,
                self._state_a,
                self._endpoint_b(matched),
                groups=self.groups,
                base="A",
                metric=metric,
                bn=bn,
                progress=False,
                **self._kernel_kw(bn),
            )
            self._layerwise[key] = lw
        lw = self._layerwise[key]
        return [lw.barriers["A"][g] for g in self.groups]

    def _outputs(self, state: dict, inputs: torch.Tensor) -> np.ndarray:
        flat, fixed = self.obj.resolve(state)
        with torch.no_grad():
            out = self.obj.batch_outputs(flat, fixed, (inputs,))
        out = out.detach().to(torch.float64).cpu()
        if out.ndim == 1 or out.shape[-1] == 1:  # binary logits
            p1 = torch.sigmoid(out.reshape(-1))
            out = torch.stack([1 - p1, p1], -1)
        else:
            out = torch.softmax(out, -1)
        return out.numpy()

    def _predictions(self, state: dict, bn: str):
        """Class probabilities on the sample inputs (and the decision grid) at a point.

        With ``bn="recompute"`` at the running statistics the kernels re-estimate there
        (:meth:`lossviz.engine.Engine.buffers_at`).
        """
        if self._kind is None:
            return None
        if bn == "recompute":
            flat, fixed = self.obj.resolve(state)
            eng = Engine(
                self.obj, ("loss",), fixed, bn="recompute", bn_data=self._kw.get("bn_data")
            )
            state = {**state, **eng.buffers_at(flat)}
        xs, _ = self._samples
        if self._kind == "boundary":
            p = self._outputs(state, self._grid)
            return {
                "grid": p.argmax(-1).reshape(len(self._gy), len(self._gx)),
                "samples": self._outputs(state, xs),
            }
        return {"samples": self._outputs(state, xs)}

    def recompute(self) -> None:
        """(Re)compute the α grid for the current settings in a background thread.

        Results are cached per setting; a newer request cancels an older one.
        """
        key = self._key()
        with self._lock:
            self._gen += 1
            gen = self._gen
        if key in self._cache and self._cache[key].get("complete"):
            self._show_grid(self._cache[key])
            self._on_alpha({"new": self.slider.value})
            return
        self.status.value = "computing the α grid…"
        self._spawn(self._grid_job, key, gen, name="lossviz-alpha-grid")

    def _grid_job(self, key, gen):
        mask, matched, bn = key
        given = self._cache.get(key, {}).get("path")
        total = 1 + int(matched) + int(len(self.groups) > 1) + int(self._kind is not None)
        self.progress.max, self.progress.value = total, 0

        def step(label):
            if self._gen != gen:
                return False
            self.progress.value = min(self.progress.max, self.progress.value + 1)
            self.status.value = label
            return True

        target = self._target(mask, matched)
        path = given if given is not None else self._path(target, bn)
        res = {"path": path, "complete": False, "layer_barriers": None, "preds": None}
        if not step("α grid done"):
            return
        if matched:
            res["before"] = self._path(self._target(mask, False), bn)
            if not step("before matching done"):
                return
        self._cache[key] = res
        self._show_grid(res)
        self._on_alpha({"new": self.slider.value})
        if len(self.groups) > 1:
            res["layer_barriers"] = self._layer_barriers(matched, bn)
            if not step("layer-wise barriers done"):
                return
            if res["layer_barriers"] is not None:
                self.mixer.barriers = finite_list(res["layer_barriers"])
        if self._kind is not None:
            res["preds"] = [
                self._predictions(path_point(self.obj, self._state_a, target, al), bn)
                for al in path.alphas
            ]
            if not step("predictions done"):
                return
        res["complete"] = True
        sync_figures(*self.figures())  # a reload / second view shows the computed curves
        self.progress.value = self.progress.max
        h = path.barrier(self.metrics[0])
        self.status.value = f"done · barrier ({self.metrics[0]}) {number(h, 4)}"

    # ---- display ----------------------------------------------------------------------
    def _build_fig(self):
        import plotly.graph_objects as go
        from plotly.subplots import make_subplots

        nm = len(self.metrics)
        base = make_subplots(rows=1, cols=nm, subplot_titles=self.metrics, horizontal_spacing=0.12)
        nan = [None] * len(self.alphas)  # widget state is JSON: no NaN
        self._tr = {}

        def add(key, col, **kw):  # a trace along the α grid (empty until computed)
            kw = {"x": self.alphas, "y": nan, "mode": "lines", **kw}
            base.add_trace(go.Scatter(**kw), row=1, col=col)
            self._tr[key] = len(base.data) - 1

        for col, m in enumerate(self.metrics, 1):
            blue, orange = {"color": "#1f77b4"}, {"color": "#ff7f0e", "dash": "dash"}
            add((m, "curve"), col, mode="lines+markers", name=m, marker={"size": 4}, line=blue)
            add((m, "before"), col, name=f"{m} before matching", line=orange)
            add(
                (m, "marker"),
                col,
                x=[0.0],
                y=[None],
                mode="markers",
                name=f"{m} at α",
                marker={
                    "size": 12,
                    "color": "black",
                    "symbol": "circle-open",
                    "line": {"width": 3},
                },
            )
            if col == 1:
                add(
                    "barrier",
                    col,
                    x=[None],
                    y=[None],
                    mode="markers+text",
                    name="barrier",
                    text=[""],
                    textposition="top center",
                    marker={"size": 11, "color": "#d62728", "symbol": "x"},
                )
            base.update_xaxes(title_text="α", range=[-0.02, 1.02], row=1, col=col)
        style(
            base,
            max(400, 330 * nm + 60),
            330,
            (50, 20, 60, 40),
            showlegend=False,
            title={"text": "α = 0.00 · waiting for the α grid", "x": 0.01, "font": {"size": 13}},
        )
        return base

    def _show_grid(self, res):
        path, first = res["path"], self.metrics[0]
        h, ha = path.barrier(first), path.barrier_alpha(first)
        curve = np.asarray(path[first], dtype=np.float64)
        before = res.get("before")
        with self.fig.batch_update():
            for k in self.metrics:
                self.fig.data[self._tr[(k, "curve")]].y = finite_list(path[k])
                self.fig.data[self._tr[(k, "before")]].y = (
                    finite_list(before[k]) if before is not None else [None] * len(path.alphas)
                )
            bt = self.fig.data[self._tr["barrier"]]
            scale = max(1.0, float(np.nanmax(np.abs(curve)))) if np.isfinite(curve).any() else 1
            has = math.isfinite(h) and h > 1e-9 * scale
            i = int(np.flatnonzero(path.alphas == ha)[0]) if has else 0
            bt.x = [ha] if has else [None]
            bt.y = finite_list([curve[i]]) if has else [None]
            bt.text = [f"barrier {number(h, 3)}"] if has else [""]
        self.scrubber.curve = finite_list(curve)
        self.scrubber.barrier_alpha = ha if math.isfinite(ha) else None
        self.scrubber.barrier = h if math.isfinite(h) else None
        self.scrubber.curve2 = finite_list(before[first]) if before is not None else []
        lb = res.get("layer_barriers")
        if lb is not None:
            self.mixer.barriers = finite_list(lb)

    # ---- α changes --------------------------------------------------------------------
    def _current(self):
        return self._cache.get(self._key())

    @property
    def path(self):
        """The :class:`~lossviz.connectivity.PathResult` drawn for the current settings.

        None until computed.
        """
        res = self._current()
        return None if res is None else res["path"]

    @property
    def path_before(self):
        """With weight matching on: the PathResult before matching (dashed), else None."""
        res = self._current()
        return None if res is None else res.get("before")

    @property
    def layerwise(self):
        """The :class:`~lossviz.connectivity.LayerwiseResult` behind the mixer's bars.

        For the current matching and bn; None until computed, or with one group.
        """
        return self._layerwise.get((bool(self.match_box.value), self._key()[2]))

    def _on_alpha(self, change):
        """Show the metrics at α as the slider moves.

        While it moves: the kernel's value at the nearest grid α (marked so); once it
        rests for ``rest_ms``: the kernel's value at α itself.
        """
        alpha = float(change["new"])
        res = self._current()
        self._exact_gen += 1
        self.exact = None
        if res is None:
            self.fig.layout.title.text = f"α = {alpha:.2f} · waiting for the α grid"
            return
        path = res["path"]
        i = int(np.argmin(np.abs(path.alphas - alpha)))
        near = float(path.alphas[i])
        vals = {k: float(path[k][i]) for k in self.metrics}
        with self.fig.batch_update():
            for k in self.metrics:
                t = self.fig.data[self._tr[(k, "marker")]]
                t.x, t.y = [near], finite_list([vals[k]])
            self.fig.layout.title.text = f"α = {alpha:.2f} · grid α = {near:.3g}"
        self.scrubber.status = ""
        if res.get("preds"):
            self._show_preds(res["preds"][i], f"grid α = {near:.3g}")
        self._update_readout(alpha, vals, f"grid α = {near:.3g} (α itself when the slider rests)")
        self._rest(alpha, self._exact_gen, self._key())

    def _rest_eval(self, alpha, gen, key):
        """The exact point at the resting α, off the kernel's main thread."""
        if gen != self._exact_gen:
            return
        self._spawn(self._exact_job, alpha, gen, key, name="lossviz-exact")

    def _exact_job(self, alpha, gen, key):
        mask, matched, bn = key
        state = self.point(alpha, mask=mask, matched=matched)
        vals = self._evaluate(state, bn)
        preds = self._predictions(state, bn) if self._kind else None
        if gen != self._exact_gen or key != self._key():
            return  # the slider moved on meanwhile
        self.exact = {"alpha": alpha, **vals}
        with self.fig.batch_update():
            for k in self.metrics:
                t = self.fig.data[self._tr[(k, "marker")]]
                t.x, t.y = [alpha], finite_list([vals[k]])
            self.fig.layout.title.text = f"α = {alpha:.2f} · exact"
        if preds is not None:
            self._show_preds(preds, "exact")
        self._update_readout(alpha, vals, "exact")
        self.scrubber.status = "exact"

    def show_curve(self, result) -> None:
        """Draw a mode-connecting curve next to the straight path (a view of its numbers).

        Each metric panel gains the curve's values along its ``t`` (red, dotted) exactly
        as the :class:`~lossviz.curves.CurveResult` holds them (``t`` on the α axis:
        both run from A at 0 to B at 1), and the readout the curve's barrier. Nothing is
        computed. What ``CurveResult.dashboard()`` calls.

        Args:
            result: a :class:`~lossviz.curves.CurveResult` of this dashboard's endpoints.

        Raises:
            TypeError: ``result`` is not a CurveResult.
            LossvizError: it holds none of the dashboard's metrics.
        """
        import plotly.graph_objects as go

        from ..curves import CurveResult

        if not isinstance(result, CurveResult):
            raise TypeError(f"result must be a CurveResult, got {type(result).__name__}")
        shared = [m for m in self.metrics if m in result.values]
        if not shared:
            raise LossvizError(
                f"the curve has metrics {list(result.values)}, the dashboard {self.metrics}"
            )
        for col, m in enumerate(self.metrics, 1):
            if m not in shared:
                continue
            x, y = [float(t) for t in result.ts], finite_list(result.values[m])
            key = (m, "mode curve")
            if key in self._tr:  # a curve shown before: replaced
                tr = self.fig.data[self._tr[key]]
                tr.x, tr.y, tr.name = x, y, f"{m} on the {result.curve} curve"
                continue
            self.fig.add_trace(
                go.Scatter(
                    x=x,
                    y=y,
                    mode="lines+markers",
                    name=f"{m} on the {result.curve} curve",
                    line={"color": "#d62728", "dash": "dot"},
                    marker={"size": 4},
                ),
                row=1,
                col=col,
            )
            self._tr[key] = len(self.fig.data) - 1
        self.curve = result
        if self._current() is not None:  # else the α grid's own update shows the row
            self._on_alpha({"new": float(self.slider.value)})

    def _update_readout(self, alpha, vals, src: str):
        rows = [f"<tr><td>α</td><td>{alpha:.3f}</td></tr>"]
        for k in self.metrics:
            v = "…" if vals is None else number(vals[k])
            k_ = html.escape(k)
            rows.append(f"<tr><td>{k_}</td><td class='lv-{k_}'>{v}</td></tr>")
        res = self._current()
        if res is not None:
            path, first = res["path"], self.metrics[0]
            h, ha = path.barrier(first), path.barrier_alpha(first)
            rows.append(f"<tr><td>barrier</td><td>{number(h, 4)} at α={ha:.3g}</td></tr>")
            if res.get("before") is not None:
                hb = res["before"].barrier(first)
                rows.append(f"<tr><td>before matching</td><td>{number(hb, 4)}</td></tr>")
        if self.curve is not None and self.metrics[0] in self.curve.values:
            hc = self.curve.barrier(self.metrics[0])
            rows.append(
                f"<tr><td>{html.escape(self.curve.curve)} curve barrier</td>"
                f"<td class='lv-curve-barrier'>{number(hc, 4)}</td></tr>"
            )
        exact = int(src == "exact")
        self.readout.value = (
            f"<table class='lossviz-readout' data-exact='{exact}'>"
            + "".join(rows)
            + f"</table><small>{html.escape(src or '')}</small>"
        )

    def _build_pred_fig(self):
        import plotly.graph_objects as go

        xs, ys = self._samples
        if self._kind == "boundary":
            x = xs.detach().cpu().numpy()
            fig = go.Figure(
                [
                    go.Heatmap(
                        x=self._gx,
                        y=self._gy,
                        z=np.zeros((len(self._gy), len(self._gx))),
                        showscale=False,
                        colorscale="Portland",
                        opacity=0.45,
                        zsmooth=False,
                    ),
                    go.Scatter(
                        x=x[:, 0],
                        y=x[:, 1],
                        mode="markers",
                        marker={
                            "color": ys.detach().cpu().numpy(),
                            "size": 5,
                            "colorscale": "Portland",
                            "line": {"width": 0.5, "color": "white"},
                        },
                    ),
                ]
            )
            fig.update_layout(title={"text": "decision regions at α", "font": {"size": 12}})
        elif self._kind == "images":
            h, w = self._img_shape
            k = len(xs)
            cols = min(8, k)
            rows = (k + cols - 1) // cols
            gap = max(3, h // 3)  # room above each image for its predicted label
            mosaic = np.zeros((rows * (h + gap), cols * (w + 1)))
            imgs = xs.detach().to(torch.float64).cpu().reshape(k, -1, h, w).mean(1).numpy()
            tx, ty = [], []
            for i in range(k):  # heatmap row 0 is drawn at the bottom: flip each image
                r, c = divmod(i, cols)
                r0 = (rows - 1 - r) * (h + gap)
                mosaic[r0 : r0 + h, c * (w + 1) : c * (w + 1) + w] = imgs[i][::-1]
                tx.append(c * (w + 1) + w / 2 - 0.5)
                ty.append(r0 + h - 0.5 + gap / 2)
            fig = go.Figure(
                [
                    go.Heatmap(z=mosaic, colorscale="Greys", showscale=False, hoverinfo="skip"),
                    go.Scatter(
                        x=tx,
                        y=ty,
                        mode="text",
                        text=["?"] * k,
                        textfont={"size": 14, "color": ["#444"] * k},
                        hoverinfo="text",
                    ),
                ]
            )
            fig.update_xaxes(visible=False)
            fig.update_yaxes(visible=False, scaleanchor="x", range=[-0.5, rows * (h + gap) - 0.5])
            fig.update_layout(
                title={"text": "predictions at α (green: correct)", "font": {"size": 12}}
            )
        else:
            k = len(xs)
            fig = go.Figure(
                go.Bar(
                    x=[f"#{i}" for i in range(k)],
                    y=np.zeros(k),
                    text=["?"] * k,
                    marker={"color": ["#999"] * k},
                )
            )
            fig.update_layout(
                title={"text": "confidence of the predicted class at α", "font": {"size": 12}},
                yaxis={"range": [0, 1]},
            )
        style(fig, 340, 300, (10, 10, 40, 10), showlegend=False)
        return figure_widget(fig)

    def _show_preds(self, pred, label: str):
        if pred is None or self.pred_fig is None:
            return
        _, ys = self._samples
        y = ys.detach().cpu().numpy()
        p = pred["samples"]
        lab = p.argmax(-1)
        conf = p.max(-1)
        ok = lab == (y if y.ndim == 1 else y.argmax(-1))
        colors = ["#2ca02c" if o else "#d62728" for o in ok]
        with self.pred_fig.batch_update():
            if self._kind == "boundary":
                self.pred_fig.data[0].z = pred["grid"]
            elif self._kind == "images":
                t = self.pred_fig.data[1]
                t.text = [str(int(v)) for v in lab]
                t.textfont.color = colors
            else:
                t = self.pred_fig.data[0]
                t.y = conf
                t.text = [str(int(v)) for v in lab]
                t.marker.color = colors
            self.pred_fig.layout.title.text = f"{label}: {int(ok.sum())}/{len(ok)} correct"

    def _on_error(self, e):
        self.status.value = f"<span style='color:#b00'>error: {html.escape(str(e))}</span>"
