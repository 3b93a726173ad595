"""Gradient-subspace tracking during training, and the sharpness timeline.

The gradient subspace is that of Gur-Ari, Roberts, Dyer 2018, "Gradient Descent Happens
in a Tiny Subspace"; the sharpness timeline that of Cohen et al. 2021, "Gradient Descent
on Neural Networks Typically Occurs at the Edge of Stability".

- :func:`gradient_fraction`: ``f = ||P_k g||² / ||g||²`` with ``P_k = V_k V_kᵀ``.
- :func:`subspace_overlap`: ``S = ||V_1ᵀ V_2||_F² / k``, in ``[0, 1]``.
- :class:`SubspaceTracker`: both, recorded inside an ordinary PyTorch training loop, with
  ``λ_max`` (and optionally ``tr(H)``) against the stability threshold ``2/lr``.

The tracker only reads the model: it evaluates a private copy of the module tree
(:class:`~lossviz.Objective`), never touches parameters, buffers, ``.grad``,
``requires_grad`` or the training mode, and draws its random numbers from its own seeded
``torch.Generator`` (the global RNG state is left as it was), so training with and without
it gives bit-identical weights.
"""

from __future__ import annotations

import math
import threading
import time
import traceback
import warnings
from collections.abc import Callable, Mapping, Sequence

import numpy as np
import torch
from torch import Tensor, nn

from . import validate
from .errors import ArgumentTypeError, CheckpointError, LossvizError
from .formatting import html_table, number
from .hessian import CURVATURES, hessian_eigs, hessian_trace
from .hutchinson import check_trace_args
from .interrupt import api
from .objective import Objective, check_finite, is_single_batch, to_device
from .results import EigenResult
from .weights import Weights

__all__ = [
    "SubspaceTracker",
    "gradient_fraction",
    "lightning_callback",
    "subspace_overlap",
]

TRACKABLE = ("gradient_fraction", "overlap", "lambda_max", "trace")


# --- metrics ------------------------------------------------------------------------------
def _keys_of(x) -> list[str] | None:
    return list(x.keys()) if isinstance(x, Mapping) else None


def _flat_one(v, keys: list[str] | None, what: str) -> Tensor:
    """A single vector (Weights / mapping / tensor) as a 1-D tensor.

    Mappings are flattened in the order ``keys``.
    """
    if isinstance(v, Tensor):
        return _real(v.detach().reshape(-1), what)
    if isinstance(v, Mapping):
        if keys is not None and set(v.keys()) != set(keys):
            a, b = set(keys), set(v.keys())
            raise CheckpointError(
                f"{what} has different tensors than the others: missing {sorted(a - b)[:10]}, "
                f"extra {sorted(b - a)[:10]}"
            )
        order = keys if keys is not None else list(v.keys())
        bad = [n for n in order if not isinstance(v[n], Tensor)]
        if bad:
            raise ArgumentTypeError(f"{what} has non-tensor entries: {bad[:10]}")
        if not order:
            raise LossvizError(f"{what} is empty (no tensors)")
        return _real(torch.cat([v[n].detach().reshape(-1) for n in order]), what)
    raise ArgumentTypeError(
        f"{what} must be Weights, a mapping of tensors or a tensor, got {type(v).__name__}"
    )


def _real(t: Tensor, what: str) -> Tensor:
    if t.is_complex() or t.dtype == torch.bool:
        raise ArgumentTypeError(f"{what} must be real, got dtype {t.dtype}")
    if not t.is_floating_point():
        t = t.to(torch.float64)
    if t.numel() == 0:
        raise LossvizError(f"{what} is empty (no numbers)")
    if not bool(torch.isfinite(t).all()):
        raise LossvizError(f"{what} has non-finite (NaN or infinite) entries")
    return t


def _as_rows(V, keys: list[str] | None, what: str) -> Tensor:
    """A basis as a ``(k, P)`` tensor.

    Given as an :class:`EigenResult`, a list of vectors, one vector, or a ``(k, P)`` tensor.
    """
    if isinstance(V, EigenResult):
        V = V.vectors
    if isinstance(V, Tensor):
        if V.ndim == 1:
            return V.detach()[None]
        if V.ndim != 2:
            raise LossvizError(f"{what} must be a (k, P) tensor, got shape {tuple(V.shape)}")
        return _real(V.detach(), what).reshape(V.shape)
    if isinstance(V, Mapping):
        return _flat_one(V, keys, what)[None]
    if isinstance(V, Sequence) and not isinstance(V, (str, bytes)):
        if len(V) == 0:
            raise LossvizError(f"{what} is empty: give at least one basis vector")
        if keys is None:
            keys = _keys_of(V[0])
        return torch.stack([_flat_one(v, keys, f"{what}[{i}]") for i, v in enumerate(V)])
    raise ArgumentTypeError(
        f"{what} must be a list of Weights, an EigenResult or a (k, P) tensor, "
        f"got {type(V).__name__}"
    )


def _check_orthonormal(V: Tensor, what: str, atol: float) -> None:
    G = (V @ V.T).to(torch.float64)
    err = float((G - torch.eye(len(G), dtype=G.dtype, device=G.device)).abs().max())
    if not err <= atol:
        raise LossvizError(
            f"{what} is not an orthonormal basis (max |VVᵀ - I| = {err:.2e} > {atol:.0e}); "
            "orthonormalize it first (torch.linalg.qr of the stacked vectors) or use the "
            "eigenvectors of hessian_eigs"
        )


def _default_atol(V: Tensor) -> float:
    return 1e-8 if V.dtype == torch.float64 else 1e-3


def gradient_fraction(g, V, *, check: bool = True) -> float:
    """The fraction of the gradient in the span of an orthonormal basis ``V``.

    ``f = ||P_k g||² / ||g||² = ||Vᵀ g||² / ||g||²`` with ``P_k = V Vᵀ`` the projector on
    the span (Gur-Ari, Roberts, Dyer 2018, "Gradient Descent Happens in a Tiny
    Subspace", with ``V`` the top-``k`` Hessian eigenvectors). Computed in float64.

    Args:
        g: the gradient: :class:`~lossviz.Weights` (or a mapping of tensors, or a flat
            tensor); real and finite.
        V: the basis: a list of Weights (e.g. ``hessian_eigs(...).vectors``), an
            :class:`~lossviz.EigenResult`, one vector, or a ``(k, P)`` tensor of
            orthonormal rows; mappings must hold the same tensors as ``g``.
        check: check that the rows of ``V`` are orthonormal (``max |VVᵀ - I|`` at most
            1e-8 in float64, 1e-3 otherwise).

    Returns:
        float: ``f`` in ``[0, 1]``; NaN for a zero gradient (it has no direction).

    Raises:
        ArgumentTypeError: ``g`` or ``V`` (or one of its vectors) is not Weights / a
            mapping of tensors / a tensor, holds complex or bool numbers, or ``check``
            is not a bool.
        LossvizError: an empty or non-finite vector, ``V`` not 1-D / 2-D, vectors of
            ``V`` of another size than ``g``, or (with ``check``) ``V`` not orthonormal.
        CheckpointError: a mapping of ``V`` holds other tensors than ``g``.

    >>> V = torch.eye(4)[:2]  # span of e1, e2
    >>> gradient_fraction(torch.tensor([3.0, 0.0, 4.0, 0.0]), V)
    0.36
    """
    check = validate.boolean(check, "check")
    keys = _keys_of(g)
    gf = _flat_one(g, keys, "g")
    Vr = _as_rows(V, keys, "V")
    if Vr.shape[1] != gf.numel():
        raise LossvizError(f"V has vectors of size {Vr.shape[1]}, the gradient {gf.numel()}")
    if check:
        _check_orthonormal(Vr, "V", _default_atol(Vr))
    gf = gf.to(torch.float64)
    Vr = Vr.to(device=gf.device, dtype=torch.float64)
    gg = float(gf @ gf)
    if gg == 0.0:
        return math.nan
    return float((Vr @ gf).pow(2).sum()) / gg


def subspace_overlap(V1, V2, *, check: bool = True) -> float:
    """Overlap of two subspaces given by orthonormal bases.

    ``S = ||V_1ᵀ V_2||_F² / k`` in ``[0, 1]`` (Gur-Ari, Roberts, Dyer 2018, "Gradient
    Descent Happens in a Tiny Subspace"), 1 when the spans agree, 0 when they are
    orthogonal. With bases of different sizes ``k = min(k_1, k_2)``: the fraction of the
    smaller subspace that lies in the larger one. Computed in float64.

    Args:
        V1: the first basis: a list of :class:`~lossviz.Weights` (or mappings, or flat
            tensors), an :class:`~lossviz.EigenResult`, one vector, or a ``(k_1, P)``
            tensor of orthonormal rows.
        V2: the second basis, in the same forms (mappings with the same tensors as
            ``V1``'s).
        check: check that the rows of each basis are orthonormal (``max |VVᵀ - I|`` at
            most 1e-8 in float64, 1e-3 otherwise).

    Returns:
        float: ``S`` in ``[0, 1]``.

    Raises:
        ArgumentTypeError: a basis (or one of its vectors) is not of the forms above,
            holds complex or bool numbers, or ``check`` is not a bool.
        LossvizError: an empty basis or vector, non-finite entries, a tensor basis not
            1-D / 2-D, vectors of different sizes in ``V1`` and ``V2``, or (with
            ``check``) a basis that is not orthonormal.
        CheckpointError: mappings of ``V2`` hold other tensors than those of ``V1``.

    >>> subspace_overlap(torch.eye(3)[:2], torch.eye(3)[1:])
    0.5
    """
    check = validate.boolean(check, "check")
    if isinstance(V1, EigenResult):
        V1 = V1.vectors
    first = V1[0] if isinstance(V1, Sequence) and len(V1) else V1
    keys = _keys_of(first)
    A = _as_rows(V1, keys, "V1")
    B = _as_rows(V2, keys, "V2")
    if A.shape[1] != B.shape[1]:
        raise LossvizError(
            f"V1 and V2 live in different spaces: vectors of {A.shape[1]} vs {B.shape[1]} numbers"
        )
    if check:
        _check_orthonormal(A, "V1", _default_atol(A))
        _check_orthonormal(B, "V2", _default_atol(B))
    A = A.to(torch.float64)
    B = B.to(device=A.device, dtype=torch.float64)
    return float((A @ B.T).pow(2).sum()) / min(len(A), len(B))


# --- tracker ------------------------------------------------------------------------------
def _thresholds(group: Mapping) -> tuple[float, float | None]:
    """``(2/lr, stability threshold)`` for one optimizer parameter group.

    Gradient descent on a quadratic is stable iff ``λ_max < 2/lr``; with heavy-ball
    momentum β the threshold is ``(2 + 2β)/lr``, with Nesterov momentum
    ``(2 + 2β)/((1 + 2β) lr)`` (Cohen et al. 2021, appendix). None for other optimizers
    (Adam's threshold is on the preconditioned Hessian).
    """
    lr = float(group["lr"])
    two = 2.0 / lr if lr > 0 else math.inf
    if "momentum" not in group or "dampening" not in group:  # not SGD
        return two, None
    beta = float(group.get("momentum") or 0.0)
    if beta == 0.0:
        return two, two
    if float(group.get("dampening") or 0.0) != 0.0:
        return two, None
    if group.get("nesterov"):
        return two, (2 + 2 * beta) / ((1 + 2 * beta) * lr)
    return two, (2 + 2 * beta) / lr


class SubspaceTracker:
    """Tracks the top-``k`` Hessian eigenspace and the gradient's share of it in training.

    The gradient fraction ``f(t) = ||P_k g(t)||² / ||g(t)||²`` and the subspace overlap
    ``S(t1, t2) = ||V_k(t1)ᵀ V_k(t2)||_F² / k`` of Gur-Ari, Roberts, Dyer 2018 ("Gradient
    Descent Happens in a Tiny Subspace"), with ``λ_max`` against ``2/lr`` (Cohen, Kaur,
    Li, Kolter, Talwalkar 2021, "Gradient Descent on Neural Networks Typically Occurs at
    the Edge of Stability").

    Call :meth:`step` once per training step, **before** ``optimizer.step()``: record
    ``t`` measures the weights ``θ_t`` that step ``t`` starts from, on that step's batch
    ``b_t`` (see :meth:`step`). Every ``every`` calls (and at the first) the top-``k``
    eigenpairs of the Hessian at ``θ_t`` are recomputed by Lanczos, warm-started from the
    previous eigenvectors. At every call the gradient ``g_t = ∇L_{b_t}(θ_t)`` (the one the
    optimizer applies) is projected on the current subspace: ``f = ||V_kᵀ g||² / ||g||²``.

    Live views: :meth:`add_listener` registers ``fn(tracker, record)``, called after each
    :meth:`step`; :meth:`dashboard` is the live dashboard (:func:`lossviz.dash.subspace`);
    :meth:`records` reads the history safely while another thread trains.

    Args:
        model: the model being trained. Only read, never changed.
        loss_fn: ``loss_fn(outputs, targets)``, mean-reduced (or give ``forward=``).
        k: dimension of the tracked subspace (Gur-Ari et al. use the number of classes).
        every: refresh the eigenvectors every ``every`` calls of :meth:`step`.
        data: a fixed batch or iterable of batches for the curvature (e.g. the full
            training set). Default: the batch passed to :meth:`step` at each refresh
            (the mini-batch Hessian). With ``data`` the record also holds
            ``gradient_fraction_data``, the fraction of the gradient on ``data`` (at
            refreshes).
        optimizer: read for the learning rate(s) (recorded with ``2/lr``).
        curvature: ``"hessian"`` or ``"ggn"`` (Gauss-Newton).
        track: what to record, among ``"gradient_fraction"``, ``"overlap"``,
            ``"lambda_max"``, ``"trace"`` (Hutchinson, the most expensive).
        tol: Lanczos tolerance, ``||Hv - λv|| <= tol·|λ|_max``.
        bn: ``"train"`` (batch statistics, what the optimizer sees; default) or
            ``"eval"`` (running statistics); buffers are never updated.
        max_hvp: budget of products per eigen-solve (Lanczos; at least ``k``).
        trace_rtol: relative standard error at which the Hutchinson trace stops.
        trace_max_hvp: product budget of the Hutchinson trace.
        params: which parameters vary, as for :class:`~lossviz.Objective`: a list of
            names or a predicate ``f(name) -> bool``.
        forward: ``forward(model, batch) -> loss`` replacing ``loss_fn``, as for
            :class:`~lossviz.Objective`.
        device: where to compute, as for :class:`~lossviz.Objective` (default: the
            model's device).
        max_subspaces: subspaces kept (on CPU) for :meth:`overlap_matrix`; when full every
            other one is dropped (the first and last are kept). 0 keeps none.
        warm_start: start Lanczos from the previous eigenvectors (their sum); measured on
            digits (k = 10), 16.7 instead of 20.6 products per full-data refresh
            (``benchmarks/dynamics_digits.py``).
        seed: seed of the tracker's own random generators.

    Raises:
        ArgumentTypeError: ``model`` is not an ``nn.Module``, neither ``loss_fn`` nor
            ``forward`` is given (or one is not callable), ``track`` is not a list,
            ``optimizer`` has no ``param_groups``, ``params`` is neither a list nor a
            predicate, or another argument has the wrong type.
        LossvizError: an unknown or empty ``track``, an unknown ``curvature`` / ``bn``,
            ``tol`` outside ``(0, 1)``, ``max_hvp < k``, ``trace_max_hvp`` below 2 (with
            ``"trace"`` tracked), ``max_subspaces == 1``, a bad ``device``, or ``data``
            the model or loss cannot take (the :class:`~lossviz.Objective` on ``data``
            is built here).
    """

    def __init__(
        self,
        model: nn.Module,
        loss_fn: Callable | None = None,
        *,
        k: int = 10,
        every: int = 50,
        data=None,
        optimizer: torch.optim.Optimizer | None = None,
        curvature: str = "hessian",
        track: Sequence[str] = TRACKABLE,
        tol: float = 1e-3,
        max_hvp: int | None = None,
        trace_rtol: float = 0.05,
        trace_max_hvp: int = 200,
        params=None,
        bn: str = "train",
        forward: Callable | None = None,
        device=None,
        max_subspaces: int = 64,
        warm_start: bool = True,
        seed: int = 0,
    ):
        if not isinstance(model, nn.Module):
            raise ArgumentTypeError(f"model must be an nn.Module, got {type(model).__name__}")
        if loss_fn is None and forward is None:
            raise ArgumentTypeError("give loss_fn(outputs, targets) or forward(model, batch)")
        validate.callable_(loss_fn, "loss_fn", "a function loss_fn(outputs, targets)", none=True)
        validate.callable_(
            forward, "forward", "a function forward(model, batch) -> loss", none=True
        )
        k = validate.integer(k, "k")
        every = validate.integer(every, "every")
        validate.choice(curvature, "curvature", CURVATURES)
        if isinstance(track, str):
            track = (track,)
        if not isinstance(track, (list, tuple, set, frozenset)):
            raise ArgumentTypeError(
                f"track must be a list of quantities among {TRACKABLE}, got {type(track).__name__}"
            )
        unknown = [t for t in track if t not in TRACKABLE]
        if unknown:
            raise LossvizError(f"track has unknown quantities {unknown}; choose from {TRACKABLE}")
        if not track:
            raise LossvizError(f"track is empty: name at least one of {TRACKABLE}")
        if optimizer is not None and not hasattr(optimizer, "param_groups"):
            raise ArgumentTypeError(
                f"optimizer must be a torch optimizer, got {type(optimizer).__name__}"
            )
        tol = validate.number(tol, "tol", low=0, low_open=True, high=1, high_open=True)
        max_hvp = validate.integer(max_hvp, "max_hvp", none=True)
        if max_hvp is not None and max_hvp < k:
            raise LossvizError(f"max_hvp={max_hvp} is too small for k={k} eigenpairs (>= k)")
        trace_rtol = validate.number(trace_rtol, "trace_rtol", low=0)
        trace_max_hvp = validate.integer(trace_max_hvp, "trace_max_hvp")
        if "trace" in track:
            check_trace_args(
                k + 2, trace_rtol, trace_max_hvp, "hutchinson", None, max_name="trace_max_hvp"
            )
        validate.choice(bn, "bn", ("eval", "train"))
        if params is not None and not callable(params):
            if isinstance(params, str) or not isinstance(params, (list, tuple, set)):
                raise ArgumentTypeError(
                    "params must be a list of parameter names or a predicate f(name) -> bool, "
                    f"got {type(params).__name__}"
                )
        if device is not None:
            validate.device(device)
        max_subspaces = validate.integer(max_subspaces, "max_subspaces", low=0)
        if max_subspaces == 1:
            raise LossvizError(
                "max_subspaces must be 0 (keep none) or at least 2 (the first and the last), got 1"
            )
        warm_start = validate.boolean(warm_start, "warm_start")
        seed = validate.seed(seed)
        self.model = model
        self.loss_fn = loss_fn
        self.forward = forward
        self.k = k
        self.every = every
        self.optimizer = optimizer
        self.curvature = curvature
        self.track = tuple(track)
        self.tol = tol
        self.max_hvp = max_hvp
        self.trace_rtol = trace_rtol
        self.trace_max_hvp = trace_max_hvp
        self.max_subspaces = max_subspaces
        self.warm_start = warm_start
        self.seed = seed
        self._okw = {"params": params, "bn": bn, "forward": forward, "device": device}
        # built lazily: the data objective now (it checks the model and data early)
        self._data_obj = None if data is None else Objective(model, loss_fn, data, **self._okw)
        self._base: Objective | None = self._data_obj  # evaluates per-step gradients
        self._records: list[dict] = []
        self._pending: list[tuple[dict, str, Tensor]] = []  # device scalars to read later
        self._n = 0
        self._V: Tensor | None = None  # (k, P) current basis on the compute device
        self._V_first: Tensor | None = None
        self._subspaces: list[tuple[int, Tensor]] = []  # (step, (k, P) on CPU)
        self._overlaps: dict[tuple[int, int], float] = {}  # cache of overlap_matrix
        self._lock = threading.RLock()  # records and subspaces are read by other threads
        self._listeners: list[Callable] = []
        self.listener_errors: list[str] = []
        self.last_eigs: EigenResult | None = None
        self.n_hvp = 0
        self.seconds = 0.0

    # -- internals ------------------------------------------------------------------
    def _objective(self) -> Objective:
        if self._base is None:
            raise LossvizError("no step yet")
        return self._base

    def _batch_gradient(self, batch) -> tuple[Tensor, Tensor]:
        """(flat gradient, loss) of the batch at the current weights, on the private copy."""
        obj = self._objective()
        flat, fixed = obj.resolve()
        b = to_device(batch, obj.device)
        with torch.enable_grad():
            theta = flat.detach().requires_grad_(True)
            loss = obj.batch_loss(theta, fixed, b)
            (g,) = torch.autograd.grad(loss, theta)
        return g.detach(), loss.detach()

    def _lrs(self) -> dict:
        if self.optimizer is None:
            return {}
        groups = self.optimizer.param_groups
        lrs = tuple(float(gr["lr"]) for gr in groups)
        two, thr = _thresholds(groups[0])
        return {"lr": lrs[0], "lrs": lrs, "two_over_lr": two, "stability_threshold": thr}

    def _keep_subspace(self, step: int, V: Tensor) -> None:
        if self.max_subspaces == 0:
            return
        V = V.detach().to("cpu", copy=True)
        with self._lock:
            subs = self._subspaces + [(step, V)]
            if len(subs) > self.max_subspaces:  # thin: every other one, and the last
                subs = subs[:-1][::2] + subs[-1:]
            self._subspaces = subs

    def _eigs(self, obj: Objective) -> tuple[EigenResult, Tensor]:
        """Top-k eigenpairs (:func:`~lossviz.hessian_eigs`, Lanczos), warm-started.

        The start vector is the sum of the previous eigenvectors.
        """
        eig = hessian_eigs(
            obj,
            min(self.k, obj.n_params),
            tol=self.tol,
            max_hvp=self.max_hvp,
            seed=self.seed,
            v0=self._V if self.warm_start else None,
            curvature=self.curvature,
            progress=False,
        )
        return eig, torch.stack([obj.as_flat(v) for v in eig.vectors]).detach()

    def _refresh(self, batch, rec: dict) -> tuple[EigenResult, Tensor, int]:
        """Fill the refresh items of ``rec``: ``(eigenpairs, (k, P) basis, products)``.

        They are committed by :meth:`step` only when the whole record is done.
        """
        obj = self._data_obj
        if obj is None:  # the mini-batch Hessian at this step: the step objective, this batch
            obj = self._objective()
            if not is_single_batch(batch):
                raise LossvizError("step(batch) needs one batch (inputs, targets) or a dict")
            obj.swap_batch(batch)
        eig, V = self._eigs(obj)
        rec["refreshed"] = True
        rec["eigenvalues"] = tuple(float(v) for v in eig.values)
        rec["lambda_max"] = float(eig.values[0]) if "lambda_max" in self.track else None
        rec["n_hvp"] = eig.n_hvp
        rec["converged"] = eig.all_converged
        if "overlap" in self.track:
            prev = self._V
            rec["overlap_prev"] = None if prev is None else subspace_overlap(prev, V, check=False)
            rec["overlap_first"] = (
                1.0 if self._V_first is None else subspace_overlap(self._V_first, V, check=False)
            )
        if "trace" in self.track:
            tr = hessian_trace(
                obj,
                rtol=self.trace_rtol,
                max_hvp=self.trace_max_hvp,
                seed=self.seed,
                curvature=self.curvature,
                progress=False,
            )
            rec["trace"], rec["trace_stderr"] = tr.value, tr.stderr
            rec["n_hvp"] += tr.n_hvp
        if self._data_obj is not None and "gradient_fraction" in self.track:
            gd = obj.as_flat(obj.gradient())
            rec["gradient_fraction_data"] = gradient_fraction(gd, V, check=False)
        # the cached per-point graph is not needed any more
        obj.release()
        return eig, V, rec["n_hvp"]

    # -- public ---------------------------------------------------------------------
    @api
    def step(self, batch, loss=None) -> None:
        """Measure the current weights on ``batch``; call it once per training step.

        Call it **before** ``optimizer.step()`` (after the forward pass; before or after
        ``loss.backward()``, the tracker never reads or writes ``.grad``).

        Record ``t`` (the ``t``-th call, from 0) then measures the weights ``θ_t`` that
        training step ``t`` starts from, on the batch ``b_t`` of that step:

        - ``loss``: ``L_{b_t}(θ_t)``; ``train_loss``: the ``loss`` argument (what the loop
          computed, the same number when it is the loss of ``b_t`` at ``θ_t``);
        - ``gradient_fraction``: the share of ``g_t = ∇L_{b_t}(θ_t)`` (exactly the
          gradient the optimizer is about to apply) in the current subspace;
        - every ``every`` calls (``t % every == 0``) the subspace is refreshed first: the
          top-``k`` eigenvectors of the Hessian of ``b_t`` at ``θ_t`` (of ``data`` at
          ``θ_t`` when the tracker has ``data``), so at a refresh the fraction is in the
          fresh subspace and between refreshes in that of the last refresh;
        - ``lr``: the learning rate step ``t`` uses (read before a scheduler steps).

        ``loss``: a float or a one-element tensor. Between refreshes nothing is copied to
        the host (no synchronization). If the call raises or is interrupted (Ctrl-C), the
        interrupt propagates and nothing is recorded: the history stays one complete
        record per successful call and the next call measures step ``t`` again.

        Args:
            batch: the batch of this training step (``(inputs, targets)``, or what
                ``forward`` takes); a single batch when the tracker has no ``data``.
            loss: the loss the training loop computed (recorded as ``train_loss``), or
                None.

        Raises:
            ArgumentTypeError: ``loss`` is neither a number nor a one-element real tensor.
            LossvizError: ``batch`` is not a single batch at a refresh without ``data``,
                or the model / loss cannot take it.
            NonFiniteLossError: the loss of ``batch`` is not finite at a refresh.
        """
        if isinstance(loss, Tensor):
            if loss.numel() != 1 or loss.is_complex() or loss.dtype == torch.bool:
                raise ArgumentTypeError(
                    "loss must be a float or a one-element tensor, got a tensor of shape "
                    f"{tuple(loss.shape)} ({str(loss.dtype).replace('torch.', '')})"
                )
        elif loss is not None:
            validate.number(loss, "loss", finite=False)
        step = self._n
        t0 = time.perf_counter()
        rec, pending, fresh = self._measure(batch, loss, step)
        with self._lock:  # a record is published together with its device scalars
            if fresh is not None:  # the refreshed subspace, now that the record is whole
                eig, V, n_hvp = fresh
                self.n_hvp += n_hvp
                self.last_eigs = eig
                self._V = V
                if self._V_first is None:
                    self._V_first = V
                self._keep_subspace(step, V)
            self._n = step + 1
            self._pending.extend(pending)
            self._records.append(rec)
            if rec["refreshed"]:
                self._materialize()  # bounded: the refresh synchronized anyway
        self.seconds += time.perf_counter() - t0
        for fn in list(self._listeners):
            self._notify(fn, rec)

    def _measure(self, batch, loss, step: int):
        """``(record, device scalars, refreshed subspace or None)`` of step ``step``.

        The tracker's state is not touched (:meth:`step` publishes it all at once).
        """
        if self._base is None:
            self._base = Objective(self.model, self.loss_fn, batch, **self._okw)
        rec: dict = {"step": step, "refreshed": False}
        rec.update(self._lrs())
        pending: list[tuple[dict, str, Tensor]] = []
        g = None
        if "gradient_fraction" in self.track or step % self.every == 0:
            g, batch_loss = self._batch_gradient(batch)
            pending.append((rec, "loss", batch_loss))
        if loss is not None:
            if isinstance(loss, Tensor):
                pending.append((rec, "train_loss", loss.detach().reshape(())))
            else:
                rec["train_loss"] = float(loss)
        fresh, V = None, self._V
        if step % self.every == 0:
            check_finite(batch_loss)
            fresh = self._refresh(batch, rec)
            V = fresh[1]
        if "gradient_fraction" in self.track:
            gg = (g.to(torch.float64) ** 2).sum()
            pg = ((V @ g).to(torch.float64) ** 2).sum()
            pending.append((rec, "gradient_fraction", pg / gg))
            pending.append((rec, "gradient_norm", gg.sqrt()))
        return rec, pending, fresh

    def _notify(self, fn: Callable, rec: dict) -> None:
        try:
            fn(self, rec)
        except Exception as e:  # a live view must never break training
            msg = "".join(traceback.format_exception_only(type(e), e)).strip()
            name = _fn_name(fn)
            first = not any(m.startswith(f"{name}: ") for m in self.listener_errors)
            if len(self.listener_errors) < 100:
                self.listener_errors.append(f"{name}: {msg}")
            if first:
                warnings.warn(
                    f"lossviz: SubspaceTracker listener {name} failed ({msg}); training goes on",
                    RuntimeWarning,
                    stacklevel=3,
                )

    def add_listener(self, fn: Callable) -> Callable[[], None]:
        """Call ``fn(tracker, record)`` after every :meth:`step`, in the thread of :meth:`step`.

        ``record`` is the step's dict; values still on the device are not in it yet (read
        them with :meth:`records`, which synchronizes). An exception in ``fn`` never
        breaks training: it is kept in ``listener_errors`` (and warned about once per
        listener).

        Args:
            fn: the listener, called as ``fn(tracker, record)``.

        Returns:
            A function of no arguments that removes the listener.

        Raises:
            ArgumentTypeError: ``fn`` is not callable.
        """
        validate.callable_(fn, "fn", "a callable listener fn(tracker, record)")
        self._listeners = self._listeners + [fn]
        return lambda: self.remove_listener(fn)

    def remove_listener(self, fn: Callable) -> None:
        """Stop calling ``fn`` (no error if it was not registered)."""
        self._listeners = [f for f in self._listeners if f != fn]

    def dashboard(self, **kw):
        """The live dashboard of this tracker: :func:`lossviz.dash.subspace` (``**kw``)."""
        from . import dash

        return dash.subspace(self, **kw)

    def _materialize(self) -> None:
        """Copy the recorded device scalars to the host: one transfer per device."""
        with self._lock:
            if not self._pending:
                return
            by_device: dict = {}
            for i, (_, _, t) in enumerate(self._pending):
                by_device.setdefault(t.device, []).append(i)
            for idx in by_device.values():
                vals = torch.stack([self._pending[i][2].to(torch.float64) for i in idx]).cpu()
                for i, v in zip(idx, vals.tolist()):
                    rec, key, _ = self._pending[i]
                    rec[key] = v
            self._pending = []

    def records(self, start: int = 0) -> list[dict]:
        """The records of :attr:`history` from index ``start`` on.

        They are complete (device values read back: one synchronization) and consistent
        while another thread calls :meth:`step`.

        Args:
            start: the first record's index (an integer >= 0).

        Returns:
            The list of record dicts.

        Raises:
            ArgumentTypeError: ``start`` is not an integer.
            LossvizError: ``start < 0``.
        """
        start = validate.integer(start, "start", low=0)
        with self._lock:
            self._materialize()
            return self._records[start:]

    @property
    def history(self) -> list[dict]:
        """One record (a dict) per :meth:`step`.

        Keys: ``step``, ``loss`` (of the batch at the
        measured weights), ``train_loss``, ``gradient_fraction``, ``gradient_norm``,
        ``refreshed``; at refreshes ``lambda_max``, ``eigenvalues``, ``overlap_prev``,
        ``overlap_first``, ``trace``, ``trace_stderr``, ``gradient_fraction_data``,
        ``n_hvp``; with an optimizer ``lr``, ``lrs``, ``two_over_lr`` and
        ``stability_threshold``. Values missing at a step are absent (NaN in pandas).
        """
        with self._lock:
            self._materialize()
            return self._records

    def to_pandas(self):
        """The history as a ``pandas.DataFrame`` indexed by step.

        Raises:
            ImportError: pandas is not installed.
        """
        try:
            import pandas as pd
        except ImportError as e:
            raise ImportError("to_pandas needs pandas: pip install pandas") from e
        return pd.DataFrame(self.history).set_index("step")

    @property
    def subspace(self) -> list[Weights]:
        """The current top-``k`` eigenvectors (a list of Weights).

        Raises:
            LossvizError: no :meth:`step` yet.
        """
        if self._V is None:
            raise LossvizError("no subspace yet: call step() first")
        lay = self._objective().layout
        return [lay.to_weights(v.clone()) for v in self._V]

    def overlap_matrix(self) -> tuple[list[int], np.ndarray]:
        """The overlaps ``S[i, j] = ||V_iᵀ V_j||_F² / k`` between the kept subspaces.

        The kept subspaces are those of the refreshes, thinned when more than
        ``max_subspaces``. Pairs computed before are cached: a new subspace costs one row.

        Returns:
            ``(steps, S)``: the step of each kept subspace and the symmetric
            ``(n, n)`` array of overlaps.
        """
        with self._lock:
            subs = list(self._subspaces)
        steps = [s for s, _ in subs]
        n = len(steps)
        M = np.zeros((n, n))
        cache = self._overlaps
        for j in range(n):
            A = None
            for i in range(j + 1):
                v = cache.get((steps[i], steps[j]))
                if v is None:
                    if A is None:
                        A = subs[j][1].to(torch.float64)
                    B = subs[i][1].to(torch.float64)
                    v = float((B @ A.T).pow(2).sum()) / min(len(A), len(B))
                    cache[(steps[i], steps[j])] = v
                M[i, j] = M[j, i] = v
        kept = set(steps)
        self._overlaps = {k: v for k, v in cache.items() if k[0] in kept and k[1] in kept}
        return steps, M

    def _column(self, key: str):
        xs, ys = [], []
        for r in self.history:
            if r.get(key) is not None:
                xs.append(r["step"])
                ys.append(r[key])
        return xs, ys

    def plot(self):
        """Three panels of the history (a plotly figure).

        The gradient fraction per step (and on ``data`` at refreshes); the overlap matrix
        across refreshes; ``λ_max`` with ``2/lr`` (and the momentum threshold when it
        differs).
        """
        import plotly.graph_objects as go
        from plotly.subplots import make_subplots

        fig = make_subplots(
            rows=1,
            cols=3,
            column_widths=[0.38, 0.24, 0.38],
            subplot_titles=(
                f"gradient fraction in the top-{self.k} subspace",
                "subspace overlap ||V_iᵀV_j||²/k",
                "λ_max and 2/lr",
            ),
        )
        x, y = self._column("gradient_fraction")
        fig.add_trace(go.Scatter(x=x, y=y, mode="lines", name="mini-batch gradient"), 1, 1)
        x, y = self._column("gradient_fraction_data")
        if x:
            fig.add_trace(go.Scatter(x=x, y=y, mode="lines+markers", name="gradient on data"), 1, 1)
        x, y = self._column("overlap_first")
        if x:
            fig.add_trace(
                go.Scatter(
                    x=x,
                    y=y,
                    mode="lines",
                    line={"dash": "dot"},
                    name="overlap with the first subspace",
                ),
                1,
                1,
            )
        steps, M = self.overlap_matrix()
        if len(steps):
            labels = [str(s) for s in steps]
            fig.add_trace(
                go.Heatmap(
                    z=M,
                    x=labels,
                    y=labels,
                    zmin=0,
                    zmax=1,
                    colorscale="Viridis",
                    showscale=False,
                    hovertemplate="steps %{y}, %{x}: %{z:.3f}<extra></extra>",
                ),
                1,
                2,
            )
            fig.update_yaxes(autorange="reversed", row=1, col=2)
        x, y = self._column("lambda_max")
        fig.add_trace(go.Scatter(x=x, y=y, mode="lines+markers", name="λ_max"), 1, 3)
        x2, y2 = self._column("two_over_lr")
        if x2:
            fig.add_trace(
                go.Scatter(x=x2, y=y2, mode="lines", line={"dash": "dash"}, name="2/lr"), 1, 3
            )
        x3, y3 = self._column("stability_threshold")
        if x3 and any(a != b for a, b in zip(y3, y2)):
            fig.add_trace(
                go.Scatter(
                    x=x3, y=y3, mode="lines", line={"dash": "dot"}, name="(2+2β)/lr (momentum)"
                ),
                1,
                3,
            )
        for c in (1, 3):
            fig.update_xaxes(title_text="step", row=1, col=c)
        fig.update_yaxes(range=[0, 1.02], row=1, col=1)
        fig.update_layout(
            template="plotly_white", height=380, width=1200, legend={"orientation": "h", "y": -0.2}
        )
        return fig

    def _summary(self) -> dict:
        h = self.history
        last_f = next(
            (r["gradient_fraction"] for r in reversed(h) if r.get("gradient_fraction") is not None),
            None,
        )
        last_l = next(
            (r["lambda_max"] for r in reversed(h) if r.get("lambda_max") is not None), None
        )
        return {
            "steps": len(h),
            "refreshes": sum(bool(r["refreshed"]) for r in h),
            "last gradient fraction": last_f,
            "last λ_max": last_l,
            "HVPs": self.n_hvp,
        }

    def __repr__(self) -> str:
        s = self._summary()
        f = "–" if s["last gradient fraction"] is None else number(s["last gradient fraction"])
        lam = "–" if s["last λ_max"] is None else number(s["last λ_max"])
        return (
            f"SubspaceTracker(k={self.k}, every={self.every}, {self.curvature}: "
            f"{s['steps']} steps, {s['refreshes']} refreshes, last gradient fraction {f}, "
            f"last λ_max {lam}, {self.n_hvp} HVPs, {self.seconds:.2f} s)"
        )

    def _repr_html_(self) -> str:
        s = self._summary()
        return html_table(
            list(s),
            [
                [
                    ("–" if v is None else number(v) if isinstance(v, float) else v)
                    for v in s.values()
                ]
            ],
            f"top-{self.k} {self.curvature} subspace tracker",
        )


def _fn_name(fn) -> str:
    return getattr(fn, "__qualname__", None) or type(fn).__name__


def lightning_callback(tracker: SubspaceTracker):
    """A PyTorch Lightning callback that calls ``tracker.step(batch)`` once per optimizer step.

    The call comes just before the step (``on_before_optimizer_step``), on the batch of
    that step (kept from ``on_train_batch_start``): the tracker's convention, the weights
    before the update and the gradient the optimizer applies.

    Args:
        tracker: the :class:`SubspaceTracker` to feed.

    Returns:
        A ``lightning.pytorch.Callback`` (or ``pytorch_lightning.Callback``) to pass to
        ``Trainer(callbacks=[...])``.

    Raises:
        ImportError: neither ``lightning`` nor ``pytorch_lightning`` is installed.
        ArgumentTypeError: ``tracker`` is not a :class:`SubspaceTracker`.
    """
    try:
        from lightning.pytorch import Callback
    except ImportError:
        try:
            from pytorch_lightning import Callback
        except ImportError as e:
            raise ImportError(
                "lightning_callback needs PyTorch Lightning: pip install lightning"
            ) from e
    if not isinstance(tracker, SubspaceTracker):
        raise ArgumentTypeError(f"expected a SubspaceTracker, got {type(tracker).__name__}")

    class SubspaceTrackerCallback(Callback):
        def __init__(self, tr):
            super().__init__()
            self.tracker = tr
            self._batch = None

        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx, *args):
            self._batch = batch

        def on_before_optimizer_step(self, trainer, pl_module, optimizer, *args):
            if self._batch is not None:
                self.tracker.step(self._batch)

    return SubspaceTrackerCallback(tracker)
