"""API hygiene: one parser for several points (every function that takes several points
accepts a list, a dict step -> point and a TrajectoryRecorder, with the same numbers), one
name per option (deprecated names still work, with a DeprecationWarning), the HVP method
choice owned by lossviz.hvp, docstrings that agree with the code, and the package's
namespace (``__all__``, ``CurvatureOperator``, a lazy ``lv.dash``)."""

from __future__ import annotations

import re
import subprocess
import sys
import warnings
from pathlib import Path
from unittest import mock

import numpy as np
import pytest
import torch
from torch import nn

import lossviz as lv
from lossviz import hessian as hessian_mod
from lossviz.errors import ArgumentTypeError, LossvizError
from lossviz.hvp import CurvatureOperator, ProductMethods, product_methods
from lossviz.points import Points, as_points

F = nn.functional
ROOT = Path(__file__).resolve().parents[1]


def net(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(3, 5), nn.Tanh(), nn.Linear(5, 3)).double()


def data(seed=1, n=40):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 3, generator=g, dtype=torch.float64)
    return x, torch.randint(0, 3, (n,), generator=g)


@pytest.fixture(scope="module")
def run():
    """An Objective and a 3-point path recorded by a TrajectoryRecorder (steps 0, 2, 4),
    in the three forms."""
    model = net()
    x, y = data()
    rec = lv.TrajectoryRecorder(model, every=2)
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    for _ in range(5):
        rec.step()
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()
    assert rec.steps == [0, 2, 4]
    obj = lv.Objective(net(), F.cross_entropy, (x, y))
    # the first batched product times the product methods: done here, so every call
    # below uses the same method
    lv.hessian_trace(obj, rtol=0, max_hvp=4, batch_size=4, progress=False)
    pts = rec.checkpoints
    forms = {"list": list(pts), "dict": dict(zip(rec.steps, pts)), "recorder": rec}
    return obj, rec, forms


FORMS = ("list", "dict", "recorder")


def labels_of(form, rec):
    return [0, 1, 2] if form == "list" else rec.steps


# --- the parser --------------------------------------------------------------------------
def test_as_points_three_forms(run):
    _, rec, forms = run
    for form in FORMS:
        p = as_points(forms[form])
        assert isinstance(p, Points)
        assert p.labels == labels_of(form, rec)
        assert p.keyed == (form != "list")
        for a, b in zip(p.points, rec.checkpoints):
            assert a is b
        assert p.items() == list(zip(p.labels, p.points))
    assert as_points(iter(rec.checkpoints)).labels == [0, 1, 2]  # any iterable
    assert as_points(tuple(rec.checkpoints)).labels == [0, 1, 2]
    # a dict of flat tensors keyed by steps is several points, not a state dict
    assert as_points({0: torch.zeros(3), 1: torch.ones(3)}).labels == [0, 1]


@pytest.mark.parametrize(
    "bad,exc,text",
    [
        (None, ArgumentTypeError, "got None"),
        (5, ArgumentTypeError, "got int"),
        (nn.Linear(2, 2), ArgumentTypeError, "single point (a model)"),
        ({"w": torch.zeros(2)}, ArgumentTypeError, "single point (a state dict)"),
        (torch.zeros(3, 4), ArgumentTypeError, "single point (a tensor)"),
        (np.zeros((3, 4)), ArgumentTypeError, "single point (an array)"),
        ("run/ckpt.pt", ArgumentTypeError, "single point (a checkpoint path)"),
        (Path("ckpt.pt"), ArgumentTypeError, "single point (a checkpoint path)"),
        ([], LossvizError, "is empty"),
        ({}, LossvizError, "is empty"),
    ],
)
def test_as_points_bad(bad, exc, text):
    with pytest.raises(exc) as info:
        as_points(bad, "checkpoints")
    msg = str(info.value)
    assert msg.startswith("checkpoints"), msg
    assert text in msg, msg
    assert isinstance(info.value, (TypeError, ValueError))


def test_as_points_at_least_and_empty_recorder():
    with pytest.raises(LossvizError, match=r"^points: merge needs at least 2 points, got 1"):
        as_points([{"w": torch.zeros(1)}], at_least=2, what="merge")
    with pytest.raises(LossvizError, match="^checkpoints is empty"):
        as_points(lv.TrajectoryRecorder(net()), "checkpoints")


# --- every function that takes several points, in the three forms ------------------------
def by_form(fn, forms):
    return {form: fn(forms[form]) for form in FORMS}


def test_sharpness_along_forms(run):
    obj, rec, forms = run
    out = by_form(lambda p: lv.sharpness_along(obj, p, k=2, tol=1e-8), forms)
    for form, r in out.items():
        assert r.steps == labels_of(form, rec)
        np.testing.assert_allclose(r.values, out["list"].values, rtol=1e-9, atol=1e-12)
    # and they are the eigenvalues at each point
    for i, p in enumerate(rec.checkpoints):
        e = lv.hessian_eigs(obj, k=2, at=p, tol=1e-8, progress=False)
        np.testing.assert_allclose(out["dict"].values[i], e.values, rtol=1e-7)


def test_trace_along_forms(run):
    obj, rec, forms = run
    out = by_form(lambda p: lv.trace_along(obj, p, rtol=0, max_hvp=20), forms)
    for form, r in out.items():
        assert r.steps == labels_of(form, rec)
        np.testing.assert_allclose(r.values, out["list"].values, rtol=1e-10)
        np.testing.assert_allclose(r.stderr, out["list"].stderr, rtol=1e-10)


def test_roughness_along_forms(run):
    obj, rec, forms = run
    out = by_form(
        lambda p: lv.roughness_along(obj, p, n_directions=3, n_points=5, n_bootstrap=50),
        forms,
    )
    for form, r in out.items():
        assert list(r.labels) == labels_of(form, rec)
        np.testing.assert_allclose(r.values, out["list"].values, rtol=1e-10)
    assert np.all(np.isfinite(out["recorder"].values))


def test_merging_forms(run):
    obj, rec, forms = run
    merged = by_form(lambda p: lv.merge(p), forms)
    for m in merged.values():
        for k, v in merged["list"].items():
            torch.testing.assert_close(m[k], v, rtol=0, atol=0)
    mean = torch.stack([p["0.weight"] for p in rec.checkpoints]).mean(0)
    torch.testing.assert_close(merged["recorder"]["0.weight"], mean)
    # weights keyed like the points
    w = {"list": [1.0, 2.0, 3.0], "dict": dict(zip(rec.steps, [1.0, 2.0, 3.0]))}
    wl = lv.merge(forms["list"], method="weighted", weights=w["list"])
    wd = lv.merge(forms["dict"], method="weighted", weights=w["dict"])
    torch.testing.assert_close(wl["2.bias"], wd["2.bias"], rtol=0, atol=0)

    var = by_form(lambda p: lv.averaging_variance(p), forms)
    for v in var.values():
        assert v.table == var["list"].table

    soups = by_form(lambda p: lv.greedy_soup(obj, p, metric="loss", progress=False), forms)
    for form, (w_, chosen) in soups.items():
        lab = labels_of(form, rec)
        idx = [lab.index(c) for c in chosen]
        assert idx == [labels_of("list", rec).index(c) for c in soups["list"][1]]
        for k, v in soups["list"][0].items():
            torch.testing.assert_close(w_[k], v, rtol=0, atol=0)


def test_barrier_matrix_forms(run):
    obj, rec, forms = run
    out = by_form(lambda p: lv.barrier_matrix(obj, p, n=5, progress=False), forms)
    for form, r in out.items():
        assert r.names == [str(s) for s in labels_of(form, rec)]
        np.testing.assert_allclose(r.values, out["list"].values, rtol=1e-12)
    b01 = lv.barrier(obj, rec.checkpoints[0], rec.checkpoints[1], n=5, progress=False)
    assert out["recorder"].values[0, 1] == pytest.approx(b01, rel=1e-10)


def test_pca_directions_forms(run):
    _, rec, forms = run
    out = by_form(lambda p: lv.pca_directions(p, 2), forms)
    assert out["list"].labels == []  # positions are not labels
    assert out["dict"].labels == rec.steps and out["recorder"].labels == rec.steps
    for r in out.values():
        np.testing.assert_allclose(r.coords, out["list"].coords, rtol=1e-10, atol=1e-12)
        np.testing.assert_allclose(r.explained_variance_ratio, out["list"].explained_variance_ratio)


def test_dash_spectrum_forms(run):
    pytest.importorskip("ipywidgets")
    pytest.importorskip("anywidget")
    obj, rec, forms = run
    kw = {"n_probes": 2, "steps": 5, "k": 1, "start": False}
    boards = by_form(lambda p: lv.dash.spectrum(obj, p, **kw), forms)
    assert [p.label for p in boards["list"].points] == [f"checkpoint {i}" for i in range(3)]
    for form in ("dict", "recorder"):
        assert [p.label for p in boards[form].points] == [f"step {s}" for s in rec.steps]
        assert [p.x for p in boards[form].points] == [float(s) for s in rec.steps]
    for b in boards.values():
        for p, ref in zip(b.points, rec.checkpoints):
            assert p.at is ref


@pytest.mark.parametrize(
    "call",
    [
        lambda obj, bad: lv.sharpness_along(obj, bad),
        lambda obj, bad: lv.trace_along(obj, bad),
        lambda obj, bad: lv.roughness_along(obj, bad),
        lambda obj, bad: lv.merge(bad),
        lambda obj, bad: lv.greedy_soup(obj, bad),
        lambda obj, bad: lv.averaging_variance(bad),
        lambda obj, bad: lv.barrier_matrix(obj, bad),
        lambda obj, bad: lv.pca_directions(bad),
    ],
    ids=[
        "sharpness_along",
        "trace_along",
        "roughness_along",
        "merge",
        "greedy_soup",
        "averaging_variance",
        "barrier_matrix",
        "pca_directions",
    ],
)
def test_several_points_bad_input(run, call):
    obj, rec, _ = run
    one = rec.checkpoints[0]
    for bad, exc, text in (
        (one, ArgumentTypeError, "single point (a state dict)"),
        (net(), ArgumentTypeError, "single point (a model)"),
        (3, ArgumentTypeError, "TrajectoryRecorder"),
        ([], LossvizError, "is empty"),
        (lv.TrajectoryRecorder(net()), LossvizError, "is empty"),
    ):
        with pytest.raises(exc, match=re.escape(text)):
            call(obj, bad)


def test_too_few_points(run):
    obj, rec, forms = run
    one = {7: rec.checkpoints[0]}
    with pytest.raises(LossvizError, match="barrier_matrix needs at least 2"):
        lv.barrier_matrix(obj, one)
    with pytest.raises(LossvizError, match="averaging_variance needs at least 2"):
        lv.averaging_variance(one)
    with pytest.raises(LossvizError, match=r"^trajectory: 3 principal direction.*at least 4"):
        lv.pca_directions(forms["recorder"], 3)


def test_dash_spectrum_bad_checkpoints(run):
    obj, rec, _ = run
    with pytest.raises(ArgumentTypeError, match="^checkpoints is a single point"):
        lv.dash.spectrum(obj, rec.checkpoints[0], start=False)
    with pytest.raises(LossvizError, match="^checkpoints is empty"):
        lv.dash.spectrum(obj, [], start=False)


# --- one name per option -----------------------------------------------------------------
def _deprecated(fn, *a, **kw):
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        out = fn(*a, **kw)
    dep = [x for x in w if issubclass(x.category, DeprecationWarning)]
    assert dep, "no DeprecationWarning"
    assert dep[0].filename == __file__  # attributed to the caller's line
    return out, str(dep[0].message)


def test_blocks_is_groups(run):
    obj, _, _ = run
    new = lv.hessian_eigs(obj, k=1, groups="module", tol=1e-10, progress=False)
    old, msg = _deprecated(lv.hessian_eigs, obj, k=1, blocks="module", tol=1e-10, progress=False)
    assert "blocks= is deprecated, use groups=" in msg
    assert list(old) == list(new) == list(obj.layout.by_module())
    for name in new:
        np.testing.assert_allclose(old[name].values, new[name].values, rtol=1e-12)
    kw = dict(rtol=0, max_hvp=60, progress=False)
    t_new = lv.hessian_trace(obj, groups={"first": ["0.weight", "0.bias"]}, **kw)
    t_old, _ = _deprecated(lv.hessian_trace, obj, blocks={"first": ["0.weight", "0.bias"]}, **kw)
    assert t_old["first"].value == t_new["first"].value
    b_new = lv.hessian_blocks(obj, groups="module", max_hvp=60, rtol=0, progress=False)
    b_old, _ = _deprecated(
        lv.hessian_blocks, obj, blocks="module", max_hvp=60, rtol=0, progress=False
    )
    assert b_old.table == b_new.table
    with pytest.raises(TypeError, match=r"pass groups= only \(blocks= is its deprecated"):
        lv.hessian_eigs(obj, groups="module", blocks="module")


def test_recompute_data_is_bn_data():
    torch.manual_seed(0)
    a = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.ReLU(), nn.Linear(4, 2)).double()
    b = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.ReLU(), nn.Linear(4, 2)).double()
    x, y = data(n=32)
    y = y % 2
    bn_x = (x[:16] * 2 + 1, y[:16])
    obj = lv.Objective(a, F.cross_entropy, (x, y))
    kw = dict(n=3, bn="recompute", progress=False)
    new = lv.interpolate(obj, a, b, bn_data=bn_x, **kw)
    old, msg = _deprecated(lv.interpolate, obj, a, b, recompute_data=bn_x, **kw)
    assert "recompute_data= is deprecated, use bn_data=" in msg
    np.testing.assert_array_equal(old.loss, new.loss)
    bm_new = lv.barrier_matrix(obj, [a, b], bn_data=bn_x, **kw)
    bm_old, _ = _deprecated(lv.barrier_matrix, obj, [a, b], recompute_data=bn_x, **kw)
    np.testing.assert_array_equal(bm_old.values, bm_new.values)
    lw_new = lv.layerwise_barriers(obj, a, b, bn="recompute", bn_data=bn_x, progress=False)
    lw_old, _ = _deprecated(
        lv.layerwise_barriers, obj, a, b, bn="recompute", recompute_data=bn_x, progress=False
    )
    assert lw_old.table == lw_new.table
    s_new = lv.greedy_soup(obj, [a, b], metric="loss", bn="recompute", bn_data=bn_x)
    s_old, _ = _deprecated(
        lv.greedy_soup, obj, [a, b], metric="loss", bn="recompute", recompute_data=bn_x
    )
    assert s_old[1] == s_new[1]
    with pytest.raises(LossvizError, match="^bn_data is only used with bn='recompute'"):
        lv.greedy_soup(obj, [a, b], bn_data=bn_x)


# --- state ownership ---------------------------------------------------------------------
def test_product_methods_owned_by_hvp():
    x, y = data()
    obj = lv.Objective(net(), F.cross_entropy, (x, y))
    assert product_methods(obj) == ProductMethods()
    for attr in ("_hvp_method", "_hvp_times", "_hvp_failed"):
        assert not hasattr(obj, attr)
    op = obj.operator()
    assert isinstance(op, lv.CurvatureOperator) and lv.CurvatureOperator is CurvatureOperator
    V = torch.randn(4, obj.n_params, dtype=torch.float64)
    HV = op.apply(V)
    pm = product_methods(obj)
    assert pm.chosen["hessian"] in pm.times["hessian"]
    assert set(pm.times["hessian"]) | set(pm.failed) >= {"loop", "batched"}
    pm.chosen["hessian"] = "nonsense"  # a copy: the choice itself is unchanged
    assert product_methods(obj).chosen["hessian"] != "nonsense"
    torch.testing.assert_close(op.apply(V), HV)
    # kept per Objective: another Objective starts afresh
    other = lv.Objective(net(), F.cross_entropy, (x, y))
    assert product_methods(other).chosen == {}


def test_swap_batch_is_public():
    x, y = data()
    obj = lv.Objective(net(), F.cross_entropy, (x, y))
    op = obj.operator()
    obj.swap_batch((x[:10], y[:10]))
    assert obj.operator() is not op  # the cached operator was dropped
    with torch.no_grad():
        want = float(F.cross_entropy(net()(x[:10]), y[:10]))
    assert obj.loss() == pytest.approx(want, rel=1e-12)
    assert "Args:" in lv.Objective.swap_batch.__doc__


MINE = [
    "hvp.py",
    "hessian.py",
    "lanczos.py",
    "slq.py",
    "hutchinson.py",
    "subspace.py",
    "trajectory.py",
    "merging.py",
    "directions.py",
    "points.py",
    "deprecation.py",
    "__init__.py",
]


@pytest.mark.parametrize("name", MINE)
def test_no_private_reads_of_other_objects(name):
    """No ``obj._x`` / ``self.obj._x`` / ``eng._x``: state is read through public names."""
    text = (ROOT / "lossviz" / name).read_text()
    hits = re.findall(r"\b(?:obj|self\.obj|eng|s|w)\._[a-z]\w*", text)
    assert not hits, hits


# --- docstrings that agree with the code -------------------------------------------------
def test_eigs_check_recomputes_residuals(run):
    obj, _, _ = run
    plain = lv.hessian_eigs(obj, k=2, tol=1e-2, progress=False)
    checked = lv.hessian_eigs(obj, k=2, tol=1e-2, check=True, progress=False)
    assert checked.n_hvp == plain.n_hvp + 2
    np.testing.assert_allclose(checked.values, plain.values, rtol=1e-12)
    # the true residuals, recomputed here independently
    H = torch.stack([obj.operator() @ e for e in torch.eye(obj.n_params, dtype=torch.float64)])
    lam_max = float(torch.linalg.eigvalsh(H).abs().max())
    for v, lam, r in zip(checked.vectors, checked.values, checked.residuals):
        u = obj.as_flat(v)
        true = float((H @ u - lam * u).norm()) / lam_max
        assert r == pytest.approx(true, rel=1e-6, abs=1e-12)
    with pytest.raises(TypeError, match="^check"):
        lv.hessian_eigs(obj, check="yes")


def test_groups_with_v0_raises(run):
    obj, _, _ = run
    v0 = lv.hessian_eigs(obj, k=1, progress=False)
    with pytest.raises(LossvizError, match="v0= cannot be combined with groups="):
        lv.hessian_eigs(obj, groups="module", v0=v0)


def test_hessian_blocks_passes_max_hvp_on(run):
    obj, _, _ = run
    seen = []
    real = hessian_mod.lanczos

    def spy(*a, **kw):
        seen.append(kw["max_matvec"])
        return real(*a, **kw)

    with mock.patch.object(hessian_mod, "lanczos", spy):
        lv.hessian_blocks(obj, max_hvp=37, rtol=0, progress=False)
    assert seen and all(m == 37 for m in seen)


# --- the package namespace ---------------------------------------------------------------
def test_all_is_complete_and_grouped():
    assert len(lv.__all__) == len(set(lv.__all__))
    for name in lv.__all__:
        assert getattr(lv, name) is not None, name
    src = (ROOT / "lossviz" / "__init__.py").read_text()
    block = src[src.index("__all__ = [") :]
    block = block[: block.index("\n]")]
    assert block.count("    # ") >= 8  # a comment per topic
    assert "CurvatureOperator" in lv.__all__ and "dash" in lv.__all__
    assert "dash" in dir(lv)
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        lv.nope  # noqa: B018


def test_dash_is_lazy_and_needs_no_widgets_at_import():
    code = (
        "import sys\n"
        "import lossviz as lv\n"
        "assert 'ipywidgets' not in sys.modules, 'ipywidgets imported by import lossviz'\n"
        "assert 'lossviz.dash' not in sys.modules, 'lossviz.dash imported eagerly'\n"
        "f = lv.dash.landscape\n"
        "assert callable(f) and f.__module__ == 'lossviz.dash'\n"
        "assert 'ipywidgets' not in sys.modules, 'ipywidgets imported by lv.dash'\n"
        "print('ok')\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=120
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ok"
