"""Stochastic Lanczos quadrature (SLQ) for the spectral density of a symmetric operator.

Ghorbani, Krishnan, Xiao 2019 ("An Investigation into Neural Net Optimization via Hessian
Eigenvalue Density"); Lin, Saad, Yang 2016 ("Approximating Spectral Densities of Large
Matrices"). For a unit probe ``v``, ``m`` Lanczos steps give
the tridiagonal ``T``; its eigenvalues ``λ_i`` (nodes) and the squared first components of
its eigenvectors ``w_i`` (weights) form the Gauss quadrature of ``vᵀ f(H) v``:
``Σ_i w_i λ_i^p = vᵀ H^p v`` exactly for ``p <= 2m - 1``.

All probes advance in lockstep (one batched product per step); each keeps its own basis
and is reorthogonalized against it in full. Probes are split into groups when the bases
would not fit in memory. The bases may live on another device or in a lower precision
(``basis_device=`` / ``basis_dtype=``; :mod:`lossviz.basis`).
"""

from __future__ import annotations

import os

import numpy as np
import torch
from scipy.linalg import eigh_tridiagonal
from torch import Tensor

from . import validate
from .basis import Basis, check_basis
from .hvp import apply_rows, check_operator, work_dtype
from .interrupt import keep_partial


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
    """``(k, n)`` random signs (Rademacher ±1 entries).

    Args:
        k: The number of rows.
        n: The number of columns.
        dtype: The dtype of the result.
        device: The device of the result.
        generator: The generator to draw from (its device is where the draw happens).

    Returns:
        A ``(k, n)`` tensor of ±1.
    """
    z = torch.randint(0, 2, (k, n), generator=generator, device=generator.device)
    return (2 * z - 1).to(device=device, dtype=dtype)


def make_bar(progress, total: int | None, desc: str):
    """A ``tqdm.auto`` bar, or None when ``progress`` is falsy.

    Args:
        progress: Whether to show a bar.
        total: What will actually run, or None when convergence decides (the bar then
            shows a count and a rate, never a budget it will not reach).
        desc: The bar's label.

    Returns:
        The bar (counting HVPs), or None.
    """
    if not progress:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit="HVP", leave=False)


def probe_generator(seed: int, device: torch.device) -> torch.Generator:
    """A seeded ``torch.Generator`` on ``device`` for CUDA, else on the CPU.

    Args:
        seed: The seed.
        device: The device the probes are used on.

    Returns:
        The seeded generator.
    """
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
    basis_device=None,
    basis_dtype=None,
) -> tuple[np.ndarray, np.ndarray, int, bool]:
    """Nodes and weights of stochastic Lanczos quadrature.

    Rademacher probes ``v`` normalized to unit length; ``m = min(steps, P)`` Lanczos steps
    per probe give the tridiagonal ``T = S Θ Sᵀ``; the nodes are ``λ_i = Θ_ii`` and the
    weights ``w_i = S[0, i]²`` (each probe's weights sum to 1), so that
    ``Σ_i w_i λ_i^p = vᵀ H^p v`` for ``p <= 2m - 1`` (Ghorbani et al. 2019; Lin et al.
    2016). The tridiagonal eigenproblems are solved in float64
    (``scipy.linalg.eigh_tridiagonal``).

    Args:
        op: A symmetric operator or dense symmetric matrix.
        n_probes: The number of probes.
        steps: Lanczos steps per probe (capped at ``P``).
        seed: The seed of the probes.
        group: Probes per lockstep group (default: as many as fit in memory, split into
            equal groups).
        progress: A ``tqdm`` progress bar when truthy.
        basis_device: Where the probes' bases are stored (default: the operator's
            device; ``"cpu"`` is pinned memory under a CUDA operator, streamed to it in
            blocks of at most 64 MiB).
        basis_dtype: Their storage precision (default: the working precision, that of
            the products but at least float32); ``torch.float32`` under a float64
            operator halves the memory. Products, ``α`` and ``β`` stay in the working
            precision and every step is reorthogonalized against the stored vectors;
            nodes and weights are then accurate to about ``eps`` (of the storage dtype)
            ``· |λ|_max``.

    Memory:
        The bases of one group of ``g`` probes, ``g · (m + 1) · n`` numbers of
        ``basis_dtype`` on ``basis_device`` (``g`` is as many as fit in 75% of the free
        GPU memory / 30% of the free host memory, unless ``group`` is given), the
        ``n_probes · n`` probes in the working precision on the operator's device,
        about ``3 · g · n`` more there for a step's products and projections, and the
        operator's own (one gradient graph for a ``g``-vector batched product).

    Returns:
        ``(nodes, weights, n_matvec, complete)``: nodes and weights of shape
        ``(n_probes, m)``, the number of products, and False when interrupted (Ctrl-C):
        then the finished probes, or all probes of the first group with the steps done so
        far (a valid, coarser quadrature).

    Raises:
        ArgumentTypeError: if ``op`` is not a matrix / operator, or a count or seed is not
            an integer.
        LossvizError: if a count is below 1, the seed is negative, ``op`` is not
            square, finite and symmetric, or ``basis_device`` / ``basis_dtype`` is not
            usable (:func:`lossviz.basis.check_basis`).

    Examples:
        >>> A = torch.diag(torch.tensor([1.0, 2.0, 3.0], dtype=torch.float64))
        >>> nodes, weights, _, _ = slq(A, n_probes=2, steps=3)
        >>> np.allclose(np.sort(nodes[0]), [1, 2, 3]), np.allclose(weights.sum(1), 1)
        (True, True)
        >>> # the quadrature is exact for degree <= 2m - 1: vᵀA²v = (1 + 4 + 9) / 3
        >>> np.allclose((weights * nodes**2).sum(1), 14 / 3)
        True
    """
    n, dtype, device = check_operator(op, "op")
    n_probes = validate.integer(n_probes, "n_probes")
    steps = validate.integer(steps, "steps")
    seed = validate.seed(seed)
    group = validate.integer(group, "group", none=True)
    m = min(steps, n)
    wd = work_dtype(dtype)  # bases and coefficients in at least float32; products in dtype
    bdev, bdt = check_basis(basis_device, basis_dtype, device, wd)
    gen = probe_generator(seed, device)
    Z = rademacher(n_probes, n, dtype=wd, device=device, generator=gen) / n**0.5
    per_probe = (m + 1) * n * torch.finfo(bdt).bits // 8
    g = group or max(1, min(n_probes, _memory_budget(bdev) // max(per_probe, 1)))
    g = min(g, n_probes)
    g = -(-n_probes // -(-n_probes // g))  # equal groups: 10 probes in 5 + 5, not 8 + 2
    eps = max(torch.finfo(dtype).eps ** 0.75, torch.finfo(bdt).eps)
    nodes = np.zeros((n_probes, m))
    weights = np.zeros((n_probes, m))
    n_mv = 0
    bar = make_bar(progress, n_probes * m, "SLQ")  # exactly what runs
    try:
        for s in range(0, n_probes, g):
            V = Z[s : s + g]
            L = V.shape[0]
            Q = Basis((L, m + 1, n), device=bdev, dtype=bdt, work_device=device, work_dtype=wd)
            Q.put(0, V[:, None])
            alpha = torch.zeros(L, m, dtype=wd, device=device)
            beta = torch.zeros(L, m, dtype=wd, device=device)
            done = [0]
            try:
                _lanczos_steps(op, Q, alpha, beta, m, gen, eps, bar, done)
            except KeyboardInterrupt:
                # keep what was computed: the finished groups, or a shorter quadrature
                # (fewer steps) of the first group
                steps_done = done[0]
                n_mv += L * steps_done
                if not keep_partial():  # an outer lossviz call owns the interrupt
                    raise
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


def _lanczos_steps(op, Q: Basis, alpha, beta, m, gen, eps, bar, done: list) -> None:
    """``m`` lockstep Lanczos steps for the probes in ``Q[:, 0]``.

    Each probe is fully reorthogonalized against its own (stored) basis; fills ``alpha``
    and ``beta`` and counts the finished steps in ``done[0]`` (read after an
    interruption).
    """
    dtype = alpha.dtype
    tiny = torch.finfo(dtype).tiny
    for j in range(m):
        W = apply_rows(op, Q.rows(j, j + 1)[:, 0])
        if bar is not None:
            bar.update(len(W))
        scale = W.norm(dim=1)
        W = W.unsqueeze(1)  # (L, 1, n)
        c = Q.dot(j + 1, W)  # (L, j + 1, 1)
        W = Q.sub(j + 1, c, W)
        c2 = Q.dot(j + 1, W)
        W = Q.sub(j + 1, c2, W).squeeze(1)
        alpha[:, j] = c[:, j, 0] + c2[:, j, 0]
        done[0] = j + 1
        if j == m - 1:
            break
        b = W.norm(dim=1)
        bad = b <= eps * scale.clamp_min(tiny)
        X = W / b.clamp_min(tiny)[:, None]
        beta[:, j] = b
        if bool(bad.any()):  # one host check per step, small next to the products
            # an exhausted Krylov space (e.g. a zero or low-rank operator): go on with a
            # unit vector orthogonal to the basis and a zero coupling, so T is block
            # diagonal and the new block's Ritz values get zero weight. Gaussian vectors
            # (a Rademacher one can be parallel to the probe itself).
            X = torch.where(bad[:, None], _orthogonal_unit(Q, j + 1, gen), X)
            beta[:, j] = torch.where(bad, torch.zeros_like(b), b)
        Q.put(j + 1, X[:, None])


def _orthogonal_unit(Q: Basis, r: int, gen: torch.Generator) -> Tensor:
    """Per probe, a random unit vector orthogonal to its basis (its first ``r`` rows).

    ``Q`` has shape ``(L, rows, n)`` with ``r < n``; returns ``(L, n)``.
    """
    L, _, n = Q.shape
    for _ in range(8):
        Zr = torch.randn(L, 1, n, generator=gen, dtype=Q.wd, device=gen.device)
        Zr = Zr.to(Q.work_device)
        for _ in range(2):  # twice is enough (DGKS)
            Zr = Q.project_out(r, Zr)
        Zr = Zr.squeeze(1)
        nrm = Zr.norm(dim=1, keepdim=True)
        if bool((nrm > 1e-3).all()):
            return Zr / nrm
    raise RuntimeError(
        "lossviz: no vector orthogonal to the Krylov basis found"
    )  # pragma: no cover
