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
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor, nn

from . import validate
from .errors import ArgumentTypeError, LossvizError
from .formatting import html_table, number
from .hessian import CURVATURES, hessian_eigs, hessian_trace
from .interrupt import api, keep_partial
from .lanczos import check_args
from .objective import Objective
from .points import as_points
from .provenance import Provenance
from .results import DataResult

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

    Args:
        model: the model whose weights are recorded (only read).
        every: snapshot every ``every`` calls of :meth:`step` (an integer >= 1).
        max_points: the most snapshots held (an integer >= 2); reaching it thins the
            snapshots to every other one and doubles the spacing.
        dtype: a floating dtype to store the floating-point tensors in (e.g.
            ``torch.float16``), or None to keep the model's dtypes.
        buffers: also record the buffers (BatchNorm running statistics, ...).

    Raises:
        ArgumentTypeError: ``model`` is not an ``nn.Module``, ``dtype`` is not None or a
            floating torch dtype, ``buffers`` is not a bool, or ``every`` /
            ``max_points`` is not an integer.
        LossvizError: ``every < 1`` or ``max_points < 2``.

    >>> rec = TrajectoryRecorder(nn.Linear(2, 1), every=2)
    >>> for _ in range(5):
    ...     rec.step()
    >>> rec.steps
    [0, 2, 4]
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
            raise ArgumentTypeError(f"model must be an nn.Module, got {type(model).__name__}")
        every = validate.integer(every, "every")
        max_points = validate.integer(max_points, "max_points", low=2)
        if dtype is not None and not (isinstance(dtype, torch.dtype) and dtype.is_floating_point):
            raise ArgumentTypeError(
                f"dtype must be None or a floating torch dtype (e.g. torch.float16), got {dtype!r}"
            )
        buffers = validate.boolean(buffers, "buffers")
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
        """Record the current weights now (thinning first when ``max_points`` are held).

        Args:
            step: the label of the snapshot (default: the number of :meth:`step` calls
                so far).

        Raises:
            ArgumentTypeError: ``step`` is not an integer or None.
        """
        step = validate.integer(step, "step", low=None, none=True)
        if len(self._snaps) >= self.max_points:
            self._thin()
        self._snaps.append(self._copy())
        self._steps.append(self._n if step is None else step)

    def step(self) -> None:
        """Count one training step; snapshot when it is a multiple of the spacing.

        The spacing is ``every``, doubled at each thinning; the first call (step 0)
        always records.
        """
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
        """The snapshots as state dicts in the model's dtypes (on the CPU).

        They are points for any lossviz function. Without ``dtype`` these are the stored
        tensors (do not modify). Waits for pending asynchronous GPU copies.
        """
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


@dataclass(kw_only=True, repr=False)
class CurvatureTimeline(DataResult):
    """A curvature quantity at each point of a saved run.

    Returned by :func:`sharpness_along` and :func:`trace_along`: ``values[i]`` (top
    eigenvalues, descending, or ``[tr(H)]``) at ``steps[i]``; ``stderr`` for the trace.
    ``complete`` is False when the run was interrupted (Ctrl-C): the rows of the points
    not computed are NaN (``n_done`` points were) and the repr says INCOMPLETE.

    Attributes:
        steps: the label of each point (recorder steps, dict keys, ``0, 1, …`` or the
            ``steps=`` given).
        values: ``(n_points, k)`` float64 array: the top ``k`` eigenvalues (descending)
            for ``kind="sharpness"``, ``k = 1`` column ``tr(H)`` for ``kind="trace"``;
            NaN rows for points not computed.
        kind: ``"sharpness"`` or ``"trace"``.
        curvature: ``"hessian"`` or ``"ggn"``.
        stderr: the standard error of each trace estimate (``kind="trace"``), else None.
        n_hvp: curvature products used at each computed point.
        lr: the learning rate whose threshold ``2/lr`` is drawn, or None.
        seconds: wall time.
        complete: False when interrupted (Ctrl-C).
        provenance: where it comes from (:class:`~lossviz.provenance.Provenance`;
            None when built by hand).
    """

    steps: list
    values: np.ndarray  # (n_points, k)
    kind: str = "sharpness"  # or "trace"
    curvature: str = "hessian"
    stderr: np.ndarray | None = None
    n_hvp: list = field(default_factory=list)
    lr: float | None = None
    seconds: float = 0.0
    complete: bool = True

    @property
    def n_done(self) -> int:
        """Points computed (all of them unless interrupted)."""
        return int(np.sum(~np.isnan(self.values[:, 0])))

    @property
    def lambda_max(self) -> np.ndarray:
        """The largest eigenvalue (or the trace) at each point."""
        return self.values[:, 0]

    def _header(self) -> str:
        name = "top eigenvalues" if self.kind == "sharpness" else "trace"
        head = f"{name} of the {self.curvature} at {len(self.steps)} points"
        if not self.complete:
            head += (
                f", INCOMPLETE: interrupted after {self.n_done} of {len(self.steps)} points "
                "(NaN for the rest)"
            )
        return head

    def __repr__(self) -> str:
        v = self.values[:, 0]
        body = ", ".join(f"{s}: {number(x)}" for s, x in list(zip(self.steps, v))[:8])
        more = ", …" if len(v) > 8 else ""
        thr = f"; 2/lr = {number(2 / self.lr)}" if self.lr else ""
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
            r = [s] + [number(x) for x in self.values[i]]
            if self.kind == "trace":
                r.append(f"{self.stderr[i]:.3g}")
            rows.append(r)
        return html_table(cols, rows, self._header())

    def plot(self):
        """The values against the step (plotly figure), with the line ``2/lr`` if known."""
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
                y=2 / self.lr,
                line={"dash": "dash"},
                annotation_text=f"2/lr = {number(2 / self.lr)}",
            )
        fig.update_layout(
            title=self._header(),
            xaxis_title="step",
            yaxis_title="eigenvalue" if self.kind == "sharpness" else "trace",
            template="plotly_white",
        )
        return fig


def _points(checkpoints, steps):
    """``(points, labels)`` of a list, a dict ``step -> point`` or a TrajectoryRecorder.

    See :func:`lossviz.points.as_points`; ``steps`` relabels them.
    """
    st, pts, _ = as_points(checkpoints, "checkpoints")
    if steps is not None:
        if isinstance(steps, (str, bytes)) or not hasattr(steps, "__len__"):
            raise ArgumentTypeError(f"steps must be a list of labels, got {type(steps).__name__}")
        st = list(steps)
        if len(st) != len(pts):
            raise LossvizError(f"steps has {len(st)} labels for {len(pts)} checkpoints")
    return pts, st


def _along(obj: Objective, pts, measure) -> bool:
    """``measure(i, point)`` at each point, the cached gradient graph freed after each.

    Returns False when interrupted (Ctrl-C) in the outermost call: the points measured
    so far are kept (an inner call lets the interrupt through).
    """
    for i, p in enumerate(pts):
        try:
            measure(i, p)
        except KeyboardInterrupt:
            if not keep_partial():
                raise
            return False
        finally:
            obj.release()
    return True


def _check_points(obj: Objective, pts) -> None:
    """Every point resolves against the model (keys, shapes), before any product."""
    for i, p in enumerate(pts):
        obj.resolve(p, name=f"checkpoints[{i}]")


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
    """The top-``k`` Hessian eigenvalues (sharpness ``λ_max`` for ``k = 1``) at each checkpoint.

    Lanczos with full reorthogonalization (:func:`~lossviz.hessian_eigs`) at every point,
    each solve warm-started from the previous point's eigenvectors. Gradient descent on a
    quadratic is stable iff ``lr < 2/λ_max``; training at ``lr`` typically drives
    ``λ_max`` up to about ``2/lr`` and keeps it there (Cohen, Kaur, Li, Kolter,
    Talwalkar 2021, "Gradient Descent on Neural Networks Typically Occurs at the Edge of
    Stability"). All points are checked against the model before the first product.

    Args:
        obj: the :class:`~lossviz.Objective` (model, loss, data).
        checkpoints: a :class:`TrajectoryRecorder` (its steps label the points), a dict
            ``step -> point`` or a list of points.
        k: eigenvalues per point.
        steps: labels replacing those of ``checkpoints`` (one per point).
        lr: a learning rate > 0: the plot draws ``2/lr``; None for no line.
        tol: relative residual tolerance of each solve, in ``(0, 1)`` (raised to what
            the dtype resolves, with a warning).
        curvature: ``"hessian"`` or ``"ggn"`` (Gauss-Newton).
        warm_start: start each solve from the previous point's eigenvectors.
        seed: the random start vectors (of every solve not warm-started).

    Returns:
        :class:`CurvatureTimeline` with ``kind="sharpness"`` and ``values`` of shape
        ``(n_points, k)``. Interrupted (Ctrl-C), the points finished so far, NaN for the
        others and ``complete=False``; a point's solve is never cut short into a
        final-looking value.

    Raises:
        ArgumentTypeError: ``obj`` is not an Objective, ``checkpoints`` is not a list /
            dict / recorder (or is a single point), ``steps`` is not a list, or another
            argument has the wrong type.
        LossvizError: no checkpoints, ``len(steps)`` differs from the number of points,
            ``k`` above the number of parameters, ``lr <= 0``, ``tol`` outside
            ``(0, 1)``, or an unknown ``curvature``.
        CheckpointError: a checkpoint does not match the model (keys, shapes).
    """
    if not isinstance(obj, Objective):
        raise ArgumentTypeError(f"obj must be an Objective, got {type(obj).__name__}")
    k = validate.integer(k, "k")
    lr = validate.number(lr, "lr", low=0, low_open=True, none=True)
    tol = validate.number(tol, "tol", low=0, low_open=True, high=1, high_open=True)
    validate.choice(curvature, "curvature", CURVATURES)
    warm_start = validate.boolean(warm_start, "warm_start")
    seed = validate.seed(seed)
    pts, st = _points(checkpoints, steps)
    _, tol, _, _, _ = check_args(obj.n_params, obj.dtype, k, "largest", tol, None, 1)
    _check_points(obj, pts)
    t0 = time.perf_counter()
    vals = np.full((len(pts), k), np.nan)
    n_hvp, v0 = [], None

    def measure(i, p):
        nonlocal v0
        e = hessian_eigs(
            obj, k, at=p, tol=tol, seed=seed, curvature=curvature, v0=v0, progress=False
        )
        vals[i] = np.asarray(e.values, dtype=np.float64)
        n_hvp.append(e.n_hvp)
        v0 = e.vectors if warm_start else None

    complete = _along(obj, pts, measure)
    return CurvatureTimeline(
        steps=st,
        values=vals,
        kind="sharpness",
        curvature=curvature,
        n_hvp=n_hvp,
        lr=lr,
        seconds=time.perf_counter() - t0,
        complete=complete,
        provenance=Provenance.of(obj, kernel="sharpness_along", curvature=curvature),
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
    """The Hessian trace ``tr(H)`` with its standard error at each checkpoint.

    Hutchinson's estimator ``tr(H) ≈ mean_z zᵀHz`` over Rademacher ``z`` (or Hutch++,
    Meyer, Musco, Musco, Woodruff 2021, "Hutch++: Optimal Stochastic Trace
    Estimation"), :func:`~lossviz.hessian_trace`, stopped when the standard error falls
    below ``rtol·|estimate|`` or after ``max_hvp`` products. SGD at a linearly stable
    minimum has ``tr(H) <= 2/lr`` (Wu & Su 2023, "The Implicit Regularization of Dynamical
    Stability in Stochastic Gradient Descent"): ``lr`` draws that line. All points are
    checked against the model before the first product.

    Args:
        obj: the :class:`~lossviz.Objective` (model, loss, data).
        checkpoints: a :class:`TrajectoryRecorder` (its steps label the points), a dict
            ``step -> point`` or a list of points.
        steps: labels replacing those of ``checkpoints`` (one per point).
        rtol: relative standard error to stop at (>= 0; 0 runs to ``max_hvp``).
        max_hvp: product budget per point.
        method: ``"hutchinson"`` or ``"hutch++"``.
        curvature: ``"hessian"`` or ``"ggn"`` (Gauss-Newton).
        lr: a learning rate > 0: the plot draws ``2/lr``; None for no line.
        seed: the random probes (the same at every point).

    Returns:
        :class:`CurvatureTimeline` with ``kind="trace"``, ``values`` of shape
        ``(n_points, 1)`` and ``stderr``. Interrupted (Ctrl-C), the points finished so
        far, NaN for the others and ``complete=False``.

    Raises:
        ArgumentTypeError: ``obj`` is not an Objective, ``checkpoints`` is not a list /
            dict / recorder (or is a single point), ``steps`` is not a list, or another
            argument has the wrong type.
        LossvizError: no checkpoints, ``len(steps)`` differs from the number of points,
            an unknown ``method`` / ``curvature``, ``rtol < 0``, ``lr <= 0``, or
            ``max_hvp`` too small for a standard error (2 probes; more for Hutch++).
        CheckpointError: a checkpoint does not match the model (keys, shapes).
    """
    from .hutchinson import check_trace_args

    if not isinstance(obj, Objective):
        raise ArgumentTypeError(f"obj must be an Objective, got {type(obj).__name__}")
    validate.choice(method, "method", ("hutchinson", "hutch++"))
    rtol = validate.number(rtol, "rtol", low=0)
    max_hvp = validate.integer(max_hvp, "max_hvp")
    validate.choice(curvature, "curvature", CURVATURES)
    lr = validate.number(lr, "lr", low=0, low_open=True, none=True)
    seed = validate.seed(seed)
    check_trace_args(obj.n_params, rtol, max_hvp, method, None, max_name="max_hvp")
    pts, st = _points(checkpoints, steps)
    _check_points(obj, pts)
    t0 = time.perf_counter()
    vals = np.full((len(pts), 1), np.nan)
    errs = np.full(len(pts), np.nan)
    n_hvp = []

    def measure(i, p):
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
        vals[i, 0] = t.value
        errs[i] = t.stderr
        n_hvp.append(t.n_hvp)

    complete = _along(obj, pts, measure)
    return CurvatureTimeline(
        steps=st,
        values=vals,
        kind="trace",
        curvature=curvature,
        stderr=errs,
        n_hvp=n_hvp,
        lr=lr,
        seconds=time.perf_counter() - t0,
        complete=complete,
        provenance=Provenance.of(obj, kernel="trace_along", curvature=curvature),
    )
