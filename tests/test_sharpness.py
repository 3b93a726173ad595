"""lv.sharpness against closed forms on an exactly quadratic loss (dense float64 Hessian
from plain autograd), brute force on a tiny box, direct evaluation at the returned
perturbation; bad input; the model left unchanged; Ctrl-C; save / load; timelines."""

import itertools
import math
import warnings

import numpy as np
import pytest
import torch
from reference import Tick, Ticker, assert_unchanged, dense_hessian, snapshot
from torch import nn

import lossviz as lv
from lossviz.errors import ArgumentTypeError, LossvizError, NonFiniteLossError
from lossviz.sharpness import SharpnessResult, sharpness
from lossviz.trajectory import SharpnessTimeline, rho_sharpness_along, sharpness_along

mse = nn.functional.mse_loss
F64 = torch.float64


def quadratic(seed=0, n=40, d=6):
    """A linear model with MSE at its least-squares solution: L is exactly quadratic,
    ``L(θ) = L* + ½(θ − θ*)ᵀH(θ − θ*)``, minimum known."""
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(n, d, generator=g, dtype=F64)
    X[:, 0] *= 3.0  # a clear top eigenvalue
    y = torch.randn(n, 1, generator=g, dtype=F64)
    torch.manual_seed(seed)
    model = nn.Linear(d, 1).double()
    A = torch.cat([X, torch.ones(n, 1, dtype=F64)], 1)
    sol = torch.linalg.lstsq(A, y).solution
    with torch.no_grad():
        model.weight.copy_(sol[:d].T)
        model.bias.copy_(sol[d])
    obj = lv.Objective(model, mse, (X, y))
    H = dense_hessian(obj)
    theta = torch.cat([model.weight.detach().reshape(-1), model.bias.detach()])
    return obj, H, theta


@pytest.fixture(scope="module")
def quad():
    return quadratic()


RHO = 0.1


def test_worst_case_is_half_rho2_lambda_max(quad):
    obj, H, _ = quad
    snap = snapshot(obj.model)
    r = sharpness(obj, RHO, progress=False)
    assert_unchanged(obj.model, snap)
    ev = torch.linalg.eigvalsh(H)
    exact = 0.5 * RHO**2 * float(ev[-1])
    assert r.lower_bound and r.kind == "worst" and r.complete and r.finite
    assert r.value == pytest.approx(exact, rel=0.02)
    assert r.value <= exact * (1 + 1e-9)  # a lower bound of the maximum
    # the second-order model is exact on a quadratic at its minimum (g = 0)
    assert r.lambda_max == pytest.approx(float(ev[-1]), rel=1e-6)
    assert r.second_order == pytest.approx(exact, rel=1e-6)
    # GAM: max_{‖δ‖ ≤ ρ} ‖Hδ‖ = ρ·max|λ|, times ρ
    assert r.first_order == pytest.approx(RHO**2 * float(ev.abs().max()), rel=0.02)


def test_worst_case_perturbation_is_in_the_ball_and_gives_the_value(quad):
    obj, _, theta = quad
    r = sharpness(obj, RHO, restarts=3, gam=False, second_order=False, progress=False)
    d = torch.cat([t.reshape(-1) for t in r.perturbation.values()])
    assert float(d.norm()) <= RHO * (1 + 1e-12)
    # direct evaluation with plain torch at θ + δ
    X, y = obj.first_batch()[0]
    w, b = theta[:-1] + d[:-1], theta[-1] + d[-1]
    direct = float(mse(X @ w[:, None] + b, y)) - float(mse(X @ theta[:-1, None] + theta[-1], y))
    assert r.value == pytest.approx(direct, rel=1e-9, abs=1e-13)
    assert len(r.restarts) == 3 and r.n_iter >= 1 and len(r.history) >= 1


def test_adaptive_worst_case_is_half_rho2_lambda_max_of_THT(quad):
    obj, H, theta = quad
    T = torch.diag(theta.abs())
    exact = 0.5 * RHO**2 * float(torch.linalg.eigvalsh(T @ H @ T)[-1])
    r = sharpness(obj, RHO, adaptive=True, progress=False)
    assert r.adaptive and r.value == pytest.approx(exact, rel=0.02)
    assert r.value <= exact * (1 + 1e-9)
    assert r.second_order == pytest.approx(exact, rel=1e-6)
    d = torch.cat([t.reshape(-1) for t in r.perturbation.values()])
    assert float((d / theta.abs()).norm()) <= RHO * (1 + 1e-9)  # ‖T⁻¹δ‖ ≤ ρ
    # adaptive GAM: ρ·max_{‖u‖≤ρ} ‖T∇L(θ+Tu)‖ = ρ·max ‖THTu‖ = ρ²·max|λ(THT)|
    gam = RHO**2 * float(torch.linalg.eigvalsh(T @ H @ T).abs().max())
    assert r.first_order == pytest.approx(gam, rel=0.02)


def test_average_is_half_rho2_trace_within_the_standard_error(quad):
    obj, H, theta = quad
    exact = 0.5 * RHO**2 * float(H.trace())
    r = sharpness(obj, RHO, kind="average", n_samples=400, progress=False)
    assert not r.lower_bound and r.stderr > 0 and r.n_samples == 400
    assert abs(r.value - exact) <= 3.5 * r.stderr
    # the standard error is what it should be: Var(½ρ² zᵀHz) = ½ρ⁴‖H‖_F²
    sd = math.sqrt(0.5) * RHO**2 * float(torch.linalg.matrix_norm(H))
    assert r.stderr == pytest.approx(sd / math.sqrt(400), rel=0.25)
    T = torch.diag(theta.abs())
    exact_ad = 0.5 * RHO**2 * float(torch.trace(T @ H @ T))
    ra = sharpness(obj, RHO, kind="average", adaptive=True, n_samples=400, progress=False)
    assert abs(ra.value - exact_ad) <= 3.5 * ra.stderr
    # the same seed gives the same samples
    r2 = sharpness(obj, RHO, kind="average", n_samples=400, progress=False)
    assert r2.value == r.value


def test_inf_norm_matches_brute_force_over_the_box_corners():
    obj, H, _ = quadratic(seed=3, d=5)
    P = H.shape[0]
    # a convex quadratic attains its maximum over the box at a corner: all 2^P of them
    brute = max(
        0.5 * RHO**2 * float(torch.tensor(s, dtype=F64) @ H @ torch.tensor(s, dtype=F64))
        for s in itertools.product([-1.0, 1.0], repeat=P)
    )
    r = sharpness(obj, RHO, norm="inf", restarts=8, progress=False)
    assert r.norm == "inf" and r.second_order is None
    assert r.value == pytest.approx(brute, rel=0.02)
    assert r.value <= brute * (1 + 1e-9)
    d = torch.cat([t.reshape(-1) for t in r.perturbation.values()])
    assert float(d.abs().max()) <= RHO * (1 + 1e-12)
    assert sharpness(obj, RHO, norm=math.inf, restarts=8, progress=False).value == r.value


def trust_region_max(g, H, rho):
    """max_{‖d‖ ≤ ρ} gᵀd + ½dᵀHd exactly: d = (μI − H)⁻¹g with μ > λ_max and ‖d‖ = ρ
    (the secular equation, solved by bisection in the eigenbasis; no hard case here)."""
    lam, Q = torch.linalg.eigh(H)
    gt = Q.T @ g
    lo, hi = float(lam[-1]) + 1e-15, float(lam[-1]) + float(g.norm()) / rho + 1.0
    for _ in range(200):
        mu = 0.5 * (lo + hi)
        if float(((gt / (mu - lam)) ** 2).sum()) > rho**2:
            lo = mu
        else:
            hi = mu
    d = Q @ (gt / (hi - lam))
    return float(g @ d + 0.5 * d @ H @ d)


def test_worst_case_away_from_a_minimum_is_the_trust_region_maximum(quad):
    """At θ* + v the quadratic's worst case is the trust-region problem
    max_{‖d‖ ≤ ρ} gᵀd + ½dᵀHd (g = Hv), solved exactly; ρ‖g‖ + ½ρ²λ_max bounds it."""
    obj, H, theta = quad
    v = torch.zeros_like(theta)
    v[0], v[3] = 0.05, -0.03
    at = {"weight": (theta[:-1] + v[:-1])[None], "bias": (theta[-1:] + v[-1:])}
    r = sharpness(obj, RHO, at=at, progress=False)
    g = H @ v
    exact = trust_region_max(g, H, RHO)
    assert r.value == pytest.approx(exact, rel=0.02)
    assert r.value <= exact * (1 + 1e-9)
    assert r.grad_norm == pytest.approx(float(g.norm()), rel=1e-6)
    lmax = float(torch.linalg.eigvalsh(H)[-1])
    assert r.second_order == pytest.approx(RHO * float(g.norm()) + 0.5 * RHO**2 * lmax, rel=1e-6)
    assert exact <= r.second_order * (1 + 1e-9)  # gᵀd <= ρ‖g‖, dᵀHd <= ρ²λ_max


def test_bad_input_is_reported_before_any_work(quad):
    obj, _, _ = quad
    snap = snapshot(obj.model)
    for rho in (0, -0.1, float("nan"), float("inf")):
        with pytest.raises(LossvizError, match="rho"):
            sharpness(obj, rho)
    with pytest.raises(ArgumentTypeError, match="rho"):
        sharpness(obj, "0.1")
    with pytest.raises(LossvizError, match="kind"):
        sharpness(obj, 0.1, kind="max")
    for norm in (1, 3, "l2", "Inf", True):
        with pytest.raises(LossvizError, match="norm"):
            sharpness(obj, 0.1, norm=norm)
    with pytest.raises(LossvizError, match="norm='inf' applies to kind='worst'"):
        sharpness(obj, 0.1, kind="average", norm="inf")
    with pytest.raises(LossvizError, match="eta"):
        sharpness(obj, 0.1, eta=0.01)
    with pytest.raises(LossvizError, match="restarts"):
        sharpness(obj, 0.1, restarts=0)
    with pytest.raises(LossvizError, match="n_samples"):
        sharpness(obj, 0.1, kind="average", n_samples=1)
    with pytest.raises(ArgumentTypeError, match="unexpected keyword"):
        sharpness(obj, 0.1, bn="recompute")
    with pytest.raises(ArgumentTypeError, match="Objective"):
        sharpness(obj.model, 0.1)
    with pytest.raises(LossvizError, match="at"):
        sharpness(obj, 0.1, at={"nope": torch.zeros(1)})
    assert_unchanged(obj.model, snap)


def log_model():
    """L(w) = −log(w + b) on one input: finite at θ, not finite where w + b <= 0."""
    model = nn.Linear(1, 1).double()
    with torch.no_grad():
        model.weight.fill_(0.02)
        model.bias.fill_(0.02)
    x, y = torch.ones(1, 1, dtype=F64), torch.zeros(1, 1, dtype=F64)
    return lv.Objective(model, lambda out, t: -torch.log(out).mean(), (x, y))


def test_nonfinite_loss_inside_the_ball_is_marked_with_where():
    obj = log_model()
    snap = snapshot(obj.model)
    with pytest.warns(UserWarning, match="not finite"):
        r = sharpness(obj, 0.1, gam=False, progress=False)
    assert math.isnan(r.value) and not r.finite
    w = r.nonfinite[0]
    assert "restart" in w["where"] and w["radius"] <= 0.1 * (1 + 1e-12)
    assert not math.isfinite(w["loss"])
    assert "NOT FINITE" in repr(r)
    with pytest.warns(UserWarning, match="not finite"):
        ra = sharpness(obj, 0.1, kind="average", n_samples=50, progress=False)
    assert math.isnan(ra.value) and "sample" in ra.nonfinite[0]["where"]
    # a small enough ball stays where the loss is finite
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ok = sharpness(obj, 1e-3, gam=False, progress=False)
    assert ok.finite and math.isfinite(ok.value)
    assert_unchanged(obj.model, snap)


def test_nonfinite_loss_at_the_point_raises():
    obj = log_model()
    with pytest.raises(NonFiniteLossError, match="at θ"):
        sharpness(
            obj,
            0.1,
            at={"weight": torch.full((1, 1), -1.0, dtype=F64), "bias": torch.zeros(1, dtype=F64)},
        )


def test_adaptive_with_zero_weights_pins_them_and_says_so(quad):
    obj, H, theta = quad
    w = obj.model.weight.detach().clone()
    w[0, 1] = 0.0
    at = {"weight": w, "bias": obj.model.bias.detach().clone()}
    with pytest.warns(UserWarning, match="pinned"):
        r = sharpness(obj, RHO, adaptive=True, at=at, gam=False, progress=False)
    assert r.pinned == 1 and "pinned" in repr(r)
    assert float(r.perturbation["weight"][0, 1]) == 0.0
    # eta > 0 frees them (ASAM's offset)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        r2 = sharpness(obj, RHO, adaptive=True, eta=0.01, at=at, gam=False, progress=False)
    assert r2.pinned == 0 and float(r2.perturbation["weight"][0, 1]) != 0.0


def test_ctrl_c_keeps_a_partial_result_and_the_model():
    ticker = Ticker()
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), Tick(ticker), nn.Tanh(), nn.Linear(4, 1)).double()
    x, y = torch.randn(20, 3, dtype=F64), torch.randn(20, 1, dtype=F64)
    obj = lv.Objective(model, mse, (x, y))
    snap = snapshot(model)
    ticker.left = 12
    with pytest.warns(UserWarning):
        r = sharpness(obj, 0.05, max_iter=50, tol=0, progress=False)
    ticker.left = None
    assert not r.complete and "INCOMPLETE" in repr(r)
    assert math.isfinite(r.value) and 0 < r.n_iter < 50
    assert_unchanged(model, snap)
    ticker.left = 6
    with pytest.warns(UserWarning, match="interrupted"):
        ra = sharpness(obj, 0.05, kind="average", n_samples=1000, progress=False)
    ticker.left = None
    assert not ra.complete and ra.n_samples < 1000
    assert_unchanged(model, snap)


def test_result_saves_loads_and_plots(quad, tmp_path):
    obj, _, _ = quad
    for kw in ({}, {"kind": "average", "n_samples": 20}):
        r = sharpness(obj, RHO, progress=False, max_iter=5, **kw)
        p = tmp_path / f"s{len(kw)}.npz"
        r.save(p)
        back = lv.load(p)
        assert isinstance(back, SharpnessResult)
        assert back.value == r.value and back.kind == r.kind and back.rho == r.rho
        np.testing.assert_array_equal(back.history, r.history)
        assert r.plot().data and "SharpnessResult" in repr(back)
        assert "<table" in r._repr_html_()


def test_rho_sharpness_timeline_matches_single_calls_and_lambda_timeline_still_works(
    quad, tmp_path
):
    obj, H, theta = quad
    pts = {
        0: {"weight": theta[:-1][None] + 0.02, "bias": theta[-1:]},
        5: {"weight": theta[:-1][None], "bias": theta[-1:]},
    }
    tl = rho_sharpness_along(obj, pts, RHO, gam=False, progress=False)
    assert isinstance(tl, SharpnessTimeline) and tl.steps == [0, 5] and tl.complete
    for i, p in enumerate(pts.values()):
        single = sharpness(obj, RHO, at=p, gam=False, progress=False)
        assert tl.values[i] == pytest.approx(single.value, rel=1e-12)
    assert tl.values[1] == pytest.approx(
        0.5 * RHO**2 * float(torch.linalg.eigvalsh(H)[-1]), rel=0.02
    )
    av = rho_sharpness_along(obj, pts, RHO, kind="average", n_samples=50, steps=["a", "b"])
    assert av.steps == ["a", "b"] and np.all(av.stderr > 0)
    assert tl.plot().data and av.plot().data and "<table" in tl._repr_html_()
    av.save(tmp_path / "tl.npz")
    back = lv.load(tmp_path / "tl.npz")
    assert isinstance(back, SharpnessTimeline) and isinstance(back.results[0], SharpnessResult)
    np.testing.assert_array_equal(back.values, av.values)
    # the λ_max timeline is unchanged
    lam = sharpness_along(obj, pts)
    assert lam.values[1, 0] == pytest.approx(float(torch.linalg.eigvalsh(H)[-1]), rel=1e-6)
    with pytest.raises(LossvizError, match="rho"):
        rho_sharpness_along(obj, pts, 0.0)
    with pytest.raises(LossvizError, match="at="):
        rho_sharpness_along(obj, pts, 0.1, at=None)
    with pytest.raises(LossvizError):
        rho_sharpness_along(obj, [], 0.1)


def small_mlp():
    torch.manual_seed(1)
    model = nn.Sequential(nn.Linear(3, 6), nn.Tanh(), nn.Linear(6, 2)).double()
    g = torch.Generator().manual_seed(2)
    x = torch.randn(30, 3, generator=g, dtype=F64)
    y = torch.randn(30, 2, generator=g, dtype=F64)
    # two batches of different sizes: the sample-weighted mean must be honoured
    return model, [(x[:20], y[:20]), (x[20:], y[20:])]


def plain_loss(model, data, delta):
    """The loss at θ + δ by plain torch on a copy of the model."""
    import copy

    from reference import reference_loss

    m = copy.deepcopy(model)
    with torch.no_grad():
        for name, p in m.named_parameters():
            p.add_(delta[name])
    with torch.no_grad():
        return float(reference_loss(m, mse, data))


def test_nonlinear_network_against_plain_torch():
    model, data = small_mlp()
    obj = lv.Objective(model, mse, data)
    snap = snapshot(model)
    zero = {n: torch.zeros_like(p) for n, p in model.named_parameters()}
    L0 = plain_loss(model, data, zero)
    r = sharpness(obj, 0.2, restarts=6, progress=False)
    assert r.loss == pytest.approx(L0, rel=1e-12)
    assert r.value == pytest.approx(plain_loss(model, data, r.perturbation) - L0, rel=1e-9)
    assert sum(float((t**2).sum()) for t in r.perturbation.values()) ** 0.5 <= 0.2 * (1 + 1e-12)
    # no random point of the ball beats the ascent (it is a lower bound of the max, but
    # a good one): 200 random boundary points by plain torch
    g = torch.Generator().manual_seed(5)
    names = [n for n, _ in model.named_parameters()]
    for _ in range(200):
        d = {n: torch.randn(p.shape, generator=g, dtype=F64) for n, p in model.named_parameters()}
        s = 0.2 / sum(float((t**2).sum()) for t in d.values()) ** 0.5
        assert plain_loss(model, data, {n: d[n] * s for n in names}) - L0 <= r.value + 1e-12
    # the average against an independent Monte-Carlo with plain torch (other draws)
    ra = sharpness(obj, 0.05, kind="average", n_samples=300, progress=False)
    vals = []
    for _ in range(300):
        d = {
            n: 0.05 * torch.randn(p.shape, generator=g, dtype=F64)
            for n, p in model.named_parameters()
        }
        vals.append(plain_loss(model, data, d) - L0)
    mc, se = np.mean(vals), np.std(vals, ddof=1) / np.sqrt(len(vals))
    assert abs(ra.value - mc) <= 4 * math.hypot(ra.stderr, se)
    assert_unchanged(model, snap)


def test_at_a_strict_maximum_the_worst_case_is_zero_and_the_average_negative():
    g = torch.Generator().manual_seed(0)
    X = torch.randn(20, 4, generator=g, dtype=F64)
    model = nn.Linear(4, 1, bias=False).double()
    with torch.no_grad():
        model.weight.zero_()
    obj = lv.Objective(model, lambda out, t: -(out**2).mean(), (X, torch.zeros(20, 1, dtype=F64)))
    H = dense_hessian(obj)
    assert float(torch.linalg.eigvalsh(H)[-1]) < 0  # negative definite
    r = sharpness(obj, 0.1, progress=False)
    assert r.value == 0.0 and all(float(t.abs().max()) == 0 for t in r.perturbation.values())
    # GAM: ‖∇L(δ)‖ = ‖Hδ‖ is largest on the sphere, ρ·max|λ|, concave or not
    assert r.first_order == pytest.approx(
        0.01 * float(torch.linalg.eigvalsh(H).abs().max()), rel=0.02
    )
    ra = sharpness(obj, 0.1, kind="average", n_samples=300, progress=False)
    assert abs(ra.value - 0.5 * 0.01 * float(H.trace())) <= 3.5 * ra.stderr and ra.value < 0


def test_unconverged_lambda_max_gives_no_second_order_estimate(quad, monkeypatch):
    import lossviz.hessian as hess

    real = hess.hessian_eigs

    def unconverged(*a, **kw):
        r = real(*a, **kw)
        r.converged = np.zeros_like(r.converged, dtype=bool)
        return r

    obj, _, _ = quad
    monkeypatch.setattr(hess, "hessian_eigs", unconverged)
    with pytest.warns(UserWarning, match="did not converge"):
        r = sharpness(obj, 0.01, restarts=1, max_iter=3, progress=False)
    assert r.second_order is None and r.lambda_max is None
    assert "second-order" not in repr(r)  # the repr shows no estimate it does not have
