"""Points and directions in weight space.

:class:`Weights` is an ordered mapping ``name -> tensor`` with the vector-space operations
(``+``, ``-``, scalar ``*``, :meth:`dot`, :meth:`norm`). Every lossviz function that returns
a vector in weight space returns one; every argument that names a point accepts a model, a
mapping of tensors, or a checkpoint path (see :func:`as_state`).
"""

from __future__ import annotations

import collections
import copy
import os
from collections.abc import Iterator, Mapping
from numbers import Number
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from .errors import ArgumentTypeError, CheckpointError, named


class Weights(Mapping):
    """An ordered mapping ``name -> tensor`` that behaves like a vector.

    Supports ``+`` and ``-`` with another mapping of the same keys (in the same order) and
    shapes, ``*`` and ``/`` by a scalar (a number, a 0-d tensor or a 0-d array), and the
    Euclidean :meth:`dot` and :meth:`norm` over all tensors. Pickles as a plain
    ``OrderedDict``, so ``torch.save(w)`` loads back with ``torch.load(weights_only=True)``.

    Args:
        tensors: A mapping ``name -> tensor`` (copied shallowly; the tensors are not
            cloned), or None for an empty point.
        **kw: More ``name=tensor`` entries, added after (and overriding) ``tensors``.

    Raises:
        ArgumentTypeError: if a value is not a ``torch.Tensor``. The operators raise
            :class:`~lossviz.errors.CheckpointError` when the other operand has different
            keys, key order or shapes, and ``ArgumentTypeError`` for a non-scalar factor.

    Examples:
        >>> w = Weights({"a": torch.ones(2), "b": torch.zeros(3)})
    >>> round(float((2 * w - w).norm() ** 2), 6), float(w.dot(w))
    (2.0, 2.0)
    """

    __slots__ = ("_t",)
    # NumPy scalars on the left (``np.float64(2) * w``) defer to Weights' own operators
    __array_ufunc__ = None

    def __init__(self, tensors: Mapping[str, Tensor] | None = None, **kw: Tensor):
        d = dict(tensors or {})
        d.update(kw)
        for k, v in d.items():
            if not isinstance(v, Tensor):
                raise ArgumentTypeError(f"Weights[{k!r}] must be a tensor, got {type(v).__name__}")
        self._t = d

    # Mapping protocol
    def __getitem__(self, key: str) -> Tensor:
        return self._t[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._t)

    def __len__(self) -> int:
        return len(self._t)

    # constructors
    @classmethod
    def from_module(cls, model: nn.Module, *, buffers: bool = False) -> Weights:
        """Detached copies of a module's parameters (and buffers if asked).

        Args:
            model: The module whose ``named_parameters()`` are copied.
            buffers: Also copy ``named_buffers()`` (BatchNorm running statistics, ...).

        Returns:
            A new :class:`Weights` of cloned, detached tensors.
        """
        d = {n: p.detach().clone() for n, p in model.named_parameters()}
        if buffers:
            d.update({n: b.detach().clone() for n, b in model.named_buffers()})
        return cls(d)

    def zeros_like(self) -> Weights:
        """A :class:`Weights` of zeros with the same keys, shapes, dtypes and devices."""
        return self._map(torch.zeros_like)

    def randn_like(self, generator: torch.Generator | None = None) -> Weights:
        """Standard normal entries with the same keys, shapes, dtypes and devices.

        Args:
            generator: The ``torch.Generator`` to draw from (the global one when None).

        Returns:
            A new :class:`Weights` with i.i.d. N(0, 1) entries.
        """
        return Weights(
            {
                k: torch.randn(v.shape, generator=generator, dtype=v.dtype, device=v.device)
                for k, v in self._t.items()
            }
        )

    # vector space
    def _map(self, fn) -> Weights:
        return Weights({k: fn(v) for k, v in self._t.items()})

    def _zip(self, other, fn) -> Weights:
        if not isinstance(other, Mapping):
            return NotImplemented
        self._check_like(other)
        return Weights({k: fn(v, other[k]) for k, v in self._t.items()})

    def _check_like(self, other: Mapping) -> None:
        """Same keys in the same order, and the same shapes (never broadcast)."""
        if list(other.keys()) != list(self._t.keys()):
            a, b = set(self._t), set(other.keys())
            raise CheckpointError(
                "Weights with different keys: "
                f"only left {sorted(a - b)[:10]}, only right {sorted(b - a)[:10]}"
                + ("" if a != b else " (same keys in another order)")
            )
        bad = [
            f"{k}: {tuple(v.shape)} vs {tuple(other[k].shape)}"
            for k, v in self._t.items()
            if not isinstance(other[k], Tensor) or other[k].shape != v.shape
        ]
        if bad:
            raise CheckpointError(f"Weights with different shapes: {'; '.join(bad[:10])}")

    @staticmethod
    def _scalar(s):
        """A scalar factor (Python / NumPy number, 0-d tensor or array), else None."""
        if isinstance(s, bool):
            return None
        if isinstance(s, Number):
            return s
        if isinstance(s, Tensor) and s.ndim == 0:
            return s
        if isinstance(s, np.ndarray) and s.ndim == 0 and np.issubdtype(s.dtype, np.number):
            return s.item()
        return None

    def __add__(self, other):
        return self._zip(other, torch.add)

    def __radd__(self, other):
        if isinstance(other, Number) and not isinstance(other, bool) and other == 0:
            return self  # sum(list of Weights)
        return self._zip(other, torch.add)

    def __sub__(self, other):
        return self._zip(other, torch.sub)

    def __rsub__(self, other):
        return self._zip(other, lambda a, b: b - a)

    def __mul__(self, s):
        f = self._scalar(s)
        if f is None:
            raise ArgumentTypeError(
                f"Weights can be multiplied by a scalar (a number or a 0-d tensor), "
                f"not by {type(s).__name__}"
                + (f" of shape {tuple(s.shape)}" if hasattr(s, "shape") else "")
            )
        return self._map(lambda v: v * f)

    __rmul__ = __mul__

    def __truediv__(self, s):
        f = self._scalar(s)
        if f is None:
            raise ArgumentTypeError(
                f"Weights can be divided by a scalar, not by {type(s).__name__}"
            )
        return self._map(lambda v: v / f)

    def __neg__(self):
        return self._map(torch.neg)

    def dot(self, other: Mapping[str, Tensor]) -> Tensor:
        """Euclidean inner product over all tensors, ``sum_k <self[k], other[k]>``.

        Args:
            other: Weights or a mapping with the same keys (same order) and shapes.

        Returns:
            A 0-d tensor.

        Raises:
            ArgumentTypeError: if ``other`` is not a mapping.
            CheckpointError: if the keys, their order or the shapes differ.
        """
        if not isinstance(other, Mapping):
            raise ArgumentTypeError(
                f"Weights.dot needs Weights or a mapping, got {type(other).__name__}"
            )
        self._check_like(other)
        return sum((v * other[k]).sum() for k, v in self._t.items())

    def norm(self) -> Tensor:
        """Euclidean norm over all tensors, ``sqrt(sum_k ||self[k]||^2)`` (a 0-d tensor)."""
        return torch.sqrt(sum(v.pow(2).sum() for v in self._t.values()))

    def to(self, *args, **kwargs) -> Weights:
        """Every tensor moved or cast with ``Tensor.to(*args, **kwargs)``."""
        return self._map(lambda v: v.to(*args, **kwargs))

    def detach(self) -> Weights:
        """Every tensor detached from the autograd graph (no copy)."""
        return self._map(Tensor.detach)

    def clone(self) -> Weights:
        """Detached copies of every tensor."""
        return self._map(lambda v: v.detach().clone())

    def __reduce__(self):
        # pickled as a plain OrderedDict, so torch.save(w) loads back with
        # torch.load(weights_only=True) (which refuses unknown classes)
        return (collections.OrderedDict, (list(self._t.items()),))

    def __copy__(self) -> Weights:
        return Weights(dict(self._t))

    def __deepcopy__(self, memo) -> Weights:
        return Weights({k: copy.deepcopy(v, memo) for k, v in self._t.items()})

    def state_dict(self) -> dict[str, Tensor]:
        """A plain ``name -> tensor`` dict (for ``model.load_state_dict`` or ``torch.save``)."""
        return dict(self._t)

    @property
    def numel(self) -> int:
        """The total number of entries over all tensors."""
        return sum(v.numel() for v in self._t.values())

    def flatten(self) -> Tensor:
        """All tensors concatenated into one 1-D tensor (in key order)."""
        return torch.cat([v.reshape(-1) for v in self._t.values()])

    def __repr__(self) -> str:
        if not self._t:
            return "Weights({})"
        v0 = next(iter(self._t.values()))
        return (
            f"Weights({len(self._t)} tensors, {self.numel:,} numbers, "
            f"{str(v0.dtype).replace('torch.', '')}, {v0.device}: "
            + ", ".join(list(self._t)[:4])
            + (", …)" if len(self._t) > 4 else ")")
        )


class Layout:
    """The names, shapes and offsets of a flat vector of parameters."""

    def __init__(self, named_shapes: list[tuple[str, torch.Size]]):
        self.names = [n for n, _ in named_shapes]
        self.shapes = [torch.Size(s) for _, s in named_shapes]
        self.numels = [int(torch.Size(s).numel()) for s in self.shapes]
        self.size = sum(self.numels)
        offs = [0]
        for n in self.numels:
            offs.append(offs[-1] + n)
        self.offsets = offs

    def unflatten(self, flat: Tensor) -> dict[str, Tensor]:
        """Views into ``flat`` (``(..., P)``) shaped like each parameter."""
        lead = flat.shape[:-1]
        return {
            n: flat[..., a : a + k].view(*lead, *s)
            for n, s, k, a in zip(self.names, self.shapes, self.numels, self.offsets)
        }

    def by_module(self) -> dict[str, list[str]]:
        """Parameter names grouped by the module that owns them, in layout order.

        The module is the name up to the last dot: the one definition of "a layer" for
        blocks and groups.

        Returns:
            A dict ``module name -> [parameter names]``.

        Examples:
            >>> Layout([("0.weight", (2, 2)), ("0.bias", (2,)), ("scale", ())]).by_module()
            {'0': ['0.weight', '0.bias'], 'scale': ['scale']}
        """
        out: dict[str, list[str]] = {}
        for n in self.names:
            out.setdefault(n.rsplit(".", 1)[0] if "." in n else n, []).append(n)
        return out

    def to_weights(self, flat: Tensor) -> Weights:
        """:meth:`unflatten` as a :class:`Weights`."""
        return Weights(self.unflatten(flat))

    def flatten(self, w: Mapping[str, Tensor], *, dtype=None, device=None) -> Tensor:
        """Concatenate the tensors of ``w`` named in this layout into one 1-D tensor.

        Args:
            w: A mapping that holds (at least) every name of the layout.
            dtype: The dtype of the result (that of the tensors when None).
            device: The device of the result (that of the tensors when None).

        Returns:
            A 1-D tensor of length :attr:`size`, in layout order.

        Raises:
            CheckpointError: if a name of the layout is missing from ``w``.
        """
        missing = [n for n in self.names if n not in w]
        if missing:
            raise CheckpointError(f"missing tensors: {missing[:10]}")
        return torch.cat([w[n].reshape(-1).to(dtype=dtype, device=device) for n in self.names])

    def slices(self) -> dict[str, slice]:
        """The slice of the flat vector that each parameter occupies."""
        return {n: slice(a, a + k) for n, k, a in zip(self.names, self.numels, self.offsets)}


PointLike = "nn.Module | Mapping[str, Tensor] | str | os.PathLike"


def load_checkpoint(path: str | os.PathLike) -> dict[str, Tensor]:
    """Load a state dict safely: ``torch.load(weights_only=True)`` or safetensors.

    A checkpoint that wraps the state dict (``{"state_dict": ...}``,
    ``{"model_state_dict": ...}`` or ``{"model": ...}``) is unwrapped. Arbitrary pickled
    objects are never loaded.

    Args:
        path: A ``.pt``/``.pth`` file (loaded on the CPU) or a ``.safetensors`` file.

    Returns:
        A dict ``name -> tensor``.

    Raises:
        CheckpointError: if the file does not exist, cannot be read (corrupt, truncated, or
            holding objects ``weights_only=True`` refuses), or does not hold a mapping of
            tensors.
    """
    p = Path(path)
    if not p.exists():
        raise CheckpointError(f"checkpoint not found: {p}")
    if p.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            return dict(load_file(str(p)))
        except Exception as e:  # noqa: BLE001 - a corrupt or truncated file
            raise CheckpointError(f"cannot read {p} as safetensors: {type(e).__name__}: {e}") from e
    try:
        obj = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - reported with the path
        raise CheckpointError(
            f"cannot load {p} with torch.load(weights_only=True) "
            f"(lossviz never unpickles arbitrary objects): {e}"
        ) from e
    for key in ("state_dict", "model_state_dict", "model"):
        if isinstance(obj, Mapping) and key in obj and isinstance(obj[key], Mapping):
            obj = obj[key]
            break
    if not isinstance(obj, Mapping) or not all(isinstance(v, Tensor) for v in obj.values()):
        raise CheckpointError(f"{p} does not hold a state dict of tensors")
    return dict(obj)


def as_state(point) -> dict[str, Tensor]:
    """A point in weight space as a plain ``name -> tensor`` dict (no copies made).

    Args:
        point: An ``nn.Module`` (its parameters and buffers, detached), any mapping of
            tensors (a state dict, :class:`Weights`), or a ``.pt``/``.pth``/``.safetensors``
            path (read with :func:`load_checkpoint`).

    Returns:
        A dict ``name -> detached tensor``.

    Raises:
        ArgumentTypeError: if ``point`` is of another type or a mapping holds non-tensors.
        CheckpointError: if a checkpoint path cannot be loaded.
    """
    if isinstance(point, nn.Module):
        d = {n: p.detach() for n, p in point.named_parameters()}
        d.update({n: b.detach() for n, b in point.named_buffers()})
        return d
    if isinstance(point, (str, os.PathLike)):
        return load_checkpoint(point)
    if isinstance(point, Mapping):
        bad = [k for k, v in point.items() if not isinstance(v, Tensor)]
        if bad:
            raise ArgumentTypeError(f"point has non-tensor entries: {bad[:10]}")
        return {k: v.detach() for k, v in point.items()}
    raise ArgumentTypeError(
        "a point in weight space must be an nn.Module, a mapping name -> tensor, or a "
        f"checkpoint path; got {type(point).__name__}"
    )


def state_of(point, name: str) -> dict[str, Tensor]:
    """:func:`as_state` with errors that name the argument.

    Args:
        point: What :func:`as_state` accepts.
        name: The argument's name, prefixed to the error messages.

    Returns:
        A dict ``name -> detached tensor`` with at least one entry.

    Raises:
        ArgumentTypeError: if ``point`` is None or of the wrong type.
        CheckpointError: if the checkpoint cannot be read or the mapping is empty.
    """
    if point is None:
        raise ArgumentTypeError(
            f"{name} must be a point (a model, a state dict, Weights or a checkpoint path), "
            "got None"
        )
    with named(name):
        st = as_state(point)
    if not st:
        raise CheckpointError(f"{name} is empty: no tensor")
    return st


def check_matches(
    given: Mapping[str, Tensor], shapes: Mapping, required, *, what: str = "point", ignore=()
) -> None:
    """Check that the tensors ``given`` fit a model.

    Args:
        given: The tensors to check, ``name -> tensor``.
        shapes: The model's tensors, ``name -> shape``.
        required: Names that must be in ``given``.
        what: How the error message calls ``given``.
        ignore: Keys of ``given`` allowed although the model lacks them (tied aliases).

    Raises:
        CheckpointError: listing the ``required`` names missing from ``given``, its keys the
            model lacks (except ``ignore``) and the shape mismatches.
    """
    missing = [n for n in required if n not in given]
    unknown = sorted(k for k in given if k not in shapes and k not in ignore)
    bad = [
        f"{k}: model {tuple(shapes[k])} vs given {tuple(v.shape)}"
        for k, v in given.items()
        if k in shapes and tuple(v.shape) != tuple(shapes[k])
    ]
    if not (missing or unknown or bad):
        return
    parts = []
    if missing:
        parts.append(f"missing {len(missing)} parameter(s): {missing[:10]}")
    if unknown:
        parts.append(f"{len(unknown)} key(s) not in the model: {unknown[:10]}")
    if bad:
        parts.append(f"{len(bad)} shape mismatch(es): " + "; ".join(bad[:10]))
    raise CheckpointError(f"{what} does not match the model: " + "; ".join(parts))
