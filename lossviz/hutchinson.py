"""Hutchinson and Hutch++ estimators of the trace and the diagonal of a symmetric operator.

- Trace (Hutchinson 1989): ``tr(H) ≈ mean_z zᵀ H z`` over Rademacher ``z``; the estimate
  stops when its standard error is at most ``rtol · |estimate|`` (never on a change of the
  running mean, which stops early and biased).
- Hutch++ (Meyer, Musco, Musco, Woodruff 2021): the exact trace on a sketch
  ``Q = orth(H S)`` plus Hutchinson on the deflated ``(I - QQᵀ) H (I - QQᵀ)``.
- Diagonal (Bekas, Kokiopoulou, Saad 2007; AdaHessian): ``diag(H) ≈ mean_z z ⊙ H z``.
- Blocks: with masks ``M_S``, ``z_Sᵀ (H z)_S`` estimates ``tr(H_SS)`` from the same probes.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from .hvp import apply_rows, op_meta
from .slq import probe_generator, rademacher


@dataclass
class TraceEstimate:
    value: np.ndarray  # (B,) one per block (B = 1 without blocks)
    stderr: np.ndarray  # (B,)
    samples: np.ndarray  # (n_samples, B) the per-probe samples of the Hutchinson part
    n_matvec: int
    exact_part: np.ndarray  # (B,) the sketched trace of Hutch++ (0 for Hutchinson)
    complete: bool = True  # False when interrupted (Ctrl-C) after some probes


def hutchinson_trace(
    op,
    *,
    rtol: float = 0.01,
    max_matvec: int = 1000,
    min_samples: int = 10,
    batch_size: int | None = None,
    method: str = "hutchinson",
    sketch: int | None = None,
    masks: Tensor | None = None,
    seed: int = 0,
    progress=None,
) -> TraceEstimate:
    """Trace estimate with its standard error, stopping when ``stderr <= rtol·|value|``
    for every block or after ``max_matvec`` products.

    >>> A = torch.diag(torch.arange(1.0, 51.0, dtype=torch.float64))
    >>> est = hutchinson_trace(A, rtol=1e-3)
    >>> float(est.value[0]), float(est.stderr[0])  # a diagonal matrix: zᵀAz = tr(A)
    (1275.0, 0.0)
    """
    if method not in ("hutchinson", "hutch++"):
        raise ValueError(f"method must be 'hutchinson' or 'hutch++', got {method!r}")
    n, dtype, device = op_meta(op)
    batch_size = batch_size or default_batch(device)
    gen = probe_generator(seed, device)
    M = None if masks is None else masks.to(device=device, dtype=dtype)
    if method == "hutch++" and M is not None:
        raise ValueError("hutch++ is available for the whole operator, not per block")
    n_mv = 0
    Qs = None
    exact = np.zeros(1 if M is None else M.shape[0])
    if method == "hutch++":
        s = min(n, sketch or min(max(max_matvec // 10, 4), 50))
        S = rademacher(s, n, dtype=dtype, device=device, generator=gen)
        Qs = torch.linalg.qr(apply_rows(op, S).T)[0].T  # (s, n)
        HQ = apply_rows(op, Qs)
        n_mv += 2 * s
        exact = np.array([float((Qs * HQ).sum())])
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=max_matvec, desc="trace", unit="HVP", leave=False)
        bar.update(n_mv)
    chunks = []
    n_samples = 0
    complete = True
    try:
        while n_mv < max_matvec:
            c = min(batch_size, max_matvec - n_mv)
            Z = rademacher(c, n, dtype=dtype, device=device, generator=gen)
            if Qs is not None:
                Z = Z - (Z @ Qs.T) @ Qs
            HZ = apply_rows(op, Z)
            n_mv += c
            if bar is not None:
                bar.update(c)
            prod = Z * HZ
            chunks.append(
                (prod.sum(1, keepdim=True) if M is None else prod @ M.T).to(torch.float64)
            )
            n_samples += c
            if n_samples >= min_samples:
                samp = torch.cat(chunks).cpu().numpy()
                mean = samp.mean(0)
                se = samp.std(0, ddof=1) / np.sqrt(len(samp))
                if np.all(se <= rtol * np.abs(mean + exact)):
                    break
    except KeyboardInterrupt:
        if n_samples < 2:
            raise
        complete = False  # keep the probes done so far
    finally:
        if bar is not None:
            bar.close()
    samp = torch.cat(chunks).cpu().numpy()
    se = (
        samp.std(0, ddof=1) / np.sqrt(len(samp))
        if len(samp) > 1
        else np.full(samp.shape[1], np.inf)
    )
    return TraceEstimate(
        value=samp.mean(0) + exact,
        stderr=se,
        samples=samp,
        n_matvec=n_mv,
        exact_part=exact,
        complete=complete,
    )


def default_batch(device) -> int:
    """Probes per batched product: GPUs gain from wide batches (the operator halves the
    chunk on out-of-memory)."""
    return 50 if torch.device(device).type == "cuda" else 16


def hutchinson_diagonal(
    op, n_probes: int = 100, *, batch_size: int | None = None, seed: int = 0, progress=None
) -> tuple[Tensor, Tensor]:
    """``(mean of z ⊙ Hz, its standard error)`` over ``n_probes`` Rademacher probes, each
    a ``(P,)`` tensor.

    >>> A = torch.tensor([[2.0, 0.0], [0.0, 3.0]], dtype=torch.float64)
    >>> d, se = hutchinson_diagonal(A, n_probes=4)
    >>> d.tolist(), se.tolist()  # exact for a diagonal operator
    ([2.0, 3.0], [0.0, 0.0])
    """
    n, dtype, device = op_meta(op)
    batch_size = batch_size or default_batch(device)
    gen = probe_generator(seed, device)
    s1 = torch.zeros(n, dtype=torch.float64, device=device)
    s2 = torch.zeros(n, dtype=torch.float64, device=device)
    done = 0
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=n_probes, desc="diagonal", unit="HVP", leave=False)
    try:
        while done < n_probes:
            c = min(batch_size, n_probes - done)
            Z = rademacher(c, n, dtype=dtype, device=device, generator=gen)
            D = (Z * apply_rows(op, Z)).to(torch.float64)
            s1 += D.sum(0)
            s2 += (D * D).sum(0)
            done += c
            if bar is not None:
                bar.update(c)
    finally:
        if bar is not None:
            bar.close()
    mean = s1 / n_probes
    var = (s2 / n_probes - mean**2).clamp_min(0) * n_probes / max(n_probes - 1, 1)
    return mean.to(dtype), (var / n_probes).sqrt().to(dtype)
