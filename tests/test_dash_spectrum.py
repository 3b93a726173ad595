"""Browser-free tests of lossviz.dash.spectrum: built on a tiny MLP over a few training
checkpoints, driven from Python and with simulated front-end messages; every number shown
is compared with a direct call of the kernel."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch

pytest.importorskip("ipywidgets")
pytest.importorskip("anywidget")

from reference import assert_unchanged, snapshot  # noqa: E402
from widget_messages import frontend_update  # noqa: E402

import lossviz as lv  # noqa: E402
from lossviz import Objective, dash  # noqa: E402
from lossviz.data import digits, mlp, train  # noqa: E402
from lossviz.errors import LossvizError  # noqa: E402
from lossviz.hvp import CurvatureOperator  # noqa: E402

F = torch.nn.functional
KW = {"n_probes": 4, "steps": 30, "k": 3, "seed": 3}


@pytest.fixture(scope="module")
def setup():
    x, y = digits()
    x, y = x[:300], y[:300]
    model = mlp((64, 16, 10), seed=0)
    snaps = train(model, (x, y), steps=40, every=20, seed=0)  # steps 0, 20, 40
    ckpts = {20 * i: s for i, s in enumerate(snaps)}
    obj = Objective(model, F.cross_entropy, (x, y))
    # the first batched product on an Objective times the product methods (float32 results
    # differ in the last bits between them): do it here, so that the dashboard and the
    # direct calls below use the same method and agree exactly
    lv.hessian_density(obj, n_probes=2, steps=2, progress=False)
    return model, obj, ckpts


def count_hvps(monkeypatch):
    calls = []
    orig = CurvatureOperator.apply
    monkeypatch.setattr(
        CurvatureOperator, "apply", lambda self, V: (calls.append(len(V)), orig(self, V))[1]
    )
    return calls


def test_numbers_equal_the_kernels(setup):
    model, obj, ckpts = setup
    before = snapshot(model)
    d = dash.spectrum(obj, ckpts, **KW)
    d.wait()
    assert d.errors == []
    assert [p.label for p in d.points] == ["step 0", "step 20", "step 40"]
    lmax = []
    for i, (step, at) in enumerate(ckpts.items()):
        d.ckpt.value = i
        dens = lv.hessian_density(obj, n_probes=4, steps=30, at=at, seed=3, progress=False)
        eigs = lv.hessian_eigs(obj, 3, at=at, seed=3, progress=False)
        blocks = lv.hessian_blocks(obj, "module", k=1, at=at, seed=3, progress=False)
        # the curve is the kernel's density, smoothed at the shown σ (default: range/200)
        x, y = np.asarray(d.fig.data[0].x), np.asarray(d.fig.data[0].y)
        assert d.sigma == pytest.approx(dens.default_sigma())
        np.testing.assert_allclose(y, dens.smooth(x, dens.default_sigma())[1], rtol=1e-8)
        np.testing.assert_allclose(d.point.density.nodes, dens.nodes)
        # x spans the support of the density
        assert x[0] < dens.nodes.min() and x[-1] > dens.nodes.max()
        # top-k markers and their labels are the Lanczos eigenvalues
        np.testing.assert_allclose(d.fig.data[2].x, eigs.values, rtol=1e-10)
        assert np.allclose([v for v in d.fig.data[1].x if v is not None], np.repeat(eigs.values, 2))
        assert d.fig.data[2].text[0].startswith(f"λ1 = {eigs.values[0]:.4g}")
        # outliers: markers, count in the title and the readout
        outs = dens.outliers()
        np.testing.assert_allclose(d.fig.data[3].x, outs)
        assert f"{len(outs)} outlier" in d.fig.layout.title.text
        assert f"data-n='{len(outs)}'" in d.readout.value
        assert f"{eigs.values[0]:.5g}" in d.readout.value
        # per-layer table: λ_max and trace of each block, as the blocks kernel gives them
        for row in blocks.table:
            assert f"{row['λ1']:.6g}" in d.table.value
            assert f"{row['trace']:.6g}" in d.table.value
        assert "0 (Linear)" in d.table.value
        lmax.append(eigs.values[0])
        assert d.lmax_fig.data[1].x == (float(step),)
    np.testing.assert_allclose(d.lmax_fig.data[0].y, lmax, rtol=1e-10)
    np.testing.assert_allclose(d.lmax_fig.data[0].x, list(ckpts))
    assert d.progress.value == d.progress.max == 9
    assert d.button.disabled and d.button.description == "up to date"
    assert_unchanged(model, before)


def test_sliders_redraw_from_the_cache(setup, monkeypatch):
    model, obj, ckpts = setup
    d = dash.spectrum(obj, ckpts, **KW)
    d.wait()
    calls = count_hvps(monkeypatch)
    sent = []
    d.fig.comm.send = lambda data=None, metadata=None, buffers=None: sent.append(data)
    y0 = np.asarray(d.fig.data[0].y).copy()
    # smoothing slider, as the browser moves it: a new σ, the same nodes, one plotly message
    frontend_update(d.smoothing, value=0.02)
    assert d.smoothing.value == 0.02
    y1 = np.asarray(d.fig.data[0].y)
    assert not np.allclose(y0, y1)
    dens = d.point.density
    sigma = 0.02 * float(dens.nodes.max() - dens.nodes.min())
    assert d.sigma == pytest.approx(sigma)
    np.testing.assert_allclose(y1, dens.smooth(np.asarray(d.fig.data[0].x), sigma)[1])
    assert f"σ = {sigma:.3g}" in d.fig.layout.title.text
    updates = [m for m in sent if m and m.get("state", {}).get("_py2js_update")]
    assert len(updates) == 1
    # a larger σ spreads the same mass: a lower peak
    assert y1.max() < y0.max()
    # log / linear density axis
    assert d.fig.layout.yaxis.type == "log"
    top = np.log10(y1.max())
    assert d.fig.layout.yaxis.range == pytest.approx((top - 7, top + 0.35))
    frontend_update(d.axis, index=1)
    assert d.axis.value == "linear" and d.fig.layout.yaxis.type == "linear"
    assert d.fig.layout.yaxis.range == pytest.approx((0, 1.08 * y1.max()))
    # checkpoint slider: another cached density and other markers, instantly
    x_before, m_before = np.asarray(d.fig.data[0].x).copy(), d.fig.data[2].x
    frontend_update(d.ckpt, index=2)
    assert d.point.label == "step 40"
    assert not np.allclose(np.asarray(d.fig.data[0].x), x_before)
    assert d.fig.data[2].x != m_before
    assert "step 40" in d.fig.layout.title.text and "ready" in d.ckpt_status.value
    assert d.lmax_fig.data[1].x == (40.0,)
    assert calls == []  # no Hessian-vector product while moving the sliders
    assert d._threads == [] or not any(t.is_alive() for t in d._threads)
    # every trace is in the synced widget state (views created later see them)
    for f in d.figures():
        assert len(f.get_state()["_widget_data"]) == len(f.data)
    # a view created now (reload, second display) shows the current curve, not the first
    d._repr_mimebundle_()
    y_state = d.fig.get_state()["_widget_data"][0]["y"]
    y_state = np.frombuffer(y_state["buffer"], dtype=y_state["dtype"])
    np.testing.assert_array_equal(y_state, d.fig.data[0].y)


def test_shown_checkpoint_first_and_double_clicks(setup):
    model, obj, ckpts = setup
    d = dash.spectrum(obj, ckpts, start=False, **KW)
    assert "not computed" in d.fig.layout.title.text
    assert d.button.description == "compute" and not d.button.disabled
    assert d.fig.data[0].y == () and d.fig.data[2].x == ()
    order = []
    compute = d._compute
    d._compute = lambda p, t: (order.append((p.label, t)), compute(p, t))[1]
    d.ckpt.value = 1
    d.button.click()
    d.button.click()  # a double click starts nothing more
    d.start()
    assert len([t for t in d._threads if t.name == "lossviz-spectrum"]) == 1
    d.wait()
    # the shown checkpoint first (all of it), then the others' spectra, then their tables
    assert order[:3] == [("step 20", "density"), ("step 20", "eigs"), ("step 20", "blocks")]
    assert order[3:7] == [
        ("step 0", "density"),
        ("step 0", "eigs"),
        ("step 40", "density"),
        ("step 40", "eigs"),
    ]
    assert sorted(order[7:]) == [("step 0", "blocks"), ("step 40", "blocks")]
    assert len(order) == len(set(order)) == 9
    assert "step 20 · σ" in d.fig.layout.title.text
    d.start()  # nothing left to do: no new thread
    assert not d.running() and d.button.description == "up to date"


def test_result_dashboards(setup):
    model, obj, ckpts = setup
    before = snapshot(model)
    dens = lv.hessian_density(obj, n_probes=4, steps=30, seed=3, progress=False)
    assert dens.objective is obj and dens.at is None
    assert "objective" not in repr(dens)
    back = pickle.loads(pickle.dumps(dens))  # the live Objective is not pickled
    assert back.objective is None and np.array_equal(back.nodes, dens.nodes)
    d = dens.dashboard(k=2, seed=3)
    # the density is there at once, before any background work finished
    np.testing.assert_allclose(d.fig.data[0].y, dens.smooth(d.fig.data[0].x)[1])
    d.wait()
    eigs = lv.hessian_eigs(obj, 2, seed=3, progress=False)
    np.testing.assert_allclose(d.fig.data[2].x, eigs.values, rtol=1e-10)
    assert d.lmax_fig is None and "cannot" not in d.note.value
    # an EigenResult: its markers at once; the density is computed at its point
    at = ckpts[20]
    eigs = lv.hessian_eigs(obj, 3, at=at, seed=3, progress=False)
    assert eigs.at is at
    d = eigs.dashboard(n_probes=4, steps=30, seed=3, groups=None)
    np.testing.assert_allclose(d.fig.data[2].x, eigs.values)
    d.wait()
    ref = lv.hessian_density(obj, n_probes=4, steps=30, at=at, seed=3, progress=False)
    np.testing.assert_allclose(d.point.density.nodes, ref.nodes)
    assert "off" in d.table.value
    # the curvature of the result is kept: Gauss-Newton top-k next to a GGN density
    ggn = lv.hessian_density(obj, n_probes=4, steps=30, seed=3, curvature="ggn", progress=False)
    d = ggn.dashboard(k=2, seed=3, groups=None)
    d.wait()
    ref = lv.hessian_eigs(obj, 2, seed=3, curvature="ggn", progress=False)
    np.testing.assert_allclose(d.point.eigs.values, ref.values, rtol=1e-10)
    # a dict of results: a checkpoint slider over them
    res = {
        s: lv.hessian_density(obj, n_probes=4, steps=30, at=a, seed=3, progress=False)
        for s, a in ckpts.items()
    }
    d = dash.spectrum(res, k=0, groups=None)
    assert not d.running() and len(d.points) == 3
    d.ckpt.value = 2
    np.testing.assert_allclose(d.fig.data[0].y, res[40].smooth(d.fig.data[0].x)[1])
    assert_unchanged(model, before)


def test_results_without_their_objective():
    A = torch.diag(torch.cat([torch.linspace(-0.1, 0.1, 200), torch.tensor([3.0, 5.0])])).double()
    dens = lv.hessian_density(A, n_probes=4, steps=40, progress=False)
    assert dens.objective is None
    d = dens.dashboard()
    assert not d.running()
    assert "top-5 markers and the per-layer table cannot be computed" in d.note.value
    assert "carries no Objective" in d.note.value
    np.testing.assert_allclose(d.fig.data[3].x, dens.outliers())
    outs = dens.outliers()
    assert outs[0] == pytest.approx(5.0) and f"{len(outs)} outlier" in d.fig.layout.title.text
    assert "unavailable" in d.table.value and d.button.disabled
    eigs = lv.hessian_eigs(A, 2, progress=False)
    d = eigs.dashboard()
    np.testing.assert_allclose(d.fig.data[2].x, [5.0, 3.0])
    assert "density unavailable" in d.fig.layout.title.text
    assert "the density" in d.note.value


def test_result_of_weights_that_changed():
    x, y = digits()
    model = mlp((64, 8, 10), seed=1)
    obj = Objective(model, F.cross_entropy, (x[:100], y[:100]))
    dens = lv.hessian_density(obj, n_probes=2, steps=10, progress=False)
    train(model, (x[:100], y[:100]), steps=2)  # the user trains on: the point is gone
    d = dens.dashboard()
    assert not d.running() and "have changed since" in d.note.value
    assert d.fig.data[0].y is not None and len(d.fig.data[0].y) == 1500


def test_errors_are_shown_and_the_rest_goes_on(setup):
    model, obj, ckpts = setup
    bad = {k: v.clone() for k, v in ckpts[40].items()}
    bad["0.weight"][0, 0] = float("nan")
    d = dash.spectrum(obj, [ckpts[0], bad], **KW)
    d.wait()
    assert d.points[0].density is not None and d.points[0].blocks is not None
    assert set(d.points[1].failed) == {"density", "eigs", "blocks"}
    assert len(d.errors) == 3 and "checkpoint 1" in d.errors[0]
    assert "failed" in d.status.value
    assert d.button.description == "retry failed" and not d.button.disabled
    d.ckpt.value = 1
    assert "failed" in d.fig.layout.title.text and "failed:" in d.readout.value
    assert "not finite" in d.readout.value
    d.start()  # retried (and failing again), still shown
    d.wait()
    assert len(d.errors) == 6 and d.button.description == "retry failed"


def test_list_of_points_and_paths(setup, tmp_path):
    model, obj, ckpts = setup
    path = tmp_path / "c.pt"
    torch.save(ckpts[40], path)
    d = dash.spectrum(obj, [ckpts[0], str(path)], k=1, n_probes=2, steps=10, groups=None)
    d.wait()
    assert d.errors == []
    assert [p.label for p in d.points] == ["checkpoint 0", "checkpoint 1"]
    ref = lv.hessian_eigs(obj, 1, at=ckpts[40], progress=False)
    np.testing.assert_allclose(d.points[1].eigs.values, ref.values, rtol=1e-10)
    assert list(d.lmax_fig.layout.xaxis.ticktext) == ["checkpoint 0", "checkpoint 1"]


def test_bad_input(setup):
    model, obj, ckpts = setup
    with pytest.raises(TypeError, match="Objective"):
        dash.spectrum(model)
    with pytest.raises(LossvizError, match="k must be"):
        dash.spectrum(obj, k=-1)
    with pytest.raises(LossvizError, match="n_probes"):
        dash.spectrum(obj, n_probes=0)
    with pytest.raises(LossvizError, match="seed"):
        dash.spectrum(obj, seed=-1, start=False)
    with pytest.raises(TypeError, match="seed"):
        dash.spectrum(obj, seed=0.5, start=False)
    with pytest.raises(LossvizError, match="groups"):
        dash.spectrum(obj, groups={"x": ["nope"]})
    with pytest.warns(DeprecationWarning, match="blocks= is deprecated"):
        d = dash.spectrum(obj, blocks=None, start=False)  # the old name still works
    assert d.groups_spec is None
    d.close()
    with pytest.raises(LossvizError, match="checkpoints"):
        dash.spectrum(obj, checkpoints=5)
    with pytest.raises(Exception, match="does not match"):
        dash.spectrum(obj, [mlp((64, 8, 10))])
    dens = lv.hessian_density(obj, n_probes=2, steps=5, progress=False)
    with pytest.raises(LossvizError, match="needs an Objective"):
        dash.spectrum(dens, ckpts)
    with pytest.raises(TypeError, match="SpectralDensity"):
        dash.spectrum({0: dens, 1: "x"})
