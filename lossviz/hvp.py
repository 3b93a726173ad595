"""Hessian- and Gauss-Newton-vector products on flat weight vectors.

Three ways to compute ``H v`` for ``k`` vectors ``V`` (``(k, P)``):

- ``"loop"``: reverse-over-reverse on a cached gradient graph, one ``autograd.grad`` per
  vector (PyHessian's trick: the forward and first backward are done once per point);
- ``"batched"``: the same cached graph, all vectors in one ``autograd.grad`` call with
  ``is_grads_batched=True`` (vmap over the backward);
- ``"fwd"``: forward-over-reverse, ``vmap(jvp(grad(L)))`` with ``torch.func``.

The first time several vectors are multiplied, each available method is timed on the
actual model and the fastest is kept for the :class:`~lossviz.Objective`; a method that
fails (an op without a batching rule, forward-mode AD through fused attention) is dropped.
Everything runs with attention on the math SDPA backend, which supports double backward.
"""

from __future__ import annotations

import threading
import time
import weakref
from dataclasses import dataclass, field

import torch
from torch import Tensor

from .errors import LossvizError, is_oom, warn
from .objective import check_differentiable, check_finite, math_sdpa

METHODS = ("batched", "loop", "fwd")


@dataclass
class ProductMethods:
    """The product method choice of one :class:`~lossviz.Objective`, owned by this module.

    Read it with :func:`product_methods`; only :class:`CurvatureOperator` changes it.

    Attributes:
        chosen: The fastest method per curvature (``"hessian"``, ``"ggn"``), set the first
            time several vectors are multiplied.
        times: Per curvature, the seconds per vector of each method timed then.
        failed: Method -> why it is not used for this model.
    """

    chosen: dict[str, str] = field(default_factory=dict)
    times: dict[str, dict[str, float]] = field(default_factory=dict)
    failed: dict[str, str] = field(default_factory=dict)


# one ProductMethods per Objective, kept as long as the Objective lives
_CHOICES: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
_CHOICES_LOCK = threading.Lock()


def _choice(obj) -> ProductMethods:
    """The live (mutable) choice for ``obj``; only this module writes to it."""
    with _CHOICES_LOCK:
        pm = _CHOICES.get(obj)
        if pm is None:
            pm = _CHOICES[obj] = ProductMethods()
        return pm


def product_methods(obj) -> ProductMethods:
    """A copy of the product methods chosen for the Objective ``obj`` so far.

    Args:
        obj: an :class:`~lossviz.Objective`.

    Returns:
        :class:`ProductMethods` (``chosen``, ``times``, ``failed``); empty before the
        first batched product.

    Examples:
        >>> from lossviz import Objective
        >>> from lossviz.data import digits, mlp
        >>> x, y = digits()
        >>> obj = Objective(mlp((64, 10)), torch.nn.functional.cross_entropy, (x[:64], y[:64]))
        >>> product_methods(obj).chosen
        {}
        >>> _ = obj.operator() @ torch.randn(obj.n_params, 4)
        >>> product_methods(obj).chosen["hessian"] in METHODS
        True
    """
    pm = _choice(obj)
    return ProductMethods(
        chosen=dict(pm.chosen),
        times={k: dict(v) for k, v in pm.times.items()},
        failed=dict(pm.failed),
    )


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class CurvatureOperator:
    """The curvature of an :class:`~lossviz.Objective` at a fixed point, as an operator.

    A symmetric linear operator on flat vectors: the Hessian ``H(θ) = ∇²L(θ)``
    (``curvature="hessian"``) or the generalized Gauss-Newton ``G = Jᵀ H_ℓ J``
    (``curvature="ggn"``; ``J`` the Jacobian of the model's outputs with respect to ``θ``,
    ``H_ℓ`` the Hessian of the loss with respect to the outputs; positive semi-definite
    for a convex loss; Schraudolph 2002, "Fast Curvature Matrix-Vector Products for
    Second-Order Gradient Descent"). Hessian-vector products are exact, by
    reverse-over-reverse or forward-over-reverse automatic differentiation (Pearlmutter
    1994, "Fast Exact Multiplication by the Hessian").

    ``op @ x`` (``(P,)``) and ``op @ X`` (``(P, k)``) work like a dense matrix, so every
    estimator in lossviz accepts either. :meth:`apply` takes rows: ``(k, P) -> (k, P)``.
    The gradient graph is built once per point when the data is a single batch; with
    several batches each product is the sample-weighted mean over batches,
    ``Hv = Σ_b n_b H_b v / Σ_b n_b``. Usually made by ``Objective.operator()``.

    Memory (``n`` parameters, ``b`` samples per batch, ``k`` vectors; docs/memory.md):
    the gradient graph of one batch, ``G(b)`` (what ``autograd.grad(loss, params,
    create_graph=True)`` keeps: the forward's saved activations, the first backward's
    and the ``n``-number gradient), kept while the operator lives for a single held
    batch (``release()`` frees it), built and freed per batch otherwise; per product
    chunk of ``c <= 64`` rows (halved on out-of-memory) the rows and results,
    ``2 · c · n`` numbers, and the second backward's working memory: once (``"loop"``)
    or ``c`` times (``"batched"``, ``"fwd"``; vmapped).

    Attributes:
        obj: The Objective.
        flat: The point ``θ`` as a flat, detached vector.
        fixed: The tensors held fixed (not differentiated), by name.
        curvature: ``"hessian"`` or ``"ggn"``.
        shape: ``(P, P)``.
        dtype: The dtype of the products (that of ``flat``).
        device: Where the products run.
        n_products: The number of vectors multiplied so far.

    Args:
        obj: The :class:`~lossviz.Objective` (model, loss, data).
        flat: The point ``θ``, a flat tensor of its ``P`` varying parameters.
        fixed: The other tensors of the model (held fixed), ``name -> tensor``.
        curvature: ``"hessian"`` or ``"ggn"``.

    Raises:
        LossvizError: if ``curvature`` is neither ``"hessian"`` nor ``"ggn"``.
        LossvizError: if ``curvature="ggn"`` and the Objective was built with
            ``forward=`` (the GGN needs ``loss_fn(outputs, targets)``). The products
            raise :class:`~lossviz.errors.NonFiniteLossError` when the loss is not finite.
    """

    def __init__(self, obj, flat: Tensor, fixed: dict, *, curvature: str = "hessian"):
        if curvature not in ("hessian", "ggn"):
            raise LossvizError(f"curvature must be 'hessian' or 'ggn', got {curvature!r}")
        if curvature == "ggn" and obj.forward is not None:
            raise LossvizError("curvature='ggn' needs loss_fn(outputs, targets), not forward=")
        self.obj = obj
        self.flat = flat.detach()
        self.fixed = fixed
        self.curvature = curvature
        self.shape = (flat.numel(), flat.numel())
        self.dtype = flat.dtype
        self.device = flat.device
        self.n_products = 0
        self._graph = None  # cached per-point graph for single-batch data
        self.max_chunk = 64
        self._methods_of = _choice(obj)  # this Objective's product method choice

    # --- graphs -------------------------------------------------------------
    def _leaves(self) -> dict:
        """Per-parameter leaves at the point.

        Slices of one flat leaf would make every backward pass zero-pad a full-size
        gradient per tensor.
        """
        return {
            n: t.detach().clone().requires_grad_(True)
            for n, t in self.obj.layout.unflatten(self.flat).items()
        }

    def _split(self, V: Tensor) -> list[Tensor]:
        """Views of the rows of ``V`` (``(k, P)``) per parameter, ``(k, *shape)``."""
        return list(self.obj.layout.unflatten(V).values())

    def _build(self, batch):
        """The graph for one batch.

        (leaves, gradient with graph) for the Hessian; (leaves, outputs, ∂ℓ/∂f pieces,
        dummy u, Jᵀu) for the GGN.
        """
        leaves = self._leaves()
        ps = list(leaves.values())
        with torch.enable_grad(), math_sdpa():
            if self.curvature == "hessian":
                loss = self.obj.batch_loss(leaves, self.fixed, batch)
                check_finite(loss)
                check_differentiable(loss)
                g = torch.autograd.grad(loss, ps, create_graph=True, allow_unused=True)
                if all(gi is None for gi in g):
                    raise LossvizError(
                        "the loss does not depend on the varying parameters (does forward= "
                        "use a model other than the one it is given?)"
                    )
                # parameters the loss does not use, or uses only linearly, have no
                # second-order graph: their rows of H v are zero
                keep = [i for i, gi in enumerate(g) if gi is not None and gi.requires_grad]
                return ("hessian", ps, [g[i] for i in keep], keep)
            out = self.obj.batch_outputs(leaves, self.fixed, batch)
            f = out.detach().requires_grad_(True)
            loss = self.obj.loss_fn(f, batch[1])
            check_finite(loss)
            check_differentiable(loss)
            (gf,) = torch.autograd.grad(loss, f, create_graph=True)
            u = torch.zeros_like(out, requires_grad=True)
            jtu = torch.autograd.grad(out, ps, u, create_graph=True, allow_unused=True)
            keep = [i for i, t in enumerate(jtu) if t is not None]
            return ("ggn", ps, out, f, gf, u, [jtu[i] for i in keep], keep)

    def _graphs(self):
        """Yields (graph, batch, weight) over the data.

        The graph is cached for a single batch. With streamed data the weights are
        unnormalized and ``_stream_total`` holds the samples seen (the caller divides by
        ``obj.normalizer`` of it).
        """
        obj = self.obj
        if obj.n_batches == 1:
            if self._graph is None:
                b, nb = next(obj.batches())
                self._graph = (self._build(b), b)
            yield self._graph[0], self._graph[1], 1.0
            return
        items = list(obj.batches()) if obj.n_batches else None
        src = items if items is not None else obj.batches()
        norm = obj.normalizer(sum(nb for _, nb in items)) if items is not None else None
        acc_n = 0
        for b, nb in src:
            acc_n += nb
            w = obj.batch_weight(nb)
            yield self._build(b), b, (w / norm if norm is not None else w)
        if norm is None:  # streamed data: the caller divides
            self._stream_total = acc_n

    # --- products -----------------------------------------------------------
    def _apply_graph(self, graph, V: Tensor, method: str) -> Tensor:
        if graph[0] == "hessian":
            _, ps, g, keep = graph
            if not keep:
                return torch.zeros_like(V)

            def grad(vs, batched):
                parts = torch.autograd.grad(
                    g,
                    ps,
                    [vs[i] for i in keep],
                    retain_graph=True,
                    is_grads_batched=batched,
                    allow_unused=True,
                )
                return parts

            return self._products(grad, V, method, ps)
        _, ps, out, f, gf, u, jtu, keep = graph
        if not keep:
            return torch.zeros_like(V)

        def ggn(vs, batched):
            (jv,) = torch.autograd.grad(
                jtu, u, [vs[i] for i in keep], retain_graph=True, is_grads_batched=batched
            )
            (hjv,) = torch.autograd.grad(gf, f, jv, retain_graph=True, is_grads_batched=batched)
            parts = torch.autograd.grad(
                out, ps, hjv, retain_graph=True, is_grads_batched=batched, allow_unused=True
            )
            return parts

        return self._products(ggn, V, method, ps)

    def _products(self, fn, V: Tensor, method: str, ps) -> Tensor:
        """Apply ``fn`` to all rows of ``V`` and flatten.

        ``fn(per-parameter vectors, batched) -> per-parameter products`` (None where a
        parameter has no second-order dependence).
        """

        def flat(parts, lead):
            return torch.cat(
                [
                    (
                        torch.zeros(*lead, p.numel(), dtype=V.dtype, device=V.device)
                        if d is None
                        else d.reshape(*lead, -1)
                    )
                    for d, p in zip(parts, ps)
                ],
                dim=-1,
            )

        if method == "batched":
            return flat(fn(self._split(V), True), (V.shape[0],))
        return torch.stack([flat(fn(self._split(v), False), ()) for v in V])

    def _fwd(self, batch, V: Tensor) -> Tensor:
        from torch.func import grad, jvp, vmap

        obj, fixed, layout = self.obj, self.fixed, self.obj.layout
        primal = {n: t.detach() for n, t in layout.unflatten(self.flat).items()}

        def hvp(v):
            tangent = layout.unflatten(v)
            out = jvp(grad(lambda d: obj.batch_loss(d, fixed, batch)), (primal,), (tangent,))[1]
            return torch.cat([out[n].reshape(-1) for n in layout.names])

        return vmap(hvp)(V)

    def _apply_distributed(self, V: Tensor, method: str) -> Tensor:
        """The product over all ranks' data: one all-reduce of the ``(k, P)`` sums."""
        obj = self.obj

        def local():
            out, n = torch.zeros_like(V), 0
            with torch.enable_grad(), math_sdpa():
                for batch, nb in obj.batches():
                    if method == "fwd":
                        HV = self._fwd(batch, V)
                    elif obj.n_batches == 1:  # the graph of a single held batch is kept
                        if self._graph is None:
                            self._graph = (self._build(batch), batch)
                        HV = self._apply_graph(self._graph[0], V, method)
                    else:
                        HV = self._apply_graph(self._build(batch), V, method)
                    out.add_(HV.detach(), alpha=obj.batch_weight(nb))
                    n += nb
            return out, n

        out, n = obj.reduce_sums(local, V.shape, "a curvature-vector product", inputs=V)
        return out / obj.normalizer(n)

    def _apply_method(self, V: Tensor, method: str) -> Tensor:
        if self.obj.distributed:
            return self._apply_distributed(V, method)
        out = None
        streamed = self.obj.n_batches is None
        with torch.enable_grad(), math_sdpa():
            if method == "fwd":
                items = list(self.obj.batches())
                norm = self.obj.normalizer(sum(nb for _, nb in items))
                for batch, nb in items:
                    HV = self._fwd(batch, V).detach()
                    w = self.obj.batch_weight(nb) / norm
                    out = HV * w if out is None else out.add_(HV, alpha=w)
                return out
            for graph, _batch, w in self._graphs():
                HV = self._apply_graph(graph, V, method).detach()
                out = HV * w if out is None else out.add_(HV, alpha=w)
        if streamed:
            out /= self.obj.normalizer(self._stream_total)
        return out

    def _methods(self, k: int) -> list[str]:
        if k == 1:
            return ["loop"]
        # forward-mode AD through batch-statistics BatchNorm is wrong in torch (2.13):
        # the jvp misses the dependence of the batch mean on the input
        no_fwd = self.curvature == "ggn" or self.obj.bn == "train"
        cands = [m for m in METHODS if not (m == "fwd" and no_fwd)]
        return [m for m in cands if m not in self._methods_of.failed]

    def _tune(self, V: Tensor) -> Tensor:
        """Time each product method on ``V`` and keep the fastest.

        Each method runs twice (the first run warms up kernels and caches) and the fastest
        second run wins; the product of the first method is returned. A method that fails
        or disagrees with the first (relative difference > 1e-3; TF32 kernels differ by
        less) is dropped for this model.
        """
        times, result, last = {}, None, None
        for m in self._methods(V.shape[0]):
            try:
                HV = self._apply_method(V, m)
                _sync(self.device)
                t0 = time.perf_counter()
                self._apply_method(V, m)
                _sync(self.device)
                times[m] = time.perf_counter() - t0
            except Exception as e:  # noqa: BLE001 - an unsupported backend is skipped
                if is_oom(e):
                    raise
                if isinstance(e, LossvizError):  # bad input: the same for every method
                    raise
                # an op without forward-mode or batching support: the others remain
                self._methods_of.failed[m] = f"{type(e).__name__}: {e!s:.200}"
                last = e
                continue
            if result is None:
                result = HV
            elif float((HV - result).norm()) > 1e-3 * float(result.norm()):
                del times[m]
                self._methods_of.failed[m] = "disagrees with reverse-over-reverse"
                warn(
                    f"lossviz: HVP method {m!r} disagrees with reverse-over-reverse here; not used"
                )
        if result is None:
            raise LossvizError(
                "no Hessian-vector product method works on this model: "
                + "; ".join(f"{k}: {v}" for k, v in self._methods_of.failed.items())
            ) from last
        key = self.curvature
        self._methods_of.chosen[key] = min(times, key=times.get)
        self._methods_of.times[key] = {m: t / V.shape[0] for m, t in times.items()}
        return result

    def apply(self, V: Tensor) -> Tensor:
        """The curvature applied to each row of ``V``: ``(k, P) -> (k, P)``.

        Runs in batched chunks (at most 64 rows) that halve on out-of-memory; the first
        multi-row product times the methods (see the module docstring).

        Args:
            V: Rows ``(k, P)``; moved to the operator's device and dtype.

        Returns:
            ``(k, P)``: row ``i`` is ``H V[i]`` (or ``G V[i]``).

        Raises:
            LossvizError: if ``V`` is not ``(k, P)``.
            LossvizError: if no product method works on this model.
            NonFiniteLossError: if the loss is NaN or infinite at the point.
        """
        if V.ndim != 2 or V.shape[1] != self.shape[0]:
            raise LossvizError(f"expected a (k, {self.shape[0]}) tensor, got {tuple(V.shape)}")
        V = V.to(self.device, self.dtype)
        k = V.shape[0]
        self.n_products += k
        outs, i = [], 0
        while i < k:
            c = min(self.max_chunk, k - i)
            tune = c > 1 and self.curvature not in self._methods_of.chosen
            if tune:
                c = min(c, 8)  # the methods are timed on a few vectors, once per Objective
            chunk = V[i : i + c]
            try:
                if c == 1:
                    outs.append(self._apply_method(chunk, "loop"))
                elif tune:
                    outs.append(self._tune(chunk))
                else:
                    outs.append(self._apply_method(chunk, self._methods_of.chosen[self.curvature]))
            except Exception as e:
                if is_oom(e) and c > 1:
                    self.max_chunk = max(1, c // 2)
                    if self.device.type == "cuda":
                        torch.cuda.empty_cache()
                    continue
                raise
            i += c
        return torch.cat(outs) if len(outs) > 1 else outs[0]

    def __matmul__(self, X: Tensor) -> Tensor:
        """``op @ x`` for ``x`` of shape ``(P,)`` or ``(P, k)``, like a dense matrix."""
        if X.ndim == 1:
            return self.apply(X[None])[0]
        return self.apply(X.T).T

    def release(self) -> None:
        """Free the cached graph."""
        self._graph = None

    def __repr__(self) -> str:
        return (
            f"CurvatureOperator({self.curvature}, P={self.shape[0]:,}, {self.dtype}, "
            f"{self.device}, products so far={self.n_products})"
        )


def apply_rows(op, V: Tensor) -> Tensor:
    """``op`` applied to each row of ``V`` (``(k, P)``).

    The products run in the operator's dtype; the result comes back in ``V``'s dtype (the
    kernels keep their bases in at least float32, also for a float16 model).

    Args:
        op: A :class:`CurvatureOperator`, any object with ``apply``, or anything
            supporting ``op @ X`` (a dense tensor).
        V: Rows ``(k, P)``.

    Returns:
        ``(k, P)`` products, in ``V``'s dtype.
    """
    dt = op.dtype
    X = V if V.dtype == dt else V.to(dt)
    if hasattr(op, "apply") and not isinstance(op, Tensor):
        out = op.apply(X)
    else:
        out = (op @ X.T).T
    return out if out.dtype == V.dtype else out.to(V.dtype)


def work_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype of the kernels' bases and projections for products in ``dtype``.

    At least float32: QR, reorthogonalization and the small eigenproblems are not
    implemented, or not accurate enough, in float16 / bfloat16.

    Args:
        dtype: The floating-point dtype of the products.

    Returns:
        ``dtype`` when it has at least 32 bits, else float32.
    """
    return dtype if torch.finfo(dtype).bits >= 32 else torch.float32


def low_precision(dtype: torch.dtype) -> bool:
    """Whether ``dtype`` (a floating-point dtype) has fewer than 32 bits."""
    return torch.finfo(dtype).bits < 32


def op_meta(op) -> tuple[int, torch.dtype, torch.device]:
    """(size, dtype, device) of an operator or dense matrix.

    Args:
        op: A square tensor or an operator with ``shape``, ``dtype`` and ``device``.

    Returns:
        ``(size, dtype, device)``.

    Raises:
        LossvizError: if ``op`` is a tensor that is not square.
    """
    if isinstance(op, Tensor):
        if op.ndim != 2 or op.shape[0] != op.shape[1]:
            raise LossvizError(f"a dense operator must be square, got shape {tuple(op.shape)}")
        return op.shape[0], op.dtype, op.device
    return op.shape[0], op.dtype, op.device


def check_operator(op, name: str = "op") -> tuple[int, torch.dtype, torch.device]:
    """Check a bare operator before any product.

    A dense tensor must be a finite, real, symmetric square matrix (symmetry is checked
    entry by entry, one pass: ``max|A - Aᵀ| <= sqrt(eps)·max|A|``); any other object needs
    ``shape``, ``dtype``, ``device`` and ``apply`` or ``@``.

    Args:
        op: A dense matrix or an operator.
        name: The argument's name, for messages.

    Returns:
        ``(size, dtype, device)``.

    Raises:
        ArgumentTypeError: if ``op`` is neither a tensor nor an operator, or is not
            real floating-point.
        LossvizError: if it is not square, is empty, has NaN or inf entries, or (a
            tensor) is not symmetric.
    """
    from .errors import ArgumentTypeError

    if isinstance(op, Tensor):
        if op.ndim != 2 or op.shape[0] != op.shape[1]:
            raise LossvizError(f"{name} must be a square matrix, got shape {tuple(op.shape)}")
        if op.shape[0] == 0:
            raise LossvizError(f"{name} is an empty (0 x 0) matrix")
        if op.is_complex() or not op.is_floating_point():
            raise ArgumentTypeError(
                f"{name} must be a real floating-point matrix, got dtype "
                f"{str(op.dtype).replace('torch.', '')}; convert it with .double() or .float()"
            )
        if not bool(torch.isfinite(op).all()):
            raise LossvizError(f"{name} has non-finite (NaN or infinite) entries")
        scale = float(op.abs().max())
        asym = float((op - op.T).abs().max())
        if asym > torch.finfo(op.dtype).eps ** 0.5 * scale:
            raise LossvizError(
                f"{name} is not symmetric (max |A - Aᵀ| = {asym:.3g}, max |A| = {scale:.3g}): "
                "Hessian spectra need a symmetric matrix; symmetrize it with (A + A.T) / 2 "
                "if that is what you mean"
            )
        return op.shape[0], op.dtype, op.device
    shape = getattr(op, "shape", None)
    dtype = getattr(op, "dtype", None)
    ok = (
        shape is not None
        and len(tuple(shape)) == 2
        and isinstance(dtype, torch.dtype)
        and hasattr(op, "device")
        and (callable(getattr(op, "apply", None)) or hasattr(op, "__matmul__"))
    )
    if not ok:
        raise ArgumentTypeError(
            f"{name} must be {'an Objective, ' if name == 'obj' else ''}a symmetric matrix "
            "(a 2-D tensor) or an operator with shape, dtype, device and apply(V) or @; got "
            f"{type(op).__name__}"
        )
    n = int(tuple(shape)[0])
    if tuple(shape) != (n, n) or n < 1:
        raise LossvizError(f"{name} must be a square operator, got shape {tuple(shape)}")
    if not dtype.is_floating_point:
        raise ArgumentTypeError(
            f"{name} must compute in a floating-point dtype, got {str(dtype).replace('torch.', '')}"
        )
    return n, dtype, torch.device(op.device)


class SubOperator:
    """The restriction ``H[idx, idx]`` of an operator to a set of flat indices.

    A block of parameters; itself an operator of size ``len(idx)``.

    Args:
        op: The full operator (or dense matrix).
        idx: The flat indices of the block.
    """

    def __init__(self, op, idx: Tensor):
        n, dtype, device = op_meta(op)
        self.op, self.idx, self.n = op, idx.to(device), n
        self.shape = (idx.numel(), idx.numel())
        self.dtype, self.device = dtype, device

    def apply(self, V: Tensor) -> Tensor:
        """Rows ``(k, len(idx)) -> (k, len(idx))``: ``(H[idx, idx] V[i])`` per row."""
        full = torch.zeros(V.shape[0], self.n, dtype=V.dtype, device=V.device)
        full[:, self.idx] = V
        return apply_rows(self.op, full)[:, self.idx]

    def __matmul__(self, X: Tensor) -> Tensor:
        """``op @ x`` for ``x`` of shape ``(n,)`` or ``(n, k)``, like a dense matrix."""
        if X.ndim == 1:
            return self.apply(X[None])[0]
        return self.apply(X.T).T
