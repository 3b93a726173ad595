"""Ctrl-C in the curvature functions: an interrupt either propagates (state restored) or
gives a visibly partial result (``complete=False``, NaN where nothing was computed), never a
number that looks final. Interrupts are injected from the curvature products (after a
number of product vectors) or from the model's forward (after a number of calls); every
number kept is checked against a dense Hessian by plain autograd, and the user's model
against a snapshot."""

import warnings

import numpy as np
import pytest
import torch
from reference import assert_unchanged, snapshot
from torch import nn
from torch.autograd.functional import hessian

import lossviz as lv
from lossviz.hvp import CurvatureOperator
from lossviz.interrupt import inner
from lossviz.subspace import SubspaceTracker
from lossviz.trajectory import sharpness_along, trace_along

F = nn.functional


@pytest.fixture
def trip(monkeypatch):
    """``trip(n)``: the curvature products raise KeyboardInterrupt once ``n`` more product
    vectors have been computed; ``trip(None)`` disarms."""
    state = {"left": None}
    orig = CurvatureOperator.apply

    def apply(self, V):
        if state["left"] is not None:
            if state["left"] < V.shape[0]:
                state["left"] = None
                raise KeyboardInterrupt
            state["left"] -= V.shape[0]
        return orig(self, V)

    monkeypatch.setattr(CurvatureOperator, "apply", apply)

    def arm(n):
        state["left"] = n

    return arm


FORWARDS = {"left": None}


class TripForward(nn.Module):
    """A tanh MLP whose forward raises KeyboardInterrupt when ``FORWARDS["left"]`` calls
    have been made (a module-level counter: lossviz evaluates a private copy)."""

    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(5, 7), nn.Tanh(), nn.Linear(7, 3))

    def forward(self, x):
        if FORWARDS["left"] is not None:
            if FORWARDS["left"] == 0:
                FORWARDS["left"] = None
                raise KeyboardInterrupt
            FORWARDS["left"] -= 1
        return self.net(x)


def _model(seed=0):
    torch.manual_seed(seed)
    return TripForward().double()


def _data(n=24, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 5, generator=g, dtype=torch.float64), torch.randint(
        0, 3, (n,), generator=g
    )


X, Y = _data()


def dense(model, state=None, x=X, y=Y):
    """The Hessian of the mean cross-entropy at ``state`` (default: the model's weights)."""
    names = [n for n, _ in model.named_parameters()]
    shapes = [p.shape for p in model.parameters()]
    sizes = [p.numel() for p in model.parameters()]
    state = state if state is not None else {n: p.detach() for n, p in model.named_parameters()}

    def f(theta):
        d = {n: t.view(s) for n, t, s in zip(names, torch.split(theta, sizes), shapes)}
        return F.cross_entropy(torch.func.functional_call(model.net, _strip(d), (x,)), y)

    theta = torch.cat([state[n].reshape(-1).double() for n in names])
    return hessian(f, theta)


def _strip(d):
    return {k.removeprefix("net."): v for k, v in d.items()}


def _checkpoints(model, n=3):
    """``n`` points along a short SGD run (state dicts), the model left at the last."""
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    pts = []
    for _ in range(n):
        pts.append({k: v.clone() for k, v in model.state_dict().items()})
        for _ in range(5):
            opt.zero_grad()
            F.cross_entropy(model(X), Y).backward()
            opt.step()
    model.zero_grad(set_to_none=True)
    return pts


def test_hessian_diagonal_keeps_its_finished_probes(trip):
    m = _model()
    obj = lv.Objective(m, F.cross_entropy, (X, Y))
    snap = snapshot(m)
    trip(40)  # batches of 16 probes: two finish, the third is interrupted
    with pytest.warns(UserWarning, match="interrupted"):
        d = lv.hessian_diagonal(obj, n_probes=100, batch_size=16, progress=False)
    assert isinstance(d, lv.Weights) and not d.complete
    assert d.n_probes == 32 and d.requested == 100
    assert "INCOMPLETE" in repr(d) and "32 of 100" in repr(d)
    # the estimate from those 32 probes (same seed, same probes; the product method chosen
    # by timing may differ between the calls, so equal up to rounding)
    ref = lv.hessian_diagonal(obj, n_probes=32, batch_size=16, progress=False)
    assert ref.complete and "INCOMPLETE" not in repr(ref)
    torch.testing.assert_close(d.flatten(), ref.flatten(), rtol=1e-10, atol=1e-14)
    torch.testing.assert_close(d.stderr.flatten(), ref.stderr.flatten(), rtol=1e-10, atol=1e-14)
    # and within its standard error of the exact diagonal
    H = dense(m)
    err = (d.flatten() - torch.diag(H)).abs()
    assert bool((err <= 6 * d.stderr.flatten() + 1e-12).all())
    # still a Weights everywhere: arithmetic, dot, flatten
    assert float((d - d).norm()) == 0 and float(d.dot(d)) > 0
    assert_unchanged(m, snap)
    # nothing finished: the interrupt propagates
    trip(3)
    with pytest.raises(KeyboardInterrupt):
        lv.hessian_diagonal(obj, n_probes=100, batch_size=16, progress=False)


def test_an_outer_call_owns_the_interrupt(trip):
    """Inside another lossviz call, the kernels never turn Ctrl-C into a partial result:
    it propagates to the outermost call."""
    m = _model()
    obj = lv.Objective(m, F.cross_entropy, (X, Y))
    calls = [
        lambda: lv.hessian_eigs(obj, k=2, tol=1e-12, progress=False),
        lambda: lv.hessian_density(obj, n_probes=2, steps=30, progress=False),
        lambda: lv.hessian_trace(obj, rtol=0, max_hvp=200, batch_size=8, progress=False),
        lambda: lv.hessian_diagonal(obj, n_probes=100, batch_size=8, progress=False),
    ]
    for call in calls:
        trip(20)
        with inner(), pytest.raises(KeyboardInterrupt):
            call()
        trip(20)  # the outermost call keeps what it finished
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            assert not call().complete


def test_sharpness_along_is_partial_never_wrong(trip):
    m = _model()
    pts = _checkpoints(m)
    obj = lv.Objective(m, F.cross_entropy, (X, Y))
    snap = snapshot(m)
    full = sharpness_along(obj, pts, k=2, tol=1e-10)
    assert full.complete and "INCOMPLETE" not in repr(full)
    for i, p in enumerate(pts):  # the uninterrupted run is right
        want = torch.linalg.eigvalsh(dense(m, p)).flip(0)[:2].numpy()
        np.testing.assert_allclose(full.values[i], want, rtol=1e-8)
    # interrupted inside the second point's solve: the first point, NaN for the others
    trip(full.n_hvp[0] + 3)
    part = sharpness_along(obj, pts, k=2, tol=1e-10, lr=0.5)
    assert not part.complete and part.n_done == 1
    np.testing.assert_allclose(part.values[0], full.values[0], rtol=1e-12)
    assert np.isnan(part.values[1:]).all()
    assert "INCOMPLETE" in repr(part) and "1 of 3" in repr(part)
    assert "INCOMPLETE" in part._repr_html_()
    fig = part.plot()  # the finished point drawn, NaN (a gap) for the others
    assert fig.layout.title.text == (
        "top eigenvalues of the hessian at 3 points, INCOMPLETE: interrupted after 1 of 3 "
        "points (NaN for the rest)"
    )
    assert [t.name for t in fig.data] == ["λ1", "λ2"]
    for j, t in enumerate(fig.data):
        np.testing.assert_array_equal(t.y, part.values[:, j])
    assert fig.layout.shapes[0].y0 == pytest.approx(2 / 0.5)
    assert_unchanged(m, snap)
    # inside another lossviz call it propagates
    trip(full.n_hvp[0] + 3)
    with inner(), pytest.raises(KeyboardInterrupt):
        sharpness_along(obj, pts, k=2, tol=1e-10)
    # and the Objective is still right afterwards
    again = sharpness_along(obj, pts, k=2, tol=1e-10)
    np.testing.assert_allclose(again.values, full.values, rtol=1e-8)


def test_trace_along_interrupted_from_the_forward(monkeypatch):
    """Each checkpoint builds a new gradient graph (one forward, with the products on the
    cached graph: the loop method, fixed here so that no timing decides how many forwards
    run): the interrupt comes from the model's forward at the third point."""
    monkeypatch.setattr(CurvatureOperator, "_methods", lambda self, k: ["loop"])
    m = _model()
    pts = _checkpoints(m)
    obj = lv.Objective(m, F.cross_entropy, (X, Y))
    snap = snapshot(m)
    FORWARDS["left"] = 2
    try:
        part = trace_along(obj, pts, rtol=0, max_hvp=64)
    finally:
        FORWARDS["left"] = None
    assert not part.complete and part.n_done == 2
    assert np.isnan(part.values[2, 0]) and np.isnan(part.stderr[2])
    for i in range(2):
        exact = float(torch.trace(dense(m, pts[i])))
        assert abs(part.values[i, 0] - exact) <= 6 * part.stderr[i] + 1e-9
    assert "INCOMPLETE" in repr(part)
    assert_unchanged(m, snap)


def test_tracker_step_interrupt_propagates_and_records_nothing(trip):
    m = _model()
    opt = torch.optim.SGD(m.parameters(), lr=0.5)
    tr = SubspaceTracker(
        m, F.cross_entropy, k=2, every=2, tol=1e-10, optimizer=opt,
        track=("gradient_fraction", "overlap", "lambda_max", "trace"),
        trace_max_hvp=40,
    )  # fmt: skip

    def train_step(arm=None):
        opt.zero_grad()
        loss = F.cross_entropy(m(X), Y)
        loss.backward()
        if arm is not None:
            arm()
        tr.step((X, Y), loss=loss)  # θ_t on the batch of step t, before the update
        opt.step()

    train_step()
    train_step()
    hist = [dict(r) for r in tr.history]
    V = tr._V.clone()
    n_hvp, subspaces = tr.n_hvp, tr.overlap_matrix()[0]
    weights = [p.detach().clone() for p in m.parameters()]

    def weights_unchanged():  # (the loop itself sets .grad)
        assert all(torch.equal(a, b.detach()) for a, b in zip(weights, m.parameters()))

    # step 2 refreshes: interrupted in the Lanczos solve, then in the trace after it
    for arm in (lambda: trip(5), lambda: trip(tr.last_eigs.n_hvp + 20)):
        with pytest.raises(KeyboardInterrupt):
            train_step(arm)
        trip(None)
        assert tr.history == hist, "a half record was kept"
        assert torch.equal(tr._V, V) and tr.n_hvp == n_hvp
        assert tr.overlap_matrix()[0] == subspaces
        weights_unchanged()  # the optimizer step did not run either
    # interrupted from the forward (the gradient of the batch)
    FORWARDS["left"] = 1  # the training loop's own forward passes, then the tracker's fails
    try:
        with pytest.raises(KeyboardInterrupt):
            train_step()
    finally:
        FORWARDS["left"] = None
    assert tr.history == hist
    weights_unchanged()
    # training goes on: the next record is step 2, measured at the current weights
    H = dense(m)
    train_step()
    rec = tr.history[-1]
    assert rec["step"] == 2 and rec["refreshed"] and len(tr.history) == 3
    assert rec["lambda_max"] == pytest.approx(float(torch.linalg.eigvalsh(H)[-1]), rel=1e-8)
    assert abs(rec["trace"] - float(torch.trace(H))) <= 6 * rec["trace_stderr"] + 1e-9


def test_hessian_blocks_propagates(trip):
    m = _model()
    obj = lv.Objective(m, F.cross_entropy, (X, Y))
    snap = snapshot(m)
    for n in (3, 60):  # in the eigenvalues, then in the traces
        trip(n)
        with pytest.raises(KeyboardInterrupt):
            lv.hessian_blocks(obj, k=1, max_hvp=200, rtol=0, progress=False)
    trip(None)
    assert_unchanged(m, snap)
    H = dense(m)
    t = lv.hessian_blocks(obj, k=1, tol=1e-10, progress=False)
    assert t.complete
    assert t["net.0"]["λ1"] == pytest.approx(float(torch.linalg.eigvalsh(H[:42, :42])[-1]))


def test_block_eigs_and_traces_are_visibly_partial(trip):
    m = _model()
    obj = lv.Objective(m, F.cross_entropy, (X, Y))
    H = dense(m)
    full = lv.hessian_eigs(obj, k=2, groups="module", tol=1e-10, progress=False)
    assert full.complete and list(full) == ["net.0", "net.2"]
    trip(full["net.0"].n_hvp + 3)  # inside the second block's solve
    with pytest.warns(UserWarning, match="interrupted"):
        part = lv.hessian_eigs(obj, k=2, groups="module", tol=1e-10, progress=False)
    assert not part.complete and "INCOMPLETE" in repr(part) and "INCOMPLETE" in part._repr_html_()
    want = torch.linalg.eigvalsh(H[:42, :42]).flip(0)[:2].numpy()
    np.testing.assert_allclose(part["net.0"].values, want, rtol=1e-8)
    assert "net.2" not in part or not part["net.2"].complete
    trip(40)
    tr = lv.hessian_trace(obj, groups="module", rtol=0, max_hvp=400, batch_size=16, progress=False)
    assert not tr.complete and all(not r.complete for r in tr.values())
    assert "INCOMPLETE" in repr(tr) and "INCOMPLETE" in repr(tr["net.0"])
    assert all(len(r.samples) == 32 for r in tr.values())


def test_density_and_eigs_partial_reprs(trip):
    m = _model()
    obj = lv.Objective(m, F.cross_entropy, (X, Y))
    trip(2 * 7 + 1)
    with pytest.warns(UserWarning, match="interrupted"):
        d = lv.hessian_density(obj, n_probes=2, steps=30, progress=False)
    assert not d.complete and d.nodes.shape == (2, 7) and "INCOMPLETE" in repr(d)
    assert "INCOMPLETE" in d._repr_html_()
    trip(12)
    with pytest.warns(UserWarning, match="interrupted"):
        e = lv.hessian_eigs(obj, k=2, tol=1e-12, progress=False)
    assert not e.complete and "INCOMPLETE" in repr(e) and "INCOMPLETE" in e._repr_html_()
    # the residuals kept are the true ones
    H = dense(m)
    for v, lam, res in zip(e.vectors, e.values, e.residuals):
        u = obj.as_flat(v)
        assert float((H @ u - lam * u).norm()) / abs(e.values).max() == pytest.approx(
            res, abs=1e-10
        )
