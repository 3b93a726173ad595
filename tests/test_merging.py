"""Merges against their formulas; greedy soups; the variance of averaged weights."""

import numpy as np
import pytest
import torch
from reference import Tick, Ticker, assert_unchanged, snapshot
from torch import nn

from lossviz.errors import CheckpointError, LossvizError
from lossviz.merging import averaging_variance, empirical_fisher, greedy_soup, merge
from lossviz.objective import Objective

F = nn.functional


def net(seed, hidden=7):
    torch.manual_seed(seed)
    return (
        nn.Sequential(nn.Linear(5, hidden), nn.BatchNorm1d(hidden), nn.Tanh(), nn.Linear(hidden, 3))
        .double()
        .eval()
    )


def data(n=30, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 5, generator=g, dtype=torch.float64), torch.randint(
        0, 3, (n,), generator=g
    )


def test_average_and_task_arithmetic_formulas():
    pts = [net(s) for s in range(3)]
    for i, p in enumerate(pts):
        p[1].running_mean.fill_(float(i))
    st = [p.state_dict() for p in pts]
    u = merge(pts)
    for k in st[0]:
        if st[0][k].is_floating_point():
            torch.testing.assert_close(u[k], (st[0][k] + st[1][k] + st[2][k]) / 3)
        else:
            assert torch.equal(u[k], st[0][k])
    w = merge(pts, method="weighted", weights=[1, 2, 5])
    w0 = [s["0.weight"] for s in st]
    torch.testing.assert_close(w["0.weight"], (w0[0] + 2 * w0[1] + 5 * w0[2]) / 8)
    base = net(9).state_dict()
    t = merge(pts, method="task_arithmetic", base=base, weights=0.3)
    torch.testing.assert_close(
        t["3.bias"], base["3.bias"] + 0.3 * sum(s["3.bias"] - base["3.bias"] for s in st)
    )
    t2 = merge(pts, method="task_arithmetic", base=base, weights=[1, 0, -1])
    torch.testing.assert_close(
        t2["3.weight"], base["3.weight"] + st[0]["3.weight"] - st[2]["3.weight"]
    )


def test_empirical_fisher_and_fisher_merge():
    x, y = data()
    model = net(0).train()
    model[0].weight.grad = torch.full_like(model[0].weight, 3.0)
    snap = snapshot(model)
    obj = Objective(model, F.cross_entropy, [(x[:20], y[:20]), (x[20:], y[20:])])
    a, b = net(1), net(2)
    fa = empirical_fisher(obj, a)
    direct = {n: torch.zeros_like(p) for n, p in a.named_parameters()}
    for i in range(len(y)):
        a.zero_grad()
        F.cross_entropy(a(x[i : i + 1]), y[i : i + 1]).backward()
        for n, p in a.named_parameters():
            direct[n] += p.grad**2 / len(y)
    for n in direct:
        torch.testing.assert_close(fa[n], direct[n])
    fb = empirical_fisher(obj, b)
    m = merge([a, b], method="fisher", obj=obj, weights=[1, 3])
    sa, sb = a.state_dict(), b.state_dict()
    for n in direct:
        expect = (fa[n] * sa[n] + 3 * fb[n] * sb[n]) / (fa[n] + 3 * fb[n])
        torch.testing.assert_close(m[n], expect)
    # buffers (not in the Fisher) get the weighted mean
    rv = "1.running_var"
    torch.testing.assert_close(m[rv], (sa[rv] + 3 * sb[rv]) / 4)
    assert_unchanged(model, snap)


def test_greedy_soup_adds_only_improving_ingredients():
    x, y = data(60)
    obj = Objective(net(0), F.cross_entropy, (x, y))
    good = net(1)
    opt = torch.optim.SGD(good.parameters(), lr=0.5)
    good.train()
    for _ in range(50):
        opt.zero_grad()
        F.cross_entropy(good(x), y).backward()
        opt.step()
    good.eval()
    near = {
        k: v + 1e-4 * torch.randn_like(v) if v.is_floating_point() else v
        for k, v in good.state_dict().items()
    }
    bad = net(5)
    soup, chosen = greedy_soup(obj, {"bad": bad, "good": good, "near": near})
    acc = {k: obj_acc(obj, p) for k, p in {"bad": bad, "good": good, "near": near}.items()}
    best = max(acc, key=acc.get)
    assert chosen[0] == best and "bad" not in chosen
    assert obj_acc(obj, soup) >= acc[best]
    for extra in [k for k in acc if k not in chosen]:
        with_extra = merge(
            [
                {"bad": bad.state_dict(), "good": good.state_dict(), "near": near}[k]
                for k in chosen + [extra]
            ]
        )
        assert obj_acc(obj, with_extra) <= obj_acc(obj, soup)


def obj_acc(obj, p):
    from lossviz.landscape import evaluate

    return float(evaluate(obj, [p], metrics=("accuracy",), at=p)["accuracy"][0])


def test_averaging_variance():
    nets = [nn.Sequential(nn.Linear(200, 300), nn.ReLU(), nn.Linear(300, 100)) for _ in range(4)]
    t = averaging_variance(nets)
    rows = {r["layer"]: r for r in t.table}
    assert list(rows) == ["0.weight", "2.weight"]
    ws = [n[0].weight.detach().double() for n in nets]
    assert rows["0.weight"]["before"] == pytest.approx(
        sum(float(w.var(correction=0)) for w in ws) / 4
    )
    assert rows["0.weight"]["after"] == pytest.approx(
        float(torch.stack(ws).mean(0).var(correction=0))
    )
    assert rows["2.weight"]["xavier"] == pytest.approx(2 / (300 + 100))
    # independent initializations: averaging k of them divides the variance by about k
    assert rows["0.weight"]["ratio"] == pytest.approx(0.25, rel=0.05)
    same = averaging_variance([nets[0], nets[0]])
    assert same.table[0]["ratio"] == pytest.approx(1.0)
    assert "xavier" in repr(t)
    fig = t.plot()
    assert fig.layout.title.text == "weight variance, averaging 4 models"
    before, after, xavier = fig.data
    for trace, key in ((before, "before"), (after, "after"), (xavier, "xavier")):
        assert list(trace.x) == ["0.weight", "2.weight"]
        np.testing.assert_array_equal(trace.y, [rows[k][key] for k in trace.x])
    assert xavier.y[0] == pytest.approx(2 / (200 + 300))


def test_bad_input():
    a, b = net(0), net(1)
    with pytest.raises(CheckpointError, match=r"3\.bias"):
        merge([a, {k: v for k, v in b.state_dict().items() if k != "3.bias"}])
    with pytest.raises(CheckpointError, match=r"0\.weight: \(7, 5\) vs \(8, 5\)"):
        merge([a, net(1, hidden=8)])
    with pytest.raises(LossvizError, match="method"):
        merge([a, b], method="ties")
    with pytest.raises(LossvizError, match="weights"):
        merge([a, b], method="weighted")
    with pytest.raises(LossvizError, match="2 weights for 3"):
        merge([a, b, a], method="weighted", weights=[1, 2])
    with pytest.raises(LossvizError, match="base"):
        merge([a, b], method="task_arithmetic")
    with pytest.raises(LossvizError, match="obj"):
        merge([a, b], method="fisher")
    with pytest.raises(LossvizError, match="no points"):
        merge([])
    with pytest.raises(TypeError):
        merge(a)


def test_merges_accept_weight_forms_and_move_devices_dtypes():
    pts = {"p": net(0), "q": net(1)}
    st = {k: m.state_dict() for k, m in pts.items()}
    expect = (st["p"]["0.weight"] + 3 * st["q"]["0.weight"]) / 4
    for w in ([1, 3], (1.0, 3.0), np.array([1, 3]), torch.tensor([1.0, 3.0]), {"q": 3, "p": 1}):
        m = merge(pts, method="weighted", weights=w)
        torch.testing.assert_close(m["0.weight"], expect)
    # one float32 point: averaged in float64, returned in the first point's dtype
    f32 = {k: v.float() if v.is_floating_point() else v for k, v in st["q"].items()}
    m = merge([st["p"], f32])
    assert m["0.weight"].dtype == torch.float64
    torch.testing.assert_close(
        m["0.weight"], (st["p"]["0.weight"] + f32["0.weight"].double()) / 2, atol=1e-7, rtol=0
    )
    # a single task vector
    base = net(9).state_dict()
    t = merge([st["p"]], method="task_arithmetic", base=base, weights=0.5)
    torch.testing.assert_close(
        t["3.bias"], base["3.bias"] + 0.5 * (st["p"]["3.bias"] - base["3.bias"])
    )
    # the result is a point and a state dict
    model = net(5)
    model.load_state_dict(m.state_dict())
    assert type(m.state_dict()) is dict


@pytest.mark.parametrize("when", ["first", "last"])
def test_ctrl_c_in_inner_calls_propagates(when):
    """Interrupting a forward inside greedy_soup / Fisher merging / the empirical Fisher
    raises KeyboardInterrupt (no other choice or number is returned) and changes no model."""
    ticker = Ticker()

    def tnet(seed):
        torch.manual_seed(seed)
        return (
            nn.Sequential(
                nn.Linear(5, 7), nn.BatchNorm1d(7), nn.Tanh(), Tick(ticker), nn.Linear(7, 3)
            )
            .double()
            .eval()
        )

    x, y = data(40)
    models = [tnet(s) for s in range(3)]
    obj = Objective(tnet(0), F.cross_entropy, [(x[:20], y[:20]), (x[20:], y[20:])])
    snaps = [snapshot(m) for m in models + [obj.model]]
    for call in (
        lambda: greedy_soup(obj, models, metric="loss"),
        lambda: greedy_soup(obj, models, bn="recompute"),
        lambda: merge(models, method="fisher", obj=obj),
        lambda: empirical_fisher(obj, models[1]),
    ):
        ticker.left = 100_000
        first = call()
        calls = 100_000 - ticker.left
        ticker.left = 0 if when == "first" else calls - 1
        with pytest.raises(KeyboardInterrupt):
            call()
        ticker.left = None
        again = call()
        if isinstance(first, tuple):  # greedy_soup: the same choice when not interrupted
            assert first[1] == again[1]
        for m, sn in zip(models + [obj.model], snaps):
            assert_unchanged(m, sn)


def test_greedy_soup_nan_ingredient_ranks_last():
    x, y = data(40)
    obj = Objective(net(0), F.cross_entropy, (x, y))
    good = net(1)
    broken = {k: v.clone() for k, v in net(2).state_dict().items()}
    broken["3.bias"][0] = float("nan")
    with pytest.warns(UserWarning, match="NaN"):
        soup, chosen = greedy_soup(obj, {"broken": broken, "good": good}, metric="loss")
    assert chosen == ["good"]
    assert all(torch.equal(soup[k], v) for k, v in good.state_dict().items())
