"""``dash.interpolation``: scrub the straight path between two checkpoints."""

from __future__ import annotations

import html
import math
import threading
from collections.abc import Mapping

import numpy as np
import torch

from .. import validate
from ..connectivity import curve_barrier
from ..errors import LossvizError
from ..landscape import _Engine, check_metrics, evaluate, resolve_metrics
from ..objective import Objective
from ._common import Dashboard, Debounce, figure_widget, finite_list, sync_figures


def layer_groups(obj: Objective, layers=None) -> dict[str, list[str]]:
    """``layer name -> parameter names``: by module (default, ``"module"``), one per
    parameter (``"param"``), or an explicit mapping."""
    names = list(obj.layout.names)
    if layers is None or layers == "module":
        return obj.layout.by_module()
    if layers == "param":
        return {n: [n] for n in names}
    if not isinstance(layers, Mapping):
        raise LossvizError(
            f"layers must be 'module', 'param' or a mapping name -> parameter names, got {layers!r}"
        )
    out = {str(k): list(v) for k, v in layers.items()}
    seen: dict[str, str] = {}
    for k, v in out.items():
        bad = [n for n in v if n not in obj.layout.names]
        if bad:
            raise LossvizError(
                f"layer {k!r}: {bad[:5]} are not varying parameters of the Objective ({names[:5]}…)"
            )
        if not v:
            raise LossvizError(f"layer {k!r} has no parameter")
        for n in v:
            if n in seen:
                raise LossvizError(f"parameter {n!r} is in layers {seen[n]!r} and {k!r}")
            seen[n] = k
    rest = [n for n in names if n not in seen]
    if rest:
        out["(other)"] = rest
    return out


def barrier(alphas: np.ndarray, values: np.ndarray) -> tuple[float, float]:
    """``(height, alpha)`` of the loss barrier ``max_α L(α) − ((1−α)L(0) + αL(1))``; ``inf`` /
    NaN at the first non-finite α when the curve is not finite somewhere
    (:func:`lossviz.connectivity.curve_barrier`)."""
    a = np.asarray(alphas, dtype=np.float64)
    h, i = curve_barrier(a, np.asarray(values, dtype=np.float64), "linear", 1.0)
    return h, float(a[i])


def layer_barrier(value: float, ends) -> float:
    """Layer-wise barrier (Adilova et al., ICLR 2024) with base A: the loss of A with one
    layer S replaced by ``½(θA[S] + θB[S])``, minus ``½(L(a) + L(b))``. (Moving the layer
    all the way to b inside A would be a layer swap, not what the paper measures.)"""
    return float(value - 0.5 * (ends[0] + ends[1]))


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
    """See :func:`lossviz.dash.interpolation`."""

    def __init__(
        self,
        obj,
        a,
        b,
        *,
        metrics=("loss", "accuracy"),
        layers=None,
        n: int = 25,
        samples=16,
        bn: bool = False,
        match: bool = False,
        rest_ms: float = 150,
        throttle_ms: int = 40,
        start: bool = True,
    ):
        super().__init__()
        import ipywidgets as W
        import plotly.graph_objects as go
        from plotly.subplots import make_subplots

        from ._anywidgets import LayerMixer, PathScrubber

        if not isinstance(obj, Objective):
            raise TypeError(f"obj must be a lossviz.Objective, got {type(obj).__name__}")
        validate.integer(n, "n (points on the α grid)", low=3)
        if obj.forward is not None:
            metrics = ("loss",)
        self.obj = obj
        self.alphas = np.linspace(0.0, 1.0, int(n))
        fa, fixed = obj.resolve(a)
        fb, _ = obj.resolve(b)
        # accuracy only where it applies: left out of the defaults with a warning (regression)
        optional = ("accuracy",) if tuple(metrics) == ("loss", "accuracy") else ()
        self.metrics = list(
            check_metrics(obj, resolve_metrics(obj, metrics), fa, fixed, optional=optional)[0]
        )
        self._fa, self._fb_orig, self._fixed = fa, fb, fixed
        self._fb_matched = None
        self.groups = layer_groups(obj, layers)
        sl = obj.layout.slices()
        self._layer_idx = {
            k: torch.cat([torch.arange(sl[n].start, sl[n].stop) for n in v])
            for k, v in self.groups.items()
        }
        self._lock = threading.RLock()
        self._gen = 0
        self._cache: dict = {}
        self._exact_gen = 0
        self.exact: dict | None = None  # metrics at the resting α (exact)

        # BatchNorm recompute is possible only with running statistics in eval mode
        has_bn = any(
            isinstance(m, torch.nn.modules.batchnorm._BatchNorm) and m.track_running_stats
            for m in obj.model.modules()
        )
        bn_ok = has_bn and obj.bn == "eval"
        bn_msg = (
            ""
            if bn_ok
            else "no BatchNorm layer with running statistics"
            if not has_bn
            else "needs Objective(..., bn='eval')"
        )
        if bn and not bn_ok:
            raise LossvizError(f"bn=True (recompute BatchNorm statistics): {bn_msg}")
        try:
            from ..alignment import weight_matching
        except ImportError:
            weight_matching = None
        self._weight_matching = weight_matching
        if match and weight_matching is None:
            raise LossvizError(
                "match=True needs lossviz.alignment.weight_matching, which is not "
                "available in this installation"
            )

        # sample inputs for "what the model does at α"
        self._samples = None
        self._kind = None
        if obj.forward is None and samples:
            if isinstance(samples, (tuple, list)) and len(samples) == 2:
                xs, ys = samples
            else:
                batch, _ = next(iter(obj.batches()))
                xs, ys = batch[0], batch[1]
                k = int(samples)
                if xs.ndim >= 2 and xs.shape[-1] == 2 and xs.ndim == 2:
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

        # ---- widgets ----------------------------------------------------------------
        self.slider = W.FloatSlider(
            value=0.0,
            min=0.0,
            max=1.0,
            step=0.01,
            description="α",
            continuous_update=True,
            readout_format=".2f",
            layout=W.Layout(width="560px"),
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
        self.match_box = W.Checkbox(
            value=bool(match),
            description="weight matching",
            disabled=weight_matching is None,
            indent=False,
        )
        self.bn_box = W.Checkbox(
            value=bool(bn), description="recompute BatchNorm", disabled=not bn_ok, indent=False
        )
        notes = []
        if weight_matching is None:
            notes.append("weight matching unavailable (lossviz.alignment not installed)")
        if not bn_ok:
            notes.append(f"BatchNorm recompute off: {bn_msg}")
        self.toggle_note = W.HTML("<small>" + html.escape("; ".join(notes)) + "</small>")
        names = list(self.groups)
        self.mixer = LayerMixer(
            layers=names,
            sizes=[int(self._layer_idx[k].numel()) for k in names],
            mask=[True] * len(names),
            barriers=[None] * len(names),
            note="bars: layer-wise barrier, A with only that layer averaged, minus ½(L(a) + L(b))",
        )

        # ---- figures (complete before wrapping) ---------------------------------------
        nm = len(self.metrics)
        base = make_subplots(rows=1, cols=nm, subplot_titles=self.metrics, horizontal_spacing=0.12)
        nan = [None] * len(self.alphas)  # widget state is JSON: no NaN
        self._tr = {}
        for j, m in enumerate(self.metrics, 1):
            col = j
            base.add_trace(
                go.Scatter(
                    x=self.alphas,
                    y=nan,
                    mode="lines+markers",
                    name=f"{m}",
                    marker={"size": 4},
                    line={"color": "#1f77b4"},
                ),
                row=1,
                col=col,
            )
            self._tr[(m, "curve")] = len(base.data) - 1
            base.add_trace(
                go.Scatter(
                    x=self.alphas,
                    y=nan,
                    mode="lines",
                    name=f"{m} before matching",
                    line={"color": "#ff7f0e", "dash": "dash"},
                    visible=True,
                ),
                row=1,
                col=col,
            )
            self._tr[(m, "before")] = len(base.data) - 1
            base.add_trace(
                go.Scatter(
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
                ),
                row=1,
                col=col,
            )
            self._tr[(m, "marker")] = len(base.data) - 1
            if j == 1:
                base.add_trace(
                    go.Scatter(
                        x=[None],
                        y=[None],
                        mode="markers+text",
                        name="barrier",
                        text=[""],
                        textposition="top center",
                        marker={"size": 11, "color": "#d62728", "symbol": "x"},
                    ),
                    row=1,
                    col=col,
                )
                self._tr["barrier"] = len(base.data) - 1
            base.update_xaxes(title_text="α", range=[-0.02, 1.02], row=1, col=col)
        base.update_layout(
            height=330,
            width=max(400, 330 * nm + 60),
            showlegend=False,
            margin={"l": 50, "r": 20, "t": 60, "b": 40},
            template="plotly_white",
            title={"text": "α = 0.00 · waiting for the α grid", "x": 0.01, "font": {"size": 13}},
        )
        self.fig = figure_widget(base)
        self.pred_fig = self._build_pred_fig(go) if self._kind else None

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
        self._update_readout(0.0, None)
        if start:
            self.recompute()

    # ---- points ---------------------------------------------------------------------
    def _mask_vec(self, mask=None) -> torch.Tensor:
        mask = self.mixer.mask if mask is None else mask
        m = torch.zeros_like(self._fa)
        for on, k in zip(mask, self.groups):
            if on:
                m[self._layer_idx[k].to(m.device)] = 1
        return m

    def _endpoint_b(self, matched: bool) -> torch.Tensor:
        if not matched:
            return self._fb_orig
        if self._fb_matched is None:
            wm = self._weight_matching(self.obj, self._state(self._fa), self._state(self._fb_orig))
            self._fb_matched = self.obj.resolve({**self._fixed, **dict(wm)})[0]
        return self._fb_matched

    def _state(self, flat: torch.Tensor) -> dict:
        st = dict(self._fixed)
        st.update(self.obj.layout.unflatten(flat.detach().clone()))
        return st

    def _flat_at(self, alpha: float, mask=None, matched=None) -> torch.Tensor:
        matched = self.match_box.value if matched is None else matched
        d = (self._endpoint_b(matched) - self._fa) * self._mask_vec(mask)
        return self._fa + float(alpha) * d

    def point(self, alpha: float, *, mask=None, matched=None) -> dict:
        """The full state (varying parameters and the fixed tensors of model A) at ``alpha``
        for the current (or given) layer mask and matching: ``obj.loss(at=...)`` of it equals
        the dashboard's readout."""
        return self._state(self._flat_at(alpha, mask, matched))

    # ---- evaluation -----------------------------------------------------------------
    def _key(self):
        return (tuple(self.mixer.mask), bool(self.match_box.value), bool(self.bn_box.value))

    def _eval(self, pts: torch.Tensor, bn: bool) -> dict:
        return evaluate(
            self.obj,
            pts,
            metrics=self.metrics,
            at=self._state(self._fa),
            bn="recompute" if bn else None,
            progress=False,
        )

    def _outputs(self, flat: torch.Tensor, bn: bool, inputs: torch.Tensor) -> np.ndarray:
        fixed = self._fixed
        with torch.no_grad():
            if bn:
                eng = _Engine(self.obj, ("loss",), fixed, bn="recompute")
                bufs = eng._recompute(flat[None], False)
                fixed = {**fixed, **{k: v[0] for k, v in bufs.items()}}
            out = self.obj.batch_outputs(flat, fixed, (inputs,))
        out = out.detach().to(torch.float64).cpu()
        if out.ndim == 1 or out.shape[-1] == 1:  # binary logits
            p1 = torch.sigmoid(out.reshape(-1))
            out = torch.stack([1 - p1, p1], -1)
        else:
            out = torch.softmax(out, -1)
        return out.numpy()

    def _predictions(self, flat, bn):
        if self._kind is None:
            return None
        xs, _ = self._samples
        if self._kind == "boundary":
            p = self._outputs(flat, bn, self._grid)
            return {
                "grid": p.argmax(-1).reshape(len(self._gy), len(self._gx)),
                "samples": self._outputs(flat, bn, xs),
            }
        return {"samples": self._outputs(flat, bn, xs)}

    def recompute(self) -> None:
        """(Re)compute the α grid for the current settings in a background thread (cached
        per setting; a newer request cancels an older one)."""
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
        n = len(self.alphas)
        nl = len(self.groups) if len(self.groups) > 1 else 0
        before = matched  # also show the curve before matching
        total = n * (1 + int(before)) + nl
        self.progress.max, self.progress.value = max(total, 1), 0
        at = torch.as_tensor(self.alphas, dtype=self._fa.dtype, device=self._fa.device)[:, None]
        fb = self._endpoint_b(matched)
        m = self._mask_vec(mask)
        pts = self._fa + at * ((fb - self._fa) * m)
        res = {"complete": False}
        chunk = 5

        def run(P, label):
            vals = {k: np.full(len(P), np.nan) for k in self.metrics}
            for i in range(0, len(P), chunk):
                if self._gen != gen:
                    return None
                r = self._eval(P[i : i + chunk], bn)
                for k in self.metrics:
                    vals[k][i : i + chunk] = r[k]
                done = self.progress.value + len(P[i : i + chunk])
                self.progress.value = min(self.progress.max, done)
                self.status.value = f"{label}: {min(i + chunk, len(P))}/{len(P)}"
            return vals

        vals = run(pts, "α grid")
        if vals is None:
            return
        res["values"] = vals
        res["barrier"] = barrier(self.alphas, vals[self.metrics[0]])
        res["preds"] = [self._predictions(p, bn) for p in pts] if self._kind else None
        if before:
            pts0 = self._fa + at * ((self._fb_orig - self._fa) * m)
            v0 = run(pts0, "before matching")
            if v0 is None:
                return
            res["before"] = v0
            res["barrier_before"] = barrier(self.alphas, v0[self.metrics[0]])
        if self._gen != gen:
            return
        res["layer_barriers"] = [None] * len(self.groups)
        self._cache[key] = res
        self._show_grid(res)
        self._on_alpha({"new": self.slider.value})
        if nl:
            d = fb - self._fa
            if all(mask):
                ends = (vals[self.metrics[0]][0], vals[self.metrics[0]][-1])
            else:
                ends = tuple(
                    float(self._eval(torch.stack([self._fa, fb]), bn)[self.metrics[0]][i])
                    for i in (0, 1)
                )
            half = []
            for k in self.groups:
                ml = torch.zeros_like(self._fa)
                ml[self._layer_idx[k].to(ml.device)] = 1
                half.append(self._fa + 0.5 * (d * ml))
            v = run(torch.stack(half), "layer-wise barriers")
            if v is None:
                return
            res["layer_barriers"] = [layer_barrier(x, ends) for x in v[self.metrics[0]]]
            self.mixer.barriers = finite_list(res["layer_barriers"])
        res["complete"] = True
        sync_figures(*self.figures())  # a reload / second view shows the computed curves
        self.progress.value = self.progress.max
        h, _ = res["barrier"]
        self.status.value = f"done · barrier ({self.metrics[0]}) {h:.4g}"

    def _show_grid(self, res):
        vals = res["values"]
        h, ha = res["barrier"]
        first = self.metrics[0]
        with self.fig.batch_update():
            for k in self.metrics:
                self.fig.data[self._tr[(k, "curve")]].y = finite_list(vals[k])
                b = res.get("before")
                self.fig.data[self._tr[(k, "before")]].y = (
                    finite_list(b[k]) if b is not None else [None] * len(self.alphas)
                )
            bt = self.fig.data[self._tr["barrier"]]
            has = math.isfinite(h) and h > 1e-9 * max(1.0, float(np.nanmax(np.abs(vals[first]))))
            bt.x = [ha] if has else [None]
            bt.y = [float(np.interp(ha, self.alphas, vals[first]))] if has else [None]
            bt.text = [f"barrier {h:.3g}"] if has else [""]
        self.scrubber.curve = finite_list(vals[first])
        self.scrubber.barrier_alpha = ha if math.isfinite(ha) else None
        self.scrubber.barrier = h if math.isfinite(h) else None
        b = res.get("before")
        self.scrubber.curve2 = finite_list(b[first]) if b is not None else []
        lb = res.get("layer_barriers")
        if lb is not None:
            self.mixer.barriers = finite_list([np.nan if v is None else v for v in lb])

    # ---- α changes --------------------------------------------------------------------
    def _current(self):
        return self._cache.get(self._key())

    def _on_alpha(self, change):
        alpha = float(change["new"])
        res = self._current()
        self._exact_gen += 1
        self.exact = None
        if res is None:
            self.fig.layout.title.text = f"α = {alpha:.2f} · waiting for the α grid"
            return
        vals = res["values"]
        approx = {k: float(np.interp(alpha, self.alphas, vals[k])) for k in self.metrics}
        with self.fig.batch_update():
            for k in self.metrics:
                t = self.fig.data[self._tr[(k, "marker")]]
                t.x, t.y = [alpha], finite_list([approx[k]])
            self.fig.layout.title.text = f"α = {alpha:.2f} · cached"
        self.scrubber.status = ""
        if res.get("preds"):
            i = int(np.argmin(np.abs(self.alphas - alpha)))
            self._show_preds(res["preds"][i], exact=False)
        self._update_readout(alpha, approx, exact=False)
        self._rest(alpha, self._exact_gen, self._key())

    def _rest_eval(self, alpha, gen, key):
        """The exact point at the resting α, off the kernel's main thread."""
        if gen != self._exact_gen:
            return
        self._spawn(self._exact_job, alpha, gen, key, name="lossviz-exact")

    def _exact_job(self, alpha, gen, key):
        mask, matched, bn = key
        flat = self._flat_at(alpha, mask, matched)
        r = self._eval(flat[None], bn)
        vals = {k: float(r[k][0]) for k in self.metrics}
        preds = self._predictions(flat, bn) if self._kind else None
        if gen != self._exact_gen or key != self._key():
            return  # the slider moved on meanwhile
        self.exact = {"alpha": alpha, **vals}
        with self.fig.batch_update():
            for k in self.metrics:
                t = self.fig.data[self._tr[(k, "marker")]]
                t.x, t.y = [alpha], finite_list([vals[k]])
            self.fig.layout.title.text = f"α = {alpha:.2f} · exact"
        if preds is not None:
            self._show_preds(preds, exact=True)
        self._update_readout(alpha, vals, exact=True)
        self.scrubber.status = "exact"

    # ---- display pieces -------------------------------------------------------------
    def _update_readout(self, alpha, vals, exact=False):
        rows = [f"<tr><td>α</td><td>{alpha:.3f}</td></tr>"]
        for k in self.metrics:
            v = "…" if vals is None else f"{'' if exact else '≈ '}{vals[k]:.6g}"
            k_ = html.escape(k)
            rows.append(f"<tr><td>{k_}</td><td class='lv-{k_}'>{v}</td></tr>")
        res = self._current()
        if res is not None:
            h, ha = res["barrier"]
            rows.append(f"<tr><td>barrier</td><td>{h:.4g} at α={ha:.2f}</td></tr>")
            if "barrier_before" in res:
                rows.append(
                    f"<tr><td>before matching</td><td>{res['barrier_before'][0]:.4g}</td></tr>"
                )
        src = "exact" if exact else "cached grid (exact when the slider rests)"
        self.readout.value = (
            f"<table class='lossviz-readout' data-exact='{int(exact)}'>"
            + "".join(rows)
            + f"</table><small>{src}</small>"
        )

    def _build_pred_fig(self, go):
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
        fig.update_layout(
            height=300,
            width=340,
            margin={"l": 10, "r": 10, "t": 40, "b": 10},
            template="plotly_white",
            showlegend=False,
        )
        return figure_widget(fig)

    def _show_preds(self, pred, exact):
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
            self.pred_fig.layout.title.text = (
                f"{'exact' if exact else 'nearest grid α'}: {int(ok.sum())}/{len(ok)} correct"
            )

    def _on_error(self, e):
        self.status.value = f"<span style='color:#b00'>error: {html.escape(str(e))}</span>"


def interpolation(obj, a, b, **kw) -> InterpolationDashboard:
    return InterpolationDashboard(obj, a, b, **kw)
