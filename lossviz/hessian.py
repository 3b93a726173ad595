"""Hessian spectra of an :class:`~lossviz.Objective`: extreme eigenpairs (Lanczos),
spectral density (SLQ), trace (Hutchinson / Hutch++), diagonal, and the same per block of
parameters. Every function also accepts a bare symmetric operator or dense matrix.

Every argument is checked before the first product; an interrupt (Ctrl-C) either gives a
visibly partial result (``complete=False``) or propagates (see :mod:`lossviz.interrupt`)."""

from __future__ import annotations

import os
import time
import warnings
from collections.abc import Mapping

import numpy as np
import torch
from torch import Tensor

from . import validate
from .errors import ArgumentTypeError, LossvizError, NonFiniteLossError
from .hutchinson import check_trace_args, hutchinson_diagonal, hutchinson_trace
from .hvp import SubOperator, check_operator, op_meta
from .interrupt import api, keep_partial
from .lanczos import WHICH, check_args, check_v0, lanczos
from .objective import Objective
from .results import BlockResults, DiagonalResult, EigenResult, SpectralDensity, TraceResult
from .slq import slq
from .weights import Weights

CURVATURES = ("hessian", "ggn")


def _progress(progress) -> bool:
    """``progress``: None (on unless ``LOSSVIZ_PROGRESS=0``), True or False."""
    if progress is None:
        return os.environ.get("LOSSVIZ_PROGRESS", "1") not in ("0", "false", "False")
    return validate.boolean(progress, "progress")


def _operator(obj, at, curvature):
    """``(operator, layout)``: the Objective's curvature at ``at``, or a bare operator
    (checked: a dense matrix must be real, finite and symmetric). No product is taken."""
    if isinstance(obj, Objective):
        return obj.operator(at, curvature=curvature), obj.layout
    if at is not None:
        raise LossvizError("at= needs an Objective; an operator is already at a point")
    check_operator(obj, "obj")
    return obj, None


def resolve_blocks(obj: Objective, blocks) -> dict[str, list[str]]:
    """``blocks="module"``: parameters grouped by the module that owns them; or a
    mapping ``block name -> parameter names`` (checked: known, varying, no repeats)."""
    if not isinstance(obj, Objective):
        raise LossvizError("blocks= needs an Objective (its parameter names define blocks)")
    if isinstance(blocks, str):
        if blocks != "module":
            raise LossvizError(
                f"blocks must be 'module' or a mapping name -> parameter names, got {blocks!r}"
            )
        return obj.layout.by_module()
    if isinstance(blocks, Mapping):
        if not blocks:
            raise LossvizError("blocks is an empty mapping: name at least one block")
        out = {}
        for k, v in blocks.items():
            if isinstance(v, str):
                v = [v]
            try:
                names = list(v)
            except TypeError:
                raise ArgumentTypeError(
                    f"blocks[{k!r}] must be a list of parameter names, got {type(v).__name__}"
                ) from None
            bad = [p for p in names if not isinstance(p, str)]
            if bad:
                raise ArgumentTypeError(
                    f"blocks[{k!r}] must hold parameter names (strings), got {bad[:5]!r}"
                )
            if len(set(names)) != len(names):
                dup = sorted({p for p in names if names.count(p) > 1})
                raise LossvizError(f"blocks[{k!r}] names a parameter twice: {dup[:10]}")
            out[str(k)] = names
        unknown = [p for ps in out.values() for p in ps if p not in obj.names]
        if unknown:
            raise LossvizError(
                f"blocks name parameters that do not vary: {unknown[:10]} (the varying ones "
                f"are {obj.names[:10]}{', …' if len(obj.names) > 10 else ''})"
            )
        empty = [k for k, v in out.items() if not v]
        if empty:
            raise LossvizError(f"blocks has empty blocks: {empty}")
        return out
    raise ArgumentTypeError(
        f"blocks must be 'module' or a mapping name -> parameter names, got {type(blocks).__name__}"
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


def _as_v0(obj, v0, layout, n: int):
    """Warm-start vectors (Weights, a list of them, an EigenResult, or tensors) as a
    checked ``(j, n)`` tensor."""
    if v0 is None:
        return None
    if isinstance(v0, EigenResult):
        v0 = v0.vectors
    if isinstance(v0, Tensor):
        return check_v0(v0, n)
    if isinstance(v0, Mapping):
        v0 = [v0]
    if not isinstance(v0, (list, tuple)):
        raise ArgumentTypeError(
            "v0 must be Weights, a list of Weights (e.g. an earlier result's .vectors), an "
            f"EigenResult, or a (j, {n}) tensor; got {type(v0).__name__}"
        )
    if not v0:
        raise LossvizError("v0 is an empty list: give at least one start vector, or None")
    rows = []
    for i, v in enumerate(v0):
        if isinstance(v, Mapping):
            if layout is None:
                raise ArgumentTypeError(f"v0[{i}] is a mapping: a matrix takes tensor vectors")
            rows.append(obj.as_flat(v, name=f"v0[{i}]"))
        elif isinstance(v, Tensor):
            if v.numel() != n:
                raise LossvizError(f"v0[{i}] has {v.numel()} numbers, expected {n}")
            rows.append(v.detach().reshape(-1))
        else:
            raise ArgumentTypeError(f"v0[{i}] must be Weights or a tensor, got {type(v).__name__}")
    dt = torch.promote_types(rows[0].dtype, torch.float32)
    return check_v0(torch.stack([r.to(dt) for r in rows]), n)


def _common(seed, curvature, progress) -> tuple[int, bool]:
    seed = validate.seed(seed)
    validate.choice(curvature, "curvature", CURVATURES)
    return seed, _progress(progress)


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
    run until every returned pair has ``||Hv - λv|| <= tol·|λ|_max``; ``residuals`` are
    those norms divided by ``|λ|_max``. ``which``: ``"largest"``, ``"smallest"``,
    ``"both"`` (k of each end), ``"magnitude"``. ``tol`` in ``(0, 1)`` and not below what
    the dtype resolves (float16 / bfloat16 models: raised to ``4·eps`` with a warning, the
    basis kept in float32 and the residuals checked with true products). ``v0``: Weights
    (or a list, or an EigenResult) to warm-start from. ``blocks="module"`` or a mapping:
    the eigenpairs of each diagonal block ``H_SS`` (a :class:`BlockResults`).

    ``obj`` may also be a dense symmetric matrix (checked for symmetry) or an operator.
    Interrupted (Ctrl-C), the Ritz pairs so far with ``complete=False``.

    >>> A = torch.diag(torch.tensor([3.0, -5.0, 1.0, 0.5], dtype=torch.float64))
    >>> hessian_eigs(A, k=2, which="magnitude", progress=False).values.round(12).tolist()
    [-5.0, 3.0]
    """
    k = validate.integer(k, "k")
    validate.choice(which, "which", WHICH)
    tol = validate.number(tol, "tol", low=0, low_open=True, high=1, high_open=True)
    max_hvp = validate.integer(max_hvp, "max_hvp", none=True)
    block_size = validate.integer(block_size, "block_size", none=True)
    seed, progress = _common(seed, curvature, progress)
    if blocks is not None:
        if v0 is not None:
            raise LossvizError("v0= cannot be combined with blocks= (each block starts afresh)")
        names = resolve_blocks(obj, blocks)
        op, layout = _operator(obj, at, curvature)
        _, dtype, _ = op_meta(op)
        idxs = {b: _block_index(obj, pn) for b, pn in names.items()}
        biggest = max(i.numel() for i in idxs.values())
        # every block's arguments are checked before the first product
        _, tol, max_hvp, _, _ = check_args(
            biggest,
            dtype,
            min(k, biggest),
            which,
            tol,
            max_hvp,
            block_size or 1,
            max_name="max_hvp",
        )
        res, complete = {}, True
        for bname, pnames in names.items():
            idx = idxs[bname]
            sub = SubOperator(op, idx)
            kb = min(k, idx.numel())
            try:
                r = _eigs(
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
            except KeyboardInterrupt:
                if not res or not keep_partial():
                    raise
                complete = False
                break
            res[bname] = r
            if not r.complete:
                complete = False
                break
        if not complete:
            warnings.warn(
                f"hessian_eigs interrupted: {len(res)} of {len(names)} blocks kept",
                stacklevel=3,
            )
        return BlockResults(res, kind=f"{which} eigenvalues", complete=complete)
    op, layout = _operator(obj, at, curvature)
    n, dtype, _ = op_meta(op)
    k, tol, max_hvp, _, _ = check_args(
        n, dtype, k, which, tol, max_hvp, block_size or 1, max_name="max_hvp"
    )
    v0 = _as_v0(obj, v0, layout, n)
    res = _eigs(
        op, k, which, tol, max_hvp, seed, v0, curvature, block_size, progress, layout, None, obj
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
        progress=progress,
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
    ``steps`` fully reorthogonalized Lanczos steps (``min(steps, P)``). ``Σ_i w_i λ_i^p =
    vᵀH^p v`` for ``p <= 2·steps - 1``. An exhausted Krylov space (a zero or low-rank
    Hessian) is handled exactly: the nodes carry all the mass where the spectrum is.
    Interrupted (Ctrl-C), the finished probes (or fewer steps) with ``complete=False``.
    """
    n_probes = validate.integer(n_probes, "n_probes")
    steps = validate.integer(steps, "steps")
    seed, progress = _common(seed, curvature, progress)
    t0 = time.perf_counter()
    op, _ = _operator(obj, at, curvature)
    nodes, weights, n_mv, complete = slq(op, n_probes, steps, seed=seed, progress=progress)
    _check(nodes, "density")
    if not complete:
        warnings.warn(
            f"SLQ interrupted: {nodes.shape[0]} probe(s) × {nodes.shape[1]} steps kept",
            stacklevel=3,
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
    ``max_hvp`` products; ``rtol=0`` spends the whole budget). With ``blocks``,
    ``tr(H_SS)`` for every block from the same probes (``z_Sᵀ(Hz)_S`` is unbiased for
    it), as a :class:`BlockResults`. Interrupted (Ctrl-C) after two probes, the estimate
    so far with ``complete=False``.

    >>> A = torch.diag(torch.arange(1.0, 11.0, dtype=torch.float64))
    >>> hessian_trace(A, progress=False).value
    55.0
    """
    validate.choice(method, "method", ("hutchinson", "hutch++"))
    rtol = validate.number(rtol, "rtol", low=0)
    max_hvp = validate.integer(max_hvp, "max_hvp")
    batch_size = validate.integer(batch_size, "batch_size", none=True)
    seed, progress = _common(seed, curvature, progress)
    if blocks is not None and method == "hutch++":
        raise LossvizError(
            "method='hutch++' is for the whole Hessian, not per block: use blocks=None"
        )
    t0 = time.perf_counter()
    groups = resolve_blocks(obj, blocks) if blocks is not None else None
    op, layout = _operator(obj, at, curvature)
    n = op_meta(op)[0]
    check_trace_args(n, rtol, max_hvp, method, batch_size, max_name="max_hvp")
    masks, bnames = None, None
    if groups is not None:
        bnames = list(groups)
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
        progress=progress,
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
    return BlockResults(dict(zip(bnames, results)), kind="trace", complete=est.complete)


@api
def hessian_diagonal(
    obj,
    *,
    n_probes: int = 100,
    at=None,
    seed: int = 0,
    curvature: str = "hessian",
    batch_size: int | None = None,
    progress: bool | None = None,
):
    """``diag(H) ≈ mean_z z ⊙ Hz`` over ``n_probes`` Rademacher probes (Hutchinson; as in
    AdaHessian), as a :class:`~lossviz.results.DiagonalResult`: :class:`Weights` shaped
    like the parameters (in at least float32) that also carries ``stderr`` (Weights),
    ``n_probes`` (done) and ``complete``. Interrupted (Ctrl-C), the estimate from the
    probes finished so far, ``complete=False`` (and a warning). For a bare matrix or
    operator, the diagonal as a tensor."""
    n_probes = validate.integer(n_probes, "n_probes")
    batch_size = validate.integer(batch_size, "batch_size", none=True)
    seed, progress = _common(seed, curvature, progress)
    t0 = time.perf_counter()
    op, layout = _operator(obj, at, curvature)
    est = hutchinson_diagonal(op, n_probes, batch_size=batch_size, seed=seed, progress=progress)
    _check(est.mean.cpu().numpy(), "diagonal")
    if not est.complete:
        warnings.warn(
            f"hessian_diagonal interrupted: the estimate from {est.n_probes} of {n_probes} probes",
            stacklevel=3,
        )
    if layout is None:
        return est.mean
    return DiagonalResult(
        layout.to_weights(est.mean),
        stderr=layout.to_weights(est.stderr),
        n_probes=est.n_probes,
        requested=n_probes,
        complete=est.complete,
        curvature=curvature,
        seconds=time.perf_counter() - t0,
    )


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
    """One table per block: the top-``k`` eigenvalues of ``H_SS`` and ``tr(H_SS)``
    (``max_hvp`` is the trace's budget). Every argument is checked before the first
    product. An interrupt (Ctrl-C) propagates: half a table is not returned."""
    if not isinstance(obj, Objective):
        raise ArgumentTypeError(
            f"obj must be an Objective (blocks are named parameters), got {type(obj).__name__}"
        )
    k = validate.integer(k, "k")
    tol = validate.number(tol, "tol", low=0, low_open=True, high=1, high_open=True)
    rtol = validate.number(rtol, "rtol", low=0)
    max_hvp = validate.integer(max_hvp, "max_hvp")
    seed, progress = _common(seed, curvature, progress)
    groups = resolve_blocks(obj, blocks)
    smallest = min(_block_index(obj, pn).numel() for pn in groups.values())
    check_trace_args(smallest, rtol, max_hvp, "hutchinson", None, max_name="max_hvp")
    op, _ = _operator(obj, at, curvature)
    biggest = max(_block_index(obj, pn).numel() for pn in groups.values())
    dtype = op_meta(op)[1]
    _, tol, _, _, _ = check_args(biggest, dtype, min(k, biggest), "largest", tol, None, 1)
    kw = dict(at=at, seed=seed, curvature=curvature, progress=progress)
    eig = hessian_eigs(obj, k, tol=tol, blocks=groups, **kw)
    tr = hessian_trace(obj, rtol=rtol, max_hvp=max_hvp, blocks=groups, **kw)
    rows = {}
    for name in eig:
        e, t = eig[name], tr[name]
        row = {"params": e.n_params}
        row.update({f"λ{i + 1}": float(v) for i, v in enumerate(e.values)})
        row.update({"trace": t.value, "std. error": t.stderr})
        rows[name] = row
    return BlockResults(rows, kind="curvature per block")
