"""The path of training animated over its loss landscape (plotly frames; GIF / MP4 on request).

:func:`animate` draws a :class:`~lossviz.slices.Surface` once (a contour of one metric)
and the trajectory on it frame by frame: the path so far and a marker at the current
checkpoint, with a play / pause button and a step slider, as loss-landscape-anim does.
Each frame's title gives the checkpoint's label (its training step for a
:class:`~lossviz.TrajectoryRecorder`), the metric *at the checkpoint itself* (evaluated
with :func:`lossviz.evaluate`), the metric read off the plane at its projection, and any
per-checkpoint values passed in (``λ_max`` of :func:`lossviz.sharpness_along`, …).

The animation is a view: its coordinates are the surface's projections of the checkpoints
(:meth:`Surface.project`, or the PCA coordinates of :func:`lossviz.pca_directions`), its
numbers come from :func:`lossviz.evaluate` and :meth:`Surface.interp`; every frame carries
them as ``customdata`` (see :func:`animate`).

The result is a plain ``plotly.graph_objects.Figure``: ``fig.write_html(path,
include_plotlyjs=True)`` writes one self-contained file that plays offline.
:func:`save_animation` writes a GIF or an MP4, rendering each frame with kaleido (which
needs a Chrome / Chromium) and writing the file with imageio; both are optional
(``pip install 'lossviz[animation]'``) and imported only there.
"""

from __future__ import annotations

import copy
import math
import os
from collections.abc import Mapping

import numpy as np

from . import validate
from .errors import ArgumentTypeError, LossvizError, named
from .formatting import short
from .interrupt import api
from .points import as_points
from .slices import Surface

__all__ = ["animate", "save_animation"]

#: the builtin metrics that :func:`lossviz.evaluate` computes by name at the checkpoints
_BUILTIN = ("loss", "accuracy", "error")
#: the columns of each frame's ``customdata`` before the user's ``values``
COLUMNS = ("index", "checkpoint", "on the plane")


def _values(values, T: int) -> dict[str, np.ndarray]:
    if values is None:
        return {}
    if not isinstance(values, Mapping):
        raise ArgumentTypeError(
            f"values must be a mapping name -> one number per checkpoint, got "
            f"{type(values).__name__}"
        )
    out = {}
    for k, v in values.items():
        if not isinstance(k, str):
            raise ArgumentTypeError(f"values: the names must be strings, got {k!r}")
        try:
            a = np.asarray(v, dtype=np.float64).reshape(-1)
        except (TypeError, ValueError):
            raise ArgumentTypeError(
                f"values[{k!r}] must be numbers, one per checkpoint, got {type(v).__name__}"
            ) from None
        if a.shape != (T,):
            raise LossvizError(
                f"values[{k!r}] has {a.size} number(s) for {T} checkpoints (one per checkpoint)"
            )
        out[k] = a
    return out


def _title(metric, label, noun, at_ckpt, on_plane, extra, incomplete) -> str:
    parts = [f"{noun} {label}"]
    plane = "off the grid" if math.isnan(on_plane) else short(on_plane)
    if at_ckpt is not None:
        parts.append(f"{metric} {short(at_ckpt)}")
        parts.append(f"on the plane ≈ {plane}")
    else:
        parts.append(f"{metric} on the plane ≈ {plane}")
    parts += [f"{k} {short(v)}" for k, v in extra]
    return " · ".join(parts) + (" (incomplete)" if incomplete else "")


@api
def animate(
    landscape,
    trajectory=None,
    *,
    path: str = "trajectory",
    metric: str = "loss",
    values: Mapping | None = None,
    n=31,
    log: bool = False,
    frame_ms: int = 200,
    progress=None,
):
    """The trajectory of training animated over its loss landscape (a plotly figure with frames).

    The contour of ``metric`` on the surface ``f(a, b) = L(θ + a·d1 + b·d2)`` is drawn
    once, with the whole path faint; frame ``k`` shows the path through checkpoints
    ``0 … k`` and a marker at checkpoint ``k``, at its plane coordinates ``(a_k, b_k)``:
    the least-squares projection ``G⁻¹·D·(θ_k - θ)`` (:meth:`Surface.project`; for a
    PCA plane the PCA coordinates ``(θ_k - θ)·d_i``, Li et al. 2018, "Visualizing the
    Loss Landscape of Neural Nets", §7). Its title holds the checkpoint's label (the
    training step), the metric at the checkpoint ``L(θ_k)`` (evaluated, batched, with
    :func:`lossviz.evaluate`; each checkpoint with its own buffers, e.g. BatchNorm
    statistics, as ``obj.loss(at=checkpoint)``) and on the plane at its projection,
    ``f(a_k, b_k)`` (interpolated linearly on the grid: :meth:`Surface.interp`), and
    the given ``values``. The two differ by what the plane misses of the path: they
    agree at the surface's center (the last checkpoint of a PCA plane) up to the
    interpolation. Ctrl-C stops the evaluations and raises (no partial animation); a
    surface that is itself incomplete is marked so in every title.

    Args:
        landscape: a :class:`~lossviz.slices.Surface` (the trajectory is projected onto
            its plane; its metric at the checkpoints is evaluated with
            ``landscape.objective`` when it has one, e.g. from :func:`lossviz.surface`),
            or an :class:`~lossviz.Objective`: then the surface is computed in the
            plane of the trajectory's top-2 principal directions
            (:func:`lossviz.pca_directions` of the checkpoints' varying parameters),
            centred on the last checkpoint (its buffers too), framing the path with a
            quarter of its extent on each side, on an ``n`` grid (:func:`lossviz.surface`).
        trajectory: the checkpoints, as a :class:`~lossviz.TrajectoryRecorder`, a list
            or a dict ``label -> checkpoint`` (as :func:`lossviz.pca_directions` takes
            them); or None to animate the surface's own ``paths[path]`` (coordinates
            only: the metric is then read off the plane alone).
        path: the name of the path (the legend; the surface path animated when
            ``trajectory`` is None).
        metric: the metric drawn and shown: a metric of the surface (``"loss"``,
            ``"accuracy"``, ``"error"`` are also evaluated at the checkpoints).
        values: ``name -> one number per checkpoint`` shown in each frame's title
            (e.g. ``{"λ_max": timeline.values[:, 0]}``).
        n: the grid (points per axis, an int or ``(nx, ny)``) when ``landscape`` is an
            Objective.
        log: draw ``log10`` of the metric (the numbers in the titles stay the metric).
        frame_ms: milliseconds per frame when playing (an integer >= 1).
        progress: show progress bars of the evaluations (None: unless
            ``LOSSVIZ_PROGRESS=0``).

    Returns:
        A ``plotly.graph_objects.Figure`` with one frame per checkpoint (named by its
        label), a play / pause button and a slider. The marker of frame ``k`` (the last
        trace) carries ``customdata = [[k, L(θ_k), f(a_k, b_k), *values_k]]`` (NaN where
        not known); its ``x`` / ``y`` are ``(a_k, b_k)``; ``fig.layout.meta`` holds
        ``{"columns": [...], "labels": [...]}`` naming them.

    Raises:
        LossvizError: a bad argument before any evaluation: no metric ``metric`` on the
            surface, no path ``path`` (``trajectory`` None), fewer than 2 checkpoints (3
            for a PCA plane), ``values`` of the wrong length, ``frame_ms < 1``; as
            :func:`lossviz.pca_directions`, :func:`lossviz.surface`,
            :meth:`Surface.project` (a checkpoint that does not fit the plane, naming it).
        ArgumentTypeError: ``landscape`` neither a Surface nor an Objective, ``values``
            not a mapping of numbers, a non-boolean ``log``, a ``path`` that is not a
            string.
        CheckpointError: as :meth:`Surface.project`.

    >>> import torch, lossviz as lv
    >>> from lossviz.data import digits, mlp
    >>> x, y = digits()
    >>> model = mlp((64, 10), seed=0)
    >>> rec = lv.TrajectoryRecorder(model)
    >>> opt = torch.optim.SGD(model.parameters(), lr=0.5)
    >>> for _ in range(4):
    ...     rec.step()
    ...     opt.zero_grad()
    ...     torch.nn.functional.cross_entropy(model(x), y).backward()
    ...     opt.step()
    >>> rec.snapshot()
    >>> obj = lv.Objective(model, torch.nn.functional.cross_entropy, (x, y))
    >>> fig = lv.animate(obj, rec, n=5, progress=False)
    >>> len(fig.frames), fig.frames[-1].name
    (5, '4')
    >>> last = fig.frames[-1].data[-1].customdata[0]
    >>> bool(abs(last[1] - obj.loss()) < 1e-6)
    True
    """
    from .objective import Objective

    if not isinstance(path, str):
        raise ArgumentTypeError(f"path must be a string, got {type(path).__name__}")
    if not isinstance(metric, str):
        raise ArgumentTypeError(f"metric must be a metric's name, got {type(metric).__name__}")
    log = validate.boolean(log, "log")
    frame_ms = validate.integer(frame_ms, "frame_ms")
    show = validate.progress(progress)
    pts = None
    labels = None
    keyed = False
    if trajectory is not None:
        labels, pts, keyed = as_points(trajectory, "trajectory", at_least=2, what="an animation")
        extra = _values(values, len(pts))  # before any work

    axes = ("a", "b")
    if isinstance(landscape, Objective):
        if trajectory is None:
            raise LossvizError(
                "trajectory: animating over an Objective needs the checkpoints (a "
                "TrajectoryRecorder, a list or a dict): their PCA plane is the landscape"
            )
        from .directions import pca_directions
        from .landscape import surface

        obj = landscape
        # the plane of the varying parameters only, as the Objective reads them (no
        # buffers, no frozen parameters), centred on the last checkpoint itself so that
        # the surface uses its buffers (BatchNorm statistics), not the model's
        ws = []
        for i, p in enumerate(pts):
            with named(f"trajectory, checkpoint {i}"):
                ws.append(obj.weights(p))
        pca = pca_directions(ws, 2)
        xy = np.asarray(pca.coords[:, :2], dtype=np.float64)
        lo, hi = xy.min(0), xy.max(0)
        w = max(float((hi - lo).max()), 1e-12)  # as surface() frames a PCA trajectory
        span = tuple((float(lo[i] - 0.25 * w), float(hi[i] + 0.25 * w)) for i in range(2))
        s = surface(
            obj, pts[-1], pca, span=span, n=n, metrics=[metric], trajectory=xy, progress=show
        )
        ev = pca.explained_variance_ratio
        axes = (f"PC1 ({100 * ev[0]:.1f}% of the variance)", f"PC2 ({100 * ev[1]:.1f}%)")
    elif isinstance(landscape, Surface):
        s = landscape
        obj = s.objective
        if metric not in s.values:
            raise LossvizError(f"metric: the surface has no {metric!r}; it has {list(s.values)}")
        if trajectory is None:
            if path not in s.paths:
                raise LossvizError(
                    f"path: the surface has no path {path!r} (it has {list(s.paths)}); pass "
                    "the checkpoints as trajectory="
                )
            xy = np.asarray(s.paths[path], dtype=np.float64)
            if len(xy) < 2:
                raise LossvizError(f"path {path!r} has {len(xy)} point(s); an animation needs 2")
            labels = list(range(len(xy)))
            extra = _values(values, len(xy))
        else:
            view = copy.copy(s)  # project without adding the path to the user's surface
            view.paths = {}
            xy = view.add_path(path, pts)
    else:
        raise ArgumentTypeError(
            "landscape must be a Surface (lossviz.surface) or an Objective, got "
            f"{type(landscape).__name__}"
        )
    at_ckpt = None
    incomplete = not s.complete
    if pts is not None and obj is not None and metric in _BUILTIN:
        at_ckpt, done = _at_checkpoints(obj, pts, metric, show)
        incomplete = incomplete or not done
    on_plane = s.interp(np.asarray(s.values[metric], dtype=np.float64), xy)
    return _figure(
        s,
        xy,
        labels,
        keyed,
        metric,
        at_ckpt,
        on_plane,
        extra,
        path,
        log,
        frame_ms,
        incomplete,
        axes,
    )


def _at_checkpoints(obj, pts, metric: str, show: bool) -> tuple[np.ndarray, bool]:
    """``metric`` at each checkpoint, each with its own buffers and fixed parameters.

    :func:`lossviz.evaluate` takes the tensors that do not vary (buffers such as
    BatchNorm statistics, frozen parameters) from one point (``at=``); the checkpoints
    are split into runs that share them, and each run is evaluated in one batched call
    (one run for a model without buffers).
    """
    import torch

    from .landscape import evaluate

    flats, starts, prev = [], [], None
    for i, p in enumerate(pts):
        with named(f"trajectory, checkpoint {i}"):
            flat, fixed = obj.resolve(p)
        flats.append(flat)
        if (
            prev is None
            or fixed.keys() != prev.keys()
            or any(not torch.equal(fixed[k], prev[k]) for k in fixed)
        ):
            starts.append(i)
            prev = fixed
    out, complete = np.full(len(pts), np.nan), True
    for a, b in zip(starts, [*starts[1:], len(pts)]):
        ev = evaluate(obj, torch.stack(flats[a:b]), metrics=[metric], at=pts[a], progress=show)
        out[a:b] = ev[metric]
        complete = complete and ev.complete
    return out, complete


def _figure(
    s, xy, labels, keyed, metric, at_ckpt, on_plane, extra, path, log, frame_ms, incomplete, axes
):
    import plotly.graph_objects as go

    T = len(xy)
    noun = "step" if keyed else "checkpoint"
    view = copy.copy(s)
    view.paths = {path: xy}
    fig = view.plot("contour", metric, log=log)
    for tr in fig.data[1:]:
        if tr.name == path:  # the whole path, faint: where the animation goes
            tr.update(
                mode="lines",
                line={"color": "rgba(255,255,255,0.45)", "width": 1, "dash": "dot"},
                showlegend=False,
                hoverinfo="skip",
            )
    nan = float("nan")
    rows = np.column_stack(
        [
            np.arange(T, dtype=np.float64),
            at_ckpt if at_ckpt is not None else np.full(T, nan),
            on_plane,
            *extra.values(),
        ]
    )
    titles = [
        _title(
            metric,
            labels[k],
            noun,
            None if at_ckpt is None else float(at_ckpt[k]),
            float(on_plane[k]),
            [(name, float(v[k])) for name, v in extra.items()],
            incomplete,
        )
        for k in range(T)
    ]

    def traces(k):
        return [
            go.Scatter(
                x=xy[: k + 1, 0],
                y=xy[: k + 1, 1],
                mode="lines",
                name=path,
                line={"color": "white", "width": 2},
                hoverinfo="skip",
            ),
            go.Scatter(
                x=xy[k : k + 1, 0],
                y=xy[k : k + 1, 1],
                mode="markers",
                name=f"{noun} {labels[k]}",
                customdata=rows[k : k + 1],
                hovertext=[titles[k]],
                hoverinfo="text",
                marker={"size": 12, "color": "red", "line": {"color": "white", "width": 2}},
                showlegend=False,
            ),
        ]

    # frames are found by name: the labels, or the positions when labels repeat
    names = [str(v) for v in labels]
    if len(set(names)) < T:
        names = [str(k) for k in range(T)]
    first = len(fig.data)
    for tr in traces(0):
        fig.add_trace(tr)
    idx = [first, first + 1]
    fig.frames = [
        go.Frame(data=traces(k), traces=idx, name=names[k], layout={"title": titles[k]})
        for k in range(T)
    ]
    play = {
        "frame": {"duration": frame_ms, "redraw": True},
        "fromcurrent": True,
        "transition": {"duration": 0},
        "mode": "immediate",
    }
    jump = {
        "frame": {"duration": 0, "redraw": True},
        "transition": {"duration": 0},
        "mode": "immediate",
    }
    fig.update_layout(
        title=titles[0],
        meta={"columns": [*COLUMNS, *extra], "labels": [str(v) for v in labels], "metric": metric},
        updatemenus=[
            {
                "type": "buttons",
                "direction": "left",
                "x": 0.0,
                "y": -0.08,
                "xanchor": "left",
                "yanchor": "top",
                "showactive": False,
                "buttons": [
                    {"label": "▶ play", "method": "animate", "args": [None, play]},
                    {"label": "❚❚ pause", "method": "animate", "args": [[None], jump]},
                ],
            }
        ],
        sliders=[
            {
                "active": 0,
                "x": 0.2,
                "len": 0.8,
                "y": -0.05,
                "currentvalue": {"prefix": f"{noun} "},
                "steps": [
                    {"label": str(labels[k]), "method": "animate", "args": [[names[k]], jump]}
                    for k in range(T)
                ],
            }
        ],
        margin={"b": 110},
        xaxis_title=axes[0],
        yaxis_title=axes[1],
        legend={"orientation": "h", "x": 1, "y": 1.02, "xanchor": "right", "yanchor": "bottom"},
    )
    return fig


def _frame_figure(fig, k: int):
    """A still figure showing frame ``k`` of ``fig`` (no buttons; the slider at ``k``)."""
    import plotly.graph_objects as go

    fr = fig.frames[k]
    still = go.Figure(data=fig.data, layout=fig.layout)
    targets = fr.traces if fr.traces is not None else range(len(fr.data))
    for i, tr in zip(targets, fr.data):
        still.data[i].update(tr.to_plotly_json())
    if fr.layout is not None:
        still.layout.update(fr.layout.to_plotly_json())
    still.layout.updatemenus = []
    if still.layout.sliders:
        still.layout.sliders[0].active = k
    return still


def save_animation(
    fig, path, *, fps: float = 5.0, width: int = 800, height: int = 600, scale: float = 1.0
) -> str:
    """Write an animation (:func:`animate`) as a GIF or an MP4, one image per frame.

    Each frame is rendered to a PNG by kaleido (plotly's image export, which drives a
    Chrome / Chromium: kaleido 1.x uses one installed on the machine, or one that
    ``kaleido.get_chrome_sync()`` downloads) and the images are written with imageio
    (GIF through Pillow; MP4, H.264, through imageio's PyAV plugin). For an
    interactive, self-contained file use ``fig.write_html(path,
    include_plotlyjs=True)`` instead: it needs neither.

    Args:
        fig: a ``plotly.graph_objects.Figure`` with frames (what :func:`animate`
            returns).
        path: the file to write, ending in ``.gif`` or ``.mp4``.
        fps: frames per second (a number > 0).
        width: image width in pixels (an integer >= 16).
        height: image height in pixels (an integer >= 16).
        scale: image scale factor (a number > 0).

    Returns:
        The path written, as a string.

    Raises:
        LossvizError: ``path`` not ending in ``.gif`` / ``.mp4``, a figure without
            frames, a bad ``fps`` / ``width`` / ``height`` / ``scale``; kaleido finds no
            Chrome / Chromium (the message says what to install); no MP4 writer for
            imageio (``pip install av``).
        ArgumentTypeError: ``fig`` is not a plotly figure, ``path`` not a path.
        ImportError: kaleido or imageio is not installed (``pip install
            'lossviz[animation]'``, that is ``kaleido imageio``).
    """
    import plotly.graph_objects as go

    if not isinstance(fig, go.Figure):
        raise ArgumentTypeError(f"fig must be a plotly Figure, got {type(fig).__name__}")
    if not isinstance(path, (str, os.PathLike)):
        raise ArgumentTypeError(f"path must be a file path, got {type(path).__name__}")
    path = os.fspath(path)
    ext = os.path.splitext(path)[1].lower()
    if ext not in (".gif", ".mp4"):
        raise LossvizError(f"path must end in .gif or .mp4, got {path!r}")
    if not fig.frames:
        raise LossvizError("fig has no frames: pass what lossviz.animate returns")
    fps = validate.number(fps, "fps", low=0, low_open=True)
    width = validate.integer(width, "width", low=16)
    height = validate.integer(height, "height", low=16)
    scale = validate.number(scale, "scale", low=0, low_open=True)
    try:
        import imageio.v3 as iio
        import kaleido
    except ImportError as e:
        raise ImportError(
            f"save_animation needs kaleido and imageio ({e.name} is missing): pip install "
            "'lossviz[animation]' (or: pip install kaleido imageio). An interactive file "
            "needs neither: fig.write_html(path, include_plotlyjs=True)"
        ) from None
    if ext == ".mp4":
        _check_mp4_writer()
    started = False
    try:
        try:
            kaleido.start_sync_server(silence_warnings=True)
            started = True
        except Exception as e:  # noqa: BLE001 - choreographer's ChromeNotFoundError & co.
            raise LossvizError(_no_chrome(e)) from None
        frames = []
        for k in range(len(fig.frames)):
            png = _render(_frame_figure(fig, k), width, height, scale)
            frames.append(iio.imread(png, extension=".png")[..., :3])
    finally:
        if started:
            kaleido.stop_sync_server(silence_warnings=True)
    images = np.stack(frames)
    # written next to path and renamed: the file is complete or absent
    folder, base = os.path.split(os.path.abspath(path))
    tmp = os.path.join(folder, f".{base}.{os.getpid()}.partial{ext}")
    try:
        if ext == ".gif":
            iio.imwrite(tmp, images, extension=".gif", duration=1000 / fps, loop=0)
        else:
            # H.264 in yuv420p needs even sizes: repeat the last row / column where odd
            h, w = images.shape[1:3]
            images = np.pad(images, ((0, 0), (0, h % 2), (0, w % 2), (0, 0)), mode="edge")
            iio.imwrite(tmp, images, plugin="pyav", codec="libx264", fps=float(fps))
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return path


def _render(still, width, height, scale) -> bytes:
    import warnings

    try:
        with warnings.catch_warnings():  # plotly passes options the running server ignores
            warnings.filterwarnings("ignore", message="The kopts argument is ignored")
            return still.to_image(format="png", width=width, height=height, scale=scale)
    except (RuntimeError, OSError, ValueError) as e:
        if "chrom" in str(e).lower() or "browser" in str(e).lower():
            raise LossvizError(_no_chrome(e)) from None
        raise


def _no_chrome(e) -> str:
    return (
        f"kaleido could not start a Chrome / Chromium to render the frames ({type(e).__name__}: "
        f"{str(e)[:200]}). Install one (Debian / Ubuntu: apt-get install chromium; or "
        "python -c 'import kaleido; kaleido.get_chrome_sync()'), or write an interactive "
        "file instead: fig.write_html(path, include_plotlyjs=True)"
    )


#: the module imageio writes MP4 (H.264) with: PyAV
MP4_WRITER = "av"


def _check_mp4_writer() -> None:
    import importlib.util

    if importlib.util.find_spec(MP4_WRITER) is None:
        raise LossvizError(
            "writing an MP4 needs PyAV, imageio's video plugin: pip install av; a GIF "
            "needs none (a path ending in .gif)"
        )
