import numpy as np
import pytest
import torch
from torch import nn

from lossviz.directions import (
    PCAResult,
    eigen_directions,
    model_direction,
    pca_directions,
    plane_through,
    random_directions,
)
from lossviz.errors import CheckpointError, LossvizError
from lossviz.objective import Objective
from lossviz.weights import Weights


def cnn(dtype=torch.float32):
    torch.manual_seed(0)
    m = nn.Sequential(
        nn.Conv2d(3, 5, 3),
        nn.BatchNorm2d(5),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(5 * 4 * 4, 7),
        nn.ReLU(),
        nn.Linear(7, 3),
    )
    return m.to(dtype)


def test_filter_normalization_invariants():
    m = cnn()
    params = dict(m.named_parameters())
    ds = random_directions(m, 3, seed=1)
    assert len(ds) == 3
    for d in ds:
        assert list(d.keys()) == list(params)  # parameters only: no BN running statistics
        for k, p in params.items():
            if p.ndim >= 2:
                rows_d = d[k].reshape(p.shape[0], -1).norm(dim=1)
                rows_p = p.detach().reshape(p.shape[0], -1).norm(dim=1)
                torch.testing.assert_close(rows_d, rows_p, rtol=1e-5, atol=1e-7)
            else:
                assert torch.count_nonzero(d[k]) == 0  # ignore="biasbn"
    # distinct directions, deterministic, and the j-th does not depend on n
    assert not torch.allclose(ds[0]["0.weight"], ds[1]["0.weight"])
    again = random_directions(m, 1, seed=1)[0]
    assert all(torch.equal(again[k], ds[0][k]) for k in params)
    other = random_directions(m, 1, seed=2)[0]
    assert not torch.equal(other["0.weight"], ds[0]["0.weight"])


def test_layer_norm_none_and_bias_options():
    m = cnn()
    p = dict(m.named_parameters())
    d = random_directions(m, 1, norm="layer", seed=0)[0]
    for k, v in p.items():
        if v.ndim >= 2:
            torch.testing.assert_close(d[k].norm(), v.detach().norm(), rtol=1e-5, atol=0)
    d = random_directions(m, 1, norm="filter", ignore=None, seed=0)[0]
    for k, v in p.items():
        if v.ndim == 1:  # a 1-D tensor is scaled as one filter
            torch.testing.assert_close(d[k].norm(), v.detach().norm(), rtol=1e-5, atol=0)
    d = random_directions(m, 1, norm="none", ignore=None, seed=0)[0]
    raw = torch.randn(
        sum(v.numel() for v in p.values()), generator=torch.Generator().manual_seed(0)
    )
    torch.testing.assert_close(d.flatten(), raw)  # plain N(0, I) draws
    with pytest.raises(LossvizError, match="norm"):
        random_directions(m, 1, norm="bogus")
    with pytest.raises(LossvizError, match="ignore"):
        random_directions(m, 1, ignore="bias")
    with pytest.raises(LossvizError, match="n must be an integer >= 1"):
        random_directions(m, 0)


def test_directions_follow_dtype_objective_and_state_dict():
    m = cnn(torch.float64)
    d = random_directions(m, 1)[0]
    assert all(v.dtype == torch.float64 for v in d.values())
    sd = random_directions(m.state_dict(), 1)[0]
    assert "1.running_mean" not in sd and "1.num_batches_tracked" not in sd
    assert torch.equal(sd["0.weight"], d["0.weight"])
    x = torch.randn(4, 3, 6, 6, dtype=torch.float64)
    obj = Objective(
        m,
        nn.functional.cross_entropy,
        (x, torch.zeros(4, dtype=torch.long)),
        params=lambda n: n.startswith("4."),
    )
    od = random_directions(obj, 1)[0]
    assert list(od.keys()) == ["4.weight", "4.bias"]


def test_model_direction():
    a, b = cnn(), cnn()
    with torch.no_grad():
        for p in b.parameters():
            p.add_(1.5)
    d = model_direction(a, b)
    for k, p in a.named_parameters():
        torch.testing.assert_close(d[k], torch.full_like(p, 1.5))
    with pytest.raises(CheckpointError):
        model_direction(a, {"0.weight": torch.zeros(5, 3, 3, 3)})


def test_pca_directions_recover_plane_and_match_sklearn():
    from sklearn.decomposition import PCA

    g = torch.Generator().manual_seed(0)
    base = torch.randn(6, 5, generator=g, dtype=torch.float64)
    u = torch.randn(6, 5, generator=g, dtype=torch.float64)
    v = torch.randn(6, 5, generator=g, dtype=torch.float64)
    ab = torch.randn(8, 2, generator=g, dtype=torch.float64) * torch.tensor([3.0, 1.0])
    traj = [{"w": base + a * u + b * v} for a, b in ab]
    r = pca_directions(traj, 2)
    assert isinstance(r, PCAResult)
    D = torch.stack([d["w"].reshape(-1) for d in r.directions])
    torch.testing.assert_close(D @ D.T, torch.eye(2, dtype=torch.float64))
    # the trajectory lies in the plane: center + coords·D reproduces every checkpoint
    rec = r.center["w"].reshape(-1) + torch.as_tensor(r.coords) @ D
    torch.testing.assert_close(rec, torch.stack([t["w"].reshape(-1) for t in traj]))
    torch.testing.assert_close(r.center["w"], traj[-1]["w"])  # center="last"
    np.testing.assert_allclose(r.coords[-1], 0, atol=1e-12)
    X = np.stack([t["w"].reshape(-1).numpy() for t in traj])
    sk = PCA(2).fit(X)
    np.testing.assert_allclose(r.explained_variance_ratio, sk.explained_variance_ratio_, rtol=1e-8)
    np.testing.assert_allclose(np.abs(D.numpy() @ sk.components_.T), np.eye(2), atol=1e-8)
    rm = pca_directions(traj, 2, center="mean")
    np.testing.assert_allclose(rm.coords.mean(0), 0, atol=1e-10)
    assert pca_directions(traj, 1, center=0).coords[0, 0] == 0
    fig = r.plot()
    assert fig.layout.title.text == "trajectory in its PCA plane"
    assert [t.name for t in fig.data] == ["trajectory", "start", "end"]
    np.testing.assert_array_equal(fig.data[0].x, r.coords[:, 0])
    np.testing.assert_array_equal(fig.data[0].y, r.coords[:, 1])
    assert (fig.data[1].x[0], fig.data[2].x[0]) == (r.coords[0, 0], r.coords[-1, 0])
    ev = r.explained_variance_ratio
    assert fig.layout.xaxis.title.text == f"PC1 ({100 * ev[0]:.1f}%)"
    assert fig.layout.yaxis.title.text == f"PC2 ({100 * ev[1]:.1f}%)"
    with pytest.raises(LossvizError, match="at least 3"):
        pca_directions(traj[:2], 2)
    with pytest.raises(LossvizError, match="center"):
        pca_directions(traj, 2, center="middle")


def test_plane_through():
    g = torch.Generator().manual_seed(1)
    a, b, c = ({"w": torch.randn(4, 3, generator=g, dtype=torch.float64)} for _ in range(3))
    pl = plane_through(a, b, c, names=("A", "B", "C"))
    e = torch.stack([d["w"].reshape(-1) for d in pl.directions])
    torch.testing.assert_close(e @ e.T, torch.eye(2, dtype=torch.float64))
    for name, p in zip("ABC", (a, b, c)):
        x, y = pl.points[name]
        torch.testing.assert_close(
            pl.origin["w"] + x * pl.directions[0]["w"] + y * pl.directions[1]["w"], p["w"]
        )
    (x0, x1), (y0, y1) = pl.span()
    assert all(x0 < x < x1 and y0 < y < y1 for x, y in pl.points.values())
    with pytest.raises(LossvizError, match="one line"):
        plane_through(a, b, {"w": 2 * b["w"] - a["w"]})
    f32 = [{"w": p["w"].float()} for p in (a, b)]
    with pytest.raises(LossvizError, match="one line"):  # float32 rounding is not a plane
        plane_through(f32[0], f32[1], {"w": (f32[0]["w"] + 2 * f32[1]["w"]) / 3})
    with pytest.raises(LossvizError, match="same point"):
        plane_through(a, a, c)


class Quadratic(nn.Module):
    def __init__(self):
        super().__init__()
        self.W = nn.Parameter(torch.ones(2, 3, dtype=torch.float64))


def test_eigen_directions_on_a_known_hessian():
    scales = torch.tensor([[1.0, 5.0, 2.0], [0.5, 9.0, 3.0]], dtype=torch.float64)
    obj = Objective(
        Quadratic(), forward=lambda m, b: 0.5 * (scales * m.W**2).sum(), data=(torch.zeros(1),)
    )
    d1, d2 = eigen_directions(obj, 2, progress=False)
    assert isinstance(d1, Weights)
    assert abs(float(d1["W"][1, 1])) == pytest.approx(1.0, abs=1e-6)  # λ = 9
    assert abs(float(d2["W"][0, 1])) == pytest.approx(1.0, abs=1e-6)  # λ = 5
