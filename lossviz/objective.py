"""The functional core: the loss of a model on data as a function of the weights."""

from __future__ import annotations

import contextlib
import copy
import functools
import hashlib
import itertools
import math
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence

import numpy as np
import torch
from torch import Tensor, nn

# the one private torch API lossviz uses (see reparametrized): no fallback, so a torch
# that moves it fails here, at import, loudly
from torch.nn.utils.stateless import _reparametrize_module

from . import validate
from .errors import (
    ArgumentTypeError,
    CheckpointError,
    DataError,
    LossvizError,
    NonFiniteLossError,
    named,
    warn,
)
from .interrupt import api
from .sharded import refuse_sharded
from .weights import Layout, Weights, as_state, check_matches

_NORM_TYPES = (nn.modules.batchnorm._BatchNorm, nn.modules.instancenorm._InstanceNorm)
F = nn.functional

#: batches read from an iterator before lossviz assumes it is endless (see ``max_batches``)
MAX_BATCHES = 10_000

_CLASSIFICATION = (nn.CrossEntropyLoss, nn.NLLLoss, F.cross_entropy, F.nll_loss)
_ELEMENTWISE = (
    nn.MSELoss,
    nn.L1Loss,
    nn.SmoothL1Loss,
    nn.HuberLoss,
    nn.BCELoss,
    nn.BCEWithLogitsLoss,
    F.mse_loss,
    F.l1_loss,
    F.smooth_l1_loss,
    F.huber_loss,
    F.binary_cross_entropy,
    F.binary_cross_entropy_with_logits,
)


def to_device(x, device, non_blocking=True):
    """``x`` (a tensor or a nest of tuples / lists / mappings of them) on ``device``.

    Tensors made under ``torch.inference_mode`` are copied into ordinary tensors (they
    cannot take part in autograd). Containers keep their types (namedtuples included);
    anything else is returned as is.

    Args:
        x: a tensor, or a nest of tuples / lists / mappings holding tensors.
        device: the target device.
        non_blocking: passed to ``Tensor.to`` (for the top-level tensor only; nested
            tensors use the default, True).

    Returns:
        ``x`` with every tensor on ``device``.
    """
    if isinstance(x, Tensor):
        x = x.to(device, non_blocking=non_blocking)
        return x.clone() if x.is_inference() else x
    if isinstance(x, Mapping):
        return (
            type(x)({k: to_device(v, device) for k, v in x.items()})
            if not isinstance(x, dict)
            else {k: to_device(v, device) for k, v in x.items()}
        )
    if isinstance(x, tuple) and hasattr(x, "_fields"):  # namedtuple
        return type(x)(*(to_device(v, device) for v in x))
    if isinstance(x, (list, tuple)):
        return type(x)(to_device(v, device) for v in x)
    return x


def _first_tensor(x):
    if isinstance(x, Tensor):
        return x
    if isinstance(x, Mapping):
        x = list(x.values())
    if isinstance(x, (list, tuple)):
        for v in x:
            t = _first_tensor(v)
            if t is not None:
                return t
    return None


def _tensors(x) -> list[Tensor]:
    """Every tensor in a nest of tuples / lists / mappings."""
    if isinstance(x, Tensor):
        return [x]
    if isinstance(x, Mapping):
        x = list(x.values())
    if isinstance(x, (list, tuple)):
        return [t for v in x for t in _tensors(v)]
    return []


def batch_size(batch) -> int:
    """Number of samples in a batch: the leading size of its first tensor.

    Args:
        batch: a tensor or a nest of tuples / lists / mappings holding tensors.

    Returns:
        The first tensor's ``shape[0]``.

    Raises:
        DataError: if the batch holds no tensor, or its first tensor is 0-d.
    """
    t = _first_tensor(batch)
    if t is None or t.ndim == 0:
        raise DataError(
            "cannot tell the number of samples of a batch with no batched tensor "
            f"(got {_describe(batch)})"
        )
    return int(t.shape[0])


def _describe(x, depth: int = 0) -> str:
    """A short description of a batch: types, shapes and dtypes."""
    if isinstance(x, Tensor):
        return f"tensor {tuple(x.shape)} {str(x.dtype).replace('torch.', '')}"
    if depth > 2:
        return type(x).__name__
    if isinstance(x, Mapping):
        return (
            "{"
            + ", ".join(f"{k!r}: {_describe(v, depth + 1)}" for k, v in list(x.items())[:6])
            + "}"
        )
    if isinstance(x, (list, tuple)):
        inner = ", ".join(_describe(v, depth + 1) for v in list(x)[:6])
        return f"({inner})" if isinstance(x, tuple) else f"[{inner}]"
    return type(x).__name__


def _refuse_non_tensors(data) -> None:
    """NumPy arrays or Python lists where batches of tensors were expected."""
    first = data[0] if len(data) else None
    items = list(first) if isinstance(first, (list, tuple)) else [first]
    if any(isinstance(v, np.ndarray) for v in items):
        raise DataError(
            "data holds NumPy arrays: lossviz needs torch tensors, e.g. "
            "(torch.as_tensor(x), torch.as_tensor(y))"
        )
    if _first_tensor(data) is None and any(
        isinstance(v, (list, tuple)) and v and isinstance(v[0], (int, float, list)) for v in items
    ):
        raise DataError(
            "data holds Python lists of numbers: lossviz needs torch tensors, e.g. "
            "(torch.tensor(x), torch.tensor(y))"
        )


def is_single_batch(data) -> bool:
    """Whether ``data`` is one batch rather than an iterable of batches.

    One batch is a mapping, a tensor, or a tuple / list whose first item is a tensor.

    Args:
        data: what was given as data.

    Returns:
        True for one batch.
    """
    if isinstance(data, (Mapping, Tensor)):
        return True
    if isinstance(data, (tuple, list)) and len(data) >= 1 and isinstance(data[0], Tensor):
        return True
    return False


def loss_target(loss_fn):
    """``(function or module, keyword arguments)`` behind ``functools.partial``.

    Args:
        loss_fn: a loss, possibly wrapped in (nested) ``functools.partial``.

    Returns:
        The innermost callable and the merged keywords (outer ones win).
    """
    kw: dict = {}
    while isinstance(loss_fn, functools.partial):
        kw = {**loss_fn.keywords, **kw}
        loss_fn = loss_fn.func
    return loss_fn, kw


def loss_reduction(loss_fn) -> str | None:
    """The reduction a loss declares, or None when it cannot be told.

    Args:
        loss_fn: an ``nn`` loss module (its ``.reduction``) or a ``functools.partial``
            with ``reduction=``.

    Returns:
        The declared reduction (``"mean"``, ``"sum"``, ``"none"``, ``"batchmean"``, …)
        or None.
    """
    f, kw = loss_target(loss_fn)
    r = kw.get("reduction", getattr(f, "reduction", None))
    return r if isinstance(r, str) else None


def is_one_of(f, kinds) -> bool:
    """Whether ``f`` is one of ``kinds``: an instance of a class in it, or a function in it.

    Args:
        f: a loss function or module.
        kinds: classes and functions.

    Returns:
        True if ``f`` matches one of them.
    """
    return any(f is k if not isinstance(k, type) else isinstance(f, k) for k in kinds)


def private_copy(model: nn.Module) -> nn.Module:
    """A private copy of the module tree that shares the user's tensors.

    lossviz sets modes on the copy (eval, batch statistics) and swaps every parameter and
    buffer into it with ``functional_call``; the user's modules are never touched. A model
    that cannot be deep-copied (a cached non-leaf tensor in an attribute, the old
    ``weight_norm``) gets a structural copy instead: new module objects with their own
    attribute dictionaries, sharing the attribute values.

    Args:
        model: the user's module.

    Returns:
        The copy (its parameters and buffers are the user's tensors).
    """
    tensors = list(model.parameters()) + list(model.buffers())
    memo = {id(t): t for t in tensors}
    try:
        return copy.deepcopy(model, memo)
    except Exception:  # noqa: BLE001 - anything deepcopy cannot copy: copy the structure
        return _structural_copy(model, {})


def _structural_copy(m: nn.Module, memo: dict) -> nn.Module:
    if id(m) in memo:
        return memo[id(m)]
    new = copy.copy(m)
    memo[id(m)] = new
    new._parameters = type(m._parameters)(m._parameters)
    new._buffers = type(m._buffers)(m._buffers)
    if hasattr(m, "_non_persistent_buffers_set"):
        new._non_persistent_buffers_set = set(m._non_persistent_buffers_set)
    new._modules = type(m._modules)(
        (k, None if c is None else _structural_copy(c, memo)) for k, c in m._modules.items()
    )
    return new


class _CompositeWeightNorm(torch.overrides.TorchFunctionMode):
    """``torch._weight_norm`` through composite ops.

    ``torch._weight_norm`` is behind ``nn.utils.weight_norm`` and
    ``nn.utils.parametrizations.weight_norm``. Its fused double backward is wrong in torch
    2.13 (``gradgradcheck`` fails; Hessians through it are off by tens of percent); the
    composite ``v · g / ||v||`` is exact.
    """

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is torch._weight_norm:
            v, g, *rest = args
            dim = rest[0] if rest else kwargs.get("dim", 0)
            return v * (g / torch.norm_except_dim(v, 2, dim))
        return func(*args, **kwargs)


def _uses_weight_norm(model: nn.Module) -> bool:
    from torch.nn.utils.weight_norm import WeightNorm

    for m in model.modules():
        if any(isinstance(h, WeightNorm) for h in m._forward_pre_hooks.values()):
            return True
        if type(m).__name__ == "_WeightNorm":  # torch.nn.utils.parametrizations
            return True
    return False


def math_sdpa():
    """Attention through the composite (math) kernel.

    It supports double backward and forward-mode AD, which the fused kernels do not
    (``torch.nn.attention.sdpa_kernel``, in torch since 2.3, the oldest torch lossviz
    supports).

    Returns:
        A context manager.
    """
    from torch.nn.attention import SDPBackend, sdpa_kernel

    return sdpa_kernel([SDPBackend.MATH])


class PointSnapshot:
    """An exact record of the tensors of a point (a private copy).

    To tell later whether the point still holds: ``snapshot == obj.snapshot(at)``
    compares every number (shapes, dtypes and values of the flat varying parameters and
    of every fixed tensor).

    Args:
        flat: the flat varying parameters (``Objective.resolve(at)[0]``).
        fixed: the other tensors (``Objective.resolve(at)[1]``).
    """

    __slots__ = ("flat", "fixed")

    def __init__(self, flat: Tensor, fixed: Mapping[str, Tensor]):
        self.flat, self.fixed = flat, dict(fixed)

    def __eq__(self, other) -> bool:
        if not isinstance(other, PointSnapshot):
            return NotImplemented
        return _same_tensors(self.flat, self.fixed, other.flat, other.fixed)

    __hash__ = None


def _same_tensors(fa: Tensor, xa: Mapping, fb: Tensor, xb: Mapping) -> bool:
    if fa.shape != fb.shape or fa.dtype != fb.dtype or not torch.equal(fa, fb):
        return False
    if xa.keys() != xb.keys():
        return False
    return all(
        xa[k].shape == xb[k].shape
        and xa[k].dtype == xb[k].dtype
        and xa[k].device == xb[k].device
        and torch.equal(xa[k], xb[k])
        for k in xa
    )


class Objective:
    """The loss of ``model`` on ``data`` as a function of the weights.

    ``L(θ) = Σ_b n_b · loss_fn(model_θ(x_b), y_b) / Σ_b n_b`` over the batches ``b`` of
    ``data`` (a sample-weighted mean, so a short last batch counts for what it holds);
    with ``reduction="sum"`` (a loss that sums over its batch) ``L(θ) = Σ_b loss_b``.

    Args:
        model: any ``nn.Module`` (a ``DistributedDataParallel`` / ``DataParallel``
            wrapper is unwrapped: its ``.module`` is evaluated, and neither the wrapper's
            forward nor its gradient all-reduce ever runs). It is never changed:
            lossviz evaluates a private copy of the module tree with
            ``torch.func.functional_call``, with private copies of the buffers at every
            forward (a forward that updates a buffer, or calls
            ``model.train()``, changes neither the user's model nor the next evaluation).
        loss_fn: ``loss_fn(outputs, targets) -> scalar`` (mean-reduced by default).
        data: one batch ``(inputs, targets)`` (or a dict / tensor for ``forward``), or any
            iterable of batches (a list, a DataLoader). A one-shot iterator (a generator)
            is read once, here, and kept; an endless one needs ``max_batches``.
        params: which parameters vary: a list of names or a predicate ``f(name) -> bool``
            (default: every parameter with ``requires_grad`` and at least one element).
            The rest stay fixed.
        bn: ``"eval"`` uses BatchNorm running statistics; ``"train"`` uses batch
            statistics without updating any buffer. Dropout is always off.
        forward: ``forward(model, batch) -> loss`` replaces ``loss_fn`` for anything else
            (dict batches, losses without targets, PDE residuals). It must use the
            ``model`` it is given.
        device: where to compute (default: the model's device).
        reduction: ``"mean"`` or ``"sum"``: how ``loss_fn`` reduces over a batch, and so
            how batches combine (above). Default: the loss's own ``.reduction`` (an
            ``nn`` loss module or a ``functools.partial`` with ``reduction=``), else
            ``"mean"``.
        max_batches: use at most this many batches of ``data`` per pass (required for an
            endless iterator such as ``itertools.cycle``).
        distributed: False (one process), True (the default ``torch.distributed``
            process group) or a ``ProcessGroup``: data parallel. Every rank holds its
            shard of the data (an empty shard is allowed: it contributes no samples) and
            the same model; the loss, gradient, curvature products and landscape values
            are the sample-weighted mean over **all** ranks' samples (one all-reduce of
            the weighted sums and the counts per evaluation / block of products), the
            same on every rank. Built collectively: every rank must construct it, and
            make the same calls in the same order. A DDP-wrapped model works (above),
            and so does a DataLoader with a ``DistributedSampler`` that does not pad
            (padding repeats samples: an error; ``drop_last=True`` leaves samples out:
            a warning). BatchNorm with ``bn="eval"`` uses the running statistics of
            the model, which must be equal on every rank (checked; after a DDP
            training step they differ until DDP's next forward broadcasts rank 0's:
            ``docs/distributed.md``). Not supported yet (they raise): ``bn="train"``,
            ``bn="recompute"`` in the landscape kernels (``shard="grid"`` with all the
            data on every rank does it),
            :meth:`swap_batch`, the dashboards, the empirical Fisher, ``reset_bn`` and
            alignment on the Objective's data.

    Raises:
        LossvizError: for any bad argument, before anything is computed (an unknown
            ``bn`` / ``reduction``, a ``reduction`` that differs from the loss's own, a
            model without parameters, a ``params`` selection that is empty, unknown,
            not floating-point or of mixed dtypes). The loss is evaluated once on the
            first batch when the Objective is built, so that what the model or loss
            cannot take (a loss that detaches or does not depend on the parameters, a
            loss that is not a scalar, dtypes that differ, a model that uses
            ``torch.utils.checkpoint`` with ``use_reentrant=True``) is reported here,
            with what was expected. A model sharded across processes (FSDP1, FSDP2
            ``fully_shard``, DTensor parameters) is not supported yet: named, with how
            to gather it (:mod:`lossviz.sharded`).
        ArgumentTypeError: ``model`` not an ``nn.Module``, neither ``loss_fn`` nor
            ``forward`` given, a non-callable ``loss_fn`` / ``forward``, ``params`` or
            ``data`` of the wrong type, ``distributed`` neither a bool nor a process
            group. With ``distributed``: no initialised process group, an option not
            supported yet (above), parameters or buffers that
            differ between ranks (naming the ranks), a failure on another rank (naming
            it); :class:`DataError` when no rank holds a sample.
        DataError: data that cannot be used: missing or empty, NumPy arrays or Python
            lists, batches that are not ``(inputs, targets)`` without ``forward=``,
            inputs and targets with different numbers of samples, class labels out of
            range or floating-point, targets shaped unlike the outputs of an element-wise
            loss, a one-shot iterator with more than ``MAX_BATCHES`` batches and no
            ``max_batches``.

    >>> from lossviz.data import digits, mlp
    >>> x, y = digits()
    >>> obj = Objective(mlp((64, 10)), torch.nn.functional.cross_entropy, (x, y))
    >>> obj.n_params == sum(p.numel() for p in obj.model.parameters())
    True
    """

    @api
    def __init__(
        self,
        model: nn.Module,
        loss_fn: Callable | None = None,
        data=None,
        *,
        params: Sequence[str] | Callable[[str], bool] | None = None,
        bn: str = "eval",
        forward: Callable | None = None,
        device: str | torch.device | None = None,
        reduction: str | None = None,
        max_batches: int | None = None,
        distributed=False,
    ):
        if not isinstance(model, nn.Module):
            raise ArgumentTypeError(f"model must be an nn.Module, got {type(model).__name__}")
        refuse_sharded(model)  # FSDP / DTensor: not supported yet, named
        model = unwrap_parallel(model)  # DDP / DataParallel: the module inside
        self._group, self.rank, self.world_size = _process_group(distributed, model, bn)
        self.distributed = self._group is not False
        if loss_fn is None and forward is None:
            raise ArgumentTypeError("give loss_fn(outputs, targets) or forward(model, batch)")
        validate.callable_(loss_fn, "loss_fn", "a function loss_fn(outputs, targets)", none=True)
        validate.callable_(
            forward, "forward", "a function forward(model, batch) -> loss", none=True
        )
        validate.choice(bn, "bn", ("eval", "train"))
        validate.choice(reduction, "reduction", (None, "mean", "sum"))
        self.max_batches = validate.integer(max_batches, "max_batches", none=True)
        if data is None:
            raise DataError("data is required: one batch (inputs, targets) or an iterable")
        self.model = model
        self.loss_fn = loss_fn
        self.forward = forward
        self.bn = bn
        self.reduction = self._reduction(reduction)

        named = dict(model.named_parameters())
        if not named:
            raise LossvizError("the model has no parameters")
        first = next(iter(named.values()))
        self.device = validate.device(first.device if device is None else device)
        if self.device.type == "cuda" and self.device.index is None:
            self.device = torch.device("cuda", torch.cuda.current_device())
        self.names = self._select(named, params)
        bad = [n for n in self.names if not named[n].is_floating_point()]
        if bad:
            raise LossvizError(f"params: {bad[:10]} are not floating-point and cannot vary")
        dtypes = {named[n].dtype for n in self.names}
        if len(dtypes) > 1:
            raise LossvizError(
                "the varying parameters have different dtypes "
                f"({sorted(str(d).replace('torch.', '') for d in dtypes)}): convert the model "
                "to one (model.float() or model.double()), or choose params= of one dtype"
            )
        self.layout = Layout([(n, named[n].shape) for n in self.names])
        self.dtype = named[self.names[0]].dtype
        if self.layout.size == 0:
            raise LossvizError(
                f"params: the selected parameters {self.names[:10]} have no elements"
            )
        all_names = set(dict(model.named_parameters(remove_duplicate=False)))
        self._aliases = all_names - set(named)
        self._buffer_names = {n for n, _ in model.named_buffers()}
        self._param_shapes = {n: p.shape for n, p in model.named_parameters()}
        self._param_shapes.update({n: b.shape for n, b in model.named_buffers()})

        self._shadow = private_copy(model)
        self._shadow.eval()
        if bn == "train":
            for m in self._shadow.modules():
                if isinstance(m, _NORM_TYPES):
                    m.train()
                    m.track_running_stats = False
        # the modes lossviz set, restored after every forward (a forward= may change them)
        self._modes = [
            (m, m.training, getattr(m, "track_running_stats", None)) for m in self._shadow.modules()
        ]
        self._lock = threading.RLock()
        self._op_fix = _CompositeWeightNorm if _uses_weight_norm(model) else None

        self._data = None
        self._stream_shape: tuple[int, int] | None = None  # (batches, samples) of a pass
        self._batches, self._sizes = self._ingest(data)
        # the product method choice (timings, failures) is kept by lossviz.hvp:
        # lossviz.hvp.product_methods(obj)
        self._op_cache = None  # (operator, copy of the single batch it was built on)
        # the class label a classification loss skips (its ignore_index; -100 by default)
        f, kw = loss_target(loss_fn)
        self.ignore_index = kw.get("ignore_index", getattr(f, "ignore_index", -100))
        if self.distributed:
            self._construct_distributed()
        else:
            self._probe()

    # distributed -------------------------------------------------------------
    def _all_reduce(self, t: Tensor, op: str = "sum") -> Tensor:
        """``t`` summed (or minimized, ``op="min"``) over the ranks: a new tensor."""
        import torch.distributed as dist

        group = self._group
        dev = self.device if dist.get_backend(group) == "nccl" else torch.device("cpu")
        x = t.to(dev, copy=True).contiguous()
        dist.all_reduce(x, op=dist.ReduceOp.MIN if op == "min" else dist.ReduceOp.SUM, group=group)
        return x.to(t.device)

    def agreed_min(self, value: int) -> int:
        """The smallest of ``value`` over the ranks (``value`` itself in one process).

        Args:
            value: this rank's integer (a chunk size).

        Returns:
            The minimum over all ranks.
        """
        if not self.distributed:
            return value
        return int(self._all_reduce(torch.tensor([value], dtype=torch.float64), "min")[0])

    def _raise_agreed(self, codes: Tensor, err: BaseException | None, what: str) -> None:
        """Raise on every rank when any rank failed (the same kind of error everywhere).

        ``codes`` holds each rank's :func:`_failure_code`; the worst wins. The ranks that
        failed with it re-raise their own error; the others raise one of the same kind,
        naming the ranks, so that every rank takes the same decision (halve a chunk, drop
        a method, stop).
        """
        codes = [int(c) for c in codes.tolist()]
        worst = max(codes)
        if worst == 0:
            return
        if err is not None and _failure_code(err) == worst:
            raise err
        bad = [i for i, c in enumerate(codes) if c == worst]
        where = f"rank{'s' if len(bad) > 1 else ''} {', '.join(map(str, bad))}"
        if worst == 1:
            raise MemoryError(f"{what}: out of memory on {where}")
        if worst == 3:
            raise LossvizError(f"{what} failed on {where} (its error is reported there)")
        raise RuntimeError(f"{what} failed on {where} (its error is reported there)")

    def reduce_sums(
        self,
        compute: Callable[[], tuple[Tensor, int]],
        shape,
        what: str = "the value",
        inputs: Tensor | None = None,
    ) -> tuple[Tensor, int]:
        """Weighted sums and sample counts over all ranks: one all-reduce.

        ``compute()`` returns this process's weighted sum (a tensor of ``shape``) and
        number of samples. In one process that is the result; with ``distributed=`` the
        sums and counts of every rank are added (in float64) with one all-reduce, which
        also carries each rank's failure, so that a failure on one rank stops every rank
        (or makes every rank halve its chunk, for out of memory).

        Args:
            compute: ``() -> (weighted sum, samples)`` on this rank's shard.
            shape: the shape of the sum (the same on every rank).
            what: what is computed, for messages.
            inputs: the vectors or points the sums are of, which must be the same on
                every rank (probes drawn with one seed, the same grid): a fingerprint of
                them travels in the same all-reduce and ranks that differ are an error.

        Returns:
            ``(sum over all ranks, samples over all ranks)``, the sum in the dtype and on
            the device ``compute`` gave.
        """
        if not self.distributed:
            return compute()
        err, s, n = None, None, 0
        try:
            s, n = compute()
        except Exception as e:  # noqa: BLE001 - every rank learns of it, below
            err = e
        numel, W = math.prod(shape), self.world_size
        buf = torch.zeros(numel + 1 + 3 * W, dtype=torch.float64, device=self.device)
        if s is not None:
            buf[:numel] = s.detach().reshape(-1)
        buf[numel] = n
        buf[numel + 1 + self.rank] = _failure_code(err)
        fp = numel + 1 + W  # each rank's fingerprint of its inputs: 2 numbers
        if inputs is not None:
            buf[fp + 2 * self.rank : fp + 2 * self.rank + 2] = _fingerprint(inputs)
        buf = self._all_reduce(buf)
        self._raise_agreed(buf[numel + 1 : fp], err, what)
        if inputs is not None:
            prints = buf[fp:].view(W, 2)
            own = prints[self.rank]
            differ = [
                i for i in range(W) if not torch.allclose(prints[i], own, rtol=1e-12, atol=0.0)
            ]
            if differ:
                raise LossvizError(
                    f"{what}: the vectors / points differ between ranks (rank {self.rank} "
                    f"and rank(s) {', '.join(map(str, differ))}): every rank must pass the "
                    "same seed= and the same points or directions"
                )
        return buf[:numel].reshape(shape).to(s.device, s.dtype), int(buf[numel])

    def require_local(self, what: str) -> None:
        """Refuse a feature that does not support ``distributed=`` yet.

        Args:
            what: the feature, named in the error.

        Raises:
            LossvizError: when this Objective is distributed.
        """
        if self.distributed:
            raise LossvizError(
                f"{what} is not supported with distributed= yet: build the Objective "
                "without distributed= (one process, all the data) for it"
            )

    def agree(self, fn: Callable, what: str, key: Callable | None = None):
        """``fn()`` on every rank, with every rank told of a failure on any (one all-reduce).

        For checks whose outcome must be the same on every rank (which metrics apply):
        when ``fn`` fails on one rank every rank raises, and when ``key(result)`` (a
        string) differs between ranks a :class:`LossvizError` names them. In one process
        it is ``fn()``.

        Args:
            fn: ``() -> result`` on this rank.
            what: what is checked, for messages.
            key: ``result -> str`` that must be equal on every rank (None: not compared).

        Returns:
            ``fn()``'s result.

        Raises:
            LossvizError: the ranks' keys differ; a LossvizError on another rank.
            Exception: this rank's own error, or one of the same kind from another rank.
        """
        if not self.distributed:
            return fn()
        err, out = None, None
        try:
            out = fn()
        except Exception as e:  # noqa: BLE001 - every rank learns of it, below
            err = e
        W, r = self.world_size, self.rank
        buf = torch.zeros(2 * W, dtype=torch.float64)
        buf[r] = _failure_code(err)
        if err is None and key is not None:
            buf[W + r] = int.from_bytes(hashlib.sha256(key(out).encode()).digest()[:6], "big")
        buf = self._all_reduce(buf)
        self._raise_agreed(buf[:W], err, what)
        ks = buf[W:].tolist()
        differ = [i for i in range(W) if ks[i] != ks[0]]
        if differ:
            raise LossvizError(f"{what}: ranks {differ} disagree with rank 0 (their data differ)")
        return out

    def _construct_distributed(self) -> None:
        """Collective checks at construction: one all-reduce of ``3 × world size`` numbers.

        Each rank's checksum of the parameters and buffers, its number of samples and
        whether its probe (:meth:`_probe`) failed.
        """
        W, r = self.world_size, self.rank
        err, n_local = None, 0
        try:
            if self._batches is not None:
                n_local = sum(self._sizes)
            else:  # streamed: does this shard hold a batch?
                n_local = 1 if next(self._stream(limit=1), None) is not None else 0
            if n_local:
                self._probe()
        except Exception as e:  # noqa: BLE001 - every rank learns of it, below
            err = e
        buf = torch.zeros(3 * W, dtype=torch.float64)
        buf[r] = _checksum(self.model)
        buf[W + r] = n_local
        buf[2 * W + r] = _failure_code(err)
        buf = self._all_reduce(buf)
        self._raise_agreed(buf[2 * W :], err, "building the Objective")
        sums = buf[:W].tolist()
        differ = [i for i in range(W) if sums[i] != sums[0]]
        if differ:
            raise LossvizError(
                f"distributed: the model on rank{'s' if len(differ) > 1 else ''} "
                f"{', '.join(map(str, differ))} differs from rank 0's (a checksum of the "
                "parameters and buffers): every rank must hold the same model (the same "
                "seed, or the same checkpoint loaded on every rank)"
            )
        if float(buf[W : 2 * W].sum()) == 0:
            raise DataError("distributed: no rank holds a sample (every shard is empty)")

    # construction ------------------------------------------------------------
    def _reduction(self, given: str | None) -> str:
        if self.loss_fn is None:
            return given or "mean"
        declared = loss_reduction(self.loss_fn)
        if declared not in (None, "mean", "sum", "batchmean"):
            raise LossvizError(
                f"loss_fn has reduction={declared!r}: lossviz needs a scalar loss per batch; "
                "use reduction='mean' (or 'sum')"
            )
        declared = "mean" if declared == "batchmean" else declared
        if given is not None and declared is not None and given != declared:
            raise LossvizError(f"reduction={given!r} but loss_fn declares reduction={declared!r}")
        return given or declared or "mean"

    @staticmethod
    def _select(named: dict, params) -> list[str]:
        if params is None:
            names = [n for n, p in named.items() if p.requires_grad and p.numel() > 0]
        elif callable(params) and not isinstance(params, (str, Sequence)):
            names = [n for n in named if params(n)]
        elif isinstance(params, str) or not isinstance(params, Iterable):
            raise ArgumentTypeError(
                f"params must be a list of parameter names or a predicate name -> bool, got "
                f"{params!r}"
            )
        else:
            names = list(params)
            wrong = [n for n in names if not isinstance(n, str)]
            if wrong:
                raise ArgumentTypeError(f"params must name parameters by string, got {wrong[:5]}")
            dup = sorted({n for n in names if names.count(n) > 1})
            if dup:
                raise LossvizError(f"params names {dup[:10]} more than once")
            unknown = [n for n in names if n not in named]
            if unknown:
                raise LossvizError(
                    f"params: unknown parameter names {unknown[:10]}; the model has "
                    f"{list(named)[:10]}{' …' if len(named) > 10 else ''}"
                )
        if not names:
            raise LossvizError("params: the parameter selection is empty: no parameter varies")
        return names

    def _ingest(self, data):
        """``(batches, sizes)`` kept in memory, or ``(None, None)`` for a re-iterable source.

        A re-iterable source (a DataLoader) is read at every pass.
        """
        if isinstance(data, (str, bytes)):
            raise ArgumentTypeError(
                f"data must be a batch or an iterable of batches, got a {type(data).__name__}"
            )
        if is_single_batch(data):
            b = to_device(data, self.device)
            n = self._check_batch(b, None)
            return ([b], [n]) if n else ([], [])  # 0 samples: only on a distributed rank
        if isinstance(data, (list, tuple)):
            _refuse_non_tensors(data)
            src = list(data)
            if self.max_batches is not None:
                src = src[: self.max_batches]
        elif isinstance(data, Iterable):
            if not isinstance(data, Iterator):  # re-iterable (a DataLoader): every pass
                if self.distributed:
                    _check_sampler(data)
                self._data = data
                return None, None
            src = self._read_once(data)
        else:
            raise ArgumentTypeError(
                f"data must be a batch (inputs, targets) or an iterable of batches, got "
                f"{type(data).__name__}"
            )
        if not src and not self.distributed:
            raise DataError("data is empty: no batch")
        batches = [to_device(b, self.device) for b in src]
        sizes = [self._check_batch(b, i) for i, b in enumerate(batches)]
        # a batch of 0 samples is only accepted on a distributed rank: it holds nothing
        keep = [i for i, n in enumerate(sizes) if n]
        return [batches[i] for i in keep], [sizes[i] for i in keep]

    def _read_once(self, it) -> list:
        """All batches of a one-shot iterator (bounded by ``max_batches``)."""
        if self.max_batches is not None:
            return list(itertools.islice(it, self.max_batches))
        out = list(itertools.islice(it, MAX_BATCHES + 1))
        if len(out) > MAX_BATCHES:
            raise DataError(
                f"data yielded more than {MAX_BATCHES:,} batches and may be endless (an "
                "itertools.cycle or an infinite sampler?): pass max_batches=N to use its "
                "first N batches"
            )
        return out

    def _check_batch(self, b, i) -> int:
        """The number of samples of batch ``i``; raises for a batch lossviz cannot use."""
        where = "the batch" if i is None else f"batch {i}"
        if self.forward is None:
            if isinstance(b, Mapping):
                raise DataError(
                    f"{where} is a dict (keys {list(b)[:6]}): lossviz cannot tell inputs from "
                    "targets; give forward=lambda model, batch: loss"
                )
            if isinstance(b, Tensor):
                raise DataError(
                    f"{where} is a bare tensor {tuple(b.shape)}: give (inputs, targets), or "
                    "forward=lambda model, batch: loss for a loss without targets"
                )
            if not isinstance(b, (tuple, list)):
                raise DataError(f"{where} must be (inputs, targets), got {_describe(b)}")
            if len(b) < 2:
                raise DataError(
                    f"{where} is {_describe(b)}: no targets. A batch is (inputs, targets); "
                    "for a loss without targets give forward=lambda model, batch: loss"
                )
            if len(b) > 2:
                raise DataError(
                    f"{where} has {len(b)} elements ({_describe(b)}); lossviz reads "
                    "(inputs, targets) and would ignore the rest (sample weights?): give "
                    "forward=lambda model, batch: loss to use them"
                )
            nx = batch_size(b[0])
            y = b[1]
            if isinstance(y, Tensor) and y.ndim > 0 and int(y.shape[0]) != nx:
                raise DataError(
                    f"{where}: the inputs hold {nx} samples but the targets "
                    f"{int(y.shape[0])} ({_describe(b)})"
                )
        n = batch_size(b)
        if n == 0 and not self.distributed:
            raise DataError(f"{where} has no samples ({_describe(b)})")
        return n

    def _probe(self) -> None:
        """Evaluate the loss once on the first batch, with a gradient.

        So that anything the model or the loss cannot take is reported now, with what was
        expected.
        """
        batch = next(self._stream(limit=1))[0]
        flat, fixed = self.resolve()
        leaves = {
            n: t.detach().requires_grad_(True) for n, t in self.layout.unflatten(flat).items()
        }
        with torch.enable_grad(), math_sdpa():
            try:
                with self.bound(leaves, fixed) as m:
                    if self.forward is not None:
                        loss = self.forward(m, batch)
                    else:
                        out = call_model(m, batch[0])
                        classes = self._check_targets(out, batch[1], "the first batch")
                        if classes is not None and self._batches is not None:
                            for i, b in enumerate(self._batches[1:], 1):
                                self._check_labels(b[1], classes, f"batch {i}")
                        loss = self.loss_fn(out, batch[1])
            except (LossvizError, KeyboardInterrupt):
                raise
            except Exception as e:  # noqa: BLE001 - reported with what lossviz was given
                raise LossvizError(self._explain(e, batch)) from e
        loss = self._scalar(loss)
        what = (
            "forward(model, batch)"
            if self.forward is not None
            else "loss_fn(model(inputs), targets)"
        )
        if not loss.requires_grad:
            raise LossvizError(
                f"{what} returned a loss with no gradient with respect to the parameters: "
                "does it .detach(), go through .item() / NumPy, run under torch.no_grad(), "
                + (
                    "or use a model other than the one it is given?"
                    if self.forward
                    else "or does the model detach its output?"
                )
            )
        with torch.enable_grad():
            try:
                grads = torch.autograd.grad(loss, list(leaves.values()), allow_unused=True)
            except RuntimeError as e:
                if "use_reentrant" not in str(e):
                    raise
                raise LossvizError(
                    f"{what}: the model uses torch.utils.checkpoint with use_reentrant=True, "
                    "which cannot be differentiated with torch.autograd.grad (nor twice, as "
                    "curvature needs); pass use_reentrant=False to checkpoint(...)"
                ) from e
        if all(g is None for g in grads):
            raise LossvizError(
                f"{what}: the loss does not depend on the parameters lossviz varies"
                + (
                    " (forward= must compute the loss with the model it is given, not a "
                    "model captured from outside)"
                    if self.forward is not None
                    else ""
                )
            )

    def _explain(self, e: Exception, batch) -> str:
        who = (
            "forward(model, batch)"
            if self.forward is not None
            else "loss_fn(model(inputs), targets)"
        )
        msg = (
            f"{who} failed on the first batch ({_describe(batch)}): "
            f"{type(e).__name__}: {str(e).strip().splitlines()[0][:300]}"
        )
        hints = []
        floats = {t.dtype for t in _tensors(batch) if t.is_floating_point()}
        if floats and self.dtype not in floats:
            hints.append(
                f"the data is {'/'.join(sorted(str(d)[6:] for d in floats))} but the "
                f"parameters are {str(self.dtype)[6:]}: convert one to the other "
                f"(e.g. x.to({self.dtype}))"
            )
        if hints:
            msg += ". Hint: " + "; ".join(hints)
        return msg

    def _check_targets(self, out, y, where: str) -> int | None:
        """Refuse targets a classification or element-wise loss cannot take.

        Returns the number of classes to check the other batches' labels against (None if
        not a class loss).
        """
        f, kw = loss_target(self.loss_fn)
        if not isinstance(out, Tensor) or not isinstance(y, Tensor):
            return None
        if is_one_of(f, _ELEMENTWISE) and out.shape != y.shape:
            raise DataError(
                f"{where}: the model outputs {tuple(out.shape)} but the targets are "
                f"{tuple(y.shape)}; an element-wise loss would broadcast them into a wrong "
                "value: reshape the targets (e.g. y.view_as(outputs) or y[:, None])"
            )
        if not is_one_of(f, _CLASSIFICATION) or out.ndim < 2:
            return None
        if y.is_floating_point():
            if y.shape == out.shape:  # class probabilities
                return None
            raise DataError(
                f"{where}: the targets are {str(y.dtype)[6:]} {tuple(y.shape)} but the loss "
                f"takes integer class labels for outputs {tuple(out.shape)}: use y.long() "
                "(or class probabilities shaped like the outputs)"
            )
        if y.dtype == torch.bool or y.is_complex():
            raise DataError(
                f"{where}: the targets are {str(y.dtype)[6:]}; class labels must be integers"
            )
        classes = int(out.shape[1])
        self._check_labels(y, classes, where)
        return classes

    def _check_labels(self, y, classes: int, where: str) -> None:
        if not isinstance(y, Tensor) or y.is_floating_point() or y.numel() == 0:
            return
        ok = ((y >= 0) & (y < classes)) | (y == self.ignore_index)
        if not bool(ok.all()):
            bad = y[~ok]
            raise DataError(
                f"{where}: class labels out of range: the model outputs {classes} classes "
                f"(labels 0 to {classes - 1}) but the targets hold {int(bad.min())}"
                + (f" to {int(bad.max())}" if int(bad.max()) != int(bad.min()) else "")
            )

    # data ------------------------------------------------------------------
    def swap_batch(self, batch) -> None:
        """Evaluate on the single ``batch`` from now on.

        E.g. a mini-batch Hessian at each training step, as
        :class:`~lossviz.SubspaceTracker` does. It keeps the private copy of the model and
        the tuned product methods; the cached curvature operator is dropped. The model is
        not changed.

        Args:
            batch: one batch ``(inputs, targets)`` (or what ``forward=`` takes), moved to
                the Objective's device.

        Raises:
            DataError: the batch is empty or malformed (as for ``data=``).
        """
        if self.distributed:
            raise LossvizError("swap_batch is not supported with distributed= yet")
        with self._lock:
            b = to_device(batch, self.device)
            n = self._check_batch(b, None)
            self._data = None
            self._batches, self._sizes = [b], [n]
            self._op_cache = None

    def _stream(self, limit: int | None = None):
        """``(batch on the device, samples)`` pairs of one pass.

        A re-iterable source is checked for a pass that differs from the first one.
        """
        if self._batches is not None:
            yield from itertools.islice(zip(self._batches, self._sizes), limit)
            return
        cap = self.max_batches if self.max_batches is not None else MAX_BATCHES + 1
        n = total = 0
        for i, b in enumerate(itertools.islice(self._data, cap if limit is None else limit)):
            if i == MAX_BATCHES and self.max_batches is None:
                raise DataError(
                    f"data yielded more than {MAX_BATCHES:,} batches in one pass and may be "
                    "endless: pass max_batches=N to use its first N batches"
                )
            b = to_device(b, self.device)
            nb = self._check_batch(b, i)
            if nb == 0:  # only on a distributed rank
                continue
            n, total = n + 1, total + nb
            yield b, nb
        if limit is not None and n:
            return
        if n == 0 and not (self.distributed and self._stream_shape in (None, (0, 0))):
            if self._stream_shape is not None:
                raise DataError(
                    "data can be iterated only once (its second pass was empty): "
                    "pass a list of batches or a DataLoader"
                )
            raise DataError("data is empty: no batch")
        if self._stream_shape is None:
            self._stream_shape = (n, total)
        elif self._stream_shape != (n, total):
            raise DataError(
                f"data changed between passes: {self._stream_shape[0]} batches / "
                f"{self._stream_shape[1]} samples, then {n} / {total} (drop_last with "
                "shuffling, or a sampler that draws a different number each pass?); lossviz "
                "needs the same samples at every pass"
            )

    def batches(self):
        """The batches on the compute device, with their sizes (one pass).

        Returns:
            An iterator of ``(batch, number of samples)``.

        Raises:
            DataError: (while iterating a streamed source) a malformed or empty batch,
                no batch at all, more than ``MAX_BATCHES`` batches without
                ``max_batches``, or a pass with other numbers of batches / samples than
                the first.
        """
        return self._stream()

    def first_batch(self):
        """``(batch, samples)``: the first batch on the compute device.

        Raises:
            DataError: as :meth:`batches`; on a distributed rank whose shard is empty.
        """
        try:
            return next(self._stream(limit=1))
        except StopIteration:
            raise DataError(
                f"rank {self.rank} holds no samples: this needs a batch on every rank with "
                "distributed= (give every rank at least one sample)"
            ) from None

    def held_batches(self) -> list | None:
        """The batches kept in memory (a copy of the list), or None for a streamed source.

        A streamed source (a DataLoader) is read at every pass.
        """
        return None if self._batches is None else list(self._batches)

    @property
    def buffer_names(self) -> frozenset:
        """Names of the model's buffers (never varied; copied at every forward)."""
        return frozenset(self._buffer_names)

    @property
    def n_batches(self) -> int | None:
        """Number of batches kept in memory (None for a streamed source)."""
        return len(self._batches) if self._batches is not None else None

    def batch_weight(self, n_samples: int) -> float:
        """The weight of a batch of ``n_samples`` in the full-data sum.

        ``n_b`` for a mean loss, 1 for a summed one; divide the weighted sum by
        :meth:`normalizer`.
        """
        return float(n_samples) if self.reduction == "mean" else 1.0

    def normalizer(self, total_samples: int) -> float:
        """What the weighted sum of batch losses is divided by (``N`` or 1)."""
        return float(total_samples) if self.reduction == "mean" else 1.0

    # points ----------------------------------------------------------------
    @api
    def resolve(self, at=None, *, name: str | None = None) -> tuple[Tensor, dict[str, Tensor]]:
        """``(flat varying parameters (P,), other tensors)`` for a point ``at``.

        Both are private copies on the compute device. ``at`` may hold only the varying
        parameters (e.g. :class:`Weights`); the other parameters and buffers are then
        taken from the model. Keys and shapes are checked against the model.

        Args:
            at: None (the model now), an ``nn.Module``, a mapping ``name -> tensor`` (a
                state dict, :class:`Weights`) or a checkpoint path.
            name: the argument ``at`` came from; errors start with it.

        Returns:
            ``(flat, fixed)``: the ``(P,)`` varying parameters in ``layout`` order (the
            Objective's dtype) and ``name -> tensor`` for the fixed parameters and
            buffers.

        Raises:
            CheckpointError: if ``at`` lacks varying parameters, has keys the model lacks
                or other shapes, or a checkpoint path cannot be loaded.
            ArgumentTypeError: if ``at`` is of another type or a mapping holds
                non-tensors.
        """
        with named(name):
            return self._resolve(at)

    def _resolve(self, at):
        cur = as_state(self.model)
        if at is None:
            state = cur
        else:
            given = _strip_wrapper_prefix(as_state(unwrap_parallel(at)), self._param_shapes)
            check_matches(given, self._param_shapes, self.names, ignore=self._aliases)
            state = dict(cur)
            state.update({k: v for k, v in given.items() if k not in self._aliases})
        flat = self.layout.flatten(state, dtype=self.dtype, device=self.device)
        fixed = {
            k: v.to(self.device, copy=True)
            for k, v in state.items()
            if k not in self.layout.names and k not in self._aliases
        }
        return flat, fixed

    @api
    def weights(self, at=None) -> Weights:
        """The varying parameters at a point, as :class:`Weights` (a copy).

        Args:
            at: the point, as in :meth:`resolve` (None: the model).

        Returns:
            :class:`Weights` ``name -> tensor`` over the varying parameters.

        Raises:
            CheckpointError: as :meth:`resolve` (a point that does not match the model).
            ArgumentTypeError: as :meth:`resolve` (a point of the wrong type).
        """
        flat, _ = self.resolve(at)
        return self.layout.to_weights(flat)

    @api
    def snapshot(self, at=None) -> PointSnapshot:
        """An exact, private record of the point ``at`` (see :class:`PointSnapshot`).

        Args:
            at: the point, as in :meth:`resolve` (None: the model).

        Returns:
            A :class:`PointSnapshot`.

        Raises:
            CheckpointError: as :meth:`resolve` (a point that does not match the model).
            ArgumentTypeError: as :meth:`resolve` (a point of the wrong type).
        """
        return PointSnapshot(*self.resolve(at))

    def as_flat(self, v, *, name: str | None = None) -> Tensor:
        """A direction as a flat tensor over the varying parameters.

        Args:
            v: :class:`Weights` / a mapping over exactly the varying parameters, or a
                tensor whose last dimension is ``P`` (a ``(P,)`` vector or a ``(k, P)``
                stack), real.
            name: the argument it came from; errors start with it.

        Returns:
            The tensor on the Objective's device and dtype (``(P,)`` for a mapping).

        Raises:
            LossvizError: if a tensor's last dimension is not ``P``.
            ArgumentTypeError: if ``v`` is neither a mapping nor a tensor, or the tensor
                is not real.
            CheckpointError: if a mapping lacks varying parameters, has others, or has
                other shapes.
        """
        with named(name):
            return self._as_flat(v)

    def _as_flat(self, v) -> Tensor:
        if isinstance(v, Tensor):
            if v.ndim == 0 or v.shape[-1] != self.layout.size:
                raise LossvizError(
                    f"flat vector of shape {tuple(v.shape)}, expected size {self.layout.size}"
                )
            if not (v.is_floating_point() or v.dtype in (torch.int32, torch.int64)):
                raise ArgumentTypeError(f"a direction must be a real tensor, got {v.dtype}")
            return v.to(self.device, self.dtype)
        if isinstance(v, Mapping):
            missing = [n for n in self.names if n not in v]
            extra = [n for n in v if n not in self.layout.names]
            bad = [
                f"{n}: {tuple(v[n].shape)} vs {tuple(s)}"
                for n, s in zip(self.names, self.layout.shapes)
                if n in v and tuple(v[n].shape) != tuple(s)
            ]
            if missing or extra or bad:
                raise CheckpointError(
                    f"direction does not match the varying parameters: missing {missing[:10]}, "
                    f"extra {extra[:10]}, shapes {bad[:10]}"
                )
            return self.layout.flatten(v, dtype=self.dtype, device=self.device)
        raise ArgumentTypeError(f"expected Weights or a tensor, got {type(v).__name__}")

    # evaluation ------------------------------------------------------------
    def module_copy(self) -> nn.Module:
        """A new copy of the module tree as this Objective evaluates it.

        Dropout is off, BatchNorm in the ``bn`` mode; parameter and buffer tensors are its
        own: it shares nothing with the model, so loading a point into it (``p.copy_``)
        changes neither the model nor the Objective. Calling it at a point with the
        buffers of ``fixed`` computes what :meth:`batch_outputs` computes there.

        Returns:
            The ``nn.Module`` copy.

        Raises:
            LossvizError: when the model cannot be deep-copied (a cached non-leaf tensor
                in an attribute, the old ``weight_norm``).
        """
        with self._lock:
            try:
                return copy.deepcopy(self._shadow)
            except Exception as e:  # noqa: BLE001 - anything deepcopy cannot copy
                raise LossvizError(
                    f"the model cannot be copied ({type(e).__name__}: {str(e)[:200]})"
                ) from None

    @contextlib.contextmanager
    def bound(self, flat, fixed: Mapping[str, Tensor]):
        """The private module with the given tensors swapped in (a context manager).

        ``flat``: the varying parameters as one flat ``(P,)`` tensor, or as a mapping
        ``name -> tensor`` (per-parameter leaves differentiate faster than slices of a
        flat vector: no zero-padded slice gradients). Buffers are copied for each use, so
        a forward that updates them in place changes neither the model nor later uses;
        the modules' train/eval modes are restored afterwards.

        Args:
            flat: the varying parameters, flat ``(P,)`` or a mapping ``name -> tensor``.
            fixed: the fixed parameters and buffers, ``name -> tensor``.

        Yields:
            The private module with the tensors swapped in.
        """
        tensors = {k: (v.clone() if k in self._buffer_names else v) for k, v in fixed.items()}
        tensors.update(flat if isinstance(flat, Mapping) else self.layout.unflatten(flat))
        with self._lock:
            try:
                fix = self._op_fix() if self._op_fix is not None else contextlib.nullcontext()
                with reparametrized(self._shadow, tensors), fix:
                    yield self._shadow
            finally:
                for m, mode, track in self._modes:
                    if m.training != mode:
                        m.training = mode
                    if track is not None and m.track_running_stats != track:
                        m.track_running_stats = track

    def _loss(self, m, batch) -> Tensor:
        return self.loss_fn(call_model(m, batch[0]), batch[1])

    @staticmethod
    def _scalar(loss) -> Tensor:
        if not isinstance(loss, Tensor) or loss.numel() != 1:
            shape = tuple(loss.shape) if isinstance(loss, Tensor) else type(loss).__name__
            raise LossvizError(
                f"the loss must be a scalar tensor (use a mean- or sum-reduced loss); got {shape}"
            )
        if not loss.is_floating_point():
            raise LossvizError(f"the loss must be a floating-point tensor, got {loss.dtype}")
        return loss.reshape(())

    def batch_loss(self, flat, fixed: Mapping[str, Tensor], batch) -> Tensor:
        """The (differentiable) loss on one batch at weights ``flat``.

        Args:
            flat: the varying parameters, flat ``(P,)`` or a mapping ``name -> tensor``.
            fixed: the fixed parameters and buffers.
            batch: one batch on the compute device.

        Returns:
            A 0-d tensor: ``loss_fn(model(inputs), targets)`` or ``forward(model, batch)``.

        Raises:
            LossvizError: if the loss is not a floating-point scalar.
        """
        with self.bound(flat, fixed) as m:
            loss = self.forward(m, batch) if self.forward is not None else self._loss(m, batch)
        return self._scalar(loss)

    def batch_outputs(self, flat, fixed: Mapping[str, Tensor], batch) -> Tensor:
        """The model's outputs on one batch at weights ``flat``.

        Args:
            flat: the varying parameters, flat ``(P,)`` or a mapping ``name -> tensor``.
            fixed: the fixed parameters and buffers.
            batch: one batch ``(inputs, targets)`` on the compute device.

        Returns:
            ``model(inputs)``.

        Raises:
            LossvizError: with a custom ``forward=`` (the outputs are not known).
        """
        if self.forward is not None:
            raise LossvizError("outputs are not available with a custom forward=")
        with self.bound(flat, fixed) as m:
            return call_model(m, batch[0])

    @api
    def loss(self, at=None) -> float:
        """Full-data loss at a point.

        ``L(θ) = Σ_b w_b·L_b(θ) / Z`` over the batches: ``w_b = n_b`` and ``Z = Σ_b n_b``
        for a mean loss (a sample-weighted mean, exact with a short last batch); ``w_b =
        1``, ``Z = 1`` with ``reduction="sum"``. Accumulated in float64.

        Args:
            at: the point, as in :meth:`resolve` (None: the model).

        Returns:
            The loss as a float (a non-finite value is returned as is, with a warning).

        Raises:
            CheckpointError: as :meth:`resolve` (a point that does not match the model).
            ArgumentTypeError: as :meth:`resolve` (a point of the wrong type).
            LossvizError: if the loss is not a floating-point scalar on a batch.
            DataError: as :meth:`batches`.
        """
        flat, fixed = self.resolve(at)

        def local():
            total, n = torch.zeros((), dtype=torch.float64, device=self.device), 0
            with torch.no_grad():
                for b, nb in self.batches():
                    lb = self.batch_loss(flat, fixed, b).detach().to(torch.float64)
                    total = total + lb * self.batch_weight(nb)
                    n += nb
            return total, n

        total, n = self.reduce_sums(local, (), "the loss")
        value = float(total / self.normalizer(n))
        if not math.isfinite(value):
            warn(f"the loss is not finite at this point: {value}")
        return value

    @api
    def gradient(self, at=None) -> Weights:
        """Full-data gradient ``∇L(θ)`` at a point (also inside ``torch.no_grad()``).

        ``∇L = Σ_b w_b·∇L_b / Z``, batches weighted as in :meth:`loss`.

        Args:
            at: the point, as in :meth:`resolve` (None: the model).

        Returns:
            :class:`Weights` over the varying parameters.

        Raises:
            NonFiniteLossError: if the loss is NaN or infinite on a batch.
            LossvizError: if the loss is not a floating-point scalar or has no gradient.
            CheckpointError: as :meth:`resolve` (a point that does not match the model).
            ArgumentTypeError: as :meth:`resolve` (a point of the wrong type).
            DataError: as :meth:`batches`.
        """
        flat, fixed = self.resolve(at)

        def local():
            g = torch.zeros_like(flat)
            n = 0
            with torch.enable_grad():
                for b, nb in self.batches():
                    theta = flat.detach().requires_grad_(True)
                    loss = self.batch_loss(theta, fixed, b)
                    check_finite(loss)
                    check_differentiable(loss, self)
                    (gb,) = torch.autograd.grad(loss, theta)
                    g += gb * self.batch_weight(nb)
                    n += nb
            return g, n

        g, n = self.reduce_sums(local, flat.shape, "the gradient")
        return self.layout.to_weights(g / self.normalizer(n))

    @api
    def operator(self, at=None, *, curvature: str = "hessian"):
        """The curvature at a point as a linear operator on flat vectors (``op @ X``).

        The operator (and its cached gradient graph) is reused while the point and the data
        are exactly the same: every number is compared with a kept copy, so weights
        changed in place by any route (``.data``, an optimizer step, ``load_state_dict``,
        ``copy_``, ``set_``) give a new operator.

        Args:
            at: the point, as in :meth:`resolve` (None: the model).
            curvature: ``"hessian"`` (``H = ∇²L(θ)``) or ``"ggn"`` (the generalized
                Gauss-Newton ``G = Jᵀ H_ℓ J``).

        Returns:
            A :class:`~lossviz.hvp.CurvatureOperator`.

        Raises:
            LossvizError: for an unknown ``curvature``.
            CheckpointError: as :meth:`resolve` (a point that does not match the model).
            ArgumentTypeError: as :meth:`resolve` (a point of the wrong type).
        """
        from .hvp import CurvatureOperator

        validate.choice(curvature, "curvature", ("hessian", "ggn"))
        flat, fixed = self.resolve(at)
        with self._lock:
            cached = self._op_cache
            if cached is not None:
                op, data = cached
                if (
                    op.curvature == curvature
                    and self._same_data(data)
                    and _same_tensors(op.flat, op.fixed, flat, fixed)
                ):
                    return op
            op = CurvatureOperator(self, flat, fixed, curvature=curvature)
            self._op_cache = (op, self._data_copy())
        return op

    def release(self) -> None:
        """Free the cached curvature operator and its gradient graph.

        The next product builds them again.
        """
        with self._lock:
            self._op_cache = None

    def _data_copy(self):
        """A copy of the single in-memory batch (the cached graph depends on it)."""
        if self._batches is None or len(self._batches) != 1:
            return None
        return [t.clone() for t in _tensors(self._batches[0])]

    def _same_data(self, copy_) -> bool:
        if self._batches is None or len(self._batches) != 1:
            return copy_ is None
        now = _tensors(self._batches[0])
        return (
            copy_ is not None
            and len(now) == len(copy_)
            and all(
                a.shape == b.shape and a.dtype == b.dtype and torch.equal(a, b)
                for a, b in zip(now, copy_)
            )
        )

    @api
    def hvp(self, v, at=None, *, curvature: str = "hessian") -> Weights:
        """Hessian-vector product ``H(θ) v`` (or the Gauss-Newton product ``G v``).

        Args:
            v: the vector, as in :meth:`as_flat` (Weights or a flat ``(P,)`` tensor).
            at: the point, as in :meth:`resolve` (None: the model).
            curvature: ``"hessian"`` or ``"ggn"``.

        Returns:
            :class:`Weights` over the varying parameters.

        Raises:
            LossvizError: as :meth:`operator` and :meth:`as_flat`; if no product method
                works on this model.
            NonFiniteLossError: if the loss is NaN or infinite at the point.
            ArgumentTypeError: as :meth:`as_flat` (a vector of the wrong type).
            CheckpointError: as :meth:`as_flat` (Weights that do not match); as
                :meth:`resolve`.
        """
        op = self.operator(at, curvature=curvature)
        out = op.apply(self.as_flat(v)[None])[0]
        return self.layout.to_weights(out)

    @api
    def hvp_batched(self, vs, at=None, *, curvature: str = "hessian") -> list[Weights]:
        """``H v_i`` for several vectors in batched passes.

        Args:
            vs: a list of vectors (Weights or flat tensors) or a ``(k, P)`` tensor.
            at: the point, as in :meth:`resolve` (None: the model).
            curvature: ``"hessian"`` or ``"ggn"``.

        Returns:
            A list of ``k`` :class:`Weights`.

        Raises:
            LossvizError: if the vectors do not form a ``(k, P)`` stack; as :meth:`hvp`.
            NonFiniteLossError: if the loss is NaN or infinite at the point.
        """
        op = self.operator(at, curvature=curvature)
        V = (
            self.as_flat(vs)
            if isinstance(vs, Tensor)
            else torch.stack([self.as_flat(v) for v in vs])
        )
        if V.ndim != 2:
            raise LossvizError(
                f"vs must be a (k, {self.layout.size}) tensor or a list of "
                f"vectors, got shape {tuple(V.shape)}"
            )
        out = op.apply(V)
        return [self.layout.to_weights(o) for o in out]

    @property
    def n_params(self) -> int:
        """Number of varying parameters ``P``."""
        return self.layout.size

    def __repr__(self) -> str:
        nb = self.n_batches
        red = "" if self.reduction == "mean" else f", reduction={self.reduction!r}"
        return (
            f"Objective({type(self.model).__name__}, {self.layout.size:,} varying parameters "
            f"in {len(self.names)} tensors, {nb if nb is not None else 'streamed'} batch(es), "
            f"bn={self.bn!r}{red}, device={self.device}"
            + (f", distributed: rank {self.rank} of {self.world_size}" if self.distributed else "")
            + ")"
        )


def _fingerprint(x: Tensor) -> Tensor:
    """Two float64 numbers that differ for different tensors of one shape (in practice).

    The sum, and a dot product with fixed weights from the positions, so that a reordering
    or a different random draw shows.
    """
    v = x.detach().reshape(-1).to(torch.float64)
    w = torch.sin(torch.arange(v.numel(), dtype=torch.float64, device=v.device) * 0.7 + 0.3)
    return torch.stack([v.sum(), v @ w])


def _failure_code(err: BaseException | None) -> int:
    """0: no failure; 1: out of memory; 2: another error; 3: a LossvizError (bad input)."""
    from .errors import is_oom

    if err is None:
        return 0
    if isinstance(err, LossvizError):
        return 3
    return 1 if is_oom(err) else 2


def _check_sampler(loader) -> None:
    """Refuse a ``DistributedSampler`` that repeats samples (warn of one that drops some).

    With ``drop_last=False`` it pads the shards with copies of samples: the mean over the
    ranks would count them twice.
    """
    from torch.utils.data.distributed import DistributedSampler

    s = getattr(loader, "sampler", None)
    if isinstance(s, DistributedSampler) and s.total_size < len(s.dataset):
        warn(
            f"the DataLoader's DistributedSampler (drop_last=True) leaves "
            f"{len(s.dataset) - s.total_size} of {len(s.dataset)} samples out on every "
            "pass: the full-data mean is over the other "
            f"{s.total_size} samples"
        )
    if isinstance(s, DistributedSampler) and s.total_size > len(s.dataset):
        raise DataError(
            f"the DataLoader's DistributedSampler pads {len(s.dataset)} samples to "
            f"{s.total_size} by repeating {s.total_size - len(s.dataset)} of them (so that "
            "every rank gets as many): the full-data mean would count them twice. Give "
            "each rank its own shard instead (e.g. a Subset of indices rank::world_size "
            "with a plain sampler; shards may differ in size)"
        )


def _checksum(model: nn.Module) -> int:
    """A 48-bit hash of the names, shapes, dtypes and values of the parameters and buffers.

    Exact in float64, so the ranks' hashes can travel in one all-reduce.
    """
    h = hashlib.sha256()
    for name, t in itertools.chain(model.named_parameters(), model.named_buffers()):
        t = t.detach()
        h.update(f"{name}:{tuple(t.shape)}:{t.dtype};".encode())
        if t.numel():
            h.update(t.contiguous().reshape(-1).view(torch.uint8).cpu().numpy().tobytes())
    return int.from_bytes(h.digest()[:6], "big")


def _process_group(distributed, model: nn.Module, bn: str):
    """``(group, rank, world size)`` for ``distributed=``; ``(False, 0, 1)`` for one process.

    Checked before any work: a process group that is initialised, a model that is not
    wrapped in DDP, options supported with data parallelism.
    """
    if distributed is False or distributed is None:
        return False, 0, 1
    import torch.distributed as dist

    if distributed is True:
        group = None
    elif dist.is_available() and isinstance(distributed, dist.ProcessGroup):
        group = distributed
    else:
        raise ArgumentTypeError(
            "distributed must be True, False or a torch.distributed ProcessGroup, got "
            f"{type(distributed).__name__}"
        )
    if not dist.is_available() or not dist.is_initialized():
        raise LossvizError(
            "distributed=True needs an initialised torch.distributed process group: call "
            "torch.distributed.init_process_group(...) first (torchrun sets up the "
            "environment it reads)"
        )
    if bn == "train":
        raise LossvizError(
            "bn='train' is not supported with distributed= yet (batch statistics per rank)"
        )
    return group, dist.get_rank(group), dist.get_world_size(group)


def unwrap_parallel(model):
    """The module inside a ``DistributedDataParallel`` / ``DataParallel`` wrapper.

    lossviz evaluates the wrapped module (``.module``) functionally: the wrapper's own
    forward (its buffer broadcast, the gradient all-reduce hooks of its reducer) is never
    run and the wrapper is not touched. Anything else is returned as is.

    Args:
        model: a module (or a point: anything else).

    Returns:
        ``model.module`` for a DDP / DataParallel wrapper, else ``model``.
    """
    from torch.nn.parallel import DataParallel, DistributedDataParallel

    if isinstance(model, (DistributedDataParallel, DataParallel)):
        return model.module
    return model


def _strip_wrapper_prefix(state: dict, names) -> dict:
    """A state dict saved from a DDP / DataParallel wrapper without its ``module.`` prefix.

    Only when every key has the prefix and none of the model's names do.
    """
    pre = "module."
    if (
        state
        and all(k.startswith(pre) for k in state)
        and not any(k.startswith(pre) for k in names)
    ):
        return {k[len(pre) :]: v for k, v in state.items()}
    return state


def call_model(m, inputs):
    """``m(**inputs)`` for a mapping, ``m(*inputs)`` for a tuple / list, else ``m(inputs)``.

    Args:
        m: the module.
        inputs: the batch's inputs.

    Returns:
        The module's outputs.
    """
    if isinstance(inputs, Mapping):
        return m(**inputs)
    if isinstance(inputs, (list, tuple)):
        return m(*inputs)
    return m(inputs)


def reparametrized(module: nn.Module, tensors: Mapping[str, Tensor]):
    """A context manager: ``module`` with ``tensors`` in place of its own, restored on exit.

    Tied parameters follow; names not given keep the module's tensors. The tensors may be
    batched under ``torch.vmap``. This is what ``torch.func.functional_call`` does around
    one call of ``module.forward``; here the module itself can be handed to any code (a
    custom ``forward(model, batch)``), which functional_call cannot do. It wraps torch's
    private ``torch.nn.utils.stateless._reparametrize_module`` (checked with torch 2.3 to
    2.13; the one place lossviz uses it).

    Args:
        module: the module to reparametrize.
        tensors: ``name -> tensor``, parameters and buffers by their ``state_dict`` names.

    Returns:
        The context manager.
    """
    return _reparametrize_module(module, dict(tensors), tie_weights=True, strict=False)


def check_finite(loss: Tensor) -> None:
    """Refuse a loss that is NaN or infinite.

    Args:
        loss: a scalar loss.

    Raises:
        NonFiniteLossError: if it is not finite.
    """
    if not bool(torch.isfinite(loss)):
        raise NonFiniteLossError(f"the loss is not finite at this point ({float(loss.detach())})")


def check_differentiable(loss: Tensor, obj: Objective | None = None) -> None:
    """Refuse a loss that autograd cannot differentiate (detached in ``loss_fn`` / ``forward``).

    Args:
        loss: a scalar loss.
        obj: the Objective it comes from (unused).

    Raises:
        LossvizError: if ``loss`` does not require a gradient.
    """
    if not loss.requires_grad:
        raise LossvizError(
            "the loss has no gradient with respect to the parameters (does loss_fn / forward "
            "detach it, or use a model other than the one it is given?)"
        )


__all__ = [
    "Objective",
    "PointSnapshot",
    "batch_size",
    "call_model",
    "is_single_batch",
    "loss_reduction",
    "private_copy",
    "reparametrized",
    "to_device",
    "unwrap_parallel",
]
