"""The activation / output variance of averaged networks against direct evaluation.

The reference runs a fresh ``copy.deepcopy`` of the model at each point (the averaged
state dict computed here by hand) with forward hooks written here, on all the data in one
forward, and takes the population variance over the samples of each unit.
"""

import copy

import numpy as np
import pytest
import torch
from reference import assert_unchanged, snapshot
from torch import nn

import lossviz as lv
from lossviz.errors import ArgumentTypeError, CheckpointError, LossvizError
from lossviz.merging import averaging_variance
from lossviz.objective import Objective

F = nn.functional


def mlp(seed, widths=(5, 9, 8, 3)):
    torch.manual_seed(seed)
    layers = []
    for i, (a, b) in enumerate(zip(widths[:-1], widths[1:])):
        layers.append(nn.Linear(a, b))
        if i < len(widths) - 2:
            layers.append(nn.Tanh())
    return nn.Sequential(*layers).double().eval()


def cnn(seed):
    torch.manual_seed(seed)
    m = nn.Sequential(
        nn.Conv2d(1, 3, 3), nn.BatchNorm2d(3), nn.ReLU(), nn.Flatten(), nn.Linear(3 * 4 * 4, 3)
    ).double()
    m[1].running_mean.uniform_(-0.5, 0.5)
    m[1].running_var.uniform_(0.5, 2.0)
    return m.eval()


def xy(n=40, seed=0, shape=(5,)):
    g = torch.Generator().manual_seed(seed)
    return (
        torch.randn(n, *shape, generator=g, dtype=torch.float64),
        torch.randint(0, 3, (n,), generator=g),
    )


def hand_average(models):
    sts = [m.state_dict() for m in models]
    return {
        k: torch.stack([s[k] for s in sts]).mean(0) if v.is_floating_point() else v
        for k, v in sts[0].items()
    }


def reference(model, state, x, layers, unit_dims):
    """``{layer: mean over units of the population variance over the data}`` by hand."""
    m = copy.deepcopy(model)
    m.load_state_dict(state)
    m.eval()
    seen = {}
    hs = [
        m.get_submodule(n).register_forward_hook(
            lambda _m, _i, o, n=n: seen.__setitem__(n, o.detach())
        )
        for n in layers
    ]
    with torch.no_grad():
        seen["(output)"] = m(x)
    for h in hs:
        h.remove()
    out = {}
    for n, a in seen.items():
        d = unit_dims[n]
        u = a.movedim(d, -1).reshape(-1, a.shape[d])
        out[n] = (float(u.var(0, correction=0).mean()), u.shape[1])
    return out


def check(table, model, models, x, layers, unit_dims):
    refs = [reference(model, m.state_dict(), x, layers, unit_dims) for m in models]
    avg = reference(model, hand_average(models), x, layers, unit_dims)
    rows = {r["layer"]: r for r in table.activations}
    assert list(rows) == layers + ["(output)"]
    k = len(models)
    for n in rows:
        r = rows[n]
        np.testing.assert_allclose(r["models"], [ref[n][0] for ref in refs], rtol=1e-10)
        assert r["before"] == pytest.approx(np.mean([ref[n][0] for ref in refs]), rel=1e-10)
        assert r["after"] == pytest.approx(avg[n][0], rel=1e-10, abs=1e-14)
        assert r["ratio"] == pytest.approx(r["after"] / r["before"], rel=1e-12)
        assert r["units"] == avg[n][1]
        assert r["1/k"] == 1 / k
    assert table.output is rows["(output)"]


def test_mlp_activations_match_hooks_on_a_fresh_copy():
    models = [mlp(s) for s in range(3)]
    x, y = xy()
    obj = Objective(models[0], F.cross_entropy, (x, y))
    snaps = [snapshot(m) for m in models]
    t = averaging_variance(models, obj=obj)
    for m, s in zip(models, snaps):
        assert_unchanged(m, s)
    dims = {"0": -1, "2": -1, "4": -1, "(output)": -1}
    check(t, models[0], models, x, ["0", "2", "4"], dims)
    # the weight rows are unchanged by obj=
    assert t.rows == averaging_variance(models).rows


def test_several_batches_give_the_one_batch_values():
    models = [mlp(s) for s in range(2)]
    x, y = xy(n=37)
    batches = [(x[i : i + 8], y[i : i + 8]) for i in range(0, 37, 8)]
    obj = Objective(models[0], F.cross_entropy, batches)
    t = averaging_variance({"a": models[0], "b": models[1]}, obj=obj, layers=["1", "4"])
    check(t, models[0], models, x, ["1", "4"], {"1": -1, "4": -1, "(output)": -1})


def test_conv_with_batchnorm_uses_channels_over_samples_and_positions():
    models = [cnn(s) for s in range(2)]
    x, y = xy(n=12, shape=(1, 6, 6))
    obj = Objective(models[0], F.cross_entropy, (x, y))
    snap = snapshot(models[1])
    t = averaging_variance(models, obj=obj)  # default: the BatchNorm layers
    assert_unchanged(models[1], snap)
    check(t, models[0], models, x, ["1"], {"1": 1, "(output)": -1})
    t = averaging_variance(models, obj=obj, layers=["0", "2", "4"])
    check(t, models[0], models, x, ["0", "2", "4"], {"0": 1, "2": 1, "4": -1, "(output)": -1})
    assert t.activations[0]["units"] == 3


def test_collapse_of_independent_networks_and_none_for_identical_ones():
    # deep, wide-ish random ReLU networks: the weight variance is divided by k, the output
    # variance by far more
    def net(seed):
        torch.manual_seed(seed)
        return nn.Sequential(
            nn.Linear(20, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 10)
        ).double()

    models = [net(s) for s in range(4)]
    x, y = xy(n=200, shape=(20,))
    obj = Objective(models[0], F.cross_entropy, (x, y))
    t = averaging_variance(models, obj=obj)
    assert all(r["ratio"] == pytest.approx(0.25, rel=0.15) for r in t.rows)
    assert t.output["ratio"] < 0.25 / 4
    same = averaging_variance([models[1], models[1]], obj=obj)
    for r in same.activations:
        assert r["ratio"] == pytest.approx(1.0, rel=1e-12)


def test_table_repr_plot_and_save(tmp_path):
    models = [mlp(s) for s in range(2)]
    x, y = xy()
    t = averaging_variance(models, obj=Objective(models[0], F.cross_entropy, (x, y)))
    assert "(output)" in repr(t) and "(output)" in t._repr_html_()
    fig = t.plot("activations")
    ratio = fig.data[0]
    assert list(ratio.x) == ["0", "2", "4", "(output)"]
    np.testing.assert_array_equal(ratio.y, [r["ratio"] for r in t.activations])
    assert len(t.plot().data) == 3
    t.save(tmp_path / "v.npz")
    back = lv.load(tmp_path / "v.npz")
    assert back.activations == t.activations and back.rows == t.rows
    w = averaging_variance(models)
    assert w.activations is None and w.output is None
    with pytest.raises(LossvizError, match="obj="):
        w.plot("activations")
    with pytest.raises(LossvizError, match="what"):
        t.plot("gradients")


def test_bad_inputs_raise_before_any_work():
    models = [mlp(s) for s in range(2)]
    x, y = xy()
    obj = Objective(models[0], F.cross_entropy, (x, y))
    with pytest.raises(LossvizError, match="layers= is only used with obj="):
        averaging_variance(models, layers=["0"])
    with pytest.raises(ArgumentTypeError, match="obj must be an Objective"):
        averaging_variance(models, obj=models[0])
    with pytest.raises(ArgumentTypeError, match="layers must be a list"):
        averaging_variance(models, obj=obj, layers="0")
    with pytest.raises(LossvizError, match=r"layers\[1\] = '9' is not a submodule"):
        averaging_variance(models, obj=obj, layers=["0", "9"])
    custom = Objective(models[0], data=(x, y), forward=lambda m, b: F.cross_entropy(m(b[0]), b[1]))
    with pytest.raises(LossvizError, match="forward="):
        averaging_variance(models, obj=custom)
    with pytest.raises(CheckpointError):
        averaging_variance([mlp(0, (5, 4, 3)), mlp(1, (5, 4, 3))], obj=obj)
    with pytest.raises(LossvizError, match="at least 2"):
        averaging_variance([models[0]], obj=obj)


class _Extra(nn.Module):
    """An MLP with a module its forward never calls and one that returns a tuple."""

    def __init__(self):
        super().__init__()
        self.body = nn.Linear(5, 3)
        self.unused = nn.Linear(5, 3)
        self.split = _Split()

    def forward(self, x):
        return self.split(self.body(x))[0]


class _Split(nn.Module):
    def forward(self, h):
        return h, h


def test_layers_that_do_not_run_or_return_no_tensor_are_named():
    torch.manual_seed(0)
    models = [_Extra().double(), _Extra().double()]
    x, y = xy()
    obj = Objective(models[0], F.cross_entropy, (x, y))
    with pytest.raises(LossvizError, match=r"\['unused'\] did not run"):
        averaging_variance(models, obj=obj, layers=["body", "unused"])
    with pytest.raises(LossvizError, match="the output of layer 'split' is tuple"):
        averaging_variance(models, obj=obj, layers=["split"])
    t = averaging_variance(models, obj=obj)  # default: the Linear layers that run
    assert [r["layer"] for r in t.activations] == ["body", "(output)"]
