"""Hessian spectra of an :class:`~lossviz.Objective`.

Extreme eigenpairs (Lanczos), spectral density (SLQ), trace (Hutchinson / Hutch++),
diagonal, and the same per block of parameters. Every function also accepts a bare
symmetric operator or dense matrix.

Every argument is checked before the first product; an interrupt (Ctrl-C) either gives a
visibly partial result (``complete=False``) or propagates (see :mod:`lossviz.interrupt`).
"""

from __future__ import annotations

import time
from collections.abc import Mapping

import numpy as np
import torch
from torch import Tensor

from . import validate
from .basis import check_basis
from .deprecation import renamed
from .errors import ArgumentTypeError, LossvizError, NonFiniteLossError, warn
from .hutchinson import check_trace_args, hutchinson_diagonal, hutchinson_trace
from .hvp import SubOperator, check_operator, op_meta, product_methods, work_dtype
from .interrupt import api, keep_partial
from .lanczos import WHICH, check_args, check_v0, lanczos
from .objective import Objective
from .provenance import Provenance
from .results import BlockResults, DiagonalResult, EigenResult, SpectralDensity, TraceResult
from .slq import slq
from .weights import Weights

CURVATURES = ("hessian", "ggn")


def _operator(obj, at, curvature):
    """``(operator, layout)``: the Objective's curvature at ``at``, or a bare operator.

    A bare operator is checked (a dense matrix must be real, finite and symmetric). No
    product is taken.
    """
    if isinstance(obj, Objective):
        return obj.operator(at, curvature=curvature), obj.layout
    if at is not None:
        raise LossvizError("at= needs an Objective; an operator is already at a point")
    check_operator(obj, "obj")
    return obj, None


def resolve_groups(obj: Objective, groups, name: str = "groups") -> dict[str, list[str]]:
    """Parameter groups (the diagonal blocks ``H_SS``) as ``group name -> parameter names``.

    Args:
        obj: the Objective whose varying parameters are grouped.
        groups: ``"module"`` (parameters grouped by the module that owns them,
            :meth:`lossviz.weights.Layout.by_module`) or a mapping ``group name ->
            parameter names`` (checked: known, varying, no repeats, none empty).
        name: the argument's name in error messages.

    Returns:
        A dict ``group name -> [parameter names]``.

    Raises:
        ArgumentTypeError: ``groups`` (or a group) has the wrong type.
        LossvizError: ``obj`` is not an Objective, ``groups`` is a string other than
            ``"module"`` or an empty mapping, or a group is empty or names unknown
            or repeated parameters.
    """
    if not isinstance(obj, Objective):
        raise LossvizError(f"{name}= needs an Objective (its parameter names define the groups)")
    if isinstance(groups, str):
        if groups != "module":
            raise LossvizError(
                f"{name} must be 'module' or a mapping name -> parameter names, got {groups!r}"
            )
        return obj.layout.by_module()
    if isinstance(groups, Mapping):
        if not groups:
            raise LossvizError(f"{name} is an empty mapping: name at least one group")
        out = {}
        for k, v in groups.items():
            if isinstance(v, str):
                v = [v]
            try:
                names = list(v)
            except TypeError:
                raise ArgumentTypeError(
                    f"{name}[{k!r}] must be a list of parameter names, got {type(v).__name__}"
                ) from None
            bad = [p for p in names if not isinstance(p, str)]
            if bad:
                raise ArgumentTypeError(
                    f"{name}[{k!r}] must hold parameter names (strings), got {bad[:5]!r}"
                )
            if len(set(names)) != len(names):
                dup = sorted({p for p in names if names.count(p) > 1})
                raise LossvizError(f"{name}[{k!r}] names a parameter twice: {dup[:10]}")
            out[str(k)] = names
        unknown = [p for ps in out.values() for p in ps if p not in obj.names]
        if unknown:
            raise LossvizError(
                f"{name} name parameters that do not vary: {unknown[:10]} (the varying ones "
                f"are {obj.names[:10]}{', …' if len(obj.names) > 10 else ''})"
            )
        empty = [k for k, v in out.items() if not v]
        if empty:
            raise LossvizError(f"{name} has empty groups: {empty}")
        return out
    raise ArgumentTypeError(
        f"{name} must be 'module' or a mapping name -> parameter names, got {type(groups).__name__}"
    )


def resolve_blocks(obj: Objective, blocks) -> dict[str, list[str]]:
    """:func:`resolve_groups` for an argument called ``blocks`` (the spectrum dashboard's).

    Args:
        obj: The Objective whose varying parameters are grouped.
        blocks: ``"module"`` or a mapping ``block name -> parameter names``.

    Returns:
        A dict ``block name -> [parameter names]``.

    Raises:
        ArgumentTypeError: ``blocks`` (or a block) has the wrong type.
        LossvizError: as :func:`resolve_groups`, naming ``blocks``.
    """
    return resolve_groups(obj, blocks, name="blocks")


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
    """An exact record of the point ``at`` (the model's own for ``None``).

    A private copy of its tensors (:meth:`Objective.snapshot`). Compared with ``==``
    later, it tells whether the point still holds, whatever changed the weights in place
    (an optimizer step, ``.data``, ``load_state_dict``).

    Args:
        obj: The Objective.
        at: The point, or None for the model's current weights.

    Returns:
        The snapshot (compare it with ``==``).
    """
    return obj.snapshot(at)


def _attach(res, obj, at, kernel: str, curvature: str, *, version: bool = False):
    """Set the result's provenance.

    The saved facts, and the Objective and the point kept live (for ``res.dashboard()``);
    with ``version``, an exact record of the point too.
    """
    v = point_version(obj, at) if version and isinstance(obj, Objective) else None
    res.provenance = Provenance.of(obj, kernel=kernel, at=at, at_version=v, curvature=curvature)
    return res


def _check(values, what: str):
    if not np.all(np.isfinite(values)):
        raise NonFiniteLossError(f"the curvature products are not finite ({what})")


def _as_v0(obj, v0, layout, n: int):
    """Warm-start vectors as a checked ``(j, n)`` tensor.

    ``v0`` may be Weights, a list of them, an EigenResult, or tensors.
    """
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
    return seed, validate.progress(progress)


@api
@renamed(blocks="groups")
def hessian_eigs(
    obj,
    k: int = 5,
    *,
    which: str = "largest",
    at=None,
    tol: float = 1e-4,
    max_hvp: int | None = None,
    groups=None,
    seed: int = 0,
    v0=None,
    curvature: str = "hessian",
    block_size: int | None = None,
    check: bool = False,
    progress: bool | None = None,
    basis_device=None,
    basis_dtype=None,
):
    """The ``k`` extreme eigenpairs of the Hessian ``∇²L(θ)`` (or the Gauss-Newton matrix).

    Thick-restart Lanczos with full reorthogonalization (:func:`lossviz.lanczos.lanczos`;
    Lanczos 1950; Wu & Simon 2000, "Thick-Restart Lanczos Method for Large Symmetric
    Eigenvalue Problems"), run until every returned pair has
    ``||Hv - λv|| <= tol·|λ|_max``. ``residuals`` are
    those norms divided by ``|λ|_max``, from the Lanczos recurrence (equal to the true
    residuals up to rounding, with full reorthogonalization); with ``check=True`` they
    are recomputed with ``k`` true products (counted in ``n_hvp``), and float16 /
    bfloat16 models always get true products (their ``tol`` is raised to ``4·eps`` with a
    warning and the basis kept in float32). A pair is ``converged`` when its reported
    residual is at most ``tol``.

    Args:
        obj: an :class:`~lossviz.Objective`, a dense symmetric matrix (checked for
            symmetry) or an operator (``shape``, ``dtype``, ``device``, ``apply`` / ``@``).
        k: eigenpairs (``which="both"``: ``k`` of each end).
        which: ``"largest"``, ``"smallest"``, ``"both"``, ``"magnitude"``.
        at: the point (default: the model's current weights); Objective only.
        tol: in ``(0, 1)``, not below what the dtype resolves.
        max_hvp: product budget (default ``max(1000, 40·basis)``).
        groups: ``"module"`` or a mapping ``group -> parameter names``: the eigenpairs of
            each diagonal block ``H_SS`` (a :class:`~lossviz.results.BlockResults`).
            ``blocks=`` is its deprecated name.
        seed: the random start vectors.
        v0: Weights (or a list, or an EigenResult, or a ``(j, P)`` tensor) to warm-start
            from; not with ``groups`` (each group starts afresh: an error).
        curvature: ``"hessian"`` or ``"ggn"`` (Gauss-Newton ``Jᵀ H_ℓ J``).
        block_size: vectors per product (default: 4 on a GPU where batched products are
            at least twice as fast per vector, else 1).
        check: recompute the residuals with true products.
        progress: a progress bar (default on unless ``LOSSVIZ_PROGRESS=0``).
        basis_device: where the Lanczos basis is stored (default: the model's device);
            ``"cpu"`` keeps it in host memory (pinned under a CUDA model) and streams it
            to the GPU in blocks (:mod:`lossviz.basis`; docs/memory.md).
        basis_dtype: the basis' storage precision (default: the working precision);
            ``torch.float32`` under a float64 model, ``torch.bfloat16`` under a float32
            one. The eigenvalues are then accurate to about ``eps · |λ|_max`` of the
            storage dtype: a ``tol`` below ``4·eps`` of it is raised to it (a warning),
            and bfloat16 checks residuals with true products.

    Memory:
        Besides the model's gradient graph (what one Hessian-vector product holds): the
        basis, ``(m + b) · n`` numbers of ``basis_dtype`` (``m + b`` =
        :func:`lossviz.lanczos.basis_rows`, 31 for ``k <= 5``, ``n`` the parameters,
        ``b`` = ``block_size``), on ``basis_device``; on the model's device about
        ``4 · b · n`` working numbers and the ``k · n`` returned vectors (twice that with
        ``check``); one streamed block (at most 64 MiB on a GPU, 4 MiB on a CPU) when
        the basis is elsewhere.
        With ``groups``, the same per group with ``n`` its size.

    Returns:
        :class:`~lossviz.results.EigenResult` (``values``, ``vectors`` as Weights,
        ``residuals``, ``converged``, ``n_hvp``); with ``groups``, a ``BlockResults`` of
        them. Interrupted (Ctrl-C), the Ritz pairs so far with ``complete=False``.

    Raises:
        LossvizError: a bad value (``k`` above the size, ``tol`` out of range, ``v0``
            with ``groups``, unknown parameters in ``groups``, an unavailable
            ``basis_device``, a ``basis_dtype`` that is not float64 / float32 / bfloat16
            or more precise than the products, ...).
        ArgumentTypeError: an argument of the wrong type.
        NonFiniteLossError: the products are not finite.

    Examples:
        >>> A = torch.diag(torch.tensor([3.0, -5.0, 1.0, 0.5], dtype=torch.float64))
        >>> hessian_eigs(A, k=2, which="magnitude", progress=False).values.round(12).tolist()
        [-5.0, 3.0]
    """
    k = validate.integer(k, "k")
    validate.choice(which, "which", WHICH)
    tol = validate.number(tol, "tol", low=0, low_open=True, high=1, high_open=True)
    max_hvp = validate.integer(max_hvp, "max_hvp", none=True)
    block_size = validate.integer(block_size, "block_size", none=True)
    check = validate.boolean(check, "check")
    seed, progress = _common(seed, curvature, progress)
    common = dict(
        which=which,
        tol=tol,
        max_hvp=max_hvp,
        seed=seed,
        curvature=curvature,
        block_size=block_size,
        check=check,
        progress=progress,
        obj=obj,
    )
    if groups is not None:
        if v0 is not None:
            raise LossvizError("v0= cannot be combined with groups= (each group starts afresh)")
        names = resolve_groups(obj, groups)
        op, layout = _operator(obj, at, curvature)
        _, dtype, device = op_meta(op)
        bdev, bdt = check_basis(basis_device, basis_dtype, device, work_dtype(dtype))
        common.update(basis_device=bdev, basis_dtype=bdt)
        idxs = {b: _block_index(obj, pn) for b, pn in names.items()}
        biggest = max(i.numel() for i in idxs.values())
        # every group's arguments are checked before the first product
        _, tol, max_hvp, _, _ = check_args(
            biggest,
            dtype,
            min(k, biggest),
            which,
            tol,
            max_hvp,
            block_size or 1,
            max_name="max_hvp",
            basis_dtype=bdt,
        )
        common.update(tol=tol, max_hvp=max_hvp)
        res, complete = {}, True
        for bname, pnames in names.items():
            idx = idxs[bname]
            try:
                r = _eigs(
                    SubOperator(op, idx),
                    k=min(k, idx.numel()),
                    v0=None,
                    layout=layout,
                    names=set(pnames),
                    **common,
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
            warn(f"hessian_eigs interrupted: {len(res)} of {len(names)} groups kept")
        res = BlockResults(results=res, kind=f"{which} eigenvalues", complete=complete)
        return _attach(res, obj, at, "hessian_eigs", curvature)
    op, layout = _operator(obj, at, curvature)
    n, dtype, device = op_meta(op)
    bdev, bdt = check_basis(basis_device, basis_dtype, device, work_dtype(dtype))
    k, tol, max_hvp, _, _ = check_args(
        n, dtype, k, which, tol, max_hvp, block_size or 1, max_name="max_hvp", basis_dtype=bdt
    )
    common.update(tol=tol, max_hvp=max_hvp, basis_device=bdev, basis_dtype=bdt)
    v0 = _as_v0(obj, v0, layout, n)
    res = _eigs(op, k=k, v0=v0, layout=layout, names=None, **common)
    return _attach(res, obj, at, "hessian_eigs", curvature, version=True)


def _auto_block_size(obj) -> int:
    """Block Lanczos pays off when batched products are much cheaper per vector."""
    if not isinstance(obj, Objective):
        return 1
    t = product_methods(obj).times.get("hessian")
    if not t or obj.device.type != "cuda":
        return 1
    best = min(t.values())
    return 4 if best < 0.5 * t.get("loop", best) else 1


def _eigs(
    op,
    *,
    k: int,
    which: str,
    tol: float,
    max_hvp: int | None,
    seed: int,
    v0,
    curvature: str,
    block_size: int | None,
    check: bool,
    progress: bool,
    layout,
    names,
    obj,
    basis_device=None,
    basis_dtype=None,
) -> EigenResult:
    """One Lanczos solve on ``op`` as an EigenResult.

    Vectors come as Weights over ``names`` of ``layout``, or tensors without a layout.
    """
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
        check=check,
        progress=progress,
        basis_device=basis_device,
        basis_dtype=basis_dtype,
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
    basis_device=None,
    basis_dtype=None,
) -> SpectralDensity:
    """Spectral density by stochastic Lanczos quadrature (SLQ).

    Ghorbani, Krishnan, Xiao 2019, "An Investigation into Neural Net Optimization via
    Hessian Eigenvalue Density"; Papyan 2019; Lin, Saad, Yang 2016, "Approximating
    Spectral Densities of Large Matrices". ``n_probes`` Rademacher probes ``v``
    (normalized to unit length) advance in lockstep (batched products), each with
    ``m = min(steps, P)`` fully reorthogonalized Lanczos steps. The eigenvalues ``λ_i`` of
    each probe's tridiagonal ``T`` are the nodes and the squared first components of its
    eigenvectors the weights ``w_i`` (they sum to 1); the quadrature is exact for
    polynomials of degree up to ``2m - 1``::

        Σ_i w_i λ_i^p = vᵀ H^p v   (p <= 2m - 1)

    The smoothed density (:meth:`~lossviz.results.SpectralDensity.density`) is
    ``φ(t) = mean over probes of Σ_i w_i N(t; λ_i, σ²)``. An exhausted Krylov space (a
    zero or low-rank Hessian) is handled exactly: the nodes carry all the mass where the
    spectrum is.

    Args:
        obj: An :class:`~lossviz.Objective`, a dense symmetric matrix or an operator
            (``shape``, ``dtype``, ``device``, ``apply`` / ``@``).
        n_probes: The number of random probes.
        steps: Lanczos steps per probe (capped at the number of parameters).
        at: The point (default: the model's current weights); Objective only.
        seed: The seed of the probes.
        curvature: ``"hessian"`` or ``"ggn"`` (Gauss-Newton ``Jᵀ H_ℓ J``).
        progress: A progress bar (default on unless ``LOSSVIZ_PROGRESS=0``).
        basis_device: Where the probes' Lanczos bases are stored (default: the model's
            device; ``"cpu"``: host memory, pinned under a CUDA model).
        basis_dtype: Their storage precision (default: the working precision);
            ``torch.float32`` under a float64 model halves their memory, and the nodes
            and weights are then accurate to about ``eps · |λ|_max`` of float32.

    Memory:
        Besides the model's gradient graph for a batched product of ``g`` vectors: the
        bases of ``g`` probes at a time, ``g · (m + 1) · n`` numbers of ``basis_dtype``
        on ``basis_device`` (``m = min(steps, n)``; ``g`` as many of the ``n_probes``
        as fit in 75% of the free GPU memory or 30% of the free host memory), the
        ``n_probes · n`` probes and about ``3 · g · n`` working numbers on the model's
        device.

    Returns:
        A :class:`~lossviz.results.SpectralDensity` (``nodes`` and ``weights`` of shape
        ``(n_probes, m)``, ``n_hvp = n_probes·m``). Interrupted (Ctrl-C), the finished
        probes (or all probes with fewer steps) with ``complete=False`` and a warning.

    Raises:
        ArgumentTypeError: if an argument has the wrong type (``obj`` neither an
            Objective nor a matrix / operator, a non-integer count or seed, a non-bool
            ``progress``), or ``at`` is not a point.
        LossvizError: if a value is out of range (a count below 1, a negative seed, an
            unknown ``curvature``), ``at`` is given with a bare operator, or a dense
            matrix is not square, finite and symmetric, or ``basis_device`` /
            ``basis_dtype`` is not usable (an unavailable device; a dtype other than
            float64 / float32 / bfloat16 or more precise than the products).
        CheckpointError: if ``at`` does not match the model's parameters.
        NonFiniteLossError: if the loss or the curvature products are not finite.

    Examples:
        >>> A = torch.diag(torch.tensor([1.0, 2.0, 3.0], dtype=torch.float64))
        >>> d = hessian_density(A, n_probes=2, steps=3, progress=False)
        >>> [round(float((w * x**2).sum()), 12) for x, w in zip(d.nodes, d.weights)]
        [4.666666666667, 4.666666666667]
    """
    n_probes = validate.integer(n_probes, "n_probes")
    steps = validate.integer(steps, "steps")
    seed, progress = _common(seed, curvature, progress)
    t0 = time.perf_counter()
    op, _ = _operator(obj, at, curvature)
    _, dtype, device = op_meta(op)
    bdev, bdt = check_basis(basis_device, basis_dtype, device, work_dtype(dtype))
    nodes, weights, n_mv, complete = slq(
        op,
        n_probes,
        steps,
        seed=seed,
        progress=progress,
        basis_device=bdev,
        basis_dtype=bdt,
    )
    _check(nodes, "density")
    if not complete:
        warn(f"SLQ interrupted: {nodes.shape[0]} probe(s) × {nodes.shape[1]} steps kept")
    res = SpectralDensity(
        complete=complete,
        nodes=nodes,
        weights=weights,
        n_hvp=n_mv,
        n_params=op_meta(op)[0],
        curvature=curvature,
        seconds=time.perf_counter() - t0,
    )
    return _attach(res, obj, at, "hessian_density", curvature, version=True)


@api
@renamed(blocks="groups")
def hessian_trace(
    obj,
    *,
    method: str = "hutchinson",
    rtol: float = 0.01,
    max_hvp: int = 1000,
    at=None,
    seed: int = 0,
    groups=None,
    curvature: str = "hessian",
    batch_size: int | None = None,
    progress: bool | None = None,
):
    """``tr(H)`` by Hutchinson or Hutch++.

    Hutchinson 1989, "A Stochastic Estimator of the Trace of the Influence Matrix for
    Laplacian Smoothing Splines": ``tr(H) ≈ mean_z zᵀHz`` over Rademacher ``z``
    (``E[zzᵀ] = I``). Hutch++ (Meyer, Musco, Musco, Woodruff 2021, "Hutch++: Optimal
    Stochastic Trace Estimation"): with ``Q = orth(H S)`` for a Rademacher sketch ``S``
    of ``s`` columns (``s = min(P, max(max_hvp // 10, 4), 50)``, ``2s`` products),
    ``tr(H) ≈ tr(Qᵀ H Q) + mean_z zᵀ (I - QQᵀ) H (I - QQᵀ) z``; it reduces the variance when
    the spectrum decays. Probes are drawn in batches (at least 10, budget allowing) until
    the standard error of the mean ``std(zᵀHz, ddof=1)/√n`` is at most ``rtol·|tr|`` (or
    ``max_hvp`` products; ``rtol=0`` spends the whole budget).

    Args:
        obj: An :class:`~lossviz.Objective`, a dense symmetric matrix or an operator
            (``shape``, ``dtype``, ``device``, ``apply`` / ``@``).
        method: ``"hutchinson"`` or ``"hutch++"``.
        rtol: The relative standard error to stop at (``>= 0``).
        max_hvp: The product budget (at least 2; Hutch++ needs ``2s + 2``).
        at: The point (default: the model's current weights); Objective only.
        seed: The seed of the probes.
        groups: ``"module"`` or a mapping ``group -> parameter names``: ``tr(H_SS)`` for
            every group from the same probes (``z_Sᵀ(Hz)_S`` is unbiased for it), as a
            :class:`~lossviz.results.BlockResults`; Objective and Hutchinson only.
            ``blocks=`` is its deprecated name.
        curvature: ``"hessian"`` or ``"ggn"`` (Gauss-Newton ``Jᵀ H_ℓ J``).
        batch_size: Probes per batched product (default 50 on a GPU, 16 on the CPU).
        progress: A progress bar (default on unless ``LOSSVIZ_PROGRESS=0``).

    Memory:
        Besides the model's gradient graph for a batched product of ``c`` vectors
        (``c = batch_size``): about ``4 · c · n`` working numbers (probes, products,
        their element-wise product; ``n`` the parameters); Hutch++ keeps ``2 · s · n``
        more (the orthonormal sketch and its products); with ``groups``, a ``G × n``
        mask of the working dtype (``G`` groups).

    Returns:
        A :class:`~lossviz.results.TraceResult` (``value``, ``stderr``, ``samples``,
        ``n_hvp``; ``exact_part`` the sketched ``tr(QᵀHQ)`` of Hutch++); with ``groups``,
        a ``BlockResults`` of them. Interrupted (Ctrl-C) after two probes, the estimate so
        far with ``complete=False``.

    Raises:
        ArgumentTypeError: if an argument has the wrong type (``obj`` neither an
            Objective nor a matrix / operator, a non-integer count or seed, a non-bool
            ``progress``), or ``at`` is not a point.
        LossvizError: if a value is out of range (a count below 1, a negative seed, an
            unknown ``curvature``), ``at`` is given with a bare operator, or a dense
            matrix is not square, finite and symmetric.
        CheckpointError: if ``at`` does not match the model's parameters.
        NonFiniteLossError: if the loss or the curvature products are not finite.
        LossvizError: also if ``method`` is unknown, ``max_hvp`` is below what the method
            needs, ``method="hutch++"`` is combined with ``groups``, or ``groups`` is
            given with a bare operator or names unknown parameters.

    Examples:
        >>> A = torch.diag(torch.arange(1.0, 11.0, dtype=torch.float64))
        >>> hessian_trace(A, progress=False).value  # zᵀAz = tr(A) for a diagonal A
        55.0
    """
    validate.choice(method, "method", ("hutchinson", "hutch++"))
    rtol = validate.number(rtol, "rtol", low=0)
    max_hvp = validate.integer(max_hvp, "max_hvp")
    batch_size = validate.integer(batch_size, "batch_size", none=True)
    seed, progress = _common(seed, curvature, progress)
    if groups is not None and method == "hutch++":
        raise LossvizError(
            "method='hutch++' is for the whole Hessian, not per group: use groups=None"
        )
    t0 = time.perf_counter()
    groups = resolve_groups(obj, groups) if groups is not None else None
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
        return _attach(results[0], obj, at, "hessian_trace", curvature)
    res = BlockResults(results=dict(zip(bnames, results)), kind="trace", complete=est.complete)
    return _attach(res, obj, at, "hessian_trace", curvature)


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
    """The Hessian's diagonal by Hutchinson's estimator: ``diag(H) ≈ mean_z z ⊙ Hz``.

    Over ``n_probes`` Rademacher probes ``z``; Bekas, Kokiopoulou, Saad 2007, "An
    Estimator for the Diagonal of a Matrix"; as in AdaHessian (Yao, Gholami, Shen,
    Mustafa, Keutzer, Mahoney 2021, "ADAHESSIAN: An Adaptive Second Order Optimizer for
    Machine Learning"). The standard error of each entry is ``std(z ⊙ Hz, ddof=1)/√n``.

    Args:
        obj: An :class:`~lossviz.Objective`, a dense symmetric matrix or an operator
            (``shape``, ``dtype``, ``device``, ``apply`` / ``@``).
        n_probes: The number of probes.
        at: The point (default: the model's current weights); Objective only.
        seed: The seed of the probes.
        curvature: ``"hessian"`` or ``"ggn"`` (Gauss-Newton ``Jᵀ H_ℓ J``).
        batch_size: Probes per batched product (default 50 on a GPU, 16 on the CPU).
        progress: A progress bar (default on unless ``LOSSVIZ_PROGRESS=0``).

    Memory:
        Besides the model's gradient graph for a batched product of ``c`` vectors
        (``c = batch_size``): two float64 sums of ``n`` numbers and about ``4 · c · n``
        working numbers (probes, products, their element-wise product); the result,
        ``2 · n`` numbers (mean and standard error).

    Returns:
        For an Objective, a :class:`~lossviz.results.DiagonalResult`: :class:`Weights`
        shaped like the parameters (in at least float32) that also carries ``stderr``
        (Weights; NaN with one probe), ``n_probes`` (done) and ``complete``. For a bare
        matrix or operator, the diagonal as a ``(P,)`` tensor. Interrupted (Ctrl-C), the
        estimate from the probes finished so far, ``complete=False`` (and a warning).

    Raises:
        ArgumentTypeError: if an argument has the wrong type (``obj`` neither an
            Objective nor a matrix / operator, a non-integer count or seed, a non-bool
            ``progress``), or ``at`` is not a point.
        LossvizError: if a value is out of range (a count below 1, a negative seed, an
            unknown ``curvature``), ``at`` is given with a bare operator, or a dense
            matrix is not square, finite and symmetric.
        CheckpointError: if ``at`` does not match the model's parameters.
        NonFiniteLossError: if the loss or the curvature products are not finite.

    Examples:
        >>> A = torch.tensor([[2.0, 1.0], [1.0, 3.0]], dtype=torch.float64)
        >>> d = hessian_diagonal(A, n_probes=64, progress=False)
        >>> bool(torch.allclose(d, torch.tensor([2.0, 3.0], dtype=torch.float64), atol=0.5))
        True
    """
    n_probes = validate.integer(n_probes, "n_probes")
    batch_size = validate.integer(batch_size, "batch_size", none=True)
    seed, progress = _common(seed, curvature, progress)
    t0 = time.perf_counter()
    op, layout = _operator(obj, at, curvature)
    est = hutchinson_diagonal(op, n_probes, batch_size=batch_size, seed=seed, progress=progress)
    _check(est.mean.cpu().numpy(), "diagonal")
    if not est.complete:
        warn(f"hessian_diagonal interrupted: the estimate from {est.n_probes} of {n_probes} probes")
    if layout is None:
        return est.mean
    res = DiagonalResult(
        layout.to_weights(est.mean),
        stderr=layout.to_weights(est.stderr),
        n_probes=est.n_probes,
        requested=n_probes,
        complete=est.complete,
        curvature=curvature,
        seconds=time.perf_counter() - t0,
    )
    return _attach(res, obj, at, "hessian_diagonal", curvature)


@api
@renamed(blocks="groups")
def hessian_blocks(
    obj,
    groups="module",
    *,
    k: int = 1,
    at=None,
    tol: float = 1e-4,
    rtol: float = 0.05,
    max_hvp: int = 1000,
    seed: int = 0,
    curvature: str = "hessian",
    progress: bool | None = None,
    basis_device=None,
    basis_dtype=None,
) -> BlockResults:
    """One table row per parameter group ``S``: top eigenvalues and trace of ``H_SS``.

    The top-``k`` eigenvalues of the diagonal block ``H_SS`` (:func:`hessian_eigs` with
    ``groups``) and ``tr(H_SS)`` (:func:`hessian_trace` with ``groups``), with its
    standard error. An interrupt (Ctrl-C) propagates: half a table is not returned.

    Args:
        obj: an :class:`~lossviz.Objective`.
        groups: ``"module"`` or a mapping ``group -> parameter names`` (``blocks=`` is
            its deprecated name).
        k: eigenvalues per group.
        at: the point (default: the model's current weights).
        tol: the eigenvalues' residual tolerance (as :func:`hessian_eigs`).
        rtol: the trace's relative standard error target (as :func:`hessian_trace`).
        max_hvp: the product budget of each group's eigen solve and of the trace
            estimate (shared by all groups: the same probes).
        seed: the random start vectors and probes.
        curvature: ``"hessian"`` or ``"ggn"``.
        progress: progress bars (default on unless ``LOSSVIZ_PROGRESS=0``).
        basis_device: where each group's Lanczos basis is stored (as
            :func:`hessian_eigs`).
        basis_dtype: its storage precision (as :func:`hessian_eigs`).

    Memory:
        The larger of :func:`hessian_eigs` on the biggest group (its basis is
        ``basis_rows(n_S, k) · n_S`` numbers for ``n_S`` parameters in the group, the
        products still ``n`` wide) and :func:`hessian_trace` with ``groups``.

    Returns:
        :class:`~lossviz.results.BlockResults`: ``group -> {"params", "λ1", …, "trace",
        "std. error"}``.

    Raises:
        ArgumentTypeError: if ``obj`` is not an Objective, or an argument has the wrong
            type; checked before the first product.
        LossvizError: if a value is out of range or ``groups`` names unknown parameters;
            checked before the first product.
        NonFiniteLossError: if the curvature products are not finite.
    """
    if not isinstance(obj, Objective):
        raise ArgumentTypeError(
            f"obj must be an Objective (groups are named parameters), got {type(obj).__name__}"
        )
    k = validate.integer(k, "k")
    tol = validate.number(tol, "tol", low=0, low_open=True, high=1, high_open=True)
    rtol = validate.number(rtol, "rtol", low=0)
    max_hvp = validate.integer(max_hvp, "max_hvp")
    seed, progress = _common(seed, curvature, progress)
    groups = resolve_groups(obj, groups)
    smallest = min(_block_index(obj, pn).numel() for pn in groups.values())
    check_trace_args(smallest, rtol, max_hvp, "hutchinson", None, max_name="max_hvp")
    op, _ = _operator(obj, at, curvature)
    biggest = max(_block_index(obj, pn).numel() for pn in groups.values())
    _, dtype, device = op_meta(op)
    bdev, bdt = check_basis(basis_device, basis_dtype, device, work_dtype(dtype))
    _, tol, _, _, _ = check_args(
        biggest,
        dtype,
        min(k, biggest),
        "largest",
        tol,
        max_hvp,
        1,
        max_name="max_hvp",
        basis_dtype=bdt,
    )
    kw = dict(at=at, seed=seed, curvature=curvature, progress=progress, max_hvp=max_hvp)
    eig = hessian_eigs(obj, k, tol=tol, groups=groups, basis_device=bdev, basis_dtype=bdt, **kw)
    tr = hessian_trace(obj, rtol=rtol, groups=groups, **kw)
    rows = {}
    for name in eig:
        e, t = eig[name], tr[name]
        row = {"params": e.n_params}
        row.update({f"λ{i + 1}": float(v) for i, v in enumerate(e.values)})
        row.update({"trace": t.value, "std. error": t.stderr})
        rows[name] = row
    res = BlockResults(results=rows, kind="curvature per block")
    return _attach(res, obj, at, "hessian_blocks", curvature)
