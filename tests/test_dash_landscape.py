"""Browser-free tests of lossviz.dash.landscape: built on a tiny MLP, driven from Python and
with simulated front-end messages; every number shown is checked against the kernels."""

from __future__ import annotations

import threading

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
from lossviz.landscape import coarse_to_fine, line, surface  # noqa: E402

F = torch.nn.functional


@pytest.fixture(scope="module")
def run():
    x, y = digits()
    x, y = x[:300], y[:300]
    model = mlp((64, 16, 10), seed=0)
    snaps = train(model, (x, y), steps=60, every=10, seed=0)
    others = [mlp((64, 16, 10), seed=s) for s in (1, 2)]
    for i, m in enumerate(others):
        train(m, (x, y), steps=40, seed=i + 1)
    return model, snaps, others, (x, y)


def frontend_click(fig, trace: int, x: float, y: float):
    """What plotly.js sends for a click on a point of trace ``trace``."""
    frontend_update(
        fig,
        _js2py_pointsCallback={
            "event_type": "plotly_click",
            "points": {"trace_indexes": [trace], "point_indexes": [0], "xs": [x], "ys": [y]},
            "device_state": {
                "alt": False,
                "ctrl": False,
                "meta": False,
                "shift": False,
                "button": 0,
                "buttons": 0,
            },
            "selector": None,
        },
    )


def shown_z(fig, trace=0) -> np.ndarray:
    return np.array(
        [[np.nan if v is None else v for v in r] for r in fig.data[trace].z], dtype=float
    )


def test_grid_is_the_kernels_surface(run):
    model, _, _, data = run
    obj = Objective(model, F.cross_entropy, data)
    before = snapshot(model)
    d = dash.landscape(obj, n=(9, 7), seed=3, metrics=("loss", "accuracy"))
    d.wait()
    assert d.errors == []
    dirs = lv.random_directions(obj, 2, seed=3)
    ref = surface(obj, None, dirs, n=(9, 7), metrics=("loss", "accuracy"), progress=False)
    s = d.surface
    assert s.complete and s["loss"].shape == (7, 9)
    np.testing.assert_allclose(s.x, ref.x)
    np.testing.assert_allclose(s.y, ref.y)
    for k in ("loss", "accuracy"):
        np.testing.assert_allclose(s[k], ref[k], rtol=1e-6)
    for a, b in zip(d.directions, dirs):
        for k in a:
            torch.testing.assert_close(a[k], b[k])
    # the figure shows those numbers, on the grid's coordinates, without gaps
    np.testing.assert_allclose(shown_z(d.fig), ref["loss"], rtol=1e-6)
    np.testing.assert_allclose(d.fig.data[0].x, ref.x)
    assert d.fig.data[0].connectgaps is False
    assert d.fig.layout.title.text == "loss · random · 9×7"
    assert d.progress.value == d.progress.max == 63
    # the metric dropdown shows the other metric
    d.metric.value = "accuracy"
    np.testing.assert_allclose(shown_z(d.fig), ref["accuracy"], rtol=1e-6)
    # log scale: log10 of the values
    d.metric.value = "loss"
    d.log_box.value = True
    np.testing.assert_allclose(shown_z(d.fig), np.log10(s["loss"]), rtol=1e-12)
    assert d.fig.data[0].colorbar.title.text == "log10 loss"
    assert_unchanged(model, before)


def test_inspect_equals_line_and_hessian_eigs(run):
    model, _, _, data = run
    obj = Objective(model, F.cross_entropy, data)
    before = snapshot(model)
    d = dash.landscape(obj, n=9, metrics=("loss", "accuracy"))
    d.wait()
    s = d.surface
    a, b = float(s.x[6]), float(s.y[2])  # a grid node
    d.inspect(a, b)
    d.wait()
    assert d.errors == []
    r = d.inspection
    at = d.point(a, b)
    lam = lv.hessian_eigs(obj, k=1, at=at, progress=False).values[0]
    assert r["lambda_max"] == lam
    assert r["values"]["loss"] == pytest.approx(obj.loss(at=at), rel=1e-6)
    # the point is the grid node: the grid value there is the same number
    assert r["values"]["loss"] == pytest.approx(s.loss[2, 6], rel=1e-5)
    (x0, x1), (y0, y1) = d.span
    s1 = line(
        obj,
        at,
        d.directions[0],
        span=(x0 - a, x1 - a),
        n=17,
        metrics=("loss", "accuracy"),
        progress=False,
    )
    s2 = line(
        obj,
        at,
        d.directions[1],
        span=(y0 - b, y1 - b),
        n=17,
        metrics=("loss", "accuracy"),
        progress=False,
    )
    np.testing.assert_allclose(r["slices"][0].loss, s1.loss, rtol=1e-6)
    np.testing.assert_allclose(r["slices"][1].loss, s2.loss, rtol=1e-6)
    # every other slice point is a grid node: the slices run along the grid's row / column
    np.testing.assert_allclose(s1.loss[::2], s.loss[2, :], rtol=1e-4)
    np.testing.assert_allclose(s2.loss[::2], s.loss[:, 6], rtol=1e-4)
    # what is drawn: the slices against the plane coordinates, the point marked
    sf = d.slice_fig.data
    np.testing.assert_allclose(sf[0].x, a + s1.t)
    np.testing.assert_allclose(np.array(sf[0].y, dtype=float), s1.loss, rtol=1e-6)
    np.testing.assert_allclose(np.array(sf[2].y, dtype=float), s2.loss, rtol=1e-6)
    assert sf[1].x == (a,) and sf[3].x == (b,)
    assert d.fig.data[4].x == (a,) and d.fig.data[4].y == (b,)
    assert f"{lam:.6g}" in d.readout.value and "λ_max" in d.readout.value
    assert f"{2 / lam:.4g}" in d.readout.value
    assert_unchanged(model, before)


def test_click_messages_stale_results_and_double_clicks(run):
    model, _, _, data = run
    obj = Objective(model, F.cross_entropy, data)
    d = dash.landscape(obj, n=7)
    d.wait()
    x, y = d.surface.x, d.surface.y
    # a click on the contour (trace 0), as the browser sends it
    frontend_click(d.fig, 0, float(x[1]), float(y[5]))
    d.wait()
    assert (d.inspection["a"], d.inspection["b"]) == (x[1], y[5])
    assert (
        d.inspection["lambda_max"]
        == lv.hessian_eigs(obj, k=1, at=d.point(x[1], y[5]), progress=False).values[0]
    )
    # the same point again (a double click): no new work
    n = len(d._threads)
    frontend_click(d.fig, 0, float(x[1]), float(y[5]))
    assert len(d._threads) == n
    # two clicks in a row: only the newer one's result is shown
    gate = threading.Event()
    real = d._inspect_job

    def slow(*args):
        gate.wait(10)
        real(*args)

    d._inspect_job = slow
    d.inspect(float(x[2]), float(y[2]))
    d.inspect(float(x[4]), float(y[3]))
    gate.set()
    d.wait()
    assert (d.inspection["a"], d.inspection["b"]) == (x[4], y[3])
    assert d.fig.data[4].x == (x[4],)
    assert f"a = {x[4]:.4g}" in d.readout.value
    assert d.errors == []
    # a click on the other traces' handlers (plotly calls them all) with no points is ignored
    frontend_update(
        d.fig,
        _js2py_pointsCallback={
            "event_type": "plotly_click",
            "points": {"trace_indexes": [], "point_indexes": [], "xs": [], "ys": []},
            "device_state": None,
            "selector": None,
        },
    )
    assert (d.inspection["a"], d.inspection["b"]) == (x[4], y[3])


def test_direction_picker_pca_eigen_plane(run):
    model, snaps, (m1, m2), data = run
    obj = Objective(model, F.cross_entropy, data)
    before = snapshot(model)
    d = dash.landscape(
        obj, trajectory=snaps, models={"final": model, "seed 1": m1, "seed 2": m2}, n=7
    )
    d.wait()
    assert [v for _, v in d.direction.options] == ["random", "pca", "eigen", "plane"]
    random_grid = d.surface.loss.copy()
    # PCA of the trajectory, picked as the browser does (ToggleButtons sync the index)
    frontend_update(d.direction, index=1)
    assert d.direction.value == "pca"
    d.wait()
    pca = lv.pca_directions(snaps, 2)
    ref = surface(obj, None, pca, n=7, progress=False)  # center and span from the PCAResult
    np.testing.assert_allclose(d.surface.x, ref.x)
    np.testing.assert_allclose(d.surface.y, ref.y)
    np.testing.assert_allclose(d.surface.loss, ref.loss, rtol=1e-6)
    np.testing.assert_allclose(shown_z(d.fig), ref.loss, rtol=1e-6)
    assert not np.allclose(d.surface.loss, random_grid)
    # the trajectory overlay: the checkpoints' PCA coordinates, start and end labelled
    path = d.fig.data[2]
    np.testing.assert_allclose(np.array(path.x, dtype=float), pca.coords[:, 0], atol=1e-4)
    np.testing.assert_allclose(np.array(path.y, dtype=float), pca.coords[:, 1], atol=1e-4)
    assert path.text[0] == "start" and path.text[-1] == "end"
    assert d.fig.layout.xaxis.title.text.startswith("PC1 (")
    # top Hessian eigenvectors (computed in the background)
    d.direction.value = "eigen"
    d.wait()
    eig = lv.eigen_directions(obj, 2)
    for a, b in zip(d.directions, eig):
        torch.testing.assert_close(
            torch.cat([a[k].reshape(-1) for k in a]), torch.cat([b[k].reshape(-1) for k in b])
        )
    ref = surface(obj, None, eig, span=d.span, n=7, progress=False)
    np.testing.assert_allclose(d.surface.loss, ref.loss, rtol=1e-6)
    lam = lv.hessian_eigs(obj, k=2, progress=False).values
    h = np.sqrt(8 / lam[0])  # ½·λ1·h² = 4 at the edge
    assert d.span[0] == pytest.approx((-h, h))
    # the plane through the three models, the three marked where they lie
    d.direction.value = "plane"
    d.wait()
    plane = lv.plane_through(model, m1, m2, names=("final", "seed 1", "seed 2"))
    ref = surface(obj, None, plane, n=7, progress=False)
    np.testing.assert_allclose(d.surface.loss, ref.loss, rtol=1e-6)
    pts = d.fig.data[3]
    assert list(pts.text) == ["final", "seed 1", "seed 2"]
    np.testing.assert_allclose(
        np.c_[pts.x, pts.y], np.array(list(plane.points.values())), atol=1e-9
    )
    # the loss there is each model's own loss
    for name, (a, b) in plane.points.items():
        m = {"final": model, "seed 1": m1, "seed 2": m2}[name]
        assert obj.loss(at=d.point(a, b)) == pytest.approx(obj.loss(at=m), rel=1e-4)
    # back to random: cached, no new thread
    n = len(d._threads)
    d.direction.value = "random"
    assert len(d._threads) == n
    np.testing.assert_allclose(d.surface.loss, random_grid)
    assert d.errors == []
    assert_unchanged(model, before)


def test_resolution_span_and_kind_widgets(run):
    model, _, _, data = run
    obj = Objective(model, F.cross_entropy, data)
    d = dash.landscape(obj, n=7, debounce_ms=0)
    d.wait()
    # the resolution slider, moved in the browser
    frontend_update(d.resolution, value=11)
    d.wait()
    assert d.surface.loss.shape == (11, 11) and shown_z(d.fig).shape == (11, 11)
    # span × 2: the grid covers twice the range, same directions
    frontend_update(d.span_scale, value=2.0)
    d.wait()
    assert d.span == ((-2.0, 2.0), (-2.0, 2.0))
    ref = surface(obj, None, d.directions, span=d.span, n=11, progress=False)
    np.testing.assert_allclose(d.surface.loss, ref.loss, rtol=1e-6)
    assert tuple(d.fig.layout.xaxis.range) == (-2.0, 2.0)
    # heatmap: the other trace, same numbers
    frontend_update(d.kind, index=1)
    assert d.kind.value == "heatmap"
    assert d.fig.data[1].visible is True and d.fig.data[0].visible is False
    np.testing.assert_allclose(shown_z(d.fig, 1), ref.loss, rtol=1e-6)
    # 3-D: the map box holds the 3-D figure, synced with the surface
    assert d._box3d.children == ()  # no 3-D view before it is asked for
    d.kind.value = "surface"
    assert d._box3d.children == (d.fig3d,) and d._box3d.layout.display is None
    assert d._box2d.layout.display == "none"
    np.testing.assert_allclose(shown_z(d.fig3d), ref.loss, rtol=1e-6)
    assert len(d.fig3d._widget_data[0]["z"]) == 11
    d.kind.value = "contour"
    assert d._box2d.layout.display is None and d._box3d.layout.display == "none"
    assert d._box2d.children == (d.fig,)  # views are hidden, never removed
    # the seed box recomputes the random directions
    d.seed.value = 5
    d.wait()
    ref = surface(
        obj, None, lv.random_directions(obj, 2, seed=5), span=d.span, n=11, progress=False
    )
    np.testing.assert_allclose(d.surface.loss, ref.loss, rtol=1e-6)
    assert d.errors == []


def test_surface_callback_grows_coarse_to_fine(run):
    model, _, _, data = run
    obj = Objective(model, F.cross_entropy, data)
    seen = []
    s = surface(
        obj,
        n=(17, 17),
        refine=True,
        chunk_size=8,
        progress=False,
        callback=lambda r: seen.append(np.isfinite(r.loss).copy()),
    )
    assert len(seen) == int(np.ceil(17 * 17 / 8))
    counts = [int(m.sum()) for m in seen]
    assert counts == sorted(counts) and counts[-1] == 17 * 17
    # the first points evaluated are the coarse lattice, in coarse_to_fine's order
    first = np.flatnonzero(seen[0].reshape(-1))
    np.testing.assert_array_equal(np.sort(first), np.sort(coarse_to_fine(17, 17)[:8]))
    assert s.objective is obj

    class Stop(Exception):
        pass

    def stop(r):
        if r.n_evaluated >= 16:
            raise Stop

    with pytest.raises(Stop):  # an exception in the callback stops the evaluation
        surface(obj, n=(17, 17), refine=True, chunk_size=8, progress=False, callback=stop)


def test_partial_surfaces_are_drawn_throttled(run):
    model, _, _, data = run
    obj = Objective(model, F.cross_entropy, data)

    def sent_titles(throttle_ms):
        d = dash.landscape(obj, n=17, throttle_ms=throttle_ms, start=False)
        sent = []
        d.fig.comm.send = lambda data=None, metadata=None, buffers=None: sent.append(data)
        d.recompute()
        d.wait()
        ups = [
            m["state"]["_py2js_update"]
            for m in sent
            if m and m.get("state", {}).get("_py2js_update")
        ]
        titles = [u["layout_data"].get("title.text") for u in ups if u.get("layout_data")]
        gaps = [
            u["style_data"]["connectgaps"][0]
            for u in ups
            if "connectgaps" in u.get("style_data", {})
        ]
        return [t for t in titles if t], gaps

    # no throttle: a partial surface per chunk (a drawable one), then the final one
    titles, gaps = sent_titles(0)
    partial = [t for t in titles if "refining" in t]
    assert len(partial) >= 3 and titles[-1] == "loss · random · 17×17"
    assert gaps[0] is True and gaps[-1] is False
    counts = [int(t.rsplit(" ", 1)[1].split("/")[0]) for t in partial]
    assert counts == sorted(counts) and counts[-1] < 17 * 17
    # a long throttle: the first drawable part, then only the final surface
    titles, gaps = sent_titles(60_000)
    assert len(titles) == 2 and "refining" in titles[0]
    assert titles[1] == "loss · random · 17×17"


def test_a_newer_setting_stops_the_running_surface(run):
    model, _, _, data = run
    gate = threading.Event()

    def gated(out, y):  # holds the first computation inside surface()
        gate.wait(10)
        return (out.argmax(-1) == y).double().mean()

    obj = Objective(model, F.cross_entropy, data)
    d = dash.landscape(obj, n=9, metrics=("loss", gated), debounce_ms=0)
    first_key = d._job_key
    d.resolution.value = 11  # replaces the running job
    gate.set()
    d.wait()
    assert d.errors == []
    assert first_key not in d._cache  # stopped, never shown as finished
    assert d.surface.loss.shape == (11, 11) and d.surface.complete
    assert d.fig.layout.title.text == "loss · random · 11×11"
    assert all(not t.is_alive() for t in d._threads)


def test_surface_dashboard_reuses_the_surface(run):
    model, snaps, _, data = run
    obj = Objective(model, F.cross_entropy, data)
    s = surface(obj, n=(9, 9), trajectory=snaps, progress=False)
    assert s.objective is obj
    d = s.dashboard(debounce_ms=0)
    # shown at once, no background work
    assert d._threads == [] and d.direction.value == "given"
    np.testing.assert_allclose(shown_z(d.fig), s.loss)
    np.testing.assert_allclose(np.array(d.fig.data[2].x, dtype=float), s.paths["trajectory"][:, 0])
    # a wider span keeps its center and directions
    d.span_scale.value = 2.0
    d.wait()
    ref = surface(obj, s.center, s.directions, span=((-2, 2), (-2, 2)), n=9, progress=False)
    np.testing.assert_allclose(d.surface.loss, ref.loss, rtol=1e-6)
    assert "trajectory" in d.surface.paths
    # inspect works through the stored objective
    d.inspect(0.0, 0.0)
    d.wait()
    assert d.inspection["values"]["loss"] == pytest.approx(obj.loss(), rel=1e-6)
    assert d.errors == []
    # other directions from the start: computed, the given surface stays one choice
    d = s.dashboard(directions="random", seed=4, n=5)
    d.wait()
    ref = surface(obj, None, lv.random_directions(obj, 2, seed=4), n=5, progress=False)
    np.testing.assert_allclose(d.surface.loss, ref.loss, rtol=1e-6)
    d.direction.value = "given"
    d.wait()
    assert d.surface.loss.shape == (5, 5) and d.fig.layout.title.text == "loss · this surface · 5×5"


def test_surface_without_objective_says_so(run):
    model, _, _, data = run
    obj = Objective(model, F.cross_entropy, data)
    s = surface(obj, n=(5, 5), progress=False)
    s.objective = None
    d = dash.landscape(s, debounce_ms=0)
    np.testing.assert_allclose(shown_z(d.fig), s.loss)
    assert "carries no Objective" in d.status.value
    with pytest.raises(LossvizError, match="no Objective"):
        d.inspect(0.0, 0.0)
    frontend_click(d.fig, 0, 0.0, 0.0)  # from the browser: shown, not raised
    assert "no Objective" in d.status.value
    d.resolution.value = 7
    d.wait()
    assert "no Objective" in d.status.value and d.surface is s and d.errors == []


def test_widget_state_holds_every_trace(run):
    model, snaps, _, data = run
    obj = Objective(model, F.cross_entropy, data)
    d = dash.landscape(obj, trajectory=snaps, directions="pca", n=7)
    d.wait()
    d.inspect(0.0, 0.0)
    d.wait()
    d._repr_mimebundle_()
    for f in (d.fig, d.fig3d, d.slice_fig):
        assert len(f.get_state()["_widget_data"]) == len(f.data)
    # the synced state holds the computed surface and the slices (for views made later)
    z = d.fig.get_state()["_widget_data"][0]["z"]
    np.testing.assert_allclose(np.array(z, dtype=float), d.surface.loss, rtol=1e-6)
    assert len(d.slice_fig.get_state()["_widget_data"][0]["y"]) == 13
    d.close()
    assert d.fig.comm is None and d.resolution.comm is None


def test_bad_input(run):
    model, snaps, (m1, _), data = run
    obj = Objective(model, F.cross_entropy, data)
    with pytest.raises(TypeError, match="Objective"):
        dash.landscape(model)
    with pytest.raises(LossvizError, match="trajectory"):
        dash.landscape(obj, directions="pca", start=False)
    with pytest.raises(LossvizError, match="models"):
        dash.landscape(obj, directions="plane", models=(model, m1), start=False)
    with pytest.raises(LossvizError, match="directions must be"):
        dash.landscape(obj, directions="nope", start=False)
    with pytest.raises(LossvizError, match="kind"):
        dash.landscape(obj, kind="bars", start=False)
    with pytest.raises(LossvizError, match="seed"):
        dash.landscape(obj, seed=-3, start=False)
    with pytest.raises(TypeError, match="seed"):
        dash.landscape(obj, seed="a", start=False)
    with pytest.raises(LossvizError, match="3×3"):
        dash.landscape(obj, n=2, start=False)
    with pytest.raises(LossvizError, match="span"):
        dash.landscape(obj, span=((1, 0), (0, 1)), start=False)
    with pytest.raises(LossvizError, match="at least 2"):
        dash.landscape(obj, trajectory=snaps[:1], start=False)
    d = dash.landscape(obj, start=False)
    with pytest.raises(LossvizError, match="no surface yet"):
        d.inspect(0, 0)
    # a trajectory of 2 checkpoints is drawn but cannot give 2 principal directions
    d = dash.landscape(obj, trajectory=snaps[-2:], n=5)
    d.wait()
    assert "pca" not in [v for _, v in d.direction.options]
    assert "PCA needs trajectory" in d.note.value
    assert len(d.fig.data[2].x) == 2
