"""Linear stability of gradient descent, heavy-ball momentum and SGD at a point.

Near a point the loss is the quadratic ``½ xᵀHx`` (``x = θ − θ*``), and along an
eigenvector of ``H`` with eigenvalue ``λ`` an optimizer is a small linear recurrence:

- gradient descent, ``x ← (1 − ηλ)x``: stable iff ``|1 − ηλ| < 1``, i.e. ``0 < ηλ < 2``;
  for the whole quadratic ``λ_max < 2/η`` (Cohen et al. 2021 find training drives
  ``λ_max`` up to about ``2/η``: the edge of stability);
- heavy ball (Polyak 1964; ``torch.optim.SGD(momentum=β)`` is the same recurrence),
  ``x_{t+1} = (1 + β − ηλ)x_t − βx_{t−1}``, the iteration matrix
  ``M = [[1 + β − ηλ, −β], [1, 0]]``, eigenvalues the roots of ``z² − (1 + β − ηλ)z + β``;
  for ``0 <= β < 1`` stable iff ``0 < ηλ < 2 + 2β``, so ``λ_max < (2 + 2β)/η``;
- SGD at a minimum: the trace condition of Wu & Su 2023 (see :func:`stability`).

:func:`spectral_radius` gives ``ρ(M)`` in closed form; :func:`stability` measures the
top eigenvalues (and the trace) of a network's Hessian and reports each condition as
stable / unstable with its margin; :class:`StabilityResult` draws the ``(ηλ, β)``
stability region with the measured eigenvalues.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import numpy as np

from . import validate
from .errors import ArgumentTypeError, LossvizError, warn
from .formatting import html_table, number
from .interrupt import api, keep_partial
from .objective import Objective
from .provenance import Provenance
from .results import DataResult

__all__ = ["StabilityResult", "spectral_radius", "stability"]


def spectral_radius(eta_lambda, beta) -> np.ndarray:
    """The spectral radius of the heavy-ball iteration matrix, in closed form.

    ``M = [[1 + β − ηλ, −β], [1, 0]]`` has eigenvalues ``z = (a ± √(a² − 4β))/2`` with
    ``a = 1 + β − ηλ``: for ``a² >= 4β`` the radius is ``(|a| + √(a² − 4β))/2``, else the
    pair is complex with ``|z| = √β``. ``β = 0`` is gradient descent, ``|1 − ηλ|``.

    Args:
        eta_lambda: ``ηλ`` (a number or an array).
        beta: the momentum ``β`` in ``[0, 1)`` (a number or an array broadcasting with
            ``eta_lambda``).

    Returns:
        ``ρ(M)`` as a float64 array of the broadcast shape.

    Raises:
        ValueError: the arguments do not broadcast, or are not numbers (from NumPy).

    >>> spectral_radius([0.5, 2.5], 0.0).tolist(), float(spectral_radius(1.0, 0.25))
    ([0.5, 1.5], 0.5)
    """
    x = np.asarray(eta_lambda, dtype=np.float64)
    b = np.asarray(beta, dtype=np.float64)
    a = 1 + b - x
    disc = a * a - 4 * b
    real = (np.abs(a) + np.sqrt(np.maximum(disc, 0.0))) / 2
    return np.where(disc >= 0, real, np.sqrt(np.maximum(b, 0.0)))


@dataclass(kw_only=True, repr=False)
class StabilityResult(DataResult):
    """Linear stability of an optimizer at a point (:func:`stability`).

    Attributes:
        lr: the learning rate ``η``.
        momentum: the heavy-ball momentum ``β`` (0: gradient descent).
        batch_size: ``B`` for the SGD condition, or None (not checked).
        eigenvalues: the measured top eigenvalues of ``H``, descending.
        residuals: their relative Lanczos residuals.
        radius: ``ρ(M)`` of the iteration matrix for each measured eigenvalue.
        threshold: ``(2 + 2β)/η``: stable iff ``λ_max`` is below it.
        gd_stable: whether ``λ_max < threshold`` (and every measured ``ρ(M) < 1``).
        gd_margin: ``threshold − λ_max`` (positive: stable).
        trace: ``tr(H)`` (Hutchinson) when ``batch_size`` is given, else None.
        trace_stderr: its standard error.
        sgd_bound: ``2B/η``: the trace bound (None without ``batch_size``).
        sgd_stable: ``tr(H) <= 2B/η`` (None without ``batch_size``; None also when the
            margin is within 2 standard errors of the trace: undetermined).
        sgd_margin: ``2B/η − tr(H)``.
        grad_norm: ``‖∇L‖`` at the point (the conditions are about a minimum).
        loss: ``L`` at the point.
        converged: whether every eigenvalue converged (Lanczos residual within ``tol``).
            When not, the measured values are Ritz values, lower bounds of the largest
            eigenvalues: an "unstable" verdict stands, a "stable" one may be wrong.
        complete: False after Ctrl-C.
        seconds: wall time.
        provenance: where it comes from (:class:`~lossviz.provenance.Provenance`;
            None when built by hand).
    """

    lr: float
    momentum: float = 0.0
    batch_size: int | None = None
    eigenvalues: np.ndarray = field(default_factory=lambda: np.zeros(0))
    residuals: np.ndarray = field(default_factory=lambda: np.zeros(0))
    radius: np.ndarray = field(default_factory=lambda: np.zeros(0))
    threshold: float = float("nan")
    gd_stable: bool = False
    gd_margin: float = float("nan")
    trace: float | None = None
    trace_stderr: float | None = None
    sgd_bound: float | None = None
    sgd_stable: bool | None = None
    sgd_margin: float | None = None
    grad_norm: float = float("nan")
    loss: float = float("nan")
    converged: bool = True
    complete: bool = True
    seconds: float = 0.0

    @property
    def lambda_max(self) -> float:
        """The largest measured eigenvalue."""
        return float(self.eigenvalues[0]) if len(self.eigenvalues) else float("nan")

    @property
    def method(self) -> str:
        """``"gradient descent"`` or ``"heavy ball (β = …)"``."""
        return "gradient descent" if self.momentum == 0 else f"heavy ball (β = {self.momentum:g})"

    @property
    def verdicts(self) -> list[dict]:
        """One row per condition: ``condition``, ``value``, ``bound``, ``verdict``, ``margin``."""
        rows = [
            {
                "condition": f"{self.method}: λ_max < (2 + 2β)/η",
                "value": self.lambda_max,
                "bound": self.threshold,
                "verdict": "stable" if self.gd_stable else "unstable",
                "margin": self.gd_margin,
            }
        ]
        if self.batch_size is not None:
            v = (
                "undetermined"
                if self.sgd_stable is None
                else ("stable" if self.sgd_stable else "unstable")
            )
            rows.append(
                {
                    "condition": f"SGD (B = {self.batch_size}): tr(H) <= 2B/η",
                    "value": self.trace,
                    "bound": self.sgd_bound,
                    "verdict": v,
                    "margin": self.sgd_margin,
                }
            )
        return rows

    def points(self) -> tuple[np.ndarray, np.ndarray]:
        """``(ηλ_i, β)`` of the measured eigenvalues: where they sit on the chart."""
        x = self.lr * np.asarray(self.eigenvalues, dtype=np.float64)
        return x, np.full_like(x, self.momentum)

    def region(self, n: int = 200, x_max: float | None = None):
        """``(x, β, ρ)`` on a grid of the ``(ηλ, β)`` plane, ``ρ = spectral_radius(x, β)``.

        Args:
            n: grid points per axis.
            x_max: the right end of the ``ηλ`` axis (default: past ``4`` and every
                measured point).

        Returns:
            ``(x (n,), beta (n,), rho (n, n))`` with ``rho[i, j]`` at ``(x[j], beta[i])``.
        """
        px, _ = self.points()
        hi = max(4.2, float(np.max(px)) * 1.1 if len(px) else 0.0) if x_max is None else x_max
        lo = min(-0.5, float(np.min(px)) * 1.1 if len(px) else 0.0)
        x = np.linspace(lo, hi, n)
        beta = np.linspace(0.0, 0.99, n)
        return x, beta, spectral_radius(x[None, :], beta[:, None])

    def _head(self) -> str:
        s = f"{self.method}, η = {self.lr:g}"
        if not self.converged:
            s += ", λ NOT converged: a 'stable' verdict may be wrong"
        if not self.complete:
            s += ", INCOMPLETE: interrupted"
        return s

    def __repr__(self) -> str:
        parts = [
            f"{r['condition']}: {r['verdict']} ({number(r['value'])} vs {number(r['bound'])},"
            f" margin {number(r['margin'])})"
            for r in self.verdicts
        ]
        return (
            f"StabilityResult({self._head()}; " + "; ".join(parts) + f"; ‖∇L‖ = "
            f"{number(self.grad_norm)}; {self.seconds:.2f} s)"
        )

    def _repr_html_(self) -> str:
        rows = [
            [
                r["condition"],
                number(r["value"]),
                number(r["bound"]),
                r["verdict"],
                number(r["margin"]),
            ]
            for r in self.verdicts
        ]
        return html_table(["condition", "value", "bound", "verdict", "margin"], rows, self._head())

    def plot(self):
        """The ``(ηλ, β)`` stability region (``ρ(M) < 1``) with the measured eigenvalues.

        Returns:
            A plotly figure: ``log10 ρ(M)`` as a heatmap, the boundary ``ρ = 1``, the
            points ``(ηλ_i, β)``.
        """
        import plotly.graph_objects as go

        x, beta, rho = self.region()
        px, pb = self.points()
        fig = go.Figure(
            [
                go.Heatmap(
                    x=x,
                    y=beta,
                    z=np.log10(np.maximum(rho, 1e-3)),
                    colorscale="RdBu_r",
                    zmid=0,
                    colorbar={"title": "log10 ρ(M)"},
                    hovertemplate="ηλ=%{x:.3g}, β=%{y:.2f}<br>log10 ρ=%{z:.3f}<extra></extra>",
                ),
                go.Contour(
                    x=x,
                    y=beta,
                    z=rho,
                    contours={"start": 1, "end": 1, "size": 1, "coloring": "none"},
                    line={"color": "black", "width": 2},
                    showscale=False,
                    name="ρ(M) = 1",
                    hoverinfo="skip",
                ),
                go.Scatter(
                    x=px,
                    y=pb,
                    mode="markers",
                    name="measured ηλ_i",
                    marker={"size": 10, "color": "gold", "line": {"color": "black", "width": 1}},
                    customdata=np.stack([self.eigenvalues, self.radius], 1) if len(px) else None,
                    hovertemplate="λ=%{customdata[0]:.4g}, ηλ=%{x:.3g}<br>ρ(M)=%{customdata[1]:.4f}"
                    "<extra></extra>",
                ),
            ]
        )
        fig.update_layout(
            title=f"stability region of {self._head()}: stable where ρ(M) < 1 (0 < ηλ < 2 + 2β)",
            xaxis_title="ηλ",
            yaxis_title="momentum β",
            template="plotly_white",
        )
        return fig


def _verdicts(res: StabilityResult) -> None:
    """Fill the conditions of ``res`` from its eigenvalues, trace, lr, momentum, batch size."""
    lr, beta = res.lr, res.momentum
    lam = np.asarray(res.eigenvalues, dtype=np.float64)
    res.radius = spectral_radius(lr * lam, beta)
    res.threshold = (2 + 2 * beta) / lr
    lmax = float(lam[0]) if len(lam) else float("nan")
    res.gd_margin = res.threshold - lmax
    res.gd_stable = bool(len(lam) and np.all(res.radius < 1) and lmax < res.threshold)
    if res.batch_size is not None and res.trace is not None:
        res.sgd_bound = 2 * res.batch_size / lr
        res.sgd_margin = res.sgd_bound - res.trace
        se = res.trace_stderr or 0.0
        if abs(res.sgd_margin) <= 2 * se:
            res.sgd_stable = None
        else:
            res.sgd_stable = bool(res.sgd_margin > 0)


@api
def stability(
    obj,
    lr: float,
    *,
    momentum: float = 0.0,
    batch_size: int | None = None,
    k: int = 5,
    at=None,
    tol: float = 1e-4,
    trace_rtol: float = 0.01,
    max_hvp: int = 2000,
    curvature: str = "hessian",
    seed: int = 0,
    progress: bool | None = None,
) -> StabilityResult:
    """Is gradient descent / heavy ball / SGD with learning rate ``lr`` stable at this point?

    Measures the top ``k`` eigenvalues of the Hessian (:func:`~lossviz.hessian_eigs`)
    and, with ``batch_size``, its trace (:func:`~lossviz.hessian_trace`), and reports:

    1. **Gradient descent / heavy ball** (linear stability of the quadratic model; exact
       on a quadratic loss): along an eigenvector with eigenvalue ``λ`` the iteration
       matrix is ``M = [[1 + β − ηλ, −β], [1, 0]]`` (``β = momentum``; ``β = 0`` is
       gradient descent, ``M`` acting as ``1 − ηλ``), and the iterates converge iff its
       spectral radius ``ρ(M) < 1`` (:func:`spectral_radius`, closed form), i.e.
       ``0 < ηλ < 2 + 2β`` for ``0 <= β < 1``. Stable iff ``λ_max < (2 + 2β)/η``; the
       margin is ``(2 + 2β)/η − λ_max``. ``radius`` holds ``ρ(M)`` per measured
       eigenvalue. (A negative eigenvalue gives ``ρ(M) > 1``: the point is a saddle along
       it, not a minimum; only the ``k`` largest are measured.) ``torch.optim.SGD`` with
       ``momentum=β`` (``dampening=0``, no Nesterov) is this recurrence.
    2. **SGD at a minimum** (``batch_size=B``): the condition checked is

           tr(H) <= 2B/η

       (margin ``2B/η − tr(H)``). For ``B = 1`` this is the theorem of Wu & Su 2023 ("The
       Implicit Regularization of Dynamical Stability in Stochastic Gradient Descent",
       ICML): if a global minimum is linearly stable for SGD then ``tr(H) <= 2/η``. Its
       assumptions: the square loss, a global minimum that interpolates the data (zero
       loss, so the per-sample Hessians are the rank-one ``∇f_i ∇f_iᵀ``), SGD linearized
       there, stability in the mean-square sense (``E‖θ_t − θ*‖²`` bounded). For
       ``B > 1`` the bound ``2B/η`` is the batch-size form lossviz checks (the mean of
       ``B`` independent rank-one steps): it is exact — the mean-square threshold — when
       the per-sample gradients are orthogonal with equal norms and batches are drawn
       without replacement (tested), and it reduces to the gradient-descent bound on
       ``λ_max`` for ``B = n`` in that case; in general it is a **necessary condition
       only under these assumptions**, not a proof of stability. See also Ma & Ying 2021
       ("On Linear Stability of SGD and Input-Smoothness of Neural Networks"), who bound
       the Frobenius norm ``‖H‖_F`` in the same setting. The verdict is "undetermined"
       (``sgd_stable=None``) when the margin is within 2 standard errors of the trace
       estimate. Away from a minimum (``grad_norm`` not small) the SGD condition does
       not apply.

    ``obj`` may also be a :class:`StabilityResult`: the same measured eigenvalues and
    trace at a new ``lr`` / ``momentum`` (no products; what the teaching chart does).

    Args:
        obj: the :class:`~lossviz.Objective` (model, loss, data), or a
            :class:`StabilityResult` to re-evaluate.
        lr: the learning rate ``η > 0``.
        momentum: the heavy-ball momentum ``β`` in ``[0, 1)``.
        batch_size: ``B >= 1`` to check the SGD condition (None: not checked).
        k: eigenvalues measured (not with a result).
        at: the point (default: the model's weights; not with a result).
        tol: the eigenvalue tolerance, in ``(0, 1)``.
        trace_rtol: the relative standard error the trace estimate stops at.
        max_hvp: the trace's product budget.
        curvature: ``"hessian"`` or ``"ggn"`` (for the square loss at an interpolating
            minimum they coincide).
        seed: the random start / probe vectors.
        progress: a progress bar (None: unless ``LOSSVIZ_PROGRESS=0``).

    Returns:
        :class:`StabilityResult` with the verdicts (``gd_stable``, ``gd_margin``,
        ``sgd_stable``, ``sgd_margin``), ``eigenvalues``, ``radius``, ``trace``.
        Interrupted (Ctrl-C): ``complete=False`` with what was measured.

    Raises:
        ArgumentTypeError: ``obj`` neither an Objective nor a StabilityResult, or an
            argument of the wrong type.
        LossvizError: ``lr <= 0``, ``momentum`` outside ``[0, 1)``, ``batch_size < 1``,
            ``batch_size`` given with a result that has no trace, ``at`` / ``k`` with a
            result, or a bad value for the spectrum kernels (``k`` above the size, ...).

    >>> import torch
    >>> r = stability(torch.diag(torch.tensor([4.0, 1.0], dtype=torch.float64)), 0.4,
    ...               k=1, progress=False)
    >>> r.gd_stable, round(r.gd_margin, 6), r.radius.round(6).tolist()
    (True, 1.0, [0.6])
    """
    lr = validate.number(lr, "lr", low=0, low_open=True)
    if not math.isfinite(lr):
        raise LossvizError(f"lr must be a finite number > 0, got {lr}")
    momentum = validate.number(momentum, "momentum", low=0, high=1, high_open=True)
    batch_size = validate.integer(batch_size, "batch_size", low=1, none=True)
    if isinstance(obj, StabilityResult):
        if at is not None:
            raise LossvizError("at= cannot be used with a StabilityResult (it is at its point)")
        if batch_size is not None and obj.trace is None:
            raise LossvizError(
                "batch_size= needs the trace: this StabilityResult was measured without "
                "batch_size; call stability(objective, lr, batch_size=...) instead"
            )
        res = StabilityResult(
            lr=lr,
            momentum=momentum,
            batch_size=batch_size if batch_size is not None else obj.batch_size,
            eigenvalues=np.array(obj.eigenvalues, dtype=np.float64),
            residuals=np.array(obj.residuals, dtype=np.float64),
            trace=obj.trace,
            trace_stderr=obj.trace_stderr,
            grad_norm=obj.grad_norm,
            loss=obj.loss,
            converged=obj.converged,
            complete=obj.complete,
            provenance=obj.provenance,
        )
        _verdicts(res)
        return res
    from .hessian import hessian_eigs, hessian_trace

    if not isinstance(obj, Objective) and not hasattr(obj, "shape"):
        raise ArgumentTypeError(
            f"obj must be a lossviz.Objective or a StabilityResult, got {type(obj).__name__}"
        )
    k = validate.integer(k, "k")
    trace_rtol = validate.number(trace_rtol, "trace_rtol", low=0)
    t0 = time.perf_counter()
    res = StabilityResult(lr=lr, momentum=momentum, batch_size=batch_size)
    try:
        e = hessian_eigs(obj, k, at=at, tol=tol, seed=seed, curvature=curvature, progress=progress)
        res.eigenvalues = np.asarray(e.values, dtype=np.float64)
        res.residuals = np.asarray(e.residuals, dtype=np.float64)
        res.converged = bool(e.all_converged)
        res.complete = e.complete
        if e.complete and not res.converged:
            warn(
                f"stability: the top {k} eigenvalues did not converge (max residual "
                f"{float(np.max(e.residuals)):.1e} > tol={tol:g}): they are lower bounds of "
                "the largest eigenvalues, so a 'stable' verdict may be wrong; raise tol or k"
            )
        if isinstance(obj, Objective):
            g = obj.gradient(at)
            res.grad_norm = float(sum(float((t.double() ** 2).sum()) for t in g.values())) ** 0.5
            res.loss = obj.loss(at)
        if batch_size is not None and res.complete:
            t = hessian_trace(
                obj,
                at=at,
                rtol=trace_rtol,
                max_hvp=max_hvp,
                seed=seed,
                curvature=curvature,
                progress=progress,
            )
            res.trace, res.trace_stderr = float(t.value), float(t.stderr)
            res.complete = t.complete
    except KeyboardInterrupt:
        if not keep_partial() or not len(res.eigenvalues):
            raise
        res.complete = False
    if not res.complete:
        warn("stability interrupted: the verdicts use what was measured (marked incomplete)")
    _verdicts(res)
    res.seconds = time.perf_counter() - t0
    if isinstance(obj, Objective):
        res.provenance = Provenance.of(obj, kernel="stability", at=at, curvature=curvature)
    return res
