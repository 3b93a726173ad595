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
from torch import nn
from torch.nn import functional as F

import lossviz as lv
from tests.reference import (
    Tick,
    Ticker,
    assert_unchanged,
    dense_hessian,
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


@pytest.fixture(scope="module")
def full_report(tmp_path_factory):
    """One report with every section on the residual CNN, and what the references need."""
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


@pytest.fixture(scope="module")
def forwards(tmp_path_factory):
    """How many Python-level forwards the small report makes (the rest run traced)."""
    ticker = Ticker()
    model, data = make_case(seed=4, n=8, ticker=ticker)
    obj = lv.Objective(model, F.cross_entropy, data)
    ticker.left = 10**9
    lv.report(obj, out=tmp_path_factory.mktemp("count") / "r.html", **SMALL)
    return 10**9 - ticker.left


@pytest.mark.parametrize("where", [0.0, 0.3, 0.6, 0.95])
def test_ctrl_c_leaves_the_old_file_and_the_model(tmp_path, forwards, where):
    assert forwards >= 5
    ticker = Ticker()
    model, data = make_case(seed=4, n=8, ticker=ticker)
    obj = lv.Objective(model, F.cross_entropy, data)
    snap = snapshot(model)
    out = tmp_path / "r.html"
    out.write_text("old")
    ticker.left = int(where * forwards)
    with pytest.raises(KeyboardInterrupt):
        lv.report(obj, out=out, **SMALL)
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
