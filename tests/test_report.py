"""``lv.report``: a self-contained HTML file (plotly inlined once, nothing from the network),
every figure captioned, its numbers checked against independent references (dense Hessians
and Gauss-Newton matrices by plain autograd, direct evaluation of the path, an SVD of the
checkpoints) on a CNN with BatchNorm and a residual connection the report has never seen;
the model is unchanged, bad arguments fail before any work, Ctrl-C leaves no file."""

from __future__ import annotations

import base64
import copy
import importlib
import json
import re
from html.parser import HTMLParser

import numpy as np
import pytest
import torch
from scipy import ndimage
from torch import nn
from torch.nn import functional as F

import lossviz as lv
from tests.reference import (
    Tick,
    Ticker,
    assert_unchanged,
    dense_hessian,
    reference_gradient,
    reference_loss,
    snapshot,
)

rp = importlib.import_module("lossviz.reporting")


class ResCNN(nn.Module):
    """conv → BatchNorm → ReLU, a residual conv block, global pooling, a linear head."""

    def __init__(self, ticker=None):
        super().__init__()
        self.stem = nn.Conv2d(1, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)
        self.block = nn.Sequential(nn.Conv2d(4, 4, 3, padding=1), nn.Tanh())
        self.head = nn.Linear(4, 3)
        self.tick = Tick(ticker) if ticker is not None else nn.Identity()

    def forward(self, x):
        h = torch.relu(self.bn(self.stem(self.tick(x))))
        h = h + self.block(h)  # the residual connection
        return self.head(h.mean((2, 3)))


def make_case(seed=0, n=24, ticker=None):
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    m = ResCNN(ticker).double()
    m.bn.running_mean.normal_(0, 0.3, generator=g)
    m.bn.running_var.uniform_(0.5, 2.0, generator=g)
    x = torch.randn(n, 1, 5, 5, generator=g, dtype=torch.float64)
    y = torch.randint(0, 3, (n,), generator=g)
    return m, (x, y)


def sgd_checkpoints(model, data, steps=30, every=10, lr=0.5):
    """State dicts of a copy trained with SGD (the copy changes, the model does not)."""
    m = copy.deepcopy(model)
    m.train()
    opt = torch.optim.SGD(m.parameters(), lr=lr)
    out = []
    for s in range(steps + 1):
        if s % every == 0:
            out.append({k: v.detach().clone() for k, v in m.state_dict().items()})
        if s < steps:
            opt.zero_grad()
            F.cross_entropy(m(data[0]), data[1]).backward()
            opt.step()
    return out


class Page(HTMLParser):
    """The tags, script sources and text of a report."""

    def __init__(self, text):
        super().__init__()
        self.tags, self.scripts, self.captions = [], [], []
        self._script = self._cap = None
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))
        if tag == "script":
            self._script = []
        if tag == "figcaption":
            self._cap = []

    def handle_endtag(self, tag):
        if tag == "script":
            self.scripts.append("".join(self._script))
            self._script = None
        if tag == "figcaption":
            self.captions.append("".join(self._cap))
            self._cap = None

    def handle_data(self, data):
        if self._script is not None:
            self._script.append(data)
        if self._cap is not None:
            self._cap.append(data)


def figures(text: str) -> dict[str, list[dict]]:
    """section id -> the plotly figures drawn in it (data and layout, from the page)."""
    out: dict[str, list[dict]] = {}
    dec = json.JSONDecoder()
    for sec in re.finditer(r"<section id='(\w+)'>(.*?)</section>", text, re.S):
        figs = []
        for m in re.finditer(r"Plotly\.newPlot\(\s*\"[\w-]+\",\s*", sec.group(2)):
            data, end = dec.raw_decode(sec.group(2), m.end())
            rest = sec.group(2)[end:].lstrip().lstrip(",").lstrip()
            layout, _ = dec.raw_decode(rest)
            figs.append({"data": data, "layout": layout})
        out[sec.group(1)] = figs
    return out


def arr(v) -> np.ndarray:
    """A plotly array from the page: a list, or a typed array ``{"dtype", "bdata"}``."""
    if isinstance(v, dict) and "bdata" in v:
        a = np.frombuffer(base64.b64decode(v["bdata"]), dtype=np.dtype(v["dtype"]))
        if "shape" in v:
            a = a.reshape([int(n) for n in str(v["shape"]).split(",")])
        return a
    return np.asarray(v)


def summary_of(text: str) -> dict:
    m = re.search(
        r"<script type='application/json' id='lossviz-summary'>(.*?)</script>", text, re.S
    )
    return json.loads(m.group(1))


RHO, LR, BETA = 0.01, 0.3, 0.5


@pytest.fixture(scope="module")
def full_report(tmp_path_factory):
    """One report with every section (the curve, stability at lr= included) on the residual
    CNN, and what the references need."""
    model, data = make_case()
    model.train()  # the user's mode, which the report must leave alone
    ckpts = sgd_checkpoints(model, data)
    other = sgd_checkpoints(model, data, steps=20, every=20, lr=0.3)[-1]
    snap = snapshot(model)
    obj = lv.Objective(model, F.cross_entropy, data)
    out = tmp_path_factory.mktemp("report") / "r.html"
    path = lv.report(
        obj,
        checkpoints=ckpts,
        pair=(ckpts[-1], other),
        out=out,
        k=3,
        grid=11,
        n_probes=3,
        steps=30,
        n_directions=6,
        sections=list(rp.SECTIONS),
        rho=RHO,
        lr=LR,
        momentum=BETA,
        curve_steps=40,
        progress=False,
    )
    assert path == out
    text = out.read_text(encoding="utf-8")
    return dict(model=model, data=data, ckpts=ckpts, other=other, snap=snap, obj=obj, text=text)


def test_model_unchanged(full_report):
    assert_unchanged(full_report["model"], full_report["snap"])
    assert full_report["model"].training


def test_self_contained_offline(full_report):
    text = full_report["text"]
    page = Page(text)
    srcs = [a.get("src") for t, a in page.tags if t == "script" and a.get("src")]
    assert srcs == []  # nothing loaded: every script is inline
    links = [a for t, a in page.tags if t == "link"]
    assert not any(re.match(r"(https?:)?//", a.get("href") or "") for a in links)
    bundles = [s for s in page.scripts if "plotly.js v" in s[:300]]
    assert len(bundles) == 1  # plotly.js inlined exactly once
    assert text.count("* plotly.js v") == 1
    assert text.startswith("<!doctype html>") and text.rstrip().endswith("</html>")


def test_every_figure_has_a_caption(full_report):
    text = full_report["text"]
    page = Page(text)
    n_figs = text.count("Plotly.newPlot(")
    assert n_figs >= 12
    assert len(page.captions) == n_figs == len(re.findall(r"<figure id='figure-\d+'>", text))
    for i, cap in enumerate(page.captions, 1):
        assert cap.startswith(f"Figure {i}.") and len(cap) > 40, cap
    sections = [a["id"] for t, a in page.tags if t == "section"]
    assert sections == ["summary", *rp.SECTIONS]


def test_eigenvalues_against_the_dense_hessian(full_report):
    obj, text = full_report["obj"], full_report["text"]
    H = dense_hessian(obj)
    lam = torch.linalg.eigvalsh(H).numpy()[::-1]  # descending
    P = obj.n_params
    s = summary_of(text)["eigenvalues"]
    assert s["labels"] == ["λ1", "λ2", "λ3", f"λ{P - 2}", f"λ{P - 1}", f"λ{P}"]
    want = np.concatenate([lam[:3], lam[-3:]])
    np.testing.assert_allclose(s["values"], want, rtol=1e-5, atol=1e-6 * abs(lam).max())
    fig = figures(text)["eigenvalues"][0]
    assert fig["data"][0]["x"] == s["labels"]  # the bars are numbered as the table
    assert arr(fig["data"][0]["y"])[0] == pytest.approx(lam[0], rel=1e-5)  # λ1 the largest
    assert f"<td>λ1</td><td>{lv.formatting.number(s['values'][0])}</td>" in text


def test_ggn_and_trace_against_dense_matrices(full_report):
    obj, text = full_report["obj"], full_report["text"]
    s = summary_of(text)
    G = dense_hessian(obj, curvature="ggn")
    g = torch.linalg.eigvalsh(G).numpy()[::-1][:3]
    np.testing.assert_allclose(s["ggn"]["values"], g, rtol=1e-5, atol=1e-8)
    tr = float(torch.trace(dense_hessian(obj)))
    est = s["trace"]
    assert abs(est["value"] - tr) <= 5 * est["stderr"] + 1e-9, (est, tr)


def test_outlier_count_agrees_everywhere(full_report):
    text = full_report["text"]
    s = summary_of(text)["density"]
    n = s["n_outliers"]
    fig = figures(text)["density"][0]
    vlines = [sh for sh in fig["layout"].get("shapes", []) if sh.get("type") == "line"]
    assert len(vlines) == n == len(s["outliers"])
    np.testing.assert_allclose(sorted(v["x0"] for v in vlines), sorted(s["outliers"]))
    assert f"{n} outlier(s)" in text  # the caption
    assert f"<td>outliers of the density</td><td>{n}</td>" in text


def test_layers_named_after_the_modules_and_checked(full_report):
    obj, text = full_report["obj"], full_report["text"]
    layers = summary_of(text)["layers"]
    assert list(layers) == [
        "stem (Conv2d 1→4, 3×3)",
        "bn (BatchNorm2d 4)",
        "block.0 (Conv2d 4→4, 3×3)",
        "head (Linear 4→3)",
    ]
    H = dense_hessian(obj)
    groups = rp.layer_groups(obj)
    sl = obj.layout.slices()
    for label, names in groups.items():
        idx = torch.cat([torch.arange(sl[n].start, sl[n].stop) for n in names])
        block = H[idx][:, idx]
        top = float(torch.linalg.eigvalsh(block)[-1])
        assert layers[label]["λ1"] == pytest.approx(top, rel=1e-4, abs=1e-8)
    fig = figures(text)["layers"][0]
    assert fig["data"][0]["x"] == list(layers)


def test_pca_plane_axes_and_minimum(full_report):
    text, ckpts, obj = full_report["text"], full_report["ckpts"], full_report["obj"]
    s = summary_of(text)["trajectory"]
    X = torch.stack([torch.cat([c[n].reshape(-1) for n in obj.names]) for c in ckpts])
    sv = torch.linalg.svdvals(X - X.mean(0)).numpy() ** 2
    np.testing.assert_allclose(s["explained_variance"], sv[:2] / sv.sum(), rtol=1e-6)
    fig = figures(text)["trajectory"][0]
    assert fig["layout"]["xaxis"]["title"]["text"] == (
        f"PC1 ({100 * s['explained_variance'][0]:.1f}% of the variance)"
    )
    names = [t.get("text") for t in fig["data"] if t.get("name") == "points"][0]
    assert names == ["start", "end", "minimum"]
    a, b, loss = s["minimum"]
    assert s["minimum_inside"]
    (x0, x1), (y0, y1) = s["span"]
    assert x0 < a < x1 and y0 < b < y1


def test_pca_plane_values_at_the_last_checkpoints_buffers(full_report):
    """The plane is centred on the last checkpoint with its own BatchNorm statistics (which
    differ from the model's): a grid corner against a direct evaluation."""
    model, data, ckpts, obj = (full_report[k] for k in ("model", "data", "ckpts", "obj"))
    last = ckpts[-1]
    assert not torch.equal(last["bn.running_mean"], model.bn.running_mean)
    pca = lv.pca_directions([obj.weights(p) for p in ckpts], 2)
    fig = figures(full_report["text"])["trajectory"][0]
    x, y, z = (arr(fig["data"][0][k]) for k in ("x", "y", "z"))
    for i, j in [(0, 0), (len(y) - 1, len(x) - 1), (len(y) // 2, 1)]:
        m = copy.deepcopy(model).eval()
        m.load_state_dict(last)
        with torch.no_grad():
            for n, p in m.named_parameters():
                p.copy_(pca.center[n] + x[j] * pca.directions[0][n] + y[i] * pca.directions[1][n])
            want = float(reference_loss(m, F.cross_entropy, data))
        assert 10 ** z[i, j] == pytest.approx(want, rel=1e-9)


def test_barrier_against_direct_evaluation(full_report):
    model, data = full_report["model"], full_report["data"]
    a, b = full_report["ckpts"][-1], full_report["other"]
    s = summary_of(full_report["text"])["connectivity"]
    alphas = np.linspace(0, 1, 11)
    f = []
    for al in alphas:
        m = copy.deepcopy(model).eval()
        sd = {k: (1 - al) * a[k] + al * b[k] if a[k].is_floating_point() else a[k] for k in a}
        m.load_state_dict(sd)
        with torch.no_grad():
            f.append(float(reference_loss(m, F.cross_entropy, data)))
    f = np.array(f)
    want = float(np.max(f - ((1 - alphas) * f[0] + alphas * f[-1])))
    assert s["barrier"] == pytest.approx(want, rel=1e-9, abs=1e-12)
    assert set(s["layerwise"]) == set(summary_of(full_report["text"])["layers"])
    assert "bn=&#x27;recompute&#x27;" in full_report["text"]  # the BatchNorm caveat


def test_defaults_and_console_agree(tmp_path, capsys):
    """Without checkpoints or pair: the six default sections; verbose prints the same
    outlier count the page shows."""
    model, data = make_case(seed=1, n=12)
    snap = snapshot(model)
    obj = lv.Objective(model, F.cross_entropy, data)
    out = tmp_path / "r.html"
    lv.report(obj, out=out, k=2, grid=5, n_probes=2, steps=20, progress=False, verbose=True)
    assert_unchanged(model, snap)
    text = out.read_text(encoding="utf-8")
    s = summary_of(text)
    assert s["sections"] == list(rp.DEFAULT_SECTIONS)
    console = capsys.readouterr().out
    m = re.search(r"(\d+) outlier\(s\)", console)
    assert int(m.group(1)) == s["density"]["n_outliers"]
    assert "report written to" in console
    assert [p.name for p in tmp_path.iterdir()] == ["r.html"]


def test_roughness_at_the_model_and_a_section_that_does_not_apply(tmp_path):
    """roughness without checkpoints is the index at the model; a kernel that cannot run
    for this Objective (Gauss-Newton with forward=) becomes a note and a warning."""
    model, data = make_case(seed=2, n=12)
    obj = lv.Objective(model, forward=lambda m, b: F.cross_entropy(m(b[0]), b[1]), data=data)
    out = tmp_path / "r.html"
    with pytest.warns(UserWarning, match="ggn: not computed"):
        lv.report(obj, out=out, sections=["ggn", "roughness"], k=2, n_directions=4, progress=False)
    text = out.read_text(encoding="utf-8")
    s = summary_of(text)
    assert "ggn" in s["not_computed"] and "roughness" in s
    assert np.isfinite(s["roughness"]["value"])
    assert "<p class='note'>ggn: not computed" in text


def test_checkpoints_from_a_generator_or_a_recorder(tmp_path):
    model, data = make_case(seed=5, n=10)
    ckpts = sgd_checkpoints(model, data, steps=4, every=2)
    obj = lv.Objective(model, F.cross_entropy, data)
    out = tmp_path / "r.html"
    kw = dict(out=out, sections=["trajectory", "roughness"], grid=5, n_directions=3)
    lv.report(obj, checkpoints=iter(ckpts), progress=False, **kw)
    s = summary_of(out.read_text(encoding="utf-8"))
    assert s["roughness"]["labels"] == ["0", "1", "2"]
    lv.report(obj, checkpoints=dict(zip([0, 2, 4], ckpts)), progress=False, **kw)
    s2 = summary_of(out.read_text(encoding="utf-8"))
    assert s2["roughness"]["labels"] == ["0", "2", "4"]
    assert s2["trajectory"] == s["trajectory"]


BAD = [
    (dict(sections=["eigenvalues", "bogus"]), lv.LossvizError, "eigenvalues, density, trace"),
    (dict(sections=[]), lv.LossvizError, "empty"),
    (dict(sections="trajectory"), lv.LossvizError, "needs checkpoints"),
    (dict(sections=["connectivity"]), lv.LossvizError, "needs pair"),
    (dict(sections=["curve"]), lv.LossvizError, "'curve' needs pair"),
    (dict(sections=["flatness", "Topology"]), lv.LossvizError, "unknown \\['Topology'\\]"),
    (dict(rho=0), lv.LossvizError, "rho"),
    (dict(rho=-0.1), lv.LossvizError, "rho"),
    (dict(rho=float("inf")), lv.LossvizError, "rho"),
    (dict(rho="0.05"), TypeError, "rho"),
    (dict(lr=0), lv.LossvizError, "lr"),
    (dict(lr=-1.0), lv.LossvizError, "lr"),
    (dict(lr=float("nan")), lv.LossvizError, "lr"),
    (dict(momentum=1.0), lv.LossvizError, "momentum"),
    (dict(curve_steps=0), lv.LossvizError, "curve_steps"),
    (dict(sections=["trace", "trace"]), lv.LossvizError, "twice"),
    (dict(sections=[1]), TypeError, "names"),
    (dict(sections=5), TypeError, "sections"),
    (dict(k=0), lv.LossvizError, "k"),
    (dict(k=10_000), lv.LossvizError, "half the parameter count"),
    (dict(grid=2), lv.LossvizError, "grid"),
    (dict(grid=5.0), TypeError, "grid"),
    (dict(seed=-1), lv.LossvizError, "seed"),
    (dict(verbose="yes"), TypeError, "verbose"),
    (dict(title=3), TypeError, "title"),
    (dict(pair="a.pt"), TypeError, "pair"),
    (dict(pair=("a.pt",)), lv.LossvizError, "got 1"),
    (dict(pair=[1, 2, 3]), lv.LossvizError, "two points"),
    (dict(checkpoints=[{}]), lv.LossvizError, "checkpoints"),
    (dict(out=""), TypeError, "out"),
]


@pytest.mark.parametrize("kw,exc,match", BAD, ids=[str(b[0]) for b in BAD])
def test_bad_arguments_before_any_work(tmp_path, kw, exc, match):
    model, data = make_case(seed=3, n=6)
    obj = lv.Objective(model, F.cross_entropy, data)
    kw = {"out": tmp_path / "r.html", **kw}
    with pytest.raises(exc, match=match):
        lv.report(obj, progress=False, **kw)
    assert list(tmp_path.iterdir()) == []


def test_mismatched_checkpoints_are_named(tmp_path):
    model, data = make_case(seed=3, n=6)
    obj = lv.Objective(model, F.cross_entropy, data)
    sd = model.state_dict()
    bad = {**sd, "head.weight": torch.zeros(2, 4, dtype=torch.float64)}
    with pytest.raises(lv.CheckpointError, match=r"checkpoints\[2\].*head.weight"):
        lv.report(obj, checkpoints=[sd, sd, bad], out=tmp_path / "r.html", progress=False)
    with pytest.raises(lv.CheckpointError, match=r"pair\[1\].*head.weight"):
        lv.report(obj, pair=(sd, bad), out=tmp_path / "r.html", progress=False)
    with pytest.raises(TypeError, match="Objective"):
        lv.report(model, out=tmp_path / "r.html")
    assert list(tmp_path.iterdir()) == []


SMALL = dict(k=2, grid=5, n_probes=2, steps=10, progress=False)


@pytest.mark.parametrize("where", [0.0, 0.5])
def test_ctrl_c_leaves_the_old_file_and_the_model(tmp_path, where):
    """Ctrl-C at the start of the computation and half-way through the default report.
    The number of Python-level forwards depends on the engine's choice between vmap and a
    loop (made by timing, once per Objective), so the count is measured with the same
    Objective just before."""
    ticker = Ticker()
    model, data = make_case(seed=4, n=8, ticker=ticker)
    obj = lv.Objective(model, F.cross_entropy, data)
    snap = snapshot(model)
    lv.report(obj, out=tmp_path / "count.html", **SMALL)  # the engine's choices, made once
    ticker.left = 10**9
    lv.report(obj, out=tmp_path / "count.html", **SMALL)
    forwards = 10**9 - ticker.left
    assert forwards >= 5
    (tmp_path / "count.html").unlink()
    out = tmp_path / "r.html"
    out.write_text("old")
    ticker.left = int(where * forwards)
    with pytest.raises(KeyboardInterrupt):
        lv.report(obj, out=out, **SMALL)
    ticker.left = None
    assert [p.name for p in tmp_path.iterdir()] == ["r.html"] and out.read_text() == "old"
    assert_unchanged(model, snap)


@pytest.mark.parametrize("section", [*rp.DEFAULT_SECTIONS, "trajectory", "roughness"])
def test_ctrl_c_inside_each_section(tmp_path, monkeypatch, section):
    """The interrupt arrives at the first forward of the section (whatever the engine's
    strategy): it propagates, no file is written, the model is unchanged."""
    ticker = Ticker()
    model, data = make_case(seed=4, n=8, ticker=ticker)
    ckpts = sgd_checkpoints(model, data, steps=4, every=2)
    obj = lv.Objective(model, F.cross_entropy, data)
    snap = snapshot(model)
    draw = rp._DRAW[section]

    def armed(ctx, **kw):
        ticker.left = 0
        return draw(ctx, **kw)

    monkeypatch.setitem(rp._DRAW, section, armed)
    out = tmp_path / "r.html"
    out.write_text("old")
    with pytest.raises(KeyboardInterrupt):
        lv.report(obj, out=out, checkpoints=ckpts, sections=[section], n_directions=3, **SMALL)
    ticker.left = None
    assert [p.name for p in tmp_path.iterdir()] == ["r.html"] and out.read_text() == "old"
    assert_unchanged(model, snap)


def test_write_atomic(monkeypatch, tmp_path):
    path = tmp_path / "r.html"
    path.write_text("old")

    def interrupted(src, dst):
        raise KeyboardInterrupt

    monkeypatch.setattr(rp.os, "replace", interrupted)
    with pytest.raises(KeyboardInterrupt):
        rp.write_atomic(path, "new")
    assert [p.name for p in tmp_path.iterdir()] == ["r.html"] and path.read_text() == "old"
    monkeypatch.undo()
    rp.write_atomic(path, "new")
    assert [p.name for p in tmp_path.iterdir()] == ["r.html"] and path.read_text() == "new"
    assert path.stat().st_mode & 0o044  # an ordinary file, not mkstemp's private 0600


# the sections of issues 14 and 16 -----------------------------------------------------------
def local_minima(f: np.ndarray) -> np.ndarray:
    """Brute force: grid points strictly below all their axis neighbours, ``(k, 2)``."""
    pad = np.pad(f, 1, constant_values=np.inf)
    c = pad[1:-1, 1:-1]
    ok = (c < pad[:-2, 1:-1]) & (c < pad[2:, 1:-1]) & (c < pad[1:-1, :-2]) & (c < pad[1:-1, 2:])
    return np.argwhere(ok)


def death_level(f: np.ndarray, m) -> float:
    """Brute force (the elder rule): the lowest level t at which the component of {f <= t}
    holding the minimum m also holds a point lower than f(m)."""
    for t in np.unique(f):
        if t < f[m]:
            continue
        lab, _ = ndimage.label(f <= t)  # axis neighbours
        if (f[lab == lab[m]] < f[m]).any():
            return float(t)
    return np.inf


def first_merge(f: np.ndarray, m, mins: np.ndarray) -> float:
    """Brute force: the lowest level at which the component of {f <= t} holding the
    minimum m holds another of the minimum points ``mins``."""
    for t in np.unique(f):
        if t < f[m]:
            continue
        lab, _ = ndimage.label(f <= t)
        if (lab[tuple(mins.T)] == lab[m]).sum() > 1:
            return float(t)
    return np.inf


def topology_figure(text: str, i: int) -> dict:
    return figures(text)["topology"][i]


@pytest.mark.parametrize(
    "key,i,source", [("random", 0, "surface"), ("trajectory", 1, "trajectory")]
)
def test_topology_against_brute_force(full_report, key, i, source):
    """The basins drawn and counted are the surface's own local minima (brute force), their
    saddles the levels where the elder rule merges them; figure, summary and caption agree."""
    text = full_report["text"]
    t = summary_of(text)["topology"][key]
    fig = topology_figure(text, i)
    contour = fig["data"][0]
    z = arr(contour["z"])  # z[row = b, col = a], the loss itself
    # the same grid as the surface drawn in its own section (log10 there)
    z_surface = arr(figures(text)[source][0]["data"][0]["z"])
    np.testing.assert_allclose(np.log10(z), z_surface, rtol=1e-12, atol=1e-12)
    f = z.T  # f[a, b], the topology's axis order
    nb = [np.abs(np.diff(f, axis=ax)) for ax in (0, 1)]
    assert min(float(d.min()) for d in nb) > 0  # no ties between neighbours: counts are exact
    mins = local_minima(f)
    assert t["n_basins"] == len(mins) >= 1
    np.testing.assert_allclose(t["minimum_values"], np.sort(f[tuple(mins.T)]), rtol=0, atol=0)
    x, y = arr(contour["x"]), arr(contour["y"])
    want_saddles = []
    for m, v in zip(t["minima"], t["minimum_values"]):
        ia, ib = int(np.argmin(abs(x - m[0]))), int(np.argmin(abs(y - m[1])))
        assert f[ia, ib] == v
        want_saddles.append(death_level(f, (ia, ib)))
    got = [np.inf if d == "inf" else d for d in t["saddle_values"]]
    np.testing.assert_allclose(got, want_saddles, rtol=0, atol=0)
    depth = np.array(got) - np.array(t["minimum_values"])
    np.testing.assert_allclose(depth[1:], np.array(t["depths"][1:], dtype=float))
    # markers: one per basin, one per finite saddle
    marks = {d.get("name"): d for d in fig["data"][1:]}
    assert len(arr(marks["minima"]["x"])) == t["n_basins"]
    np.testing.assert_allclose(
        np.stack([arr(marks["minima"]["x"]), arr(marks["minima"]["y"])], 1), t["minima"]
    )
    assert len(arr(marks["saddles"]["x"])) == sum(np.isfinite(got[1:]))
    cap = Page(text).captions[text[: text.index("<section id='topology'>")].count("<figure ") + i]
    assert f"with its {t['n_basins']} basin(s)" in cap
    assert f"SMAD {lv.formatting.short(t['smad'])}" in cap
    # SMAD: the mean over the minima of (the level of its first merge - its value)
    gaps = [first_merge(f, tuple(m), mins) - f[tuple(m)] for m in mins]
    want = float(np.mean(gaps)) if len(mins) > 1 else 0.0
    assert t["smad"] == pytest.approx(want, rel=1e-12, abs=1e-15)


def test_topology_on_the_random_surface_is_the_models_loss(full_report):
    """A grid point of the random surface against a direct evaluation (the values the
    topology reads are the model's loss there)."""
    model, data, obj = full_report["model"], full_report["data"], full_report["obj"]
    dirs = lv.random_directions(obj, 2, seed=0)
    z = arr(topology_figure(full_report["text"], 0)["data"][0]["z"])
    x = arr(topology_figure(full_report["text"], 0)["data"][0]["x"])
    for i, j in [(0, 0), (3, 7)]:
        m = copy.deepcopy(model).eval()
        with torch.no_grad():
            for n, p in m.named_parameters():
                p.add_(x[j] * dirs[0][n] + x[i] * dirs[1][n])
            want = float(reference_loss(m, F.cross_entropy, data))
        assert z[i, j] == pytest.approx(want, rel=1e-9)


def test_flatness_against_the_dense_hessian(full_report):
    """Second-order estimate ρ‖g‖ + ½ρ²λ_max from a dense Hessian and a plain-autograd
    gradient; the worst case is at least the loss rise at SAM's step ρ·g/‖g‖; the average
    sharpness agrees with ½ρ²·tr(H) for this small ρ; stability from the dense λ_max and
    the closed-form roots of the heavy-ball recurrence."""
    model, data, obj, text = (full_report[k] for k in ("model", "data", "obj", "text"))
    f = summary_of(text)["flatness"]
    assert f["rho"] == RHO
    H = dense_hessian(obj)
    lam = torch.linalg.eigvalsh(H).numpy()
    L0, g = reference_gradient(model, F.cross_entropy, data)
    gn = float(g.norm())
    assert f["grad_norm"] == pytest.approx(gn, rel=1e-9)
    assert f["lambda_max"] == pytest.approx(lam[-1], rel=1e-5)
    assert f["second_order"] == pytest.approx(RHO * gn + 0.5 * RHO**2 * lam[-1], rel=1e-6)
    # SAM's step, evaluated directly: the ascent starts there, so the maximum found is >= it
    m = copy.deepcopy(model).eval()
    step = RHO * g / gn
    with torch.no_grad():
        off = 0
        for p in m.parameters():
            p.add_(step[off : off + p.numel()].view_as(p))
            off += p.numel()
        rise = float(reference_loss(m, F.cross_entropy, data)) - L0
    assert f["worst"] >= rise - 1e-12 and f["worst"] > 0
    quad = 0.5 * RHO**2 * float(np.sum(lam))
    assert abs(f["average"] - quad) <= 5 * f["average_stderr"] + 0.05 * abs(quad), (f, quad)
    st = f["stability"]
    assert st["lr"] == LR and st["momentum"] == BETA
    assert st["threshold"] == pytest.approx((2 + 2 * BETA) / LR, rel=1e-12)
    assert st["lambda_max"] == pytest.approx(lam[-1], rel=1e-5)
    assert st["stable"] == bool(lam[-1] < (2 + 2 * BETA) / LR)
    assert st["margin"] == pytest.approx((2 + 2 * BETA) / LR - lam[-1], rel=1e-5)
    np.testing.assert_allclose(st["eigenvalues"], lam[::-1][:3], rtol=1e-5)
    roots = [max(abs(np.roots([1, -(1 + BETA - LR * v), BETA]))) for v in st["eigenvalues"]]
    np.testing.assert_allclose(st["radius"], roots, rtol=1e-9)
    assert max(st["residuals"]) <= 1e-4  # converged: no caveat in the verdict
    # the page: the caption and the summary table carry the same numbers
    n = lv.formatting.number
    assert f"second-order estimate ρ‖g‖ + ½ρ²λ_max = {n(f['second_order'])}" in text
    assert f"the largest found is {n(f['worst'])} (a lower bound)" in text
    assert f"mean {n(f['average'])} ± {n(f['average_stderr'])}" in text
    verdict = "stable" if st["stable"] else "UNSTABLE"
    assert f"{verdict}, margin {n(st['margin'])}" in text
    assert f"<td>worst-case sharpness (ρ = {RHO:g})</td><td>≥ {n(f['worst'])}</td>" in text
    fig = figures(text)["flatness"]
    assert len(fig) == 3
    hist = arr(fig[0]["data"][0]["y"])
    assert float(np.max(hist)) == pytest.approx(f["worst"], rel=1e-12)
    assert fig[0]["layout"]["shapes"][0]["y0"] == pytest.approx(f["second_order"], rel=1e-12)
    pts = fig[2]["data"][-1]
    np.testing.assert_allclose(arr(pts["x"]), LR * np.array(st["eigenvalues"]), rtol=1e-12)


def bn_reestimated_loss(model, state, data):
    """The loss at ``state`` with its BatchNorm statistics re-estimated on ``data`` (a
    cumulative average, as Garipov et al.), by plain PyTorch on a copy."""
    m = copy.deepcopy(model)
    m.load_state_dict(state)
    for mod in m.modules():
        if isinstance(mod, nn.modules.batchnorm._BatchNorm):
            mod.reset_running_stats()
            mod.momentum = None
    m.train()
    with torch.no_grad():
        m(data[0])
    m.eval()
    with torch.no_grad():
        return float(reference_loss(m, F.cross_entropy, data))


def test_curve_against_direct_evaluation(full_report):
    """The curve's ends are the pair's own losses (BatchNorm re-estimated at each point, as
    connect does for a model with BatchNorm); the straight line's middle point too; the
    barriers in the summary, the caption and the figure agree with the curve's values."""
    model, data, text = full_report["model"], full_report["data"], full_report["text"]
    a, b = full_report["ckpts"][-1], full_report["other"]
    c = summary_of(text)["curve"]
    assert c["bn"] == "recompute" and c["steps"] == 40 and c["stopped"] is None
    assert c["loss"][0] == pytest.approx(bn_reestimated_loss(model, a, data), rel=1e-9)
    assert c["loss"][-1] == pytest.approx(bn_reestimated_loss(model, b, data), rel=1e-9)
    assert c["line_loss"][0] == pytest.approx(c["loss"][0], rel=1e-12)
    assert c["line_loss"][-1] == pytest.approx(c["loss"][-1], rel=1e-12)
    mid = len(c["t"]) // 2
    assert c["t"][mid] == pytest.approx(0.5)
    half = {k: 0.5 * a[k] + 0.5 * b[k] if a[k].is_floating_point() else a[k] for k in a}
    assert c["line_loss"][mid] == pytest.approx(bn_reestimated_loss(model, half, data), rel=1e-9)
    t = np.array(c["t"])
    for key, bar in (("loss", "barrier"), ("line_loss", "line_barrier")):
        fv = np.array(c[key])
        want = float(np.max(fv - ((1 - t) * fv[0] + t * fv[-1])))
        assert c[bar] == pytest.approx(want, rel=1e-12, abs=1e-15)
    assert c["max"] == pytest.approx(max(c["loss"])) and c["line_max"] == max(c["line_loss"])
    fig = figures(text)["curve"][0]
    np.testing.assert_allclose(arr(fig["data"][0]["y"]), c["loss"], rtol=1e-12)
    np.testing.assert_allclose(arr(fig["data"][1]["y"]), c["line_loss"], rtol=1e-12)
    short = lv.formatting.short
    assert f"barrier {short(c['barrier'])} on the curve" in text
    assert f"against {short(c['line_barrier'])} on the straight line" in text
    assert (
        f"<td>loss barrier: Bezier curve / straight line</td><td>{short(c['barrier'])} / "
        f"{short(c['line_barrier'])}</td>" in text
    )
    assert "re-estimated at every point of both paths" in text


def test_stability_omitted_without_lr_and_curve_off_by_default(tmp_path):
    """Without lr= the flatness section says stability was not checked; without
    sections= the curve is not trained even with a pair."""
    model, data = make_case(seed=6, n=10)
    snap = snapshot(model)
    obj = lv.Objective(model, F.cross_entropy, data)
    out = tmp_path / "r.html"
    kw = dict(out=out, k=2, grid=5, n_probes=2, steps=10, progress=False)
    lv.report(obj, pair=(model, model.state_dict()), **kw)
    assert_unchanged(model, snap)
    text = out.read_text(encoding="utf-8")
    s = summary_of(text)
    assert "curve" not in s["sections"] and "connectivity" in s["sections"]
    assert {"flatness", "topology"} <= set(s["sections"])
    assert s["flatness"]["stability"] is None
    assert "Stability not checked: no learning rate was given" in text
    assert "<td>stability</td><td>not checked (no lr=)</td>" in text
    assert len(figures(text)["flatness"]) == 2  # no stability chart
    assert list(s["topology"]) == ["random"]
    assert "analysed too when checkpoints= is given" in text


def test_topology_without_gudhi(monkeypatch, tmp_path):
    """Named without GUDHI: an error before any work; among the defaults: a note and a
    warning, the other sections drawn."""
    monkeypatch.setattr(rp, "has_gudhi", lambda: False)
    model, data = make_case(seed=7, n=6)
    obj = lv.Objective(model, F.cross_entropy, data)
    out = tmp_path / "r.html"
    with pytest.raises(lv.LossvizError, match="GUDHI"):
        lv.report(obj, out=out, sections=["surface", "topology"], progress=False)
    assert list(tmp_path.iterdir()) == []
    with pytest.warns(UserWarning, match="topology: not computed"):
        lv.report(obj, out=out, k=2, grid=5, n_probes=2, steps=10, progress=False)
    s = summary_of(out.read_text(encoding="utf-8"))
    assert "GUDHI" in s["not_computed"]["topology"] and "surface" in s


@pytest.mark.parametrize("left", [5, 15])
def test_ctrl_c_while_training_the_curve(tmp_path, left):
    ticker = Ticker()
    model, data = make_case(seed=4, n=8, ticker=ticker)
    other = sgd_checkpoints(model, data, steps=2, every=2)[-1]
    obj = lv.Objective(model, F.cross_entropy, data)
    snap = snapshot(model)
    out = tmp_path / "r.html"
    out.write_text("old")
    ticker.left = left
    with pytest.raises(KeyboardInterrupt):
        lv.report(
            obj, pair=(model, other), sections=["curve"], out=out, curve_steps=20, progress=False
        )
    ticker.left = None
    assert [p.name for p in tmp_path.iterdir()] == ["r.html"] and out.read_text() == "old"
    assert_unchanged(model, snap)
