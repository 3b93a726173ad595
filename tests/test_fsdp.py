"""Sharded models (FSDP2 ``fully_shard``, FSDP1, DTensor parameters): 2 ranks under
torchrun (gloo, CPU).

An Objective on such a model raises a LossvizError that names what was found and what
to do instead (docs/sharded.md), and what it advises (the full state dict gathered into
an unsharded copy, with ``distributed=True``) gives the dense Hessian's numbers of the
unsharded model on all the data in one process. For FSDP2, ``lossviz.fsdp``'s
Hessian-vector products and top eigenpairs with sharded vectors give that dense
Hessian's numbers too. The checks run in ``tests/fsdp_worker.py`` on every rank.
"""

from __future__ import annotations

import os

import pytest
from reference import run_ranks
from torch import nn

from lossviz.sharded import refuse_sharded

WORKER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fsdp_worker.py")


def _fsdp2() -> bool:
    try:
        import torch.distributed as dist
        from torch.distributed.fsdp import fully_shard  # noqa: F401
    except ImportError:
        return False
    return dist.is_available() and dist.is_gloo_available()


@pytest.fixture(scope="module")
def ranks(tmp_path_factory):
    if not _fsdp2():
        pytest.skip("torch.distributed with gloo and FSDP2 unavailable")
    return run_ranks(WORKER, tmp_path_factory.mktemp("fsdp"))


def test_sharded_models_are_named_not_computed(ranks):
    for r in ranks:
        assert "FSDP2" in r["fsdp2"] and "fully_shard on '<root>', '0', '2'" in r["fsdp2"]
        assert "DTensor parameters '0.weight'" in r["fsdp2"]
        assert r["fsdp2_dist"] == r["fsdp2"]
        assert "FSDP1" in r["fsdp1_False"] and "FSDP1" in r["fsdp1_True"]
        assert "DTensor" in r["dtensor"] and "'0.weight'" in r["dtensor"]
        for key in ("fsdp2", "fsdp1_False", "fsdp1_True", "dtensor"):
            assert "full_state_dict=True" in r[key] and "docs/sharded.md" in r[key]


def test_the_advised_recipe_gives_the_unsharded_numbers(ranks):
    # each rank checked loss and top-3 eigenvalues against the one-process dense Hessian
    r0, r1 = ranks
    assert r0["recipe_fsdp2"] == r1["recipe_fsdp2"]
    assert r0["recipe_fsdp1"] == r1["recipe_fsdp1"]
    assert len(r0["recipe_fsdp2"][1]) == 3


def test_fsdp2_products_and_eigenpairs_stay_sharded_and_exact(ranks):
    # each rank checked against the one-process dense Hessian: loss (1e-12), gradient
    # rows, H @ V rows (1e-12 of max|HV|), top-k eigenvalues (1e-8), top eigenvector
    for key, k in (("sharded", 3), ("sharded_1out", 2)):
        a, b = ranks[0][key], ranks[1][key]
        assert a[0] == b[0] and a[2] == b[2], (a, b)  # loss and eigenvalues agree on ranks
        assert len(a[2]) == k and a[1] <= 1e-12 and a[3] <= 1e-8 * abs(a[2][0])
    for r in ranks:
        assert "lossviz.fsdp" in r["fsdp2"] and "hessian_density" in r["fsdp2"]
        assert "FSDP1" in r["sh_fsdp1"]
        assert "not sharded" in r["sh_mixed"] and "'0.bias'" in r["sh_mixed"]
        assert "reduction='sum'" in r["sh_sum"]


def test_sharded_hessian_needs_a_process_group_and_checks_its_arguments():
    import torch.distributed as dist

    from lossviz.errors import ArgumentTypeError, LossvizError
    from lossviz.fsdp import ShardedHessian, sharded_hessian_eigs

    if dist.is_available() and dist.is_initialized():
        pytest.skip("a process group is initialised in this process")
    with pytest.raises(LossvizError, match="process group"):
        ShardedHessian(nn.Linear(2, 2), lambda a, b: a.sum(), (None, None))
    with pytest.raises(ArgumentTypeError, match="ShardedHessian"):
        sharded_hessian_eigs("H", k=1)


def test_a_plain_model_passes():
    refuse_sharded(nn.Sequential(nn.Linear(2, 3), nn.Tanh(), nn.Linear(3, 1)))
