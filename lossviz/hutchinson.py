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

from . import validate
from .errors import LossvizError
from .hvp import apply_rows, check_operator, work_dtype
from .interrupt import keep_partial
from .slq import make_bar, probe_generator, rademacher


@dataclass
class TraceEstimate:
    """What :func:`hutchinson_trace` returns (``B`` blocks; ``B = 1`` without masks).

    Attributes:
        value: ``(B,)`` the estimates (the Hutchinson mean plus ``exact_part``).
        stderr: ``(B,)`` their standard errors, ``std(samples, ddof=1)/√n`` (inf with
            one sample).
        samples: ``(n_samples, B)`` the per-probe samples ``zᵀHz`` of the Hutchinson part.
        n_matvec: The number of operator products.
        exact_part: ``(B,)`` the sketched trace ``tr(QᵀHQ)`` of Hutch++ (0 for
            Hutchinson).
        complete: False when interrupted (Ctrl-C) after some probes.
    """

    value: np.ndarray  # (B,) one per block (B = 1 without blocks)
    stderr: np.ndarray  # (B,)
    samples: np.ndarray  # (n_samples, B) the per-probe samples of the Hutchinson part
    n_matvec: int
    exact_part: np.ndarray  # (B,) the sketched trace of Hutch++ (0 for Hutchinson)
    complete: bool = True  # False when interrupted (Ctrl-C) after some probes


@dataclass
class DiagonalEstimate:
    """What :func:`hutchinson_diagonal` returns.

    Attributes:
        mean: ``(P,)`` the mean of ``z ⊙ Hz`` over the probes done.
        stderr: ``(P,)`` its standard error (NaN with fewer than 2 probes).
        n_probes: The probes done.
        complete: False when interrupted (Ctrl-C): fewer probes than asked.
    """

    mean: Tensor  # (P,) mean of z ⊙ Hz over the probes done
    stderr: Tensor  # (P,) its standard error (NaN with fewer than 2 probes)
    n_probes: int  # probes done
    complete: bool = True  # False when interrupted (Ctrl-C): fewer probes than asked


def sketch_size(n: int, max_matvec: int, sketch: int | None = None) -> int:
    """Hutch++'s sketch size ``s`` (``s`` vectors cost ``2s`` products).

    Args:
        n: The operator's size.
        max_matvec: The product budget.
        sketch: An explicit size, or None for ``min(max(max_matvec // 10, 4), 50)``.

    Returns:
        ``s``, at most ``n``.
    """
    return min(n, sketch or min(max(max_matvec // 10, 4), 50))


def check_trace_args(
    n, rtol, max_matvec, method, batch_size, *, max_name="max_matvec", sketch=None
):
    """Validate the trace estimator's arguments.

    Args:
        n: The operator's size.
        rtol: The relative standard error to stop at (``>= 0``).
        max_matvec: The product budget.
        method: ``"hutchinson"`` or ``"hutch++"``.
        batch_size: Probes per batched product, or None.
        max_name: How messages call ``max_matvec``.
        sketch: Hutch++'s sketch size, or None.

    Returns:
        ``(rtol, max_matvec, batch_size)``, normalized.

    Raises:
        ArgumentTypeError: if an argument has the wrong type.
        LossvizError: if a value is out of range, ``method`` is unknown, or
            ``max_matvec`` is below what the method needs (2, plus ``2s`` for Hutch++).
    """
    validate.choice(method, "method", ("hutchinson", "hutch++"))
    rtol = validate.number(rtol, "rtol", low=0)
    max_matvec = validate.integer(max_matvec, max_name)
    batch_size = validate.integer(batch_size, "batch_size", none=True)
    sketch = validate.integer(sketch, "sketch", none=True)
    need = 2  # a standard error needs two probes
    if method == "hutch++":
        need += 2 * sketch_size(n, max_matvec, sketch)
    if max_matvec < need:
        raise LossvizError(
            f"{max_name}={max_matvec} is too small: {method} needs at least {need} products "
            + (
                "(2 probes for a standard error)"
                if method == "hutchinson"
                else "(2 per sketch vector, and 2 probes for a standard error)"
            )
        )
    return rtol, max_matvec, batch_size


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
    """Trace estimate with its standard error.

    Hutchinson 1989: ``tr(H) ≈ mean_z zᵀHz`` over Rademacher ``z``. Hutch++ (Meyer,
    Musco, Musco, Woodruff 2021): ``Q = orth(H S)`` for an ``(n, s)`` Rademacher sketch
    ``S``, then ``tr(QᵀHQ) + mean_z zᵀ(I - QQᵀ)H(I - QQᵀ)z``. With masks ``M_S``,
    ``z_Sᵀ (H z)_S`` estimates ``tr(H_SS)``. Stops when ``stderr <= rtol·|value|`` for
    every block (after at least ``min_samples`` probes) or after ``max_matvec`` products.

    Args:
        op: A symmetric operator or dense symmetric matrix.
        rtol: The relative standard error to stop at (``0``: spend the budget).
        max_matvec: The product budget.
        min_samples: The fewest probes before the stopping rule is tested (>= 2).
        batch_size: Probes per batched product (default 50 on a GPU, 16 on the CPU).
        method: ``"hutchinson"`` or ``"hutch++"``.
        sketch: Hutch++'s sketch size (default :func:`sketch_size`).
        masks: ``(B, n)`` boolean block masks, or None for the whole trace.
        seed: The seed of the probes.
        progress: A ``tqdm`` progress bar when truthy.

    Returns:
        A :class:`TraceEstimate`; interrupted (Ctrl-C) after two probes, the estimate so
        far with ``complete=False``.

    Raises:
        ArgumentTypeError: if ``op`` is not a matrix / operator, or an argument has the
            wrong type.
        LossvizError: if a value is out of range, ``masks`` is not ``(B, n)``, masks are
            combined with Hutch++, or ``op`` is not square, finite and symmetric.

    Examples:
        >>> A = torch.diag(torch.arange(1.0, 51.0, dtype=torch.float64))
        >>> est = hutchinson_trace(A, rtol=1e-3)
        >>> float(est.value[0]), float(est.stderr[0])  # a diagonal matrix: zᵀAz = tr(A)
        (1275.0, 0.0)
    """
    n, dtype, device = check_operator(op, "op")
    rtol, max_matvec, batch_size = check_trace_args(
        n, rtol, max_matvec, method, batch_size, sketch=sketch
    )
    min_samples = validate.integer(min_samples, "min_samples", low=2)
    seed = validate.seed(seed)
    if masks is not None:
        if not isinstance(masks, Tensor) or masks.ndim != 2 or masks.shape[1] != n:
            raise LossvizError(f"masks must be a (blocks, {n}) tensor")
        if method == "hutch++":
            raise LossvizError("hutch++ is available for the whole operator, not per block")
    batch_size = batch_size or default_batch(device)
    wd = work_dtype(dtype)
    gen = probe_generator(seed, device)
    M = None if masks is None else masks.to(device=device, dtype=wd)
    n_mv = 0
    Qs = None
    exact = np.zeros(1 if M is None else M.shape[0])
    # the stopping rule decides how many products run: the bar counts, with no total
    bar = make_bar(progress, None, "trace")
    if method == "hutch++":
        s = sketch_size(n, max_matvec, sketch)
        S = rademacher(s, n, dtype=wd, device=device, generator=gen)
        try:
            Qs = torch.linalg.qr(apply_rows(op, S).T)[0].T  # (s, n)
            HQ = apply_rows(op, Qs)
        except BaseException:
            if bar is not None:
                bar.close()
            raise  # nothing of the estimate is finished yet
        n_mv += 2 * s
        exact = np.array([float((Qs * HQ).sum())])
        if bar is not None:
            bar.update(n_mv)
    chunks = []
    n_samples = 0
    complete = True
    try:
        while n_mv < max_matvec:
            c = min(batch_size, max_matvec - n_mv)
            Z = rademacher(c, n, dtype=wd, device=device, generator=gen)
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
        if n_samples < 2 or not keep_partial():
            raise  # nothing finished, or an outer lossviz call owns the interrupt
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
    """Probes per batched product.

    GPUs gain from wide batches (the operator halves the chunk on out-of-memory).

    Args:
        device: Where the products run.

    Returns:
        50 on a CUDA device, 16 otherwise.
    """
    return 50 if torch.device(device).type == "cuda" else 16


def hutchinson_diagonal(
    op, n_probes: int = 100, *, batch_size: int | None = None, seed: int = 0, progress=None
) -> DiagonalEstimate:
    """Hutchinson's estimate of the diagonal, ``diag(H) ≈ mean_z z ⊙ Hz``.

    Over ``n_probes`` Rademacher probes (Bekas, Kokiopoulou, Saad 2007, "An Estimator for
    the Diagonal of a Matrix"; as in AdaHessian), with the standard error of each entry.

    Args:
        op: A symmetric operator or dense symmetric matrix.
        n_probes: The number of probes.
        batch_size: Probes per batched product (default 50 on a GPU, 16 on the CPU).
        seed: The seed of the probes.
        progress: A ``tqdm`` progress bar when truthy.

    Returns:
        A :class:`DiagonalEstimate` of ``(P,)`` tensors. Interrupted (Ctrl-C) after some
        probes, the estimate from those (``complete=False``).

    Raises:
        ArgumentTypeError: if ``op`` is not a matrix / operator, or an argument has the
            wrong type.
        LossvizError: if a value is out of range or ``op`` is not square, finite and
            symmetric.

    Examples:
        >>> A = torch.tensor([[2.0, 0.0], [0.0, 3.0]], dtype=torch.float64)
        >>> est = hutchinson_diagonal(A, n_probes=4)
        >>> est.mean.tolist(), est.stderr.tolist()  # exact for a diagonal operator
        ([2.0, 3.0], [0.0, 0.0])
    """
    n, dtype, device = check_operator(op, "op")
    n_probes = validate.integer(n_probes, "n_probes")
    batch_size = validate.integer(batch_size, "batch_size", none=True) or default_batch(device)
    seed = validate.seed(seed)
    wd = work_dtype(dtype)
    gen = probe_generator(seed, device)
    s1 = torch.zeros(n, dtype=torch.float64, device=device)
    s2 = torch.zeros(n, dtype=torch.float64, device=device)
    done = 0
    complete = True
    bar = make_bar(progress, n_probes, "diagonal")  # exactly what runs
    try:
        while done < n_probes:
            c = min(batch_size, n_probes - done)
            Z = rademacher(c, n, dtype=wd, device=device, generator=gen)
            D = (Z * apply_rows(op, Z)).to(torch.float64)
            s1 += D.sum(0)
            s2 += (D * D).sum(0)
            done += c
            if bar is not None:
                bar.update(c)
    except KeyboardInterrupt:
        if done == 0 or not keep_partial():
            raise  # nothing finished, or an outer lossviz call owns the interrupt
        complete = False  # the probes done so far
    finally:
        if bar is not None:
            bar.close()
    mean = s1 / done
    if done > 1:
        var = (s2 / done - mean**2).clamp_min(0) * done / (done - 1)
        se = (var / done).sqrt()
    else:  # one probe: no standard error
        se = torch.full_like(mean, float("nan"))
    return DiagonalEstimate(mean.to(wd), se.to(wd), done, complete)
