"""The functional core: the loss of a model on data as a function of the weights."""

from __future__ import annotations

import contextlib
import copy
import math
import os
import threading
import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence

import torch
from torch import Tensor, nn

from .errors import CheckpointError, DataError, LossvizError, NonFiniteLossError
from .weights import Layout, Weights, as_state

try:  # the public context manager functional_call itself is built on
    from torch.nn.utils.stateless import _reparametrize_module
except ImportError:  # pragma: no cover - very old torch
    _reparametrize_module = None

_NORM_TYPES = (nn.modules.batchnorm._BatchNorm, nn.modules.instancenorm._InstanceNorm)


def to_device(x, device, non_blocking=True):
    if isinstance(x, Tensor):
        return x.to(device, non_blocking=non_blocking)
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


def batch_size(batch) -> int:
    """Number of samples in a batch: the leading size of its first tensor."""
    t = _first_tensor(batch)
    if t is None or t.ndim == 0:
        raise DataError("cannot tell the number of samples of a batch with no batched tensor")
    return int(t.shape[0])


def is_single_batch(data) -> bool:
    if isinstance(data, Mapping):
        return True
    if isinstance(data, (tuple, list)) and len(data) >= 1 and isinstance(data[0], Tensor):
        return True
    return False


def _shadow(model: nn.Module, device: torch.device | None) -> nn.Module:
    """A private copy of the module tree that shares the user's tensors.

    lossviz sets modes on the copy (eval, batch statistics) and swaps tensors into it
    with ``functional_call``; the user's modules are never touched. When the work runs
    on another device, the copy owns its tensors.
    """
    tensors = list(model.parameters()) + list(model.buffers())
    same = device is None or all(t.device == device for t in tensors)
    if same:
        memo = {id(t): t for t in tensors}
        return copy.deepcopy(model, memo)
    return copy.deepcopy(model).to(device)


def _math_sdpa():
    """Attention through the composite (math) kernel: it supports double backward and
    forward-mode AD, which the fused kernels do not."""
    try:
        from torch.nn.attention import SDPBackend, sdpa_kernel

        return sdpa_kernel([SDPBackend.MATH])
    except Exception:  # pragma: no cover - older torch
        return contextlib.nullcontext()


class Objective:
    """The loss of ``model`` on ``data`` as a function of the weights.

    ``L(θ) = Σ_b n_b · loss_fn(model_θ(x_b), y_b) / Σ_b n_b`` over the batches ``b`` of
    ``data`` (a sample-weighted mean, so a short last batch counts for what it holds).

    Args:
        model: any ``nn.Module``. It is never changed: lossviz evaluates a private copy of
            the module tree with ``torch.func.functional_call``.
        loss_fn: ``loss_fn(outputs, targets) -> mean-reduced scalar``.
        data: one batch ``(inputs, targets)`` (or a dict for ``forward``), or any iterable
            of batches (a list, a DataLoader).
        params: which parameters vary: a list of names or a predicate ``f(name) -> bool``
            (default: every parameter with ``requires_grad``). The rest stay fixed.
        bn: ``"eval"`` uses BatchNorm running statistics; ``"train"`` uses batch
            statistics without updating any buffer. Dropout is always off.
        forward: ``forward(model, batch) -> loss`` replaces ``loss_fn`` for anything else
            (dict batches, losses without targets, PDE residuals).
        device: where to compute (default: the model's device).
    """

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
    ):
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
        if loss_fn is None and forward is None:
            raise TypeError("give loss_fn(outputs, targets) or forward(model, batch)")
        if bn not in ("eval", "train"):
            raise ValueError(f"bn must be 'eval' or 'train', got {bn!r}")
        if data is None:
            raise DataError("data is required: one batch (inputs, targets) or an iterable")
        self.model = model
        self.loss_fn = loss_fn
        self.forward = forward
        self.bn = bn
        first = next(iter(model.parameters()), None)
        if device is None:
            device = first.device if first is not None else torch.device("cpu")
        self.device = torch.device(device)
        if self.device.type == "cuda" and self.device.index is None:
            self.device = torch.device("cuda", torch.cuda.current_device())

        named = dict(model.named_parameters())
        if not named:
            raise LossvizError("the model has no parameters")
        if params is None:
            names = [n for n, p in named.items() if p.requires_grad]
        elif callable(params):
            names = [n for n in named if params(n)]
        else:
            names = list(params)
            unknown = [n for n in names if n not in named]
            if unknown:
                raise LossvizError(
                    f"unknown parameter names {unknown[:10]}; the model has "
                    f"{list(named)[:10]}{' …' if len(named) > 10 else ''}"
                )
        if not names:
            raise LossvizError("the parameter selection is empty: no parameter varies")
        self.names = names
        self.layout = Layout([(n, named[n].shape) for n in names])
        self.dtype = named[names[0]].dtype
        all_names = set(dict(model.named_parameters(remove_duplicate=False)))
        self._aliases = all_names - set(named)
        self._buffer_names = {n for n, _ in model.named_buffers()}
        self._param_shapes = {n: p.shape for n, p in model.named_parameters()}
        self._param_shapes.update({n: b.shape for n, b in model.named_buffers()})

        self._shadow = _shadow(model, self.device)
        self._shadow.eval()
        if bn == "train":
            for m in self._shadow.modules():
                if isinstance(m, _NORM_TYPES):
                    m.train()
                    m.track_running_stats = False
        self._lock = threading.RLock()

        self._single = is_single_batch(data)
        if self._single:
            self._batches = [to_device(data, self.device)]
        elif isinstance(data, (list, tuple)):
            self._batches = [to_device(b, self.device) for b in data]
        elif isinstance(data, Iterable):
            if iter(data) is data:  # a generator: can be read once, keep it
                self._batches = [to_device(b, self.device) for b in data]
            else:
                self._batches = None
                self._data = data
        else:
            raise DataError(f"data must be a batch or an iterable of batches, got {type(data)}")
        if self._batches is not None and not self._batches:
            raise DataError("data is empty: no batch")
        self._hvp_method: dict[str, str] = {}  # fastest product method, per curvature
        self._hvp_times: dict[str, dict[str, float]] = {}  # seconds per vector
        self._hvp_failed: dict[str, str] = {}  # method -> why it is not used
        self._op_cache = None

    # data ------------------------------------------------------------------
    def _swap_batch(self, batch) -> None:
        """Evaluate on the single ``batch`` from now on, keeping the shadow module and the
        tuned product methods (SubspaceTracker's mini-batch refreshes)."""
        with self._lock:
            self._single = True
            self._batches = [to_device(batch, self.device)]
            self._op_cache = None

    def batches(self):
        """The batches on the compute device, with their sizes."""
        src = self._batches if self._batches is not None else self._data
        n = 0
        for b in src:
            if self._batches is None:
                b = to_device(b, self.device)
            n += 1
            yield b, batch_size(b)
        if n == 0:
            raise DataError("data is empty: no batch")

    @property
    def n_batches(self) -> int | None:
        return len(self._batches) if self._batches is not None else None

    # points ----------------------------------------------------------------
    def resolve(self, at=None) -> tuple[Tensor, dict[str, Tensor]]:
        """``(flat varying parameters (P,), other tensors)`` for a point ``at``.

        ``at`` may hold only the varying parameters (e.g. :class:`Weights`); the other
        parameters and buffers are then taken from the model. Keys and shapes are checked
        against the model.
        """
        cur = as_state(self.model)
        if at is None:
            state = cur
        else:
            given = as_state(at)
            unknown = sorted(k for k in given if k not in cur and k not in self._aliases)
            missing = [n for n in self.names if n not in given]
            shapes = [
                f"{k}: model {tuple(self._param_shapes[k])} vs given {tuple(v.shape)}"
                for k, v in given.items()
                if k in self._param_shapes and tuple(v.shape) != tuple(self._param_shapes[k])
            ]
            if unknown or missing or shapes:
                parts = []
                if missing:
                    parts.append(f"missing {len(missing)} parameter(s): {missing[:10]}")
                if unknown:
                    parts.append(f"{len(unknown)} key(s) not in the model: {unknown[:10]}")
                if shapes:
                    parts.append(f"{len(shapes)} shape mismatch(es): " + "; ".join(shapes[:10]))
                raise CheckpointError("point does not match the model: " + "; ".join(parts))
            state = dict(cur)
            state.update({k: v for k, v in given.items() if k not in self._aliases})
        flat = self.layout.flatten(state, dtype=self.dtype, device=self.device)
        fixed = {
            k: v.to(self.device)
            for k, v in state.items()
            if k not in self.layout.names and k not in self._aliases
        }
        return flat, fixed

    def weights(self, at=None) -> Weights:
        """The varying parameters at a point, as :class:`Weights` (a copy)."""
        flat, _ = self.resolve(at)
        return self.layout.to_weights(flat.clone())

    def as_flat(self, v) -> Tensor:
        """A direction (Weights / mapping over the varying parameters, or a flat tensor)."""
        if isinstance(v, Tensor):
            if v.shape[-1] != self.layout.size:
                raise LossvizError(
                    f"flat vector of size {v.shape[-1]}, expected {self.layout.size}"
                )
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
        raise TypeError(f"expected Weights or a tensor, got {type(v).__name__}")

    # evaluation ------------------------------------------------------------
    @contextlib.contextmanager
    def bound(self, flat, fixed: Mapping[str, Tensor]):
        """The private module with the given tensors swapped in (a context manager).

        ``flat``: the varying parameters as one flat ``(P,)`` tensor, or as a mapping
        ``name -> tensor`` (per-parameter leaves differentiate faster than slices of a
        flat vector: no zero-padded slice gradients).
        """
        tensors = dict(fixed)
        tensors.update(flat if isinstance(flat, Mapping) else self.layout.unflatten(flat))
        with self._lock:
            if _reparametrize_module is not None:
                with _reparametrize_module(self._shadow, tensors, tie_weights=True, strict=False):
                    yield self._shadow
            else:  # pragma: no cover
                yield _Bound(self._shadow, tensors)

    def batch_loss(self, flat, fixed: Mapping[str, Tensor], batch) -> Tensor:
        """The (differentiable) loss on one batch at weights ``flat`` (flat or a mapping)."""
        with self.bound(flat, fixed) as m:
            if self.forward is not None:
                loss = self.forward(m, batch)
            else:
                out = call_model(m, batch[0])
                loss = self.loss_fn(out, batch[1])
        if not isinstance(loss, Tensor) or loss.numel() != 1:
            shape = tuple(loss.shape) if isinstance(loss, Tensor) else type(loss).__name__
            raise LossvizError(f"the loss must be a scalar (use a mean-reduced loss); got {shape}")
        return loss.reshape(())

    def batch_outputs(self, flat, fixed: Mapping[str, Tensor], batch) -> Tensor:
        if self.forward is not None:
            raise LossvizError("outputs are not available with a custom forward=")
        with self.bound(flat, fixed) as m:
            return call_model(m, batch[0])

    def loss(self, at=None) -> float:
        """Full-data loss at a point (a float; NaN with a warning when not finite)."""
        flat, fixed = self.resolve(at)
        total, n = None, 0
        with torch.no_grad():
            for b, nb in self.batches():
                lb = self.batch_loss(flat, fixed, b).detach().to(torch.float64) * nb
                total = lb if total is None else total + lb
                n += nb
        value = float(total / n)
        if not math.isfinite(value):
            warnings.warn(f"the loss is not finite at this point: {value}", stacklevel=2)
        return value

    def gradient(self, at=None) -> Weights:
        """Full-data gradient ``∇L(θ)`` at a point."""
        flat, fixed = self.resolve(at)
        g = torch.zeros_like(flat)
        n = 0
        for b, nb in self.batches():
            theta = flat.detach().requires_grad_(True)
            loss = self.batch_loss(theta, fixed, b)
            check_finite(loss)
            (gb,) = torch.autograd.grad(loss, theta)
            g += gb * nb
            n += nb
        return self.layout.to_weights(g / n)

    def operator(self, at=None, *, curvature: str = "hessian"):
        """The curvature at a point as a linear operator on flat vectors (``op @ X``)."""
        from .hvp import CurvatureOperator

        sources = (
            None
            if isinstance(at, (str, os.PathLike))
            else as_state(self.model if at is None else at)
        )
        key = None
        if sources is not None:
            key = (curvature, id(at)) + tuple(
                (k, t.data_ptr(), t._version, tuple(t.shape)) for k, t in sources.items()
            )
            if self._op_cache is not None and self._op_cache[0] == key:
                return self._op_cache[2]
        flat, fixed = self.resolve(at)
        op = CurvatureOperator(self, flat, fixed, curvature=curvature)
        if key is not None:
            # the source tensors stay referenced, so no other tensor can reuse their memory
            self._op_cache = (key, list(sources.values()), op)
        return op

    def hvp(self, v, at=None, *, curvature: str = "hessian") -> Weights:
        """Hessian-vector product ``H(θ) v`` (or the Gauss-Newton product)."""
        op = self.operator(at, curvature=curvature)
        out = op.apply(self.as_flat(v)[None])[0]
        return self.layout.to_weights(out)

    def hvp_batched(self, vs, at=None, *, curvature: str = "hessian") -> list[Weights]:
        """``H v_i`` for several vectors in batched passes (a list of Weights or a
        ``(k, P)`` tensor)."""
        op = self.operator(at, curvature=curvature)
        V = (
            self.as_flat(vs)
            if isinstance(vs, Tensor)
            else torch.stack([self.as_flat(v) for v in vs])
        )
        out = op.apply(V)
        return [self.layout.to_weights(o) for o in out]

    @property
    def n_params(self) -> int:
        return self.layout.size

    def __repr__(self) -> str:
        nb = self.n_batches
        return (
            f"Objective({type(self.model).__name__}, {self.layout.size:,} varying parameters "
            f"in {len(self.names)} tensors, {nb if nb is not None else 'streamed'} batch(es), "
            f"bn={self.bn!r}, device={self.device})"
        )


def call_model(m, inputs):
    if isinstance(inputs, Mapping):
        return m(**inputs)
    if isinstance(inputs, (list, tuple)):
        return m(*inputs)
    return m(inputs)


class _Bound:  # pragma: no cover - fallback for torch without _reparametrize_module
    def __init__(self, module, tensors):
        self.module, self.tensors = module, tensors

    def __call__(self, *args, **kwargs):
        return torch.func.functional_call(self.module, self.tensors, args, kwargs)


def check_finite(loss: Tensor) -> None:
    if not bool(torch.isfinite(loss)):
        raise NonFiniteLossError(f"the loss is not finite at this point ({float(loss.detach())})")
