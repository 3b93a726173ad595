"""Thick-restart block Lanczos with full reorthogonalization, for a few extreme eigenpairs.

Written against the operator interface (anything with ``op @ X`` on ``(P, k)`` tensors,
including a dense symmetric tensor), so it is tested against ``torch.linalg.eigh``.

Method (Wu & Simon 2000, "Thick-restart Lanczos method for large symmetric eigenvalue
problems"; block form as in Golub & Underwood 1977): the basis ``Q`` (kept on the
operator's device, or on ``basis_device`` in ``basis_dtype``: :mod:`lossviz.basis`) and
the projected matrix ``T = Qᵀ H Q`` are built block by block; each
new block is orthogonalized twice against the whole basis (DGKS). Ritz pairs come from
``T`` in float64. When the basis is full, the wanted Ritz vectors (and some more) are kept
and the iteration goes on from the last residual block. A pair is accepted when its true
residual ``||H y - θ y||`` (from the Lanczos recurrence; ``check=True`` recomputes it
with true products) is at most ``tol · |λ|_max``. Convergence is tested as the basis grows.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from . import validate
from .basis import Basis, check_basis, lowered
from .errors import ArgumentTypeError, LossvizError, warn
from .hvp import apply_rows, check_operator, low_precision, work_dtype
from .interrupt import keep_partial
from .slq import make_bar, probe_generator

WHICH = ("largest", "smallest", "both", "magnitude")


@dataclass
class LanczosOutput:
    """What :func:`lanczos` returns.

    Attributes:
        values: The eigenvalue estimates (Ritz values), float64, ordered by ``which``
            (see :func:`order_values`).
        vectors: The Ritz vectors, ``(k, P)`` orthonormal rows.
        residuals: ``||H y - θ y|| / |λ|_max`` per pair.
        n_matvec: The number of operator products (vectors) used.
        converged: Per pair, whether its residual is at most ``tol``.
        norm_estimate: The ``|λ|_max`` estimate used to scale the residuals.
        interrupted: True when stopped by ``KeyboardInterrupt`` (the pairs found so far).
        basis_bytes: Bytes of the stored basis (``basis_rows · n`` numbers of
            ``basis_dtype``; see :func:`basis_rows`).
    """

    values: np.ndarray  # float64, ordered by `which` (see `order`)
    vectors: Tensor  # (k, P) rows, orthonormal
    residuals: np.ndarray  # ||H y - θ y|| / |λ|_max
    n_matvec: int
    converged: np.ndarray  # bool per pair
    norm_estimate: float  # |λ|_max estimate used to scale the residuals
    interrupted: bool = False  # stopped by KeyboardInterrupt: the pairs found so far
    basis_bytes: int = 0  # bytes of the stored basis


def _select(theta: np.ndarray, k: int, which: str) -> np.ndarray:
    """Indices of the k wanted Ritz values (``both``: k of each end), most wanted first."""
    n = len(theta)
    asc = np.argsort(theta)
    if which == "largest":
        return asc[::-1][: min(k, n)]
    if which == "smallest":
        return asc[: min(k, n)]
    if which == "magnitude":
        return np.argsort(-np.abs(theta), kind="stable")[: min(k, n)]
    lo, hi = list(asc[:k]), list(asc[::-1][:k])
    out = []
    for i in lo + hi:
        if i not in out:
            out.append(i)
    return np.array(out[: min(2 * k, n)], dtype=int)


def order_values(values: np.ndarray, which: str) -> np.ndarray:
    """Permutation ordering results.

    Largest / magnitude descending, smallest ascending, both ascending (the k smallest,
    then the k largest).

    Args:
        values: The eigenvalues.
        which: ``"largest"``, ``"smallest"``, ``"both"`` or ``"magnitude"``.

    Returns:
        The indices that order ``values`` (a stable sort).
    """
    if which == "largest":
        return np.argsort(-values, kind="stable")
    if which == "magnitude":
        return np.argsort(-np.abs(values), kind="stable")
    return np.argsort(values, kind="stable")


def tol_floor(dtype: torch.dtype) -> float:
    """The smallest residual tolerance (relative to ``|λ|_max``) products can resolve.

    Args:
        dtype: The floating-point dtype of the products.

    Returns:
        ``4·eps`` of ``dtype``.
    """
    return 4 * torch.finfo(dtype).eps


def check_v0(v0, n: int, name: str = "v0") -> Tensor | None:
    """Start vectors as a ``(j, n)`` tensor: finite, no zero row.

    Args:
        v0: None, a tensor (or array-like) of shape ``(n,)`` or ``(j, n)``.
        n: The operator's size.
        name: The argument's name, for messages.

    Returns:
        A detached ``(j, n)`` floating-point tensor (integers become float64), or None.

    Raises:
        ArgumentTypeError: if ``v0`` cannot be converted to a tensor, or is complex or
            boolean.
        LossvizError: if its shape does not fit ``n``, or it holds NaN, inf or a zero row.
    """
    if v0 is None:
        return None
    if not isinstance(v0, Tensor):
        try:
            v0 = torch.as_tensor(np.asarray(v0, dtype=np.float64))
        except (TypeError, ValueError):
            raise ArgumentTypeError(
                f"{name} must be a tensor of start vectors ((j, {n}) or ({n},)), Weights or a "
                f"list of them; got {type(v0).__name__}"
            ) from None
    if v0.is_complex() or v0.dtype == torch.bool:
        raise ArgumentTypeError(f"{name} must be real, got dtype {v0.dtype}")
    if v0.ndim == 1:
        v0 = v0[None]
    if v0.ndim != 2 or v0.shape[1] != n or v0.shape[0] < 1:
        raise LossvizError(
            f"{name} must hold vectors of size {n} (the number of parameters): shape "
            f"({n},) or (j, {n}); got {tuple(v0.shape)}"
        )
    v0 = v0.detach()
    if not v0.is_floating_point():
        v0 = v0.to(torch.float64)
    if not bool(torch.isfinite(v0).all()):
        raise LossvizError(f"{name} has non-finite (NaN or infinite) entries")
    zero = (v0.abs().amax(dim=1) == 0).nonzero().reshape(-1).tolist()
    if zero:
        raise LossvizError(f"{name} has zero vector(s) at row(s) {zero[:10]}: no direction")
    return v0


def check_args(
    n: int,
    dtype: torch.dtype,
    k,
    which,
    tol,
    max_matvec,
    block_size,
    *,
    max_name: str = "max_matvec",
    basis_dtype: torch.dtype | None = None,
) -> tuple[int, float, int | None, int, bool]:
    """Validate Lanczos' arguments against the operator.

    ``tol`` below what the products resolve (``4·eps``) is warned about; in
    float16/bfloat16 (where even the default cannot be resolved) it is raised to that
    floor, with the warning. Likewise below what a basis stored in ``basis_dtype``
    resolves (``4·eps`` of it; the Ritz values are accurate to about ``eps · |λ|_max``
    of the storage precision): raised to that floor, with a warning.

    Args:
        n: The operator's size.
        dtype: The dtype of the products.
        k: The number of eigenpairs.
        which: ``"largest"``, ``"smallest"``, ``"both"`` or ``"magnitude"``.
        tol: The relative residual tolerance, in ``(0, 1)``.
        max_matvec: The product budget, or None.
        block_size: Vectors per product.
        max_name: How messages call ``max_matvec``.
        basis_dtype: The storage dtype of the basis (None: the working precision).

    Returns:
        ``(k, tol, max_matvec, block_size, low_precision)``.

    Raises:
        ArgumentTypeError: if an argument has the wrong type.
        LossvizError: if ``k`` exceeds ``n``, a value is out of range, ``which`` is
            unknown, or ``max_matvec`` is below the number of wanted pairs.
    """
    k = validate.integer(k, "k")
    validate.choice(which, "which", WHICH)
    tol = validate.number(tol, "tol", low=0, low_open=True, high=1, high_open=True)
    max_matvec = validate.integer(max_matvec, max_name, none=True)
    block_size = validate.integer(block_size, "block_size")
    if k > n:
        raise LossvizError(f"k={k} must be between 1 and the number of parameters ({n})")
    nwant = min(2 * k if which == "both" else k, n)
    if max_matvec is not None and max_matvec < nwant:
        raise LossvizError(
            f"{max_name}={max_matvec} is too small: {nwant} eigenpair(s) need at least "
            f"{nwant} products"
        )
    low = low_precision(dtype)
    floor = tol_floor(dtype)
    if tol < floor:
        name = str(dtype).replace("torch.", "")
        if low:  # even the default cannot be resolved: use what can
            warn(
                f"{name} products resolve residuals only to about {floor:.1e} of |λ|max: tol "
                f"raised from {tol:g} to {floor:.1e} (model.float() for more); residuals are "
                "checked with true products"
            )
            tol = floor
        else:
            warn(
                f"tol={tol:g} is below what {name} products resolve (about {floor:.1e} of "
                "|λ|max): the residuals reported are the Lanczos recurrence's, smaller than "
                "any true product can confirm"
            )
    if basis_dtype is not None and lowered(basis_dtype, work_dtype(dtype)):
        bfloor = tol_floor(basis_dtype)
        if tol < bfloor:
            warn(
                f"a {str(basis_dtype).replace('torch.', '')} basis resolves eigenvalues only "
                f"to about {bfloor:.1e} of |λ|max: tol raised from {tol:g} to {bfloor:.1e} "
                "(basis_dtype=None keeps the working precision)"
            )
            tol = bfloor
    return k, tol, max_matvec, block_size, low


def basis_rows(n: int, k: int, which: str = "largest", block_size: int = 1, basis_size=None) -> int:
    """The number of vectors :func:`lanczos` stores: its basis is ``basis_rows · n`` numbers.

    ``m + b`` rows, with ``b = min(block_size, n)`` and, for ``w`` wanted pairs
    (``2k`` for ``which="both"``), ``m = basis_size`` or
    ``max(2w + 2b + 10, 30 if b == 1 else 6b, w + 3b)``, at least ``w + b``, at most
    ``n``, rounded down to a multiple of ``b``.

    Args:
        n: The operator's size (parameters).
        k: The number of eigenpairs.
        which: ``"largest"``, ``"smallest"``, ``"both"`` or ``"magnitude"``.
        block_size: Vectors per product.
        basis_size: Basis vectors kept before a restart (None: the default above).

    Returns:
        The number of stored rows ``m + b``.

    Examples:
        >>> basis_rows(10**6, 5), basis_rows(10**6, 5, block_size=4)
        (31, 32)
    """
    nwant = min(2 * k if which == "both" else k, n)
    b = min(block_size, n)
    m = basis_size or max(2 * nwant + 2 * b + 10, 30 if b == 1 else 6 * b, nwant + 3 * b)
    m = min(max(m, nwant + b), n)
    m = max(b, (m // b) * b) if m >= b else m
    return m + b


def _orthonormal_block(Q: Basis, nq: int, W: Tensor, scale: Tensor, gen, eps: float):
    """QR of the rows of W (already orthogonal to the first ``nq`` rows of ``Q``).

    Rows that vanish (the Krylov space is exhausted) are replaced by random vectors
    orthogonal to everything, with a zero coupling. The replacement is computed only when
    needed (one host check per block, small next to the cost of a block of products).
    """
    if W.shape[0] == 1:
        r = W.norm()
        Qn, R = W / r.clamp_min(torch.finfo(W.dtype).tiny), r.reshape(1, 1)
    else:
        Qt, R = torch.linalg.qr(W.T)
        Qn = Qt.T
    bad = R.diagonal().abs() <= eps * scale
    if not bool(bad.any()):
        return Qn, R
    Z = torch.randn(W.shape, generator=gen, dtype=W.dtype, device=gen.device).to(W.device)
    for _ in range(2):
        if nq:
            Z = Q.project_out(nq, Z)
        good = Qn * (~bad)[:, None].to(W.dtype)
        Z = Z - (Z @ good.T) @ good
    Zq = torch.linalg.qr(Z.T)[0].T
    Qn = torch.where(bad[:, None], Zq, Qn)
    R = torch.where(bad[:, None], torch.zeros_like(R), R)
    return Qn, R


def lanczos(
    op,
    k: int = 5,
    *,
    which: str = "largest",
    tol: float = 1e-4,
    max_matvec: int | None = None,
    v0: Tensor | None = None,
    block_size: int = 1,
    basis_size: int | None = None,
    seed: int = 0,
    check: bool = False,
    check_every: int | None = None,
    progress=None,
    basis_device=None,
    basis_dtype=None,
) -> LanczosOutput:
    """The ``k`` extreme eigenpairs of a symmetric operator.

    Thick-restart block Lanczos with full reorthogonalization (see the module docstring;
    Wu & Simon 2000). With the orthonormal basis ``Q`` and ``T = Qᵀ H Q = S Θ Sᵀ``, the Ritz
    pairs are ``(θ_i, y_i = Q s_i)``. From ``H Q = Q T + Q_next R`` (``R`` the coupling of
    the basis to the next block), ``||H y_i - θ_i y_i|| = ||R s_i||`` (exact up to rounding
    with full reorthogonalization), and a pair is accepted when that is at most
    ``tol · |λ|_max``.

    Args:
        op: a symmetric operator (``op @ X`` for ``X`` of shape ``(P, b)``), e.g. a dense
            tensor or :class:`~lossviz.hvp.CurvatureOperator`.
        k: number of eigenpairs (``which="both"``: k of each end).
        which: ``"largest"`` / ``"smallest"`` (algebraic), ``"both"``, ``"magnitude"``.
        tol: accept a pair when ``||H y - θ y|| <= tol · |λ|_max``.
        max_matvec: budget of operator products (default ``max(1000, 40 · basis)``).
        v0: ``(j, P)`` start vectors (warm start), e.g. eigenvectors of a nearby point.
        block_size: vectors per product (block Lanczos; batched HVPs pay off on GPUs).
        basis_size: basis vectors kept before a restart.
        check: also compute the residuals with ``len(values)`` true products (they equal
            the recurrence's residuals up to rounding; tested).
        seed: the seed of the random start block.
        check_every: test convergence every this many blocks (default 1; each test is
            a host synchronization and a tiny eigenproblem, small next to a product).
        progress: a ``tqdm`` progress bar when truthy.
        basis_device: where the basis is stored (default: the operator's device);
            ``"cpu"`` for a model whose basis does not fit next to it on the GPU (pinned
            memory; the basis streams to the GPU in blocks of at most 64 MiB).
        basis_dtype: its storage precision (default: the working precision, that of the
            products but at least float32); ``torch.float32`` under a float64 operator
            or ``torch.bfloat16`` under a float32 one halve the memory. Products and
            the recurrence stay in the working precision and every vector is
            reorthogonalized against the stored ones, so the Ritz values are accurate
            to about ``eps · |λ|_max`` of the storage dtype (``tol`` is raised to
            ``4·eps`` of it, with a warning; bfloat16 recomputes the residuals with true
            products, as ``check=True``).

    Memory:
        The basis, ``(m + b) · n`` numbers of ``basis_dtype`` (:func:`basis_rows`; 31 ·
        n for ``k <= 5``), on ``basis_device``; on the operator's device, besides the
        operator's own memory (one gradient graph), about ``4 · b · n`` numbers of
        the working precision (a block, its products and their projections), the
        ``k · n`` returned vectors (``2 · k · n`` with ``check``), and with a basis
        stored elsewhere one streamed column block (at most 64 MiB on a GPU, 4 MiB on
        a CPU).

    Returns:
        A :class:`LanczosOutput`. Interrupted (Ctrl-C) at the outermost lossviz call, the
        Ritz pairs so far with ``interrupted=True``.

    Raises:
        ArgumentTypeError: if ``op`` is not a matrix / operator, or an argument has the
            wrong type.
        LossvizError: if a value is out of range (``k`` above the size, ``tol`` outside
            ``(0, 1)``, a budget below ``k``), ``op`` is not square, finite and symmetric,
            or ``v0`` does not fit, or ``basis_device`` / ``basis_dtype`` is not usable
            (see :func:`lossviz.basis.check_basis`).

    Examples:
        >>> A = torch.diag(torch.arange(1.0, 101.0, dtype=torch.float64))
        >>> out = lanczos(A, k=3, tol=1e-10)
        >>> out.values.round(8).tolist()
        [100.0, 99.0, 98.0]
    """
    n, dtype, device = check_operator(op, "op")
    wd = work_dtype(dtype)  # the projections (and by default the basis): at least float32
    bdev, bdt = check_basis(basis_device, basis_dtype, device, wd)
    k, tol, max_matvec, b, low = check_args(
        n, dtype, k, which, tol, max_matvec, block_size, basis_dtype=bdt
    )
    basis_size = validate.integer(basis_size, "basis_size", none=True)
    seed = validate.seed(seed)
    # low precision (products or basis): true residuals
    check = validate.boolean(check, "check") or low or low_precision(bdt)
    check_every = validate.integer(check_every, "check_every", none=True) or 1
    v0 = check_v0(v0, n)
    nwant = min(2 * k if which == "both" else k, n)
    b = min(b, n)
    m = basis_rows(n, k, which, b, basis_size) - b
    max_matvec = max_matvec or max(1000, 40 * m)
    # a block whose new directions are this small relative to its products holds no new
    # information (the products are accurate to the operator's precision, the stored
    # basis to its own)
    eps = max(torch.finfo(dtype).eps ** 0.75, torch.finfo(bdt).eps)
    gen = probe_generator(seed, torch.device(device))

    Q = Basis((m + b, n), device=bdev, dtype=bdt, work_device=device, work_dtype=wd)
    lower = lowered(bdt, wd)
    T = torch.zeros(m + b, m + b, dtype=wd, device=device)

    # starting block: warm-start vectors (their sum when there are more than b), then random
    start = torch.randn(b, n, generator=gen, dtype=wd, device=gen.device).to(device)
    if v0 is not None:
        v0 = v0.to(device, wd)
        v0 = v0 / v0.norm(dim=1, keepdim=True).clamp_min(torch.finfo(wd).tiny)
        if v0.shape[0] <= b:
            start[: v0.shape[0]] = v0 + 1e-3 * start[: v0.shape[0]] / math.sqrt(n)
        else:
            start[0] = v0.sum(0) + 1e-3 * start[0] / math.sqrt(n)
    Q.put(0, torch.linalg.qr(start.T)[0].T)
    nq = b  # rows of Q filled; products taken for rows [0, nq - b)
    n_mv = 0
    norm_est = 0.0
    # the number of products is not known in advance (convergence decides): a count and
    # a rate, no total
    bar = make_bar(progress, None, "Lanczos")

    try:
        while True:
            # -- expand the basis block by block, checking convergence as it grows --
            interrupted = False
            try:
                while True:
                    # the product of the stored (rounded) block, orthogonalized twice
                    # against the stored basis (DGKS)
                    blk = Q.rows(nq - b, nq)
                    W = apply_rows(op, blk)
                    n_mv += b
                    if bar is not None:
                        bar.update(b)
                    scale = W.norm(dim=1).max()
                    h = Q.dot(nq, W)
                    W = Q.sub(nq, h, W)
                    h2 = Q.dot(nq, W)
                    W = Q.sub(nq, h2, W)
                    T[:nq, nq - b : nq] = h + h2
                    Qn, R = _orthonormal_block(Q, nq, W, scale, gen, eps)
                    T[nq : nq + b, nq - b : nq] = R
                    Q.put(nq, Qn)
                    nq += b
                    na = nq - b
                    full = nq > m or na >= n
                    if (
                        full
                        or n_mv >= max_matvec
                        or (na >= nwant + b and (na // b) % check_every == 0)
                    ):
                        break
            except KeyboardInterrupt:
                # keep what was computed (the Ritz pairs of the finished blocks), unless an
                # outer lossviz call owns the interrupt or nothing is finished
                na = nq - b
                if na < 1 or not keep_partial():
                    raise
                interrupted = True

            # -- Rayleigh-Ritz: Ritz values, and residual norms from the recurrence -----
            # H Q_a = Q_a T_a + Q_next R Eᵀ, so ||H y - θ y|| = ||R s|| for y = Q_a s
            # (exact up to rounding with full reorthogonalization)
            Ta = T[:na, :na].to(torch.float64).cpu().numpy()
            Ta = 0.5 * (Ta + Ta.T)
            theta, S = np.linalg.eigh(Ta)
            norm_est = max(norm_est, float(np.abs(theta).max()), torch.finfo(wd).tiny)
            # coupling of the active basis to the next block (after a restart it sits on
            # the kept Ritz vectors)
            Rc = T[na : na + b, :na].to(torch.float64).cpu().numpy()
            est = np.linalg.norm(Rc @ S, axis=0) / norm_est
            want = _select(theta, k, which)
            done = bool(np.all(est[want] <= tol)) or na >= n
            exhausted = n_mv >= max_matvec or interrupted
            if done or exhausted:
                Sw = torch.as_tensor(S[:, want], dtype=wd, device=device)
                Y = Q.combine(na, Sw)
                if lower:  # unit vectors to the working precision
                    Y = Y / Y.norm(dim=1, keepdim=True)
                res = est[want]
                if check and not interrupted:
                    HY = apply_rows(op, Y)
                    n_mv += len(want)
                    if bar is not None:
                        bar.update(len(want))
                    tw = torch.as_tensor(theta[want], dtype=wd, device=device)
                    res = (HY - tw[:, None] * Y).norm(dim=1).to(torch.float64).cpu().numpy()
                    res = res / norm_est
                conv = res <= tol
                if interrupted:
                    warn(
                        f"Lanczos interrupted after {n_mv} products: returning the Ritz pairs "
                        "so far (see `converged`)"
                    )
                elif not conv.all() and done and check:
                    # converged by the recurrence, not by true products: rounding
                    warn(
                        f"Lanczos converged, but the residuals recomputed with true products "
                        f"are up to {res.max():.2e} (tol {tol:.0e}): the products' rounding "
                        f"({str(dtype).replace('torch.', '')}) limits the accuracy; use a "
                        "larger tol (or a float64 model)"
                    )
                elif not conv.all():
                    warn(
                        f"Lanczos stopped after {n_mv} products with residuals up to "
                        f"{res.max():.2e} (tol {tol:.0e}); raise max_hvp"
                    )
                vals = theta[want]
                perm = order_values(vals, which)
                return LanczosOutput(
                    values=vals[perm].astype(np.float64),
                    vectors=Y[perm],
                    residuals=res[perm],
                    n_matvec=n_mv,
                    converged=conv[perm],
                    norm_estimate=norm_est,
                    interrupted=interrupted,
                    basis_bytes=Q.nbytes,
                )
            if not full:
                continue

            # -- thick restart: keep the wanted Ritz vectors and more --------------
            p = min(na - b, max(nwant, nwant + (m - nwant) // 2))
            p = max(p, min(nwant, na - b))
            keep = _select(theta, (p + 1) // 2 if which == "both" else p, which)[:p]
            if len(keep) < p:  # fill with the next best
                rest = [i for i in order_values(theta, "largest") if i not in set(keep)]
                keep = np.concatenate([keep, rest[: p - len(keep)]]).astype(int)
            Sk = torch.as_tensor(S[:, keep], dtype=wd, device=device)
            coupling = torch.as_tensor(Rc @ S[:, keep], dtype=wd, device=device)
            Q.restart(na, Sk, b)
            T.zero_()
            T[:p, :p] = torch.diag(torch.as_tensor(theta[keep], dtype=wd, device=device))
            T[p : p + b, :p] = coupling
            nq = p + b
    finally:
        if bar is not None:
            bar.close()
