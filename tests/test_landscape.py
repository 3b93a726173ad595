import copy
import warnings

import numpy as np
import pytest
import torch
from reference import assert_unchanged, snapshot
from torch import nn

from lossviz.data import digits, mlp
from lossviz.directions import pca_directions, plane_through, random_directions
from lossviz.engine import Engine
from lossviz.errors import CheckpointError, LossvizError
from lossviz.landscape import coarse_to_fine, evaluate, line, surface
from lossviz.objective import Objective
from lossviz.roughness import roughness_index

F = nn.functional


@pytest.fixture(scope="module")
def digits_obj():
    x, y = digits(dtype=torch.float64)
    x, y = x[:300], y[:300]
    model = mlp((64, 16, 10), seed=0).double()
    # uneven batches: the means must be sample-weighted like Objective.loss
    data = [(x[:128], y[:128]), (x[128:256], y[128:256]), (x[256:], y[256:])]
    return Objective(model, F.cross_entropy, data), x, y


def direct_accuracy(model, w, x, y):
    m = copy.deepcopy(model)
    with torch.no_grad():
        for k, p in m.named_parameters():
            p.copy_(w[k])
        return float((m(x).argmax(1) == y).double().mean())


def test_line_equals_direct_loss(digits_obj):
    obj, _, _ = digits_obj
    d = random_directions(obj, 1, seed=3)[0]
    s = line(obj, None, d, span=(-0.5, 1.5), n=7, progress=False)
    assert s.t.tolist() == pytest.approx(np.linspace(-0.5, 1.5, 7).tolist())
    theta = obj.weights()
    ref = [obj.loss(theta + float(t) * d) for t in s.t]
    np.testing.assert_allclose(s.loss, ref, rtol=1e-12, atol=1e-13)
    assert s.complete and s.strategy in ("vmap", "loop")
    assert "Slice1D" in repr(s)
    fig = s.plot()
    assert fig.layout.title.text == "1-D slice L(θ + t·d)" and len(fig.data) == 1
    np.testing.assert_array_equal(fig.data[0].x, s.t)
    np.testing.assert_array_equal(fig.data[0].y, s.loss)


def test_surface_equals_direct_loss_and_accuracy(digits_obj):
    obj, x, y = digits_obj
    d1, d2 = random_directions(obj, 2, seed=0)
    s = surface(
        obj,
        None,
        [d1, d2],
        span=((-1, 1), (-0.5, 0.5)),
        n=(5, 4),
        metrics=("loss", "accuracy", "error"),
        progress=False,
    )
    assert s["loss"].shape == (4, 5) and s.x.shape == (5,) and s.y.shape == (4,)
    theta = obj.weights()
    for i in range(4):
        for j in range(5):
            w = theta + float(s.x[j]) * d1 + float(s.y[i]) * d2
            assert s.loss[i, j] == pytest.approx(obj.loss(w), rel=1e-12, abs=1e-13)
            assert s["accuracy"][i, j] == pytest.approx(
                direct_accuracy(obj.model, w, x, y), abs=1e-12
            )
    np.testing.assert_allclose(s["error"], 1 - s["accuracy"], atol=1e-12)
    assert s.complete and s.n_evaluated == 20


def test_batched_equals_per_point(digits_obj):
    obj, _, _ = digits_obj
    d = random_directions(obj, 2, seed=5)
    kw = {"n": (6, 5), "metrics": ("loss", "accuracy"), "progress": False}
    a = surface(obj, None, d, batched=True, chunk_size=7, **kw)
    b = surface(obj, None, d, batched=False, **kw)
    assert a.strategy == "vmap" and b.strategy == "loop"
    np.testing.assert_allclose(a.loss, b.loss, rtol=1e-12)
    np.testing.assert_array_equal(a["accuracy"], b["accuracy"])
    c = surface(obj, None, d, refine=True, chunk_size=4, **kw)
    np.testing.assert_allclose(c.loss, a.loss, rtol=1e-12)


def test_evaluate_points_and_callable_metric(digits_obj):
    obj, _, _ = digits_obj
    theta, _ = obj.resolve()
    pts = torch.stack([theta, 0.5 * theta, theta + 0.01])

    def sq_logits(out, y):
        return out.pow(2).mean()

    r = evaluate(obj, pts, metrics=("loss", sq_logits, lambda o, t: o.mean()), progress=False)
    assert list(r) == ["loss", "sq_logits", "metric2"]
    for k in range(3):
        assert r["loss"][k] == pytest.approx(obj.loss(obj.layout.to_weights(pts[k])), rel=1e-12)
    direct = (
        sum(
            float(obj.batch_outputs(pts[1], obj.resolve()[1], b).pow(2).mean()) * nb
            for b, nb in obj.batches()
        )
        / 300
    )
    assert r["sq_logits"][1] == pytest.approx(direct, rel=1e-12)
    r2 = evaluate(obj, [obj.model, obj.layout.to_weights(pts[1])], progress=False)
    np.testing.assert_allclose(r2["loss"], r["loss"][:2], rtol=1e-12)
    with pytest.raises(LossvizError, match="points must be"):
        evaluate(obj, theta[None, :5])
    with pytest.raises(LossvizError, match="unknown metric"):
        evaluate(obj, pts, metrics="auc")
    with pytest.raises(LossvizError, match="scalar"):
        evaluate(obj, pts, metrics=lambda o, t: o, progress=False)


def test_bad_arguments(digits_obj):
    obj, _, _ = digits_obj
    d = random_directions(obj, 2)
    with pytest.raises(LossvizError, match="2 directions"):
        surface(obj, None, d[:1])
    with pytest.raises(LossvizError, match="span"):
        surface(obj, None, d, span=((1, -1), (0, 1)))
    with pytest.raises(LossvizError, match="n"):
        line(obj, None, d[0], n=1)
    with pytest.raises(LossvizError, match="precision"):
        line(obj, None, d[0], precision="int8")
    with pytest.raises(TypeError, match="unexpected"):
        line(obj, None, d[0], chunksize=3)
    with pytest.raises(LossvizError, match="bn"):
        line(obj, None, d[0], bn="recompute")  # no BatchNorm layer
    frozen = Objective(
        obj.model, F.cross_entropy, obj._batches, params=lambda n: n.startswith("2.")
    )
    with pytest.raises(CheckpointError, match="do not vary"):
        line(frozen, None, d[0])
    dd = {k: v for k, v in d[0].items() if k.startswith("2.")}
    assert line(frozen, None, dd, n=3, progress=False).complete


class Branchy(nn.Module):
    """Data-dependent control flow: vmap cannot run it."""

    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(64, 10)

    def forward(self, x):
        out = self.lin(x)
        if out.sum() > 0:
            return out
        return -out


def test_per_point_fallback_gives_the_same_numbers():
    x, y = digits(dtype=torch.float64)
    model = Branchy().double()
    obj = Objective(model, F.cross_entropy, (x[:100], y[:100]))
    d = random_directions(obj, 2)
    with pytest.warns(UserWarning, match="one point at a time"):
        s = surface(obj, None, d, n=(3, 3), progress=False)
    assert s.strategy == "loop"
    theta = obj.weights()
    for i in range(3):
        for j in range(3):
            w = theta + float(s.x[j]) * d[0] + float(s.y[i]) * d[1]
            assert s.loss[i, j] == pytest.approx(obj.loss(w), rel=1e-12)


def bn_setup():
    torch.manual_seed(0)
    m = nn.Sequential(
        nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 3)
    ).double()
    x = torch.randn(40, 3, 8, 8, dtype=torch.float64)
    y = torch.randint(0, 3, (40,))
    m.train()
    with torch.no_grad():
        m(x)
    m.eval()
    data = [(x[:16], y[:16]), (x[16:32], y[16:32]), (x[32:], y[32:])]
    return m, data


def test_bn_recompute_matches_reference_and_never_writes_the_model():
    m, data = bn_setup()
    before = snapshot(m)
    obj = Objective(m, F.cross_entropy, data)
    d = random_directions(obj, 2, seed=1)
    s = surface(obj, None, d, n=(3, 2), bn="recompute", progress=False)
    s_loop = surface(obj, None, d, n=(3, 2), bn="recompute", batched=False, progress=False)
    np.testing.assert_allclose(s.loss, s_loop.loss, rtol=1e-12)
    theta = obj.weights()

    def recomputed(w, stat_inputs):
        """The loss at w after re-estimating BN statistics on ``stat_inputs`` (a list of
        input batches) with a plain copy of the model."""
        ref = copy.deepcopy(m)
        with torch.no_grad():
            for k, p in ref.named_parameters():
                p.copy_(w[k])
            ref[1].reset_running_stats()
            ref.train()
            seen = 0
            for xb in stat_inputs:  # sample-weighted cumulative average of batch statistics
                ref[1].momentum = len(xb) / (seen + len(xb))
                seen += len(xb)
                ref(xb)
            ref.eval()
            return sum(float(F.cross_entropy(ref(xb), yb)) * len(xb) for xb, yb in data) / 40

    for i in range(2):
        for j in range(3):
            w = theta + float(s.x[j]) * d[0] + float(s.y[i]) * d[1]
            want = recomputed(w, [xb for xb, _ in data])
            assert s.loss[i, j] == pytest.approx(want, rel=1e-12)
    plain = surface(obj, None, d, n=(3, 2), progress=False)
    assert not np.allclose(plain.loss, s.loss)  # the statistics did change
    # bn_data: a bare input tensor is enough (one batch of all 40 inputs)
    x_all = torch.cat([b[0] for b in data])
    s2 = surface(obj, None, d, n=(3, 2), bn="recompute", bn_data=x_all, progress=False)
    for i in range(2):
        for j in range(3):
            w = theta + float(s.x[j]) * d[0] + float(s.y[i]) * d[1]
            assert s2.loss[i, j] == pytest.approx(recomputed(w, [x_all]), rel=1e-12)
    assert_unchanged(m, before)
    assert not m.training


def test_interrupted_surface_keeps_partial_results(digits_obj):
    obj, _, _ = digits_obj
    d = random_directions(obj, 2, seed=0)
    full = surface(obj, None, d, n=(4, 4), progress=False)
    calls = {"n": 0}

    def stop_after(out, y):
        calls["n"] += 1
        if calls["n"] > 7:  # 1 check of the metric, 3 batches per chunk: 2 chunks, Ctrl-C
            raise KeyboardInterrupt
        return out.mean()

    with pytest.warns(UserWarning, match="interrupted"):
        s = surface(
            obj, None, d, n=(4, 4), metrics=("loss", stop_after), chunk_size=3, progress=False
        )
    assert not s.complete and s.n_evaluated == 6
    flat = s.loss.reshape(-1)
    np.testing.assert_allclose(flat[:6], full.loss.reshape(-1)[:6], rtol=1e-12)
    assert np.isnan(flat[6:]).all()
    assert "INCOMPLETE" in repr(s)


def test_non_finite_losses_become_nan_with_a_warning():
    class P(nn.Module):
        def __init__(self):
            super().__init__()
            self.W = nn.Parameter(torch.ones(2, 2, dtype=torch.float64))

    obj = Objective(P(), forward=lambda m, b: torch.log(m.W.sum() - 3.0), data=(torch.zeros(1),))
    d = {"W": torch.ones(2, 2, dtype=torch.float64)}
    with pytest.warns(UserWarning, match="not finite"):
        s = line(obj, None, d, span=(-1, 1), n=5, progress=False)
    # W.sum() - 3 = 1 + 4t: log of a negative number at t = -1, -0.5, log(0) at t = -0.25
    assert np.isnan(s.loss[:2]).all() and np.isfinite(s.loss[2:]).all()
    np.testing.assert_allclose(s.loss[2:], np.log(1 + 4 * np.array([0, 0.5, 1.0])))


def test_bf16_autocast_is_close(digits_obj):
    x, y = digits()
    obj = Objective(mlp((64, 32, 10)), F.cross_entropy, (x[:256], y[:256]))
    d = random_directions(obj, 2)
    a = surface(obj, None, d, n=(3, 3), progress=False)
    b = surface(obj, None, d, n=(3, 3), precision="bf16", progress=False)
    np.testing.assert_allclose(a.loss, b.loss, rtol=3e-2)
    assert not np.array_equal(a.loss, b.loss)


def test_chunk_halved_on_out_of_memory(digits_obj, monkeypatch):
    obj, _, _ = digits_obj
    seen = []
    real = Engine.values

    def fake(self, pts, *args):
        seen.append(pts.shape[0])
        if pts.shape[0] > 2:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory (simulated)")
        return real(self, pts, *args)

    monkeypatch.setattr(Engine, "values", fake)
    d = random_directions(obj, 1)[0]
    s = line(obj, None, d, n=5, chunk_size=8, progress=False)
    assert seen[:3] == [5, 2, 2] and s.complete and s.strategy == "vmap"


def test_coarse_to_fine_order_is_a_permutation():
    order = coarse_to_fine(51, 33)
    assert sorted(order.tolist()) == list(range(51 * 33))
    first = order[:20]
    assert all((k % 51) % 8 == 0 and (k // 51) % 8 == 0 for k in first)


def test_overlays_and_plots():
    g = torch.Generator().manual_seed(0)
    x, y = digits()
    model = mlp((64, 10), seed=1)
    obj = Objective(model, F.cross_entropy, (x[:200], y[:200]))
    base = obj.weights()
    traj = [base + (0.1 * t) * random_directions(obj, 1, seed=t)[0] for t in range(4)]
    pca = pca_directions(traj, 2)
    s = surface(obj, None, pca, n=(5, 5), progress=False)
    np.testing.assert_allclose(s.paths["trajectory"], pca.coords)
    np.testing.assert_allclose(s.project(traj[1]), pca.coords[1], atol=1e-5)
    assert s.x[0] < pca.coords[:, 0].min() and s.x[-1] > pca.coords[:, 0].max()
    s.add_point("init", traj[0])
    s.add_path("manual", np.array([[0.0, 0.0], [0.1, 0.2]]))
    for kind in ("contour", "heatmap", "surface"):
        fig = s.plot(kind, log=True)
        assert len(fig.data) == 4  # surface + 2 paths + points
        assert fig.layout.title.text == "log10 loss surface L(θ + a·d1 + b·d2)"
        assert fig.data[0].type == kind
        np.testing.assert_array_equal(fig.data[0].x, s.x)
        np.testing.assert_array_equal(fig.data[0].y, s.y)
        np.testing.assert_allclose(np.asarray(fig.data[0].z, dtype=float), np.log10(s.loss))
        traj_trace, manual, points = fig.data[1:]
        assert (traj_trace.name, manual.name, points.name) == ("trajectory", "manual", "points")
        np.testing.assert_allclose(traj_trace.x, pca.coords[:, 0])
        np.testing.assert_allclose(traj_trace.y, pca.coords[:, 1])
        np.testing.assert_allclose(manual.y, [0.0, 0.2])
        assert list(points.text) == ["init"]
        np.testing.assert_allclose([points.x[0], points.y[0]], s.points["init"])
        if kind == "surface":  # paths drawn on the surface: interpolated log10 loss
            np.testing.assert_allclose(
                traj_trace.z, s.interp(np.log10(s.loss), pca.coords), rtol=1e-12
            )
    lin = s.plot("heatmap")
    assert lin.layout.title.text == "loss surface L(θ + a·d1 + b·d2)"
    np.testing.assert_allclose(np.asarray(lin.data[0].z, dtype=float), s.loss)
    with pytest.raises(LossvizError, match="kind"):
        s.plot("bars")
    del g
    pl = plane_through(traj[0], traj[1], traj[2])
    sp = surface(obj, None, pl, n=(4, 4), progress=False)
    assert set(sp.points) == {"a", "b", "c"}
    assert sp.loss[0, 0] == pytest.approx(  # the grid corner, as a direct evaluation
        obj.loss(pl.origin + float(sp.x[0]) * pl.directions[0] + float(sp.y[0]) * pl.directions[1]),
        rel=1e-5,
    )
    assert "<table>" in s._repr_html_()


def test_progress_switch(monkeypatch, capfd, digits_obj):
    """``LOSSVIZ_PROGRESS=0`` silences the bar of a ``progress=None`` call, ``1`` shows it
    (on stderr, counting the points), and ``progress=True/False`` wins over it."""
    obj, _, _ = digits_obj
    d = random_directions(obj, 1, seed=0)[0]

    def shown(env, progress):
        monkeypatch.setenv("LOSSVIZ_PROGRESS", env)
        capfd.readouterr()
        s = line(obj, None, d, n=5, progress=progress)
        out = capfd.readouterr()
        assert out.out == "" and s.complete
        return out.err

    assert shown("0", None) == ""
    assert shown("1", False) == ""
    for env, progress in (("1", None), ("0", True)):
        err = shown(env, progress)
        assert "/5 [" in err and "pt" in err, err


def test_user_model_untouched_by_every_call():
    m, data = bn_setup()
    m.train()  # a model left in training mode must stay so
    m[4].bias.requires_grad_(False)
    m[0].weight.grad = torch.full_like(m[0].weight, 7.0)
    before = snapshot(m)
    obj = Objective(m, F.cross_entropy, data)
    d = random_directions(obj, 2)
    calls = [
        lambda: random_directions(m, 2),
        lambda: line(obj, None, d[0], n=3, progress=False),
        lambda: surface(obj, None, d, n=(2, 2), metrics=("loss", "accuracy"), progress=False),
        lambda: surface(obj, None, d, n=(2, 2), bn="recompute", progress=False),
        lambda: surface(obj, None, d, n=(2, 2), batched=False, bn="recompute", progress=False),
        lambda: evaluate(obj, [m, obj.weights()], progress=False),
        lambda: roughness_index(obj, n_directions=3, n_points=3, progress=False),
    ]
    for call in calls:
        call()
        assert_unchanged(m, before)

    calls_made = []

    def boom(model, batch):
        out = model(batch[0])
        calls_made.append(1)
        if len(calls_made) > 1:  # the check when the Objective is built passes
            raise RuntimeError("boom inside forward")
        return F.cross_entropy(out, batch[1])

    bad = Objective(m, forward=boom, data=data)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(RuntimeError, match="boom"):
            surface(bad, None, d, n=(2, 2), bn="recompute", progress=False)
        with pytest.raises(RuntimeError, match="boom"):
            line(bad, None, d[0], n=3, progress=False)
    assert_unchanged(m, before)
