"""Results: keyword-only construction, one provenance type set by every kernel, and
``result.save(path)`` / ``lossviz.load(path)`` (no pickle) round trips for every result
type a real kernel produces on a tiny model."""

import dataclasses
import io
import json
import pickle
import zipfile

import numpy as np
import pytest
import torch
from torch import nn

import lossviz as lv
from lossviz.errors import ArgumentTypeError, LossvizError
from lossviz.objective import Objective
from lossviz.provenance import Provenance
from lossviz.results import REGISTRY, Result

F = nn.functional


def _mlp(seed):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(4, 5), nn.Tanh(), nn.Linear(5, 3)).double()


@pytest.fixture(scope="module")
def setup():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(30, 4, generator=g, dtype=torch.float64)
    y = torch.randint(0, 3, (30,), generator=g)
    model = _mlp(0)
    obj = Objective(model, F.cross_entropy, (x, y))
    a, b, c = (lv.Weights.from_module(_mlp(s)) for s in (1, 2, 3))
    return obj, a, b, c


def _layer_dynamics(model):
    rec = lv.TrajectoryRecorder(model)
    rec.snapshot(0)
    rec.snapshot(1)
    return rec.layer_dynamics()


def _kernels(obj, a, b, c):
    """name -> (kernel name, thunk) for every public kernel that returns a result."""
    q = dict(progress=False)
    d = lv.random_directions(obj, 2, seed=0)
    return {
        "eigs": ("hessian_eigs", lambda: lv.hessian_eigs(obj, 2, **q)),
        "eigs_groups": ("hessian_eigs", lambda: lv.hessian_eigs(obj, 1, groups="module", **q)),
        "eigs_ggn_at": (
            "hessian_eigs",
            lambda: lv.hessian_eigs(obj, 2, at=a, curvature="ggn", **q),
        ),
        "trace": ("hessian_trace", lambda: lv.hessian_trace(obj, rtol=0.3, max_hvp=40, **q)),
        "trace_groups": (
            "hessian_trace",
            lambda: lv.hessian_trace(obj, rtol=0.3, max_hvp=40, groups="module", **q),
        ),
        "density": ("hessian_density", lambda: lv.hessian_density(obj, n_probes=2, steps=8, **q)),
        "diagonal": ("hessian_diagonal", lambda: lv.hessian_diagonal(obj, n_probes=4, **q)),
        "blocks": ("hessian_blocks", lambda: lv.hessian_blocks(obj, max_hvp=40, **q)),
        "evaluate": (
            "evaluate",
            lambda: lv.evaluate(obj, [a, b], metrics=("loss", "accuracy"), **q),
        ),
        "line": ("line", lambda: lv.line(obj, None, d[0], n=5, **q)),
        "surface": ("surface", lambda: lv.surface(obj, None, d, n=(4, 3), points={"a": a}, **q)),
        "interpolate": ("interpolate", lambda: lv.interpolate(obj, a, b, n=5, **q)),
        "barrier_matrix": (
            "barrier_matrix",
            lambda: lv.barrier_matrix(obj, {"a": a, "b": b, "c": c}, n=4, **q),
        ),
        "layerwise": ("layerwise_barriers", lambda: lv.layerwise_barriers(obj, a, b, n=3, **q)),
        "layerwise_over": (
            "layerwise_barriers_over",
            lambda: lv.layerwise_barriers_over(obj, {"ab": (a, b), "bc": (b, c)}, **q),
        ),
        "roughness": (
            "roughness_index",
            lambda: lv.roughness_index(obj, n_directions=4, n_points=3, n_bootstrap=50, **q),
        ),
        "roughness_along": (
            "roughness_along",
            lambda: lv.roughness_along(
                obj, {10: a, 20: b}, n_directions=3, n_points=3, n_bootstrap=50, **q
            ),
        ),
        "pca": ("pca_directions", lambda: lv.pca_directions({0: a, 5: b, 9: c})),
        "plane": ("plane_through", lambda: lv.plane_through(a, b, c)),
        "sharpness_along": (
            "sharpness_along",
            lambda: lv.sharpness_along(obj, {0: a, 7: b}, k=2, lr=0.1),
        ),
        "trace_along": (
            "trace_along",
            lambda: lv.trace_along(obj, [a, b], rtol=0.3, max_hvp=40),
        ),
        "variance": ("averaging_variance", lambda: lv.averaging_variance([a, b, c])),
        "hypercube": ("hypercube", lambda: lv.hypercube(obj, 3, n=3, **q)),
        "topology": (
            "landscape_topology",
            lambda: lv.landscape_topology(lv.surface(obj, None, d, n=(4, 3), **q)),
        ),
        "curve": ("connect", lambda: lv.connect(obj, a, b, steps=3, n=4, **q)),
        "sharpness": ("sharpness", lambda: lv.sharpness(obj, 0.05, restarts=1, max_iter=3, **q)),
        "sharpness_avg": (
            "sharpness",
            lambda: lv.sharpness(obj, 0.05, kind="average", n_samples=16, **q),
        ),
        "rho_sharpness_along": (
            "rho_sharpness_along",
            lambda: lv.rho_sharpness_along(obj, [a, b], 0.05, restarts=1, max_iter=3, **q),
        ),
        "stability": ("stability", lambda: lv.stability(obj, 0.1, momentum=0.9, k=2, **q)),
        "averages": (
            "compare_averages",
            lambda: lv.compare_averages(
                obj, {0: a, 3: b, 5: c}, ema_decays=(0.5,), lawa_k=2, rho=0.05, max_hvp=20, **q
            ),
        ),
        "layer_dynamics": ("layer_dynamics", lambda: _layer_dynamics(obj.model)),
        "merges": (
            "compare_merges",
            lambda: lv.compare_merges(obj, {"b": b, "c": c}, base=a, n=3, **q),
        ),
        "gradient_conflict": (
            "gradient_conflict",
            lambda: lv.gradient_conflict(obj, "labels", by_layer=True, keep_gradients=True, **q),
        ),
    }


@pytest.fixture(scope="module")
def results(setup):
    obj, a, b, c = setup
    out = {}
    for name, (kernel, fn) in _kernels(obj, a, b, c).items():
        out[name] = (kernel, fn())
    return out


def same(x, y, where="result"):
    """Deep equality: arrays bit for bit (and dtype), tensors too, numbers and strings."""
    assert type(x) is type(y), f"{where}: {type(x).__name__} vs {type(y).__name__}"
    if isinstance(x, Result):
        fx, fy = x._fields(), y._fields()
        px, py = fx.pop("provenance", None), fy.pop("provenance", None)
        assert (px is None) == (py is None), where
        if px is not None:
            assert px.facts == py.facts, where
        assert list(fx) == list(fy), where
        for k in fx:
            same(fx[k], fy[k], f"{where}.{k}")
    elif isinstance(x, np.ndarray) or isinstance(x, np.generic):
        assert x.dtype == y.dtype and np.shape(x) == np.shape(y), where
        assert np.asarray(x).tobytes() == np.asarray(y).tobytes(), f"{where}: values differ"
    elif isinstance(x, torch.Tensor):
        assert x.dtype == y.dtype and x.shape == y.shape, where
        assert torch.equal(x.cpu(), y) or bool(torch.isnan(x).any()), where
        assert x.cpu().numpy().tobytes() == y.numpy().tobytes(), where
    elif isinstance(x, lv.Weights):
        assert list(x) == list(y), where
        for k in x:
            same(x[k], y[k], f"{where}[{k!r}]")
    elif isinstance(x, dict):
        assert list(x) == list(y), where
        for k in x:
            same(x[k], y[k], f"{where}[{k!r}]")
    elif isinstance(x, (list, tuple)):
        assert len(x) == len(y), where
        for i, (u, v) in enumerate(zip(x, y)):
            same(u, v, f"{where}[{i}]")
    elif isinstance(x, float) and np.isnan(x):
        assert np.isnan(y), where
    else:
        assert x == y, f"{where}: {x!r} vs {y!r}"


def _figure_json(r):
    return r.plot().to_json() if hasattr(r, "plot") else None


def test_every_result_type_is_covered(results):
    made = {type(r).__name__ for _, r in results.values()}
    made |= {type(x).__name__ for _, r in results.values() for x in getattr(r, "results", [])}
    assert set(REGISTRY) <= made | {"Result"}, set(REGISTRY) - made


def test_round_trip_every_result(results, tmp_path):
    for name, (_, r) in results.items():
        p = tmp_path / f"{name}.npz"
        r.save(p)
        back = lv.load(p)
        same(r, back, name)
        assert repr(back) == repr(r), name
        if hasattr(r, "_repr_html_"):
            assert back._repr_html_() == r._repr_html_(), name
        assert _figure_json(back) == _figure_json(r), name
        # live provenance dropped, saved facts kept
        assert back.objective is None and back.at is None and back.at_version is None
        assert back.provenance is not None and back.provenance == r.provenance
        # the file is a plain .npz that NumPy reads without pickle
        with np.load(p, allow_pickle=False) as z:
            for k in z.files:
                assert z[k].dtype != object


def test_loaded_results_work(results, tmp_path):
    _, s = results["surface"]
    s.save(tmp_path / "s.npz")
    t = lv.load(tmp_path / "s.npz")
    assert t.points == s.points and list(t.center) == list(s.center)
    assert t.project(s.center) == pytest.approx((0.0, 0.0), abs=1e-12)
    _, d = results["density"]
    d.save(tmp_path / "d.npz")
    e = lv.load(tmp_path / "d.npz")
    np.testing.assert_array_equal(e.outliers(), d.outliers())
    assert e.moment(2) == d.moment(2)
    _, path = results["interpolate"]
    path.save(tmp_path / "p.npz")
    q = lv.load(tmp_path / "p.npz")
    assert q.barrier("loss") == path.barrier("loss") and q.a is None
    with pytest.raises(LossvizError, match="no Objective"):
        q.dashboard()
    _, diag = results["diagonal"]
    diag.save(tmp_path / "g.npz")
    g = lv.load(tmp_path / "g.npz")
    assert float(g.dot(g)) == float(diag.dot(diag)) and g.n_probes == diag.n_probes


def test_every_kernel_sets_provenance(setup, results):
    obj, *_ = setup
    for name, (kernel, r) in results.items():
        p = r.provenance
        assert isinstance(p, Provenance), name
        assert p.kernel == kernel, name
        assert p.lossviz_version == lv.__version__ and p.torch_version == torch.__version__
        assert p.created.endswith("Z"), name
        if name in (
            "pca",
            "plane",
            "variance",
            "layer_dynamics",
        ):  # computed on weights, not an Objective
            assert r.objective is None and p.model is None, name
            assert p.n_params == obj.n_params and p.dtype == "float64", name
        else:
            assert r.objective is obj, name
            assert p.model == "Sequential" and p.n_params == obj.n_params, name
            assert p.dtype == "float64" and p.device == "cpu", name
    assert results["eigs_ggn_at"][1].provenance.curvature == "ggn"
    assert results["eigs"][1].provenance.curvature == "hessian"
    assert results["eigs"][1].at_version is not None  # what the spectrum dashboard checks
    _, a, b, _ = setup
    assert results["eigs_ggn_at"][1].at is a
    path = results["interpolate"][1]
    assert path.a is a and path.b is b
    with pytest.warns(DeprecationWarning, match="objective"):
        assert path.obj is obj
    assert "Sequential" in repr(results["eigs"][1].provenance)


def test_bare_operator_provenance():
    A = torch.diag(torch.arange(1.0, 9.0, dtype=torch.float64))
    r = lv.hessian_eigs(A, 2, progress=False)
    assert r.objective is None and r.provenance.n_params == 8
    assert r.provenance.model is None and r.provenance.dtype == "float64"


def test_results_pickle_without_live_references(setup, results):
    obj, *_ = setup
    for name, (_, r) in results.items():
        back = pickle.loads(pickle.dumps(r))
        assert back.objective is None and back.at is None, name
        assert back.provenance == r.provenance, name
        assert repr(back) == repr(r), name
    assert results["eigs"][1].objective is obj  # the original keeps them


def test_objective_can_be_reassigned(results):
    _, s = results["surface"]
    s2 = dataclasses.replace(s, provenance=dataclasses.replace(s.provenance))
    s2.objective = None
    assert s2.objective is None and s.objective is not None
    assert s2.provenance.kernel == "surface"  # the facts stay
    with pytest.raises(AttributeError):
        s2.at = 1


def test_results_are_keyword_only():
    with pytest.raises(TypeError):
        lv.EigenResult(np.ones(1), [], np.zeros(1), 1, np.ones(1, bool))
    with pytest.raises(TypeError):
        lv.Surface(np.zeros(2), np.zeros(2), {})
    with pytest.raises(TypeError):
        lv.PathResult(np.zeros(2), {})
    r = lv.TraceResult(value=1.0, stderr=0.5, n_hvp=3, samples=np.ones(3))
    assert r.provenance is None and r.objective is None


def test_hand_built_result_round_trip(tmp_path):
    vals = {"loss": np.array([1.0, np.nan, np.inf, -0.0]), "acc": np.array([0.5, 1, 0, 1.0])}
    r = lv.PathResult(
        alphas=np.linspace(0, 1, 4, dtype=np.float32),
        values=vals,
        metric_kinds={"loss": "loss", "acc": "accuracy"},
        complete=False,
        evaluated=np.array([True, True, True, False]),
        seconds=float("nan"),
    )
    r.save(tmp_path / "r.lossviz")  # any name: written exactly there
    back = lv.load(tmp_path / "r.lossviz")
    same(r, back)
    assert back.provenance is None
    w = lv.Weights({"w": torch.arange(6.0).reshape(2, 3).to(torch.bfloat16)})
    d = lv.DiagonalResult(w, stderr=w * 0, n_probes=1)
    d.save(tmp_path / "d.npz")
    e = lv.load(tmp_path / "d.npz")
    assert e["w"].dtype == torch.bfloat16 and torch.equal(e["w"], w["w"])


def test_load_never_unpickles(results, tmp_path, monkeypatch):
    def boom(*a, **k):
        raise AssertionError("pickle used")

    _, r = results["surface"]
    r.save(tmp_path / "s.npz")
    monkeypatch.setattr(pickle, "load", boom)
    monkeypatch.setattr(pickle, "loads", boom)
    monkeypatch.setattr(pickle, "Unpickler", boom)
    lv.load(tmp_path / "s.npz")
    # a hand-made .npz holding an object array (which needs pickle) is refused
    body = {
        "format": "lossviz-result",
        "version": 1,
        "result": {"$result": "TraceResult", "fields": {"samples": {"$array": "a0"}}},
    }
    _write_npz(tmp_path / "obj.npz", body, a0=np.array([{"x": 1}, None], dtype=object))
    with pytest.raises(LossvizError, match=r"obj\.npz.*without pickle"):
        lv.load(tmp_path / "obj.npz")


def _write_npz(path, meta, **arrays):
    raw = json.dumps(meta).encode() if not isinstance(meta, bytes) else meta
    buf = io.BytesIO()
    np.savez(buf, **{"lossviz.json": np.frombuffer(raw, np.uint8)}, **arrays)
    path.write_bytes(buf.getvalue())


def _meta(path):
    with np.load(path, allow_pickle=False) as z:
        return json.loads(z["lossviz.json"].tobytes()), {k: z[k] for k in z.files}


def test_bad_paths_and_files(results, tmp_path):
    _, r = results["trace"]
    with pytest.raises(ArgumentTypeError, match="^path must be"):
        lv.load(3)
    with pytest.raises(ArgumentTypeError, match="^path must be"):
        r.save(None)
    missing = tmp_path / "nope.npz"
    with pytest.raises(LossvizError, match="nope.npz.*no such file"):
        lv.load(missing)
    with pytest.raises(LossvizError, match="folder"):
        lv.load(tmp_path)
    with pytest.raises(LossvizError, match="nowhere.*cannot write"):
        r.save(tmp_path / "nowhere" / "x.npz")
    (tmp_path / "t.txt").write_text("hello")
    with pytest.raises(LossvizError, match=r"t\.txt.*not a lossviz result file"):
        lv.load(tmp_path / "t.txt")
    np.savez(tmp_path / "plain.npz", x=np.ones(3))
    with pytest.raises(LossvizError, match=r"plain\.npz.*no lossviz\.json"):
        lv.load(tmp_path / "plain.npz")
    good = tmp_path / "good.npz"
    r.save(good)
    meta, arrays = _meta(good)
    arrays.pop("lossviz.json")
    # a class lossviz does not register, by any name, is never built
    for evil in ("os.system", "Objective", "builtins.eval", "Weights", "Result"):
        bad = json.loads(json.dumps(meta))
        bad["result"]["$result"] = evil
        _write_npz(tmp_path / "evil.npz", bad, **arrays)
        with pytest.raises(LossvizError, match=r"evil\.npz.*unknown result type"):
            lv.load(tmp_path / "evil.npz")
    _write_npz(tmp_path / "garbled.npz", b"{not json", **arrays)
    with pytest.raises(LossvizError, match=r"garbled\.npz.*not JSON"):
        lv.load(tmp_path / "garbled.npz")
    bad = json.loads(json.dumps(meta))
    bad["version"] = 99
    _write_npz(tmp_path / "new.npz", bad, **arrays)
    with pytest.raises(LossvizError, match="format version 99"):
        lv.load(tmp_path / "new.npz")
    bad = json.loads(json.dumps(meta))
    bad["result"]["fields"]["bogus"] = 1
    _write_npz(tmp_path / "field.npz", bad, **arrays)
    with pytest.raises(LossvizError, match=r"field\.npz.*cannot rebuild a TraceResult"):
        lv.load(tmp_path / "field.npz")
    _write_npz(tmp_path / "noarr.npz", meta)
    with pytest.raises(LossvizError, match=r"noarr\.npz.*missing array"):
        lv.load(tmp_path / "noarr.npz")
    # a truncated archive
    (tmp_path / "cut.npz").write_bytes(good.read_bytes()[:200])
    with pytest.raises(LossvizError, match=r"cut\.npz"):
        lv.load(tmp_path / "cut.npz")
    assert zipfile.is_zipfile(good)


def test_unsaveable_fields_are_named(tmp_path):
    r = lv.TraceResult(value=1.0, stderr=0.5, n_hvp=3, samples=np.ones(3), method=print)
    with pytest.raises(LossvizError, match=r"TraceResult\.method: a builtin_function"):
        r.save(tmp_path / "x.npz")
    assert not (tmp_path / "x.npz").exists()
    with pytest.raises(ArgumentTypeError, match="result must be a lossviz result"):
        lv.store.save({"a": 1}, tmp_path / "y.npz")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_gpu_result_opens_on_the_cpu(tmp_path):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(30, 4, generator=g, dtype=torch.float64)
    y = torch.randint(0, 3, (30,), generator=g)
    obj = Objective(_mlp(0).cuda(), F.cross_entropy, (x.cuda(), y.cuda()))
    for r in (
        lv.hessian_eigs(obj, 2, progress=False),
        lv.surface(obj, n=(3, 3), progress=False),
        lv.hessian_diagonal(obj, n_probes=3, progress=False),
    ):
        assert r.provenance.device.startswith("cuda")
        r.save(tmp_path / "r.npz")
        back = lv.load(tmp_path / "r.npz")
        same(r, back, type(r).__name__)  # tensors compared after .cpu()
        assert repr(back) == repr(r) and _figure_json(back) == _figure_json(r)
        ts = [t for w in back._fields().values() if isinstance(w, lv.Weights) for t in w.values()]
        ts += [t for w in getattr(back, "vectors", []) for t in w.values()]
        assert ts and all(t.device.type == "cpu" for t in ts)


def test_tensor_dtypes_numpy_lacks(tmp_path):
    t = {"w": torch.tensor([1.5, -2.25, 3e-3]).to(torch.bfloat16)}
    if hasattr(torch, "float8_e4m3fn"):
        t["f8"] = torch.tensor([0.5, -1.0, 448.0]).to(torch.float8_e4m3fn)
    t["c"] = torch.tensor([1 + 2j, -3j], dtype=torch.complex64)
    r = lv.PCAResult(
        directions=[lv.Weights(t)],
        explained_variance_ratio=np.ones(1),
        coords=np.zeros((2, 1)),
        center=lv.Weights({"w": t["w"]}),
    )
    r.save(tmp_path / "p.npz")
    back = lv.load(tmp_path / "p.npz")
    for k, v in t.items():
        u = back.directions[0][k]
        assert u.dtype == v.dtype and torch.equal(u.view(torch.uint8), v.view(torch.uint8))
