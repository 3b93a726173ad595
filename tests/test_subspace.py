"""Gradient-subspace metrics and the SubspaceTracker against exact dense Hessians
(torch.func.hessian of a functional_call on the model, float64; no BatchNorm here)."""

import copy
import math

import numpy as np
import pytest
import torch
from torch import nn
from torch.func import functional_call, hessian

from lossviz.errors import CheckpointError, LossvizError
from lossviz.objective import Objective
from lossviz.subspace import (
    SubspaceTracker,
    gradient_fraction,
    lightning_callback,
    subspace_overlap,
)
from lossviz.weights import Weights

mse = nn.functional.mse_loss


# --- helpers ------------------------------------------------------------------------------
def flat_params(model):
    return torch.cat([p.detach().reshape(-1) for p in model.parameters()])


def dense_hessian(model, loss_fn, batch):
    """The exact Hessian of the batch loss at the model's weights (float64)."""
    names = [n for n, _ in model.named_parameters()]
    shapes = [p.shape for p in model.parameters()]
    sizes = [p.numel() for p in model.parameters()]
    x, y = batch

    def f(theta):
        parts = torch.split(theta, sizes)
        d = {n: t.view(s) for n, t, s in zip(names, parts, shapes)}
        return loss_fn(functional_call(model, d, (x,)), y)

    theta = flat_params(model).to(torch.float64)
    return hessian(f)(theta), f, theta


def top_k(H, k):
    w, U = torch.linalg.eigh(H)
    return w.flip(0)[:k], U.flip(1)[:, :k].T  # (k,), (k, P) orthonormal rows


def exact_gradient(f, theta):
    return torch.func.grad(f)(theta)


def linear_model(d=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    m = nn.Linear(d, 1).double()
    with torch.no_grad():
        m.weight.copy_(torch.randn(1, d, generator=g, dtype=torch.float64))
        m.bias.zero_()
    return m


def regression_data(n=64, d=6, seed=1):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g, dtype=torch.float64) * torch.linspace(
        0.3, 3.0, d, dtype=torch.float64
    )
    y = x @ torch.randn(d, 1, generator=g, dtype=torch.float64) + 0.1 * torch.randn(
        n, 1, generator=g, dtype=torch.float64
    )
    return x, y


def tiny_mlp(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(4, 5), nn.Tanh(), nn.Linear(5, 3)).double()


# --- metrics ------------------------------------------------------------------------------
def test_gradient_fraction_matches_projection():
    g = torch.Generator().manual_seed(0)
    Q = torch.linalg.qr(torch.randn(30, 4, generator=g, dtype=torch.float64))[0].T
    v = torch.randn(30, generator=g, dtype=torch.float64)
    expected = float((Q.T @ (Q @ v)).norm() ** 2 / v.norm() ** 2)
    assert gradient_fraction(v, Q) == pytest.approx(expected, rel=1e-12)
    # a vector inside the span: 1; orthogonal to it: 0
    assert gradient_fraction(Q.T @ torch.arange(1.0, 5.0, dtype=torch.float64), Q) == (
        pytest.approx(1.0, rel=1e-12)
    )
    w = v - Q.T @ (Q @ v)
    assert gradient_fraction(w, Q) == pytest.approx(0.0, abs=1e-12)
    assert math.isnan(gradient_fraction(torch.zeros(30, dtype=torch.float64), Q))


def test_metrics_accept_weights_and_align_names():
    a = Weights({"w": torch.tensor([[3.0, 0.0]]), "b": torch.tensor([4.0])})
    e1 = Weights({"w": torch.tensor([[1.0, 0.0]]), "b": torch.tensor([0.0])})
    e3_reordered = Weights({"b": torch.tensor([1.0]), "w": torch.tensor([[0.0, 0.0]])})
    assert gradient_fraction(a, [e1]) == pytest.approx(9 / 25)
    assert gradient_fraction(a, [e3_reordered]) == pytest.approx(16 / 25)
    assert gradient_fraction(a, e1) == pytest.approx(9 / 25)  # one vector
    assert subspace_overlap([e1, e3_reordered], [e3_reordered]) == pytest.approx(1.0)
    assert subspace_overlap([e1], [e3_reordered]) == pytest.approx(0.0)
    with pytest.raises(CheckpointError, match="different tensors"):
        gradient_fraction(a, [Weights({"w": torch.zeros(1, 2)})])


def test_subspace_overlap_values():
    g = torch.Generator().manual_seed(1)
    A = torch.linalg.qr(torch.randn(20, 3, generator=g, dtype=torch.float64))[0].T
    B = torch.linalg.qr(torch.randn(20, 3, generator=g, dtype=torch.float64))[0].T
    assert subspace_overlap(A, A) == pytest.approx(1.0, rel=1e-12)
    # rotating within the span does not change it
    R = torch.linalg.qr(torch.randn(3, 3, generator=g, dtype=torch.float64))[0]
    assert subspace_overlap(A, R @ A) == pytest.approx(1.0, rel=1e-12)
    expected = float(((A @ B.T) ** 2).sum() / 3)
    assert subspace_overlap(A, B) == pytest.approx(expected, rel=1e-12)
    assert subspace_overlap(A, B) == pytest.approx(subspace_overlap(B, A), rel=1e-12)
    assert 0 < expected < 1
    # different sizes: the fraction of the smaller one inside the larger
    assert subspace_overlap(torch.eye(5)[:2], torch.eye(5)[:4]) == pytest.approx(1.0)


def test_metrics_reject_bad_input():
    V = torch.eye(4)[:2] * 2.0  # not normalized
    with pytest.raises(LossvizError, match="not an orthonormal basis"):
        gradient_fraction(torch.ones(4), V)
    with pytest.raises(LossvizError, match="not an orthonormal basis"):
        subspace_overlap(V, torch.eye(4)[:2])
    with pytest.raises(LossvizError, match="size"):
        gradient_fraction(torch.ones(5), torch.eye(4)[:2])
    with pytest.raises(TypeError):
        gradient_fraction("g", torch.eye(4)[:2])
    with pytest.raises(LossvizError, match="empty"):
        gradient_fraction(torch.ones(4), [])


# --- tracker: exactness ----------------------------------------------------------------
def test_tracker_exact_on_linear_regression_full_data():
    """MSE linear regression: H = 2 X̃ᵀX̃ / N (X̃ = [X, 1]) does not depend on the weights,
    so λ_max, the subspace and the overlaps are known exactly at every refresh."""
    x, y = regression_data()
    model = linear_model()
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    k = 3
    tr = SubspaceTracker(
        model,
        mse,
        k=k,
        every=2,
        data=(x, y),
        optimizer=opt,
        tol=1e-10,
        track=("gradient_fraction", "overlap", "lambda_max"),
    )
    Xt = torch.cat([x, torch.ones(len(x), 1, dtype=x.dtype)], 1)
    H = 2 * Xt.T @ Xt / len(x)
    Hd, _, _ = dense_hessian(model, mse, (x, y))
    torch.testing.assert_close(Hd, H, rtol=1e-12, atol=1e-12)
    lam, V = top_k(H, k)
    P = V.T @ V
    batches = [(x[i::4], y[i::4]) for i in range(4)]
    expected = []
    for s in range(6):
        xb, yb = batches[s % 4]
        opt.zero_grad()
        mse(model(xb), yb).backward()
        _, f, theta = dense_hessian(model, mse, (xb, yb))
        gb = exact_gradient(f, theta)
        # the convention: step() before optimizer.step() measures θ_t and the gradient
        # of the batch of step t, exactly the gradient the optimizer applies
        torch.testing.assert_close(torch.cat([p.grad.reshape(-1) for p in model.parameters()]), gb)
        expected.append(float(gb @ P @ gb / (gb @ gb)))
        _, fd, _ = dense_hessian(model, mse, (x, y))
        gd = exact_gradient(fd, theta)
        tr.step((xb, yb))
        opt.step()
        rec = tr.history[-1]
        if s % 2 == 0:
            assert rec["refreshed"]
            assert rec["lambda_max"] == pytest.approx(float(lam[0]), rel=1e-9)
            np.testing.assert_allclose(rec["eigenvalues"], lam.numpy(), rtol=1e-9)
            assert rec["overlap_first"] == pytest.approx(1.0, abs=1e-9)
            if s:
                assert rec["overlap_prev"] == pytest.approx(1.0, abs=1e-9)
            assert rec["gradient_fraction_data"] == pytest.approx(
                float(gd @ P @ gd / (gd @ gd)), rel=1e-8
            )
        else:
            assert not rec["refreshed"] and "lambda_max" not in rec
        assert rec["two_over_lr"] == pytest.approx(200.0)
    got = [r["gradient_fraction"] for r in tr.history]
    np.testing.assert_allclose(got, expected, rtol=1e-8)
    assert 0.05 < min(got) and max(got) < 0.999  # a non-trivial check


def test_tracker_exact_on_minibatch_hessian_of_mlp():
    """Mini-batch curvature (data=None) of a tanh MLP: λ_max, the gradient fraction
    (including between refreshes, in the stale subspace) and the overlaps equal those
    of the dense float64 Hessians."""
    g = torch.Generator().manual_seed(3)
    x = torch.randn(40, 4, generator=g, dtype=torch.float64)
    y = torch.randn(40, 3, generator=g, dtype=torch.float64)
    model = tiny_mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.3, momentum=0.5)
    k = 4
    tr = SubspaceTracker(
        model,
        mse,
        k=k,
        every=3,
        optimizer=opt,
        tol=1e-10,
        track=("gradient_fraction", "overlap", "lambda_max", "trace"),
        trace_rtol=0.01,
        trace_max_hvp=400,
    )
    Vs, cur = [], None
    for s in range(7):
        idx = torch.randint(0, 40, (16,), generator=g)
        xb, yb = x[idx], y[idx]
        opt.zero_grad()
        mse(model(xb), yb).backward()
        H, f, theta = dense_hessian(model, mse, (xb, yb))
        tr.step((xb, yb))  # θ_t on the batch of step t, before the update
        opt.step()
        rec = tr.history[-1]
        if s % 3 == 0:
            lam, cur = top_k(H, k)
            w_all = torch.linalg.eigvalsh(H)
            assert float(lam[3] - w_all.flip(0)[4]) > 1e-6  # the subspace is well defined
            assert rec["lambda_max"] == pytest.approx(float(lam[0]), rel=1e-8)
            np.testing.assert_allclose(rec["eigenvalues"], lam.numpy(), rtol=1e-7)
            if Vs:
                assert rec["overlap_prev"] == pytest.approx(
                    float(((Vs[-1] @ cur.T) ** 2).sum() / k), abs=1e-7
                )
                assert rec["overlap_first"] == pytest.approx(
                    float(((Vs[0] @ cur.T) ** 2).sum() / k), abs=1e-7
                )
            Vs.append(cur)
            exact_tr = float(torch.trace(H))
            assert abs(rec["trace"] - exact_tr) <= 5 * rec["trace_stderr"] + 1e-9
            assert rec["stability_threshold"] == pytest.approx(3.0 / 0.3)  # (2+2β)/lr
        gb = exact_gradient(f, theta)
        assert rec["gradient_fraction"] == pytest.approx(
            float((cur @ gb).pow(2).sum() / (gb @ gb)), rel=1e-7
        )
    # the overlap matrix has the recorded overlaps
    steps, M = tr.overlap_matrix()
    assert steps == [0, 3, 6]
    assert M[0, 1] == pytest.approx(tr.history[3]["overlap_prev"], rel=1e-9)
    np.testing.assert_allclose(np.diag(M), 1.0, atol=1e-9)


def test_ggn_curvature_matches_dense_gauss_newton():
    g = torch.Generator().manual_seed(5)
    x = torch.randn(30, 4, generator=g, dtype=torch.float64)
    y = torch.randn(30, 3, generator=g, dtype=torch.float64)
    model = tiny_mlp(1)
    names = [n for n, _ in model.named_parameters()]
    shapes = [p.shape for p in model.parameters()]
    sizes = [p.numel() for p in model.parameters()]
    theta = flat_params(model)

    def out(t):
        d = {n: v.view(s) for n, v, s in zip(names, torch.split(t, sizes), shapes)}
        return functional_call(model, d, (x,)).reshape(-1)

    J = torch.func.jacrev(out)(theta)  # (N·C, P)
    G = J.T @ J * (2 / y.numel())  # mse mean over N·C outputs: H_loss = 2/(N·C) I
    tr = SubspaceTracker(
        model, mse, k=2, every=1, curvature="ggn", tol=1e-10, track=("lambda_max",)
    )
    tr.step((x, y))
    assert tr.history[0]["lambda_max"] == pytest.approx(
        float(torch.linalg.eigvalsh(G)[-1]), rel=1e-8
    )


# --- tracker: training is unchanged ---------------------------------------------------------
class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(
            nn.Linear(8, 16), nn.BatchNorm1d(16), nn.Tanh(), nn.Dropout(0.3), nn.Linear(16, 4)
        )

    def forward(self, x):
        return self.body(x)


def _train(track: bool, steps=8):
    torch.manual_seed(123)
    model = Net()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    x = torch.randn(64, 8)
    y = torch.randint(0, 4, (64,))
    tracker = None
    if track:
        tracker = SubspaceTracker(
            model,
            nn.functional.cross_entropy,
            k=3,
            every=3,
            optimizer=opt,
            data=(x, y),
            trace_max_hvp=40,
        )
    model.train()
    for _ in range(steps):
        idx = torch.randint(0, 64, (16,))  # the global RNG drives the batches and dropout
        opt.zero_grad()
        loss = nn.functional.cross_entropy(model(x[idx]), y[idx])
        loss.backward()
        if tracker is not None:
            grads = [p.grad.clone() for p in model.parameters()]
            grad_ids = [id(p.grad) for p in model.parameters()]
            rng = torch.get_rng_state()
            tracker.step((x[idx], y[idx]), loss=loss)
            assert torch.equal(rng, torch.get_rng_state())
            assert [id(p.grad) for p in model.parameters()] == grad_ids
            assert all(torch.equal(a, p.grad) for a, p in zip(grads, model.parameters()))
            assert all(m.training for m in model.modules())
            assert all(p.requires_grad for p in model.parameters())
        opt.step()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    return state, tracker, torch.get_rng_state()


def test_training_bit_identical_with_and_without_tracker():
    a, _, rng_a = _train(False)
    b, tracker, rng_b = _train(True)
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key  # weights and BatchNorm buffers, bitwise
    assert torch.equal(rng_a, rng_b)
    h = tracker.history
    assert len(h) == 8 and [r["refreshed"] for r in h] == [True, False, False] * 2 + [True, False]
    assert all("trace" in r for r in h if r["refreshed"])
    assert all(0 <= r["gradient_fraction"] <= 1 for r in h)
    assert all(isinstance(r["train_loss"], float) for r in h)


def test_tracker_leaves_eval_mode_and_frozen_parameters_alone():
    model = tiny_mlp()
    model.eval()
    model[0].weight.requires_grad_(False)
    x = torch.randn(10, 4, dtype=torch.float64)
    y = torch.randn(10, 3, dtype=torch.float64)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    tr = SubspaceTracker(model, mse, k=2, every=1, track=("gradient_fraction", "lambda_max"))
    tr.step((x, y))
    assert not any(m.training for m in model.modules())
    assert not model[0].weight.requires_grad and model[0].bias.requires_grad
    assert all(p.grad is None for p in model.parameters())
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    # only the parameters with requires_grad vary: 5 + 15 + 3
    assert sum(v.numel() for v in tr.subspace[0].values()) == 23


# --- warm start -----------------------------------------------------------------------------
def test_warm_start_reduces_hvp_count():
    from lossviz.data import digits, mlp

    x, y = digits()
    x, y = x[:300], y[:300]
    counts = {}
    for warm in (True, False):
        model = mlp((64, 16, 10), nn.Tanh, seed=0)
        opt = torch.optim.SGD(model.parameters(), lr=0.2)
        tr = SubspaceTracker(
            model,
            nn.functional.cross_entropy,
            k=5,
            every=1,
            data=(x, y),
            warm_start=warm,
            track=("lambda_max",),
        )
        for _ in range(6):
            opt.zero_grad()
            nn.functional.cross_entropy(model(x), y).backward()
            tr.step((x, y))
            opt.step()
        counts[warm] = [r["n_hvp"] for r in tr.history]
    # the first solve is cold in both; the later ones are cheaper when warm
    assert counts[True][0] == counts[False][0]
    assert sum(counts[True][1:]) < 0.9 * sum(counts[False][1:]), counts


# --- outputs --------------------------------------------------------------------------------
def test_history_plot_and_repr():
    x, y = regression_data()
    model = linear_model()
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    tr = SubspaceTracker(
        model,
        mse,
        k=2,
        every=2,
        optimizer=opt,
        track=("gradient_fraction", "overlap", "lambda_max"),
    )
    assert "0 steps" in repr(tr)
    for s in range(5):
        xb, yb = x[s * 8 : (s + 1) * 8], y[s * 8 : (s + 1) * 8]
        tr.step((xb, yb), loss=1.5)
    h = tr.history
    assert [r["step"] for r in h] == list(range(5))
    assert h[0]["overlap_prev"] is None and h[2]["overlap_prev"] is not None
    assert h[1]["train_loss"] == 1.5
    fig = tr.plot()
    assert [a.text for a in fig.layout.annotations] == [
        "gradient fraction in the top-2 subspace",
        "subspace overlap ||V_iᵀV_j||²/k",
        "λ_max and 2/lr",
    ]
    by_name = {t.name: t for t in fig.data}
    assert len(fig.data) == 5 and set(by_name) == {
        "mini-batch gradient",
        "overlap with the first subspace",
        "λ_max",
        "2/lr",
        None,  # the overlap heatmap
    }
    gf = by_name["mini-batch gradient"]
    assert list(gf.x) == list(range(5))
    np.testing.assert_array_equal(gf.y, [r["gradient_fraction"] for r in h])
    lm = by_name["λ_max"]
    assert list(lm.x) == [0, 2, 4]
    np.testing.assert_array_equal(lm.y, [h[i]["lambda_max"] for i in (0, 2, 4)])
    np.testing.assert_allclose(by_name["2/lr"].y, 2 / 0.05)
    (heat,) = [t for t in fig.data if t.type == "heatmap"]
    steps, M = tr.overlap_matrix()
    assert list(heat.x) == ["0", "2", "4"] and steps == [0, 2, 4]
    np.testing.assert_array_equal(np.asarray(heat.z), M)
    assert M[0, 1] == pytest.approx(h[2]["overlap_prev"], rel=1e-12)
    assert "5 steps, 3 refreshes" in repr(tr)
    assert "<table>" in tr._repr_html_()
    try:
        import pandas  # noqa: F401
    except ImportError:
        with pytest.raises(ImportError, match="pandas"):
            tr.to_pandas()
    else:
        df = tr.to_pandas()
        assert len(df) == 5 and "gradient_fraction" in df.columns


def test_subspace_memory_is_thinned():
    x, y = regression_data()
    model = linear_model()
    tr = SubspaceTracker(
        model, mse, k=1, every=1, data=(x, y), max_subspaces=4, track=("lambda_max",)
    )
    for _ in range(10):
        tr.step((x, y))
    steps, M = tr.overlap_matrix()
    assert len(steps) <= 4 and steps[0] == 0 and steps[-1] == 9
    assert M.shape == (len(steps), len(steps))


def test_tracker_rejects_bad_arguments():
    model = tiny_mlp()
    with pytest.raises(LossvizError, match="k must"):
        SubspaceTracker(model, mse, k=0)
    with pytest.raises(LossvizError, match="every"):
        SubspaceTracker(model, mse, every=0)
    with pytest.raises(LossvizError, match="curvature"):
        SubspaceTracker(model, mse, curvature="fisher")
    with pytest.raises(LossvizError, match="unknown quantities"):
        SubspaceTracker(model, mse, track=("sharpness",))
    with pytest.raises(TypeError, match="optimizer"):
        SubspaceTracker(model, mse, optimizer=object())
    with pytest.raises(TypeError, match="loss_fn"):
        SubspaceTracker(model)
    with pytest.raises(LossvizError, match="no subspace"):
        _ = SubspaceTracker(model, mse).subspace


def test_thresholds_per_optimizer():
    model = linear_model()
    x, y = regression_data()
    cases = [
        (torch.optim.SGD(model.parameters(), lr=0.1), 20.0, 20.0),
        (torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9), 20.0, 38.0),
        (
            torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, nesterov=True),
            20.0,
            3.8 / (2.8 * 0.1),
        ),
        (torch.optim.Adam(model.parameters(), lr=0.1), 20.0, None),
    ]
    for opt, two, thr in cases:
        tr = SubspaceTracker(model, mse, k=1, every=5, optimizer=opt, track=("lambda_max",))
        tr.step((x, y))
        r = tr.history[0]
        assert r["two_over_lr"] == pytest.approx(two)
        assert (
            (r["stability_threshold"] is None)
            if thr is None
            else (r["stability_threshold"] == pytest.approx(thr))
        )
        assert r["lrs"] == (0.1,)


def test_objective_is_not_required_but_compatible():
    """The recorded subspace holds Weights over the varying parameters of an Objective."""
    x, y = regression_data()
    model = linear_model()
    tr = SubspaceTracker(model, mse, k=2, every=1, data=(x, y), tol=1e-10, track=("lambda_max",))
    tr.step((x, y))
    obj = Objective(model, mse, (x, y))
    g = obj.gradient()
    V = tr.subspace
    Xt = torch.cat([x, torch.ones(len(x), 1, dtype=x.dtype)], 1)
    _, U = top_k(2 * Xt.T @ Xt / len(x), 2)
    gf = obj.as_flat(g)
    assert gradient_fraction(g, V) == pytest.approx(
        float((U @ gf).pow(2).sum() / (gf @ gf)), rel=1e-8
    )
    assert subspace_overlap(V, U) == pytest.approx(1.0, abs=1e-9)


def test_lightning_callback_records_the_steps_of_a_real_trainer():
    """``lightning_callback`` in a real ``lightning.Trainer`` fit: one record per optimizer
    step, each measured at the weights before the update on the batch of that step,
    against the dense Hessian of that batch (plain autograd) and its gradient."""
    lightning = pytest.importorskip("lightning")
    from lightning.pytorch import Callback, LightningModule, Trainer

    g = torch.Generator().manual_seed(3)
    x = torch.randn(24, 4, generator=g, dtype=torch.float64)
    y = torch.randn(24, 3, generator=g, dtype=torch.float64)
    loader = torch.utils.data.DataLoader(
        torch.utils.data.TensorDataset(x, y), batch_size=8, shuffle=False
    )

    class Module(LightningModule):
        def __init__(self):
            super().__init__()
            self.net = tiny_mlp()

        def training_step(self, batch, batch_idx):
            xb, yb = batch
            return mse(self.net(xb), yb)

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.2)

    class Recorder(Callback):
        """What the optimizer is about to apply: weights, batch and gradient."""

        def __init__(self):
            self.seen, self.batch = [], None

        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            self.batch = batch

        def on_before_optimizer_step(self, trainer, pl_module, optimizer):
            net = pl_module.net
            grad = torch.cat([p.grad.reshape(-1).clone() for p in net.parameters()])
            self.seen.append((copy.deepcopy(net), self.batch, grad))

    module = Module()
    k = 2
    tracker = SubspaceTracker(
        module.net, mse, k=k, every=2, tol=1e-10, track=("gradient_fraction", "lambda_max")
    )
    rec = Recorder()
    trainer = Trainer(
        max_epochs=2,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[lightning_callback(tracker), rec],
    )
    trainer.fit(module, loader)
    assert len(rec.seen) == 6 == len(tracker.history)  # 3 batches × 2 epochs
    V = None
    for s, ((net, (xb, yb), grad), r) in enumerate(zip(rec.seen, tracker.history)):
        H, f, theta = dense_hessian(net, mse, (xb, yb))
        gb = exact_gradient(f, theta)
        torch.testing.assert_close(gb, grad)  # the gradient Lightning's optimizer applies
        assert r["refreshed"] == (s % 2 == 0)
        if s % 2 == 0:
            lam, V = top_k(H, k)
            assert r["lambda_max"] == pytest.approx(float(lam[0]), rel=1e-8)
        assert r["gradient_fraction"] == pytest.approx(
            float((V @ gb).pow(2).sum() / (gb @ gb)), rel=1e-7
        )
    # the weights moved between steps: the records are not all of one point
    assert not torch.equal(flat_params(rec.seen[0][0]), flat_params(rec.seen[-1][0]))
    assert lightning.__version__


def test_lightning_callback_needs_lightning(monkeypatch):
    """Without lightning (and pytorch_lightning) the callback says what to install."""
    import sys

    monkeypatch.setitem(sys.modules, "lightning", None)
    monkeypatch.setitem(sys.modules, "lightning.pytorch", None)
    monkeypatch.setitem(sys.modules, "pytorch_lightning", None)
    with pytest.raises(ImportError, match="pip install lightning"):
        lightning_callback(SubspaceTracker(tiny_mlp(), mse))
