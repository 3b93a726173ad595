"""TrajectoryRecorder (bounded memory, usable checkpoints) and curvature along a path
against dense float64 Hessians."""

import numpy as np
import pytest
import torch
from torch import nn
from torch.func import functional_call, hessian

from lossviz.errors import LossvizError
from lossviz.objective import Objective
from lossviz.trajectory import CurvatureTimeline, TrajectoryRecorder, sharpness_along, trace_along

mse = nn.functional.mse_loss


def dense_hessian_at(model, state, batch):
    names = [n for n, _ in model.named_parameters()]
    shapes = [p.shape for p in model.parameters()]
    sizes = [p.numel() for p in model.parameters()]
    x, y = batch

    def f(theta):
        d = {n: t.view(s) for n, t, s in zip(names, torch.split(theta, sizes), shapes)}
        return mse(functional_call(model, d, (x,)), y)

    theta = torch.cat([state[n].reshape(-1).to(torch.float64) for n in names])
    return hessian(f)(theta)


def setup(seed=0):
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(4, 6), nn.Tanh(), nn.Linear(6, 2)).double()
    g = torch.Generator().manual_seed(seed + 1)
    x = torch.randn(50, 4, generator=g, dtype=torch.float64)
    y = torch.randn(50, 2, generator=g, dtype=torch.float64)
    return model, x, y


def train(model, x, y, steps, recorder=None, lr=0.2):
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    for _ in range(steps):
        if recorder is not None:
            recorder.step()
        opt.zero_grad()
        mse(model(x), y).backward()
        opt.step()


def test_recorder_memory_bounded_and_evenly_thinned():
    model, _, _ = setup()
    rec = TrajectoryRecorder(model, every=1, max_points=8)
    per_snapshot = sum(t.numel() * t.element_size() for t in model.state_dict().values())
    sizes = []
    for _ in range(1000):
        rec.step()
        with torch.no_grad():
            model[0].weight.add_(0.001)
        sizes.append(len(rec))
        assert rec.nbytes <= 8 * per_snapshot
    assert max(sizes) == 8
    steps = rec.steps
    assert steps[0] == 0 and len(steps) >= 4
    gaps = np.diff(steps)
    assert np.all(gaps == gaps[0]) and gaps[0] >= 1000 // 8  # evenly spaced over the run
    # a snapshot holds the weights of its step (not a view of the live model)
    w0 = rec.checkpoints[0]["0.weight"]
    w1 = rec.checkpoints[1]["0.weight"]
    torch.testing.assert_close(w1 - w0, torch.full_like(w0, 0.001 * steps[1]))


def test_recorder_float16_halves_memory_and_restores_dtypes():
    model, _, _ = setup()
    full = TrajectoryRecorder(model, every=2, max_points=50)
    half = TrajectoryRecorder(model, every=2, max_points=50, dtype=torch.float16)
    for _ in range(10):
        full.step()
        half.step()
    assert len(full) == len(half) == 5
    assert half.nbytes * 4 == full.nbytes  # float64 -> float16
    c = half.checkpoints[0]
    assert all(v.dtype == torch.float64 for v in c.values())
    torch.testing.assert_close(c["0.weight"], full.checkpoints[0]["0.weight"], rtol=1e-3, atol=1e-3)
    assert "float16" in repr(half) and "5/50 snapshots" in repr(half)


def test_recorder_does_not_touch_model_and_checkpoints_are_points():
    model, x, y = setup()
    model.train()
    rec = TrajectoryRecorder(model, every=3, max_points=10)
    train(model, x, y, 9, rec)
    rec.snapshot()  # the final weights
    assert rec.steps == [0, 3, 6, 9]
    assert model.training and all(p.requires_grad for p in model.parameters())
    obj = Objective(model, mse, (x, y))
    last = rec.checkpoints[-1]
    with torch.no_grad():
        assert obj.loss(last) == pytest.approx(float(mse(model(x), y)), rel=1e-12)
    first = rec.checkpoints[0]
    assert obj.loss(first) > obj.loss(last)


def test_recorder_with_batchnorm_buffers():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.Linear(4, 1))
    rec = TrajectoryRecorder(model, every=1, max_points=5, dtype=torch.float16)
    x = torch.randn(20, 3)
    model.train()
    model(x)  # running statistics move
    rec.snapshot()
    c = rec.checkpoints[-1]
    assert c["1.num_batches_tracked"].dtype == torch.int64
    assert int(c["1.num_batches_tracked"]) == 1
    assert c["1.running_var"].dtype == torch.float32
    obj = Objective(model, mse, (x, torch.zeros(20, 1)))
    assert np.isfinite(obj.loss(c))


def test_sharpness_along_matches_dense_hessians():
    model, x, y = setup()
    rec = TrajectoryRecorder(model, every=4, max_points=10)
    train(model, x, y, 12, rec, lr=0.3)
    obj = Objective(model, mse, (x, y))
    res = sharpness_along(obj, rec, k=2, lr=0.3, tol=1e-10)
    assert isinstance(res, CurvatureTimeline)
    assert res.steps == [0, 4, 8]
    for i, c in enumerate(rec.checkpoints):
        w = torch.linalg.eigvalsh(dense_hessian_at(model, c, (x, y))).flip(0)[:2]
        np.testing.assert_allclose(res.values[i], w.numpy(), rtol=1e-8)
    np.testing.assert_allclose(res.lambda_max, res.values[:, 0])
    assert len(res.n_hvp) == 3 and all(n > 0 for n in res.n_hvp)
    fig = res.plot()
    assert fig.layout.title.text == "top eigenvalues of the hessian at 3 points"
    assert [t.name for t in fig.data] == ["λ1", "λ2"]
    for j, t in enumerate(fig.data):
        assert list(t.x) == [0, 4, 8]
        np.testing.assert_array_equal(t.y, res.values[:, j])
    (line,) = fig.layout.shapes  # the stability threshold 2/lr
    assert line.y0 == line.y1 == pytest.approx(2 / 0.3)
    assert "2/lr" in repr(res) and "<table>" in res._repr_html_()


def test_trace_along_matches_dense_hessians():
    model, x, y = setup(2)
    snaps = []
    for _ in range(3):
        snaps.append({k: v.clone() for k, v in model.state_dict().items()})
        train(model, x, y, 5)
    obj = Objective(model, mse, (x, y))
    res = trace_along(obj, snaps, steps=[0, 5, 10], rtol=0.01, max_hvp=2000)
    assert res.steps == [0, 5, 10]
    for i, c in enumerate(snaps):
        exact = float(torch.trace(dense_hessian_at(model, c, (x, y))))
        assert abs(res.values[i, 0] - exact) <= 5 * res.stderr[i] + 1e-9
        # the stopping rule: the standard error within rtol, or the budget spent
        assert res.stderr[i] <= 0.011 * abs(res.values[i, 0]) or res.n_hvp[i] >= 2000
    fig = res.plot()
    assert fig.layout.title.text == "trace of the hessian at 3 points"
    assert len(fig.data) == 1 and fig.data[0].name == "tr(H)" and not fig.layout.shapes
    assert list(fig.data[0].x) == [0, 5, 10]
    np.testing.assert_array_equal(fig.data[0].y, res.values[:, 0])
    np.testing.assert_array_equal(fig.data[0].error_y.array, 2 * np.asarray(res.stderr))


def test_bad_arguments():
    model, x, y = setup()
    with pytest.raises(LossvizError, match="max_points"):
        TrajectoryRecorder(model, max_points=1)
    with pytest.raises(LossvizError, match="every"):
        TrajectoryRecorder(model, every=0)
    with pytest.raises(TypeError, match="dtype"):
        TrajectoryRecorder(model, dtype=torch.int8)
    with pytest.raises(TypeError, match="nn.Module"):
        TrajectoryRecorder("model")
    obj = Objective(model, mse, (x, y))
    with pytest.raises(LossvizError, match="empty"):
        sharpness_along(obj, [])
    with pytest.raises(LossvizError, match="steps"):
        sharpness_along(obj, [model.state_dict()], steps=[1, 2])
    with pytest.raises(TypeError, match="Objective"):
        trace_along(model, [model.state_dict()])
