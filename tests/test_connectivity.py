"""Interpolation, barriers and layer-wise barriers against direct evaluation."""

import sys
import types

import numpy as np
import pytest
import torch
from reference import assert_unchanged, snapshot
from torch import nn

from lossviz.alignment import reset_bn
from lossviz.connectivity import (
    PathResult,
    barrier,
    barrier_matrix,
    interpolate,
    layerwise_barriers,
    layerwise_barriers_over,
)
from lossviz.errors import CheckpointError, LossvizError
from lossviz.objective import Objective

F = nn.functional


def _mlp(seed, sizes=(6, 8, 7, 3)):
    torch.manual_seed(seed)
    layers = []
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
        layers.append(nn.Linear(a, b))
        if i < len(sizes) - 2:
            layers.append(nn.Tanh())
    return nn.Sequential(*layers).double()


def _data(n=40, d=6, c=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, d, generator=g, dtype=torch.float64), torch.randint(
        0, c, (n,), generator=g
    )


def _lerp_state(a, b, al):
    sa, sb = a.state_dict(), b.state_dict()
    return {k: (torch.lerp(v, sb[k], al) if v.is_floating_point() else v) for k, v in sa.items()}


@pytest.fixture
def mlp_setup():
    x, y = _data()
    obj = Objective(_mlp(0), F.cross_entropy, [(x[:25], y[:25]), (x[25:], y[25:])])
    return obj, _mlp(1), _mlp(2)


def test_barrier_kinds_from_known_curves():
    al = np.array([0, 0.25, 0.5, 0.75, 1.0])
    r = PathResult(
        alphas=al,
        values={"loss": np.array([1.0, 2.6, 2.5, 3.2, 3.0])},
        metric_kinds={"loss": "loss"},
    )
    # chord 1, 1.5, 2, 2.5, 3 -> gaps 0, 1.1, 0.5, 0.7, 0; mean 2 -> gaps .., 0.6, 0.5, 1.2, 1
    assert r.barrier("loss", "linear") == pytest.approx(1.1)
    assert r.barrier_alpha("loss", "linear") == 0.25
    assert r.barrier("loss", "mean") == pytest.approx(1.2)
    assert r.barrier_alpha("loss", "mean") == 0.75
    # accuracy: higher is better, the barrier is the largest drop
    acc = PathResult(
        alphas=np.array([0, 0.5, 1.0]),
        values={"accuracy": np.array([0.9, 0.5, 0.8])},
        metric_kinds={"accuracy": "accuracy"},
    )
    assert acc.barrier("accuracy", "linear") == pytest.approx(0.35)
    assert acc.barrier("accuracy", "mean") == pytest.approx(0.35)
    # equal endpoints: the two kinds agree
    eq = PathResult(alphas=np.linspace(0, 1, 5), values={"loss": np.array([1, 2, 4, 2, 1.0])})
    assert eq.barrier("loss", "linear") == eq.barrier("loss", "mean") == pytest.approx(3)
    with pytest.raises(LossvizError, match="kind"):
        r.barrier("loss", "max")
    with pytest.raises(LossvizError, match="no metric"):
        r.barrier("error")


def test_interpolate_matches_direct_evaluation(mlp_setup):
    obj, a, b = mlp_setup
    snap = snapshot(obj.model)
    r = interpolate(obj, a, b, n=6)
    assert r.alphas.tolist() == pytest.approx(np.linspace(0, 1, 6).tolist())
    for i, al in enumerate(r.alphas):
        assert r.loss[i] == pytest.approx(obj.loss(_lerp_state(a, b, al)), abs=1e-12)
    x = torch.cat([bt[0] for bt, _ in obj.batches()])
    y = torch.cat([bt[1] for bt, _ in obj.batches()])
    acc_b = float((b(x).argmax(1) == y).double().mean())
    assert r.accuracy[-1] == pytest.approx(acc_b)
    assert r.barrier() == pytest.approx(
        max(r.loss - ((1 - r.alphas) * r.loss[0] + r.alphas * r.loss[-1]))
    )
    assert barrier(obj, a, b, kind="mean", n=6) == pytest.approx(r.barrier("loss", "mean"))
    assert "barrier linear" in repr(r) and "<table>" in r._repr_html_()
    fig = r.plot()
    assert fig.layout.title.text == "linear interpolation (bn=eval)"
    assert [a.text.split(":")[0] for a in fig.layout.annotations] == list(r.values)
    per_panel = 4  # path, chord, endpoints, barrier
    assert len(fig.data) == per_panel * len(r.values)
    for p, k in enumerate(r.values):
        path, chord, ends, bar = fig.data[per_panel * p : per_panel * (p + 1)]
        assert (path.name, chord.name, ends.name, bar.name) == (
            "path",
            "chord",
            "endpoints",
            "barrier (linear)",
        )
        f = np.asarray(r.values[k])
        np.testing.assert_array_equal(path.x, r.alphas)
        np.testing.assert_array_equal(path.y, f)
        np.testing.assert_allclose(chord.y, (1 - r.alphas) * f[0] + r.alphas * f[-1])
        np.testing.assert_array_equal(ends.y, [f[0], f[-1]])
        # the marked segment: from the chord to the curve at the barrier's α (a drop for
        # accuracy, where higher is better)
        sign = -1 if k == "accuracy" else 1
        assert sign * (bar.y[1] - bar.y[0]) == pytest.approx(r.barrier(k), rel=1e-9, abs=1e-12)
        assert bar.x[0] == bar.x[1] == pytest.approx(r.barrier_alpha(k))
    assert_unchanged(obj.model, snap)


def test_interpolate_batchnorm_eval_and_recompute():
    torch.manual_seed(0)

    def cnn(seed):
        torch.manual_seed(seed)
        m = nn.Sequential(
            nn.Conv2d(1, 3, 3), nn.BatchNorm2d(3), nn.ReLU(), nn.Flatten(), nn.Linear(3 * 4 * 4, 3)
        ).double()
        m[1].running_mean.normal_()
        m[1].running_var.uniform_(0.5, 2)
        return m.eval()

    x = torch.randn(16, 1, 6, 6, dtype=torch.float64)
    y = torch.randint(0, 3, (16,))
    model = cnn(0).train()
    model[0].weight.grad = torch.ones_like(model[0].weight)
    model[4].bias.requires_grad_(False)
    snap = snapshot(model)
    obj = Objective(model, F.cross_entropy, (x, y), params=lambda n: n != "4.bias")
    a, b = cnn(1), cnn(2)
    # bn="eval": running statistics interpolated along with the weights
    r = interpolate(obj, a, b, n=3, metrics=("loss",))
    for i, al in enumerate(r.alphas):
        assert r.loss[i] == pytest.approx(obj.loss(_lerp_state(a, b, al)), abs=1e-10)
    # bn="recompute": statistics re-estimated at every α (one batch: the batch statistics)
    rr = interpolate(obj, a, b, n=3, metrics=("loss",), bn="recompute")
    for i, al in enumerate(rr.alphas):
        direct = obj.loss(reset_bn(model, _lerp_state(a, b, al), x))
        assert rr.loss[i] == pytest.approx(direct, abs=1e-8)
    assert_unchanged(model, snap)


def test_barrier_matrix(mlp_setup):
    obj, a, b = mlp_setup
    c = _mlp(3)
    M = barrier_matrix(obj, {"a": a, "b": b, "c": c}, n=5, kind="mean")
    assert M.names == ["a", "b", "c"]
    assert np.allclose(M.values, M.values.T) and np.all(np.diag(M.values) == 0)
    assert M.values[0, 2] == pytest.approx(barrier(obj, a, c, n=5, kind="mean"), abs=1e-12)
    assert M.values[1, 2] == pytest.approx(barrier(obj, b, c, n=5, kind="mean"), abs=1e-12)
    assert "BarrierMatrix" in repr(M)
    fig = M.plot()
    assert len(fig.data) == 1 and fig.data[0].type == "heatmap"
    assert fig.layout.title.text == "pairwise loss barriers (mean)"
    assert list(fig.data[0].x) == list(fig.data[0].y) == ["a", "b", "c"]
    np.testing.assert_array_equal(np.asarray(fig.data[0].z), M.values)
    with pytest.raises(LossvizError, match="at least 2"):
        barrier_matrix(obj, [a])


def _replace(base, a, b, names):
    sa, sb = a.state_dict(), b.state_dict()
    st = dict(base.state_dict())
    for n in names:
        st[n] = 0.5 * (sa[n] + sb[n])
    return st


def test_layerwise_barriers_equal_the_definition(mlp_setup):
    obj, a, b = mlp_setup
    snap = snapshot(obj.model)
    r = layerwise_barriers(obj, a, b, n=3)
    la, lb = obj.loss(a), obj.loss(b)
    ref = 0.5 * (la + lb)
    assert list(r.table) == ["0", "2", "4"]
    for mod in ("0", "2", "4"):
        names = [f"{mod}.weight", f"{mod}.bias"]
        for base_name, base in (("A", a), ("B", b)):
            direct = obj.loss(_replace(base, a, b, names)) - ref
            assert r.table[mod][base_name] == pytest.approx(direct, abs=1e-12)
            # the curve from the base (α = 0) to the block average (α = ½)
            assert r.curves[base_name][mod][0] == pytest.approx(obj.loss(base), abs=1e-12)
            assert r.curves[base_name][mod][-1] == pytest.approx(direct + ref, abs=1e-12)
    mid = {k: 0.5 * (v + b.state_dict()[k]) for k, v in a.state_dict().items()}
    assert r.full == pytest.approx(obj.loss(mid) - ref, abs=1e-12)
    assert r.alphas.tolist() == [0, 0.25, 0.5]
    # cumulative: the first k layers; all layers is the full-model barrier in either base
    c = layerwise_barriers(obj, a, b, groups="cumulative")
    assert c.groups["2"] == ["0.weight", "0.bias", "2.weight", "2.bias"]
    assert c.table["2"]["B"] == pytest.approx(
        obj.loss(_replace(b, a, b, c.groups["2"])) - ref, abs=1e-12
    )
    assert c.table["4"]["A"] == pytest.approx(r.full, abs=1e-12)
    assert c.table["4"]["B"] == pytest.approx(r.full, abs=1e-12)
    # custom groups by module or parameter names, one base
    g = layerwise_barriers(obj, a, b, groups={"hidden": ["0", "2.weight"]}, base="B")
    assert list(g.barriers) == ["B"]
    assert g.table["hidden"]["B"] == pytest.approx(
        obj.loss(_replace(b, a, b, ["0.weight", "0.bias", "2.weight"])) - ref, abs=1e-12
    )
    assert "base A" in repr(r) and "<table>" in r._repr_html_()
    fig = r.plot()  # heatmap of the barriers, with the curves below
    heat, *curves = fig.data
    assert fig.layout.title.text.startswith("layer-wise loss barriers (module); full model ")
    assert list(heat.x) == [*r.groups, "(all layers)"]
    assert list(heat.y) == ["base A", "base B"]
    np.testing.assert_allclose(
        np.asarray(heat.z, dtype=float),
        [[r.table[grp][base] for grp in r.groups] + [r.full] for base in ("A", "B")],
    )
    named = {c.name: c for c in curves}
    for base in ("A", "B"):
        for mod in r.groups:
            np.testing.assert_array_equal(named[f"{mod} (base {base})"].y, r.curves[base][mod])
    assert_unchanged(obj.model, snap)


def test_layerwise_barriers_over_a_run(mlp_setup):
    obj, a, b = mlp_setup
    c = _mlp(3)
    over = layerwise_barriers_over(obj, {"ep1": (a, b), "ep2": (a, c)})
    single = layerwise_barriers(obj, a, c)
    assert over.labels == ["ep1", "ep2"]
    assert over.matrix("B")[1] == pytest.approx(
        [single.table[g]["B"] for g in single.groups], abs=1e-12
    )
    assert over.full[1] == pytest.approx(single.full, abs=1e-12)
    fig = over.plot()
    assert fig.layout.title.text == "layer-wise loss barriers (base A)" and len(fig.data) == 1
    assert list(fig.data[0].y) == ["ep1", "ep2"]
    assert list(fig.data[0].x) == [*over.groups, "(all layers)"]
    np.testing.assert_array_equal(
        fig.data[0].z, np.concatenate([over.matrix("A"), over.full[:, None]], axis=1)
    )
    assert fig.data[0].z[1, -1] == pytest.approx(single.full, abs=1e-12)


def test_bad_input(mlp_setup):
    obj, a, b = mlp_setup
    wrong = _mlp(1, sizes=(6, 9, 7, 3))
    with pytest.raises(CheckpointError, match=r"0\.weight.*\(8, 6\).*\(9, 6\)"):
        interpolate(obj, a, wrong)
    missing = {k: v for k, v in b.state_dict().items() if k != "2.bias"}
    with pytest.raises(CheckpointError, match=r"2\.bias"):
        barrier(obj, a, missing)
    with pytest.raises(LossvizError, match="kind"):
        barrier(obj, a, b, kind="entezari")
    with pytest.raises(LossvizError, match="bn"):
        interpolate(obj, a, b, bn="train")
    with pytest.raises(LossvizError, match="n must be"):
        interpolate(obj, a, b, n=1)
    with pytest.raises(LossvizError, match="nope"):
        layerwise_barriers(obj, a, b, groups={"g": ["nope"]})
    with pytest.raises(LossvizError, match="base"):
        layerwise_barriers(obj, a, b, base="C")
    with pytest.raises(TypeError):
        interpolate(a, a, b)


def test_dashboard_is_delegated(mlp_setup, monkeypatch):
    obj, a, b = mlp_setup
    calls = []
    fake = types.ModuleType("lossviz.dash")
    fake.interpolation = lambda o, x, y, **kw: calls.append((o, x, y, kw)) or "view"
    import lossviz

    monkeypatch.setitem(sys.modules, "lossviz.dash", fake)
    monkeypatch.setattr(lossviz, "dash", fake, raising=False)
    r = interpolate(obj, a, b, n=3)
    assert r.dashboard(n=7) == "view"
    o, x, y, kw = calls[0]
    assert o is obj and x is a and y is b
    # a view of this path: its own curve, bn and metrics; keywords given win (n=7)
    assert kw == {
        "path": r,
        "n": 7,
        "bn": "eval",
        "metrics": {"loss": "loss", "accuracy": "accuracy"},
    }
