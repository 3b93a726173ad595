"""Data parallel (``Objective(..., distributed=True)``) and grid sharding (``shard="grid"``):
2 ranks under torchrun (gloo, CPU).

Starts ``torchrun --nproc_per_node=2 tests/distributed_worker.py`` in a subprocess (once
for the whole file); every rank compares its numbers with the one-process Objective on the
concatenated data, with plain autograd and with direct evaluation, then the ranks' results
are compared with each other (see the worker). DDP-wrapped models, DistributedSampler
loaders and BatchNorm statistics are checked there too.
"""

from __future__ import annotations

import os

import pytest
import torch
from reference import run_ranks

WORKER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "distributed_worker.py")


def _gloo() -> bool:
    try:
        import torch.distributed as dist
    except ImportError:
        return False
    return dist.is_available() and dist.is_gloo_available()


pytestmark = pytest.mark.skipif(not _gloo(), reason="torch.distributed with gloo unavailable")


@pytest.fixture(scope="module")
def ranks(tmp_path_factory):
    return run_ranks(WORKER, tmp_path_factory.mktemp("dist"))


def test_two_ranks_give_the_one_process_numbers(ranks):
    # the worker asserted each number against the one-process Objective and autograd
    r0, r1 = ranks
    for key in ("loss", "grad", "hvp", "eigs", "trace", "density", "surface", "path", "more"):
        assert r0[key] == r1[key], key
    assert len(r0["eigs"]) == 3 and r0["trace"][1] >= 1


def test_bad_input_is_named_on_every_rank(ranks):
    r0, r1 = ranks
    assert "process group" in r0["no_pg"]
    assert "rank 1" in r0["mismatch"] and r0["mismatch"] == r1["mismatch"]
    assert "no rank holds a sample" in r0["all_empty"]
    assert "rank 1" in r0["bad_labels"] and "out of range" in r1["bad_labels"]


def test_distributed_argument_is_checked_before_any_work():
    import lossviz as lv
    from lossviz.errors import ArgumentTypeError, LossvizError

    m = torch.nn.Linear(2, 2)
    data = (torch.randn(4, 2), torch.randint(0, 2, (4,)))
    with pytest.raises(ArgumentTypeError, match="distributed must be"):
        lv.Objective(m, torch.nn.functional.cross_entropy, data, distributed="yes")
    if not torch.distributed.is_initialized():
        with pytest.raises(LossvizError, match="process group"):
            lv.Objective(m, torch.nn.functional.cross_entropy, data, distributed=True)
    obj = lv.Objective(m, torch.nn.functional.cross_entropy, data)
    assert not obj.distributed and obj.rank == 0 and obj.world_size == 1


def test_grid_sharding_gives_every_rank_the_one_process_result(ranks):
    # the worker asserted each sharded result against the unsharded one in its process,
    # against direct evaluation, and that each rank evaluated only its share
    r0, r1 = ranks
    for key in ("grid_surface", "grid_path", "grid_matrix"):
        assert r0[key] == r1[key], key
    assert len(r0["grid_surface"]) == 3 and len(r0["grid_surface"][0]) == 5
    assert len(r0["grid_path"]) == 6


def test_grid_sharding_bad_input_is_named_on_every_rank(ranks):
    r0, r1 = ranks
    assert "distributed=" in r0["grid_dp"] and r0["grid_dp"] == r1["grid_dp"]
    assert "rank 1" in r0["grid_data"] and "different data" in r0["grid_data"]
    assert "different points" in r0["grid_points"] and r0["grid_points"] == r1["grid_points"]
    assert "different models" in r0["grid_model"]
    assert "rank 1" in r0["msg_grid_arg"] and "n[0]" in r1["msg_grid_arg"]
    assert "rank 1" in r0["msg_grid_fail"] and "injected" in r1["msg_grid_fail"]
    assert "SyncBatchNorm" in r0["grid_sync_bn"]


def test_ddp_and_batchnorm_under_data_parallelism(ranks):
    r0, r1 = ranks
    assert r0["ddp"] == r1["ddp"] and len(r0["ddp"][1]) == 2
    assert "rank 1" in r0["bn_differ"] and r0["bn_differ"] == r1["bn_differ"]
    assert r0["bn_recompute"] is True  # equal to one process over the same batches
    assert "bn='train'" in r0["bn_train"]


def _tiny():
    torch.manual_seed(0)
    m = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Tanh(), torch.nn.Linear(4, 2))
    data = (torch.randn(8, 3), torch.randint(0, 2, (8,)))
    return m.double(), (data[0].double(), data[1])


def test_shard_argument_is_checked_before_any_work():
    import lossviz as lv
    from lossviz.errors import LossvizError

    m, data = _tiny()
    obj = lv.Objective(m, torch.nn.functional.cross_entropy, data)
    calls = []
    for bad in ("rows", True, 1):
        with pytest.raises(LossvizError, match="shard must be one of None, 'grid'"):
            lv.surface(obj, n=3, shard=bad, callback=calls.append)
    if not torch.distributed.is_initialized():
        for fn in (
            lambda: lv.surface(obj, n=3, shard="grid", callback=calls.append),
            lambda: lv.interpolate(obj, m, m, n=3, shard="grid"),
            lambda: lv.barrier(obj, m, m, n=3, shard="grid"),
            lambda: lv.barrier_matrix(obj, [m, m], n=3, shard="grid"),
        ):
            with pytest.raises(LossvizError, match=r"shard='grid' needs an initialised"):
                fn()
    assert calls == []  # nothing was evaluated
    # shard=None is the plain one-process result
    s = lv.surface(obj, n=3, progress=False, shard=None)
    assert abs(s.loss[1, 1] - obj.loss()) < 1e-12


def test_a_parallel_wrapper_is_evaluated_through_its_module():
    # DataParallel (no GPU: a plain wrapper) stands for DDP here, which needs a process
    # group (DDP itself is checked under torchrun); their state dicts carry "module."
    from reference import assert_unchanged, snapshot

    import lossviz as lv

    m, data = _tiny()
    wrapped = torch.nn.DataParallel(m)
    snap = snapshot(wrapped)
    obj = lv.Objective(wrapped, torch.nn.functional.cross_entropy, data)
    ref = lv.Objective(m, torch.nn.functional.cross_entropy, data)
    assert obj.model is m and obj.loss() == ref.loss()
    assert ref.loss(wrapped) == ref.loss() == ref.loss(wrapped.state_dict())
    moved = {k: v + 0.1 for k, v in wrapped.state_dict().items()}
    assert ref.loss(moved) == ref.loss({k[len("module.") :]: v for k, v in moved.items()})
    assert ref.loss(moved) != ref.loss()
    assert_unchanged(wrapped, snap)
