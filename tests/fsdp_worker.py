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
  ``tests/reference.py``);
- on the FSDP2 models, ``lossviz.fsdp.ShardedHessian`` (vectors sharded like the
  parameters) gives that dense Hessian's loss, gradient rows, Hessian-vector product rows
  and, with ``sharded_hessian_eigs``, its top eigenvalues and top eigenvector, also with
  a layer of fewer rows than ranks (an empty shard) and an uneven data split; it names
  what it refuses (FSDP1, DTensor mixed with plain parameters, a sum-reduced loss).

A JSON summary goes to ``$OUT_DIR/rank<r>.json``; any failure exits non-zero.
"""

from __future__ import annotations

import copy
import functools
import json
import os
import sys
import warnings

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from reference import dense_hessian, reference_gradient, reference_loss  # noqa: E402

import lossviz as lv  # noqa: E402
from lossviz.errors import LossvizError  # noqa: E402
from lossviz.fsdp import ShardedHessian, sharded_hessian_eigs  # noqa: E402

N = 40


def model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(5, 7), nn.Tanh(), nn.Linear(7, 3)).double()


def full_data():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(N, 5, generator=g, dtype=torch.float64)
    y = torch.randint(0, 3, (N,), generator=g)
    return x, y


def model_1out() -> nn.Module:
    torch.manual_seed(1)
    return nn.Sequential(nn.Linear(5, 4), nn.Tanh(), nn.Linear(4, 1)).double()


def local_rows(sharded: nn.Module, V: torch.Tensor, r: int, world: int) -> torch.Tensor:
    """This rank's rows of full-length vectors ``V`` (n, b): FSDP2's Shard(0) layout,
    torch.chunk of dim 0 (derived here independently of lossviz.fsdp)."""
    rows, o = [], 0
    for p in sharded.parameters():
        n = p.numel()
        blk = V[o : o + n].reshape(*p.shape, V.shape[1])
        o += n
        chunks = torch.chunk(blk, world, 0)
        loc = chunks[r] if r < len(chunks) else blk[:0]
        rows.append(loc.reshape(-1, V.shape[1]))
    return torch.cat(rows)


def sharded_checks(sharded, make, loss_fn, x, y, local, mesh, k) -> list:
    """ShardedHessian / sharded_hessian_eigs against the dense Hessian of the unsharded
    model on all the data in one process (plain autograd, tests/reference.py)."""
    r, world = dist.get_rank(), dist.get_world_size()
    ref = make()
    Hd = dense_hessian(ref, loss_fn, (x, y))
    want_loss, want_g = reference_gradient(ref, loss_fn, (x, y))
    H = ShardedHessian(sharded, loss_fn, local)
    assert H.n == Hd.shape[0] and H.n_samples == N, (H.n, H.n_samples)
    loss = H.loss()
    assert abs(loss - want_loss) <= 1e-12 * abs(want_loss), (loss, want_loss)
    g = H.gradient()
    gw = local_rows(sharded, want_g[:, None], r, world)[:, 0]
    assert torch.allclose(g, gw, rtol=1e-10, atol=1e-14), (g - gw).abs().max()
    V = torch.randn(H.n, 3, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    HV = H @ local_rows(sharded, V, r, world)
    want = local_rows(sharded, Hd @ V, r, world)
    err = float((HV - want).abs().max() / (Hd @ V).abs().max())
    assert err <= 1e-12, ("HVP", err)
    # the gathered weights were re-gathered in the backward passes, not held in the graph
    assert H.gathered_held == 0 and H.regathered >= 1, (H.gathered_held, H.regathered)
    kept = ShardedHessian(sharded, loss_fn, local, regather=False)
    HVk = kept @ local_rows(sharded, V, r, world)
    assert float((HVk - want).abs().max() / (Hd @ V).abs().max()) <= 1e-12
    # without re-gathering, the last layer's weight (saved by the forward) stays held:
    # the counter above sees what it should
    assert kept.gathered_held >= 1 and kept.regathered == 0, kept.gathered_held
    one = H @ local_rows(sharded, V[:, :1], r, world)[:, 0]
    assert torch.allclose(one, HV[:, 0], rtol=1e-12, atol=1e-15)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        few = sharded_hessian_eigs(H, k=k, tol=1e-10, max_iter=k)  # too few steps
    assert not few.converged.all() and few.residuals.max() > 1e-10, few.residuals
    assert (r == 0) == any("converged" in str(c.message) for c in caught)  # rank 0 warns
    eig = sharded_hessian_eigs(H, k=k, tol=1e-10)
    ev, U = np.linalg.eigh(Hd.numpy())
    ev, U = ev[::-1], U[:, ::-1]
    assert eig.converged.all(), eig.residuals
    assert np.allclose(eig.values, ev[:k], rtol=1e-8, atol=1e-12), (eig.values, ev[:k])
    # the top eigenvector, gathered from the DTensors, is the dense one (up to sign)
    parts = H.to_dtensors(eig.vectors[0])
    y0 = torch.cat([parts[n].full_tensor().reshape(-1) for n, _ in sharded.named_parameters()])
    cos = abs(float(y0 @ torch.as_tensor(U[:, 0].copy())))
    assert cos >= 1 - 1e-8, ("eigenvector", cos)
    assert (
        H.dot(eig.vectors.T, eig.vectors.T).sub(torch.eye(k, dtype=torch.float64)).abs().max()
        < 1e-10
    )
    return [loss, err, eig.values.tolist(), float(np.abs(eig.values - ev[:k]).max()), eig.n_matvec]


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

    # -- FSDP2: exact sharded Hessian products and top eigenpairs (lossviz.fsdp) ---------
    summary["sharded"] = sharded_checks(f2, model, F.cross_entropy, x, y, local, mesh, k=3)
    assert same_state(before, local_state(f2)), "ShardedHessian changed the FSDP2 model"
    # a layer with fewer rows than ranks (empty shards on rank 1), uneven data split
    f3 = model_1out()
    for layer in f3:
        if isinstance(layer, nn.Linear):
            fully_shard(layer, mesh=mesh)
    fully_shard(f3, mesh=mesh)
    empty = [n for n, p in f3.named_parameters() if p.to_local().numel() == 0]
    assert (r == 1) == (empty == ["2.weight", "2.bias"]), empty  # rank 1 holds no row
    cut = 27 if r == 0 else N
    lo3 = 0 if r == 0 else 27
    t = torch.randn(N, 1, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    summary["sharded_1out"] = sharded_checks(
        f3, model_1out, F.mse_loss, x, t, (x[lo3:cut], t[lo3:cut]), mesh, k=2
    )

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

    # -- what ShardedHessian refuses, by name --------------------------------------------
    summary["sh_fsdp1"] = refused(
        lambda: ShardedHessian(f1, F.cross_entropy, local), ["FSDP1"], "ShardedHessian FSDP1"
    )
    summary["sh_mixed"] = refused(
        lambda: ShardedHessian(tp, F.cross_entropy, local),
        ["not sharded", "'0.bias'"],
        "ShardedHessian DTensor + plain parameters",
    )
    summary["sh_sum"] = refused(
        lambda: ShardedHessian(f2, functools.partial(F.cross_entropy, reduction="sum"), local),
        ["reduction='sum'", "mean"],
        "ShardedHessian sum loss",
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
