import numpy as np
import pytest
import torch
from torch import nn

from lossviz.data import digits, mlp
from lossviz.directions import random_directions
from lossviz.errors import LossvizError
from lossviz.objective import Objective
from lossviz.roughness import (
    RoughnessResult,
    coefficient_of_variation,
    roughness_along,
    roughness_index,
    total_variation,
)

F = nn.functional


class Param(nn.Module):
    def __init__(self, w):
        super().__init__()
        self.W = nn.Parameter(w.clone())


def analytic(fn, w0):
    """An Objective whose loss is fn(W) (no data needed: one dummy batch)."""
    return Objective(Param(w0), forward=lambda m, b: fn(m.W), data=(torch.zeros(1),))


W0 = torch.tensor(
    [[1.0, -2.0, 0.5, 1.5], [0.3, 2.0, -1.0, 0.7], [2.0, 0.1, 0.4, -0.6]], dtype=torch.float64
)


def test_total_variation_formula_and_flat_slices():
    f = np.array([[0.0, 2.0, 1.0, 3.0], [5.0, 5.0, 5.0, 5.0], [1.0, np.nan, 0.0, 0.0]])
    tv, flat = total_variation(f, 0.5)
    assert tv[0] == pytest.approx((2 + 1 + 2) / (2 * 0.5 * 3))
    assert np.isnan(tv[1]) and flat.tolist() == [False, True, False]
    assert np.isnan(tv[2])
    assert coefficient_of_variation(np.array([1.0, 3.0])) == pytest.approx(np.sqrt(2) / 2)


def test_quadratic_bowl_is_smooth_and_oscillation_is_rough():
    # at the minimum of a bowl every slice is a parabola: TV = 1/ℓ in every direction, RI = 0
    bowl = analytic(lambda w: ((w - W0) ** 2).sum(), W0)
    r = roughness_index(bowl, n_directions=20, radius=0.1, progress=False)
    np.testing.assert_allclose(r.tv, 1 / 0.1, rtol=1e-9)
    assert r.value < 1e-8 and r.ci[1] < 1e-8
    # a linear function: monotone slices, TV = 1/(2ℓ), RI = 0
    lin = analytic(lambda w: (w * W0).sum(), W0)
    rl = roughness_index(lin, n_directions=10, radius=0.2, progress=False)
    np.testing.assert_allclose(rl.tv, 1 / 0.4, rtol=1e-9)
    # oscillations at many frequencies: the TV depends strongly on the direction
    freq = torch.arange(1, 13, dtype=torch.float64).reshape(3, 4) * 3
    osc = analytic(lambda w: torch.sin(freq * w).sum() + 0.1 * (w**2).sum(), W0)
    ro = roughness_index(osc, n_directions=30, radius=0.5, n_points=21, progress=False)
    assert ro.value > 0.1 and ro.ci[0] > 0.05  # vs 1e-8 for the bowl
    assert ro.ci[0] <= ro.value <= ro.ci[1]


def test_ri_formula_against_returned_slices_and_direct_losses():
    x, y = digits(dtype=torch.float64)
    obj = Objective(
        mlp((64, 16, 10), nn.Tanh, seed=2).double(),
        F.cross_entropy,
        [(x[:150], y[:150]), (x[150:250], y[150:250])],
    )
    r = roughness_index(obj, n_directions=6, n_points=5, radius=0.2, seed=3, progress=False)
    assert isinstance(r, RoughnessResult) and r.slices.shape == (6, 5)
    np.testing.assert_allclose(r.ts, np.linspace(-0.2, 0.2, 5))
    # slices are L(θ + t_k d_j) with d_j = random_directions(obj, 6, seed=3)[j]
    ds = random_directions(obj, 6, seed=3)
    theta = obj.weights()
    for j in (0, 5):
        ref = [obj.loss(theta + float(t) * ds[j]) for t in r.ts]
        np.testing.assert_allclose(r.slices[j], ref, rtol=1e-12)
    # TV_j and RI exactly as in formulas.md
    tv = np.array(
        [
            sum(abs(f[k + 1] - f[k]) for k in range(4)) / (2 * 0.2 * (max(f) - min(f)))
            for f in r.slices
        ]
    )
    np.testing.assert_allclose(r.tv, tv, rtol=1e-12)
    assert r.value == pytest.approx(np.std(tv, ddof=1) / np.mean(tv), rel=1e-12)
    assert r.ci[0] <= r.ci[1]
    loop = roughness_index(
        obj, n_directions=6, n_points=5, radius=0.2, seed=3, batched=False, progress=False
    )
    np.testing.assert_allclose(loop.slices, r.slices, rtol=1e-12)
    assert "RI =" in repr(r) and "<table>" in r._repr_html_()
    fig = r.plot()  # one line per random slice, the index in the title
    assert fig.layout.title.text.startswith(f"6 random slices: RI = {r.value:.3g} (95% CI ")
    assert len(fig.data) == 6
    for trace, f in zip(fig.data, r.slices):
        np.testing.assert_array_equal(trace.x, r.ts)
        np.testing.assert_array_equal(trace.y, f)


def test_flat_landscape_is_reported_not_divided_by_zero():
    const = analytic(lambda w: 0.0 * w.sum() + 1.0, W0)
    with pytest.warns(UserWarning, match="flat"):
        r = roughness_index(const, n_directions=4, progress=False)
    assert r.flat.all() and r.n_flat == 4 and np.isnan(r.value)
    assert "flat" in repr(r)


def test_roughness_along_checkpoints():
    x, y = digits()
    obj = Objective(mlp((64, 16, 10), nn.Tanh, seed=0), F.cross_entropy, (x[:300], y[:300]))
    ck = {0: obj.weights(), 10: obj.weights() * 0.5}
    r = roughness_along(obj, ck, n_directions=5, n_points=5, progress=False)
    assert r.labels == [0, 10] and len(r) == 2 and r.ci.shape == (2, 2)
    single = roughness_index(obj, ck[10], n_directions=5, n_points=5, progress=False)
    np.testing.assert_allclose(r[1].slices, single.slices)
    assert r.values[1] == pytest.approx(single.value)
    assert "RI" in repr(r)
    fig = r.plot()
    assert fig.layout.title.text == "roughness index along training (bars: bootstrap CI)"
    assert len(fig.data) == 1 and list(fig.data[0].x) == [0, 10]
    np.testing.assert_array_equal(fig.data[0].y, r.values)
    np.testing.assert_allclose(fig.data[0].error_y.array, r.ci[:, 1] - r.values)
    np.testing.assert_allclose(fig.data[0].error_y.arrayminus, r.values - r.ci[:, 0])
    with pytest.raises(LossvizError, match="no checkpoints"):
        roughness_along(obj, [])


def test_bad_arguments():
    obj = analytic(lambda w: (w**2).sum(), W0)
    with pytest.raises(LossvizError, match="n_directions"):
        roughness_index(obj, n_directions=1)
    with pytest.raises(LossvizError, match="radius"):
        roughness_index(obj, radius=0)
    with pytest.raises(LossvizError, match="norm"):
        roughness_index(obj, norm="batch", progress=False)
    with pytest.raises(TypeError, match="Objective"):
        roughness_index(nn.Linear(2, 2))
