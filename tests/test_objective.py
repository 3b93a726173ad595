"""The functional core: points, checkpoints, bad input, interruption."""

import copy

import numpy as np
import pytest
import torch
from reference import CASES, assert_unchanged, dense_hessian, reference_gradient, snapshot
from torch import nn

import lossviz as lv

F = nn.functional


def test_points_from_module_state_dict_and_checkpoints(tmp_path):
    m, loss, data = CASES["cnn_bn"]()
    obj = lv.Objective(m, loss, data)
    other, _, _ = CASES["cnn_bn"](seed=1)
    want = lv.Objective(other, loss, data).loss()
    assert obj.loss(other) == pytest.approx(want, rel=1e-12)  # a module
    assert obj.loss(other.state_dict()) == pytest.approx(want, rel=1e-12)  # a state dict
    torch.save(other.state_dict(), tmp_path / "ckpt.pt")
    assert obj.loss(tmp_path / "ckpt.pt") == pytest.approx(want, rel=1e-12)
    torch.save({"state_dict": other.state_dict(), "epoch": 3}, tmp_path / "wrapped.pth")
    assert obj.loss(str(tmp_path / "wrapped.pth")) == pytest.approx(want, rel=1e-12)
    from safetensors.torch import save_file

    save_file(
        {k: v.contiguous() for k, v in other.state_dict().items()}, tmp_path / "w.safetensors"
    )
    assert obj.loss(tmp_path / "w.safetensors") == pytest.approx(want, rel=1e-12)
    # the checkpoint's BatchNorm statistics are used, not the model's
    assert obj.loss(other) != pytest.approx(obj.loss(), rel=1e-6)
    # Weights over the varying parameters only: buffers come from the model
    w = lv.Objective(other, loss, data).weights()
    assert isinstance(w, lv.Weights) and set(w) == set(obj.names)
    obj.loss(w)
    H = dense_hessian(m, loss, data, at=tmp_path / "ckpt.pt")
    r = lv.hessian_eigs(obj, k=1, at=tmp_path / "ckpt.pt", tol=1e-10)
    assert r.values[0] == pytest.approx(float(torch.linalg.eigvalsh(H)[-1]), rel=1e-8)


def _plain_loss_and_grad(model, loss_fn, batches, bn_train):
    """The loss and gradient written out by hand: ``model(x)`` on a deep copy (eval mode,
    BatchNorm in train mode if asked), a sample-weighted mean over the batches, and
    ``backward()`` on the copy's own parameters (tied weights: one tensor, both uses)."""
    m = copy.deepcopy(model).eval()
    if bn_train:
        for mod in m.modules():
            if isinstance(mod, nn.BatchNorm2d):
                mod.train()
    n = sum(len(xb) for xb, _ in batches)
    loss = sum(loss_fn(m(xb), yb) * len(xb) for xb, yb in batches) / n
    m.zero_grad()
    loss.backward()
    return float(loss.detach()), {k: p.grad.clone() for k, p in m.named_parameters()}


@pytest.mark.parametrize("case,bn", [("cnn_bn", "train"), ("cnn_bn", "eval"), ("tied", "eval")])
def test_loss_and_gradient_equal_plain_pytorch(case, bn):
    """``Objective.loss`` and ``.gradient`` against a plain ``model(x)`` + loss +
    ``backward()``: BatchNorm with batch statistics (per batch: uneven batches give
    different statistics than one batch) and an embedding tied to the output layer."""
    m, loss, (x, y) = CASES[case](n=12 if case == "cnn_bn" else 10)
    m.train()  # the user's mode: lossviz evaluates with dropout off, BN as bn= says
    w = m.get_submodule("mid" if case == "tied" else "0").weight
    w.grad = torch.ones_like(w)  # a user's .grad: left alone
    batches = [(x[:7], y[:7]), (x[7:], y[7:])]
    snap = snapshot(m)
    obj = lv.Objective(m, loss, batches, bn=bn)
    want_loss, want_grad = _plain_loss_and_grad(m, loss, batches, bn == "train")
    assert obj.loss() == pytest.approx(want_loss, rel=1e-12)
    g = obj.gradient()
    assert set(g) == set(want_grad)  # tied: one name for the shared tensor
    for k, v in want_grad.items():
        torch.testing.assert_close(g[k], v, rtol=1e-10, atol=1e-13)
    assert_unchanged(m, snap)
    # the reference module agrees with the hand-written one
    ref_loss, ref_grad = reference_gradient(m, loss, batches, bn=bn)
    assert ref_loss == pytest.approx(want_loss, rel=1e-12)
    torch.testing.assert_close(ref_grad, torch.cat([v.reshape(-1) for v in want_grad.values()]))
    if case == "tied":
        assert "out.weight" not in g
        # the shared tensor's gradient has both uses: not the embedding's use alone
        only_emb = copy.deepcopy(m).eval()
        only_emb.out.weight = nn.Parameter(m.emb.weight.detach().clone())
        l2 = loss(only_emb(x[:7]), y[:7]) * 7 + loss(only_emb(x[7:]), y[7:]) * 3
        (l2 / 10).backward()
        assert not torch.allclose(only_emb.emb.weight.grad, g["emb.weight"], atol=1e-6)
        torch.testing.assert_close(
            only_emb.emb.weight.grad + only_emb.out.weight.grad, g["emb.weight"]
        )
    if bn == "train":
        # batch statistics of the two batches, not one batch of all 12, nor running stats
        one_batch = _plain_loss_and_grad(m, loss, [(x, y)], True)[0]
        running = _plain_loss_and_grad(m, loss, batches, False)[0]
        assert abs(obj.loss() - one_batch) > 1e-6 and abs(obj.loss() - running) > 1e-6


class Evil:
    """An arbitrary pickled object: lossviz never unpickles these."""


def test_checkpoint_mismatch_names_keys_and_shapes(tmp_path):
    m, loss, data = CASES["mlp"]()
    obj = lv.Objective(m, loss, data)
    sd = {k: v.clone() for k, v in m.state_dict().items()}
    del sd["2.bias"]
    sd["extra.weight"] = torch.zeros(2)
    sd["0.weight"] = torch.zeros(3, 3, dtype=torch.float64)
    with pytest.raises(lv.CheckpointError) as e:
        obj.loss(sd)
    msg = str(e.value)
    assert "2.bias" in msg and "extra.weight" in msg and "0.weight" in msg and "(7, 5)" in msg
    assert isinstance(e.value, ValueError)
    with pytest.raises(lv.CheckpointError, match="not found"):
        obj.loss(tmp_path / "nope.pt")

    torch.save({"weights": Evil()}, tmp_path / "pickle.pt")
    with pytest.raises(lv.CheckpointError, match="weights_only"):
        obj.loss(tmp_path / "pickle.pt")
    with pytest.raises(TypeError):
        obj.loss(42)


def test_tied_weights_state_dict_with_both_names():
    m, loss, data = CASES["tied"]()
    obj = lv.Objective(m, loss, data)
    assert "out.weight" not in obj.names  # one tensor, one name
    sd = m.state_dict()
    assert "out.weight" in sd
    assert obj.loss(sd) == pytest.approx(obj.loss(), rel=1e-12)


def test_bad_input_errors():
    m, loss, (x, y) = CASES["mlp"]()
    obj = lv.Objective(m, loss, (x, y))
    with pytest.raises(ValueError, match="k=1000"):
        lv.hessian_eigs(obj, k=1000)
    with pytest.raises(lv.DataError, match="empty"):
        lv.Objective(m, loss, [])
    with pytest.raises(lv.DataError):
        lv.Objective(
            m, loss, torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x[:0], y[:0]))
        ).loss()
    with pytest.raises(lv.LossvizError, match="empty"):
        lv.Objective(m, loss, (x, y), params=[])
    with pytest.raises(lv.LossvizError, match="unknown parameter"):
        lv.Objective(m, loss, (x, y), params=["nope"])
    with pytest.raises(lv.LossvizError, match="scalar"):
        lv.Objective(m, nn.CrossEntropyLoss(reduction="none"), (x, y)).loss()
    with pytest.raises(TypeError, match="loss_fn"):
        lv.Objective(m, data=(x, y))
    with pytest.raises(ValueError, match="bn"):
        lv.Objective(m, loss, (x, y), bn="batch")
    with pytest.raises(lv.LossvizError, match="groups"):
        lv.hessian_eigs(obj, groups={"a": ["nope"]})
    with pytest.raises(ValueError, match="which"):
        lv.hessian_eigs(obj, which="top")
    with pytest.raises(ValueError, match="method"):
        lv.hessian_trace(obj, method="exact")
    with pytest.raises(lv.CheckpointError, match="direction"):
        obj.hvp({"0.weight": torch.zeros(7, 5, dtype=torch.float64)})


def test_non_finite_loss_is_reported():
    m, loss, (x, y) = CASES["mlp"]()
    xb = x.clone()
    xb[0, 0] = float("nan")
    snap = snapshot(m)
    obj = lv.Objective(m, loss, (xb, y))
    with pytest.warns(UserWarning, match="not finite"):
        assert np.isnan(obj.loss())
    with pytest.raises(lv.NonFiniteLossError, match="not finite"):
        lv.hessian_eigs(obj, k=2)
    with pytest.raises(lv.NonFiniteLossError):
        obj.gradient()
    assert_unchanged(m, snap)


class _InterruptAfter:
    """An operator that raises KeyboardInterrupt after a number of products."""

    def __init__(self, A, n):
        self.A, self.n, self.calls = A, n, 0
        self.shape, self.dtype, self.device = A.shape, A.dtype, A.device

    def apply(self, V):
        self.calls += V.shape[0]
        if self.calls > self.n:
            raise KeyboardInterrupt
        return V @ self.A


def _spd(n=200, seed=0):
    g = torch.Generator().manual_seed(seed)
    Qm, _ = torch.linalg.qr(torch.randn(n, n, generator=g, dtype=torch.float64))
    lam = torch.linspace(-1, 1, n, dtype=torch.float64)
    lam[-3:] = torch.tensor([5.0, 7.0, 9.0], dtype=torch.float64)
    return (Qm * lam) @ Qm.T


def test_interrupted_computations_keep_what_they_finished():
    A = _spd()
    with pytest.warns(UserWarning, match="interrupted"):
        r = lv.hessian_eigs(_InterruptAfter(A, 12), k=2, tol=1e-12)
    assert not r.complete and r.n_hvp == 12 and "interrupted" in repr(r)
    assert r.values[0] == pytest.approx(9.0, abs=1e-2)  # 12 steps already find λ1
    for v, lam, res in zip(r.vectors, r.values, r.residuals):  # residuals are honest
        assert float((A @ v - lam * v).norm()) / 9.0 == pytest.approx(res, abs=1e-10)

    with pytest.warns(UserWarning, match="interrupted"):
        d = lv.hessian_density(_InterruptAfter(A, 3 * 7 + 1), n_probes=3, steps=20)
    assert not d.complete and d.nodes.shape == (3, 7)
    np.testing.assert_allclose(d.weights.sum(1), 1, atol=1e-12)

    t = lv.hessian_trace(_InterruptAfter(A, 40), rtol=0, max_hvp=1000, batch_size=8)
    assert not t.complete and len(t.samples) == 40 and "interrupted" in repr(t)
    with pytest.raises(KeyboardInterrupt):  # nothing finished: nothing to keep
        lv.hessian_trace(_InterruptAfter(A, 0))
