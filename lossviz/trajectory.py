"""Recording the path of training in weight space, and curvature along a saved path.

:class:`TrajectoryRecorder` keeps snapshots of the weights on the host (optionally in
float16), thinned when full so that memory stays bounded; its :attr:`checkpoints` can be
passed wherever lossviz takes a list of points (PCA directions, path overlays).
:func:`sharpness_along` and :func:`trace_along` measure ``λ_max`` / ``tr(H)`` at each
point of a saved run (the sharpness timeline of Cohen et al. 2021, "Gradient Descent on
Neural Networks Typically Occurs at the Edge of Stability").
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor, nn

from .errors import LossvizError
from .hessian import hessian_eigs, hessian_trace
from .interrupt import api
from .objective import Objective
from .results import _fmt, _html_table

__all__ = ["CurvatureTimeline", "TrajectoryRecorder", "sharpness_along", "trace_along"]


class TrajectoryRecorder:
    """Snapshots of a model's weights during training, kept on the host.

    Call :meth:`step` once per training step: every ``every`` calls (and at the first) the
    parameters (and buffers, with ``buffers=True``) are copied to the CPU. When
    ``max_points`` snapshots are held, every other one is dropped (the first is kept) and
    the spacing doubles, so the path stays evenly sampled and memory bounded by
    ``max_points`` snapshots. :meth:`snapshot` adds one now (e.g. the final weights).

    ``dtype=torch.float16`` halves the memory; :attr:`checkpoints` converts back to the
    model's dtypes. The model is only read. On a GPU the copies are asynchronous (pinned
    memory); reading :attr:`checkpoints` waits for them.
    """

    def __init__(
        self,
        model: nn.Module,
        *,
        every: int = 1,
        max_points: int = 200,
        dtype: torch.dtype | None = None,
        buffers: bool = True,
    ):
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
        if isinstance(every, bool) or not isinstance(every, int) or every < 1:
            raise LossvizError(f"every must be a positive integer, got {every!r}")
        if isinstance(max_points, bool) or not isinstance(max_points, int) or max_points < 2:
            raise LossvizError(f"max_points must be an integer >= 2, got {max_points!r}")
        if dtype is not None and not (isinstance(dtype, torch.dtype) and dtype.is_floating_point):
            raise TypeError(f"dtype must be None or a floating torch dtype, got {dtype!r}")
        self.model = model
        self.every = every
        self.max_points = max_points
        self.dtype = dtype
        self.buffers = buffers
        self._spacing = every  # grows by doubling when thinned
        self._n = 0
        self._snaps: list[dict[str, Tensor]] = []
        self._steps: list[int] = []
        self._dtypes: dict[str, torch.dtype] = {}
        self._devices: set = set()

    def _copy(self) -> dict[str, Tensor]:
        named = list(self.model.named_parameters())
        if self.buffers:
            named += list(self.model.named_buffers())
        out = {}
        for name, t in named:
            t = t.detach()
            self._dtypes[name] = t.dtype
            if self.dtype is not None and t.is_floating_point():
                t = t.to(self.dtype)
            if t.device.type == "cpu":
                out[name] = t.clone()
            else:
                buf = torch.empty(t.shape, dtype=t.dtype, pin_memory=True)
                out[name] = buf.copy_(t, non_blocking=True)
                self._devices.add(t.device)
        return out

    def _wait(self) -> None:
        for d in self._devices:
            if d.type == "cuda":
                torch.cuda.synchronize(d)
        self._devices = set()

    def _thin(self) -> None:
        """Drop every other snapshot (the first stays) and double the spacing."""
        self._snaps = self._snaps[::2]
        self._steps = self._steps[::2]
        self._spacing *= 2

    def snapshot(self, step: int | None = None) -> None:
        """Record the current weights now (labelled ``step``, default the call count)."""
        if len(self._snaps) >= self.max_points:
            self._thin()
        self._snaps.append(self._copy())
        self._steps.append(self._n if step is None else int(step))

    def step(self) -> None:
        """Count one training step; snapshot when the step is a multiple of the spacing
        (``every``, doubled at each thinning)."""
        if self._n % self._spacing == 0:
            if len(self._snaps) >= self.max_points:
                self._thin()
            if self._n % self._spacing == 0:
                self._snaps.append(self._copy())
                self._steps.append(self._n)
        self._n += 1

    @property
    def steps(self) -> list[int]:
        """The step of each snapshot."""
        return list(self._steps)

    @property
    def checkpoints(self) -> list[dict[str, Tensor]]:
        """The snapshots as state dicts in the model's dtypes (on the CPU): points for any
        lossviz function. Without ``dtype`` these are the stored tensors (do not modify)."""
        self._wait()
        if self.dtype is None:
            return list(self._snaps)
        return [{k: v.to(self._dtypes[k]) for k, v in s.items()} for s in self._snaps]

    @property
    def nbytes(self) -> int:
        """Memory held by the snapshots, in bytes."""
        return sum(v.numel() * v.element_size() for s in self._snaps for v in s.values())

    def __len__(self) -> int:
        return len(self._snaps)

    def __repr__(self) -> str:
        span = f"steps {self._steps[0]}–{self._steps[-1]}" if self._steps else "empty"
        return (
            f"TrajectoryRecorder({len(self)}/{self.max_points} snapshots, {span}, every "
            f"{self._spacing} step(s), {self.nbytes / 2**20:.1f} MiB"
            f"{', ' + str(self.dtype).replace('torch.', '') if self.dtype else ''})"
        )


@dataclass(repr=False)
class CurvatureTimeline:
    """A curvature quantity at each point of a saved run: ``values[i]`` (top eigenvalues,
    descending, or ``[tr(H)]``) at ``steps[i]``; ``stderr`` for the trace."""

    steps: list
    values: np.ndarray  # (n_points, k)
    kind: str = "sharpness"  # or "trace"
    curvature: str = "hessian"
    stderr: np.ndarray | None = None
    n_hvp: list = field(default_factory=list)
    lr: float | None = None
    seconds: float = 0.0

    @property
    def lambda_max(self) -> np.ndarray:
        """The largest eigenvalue (or the trace) at each point."""
        return self.values[:, 0]

    def _header(self) -> str:
        name = "top eigenvalues" if self.kind == "sharpness" else "trace"
        return f"{name} of the {self.curvature} at {len(self.steps)} points"

    def __repr__(self) -> str:
        v = self.values[:, 0]
        body = ", ".join(f"{s}: {_fmt(x)}" for s, x in list(zip(self.steps, v))[:8])
        more = ", …" if len(v) > 8 else ""
        thr = f"; 2/lr = {_fmt(2 / self.lr)}" if self.lr else ""
        return (
            f"CurvatureTimeline({self._header()}: {body}{more}{thr}; "
            f"{sum(self.n_hvp)} HVPs, {self.seconds:.2f} s)"
        )

    def _repr_html_(self) -> str:
        cols = ["step"] + (
            [f"λ{i + 1}" for i in range(self.values.shape[1])]
            if self.kind == "sharpness"
            else ["trace", "std. error"]
        )
        rows = []
        for i, s in enumerate(self.steps):
            r = [s] + [_fmt(x) for x in self.values[i]]
            if self.kind == "trace":
                r.append(f"{self.stderr[i]:.3g}")
            rows.append(r)
        return _html_table(cols, rows, self._header())

    def plot(self):
        import plotly.graph_objects as go

        fig = go.Figure()
        if self.kind == "sharpness":
            for j in range(self.values.shape[1]):
                fig.add_trace(
                    go.Scatter(
                        x=self.steps, y=self.values[:, j], mode="lines+markers", name=f"λ{j + 1}"
                    )
                )
        else:
            fig.add_trace(
                go.Scatter(
                    x=self.steps,
                    y=self.values[:, 0],
                    mode="lines+markers",
                    name="tr(H)",
                    error_y={"type": "data", "array": 2 * np.asarray(self.stderr)},
                )
            )
        if self.lr:
            fig.add_hline(
                y=2 / self.lr, line={"dash": "dash"}, annotation_text=f"2/lr = {_fmt(2 / self.lr)}"
            )
        fig.update_layout(
            title=self._header(),
            xaxis_title="step",
            yaxis_title="eigenvalue" if self.kind == "sharpness" else "trace",
            template="plotly_white",
        )
        return fig


def _points(checkpoints, steps):
    if isinstance(checkpoints, TrajectoryRecorder):
        pts, st = checkpoints.checkpoints, checkpoints.steps
    elif isinstance(checkpoints, Sequence) and not isinstance(checkpoints, (str, bytes)):
        pts, st = list(checkpoints), list(range(len(checkpoints)))
    else:
        raise TypeError(
            "checkpoints must be a TrajectoryRecorder or a list of points, got "
            f"{type(checkpoints).__name__}"
        )
    if not pts:
        raise LossvizError("no checkpoints: the list is empty")
    if steps is not None:
        st = list(steps)
        if len(st) != len(pts):
            raise LossvizError(f"{len(st)} steps for {len(pts)} checkpoints")
    return pts, st


@api
def sharpness_along(
    obj: Objective,
    checkpoints,
    k: int = 1,
    *,
    steps=None,
    lr: float | None = None,
    tol: float = 1e-3,
    curvature: str = "hessian",
    warm_start: bool = True,
    seed: int = 0,
) -> CurvatureTimeline:
    """The top-``k`` eigenvalues of the Hessian (sharpness ``λ_max`` for ``k = 1``) at each
    checkpoint, by Lanczos (:func:`~lossviz.hessian_eigs`), each solve warm-started from the
    previous point's eigenvectors. ``checkpoints``: a :class:`TrajectoryRecorder` (its
    steps label the points) or a list of points. ``lr``: draws ``2/lr``, the threshold
    that gradient descent drives ``λ_max`` to (Cohen et al. 2021)."""
    if not isinstance(obj, Objective):
        raise TypeError(f"obj must be an Objective, got {type(obj).__name__}")
    pts, st = _points(checkpoints, steps)
    t0 = time.perf_counter()
    vals, n_hvp, v0 = [], [], None
    for p in pts:
        e = hessian_eigs(
            obj, k, at=p, tol=tol, seed=seed, curvature=curvature, v0=v0, progress=False
        )
        vals.append(np.asarray(e.values, dtype=np.float64))
        n_hvp.append(e.n_hvp)
        v0 = e.vectors if warm_start else None
        obj.operator(p, curvature=curvature).release()
    return CurvatureTimeline(
        steps=st,
        values=np.stack(vals),
        kind="sharpness",
        curvature=curvature,
        n_hvp=n_hvp,
        lr=lr,
        seconds=time.perf_counter() - t0,
    )


@api
def trace_along(
    obj: Objective,
    checkpoints,
    *,
    steps=None,
    rtol: float = 0.02,
    max_hvp: int = 500,
    method: str = "hutchinson",
    curvature: str = "hessian",
    lr: float | None = None,
    seed: int = 0,
) -> CurvatureTimeline:
    """``tr(H)`` (Hutchinson / Hutch++, :func:`~lossviz.hessian_trace`) at each checkpoint,
    with its standard error. SGD at a linearly stable minimum has ``tr(H) <= 2/lr``
    (Wu & Su 2023): ``lr`` draws that line."""
    if not isinstance(obj, Objective):
        raise TypeError(f"obj must be an Objective, got {type(obj).__name__}")
    pts, st = _points(checkpoints, steps)
    t0 = time.perf_counter()
    vals, errs, n_hvp = [], [], []
    for p in pts:
        t = hessian_trace(
            obj,
            at=p,
            rtol=rtol,
            max_hvp=max_hvp,
            method=method,
            seed=seed,
            curvature=curvature,
            progress=False,
        )
        vals.append([t.value])
        errs.append(t.stderr)
        n_hvp.append(t.n_hvp)
        obj.operator(p, curvature=curvature).release()
    return CurvatureTimeline(
        steps=st,
        values=np.asarray(vals, dtype=np.float64),
        kind="trace",
        curvature=curvature,
        stderr=np.asarray(errs),
        n_hvp=n_hvp,
        lr=lr,
        seconds=time.perf_counter() - t0,
    )
