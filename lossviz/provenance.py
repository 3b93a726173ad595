"""Where a result comes from: :class:`Provenance`.

Every public kernel sets it on the result it returns (``result.provenance``).

It holds two kinds of things:

* **saved facts** (kept by ``result.save`` / :func:`lossviz.load` and by pickling): the
  kernel that computed it, the lossviz and torch versions, the model's class name, the
  number of parameters, their dtype and device, the curvature (for curvature results) and
  a UTC timestamp;
* **live references** (never saved, never pickled, not compared): the
  :class:`~lossviz.Objective` it was computed with (``objective``), the point ``at`` and an
  exact record of that point (``at_version``). The ``.dashboard()`` delegates use them to
  recompute; a loaded or unpickled result has none.
"""

from __future__ import annotations

import datetime as _dt
from dataclasses import dataclass, field, fields
from typing import Any

import torch

#: the fields that are saved (everything but the live references)
LIVE = ("objective", "at", "at_version")


def _lossviz_version() -> str:
    from . import __version__

    return __version__


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z")


def _dtype_name(dtype) -> str | None:
    return None if dtype is None else str(dtype).replace("torch.", "")


@dataclass(kw_only=True, repr=False)
class Provenance:
    """Where a result comes from (see the module docstring).

    The first nine fields are saved facts; ``objective``, ``at`` and ``at_version`` are
    live references (not saved, not pickled, not compared).

    Attributes:
        kernel: The public function that computed the result (e.g. ``"hessian_eigs"``).
        model: The model's class name; None when computed on a bare operator or on
            weights.
        n_params: The number of parameters.
        dtype: Their dtype, as a string (``"float32"``).
        device: Their device, as a string.
        curvature: ``"hessian"`` / ``"ggn"`` where it applies, else None.
        lossviz_version: The lossviz version that computed it.
        torch_version: The torch version that computed it.
        created: When, in ISO 8601 UTC (``...Z``).
        objective: The live :class:`~lossviz.Objective` it was computed with, or None.
        at: The live point it was computed at, or None.
        at_version: An exact record of that point, or None.
    """

    kernel: str | None = None
    model: str | None = None
    n_params: int | None = None
    dtype: str | None = None
    device: str | None = None
    curvature: str | None = None
    lossviz_version: str = field(default_factory=_lossviz_version)
    torch_version: str = field(default_factory=lambda: torch.__version__)
    created: str = field(default_factory=_now)
    # live references
    objective: Any = field(default=None, compare=False)
    at: Any = field(default=None, compare=False)
    at_version: Any = field(default=None, compare=False)

    @classmethod
    def of(
        cls,
        source=None,
        *,
        kernel: str | None,
        at=None,
        at_version=None,
        curvature: str | None = None,
    ) -> Provenance:
        """The provenance of a result computed by ``kernel`` on ``source``.

        Args:
            source: An :class:`~lossviz.Objective` (kept as the live ``objective``), a
                curvature operator or dense matrix, Weights / a state dict, or a list of
                them (the first one describes the parameters); None for none.
            kernel: The name of the public function that computed the result.
            at: The point the result was computed at (a live reference).
            at_version: An exact record of that point (a live reference).
            curvature: The curvature's name, for curvature results.

        Returns:
            A new :class:`Provenance` stamped with the versions and the UTC time.
        """
        from .objective import Objective

        kw: dict = {}
        if isinstance(source, Objective):
            kw = dict(
                model=type(source.model).__name__,
                n_params=int(source.layout.size),
                dtype=_dtype_name(source.dtype),
                device=str(source.device),
                objective=source,
            )
        elif isinstance(source, torch.Tensor) or (
            hasattr(source, "shape") and hasattr(source, "dtype") and hasattr(source, "device")
        ):
            kw = dict(
                n_params=int(source.shape[0]) if len(source.shape) else 1,
                dtype=_dtype_name(source.dtype),
                device=str(source.device),
            )
        else:
            kw = _describe_points(source)
        return cls(kernel=kernel, curvature=curvature, at=at, at_version=at_version, **kw)

    @property
    def facts(self) -> dict:
        """The saved facts, as a dict (what ``result.save`` writes)."""
        return {f.name: getattr(self, f.name) for f in fields(self) if f.name not in LIVE}

    @property
    def live(self) -> bool:
        """Whether it still holds the Objective it was computed with."""
        return self.objective is not None

    def __getstate__(self) -> dict:
        """Pickle state without the live references (an Objective, a point: not results)."""
        return {**self.__dict__, **{k: None for k in LIVE}}

    def __repr__(self) -> str:
        what = self.kernel or "?"
        on = []
        if self.model:
            on.append(self.model)
        if self.n_params is not None:
            on.append(f"{self.n_params:,} params")
        if self.dtype:
            on.append(self.dtype + (f" on {self.device}" if self.device else ""))
        if self.curvature:
            on.append(self.curvature)
        live = ", live" if self.live else ""
        return (
            f"Provenance({what}" + (f" on {', '.join(on)}" if on else "") + f"; lossviz "
            f"{self.lossviz_version}, torch {self.torch_version}, {self.created}{live})"
        )


def _describe_points(source) -> dict:
    """n_params / dtype / device of Weights, a state dict or a list / dict of them."""
    from collections.abc import Mapping

    first = source
    for _ in range(3):  # a list of points, a dict label -> point, a recorder
        if (
            isinstance(first, Mapping)
            and first
            and all(isinstance(v, torch.Tensor) for v in first.values())
        ):
            break
        if isinstance(first, Mapping):
            first = next(iter(first.values()), None)
        elif isinstance(first, (list, tuple)) and first:
            first = first[0]
        elif isinstance(first, torch.nn.Module):
            first = dict(first.named_parameters())
            break
        else:
            return {}
    if not isinstance(first, Mapping):
        return {}
    ts = [v for v in first.values() if isinstance(v, torch.Tensor) and v.is_floating_point()]
    if not ts:
        return {}
    return dict(
        n_params=int(sum(t.numel() for t in ts)),
        dtype=_dtype_name(ts[0].dtype),
        device=str(ts[0].device),
    )
