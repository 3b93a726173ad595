"""Hessian spectra of an :class:`~lossviz.Objective`: extreme eigenpairs (Lanczos),
spectral density (SLQ), trace (Hutchinson / Hutch++), diagonal, and the same per block of
parameters. Every function also accepts a bare symmetric operator or dense matrix."""

from __future__ import annotations

import os
import time
import warnings
from collections.abc import Mapping

import numpy as np
import torch
from torch import Tensor

from .errors import LossvizError, NonFiniteLossError
from .hutchinson import hutchinson_diagonal, hutchinson_trace
from .hvp import SubOperator, op_meta
from .interrupt import api
from .lanczos import lanczos
from .objective import Objective
from .results import BlockResults, EigenResult, SpectralDensity, TraceResult
from .slq import slq
from .weights import Weights


def _progress(progress) -> bool:
    if progress is None:
        return os.environ.get("LOSSVIZ_PROGRESS", "1") not in ("0", "false", "False")
    return bool(progress)


def _operator(obj, at, curvature):
    if isinstance(obj, Objective):
        return obj.operator(at, curvature=curvature), obj.layout
    if at is not None:
        raise LossvizError("at= needs an Objective; an operator is already at a point")
    op_meta(obj)
    return obj, None


def resolve_blocks(obj: Objective, blocks) -> dict[str, list[str]]:
    """``blocks="module"``: parameters grouped by the module that owns them; or a
    mapping ``block name -> parameter names`` (checked)."""
    if not isinstance(obj, Objective):
        raise LossvizError("blocks= needs an Objective")
    if blocks == "module":
        out: dict[str, list[str]] = {}
        for n in obj.names:
            out.setdefault(n.rsplit(".", 1)[0] if "." in n else n, []).append(n)
        return out
    if isinstance(blocks, Mapping):
        out = {str(k): list(v) for k, v in blocks.items()}
        unknown = [p for ps in out.values() for p in ps if p not in obj.names]
        if unknown:
            raise LossvizError(f"blocks name parameters that do not vary: {unknown[:10]}")
        empty = [k for k, v in out.items() if not v]
        if empty:
            raise LossvizError(f"empty blocks: {empty}")
        return out
    raise LossvizError(
        f"blocks must be 'module' or a mapping name -> parameter names, got {blocks!r}"
    )


def _block_index(obj: Objective, names: list[str]) -> Tensor:
    sl = obj.layout.slices()
    return torch.cat([torch.arange(sl[n].start, sl[n].stop) for n in names]).to(obj.device)


def _vectors(rows: Tensor, layout, names=None) -> list:
    if layout is None:
        return [r for r in rows]
    if names is None:
        return [layout.to_weights(r) for r in rows]
    out = []
    for r in rows:
        d, i = {}, 0
        for n, s, k in zip(layout.names, layout.shapes, layout.numels):
            if n in names:
                d[n] = r[i : i + k].view(s)
                i += k
        out.append(Weights(d))
    return out


def point_version(obj: Objective, at):
    """An exact record of the point ``at`` (the model's own for ``None``): a private copy of
    its tensors (:meth:`Objective.snapshot`). Compared with ``==`` later, it tells whether
    the point still holds, whatever changed the weights in place (an optimizer step,
    ``.data``, ``load_state_dict``)."""
    return obj.snapshot(at)


def _attach(res, obj, at):
    """Keep the Objective and the point on a result (for ``res.dashboard()``)."""
    if isinstance(obj, Objective):
        res.objective, res.at, res.at_version = obj, at, point_version(obj, at)
    return res


def _check(values, what: str):
    if not np.all(np.isfinite(values)):
        raise NonFiniteLossError(f"the curvature products are not finite ({what})")


def _as_v0(obj, v0, layout):
    if v0 is None:
        return None
    if isinstance(v0, Tensor):
        return v0
    if isinstance(v0, Mapping):
        v0 = [v0]
    return torch.stack([obj.as_flat(v) if layout is not None else v for v in v0])


@api
def hessian_eigs(
    obj,
    k: int = 5,
    *,
    which: str = "largest",
    at=None,
    tol: float = 1e-4,
    max_hvp: int | None = None,
    blocks=None,
    seed: int = 0,
    v0=None,
    curvature: str = "hessian",
    block_size: int | None = None,
    progress: bool | None = None,
):
    """The ``k`` extreme eigenpairs of the Hessian ``∇²L(θ)`` (or the Gauss-Newton matrix).

    Thick-restart Lanczos with full reorthogonalization (:func:`lossviz.lanczos.lanczos`),
    run until every returned pair has ``||Hv - λv|| <= tol·|λ|_max`` (checked with true
    products). ``which``: ``"largest"``, ``"smallest"``, ``"both"`` (k of each end),
    ``"magnitude"``. ``v0``: Weights (or a list) to warm-start from. ``blocks="module"`` or
    a mapping: the eigenpairs of each diagonal block ``H_SS`` (a :class:`BlockResults`).

    >>> A = torch.diag(torch.tensor([3.0, -5.0, 1.0, 0.5], dtype=torch.float64))
    >>> hessian_eigs(A, k=2, which="magnitude", progress=False).values.round(12).tolist()
    [-5.0, 3.0]
    """
    if blocks is not None:
        names = resolve_blocks(obj, blocks)
        op, layout = _operator(obj, at, curvature)
        res = {}
        for bname, pnames in names.items():
            idx = _block_index(obj, pnames)
            sub = SubOperator(op, idx)
            kb = min(k, idx.numel())
            res[bname] = _eigs(
                sub,
                kb,
                which,
                tol,
                max_hvp,
                seed,
                None,
                curvature,
                block_size,
                progress,
                layout,
                set(pnames),
                obj,
            )
        return BlockResults(res, kind=f"{which} eigenvalues")
    op, layout = _operator(obj, at, curvature)
    res = _eigs(
        op,
        k,
        which,
        tol,
        max_hvp,
        seed,
        _as_v0(obj, v0, layout),
        curvature,
        block_size,
        progress,
        layout,
        None,
        obj,
    )
    return _attach(res, obj, at)


def _auto_block_size(obj) -> int:
    """Block Lanczos pays off when batched products are much cheaper per vector."""
    if not isinstance(obj, Objective):
        return 1
    t = obj._hvp_times.get("hessian")
    if not t or obj.device.type != "cuda":
        return 1
    best = min(t.values())
    return 4 if best < 0.5 * t.get("loop", best) else 1


def _eigs(
    op, k, which, tol, max_hvp, seed, v0, curvature, block_size, progress, layout, names, obj
):
    t0 = time.perf_counter()
    bs = block_size or _auto_block_size(obj)
    out = lanczos(
        op,
        k,
        which=which,
        tol=tol,
        max_matvec=max_hvp,
        v0=v0,
        block_size=bs,
        seed=seed,
        progress=_progress(progress),
    )
    _check(out.values, "eigenvalues")
    return EigenResult(
        values=out.values,
        vectors=_vectors(out.vectors, layout, names),
        residuals=out.residuals,
        n_hvp=out.n_matvec,
        converged=out.converged,
        which=which,
        curvature=curvature,
        n_params=op_meta(op)[0],
        seconds=time.perf_counter() - t0,
        complete=not out.interrupted,
    )


@api
def hessian_density(
    obj,
    *,
    n_probes: int = 10,
    steps: int = 100,
    at=None,
    seed: int = 0,
    curvature: str = "hessian",
    progress: bool | None = None,
) -> SpectralDensity:
    """Spectral density by stochastic Lanczos quadrature (Ghorbani et al. 2019).

    ``n_probes`` Rademacher probes advance in lockstep (batched products), each with
    ``steps`` fully reorthogonalized Lanczos steps. ``Σ_i w_i λ_i^p = vᵀH^p v`` for
    ``p <= 2·steps - 1``.
    """
    t0 = time.perf_counter()
    op, _ = _operator(obj, at, curvature)
    nodes, weights, n_mv, complete = slq(
        op, n_probes, steps, seed=seed, progress=_progress(progress)
    )
    _check(nodes, "density")
    if not complete:
        warnings.warn(
            f"SLQ interrupted: {nodes.shape[0]} probe(s) × {nodes.shape[1]} steps kept",
            stacklevel=2,
        )
    res = SpectralDensity(
        complete=complete,
        nodes=nodes,
        weights=weights,
        n_hvp=n_mv,
        n_params=op_meta(op)[0],
        curvature=curvature,
        seconds=time.perf_counter() - t0,
    )
    return _attach(res, obj, at)


@api
def hessian_trace(
    obj,
    *,
    method: str = "hutchinson",
    rtol: float = 0.01,
    max_hvp: int = 1000,
    at=None,
    seed: int = 0,
    blocks=None,
    curvature: str = "hessian",
    batch_size: int | None = None,
    progress: bool | None = None,
):
    """``tr(H)`` by Hutchinson (``zᵀHz``, Rademacher z) or Hutch++ (Meyer et al. 2021).

    Probes are drawn in batches until the standard error is at most ``rtol·|tr|`` (or
    ``max_hvp`` products). With ``blocks``, ``tr(H_SS)`` for every block from the same
    probes (``z_Sᵀ(Hz)_S`` is unbiased for it), as a :class:`BlockResults`.

    >>> A = torch.diag(torch.arange(1.0, 11.0, dtype=torch.float64))
    >>> hessian_trace(A, progress=False).value
    55.0
    """
    t0 = time.perf_counter()
    op, layout = _operator(obj, at, curvature)
    masks, bnames = None, None
    if blocks is not None:
        groups = resolve_blocks(obj, blocks)
        bnames = list(groups)
        n = op_meta(op)[0]
        masks = torch.zeros(len(groups), n, dtype=torch.bool)
        for i, pn in enumerate(groups.values()):
            masks[i, _block_index(obj, pn).cpu()] = True
    est = hutchinson_trace(
        op,
        rtol=rtol,
        max_matvec=max_hvp,
        method=method,
        masks=masks,
        seed=seed,
        batch_size=batch_size,
        progress=_progress(progress),
    )
    _check(est.value, "trace")
    dt = time.perf_counter() - t0
    results = [
        TraceResult(
            value=float(est.value[i]),
            stderr=float(est.stderr[i]),
            n_hvp=est.n_matvec,
            samples=est.samples[:, i],
            method=method,
            curvature=curvature,
            exact_part=float(est.exact_part[i] if len(est.exact_part) > i else 0),
            seconds=dt,
            complete=est.complete,
        )
        for i in range(len(est.value))
    ]
    if bnames is None:
        return results[0]
    return BlockResults(dict(zip(bnames, results)), kind="trace")


@api
def hessian_diagonal(
    obj,
    *,
    n_probes: int = 100,
    at=None,
    seed: int = 0,
    curvature: str = "hessian",
    progress: bool | None = None,
):
    """``diag(H) ≈ mean_z z ⊙ Hz`` over ``n_probes`` Rademacher probes (Hutchinson; as in
    AdaHessian), as :class:`Weights` shaped like the parameters."""
    op, layout = _operator(obj, at, curvature)
    d, _ = hutchinson_diagonal(op, n_probes, seed=seed, progress=_progress(progress))
    _check(d.cpu().numpy(), "diagonal")
    return layout.to_weights(d) if layout is not None else d


@api
def hessian_blocks(
    obj,
    blocks="module",
    *,
    k: int = 1,
    at=None,
    tol: float = 1e-4,
    rtol: float = 0.05,
    max_hvp: int = 1000,
    seed: int = 0,
    curvature: str = "hessian",
    progress: bool | None = None,
) -> BlockResults:
    """One table per block: the top-``k`` eigenvalues of ``H_SS`` and ``tr(H_SS)``."""
    eig = hessian_eigs(
        obj, k, at=at, tol=tol, blocks=blocks, seed=seed, curvature=curvature, progress=progress
    )
    tr = hessian_trace(
        obj,
        at=at,
        rtol=rtol,
        max_hvp=max_hvp,
        blocks=blocks,
        seed=seed,
        curvature=curvature,
        progress=progress,
    )
    rows = {}
    for name in eig:
        e, t = eig[name], tr[name]
        row = {"params": e.n_params}
        row.update({f"λ{i + 1}": float(v) for i, v in enumerate(e.values)})
        row.update({"trace": t.value, "std. error": t.stderr})
        rows[name] = row
    return BlockResults(rows, kind="curvature per block")
