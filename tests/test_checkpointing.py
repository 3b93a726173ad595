"""Models that use activation checkpointing (``torch.utils.checkpoint``).

Non-reentrant checkpointing supports double backward, so every curvature kernel works
through it and gives the numbers of the same network without checkpointing; the reentrant
variant cannot (``torch.autograd.grad`` is refused by it) and is reported when the
Objective is built, naming the fix."""

import pytest
import torch
from reference import assert_unchanged, dense_hessian, snapshot
from torch import nn
from torch.utils.checkpoint import checkpoint

import lossviz as lv
from lossviz.errors import LossvizError


class Plain(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b, self.c = nn.Linear(4, 6), nn.Linear(6, 6), nn.Linear(6, 3)

    def block(self, h):
        return torch.tanh(self.b(h))

    def forward(self, x):
        return self.c(self.block(torch.tanh(self.a(x))))


class Checkpointed(Plain):
    reentrant = False

    def forward(self, x):
        h = torch.tanh(self.a(x))
        h = checkpoint(self.block, h, use_reentrant=self.reentrant)
        return self.c(h)


class Reentrant(Checkpointed):
    reentrant = True


def _data():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(30, 4, generator=g, dtype=torch.float64)
    y = torch.randint(0, 3, (30,), generator=g)
    return [(x[:17], y[:17]), (x[17:], y[17:])]  # two uneven batches


def _pair():
    torch.manual_seed(0)
    ck = Checkpointed().double()
    plain = Plain().double()
    plain.load_state_dict(ck.state_dict())
    return ck, plain


def test_curvature_through_non_reentrant_checkpoint_equals_the_plain_network():
    ck, plain = _pair()
    data = _data()
    before = snapshot(ck)
    obj = lv.Objective(ck, nn.functional.cross_entropy, data)
    # the reference: the dense Hessian of the same weights without checkpointing
    H = dense_hessian(plain, nn.functional.cross_entropy, data)
    ev = torch.linalg.eigvalsh(H)
    e = lv.hessian_eigs(obj, k=3, progress=False)
    torch.testing.assert_close(
        torch.as_tensor(e.values.copy()), ev.flip(0)[:3], rtol=1e-7, atol=1e-9
    )
    tr = lv.hessian_trace(obj, rtol=0.02, progress=False)
    assert abs(tr.value - float(torch.trace(H))) < 4 * tr.stderr + 1e-9
    v = torch.randn(H.shape[0], dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    hv = obj.operator().apply(v[None])[0]
    torch.testing.assert_close(hv, H @ v, rtol=1e-9, atol=1e-10)
    g = obj.gradient()
    gp = torch.autograd.grad(
        sum(nn.functional.cross_entropy(plain(x), y) * len(y) for x, y in data) / 30,
        list(plain.parameters()),
    )
    torch.testing.assert_close(
        torch.cat([t.reshape(-1) for t in g.values()]), torch.cat([t.reshape(-1) for t in gp])
    )
    assert_unchanged(ck, before)


def test_reentrant_checkpoint_is_refused_with_the_fix():
    torch.manual_seed(0)
    m = Reentrant().double()
    before = snapshot(m)
    with pytest.raises(LossvizError, match="use_reentrant=False"):
        lv.Objective(m, nn.functional.cross_entropy, _data())
    assert_unchanged(m, before)
