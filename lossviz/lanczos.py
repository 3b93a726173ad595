"""Thick-restart block Lanczos with full reorthogonalization, for a few extreme eigenpairs.

Written against the operator interface (anything with ``op @ X`` on ``(P, k)`` tensors,
including a dense symmetric tensor), so it is tested against ``torch.linalg.eigh``.

Method (Wu & Simon 2000, "Thick-restart Lanczos method for large symmetric eigenvalue
problems"; block form as in Golub & Underwood 1977): the basis ``Q`` (kept on the
operator's device) and the projected matrix ``T = Qᵀ H Q`` are built block by block; each
new block is orthogonalized twice against the whole basis (DGKS). Ritz pairs come from
``T`` in float64. When the basis is full, the wanted Ritz vectors (and some more) are kept
and the iteration goes on from the last residual block. A pair is accepted when its true
residual ``||H y - θ y||`` (from the Lanczos recurrence; ``check=True`` recomputes it
with true products) is at most ``tol · |λ|_max``. Convergence is tested as the basis grows.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from .hvp import apply_rows, op_meta
from .slq import probe_generator

WHICH = ("largest", "smallest", "both", "magnitude")


@dataclass
class LanczosOutput:
    values: np.ndarray  # float64, ordered by `which` (see `order`)
    vectors: Tensor  # (k, P) rows, orthonormal
    residuals: np.ndarray  # ||H y - θ y|| / |λ|_max
    n_matvec: int
    converged: np.ndarray  # bool per pair
    norm_estimate: float  # |λ|_max estimate used to scale the residuals
    interrupted: bool = False  # stopped by KeyboardInterrupt: the pairs found so far


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
    """Permutation ordering results: largest/magnitude descending, smallest ascending,
    both ascending (the k smallest, then the k largest)."""
    if which == "largest":
        return np.argsort(-values, kind="stable")
    if which == "magnitude":
        return np.argsort(-np.abs(values), kind="stable")
    return np.argsort(values, kind="stable")


def _orthonormal_block(Q: Tensor, W: Tensor, scale: Tensor, gen, eps: float):
    """QR of the rows of W (already orthogonal to Q); rows that vanish (the Krylov space
    is exhausted) are replaced by random vectors orthogonal to everything, with a zero
    coupling. The replacement is computed only when needed (one host check per block,
    small next to the cost of a block of products)."""
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
        if Q.shape[0]:
            Z = Z - (Z @ Q.T) @ Q
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
) -> LanczosOutput:
    """The ``k`` extreme eigenpairs of a symmetric operator.

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
        check_every: test convergence every this many blocks (default 1; each test is
            a host synchronization and a tiny eigenproblem, small next to a product).

    >>> A = torch.diag(torch.arange(1.0, 101.0, dtype=torch.float64))
    >>> out = lanczos(A, k=3, tol=1e-10)
    >>> out.values.round(8).tolist()
    [100.0, 99.0, 98.0]
    """
    if which not in WHICH:
        raise ValueError(f"which must be one of {WHICH}, got {which!r}")
    n, dtype, device = op_meta(op)
    nwant = min(2 * k if which == "both" else k, n)
    if k < 1 or k > n:
        raise ValueError(f"k={k} must be between 1 and the number of parameters ({n})")
    b = max(1, min(int(block_size), n))
    m = basis_size or max(2 * nwant + 2 * b + 10, 30 if b == 1 else 6 * b, nwant + 3 * b)
    m = min(max(m, nwant + b), n)
    m = max(b, (m // b) * b) if m >= b else m
    max_matvec = max_matvec or max(1000, 40 * m)
    eps = torch.finfo(dtype).eps ** 0.75
    check_every = check_every or 1
    gen = probe_generator(seed, torch.device(device))

    Q = torch.zeros(m + b, n, dtype=dtype, device=device)
    T = torch.zeros(m + b, m + b, dtype=dtype, device=device)

    # starting block: warm-start vectors (their sum when there are more than b), then random
    start = torch.randn(b, n, generator=gen, dtype=dtype, device=gen.device).to(device)
    if v0 is not None:
        v0 = torch.as_tensor(v0).to(device, dtype).reshape(-1, n)
        v0 = v0 / v0.norm(dim=1, keepdim=True).clamp_min(torch.finfo(dtype).tiny)
        if v0.shape[0] <= b:
            start[: v0.shape[0]] = v0 + 1e-3 * start[: v0.shape[0]] / math.sqrt(n)
        else:
            start[0] = v0.sum(0) + 1e-3 * start[0] / math.sqrt(n)
    Q[:b] = torch.linalg.qr(start.T)[0].T
    nq = b  # rows of Q filled; products taken for rows [0, nq - b)
    n_mv = 0
    norm_est = 0.0
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=max_matvec, desc="Lanczos", unit="HVP", leave=False)

    try:
        while True:
            # -- expand the basis block by block, checking convergence as it grows --
            interrupted = False
            try:
                while True:
                    blk = Q[nq - b : nq]
                    W = apply_rows(op, blk)
                    n_mv += b
                    if bar is not None:
                        bar.update(b)
                    scale = W.norm(dim=1).max()
                    Qa = Q[:nq]
                    h = Qa @ W.T
                    W = W - h.T @ Qa
                    h2 = Qa @ W.T
                    W = W - h2.T @ Qa
                    T[:nq, nq - b : nq] = h + h2
                    Qn, R = _orthonormal_block(Qa, W, scale, gen, eps)
                    T[nq : nq + b, nq - b : nq] = R
                    Q[nq : nq + b] = Qn
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
                # keep what was computed: the Ritz pairs of the finished blocks
                na = nq - b
                if na < 1:
                    raise
                interrupted = True

            # -- Rayleigh-Ritz: Ritz values, and residual norms from the recurrence -----
            # H Q_a = Q_a T_a + Q_next R Eᵀ, so ||H y - θ y|| = ||R s|| for y = Q_a s
            # (exact up to rounding with full reorthogonalization)
            Ta = T[:na, :na].to(torch.float64).cpu().numpy()
            Ta = 0.5 * (Ta + Ta.T)
            theta, S = np.linalg.eigh(Ta)
            norm_est = max(norm_est, float(np.abs(theta).max()), torch.finfo(dtype).tiny)
            # coupling of the active basis to the next block (after a restart it sits on
            # the kept Ritz vectors)
            Rc = T[na : na + b, :na].to(torch.float64).cpu().numpy()
            est = np.linalg.norm(Rc @ S, axis=0) / norm_est
            want = _select(theta, k, which)
            done = bool(np.all(est[want] <= tol)) or na >= n
            exhausted = n_mv >= max_matvec or interrupted
            if done or exhausted:
                Sw = torch.as_tensor(S[:, want], dtype=dtype, device=device)
                Y = Sw.T @ Q[:na]
                res = est[want]
                if check:
                    HY = apply_rows(op, Y)
                    n_mv += len(want)
                    tw = torch.as_tensor(theta[want], dtype=dtype, device=device)
                    res = (HY - tw[:, None] * Y).norm(dim=1).to(torch.float64).cpu().numpy()
                    res = res / norm_est
                conv = res <= tol
                if interrupted:
                    warnings.warn(
                        f"Lanczos interrupted after {n_mv} products: returning the Ritz pairs "
                        "so far (see `converged`)",
                        stacklevel=3,
                    )
                elif not conv.all():
                    warnings.warn(
                        f"Lanczos stopped after {n_mv} products with residuals up to "
                        f"{res.max():.2e} (tol {tol:.0e}); raise max_hvp",
                        stacklevel=3,
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
            Sk = torch.as_tensor(S[:, keep], dtype=dtype, device=device)
            Y = Sk.T @ Q[:na]
            last = Q[na : na + b].clone()
            coupling = torch.as_tensor(Rc @ S[:, keep], dtype=dtype, device=device)
            Q.zero_()
            T.zero_()
            Q[:p] = Y
            Q[p : p + b] = last
            T[:p, :p] = torch.diag(torch.as_tensor(theta[keep], dtype=dtype, device=device))
            T[p : p + b, :p] = coupling
            nq = p + b
    finally:
        if bar is not None:
            bar.close()
