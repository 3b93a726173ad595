"""N-D slices (lossviz.ndgrid): every grid value against the loss of a fresh copy of
the model with its weights set by hand (tests/reference.py ``reference_loss``), the model
unchanged, values streamed to a .npy file in blocks, Ctrl-C keeping the finished part,
grids too large refused with their size, and bad input refused before any forward."""

from __future__ import annotations

import copy
import itertools

import numpy as np
import pytest
import torch
from reference import Tick, Ticker, assert_unchanged, reference_loss, snapshot
from torch import nn

import lossviz as lv
import lossviz.ndgrid as H
from lossviz.ndgrid import HypercubeResult, hypercube

F = nn.functional


class Count(nn.Module):
    """An identity layer counting the forwards (shared by every copy)."""

    def __init__(self, box):
        super().__init__()
        self.box = box

    def forward(self, x):
        self.box["n"] += 1
        return x


class _Box(dict):
    def __deepcopy__(self, memo):
        return self


def tiny(seed=0, extra=None):
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    layers = [nn.Linear(5, 6), nn.Tanh(), nn.Linear(6, 3)]
    if extra is not None:
        layers.insert(1, extra)
    m = nn.Sequential(*layers).double()
    x = torch.randn(30, 5, generator=g, dtype=torch.float64)
    y = torch.randint(0, 3, (30,), generator=g)
    data = [(x[:11], y[:11]), (x[11:], y[11:])]  # uneven batches: a weighted mean
    return m, data


def dirs_of(model, k, seed=1):
    g = torch.Generator().manual_seed(seed)
    return [
        {n: torch.randn(p.shape, generator=g, dtype=p.dtype) for n, p in model.named_parameters()}
        for _ in range(k)
    ]


def direct(model, data, dirs, c):
    """The loss at θ + Σ c_k·d_k on a fresh copy with the weights set by hand."""
    m = copy.deepcopy(model)
    with torch.no_grad():
        for n, p in m.named_parameters():
            p.add_(sum(float(ck) * d[n] for ck, d in zip(c, dirs)))
    return float(reference_loss(m, F.cross_entropy, data).detach())


@pytest.mark.parametrize("batched", [None, True, False])
def test_values_equal_direct_evaluation(batched):
    m, data = tiny()
    obj = lv.Objective(m, F.cross_entropy, data)
    dirs = dirs_of(m, 3)
    before = snapshot(m)
    spans = [(-1, 1), (0, 0.5), (-0.3, 0.9)]
    h = hypercube(obj, dirs, n=(3, 2, 4), span=spans, batched=batched, progress=False)
    assert h.shape == (3, 2, 4) and h.complete and h.n_evaluated == 24
    for k, (lo, hi) in enumerate(spans):
        np.testing.assert_allclose(h.axes[k], np.linspace(lo, hi, h.shape[k]))
    for idx in itertools.product(*(range(s) for s in h.shape)):
        c = [h.axes[k][i] for k, i in enumerate(idx)]
        assert h.loss[idx] == pytest.approx(direct(m, data, dirs, c), rel=1e-12, abs=1e-13)
    assert_unchanged(m, before)
    assert h.provenance.kernel == "hypercube" and h.evaluated.all()
    assert torch.equal(h.center["0.weight"], m[0].weight)
    assert "3×2×4 grid in 3 directions" in repr(h) and "loss" in h._repr_html_()


def test_around_another_center():
    m, data = tiny()
    other, _ = tiny(seed=5)
    obj = lv.Objective(m, F.cross_entropy, data)
    dirs = dirs_of(m, 3, seed=2)
    before = snapshot(m)
    h = hypercube(obj, dirs, center=other.state_dict(), n=3, span=(-0.5, 0.5), progress=False)
    assert_unchanged(m, before)
    for idx in [(0, 0, 0), (1, 1, 1), (2, 0, 1)]:
        c = [h.axes[k][i] for k, i in enumerate(idx)]
        assert h.loss[idx] == pytest.approx(direct(other, data, dirs, c), rel=1e-12)


def test_default_directions_and_metrics():
    m, data = tiny()
    obj = lv.Objective(m, F.cross_entropy, data)
    h = hypercube(obj, 4, n=3, metrics=("loss", "accuracy"), progress=False)
    assert h.shape == (3,) * 4 and set(h.values) == {"loss", "accuracy"}
    assert h.loss[1, 1, 1, 1] == pytest.approx(obj.loss(), rel=1e-12)  # c = 0: the model
    rd = lv.random_directions(obj, 4, seed=0)
    for a, b in zip(h.directions, rd):
        for k in a:
            assert torch.equal(a[k], b[k])
    assert ((h["accuracy"] >= 0) & (h["accuracy"] <= 1)).all()


def test_streamed_to_disk_in_blocks_equals_in_memory(tmp_path, monkeypatch):
    m, data = tiny()
    obj = lv.Objective(m, F.cross_entropy, data)
    dirs = dirs_of(m, 3)
    full = hypercube(obj, dirs, n=(4, 3, 5), progress=False)
    monkeypatch.setattr(H, "BLOCK", 7)  # 60 points in 9 blocks
    p = tmp_path / "grid.npy"
    before = snapshot(m)
    h = hypercube(obj, dirs, n=(4, 3, 5), path=p, metrics=("loss", "error"), progress=False)
    assert_unchanged(m, before)
    assert h.path == str(p) and isinstance(h.loss, np.memmap)
    np.testing.assert_allclose(h.loss, full.loss, rtol=1e-12, atol=1e-14)
    on_disk = np.load(p)
    assert on_disk.shape == (2, 4, 3, 5)
    np.testing.assert_array_equal(on_disk[0], h.loss)
    np.testing.assert_array_equal(on_disk[1], h["error"])


def test_ctrl_c_keeps_the_finished_part(tmp_path, monkeypatch):
    ticker = Ticker()
    m, data = tiny(extra=Tick(ticker))
    obj = lv.Objective(m, F.cross_entropy, data)
    dirs = dirs_of(m, 3)
    full = hypercube(obj, dirs, n=(3, 3, 3), batched=False, progress=False)
    monkeypatch.setattr(H, "BLOCK", 4)
    before = snapshot(m)
    ticker.left = 25  # forwards (2 batches per point): stops in the fourth block
    with pytest.warns(UserWarning, match="interrupted") as caught:
        h = hypercube(
            obj,
            dirs,
            n=(3, 3, 3),
            batched=False,
            chunk_size=2,
            path=tmp_path / "g.npy",
            progress=False,
        )
    ticker.left = None
    # one warning counting the whole grid (not the engine's count of one block)
    said = [str(w.message) for w in caught if "interrupted" in str(w.message)]
    assert said == [
        f"hypercube interrupted: {h.n_evaluated} of 27 grid points evaluated (the first ones "
        "in C order); the others are NaN (result marked incomplete)"
    ]
    assert_unchanged(m, before)
    assert not h.complete and 0 < h.n_evaluated < 27
    k = h.n_evaluated
    flat = np.asarray(h.loss).reshape(-1)
    np.testing.assert_allclose(flat[:k], full.loss.reshape(-1)[:k], rtol=1e-12)
    assert np.isnan(flat[k:]).all()
    assert np.isnan(np.load(tmp_path / "g.npy")[0].reshape(-1)[k:]).all()
    assert h.evaluated.reshape(-1).tolist() == [True] * k + [False] * (27 - k)
    assert "INCOMPLETE" in repr(h)
    with pytest.raises(lv.LossvizError, match="incomplete"):
        h.topology()


def counted():
    box = _Box(n=0)
    m, data = tiny(extra=Count(box))
    obj = lv.Objective(m, F.cross_entropy, data)
    box["n"] = 0  # (building the Objective may run one forward)
    return obj, m, box


def test_a_grid_too_large_says_how_large_before_any_work(tmp_path, monkeypatch):
    obj, m, box = counted()
    with pytest.raises(
        lv.LossvizError, match=r"too large for the memory: 10,000,000,000,000,000 grid points"
    ):
        hypercube(obj, 4, n=10_000)
    with pytest.raises(lv.LossvizError, match=r"GiB.*pass path='grid.npy'"):
        hypercube(obj, 4, n=10_000)
    with pytest.raises(lv.LossvizError, match=r"too large for the disk: .* free"):
        hypercube(obj, 4, n=10_000, path=tmp_path / "g.npy")
    # a smaller limit: a grid that fits on disk but not in the memory share
    monkeypatch.setattr(H, "_available_memory", lambda: 4000.0)
    with pytest.raises(lv.LossvizError, match=r"1,000 grid points × 1 metric\(s\)"):
        hypercube(obj, 3, n=10)
    assert box["n"] == 0 and not (tmp_path / "g.npy").exists()
    h = hypercube(obj, 3, n=10, path=tmp_path / "ok.npy", progress=False)  # on disk it fits
    assert h.complete and box["n"] > 0


@pytest.mark.parametrize(
    "args,kw,err,match",
    [
        ((2,), {}, lv.LossvizError, r"d >= 3 .*lossviz.surface"),
        (("abc",), {}, TypeError, "directions must be"),
        ((torch.zeros(4),), {}, lv.LossvizError, r"\(d, P\)"),
        ((3,), {"n": 1}, lv.LossvizError, "n must be an integer >= 2"),
        ((3,), {"n": (3, 3)}, lv.LossvizError, "2 numbers for 3 directions"),
        ((3,), {"n": 2.5}, TypeError, "n must be"),
        ((3,), {"span": (1, 0)}, lv.LossvizError, "low < high"),
        ((3,), {"span": [(0, 1)] * 2}, lv.LossvizError, "2 ranges for 3 directions"),
        ((3,), {"span": "ab"}, TypeError, "span"),
        ((3,), {"seed": -1}, lv.LossvizError, "seed"),
        ((3,), {"bogus": 1}, TypeError, "bogus"),
        ((3,), {"chunk_size": 0}, lv.LossvizError, "chunk_size"),
        ((3,), {"path": 3}, TypeError, "path must be"),
        ((3,), {"path": "/no/such/folder/g.npy"}, lv.LossvizError, "does not exist"),
    ],
)
def test_bad_input_before_any_forward(args, kw, err, match):
    obj, m, box = counted()
    before = snapshot(m)
    with pytest.raises(err, match=match):
        hypercube(obj, *args, **kw)
    assert box["n"] == 0
    assert_unchanged(m, before)


def test_bad_directions_before_any_forward(tmp_path):
    obj, m, box = counted()
    d1, d2, d3 = dirs_of(m, 3)
    dep = {k: d1[k] + 2 * d2[k] for k in d1}
    zero = {k: torch.zeros_like(v) for k, v in d1.items()}
    nan = {k: v.clone() for k, v in d1.items()}
    nan["0.weight"][0, 0] = float("nan")
    with pytest.raises(lv.LossvizError, match="linearly dependent"):
        hypercube(obj, [d1, d2, dep])
    with pytest.raises(lv.LossvizError, match=r"directions \[1\] are zero"):
        hypercube(obj, [d1, zero, d3])
    with pytest.raises(lv.LossvizError, match="NaN or inf"):
        hypercube(obj, [d1, d2, nan])
    with pytest.raises(lv.LossvizError, match="is a folder"):
        hypercube(obj, [d1, d2, d3], path=tmp_path)
    with pytest.raises(TypeError, match="Objective"):
        hypercube(m, 3)
    assert box["n"] == 0


def test_projections_and_topology():
    m, data = tiny()
    obj = lv.Objective(m, F.cross_entropy, data)
    h = hypercube(obj, dirs_of(m, 3, seed=4), n=(5, 4, 3), span=(-2, 2), progress=False)
    f = np.asarray(h.loss)
    p = h.projection((0, 1))
    assert p.shape == (4, 5)
    for q in range(4):
        for r in range(5):
            assert p[q, r] == min(f[r, q, k] for k in range(3))
    p2 = h.projection((2, 0), reduce="mean")
    assert p2.shape == (5, 3)
    for q in range(5):
        for r in range(3):
            assert p2[q, r] == pytest.approx(np.mean([f[q, j, r] for j in range(4)]), rel=1e-14)
    from test_topology import assert_matches_brute

    t = h.topology()
    assert_matches_brute(t, f)
    np.testing.assert_array_equal(
        t.coords(t.minima)[0],
        [h.axes[k][i] for k, i in enumerate(np.unravel_index(f.argmin(), f.shape))],
    )
    fig = h.plot((0, 2), topology=t)
    assert [tr.name for tr in fig.data[1:]] == ["minima", "saddles"]
    np.testing.assert_allclose(fig.data[1].x, t.coords(t.minima)[:, 0])
    np.testing.assert_allclose(fig.data[1].y, t.coords(t.minima)[:, 2])
    with pytest.raises(lv.LossvizError, match="two different axes"):
        h.projection((1, 1))
    with pytest.raises(lv.LossvizError, match="reduce"):
        h.projection((0, 1), reduce="max")
    with pytest.raises(lv.LossvizError, match="axes"):
        h.projection((0, 3))


def test_save_and_load(tmp_path):
    m, data = tiny()
    obj = lv.Objective(m, F.cross_entropy, data)
    h = hypercube(obj, 3, n=3, path=tmp_path / "g.npy", progress=False)
    h.save(tmp_path / "h.npz")
    back = lv.load(tmp_path / "h.npz")
    assert isinstance(back, HypercubeResult)
    np.testing.assert_array_equal(back.loss, h.loss)
    assert back.shape == h.shape and back.complete and back.path == h.path
    assert back.provenance.kernel == "hypercube"
    assert torch.equal(back.directions[0]["0.weight"], h.directions[0]["0.weight"])


def test_non_finite_values_are_kept_and_named_closed_form():
    class P(nn.Module):
        def __init__(self):
            super().__init__()
            self.W = nn.Parameter(torch.ones(2, 2, dtype=torch.float64))

    obj = lv.Objective(P(), forward=lambda m, b: torch.log(m.W.sum() - 3.0), data=(torch.zeros(1),))
    dirs = []
    for i, j in [(0, 0), (0, 1), (1, 1)]:
        e = torch.zeros(2, 2, dtype=torch.float64)
        e[i, j] = 1
        dirs.append({"W": e})
    # L(c) = log(W.sum() - 3) = log(1 + c0 + c1 + c2): NaN below -1, -inf at -1
    with pytest.warns(UserWarning, match=r"loss is not finite at 10 of 27 evaluated grid points"):
        h = hypercube(obj, dirs, n=3, progress=False)
    c = np.stack(np.meshgrid(*h.axes, indexing="ij")).sum(0)
    with np.errstate(divide="ignore", invalid="ignore"):
        want = np.log(1 + c)
    np.testing.assert_allclose(h.loss, want, rtol=1e-15, equal_nan=True)
    assert np.isneginf(h.loss[0, 1, 1]) and "NOT FINITE at 10 point(s)" in repr(h)
    with pytest.raises(lv.LossvizError, match=r"6 grid point\(s\) are -inf \(at \(-1, -1, 1\)"):
        h.topology(nonfinite="top")  # -inf is never placed
