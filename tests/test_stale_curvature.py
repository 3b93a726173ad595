"""No stale curvature: after the weights change in place by any route (``.data``,
``no_grad`` in-place ops, ``load_state_dict``, an optimizer step, ``set_``, ``copy_``,
assigning ``.data``), ``hessian_eigs``, ``hessian_trace`` and ``Objective.hvp`` give the
curvature at the NEW weights, checked against a Hessian computed independently by plain
autograd on the loss written directly (``torch.func.functional_call``); a SubspaceTracker
in a hand-written SGD loop sees ``λ_max`` change between refreshes; and the dashboards'
staleness check notices a ``.data`` change."""

import numpy as np
import pytest
import torch
from torch import nn
from torch.autograd.functional import hessian

import lossviz as lv
from lossviz.hessian import point_version
from lossviz.subspace import SubspaceTracker

F = nn.functional


def _model(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2)).double()  # 26 params


def _data(n=30, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 3, generator=g, dtype=torch.float64), torch.randint(
        0, 2, (n,), generator=g
    )


X, Y = _data()


def direct_hessian(model, x=X, y=Y, loss_fn=F.cross_entropy):
    """The Hessian of ``loss_fn(model(x), y)`` at the model's current weights, by plain
    autograd (no lossviz code)."""
    names = [n for n, _ in model.named_parameters()]
    shapes = [p.shape for p in model.parameters()]
    sizes = [p.numel() for p in model.parameters()]

    def f(theta):
        d = {n: t.view(s) for n, t, s in zip(names, torch.split(theta, sizes), shapes)}
        return loss_fn(torch.func.functional_call(model, d, (x,)), y)

    theta = torch.cat([p.detach().reshape(-1) for p in model.parameters()])
    return hessian(f, theta)


def _mul3_data(m):
    for p in m.parameters():
        p.data.mul_(3)


def _mul3_no_grad(m):
    with torch.no_grad():
        for p in m.parameters():
            p.mul_(3)


def _load_state_dict(m):
    m.load_state_dict(_model(seed=5).state_dict())


def _sgd_step(m):
    opt = torch.optim.SGD(m.parameters(), lr=2.0)
    opt.zero_grad()
    F.cross_entropy(m(X), Y).backward()
    opt.step()
    m.zero_grad(set_to_none=True)


def _set(m):
    other = _model(seed=6)
    with torch.no_grad():
        for p, q in zip(m.parameters(), other.parameters()):
            p.set_(q.detach().clone())


def _copy_data(m):
    other = _model(seed=7)
    for p, q in zip(m.parameters(), other.parameters()):
        p.data.copy_(q.detach())


def _assign_data(m):
    other = _model(seed=8)
    for p, q in zip(m.parameters(), other.parameters()):
        p.data = q.detach().clone()


def _one_entry(m):
    with torch.no_grad():
        m[0].weight[1, 2] += 0.5  # one number of 26


ROUTES = {
    "p.data.mul_": _mul3_data,
    "no_grad p.mul_": _mul3_no_grad,
    "load_state_dict": _load_state_dict,
    "optimizer step": _sgd_step,
    "no_grad p.set_": _set,
    "p.data.copy_": _copy_data,
    "p.data = t": _assign_data,
    "one entry": _one_entry,
}


@pytest.mark.parametrize("route", list(ROUTES))
def test_curvature_follows_in_place_weight_changes(route):
    m = _model()
    obj = lv.Objective(m, F.cross_entropy, (X, Y))
    v = torch.randn(obj.n_params, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    H0 = direct_hessian(m)
    e1 = lv.hessian_eigs(obj, k=1, tol=1e-10, progress=False)
    t1 = lv.hessian_trace(obj, method="hutch++", max_hvp=500, progress=False)
    hv1 = obj.hvp(v).flatten()
    assert e1.values[0] == pytest.approx(float(torch.linalg.eigvalsh(H0)[-1]), rel=1e-9)
    assert t1.value == pytest.approx(float(torch.trace(H0)), rel=1e-9)  # the sketch spans all
    torch.testing.assert_close(hv1, H0 @ v)
    version = point_version(obj, None)
    assert point_version(obj, None) == version == e1.at_version

    ROUTES[route](m)
    H1 = direct_hessian(m)
    assert not torch.allclose(H1, H0, rtol=1e-6, atol=1e-9), "the route changed nothing"
    # the dashboards' staleness check notices the change
    assert point_version(obj, None) != e1.at_version
    e2 = lv.hessian_eigs(obj, k=1, tol=1e-10, progress=False)
    assert e2.values[0] == pytest.approx(float(torch.linalg.eigvalsh(H1)[-1]), rel=1e-9)
    t2 = lv.hessian_trace(obj, method="hutch++", max_hvp=500, progress=False)
    assert t2.value == pytest.approx(float(torch.trace(H1)), rel=1e-9)
    torch.testing.assert_close(obj.hvp(v).flatten(), H1 @ v)
    assert obj.loss() == pytest.approx(float(F.cross_entropy(m(X), Y).detach()), rel=1e-12)


@pytest.mark.parametrize("data", ["full", "minibatch"])
def test_tracker_in_a_hand_written_sgd_loop(data):
    """``p.data -= lr * p.grad``: λ_max changes between refreshes and equals the dense
    value at the weights of each refresh (full-data Hessian, or the mini-batch Hessian of
    the same batch object at every step)."""
    m = _model()
    lr = 1.5
    tr = SubspaceTracker(
        m,
        F.cross_entropy,
        k=1,
        every=3,
        data=(X, Y) if data == "full" else None,
        tol=1e-10,
        track=("gradient_fraction", "lambda_max"),
    )
    batch = (X, Y)
    want = {}
    for step in range(10):
        loss = F.cross_entropy(m(X), Y)
        m.zero_grad()
        loss.backward()
        if step % 3 == 0:
            want[step] = float(torch.linalg.eigvalsh(direct_hessian(m))[-1])
        tr.step(batch, loss=loss)  # θ_t on the batch of step t, before the update
        for p in m.parameters():
            p.data -= lr * p.grad
    got = {r["step"]: r["lambda_max"] for r in tr.history if r["refreshed"]}
    assert list(got) == [0, 3, 6, 9]
    for s in got:
        assert got[s] == pytest.approx(want[s], rel=1e-8)
    lams = np.array(list(got.values()))
    assert np.min(np.abs(np.diff(lams))) > 1e-4 * lams.max()  # it really changed


def test_changed_data_tensor_in_place_is_not_stale():
    """The single batch is compared too: changing the data tensors in place gives the
    curvature of the new data."""
    x, y = X.clone(), Y.clone()
    m = _model()
    obj = lv.Objective(m, F.cross_entropy, (x, y))
    lv.hessian_eigs(obj, k=1, progress=False)
    x.mul_(2)  # the caller's tensor; lossviz kept its own copy of the data or not
    H = direct_hessian(m, obj_data(obj)[0], obj_data(obj)[1])
    e = lv.hessian_eigs(obj, k=1, tol=1e-10, progress=False)
    assert e.values[0] == pytest.approx(float(torch.linalg.eigvalsh(H)[-1]), rel=1e-9)


def obj_data(obj):
    b, _ = next(iter(obj.batches()))
    return b
