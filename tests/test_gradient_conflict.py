"""Per-group gradients and their cosines (issue 14 §5): checked against plain autograd on
a fresh copy of the model over only each group's samples, cosines by NumPy, and the
full-data gradient."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from reference import assert_unchanged, cnn_case, mlp_case, reference_gradient, snapshot
from torch import nn

import lossviz as lv
from lossviz.gradients import gradient_conflict

F = nn.functional


def group_gradient(model, loss_fn, x, y, state=None) -> np.ndarray:
    """The mean-loss gradient over the given samples only, on a fresh copy (eval mode)."""
    m = copy.deepcopy(model)
    if state is not None:
        m.load_state_dict(state, strict=False)
    m.eval()
    ps = [p for p in m.parameters() if p.requires_grad]
    loss = loss_fn(m(x), y)
    return torch.cat([g.reshape(-1) for g in torch.autograd.grad(loss, ps)]).numpy()


def sample_norm(model, loss_fn, x, y) -> float:
    return float(np.linalg.norm(group_gradient(model, loss_fn, x[None], y[None])))


def cos(g: np.ndarray) -> np.ndarray:
    u = g / np.linalg.norm(g, axis=1, keepdims=True)
    return u @ u.T


@pytest.mark.parametrize("case", ["mlp", "cnn"])  # cnn: BatchNorm in eval mode
def test_labels_against_per_group_autograd(case):
    m, loss_fn, (x, y) = mlp_case(n=40) if case == "mlp" else cnn_case(n=18)
    batches = [(x[:7], y[:7]), (x[7:], y[7:])]  # groups straddle the batches
    obj = lv.Objective(m, loss_fn, batches)
    before = snapshot(m)
    r = gradient_conflict(obj, "labels", by_layer=True, keep_gradients=True, chunk_size=3)
    assert_unchanged(m, before)
    classes = sorted(set(y.tolist()))
    assert r.ids == classes and r.complete
    ref = np.stack([group_gradient(m, loss_fn, x[y == c], y[y == c]) for c in classes])
    np.testing.assert_array_equal(r.counts, [(y == c).sum().item() for c in classes])
    np.testing.assert_allclose(r.norms, np.linalg.norm(ref, axis=1), rtol=1e-10)
    np.testing.assert_allclose(r.cosine, cos(ref), rtol=1e-9, atol=1e-12)
    flat = np.stack([w.flatten().numpy() for w in r.gradients])
    np.testing.assert_allclose(flat, ref, rtol=1e-9, atol=1e-13)
    # the count-weighted average of the group gradients is the full-data gradient
    full = (r.counts[:, None] * flat).sum(0) / r.counts.sum()
    np.testing.assert_allclose(full, obj.gradient().flatten().numpy(), rtol=1e-9, atol=1e-13)
    _, g_ref = reference_gradient(m, loss_fn, batches)
    np.testing.assert_allclose(full, g_ref.numpy(), rtol=1e-9, atol=1e-13)
    # per-sample norms, averaged per group
    for k, c in enumerate(classes):
        idx = torch.nonzero(y == c).flatten()
        want = np.mean([sample_norm(m, loss_fn, x[i], y[i]) for i in idx])
        assert r.sample_norms[k] == pytest.approx(want, rel=1e-9)
    # per layer: the cosines over each module's slice of the parameters
    names = [n for n, _ in m.named_parameters()]
    sizes = [p.numel() for p in m.parameters()]
    offs = np.cumsum([0] + sizes)
    for li, layer in enumerate(r.layers):
        cols = np.concatenate(
            [
                np.arange(offs[i], offs[i + 1])
                for i, n in enumerate(names)
                if n.rsplit(".", 1)[0] == layer
            ]
        )
        np.testing.assert_allclose(r.layer_cosine[li], cos(ref[:, cols]), rtol=1e-9, atol=1e-12)
        np.testing.assert_allclose(
            r.layer_norms[li], np.linalg.norm(ref[:, cols], axis=1), rtol=1e-10
        )
    # the default chunking gives the same numbers
    r2 = gradient_conflict(obj, "labels", progress=False)
    np.testing.assert_allclose(r2.cosine, r.cosine, rtol=1e-12, atol=1e-14)


def test_explicit_groups_ids_and_at(tmp_path):
    m, loss_fn, (x, y) = mlp_case(n=30)
    g = torch.Generator().manual_seed(3)
    groups = np.array(["a", "b", "c"])[torch.randint(0, 3, (30,), generator=g).numpy()]
    obj = lv.Objective(m, loss_fn, [(x[:10], y[:10]), (x[10:], y[10:])])
    at = {k: v + 0.05 for k, v in m.state_dict().items()}
    r = gradient_conflict(obj, groups, at=at, ids=["c", "a"], progress=False)
    assert r.ids == ["c", "a"] and r.n_samples == int(np.isin(groups, ["c", "a"]).sum())
    ref = np.stack(
        [group_gradient(m, loss_fn, x[groups == k], y[groups == k], state=at) for k in r.ids]
    )
    np.testing.assert_allclose(r.norms, np.linalg.norm(ref, axis=1), rtol=1e-10)
    np.testing.assert_allclose(r.cosine, cos(ref), rtol=1e-9, atol=1e-12)
    # a tensor of integer ids works the same; readable, plotted, saved
    r3 = gradient_conflict(obj, torch.as_tensor(y), progress=False)
    fig = r3.plot()
    np.testing.assert_allclose(np.asarray(fig.data[0].z, dtype=float), r3.cosine)
    assert "GradientConflict(3 groups, 30 samples" in repr(r3)
    r3.save(tmp_path / "gc.npz")
    back = lv.load(tmp_path / "gc.npz")
    assert back.ids == r3.ids
    for f in ("counts", "norms", "cosine", "sample_norms"):
        np.testing.assert_array_equal(getattr(back, f), getattr(r3, f))
    pairs = r3.conflicts(threshold=1.0)
    assert len(pairs) == 3 and pairs[0][2] == pytest.approx(np.min(r3.cosine))


def test_bad_input_is_refused_before_work():
    m, loss_fn, (x, y) = mlp_case(n=12)
    obj = lv.Objective(m, loss_fn, (x, y))
    with pytest.raises(lv.LossvizError, match="12 samples"):
        gradient_conflict(obj, [0] * 11)
    with pytest.raises(lv.LossvizError, match="no samples"):
        gradient_conflict(obj, [0] * 6 + [1] * 6, ids=[0, 2])
    with pytest.raises(lv.LossvizError, match="1-D"):
        gradient_conflict(obj, np.zeros((12, 1), dtype=int))
    with pytest.raises(lv.LossvizError, match="whole numbers"):
        gradient_conflict(obj, np.linspace(0, 1, 12))
    with pytest.raises(lv.ArgumentTypeError, match="groups"):
        gradient_conflict(obj, 3)
    with pytest.raises(lv.LossvizError, match="groups"):
        gradient_conflict(obj, "classes")
    with pytest.raises(lv.ArgumentTypeError, match="Objective"):
        gradient_conflict(m, "labels")
    fwd = lv.Objective(m, forward=lambda mod, b: loss_fn(mod(b[0]), b[1]), data=(x, y))
    with pytest.raises(lv.LossvizError, match="forward="):
        gradient_conflict(fwd, "labels")
    reg = lv.Objective(nn.Linear(5, 1).double(), F.mse_loss, (x, torch.randn(12, 1).double()))
    with pytest.raises(lv.LossvizError, match="integer class labels"):
        gradient_conflict(reg, "labels")
    cm, closs, cdata = cnn_case(n=8)
    before = snapshot(cm)
    train_bn = lv.Objective(cm, closs, cdata, bn="train")
    with pytest.raises(lv.LossvizError, match="BatchNorm in training mode"):
        gradient_conflict(train_bn, "labels")
    assert_unchanged(cm, before)


def test_interrupt_marks_the_result_incomplete():
    m, loss_fn, (x, y) = mlp_case(n=20)
    calls = []

    def loss(out, t):
        calls.append(1)
        if len(calls) == 4:
            raise KeyboardInterrupt
        return loss_fn(out, t)

    obj = lv.Objective(m, loss, [(x[:10], y[:10]), (x[10:], y[10:])])
    before = snapshot(m)
    r = gradient_conflict(obj, "labels", chunk_size=5, progress=False)
    assert not r.complete and "INCOMPLETE" in repr(r)
    assert np.isnan(r.cosine).all() and np.isnan(r.norms).all()
    assert r.counts.sum() < 20
    assert_unchanged(m, before)


def test_ignored_labels_and_non_finite_losses():
    m, loss_fn, (x, y) = mlp_case(n=20)
    y2 = y.clone()
    y2[:4] = -100  # cross_entropy's ignore_index: in no loss term
    obj = lv.Objective(m, loss_fn, (x, y2))
    r = gradient_conflict(obj, "labels", progress=False)
    assert -100 not in r.ids and r.n_samples == 16
    keep = y2 != -100
    ref = np.stack(
        [group_gradient(m, loss_fn, x[keep & (y2 == c)], y2[keep & (y2 == c)]) for c in r.ids]
    )
    np.testing.assert_allclose(r.cosine, cos(ref), rtol=1e-9, atol=1e-12)
    x3 = x.clone()
    x3[5] = float("nan")
    bad = lv.Objective(m, loss_fn, [(x[:4], y[:4]), (x3[4:], y[4:])])
    with pytest.raises(lv.NonFiniteLossError, match="group"):
        gradient_conflict(bad, "labels", progress=False)
