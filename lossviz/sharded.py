"""Models whose parameters are sharded across processes (FSDP, DTensor): named, refused.

lossviz computes on full parameter tensors. A model wrapped with FSDP2
(``torch.distributed.fsdp.fully_shard``: its parameters become ``DTensor`` shards), with
FSDP1 (``FullyShardedDataParallel``: flattened, padded shards), or holding ``DTensor``
parameters otherwise (tensor parallelism, ``distribute_tensor``) holds only a shard of
each parameter on a rank, and its forward gathers the full weights in hooks that are not
differentiable twice (the gradient reaches the sharded parameters through a
reduce-scatter hook, not through the autograd graph). An Objective on sharded
parameters (and so every kernel built on one) is not supported yet, so
:func:`refuse_sharded` raises a :class:`~lossviz.errors.LossvizError` that names
what was found and what to do instead (gather the full state dict into an unsharded copy
of the model; see ``docs/sharded.md``), rather than return a wrong number. For FSDP2
models, exact Hessian-vector products and the top eigenpairs with sharded vectors are
in :mod:`lossviz.fsdp` (outside FSDP's hooks), and the message says so.
"""

from __future__ import annotations

import sys

from torch import nn

from .errors import LossvizError

#: What to do instead, in every message.
ADVICE = (
    "build the Objective on an unsharded copy instead: gather the full state dict on "
    "every rank with torch.distributed.checkpoint.state_dict.get_model_state_dict(model, "
    "options=StateDictOptions(full_state_dict=True)), load it into the same model built "
    "without sharding (plain.load_state_dict(state)) and pass that model, with "
    "distributed=True to spread the data over the ranks (docs/sharded.md)"
)


def _classes():
    """(FSDP1 wrapper, FSDP2 module, DTensor) classes, None where not imported.

    A sharded model needs these modules imported, so a process that never imported them
    holds none (and nothing is imported here).
    """
    fsdp1 = fsdp2 = dtensor = None
    fsdp = sys.modules.get("torch.distributed.fsdp")
    if fsdp is not None:
        fsdp1 = getattr(fsdp, "FullyShardedDataParallel", None)
        fsdp2 = getattr(fsdp, "FSDPModule", None)
    for name in ("torch.distributed.tensor", "torch.distributed._tensor"):
        mod = sys.modules.get(name)
        if mod is not None and getattr(mod, "DTensor", None) is not None:
            dtensor = mod.DTensor
            break
    return fsdp1, fsdp2, dtensor


def _list(names: list[str]) -> str:
    shown = ", ".join(repr(n) for n in names[:5])
    return shown + (f" and {len(names) - 5} more" if len(names) > 5 else "")


def refuse_sharded(model: nn.Module, name: str = "model") -> None:
    """Raise if ``model`` is sharded across processes (FSDP1, FSDP2 or DTensor parameters).

    Args:
        model: The user's module.
        name: The argument's name, for messages.

    Raises:
        LossvizError: naming the FSDP1 wrappers (``FullyShardedDataParallel``), the
            FSDP2 modules (``fully_shard``) or the ``DTensor`` parameters / buffers
            found, that computing on sharded parameters is not supported yet, and how to
            build an Objective on the gathered (full) model instead.

    Examples:
        >>> refuse_sharded(nn.Linear(2, 2))  # a plain model: nothing to say
    """
    fsdp1, fsdp2, dtensor = _classes()
    if fsdp1 is not None:
        wrapped = [n or "<root>" for n, m in model.named_modules() if isinstance(m, fsdp1)]
        if wrapped:
            raise LossvizError(
                f"{name} is wrapped in FullyShardedDataParallel (FSDP1; at {_list(wrapped)}): "
                "each rank holds a flattened shard of the parameters, and lossviz cannot "
                "compute Hessian-vector products, eigenvectors or landscapes on sharded "
                f"parameters yet; {ADVICE}"
            )
    if fsdp2 is None and dtensor is None:
        return
    sharded = (
        [n or "<root>" for n, m in model.named_modules() if isinstance(m, fsdp2)]
        if fsdp2 is not None
        else []
    )
    dparams = []
    if dtensor is not None:
        dparams = [n for n, p in model.named_parameters() if isinstance(p, dtensor)]
        dparams += [n for n, b in model.named_buffers() if isinstance(b, dtensor)]
    if sharded:
        raise LossvizError(
            f"{name} is sharded with FSDP2 (fully_shard on {_list(sharded)}; DTensor "
            f"parameters {_list(dparams)}): an Objective on sharded parameters is not "
            "supported yet, so every Objective-based kernel (hessian_eigs, "
            "hessian_density, hessian_trace, the diagonal and blocks, GGN products, "
            "line/surface/evaluate, interpolate/barrier, roughness, directions, "
            "SubspaceTracker) is refused; exact Hessian-vector products and the top "
            "Hessian eigenvalues with vectors kept sharded like the parameters are in "
            "lossviz.fsdp (ShardedHessian(model, loss_fn, local_batch), "
            f"sharded_hessian_eigs); for the rest, {ADVICE}"
        )
    if dparams:
        raise LossvizError(
            f"{name} has DTensor parameters or buffers ({_list(dparams)}; tensor "
            "parallelism or distribute_tensor): lossviz computes on full tensors and "
            "does not support DTensor yet (tensor.full_tensor() gathers one); "
            f"{ADVICE}"
        )
