"""Weight averages along a run (issue 14 §3): SWA, EMA, LAWA, Switch-EMA and their
comparison, each checked against a direct computation: weighted sums of the state dicts
written out by hand, the EMA recursion written out, a real Switch-EMA training loop, and
losses / Hessians of a fresh model loaded with the average."""

from __future__ import annotations

import copy
import warnings

import numpy as np
import pytest
import torch
from reference import (
    assert_unchanged,
    cnn_case,
    dense_hessian,
    mlp_case,
    reference_loss,
    snapshot,
)
from torch import nn

import lossviz as lv
from lossviz.averaging import average_coefficients, average_trajectory, compare_averages

F = nn.functional
STEPS = [0, 1, 3, 4, 8]  # unequal gaps


@pytest.fixture(scope="module")
def bn_run():
    """Five snapshots of a BatchNorm CNN at unequal steps: parameters and running
    statistics differ between snapshots, and so do the integer batch counters."""
    m, loss_fn, data = cnn_case()
    g = torch.Generator().manual_seed(1)
    pts = {}
    for i, s in enumerate(STEPS):
        st = {k: v.clone() for k, v in m.state_dict().items()}
        for k, v in st.items():
            if v.is_floating_point():
                noise = torch.rand(v.shape, generator=g, dtype=v.dtype)
                st[k] = v + 0.1 * noise if "running_var" in k else v + 0.1 * (noise - 0.5)
            else:
                st[k] = torch.full_like(v, 10 * i + 1)
        pts[s] = st
    return m, loss_fn, data, pts


def hand_sum(states: list[dict], c: list[float]) -> dict:
    """``Σ_i c_i θ_i`` per floating tensor; integer tensors from the last snapshot."""
    out = {}
    for k, v in states[-1].items():
        out[k] = sum(ci * st[k] for ci, st in zip(c, states)) if v.is_floating_point() else v
    return out


def assert_same(w, ref: dict, rtol=1e-12):
    assert list(w.keys()) == list(ref.keys())
    for k in ref:
        assert w[k].dtype == ref[k].dtype, k
        if ref[k].is_floating_point():
            torch.testing.assert_close(w[k], ref[k], rtol=rtol, atol=1e-14)
        else:
            assert torch.equal(w[k], ref[k]), k


def test_swa_and_lawa_are_uniform_means_of_the_tail(bn_run):
    *_, pts = bn_run
    sts = list(pts.values())
    # default start: the later half by position (i >= 5 // 2)
    assert_same(average_trajectory(pts, kind="swa"), hand_sum(sts, [0, 0, 1 / 3, 1 / 3, 1 / 3]))
    # start=4: the snapshots at steps >= 4
    assert_same(average_trajectory(pts, kind="swa", start=4), hand_sum(sts, [0, 0, 0, 0.5, 0.5]))
    assert_same(average_trajectory(pts, kind="lawa", k=2), hand_sum(sts, [0, 0, 0, 0.5, 0.5]))
    assert_same(average_trajectory(pts, kind="lawa", k=5), hand_sum(sts, [0.2] * 5))
    # the integer counters are the last snapshot's, never averaged
    w = average_trajectory(pts, kind="lawa", k=5)
    assert int(w["1.num_batches_tracked"]) == 41


@pytest.mark.parametrize("per", ["step", "snapshot"])
def test_ema_is_the_recursion_written_out(bn_run, per):
    *_, pts = bn_run
    beta = 0.7
    steps = list(pts)
    e = {k: v.clone() for k, v in pts[steps[0]].items()}
    for prev, s in zip(steps, steps[1:]):
        a = beta ** ((s - prev) if per == "step" else 1)
        e = {k: a * e[k] + (1 - a) * v if v.is_floating_point() else v for k, v in pts[s].items()}
    assert_same(average_trajectory(pts, kind="ema", decay=beta, per=per), e)
    # the coefficients: c_i = (1 - β^Δi) Π_{j>i} β^Δj, c_0 = Π_{j>0} β^Δj, summing to 1
    c = average_coefficients(pts, kind="ema", decay=beta, per=per)
    gaps = np.diff(steps) if per == "step" else np.ones(4)
    want = [np.prod(beta**gaps)] + [
        (1 - beta ** gaps[i - 1]) * np.prod(beta ** gaps[i:]) for i in range(1, 5)
    ]
    np.testing.assert_allclose(c, want, rtol=1e-14)
    assert abs(c.sum() - 1) < 1e-14
    # decay 0: the last iterate
    assert_same(
        average_trajectory(pts, kind="ema", decay=0.0),
        hand_sum(list(pts.values()), [0, 0, 0, 0, 1]),
    )


@pytest.mark.parametrize("every", [None, 4])
def test_switch_ema_replay_written_out(bn_run, every):
    *_, pts = bn_run
    beta, steps = 0.6, list(pts)
    fl = [k for k, v in pts[0].items() if v.is_floating_point()]
    u = {k: pts[0][k].clone() for k in fl}
    e = {k: pts[0][k].clone() for k in fl}
    ema = {k: pts[0][k].clone() for k in fl}
    for prev, s in zip(steps, steps[1:]):
        a = beta ** (s - prev)
        u = {k: u[k] + pts[s][k] - pts[prev][k] for k in fl}
        e = {k: a * e[k] + (1 - a) * u[k] for k in fl}
        ema = {k: a * ema[k] + (1 - a) * pts[s][k] for k in fl}
        if every is None or s // every > prev // every:
            u = {k: v.clone() for k, v in e.items()}
    want = {}
    for k, v in pts[8].items():  # BatchNorm statistics get the plain EMA's coefficients
        stat = k.endswith("running_mean") or k.endswith("running_var")
        want[k] = v if not v.is_floating_point() else (ema[k] if stat else e[k])
    with pytest.warns(UserWarning, match="replay"):
        w = average_trajectory(pts, kind="switch_ema", decay=beta, switch_every=every)
    assert_same(w, want)


def test_switch_ema_replay_is_exact_for_updates_that_do_not_depend_on_the_weights():
    """SGD on a loss linear in the weights (a constant gradient): the replay equals a real
    Switch-EMA training loop that copies the EMA into the iterate every 4 steps."""
    g = torch.tensor([0.5, -1.0, 2.0], dtype=torch.float64)
    lr, beta, T = 0.1, 0.8, 4
    theta0 = torch.tensor([1.0, 2.0, 3.0], dtype=torch.float64)
    plain, th = {0: {"w": theta0.clone()}}, theta0.clone()  # the run without switching
    for t in range(1, 13):
        th = th - lr * g
        plain[t] = {"w": th.clone()}
    th, e = theta0.clone(), theta0.clone()  # the real Switch-EMA run
    for t in range(1, 13):
        th = th - lr * g
        e = beta * e + (1 - beta) * th
        if t % T == 0:
            th = e.clone()
    with pytest.warns(UserWarning, match="replay"):
        w = average_trajectory(plain, kind="switch_ema", decay=beta, switch_every=T)
    torch.testing.assert_close(w["w"], e, rtol=1e-13, atol=1e-14)
    # without switching it is the EMA
    with pytest.warns(UserWarning):
        w2 = average_trajectory(plain, kind="switch_ema", decay=beta, switch_every=100)
    torch.testing.assert_close(w2["w"], average_trajectory(plain, kind="ema", decay=beta)["w"])


def test_a_recorder_is_read_like_a_dict_of_its_steps():
    m = nn.Linear(3, 2)
    rec = lv.TrajectoryRecorder(m, every=2)
    opt = torch.optim.SGD(m.parameters(), lr=0.1)
    for _ in range(7):
        opt.zero_grad()
        m(torch.ones(1, 3)).pow(2).sum().backward()
        opt.step()
        rec.step()
    before = snapshot(m)
    as_dict = dict(zip(rec.steps, rec.checkpoints))
    for kw in (dict(kind="ema", decay=0.9), dict(kind="swa"), dict(kind="lawa", k=2)):
        assert_same(average_trajectory(rec, **kw), dict(average_trajectory(as_dict, **kw)))
    assert_unchanged(m, before)


def test_different_architectures_are_named():
    a = {"w": torch.zeros(2, 3), "b": torch.zeros(2)}
    with pytest.raises(lv.CheckpointError, match=r"points\[1\] and points\[0\].*shape.*w"):
        average_trajectory([a, {"w": torch.zeros(3, 3), "b": torch.zeros(2)}])
    with pytest.raises(lv.CheckpointError, match=r"points\[20\] and points\[10\].*only in"):
        average_trajectory({10: a, 20: {"w": torch.zeros(2, 3), "c": torch.zeros(2)}})


@pytest.mark.parametrize(
    "kw, match",
    [
        (dict(kind="nope"), "kind"),
        (dict(kind="ema"), "decay"),
        (dict(kind="ema", decay=1.0), "decay"),
        (dict(kind="ema", decay=-0.1), "decay"),
        (dict(kind="swa", decay=0.9), "decay= is only used"),
        (dict(kind="lawa"), "k="),
        (dict(kind="lawa", k=9), "only 3 snapshots"),
        (dict(kind="lawa", k=0), "k"),
        (dict(kind="swa", start=99), "after the last"),
        (dict(kind="ema", decay=0.9, per="epoch"), "per"),
        (dict(kind="ema", decay=0.9, switch_every=3), "switch_every"),
    ],
)
def test_bad_arguments_are_refused(kw, match):
    pts = {0: {"w": torch.zeros(1)}, 1: {"w": torch.ones(1)}, 2: {"w": torch.ones(1)}}
    with pytest.raises(lv.LossvizError, match=match):
        average_trajectory(pts, **kw)


def test_bad_points_are_refused():
    with pytest.raises(lv.ArgumentTypeError, match="single point"):
        average_trajectory({"w": torch.zeros(1)})
    with pytest.raises(lv.LossvizError, match="increase"):
        average_trajectory(
            {2: {"w": torch.zeros(1)}, 1: {"w": torch.ones(1)}}, kind="ema", decay=0.5
        )
    with pytest.raises(lv.LossvizError, match="numeric steps"):
        average_trajectory(
            {"a": {"w": torch.zeros(1)}, "b": {"w": torch.ones(1)}}, kind="ema", decay=0.5
        )
    # per="snapshot" does not need numeric steps
    w = average_trajectory(
        {"a": {"w": torch.zeros(1)}, "b": {"w": torch.ones(1)}},
        kind="ema",
        decay=0.5,
        per="snapshot",
    )
    assert w["w"].tolist() == [0.5]


# ---- compare_averages ---------------------------------------------------------------
@pytest.fixture(scope="module")
def sgd_run():
    m, loss_fn, data = mlp_case(n=40)
    x, y = data
    opt = torch.optim.SGD(m.parameters(), lr=0.5)
    g = torch.Generator().manual_seed(0)
    pts = {}
    for t in range(30):
        idx = torch.randint(0, len(x), (8,), generator=g)
        opt.zero_grad()
        loss_fn(m(x[idx]), y[idx]).backward()
        opt.step()
        if t % 3 == 0:
            pts[t] = {k: v.detach().clone() for k, v in m.state_dict().items()}
    for p in m.parameters():
        p.grad = None
    return m, loss_fn, data, pts


def by_hand(model, loss_fn, data, state, bn="average"):
    x, y = data
    mm = copy.deepcopy(model)
    mm.load_state_dict(state)
    with torch.no_grad():
        if bn == "recompute":
            for mod in mm.modules():
                if isinstance(mod, nn.modules.batchnorm._BatchNorm):
                    mod.reset_running_stats()
                    mod.momentum = None
                    mod.train()
            mm(x)
        mm.eval()
        loss = float(reference_loss(mm, loss_fn, data))
        acc = float((mm(x).argmax(-1) == y).double().mean())
    return mm, loss, acc


def test_compare_averages_against_direct_computation(sgd_run, tmp_path):
    m, loss_fn, data, pts = sgd_run
    obj = lv.Objective(m, loss_fn, data)
    before = snapshot(m)
    r = compare_averages(obj, pts, ema_decays=(0.8,), lawa_k=3, rho=0.02, progress=False)
    assert_unchanged(m, before)
    assert r.names == ["last", "swa", "ema(0.8)", "lawa(3)"] and r.complete
    sts, steps = list(pts.values()), list(pts)
    n = len(sts)
    hand = {
        "last": sts[-1],
        "swa": hand_sum(sts, [0.0] * (n // 2) + [1 / (n - n // 2)] * (n - n // 2)),
        "lawa(3)": hand_sum(sts, [0.0] * (n - 3) + [1 / 3] * 3),
    }
    e = sts[0]
    for prev, s, st in zip(steps, steps[1:], sts[1:]):
        a = 0.8 ** (s - prev)
        e = {k: a * e[k] + (1 - a) * st[k] for k in st}
    hand["ema(0.8)"] = e
    for i, name in enumerate(r.names):
        mm, loss, acc = by_hand(m, loss_fn, data, hand[name])
        assert r.loss[i] == pytest.approx(loss, rel=1e-10), name
        assert r.accuracy[i] == pytest.approx(acc, abs=1e-12), name
        H = dense_hessian(mm, loss_fn, data)
        lam = torch.linalg.eigvalsh(H)
        assert r.lambda_max[i] == pytest.approx(float(lam[-1]), rel=1e-3), name
        tr = float(torch.trace(H))
        assert abs(r.trace[i] - tr) <= 5 * r.trace_stderr[i] + 1e-9, name
        np.testing.assert_allclose(
            r.coefficients[i] @ np.stack([st["0.weight"].numpy().ravel() for st in sts]),
            hand[name]["0.weight"].numpy().ravel(),
            rtol=1e-12,
        )
    if r.sharpness is not None:  # the column is lv.sharpness at each point
        s = lv.sharpness(obj, 0.02, kind="worst", at=hand["swa"], seed=0, progress=False)
        assert r.sharpness[1] == pytest.approx(s.value, rel=1e-9)
    else:
        assert any("sharpness" in note for note in r.notes)
    # readable, plotted, saved
    text = repr(r)
    assert "swa" in text and "ema(0.8)" in text and "λ_max" in text
    fig = r.plot()
    bars = {tr.name: list(tr.y) for tr in fig.data}
    np.testing.assert_allclose(bars["loss"], r.loss)
    np.testing.assert_allclose(bars["λ_max"], r.lambda_max)
    assert len(r.plot("coefficients").data) == len(r.names)
    r.save(tmp_path / "avg.npz")
    back = lv.load(tmp_path / "avg.npz")
    assert type(back) is type(r) and back.names == r.names and back.labels == r.labels
    for f in ("loss", "accuracy", "lambda_max", "trace", "trace_stderr", "coefficients"):
        np.testing.assert_array_equal(getattr(back, f), getattr(r, f))
    assert repr(back) == repr(r)


def test_compare_averages_batchnorm_recompute(bn_run):
    m, loss_fn, data, pts = bn_run
    obj = lv.Objective(m, loss_fn, data)
    before = snapshot(m)
    for bn in ("average", "recompute"):
        r = compare_averages(
            obj,
            pts,
            ema_decays=(0.5,),
            lawa_k=2,
            curvature=False,
            sharpness=False,
            bn=bn,
            progress=False,
        )
        sts = list(pts.values())
        swa = hand_sum(sts, [0, 0, 1 / 3, 1 / 3, 1 / 3])
        _, loss, acc = by_hand(m, loss_fn, data, swa, bn=bn)
        assert r.loss[1] == pytest.approx(loss, rel=1e-9)
        assert r.accuracy[1] == pytest.approx(acc, abs=1e-12)
        _, loss, _ = by_hand(m, loss_fn, data, sts[-1], bn=bn)
        assert r.loss[0] == pytest.approx(loss, rel=1e-9)
        assert np.isnan(r.lambda_max).all() and r.bn == bn
    assert_unchanged(m, before)


def test_compare_averages_refuses_bad_input_before_work(sgd_run, bn_run):
    m, loss_fn, data, pts = sgd_run
    obj = lv.Objective(m, loss_fn, data)
    with pytest.raises(lv.LossvizError, match="rho"):
        compare_averages(obj, pts, rho=0)
    with pytest.raises(lv.LossvizError, match="ema_decays"):
        compare_averages(obj, pts, ema_decays=(1.5,))
    with pytest.raises(lv.LossvizError, match="only 10 snapshots"):
        compare_averages(obj, pts, lawa_k=11)
    with pytest.raises(lv.LossvizError, match="bn_data"):
        compare_averages(obj, pts, bn_data=data)
    with pytest.raises(lv.ArgumentTypeError, match="Objective"):
        compare_averages(m, pts)
    with pytest.raises(lv.LossvizError, match="no BatchNorm"):
        compare_averages(obj, pts, bn="recompute")
    with pytest.raises(lv.CheckpointError, match="does not match"):
        compare_averages(obj, bn_run[3])  # checkpoints of another model


def test_switch_rows_warn(sgd_run):
    m, loss_fn, data, pts = sgd_run
    obj = lv.Objective(m, loss_fn, data)
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        r = compare_averages(
            obj,
            pts,
            ema_decays=(),
            lawa_k=None,
            switch_decays=(0.5,),
            curvature=False,
            sharpness=False,
            progress=False,
        )
    assert r.names == ["last", "swa", "switch_ema(0.5)"]
    assert any("replay" in str(x.message) for x in w)


# ---- the dashboard is a view of the kernels ------------------------------------------
def test_dashboard_draws_the_kernels_numbers(sgd_run):
    pytest.importorskip("ipywidgets")
    pytest.importorskip("anywidget")
    from lossviz import dash

    m, loss_fn, data, pts = sgd_run
    obj = lv.Objective(m, loss_fn, data)
    before = snapshot(m)
    d = dash.averaging(obj, pts, decay=0.9, k=3)
    d.wait()
    assert d.errors == []

    def check(decay, k):
        ref = compare_averages(
            obj, pts, ema_decays=(decay,), lawa_k=k, sharpness=False, progress=False
        )
        shown = d.shown()
        for row, name in (
            ("last", "last"),
            ("swa", "swa"),
            ("ema", f"ema({decay:g})"),
            ("lawa", f"lawa({k})"),
        ):
            i = ref.names.index(name)
            assert shown[row]["loss"] == ref.loss[i]
            assert shown[row]["accuracy"] == ref.accuracy[i]
            assert shown[row]["λ_max"] == pytest.approx(ref.lambda_max[i], rel=1e-9)
        # the bars are those numbers
        for tr, metric in zip(d.fig_bars.data, d.metrics):
            assert list(tr.y) == [shown[r][metric] for r in ("last", "swa", "ema", "lawa")]
        # the coefficient lines are average_coefficients'
        want = {
            "swa": average_coefficients(pts, kind="swa"),
            "ema": average_coefficients(pts, kind="ema", decay=decay),
            "lawa": average_coefficients(pts, kind="lawa", k=k),
        }
        for tr in d.fig_coef.data:
            np.testing.assert_array_equal(np.asarray(tr.y), want[tr.name])

    check(0.9, 3)
    d.decay.value = 0.99
    d.k.value = 5
    d.wait()
    assert d.errors == []
    check(0.99, 5)
    assert_unchanged(m, before)
    with pytest.raises(lv.LossvizError, match="slider"):
        dash.averaging(obj, pts, decay=0.42)
    with pytest.raises(lv.LossvizError, match="only 10 snapshots"):
        dash.averaging(obj, pts, k=11)
    d.close()


def test_interrupt_keeps_the_rows_done(sgd_run, monkeypatch):
    import lossviz.hessian

    m, loss_fn, data, pts = sgd_run
    obj = lv.Objective(m, loss_fn, data)
    before = snapshot(m)
    real, calls = lossviz.hessian.hessian_eigs, []

    def eigs(*a, **kw):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(*a, **kw)

    monkeypatch.setattr(lossviz.hessian, "hessian_eigs", eigs)
    r = compare_averages(obj, pts, ema_decays=(0.8,), lawa_k=2, sharpness=False, progress=False)
    assert not r.complete and "INCOMPLETE" in repr(r)
    assert np.isfinite(r.lambda_max[0]) and np.isnan(r.lambda_max[1:]).all()
    assert np.isnan(r.loss[2:]).all()
    assert_unchanged(m, before)
