"""Grid sharding: the points of a landscape split between the ranks of a distributed job.

With ``shard="grid"`` (:func:`lossviz.surface`, :func:`lossviz.interpolate`,
:func:`lossviz.barrier_matrix`, :func:`lossviz.barrier`) every rank of a
``torch.distributed`` job holds the same model and **all** the data (a plain, not
distributed, :class:`~lossviz.Objective`). The ``n`` points are split into contiguous
shares, ``numpy.array_split(range(n), world_size)``; each rank evaluates its share through
the ordinary engine and one ``all_gather_object`` hands every rank every value, so every
rank returns the identical full result: the one-process result, point for point (each
value is computed exactly as in one process, by one rank).

Before any forward pass the ranks exchange (one more ``all_gather_object``) whether their
setup failed and fingerprints of the model, the data and the points, so that a rank with
another model, other data (a ``DistributedSampler``) or another seed / direction / endpoint
is an error on every rank naming it, never a silent mix of two landscapes; an error on one
rank (bad input, out of memory) is raised on every rank (no hang).

Communication: two ``all_gather_object`` calls per kernel call, the second carrying
``(number of metrics + 1) × n`` float64 values in all (each rank sends its share).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable

import numpy as np
import torch
from torch import Tensor, nn

from . import validate
from .errors import LossvizError, is_oom

__all__ = ["GridShard", "check_shard", "fingerprint", "fingerprints"]

#: the values ``shard=`` takes
SHARD_CHOICES = (None, "grid")


def _initialised() -> bool:
    import torch.distributed as dist

    return dist.is_available() and dist.is_initialized()


def check_shard(shard, obj, *, bn=None, name: str = "shard") -> GridShard | None:
    """The :class:`GridShard` for ``shard=`` (None: no sharding), checked before any work.

    ``shard=None`` (the default) splits nothing: every rank of a job evaluates every
    point (with a data-parallel Objective, ``distributed=``, each on its shard of the
    data, reduced over the ranks). ``shard="grid"`` splits the points between the ranks
    of the default process group, each holding all the data.

    Args:
        shard: None or ``"grid"``.
        obj: the :class:`~lossviz.Objective` the points are evaluated on.
        bn: the kernel's ``bn=`` (``"recompute"`` re-estimates BatchNorm statistics).
        name: the argument's name, for messages.

    Returns:
        A :class:`GridShard`, or None for ``shard=None``.

    Raises:
        LossvizError: ``shard`` neither None nor ``"grid"``; ``"grid"`` without an
            initialised ``torch.distributed`` process group, with a data-parallel
            Objective (``distributed=``: its data are split, not the points), or with
            ``SyncBatchNorm`` layers in training mode (``bn="train"`` /
            ``bn="recompute"``: they would all-reduce batch statistics between ranks
            that evaluate different points).
    """
    validate.choice(shard, name, SHARD_CHOICES)
    if shard is None:
        return None
    if getattr(obj, "distributed", False):
        raise LossvizError(
            f"{name}='grid' splits the points between ranks that each hold all the data, but "
            "this Objective is data parallel (distributed=): its data are split between the "
            f"ranks. Use one or the other: {name}=None with the data-parallel Objective, or "
            f"{name}='grid' with a plain Objective on all the data on every rank"
        )
    if not _initialised():
        raise LossvizError(
            f"{name}='grid' needs an initialised torch.distributed process group: call "
            "torch.distributed.init_process_group(...) first (e.g. under torchrun); in one "
            f"process leave {name}=None"
        )
    training_bn = obj.bn == "train" or bn == "recompute"
    if training_bn and any(isinstance(m, nn.SyncBatchNorm) for m in obj.model.modules()):
        raise LossvizError(
            f"{name}='grid' with SyncBatchNorm layers in training mode ("
            + ("bn='recompute'" if bn == "recompute" else "an Objective built with bn='train'")
            + "): they would all-reduce batch statistics between ranks that evaluate "
            "different points. Convert them to BatchNorm for the analysis, or use bn='eval'"
        )
    import torch.distributed as dist

    return GridShard(None, dist.get_rank(), dist.get_world_size())


def _fold(x, acc: list, meta: list) -> None:
    if isinstance(x, Tensor):
        meta.append(f"{tuple(x.shape)}:{x.dtype}")
        v = x.detach().reshape(-1)
        if v.is_complex():
            v = torch.view_as_real(v).reshape(-1)
        v = v.to(torch.float64)
        w = torch.sin(torch.arange(v.numel(), dtype=torch.float64, device=v.device) * 0.7 + 0.3)
        acc.append(torch.stack([v.sum(), v @ w]))
    elif isinstance(x, np.ndarray):
        _fold(torch.as_tensor(x), acc, meta)
    elif isinstance(x, dict):
        for k in sorted(x, key=str):
            meta.append(str(k))
            _fold(x[k], acc, meta)
    elif isinstance(x, (list, tuple)):
        meta.append(f"[{len(x)}")
        for v in x:
            _fold(v, acc, meta)
    else:
        meta.append(repr(x))


def fingerprint(*items) -> int:
    """A 48-bit fingerprint of tensors (and nests of them): equal inputs, equal numbers.

    Each tensor contributes its shape, dtype, sum and a dot product with fixed weights
    from the positions (computed on its device in float64, so a reordering or another
    random draw shows); mappings, lists and other values their structure and ``repr``.

    Args:
        *items: tensors, NumPy arrays, mappings / lists / tuples of them, or plain values.

    Returns:
        An integer below ``2**48``.
    """
    acc: list = []
    meta: list = []
    for x in items:
        _fold(x, acc, meta)
    h = hashlib.sha256("|".join(meta).encode())
    if acc:
        nums = torch.cat([a.cpu() for a in acc]).numpy()
        h.update(nums.tobytes())
    return int.from_bytes(h.digest()[:6], "big")


def _code(err: BaseException | None) -> int:
    """0: none; 1: out of memory; 2: another error; 3: a LossvizError (bad input)."""
    if err is None:
        return 0
    if isinstance(err, LossvizError):
        return 3
    return 1 if is_oom(err) else 2


def _ranks(ranks: list[int]) -> str:
    return f"rank{'s' if len(ranks) > 1 else ''} {', '.join(map(str, ranks))}"


class GridShard:
    """The points of one kernel call split between the ranks (``shard="grid"``).

    Built by :func:`check_shard`. Rank ``r`` of ``W`` evaluates the ``r``-th of
    ``numpy.array_split(range(n), W)`` (contiguous shares, the first ``n mod W`` one
    point longer); :meth:`gather` then gives every rank all the values.

    Args:
        group: the process group (None: the default one).
        rank: this process's rank in it.
        world_size: the number of ranks.
    """

    def __init__(self, group, rank: int, world_size: int):
        self.group, self.rank, self.world_size = group, rank, world_size

    def __repr__(self) -> str:
        return f"GridShard(rank {self.rank} of {self.world_size})"

    def share(self, n: int, rank: int | None = None) -> np.ndarray:
        """The positions ``0 .. n-1`` that ``rank`` (default: this one) evaluates.

        Args:
            n: the number of points.
            rank: the rank (None: this process's).

        Returns:
            A contiguous int64 range.
        """
        r = self.rank if rank is None else rank
        return np.array_split(np.arange(n, dtype=np.int64), self.world_size)[r]

    def _all(self, obj) -> list:
        import torch.distributed as dist

        rows: list = [None] * self.world_size
        dist.all_gather_object(rows, obj, group=self.group)
        return rows

    def _raise(self, rows: list, err: BaseException | None, what: str) -> None:
        """Raise on every rank when any rank failed (the same kind of error everywhere)."""
        codes = [int(r[0]) for r in rows]
        worst = max(codes)
        if worst == 0:
            return
        if err is not None and _code(err) == worst:
            raise err
        bad = [i for i, c in enumerate(codes) if c == worst]
        msg = f"{what} failed on {_ranks(bad)}: {rows[bad[0]][1]}"
        if worst == 1:
            raise MemoryError(msg)
        if worst == 3:
            raise LossvizError(msg)
        raise RuntimeError(msg)

    def agree(
        self,
        err: BaseException | None,
        what: str,
        prints: Callable[[], dict[str, int]] | None = None,
    ) -> None:
        """Every rank's setup outcome and fingerprints, exchanged (one collective).

        Args:
            err: this rank's error in its setup (None: it succeeded).
            what: the kernel, for messages.
            prints: ``() -> {"models": fingerprint, ...}`` (called when ``err`` is None):
                what must be equal on every rank, in the order to report it.

        Raises:
            LossvizError: a fingerprint differs from rank 0's (naming the ranks and what
                differs); a LossvizError on another rank.
            Exception: this rank's own ``err``, or one of the same kind from another rank.
        """
        fp: dict = {}
        if err is None and prints is not None:
            try:
                fp = prints()
            except Exception as e:  # noqa: BLE001 - every rank learns of it, below
                err = e
        rows = self._all((_code(err), f"{type(err).__name__}: {err}" if err else "", fp))
        self._raise(rows, err, what)
        for key, ref in rows[0][2].items():
            differ = [i for i, r in enumerate(rows) if r[2].get(key) != ref]
            if differ:
                raise LossvizError(
                    f"{what} with shard='grid': {_ranks(differ)} and rank 0 hold different "
                    f"{key}: every rank must hold the same model and all "
                    "the same data (not a DistributedSampler's shard) and pass the same "
                    "arguments (seed, directions, points)"
                )

    def gather(
        self,
        values: np.ndarray,
        done: np.ndarray,
        complete: bool,
        err: BaseException | None,
        what: str,
        order: np.ndarray | None = None,
    ) -> tuple[np.ndarray, np.ndarray, bool]:
        """Every rank's share of the values, on every rank (one collective).

        Rank ``r`` evaluated the indices ``order[share(len(order), r)]`` (``order``
        default: ``0 .. n-1``).

        Args:
            values: ``(n_metrics, n)`` values, this rank's share filled in.
            done: ``(n,)`` bool, set where this rank evaluated.
            complete: whether this rank finished its share (False after Ctrl-C).
            err: this rank's error in the evaluation (None: none).
            what: the kernel, for messages.
            order: the indices in the order they were shared out (None: ``0 .. n-1``).

        Returns:
            ``(values, done, complete)`` over all ranks (the arrays are filled in place
            and returned); ``complete`` is True when every rank finished.

        Raises:
            Exception: when a rank failed, on every rank (its own error, or one of the
                same kind naming the rank).
        """
        order = np.arange(values.shape[1]) if order is None else np.asarray(order)

        def indices(r: int) -> np.ndarray:
            return order[self.share(len(order), r)]

        own = indices(self.rank)
        mine = (
            None if err is not None else (values[:, own].copy(), done[own].copy(), bool(complete))
        )
        rows = self._all((_code(err), f"{type(err).__name__}: {err}" if err else "", mine))
        self._raise(rows, err, what)
        complete = True
        for r, (_, _, (v, d, c)) in enumerate(rows):
            idx = indices(r)
            values[:, idx] = v
            done[idx] = d
            complete = complete and c
        return values, done, complete


def data_fingerprint(obj) -> int:
    """A fingerprint of the Objective's data: every batch held in memory, else the first.

    A streamed source (a DataLoader) is not read through: its first batch stands for it.

    Args:
        obj: the :class:`~lossviz.Objective`.

    Returns:
        An integer below ``2**48``.
    """
    held = obj.held_batches()
    if held is not None:
        return fingerprint(held)
    return fingerprint(obj.first_batch()[0])


def model_fingerprint(model: nn.Module) -> int:
    """A fingerprint of a model's parameters and buffers (names, shapes, values).

    Args:
        model: the module.

    Returns:
        An integer below ``2**48``.
    """
    return fingerprint(dict(model.named_parameters()), dict(model.named_buffers()))


def fingerprints(obj, points, extra=()) -> dict[str, int]:
    """What :meth:`GridShard.agree` compares between the ranks, for an Objective's points.

    Args:
        obj: the :class:`~lossviz.Objective`.
        points: what defines the points (tensors, nests of them, plain values).
        extra: other arguments that must agree (metric names, options).

    Returns:
        ``{"models": …, "data": …, "points …": …, "arguments …": …}`` (named in the
        message as "rank 1 and rank 0 hold different data").
    """
    return {
        "models": model_fingerprint(obj.model),
        "data": data_fingerprint(obj),
        "points (center, directions, endpoints)": fingerprint(points),
        "arguments (metrics, options)": fingerprint(extra),
    }
