"""Dashboards are views (issue 11 §1): every number a dashboard shows equals what the
public kernel returns for the same arguments, checked independently where it can be.

The model: a small CNN with BatchNorm, two copies trained briefly in train mode on
different data, so their running statistics differ (``bn="eval"`` then interpolates them
along a path, ``bn="recompute"`` re-estimates them)."""

from __future__ import annotations

import copy
import re

import numpy as np
import pytest
import torch
from torch import nn

pytest.importorskip("ipywidgets")
pytest.importorskip("anywidget")

from reference import assert_unchanged, snapshot  # noqa: E402
from widget_messages import frontend_update  # noqa: E402

import lossviz as lv  # noqa: E402
from lossviz import Objective, dash  # noqa: E402
from lossviz.connectivity import interpolate, layerwise_barriers, path_point  # noqa: E402
from lossviz.data import digits, train  # noqa: E402
from lossviz.formatting import number  # noqa: E402
from lossviz.landscape import line, surface  # noqa: E402

F = nn.functional
BN_MODES = ("eval", "recompute")


def cnn(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1),
        nn.BatchNorm2d(4),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(4 * 8 * 8, 10),
    )


@pytest.fixture(scope="module")
def pair():
    x, y = digits()
    x, y = x[:240].reshape(-1, 1, 8, 8), y[:240]
    a, b = cnn(0), cnn(1)
    train(a, (x[:120], y[:120]), steps=15, lr=0.05, seed=0)
    train(b, (1.5 * x[120:] + 0.3, y[120:]), steps=15, lr=0.05, seed=1)
    a.eval(), b.eval()
    # the two models' running statistics differ (what the views must get right)
    assert not torch.allclose(a[1].running_mean, b[1].running_mean, rtol=0.1)
    assert not torch.allclose(a[1].running_var, b[1].running_var, rtol=0.1)
    return a, b, (x, y)


# ---- the same numbers by hand: plain modules, no lossviz ----------------------------
def lerp_state(sa: dict, sb: dict, alpha: float) -> dict:
    """The point at α as connectivity.interpolate documents it: parameters and
    floating-point buffers ``(1-α)·A + α·B``, integer buffers from the nearest end."""
    return {
        k: torch.lerp(sa[k], sb[k], alpha)
        if sa[k].is_floating_point()
        else (sa[k] if alpha <= 0.5 else sb[k])
        for k in sa
    }


def by_hand(template: nn.Module, state: dict, data, bn: str = "eval", stats=None) -> dict:
    """Loss and accuracy of ``template``'s architecture at ``state`` with ``model(x)``; with
    ``bn="recompute"`` the running statistics re-estimated first on ``stats`` (default:
    the data), one batch."""
    x, y = data
    m = copy.deepcopy(template)
    m.load_state_dict(state)
    with torch.no_grad():
        if bn == "recompute":  # one batch: the running statistics are its statistics
            for mod in m.modules():
                if isinstance(mod, nn.BatchNorm2d):
                    mod.reset_running_stats()
                    mod.momentum = None
                    mod.train()
            m(x if stats is None else stats[0])
        m.eval()
        out = m(x)
    return {
        "loss": F.cross_entropy(out, y).item(),
        "accuracy": (out.argmax(-1) == y).double().mean().item(),
        "pred": out.argmax(-1),
    }


def ys(trace) -> np.ndarray:
    return np.array([np.nan if v is None else v for v in trace.y], dtype=float)


def cell(html: str, cls: str) -> str:
    return re.search(rf"class='{cls}'>([^<]*)<", html).group(1)


# ---- interpolation -------------------------------------------------------------------
@pytest.mark.parametrize("bn", BN_MODES)
def test_interpolation_shows_the_kernels_path(pair, bn):
    a, b, data = pair
    obj = Objective(a, F.cross_entropy, data)
    before, before_b = snapshot(a), snapshot(b)
    d = dash.interpolation(obj, a, b, n=5, bn=bn, rest_ms=0)
    d.wait()
    assert d.errors == [] and d.bn_box.value == (bn == "recompute")
    ref = interpolate(obj, a, b, n=5, bn=bn)
    sa, sb = a.state_dict(), b.state_dict()
    hand = [by_hand(a, lerp_state(sa, sb, float(al)), data, bn) for al in ref.alphas]
    for k in ("loss", "accuracy"):
        shown = ys(d.fig.data[d._tr[(k, "curve")]])
        np.testing.assert_allclose(shown, ref[k], rtol=1e-6)
        # independently: the interpolated model (parameters and buffers) run directly
        np.testing.assert_allclose(shown, [h[k] for h in hand], rtol=2e-5, atol=1e-7)
        np.testing.assert_allclose(d.fig.data[d._tr[(k, "curve")]].x, ref.alphas)
    np.testing.assert_allclose(d.scrubber.curve, ref["loss"], rtol=1e-6)
    # the barrier: marker, label, scrubber and readout are the PathResult's
    h, ha = ref.barrier("loss"), ref.barrier_alpha("loss")
    assert h > 0
    bt = d.fig.data[d._tr["barrier"]]
    assert bt.x == (ha,) and bt.y[0] == pytest.approx(ref["loss"][list(ref.alphas).index(ha)])
    assert bt.text == (f"barrier {number(h, 3)}",)
    assert d.scrubber.barrier == pytest.approx(h, rel=1e-6)
    assert d.scrubber.barrier_alpha == ha
    assert f"{number(h, 4)} at α={ha:.3g}" in d.readout.value
    # the mixer's bars: layer-wise barriers with base A (Adilova et al.)
    lw = layerwise_barriers(obj, a, b, groups=d.groups, base="A", bn=bn)
    np.testing.assert_allclose(d.mixer.barriers, [lw.barriers["A"][g] for g in d.groups], rtol=1e-6)
    assert d.layerwise.barriers == lw.barriers
    ends = 0.5 * (hand[0]["loss"] + hand[-1]["loss"])
    for g, params in d.groups.items():  # A with only that group averaged, A's buffers
        st = dict(sa)
        st.update({p: 0.5 * (sa[p] + sb[p]) for p in params})
        st_loss = by_hand(a, st, data, bn)["loss"]
        assert lw.barriers["A"][g] == pytest.approx(st_loss - ends, rel=1e-4, abs=1e-6)
    # a resting slider between grid points: the kernel's value at that α
    d.slider.value = 0.37
    d.wait()
    fine = interpolate(obj, a, b, n=101, bn=bn)  # α = 0.37 is its 38th point
    at = by_hand(a, lerp_state(sa, sb, 0.37), data, bn)
    for k in ("loss", "accuracy"):
        assert d.exact[k] == pytest.approx(fine[k][37], rel=1e-6)
        assert d.exact[k] == pytest.approx(at[k], rel=2e-5)
        m = d.fig.data[d._tr[(k, "marker")]]
        assert m.x == (0.37,) and m.y[0] == d.exact[k]
        assert cell(d.readout.value, f"lv-{k}") == number(d.exact[k])
    assert d.fig.layout.title.text == "α = 0.37 · exact" and "data-exact='1'" in d.readout.value
    # the predictions panel: the labels of the model at α on the sample inputs
    xs, ys_ = d._samples
    ok = int((at["pred"][: len(xs)] == ys_).sum())
    labels = d.pred_fig.data[1].text
    assert list(labels) == [str(int(v)) for v in at["pred"][: len(xs)]]
    assert d.pred_fig.layout.title.text == f"exact: {ok}/{len(xs)} correct"
    # while the slider moves: the kernel's value at the nearest grid α (no interpolation)
    d._rest.delay = 10.0
    frontend_update(d.slider, value=0.6)
    m = d.fig.data[d._tr[("loss", "marker")]]
    assert m.x == (0.5,) and m.y[0] == ref["loss"][2]
    assert cell(d.readout.value, "lv-loss") == number(ref["loss"][2])
    d._rest.cancel()
    d.close()
    assert_unchanged(a, before)
    assert_unchanged(b, before_b)


def test_bn_toggle_and_the_path_dashboard(pair):
    a, b, data = pair
    obj = Objective(a, F.cross_entropy, data)
    d = dash.interpolation(obj, a, b, n=5, rest_ms=0)
    d.wait()
    d.bn_box.value = True  # the toggle: the kernel's bn="recompute" path
    d.wait()
    assert d.path.bn == "recompute"
    np.testing.assert_allclose(
        ys(d.fig.data[0]), interpolate(obj, a, b, n=5, bn="recompute")["loss"], rtol=1e-6
    )
    d.close()
    # PathResult.dashboard(): the path itself, with its bn, n and metrics
    for bn in BN_MODES:
        ref = interpolate(obj, a, b, n=7, bn=bn, metrics=("loss",))
        p = ref.dashboard(rest_ms=0)
        p.wait()
        assert p.errors == [] and p.path is ref
        assert p.metrics == ["loss"] and len(p.fig.data[0].y) == 7
        assert p.bn_box.value == (bn == "recompute")
        np.testing.assert_array_equal(ys(p.fig.data[0]), ref["loss"])
        p.close()


def test_mixer_keeps_a_layer_and_its_buffers_at_a(pair):
    a, b, data = pair
    obj = Objective(a, F.cross_entropy, data)
    d = dash.interpolation(obj, a, b, n=5, rest_ms=0)
    d.wait()
    assert list(d.groups) == ["0", "1", "4"]
    frontend_update(d.mixer, mask=[True, False, True])  # the BatchNorm layer stays at A
    d.wait()
    sa, sb = a.state_dict(), b.state_dict()
    target = {k: (sa[k] if k.startswith("1.") else sb[k]) for k in sa}
    assert all(torch.equal(d.point(1.0)[k], target[k]) for k in target)
    ref = interpolate(obj, a, target, n=5)
    np.testing.assert_allclose(ys(d.fig.data[0]), ref["loss"], rtol=1e-6)
    hand = [by_hand(a, lerp_state(sa, target, float(al)), data)["loss"] for al in ref.alphas]
    np.testing.assert_allclose(ys(d.fig.data[0]), hand, rtol=2e-5)
    # the bars do not depend on the mask
    lw = layerwise_barriers(obj, a, b, groups=d.groups, base="A")
    np.testing.assert_allclose(d.mixer.barriers, [lw.barriers["A"][g] for g in d.groups], rtol=1e-6)
    d.close()


def test_path_point_is_what_interpolate_evaluates(pair):
    a, b, data = pair
    obj = Objective(a, F.cross_entropy, data)
    sa, sb = a.state_dict(), b.state_dict()
    ref = interpolate(obj, a, b, n=5, metrics=("loss",))
    for al, v in zip(ref.alphas, ref["loss"]):
        p = path_point(obj, a, b, float(al))
        for k, t in lerp_state(sa, sb, float(al)).items():
            torch.testing.assert_close(p[k], t)
        assert obj.loss(at=p) == pytest.approx(v, rel=1e-6)
    with pytest.raises(lv.LossvizError, match="alpha"):
        path_point(obj, a, b, 1.5)


def test_layers_is_a_deprecated_alias_of_groups(pair):
    a, b, data = pair
    obj = Objective(a, F.cross_entropy, data)
    with pytest.warns(DeprecationWarning, match="layers= is deprecated, use groups="):
        d = dash.interpolation(obj, a, b, n=3, layers="param", start=False)
    assert list(d.groups) == list(obj.layout.names)
    d.close()
    with pytest.raises(TypeError, match="groups= only"):
        dash.interpolation(obj, a, b, layers="param", groups="module")
    with pytest.raises(lv.LossvizError, match="disjoint"):
        dash.interpolation(obj, a, b, groups="cumulative")
    with pytest.warns(DeprecationWarning, match="recompute_data= is deprecated, use bn_data="):
        d = dash.interpolation(obj, a, b, n=3, recompute_data=data, start=False)
    assert d._kw == {"bn_data": data}
    d.close()


# ---- landscape -----------------------------------------------------------------------
def test_landscape_shows_the_kernels_surface(pair):
    a, _, data = pair
    obj = Objective(a, F.cross_entropy, data)
    before = snapshot(a)
    d = dash.landscape(obj, n=(7, 5), seed=2, metrics=("loss", "accuracy"))
    d.wait()
    assert d.errors == []
    dirs = lv.random_directions(obj, 2, seed=2)
    ref = surface(obj, None, dirs, n=(7, 5), metrics=("loss", "accuracy"), progress=False)
    shown = np.array([[np.nan if v is None else v for v in r] for r in d.fig.data[0].z])
    np.testing.assert_allclose(shown, ref["loss"], rtol=1e-6)
    np.testing.assert_allclose(d.fig.data[0].x, ref.x)
    np.testing.assert_allclose(d.fig.data[0].y, ref.y)
    d.metric.value = "accuracy"
    shown = np.array([[np.nan if v is None else v for v in r] for r in d.fig.data[0].z])
    np.testing.assert_allclose(shown, ref["accuracy"], rtol=1e-6)
    d.metric.value = "loss"
    # a clicked point: its metrics, slices and λ_max are the kernels'
    x0, y0 = float(ref.x[5]), float(ref.y[1])
    d.inspect(x0, y0)
    d.wait()
    r = d.inspection
    at = d.point(x0, y0)
    assert r["values"]["loss"] == pytest.approx(ref["loss"][1, 5], rel=1e-5)
    assert r["values"]["loss"] == pytest.approx(obj.loss(at=at), rel=1e-6)
    assert r["lambda_max"] == lv.hessian_eigs(obj, k=1, at=at, progress=False).values[0]
    (xl, xh), _ = d.span
    s1 = line(
        obj,
        at,
        dirs[0],
        span=(xl - x0, xh - x0),
        n=len(r["slices"][0].t),
        metrics=("loss", "accuracy"),
        progress=False,
    )
    np.testing.assert_allclose(r["slices"][0].loss, s1.loss, rtol=1e-6)
    np.testing.assert_allclose(ys(d.slice_fig.data[0]), s1.loss, rtol=1e-6)
    d.close()
    assert_unchanged(a, before)


# ---- spectrum ------------------------------------------------------------------------
def test_spectrum_shows_the_kernels_numbers(pair):
    a, b, data = pair
    obj = Objective(a, F.cross_entropy, data)
    before = snapshot(a)
    kw = {"n_probes": 3, "steps": 20, "k": 2, "seed": 1}
    d = dash.spectrum(obj, {0: a.state_dict(), 10: b.state_dict()}, **kw)
    d.wait()
    assert d.errors == []
    lmax = []
    for i, at in enumerate((a.state_dict(), b.state_dict())):
        d.ckpt.value = i
        common = {"at": at, "seed": 1, "progress": False}
        dens = lv.hessian_density(obj, n_probes=3, steps=20, **common)
        eigs = lv.hessian_eigs(obj, 2, **common)
        blocks = lv.hessian_blocks(obj, "module", k=1, **common)
        # what is drawn is exactly the kernel results the dashboard holds ...
        shown = d.point
        x, y = np.asarray(d.fig.data[0].x), np.asarray(d.fig.data[0].y)
        np.testing.assert_array_equal(y, shown.density.smooth(x, d.sigma)[1])
        np.testing.assert_array_equal(d.fig.data[2].x, shown.eigs.values)
        np.testing.assert_array_equal(d.fig.data[3].x, shown.density.outliers())
        for row in shown.blocks.table:
            assert f"{row['λ1']:.6g}" in d.table.value and f"{row['trace']:.6g}" in d.table.value
        lmax.append(shown.eigs.values[0])
        # ... and those equal an independent call of the kernel with the same arguments (to
        # float32 rounding: the first call of an Objective may pick another HVP method)
        scale = float(np.abs(dens.nodes).max())
        np.testing.assert_allclose(shown.density.nodes, dens.nodes, atol=1e-4 * scale)
        np.testing.assert_allclose(shown.eigs.values, eigs.values, rtol=1e-4)
        for r0, r1 in zip(shown.blocks.table, blocks.table):
            assert r0["λ1"] == pytest.approx(r1["λ1"], rel=1e-4)
            assert r0["trace"] == pytest.approx(r1["trace"], rel=1e-4)
    np.testing.assert_array_equal(d.lmax_fig.data[0].y, lmax)
    d.close()
    assert_unchanged(a, before)


# ---- subspace ------------------------------------------------------------------------
def test_subspace_shows_the_trackers_numbers(pair):
    from lossviz.dash._subspace import FRAC, LAM, LOSS, TWO

    a, _, data = pair
    model = copy.deepcopy(a)
    model.train()
    x, y = data
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    tr = lv.SubspaceTracker(
        model,
        F.cross_entropy,
        k=2,
        every=4,
        optimizer=opt,
        track=("gradient_fraction", "lambda_max"),
    )
    d = dash.subspace(tr, every_s=0, smooth=3)
    for i in range(9):
        idx = slice(24 * i, 24 * i + 24)
        opt.zero_grad()
        loss = F.cross_entropy(model(x[idx]), y[idx])
        loss.backward()
        opt.step()
        tr.step((x[idx], y[idx]), loss=loss)
    d.wait()
    d.update()
    assert d.errors == [] and tr.listener_errors == []
    f, hist = d.fig.data, tr.history
    np.testing.assert_array_equal(ys(f[FRAC]), [r["gradient_fraction"] for r in hist])
    np.testing.assert_array_equal(ys(f[LOSS]), [r["train_loss"] for r in hist])
    assert list(f[LAM].y) == [r["lambda_max"] for r in hist if r["refreshed"]]
    assert list(f[TWO].y) == [r["two_over_lr"] for r in hist]
    d.close()


# ---- teach ---------------------------------------------------------------------------
def test_playground_shows_teach_run():
    from lossviz import teach

    p = teach.playground()
    p.wait()
    fn = teach.FUNCTIONS[p.function.value]
    kw = {"lr": p.lr.value, "steps": p.steps.value, "momentum": p.momentum.value}
    kw.update(rho=p.rho.value, kappa=p.kappa.value, start=fn.start)
    assert set(p.results) == set(p.optimizers.value)
    for i, name in enumerate(teach.OPTIMIZERS):
        if name not in p.results:
            continue
        traj, loss = teach.run(fn, name, **kw)
        np.testing.assert_array_equal(p.results[name][0], traj)
        np.testing.assert_array_equal(p.results[name][1], loss)
        ok = np.isfinite(traj).all(1)
        np.testing.assert_array_equal(np.array(p.fig.data[1 + i].x, dtype=float), traj[ok, 0])
        np.testing.assert_array_equal(np.array(p.fig.data[1 + i].y, dtype=float), traj[ok, 1])
    p.close()


# ---- the private plotly / ipywidgets APIs the dashboards rely on ---------------------
def test_private_widget_apis_still_exist():
    """dash/_common.py uses a few private names of plotly / ipywidgets (each in one place,
    with the versions checked); this fails loudly when an upgrade removes one."""
    from lossviz.dash import _common

    _common.check_private_apis()


def test_kernel_options_reach_the_kernels(pair):
    a, b, data = pair
    obj = Objective(a, F.cross_entropy, data)
    sub = (data[0][:60], data[1][:60])
    d = dash.interpolation(obj, a, b, n=5, rest_ms=0, bn_data=sub, chunk_size=2)
    d.wait()  # bn="eval" first: bn_data waits for the toggle
    np.testing.assert_allclose(ys(d.fig.data[0]), interpolate(obj, a, b, n=5)["loss"], rtol=1e-6)
    d.bn_box.value = True
    d.wait()
    ref = interpolate(obj, a, b, n=5, bn="recompute", bn_data=sub)
    np.testing.assert_allclose(ys(d.fig.data[0]), ref["loss"], rtol=1e-6)
    d.slider.value = 0.5
    d.wait()
    assert d.exact["loss"] == pytest.approx(ref["loss"][2], rel=1e-6)
    st = lerp_state(a.state_dict(), b.state_dict(), 0.5)  # statistics of the 60 samples
    hand = by_hand(a, st, data, "recompute", stats=sub)["loss"]
    assert d.exact["loss"] == pytest.approx(hand, rel=2e-5)
    assert hand != pytest.approx(by_hand(a, st, data, "recompute")["loss"], rel=1e-3)
    d.close()
    with pytest.raises(lv.LossvizError, match="chunk_size"):
        dash.interpolation(obj, a, b, chunk_size=0)
    with pytest.raises(lv.LossvizError, match="precision"):
        dash.interpolation(obj, a, b, precision="fp8")
