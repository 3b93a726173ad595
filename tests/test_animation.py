"""Animations (lossviz.animation): the training trajectory over its landscape.

The animation is a view: every number in its frames is checked against an independent
computation — the checkpoints' losses against a plain forward pass on a copy of the model
(``reference_loss``), their plane coordinates against a numpy SVD of the checkpoints (PCA
plane) or a numpy least-squares solve (any plane), the drawn contour against the surface,
the values on the plane against ``Surface.interp``. The HTML export is checked for one
inlined plotly.js bundle and no external script; the GIF export is checked end to end
where kaleido finds a Chromium, and its errors (no kaleido, no Chromium, no MP4 plugin)
everywhere."""

from __future__ import annotations

import concurrent.futures
import copy
import importlib.util
import re
import shutil
import sys

import numpy as np
import pytest
import torch
from reference import assert_unchanged, cnn_case, mlp_case, reference_loss, snapshot

import lossviz as lv
from lossviz.animation import animate, save_animation
from lossviz.formatting import short


@pytest.fixture(scope="module")
def run():
    """A float64 MLP trained for 12 full-batch steps, recorded every 2 (6 + 1 snapshots)."""
    model, loss_fn, data = mlp_case(seed=3)
    rec = lv.TrajectoryRecorder(model, every=2)
    opt = torch.optim.SGD(model.parameters(), lr=0.5, momentum=0.5)
    for _ in range(12):
        rec.step()
        opt.zero_grad()
        loss_fn(model(data[0]), data[1]).backward()
        opt.step()
    rec.snapshot(step=12)
    for p in model.parameters():
        p.grad = None
    return model, loss_fn, data, rec


def _flat(ckpt, model):
    return torch.cat([ckpt[k].reshape(-1) for k, _ in model.named_parameters()]).numpy()


def _ref_losses(model, loss_fn, data, ckpts):
    out = []
    for c in ckpts:
        m = copy.deepcopy(model)
        m.load_state_dict(c)
        with torch.no_grad():
            out.append(float(reference_loss(m, loss_fn, data)))
    return np.array(out)


def _marker(fig):
    """``(T, 2)`` marker coordinates and ``(T, c)`` customdata of the frames."""
    xy = np.array([[f.data[-1].x[0], f.data[-1].y[0]] for f in fig.frames])
    cd = np.array([f.data[-1].customdata[0] for f in fig.frames], dtype=np.float64)
    return xy, cd


def test_pca_animation_shows_the_pca_coordinates_and_the_checkpoints_losses(run):
    model, loss_fn, data, rec = run
    obj = lv.Objective(model, loss_fn, data)
    snap = snapshot(model)
    fig = animate(obj, rec, n=7, progress=False)
    assert_unchanged(model, snap)
    T = len(rec)
    assert T == 7 and len(fig.frames) == T
    assert [f.name for f in fig.frames] == [str(s) for s in rec.steps]

    # the contour drawn once is lossviz.surface on the PCA plane
    s = lv.surface(obj, None, lv.pca_directions(rec.checkpoints, 2), n=7, progress=False)
    np.testing.assert_array_equal(np.asarray(fig.data[0].z, dtype=np.float64), s.loss)
    np.testing.assert_array_equal(fig.data[0].x, s.x)

    # coordinates: the surface's path, and independently a numpy SVD of the checkpoints
    xy, cd = _marker(fig)
    np.testing.assert_array_equal(xy, s.paths["trajectory"])
    X = np.stack([_flat(c, model) for c in rec.checkpoints])
    _, _, Vt = np.linalg.svd(X - X.mean(0), full_matrices=False)
    ref = (X - X[-1]) @ Vt[:2].T
    for i in range(2):  # a principal direction is defined up to its sign
        sign = np.sign(ref[:, i] @ xy[:, i])
        np.testing.assert_allclose(xy[:, i], sign * ref[:, i], atol=1e-9)
    assert np.abs(xy[-1]).max() < 1e-12  # the plane is centred on the trained model

    # the growing path of frame k is the path up to checkpoint k
    for k, f in enumerate(fig.frames):
        np.testing.assert_array_equal(np.c_[f.data[0].x, f.data[0].y], xy[: k + 1])

    # the numbers: the loss at each checkpoint (a plain forward pass), and on the plane
    ref_loss = _ref_losses(model, loss_fn, data, rec.checkpoints)
    np.testing.assert_allclose(cd[:, 1], ref_loss, rtol=1e-12)
    assert cd[-1, 1] == pytest.approx(obj.loss(at=rec.checkpoints[-1]), rel=1e-12)
    np.testing.assert_array_equal(cd[:, 0], np.arange(T))
    np.testing.assert_allclose(cd[:, 2], s.interp(s.loss, xy), rtol=1e-12)
    assert ref_loss[0] > ref_loss[-1]  # it trained

    for k, f in enumerate(fig.frames):
        t = f.layout.title.text
        assert t.startswith(f"step {rec.steps[k]} · loss {short(ref_loss[k])} ")
        assert f"on the plane ≈ {short(cd[k, 2])}" in t
    assert fig.layout.title.text == fig.frames[0].layout.title.text
    assert fig.layout.xaxis.title.text.startswith("PC1 (")
    # the play button and a slider step per checkpoint
    assert [b.label for b in fig.layout.updatemenus[0].buttons] == ["▶ play", "❚❚ pause"]
    steps = fig.layout.sliders[0].steps
    assert [st.args[0][0] for st in steps] == [f.name for f in fig.frames]
    assert fig.layout.meta["columns"] == ["index", "checkpoint", "on the plane"]


def test_any_surface_projects_the_checkpoints_and_is_left_alone(run):
    model, loss_fn, data, rec = run
    obj = lv.Objective(model, loss_fn, data)
    s = lv.surface(obj, n=(5, 4), span=((-2, 2), (-2, 2)), progress=False)
    paths = dict(s.paths)
    tl = np.linspace(3.0, 1.0, len(rec))
    snap = snapshot(model)
    fig = s.animate(rec, values={"λ_max": tl}, frame_ms=50, progress=False)
    assert_unchanged(model, snap)
    assert s.paths == paths  # the user's surface gains no path
    xy, cd = _marker(fig)
    # independent: least squares θ_k - θ ≈ a·d1 + b·d2 in numpy
    D = np.stack([_flat(d, model) for d in s.directions]).T
    c = _flat(s.center, model)
    for k, ck in enumerate(rec.checkpoints):
        ab, *_ = np.linalg.lstsq(D, _flat(ck, model) - c, rcond=None)
        np.testing.assert_allclose(xy[k], ab, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(cd[:, 1], _ref_losses(model, loss_fn, data, rec.checkpoints))
    np.testing.assert_array_equal(cd[:, 3], tl)
    assert fig.layout.meta["columns"][3] == "λ_max"
    assert f"λ_max {short(tl[2])}" in fig.frames[2].layout.title.text
    assert fig.layout.updatemenus[0].buttons[0].args[1]["frame"]["duration"] == 50
    # the same as the function
    same = animate(s, rec, values={"λ_max": tl}, frame_ms=50, progress=False)
    assert same.to_plotly_json() == fig.to_plotly_json()


def test_a_surface_path_without_checkpoints_shows_the_plane_only(run):
    model, loss_fn, data, rec = run
    obj = lv.Objective(model, loss_fn, data)
    s = lv.surface(obj, n=5, trajectory=rec.checkpoints, progress=False)
    s.add_path("straight", [(-0.5, -0.5), (0.0, 0.0), (0.5, 0.25)])
    fig = animate(s, path="straight", log=True)
    xy, cd = _marker(fig)
    np.testing.assert_array_equal(xy, s.paths["straight"])
    assert np.isnan(cd[:, 1]).all()  # no checkpoint: nothing evaluated, nothing claimed
    np.testing.assert_allclose(cd[:, 2], s.interp(s.loss, xy))
    assert [f.name for f in fig.frames] == ["0", "1", "2"]
    t = fig.frames[1].layout.title.text
    assert t == f"checkpoint 1 · loss on the plane ≈ {short(cd[1, 2])}"
    # log draws log10 of the metric; the numbers stay the metric
    np.testing.assert_allclose(np.asarray(fig.data[0].z, dtype=np.float64), np.log10(s.loss))


def test_checkpoints_keep_their_own_batchnorm_statistics():
    """The loss at a checkpoint is the checkpoint's model: its own BatchNorm running
    statistics, not the Objective model's (what one ``lv.evaluate`` call would use)."""
    model, loss_fn, data = cnn_case(seed=1)
    model.eval()
    obj = lv.Objective(model, loss_fn, data)
    g = torch.Generator().manual_seed(0)
    ckpts = []
    for k in range(3):
        sd = {n: t.clone() for n, t in model.state_dict().items()}
        for t in sd.values():
            if t.is_floating_point():
                t.add_(0.05 * (k + 1) * torch.randn(t.shape, generator=g, dtype=t.dtype).abs())
        ckpts.append(sd)
    ckpts.append(ckpts[-1])  # two in a row with the same statistics: one batched run
    s = lv.surface(obj, n=3, progress=False)
    snap = snapshot(model)
    fig = animate(s, ckpts, progress=False)
    assert_unchanged(model, snap)
    cd = _marker(fig)[1]
    ref = _ref_losses(model, loss_fn, data, ckpts)  # copies of the model in eval mode
    np.testing.assert_allclose(cd[:, 1], ref, rtol=1e-10)
    np.testing.assert_allclose(cd[:, 1], [obj.loss(at=c) for c in ckpts], rtol=1e-10)
    shared = lv.evaluate(obj, ckpts, progress=False)["loss"]  # the model's statistics
    assert np.abs(shared - ref).max() > 1e-3  # the test tells the two apart


def test_pca_plane_of_a_batchnorm_run_uses_the_last_checkpoint_itself():
    """With BatchNorm, the PCA plane is that of the parameters (the running statistics
    are no direction) and its loss uses the last checkpoint's statistics, not the
    model's: every grid value against a forward pass on a copy of the model holding
    ``θ_last + a·d1 + b·d2`` and the last checkpoint's buffers (directions from numpy)."""
    model, loss_fn, data = cnn_case(seed=2)
    rec = lv.TrajectoryRecorder(model)  # buffers recorded too
    opt = torch.optim.SGD(model.parameters(), lr=0.3)
    for _ in range(5):
        rec.step()
        opt.zero_grad()
        loss_fn(model(data[0]), data[1]).backward()
        opt.step()
    for _ in range(2):  # the model moves on: its statistics are not the last checkpoint's
        loss_fn(model(data[0]), data[1]).backward()
        opt.step()
    opt.zero_grad(set_to_none=True)
    model.eval()
    obj = lv.Objective(model, loss_fn, data)
    fig = animate(obj, rec, n=3, progress=False)
    z = np.asarray(fig.data[0].z, dtype=np.float64)
    a, b = np.asarray(fig.data[0].x), np.asarray(fig.data[0].y)
    xy, cd = _marker(fig)

    X = np.stack([_flat(c, model) for c in rec.checkpoints])
    _, _, Vt = np.linalg.svd(X - X.mean(0), full_matrices=False)
    D = Vt[:2] * np.sign(np.sum(((X - X[-1]) @ Vt[:2].T) * xy, 0))[:, None]
    np.testing.assert_allclose((X - X[-1]) @ D.T, xy, atol=1e-9)
    last = rec.checkpoints[-1]
    ref = np.empty_like(z)
    for i, bi in enumerate(b):
        for j, aj in enumerate(a):
            theta = X[-1] + aj * D[0] + bi * D[1]
            m = copy.deepcopy(model)
            m.load_state_dict(last)
            with torch.no_grad():
                off = 0
                for p in m.parameters():
                    p.copy_(torch.from_numpy(theta[off : off + p.numel()]).view_as(p))
                    off += p.numel()
                ref[i, j] = float(reference_loss(m, loss_fn, data))
    np.testing.assert_allclose(z, ref, rtol=1e-9)
    np.testing.assert_allclose(cd[:, 1], _ref_losses(model, loss_fn, data, rec.checkpoints))
    assert obj.loss() != pytest.approx(cd[-1, 1], rel=1e-6)  # the model's statistics differ


def test_an_incomplete_surface_says_so():
    model, loss_fn, data = mlp_case()
    s = lv.surface(lv.Objective(model, loss_fn, data), n=3, progress=False)
    s.complete = False
    s.add_path("p", [(0.0, 0.0), (0.5, 0.5)])
    fig = animate(s, path="p")
    assert all(f.layout.title.text.endswith("(incomplete)") for f in fig.frames)


def test_repeated_labels_still_name_distinct_frames(run):
    model, loss_fn, data, rec = run
    s = lv.surface(lv.Objective(model, loss_fn, data), n=3, progress=False)
    twice = [rec.checkpoints[0], rec.checkpoints[-1], rec.checkpoints[-1]]

    class Recorder:  # a recorder whose last snapshot was taken twice
        steps = [0, 12, 12]
        checkpoints = twice

    fig = animate(s, Recorder(), progress=False)
    assert [f.name for f in fig.frames] == ["0", "1", "2"]
    assert [st.label for st in fig.layout.sliders[0].steps] == ["0", "12", "12"]
    assert [st.args[0][0] for st in fig.layout.sliders[0].steps] == ["0", "1", "2"]
    assert fig.frames[2].layout.title.text.startswith("step 12 · ")


def test_a_point_off_the_grid_says_so(run):
    model, loss_fn, data, rec = run
    obj = lv.Objective(model, loss_fn, data)
    s = lv.surface(obj, n=3, span=((-0.1, 0.1), (-0.1, 0.1)), progress=False)
    s.add_path("far", [(0.0, 0.0), (5.0, 5.0)])
    fig = animate(s, path="far")
    assert "off the grid" in fig.frames[1].layout.title.text
    assert np.isnan(_marker(fig)[1][1, 2])


def test_html_export_is_self_contained(run, tmp_path):
    model, loss_fn, data, rec = run
    fig = animate(lv.Objective(model, loss_fn, data), rec, n=4, progress=False)
    p = tmp_path / "anim.html"
    fig.write_html(p, include_plotlyjs=True, auto_play=False)
    html = p.read_text()
    assert not re.search(r"<script[^>]*\bsrc=", html)  # nothing loaded from elsewhere
    assert len(re.findall(r"\* plotly\.js v\d", html)) == 1  # one bundle, inlined
    assert html.count("Plotly.addFrames") == 1 and '"name":"12"' in html.replace(" ", "")


def test_bad_input_is_refused_before_any_work(run, monkeypatch):
    model, loss_fn, data, rec = run
    obj = lv.Objective(model, loss_fn, data)
    s = lv.surface(obj, n=3, progress=False)
    s.add_path("p", [(0.0, 0.0), (0.1, 0.1)])

    import lossviz.landscape as landscape

    def boom(*a, **k):
        raise AssertionError("evaluated before the arguments were checked")

    monkeypatch.setattr(landscape, "evaluate", boom)
    monkeypatch.setattr(landscape, "surface", boom)
    with pytest.raises(lv.ArgumentTypeError, match="landscape must be a Surface"):
        animate(model, rec)
    with pytest.raises(lv.LossvizError, match="needs the checkpoints"):
        animate(obj)
    with pytest.raises(lv.LossvizError, match="no 'accuracy'"):
        animate(s, rec, metric="accuracy")
    with pytest.raises(lv.LossvizError, match="no path 'trajectory' \\(it has \\['p'\\]\\)"):
        animate(s)
    with pytest.raises(lv.LossvizError, match="at least 2 points"):
        animate(s, rec.checkpoints[:1])
    with pytest.raises(lv.ArgumentTypeError, match="single point"):
        animate(s, rec.checkpoints[0])
    with pytest.raises(lv.LossvizError, match=r"values\['u'\] has 3 number\(s\) for 7"):
        animate(s, rec, values={"u": [1, 2, 3]})
    with pytest.raises(lv.LossvizError, match=r"values\['u'\] has 1 number\(s\) for 7"):
        animate(obj, rec, values={"u": [1.0]})
    with pytest.raises(lv.LossvizError, match=r"values\['u'\] has 1 number\(s\) for 2"):
        animate(s, path="p", values={"u": [1.0]})
    with pytest.raises(lv.ArgumentTypeError, match="values must be a mapping"):
        animate(s, rec, values=[1.0] * 7)
    with pytest.raises(lv.LossvizError, match="frame_ms"):
        animate(s, rec, frame_ms=0)
    with pytest.raises(lv.ArgumentTypeError, match="log"):
        animate(s, rec, log=1)
    with pytest.raises(lv.ArgumentTypeError, match="path must be a string"):
        animate(s, rec, path=3)
    other = {k: torch.zeros(2) for k in rec.checkpoints[0]}
    with pytest.raises(lv.CheckpointError, match="checkpoint 1"):
        animate(s, [rec.checkpoints[0], other])


def _animation(run):
    model, loss_fn, data, rec = run
    obj = lv.Objective(model, loss_fn, data)
    return animate(obj, dict(zip(rec.steps[-3:], rec.checkpoints[-3:])), n=4, progress=False)


def test_save_animation_errors_name_what_to_install(run, tmp_path, monkeypatch):
    import plotly.graph_objects as go

    fig = _animation(run)
    with pytest.raises(lv.LossvizError, match=r"\.gif or \.mp4"):
        save_animation(fig, tmp_path / "a.png")
    with pytest.raises(lv.LossvizError, match="no frames"):
        save_animation(go.Figure(), tmp_path / "a.gif")
    with pytest.raises(lv.ArgumentTypeError, match="plotly Figure"):
        save_animation({}, tmp_path / "a.gif")
    with pytest.raises(lv.LossvizError, match="fps"):
        save_animation(fig, tmp_path / "a.gif", fps=0)
    monkeypatch.setitem(sys.modules, "kaleido", None)
    with pytest.raises(ImportError, match=r"pip install kaleido imageio"):
        save_animation(fig, tmp_path / "a.gif")
    monkeypatch.undo()
    kaleido = pytest.importorskip("kaleido")
    pytest.importorskip("imageio")

    def no_chrome(*a, **k):
        raise RuntimeError("Chrome not found")

    monkeypatch.setattr(kaleido, "start_sync_server", no_chrome)
    with pytest.raises(lv.LossvizError, match="apt-get install chromium"):
        save_animation(fig, tmp_path / "a.gif")
    assert not (tmp_path / "a.gif").exists()
    monkeypatch.undo()
    import lossviz.animation as animation

    monkeypatch.setattr(animation, "MP4_WRITER", "lossviz_no_such_module")  # as without PyAV
    with pytest.raises(lv.LossvizError, match="pip install av"):
        save_animation(fig, tmp_path / "a.mp4")
    assert not (tmp_path / "a.mp4").exists()


def _chromium() -> bool:
    return any(shutil.which(b) for b in ("chromium", "chromium-browser", "google-chrome"))


@pytest.mark.skipif(
    not (
        importlib.util.find_spec("kaleido") and importlib.util.find_spec("imageio") and _chromium()
    ),
    reason="the GIF export needs kaleido, imageio and a Chromium",
)
def test_gif_has_one_image_per_frame_and_the_marker_moves(run, tmp_path):
    import imageio.v3 as iio

    fig = _animation(run)
    out = save_animation(fig, tmp_path / "a.gif", fps=4, width=160, height=120)
    assert out == str(tmp_path / "a.gif")
    imgs = iio.imread(out)
    assert imgs.shape[0] == len(fig.frames) == 3 and imgs.shape[1:3] == (120, 160)
    assert [p.name for p in tmp_path.iterdir()] == ["a.gif"]  # no partial file left
    assert not np.array_equal(imgs[0], imgs[1]) and not np.array_equal(imgs[1], imgs[2])


@pytest.mark.skipif(
    not (
        importlib.util.find_spec("kaleido")
        and importlib.util.find_spec("imageio")
        and importlib.util.find_spec("av")
        and _chromium()
    ),
    reason="the MP4 export here is tested with PyAV (pip install av), kaleido and a Chromium",
)
def test_mp4_has_one_image_per_frame_even_for_odd_sizes(run, tmp_path):
    import imageio.v3 as iio

    fig = _animation(run)
    out = save_animation(fig, tmp_path / "a.mp4", fps=2.5, width=161, height=121)
    meta = iio.immeta(out, plugin="pyav")
    assert meta["codec"] == "h264" and meta["fps"] == 2.5
    imgs = iio.imread(out, plugin="pyav")
    assert imgs.shape[:3] == (3, 122, 162)  # the odd sizes padded by one row / column


def _playwright() -> bool:
    return bool(importlib.util.find_spec("playwright")) and _chromium()


@pytest.mark.skipif(not _playwright(), reason="needs pip playwright and a Chromium")
def test_the_html_plays_offline_in_a_browser(run, tmp_path):
    """The written file autoplays to the last frame, a slider jump shows that frame's
    path, marker and title, and the page requests nothing but itself."""
    from playwright.sync_api import sync_playwright

    model, loss_fn, data, rec = run
    fig = animate(lv.Objective(model, loss_fn, data), rec, n=4, frame_ms=20, progress=False)
    p = tmp_path / "anim.html"
    fig.write_html(p, include_plotlyjs=True)
    exe = next(
        shutil.which(b)
        for b in ("chromium", "chromium-browser", "google-chrome")
        if shutil.which(b)
    )
    k = 2

    def browse():
        # its own thread: the session's browser tests may hold a running Playwright (an
        # asyncio loop) in the main thread, where the sync API refuses to start another
        with sync_playwright() as pw:
            b = pw.chromium.launch(
                executable_path=exe, headless=True, args=["--no-sandbox", "--disable-gpu"]
            )
            try:
                page = b.new_page()
                errors, requests = [], []
                page.on("pageerror", lambda e: errors.append(str(e)))
                page.on("request", lambda r: requests.append(r.url))
                page.goto(p.as_uri())
                last = fig.frames[-1].layout.title.text
                page.wait_for_function(
                    "t => document.querySelector('.gtitle')?.textContent === t",
                    arg=last,
                    timeout=60000,
                )
                page.evaluate(
                    """name => Plotly.animate(document.querySelector('.plotly-graph-div'), [name],
                       {mode: 'immediate', frame: {duration: 0, redraw: true},
                        transition: {duration: 0}})""",
                    fig.frames[k].name,
                )
                title = page.text_content(".gtitle")
                shown = page.evaluate(
                    """() => { const f = document.querySelector('.plotly-graph-div')._fullData;
                       return [Array.from(f[f.length - 1].x), Array.from(f[f.length - 2].x)]; }"""
                )
            finally:
                b.close()
        return title, shown, errors, requests

    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        title, shown, errors, requests = pool.submit(browse).result()
    assert title == fig.frames[k].layout.title.text
    xy, _ = _marker(fig)
    assert shown[0] == pytest.approx([xy[k, 0]]) and shown[1] == pytest.approx(xy[: k + 1, 0])
    assert not errors
    assert [u for u in requests if not u.startswith("file:")] == []


@pytest.mark.parametrize("during", ["surface", "evaluate"])
def test_ctrl_c_raises_and_leaves_the_model_alone(run, monkeypatch, during):
    """An animation is all or nothing: Ctrl-C during its evaluations propagates."""
    import lossviz.landscape as landscape

    model, loss_fn, data, rec = run
    armed = []

    def loss(out, y):
        if armed:
            raise KeyboardInterrupt
        return loss_fn(out, y)

    original = getattr(landscape, during)

    def arm(*a, **k):
        armed.append(1)
        return original(*a, **k)

    monkeypatch.setattr(landscape, during, arm)
    obj = lv.Objective(model, loss, data)
    snap = snapshot(model)
    with pytest.raises(KeyboardInterrupt):
        animate(obj, rec, n=5, progress=False)
    assert_unchanged(model, snap)
    assert armed
