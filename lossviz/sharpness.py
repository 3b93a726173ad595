"""Sharpness (flatness) measures at a point: worst-case, average, adaptive, GAM.

With ``L`` the loss at ``θ``, ``g`` its gradient, ``H`` its Hessian and ``T = diag(|θ| + η)``
(``η = 0`` by default):

- worst-case ε-sharpness (Keskar et al. 2017, "On Large-Batch Training for Deep Learning:
  Generalization Gap and Sharp Minima"; the inner problem of SAM, Foret et al. 2021,
  "Sharpness-Aware Minimization for Efficiently Improving Generalization"):
  ``S_max(ρ) = max_{‖δ‖ ≤ ρ} L(θ+δ) − L(θ)``. Found by projected gradient ascent with
  restarts, so the value is a **lower bound** of the maximum (every point evaluated lies in
  the ball); the second-order model gives ``ρ‖g‖ + ½ρ²λ_max`` (an estimate, not a bound);
- adaptive (Kwon et al. 2021, "ASAM: Adaptive Sharpness-Aware Minimization for
  Scale-Invariant Learning of Deep Neural Networks"; Andriushchenko et al. 2023, "A Modern
  Look at the Relationship between Sharpness and Generalization"): the same over
  ``δ = T·u``, ``‖u‖ ≤ ρ`` (``‖T⁻¹δ‖ ≤ ρ``);
- average: ``S_avg(ρ) = E_{δ ~ N(0, ρ²I)} L(θ+δ) − L(θ)`` (adaptive: ``δ ~ N(0, ρ²T²)``),
  by Monte-Carlo with antithetic pairs ``±δ`` and its standard error;
- GAM's first-order flatness (Zhang et al. 2023, "Gradient Norm Aware Minimization Seeks
  First-Order Flatness and Improves Generalization"): ``ρ · max_{‖δ‖ ≤ ρ} ‖∇L(θ+δ)‖``
  (adaptive: ``ρ · max_{‖u‖ ≤ ρ} ‖T∇L(θ+Tu)‖``, the gradient in the rescaled
  coordinates), also a lower bound found by ascent.

On an exactly quadratic loss at its minimum ``S_max = ½ρ²λ_max(H)``, adaptive
``½ρ²λ_max(THT)``, ``S_avg = ½ρ² tr(H)`` (adaptive ``½ρ² tr(THT)``) and GAM
``ρ²·max|λ(H)|``: the tests check these against a dense Hessian.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor

from . import validate
from .engine import Engine, check_objective, kw_engine
from .errors import LossvizError, NonFiniteLossError, warn
from .formatting import html_table, number
from .interrupt import api, keep_partial
from .objective import Objective
from .provenance import Provenance
from .results import DataResult

__all__ = ["KINDS", "NORMS", "SharpnessResult", "check_args", "sharpness"]

KINDS = ("worst", "average")
NORMS = (2, "inf")


@dataclass(kw_only=True, repr=False)
class SharpnessResult(DataResult):
    """A sharpness measure at one point (:func:`sharpness`).

    ``value`` is ``S(ρ)`` (a loss difference). For ``kind="worst"`` it is the largest
    ``L(θ+δ) − L(θ)`` found in the ball: a **lower bound** of the maximum
    (``lower_bound=True``); ``second_order`` is the estimate ``ρ‖Tg‖ + ½ρ²λ_max(THT)``
    (ℓ2 only) and ``first_order`` GAM's ``ρ·max‖T∇L‖`` (also a lower bound). For
    ``kind="average"`` it is the Monte-Carlo mean with ``stderr``. A loss that is not
    finite inside the ball makes ``value`` NaN, ``nonfinite`` says where; after Ctrl-C
    ``complete`` is False (the value found so far, marked INCOMPLETE).

    Attributes:
        value: the sharpness ``S(ρ)`` (NaN when a loss in the ball is not finite).
        rho: the radius ``ρ``.
        kind: ``"worst"`` or ``"average"``.
        norm: ``2`` or ``"inf"``: the norm of the ball (worst case).
        adaptive: whether the ball / noise is scaled by ``T = diag(|θ| + eta)``.
        eta: the ASAM offset ``η`` in ``T``.
        loss: ``L(θ)``.
        stderr: the standard error of ``value`` (average), else None.
        lower_bound: True for the worst case (the maximum may be larger).
        grad_norm: ``‖Tg‖`` at ``θ`` (ℓ1 norm for ``norm="inf"``, the dual norm).
        lambda_max: ``λ_max(H)`` (``λ_max(THT)`` adaptive), or None when not computed.
        second_order: ``ρ·grad_norm + ½ρ²λ_max`` (ℓ2 worst case), else None.
        first_order: GAM's ``ρ · max ‖T∇L(θ+Tu)‖`` over the ball, or None.
        perturbation: the best ``δ`` found (worst case; :class:`~lossviz.Weights`), so
            ``L(θ + δ) − L(θ) = value``; None for the average.
        restarts: the value reached by each restart (worst case).
        history: the best value after each iteration (worst case), or the per-sample
            values ``½(L(θ+δ) + L(θ−δ)) − L(θ)`` (average).
        n_iter: ascent iterations run (worst case).
        n_samples: perturbations evaluated (average; two points per antithetic pair).
        n_evals: loss evaluations in all (gradients included).
        pinned: coordinates where ``T = 0`` (adaptive, ``eta = 0``): δ is pinned to 0.
        nonfinite: where the loss was not finite: dicts with ``where`` (restart and
            iteration, or sample), ``radius`` (``‖T⁻¹δ‖`` in the ball's norm) and
            ``loss``.
        seed: the seed of the restarts / samples.
        complete: False after Ctrl-C.
        seconds: wall time.
        provenance: where it comes from (:class:`~lossviz.provenance.Provenance`;
            None when built by hand).
    """

    value: float
    rho: float
    kind: str = "worst"
    norm: object = 2
    adaptive: bool = False
    eta: float = 0.0
    loss: float = float("nan")
    stderr: float | None = None
    lower_bound: bool = True
    grad_norm: float = float("nan")
    lambda_max: float | None = None
    second_order: float | None = None
    first_order: float | None = None
    perturbation: object = None
    restarts: np.ndarray = field(default_factory=lambda: np.zeros(0))
    history: np.ndarray = field(default_factory=lambda: np.zeros(0))
    n_iter: int = 0
    n_samples: int = 0
    n_evals: int = 0
    pinned: int = 0
    nonfinite: list = field(default_factory=list)
    seed: int = 0
    complete: bool = True
    seconds: float = 0.0

    @property
    def finite(self) -> bool:
        """Whether every loss evaluated inside the ball was finite."""
        return not self.nonfinite

    def _name(self) -> str:
        ball = "ℓ2" if self.norm == 2 else "ℓ∞"
        ad = "adaptive " if self.adaptive else ""
        if self.kind == "worst":
            return f"{ad}worst-case sharpness ({ball} ball, ρ = {self.rho:g})"
        return f"{ad}average sharpness (Gaussian, ρ = {self.rho:g})"

    def _notes(self) -> list[str]:
        out = []
        if self.nonfinite:
            w = self.nonfinite[0]
            out.append(
                f"NOT FINITE inside the ball at {len(self.nonfinite)} point(s), e.g. "
                f"{w['where']} (radius {w['radius']:.3g}, loss {w['loss']})"
            )
        if self.pinned:
            out.append(f"{self.pinned} coordinate(s) with θ = 0 pinned (T = 0)")
        if not self.complete:
            out.append("INCOMPLETE: interrupted")
        return out

    def __repr__(self) -> str:
        if self.kind == "worst":
            s = f"≥ {number(self.value)} (lower bound, {len(self.restarts)} restarts)"
            if self.second_order is not None:
                s += f"; second-order ρ‖g‖ + ½ρ²λ_max = {number(self.second_order)}"
            if self.first_order is not None:
                s += f"; GAM first-order ≥ {number(self.first_order)}"
        else:
            s = f"{number(self.value)} ± {number(self.stderr or float('nan'))} (std. error, "
            s += f"{self.n_samples} samples)"
        notes = "".join(f"; {n}" for n in self._notes())
        return (
            f"SharpnessResult({self._name()}: {s}; L(θ) = {number(self.loss)}{notes}; "
            f"{self.seconds:.2f} s)"
        )

    def _repr_html_(self) -> str:
        cols = ["value", "loss L(θ)"]
        row = [number(self.value), number(self.loss)]
        if self.kind == "worst":
            cols += ["restarts", "second order", "GAM first order"]
            row += [
                len(self.restarts),
                "-" if self.second_order is None else number(self.second_order),
                "-" if self.first_order is None else number(self.first_order),
            ]
        else:
            cols += ["std. error", "samples"]
            row += [number(self.stderr or float("nan")), self.n_samples]
        cap = self._name() + ("; lower bound" if self.kind == "worst" else "")
        cap += "".join(f"; {n}" for n in self._notes())
        return html_table(cols, [row], cap)

    def plot(self):
        """Worst case: the best value per iteration and each restart's; average: the samples.

        Returns:
            A plotly figure.
        """
        import plotly.graph_objects as go

        fig = go.Figure()
        if self.kind == "worst":
            fig.add_trace(
                go.Scatter(
                    x=np.arange(1, len(self.history) + 1),
                    y=self.history,
                    mode="lines+markers",
                    name="best so far (lower bound)",
                )
            )
            if self.second_order is not None:
                fig.add_hline(
                    y=self.second_order,
                    line={"dash": "dash"},
                    annotation_text="ρ‖g‖ + ½ρ²λ_max",
                )
            fig.update_layout(xaxis_title="ascent iteration", yaxis_title="L(θ+δ) − L(θ)")
        else:
            s = np.asarray(self.history, dtype=np.float64)
            fig.add_trace(go.Histogram(x=s, name="samples", opacity=0.6))
            fig.add_vline(
                x=self.value,
                line={"color": "firebrick"},
                annotation_text=f"mean {number(self.value)} ± {number(self.stderr or 0)}",
            )
            fig.update_layout(xaxis_title="½(L(θ+δ) + L(θ−δ)) − L(θ)", yaxis_title="samples")
        fig.update_layout(title=self._name(), template="plotly_white")
        return fig


# --- batched losses and gradients at many points ---------------------------------------
class _Grads:
    """Loss and gradient (and Hessian-vector products) at a batch of points.

    ``torch.func.vmap`` of ``grad_and_value`` over the points, batch by batch, combined
    as :meth:`Objective.gradient` does (``Σ_b w_b·∇L_b / Z``); a model vmap cannot run
    falls back to one point at a time.
    """

    def __init__(self, obj: Objective, fixed: dict):
        self.obj, self.fixed = obj, fixed
        self.vmap = True
        self.n_evals = 0

    def _map(self, fn, *args):
        if self.vmap:
            try:
                return torch.func.vmap(fn)(*args)
            except (LossvizError, KeyboardInterrupt):
                raise
            except Exception as e:  # noqa: BLE001 - a model vmap cannot run
                warn(
                    f"batched (vmap) gradients are not possible for this model "
                    f"({type(e).__name__}: {str(e).splitlines()[0][:200]}); one point at a time"
                )
                self.vmap = False
        outs = [fn(*(a[i] for a in args)) for i in range(args[0].shape[0])]
        if isinstance(outs[0], tuple):
            return tuple(torch.stack(o) for o in zip(*outs))
        return torch.stack(outs)

    def value_grad(self, pts: Tensor) -> tuple[Tensor, Tensor]:
        """``(values (K,) float64, gradients (K, P))`` of the full-data loss at ``pts``."""
        obj, K = self.obj, pts.shape[0]

        def local():
            tot = torch.zeros(K, pts.shape[1] + 1, dtype=torch.float64, device=pts.device)
            n = 0
            for b, nb in obj.batches():

                def f(p, b=b):
                    return obj.batch_loss(p, self.fixed, b)

                with torch.enable_grad():
                    g, v = self._map(torch.func.grad_and_value(f), pts)
                w = obj.batch_weight(nb)
                tot[:, 0] += v.detach().to(torch.float64) * w
                tot[:, 1:] += g.detach().to(torch.float64) * w
                n += nb
            return tot, n

        tot, n = obj.reduce_sums(local, (K, pts.shape[1] + 1), "sharpness gradients", inputs=pts)
        tot = tot / obj.normalizer(n)
        self.n_evals += K
        return tot[:, 0], tot[:, 1:].to(pts.dtype)

    def hvp(self, pts: Tensor, vecs: Tensor) -> Tensor:
        """``H(p_k)·v_k`` for each row (``(K, P)``)."""
        obj, K = self.obj, pts.shape[0]

        def local():
            tot = torch.zeros(K, pts.shape[1], dtype=torch.float64, device=pts.device)
            n = 0
            for b, nb in obj.batches():

                def f(p, b=b):
                    return obj.batch_loss(p, self.fixed, b)

                def hv(p, v, f=f):
                    return torch.func.grad(lambda q: (torch.func.grad(f)(q) * v).sum())(p)

                with torch.enable_grad():
                    h = self._map(hv, pts, vecs)
                tot += h.detach().to(torch.float64) * obj.batch_weight(nb)
                n += nb
            return tot, n

        tot, n = obj.reduce_sums(local, (K, pts.shape[1]), "sharpness products", inputs=pts)
        self.n_evals += K
        return (tot / obj.normalizer(n)).to(pts.dtype)


class _Ball:
    """The ball ``‖u‖ ≤ ρ`` (ℓ2 or ℓ∞) in the coordinates ``u``, ``δ = T·u``."""

    def __init__(self, rho: float, norm, free: Tensor | None):
        self.rho, self.norm, self.free = rho, norm, free  # free: 1 where T > 0

    def size(self, U: Tensor) -> Tensor:
        """``‖u‖`` per row."""
        return U.norm(dim=1) if self.norm == 2 else U.abs().amax(dim=1)

    def project(self, U: Tensor) -> Tensor:
        """Rows projected onto the ball (pinned coordinates stay 0)."""
        if self.free is not None:
            U = U * self.free
        if self.norm == 2:
            n = U.norm(dim=1, keepdim=True)
            return U * torch.clamp(self.rho / n.clamp_min(1e-300), max=1.0)
        return U.clamp(-self.rho, self.rho)

    def vertex(self, G: Tensor) -> Tensor:
        """``argmax_{‖u‖ ≤ ρ} ⟨G, u⟩`` per row (a random-free tie break: 0 where G = 0)."""
        if self.free is not None:
            G = G * self.free
        if self.norm == 2:
            n = G.norm(dim=1, keepdim=True)
            return torch.where(n > 0, self.rho * G / n.clamp_min(1e-300), torch.zeros_like(G))
        return self.rho * torch.sign(G)

    def step(self, U: Tensor, G: Tensor, length: Tensor) -> Tensor:
        """``proj(u + length·dir(G))``, ``dir`` the unit ascent direction of the norm."""
        if self.norm == 2:
            d = G / G.norm(dim=1, keepdim=True).clamp_min(1e-300)
        else:
            d = torch.sign(G)
        return self.project(U + length[:, None] * d)

    def flips(self, U: Tensor, G: Tensor, m: int = 8) -> list[Tensor]:
        """ℓ∞: ``m`` candidates per row, each with one coordinate flipped to the other face.

        The coordinates of smallest ``|G|`` are flipped (where the linear loss of a flip
        is smallest and the curvature may win).
        """
        if self.norm == 2:
            return []
        A = G.abs()
        if self.free is not None:
            A = torch.where(self.free > 0, A, torch.full_like(A, float("inf")))
        m = min(m, U.shape[1] if self.free is None else int(self.free.sum()))
        idx = torch.topk(-A, m, dim=1).indices  # (K, m)
        rows = torch.arange(U.shape[0], device=U.device)
        out = []
        for j in range(m):
            V = U.clone()
            i = idx[:, j]
            cur = V[rows, i]
            V[rows, i] = torch.where(cur == 0, self.rho * torch.ones_like(cur), -cur)
            out.append(V)
        return out

    def random(self, k: int, P: int, gen, like: Tensor) -> Tensor:
        """``k`` random points on the boundary."""
        Z = torch.randn(k, P, generator=gen, dtype=like.dtype, device="cpu").to(like.device)
        if self.free is not None:
            Z = Z * self.free
        if self.norm == 2:
            return self.rho * Z / Z.norm(dim=1, keepdim=True).clamp_min(1e-300)
        return self.rho * torch.sign(Z)


def check_args(
    obj,
    rho,
    *,
    kind: str = "worst",
    adaptive: bool = False,
    norm=2,
    seed: int = 0,
    restarts: int = 4,
    max_iter: int = 50,
    tol: float = 1e-4,
    n_samples: int = 256,
    eta: float = 0.0,
    second_order: bool = True,
    gam: bool = True,
    **kw,
) -> dict:
    """Every argument of :func:`sharpness` but ``at``, checked before any work.

    Args:
        obj: the Objective.
        rho: the radius.
        kind: ``"worst"`` or ``"average"``.
        adaptive: a bool.
        norm: ``2``, ``"inf"`` or ``math.inf``.
        seed: an integer >= 0.
        restarts: an integer >= 1.
        max_iter: an integer >= 1.
        tol: a number >= 0.
        n_samples: an integer >= 2.
        eta: a number >= 0 (only with ``adaptive``).
        second_order: a bool.
        gam: a bool.
        **kw: ``batched``, ``chunk_size``, ``progress``.

    Returns:
        The normalized arguments by name (``norm`` as ``2`` or ``"inf"``), with ``ekw``:
        the engine keywords.

    Raises:
        ArgumentTypeError: as :func:`sharpness`.
        LossvizError: as :func:`sharpness`.
    """
    check_objective(obj)
    rho = validate.number(rho, "rho", low=0, low_open=True)
    if not math.isfinite(rho):
        raise LossvizError(f"rho must be a finite number > 0, got {rho}")
    validate.choice(kind, "kind", KINDS)
    if isinstance(norm, str):
        validate.choice(norm, "norm", NORMS)
    elif isinstance(norm, (int, float)) and not isinstance(norm, bool) and norm == 2:
        norm = 2
    elif isinstance(norm, float) and math.isinf(norm) and norm > 0:
        norm = "inf"
    else:
        raise LossvizError(f"norm must be 2 or 'inf' (or math.inf), got {validate.show(norm)}")
    adaptive = validate.boolean(adaptive, "adaptive")
    eta = validate.number(eta, "eta", low=0)
    if eta and not adaptive:
        raise LossvizError("eta= is the offset of adaptive sharpness: use it with adaptive=True")
    if kind == "average" and norm != 2:
        raise LossvizError(
            "norm='inf' applies to kind='worst' (the ball); kind='average' draws Gaussian "
            "perturbations"
        )
    out = {
        "rho": rho,
        "kind": kind,
        "norm": norm,
        "adaptive": adaptive,
        "eta": eta,
        "seed": validate.seed(seed),
        "restarts": validate.integer(restarts, "restarts", low=1),
        "max_iter": validate.integer(max_iter, "max_iter", low=1),
        "tol": validate.number(tol, "tol", low=0),
        "n_samples": validate.integer(n_samples, "n_samples", low=2),
        "second_order": validate.boolean(second_order, "second_order"),
        "gam": validate.boolean(gam, "gam"),
    }
    ekw = kw_engine(kw, ("batched", "chunk_size"))
    if kw.get("progress") is not None:
        validate.boolean(kw["progress"], "progress")
    if ekw.get("batched") is not None:
        validate.boolean(ekw["batched"], "batched")
    validate.integer(ekw.get("chunk_size"), "chunk_size", low=1, none=True)
    out["ekw"] = ekw
    return out


@api
def sharpness(
    obj: Objective,
    rho: float,
    *,
    kind: str = "worst",
    adaptive: bool = False,
    norm=2,
    at=None,
    seed: int = 0,
    restarts: int = 4,
    max_iter: int = 50,
    tol: float = 1e-4,
    n_samples: int = 256,
    eta: float = 0.0,
    second_order: bool = True,
    gam: bool = True,
    **kw,
) -> SharpnessResult:
    """The sharpness of the loss at a point: worst-case, average, adaptive; GAM's flatness.

    ``kind="worst"``: ``S_max(ρ) = max_{‖δ‖ ≤ ρ} L(θ+δ) − L(θ)`` (Keskar et al. 2017; the
    SAM inner problem, Foret et al. 2021) by projected gradient ascent from ``restarts``
    starts at once (the first along the gradient, as SAM's step, the others random on the
    sphere / box corners), batched: every iteration takes the gradients at all restarts in
    one ``vmap`` and evaluates the candidate steps of all restarts (the ball's vertex
    ``argmax_{‖u‖≤ρ} ⟨∇, u⟩`` and projected steps of ``ρ``, ``ρ/4``, ``ρ/16`` times a
    per-restart scale, shrunk ×16 when no step ascends; for the ℓ∞ ball also the corner
    with one of the 8 coordinates of smallest ``|∇|`` flipped) in one
    :class:`~lossviz.engine.Engine` call. The result is the best loss found in the ball,
    a **lower bound** of the maximum (never below 0: ``δ = 0`` is in the ball); it stops
    after ``max_iter`` iterations or when the best value rose by less than ``tol``
    (relative) over 5 iterations. ``second_order``
    adds ``ρ‖g‖ + ½ρ²λ_max`` (:func:`~lossviz.hessian_eigs`); ``gam`` adds the first-order
    flatness of GAM (Zhang et al. 2023), ``ρ·max_{‖δ‖≤ρ} ‖∇L(θ+δ)‖``, by the same ascent
    on ``½‖∇L‖²`` (Hessian-vector products at the restarts).

    ``adaptive=True`` (Kwon et al. 2021, ASAM; Andriushchenko et al. 2023): the ball is
    ``‖T⁻¹δ‖ ≤ ρ`` with ``T = diag(|θ| + eta)``, i.e. ``δ = T·u``, ``‖u‖ ≤ ρ``; the
    average draws ``δ ~ N(0, ρ²T²)``. Where ``θ = 0`` (and ``eta = 0``) ``δ`` is pinned
    to 0: a warning says how many coordinates, and ``pinned`` records it.

    ``kind="average"``: ``S_avg(ρ) = E_{δ ~ N(0, ρ²I)} L(θ+δ) − L(θ)`` by Monte-Carlo over
    ``n_samples`` antithetic pairs ``±δ`` (each sample ``½(L(θ+δ) + L(θ−δ)) − L(θ)``, an
    unbiased estimate whose odd-order terms cancel), evaluated in batches with the engine;
    ``stderr`` is the sample standard deviation over ``√n_samples``.

    On an exactly quadratic loss at its minimum: ``S_max = ½ρ²λ_max(H)``, adaptive
    ``½ρ²λ_max(THT)``, ``S_avg = ½ρ² tr(H)``, GAM ``ρ²·max|λ(H)|``.

    A loss that is not finite inside the ball is **marked**, not raised: ``value`` is
    NaN, ``nonfinite`` lists where (restart and iteration or sample, the radius
    ``‖T⁻¹δ‖``, the loss), with a warning. Ctrl-C returns what was found so far with
    ``complete=False``. The model is never changed.

    Args:
        obj: the :class:`~lossviz.Objective` (model, loss, data).
        rho: the radius ``ρ > 0`` (the noise scale for ``kind="average"``).
        kind: ``"worst"`` or ``"average"``.
        adaptive: scale the ball / noise by ``T = diag(|θ| + eta)``.
        norm: ``2`` or ``"inf"`` (``math.inf`` too): the ball of the worst case.
        at: the point ``θ`` (default: the model's weights).
        seed: the seed of the random restarts / perturbations.
        restarts: ascent starts, run as one batch (worst case).
        max_iter: the most ascent iterations (worst case).
        tol: stop when the best value rose by less than ``tol`` relative over 5
            iterations (worst case), ``>= 0``.
        n_samples: antithetic pairs (average), at least 2.
        eta: the offset in ``T = |θ| + eta`` (ASAM's η; 0 in Andriushchenko et al.).
        second_order: compute ``λ_max`` and the second-order estimate (ℓ2 worst case).
        gam: compute GAM's first-order flatness (worst case).
        **kw: ``batched`` and ``chunk_size`` of the engine, ``progress``.

    Returns:
        :class:`SharpnessResult`.

    Raises:
        ArgumentTypeError: ``obj`` is not an Objective, an unknown keyword, or an
            argument of the wrong type.
        LossvizError: ``rho <= 0`` (or not finite), an unknown ``kind`` / ``norm``,
            ``norm="inf"`` with ``kind="average"``, ``eta`` without ``adaptive``,
            ``restarts`` / ``max_iter`` < 1, ``n_samples`` < 2, ``tol < 0``.
        NonFiniteLossError: the loss at ``θ`` itself is not finite (nothing to compare
            with).
        CheckpointError: ``at`` does not match the model.

    On a quadratic ``L(w) = ½ Σ_i λ_i w_i²`` at its minimum the worst case is
    ``½ρ²λ_max``:

    >>> X = torch.diag(torch.tensor([3.0, 1.0, 0.5], dtype=torch.float64))
    >>> obj = Objective(torch.nn.Linear(3, 1, bias=False).double(),
    ...                 lambda out, y: 0.5 * 3 * ((out - y) ** 2).mean(), (X, torch.zeros(3, 1,
    ...                 dtype=torch.float64)))
    >>> r = sharpness(obj, 0.1, at={"weight": torch.zeros(1, 3, dtype=torch.float64)},
    ...               progress=False)
    >>> round(r.value, 6), round(0.5 * 0.1**2 * 9.0, 6)
    (0.045, 0.045)
    """
    a = check_args(
        obj,
        rho,
        kind=kind,
        adaptive=adaptive,
        norm=norm,
        seed=seed,
        restarts=restarts,
        max_iter=max_iter,
        tol=tol,
        n_samples=n_samples,
        eta=eta,
        second_order=second_order,
        gam=gam,
        **kw,
    )
    rho, norm, adaptive, eta, seed = a["rho"], a["norm"], a["adaptive"], a["eta"], a["seed"]
    restarts, max_iter, tol, n_samples = a["restarts"], a["max_iter"], a["tol"], a["n_samples"]
    second_order, gam, ekw = a["second_order"], a["gam"], a["ekw"]
    theta, fixed = obj.resolve(at, name="at")
    t0 = time.perf_counter()
    T = free = None
    pinned = 0
    if adaptive:
        T = theta.abs() + eta
        zero = T == 0
        pinned = int(zero.sum())
        if pinned:
            free = (~zero).to(theta.dtype)
            warn(
                f"adaptive sharpness: {pinned} of {T.numel()} parameters are exactly 0, so T = "
                "|θ| is 0 there and δ is pinned to 0 in those coordinates (use eta > 0, e.g. "
                "ASAM's 0.01, to let them move)"
            )
    grads = _Grads(obj, fixed)
    L0, g0 = grads.value_grad(theta[None])
    L0, g0 = float(L0[0]), g0[0]
    if not math.isfinite(L0):
        raise NonFiniteLossError(f"the loss at θ is not finite ({L0}): sharpness is undefined")
    Tg = g0 if T is None else T * g0
    gnorm = float(Tg.norm()) if norm == 2 else float(Tg.abs().sum())
    common = dict(
        rho=rho,
        kind=kind,
        norm=norm,
        adaptive=adaptive,
        eta=eta,
        loss=L0,
        grad_norm=gnorm,
        pinned=pinned,
        seed=seed,
    )
    eng = Engine(obj, ("loss",), fixed, **ekw)
    progress = validate.progress(kw.get("progress"))
    if kind == "average":
        res = _average(obj, eng, grads, theta, T, rho, L0, n_samples, seed, progress, common)
    else:
        res = _worst(
            obj,
            eng,
            grads,
            theta,
            T,
            free,
            rho=rho,
            norm=norm,
            L0=L0,
            g0=g0,
            restarts=restarts,
            max_iter=max_iter,
            tol=tol,
            seed=seed,
            gam=gam,
            second_order=second_order,
            at=at,
            progress=progress,
            common=common,
        )
    res.seconds = time.perf_counter() - t0
    res.provenance = Provenance.of(obj, kernel="sharpness", at=at)
    return res


def _radius(D: Tensor, T: Tensor | None, norm) -> Tensor:
    U = D if T is None else torch.where(T > 0, D / T.clamp_min(1e-300), torch.zeros_like(D))
    return U.norm(dim=1) if norm == 2 else U.abs().amax(dim=1)


def _average(obj, eng, grads, theta, T, rho, L0, n_samples, seed, progress, common):
    from tqdm.auto import tqdm

    gen = torch.Generator().manual_seed(seed)
    block = 64
    vals: list[float] = []
    bad: list[dict] = []
    complete = True
    bar = tqdm(total=n_samples, desc="average sharpness", disable=not progress, leave=False)
    try:
        # the reference loss through the same evaluation path as the samples (the
        # engine), so that a small ρ is not swamped by rounding differences of two paths
        base = eng.evaluate(theta[None], progress=False)
        if base.complete:
            L0 = float(base["loss"][0])
        while base.complete and len(vals) < n_samples:
            m = min(block, n_samples - len(vals))
            Z = torch.randn(m, theta.numel(), generator=gen, dtype=theta.dtype)
            D = rho * Z.to(theta.device)
            if T is not None:
                D = D * T
            r = eng.evaluate(torch.cat([theta + D, theta - D]), progress=False)
            if not r.complete:
                complete = False
                break
            L = np.asarray(r["loss"], dtype=np.float64)
            rad = _radius(D, T, 2).cpu().numpy()
            for j in range(m):
                for s, lv in ((+1, L[j]), (-1, L[m + j])):
                    if not np.isfinite(lv):
                        bad.append(
                            {
                                "where": f"sample {len(vals) + j} ({'+' if s > 0 else '−'}δ)",
                                "radius": float(rad[j]),
                                "loss": float(lv),
                            }
                        )
            vals.extend((0.5 * (L[:m] + L[m:]) - L0).tolist())
            bar.update(m)
        complete = complete and base.complete
    except KeyboardInterrupt:
        if not keep_partial():
            raise
        complete = False
    finally:
        bar.close()
    s = np.asarray(vals, dtype=np.float64)
    if bad:
        warn(
            f"average sharpness: the loss is not finite at {len(bad)} perturbed point(s), e.g. "
            f"{bad[0]['where']} at radius {bad[0]['radius']:.3g} (loss {bad[0]['loss']}): "
            "the value is NaN (see .nonfinite); a smaller rho may stay where it is finite"
        )
    value = float(s.mean()) if len(s) and not bad else float("nan")
    stderr = float(s.std(ddof=1) / math.sqrt(len(s))) if len(s) >= 2 and not bad else float("nan")
    if not complete:
        warn(f"average sharpness interrupted after {len(s)} of {n_samples} samples")
    return SharpnessResult(
        value=value,
        stderr=stderr,
        lower_bound=False,
        history=s,
        n_samples=len(s),
        n_evals=2 * len(s) + grads.n_evals,
        nonfinite=bad,
        complete=complete,
        **common,
    )


def _ascent(theta, ball, U, objective, max_iter, tol, progress, desc):
    """Projected gradient ascent of ``objective`` over ``u`` from the rows of ``U``.

    ``objective(U) -> (values (K,), gradients w.r.t. u (K, P))``; the candidate steps are
    scored with ``score(U_candidates) -> values`` (the engine for the loss). Returns
    ``(best value, history, per-restart values, iterations, bad points, complete, the
    best u)``.
    """
    from tqdm.auto import tqdm

    fval, score = objective
    K = U.shape[0]
    scale = torch.ones(K, dtype=theta.dtype, device=theta.device)
    best_per = np.full(K, -np.inf)
    best_U = U.clone()
    history: list[float] = []
    bad: list[dict] = []
    complete = True
    alive = np.ones(K, dtype=bool)
    it = 0
    bar = tqdm(total=max_iter, desc=desc, disable=not progress, leave=False)
    try:
        for it in range(1, max_iter + 1):
            f, G = fval(U)
            fn = f.cpu().numpy()
            for r in np.flatnonzero(alive & ~np.isfinite(fn)):
                bad.append(
                    {
                        "where": f"restart {r}, iteration {it}",
                        "radius": float(ball.size(U[r : r + 1])[0]),
                        "loss": float(fn[r]),
                    }
                )
                alive[r] = False
            up = alive & np.isfinite(fn) & (fn > best_per)
            best_U[torch.as_tensor(up, device=U.device)] = U[torch.as_tensor(up, device=U.device)]
            best_per = np.where(up, fn, best_per)
            history.append(float(best_per[alive].max()) if alive.any() else float("nan"))
            bar.update(1)
            if bad or it == max_iter:  # a non-finite loss: the maximum is not defined
                break
            if len(history) > 5:
                old = history[-6]
                if history[-1] - old <= tol * max(abs(history[-1]), 1e-300):
                    break
            # candidates: the vertex, then steps of 1, 1/4, 1/16 times the scale
            mults = torch.tensor([1.0, 0.25, 0.0625], dtype=theta.dtype, device=theta.device)
            cands = [ball.vertex(G)]
            for m in mults:
                cands.append(ball.step(U, G, m * scale * ball.rho))
            cands += ball.flips(U, G)
            C = torch.stack(cands, 1)  # (K, c, P)
            c = C.shape[1]
            sv = score(C.reshape(K * c, -1))
            if sv is None:  # interrupted inside the engine
                complete = False
                break
            sv = sv.reshape(K, c)
            for r in range(K):
                for j in range(c):
                    if not np.isfinite(sv[r, j]) and alive[r]:
                        bad.append(
                            {
                                "where": f"restart {r}, iteration {it} (candidate step {j})",
                                "radius": float(ball.size(C[r, j][None])[0]),
                                "loss": float(sv[r, j]),
                            }
                        )
                        alive[r] = False
            if bad:
                break
            j = np.nanargmax(np.where(np.isfinite(sv), sv, -np.inf), axis=1)
            gain = sv[np.arange(K), j] > fn + 1e-12 * np.maximum(np.abs(fn), 1.0)
            newU = C[torch.arange(K), torch.as_tensor(j, device=C.device)]
            take = torch.as_tensor(gain & alive, device=U.device)
            U = torch.where(take[:, None], newU, U)
            scale = torch.where(take, scale, scale / 16)
            if bool((scale < 1e-6).all()):
                f, G = fval(U)
                fn = f.cpu().numpy()
                up = alive & np.isfinite(fn) & (fn > best_per)
                best_U[torch.as_tensor(up, device=U.device)] = U[
                    torch.as_tensor(up, device=U.device)
                ]
                best_per = np.where(up, fn, best_per)
                history.append(float(best_per[alive].max()) if alive.any() else float("nan"))
                break
    except KeyboardInterrupt:
        if not keep_partial():
            raise
        complete = False
    finally:
        bar.close()
    finite = best_per[np.isfinite(best_per)]
    best = float(finite.max()) if len(finite) else float("nan")
    arg = best_U[int(np.argmax(np.where(np.isfinite(best_per), best_per, -np.inf)))]
    return best, np.asarray(history), best_per, it, bad, complete, arg


def _worst(
    obj,
    eng,
    grads,
    theta,
    T,
    free,
    *,
    rho,
    norm,
    L0,
    g0,
    restarts,
    max_iter,
    tol,
    seed,
    gam,
    second_order,
    at,
    progress,
    common,
):
    ball = _Ball(rho, norm, free)
    P = theta.numel()
    gen = torch.Generator().manual_seed(seed)
    Tg0 = g0 if T is None else T * g0
    U0 = ball.random(restarts, P, gen, theta)
    if float(Tg0.abs().max()) > 0:
        U0[0] = ball.vertex(Tg0[None])[0]  # SAM's first step

    def point(U):
        return theta + (U if T is None else U * T)

    n_eng = [0]

    def loss_grad(U):
        f, G = grads.value_grad(point(U))
        return f - L0, (G if T is None else G * T)

    L0e: list[float] = []  # L(θ) through the engine, the path the candidates take

    def score_loss(U):
        if not L0e:
            b = eng.evaluate(theta[None], progress=False)
            if not b.complete:
                return None
            L0e.append(float(b["loss"][0]))
        n_eng[0] += U.shape[0]
        r = eng.evaluate(point(U), progress=False)
        if not r.complete:
            return None
        return np.asarray(r["loss"], dtype=np.float64) - L0e[0]

    best, hist, per, it, bad, complete, ubest = _ascent(
        theta,
        ball,
        U0.clone(),
        (loss_grad, score_loss),
        max_iter,
        tol,
        progress,
        "worst-case sharpness",
    )
    if np.isfinite(best) and best < 0:  # δ = 0 is in the ball: S_max >= 0
        best, ubest = 0.0, torch.zeros_like(ubest)
    delta = ubest if T is None else ubest * T
    res = SharpnessResult(
        value=best if not bad else float("nan"),
        perturbation=obj.layout.to_weights(delta) if np.isfinite(best) else None,
        lower_bound=True,
        restarts=per,
        history=hist,
        n_iter=it,
        nonfinite=bad,
        complete=complete,
        **common,
    )
    if bad:
        warn(
            f"worst-case sharpness: the loss is not finite at {len(bad)} point(s) inside the "
            f"ball, e.g. {bad[0]['where']} at radius {bad[0]['radius']:.3g} (loss "
            f"{bad[0]['loss']}): the value is NaN (see .nonfinite)"
        )
    try:
        if complete and gam and not bad:

            def gnorm_grad(U):
                _, G = grads.value_grad(point(U))
                TG = G if T is None else G * T
                V = TG if T is None else TG * T  # T²g
                HV = grads.hvp(point(U), V)
                return 0.5 * (TG.double() ** 2).sum(1), (HV if T is None else HV * T)

            def score_gnorm(U):
                _, G = grads.value_grad(point(U))
                TG = G if T is None else G * T
                return (0.5 * (TG.double() ** 2).sum(1)).cpu().numpy()

            U1 = ball.random(restarts, P, gen, theta)
            U1[0] = U0[0] if float(Tg0.abs().max()) > 0 else U1[0]
            gb, _, _, _, gbad, gcomplete, _ = _ascent(
                theta,
                ball,
                U1,
                (gnorm_grad, score_gnorm),
                max_iter,
                tol,
                progress,
                "GAM first-order flatness",
            )
            if gcomplete and not gbad:  # δ = 0 is in the ball too
                gb = max(gb, 0.5 * float((Tg0.double() ** 2).sum()))
                res.first_order = rho * math.sqrt(max(2 * gb, 0.0))
            else:
                res.complete = res.complete and gcomplete
        if res.complete and second_order and norm == 2:
            from .hessian import hessian_eigs

            if T is None:
                e = hessian_eigs(obj, 1, at=at, seed=seed, progress=False)
            else:
                e = hessian_eigs(_Scaled(obj.operator(at), T), 1, seed=seed, progress=False)
            if not e.complete:
                res.complete = False
            elif not e.all_converged:  # an unconverged Ritz value: no estimate from it
                warn(
                    f"sharpness: λ_max did not converge (residual {float(e.residuals[0]):.1e})"
                    "; the second-order estimate is left out (None)"
                )
            else:
                lam = float(e.values[0])
                res.lambda_max = lam
                res.second_order = rho * res.grad_norm + 0.5 * rho**2 * lam
    except KeyboardInterrupt:
        if not keep_partial():
            raise
        res.complete = False
    res.n_evals = grads.n_evals + n_eng[0]
    return res


class _Scaled:
    """The operator ``v ↦ T·H·(T·v)`` (``T`` a diagonal given by its vector)."""

    def __init__(self, op, t: Tensor):
        from .hvp import op_meta

        self.op, self.t = op, t
        n, self.dtype, self.device = op_meta(op)
        self.shape = (n, n)

    def apply(self, V: Tensor) -> Tensor:
        """Rows ``(k, P) -> (k, P)``."""
        from .hvp import apply_rows

        t = self.t.to(V.dtype)
        return apply_rows(self.op, V * t) * t
