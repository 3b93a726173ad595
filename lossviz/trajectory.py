"""Recording the path of training in weight space, and curvature along a saved path.

:class:`TrajectoryRecorder` keeps snapshots of the weights on the host (optionally in
float16), thinned when full so that memory stays bounded; its :attr:`checkpoints` can be
passed wherever lossviz takes a list of points (PCA directions, path overlays), and its
:meth:`~TrajectoryRecorder.layer_dynamics` gives each layer's distance from
initialisation and relative update size (a :class:`LayerDynamics`).
:func:`sharpness_along` and :func:`trace_along` measure ``λ_max`` / ``tr(H)`` at each
point of a saved run (the sharpness timeline of Cohen et al. 2021, "Gradient Descent on
Neural Networks Typically Occurs at the Edge of Stability"); :func:`rho_sharpness_along`
measures the ρ-sharpness of :func:`lossviz.sharpness` (worst-case, average, adaptive) at
each point instead (a :class:`SharpnessTimeline`).
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor, nn

from . import validate
from .errors import ArgumentTypeError, LossvizError, warn
from .formatting import html_table, number
from .hessian import CURVATURES, hessian_eigs, hessian_trace
from .interrupt import api, keep_partial
from .lanczos import check_args
from .objective import Objective
from .points import as_points
from .provenance import Provenance
from .results import DataResult

__all__ = [
    "CurvatureTimeline",
    "LayerDynamics",
    "SharpnessTimeline",
    "TrajectoryRecorder",
    "rho_sharpness_along",
    "sharpness_along",
    "trace_along",
]


class TrajectoryRecorder:
    """Snapshots of a model's weights during training, kept on the host.

    Call :meth:`step` once per training step: every ``every`` calls (and at the first) the
    parameters (and buffers, with ``buffers=True``) are copied to the CPU. When
    ``max_points`` snapshots are held, every other one is dropped (the first is kept) and
    the spacing doubles, so the path stays evenly sampled and memory bounded by
    ``max_points`` snapshots. :meth:`snapshot` adds one now (e.g. the final weights).

    ``dtype=torch.float16`` halves the memory; :attr:`checkpoints` converts back to the
    model's dtypes. The model is only read. On a GPU the copies are asynchronous (pinned
    memory); reading :attr:`checkpoints` waits for them. :meth:`layer_dynamics` gives
    the distance from initialisation and the relative update size per layer.

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
        self._params: list[str] = []  # the parameter names of the snapshots (not buffers)

    def _copy(self) -> dict[str, Tensor]:
        named = list(self.model.named_parameters())
        self._params = [n for n, _ in named]
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

    def layer_dynamics(self, groups="module") -> LayerDynamics:
        """Per layer: distance from initialisation and relative update size.

        Computed on demand, exactly, from the stored snapshots (in float64): for each
        group ``ℓ`` of parameters (a module's weight and bias together by default) and
        each snapshot ``i`` (at ``steps[i]``)

        * distance from the first snapshot ``‖θ_ℓ(t_i) − θ_ℓ(t_0)‖`` and its relative
          size ``‖θ_ℓ(t_i) − θ_ℓ(t_0)‖ / ‖θ_ℓ(t_0)‖``;
        * update between consecutive snapshots ``‖θ_ℓ(t_i) − θ_ℓ(t_{i−1})‖`` and its
          relative size ``‖θ_ℓ(t_i) − θ_ℓ(t_{i−1})‖ / ‖θ_ℓ(t_{i−1})‖``,

        with ``‖θ_ℓ‖² = Σ_{p ∈ ℓ} ‖p‖²`` (Frobenius norms of the group's parameters;
        buffers are not weights and are left out). The first snapshot is the
        initialisation when recording started before the first update (the first
        :meth:`step` call always records, and thinning keeps it). The update of row
        ``i`` spans ``steps[i] − steps[i−1]`` training steps: one step per update only
        with ``every=1`` and no thinning (``max_points`` above the number of steps);
        after thinning it is the update over the current spacing. With ``dtype=``
        (e.g. float16) the numbers are those of the rounded snapshots: a warning says so
        and :attr:`LayerDynamics.resolution` holds the storage's unit roundoff ``u``
        (differences below about ``u·‖θ‖`` are rounding). A relative size whose
        denominator is zero (a layer initialised to zero) is NaN, listed in the repr.

        The training-dynamics diagnostics of e.g. Zhang, Bengio, Singer 2022 ("Are All
        Layers Created Equal?") and of the update-to-weight ratio commonly monitored
        during training. The model is not read (only the snapshots).

        Args:
            groups: ``"module"`` (parameters grouped by the module that owns them,
                :meth:`lossviz.weights.Layout.by_module`), ``"parameter"`` (each
                parameter tensor on its own) or a mapping ``group name -> parameter
                names``.

        Returns:
            :class:`LayerDynamics`.

        Raises:
            LossvizError: nothing recorded yet, the snapshots do not all hold the same
                parameters (the model changed during recording), an unknown ``groups``
                string, an empty mapping or group, a name that is not a recorded
                parameter or a parameter named twice in a group.
            ArgumentTypeError: ``groups`` is neither a string nor a mapping of lists of
                names.

        >>> m = nn.Linear(1, 1, bias=False)
        >>> rec = TrajectoryRecorder(m)
        >>> with torch.no_grad():
        ...     _ = m.weight.fill_(2.0)
        >>> rec.snapshot(0)
        >>> with torch.no_grad():
        ...     _ = m.weight.fill_(3.0)
        >>> rec.snapshot(1)
        >>> d = rec.layer_dynamics()
        >>> d.distance[:, 0].tolist(), float(d.relative_update[1, 0])
        ([0.0, 1.0], 0.5)
        """
        if not self._snaps:
            raise LossvizError("layer_dynamics: nothing recorded yet (call step() or snapshot())")
        from .weights import Layout

        first = self._snaps[0]
        missing = [n for n in self._params if n not in first]
        if missing:
            raise LossvizError(
                f"the latest snapshot has parameters the first lacks: {missing[:5]} (the "
                "model changed during recording)"
            )
        layout = Layout([(n, first[n].shape) for n in self._params])
        members = _layer_groups(groups, layout)
        names = [n for ps in members.values() for n in ps]
        for i, s in enumerate(self._snaps):
            bad = [n for n in names if n not in s or s[n].shape != first[n].shape]
            if bad:
                raise LossvizError(
                    f"snapshot {i} (step {self._steps[i]}) has other parameters than the "
                    f"first: {bad[:5]} (the model changed during recording)"
                )
        self._wait()
        u = 0.0
        if self.dtype is not None:
            lower = [
                n
                for n in names
                if self._dtypes[n].is_floating_point
                and torch.finfo(self.dtype).eps > torch.finfo(self._dtypes[n]).eps
            ]
            if lower:
                u = torch.finfo(self.dtype).eps / 2
                warn(
                    f"layer_dynamics: the snapshots are stored in "
                    f"{str(self.dtype).replace('torch.', '')}: distances and updates are "
                    f"those of the rounded weights (unit roundoff {u:.3g}; relative updates "
                    f"below about {2 * u:.2g} are rounding)"
                )
        n_pts, n_g = len(self._snaps), len(members)
        sq = {k: np.zeros((n_pts, n_g)) for k in ("norm", "distance", "update")}

        def f64(t):
            return t.to(torch.complex128 if t.is_complex() else torch.float64)

        def sqn(t):
            return float(torch.linalg.vector_norm(t)) ** 2

        for j, ps in enumerate(members.values()):
            for n in ps:
                x0 = f64(first[n])
                prev = x0
                for i, s in enumerate(self._snaps):
                    x = f64(s[n])
                    sq["norm"][i, j] += sqn(x)
                    sq["distance"][i, j] += sqn(x - x0)
                    sq["update"][i, j] += sqn(x - prev)
                    prev = x
        upd = np.sqrt(sq["update"])
        upd[0] = np.nan
        return LayerDynamics(
            steps=list(self._steps),
            groups=list(members),
            members={k: list(v) for k, v in members.items()},
            norm=np.sqrt(sq["norm"]),
            distance=np.sqrt(sq["distance"]),
            update=upd,
            resolution=u,
            spacing=self._spacing,
            provenance=Provenance.of(
                [{n: first[n].to(self._dtypes[n]) for n in layout.names}], kernel="layer_dynamics"
            ),
        )


def _layer_groups(groups, layout) -> dict[str, list[str]]:
    """``group name -> parameter names`` for :meth:`TrajectoryRecorder.layer_dynamics`."""
    if isinstance(groups, str):
        if groups == "module":
            return layout.by_module()
        if groups == "parameter":
            return {n: [n] for n in layout.names}
        raise LossvizError(
            f"groups must be 'module', 'parameter' or a mapping name -> parameter names, "
            f"got {groups!r}"
        )
    if not isinstance(groups, Mapping):
        raise ArgumentTypeError(
            f"groups must be 'module', 'parameter' or a mapping name -> parameter names, "
            f"got {type(groups).__name__}"
        )
    if not groups:
        raise LossvizError("groups is an empty mapping: name at least one group")
    out = {}
    for k, v in groups.items():
        v = [v] if isinstance(v, str) else v
        try:
            ps = list(v)
        except TypeError:
            raise ArgumentTypeError(
                f"groups[{k!r}] must be a list of parameter names, got {type(v).__name__}"
            ) from None
        if any(not isinstance(p, str) for p in ps):
            raise ArgumentTypeError(f"groups[{k!r}] must hold parameter names (strings)")
        if not ps:
            raise LossvizError(f"groups[{k!r}] is empty")
        if len(set(ps)) != len(ps):
            raise LossvizError(f"groups[{k!r}] names a parameter twice")
        unknown = [p for p in ps if p not in layout.names]
        if unknown:
            raise LossvizError(
                f"groups[{k!r}] names parameters that were not recorded: {unknown[:5]} "
                f"(the recorded ones are {layout.names[:10]}"
                f"{', …' if len(layout.names) > 10 else ''})"
            )
        out[str(k)] = ps
    return out


@dataclass(kw_only=True, repr=False)
class LayerDynamics(DataResult):
    """Distance from initialisation and update size per layer along a recorded run.

    Returned by :meth:`TrajectoryRecorder.layer_dynamics`; row ``i`` is the snapshot at
    ``steps[i]``, column ``j`` the group ``groups[j]``. Everything is computed from the
    stored snapshots (see there for what the steps and updates refer to).

    Attributes:
        steps: the label of each snapshot.
        groups: the group (layer) names, in layout order.
        members: ``group name -> parameter names``.
        norm: ``(n_points, n_groups)`` ``‖θ_ℓ(t_i)‖``.
        distance: ``(n_points, n_groups)`` ``‖θ_ℓ(t_i) − θ_ℓ(t_0)‖``.
        update: ``(n_points, n_groups)`` ``‖θ_ℓ(t_i) − θ_ℓ(t_{i−1})‖`` (row 0 NaN).
        resolution: the unit roundoff of the storage dtype when the snapshots were
            stored in a lower precision than the model (0 when they are exact copies).
        spacing: the recorder's spacing between recorded steps when computed (``every``,
            doubled at each thinning).
        provenance: where it comes from (:class:`~lossviz.provenance.Provenance`;
            None when built by hand).
    """

    steps: list
    groups: list
    members: dict = field(default_factory=dict)
    norm: np.ndarray
    distance: np.ndarray
    update: np.ndarray
    resolution: float = 0.0
    spacing: int = 1

    @property
    def relative_distance(self) -> np.ndarray:
        """``‖θ_ℓ(t_i) − θ_ℓ(t_0)‖ / ‖θ_ℓ(t_0)‖`` (NaN where ``‖θ_ℓ(t_0)‖ = 0``)."""
        with np.errstate(divide="ignore", invalid="ignore"):
            d = self.distance / self.norm[:1]
        return np.where(self.norm[:1] > 0, d, np.nan)

    @property
    def relative_update(self) -> np.ndarray:
        """``‖θ_ℓ(t_i) − θ_ℓ(t_{i−1})‖ / ‖θ_ℓ(t_{i−1})‖`` (row 0 and zero norms NaN)."""
        out = np.full(self.update.shape, np.nan)
        if len(self.steps) > 1:
            den = self.norm[:-1]
            with np.errstate(divide="ignore", invalid="ignore"):
                out[1:] = np.where(den > 0, self.update[1:] / den, np.nan)
        return out

    def _undefined(self) -> list[str]:
        return [g for g, n in zip(self.groups, self.norm[0]) if not n > 0]

    def _header(self) -> str:
        head = f"layer dynamics of {len(self.groups)} groups at {len(self.steps)} snapshots"
        if self.steps:
            head += f" (steps {self.steps[0]}–{self.steps[-1]})"
        if self.resolution:
            head += f", from rounded snapshots (unit roundoff {self.resolution:.3g})"
        bad = self._undefined()
        if bad:
            head += f"; relative sizes undefined (zero norm at the first snapshot): {bad[:5]}"
        return head

    def __repr__(self) -> str:
        rd = self.relative_distance[-1]
        body = ", ".join(f"{g}: {number(v, 4)}" for g, v in list(zip(self.groups, rd))[:8])
        more = ", …" if len(self.groups) > 8 else ""
        return (
            f"LayerDynamics({self._header()}; relative distance from the first snapshot at "
            f"the last: {body}{more})"
        )

    def _repr_html_(self) -> str:
        rd, ru = self.relative_distance[-1], self.relative_update
        rows = []
        for j, g in enumerate(self.groups):
            last = ru[1:, j] if len(self.steps) > 1 else np.array([np.nan])
            rows.append(
                [
                    g,
                    number(self.norm[0, j], 4),
                    number(self.distance[-1, j], 4),
                    number(rd[j], 4),
                    number(last[-1], 4),
                    number(np.nanmax(last) if np.isfinite(last).any() else np.nan, 4),
                ]
            )
        cols = [
            "group",
            "‖θ(t₀)‖",
            "‖θ(t) − θ(t₀)‖ (last)",
            "relative (last)",
            "relative update (last)",
            "relative update (max)",
        ]
        return html_table(cols, rows, self._header())

    def plot(self, kind: str = "relative"):
        """Lines per group over the steps (plotly figure, two panels).

        Args:
            kind: ``"relative"`` (distance / ``‖θ(t₀)‖`` and update / ``‖θ(t_{i−1})‖``,
                the update on a log axis) or ``"absolute"`` (the norms themselves).

        Returns:
            A plotly figure: the distance from the first snapshot on top, the update
            between consecutive snapshots below; with rounded snapshots a dashed line
            at ``2u`` (relative) marks the rounding level.

        Raises:
            LossvizError: an unknown ``kind``.
        """
        import plotly.graph_objects as go
        from plotly.subplots import make_subplots

        validate.choice(kind, "kind", ("relative", "absolute"))
        rel = kind == "relative"
        dist = self.relative_distance if rel else self.distance
        upd = self.relative_update if rel else self.update
        top = "‖θ(t) − θ(t₀)‖ / ‖θ(t₀)‖" if rel else "‖θ(t) − θ(t₀)‖"
        bottom = "‖θ(tᵢ) − θ(tᵢ₋₁)‖ / ‖θ(tᵢ₋₁)‖" if rel else "‖θ(tᵢ) − θ(tᵢ₋₁)‖"
        fig = make_subplots(rows=2, cols=1, shared_xaxes=True, subplot_titles=(top, bottom))
        palette = [
            "#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd",
            "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf",
        ]  # fmt: skip
        for j, g in enumerate(self.groups):
            color = palette[j % len(palette)]
            fig.add_trace(
                go.Scatter(
                    x=self.steps,
                    y=dist[:, j],
                    mode="lines+markers",
                    name=g,
                    legendgroup=g,
                    line={"color": color},
                ),
                row=1,
                col=1,
            )
            fig.add_trace(
                go.Scatter(
                    x=self.steps,
                    y=upd[:, j],
                    mode="lines+markers",
                    name=g,
                    legendgroup=g,
                    showlegend=False,
                    line={"color": color},
                ),
                row=2,
                col=1,
            )
        if rel:
            fig.update_yaxes(type="log", row=2, col=1)
            if self.resolution:
                fig.add_hline(
                    y=2 * self.resolution,
                    line={"dash": "dash"},
                    annotation_text="rounding of the stored snapshots",
                    row=2,
                    col=1,
                )
        fig.update_xaxes(title_text="step", row=2, col=1)
        fig.update_layout(title=self._header(), template="plotly_white")
        return fig


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


@dataclass(kw_only=True, repr=False)
class SharpnessTimeline(DataResult):
    """The ρ-sharpness at each point of a saved run (:func:`rho_sharpness_along`).

    ``results[i]`` is the :class:`~lossviz.sharpness.SharpnessResult` at ``steps[i]``
    (None where not computed: after Ctrl-C ``complete`` is False and the interrupted
    point and the later ones are None; a point is never cut short into a final-looking
    value).

    Attributes:
        steps: the label of each point.
        results: one :class:`~lossviz.sharpness.SharpnessResult` per point (or None).
        kind: ``"worst"`` or ``"average"``.
        rho: the radius.
        adaptive: whether the measure is adaptive.
        complete: False after Ctrl-C.
        seconds: wall time.
        provenance: where it comes from (:class:`~lossviz.provenance.Provenance`;
            None when built by hand).
    """

    steps: list
    results: list = field(default_factory=list)
    kind: str = "worst"
    rho: float = 0.0
    adaptive: bool = False
    complete: bool = True
    seconds: float = 0.0

    @property
    def values(self) -> np.ndarray:
        """The sharpness at each point (NaN where not computed)."""
        return np.array([np.nan if r is None else r.value for r in self.results], dtype=float)

    @property
    def stderr(self) -> np.ndarray:
        """The standard error at each point (average; NaN otherwise or not computed)."""
        return np.array(
            [np.nan if r is None or r.stderr is None else r.stderr for r in self.results],
            dtype=float,
        )

    @property
    def second_order(self) -> np.ndarray:
        """``ρ‖g‖ + ½ρ²λ_max`` at each point (worst case; NaN where not computed)."""
        return np.array(
            [
                np.nan if r is None or r.second_order is None else r.second_order
                for r in self.results
            ],
            dtype=float,
        )

    def _header(self) -> str:
        ad = "adaptive " if self.adaptive else ""
        head = f"{ad}{self.kind}-case sharpness (ρ = {self.rho:g}) at {len(self.steps)} points"
        if self.kind == "average":
            head = f"{ad}average sharpness (ρ = {self.rho:g}) at {len(self.steps)} points"
        if not self.complete:
            done = sum(r is not None for r in self.results)
            head += f", INCOMPLETE: interrupted after {done} of {len(self.steps)} points"
        return head

    def __repr__(self) -> str:
        body = ", ".join(f"{s}: {number(v)}" for s, v in list(zip(self.steps, self.values))[:8])
        more = ", …" if len(self.steps) > 8 else ""
        return f"SharpnessTimeline({self._header()}: {body}{more}; {self.seconds:.2f} s)"

    def _repr_html_(self) -> str:
        rows = []
        for s, r in zip(self.steps, self.results):
            if r is None:
                rows.append([s, "not computed", "-"])
            else:
                extra = number(r.stderr) if r.stderr is not None else number(r.second_order)
                rows.append([s, number(r.value), extra if extra else "-"])
        col = "std. error" if self.kind == "average" else "second order"
        return html_table(["step", "sharpness", col], rows, self._header())

    def plot(self):
        """The sharpness against the step, a plotly figure.

        ±2 standard errors for the average; the second-order estimate dashed for the
        worst case.
        """
        import plotly.graph_objects as go

        fig = go.Figure()
        err = None
        if self.kind == "average":
            err = {"type": "data", "array": 2 * self.stderr}
        name = "lower bound (ascent)" if self.kind == "worst" else "mean ± 2 s.e."
        fig.add_trace(
            go.Scatter(x=self.steps, y=self.values, mode="lines+markers", name=name, error_y=err)
        )
        if self.kind == "worst":
            fig.add_trace(
                go.Scatter(
                    x=self.steps,
                    y=self.second_order,
                    mode="lines",
                    line={"dash": "dash"},
                    name="ρ‖g‖ + ½ρ²λ_max",
                )
            )
        fig.update_layout(
            title=self._header(),
            xaxis_title="step",
            yaxis_title="L(θ+δ) − L(θ)",
            template="plotly_white",
        )
        return fig


@api
def rho_sharpness_along(
    obj: Objective,
    checkpoints,
    rho: float,
    *,
    kind: str = "worst",
    steps=None,
    **kw,
) -> SharpnessTimeline:
    """The ρ-sharpness (:func:`lossviz.sharpness`) at each checkpoint of a run.

    A timeline of worst-case / average / adaptive sharpness, e.g. to compare how SAM
    and SGD runs flatten (Foret et al. 2021; Andriushchenko et al. 2023, "A Modern Look
    at the Relationship between Sharpness and Generalization"). :func:`sharpness_along`
    keeps measuring ``λ_max``; this is its ρ-sharpness counterpart, a separate function
    so that each returns one result type. Every argument and every point is checked
    before the first evaluation; the same ``seed`` is used at every point.

    Args:
        obj: the :class:`~lossviz.Objective` (model, loss, data).
        checkpoints: a :class:`TrajectoryRecorder` (its steps label the points), a dict
            ``step -> point`` or a list of points.
        rho: the radius ``ρ > 0``.
        kind: ``"worst"`` or ``"average"``.
        steps: labels replacing those of ``checkpoints`` (one per point).
        **kw: the other keywords of :func:`lossviz.sharpness` (``adaptive``, ``norm``,
            ``seed``, ``restarts``, ``max_iter``, ``n_samples``, ``eta``,
            ``second_order``, ``gam``, ``progress``, ...), not ``at``.

    Returns:
        :class:`SharpnessTimeline`: one result per point. Interrupted (Ctrl-C), the
        points finished so far, None from the interrupted one on, ``complete=False``.

    Raises:
        ArgumentTypeError: ``obj`` is not an Objective, ``checkpoints`` is not a list /
            dict / recorder, ``steps`` is not a list, an unknown keyword, or an argument
            of the wrong type.
        LossvizError: no checkpoints, ``len(steps)`` differs from the number of points,
            ``at=`` given, or a bad value for :func:`lossviz.sharpness` (``rho <= 0``,
            an unknown ``kind`` / ``norm``, ...).
        CheckpointError: a checkpoint does not match the model (keys, shapes).
    """
    from .sharpness import check_args as check_sharpness_args
    from .sharpness import sharpness

    if not isinstance(obj, Objective):
        raise ArgumentTypeError(f"obj must be an Objective, got {type(obj).__name__}")
    if "at" in kw:
        raise LossvizError("at= is not used by rho_sharpness_along: the checkpoints are the points")
    check_sharpness_args(obj, rho, kind=kind, **kw)
    pts, st = _points(checkpoints, steps)
    _check_points(obj, pts)
    t0 = time.perf_counter()
    out = SharpnessTimeline(
        steps=st,
        results=[None] * len(pts),
        kind=kind,
        rho=float(rho),
        adaptive=bool(kw.get("adaptive", False)),
        provenance=Provenance.of(obj, kernel="rho_sharpness_along"),
    )
    for i, p in enumerate(pts):
        try:  # an inner call: an interrupt propagates to here
            r = sharpness(obj, rho, kind=kind, at=p, **kw)
        except KeyboardInterrupt:
            if not keep_partial():
                raise
            out.complete = False
            break
        out.results[i] = r
        if not r.complete:
            out.complete = False
            break
    out.seconds = time.perf_counter() - t0
    return out
