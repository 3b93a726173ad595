"""Browser-free tests of lossviz.dash.subspace (the live SubspaceTracker monitor) and of the
tracker's listener mechanism: build the dashboard on a tiny MLP, train with the loop in
the same thread and in another thread, move the widgets, compare every drawn number with
the tracker's history and with direct kernel calls."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest
import torch
from torch import nn

pytest.importorskip("ipywidgets")
pytest.importorskip("anywidget")

from reference import assert_unchanged, snapshot  # noqa: E402
from widget_messages import frontend_update  # noqa: E402

import lossviz.subspace as lsub  # noqa: E402
from lossviz import Objective, dash, hessian_eigs  # noqa: E402
from lossviz.dash._subspace import (  # noqa: E402
    FRAC,
    FRAC_AVG,
    FRAC_DATA,
    LAM,
    LOSS,
    LOSS_AVG,
    THR,
    TWO,
    SubspaceDashboard,
    _log_ticks,
)
from lossviz.data import digits, mlp  # noqa: E402
from lossviz.errors import LossvizError  # noqa: E402
from lossviz.subspace import SubspaceTracker, gradient_fraction  # noqa: E402

CE = nn.functional.cross_entropy
TRACK = ("gradient_fraction", "overlap", "lambda_max")


@pytest.fixture(scope="module")
def data():
    x, y = digits()
    return x[:300], y[:300]


def setup(data, *, momentum=0.0, full=False, k=3, every=5, optimizer=True, **kw):
    model = mlp((64, 16, 10), nn.Tanh, seed=0)
    opt = torch.optim.SGD(model.parameters(), lr=0.3, momentum=momentum)
    tr = SubspaceTracker(
        model,
        CE,
        k=k,
        every=every,
        data=data if full else None,
        optimizer=opt if optimizer else None,
        track=TRACK,
        **kw,
    )
    return model, opt, tr


def train(model, opt, tr, data, n, *, seed=0, sleep=0.0, on_step=None):
    x, y = data
    g = torch.Generator().manual_seed(seed + len(tr.history))
    for i in range(n):
        idx = torch.randint(0, len(y), (64,), generator=g)
        opt.zero_grad()
        loss = CE(model(x[idx]), y[idx])
        loss.backward()
        opt.step()
        tr.step((x[idx], y[idx]), loss=loss)
        if on_step is not None:
            on_step(i)
        if sleep:
            time.sleep(sleep)
    return (x[idx], y[idx])


def moving_average(y, w):
    y = np.asarray(y, dtype=float)
    return np.array([np.nanmean(y[max(0, i - w + 1) : i + 1]) for i in range(len(y))])


def col(tr, key):
    return [r.get(key) for r in tr.history]


def ys(trace):
    return np.array([np.nan if v is None else v for v in trace.y], dtype=float)


# ---- the tracker's listeners -----------------------------------------------------------
def test_listeners_are_called_and_never_break_training(data):
    model, opt, tr = setup(data)
    seen = []

    def boom(tracker, rec):
        raise ValueError("listener bug")

    remove = tr.add_listener(lambda t, r: seen.append((r["step"], r["refreshed"])))
    tr.add_listener(boom)
    with pytest.warns(RuntimeWarning, match="listener bug"):
        train(model, opt, tr, data, 6)
    assert seen == [(i, i % 5 == 0) for i in range(6)]
    assert len(tr.listener_errors) == 6 and "ValueError: listener bug" in tr.listener_errors[0]
    remove()
    tr.remove_listener(boom)
    train(model, opt, tr, data, 2)
    assert len(seen) == 6 and len(tr.history) == 8
    with pytest.raises(TypeError, match="callable"):
        tr.add_listener(3)


def test_minibatch_refresh_reuses_one_objective(data, monkeypatch):
    """Without data=, each refresh swaps the batch into the step Objective (no new copy of
    the model); the eigenvalues are those of that batch's Hessian."""
    made = []

    class Counting(Objective):
        def __init__(self, *a, **kw):
            made.append(1)
            super().__init__(*a, **kw)

    monkeypatch.setattr(lsub, "Objective", Counting)
    model, opt, tr = setup(data, k=1, every=2, tol=1e-8)
    batch = train(model, opt, tr, data, 5)  # refreshes at steps 0, 2, 4
    assert len(made) == 1
    direct = hessian_eigs(Objective(model, CE, batch, bn="train"), 1, tol=1e-8, progress=False)
    assert tr.history[4]["lambda_max"] == pytest.approx(float(direct.values[0]), rel=1e-5)


def test_overlap_matrix_cache_equals_direct_computation(data):
    model, opt, tr = setup(data, every=1, max_subspaces=4)
    train(model, opt, tr, data, 4)
    s1, m1 = tr.overlap_matrix()
    train(model, opt, tr, data, 5)  # thinned: the first and the last are kept
    steps, M = tr.overlap_matrix()
    Vs = torch.stack([V for _, V in tr._subspaces]).to(torch.float64)
    direct = torch.einsum("ikp,jlp->ijkl", Vs, Vs).pow(2).sum((-1, -2)) / Vs.shape[1]
    np.testing.assert_allclose(M, direct.numpy(), rtol=1e-12, atol=1e-14)
    assert steps[0] == 0 and steps[-1] == 8 and len(steps) <= 4
    common = [s for s in s1 if s in steps]
    i1, i2 = [s1.index(s) for s in common], [steps.index(s) for s in common]
    np.testing.assert_array_equal(m1[np.ix_(i1, i1)], M[np.ix_(i2, i2)])


# ---- the dashboard ----------------------------------------------------------------------
def test_figures_show_the_trackers_numbers(data):
    model, opt, tr = setup(data, momentum=0.5, full=True, k=4, every=5)
    d = dash.subspace(tr, every_s=0, smooth=4)
    assert isinstance(d, SubspaceDashboard)
    train(model, opt, tr, data, 21)  # the last record (step 20) is a refresh
    d.wait()
    assert d.errors == [] and tr.listener_errors == []
    steps = list(range(21))
    f = d.fig.data
    assert list(f[FRAC].x) == steps
    np.testing.assert_array_equal(ys(f[FRAC]), col(tr, "gradient_fraction"))
    np.testing.assert_allclose(
        ys(f[FRAC_AVG]), moving_average(col(tr, "gradient_fraction"), 4), rtol=1e-12
    )
    ref = [r for r in tr.history if r["refreshed"]]
    assert list(f[FRAC_DATA].x) == [0, 5, 10, 15, 20]
    assert list(f[FRAC_DATA].y) == [r["gradient_fraction_data"] for r in ref]
    assert list(f[LAM].x) == [0, 5, 10, 15, 20]
    assert list(f[LAM].y) == [r["lambda_max"] for r in ref]
    assert list(f[TWO].y) == col(tr, "two_over_lr") and f[TWO].y[0] == pytest.approx(2 / 0.3)
    assert f[THR].visible and list(f[THR].y) == col(tr, "stability_threshold")
    np.testing.assert_array_equal(ys(f[LOSS]), col(tr, "train_loss"))
    np.testing.assert_allclose(ys(f[LOSS_AVG]), moving_average(col(tr, "train_loss"), 4))
    lay = d.fig.layout.yaxis3  # a positive loss: log axis, ticks 1, 2, 5 × 10^k
    losses = col(tr, "train_loss")
    expected = _log_ticks(np.array(losses))
    assert lay.type == "log" and lay.tickvals == (expected and tuple(expected))
    assert lay.ticktext == (expected and tuple(f"{t:g}" for t in expected))
    for y, ticks in (
        ([0.06, 0.5], [0.1, 0.2, 0.5]),
        ([0.06, 0.13], [0.06, 0.07, 0.08, 0.09, 0.1]),
        ([0.04, 2.3], [0.05, 0.1, 0.2, 0.5, 1, 2]),
    ):
        assert _log_ticks(np.array(y)) == ticks
    hs, M = tr.overlap_matrix()
    assert list(d.heat.data[0].x) == hs == list(d.heat.data[0].y)
    np.testing.assert_array_equal(np.array(d.heat.data[0].z, dtype=float), M)
    # direct kernel calls at the current weights (= those of the last record)
    obj = Objective(model, CE, data, bn="train")
    lam = float(hessian_eigs(obj, 4, tol=1e-6, progress=False).values[0])
    assert f[LAM].y[-1] == pytest.approx(lam, rel=1e-3)
    assert f[FRAC_DATA].y[-1] == pytest.approx(
        gradient_fraction(obj.gradient(), tr.subspace), rel=1e-6
    )
    # readouts
    r = d.readout.value
    last = ref[-1]
    assert f"{last['lambda_max']:.4g}" in r and f"{2 / 0.3:.4g}" in r
    assert f"{last['lambda_max'] * 0.3 / 2:.4g}" in r
    assert f"{tr.history[-1]['gradient_fraction']:.4g}" in r
    assert "21 steps recorded · 5 refreshes" in d.status.value
    # the user's model is never changed by the dashboard
    before = snapshot(model)
    d.update()
    d.smooth.value = 7
    frontend_update(d.steps, value=[3, 12])
    d.close()
    assert_unchanged(model, before)


def test_sliders_change_the_figures(data):
    model, opt, tr = setup(data)
    d = dash.subspace(tr, every_s=0, smooth=1)
    train(model, opt, tr, data, 30)
    d.wait()
    f = d.fig.data
    np.testing.assert_array_equal(ys(f[FRAC_AVG]), ys(f[FRAC]))
    # one combined plotly message per slider move (batch_update)
    sent = []
    d.fig.comm.send = lambda data=None, metadata=None, buffers=None: sent.append(data)
    frontend_update(d.smooth, value=6)
    assert d.smooth.value == 6
    assert len([m for m in sent if m and m.get("state", {}).get("_py2js_update")]) == 1
    np.testing.assert_allclose(ys(f[FRAC_AVG]), moving_average(col(tr, "gradient_fraction"), 6))
    assert f[FRAC_AVG].name == "moving average (6)"
    # the step range (percent of the run) zooms every panel and the heatmap
    frontend_update(d.steps, value=[27.5, 72.5])  # of steps 0..29: 8..21
    assert d.view_range() == (8, 21)
    assert list(f[FRAC].x) == list(range(8, 22)) and list(f[LAM].x) == [10, 15, 20]
    assert tuple(d.fig.layout.xaxis3.range) == (8, 21)
    assert list(d.heat.data[0].x) == [10, 15, 20]
    assert np.array(d.heat.data[0].z).shape == (3, 3)
    assert d.range_label.value.startswith("8 – 21")
    # the average still uses the steps before the range
    np.testing.assert_allclose(
        ys(f[FRAC_AVG]), moving_average(col(tr, "gradient_fraction"), 6)[8:22]
    )
    # the range is a fraction of the run: it grows with it; at 100 % the newest step
    train(model, opt, tr, data, 10)
    d.wait()
    assert d.view_range() == (11, 28) and f[FRAC].x[-1] == 28  # of 0..39
    frontend_update(d.steps, value=[27.5, 100])
    train(model, opt, tr, data, 3)
    d.wait()
    assert d.view_range() == (12, 42) and f[FRAC].x[-1] == 42  # 27.5 % of 42 = 11.55
    # the kernel never moves the slider (stale echoes from a dragged slider would win)
    assert d.steps.value == (27.5, 100)
    # every trace is in the synced widget state (a view created later shows them)
    d.update()
    for fig in (d.fig, d.heat):
        st = fig.get_state()["_widget_data"]
        assert len(st) == len(fig.data)
    assert d.fig.get_state()["_widget_data"][FRAC]["x"][-1] == 42
    d.close()


def test_window_and_thinning(data):
    model, opt, tr = setup(data, every=10)
    d = dash.subspace(tr, every_s=0, window=10, max_points=4)
    train(model, opt, tr, data, 25)
    d.wait()
    assert d.view_range() == (15, 24)
    x = list(d.fig.data[FRAC].x)
    assert x == [15, 18, 21, 24]  # every 3rd step of the 10 shown, and the last
    assert list(d.fig.data[FRAC].y) == [tr.history[s]["gradient_fraction"] for s in x]
    assert list(d.fig.data[LAM].x) == [20]
    d.close()


def test_redraws_are_throttled_and_end_on_the_last_step(data):
    model, opt, tr = setup(data, every=10)
    reads = []
    records = tr.records
    tr.records = lambda start=0: reads.append(start) or records(start)
    d = dash.subspace(tr, every_s=0.25)
    n0 = d.n_draws
    t0 = time.monotonic()
    train(model, opt, tr, data, 40, sleep=0.02)
    elapsed = time.monotonic() - t0
    d.wait()
    draws = d.n_draws - n0
    # at most one draw (and one host read) per every_s, plus the trailing one
    assert 2 <= draws <= elapsed / 0.25 + 2
    assert len(reads) == d.n_draws
    assert list(d.fig.data[FRAC].x) == list(range(40))  # the last step is drawn
    d.close()


def test_live_while_the_loop_runs_in_the_same_thread(data):
    """The notebook case: the loop runs in the cell, draws come from the dashboard's
    threads while it runs."""
    model, opt, tr = setup(data, every=10)
    d = dash.subspace(tr, every_s=0.05)
    counts = []
    train(
        model,
        opt,
        tr,
        data,
        40,
        sleep=0.01,
        on_step=lambda i: counts.append(len(d.fig.data[FRAC].x)),
    )
    d.wait()
    seen = sorted(set(counts))
    assert len(seen) >= 3 and seen[-1] < 40  # it grew while the loop ran
    assert list(d.fig.data[FRAC].x) == list(range(40))
    np.testing.assert_array_equal(ys(d.fig.data[FRAC]), col(tr, "gradient_fraction"))
    d.close()


def test_live_while_the_loop_runs_in_a_thread(data):
    model, opt, tr = setup(data, every=10)
    d = dash.subspace(tr, every_s=0.05, smooth=3)
    th = threading.Thread(target=train, args=(model, opt, tr, data, 50), kwargs={"sleep": 0.01})
    th.start()
    counts = []
    w = 3
    while th.is_alive():
        counts.append(len(d.fig.data[FRAC].x))
        w = 2 + (w % 5)
        frontend_update(d.smooth, value=w)  # the user moves a slider meanwhile
        time.sleep(0.03)
    th.join()
    d.wait()
    assert d.errors == [] and tr.listener_errors == []
    assert len(set(counts)) >= 3
    assert list(d.fig.data[FRAC].x) == list(range(50))
    np.testing.assert_allclose(
        ys(d.fig.data[FRAC_AVG]), moving_average(col(tr, "gradient_fraction"), w)
    )
    assert d.fig.data[LAM].x == (0, 10, 20, 30, 40)
    d.close()


def test_pause_and_resume(data):
    model, opt, tr = setup(data)
    d = dash.subspace(tr, every_s=0)
    train(model, opt, tr, data, 5)
    d.wait()
    d.pause.value = True
    assert d.pause.description == "resume redraws" and "paused" in d.status.value
    n = d.n_draws
    train(model, opt, tr, data, 5)
    d.wait()
    assert d.n_draws == n and len(d.fig.data[FRAC].x) == 5
    d.pause.value = False
    d.wait()
    assert len(d.fig.data[FRAC].x) == 10 and "paused" not in d.status.value
    d.close()


def test_lr_changes_move_the_threshold_and_no_optimizer(data):
    model, opt, tr = setup(data)
    d = tr.dashboard(every_s=0)
    assert isinstance(d, SubspaceDashboard)
    train(model, opt, tr, data, 4)
    for g in opt.param_groups:
        g["lr"] = 0.1
    train(model, opt, tr, data, 4)
    d.wait()
    two = d.fig.data[TWO].y
    assert two[:4] == (pytest.approx(2 / 0.3),) * 4 and two[4:] == (pytest.approx(20.0),) * 4
    assert not d.fig.data[THR].visible
    d.close()
    model, opt, tr = setup(data, optimizer=False)
    d = dash.subspace(tr, every_s=0)
    train(model, opt, tr, data, 3)
    d.wait()
    assert all(v is None for v in d.fig.data[TWO].y)
    assert "give the tracker optimizer=" in d.readout.value
    assert d.fig.data[LAM].y[0] == tr.history[0]["lambda_max"]
    d.close()


def test_errors_are_shown_and_training_goes_on(data):
    model, opt, tr = setup(data, every=2)
    d = dash.subspace(tr, every_s=0)

    def broken():
        raise RuntimeError("overlap failed")

    tr.overlap_matrix = broken
    train(model, opt, tr, data, 4)
    d.wait()
    assert len(tr.history) == 4
    assert any("overlap failed" in e for e in d.errors)
    assert "error: RuntimeError: overlap failed" in d.status.value
    d.close()
    assert tr._listeners == []


def test_bad_input(data):
    _, _, tr = setup(data)
    with pytest.raises(TypeError, match="SubspaceTracker"):
        dash.subspace(object())
    with pytest.raises(LossvizError, match="every_s"):
        dash.subspace(tr, every_s=-1)
    with pytest.raises(LossvizError, match="window"):
        dash.subspace(tr, window=0)
    with pytest.raises(LossvizError, match="smooth"):
        dash.subspace(tr, smooth=0)
    assert tr._listeners == []


def test_front_end_messages_wait_for_a_draw_in_progress(data):
    """A browser message is applied under the draw lock: applying it merges the changes
    made meanwhile to a trait, which would drop a figure update sent from a draw thread."""
    model, opt, tr = setup(data)
    d = dash.subspace(tr, every_s=0)
    train(model, opt, tr, data, 3)
    d.wait()
    msgs = [
        (d.steps, {"value": [50, 100]}),
        (d.fig, {"_js2py_layoutDelta": None}),
        (d.heat, {"_js2py_traceDeltas": None}),
    ]
    for w, state in msgs:
        held = threading.Event()

        def hold(held=held):
            with d._draw_lock:
                held.set()
                time.sleep(0.3)

        th = threading.Thread(target=hold)
        th.start()
        held.wait()
        t0 = time.monotonic()
        w.comm._msg_callback(
            {
                "content": {"data": {"method": "update", "state": state, "buffer_paths": []}},
                "buffers": [],
            }
        )
        assert time.monotonic() - t0 >= 0.2
        th.join()
    assert d.steps.value == (50, 100) and list(d.fig.data[FRAC].x) == [1, 2]
    d.close()
