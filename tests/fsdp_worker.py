"""One rank of the sharded-model checks of tests/test_fsdp.py (run under torchrun, gloo).

Every rank builds the same tiny float64 MLP and the same 40-sample data set (rank r holds
its half). Checked on every rank:

- an Objective on the model sharded with FSDP2 (``fully_shard``), with FSDP1
  (``FullyShardedDataParallel``) or with a DTensor parameter raises a LossvizError naming
  it and saying what to do, with and without ``distributed=True``, and the user's
  sharded model is unchanged;
- what the message advises (gather the full state dict on every rank, load it into an
  unsharded copy, ``distributed=True``) gives the loss and the top eigenvalues of the
  dense Hessian of the unsharded model on all the data in one process (plain autograd,
  ``tests/reference.py``).

A JSON summary goes to ``$OUT_DIR/rank<r>.json``; any failure exits non-zero.
"""

from __future__ import annotations

import copy
import json
import os
import sys

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from reference import dense_hessian, reference_loss  # noqa: E402

import lossviz as lv  # noqa: E402
from lossviz.errors import LossvizError  # noqa: E402

N = 40


def model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(5, 7), nn.Tanh(), nn.Linear(7, 3)).double()


def full_data():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(N, 5, generator=g, dtype=torch.float64)
    y = torch.randint(0, 3, (N,), generator=g)
    return x, y


def refused(make, words, what) -> str:
    try:
        make()
    except LossvizError as e:
        msg = str(e)
        missing = [w for w in words if w not in msg]
        if missing:
            raise AssertionError(f"{what}: message {msg!r} lacks {missing}") from e
        return msg
    raise AssertionError(f"{what}: no LossvizError")


def local_state(m: nn.Module) -> dict:
    out = {}
    for n, t in list(m.named_parameters()) + list(m.named_buffers()):
        loc = t.to_local() if hasattr(t, "to_local") else t
        out[n] = (loc.detach().clone(), t.requires_grad, None if t.grad is None else 1)
    out["<training>"] = [mm.training for mm in m.modules()]
    return out


def same_state(a: dict, b: dict) -> bool:
    if a.keys() != b.keys() or a["<training>"] != b["<training>"]:
        return False
    return all(
        torch.equal(a[k][0], b[k][0]) and a[k][1:] == b[k][1:] for k in a if k != "<training>"
    )


def main() -> None:
    out_dir = os.environ["OUT_DIR"]
    dist.init_process_group("gloo")
    r, world = dist.get_rank(), dist.get_world_size()
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import FullyShardedDataParallel, fully_shard
    from torch.distributed.tensor import Shard, distribute_tensor

    mesh = init_device_mesh("cpu", (world,))
    x, y = full_data()
    lo, hi = r * N // world, (r + 1) * N // world
    local = (x[lo:hi], y[lo:hi])
    summary = {}

    # -- FSDP2: every layer and the root sharded (DTensor parameters) -----------------
    f2 = model()
    for layer in f2:
        if isinstance(layer, nn.Linear):
            fully_shard(layer, mesh=mesh)
    fully_shard(f2, mesh=mesh)
    before = local_state(f2)
    words = ["FSDP2", "fully_shard", "'0.weight'", "not", "full_state_dict=True", "distributed"]
    summary["fsdp2"] = refused(
        lambda: lv.Objective(f2, F.cross_entropy, local), words, "FSDP2 model"
    )
    summary["fsdp2_dist"] = refused(
        lambda: lv.Objective(f2, F.cross_entropy, local, distributed=True), words, "FSDP2 dist"
    )
    assert same_state(before, local_state(f2)), "the FSDP2 model changed"

    # -- FSDP1 ---------------------------------------------------------------------
    for orig in (False, True):
        f1 = FullyShardedDataParallel(model(), device_id=torch.device("cpu"), use_orig_params=orig)
        before = local_state(f1)
        summary[f"fsdp1_{orig}"] = refused(
            lambda f1=f1: lv.Objective(f1, F.cross_entropy, local, distributed=True),
            ["FullyShardedDataParallel", "FSDP1", "full_state_dict=True"],
            f"FSDP1 use_orig_params={orig}",
        )
        assert same_state(before, local_state(f1)), "the FSDP1 model changed"

    # -- a DTensor parameter without FSDP (tensor parallel style) ----------------------
    tp = model()
    tp[0].weight = nn.Parameter(distribute_tensor(tp[0].weight.detach(), mesh, [Shard(0)]))
    summary["dtensor"] = refused(
        lambda: lv.Objective(tp, F.cross_entropy, local), ["DTensor", "'0.weight'"], "DTensor"
    )

    # -- what the messages advise: the full state dict in an unsharded copy --------------
    ref_model = model()
    H = dense_hessian(ref_model, F.cross_entropy, (x, y))
    ev = np.linalg.eigvalsh(H.numpy())[::-1]
    want_loss = float(reference_loss(ref_model, F.cross_entropy, (x, y)).detach())
    for what, sharded in (("fsdp2", f2), ("fsdp1", f1)):
        state = get_model_state_dict(sharded, options=StateDictOptions(full_state_dict=True))
        plain = copy.deepcopy(model())
        plain.load_state_dict(state)
        obj = lv.Objective(plain, F.cross_entropy, local, distributed=True)
        loss = obj.loss()
        assert abs(loss - want_loss) <= 1e-10 * abs(want_loss), (what, loss, want_loss)
        eig = lv.hessian_eigs(obj, k=3, tol=1e-10, progress=False)
        assert np.allclose(eig.values, ev[:3], rtol=1e-8, atol=1e-12), (what, eig.values, ev[:3])
        summary[f"recipe_{what}"] = [loss, eig.values.tolist()]

    with open(os.path.join(out_dir, f"rank{r}.json"), "w") as fh:
        json.dump(summary, fh)
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
