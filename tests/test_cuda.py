"""The same kernels on a GPU (skipped without CUDA; CI has none, run on a GPU machine)."""

import numpy as np
import pytest
import torch
from reference import CASES, assert_unchanged, dense_hessian, snapshot

import lossviz as lv

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")


@cuda
@pytest.mark.parametrize(
    "case,bn",
    [
        ("mlp", "eval"),
        ("cnn_bn", "eval"),
        ("cnn_bn", "train"),
        ("attention", "eval"),
        ("tied", "eval"),
    ],
)
def test_cuda_matches_cpu_dense(case, bn):
    m, loss, (x, y) = CASES[case]()
    H = dense_hessian(lv.Objective(m, loss, (x, y), bn=bn))
    ev = torch.linalg.eigvalsh(H).numpy()
    mc = m.cuda()
    snap = snapshot(mc)
    obj = lv.Objective(mc, loss, (x.cuda(), y.cuda()), bn=bn)
    V = torch.randn(5, obj.n_params, dtype=torch.float64)
    HV = torch.stack([h.flatten().cpu() for h in obj.hvp_batched(V)])
    assert torch.allclose(HV, V @ H, atol=1e-10)
    r = lv.hessian_eigs(obj, k=3, which="both", tol=1e-10)
    np.testing.assert_allclose(r.values, np.concatenate([ev[:3], ev[-3:]]), atol=1e-8)
    for bs in (2, 4):
        r = lv.hessian_eigs(obj, k=3, tol=1e-10, block_size=bs)
        np.testing.assert_allclose(r.values, ev[::-1][:3], atol=1e-8)
    t = lv.hessian_trace(obj, rtol=0.02, max_hvp=4000)
    assert abs(t.value - float(H.trace())) < 5 * t.stderr + 1e-9
    d = lv.hessian_density(obj, n_probes=3, steps=8)
    assert np.allclose(d.weights.sum(1), 1)
    lv.hessian_diagonal(obj, n_probes=4)
    assert_unchanged(mc, snap)


@cuda
def test_model_on_cpu_computed_on_cuda():
    m, loss, (x, y) = CASES["mlp"]()
    snap = snapshot(m)
    H = dense_hessian(lv.Objective(m, loss, (x, y)))
    obj = lv.Objective(m, loss, (x, y), device="cuda")
    r = lv.hessian_eigs(obj, k=2, tol=1e-10)
    assert r.vectors[0]["0.weight"].is_cuda
    np.testing.assert_allclose(r.values, torch.linalg.eigvalsh(H).numpy()[::-1][:2], rtol=1e-8)
    assert_unchanged(m, snap)
    assert next(m.parameters()).device.type == "cpu"
