"""Browser-free tests of lossviz.dash and lossviz.teach: build each dashboard on small
models, drive the widgets from Python (and with simulated front-end messages), check the
figures and the numbers."""

from __future__ import annotations

import subprocess
import sys
import threading

import numpy as np
import pytest
import torch

pytest.importorskip("ipywidgets")
pytest.importorskip("anywidget")

from widget_messages import frontend_update  # noqa: E402

from lossviz import Objective, dash  # noqa: E402
from lossviz.data import digits, mlp, train  # noqa: E402
from lossviz.errors import LossvizError  # noqa: E402
from lossviz.formatting import number  # noqa: E402

F = torch.nn.functional


@pytest.fixture(scope="module")
def two_models():
    x, y = digits()
    x, y = x[:400], y[:400]
    a, b = mlp((64, 32, 10), seed=0), mlp((64, 32, 10), seed=1)
    train(a, (x, y), steps=60, seed=0)
    train(b, (x, y), steps=60, seed=1)
    return a, b, (x, y)


def test_import_without_widgets_names_the_extra():
    code = (
        "import sys; sys.modules['ipywidgets'] = None; sys.modules['anywidget'] = None\n"
        "import lossviz.dash as d\n"
        "import lossviz.teach as t\n"
        "for f in (lambda: d.interpolation(None, None, None), t.playground):\n"
        "    try:\n        f()\n"
        "    except ImportError as e:\n        print('ERR', e)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout
    assert out.count("ERR") == 2 and "pip install 'lossviz[widgets]'" in out


def test_widgets_dir_has_the_modules():
    d = dash.widgets_dir()
    for f in ("scrubber.js", "scrubber.css", "mixer.js", "mixer.css", "figure.js"):
        assert (d / f).is_file()
    assert "export default" in (d / "scrubber.js").read_text()


def test_interpolation_numbers_match_direct_evaluation(two_models):
    a, b, data = two_models
    obj = Objective(a, F.cross_entropy, data)
    before = {k: v.clone() for k, v in a.state_dict().items()}
    d = dash.interpolation(obj, a, b, n=9, rest_ms=0)
    d.wait()
    assert d.errors == []
    res = d.path
    # grid endpoints are the two models themselves
    assert res["loss"][0] == pytest.approx(obj.loss(), rel=1e-5)
    assert res["loss"][-1] == pytest.approx(obj.loss(at=b), rel=1e-5)
    # the curve in the figure is the computed grid, the barrier is where it says
    curve = np.array(d.fig.data[d._tr[("loss", "curve")]].y, dtype=float)
    np.testing.assert_allclose(curve, res["loss"])
    h = res.barrier("loss")
    chord = (1 - d.alphas) * curve[0] + d.alphas * curve[-1]
    assert h == pytest.approx(np.max(curve - chord)) and h > 0
    assert d.scrubber.barrier == pytest.approx(h)
    # move the slider: cached marker at once, exact readout once it rests
    d.slider.value = 0.37
    d.wait()
    exact = obj.loss(at=d.point(0.37))
    assert d.exact["loss"] == pytest.approx(exact, rel=1e-5)
    m = d.fig.data[d._tr[("loss", "marker")]]
    assert m.x[0] == 0.37 and m.y[0] == pytest.approx(exact, rel=1e-5)
    assert d.fig.layout.title.text == "α = 0.37 · exact"
    assert number(exact) in d.readout.value
    # accuracy readout equals a direct count
    st = d.point(0.37)
    with torch.no_grad():
        out = torch.func.functional_call(a, st, (data[0],))
    acc = (out.argmax(-1) == data[1]).double().mean().item()
    assert d.exact["accuracy"] == pytest.approx(acc)
    # the user's model is never changed
    for k, v in a.state_dict().items():
        assert torch.equal(v, before[k])


def test_interpolation_frontend_messages(two_models):
    a, b, data = two_models
    obj = Objective(a, F.cross_entropy, data)
    d = dash.interpolation(obj, a, b, n=7, rest_ms=0)
    d.wait()
    # the scrubber (lossviz's own widget) drives the slider and the plot
    frontend_update(d.scrubber, value=0.5)
    assert d.slider.value == 0.5
    d.wait()
    assert d.fig.layout.title.text == "α = 0.50 · exact"
    # a dragged slider: one combined plotly message per move (batch_update)
    sent = []
    d.fig.comm.send = lambda data=None, metadata=None, buffers=None: sent.append(data)
    d._rest.delay = 10.0  # keep the exact evaluation out of this count
    frontend_update(d.slider, value=0.25)
    updates = [m for m in sent if m and m.get("state", {}).get("_py2js_update")]
    assert len(updates) == 1
    # while moving: the kernel's value at the nearest grid α (1/3 on a 7-point grid)
    assert d.fig.layout.title.text == "α = 0.25 · grid α = 0.333"
    marker = d.fig.data[d._tr[("loss", "marker")]]
    assert marker.x[0] == d.path.alphas[2] and marker.y[0] == d.path["loss"][2]
    d._rest.cancel()
    # every trace is in the synced widget state (views created later see them)
    assert len(d.fig.get_state()["_widget_data"]) == len(d.fig.data)
    assert len(d.pred_fig.get_state()["_widget_data"]) == len(d.pred_fig.data)


def test_interpolation_mixer_and_layer_barriers(two_models):
    a, b, data = two_models
    obj = Objective(a, F.cross_entropy, data)
    d = dash.interpolation(obj, a, b, n=7, rest_ms=0)
    d.wait()
    full = list(d.fig.data[0].y)
    assert all(v is not None and v > 0 for v in d.mixer.barriers)
    frontend_update(d.mixer, mask=[False, True])
    d.wait()
    assert d.mixer.mask == [False, True]
    part = list(d.fig.data[0].y)
    assert part != full
    # the first layer stays at a along the whole path
    p = d.point(1.0)
    assert torch.equal(p["0.weight"], a.state_dict()["0.weight"])
    assert torch.allclose(p["2.weight"], b.state_dict()["2.weight"])
    assert d.path["loss"][-1] == pytest.approx(obj.loss(at=p), rel=1e-5)
    # back to all layers: cached, no recomputation
    n_threads = len(d._threads)
    d.mixer.mask = [True, True]
    assert list(d.fig.data[0].y) == full
    assert len(d._threads) <= n_threads + 1


def test_interpolation_bad_input(two_models):
    a, b, data = two_models
    obj = Objective(a, F.cross_entropy, data)
    with pytest.raises(TypeError, match="Objective"):
        dash.interpolation(a, a, b)
    with pytest.raises(LossvizError, match="n"):
        dash.interpolation(obj, a, b, n=2)
    with pytest.raises(LossvizError, match="BatchNorm"):
        dash.interpolation(obj, a, b, bn=True)
    with pytest.raises(LossvizError, match="varying"):
        dash.interpolation(obj, a, b, groups={"x": ["nope"]})
    with pytest.raises(LossvizError, match="bn must be"):
        dash.interpolation(obj, a, b, bn="train")
    with pytest.raises(TypeError, match="nope"):
        dash.interpolation(obj, a, b, nope=1)
    with pytest.raises(Exception, match="does not match"):
        dash.interpolation(obj, a, mlp((64, 16, 10)))


def test_interpolation_bn_recompute_and_decision_boundary():
    torch.manual_seed(0)
    x = torch.randn(200, 2)
    y = (x[:, 0] * x[:, 1] > 0).long()

    def net(seed):
        torch.manual_seed(seed)
        return torch.nn.Sequential(
            torch.nn.Linear(2, 16),
            torch.nn.BatchNorm1d(16),
            torch.nn.ReLU(),
            torch.nn.Linear(16, 2),
        )

    a, b = net(0), net(1)
    train(a, (x, y), steps=100, lr=0.05, seed=0)
    train(b, (x, y), steps=100, lr=0.05, seed=1)
    obj = Objective(a, F.cross_entropy, (x, y))
    d = dash.interpolation(obj, a, b, n=5, rest_ms=0)
    d.wait()
    assert d._kind == "boundary" and not d.bn_box.disabled
    z0 = np.array(d.pred_fig.data[0].z).copy()
    d.bn_box.value = True
    d.wait()
    rec = d.path["loss"]
    from lossviz.connectivity import interpolate

    direct = interpolate(obj, a, b, n=5, bn="recompute")["loss"]
    np.testing.assert_allclose(rec, direct, rtol=1e-6)
    d.slider.value = 0.5
    d.wait()
    assert not np.array_equal(np.array(d.pred_fig.data[0].z), z0)


def test_scrubber_value_is_clipped():
    from lossviz.dash._anywidgets import PathScrubber

    s = PathScrubber()
    s.value = 3.0
    assert s.value == 1.0


# ---- teach.playground ------------------------------------------------------------------
def test_playground_sliders_change_the_figures():
    from lossviz import teach

    p = teach.playground()
    sgd = np.array(p.fig.data[1].x, dtype=float).copy()
    p.lr.value = 0.2
    p.wait()
    assert not np.array_equal(np.array(p.fig.data[1].x, dtype=float), sgd)
    # the trajectory is what torch.optim.SGD does on the function
    fn = teach.FUNCTIONS["ill-conditioned quadratic"]
    w = torch.tensor(fn.start, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.SGD([w], lr=0.2)
    for _ in range(3):
        opt.zero_grad()
        fn(w, p.kappa.value).backward()
        opt.step()
    np.testing.assert_allclose(p.results["SGD"][0][3], w.detach().numpy())
    # a simulated front-end message on the steps slider
    frontend_update(p.steps, value=50)
    p.wait()
    assert len(p.fig.data[1].x) == 51
    # loss vs step spans the whole run, and exact convergence sits on the floor of the log axis
    assert tuple(p.loss_fig.layout.xaxis.range) == (0, 50)
    assert min(min(t.y) for t in p.loss_fig.data if t.visible) >= teach.GAP_FLOOR
    p.function.value = "Rosenbrock"
    assert p.fig.layout.title.text == "Rosenbrock"
    p.optimizers.value = ("SAM", "Adagrad")
    p.wait()
    assert p.fig.data[1].visible is False and p.fig.data[8].visible is True
    # edge of stability: the verdict follows lr vs 2/λ_max
    p.eos_lr.value = 0.095
    assert "converges" in p.eos_fig.layout.title.text
    p.eos_lr.value = 0.105
    assert "diverges" in p.eos_fig.layout.title.text
    assert p.eos_fig.data[0].y[-1] > p.eos_fig.data[0].y[0]
    # every figure's synced state holds its current traces once displayed
    p._repr_mimebundle_()
    for f in (p.fig, p.loss_fig, p.eos_fig, p.muon_fig):
        assert len(f.get_state()["_widget_data"]) == len(f.data)
    assert len(p.muon_fig._widget_data[1]["y"]) > 10


def test_sam_and_newton_schulz():
    from lossviz import teach

    G = torch.randn(8, 6, dtype=torch.float64)
    s = torch.linalg.svdvals(teach.newton_schulz(G, steps=10))
    assert s.max() < 1.3 and s.min() > 0.5
    # SAM's gradient is taken at the perturbed point
    f = teach.FUNCTIONS["ill-conditioned quadratic"]
    p = torch.tensor([1.0, 1.0], dtype=torch.float64, requires_grad=True)
    opt = torch.optim.SGD([p], lr=0.1)
    teach.sam_step(p, lambda q: f(q, 10.0), opt, rho=0.1)
    q = torch.tensor([1.0, 1.0], dtype=torch.float64, requires_grad=True)
    g = torch.autograd.grad(f(q, 10.0), q)[0]
    e = q.detach() + 0.1 * g / g.norm()
    e.requires_grad_(True)
    ge = torch.autograd.grad(f(e, 10.0), e)[0]
    torch.testing.assert_close(p.detach(), torch.tensor([1.0, 1.0], dtype=torch.float64) - 0.1 * ge)


def test_playground_bad_input():
    from lossviz import teach

    with pytest.raises(LossvizError, match="unknown function"):
        teach.playground("nope")
    with pytest.raises(LossvizError, match="unknown optimizer"):
        teach.playground(optimizers=("LBFGS",))
    with pytest.raises(LossvizError, match="lr"):
        teach.run(teach.FUNCTIONS["Rosenbrock"], "SGD", lr=-1, steps=3)
    with pytest.raises(LossvizError, match="lr"):
        teach.playground(lr=100.0)
    with pytest.raises(LossvizError, match="steps"):
        teach.playground(steps=1000)
    with pytest.raises(TypeError, match="steps"):
        teach.playground(steps=2.5)
    with pytest.raises(LossvizError, match="grid"):
        teach.playground(grid=1)
    with pytest.raises(LossvizError, match="2-D"):
        teach.newton_schulz(torch.ones(3))
    with pytest.raises(TypeError, match="G must be"):
        teach.newton_schulz([[1.0]])


def test_interpolation_weight_matching_toggle(two_models):
    pytest.importorskip("lossviz.alignment")
    a, b, data = two_models
    obj = Objective(a, F.cross_entropy, data)
    d = dash.interpolation(obj, a, b, n=9, rest_ms=0)
    d.wait()
    assert not d.match_box.disabled
    plain = d.path.barrier("loss")
    d.match_box.value = True
    d.wait()
    assert d.path_before.barrier("loss") == pytest.approx(plain)
    # the permuted b computes the same function: same loss at α = 1
    assert d.path["loss"][-1] == pytest.approx(obj.loss(at=b), rel=1e-4)
    assert d.path.barrier("loss") < plain
    assert d.scrubber.curve2 and "before matching" in d.readout.value


def test_close_closes_only_that_dashboard(two_models):
    a, b, data = two_models
    obj = Objective(a, F.cross_entropy, data)
    d1 = dash.interpolation(obj, a, b, n=5)
    d2 = dash.interpolation(obj, a, b, n=5)
    d1.wait()
    d2.wait()
    d1.close()
    assert d1.widget.comm is None and d1.fig.comm is None and d1.slider.comm is None
    assert d2.widget.comm is not None and d2.fig.comm is not None and d2.slider.comm is not None
    d2.close()


def test_playground_runs_in_a_thread_and_the_latest_settings_win():
    from lossviz import teach

    p = teach.playground(optimizers=teach.OPTIMIZERS)
    msgs = []
    p.fig.comm.send = lambda *a, **k: msgs.append(1)  # count redraws of the contour figure
    where = []
    runs = p._runs
    p._runs = lambda *a: (where.append(threading.current_thread()), runs(*a))[1]
    for steps in (400, 395, 390, 385, 380, 50):  # a fast drag
        p.steps.value = steps
    p.wait()
    assert p.errors == []
    # the runs happen in the worker, never in the thread that moved the slider
    assert where and threading.main_thread() not in where
    assert len(p.fig.data[1].x) == 51 and set(p.results) == set(teach.OPTIMIZERS)
    assert len(msgs) < 6  # superseded settings are dropped, not drawn
    # the drawn runs are those of the final settings
    traj, _ = teach.run(
        teach.FUNCTIONS[p.function.value], "Adam", lr=p.lr.value, steps=50, kappa=p.kappa.value
    )
    np.testing.assert_allclose(np.array(p.fig.data[4].x, dtype=float), traj[:, 0])
    # a failing run is shown, and the next move works again
    p.lr.value = float("nan")
    p.wait()
    assert p.errors and "lr must be a finite number" in p.info.value
    p.lr.value = 0.05
    p.wait()
    assert "final loss" in p.info.value and p._worker is None


def test_figures_share_one_plotly_front_end():
    """Every dashboard figure loads plotly's module through widgets/figure.js, keyed by
    plotly's version and bundle, so a page compiles it once (anywidget drops the messages
    of a model that took over 2 s to start: with several figures some never updated)."""
    import plotly
    import plotly.graph_objects as go

    from lossviz import teach

    p = teach.playground()
    figs = (p.fig, p.loss_fig, p.eos_fig, p.muon_fig)
    states = [f.get_state() for f in figs]
    bundle = str(go.FigureWidget._esm)
    for f, st in zip(figs, states):
        assert isinstance(f, go.FigureWidget)
        assert st["_esm"] == (dash.widgets_dir() / "figure.js").read_text()
        assert st["_plotly_esm"] == bundle
        assert st["_plotly_key"].startswith(plotly.__version__ + "-")
    assert len({st["_plotly_key"] for st in states}) == 1
    # the same plotly front end: its module's default export is what figure.js runs
    assert "export{" in bundle and " as default}" in bundle
