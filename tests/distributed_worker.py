"""One rank of the data-parallel checks of tests/test_distributed.py (run under torchrun).

Every rank builds the same tiny float64 MLP and the same 60-sample data set; rank 0 holds
samples 0..36 and rank 1 samples 37..59 (batches of 10, so a short last batch on each).
Each distributed number is compared on every rank with the one-process Objective on the
concatenated data, and with plain autograd (``tests/reference.py``) where cheap; the
results are gathered and compared across ranks; a JSON summary is written to
``$OUT_DIR/rank<r>.json``. Any failure exits non-zero (torchrun then stops the others).
"""

from __future__ import annotations

import copy
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

from reference import assert_unchanged, dense_hessian, snapshot  # noqa: E402

import lossviz as lv  # noqa: E402
from lossviz.engine import Engine  # noqa: E402
from lossviz.errors import DataError, LossvizError  # noqa: E402

N, SPLIT, BATCH = 60, 37, 10
RTOL = 1e-6


def model(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(5, 7), nn.Tanh(), nn.Linear(7, 3)).double()


def full_data():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(N, 5, generator=g, dtype=torch.float64)
    y = torch.randint(0, 3, (N,), generator=g)
    return x, y


def shard(x, y, lo, hi):
    return [(x[i : min(i + BATCH, hi)], y[i : min(i + BATCH, hi)]) for i in range(lo, hi, BATCH)]


def close(a, b, what, rtol=RTOL, atol=1e-12):
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.shape != b.shape or not np.allclose(a, b, rtol=rtol, atol=atol):
        raise AssertionError(f"{what}: {a.ravel()[:6]} != {b.ravel()[:6]}")


def raises(kind, words, fn, what):
    try:
        fn()
    except kind as e:
        if not all(w in str(e) for w in words):
            raise AssertionError(f"{what}: message {str(e)!r} lacks {words}") from e
        return str(e)
    raise AssertionError(f"{what}: no {kind.__name__} raised")


def grid_checks(m, x, y, rank: int, world: int) -> dict:
    """``shard="grid"``: every rank holds all the data; the points are split and gathered.

    Each sharded result is compared with the same kernel in this one process (no
    sharding) and with direct evaluation (``Objective.loss`` at a point); every rank
    must return the identical full result (compared across ranks in ``main``).
    """
    res: dict = {}
    full = lv.Objective(m, F.cross_entropy, shard(x, y, 0, N))
    d = lv.random_directions(full, 2, seed=0)
    calls: list = []
    kw = {"span": ((-1, 1), (-0.5, 0.5)), "n": (5, 3), "progress": False}
    s = lv.surface(
        full,
        None,
        d,
        metrics=("loss", "accuracy"),
        shard="grid",
        callback=lambda r: calls.append(int(r.evaluated.sum())),
        chunk_size=3,
        **kw,
    )
    ref = lv.surface(full, None, d, metrics=("loss", "accuracy"), **kw)
    close(s["loss"], ref["loss"], "grid surface loss", rtol=1e-12)
    close(s["accuracy"], ref["accuracy"], "grid surface accuracy", rtol=1e-12)
    assert s.complete and bool(np.all(s.evaluated)), "grid surface incomplete"
    for i, j in ((0, 0), (2, 4), (1, 2)):  # direct evaluation at points of both shares
        w = full.weights() + float(s.x[j]) * d[0] + float(s.y[i]) * d[1]
        close(s["loss"][i, j], full.loss(w), f"grid surface point {(i, j)}", rtol=1e-12)
    # the callback saw this rank's share grow (8 of the 15 points on rank 0, 7 on rank 1),
    # then the gathered surface
    share = 8 if rank == 0 else 7
    assert calls[:-1] == list(range(3, share, 3)) + [share] and calls[-1] == 15, calls
    res["grid_surface"] = np.asarray(s["loss"]).tolist()
    sr = lv.surface(full, None, d, refine=True, shard="grid", **kw)  # coarse-to-fine order
    close(sr["loss"], ref["loss"], "grid surface, refine", rtol=1e-12)

    a, b = model(1), model(2)
    p = lv.interpolate(full, a, b, n=5, metrics=("loss", "accuracy"), shard="grid", progress=False)
    p_ref = lv.interpolate(full, a, b, n=5, metrics=("loss", "accuracy"), progress=False)
    close(p.loss, p_ref.loss, "grid interpolate loss", rtol=1e-12)
    close(p.accuracy, p_ref.accuracy, "grid interpolate accuracy", rtol=1e-12)
    close(p.loss[0], full.loss(a), "grid interpolate at a", rtol=1e-12)
    close(p.loss[-1], full.loss(b), "grid interpolate at b", rtol=1e-12)
    assert p.complete and bool(np.all(p.evaluated))
    # each rank evaluated only its share: a counting metric (called once per point and
    # batch) sees 2 points fewer on rank 0 (it evaluates α = 0, ¼, ½), 3 on rank 1 (¾, 1)
    seen = [0]

    def counting(out, target):
        seen[0] += 1
        return (out.argmax(1) == target).double().mean()

    pkw = {"n": 5, "metrics": {"c": counting}, "batched": False, "progress": False}
    seen[0] = 0
    lv.interpolate(full, a, b, **pkw)
    alone = seen[0]
    seen[0] = 0
    lv.interpolate(full, a, b, shard="grid", **pkw)
    assert alone - seen[0] == (2 if rank == 0 else 3) * full.n_batches, (alone, seen[0])
    bar = lv.barrier(full, a, b, n=5, shard="grid", progress=False)
    close(bar, p_ref.barrier("loss", "linear"), "grid barrier", rtol=1e-12)
    bm = lv.barrier_matrix(full, {"a": a, "b": b, "m": m}, n=4, shard="grid", progress=False)
    bm_ref = lv.barrier_matrix(full, {"a": a, "b": b, "m": m}, n=4, progress=False)
    close(bm.values, bm_ref.values, "grid barrier matrix", rtol=1e-12)
    close(bm.endpoint_values, bm_ref.endpoint_values, "grid barrier matrix ends", rtol=1e-12)
    res["grid_path"] = np.asarray(p.loss).tolist() + [float(bar)]
    res["grid_matrix"] = np.asarray(bm.values).tolist()

    # BatchNorm statistics re-estimated at every point, each rank on all the data
    torch.manual_seed(0)
    m_bn = nn.Sequential(nn.Linear(5, 7), nn.BatchNorm1d(7), nn.Linear(7, 3)).double().eval()
    a_bn, b_bn = copy.deepcopy(m_bn), copy.deepcopy(m_bn)
    with torch.no_grad():
        for q in b_bn.parameters():
            q.add_(0.3 * torch.randn(q.shape, generator=torch.Generator().manual_seed(5)))
    obj_bn = lv.Objective(m_bn, F.cross_entropy, shard(x, y, 0, N))
    kw_bn = {"n": 5, "bn": "recompute", "progress": False}
    p_bn = lv.interpolate(obj_bn, a_bn, b_bn, shard="grid", **kw_bn)
    close(p_bn.loss, lv.interpolate(obj_bn, a_bn, b_bn, **kw_bn).loss, "grid recompute", 1e-12)

    # a streamed DataLoader with all the data on every rank
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=BATCH)
    streamed = lv.Objective(m, F.cross_entropy, loader)
    s_st = lv.surface(streamed, None, d, shard="grid", **kw)
    close(s_st["loss"], ref["loss"], "grid surface, DataLoader", rtol=1e-12)

    # bad input: named, on every rank, never a silent mix of two landscapes
    lo, hi = (0, SPLIT) if rank == 0 else (SPLIT, N)
    dp = lv.Objective(m, F.cross_entropy, shard(x, y, lo, hi), distributed=True)
    res["grid_dp"] = raises(
        LossvizError,
        ["shard='grid'", "distributed="],
        lambda: lv.surface(dp, None, d, shard="grid", **kw),
        "shard='grid' with a data-parallel Objective",
    )
    part = lv.Objective(m, F.cross_entropy, shard(x, y, lo, hi))  # not all the data
    res["grid_data"] = raises(
        LossvizError,
        ["different data", "rank 1", "shard='grid'"],
        lambda: lv.interpolate(part, a, b, n=3, shard="grid", progress=False),
        "shard='grid' with different data on the ranks",
    )
    res["grid_points"] = raises(
        LossvizError,
        ["different points", "rank 1"],
        lambda: lv.surface(full, None, lv.random_directions(full, 2, seed=rank), shard="grid"),
        "shard='grid' with different directions",
    )
    res["grid_model"] = raises(
        LossvizError,
        ["different model", "rank 1"],
        lambda: lv.barrier_matrix(
            lv.Objective(model(rank), F.cross_entropy, (x, y)), [a, b], n=3, shard="grid"
        ),
        "shard='grid' with different models",
    )
    # a bad argument on one rank only: that rank's error there, named on the other
    res["msg_grid_arg"] = raises(
        LossvizError,
        ["n[0]"] if rank == 1 else ["rank 1", "n[0]"],
        lambda: lv.surface(full, None, d, n=(5, 3) if rank == 0 else (1, 3), shard="grid"),
        "a bad argument on rank 1",
    )
    # a failure on rank 1 in the middle of its share (after the setup): every rank raises
    ref_w, armed = float(a[0].weight[0, 0]), [False]

    def forward(model_, batch):  # fails on rank 1 away from a (after the setup at a)
        if armed[0] and rank == 1 and abs(float(model_[0].weight[0, 0]) - ref_w) > 1e-12:
            raise RuntimeError("injected on rank 1")
        return F.cross_entropy(model_(batch[0]), batch[1])

    fobj = lv.Objective(m, forward=forward, data=(x, y))
    armed[0] = True
    res["msg_grid_fail"] = raises(
        RuntimeError,
        ["injected"] if rank == 1 else ["rank 1", "injected"],
        lambda: lv.interpolate(fobj, a, b, n=5, shard="grid", batched=False, progress=False),
        "a failure on rank 1 during the evaluation",
    )
    m_sync = nn.Sequential(nn.Linear(5, 7), nn.SyncBatchNorm(7), nn.Linear(7, 3)).double().eval()
    res["grid_sync_bn"] = raises(
        LossvizError,
        ["SyncBatchNorm", "bn='recompute'"],
        lambda: lv.interpolate(
            lv.Objective(m_sync, F.cross_entropy, (x, y)),
            m_sync,
            m_sync,
            n=3,
            bn="recompute",
            shard="grid",
        ),
        "SyncBatchNorm with bn='recompute'",
    )
    raises(LossvizError, ["shard must be"], lambda: lv.surface(full, shard="rows"), "shard=")
    # the ranks are still in step after the errors
    s2 = lv.surface(full, None, d, shard="grid", **kw)
    close(s2["loss"], ref["loss"], "grid surface after the errors", rtol=1e-12)
    return res


def ddp_checks(m, x, y, rank: int, world: int) -> dict:
    """A DDP-wrapped model, DistributedSampler loaders and BatchNorm statistics.

    DDP's gradient all-reduce is counted with a communication hook: no lossviz call may
    trigger it, and a training step afterwards must (the wrapper still works).
    """
    from torch.distributed.algorithms.ddp_comm_hooks import default_hooks
    from torch.nn.parallel import DistributedDataParallel as DDP

    res: dict = {}
    lo, hi = (0, SPLIT) if rank == 0 else (SPLIT, N)
    local = shard(x, y, lo, hi)
    full = lv.Objective(m, F.cross_entropy, (x, y))
    ddp = DDP(model())
    hooks = [0]

    def count(state, bucket):
        hooks[0] += 1
        return default_hooks.allreduce_hook(state, bucket)

    ddp.register_comm_hook(None, count)
    snap, snap_inner = snapshot(ddp), snapshot(ddp.module)
    obj = lv.Objective(ddp, F.cross_entropy, local, distributed=True)
    assert obj.model is ddp.module
    close(obj.loss(), full.loss(), "DDP loss", rtol=1e-12)
    close(obj.gradient().flatten().numpy(), full.gradient().flatten().numpy(), "DDP grad", 1e-12)
    V = torch.randn(obj.n_params, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    close(obj.hvp(V).flatten().numpy(), full.hvp(V).flatten().numpy(), "DDP HVP", rtol=1e-12)
    top = lv.hessian_eigs(obj, k=2, tol=1e-10, progress=False).values
    close(top, lv.hessian_eigs(full, k=2, tol=1e-10, progress=False).values, "DDP eigs")
    d = lv.random_directions(full, 2, seed=0)
    kw = {"span": ((-1, 1), (-0.5, 0.5)), "n": (3, 3), "progress": False}
    close(lv.surface(obj, None, d, **kw).loss, lv.surface(full, None, d, **kw).loss, "DDP surf")
    # a plain Objective on a DDP model (all the data), the wrapper and its state dict as points
    plain = lv.Objective(ddp, F.cross_entropy, (x, y))
    close(plain.loss(), full.loss(), "DDP, plain Objective", rtol=1e-12)
    close(full.loss(ddp), full.loss(), "a DDP model as a point", rtol=1e-12)
    close(full.loss(ddp.state_dict()), full.loss(), "a DDP state dict as a point", rtol=1e-12)
    res["ddp"] = [obj.loss(), np.asarray(top).tolist()]
    assert hooks[0] == 0, f"lossviz triggered DDP's gradient all-reduce {hooks[0]} times"
    assert_unchanged(ddp, snap)
    assert_unchanged(ddp.module, snap_inner)
    # the wrapper still trains: its all-reduce runs and the ranks' gradients agree
    F.cross_entropy(ddp(x[lo:hi]), y[lo:hi]).backward()
    assert hooks[0] >= 1, "DDP's all-reduce did not run"
    g = torch.cat([q.grad.reshape(-1) for q in ddp.parameters()])
    gs = [torch.zeros_like(g) for _ in range(world)]
    dist.all_gather(gs, g)
    close(gs[0].numpy(), gs[1].numpy(), "DDP gradients after a step")

    # DataLoaders with a DistributedSampler (60 samples: no padding), shuffled
    ds = torch.utils.data.TensorDataset(x, y)
    sampler = torch.utils.data.distributed.DistributedSampler(ds, shuffle=True, seed=3)
    loader = torch.utils.data.DataLoader(ds, batch_size=BATCH, sampler=sampler)
    sobj = lv.Objective(ddp, F.cross_entropy, loader, distributed=True)
    close(sobj.loss(), full.loss(), "DistributedSampler loss", rtol=1e-12)
    close(sobj.hvp(V).flatten().numpy(), full.hvp(V).flatten().numpy(), "sampler HVP", 1e-12)
    # drop_last=True on 59 samples leaves one out: a warning, and the mean over the rest
    ds59 = torch.utils.data.TensorDataset(x[:59], y[:59])
    s59 = torch.utils.data.distributed.DistributedSampler(ds59, shuffle=False, drop_last=True)
    kept: list = [None] * world
    dist.all_gather_object(kept, list(s59))
    kept_idx = sorted(i for k in kept for i in k)
    assert len(kept_idx) == 58
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        dobj = lv.Objective(
            m,
            F.cross_entropy,
            torch.utils.data.DataLoader(ds59, batch_size=BATCH, sampler=s59),
            distributed=True,
        )
    msgs = [str(c.message) for c in caught if "drop_last" in str(c.message)]
    assert len(msgs) == (rank == 0), msgs
    ref58 = lv.Objective(m, F.cross_entropy, (x[kept_idx], y[kept_idx]))
    close(dobj.loss(), ref58.loss(), "DistributedSampler(drop_last=True) loss", rtol=1e-12)

    # BatchNorm: the running statistics are the model's buffers, equal on every rank
    torch.manual_seed(0)
    m_bn = nn.Sequential(nn.Linear(5, 7), nn.BatchNorm1d(7), nn.Linear(7, 3)).double()
    ddp_bn = DDP(m_bn)  # broadcast_buffers=True: rank 0's buffers at every forward
    ddp_bn.train()
    ddp_bn(x[lo:hi])  # a training forward: each rank updates the statistics on its batch
    ddp_bn.eval()
    res["bn_differ"] = raises(
        LossvizError,
        ["rank 1", "differs"],
        lambda: lv.Objective(ddp_bn, F.cross_entropy, local, distributed=True),
        "BatchNorm statistics that differ between ranks",
    )
    for buf in m_bn.buffers():  # what DDP does at its next forward: rank 0's statistics
        dist.broadcast(buf, 0)
    obj_bn = lv.Objective(ddp_bn, F.cross_entropy, local, distributed=True)
    full_bn = lv.Objective(m_bn, F.cross_entropy, (x, y))
    close(obj_bn.loss(), full_bn.loss(), "BatchNorm (running statistics) loss", rtol=1e-12)
    Vb = torch.randn(obj_bn.n_params, generator=torch.Generator().manual_seed(2)).double()
    close(obj_bn.hvp(Vb).flatten().numpy(), full_bn.hvp(Vb).flatten().numpy(), "BN HVP", 1e-12)
    sb = lv.surface(obj_bn, n=3, bn="recompute", progress=False)
    one = lv.Objective(m_bn, F.cross_entropy, shard(x, y, 0, SPLIT) + shard(x, y, SPLIT, N))
    sb_one = lv.surface(one, n=3, bn="recompute", progress=False)
    close(sb.loss, sb_one.loss, "DDP surface bn='recompute'", rtol=1e-12)
    res["bn_recompute"] = True
    res["bn_train"] = raises(
        LossvizError,
        ["bn='train'"],
        lambda: lv.Objective(ddp_bn, F.cross_entropy, local, bn="train", distributed=True),
        "bn='train' with a data-parallel Objective",
    )
    return res


def main() -> None:
    out_dir = os.environ["OUT_DIR"]
    lv_kw = {"progress": False}
    m = model()
    x, y = full_data()

    # bad input before any process group: a clear error, not a hang
    no_pg = raises(
        LossvizError,
        ["process group"],
        lambda: lv.Objective(m, F.cross_entropy, (x, y), distributed=True),
        "no process group",
    )
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    assert world == 2, world
    lo, hi = (0, SPLIT) if rank == 0 else (SPLIT, N)
    local = shard(x, y, lo, hi)

    full = lv.Objective(m, F.cross_entropy, (x, y))
    obj = lv.Objective(m, F.cross_entropy, local, distributed=True)
    H = dense_hessian(m, F.cross_entropy, (x, y))  # plain autograd, all the data
    res: dict = {"no_pg": no_pg}

    # loss and gradient: one process, and plain autograd
    res["loss"] = obj.loss()
    close(res["loss"], full.loss(), "loss", rtol=1e-12)
    close(res["loss"], float(F.cross_entropy(m(x), y).detach()), "loss (autograd)", rtol=1e-12)
    g = obj.gradient().flatten().numpy()
    mc = model()
    F.cross_entropy(mc(x), y).backward()
    g_ref = torch.cat([p.grad.reshape(-1) for p in mc.parameters()]).numpy()
    close(g, full.gradient().flatten().numpy(), "gradient", rtol=1e-12)
    close(g, g_ref, "gradient (autograd)", rtol=1e-10)
    res["grad"] = g.tolist()

    # Hessian- and GGN-vector products (one vector, then a block: the timed methods)
    V = torch.randn(
        5, obj.n_params, generator=torch.Generator().manual_seed(1), dtype=torch.float64
    )
    hv = obj.hvp(V[0]).flatten().numpy()
    close(hv, (H @ V[0]).numpy(), "HVP (dense Hessian)", rtol=1e-10)
    close(hv, full.hvp(V[0]).flatten().numpy(), "HVP", rtol=1e-12)
    block = np.stack([w.flatten().numpy() for w in obj.hvp_batched(V)])
    close(block, (V @ H).numpy(), "HVP block (dense Hessian)", rtol=1e-10)
    ggn = obj.hvp(V[1], curvature="ggn").flatten().numpy()
    close(ggn, full.hvp(V[1], curvature="ggn").flatten().numpy(), "GGN product", rtol=1e-12)
    res["hvp"] = hv.tolist()

    # kernels
    top = lv.hessian_eigs(obj, k=3, tol=1e-10, **lv_kw).values
    exact = np.sort(np.linalg.eigvalsh(H.numpy()))[::-1][:3]
    close(np.sort(top)[::-1], exact, "top-3 eigenvalues (dense)")
    close(top, lv.hessian_eigs(full, k=3, tol=1e-10, **lv_kw).values, "top-3 eigenvalues")
    res["eigs"] = np.asarray(top).tolist()
    tr = lv.hessian_trace(obj, rtol=0.05, max_hvp=200, seed=3, **lv_kw)
    tr_full = lv.hessian_trace(full, rtol=0.05, max_hvp=200, seed=3, **lv_kw)
    close(tr.value, tr_full.value, "trace (same probes)")
    assert tr.n_hvp == tr_full.n_hvp, (tr.n_hvp, tr_full.n_hvp)
    res["trace"] = [float(tr.value), int(tr.n_hvp)]
    dens = lv.hessian_density(obj, n_probes=3, steps=15, seed=2, **lv_kw)
    dens_full = lv.hessian_density(full, n_probes=3, steps=15, seed=2, **lv_kw)
    close(dens.nodes, dens_full.nodes, "density nodes", atol=1e-9)
    close(dens.weights, dens_full.weights, "density weights", atol=1e-9)
    res["density"] = np.asarray(dens.nodes).tolist()

    # landscapes: a small surface, a path and its barrier between two models
    d = lv.random_directions(full, 2, seed=0)
    kw = {"span": ((-1, 1), (-0.5, 0.5)), "n": (4, 3), "progress": False}
    s = lv.surface(obj, None, d, metrics=("loss", "accuracy"), **kw)
    s_full = lv.surface(full, None, d, metrics=("loss", "accuracy"), **kw)
    close(s["loss"], s_full["loss"], "surface loss", rtol=1e-12)
    close(s["accuracy"], s_full["accuracy"], "surface accuracy", rtol=1e-12)
    w = full.weights() + float(s.x[1]) * d[0] + float(s.y[2]) * d[1]
    close(s["loss"][2, 1], full.loss(w), "surface point", rtol=1e-12)
    res["surface"] = np.asarray(s["loss"]).tolist()
    a, b = model(1), model(2)
    p = lv.interpolate(obj, a, b, n=5, metrics=("loss", "accuracy"), progress=False)
    p_full = lv.interpolate(full, a, b, n=5, metrics=("loss", "accuracy"), progress=False)
    close(p.loss, p_full.loss, "interpolate loss", rtol=1e-12)
    close(p.accuracy, p_full.accuracy, "interpolate accuracy", rtol=1e-12)
    bar = lv.barrier(obj, a, b, n=5, progress=False)
    close(bar, lv.barrier(full, a, b, n=5, progress=False), "barrier", rtol=1e-10)
    res["path"] = np.asarray(p.loss).tolist() + [float(bar)]

    # the other kernels on products and on the engine
    diag = lv.hessian_diagonal(obj, n_probes=6, seed=0, **lv_kw).flatten().numpy()
    close(diag, lv.hessian_diagonal(full, n_probes=6, seed=0, **lv_kw).flatten().numpy(), "diag")
    ln = lv.line(obj, None, d[0], n=5, progress=False).loss
    close(ln, lv.line(full, None, d[0], n=5, progress=False).loss, "line", rtol=1e-12)
    lw = lv.layerwise_barriers(obj, a, b, n=3, progress=False).table
    lw_full = lv.layerwise_barriers(full, a, b, n=3, progress=False).table
    assert list(lw) == list(lw_full), (list(lw), list(lw_full))
    for g_ in lw:
        close([lw[g_][k] for k in lw[g_]], [lw_full[g_][k] for k in lw[g_]], f"layer {g_}")
    bm = lv.barrier_matrix(obj, [a, b, m], n=3, progress=False).values
    close(bm, lv.barrier_matrix(full, [a, b, m], n=3, progress=False).values, "barriers")
    rkw = {"n_directions": 4, "n_points": 5, "seed": 0, "n_bootstrap": 20, "progress": False}
    ri = lv.roughness_index(obj, **rkw)
    close(ri.slices, lv.roughness_index(full, **rkw).slices, "roughness slices", rtol=1e-12)
    res["more"] = [diag.tolist(), np.asarray(ln).tolist(), np.asarray(bm).tolist()]

    # a summed loss: the sum over every rank's samples
    summed = lv.Objective(m, nn.CrossEntropyLoss(reduction="sum"), local, distributed=True)
    close(summed.loss(), float(F.cross_entropy(m(x), y, reduction="sum")), "sum", rtol=1e-12)

    # an empty shard on rank 1 is allowed: it contributes no samples
    uneven = lv.Objective(
        m, F.cross_entropy, shard(x, y, 0, N) if rank == 0 else [], distributed=True
    )
    close(uneven.loss(), full.loss(), "loss, empty shard", rtol=1e-12)
    close(uneven.hvp(V[0]).flatten().numpy(), hv, "HVP, empty shard", rtol=1e-12)
    close(lv.hessian_eigs(uneven, k=3, tol=1e-10, **lv_kw).values, top, "eigs, empty shard")
    s_e = lv.surface(uneven, None, d, **kw)
    close(s_e["loss"], s_full["loss"], "surface, empty shard", rtol=1e-12)

    # one batch per rank (its gradient graph is kept between products)
    one = lv.Objective(m, F.cross_entropy, (x[lo:hi], y[lo:hi]), distributed=True)
    for _ in range(2):
        blk = np.stack([w.flatten().numpy() for w in one.hvp_batched(V[:3])])
        close(blk, (V[:3] @ H).numpy(), "HVP block, one batch per rank", rtol=1e-10)
    # accuracy needs a batch on every rank: the empty rank raises, the other names it
    res["empty_accuracy"] = raises(
        DataError if rank == 1 else LossvizError,
        ["holds no samples"] if rank == 1 else ["rank 1"],
        lambda: lv.surface(uneven, None, d, metrics=("loss", "accuracy"), **kw),
        "accuracy with an empty shard",
    )

    # a DataLoader per rank (streamed, read at every pass): rank r takes r::2
    ds = torch.utils.data.TensorDataset(x, y)
    loader = torch.utils.data.DataLoader(
        torch.utils.data.Subset(ds, list(range(rank, N, world))), batch_size=BATCH
    )
    streamed = lv.Objective(m, F.cross_entropy, loader, distributed=True)
    close(streamed.loss(), full.loss(), "loss, DataLoader", rtol=1e-12)
    close(streamed.hvp(V[0]).flatten().numpy(), hv, "HVP, DataLoader", rtol=1e-12)
    sampler = torch.utils.data.distributed.DistributedSampler(
        torch.utils.data.TensorDataset(x[:59], y[:59]), shuffle=False
    )
    padded = torch.utils.data.DataLoader(sampler.dataset, batch_size=BATCH, sampler=sampler)
    raises(
        DataError,
        ["DistributedSampler", "repeating 1"],
        lambda: lv.Objective(m, F.cross_entropy, padded, distributed=True),
        "a padding DistributedSampler",
    )

    # a failure on one rank reaches every rank (no hang); out of memory on one rank makes
    # every rank halve its chunk of vectors alike
    fail = {"kind": None}

    def forward(model_, batch):
        if rank == 1 and fail["kind"] is not None:
            kind, fail["kind"] = fail["kind"], None
            raise kind("injected on rank 1")
        return F.cross_entropy(model_(batch[0]), batch[1])

    fobj = lv.Objective(m, forward=forward, data=local, distributed=True)
    close(fobj.hvp_batched(V[:2])[0].flatten().numpy(), hv, "HVP, forward=", rtol=1e-12)
    fail["kind"] = RuntimeError
    res["remote_failure"] = raises(
        RuntimeError, ["rank 1"] if rank == 0 else ["injected"], fobj.loss, "a failing rank"
    )
    fail["kind"] = MemoryError
    op = fobj.operator()
    out = op.apply(V[:4])
    close(out.numpy(), (V[:4] @ H).numpy(), "HVP block after out of memory", rtol=1e-10)
    res["max_chunk"] = op.max_chunk
    assert op.max_chunk == 2, op.max_chunk

    # bad input: every rank raises, with the rank named
    m_bad = model()
    if rank == 1:
        with torch.no_grad():
            m_bad[0].weight[0, 0] += 1e-9
    res["mismatch"] = raises(
        LossvizError,
        ["rank 1", "differs"],
        lambda: lv.Objective(m_bad, F.cross_entropy, local, distributed=True),
        "mismatched parameters",
    )
    res["all_empty"] = raises(
        DataError,
        ["no rank holds a sample"],
        lambda: lv.Objective(m, F.cross_entropy, [], distributed=True),
        "all shards empty",
    )
    bad_y = [(bx, by + 5 * (rank == 1)) for bx, by in local]
    res["bad_labels"] = raises(
        DataError if rank == 1 else LossvizError,
        ["rank 1"] if rank == 0 else ["out of range"],
        lambda: lv.Objective(m, F.cross_entropy, bad_y, distributed=True),
        "a probe that fails on one rank",
    )
    raises(
        LossvizError,
        ["bn='train'"],
        lambda: lv.Objective(m, F.cross_entropy, local, bn="train", distributed=True),
        "bn='train'",
    )
    once = lv.Objective(m, F.cross_entropy, iter(local), distributed=True)  # a generator
    close(once.loss(), full.loss(), "loss, one-shot iterator", rtol=1e-12)
    torch.manual_seed(0)
    m_bn = nn.Sequential(nn.Linear(5, 7), nn.BatchNorm1d(7), nn.Linear(7, 3)).double().eval()
    obj_bn = lv.Objective(m_bn, F.cross_entropy, local, distributed=True)
    # bn="recompute": each rank averages the batch statistics of its own batches, one
    # all-reduce combines them; one process over the same batches (rank 0's, then rank 1's)
    one_bn = lv.Objective(m_bn, F.cross_entropy, shard(x, y, 0, SPLIT) + shard(x, y, SPLIT, N))
    torch.manual_seed(1)
    m_bn2 = nn.Sequential(nn.Linear(5, 7), nn.BatchNorm1d(7), nn.Linear(7, 3)).double().eval()
    kw_bn = {"n": 4, "bn": "recompute", "progress": False}
    p_dp = lv.interpolate(obj_bn, m_bn, m_bn2, **kw_bn)
    p_one = lv.interpolate(one_bn, m_bn, m_bn2, **kw_bn)
    close(p_dp.loss, p_one.loss, "interpolate bn='recompute' (data parallel)", rtol=1e-12)
    s_dp = lv.surface(obj_bn, n=3, **{k: v for k, v in kw_bn.items() if k != "n"})
    s_one = lv.surface(one_bn, n=3, **{k: v for k, v in kw_bn.items() if k != "n"})
    close(s_dp.loss, s_one.loss, "surface bn='recompute' (data parallel)", rtol=1e-12)
    pts = torch.stack([obj_bn.resolve(m_bn)[0], obj_bn.resolve(m_bn2)[0]])
    b_dp = Engine(obj_bn, bn="recompute").buffers_at(pts)
    b_one = Engine(one_bn, bn="recompute").buffers_at(pts)
    for k in b_one:
        close(b_dp[k].numpy(), b_one[k].numpy(), f"buffers_at {k} (data parallel)", rtol=1e-12)
    assert torch.equal(b_dp["1.num_batches_tracked"], b_one["1.num_batches_tracked"])
    raises(LossvizError, ["swap_batch"], lambda: obj.swap_batch(local[0]), "swap_batch")
    # different seeds or points on the ranks: every rank raises, never a silent mix
    res["seed_mismatch"] = raises(
        LossvizError,
        ["differ between ranks", "seed="],
        lambda: lv.hessian_trace(obj, seed=rank, progress=False),
        "different seeds",
    )
    pts = torch.stack([obj.resolve()[0]] * 2) + 0.01 * rank
    res["points_mismatch"] = raises(
        LossvizError,
        ["differ between ranks"],
        lambda: lv.evaluate(obj, pts, progress=False),
        "different points",
    )
    # the ranks are still in step after the errors
    close(obj.loss(), full.loss(), "loss after the errors", rtol=1e-12)

    # grid sharding; DDP, DistributedSampler and BatchNorm (functions above)
    res.update(grid_checks(m, x, y, rank, world))
    res.update(ddp_checks(m, x, y, rank, world))

    # warnings and progress bars on rank 0 only
    from lossviz import validate
    from lossviz.errors import warn

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        warn("a lossviz warning")
    assert len(caught) == (rank == 0), caught
    assert validate.progress(True) == (rank == 0)

    # identical on every rank
    gathered = [None] * world
    local_msgs = (
        "bad_labels",
        "remote_failure",
        "empty_accuracy",
        "seed_mismatch",
        "points_mismatch",
    )
    numbers = {k: v for k, v in res.items() if k not in local_msgs and not k.startswith("msg_")}
    dist.all_gather_object(gathered, numbers)
    if gathered[0] != gathered[1]:
        raise AssertionError("the ranks' results differ")
    with open(os.path.join(out_dir, f"rank{rank}.json"), "w") as f:
        json.dump(res, f)
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
