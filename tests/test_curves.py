"""Mode-connecting curves (``lossviz.curves``; Garipov et al. 2018): the curve formulas
against their closed forms, a designed ring-shaped valley where the straight line has a
barrier and a low path is known, the metrics along the curve against direct evaluation of
a fresh model at ``.point(t)`` (BatchNorm statistics re-estimated by
``torch.optim.swa_utils.update_bn``), the user's models unchanged, and bad input."""

from __future__ import annotations

import copy
import math
import warnings

import numpy as np
import pytest
import torch
from reference import (
    Tick,
    Ticker,
    assert_unchanged,
    cnn_case,
    mlp_case,
    reference_loss,
    snapshot,
)
from torch import nn

import lossviz as lv
from lossviz.curves import CurveResult, connect, curve_coefficients
from lossviz.errors import ArgumentTypeError, CheckpointError, LossvizError

F = nn.functional
D = torch.float64


# --- the curve's formula -------------------------------------------------------------------
def bernstein(n, i, t):
    return math.comb(n, i) * t**i * (1 - t) ** (n - i)


@pytest.mark.parametrize("k", [1, 2, 3])
def test_bezier_coefficients_are_bernstein(k):
    ts = np.linspace(0, 1, 13)
    c = curve_coefficients("bezier", ts, k)
    want = np.array([[bernstein(k + 1, i, t) for i in range(k + 2)] for t in ts])
    np.testing.assert_allclose(c, want, rtol=0, atol=1e-15)
    np.testing.assert_allclose(c.sum(1), 1.0, atol=1e-15)
    assert c[0].tolist() == [1.0] + [0.0] * (k + 1)
    assert c[-1].tolist() == [0.0] * (k + 1) + [1.0]


def test_polychain_coefficients():
    # one bend: (1-2t)·A + 2t·w for t <= 1/2, (2-2t)·w + (2t-1)·B after
    for t in np.linspace(0, 1, 11):
        c = curve_coefficients("polychain", t, 1)
        want = [1 - 2 * t, 2 * t, 0] if t <= 0.5 else [0, 2 - 2 * t, 2 * t - 1]
        np.testing.assert_allclose(c, want, atol=1e-15)
    # two bends: the knots t = 1/3, 2/3 are the bends themselves
    np.testing.assert_allclose(curve_coefficients("polychain", 1 / 3, 2), [0, 1, 0, 0], atol=1e-15)
    np.testing.assert_allclose(
        curve_coefficients("polychain", 0.5, 2), [0, 0.5, 0.5, 0], atol=1e-15
    )


@pytest.mark.parametrize(
    "args,exc,text",
    [
        (("spline", 0.5, 1), LossvizError, "curve"),
        (("bezier", 0.5, 0), LossvizError, "bends"),
        (("bezier", 1.5, 1), LossvizError, r"\[0, 1\]"),
        (("bezier", float("nan"), 1), LossvizError, r"\[0, 1\]"),
        (("bezier", 0.5, 1.0), ArgumentTypeError, "bends"),
    ],
)
def test_curve_coefficients_bad(args, exc, text):
    with pytest.raises(exc, match=text):
        curve_coefficients(*args)


# --- a ring-shaped valley: L(w) = (|w|² - 1)² -----------------------------------------------
class Ring(nn.Module):
    """Two parameters; with MSE against 1 on an input of 1 the loss is (|w|² - 1)²."""

    def __init__(self, w=(0.0, 0.0)):
        super().__init__()
        self.w = nn.Parameter(torch.tensor(w, dtype=D))

    def forward(self, x):
        return x * self.w.pow(2).sum()


ONE = torch.ones(1, 1, dtype=D)
A_RING = (1.0, 0.0)
B_RING = (math.cos(math.radians(150)), math.sin(math.radians(150)))


def ring_obj(model=None):
    return lv.Objective(model or Ring(), F.mse_loss, (ONE, ONE))


def ring_loss(w):
    return float((torch.as_tensor(w, dtype=D).pow(2).sum() - 1) ** 2)


@pytest.mark.parametrize("curve,k,lr", [("bezier", 1, 0.1), ("polychain", 3, 0.02)])
def test_ring_curve_goes_round_the_valley(curve, k, lr):
    a, b = Ring(A_RING), Ring(B_RING)
    sa, sb = snapshot(a), snapshot(b)
    obj = ring_obj()
    sm = snapshot(obj.model)
    r = connect(
        obj, a, b, curve=curve, bends=k, steps=300, lr=lr, n=41, metrics="loss", progress=False
    )
    assert_unchanged(a, sa)
    assert_unchanged(b, sb)
    assert_unchanged(obj.model, sm)
    # the line through the middle of the ring: 0.87 at t = 1/2; the curve goes round (the
    # best broken line with one bend cannot: 0.137 at the middle of its chords)
    line_max = max(ring_loss((1 - t) * a.w.detach() + t * b.w.detach()) for t in r.ts)
    assert r.max("loss", path="line") == pytest.approx(line_max, rel=1e-12)
    assert line_max > 0.8
    assert r.max("loss") < 0.1 * line_max
    assert r.barrier("loss") < 0.1 * r.barrier("loss", path="line")
    # every value is the designed function at the curve's point
    for t, v in zip(r.ts, r["loss"]):
        assert v == pytest.approx(ring_loss(r.point(t)["w"]), rel=1e-12, abs=1e-15)
    # the endpoints: bit-identical
    assert torch.equal(r.point(0.0)["w"], a.w.detach()) and torch.equal(r.point(1)["w"], b.w)
    assert torch.equal(r.a["w"], a.w.detach()) and torch.equal(r.b["w"], b.w.detach())
    assert r.complete and r.stopped is None and r.trained_steps == 300
    assert len(r.train_loss) == 300 and np.isfinite(r.train_loss).all()


def test_points_are_the_closed_forms():
    obj = ring_obj()
    A, B = torch.tensor(A_RING, dtype=D), torch.tensor(B_RING, dtype=D)
    for curve, k in [("bezier", 1), ("bezier", 2), ("polychain", 1), ("polychain", 3)]:
        r = connect(
            obj, {"w": A}, {"w": B}, curve=curve, bends=k, steps=20, n=5, metrics="loss",
            progress=False,
        )  # fmt: skip
        ws = [A] + [w["w"] for w in r.bends] + [B]
        for t in (0.0, 0.1, 0.3, 0.5, 0.77, 1.0):
            if curve == "bezier":
                want = sum(bernstein(k + 1, i, t) * ws[i] for i in range(k + 2))
            else:
                i = min(int(t * (k + 1)), k)
                s = t * (k + 1) - i
                want = (1 - s) * ws[i] + s * ws[i + 1]
            torch.testing.assert_close(r.point(t)["w"], want, rtol=1e-13, atol=1e-15)
        assert torch.equal(r.point(0)["w"], A) and torch.equal(r.point(1)["w"], B)


# --- direct evaluation at .point(t) ----------------------------------------------------------
def fresh_at(model, state):
    m = copy.deepcopy(model)
    m.load_state_dict({**m.state_dict(), **dict(state)})
    m.eval()
    return m


def test_values_equal_direct_evaluation_mlp():
    model, loss_fn, data = mlp_case(0)
    a, _, _ = mlp_case(1)
    b, _, _ = mlp_case(2)
    snaps = [snapshot(m) for m in (model, a, b)]
    obj = lv.Objective(model, loss_fn, data)
    r = connect(obj, a, b, steps=30, lr=0.05, n=7, progress=False)
    for m, s in zip((model, a, b), snaps):
        assert_unchanged(m, s)
    assert list(r.values) == ["loss", "accuracy"] and r.bn == "eval"
    x, y = data
    for i, t in enumerate(r.ts):
        m = fresh_at(model, r.point(t))
        with torch.no_grad():
            ref = float(reference_loss(m, loss_fn, data))
            acc = float((m(x).argmax(1) == y).double().mean())
        assert r["loss"][i] == pytest.approx(ref, rel=1e-12)
        assert r["accuracy"][i] == pytest.approx(acc, abs=1e-12)
        line = {k: torch.lerp(r.a[k], r.b[k], float(t)) for k in r.a}
        with torch.no_grad():
            ref_line = float(reference_loss(fresh_at(model, line), loss_fn, data))
        assert r.line_values["loss"][i] == pytest.approx(ref_line, rel=1e-12)
    # the straight line's numbers are interpolate's
    p = lv.interpolate(obj, a, b, n=7, progress=False)
    np.testing.assert_allclose(r.line_values["loss"], p["loss"], rtol=1e-12)
    assert r.barrier("loss", path="line") == pytest.approx(p.barrier("loss"), rel=1e-9)


def test_batchnorm_statistics_recomputed_at_every_point():
    model, loss_fn, data = cnn_case(0)
    a, _, _ = cnn_case(1)
    b, _, _ = cnn_case(2)  # other running statistics than a
    snaps = [snapshot(m) for m in (model, a, b)]
    obj = lv.Objective(model, loss_fn, data)
    r = connect(obj, a, b, steps=20, lr=0.02, n=5, metrics="loss", progress=False)
    for m, s in zip((model, a, b), snaps):
        assert_unchanged(m, s)
    assert r.bn == "recompute"
    x, _ = data
    for i, t in enumerate(r.ts):
        m = fresh_at(model, r.point(t))
        torch.optim.swa_utils.update_bn([x], m)  # the reference re-estimation
        m.eval()
        with torch.no_grad():
            ref = float(reference_loss(m, loss_fn, data))
        assert r["loss"][i] == pytest.approx(ref, rel=1e-10)
    # training: the BatchNorm layers on batch statistics (training mode); step 0 is at
    # φ(t_0) with the bend where it starts, the middle of the straight line
    t0 = float(torch.rand(20, generator=torch.Generator().manual_seed(0), dtype=D)[0])
    c = curve_coefficients("bezier", t0, 1)
    mid = {k: 0.5 * (r.a[k] + r.b[k]) for k in r.a}
    m = fresh_at(model, {k: c[0] * r.a[k] + c[1] * mid[k] + c[2] * r.b[k] for k in r.a})
    m.train()
    with torch.no_grad():
        ref0 = float(reference_loss(m, loss_fn, data))
    assert r.train_loss[0] == pytest.approx(ref0, rel=1e-12)
    # with the endpoints' own statistics the values at t = 0 would differ
    with torch.no_grad():
        own = float(reference_loss(fresh_at(model, a.state_dict()), loss_fn, data))
    assert abs(own - r["loss"][0]) > 1e-3
    # bn="eval" cannot serve endpoints whose statistics differ
    with pytest.raises(LossvizError, match="BatchNorm statistics: use bn='recompute'"):
        connect(obj, a, b, steps=2, bn="eval", progress=False)


# --- bad input -----------------------------------------------------------------------------
def bad_calls():
    obj = ring_obj()
    a, b = Ring(A_RING), Ring(B_RING)
    other = nn.Linear(2, 1).double()
    return obj, a, b, other


@pytest.mark.parametrize(
    "kw,exc,text",
    [
        ({"bends": 0}, LossvizError, "bends must be an integer >= 1"),
        ({"bends": 1.5}, ArgumentTypeError, "bends"),
        ({"curve": "spline"}, LossvizError, "curve must be one of 'bezier', 'polychain'"),
        ({"steps": 0}, LossvizError, "steps"),
        ({"lr": 0.0}, LossvizError, "lr"),
        ({"lr": float("nan")}, LossvizError, "lr"),
        ({"optimizer": "lbfgs"}, LossvizError, "optimizer"),
        ({"momentum": 1.0}, LossvizError, "momentum"),
        ({"weight_decay": -1.0}, LossvizError, "weight_decay"),
        ({"schedule": "cosine"}, LossvizError, "schedule"),
        ({"n": 1}, LossvizError, "n must be"),
        ({"bn": "train"}, LossvizError, "bn"),
        ({"bn": "recompute"}, LossvizError, "no BatchNorm"),
        ({"data": []}, lv.DataError, "data is empty"),
        ({"metrics": "bogus"}, LossvizError, "bogus"),
        ({"seed": -1}, LossvizError, "seed"),
        ({"nope": 1}, ArgumentTypeError, "nope"),
    ],
)
def test_bad_arguments(kw, exc, text):
    obj, a, b, _ = bad_calls()
    snaps = [snapshot(m) for m in (obj.model, a, b)]
    with pytest.raises(exc, match=text):
        connect(obj, a, b, progress=False, **kw)
    for m, s in zip((obj.model, a, b), snaps):
        assert_unchanged(m, s)


def test_endpoints_of_another_architecture():
    obj, a, b, other = bad_calls()
    with pytest.raises(CheckpointError, match="^a"):
        connect(obj, other, b, progress=False)
    with pytest.raises(CheckpointError, match="^b"):
        connect(obj, a, nn.Sequential(nn.Linear(2, 2)).double(), progress=False)
    with pytest.raises(ArgumentTypeError, match="obj must be a lossviz.Objective"):
        connect(a, a, b)


def test_differing_frozen_tensors_refused():
    model = nn.Sequential(nn.Linear(2, 3), nn.Tanh(), nn.Linear(3, 1)).double()
    x = torch.randn(8, 2, dtype=D)
    obj = lv.Objective(model, F.mse_loss, (x, x[:, :1]), params=lambda n: n != "2.bias")
    a = {k: v + 0.1 for k, v in model.state_dict().items()}
    b = {k: v - 0.1 for k, v in model.state_dict().items()}
    with pytest.raises(LossvizError, match=r"differ in tensors that do not vary: \['2.bias'\]"):
        connect(obj, a, b, progress=False)


def test_divergence_stops_and_keeps_the_last_finite_bends():
    obj = ring_obj()
    a, b = {"w": torch.tensor(A_RING, dtype=D)}, {"w": torch.tensor(B_RING, dtype=D)}
    kw = dict(lr=1e4, optimizer="sgd", momentum=0.0, schedule="constant", n=9, metrics="loss")
    with pytest.warns(UserWarning, match="non-finite at training step"):
        r = connect(obj, a, b, steps=200, progress=False, **kw)
    assert r.stopped == "diverged" and not r.complete
    assert 0 < r.trained_steps < 200 and "DIVERGED" in repr(r)
    assert all(torch.isfinite(w["w"]).all() for w in r.bends)
    assert not np.isfinite(r.train_loss[-1]) and np.isfinite(r.train_loss[:-1]).all()
    # the kept bends are those of the last step with a finite loss: training for just
    # that many steps gives the same bends, bit for bit, and a finite loss all along
    with warnings.catch_warnings():
        # (huge bends: the loss elsewhere on the curve may overflow, with a warning)
        warnings.simplefilter("ignore")
        r2 = connect(obj, a, b, steps=r.trained_steps, progress=False, **kw)
    assert r2.stopped is None and np.isfinite(r2.train_loss).all()
    assert torch.equal(r2.bends[0]["w"], r.bends[0]["w"])
    np.testing.assert_array_equal(r2["loss"], r["loss"])


class OnceAt:
    """Raises KeyboardInterrupt at its ``at``-th call only; shared by every copy."""

    def __init__(self):
        self.calls, self.at = 0, None

    def __deepcopy__(self, memo):
        return self

    def __call__(self):
        self.calls += 1
        if self.calls == self.at:
            raise KeyboardInterrupt


@pytest.mark.filterwarnings("ignore:interrupted. 0 of:UserWarning")
@pytest.mark.parametrize("once", [True, False])
def test_ctrl_c_keeps_the_bends_trained_so_far(once):
    ticker = OnceAt() if once else Ticker()
    model = nn.Sequential(Tick(ticker), Ring())
    obj = lv.Objective(model, F.mse_loss, (ONE, ONE))
    s = snapshot(model)
    a = {"1.w": torch.tensor(A_RING, dtype=D)}
    b = {"1.w": torch.tensor(B_RING, dtype=D)}
    if once:
        ticker.calls, ticker.at = 0, 26  # Ctrl-C in the 26th step (25 done), once
    else:
        ticker.left = 25  # Ctrl-C in the 26th step (25 done), and at every forward after
    with pytest.warns(UserWarning, match="interrupted after 25 of 300"):
        r = connect(obj, a, b, steps=300, lr=0.1, n=5, metrics="loss", progress=False)
    assert_unchanged(model, s)
    assert r.stopped == "interrupted" and r.trained_steps == 25 and not r.complete
    assert len(r.train_loss) == 25 and "INTERRUPTED" in repr(r)
    # the bends are those of 25 steps (the schedule's factor is 1 for the first half)
    if once:
        ticker.at = None
    else:
        ticker.left = None
    r25 = connect(
        obj, a, b, steps=25, lr=0.1, n=5, metrics="loss", schedule="constant", progress=False
    )
    assert r25.complete
    assert torch.equal(r25.bends[0]["1.w"], r.bends[0]["1.w"])
    np.testing.assert_array_equal(r25.train_loss, r.train_loss)
    if once:  # the bends trained so far, evaluated
        np.testing.assert_array_equal(r["loss"], r25["loss"])
        assert r.evaluated.all() and np.isfinite(r.barrier("loss"))
    else:  # the interrupt also cut the evaluation short: NaN, marked incomplete
        assert np.isnan(r["loss"]).all() and np.isnan(r.barrier("loss"))
        assert not r.evaluated.any() and "INCOMPLETE evaluation" in repr(r)


# --- the result: save / load, the plane, plots ----------------------------------------------
@pytest.fixture(scope="module")
def ring_result():
    obj = ring_obj()
    return obj, connect(
        obj, Ring(A_RING), Ring(B_RING), steps=200, lr=0.1, n=21, metrics="loss", progress=False
    )


def test_save_and_load(ring_result, tmp_path):
    _, r = ring_result
    r.save(tmp_path / "c.npz")
    r2 = lv.load(tmp_path / "c.npz")
    assert isinstance(r2, CurveResult) and r2.objective is None
    np.testing.assert_array_equal(r2["loss"], r["loss"])
    np.testing.assert_array_equal(r2.line_values["loss"], r.line_values["loss"])
    assert torch.equal(r2.point(0.3)["w"], r.point(0.3)["w"])
    assert r2.barrier("loss") == r.barrier("loss") and repr(r2) == repr(r)
    assert r2.provenance.kernel == "connect"


def test_plane_holds_the_curve(ring_result):
    obj, r = ring_result
    plane = r.plane()
    assert set(plane.points) == {"A", "B", "bend"}
    xy = r.coords(plane, n=11)
    o = plane.origin["w"]
    e1, e2 = (d["w"] for d in plane.directions)
    for (u, v), t in zip(xy, np.linspace(0, 1, 11)):
        # one bend: the curve lies in the plane exactly
        torch.testing.assert_close(o + u * e1 + v * e2, r.point(t)["w"], rtol=0, atol=1e-12)
    s = r.surface(n=(7, 6), metrics="loss", progress=False)
    assert isinstance(s, lv.Surface)
    np.testing.assert_allclose(s.paths["curve"], r.coords(plane))
    assert s.points["bend"] == plane.points["bend"]
    # a grid value is the loss there
    i, j = 2, 3
    w = o + s.x[j] * e1 + s.y[i] * e2
    assert s["loss"][i, j] == pytest.approx(ring_loss(w), rel=1e-12)


def test_repr_and_plots(ring_result):
    _, r = ring_result
    text = repr(r)
    assert text.startswith("CurveResult(bezier, 1 bend, 200 steps") and "vs line" in text
    assert "<table>" in r._repr_html_()
    fig = r.plot()
    assert list(fig.data[0].y) == list(r["loss"]) and list(fig.data[1].y) == list(
        r.line_values["loss"]
    )
    assert len(r.plot_training().data) == 2
    with pytest.raises(LossvizError, match="no metric"):
        r.plot("accuracy")
    with pytest.raises(LossvizError, match="path"):
        r.barrier("loss", path="both")
    with pytest.raises(LossvizError, match="t must be"):
        r.point(1.5)


def test_every_point_type(tmp_path):
    model, loss_fn, data = mlp_case(0)
    a, _, _ = mlp_case(1)
    b, _, _ = mlp_case(2)
    obj = lv.Objective(model, loss_fn, data)
    torch.save(b.state_dict(), tmp_path / "b.pt")
    kw = dict(steps=10, n=3, metrics="loss", progress=False)
    ref = connect(obj, a, b, **kw)
    for pa, pb in [
        (a.state_dict(), tmp_path / "b.pt"),
        (lv.Weights.from_module(a), str(tmp_path / "b.pt")),
    ]:
        r = connect(obj, pa, pb, **kw)
        assert all(torch.equal(r.bends[0][k], ref.bends[0][k]) for k in ref.a)
        np.testing.assert_array_equal(r["loss"], ref["loss"])


def test_training_data_is_used():
    model, loss_fn, (x, y) = mlp_case(0)
    a, _, _ = mlp_case(1)
    b, _, _ = mlp_case(2)
    obj = lv.Objective(model, loss_fn, (x, y))
    kw = dict(steps=3, n=3, metrics="loss", schedule="constant", progress=False)
    r = connect(obj, a, b, data=[(x[:10], y[:10]), (x[10:], y[10:])], **kw)
    # step 0 is at the first batch given: its loss is the loss there at φ(t_0)
    t0 = float(torch.rand(3, generator=torch.Generator().manual_seed(0), dtype=D)[0])
    c = curve_coefficients("bezier", t0, 1)
    mid = {k: 0.5 * (r.a[k] + r.b[k]) for k in r.a}  # the bend starts on the line
    w = {k: c[0] * r.a[k] + c[1] * mid[k] + c[2] * r.b[k] for k in r.a}
    with torch.no_grad():
        ref = float(reference_loss(fresh_at(model, w), loss_fn, (x[:10], y[:10])))
    assert r.train_loss[0] == pytest.approx(ref, rel=1e-12)


def test_dashboard_draws_the_curves_own_numbers():
    pytest.importorskip("ipywidgets")
    pytest.importorskip("anywidget")
    model, loss_fn, data = mlp_case(0)
    a, _, _ = mlp_case(1)
    b, _, _ = mlp_case(2)
    snaps = [snapshot(m) for m in (model, a, b)]
    obj = lv.Objective(model, loss_fn, data)
    r = connect(obj, a, b, steps=20, n=5, progress=False)
    d = r.dashboard(rest_ms=0)
    d.wait()
    assert d.errors == []
    for k in ("loss", "accuracy"):
        tr = d.fig.data[d._tr[(k, "mode curve")]]
        np.testing.assert_array_equal(tr.x, r.ts)
        np.testing.assert_array_equal(tr.y, r[k])
        # the dashboard's straight path is the curve result's straight line
        line = d.fig.data[d._tr[(k, "curve")]]
        np.testing.assert_allclose(line.y, r.line_values[k], rtol=1e-12)
    assert f"{lv.formatting.number(r.barrier('loss'), 4)}<" in d.readout.value.replace("</td>", "<")
    d.close()
    for m, s in zip((model, a, b), snaps):
        assert_unchanged(m, s)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_cuda_matches_cpu():
    model, loss_fn, (x, y) = cnn_case(0)  # with BatchNorm: recomputed statistics
    a, _, _ = cnn_case(1)
    b, _, _ = cnn_case(2)
    kw = dict(steps=10, lr=0.02, n=3, metrics="loss", progress=False)
    cpu = connect(lv.Objective(model, loss_fn, (x, y)), a, b, **kw)
    gpu_obj = lv.Objective(copy.deepcopy(model).cuda(), loss_fn, (x.cuda(), y.cuda()))
    gpu = connect(gpu_obj, a, b, **kw)
    assert gpu.bends[0]["0.weight"].is_cuda and gpu.bn == "recompute"
    for k in cpu.a:
        torch.testing.assert_close(gpu.bends[0][k].cpu(), cpu.bends[0][k], rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(gpu["loss"], cpu["loss"], rtol=1e-9)
    np.testing.assert_allclose(gpu.train_loss, cpu.train_loss, rtol=1e-9)
    xy = gpu.coords(n=5)
    np.testing.assert_allclose(xy, cpu.coords(n=5), rtol=1e-9, atol=1e-12)


def test_one_batched_evaluation_and_progress_bars(capsys):
    from unittest import mock

    from lossviz.engine import Engine

    obj = ring_obj()
    a, b = Ring(A_RING), Ring(B_RING)
    real = Engine.evaluate
    seen = []

    def spy(self, points, **kw):
        seen.append(tuple(points.shape))
        return real(self, points, **kw)

    with mock.patch.object(Engine, "evaluate", spy):
        r = connect(obj, a, b, steps=20, n=9, metrics="loss", progress=True)
    # the curve and the line at 9 t each: one call of the engine with all 18 points
    assert seen == [(18, 2)] and r.complete
    err = capsys.readouterr().err
    assert "curve: training" in err


def test_init_bends():
    obj = ring_obj()
    a, b = Ring(A_RING), Ring(B_RING)
    first = connect(obj, a, b, bends=2, steps=30, lr=0.05, n=5, metrics="loss", progress=False)
    # a learning rate too small to move them: the bends stay where they start
    kw = dict(bends=2, steps=1, lr=1e-300, n=5, metrics="loss", progress=False)
    for init in (first, first.bends, [first.bends[0], {"w": first.bends[1]["w"]}]):
        r = connect(obj, a, b, init=init, **kw)
        assert all(torch.equal(u["w"], v["w"]) for u, v in zip(r.bends, first.bends))
        np.testing.assert_array_equal(r["loss"], first["loss"])
    with pytest.raises(LossvizError, match="init holds 2 point"):
        connect(obj, a, b, init=first, bends=1, progress=False)
    with pytest.raises(ArgumentTypeError, match="init must be"):
        connect(obj, a, b, init=first.bends[0], progress=False)
    with pytest.raises(CheckpointError, match=r"^init\[0\]"):
        connect(obj, a, b, init=[{"v": torch.zeros(2, dtype=D)}], progress=False)
