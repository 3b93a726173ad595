"""compare_merges and model_stock against direct computation: every merge's weights against
its formula on state dicts (Model Stock's cosines by hand in numpy), losses against
``reference_loss`` of a fresh model loaded with the merge, barriers against a hand-made
straight line, and the per-layer gradient diagnostic against plain autograd."""

import copy

import numpy as np
import pytest
import torch
from reference import _model_copy, assert_unchanged, reference_gradient, reference_loss, snapshot
from torch import nn

import lossviz as lv
from lossviz.errors import ArgumentTypeError, CheckpointError, LossvizError
from lossviz.merge_comparison import MergeComparison, compare_merges, model_stock

F = nn.functional


def net(seed=0):
    torch.manual_seed(seed)
    return (
        nn.Sequential(nn.Linear(5, 6), nn.BatchNorm1d(6), nn.Tanh(), nn.Linear(6, 3))
        .double()
        .eval()
    )


def data(n=40, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 5, generator=g, dtype=torch.float64)
    return x, torch.randint(0, 3, (n,), generator=g)


def finetune(base, x, y, seed, steps=15):
    m = copy.deepcopy(base)
    opt = torch.optim.SGD(m.parameters(), lr=0.3)
    for _ in range(steps):
        opt.zero_grad()
        F.cross_entropy(m(x), y).backward()
        opt.step()
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():  # fine-tunes with their own running statistics
        m[1].running_mean.add_(0.1 * torch.randn(6, generator=g, dtype=torch.float64))
        m[1].running_var.mul_(1 + 0.2 * torch.rand(6, generator=g, dtype=torch.float64))
    m.zero_grad(set_to_none=True)
    return m.eval()


@pytest.fixture(scope="module")
def case():
    x, y = data()
    base = net(0)
    fts = {f"ft{i}": finetune(base, x[i::3], y[i::3], seed=i) for i in range(3)}
    return base, fts, (x, y)


def fisher_by_hand(model, x, y):
    out = {n: torch.zeros_like(p) for n, p in model.named_parameters()}
    m = copy.deepcopy(model)
    for i in range(len(y)):
        m.zero_grad()
        F.cross_entropy(m(x[i : i + 1]), y[i : i + 1]).backward()
        for n, p in m.named_parameters():
            out[n] += p.grad**2 / len(y)
    return out


def stock_by_hand(sds, base):
    k = len(sds)
    out = {}
    for key, v0 in base.items():
        if not v0.is_floating_point():
            out[key] = v0
            continue
        w0 = v0.numpy().ravel()
        d = [s[key].numpy().ravel() - w0 for s in sds]
        cos = np.mean(
            [
                d[i] @ d[j] / np.linalg.norm(d[i]) / np.linalg.norm(d[j])
                for i in range(k)
                for j in range(i + 1, k)
            ]
        )
        t = k * cos / (1 + (k - 1) * cos)
        avg = np.mean([s[key].numpy() for s in sds], axis=0)
        out[key] = torch.from_numpy(t * avg + (1 - t) * v0.numpy())
    return out


def direct_loss_acc(model, batches, state):
    m = _model_copy(model, "eval", state)
    with torch.no_grad():
        loss = float(reference_loss(m, F.cross_entropy, batches))
        x = torch.cat([b[0] for b in batches])
        y = torch.cat([b[1] for b in batches])
        acc = float((m(x).argmax(1) == y).double().mean())
    return loss, acc


def hand_barrier(model, batches, a, c, n):
    """The linear barrier on the straight line, floating tensors interpolated."""
    al = np.linspace(0, 1, n)
    f = [
        direct_loss_acc(
            model,
            batches,
            {k: (1 - t) * a[k] + t * c[k] if a[k].is_floating_point() else a[k] for k in a},
        )[0]
        for t in al
    ]
    return max(fi - ((1 - t) * f[0] + t * f[-1]) for fi, t in zip(f, al))


def test_merges_losses_barriers_and_diagnostic_against_direct_computation(case):
    base, fts, (x, y) = case
    model = net(5)
    model[0].weight.grad = torch.ones_like(model[0].weight)
    snaps = [snapshot(m) for m in [model, base, *fts.values()]]
    obj = lv.Objective(model, F.cross_entropy, [(x[:25], y[:25]), (x[25:], y[25:])])
    r = compare_merges(obj, fts, base=base, task_scale=0.4, n=5, progress=False)
    for m, s in zip([model, base, *fts.values()], snaps):
        assert_unchanged(m, s)
    sds = [m.state_dict() for m in fts.values()]
    b = base.state_dict()
    assert r.methods == list(lv.merge_comparison.MERGE_METHODS) and r.complete
    assert r.layers == ["0", "1", "3"]

    # each merge's weights against its formula
    mean = {k: sum(s[k] for s in sds) / 3 for k in b if b[k].is_floating_point()}
    for k, v in mean.items():
        torch.testing.assert_close(r.merged["uniform"][k], v)
        ta = b[k] + 0.4 * sum(s[k] - b[k] for s in sds)
        torch.testing.assert_close(r.merged["task_arithmetic"][k], ta)
    assert r.task_scale == 0.4 and r.task_scales == []
    fis = [fisher_by_hand(m, x, y) for m in fts.values()]
    for k in fis[0]:
        expect = sum(f[k] * s[k] for f, s in zip(fis, sds)) / sum(f[k] for f in fis)
        torch.testing.assert_close(r.merged["fisher"][k], expect)
    torch.testing.assert_close(r.merged["fisher"]["1.running_var"], mean["1.running_var"])
    stock = stock_by_hand(sds, b)
    for k, v in stock.items():
        torch.testing.assert_close(r.merged["model_stock"][k], v, rtol=1e-10, atol=1e-12)
    for k, c in r.stock_cosine.items():
        assert r.stock_ratio[k] == pytest.approx(3 * c / (1 + 2 * c))
    soup = [sds[list(fts).index(c)] for c in r.chosen]
    for k in mean:
        torch.testing.assert_close(r.merged["greedy_soup"][k], sum(s[k] for s in soup) / len(soup))
    assert r.merged["uniform"]["1.num_batches_tracked"] == sds[0]["1.num_batches_tracked"]

    # losses and accuracies against a fresh model loaded with each merge
    def direct(state):
        return direct_loss_acc(model, obj.held_batches(), state)

    def line_barrier(a, c):
        return hand_barrier(model, obj.held_batches(), a, c, 5)

    for i, meth in enumerate(r.methods):
        lo, ac = direct(r.merged[meth].state_dict())
        assert r.loss[i] == pytest.approx(lo, rel=1e-10)
        assert r.accuracy[i] == pytest.approx(ac)
    for i, s in enumerate(sds):
        assert r.finetune_loss[i] == pytest.approx(direct(s)[0], rel=1e-10)
    assert r.base_loss == pytest.approx(direct(b)[0], rel=1e-10)

    # barriers: the straight line by hand (floating tensors interpolated)
    for i, meth in enumerate(r.methods):
        for j, s in enumerate(sds):
            assert r.barriers[i, j] == pytest.approx(
                line_barrier(r.merged[meth].state_dict(), s), rel=1e-8, abs=1e-10
            )
    assert r.finetune_barriers[0, 2] == pytest.approx(line_barrier(sds[0], sds[2]), abs=1e-10)

    # the per-layer diagnostic against plain autograd on fresh copies
    data_ = obj.held_batches()
    names = [n for n, _ in model.named_parameters()]
    layer_of = np.array([n.rsplit(".", 1)[0] for n in names])
    sizes = [p.numel() for p in model.parameters()]
    owner = np.repeat(layer_of, sizes)
    for mi, meth in enumerate(r.methods):
        st = r.merged[meth].state_dict()
        _, gm = reference_gradient(model, F.cross_entropy, data_, at=st)
        for i, s in enumerate(sds):
            li, gi = reference_gradient(model, F.cross_entropy, data_, at=s)
            for j, layer in enumerate(r.layers):
                sel = torch.from_numpy(owner == layer)
                assert r.mismatch[mi, i, j] == pytest.approx(float((gm - gi)[sel].norm()), rel=1e-8)
                assert r.grad_norm[i, j] == pytest.approx(float(gi[sel].norm()), rel=1e-8)
                s2 = {
                    k: st[k] if k.rsplit(".", 1)[0] == layer and v.is_floating_point() else v
                    for k, v in s.items()
                }
                l2, g2 = reference_gradient(model, F.cross_entropy, data_, at=s2)
                assert r.isolated[mi, i, j] == pytest.approx(float((g2 - gi).norm()), rel=1e-8)
                assert r.isolated_loss[mi, i, j] == pytest.approx(l2 - li, rel=1e-8, abs=1e-12)

    # task vectors' cosines
    fb = torch.cat([b[n].reshape(-1) for n in names])
    tv = [torch.cat([s[n].reshape(-1) for n in names]) - fb for s in sds]
    c01 = float(tv[0] @ tv[1] / tv[0].norm() / tv[1].norm())
    assert r.task_cosine[0, 1] == pytest.approx(c01)


def test_task_scale_and_greedy_soup_are_chosen_on_held_out(case):
    base, fts, (x, y) = case
    xv, yv = data(30, seed=7)
    model = net(5)
    obj = lv.Objective(model, F.cross_entropy, (x, y))
    val = lv.Objective(model, F.cross_entropy, (xv, yv))
    grid = [0.2, 0.5, 1.0]
    r = compare_merges(
        obj,
        fts,
        base=base,
        methods=["task_arithmetic", "greedy_soup"],
        held_out=val,
        task_scale=grid,
        n=3,
        progress=False,
    )
    sds = [m.state_dict() for m in fts.values()]
    b = base.state_dict()
    direct = []
    for lam in grid:
        st = {
            k: b[k] + lam * sum(s[k] - b[k] for s in sds) if b[k].is_floating_point() else b[k]
            for k in b
        }
        m = _model_copy(model, "eval", st)
        with torch.no_grad():
            direct.append(float(reference_loss(m, F.cross_entropy, (xv, yv))))
    np.testing.assert_allclose(r.task_scale_losses, direct, rtol=1e-10)
    assert r.task_scale == grid[int(np.argmin(direct))]
    _, chosen = lv.greedy_soup(val, fts, progress=False)
    assert r.chosen == chosen
    assert r.notes == []


def test_barriers_between_unrelated_networks_against_the_line_by_hand():
    x, y = data()
    model = net(5)
    obj = lv.Objective(model, F.cross_entropy, (x, y))
    pts = [net(s) for s in (1, 2, 3)]
    r = compare_merges(obj, pts, methods=["uniform", "fisher"], n=7, progress=False)
    sds = [p.state_dict() for p in pts]
    for i, meth in enumerate(r.methods):
        for j, s in enumerate(sds):
            expect = hand_barrier(model, [(x, y)], r.merged[meth].state_dict(), s, 7)
            assert r.barriers[i, j] == pytest.approx(expect, rel=1e-8, abs=1e-12)
    for i in range(3):
        for j in range(3):
            expect = hand_barrier(model, [(x, y)], sds[i], sds[j], 7) if i != j else 0.0
            assert r.finetune_barriers[i, j] == pytest.approx(expect, rel=1e-8, abs=1e-12)
    assert r.finetune_barriers.max() > 0.01 or r.barriers.max() > 0.01  # not all zero


def test_fisher_on_each_finetunes_own_data(case):
    base, fts, (x, y) = case
    model = net(5)
    obj = lv.Objective(model, F.cross_entropy, (x, y))
    own = {nm: lv.Objective(model, F.cross_entropy, (x[i::3], y[i::3])) for i, nm in enumerate(fts)}
    r = compare_merges(obj, fts, methods=["fisher"], fisher_data=own, n=2, progress=False)
    sds = [m.state_dict() for m in fts.values()]
    fis = [fisher_by_hand(m, x[i::3], y[i::3]) for i, m in enumerate(fts.values())]
    for k in fis[0]:
        expect = sum(f[k] * s[k] for f, s in zip(fis, sds)) / sum(f[k] for f in fis)
        torch.testing.assert_close(r.merged["fisher"][k], expect)
    mean_rv = sum(s["1.running_var"] for s in sds) / 3
    torch.testing.assert_close(r.merged["fisher"]["1.running_var"], mean_rv)
    # a list in the fine-tunes' order is the same
    r2 = compare_merges(
        obj, fts, methods=["fisher"], fisher_data=list(own.values()), n=2, progress=False
    )
    torch.testing.assert_close(r2.merged["fisher"]["3.weight"], r.merged["fisher"]["3.weight"])
    with pytest.raises(LossvizError, match="missing"):
        compare_merges(obj, fts, methods=["fisher"], fisher_data={"ft0": obj})
    with pytest.raises(LossvizError, match="2 Objectives for 3"):
        compare_merges(obj, fts, methods=["fisher"], fisher_data=[obj, obj])
    with pytest.raises(ArgumentTypeError, match="one Objective per fine-tune"):
        compare_merges(obj, fts, methods=["fisher"], fisher_data=obj)
    with pytest.raises(LossvizError, match="only used with"):
        compare_merges(obj, fts, methods=["uniform"], fisher_data=[obj] * 3)


def test_model_stock_by_hand_and_special_cases():
    base = {"w": torch.zeros(3, dtype=torch.float64), "n": torch.tensor(3)}
    a = {"w": torch.tensor([1.0, 0.0, 0.0], dtype=torch.float64), "n": torch.tensor(3)}
    b = {"w": torch.tensor([0.0, 1.0, 1.0], dtype=torch.float64), "n": torch.tensor(3)}
    # orthogonal changes: cos = 0, t = 0 -> the base
    torch.testing.assert_close(model_stock([a, b], base=base)["w"], base["w"])
    # equal changes: cos = 1, t = 1 -> the mean
    c = {"w": torch.tensor([2.0, 0.0, 0.0], dtype=torch.float64), "n": torch.tensor(3)}
    torch.testing.assert_close(model_stock([a, c], base=base)["w"], (a["w"] + c["w"]) / 2)
    # opposite changes: they cancel out
    d = {"w": -a["w"], "n": torch.tensor(3)}
    with pytest.raises(LossvizError, match="cancel out"):
        model_stock([a, d], base=base)
    # negative cosine: t < 0 and a warning
    e = {"w": torch.tensor([-1.0, 1.0, 0.0], dtype=torch.float64), "n": torch.tensor(3)}
    with pytest.warns(UserWarning, match="point apart"):
        w = model_stock([a, e], base=base)["w"]
    cos = -1 / 2**0.5
    t = 2 * cos / (1 + cos)
    torch.testing.assert_close(w, t * (a["w"] + e["w"]) / 2)
    # a tensor no fine-tune changed stays at the base; one only some changed counts as cos 0
    base2 = {"w": base["w"], "v": torch.ones(2, dtype=torch.float64)}
    a2 = {"w": a["w"], "v": torch.ones(2, dtype=torch.float64)}
    c2 = {"w": c["w"], "v": torch.ones(2, dtype=torch.float64) * 3}
    out = model_stock({"a": a2, "c": c2}, base=base2)
    torch.testing.assert_close(out["v"], base2["v"])
    # k = 3: the mean of the pairwise cosines
    f = {"w": torch.tensor([1.0, 1.0, 0.0], dtype=torch.float64), "n": torch.tensor(3)}
    pts = [a, b, f]
    dv = [p["w"].numpy() for p in pts]
    cs = [
        dv[i] @ dv[j] / np.linalg.norm(dv[i]) / np.linalg.norm(dv[j])
        for i, j in [(0, 1), (0, 2), (1, 2)]
    ]
    t3 = 3 * np.mean(cs) / (1 + 2 * np.mean(cs))
    np.testing.assert_allclose(
        model_stock(pts, base=base)["w"].numpy(), t3 * np.mean(dv, axis=0), rtol=1e-12
    )


def test_bad_input_is_named_before_any_work(case):
    base, fts, (x, y) = case
    model = net(5)
    snap = snapshot(model)
    obj = lv.Objective(model, F.cross_entropy, (x, y))
    with pytest.raises(LossvizError, match="at least 2"):
        compare_merges(obj, {"a": fts["ft0"]}, base=base)
    with pytest.raises(ArgumentTypeError, match="single point"):
        compare_merges(obj, fts["ft0"], base=base)
    with pytest.raises(LossvizError, match="methods\\[1\\]"):
        compare_merges(obj, fts, base=base, methods=["uniform", "ties"])
    with pytest.raises(LossvizError, match="repeated"):
        compare_merges(obj, fts, base=base, methods=["uniform", "uniform"])
    with pytest.raises(LossvizError, match="need base="):
        compare_merges(obj, fts)
    other = nn.Sequential(nn.Linear(5, 4), nn.Tanh(), nn.Linear(4, 3)).double()
    with pytest.raises(CheckpointError, match=r"finetunes\['odd'\].*architecture"):
        compare_merges(obj, {**fts, "odd": other}, base=base)
    with pytest.raises(CheckpointError, match="base"):
        compare_merges(obj, fts, base=other)
    with pytest.raises(LossvizError, match="kind"):
        compare_merges(obj, fts, base=base, kind="max")
    with pytest.raises(LossvizError, match="n"):
        compare_merges(obj, fts, base=base, n=1)
    fwd = lv.Objective(model, data=[(x, y)], forward=lambda m, b: F.cross_entropy(m(b[0]), b[1]))
    with pytest.raises(LossvizError, match="fisher"):
        compare_merges(fwd, fts, base=base, methods=["fisher", "uniform"], accuracy=False)
    with pytest.raises(LossvizError, match="accuracy=False"):
        compare_merges(fwd, fts, methods=["uniform"])
    # with forward=: loss, barriers and the diagnostic (no accuracy)
    r = compare_merges(fwd, fts, methods=["uniform"], accuracy=False, n=2, progress=False)
    ref = compare_merges(obj, fts, methods=["uniform"], n=2, progress=False)
    np.testing.assert_allclose(r.isolated, ref.isolated, rtol=1e-10)
    assert np.isnan(r.accuracy).all() and r.loss[0] == pytest.approx(ref.loss[0], rel=1e-12)
    with pytest.raises(ArgumentTypeError):
        compare_merges(model, fts, base=base)
    with pytest.raises(CheckpointError, match="architecture"):
        model_stock([fts["ft0"], other], base=base)
    assert_unchanged(model, snap)


def test_without_base_repr_plot_and_store(case, tmp_path, monkeypatch):
    base, fts, (x, y) = case
    obj = lv.Objective(net(5), F.cross_entropy, (x, y))
    r = compare_merges(obj, list(fts.values()), methods=("uniform", "fisher"), n=3, progress=False)
    # two gradients per vmap call: the same numbers
    monkeypatch.setattr(lv.merge_comparison, "_MAX_CHUNK", 2)
    r2 = compare_merges(obj, list(fts.values()), methods=("uniform", "fisher"), n=3, progress=False)
    for f in ("isolated", "isolated_loss", "mismatch", "grad_norm"):
        np.testing.assert_allclose(getattr(r2, f), getattr(r, f), rtol=1e-10, atol=1e-14)
    assert r.finetunes == ["0", "1", "2"] and np.isnan(r.base_loss) and r.task_cosine is None
    text = repr(r)
    assert "MergeComparison(2 merges of 3 fine-tunes" in text and "fisher" in text
    assert "<table" in r._repr_html_()
    assert r.layer_table("fisher")[0]["layer"] == "0"
    with pytest.raises(KeyError):
        r.layer_table("model_stock")
    for what in ("summary", "isolated", "mismatch"):
        assert len(r.plot(what).data) > 0
    p = tmp_path / "merges.npz"
    r.save(p)
    r2 = lv.load(p)
    assert isinstance(r2, MergeComparison)
    np.testing.assert_array_equal(r2.isolated, r.isolated)
    np.testing.assert_array_equal(r2.barriers, r.barriers)
    torch.testing.assert_close(r2.merged["fisher"]["0.weight"], r.merged["fisher"]["0.weight"])
    assert r2.methods == r.methods and r2.layers == r.layers


@pytest.mark.parametrize("left", [0, 3, 12])
def test_ctrl_c_gives_a_partial_result_and_leaves_the_models_alone(left):
    from reference import Tick, Ticker

    x, y = data()
    ticker = Ticker()
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 4), Tick(ticker), nn.Tanh(), nn.Linear(4, 3)).double()
    fts = []
    for _ in range(2):
        m = copy.deepcopy(model)
        with torch.no_grad():
            for p in m.parameters():
                p.add_(0.1 * torch.randn_like(p))
        fts.append(m)
    snaps = [snapshot(m) for m in [model, *fts]]
    obj = lv.Objective(model, F.cross_entropy, (x, y))
    ticker.left = left
    r = compare_merges(obj, fts, base=model, n=3, progress=False)
    ticker.left = None
    assert not r.complete and "INCOMPLETE" in repr(r)
    assert np.isnan(r.barriers).all()
    for m, s in zip([model, *fts], snaps):
        assert_unchanged(m, s)
