"""Stochastic Lanczos quadrature (SLQ) for the spectral density of a symmetric operator.

Ghorbani, Krishnan, Xiao 2019 ("An Investigation into Neural Net Optimization via Hessian
Eigenvalue Density"); Lin, Saad, Yang 2016. For a unit probe ``v``, ``m`` Lanczos steps give
the tridiagonal ``T``; its eigenvalues ``λ_i`` (nodes) and the squared first components of
its eigenvectors ``w_i`` (weights) form the Gauss quadrature of ``vᵀ f(H) v``:
``Σ_i w_i λ_i^p = vᵀ H^p v`` exactly for ``p <= 2m - 1``.

All probes advance in lockstep (one batched product per step); each keeps its own basis
and is reorthogonalized against it in full. Probes are split into groups when the bases
would not fit in memory.
"""

from __future__ import annotations

import os

import numpy as np
import torch
from scipy.linalg import eigh_tridiagonal
from torch import Tensor

from .hvp import apply_rows, op_meta


def _memory_budget(device: torch.device) -> int:
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(0.75 * free)
    try:
        avail = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):  # pragma: no cover
        avail = 8 << 30
    return int(0.3 * avail)


def rademacher(k: int, n: int, *, dtype, device, generator: torch.Generator) -> Tensor:
    """``(k, n)`` random signs."""
    z = torch.randint(0, 2, (k, n), generator=generator, device=generator.device)
    return (2 * z - 1).to(device=device, dtype=dtype)


def probe_generator(seed: int, device: torch.device) -> torch.Generator:
    g = torch.Generator(device=device if device.type == "cuda" else "cpu")
    return g.manual_seed(seed)


def slq(
    op,
    n_probes: int = 10,
    steps: int = 100,
    *,
    seed: int = 0,
    group: int | None = None,
    progress=None,
) -> tuple[np.ndarray, np.ndarray, int, bool]:
    """Nodes and weights of SLQ: ``(nodes (n_probes, m), weights (n_probes, m), n_matvec,
    complete)``. Interrupted (Ctrl-C), it returns the finished probes, or all probes of
    the first group with the steps done so far (a valid, coarser quadrature).

    Rademacher probes normalized to unit length; ``m = min(steps, P)``; weights of each
    probe sum to 1.

    >>> A = torch.diag(torch.tensor([1.0, 2.0, 3.0], dtype=torch.float64))
    >>> nodes, weights, _, _ = slq(A, n_probes=2, steps=3)
    >>> np.allclose(np.sort(nodes[0]), [1, 2, 3]), np.allclose(weights.sum(1), 1)
    (True, True)
    """
    n, dtype, device = op_meta(op)
    m = min(int(steps), n)
    gen = probe_generator(seed, device)
    Z = rademacher(n_probes, n, dtype=dtype, device=device, generator=gen) / n**0.5
    per_probe = (m + 1) * n * torch.finfo(dtype).bits // 8
    g = group or max(1, min(n_probes, _memory_budget(device) // max(per_probe, 1)))
    g = -(-n_probes // -(-n_probes // g))  # equal groups: 10 probes in 5 + 5, not 8 + 2
    eps = torch.finfo(dtype).eps ** 0.75
    nodes = np.zeros((n_probes, m))
    weights = np.zeros((n_probes, m))
    n_mv = 0
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=n_probes * m, desc="SLQ", unit="HVP", leave=False)
    try:
        for s in range(0, n_probes, g):
            V = Z[s : s + g]
            L = V.shape[0]
            Q = torch.zeros(L, m + 1, n, dtype=dtype, device=device)
            Q[:, 0] = V
            alpha = torch.zeros(L, m, dtype=dtype, device=device)
            beta = torch.zeros(L, m, dtype=dtype, device=device)
            done = [0]
            try:
                _lanczos_steps(op, Q, alpha, beta, m, gen, eps, bar, done)
            except KeyboardInterrupt:
                # keep what was computed: the finished groups, or a shorter quadrature
                # (fewer steps) of the first group
                steps_done = done[0]
                n_mv += L * steps_done
                if s > 0:
                    return nodes[:s], weights[:s], n_mv, False
                if steps_done == 0:
                    raise
                a = alpha[:, :steps_done].to(torch.float64).cpu().numpy()
                bt = beta[:, : steps_done - 1].to(torch.float64).cpu().numpy()
                out = [eigh_tridiagonal(a[i], bt[i]) for i in range(L)]
                return (
                    np.stack([o[0] for o in out]),
                    np.stack([o[1][0] ** 2 for o in out]),
                    n_mv,
                    False,
                )
            n_mv += L * m
            a = alpha.to(torch.float64).cpu().numpy()
            bt = beta.to(torch.float64).cpu().numpy()
            for i in range(L):
                th, S = eigh_tridiagonal(a[i], bt[i, : m - 1])
                nodes[s + i] = th
                weights[s + i] = S[0] ** 2
            del Q
    finally:
        if bar is not None:
            bar.close()
    return nodes, weights, n_mv, True


def _lanczos_steps(op, Q, alpha, beta, m, gen, eps, bar, done: list) -> None:
    """``m`` lockstep Lanczos steps for the probes in ``Q[:, 0]``, each fully
    reorthogonalized against its own basis; fills ``alpha`` and ``beta`` and counts the
    finished steps in ``done[0]`` (read after an interruption)."""
    L, _, n = Q.shape
    dtype, device = Q.dtype, Q.device
    for j in range(m):
        W = apply_rows(op, Q[:, j])
        if bar is not None:
            bar.update(L)
        scale = W.norm(dim=1)
        Qs = Q[:, : j + 1]
        c = torch.bmm(Qs, W.unsqueeze(2)).squeeze(2)
        W = W - torch.bmm(c.unsqueeze(1), Qs).squeeze(1)
        c2 = torch.bmm(Qs, W.unsqueeze(2)).squeeze(2)
        W = W - torch.bmm(c2.unsqueeze(1), Qs).squeeze(1)
        alpha[:, j] = c[:, j] + c2[:, j]
        done[0] = j + 1
        if j == m - 1:
            break
        b = W.norm(dim=1)
        bad = b <= eps * scale.clamp_min(torch.finfo(dtype).tiny)
        Q[:, j + 1] = W / b.clamp_min(torch.finfo(dtype).tiny)[:, None]
        beta[:, j] = b
        if bool(bad.any()):  # one host check per step, small next to the products
            # an exhausted Krylov space: go on with a vector orthogonal to the
            # basis and a zero coupling (its Ritz values get zero weight)
            Zr = rademacher(L, n, dtype=dtype, device=device, generator=gen)
            for _ in range(2):
                Zr = Zr - torch.bmm(torch.bmm(Qs, Zr.unsqueeze(2)).transpose(1, 2), Qs).squeeze(1)
            Zr = Zr / Zr.norm(dim=1, keepdim=True)
            Q[:, j + 1] = torch.where(bad[:, None], Zr, Q[:, j + 1])
            beta[:, j] = torch.where(bad, torch.zeros_like(b), b)
