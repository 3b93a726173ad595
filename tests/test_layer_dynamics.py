"""TrajectoryRecorder.layer_dynamics: distance from initialisation and relative update size
per layer, against a hand computation with torch.linalg.norm on the stored state dicts."""

import warnings

import numpy as np
import pytest
import torch
from reference import assert_unchanged, snapshot
from torch import nn

import lossviz as lv
from lossviz.errors import LossvizError
from lossviz.trajectory import LayerDynamics, TrajectoryRecorder

mse = nn.functional.mse_loss


def setup(seed=0, bn=False):
    torch.manual_seed(seed)
    layers = [nn.Linear(4, 6), nn.Tanh(), nn.Linear(6, 2)]
    if bn:
        layers.insert(1, nn.BatchNorm1d(6))
    model = nn.Sequential(*layers).double()
    g = torch.Generator().manual_seed(seed + 1)
    x = torch.randn(40, 4, generator=g, dtype=torch.float64)
    y = torch.randn(40, 2, generator=g, dtype=torch.float64)
    return model, x, y


def train(model, x, y, steps, rec, lr=0.2):
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.5)
    for _ in range(steps):
        rec.step()
        opt.zero_grad()
        mse(model(x), y).backward()
        opt.step()
    rec.snapshot()


def group_vec(state, names):
    return torch.cat([state[n].reshape(-1).to(torch.float64) for n in names])


def hand(checkpoints, groups):
    """(distance, relative distance, update, relative update) by plain torch.linalg.norm."""
    n, m = len(checkpoints), len(groups)
    dist, rdist = np.zeros((n, m)), np.zeros((n, m))
    upd, rupd = np.full((n, m), np.nan), np.full((n, m), np.nan)
    for j, names in enumerate(groups.values()):
        v0 = group_vec(checkpoints[0], names)
        for i, c in enumerate(checkpoints):
            v = group_vec(c, names)
            dist[i, j] = torch.linalg.norm(v - v0)
            rdist[i, j] = torch.linalg.norm(v - v0) / torch.linalg.norm(v0)
            if i:
                p = group_vec(checkpoints[i - 1], names)
                upd[i, j] = torch.linalg.norm(v - p)
                rupd[i, j] = torch.linalg.norm(v - p) / torch.linalg.norm(p)
    return dist, rdist, upd, rupd


def check_against_hand(d, checkpoints, groups):
    dist, rdist, upd, rupd = hand(checkpoints, groups)
    np.testing.assert_allclose(d.distance, dist, rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(d.relative_distance, rdist, rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(d.update, upd, rtol=1e-12)
    np.testing.assert_allclose(d.relative_update, rupd, rtol=1e-12)


def test_exact_against_hand_computation_per_module():
    model, x, y = setup()
    rec = TrajectoryRecorder(model, every=1, max_points=100)
    train(model, x, y, 12, rec)
    d = rec.layer_dynamics()
    assert isinstance(d, LayerDynamics)
    assert d.steps == rec.steps == list(range(13))
    assert d.groups == ["0", "2"]
    assert d.members == {"0": ["0.weight", "0.bias"], "2": ["2.weight", "2.bias"]}
    check_against_hand(d, rec.checkpoints, d.members)
    # the first snapshot is the initialisation (recorded before the first update)
    torch.manual_seed(0)
    init = nn.Sequential(nn.Linear(4, 6), nn.Tanh(), nn.Linear(6, 2)).double().state_dict()
    for n, t in init.items():
        torch.testing.assert_close(rec.checkpoints[0][n], t, rtol=0, atol=0)
    # the last row is the final model
    final = {n: p.detach() for n, p in model.named_parameters()}
    v, v0 = group_vec(final, d.members["2"]), group_vec(init, d.members["2"])
    assert d.distance[-1, 1] == pytest.approx(float(torch.linalg.norm(v - v0)), rel=1e-12)
    assert d.spacing == 1 and d.resolution == 0.0
    assert np.all(d.distance[0] == 0) and np.all(np.isnan(d.update[0]))
    assert np.all(d.distance[1:] > 0) and np.all(d.relative_update[1:] > 0)


def test_groups_per_parameter_and_by_mapping():
    model, x, y = setup(1)
    rec = TrajectoryRecorder(model, every=2, max_points=100)
    train(model, x, y, 9, rec)
    assert rec.steps == [0, 2, 4, 6, 8, 9]
    per = rec.layer_dynamics("parameter")
    names = [n for n, _ in model.named_parameters()]
    assert per.groups == names
    check_against_hand(per, rec.checkpoints, {n: [n] for n in names})
    groups = {"weights": ["0.weight", "2.weight"], "last bias": "2.bias"}
    mine = rec.layer_dynamics(groups)
    assert mine.members == {"weights": ["0.weight", "2.weight"], "last bias": ["2.bias"]}
    check_against_hand(mine, rec.checkpoints, mine.members)


def test_buffers_are_not_weights():
    model, x, y = setup(2, bn=True)
    rec = TrajectoryRecorder(model, every=1, max_points=50)
    train(model, x, y, 5, rec)
    assert "1.running_mean" in rec.checkpoints[0]  # recorded, but not a weight
    d = rec.layer_dynamics()
    assert d.members["1"] == ["1.weight", "1.bias"]
    check_against_hand(d, rec.checkpoints, d.members)


def test_thinned_snapshots_give_the_numbers_of_the_kept_ones():
    model, x, y = setup(3)
    full_model, _, _ = setup(3)
    thin = TrajectoryRecorder(model, every=1, max_points=4)
    full = TrajectoryRecorder(full_model, every=1, max_points=1000)
    train(model, x, y, 20, thin)
    train(full_model, x, y, 20, full)
    assert thin.steps[0] == 0 and len(thin) <= 4 and thin.steps != full.steps
    d, f = thin.layer_dynamics(), full.layer_dynamics()
    check_against_hand(d, thin.checkpoints, d.members)
    assert d.spacing == thin._spacing > 1
    # distance from initialisation: the same number as in the full recording at that step
    rows = [full.steps.index(s) for s in d.steps]
    np.testing.assert_allclose(d.distance, f.distance[rows], rtol=1e-12, atol=1e-15)
    # an update spans the steps between kept snapshots: larger than any one-step update
    gap = np.diff(d.steps)
    assert np.all(gap[:-1] == gap[0]) and gap[0] > 1
    assert np.all(d.update[1] > f.update[1 : gap[0] + 1].max(axis=0))


def test_float16_storage_warns_and_is_exact_for_the_rounded_snapshots():
    model, x, y = setup(4)
    rec = TrajectoryRecorder(model, every=1, max_points=100, dtype=torch.float16)
    train(model, x, y, 6, rec)
    with pytest.warns(UserWarning, match="float16"):
        d = rec.layer_dynamics()
    assert d.resolution == 2.0**-11
    check_against_hand(d, rec.checkpoints, d.members)
    assert "rounded snapshots" in repr(d)
    fig = d.plot()
    (line,) = fig.layout.shapes
    assert line.y0 == line.y1 == 2 * 2.0**-11
    # stored in the model's own dtype: no warning, exact copies
    exact = TrajectoryRecorder(model, dtype=torch.float64)
    exact.snapshot()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert exact.layer_dynamics().resolution == 0.0


def test_zero_initialised_layer_has_undefined_relative_sizes():
    model, x, y = setup(5)
    with torch.no_grad():
        model[2].weight.zero_()
        model[2].bias.zero_()
    rec = TrajectoryRecorder(model)
    train(model, x, y, 3, rec)
    d = rec.layer_dynamics()
    assert np.all(np.isnan(d.relative_distance[:, 1]))
    assert np.isnan(d.relative_update[1, 1])  # the update away from zero weights
    assert np.isfinite(d.relative_update[2:, 1]).all()  # later ones are defined
    assert d.distance[-1, 1] > 0 and np.isfinite(d.relative_distance[:, 0]).all()
    assert "undefined" in repr(d) and "'2'" in repr(d)


def test_recorder_and_layer_dynamics_leave_the_model_alone():
    model, x, y = setup(6)
    model.train()
    for p in model.parameters():
        p.grad = torch.ones_like(p)
    model[0].bias.requires_grad_(False)
    rec = TrajectoryRecorder(model, every=1)
    before = snapshot(model)
    rec.step()
    rec.snapshot()
    d = rec.layer_dynamics()
    d.plot()
    d._repr_html_()
    assert_unchanged(model, before)
    with pytest.raises(LossvizError):
        rec.layer_dynamics({"a": ["nope"]})
    assert_unchanged(model, before)
    assert np.all(d.distance == 0)


def test_plot_table_and_round_trip(tmp_path):
    model, x, y = setup(7)
    rec = TrajectoryRecorder(model, every=1)
    train(model, x, y, 4, rec)
    d = rec.layer_dynamics()
    fig = d.plot()
    assert [t.name for t in fig.data] == ["0", "0", "2", "2"]
    for j in range(2):
        top, bottom = fig.data[2 * j], fig.data[2 * j + 1]
        assert list(top.x) == d.steps
        np.testing.assert_array_equal(top.y, d.relative_distance[:, j])
        np.testing.assert_array_equal(bottom.y, d.relative_update[:, j])
    assert fig.layout.yaxis2.type == "log" and not fig.layout.shapes
    absolute = d.plot("absolute")
    np.testing.assert_array_equal(absolute.data[0].y, d.distance[:, 0])
    np.testing.assert_array_equal(absolute.data[1].y, d.update[:, 0])
    html = d._repr_html_()
    assert "<table>" in html and "relative update" in html
    p = tmp_path / "ld.npz"
    d.save(p)
    back = lv.load(p)
    assert isinstance(back, LayerDynamics) and back.members == d.members
    for k in ("norm", "distance", "update"):
        np.testing.assert_array_equal(getattr(back, k), getattr(d, k))
    assert back.provenance.kernel == "layer_dynamics"
    assert back.provenance.n_params == sum(p.numel() for p in model.parameters())
    assert back.provenance.dtype == "float64"
    assert repr(back) == repr(d) and back._repr_html_() == d._repr_html_()
    assert back.plot().to_json() == d.plot().to_json()


def test_bad_input():
    model, x, y = setup()
    rec = TrajectoryRecorder(model)
    with pytest.raises(LossvizError, match="nothing recorded"):
        rec.layer_dynamics()
    rec.snapshot()
    with pytest.raises(LossvizError, match="groups must be"):
        rec.layer_dynamics("layer")
    with pytest.raises(TypeError, match="groups must be"):
        rec.layer_dynamics(3)
    with pytest.raises(LossvizError, match="empty mapping"):
        rec.layer_dynamics({})
    with pytest.raises(LossvizError, match="not recorded"):
        rec.layer_dynamics({"a": ["0.weight", "1.weight"]})
    with pytest.raises(LossvizError, match="empty"):
        rec.layer_dynamics({"a": []})
    with pytest.raises(LossvizError, match="twice"):
        rec.layer_dynamics({"a": ["0.weight", "0.weight"]})
    with pytest.raises(TypeError, match="list of parameter names"):
        rec.layer_dynamics({"a": 3})
    with pytest.raises(TypeError, match="strings"):
        rec.layer_dynamics({"a": [0]})
    with pytest.raises(LossvizError, match="kind"):
        rec.layer_dynamics().plot("log")
    # the model changed during recording: another shape, then a new parameter
    changed, _, _ = setup()
    r3 = TrajectoryRecorder(changed)
    r3.snapshot()
    changed[2] = nn.Linear(6, 3).double()
    r3.snapshot()
    with pytest.raises(LossvizError, match="changed during recording"):
        r3.layer_dynamics()
    r4 = TrajectoryRecorder(changed)
    r4.snapshot()
    changed.add_module("extra", nn.Linear(3, 1).double())
    r4.snapshot()
    with pytest.raises(LossvizError, match="changed during recording"):
        r4.layer_dynamics()
    # buffers are recorded but are not parameters
    bn, _, _ = setup(bn=True)
    r2 = TrajectoryRecorder(bn)
    r2.snapshot()
    with pytest.raises(LossvizError, match="not recorded"):
        r2.layer_dynamics({"stats": ["1.running_mean"]})
