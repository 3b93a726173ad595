"""Exact Hessian-vector products and top eigenpairs of an FSDP2 model, kept sharded.

A model sharded with FSDP2 (``torch.distributed.fsdp.fully_shard``) holds on each rank
only a shard of every parameter (a ``DTensor`` with placement ``Shard(0)`` on a 1-D
device mesh). FSDP2's own hooks gather the layers in the forward and reduce-scatter the
gradient in a post-backward hook, outside the autograd graph, so a second backward
through them is impossible. Here FSDP2's hooks are not used at all: each rank's local
shard ``s_r`` is the differentiable leaf, and a private copy of the module tree (the
original classes, without FSDP's hooks) runs under ``torch.func.functional_call`` with
each parameter gathered just before the forward by ``DTensor.from_local(s_r, ...)
.full_tensor(grad_placements=[Partial()])``: PyTorch's differentiable all-gather, whose
backward is a reduce-scatter (the local losses are partial sums of the global one) and
is itself differentiable. Then, with ``L = Σ_r (n_r / N) ℓ_r(θ)`` the mean loss over all
ranks' samples,

    g_r = ∂L/∂s_r,    (H v)_r = ∂(g · v)/∂s_r = Σ_r' ∂(g_r' · v_r')/∂s_r,

by double backward (Pearlmutter 1994, "Fast exact multiplication by the Hessian"): the
vectors ``v`` and the products stay sharded like the parameters (``(n_r, b)`` blocks of
local shards), and every dot product is all-reduced. :func:`sharded_hessian_eigs` runs
Lanczos with full reorthogonalization (Lanczos 1950; Parlett 1998) on these sharded
vectors.

What is exact and tested (``tests/test_fsdp.py``, 2 ranks, gloo on CPU): products and
the top eigenvalues against the dense Hessian of the unsharded model on all the data.
Memory: the vectors, basis and gradients are sharded (``n / world`` numbers each per
rank); by default (``regather=True``) the gathered weights are not kept in the autograd
graph: saved-tensor hooks save a gathered weight as its index and all-gather it again
from the shard when a backward pass needs it, as FSDP2 does, so a rank holds one
layer's full weights at a time (plus its batch's activations). Not supported (refused
by name): see ``docs/sharded.md``.
"""

from __future__ import annotations

import sys
import weakref
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor, nn

from . import validate
from .errors import ArgumentTypeError, DataError, LossvizError, NonFiniteLossError, warn

__all__ = ["ShardedEigs", "ShardedHessian", "sharded_hessian_eigs"]


def _fsdp_hook(hook) -> bool:
    """Whether a module hook was registered by FSDP (``torch.distributed.fsdp``)."""
    f = getattr(hook, "__func__", hook)
    f = getattr(f, "func", f)  # functools.partial
    return str(getattr(f, "__module__", "") or "").startswith("torch.distributed.fsdp")


_HOOK_DICTS = (
    "_forward_pre_hooks",
    "_forward_hooks",
    "_backward_hooks",
    "_backward_pre_hooks",
)


def _plain_copy(m: nn.Module, fsdp_cls, memo: dict) -> nn.Module:
    """A copy of the module tree with the original classes and without FSDP's hooks.

    The user's modules are not touched: every module of the copy is a new object of the
    class ``fully_shard`` replaced (``FSDPLinear`` -> ``Linear``) with its own attribute
    dictionary, parameter / buffer / child dictionaries and hook dictionaries (FSDP's
    forward hooks dropped, the user's kept).
    """
    if id(m) in memo:
        return memo[id(m)]
    cls = type(m)
    if isinstance(m, fsdp_cls):
        cls = next(c for c in cls.__mro__ if not issubclass(c, fsdp_cls))
    new = object.__new__(cls)
    new.__dict__.update(m.__dict__)
    memo[id(m)] = new
    new._parameters = dict(m._parameters)
    new._buffers = dict(m._buffers)
    for name in _HOOK_DICTS:
        hooks = getattr(m, name, None)
        if hooks is not None:
            setattr(new, name, type(hooks)((k, h) for k, h in hooks.items() if not _fsdp_hook(h)))
    kept = set(new._forward_pre_hooks) | set(new._forward_hooks)
    for name in ("_forward_pre_hooks_with_kwargs", "_forward_hooks_with_kwargs"):
        d = getattr(m, name, None)
        if d is not None:
            setattr(new, name, type(d)((k, v) for k, v in d.items() if k in kept))
    d = getattr(m, "_forward_hooks_always_called", None)
    if d is not None:
        new._forward_hooks_always_called = type(d)((k, v) for k, v in d.items() if k in kept)
    new._modules = {
        k: None if c is None else _plain_copy(c, fsdp_cls, memo) for k, c in m._modules.items()
    }
    return new


def _tensor_classes():
    from torch.distributed.fsdp import FSDPModule
    from torch.distributed.tensor import DTensor, Partial, Shard

    return FSDPModule, DTensor, Partial, Shard


class _Regather:
    """Saved-tensor hooks that keep gathered weights out of the autograd graph.

    A tensor the graph saves that shares its storage with a gathered parameter (the
    weight, or a view such as ``weight.t()``) is saved as ``(parameter index, size,
    stride, offset)`` and all-gathered again from the local shard when a backward pass
    needs it (as FSDP2 does in its backward); autograd restores its ``grad_fn``, so the
    double backward is unchanged. A storage is recognised only while it is alive (a
    weak reference to it; a live storage's address is not shared), so an unrelated
    tensor that reuses a freed address is never taken for a weight. Every rank runs the
    same graph, so the re-gathers (collectives) come in the same order on every rank.
    """

    def __init__(self, H: ShardedHessian, leaves: list[Tensor], enabled: bool):
        self.H, self.leaves, self.enabled = H, leaves, enabled
        self.refs: dict[int, list] = {}  # storage address -> [(weakref, index)]
        self.held = self.regathered = 0

    def track(self, t: Tensor, i: int) -> None:
        if t.numel():
            st = t.untyped_storage()  # its Python object lives as long as the storage
            self.refs.setdefault(st.data_ptr(), []).append((weakref.ref(st), i))

    def _index(self, t: Tensor) -> int | None:
        if not t.numel() or t.device != self.H.device:
            return None
        ptr = t.untyped_storage().data_ptr()
        for ref, i in self.refs.get(ptr, ()):
            held = ref()
            if held is not None and held.data_ptr() == ptr:
                return i
        return None

    def pack(self, t: Tensor):
        i = self._index(t)
        if i is None:
            return t
        if not self.enabled:
            self.held += 1  # a gathered weight saved as it is: kept until the graph goes
            return t
        return (i, t.size(), t.stride(), t.storage_offset())

    def unpack(self, saved):
        if isinstance(saved, Tensor):
            return saved
        i, size, stride, offset = saved
        self.regathered += 1
        with torch.no_grad():
            full = self.H._gather(i, self.leaves[i].detach(), grad=False)
        out = full.as_strided(size, stride, offset)
        self.track(out, i)  # saved again by the double-backward graph: a weight too
        return out

    def hooks(self):
        return torch.autograd.graph.saved_tensors_hooks(self.pack, self.unpack)


class ShardedHessian:
    """The Hessian of the mean loss of an FSDP2 model, as an operator on sharded vectors.

    ``H @ V`` takes a ``(n_local, b)`` block whose rows are this rank's shards of the
    parameters (concatenated in ``named_parameters`` order, each flattened) and returns
    the same rows of the Hessian times the sharded vectors, exactly (double backward
    through PyTorch's differentiable all-gather; see the module docstring). Every rank
    must call every method together (they run collectives). The model is evaluated in
    eval mode (dropout off, BatchNorm running statistics), as :class:`~lossviz.Objective`
    does by default, on a private copy: the user's model is never changed.

    Args:
        model: A model sharded with ``fully_shard`` (FSDP2): every parameter a
            ``DTensor`` placed ``Shard(0)`` on one 1-D device mesh.
        loss_fn: A mean-reduced loss ``loss_fn(model(x), y)`` (e.g.
            ``F.cross_entropy``).
        data: This rank's batch ``(x, y)`` (at least one sample on every rank). The
            loss is the sample-weighted mean over all ranks' samples.
        regather: True: the gathered weights are not kept in the autograd graph but
            all-gathered again from the shards when a backward pass needs them (as FSDP2
            does; more communication, one layer's full weights at a time). False: kept
            from the forward to the product's last backward (the full weights on every
            rank during a product; fewer collectives).

    Raises:
        ArgumentTypeError: when ``loss_fn`` is not callable or ``data`` is not an
            ``(x, y)`` pair of tensors.
        LossvizError: when no process group is initialised, or the model is not an
            FSDP2 model this supports (naming what: FSDP1, a 2-D mesh / HSDP, a
            placement other than ``Shard(0)``, parameters that are not DTensors, DTensor
            buffers, a loss that is not mean-reduced).
        DataError: when a rank's batch is empty.
    """

    def __init__(self, model: nn.Module, loss_fn, data, *, regather: bool = True):
        import torch.distributed as dist

        if not (dist.is_available() and dist.is_initialized()):
            raise LossvizError(
                "ShardedHessian needs an initialised torch.distributed process group "
                "(run under torchrun and call dist.init_process_group first)"
            )
        if not isinstance(model, nn.Module):
            raise ArgumentTypeError(f"model: expected an nn.Module, got {type(model).__name__}")
        validate.callable_(loss_fn, "loss_fn")
        from .objective import loss_reduction

        red = loss_reduction(loss_fn)
        if red not in (None, "mean"):
            raise LossvizError(
                f"loss_fn: reduction={red!r} is not supported by ShardedHessian; it "
                "takes a mean-reduced loss (the mean over all ranks' samples)"
            )
        if not (isinstance(data, (tuple, list)) and len(data) == 2):
            raise ArgumentTypeError("data: expected this rank's batch as a pair (x, y)")
        x, y = data
        if not (isinstance(x, Tensor) and isinstance(y, Tensor)):
            raise ArgumentTypeError("data: expected (x, y) tensors")
        fsdp_cls, dtensor, partial, shard = _tensor_classes()
        fsdp1 = getattr(sys.modules.get("torch.distributed.fsdp"), "FullyShardedDataParallel", None)
        if fsdp1 is not None and any(isinstance(m, fsdp1) for m in model.modules()):
            raise LossvizError(
                "model: FSDP1 (FullyShardedDataParallel) is not supported by "
                "ShardedHessian; shard the model with FSDP2 (fully_shard) instead"
            )
        self.names, self._dparams, self.shapes = [], [], []
        plain = [n for n, p in model.named_parameters() if not isinstance(p, dtensor)]
        if plain:
            raise LossvizError(
                f"model: parameters {plain[:5]} are not sharded (not DTensors): a model "
                "mixing sharded and unsharded parameters, or an FSDP2 model left "
                "unsharded after a forward (call model.reshard() first), is not "
                "supported by ShardedHessian"
            )
        dbufs = [n for n, b in model.named_buffers() if isinstance(b, dtensor)]
        if dbufs:
            raise LossvizError(f"model: DTensor buffers {dbufs[:5]} are not supported")
        mesh = None
        for n, p in model.named_parameters():
            if p.device_mesh.ndim != 1 or tuple(p.placements) != (shard(0),):
                raise LossvizError(
                    f"model: parameter {n!r} is placed {tuple(p.placements)} on a "
                    f"{p.device_mesh.ndim}-D mesh; ShardedHessian supports only FSDP2's "
                    "default Shard(0) on a 1-D mesh (not HSDP, tensor parallelism or "
                    "shard_placement_fn)"
                )
            if mesh is None:
                mesh = p.device_mesh
            elif p.device_mesh != mesh:
                raise LossvizError(f"model: parameter {n!r} is on another device mesh")
            self.names.append(n)
            self._dparams.append(p)
            self.shapes.append(tuple(p.shape))
        if mesh is None:
            raise LossvizError("model: has no parameters")
        if not any(isinstance(m, fsdp_cls) for m in model.modules()):
            raise LossvizError(
                "model: its DTensor parameters are not from fully_shard (FSDP2); only "
                "FSDP2 models are supported by ShardedHessian"
            )
        self.mesh, self.group = mesh, mesh.get_group()
        self._partial = partial
        self._dtensor = dtensor
        self.model = model
        self._copy = _plain_copy(model, fsdp_cls, {}).eval()  # as Objective: eval mode
        self.loss_fn = loss_fn
        self.x, self.y = x, y
        locs = [p.to_local() for p in self._dparams]
        self.dtype, self.device = locs[0].dtype, locs[0].device
        self.local_numels = [t.numel() for t in locs]
        self.n_local = sum(self.local_numels)
        self.n = sum(int(np.prod(s)) for s in self.shapes)
        n_samples = int(x.shape[0]) if x.dim() else 0
        counts = torch.tensor([n_samples, min(n_samples, 1)], dtype=torch.int64)
        dist.all_reduce(counts, group=self.group)
        if n_samples == 0:
            raise DataError(
                f"data: this rank ({dist.get_rank(self.group)}) holds no sample; every "
                "rank needs at least one for ShardedHessian"
            )
        self.n_samples = int(counts[0])
        self.weight = n_samples / self.n_samples
        self.n_matvec = 0
        self.regather = validate.boolean(regather, "regather")
        #: In the last product: how many tensors the autograd graph saved that are
        #: gathered (full) weights or views of them, kept as they are (0 with
        #: ``regather=True``), and how many were all-gathered again in the backward passes.
        self.gathered_held = self.regathered = 0

    # -- the functional forward -------------------------------------------------------
    def _leaves(self) -> list[Tensor]:
        return [p.to_local().detach().clone().requires_grad_(True) for p in self._dparams]

    def _gather(self, i: int, shard: Tensor, grad: bool) -> Tensor:
        p = self._dparams[i]
        d = self._dtensor.from_local(
            shard, p.device_mesh, p.placements, shape=p.shape, stride=p.stride(), run_check=False
        )
        return d.full_tensor(grad_placements=[self._partial()]) if grad else d.full_tensor()

    def _local_loss(self, leaves: list[Tensor], regather: _Regather | None = None) -> Tensor:
        """This rank's weighted loss ``(n_r / N) ℓ_r`` at the gathered parameters."""
        full = {}
        for i, (n, s) in enumerate(zip(self.names, leaves)):
            full[n] = self._gather(i, s, s.requires_grad)
            if regather is not None:
                regather.track(full[n], i)
        bufs = dict(self.model.named_buffers())
        if regather is None:
            out = torch.func.functional_call(self._copy, {**full, **bufs}, (self.x,))
            loss = self.loss_fn(out, self.y)
        else:
            with regather.hooks():
                out = torch.func.functional_call(self._copy, {**full, **bufs}, (self.x,))
                loss = self.loss_fn(out, self.y)
        if not isinstance(loss, Tensor) or loss.numel() != 1:
            raise LossvizError("loss_fn: expected a scalar tensor (a mean-reduced loss)")
        return loss.reshape(()) * self.weight

    def loss(self) -> float:
        """The mean loss over all ranks' samples (the same on every rank).

        Returns:
            The loss as a float.
        """
        import torch.distributed as dist

        with torch.no_grad():
            total = self._local_loss([p.to_local() for p in self._dparams]).detach()
        total = total.to(torch.float64).clone()
        dist.all_reduce(total, group=self.group)
        return float(total)

    def gradient(self) -> Tensor:
        """This rank's rows of the gradient of the mean loss over all ranks' samples.

        Returns:
            A ``(n_local,)`` tensor (the local shards, flattened and concatenated).
        """
        leaves = self._leaves()
        regather = _Regather(self, leaves, self.regather)
        loss = self._local_loss(leaves, regather)
        with regather.hooks():
            g = torch.autograd.grad(loss, leaves, allow_unused=True)
        return self._flat(g, leaves).detach()

    def _flat(self, parts, leaves) -> Tensor:
        return torch.cat(
            [(torch.zeros_like(s) if t is None else t).reshape(-1) for t, s in zip(parts, leaves)]
        )

    def apply(self, V: Tensor) -> Tensor:
        """Hessian times sharded vectors.

        Args:
            V: ``(n_local, b)`` (or ``(n_local,)``): this rank's rows of ``b`` vectors.

        Returns:
            This rank's rows of ``H V``, shaped like ``V``.

        Raises:
            LossvizError: when ``V`` has the wrong number of rows, or the loss is not
                finite.
        """
        import torch.distributed as dist

        one = V.dim() == 1
        V = V[:, None] if one else V
        if V.dim() != 2 or V.shape[0] != self.n_local:
            raise LossvizError(
                f"V: expected ({self.n_local}, b) rows (this rank's shards), got {tuple(V.shape)}"
            )
        leaves = self._leaves()
        regather = _Regather(self, leaves, self.regather)
        loss = self._local_loss(leaves, regather)
        bad = torch.tensor([0.0 if torch.isfinite(loss) else 1.0], dtype=torch.float64)
        dist.all_reduce(bad, group=self.group)
        if bad.item():
            raise NonFiniteLossError("the loss is not finite on at least one rank")
        V = V.to(self.device, self.dtype)
        out = torch.zeros(self.n_local, V.shape[1], dtype=self.dtype, device=self.device)
        offs = np.concatenate([[0], np.cumsum(self.local_numels)])
        with regather.hooks():  # the weights the backward passes save are re-gathered too
            g = torch.autograd.grad(loss, leaves, create_graph=True, allow_unused=True)
            live = [i for i, t in enumerate(g) if t is not None and t.requires_grad]
            for j in range(V.shape[1] if live else 0):  # none live: the loss is linear
                vs = [V[offs[i] : offs[i + 1], j].reshape(leaves[i].shape) for i in live]
                dot = sum((g[i] * v).sum() for i, v in zip(live, vs))
                hv = torch.autograd.grad(
                    dot, leaves, retain_graph=j + 1 < V.shape[1], allow_unused=True
                )
                out[:, j] = self._flat(hv, leaves)
        self.gathered_held, self.regathered = regather.held, regather.regathered
        self.n_matvec += V.shape[1]
        return out[:, 0] if one else out

    def __matmul__(self, X: Tensor) -> Tensor:
        """``H @ X``: see :meth:`apply`."""
        return self.apply(X)

    # -- sharded vectors ----------------------------------------------------------------
    def dot(self, X: Tensor, Y: Tensor) -> Tensor:
        """All-reduced ``Xᵀ Y`` of sharded vectors (the columns of ``(n_local, ·)``).

        Args:
            X: ``(n_local, a)`` local rows.
            Y: ``(n_local, b)`` local rows.

        Returns:
            The ``(a, b)`` matrix of global inner products (the same on every rank).
        """
        import torch.distributed as dist

        G = (X.T @ Y).contiguous()
        dist.all_reduce(G, group=self.group)
        return G

    def to_dtensors(self, v: Tensor) -> dict:
        """A sharded vector as DTensors placed like the parameters.

        Args:
            v: ``(n_local,)`` this rank's rows.

        Returns:
            ``{parameter name: DTensor}`` (``.full_tensor()`` gathers one).
        """
        out, o = {}, 0
        for n, p, k in zip(self.names, self._dparams, self.local_numels):
            loc = v[o : o + k].reshape(p.to_local().shape)
            o += k
            out[n] = self._dtensor.from_local(
                loc, p.device_mesh, p.placements, shape=p.shape, stride=p.stride(), run_check=False
            )
        return out

    def __repr__(self) -> str:
        return (
            f"ShardedHessian(n={self.n}, n_local={self.n_local}, "
            f"ranks={self.mesh.size()}, samples={self.n_samples})"
        )


@dataclass(kw_only=True)
class ShardedEigs:
    """What :func:`sharded_hessian_eigs` returns (the same values on every rank).

    Attributes:
        values: The ``k`` largest Hessian eigenvalues (Ritz values), float64, descending.
        vectors: This rank's rows of the eigenvectors, ``(k, n_local)``
            (:meth:`ShardedHessian.to_dtensors` makes DTensors of one).
        residuals: ``||H y - θ y|| / |θ|_max`` per pair, from true products.
        converged: Per pair, whether its residual is at most ``tol``.
        n_matvec: Hessian-vector products used.
    """

    values: np.ndarray
    vectors: Tensor
    residuals: np.ndarray
    converged: np.ndarray
    n_matvec: int


def sharded_hessian_eigs(
    H: ShardedHessian, k: int = 1, *, tol: float = 1e-8, max_iter: int = 300, seed: int = 0
) -> ShardedEigs:
    """The ``k`` largest Hessian eigenpairs of an FSDP2 model, with sharded vectors.

    Lanczos with full reorthogonalization (Lanczos 1950; Parlett 1998, "The symmetric
    eigenvalue problem", ch. 13): ``q_{j+1} β_j = H q_j - α_j q_j - β_{j-1} q_{j-1}``,
    reorthogonalized twice against the whole basis, every inner product all-reduced, the
    basis kept as local shards; Ritz pairs from the tridiagonal ``T`` in float64. It
    stops when the top ``k`` recurrence residuals ``|β_j s_{j,i}|`` are at most
    ``tol · |θ|_max``, when the Krylov space is exhausted, or after ``max_iter``
    products; the residuals returned are recomputed with true products.

    Args:
        H: The operator (every rank calls with its own).
        k: How many of the largest eigenvalues.
        tol: Relative residual tolerance.
        max_iter: The most Lanczos steps.
        seed: Seeds the start vector (rank ``r`` draws its rows with ``seed`` and ``r``).

    Returns:
        A :class:`ShardedEigs`; a pair whose residual exceeds ``tol`` is marked
        ``converged=False`` (and a warning says so).

    Raises:
        ArgumentTypeError: when ``H`` is not a :class:`ShardedHessian`.
        LossvizError: on a bad ``k``, ``tol``, ``max_iter`` or ``seed``.
    """
    import torch.distributed as dist

    if not isinstance(H, ShardedHessian):
        raise ArgumentTypeError(f"H: expected a ShardedHessian, got {type(H).__name__}")
    k = validate.integer(k, "k", low=1, high=H.n)
    tol = validate.number(tol, "tol", low=0, low_open=True)
    max_iter = validate.integer(max_iter, "max_iter", low=k)
    seed = validate.seed(seed)
    m_max = min(H.n, max_iter)
    start = H.n_matvec
    gen = torch.Generator().manual_seed(seed * 1_000_003 + dist.get_rank(H.group))
    q = torch.randn(H.n_local, generator=gen, dtype=torch.float64).to(H.dtype)
    q = q / H.dot(q[:, None], q[:, None]).sqrt().reshape(())
    Q = torch.zeros(m_max, H.n_local, dtype=H.dtype, device=H.device)
    alpha, beta = [], []
    theta = S = None
    for j in range(m_max):
        Q[j] = q
        w = H.apply(q)
        a = float(H.dot(q[:, None], w[:, None]))
        w = w - a * q - (beta[-1] * Q[j - 1] if j else 0)
        for _ in range(2):  # full reorthogonalization, twice (DGKS)
            h = H.dot(Q[: j + 1].T, w[:, None])[:, 0]
            w = w - Q[: j + 1].T @ h
        b = float(H.dot(w[:, None], w[:, None]).sqrt())
        alpha.append(a)
        T = np.diag(alpha) + np.diag(beta, 1) + np.diag(beta, -1)
        theta, S = np.linalg.eigh(T)
        scale = max(float(np.abs(theta).max()), np.finfo(np.float64).tiny)
        top = np.argsort(theta)[::-1][:k]
        done = j + 1 >= k and bool(np.all(np.abs(b * S[-1, top]) <= tol * scale))
        if done or j + 1 == m_max or b <= 1e-14 * scale:  # converged, or Krylov space full
            break
        beta.append(b)
        q = w / b
    top = np.argsort(theta)[::-1][:k]
    m = len(alpha)
    Y = (torch.as_tensor(S[:, top], dtype=H.dtype).T @ Q[:m]).contiguous()  # (k', n_local)
    vals = theta[top]
    HY = H.apply(Y.T.contiguous())
    Rm = HY - Y.T * torch.as_tensor(vals, dtype=H.dtype)
    res = H.dot(Rm, Rm).diagonal().sqrt().to(torch.float64).numpy() / scale
    conv = res <= tol
    if len(vals) < k or not conv.all():
        warn(
            f"sharded_hessian_eigs: {int(conv.sum())} of {k} eigenpairs converged to "
            f"tol={tol:g} in {m} steps (raise max_iter, or loosen tol)"
        )
    return ShardedEigs(
        values=np.asarray(vals, dtype=np.float64),
        vectors=Y,
        residuals=res,
        converged=conv,
        n_matvec=H.n_matvec - start,
    )
