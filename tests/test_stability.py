"""lv.stability against closed forms: numpy eigenvalues of the 2×2 heavy-ball matrices,
gradient descent / heavy ball run on an exactly quadratic loss (with torch.optim.SGD on
the model itself) diverging exactly where the result says, and the exact mean-square
stability of linearized SGD (the second-moment map enumerated over all batches)."""

import itertools
import math

import numpy as np
import pytest
import torch
from reference import Tick, Ticker, assert_unchanged, dense_hessian, snapshot
from torch import nn

import lossviz as lv
from lossviz.errors import ArgumentTypeError, LossvizError
from lossviz.stability import StabilityResult, spectral_radius, stability

F64 = torch.float64
mse = nn.functional.mse_loss


def test_spectral_radius_matches_numpy_eigvals_of_the_2x2_matrix():
    xs = np.concatenate([np.linspace(-1, 5, 61), [0.0, 2.0, 4.0]])
    for beta in (0.0, 0.1, 0.25, 0.5, 0.81, 0.9, 0.99):
        got = spectral_radius(xs, beta)
        want = [
            max(abs(np.linalg.eigvals(np.array([[1 + beta - x, -beta], [1.0, 0.0]])))) for x in xs
        ]
        np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-7)
    # the stability region 0 < ηλ < 2 + 2β
    for beta in (0.0, 0.5, 0.9):
        assert spectral_radius(1e-3, beta) < 1 and spectral_radius(2 + 2 * beta - 1e-3, beta) < 1
        assert spectral_radius(2 + 2 * beta + 1e-3, beta) > 1
        assert spectral_radius(-1e-3, beta) > 1


def quadratic(seed=0):
    """A linear model with MSE at its least-squares minimum (exactly quadratic)."""
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(30, 4, generator=g, dtype=F64)
    X[:, 0] *= 2.5
    y = torch.randn(30, 1, generator=g, dtype=F64)
    torch.manual_seed(seed)
    model = nn.Linear(4, 1).double()
    A = torch.cat([X, torch.ones(30, 1, dtype=F64)], 1)
    sol = torch.linalg.lstsq(A, y).solution
    with torch.no_grad():
        model.weight.copy_(sol[:4].T)
        model.bias.copy_(sol[4])
    return model, X, y


def run_sgd(model, X, y, lr, momentum, steps=3000):
    """torch.optim.SGD (full batch) from θ* + a small kick; the final distance to θ*."""
    import copy

    m = copy.deepcopy(model)
    star = [p.detach().clone() for p in m.parameters()]
    with torch.no_grad():
        for p in m.parameters():
            p.add_(1e-3)
    opt = torch.optim.SGD(m.parameters(), lr=lr, momentum=momentum)
    for _ in range(steps):
        opt.zero_grad()
        mse(m(X), y).backward()
        opt.step()
        dist = sum(float((p.detach() - s).norm() ** 2) for p, s in zip(m.parameters(), star)) ** 0.5
        if not math.isfinite(dist) or dist > 1e3:
            return math.inf
    return dist


@pytest.mark.parametrize("beta", [0.0, 0.5, 0.9])
def test_gd_and_heavy_ball_diverge_exactly_where_the_result_says(beta):
    model, X, y = quadratic()
    obj = lv.Objective(model, mse, (X, y))
    H = dense_hessian(obj)
    lam = torch.linalg.eigvalsh(H).flip(0).numpy()
    snap = snapshot(model)
    thr = (2 + 2 * beta) / lam[0]
    for f, stable in ((0.97, True), (1.03, False)):
        r = stability(obj, f * thr, momentum=beta, k=3, progress=False)
        assert_unchanged(model, snap)
        np.testing.assert_allclose(r.eigenvalues, lam[:3], rtol=1e-6)
        assert r.threshold == pytest.approx((2 + 2 * beta) / (f * thr))
        assert r.gd_stable is stable
        assert r.gd_margin == pytest.approx(r.threshold - lam[0], rel=1e-6)
        # ρ(M) per eigenvalue: numpy on the 2×2 matrices
        for lv_, rad in zip(lam[:3], r.radius):
            a = 1 + beta - f * thr * lv_
            want = max(abs(np.linalg.eigvals(np.array([[a, -beta], [1.0, 0.0]]))))
            assert rad == pytest.approx(want, rel=1e-6)
        # the optimizer itself on the quadratic
        d = run_sgd(model, X, y, f * thr, beta)
        assert (d < 1e-3) is stable, (f, d)
        assert r.grad_norm < 1e-8  # at the minimum


def orth_data(c=1.3, n=4):
    """n samples with orthogonal, equal-norm per-sample gradients: x_i = c·e_i, y = 0."""
    X = c * torch.eye(n, dtype=F64)
    return X, torch.zeros(n, 1, dtype=F64)


def mean_square_radius(X, lr, B, replace):
    """ρ of Σ ↦ E[(I − ηH_ξ)Σ(I − ηH_ξ)] for linearized SGD on ½-less MSE: per-sample
    Hessians H_i = 2 x_i x_iᵀ, H_ξ their mean over a batch, every batch enumerated."""
    n, P = X.shape
    Hs = [2 * np.outer(x, x) for x in X.numpy()]
    batches = (
        list(itertools.product(range(n), repeat=B))
        if replace
        else list(itertools.combinations(range(n), B))
    )
    M = sum(
        np.kron(
            np.eye(P) - lr * sum(Hs[i] for i in b) / B, np.eye(P) - lr * sum(Hs[i] for i in b) / B
        )
        for b in batches
    ) / len(batches)
    return max(abs(np.linalg.eigvals(M)))


@pytest.mark.parametrize("B", [1, 2, 3])
def test_sgd_trace_condition_is_the_exact_mean_square_threshold_for_orthogonal_samples(B):
    X, y = orth_data()
    model = nn.Linear(4, 1, bias=False).double()
    with torch.no_grad():
        model.weight.zero_()  # the interpolating minimum
    obj = lv.Objective(model, mse, (X, y))
    trace = float(dense_hessian(obj).trace())
    for f, stable in ((0.98, True), (1.02, False)):
        lr = f * 2 * B / trace
        r = stability(obj, lr, batch_size=B, k=1, progress=False)
        assert r.trace == pytest.approx(trace, rel=1e-9)  # diagonal H: Hutchinson is exact
        assert r.sgd_bound == pytest.approx(2 * B / lr)
        assert r.sgd_stable is stable
        assert bool(mean_square_radius(X, lr, B, replace=False) < 1) is stable


def test_sgd_trace_condition_is_necessary_for_random_rank_one_samples():
    """Wu & Su 2023 (B = 1): mean-square stable ⇒ tr(H) <= 2/η; here checked against the
    exact mean-square threshold on random interpolating data."""
    g = torch.Generator().manual_seed(0)
    for _ in range(3):
        X = torch.randn(4, 3, generator=g, dtype=F64) * torch.rand(
            4, 1, generator=g, dtype=F64
        ).add(0.3)
        w = torch.randn(1, 3, generator=g, dtype=F64)
        y = X @ w.T  # interpolated exactly at w
        model = nn.Linear(3, 1, bias=False).double()
        with torch.no_grad():
            model.weight.copy_(w)
        obj = lv.Objective(model, mse, (X, y))
        trace = float(dense_hessian(obj).trace())
        lo, hi = 1e-6, 10.0  # the exact mean-square threshold η* by bisection
        for _ in range(60):
            mid = (lo * hi) ** 0.5
            lo, hi = (lo, mid) if mean_square_radius(X, mid, 1, True) > 1 + 1e-12 else (mid, hi)
        assert lo * trace <= 2 + 1e-9
        r = stability(obj, 0.99 * lo, batch_size=1, k=1, trace_rtol=0.001, progress=False)
        assert r.sgd_stable is not False  # never "unstable" where SGD is stable


def test_result_reevaluates_without_products_and_saves(tmp_path):
    model, X, y = quadratic()
    obj = lv.Objective(model, mse, (X, y))
    r = stability(obj, 0.05, batch_size=8, k=3, progress=False)
    again = stability(r, 0.2, momentum=0.9)
    fresh = stability(obj, 0.2, momentum=0.9, batch_size=8, k=3, progress=False)
    np.testing.assert_allclose(again.radius, fresh.radius, rtol=1e-6)
    assert again.gd_stable == fresh.gd_stable and again.sgd_stable == fresh.sgd_stable
    assert again.trace == r.trace
    r.save(tmp_path / "s.npz")
    back = lv.load(tmp_path / "s.npz")
    assert isinstance(back, StabilityResult)
    np.testing.assert_array_equal(back.eigenvalues, r.eigenvalues)
    assert back.gd_margin == r.gd_margin and back.sgd_stable == r.sgd_stable
    fig = r.plot()
    pts = [t for t in fig.data if t.type == "scatter"][0]
    np.testing.assert_allclose(pts.x, 0.05 * r.eigenvalues)
    assert "stable" in repr(r) and "<table" in r._repr_html_()
    assert [v["verdict"] for v in r.verdicts][0] in ("stable", "unstable")


def test_bad_input():
    model, X, y = quadratic()
    obj = lv.Objective(model, mse, (X, y))
    snap = snapshot(model)
    for lr in (0, -1.0, float("nan"), float("inf")):
        with pytest.raises(LossvizError, match="lr"):
            stability(obj, lr)
    with pytest.raises(ArgumentTypeError, match="lr"):
        stability(obj, "0.1")
    for m in (-0.1, 1.0, 1.5):
        with pytest.raises(LossvizError, match="momentum"):
            stability(obj, 0.1, momentum=m)
    with pytest.raises(LossvizError, match="batch_size"):
        stability(obj, 0.1, batch_size=0)
    with pytest.raises(ArgumentTypeError, match="Objective"):
        stability("model", 0.1)
    r = stability(obj, 0.1, k=1, progress=False)
    with pytest.raises(LossvizError, match="batch_size"):
        stability(r, 0.1, batch_size=4)
    with pytest.raises(LossvizError, match="at="):
        stability(r, 0.1, at={})
    with pytest.raises(LossvizError, match="k"):
        stability(obj, 0.1, k=100)
    assert_unchanged(model, snap)


def test_ctrl_c_during_the_trace_keeps_the_eigenvalues():
    ticker = Ticker()
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 5), Tick(ticker), nn.Tanh(), nn.Linear(5, 1)).double()
    x, y = torch.randn(20, 3, dtype=F64), torch.randn(20, 1, dtype=F64)
    # two batches: every product runs forwards (a single batch's graph would be cached)
    obj = lv.Objective(model, mse, [(x[:10], y[:10]), (x[10:], y[10:])])
    snap = snapshot(model)
    ticker.left = 10**9
    stability(obj, 0.1, k=1, progress=False)
    used = 10**9 - ticker.left
    ticker.left = used + 4  # past the eigenvalues, gradient and loss: inside the trace
    with pytest.warns(UserWarning, match="interrupted"):
        r = stability(obj, 0.1, k=1, batch_size=2, trace_rtol=0.0, max_hvp=500, progress=False)
    ticker.left = None
    assert not r.complete and "INCOMPLETE" in repr(r) and len(r.eigenvalues) == 1
    assert_unchanged(model, snap)


def test_teach_chart_draws_the_kernel_values_only():
    pytest.importorskip("ipywidgets")
    pytest.importorskip("anywidget")
    from lossviz import teach
    from lossviz.data import digits, mlp, train

    x, y = digits()
    x, y = x[:200], y[:200]
    model = mlp((64, 16, 10), seed=0)
    train(model, (x, y), steps=30, seed=0)
    obj = lv.Objective(model, nn.functional.cross_entropy, (x, y))
    snap = snapshot(model)
    chart = teach.stability_chart(obj, 0.5, momentum=0.5, k=4)
    assert_unchanged(model, snap)
    want = stability(chart.measured, 0.5, momentum=0.5)
    pts = chart.fig.data[2]
    np.testing.assert_allclose(pts.x, 0.5 * want.eigenvalues)
    np.testing.assert_allclose(pts.y, np.full(4, 0.5))
    np.testing.assert_allclose(np.asarray(pts.customdata)[:, 1], want.radius)
    # the measured eigenvalues are the network's (an independent top-k solve)
    ref = lv.hessian_eigs(obj, 4, progress=False).values
    np.testing.assert_allclose(chart.measured.eigenvalues, ref, rtol=1e-3)
    # sliders: the points and the verdict follow lossviz.stability
    chart.lr.value = 2.0
    chart.momentum.value = 0.9
    now = stability(chart.measured, chart.lr.value, momentum=chart.momentum.value)
    np.testing.assert_allclose(chart.fig.data[2].x, chart.lr.value * now.eigenvalues)
    np.testing.assert_allclose(chart.fig.data[2].y, np.full(4, chart.momentum.value))
    np.testing.assert_allclose(np.asarray(chart.fig.data[0].z), np.asarray(now.plot().data[0].z))
    assert chart.result.gd_stable == now.gd_stable
    assert ("unstable" if not now.gd_stable else "stable") in chart.info.value
    with pytest.raises(LossvizError, match="lr"):
        teach.stability_chart(obj, -1.0)
    chart.close()


def test_sgd_verdict_is_undetermined_within_two_standard_errors():
    r = StabilityResult(
        lr=0.1,
        eigenvalues=np.array([3.0]),
        residuals=np.zeros(1),
        trace=10.0,
        trace_stderr=1.0,
        batch_size=1,
    )
    near = stability(r, 2 / 10.5)  # bound 10.5: margin 0.5 < 2 standard errors
    assert near.sgd_stable is None and near.verdicts[1]["verdict"] == "undetermined"
    assert stability(r, 2 / 13.0).sgd_stable is True  # margin 3 > 2
    assert stability(r, 2 / 7.0).sgd_stable is False  # margin −3
    assert stability(r, 0.5).gd_stable is True and stability(r, 0.7).gd_stable is False


def test_unconverged_eigenvalues_are_flagged(monkeypatch):
    """Ritz values that did not converge are lower bounds: the result says so, loudly."""
    import lossviz.hessian as hess

    real = hess.hessian_eigs

    def unconverged(*a, **kw):
        r = real(*a, **kw)
        r.converged = np.zeros_like(r.converged, dtype=bool)
        return r

    model, X, y = quadratic()
    obj = lv.Objective(model, nn.MSELoss(), (X, y))
    monkeypatch.setattr(hess, "hessian_eigs", unconverged)
    with pytest.warns(UserWarning, match="did not converge"):
        r = stability(obj, 0.1, k=2, progress=False)
    assert r.converged is False and "NOT converged" in repr(r)
    monkeypatch.setattr(hess, "hessian_eigs", real)
    assert stability(obj, 0.1, k=2, progress=False).converged is True
