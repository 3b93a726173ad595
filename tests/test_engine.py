"""The evaluation engine against direct evaluation with plain model calls.

Every reference below copies the model, writes the point's weights into the copy's own
parameters and calls it (``copy.deepcopy`` + ``p.copy_``): no lossviz code computes a
reference number. Covered: an MLP (the first layer from three products), a CNN (a
convolution first), BatchNorm in eval mode and with re-estimated statistics, models whose
first layer is not a plain ``nn.Linear`` on the raw inputs, every strategy the engine can
choose, and the public pieces of the interface (``Engine.evaluate``,
``Engine.buffers_at``).
"""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from torch import nn

from lossviz.data import digits, mlp
from lossviz.directions import random_directions
from lossviz.engine import Engine
from lossviz.errors import LossvizError
from lossviz.landscape import line, surface
from lossviz.objective import Objective

F = nn.functional


def _state(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _load(m: nn.Module, w) -> None:
    with torch.no_grad():
        for k, p in m.named_parameters():
            p.copy_(w[k])


def direct_loss(model, w, data, loss_fn=F.cross_entropy, *, recompute=None) -> float:
    """Sample-weighted mean loss of a copy of ``model`` with weights ``w``; with
    ``recompute`` (a list of batches) the BatchNorm statistics are first re-estimated in
    train mode as a plain cumulative average (``momentum=None``)."""
    m = copy.deepcopy(model)
    _load(m, w)
    with torch.no_grad():
        if recompute is not None:
            for mod in m.modules():
                if isinstance(mod, nn.modules.batchnorm._BatchNorm):
                    mod.reset_running_stats()
                    mod.momentum = None
            m.train()
            for xb, _ in recompute:
                m(xb)
        m.eval()
        total = sum(float(loss_fn(m(xb), yb)) * len(yb) for xb, yb in data)
    return total / sum(len(yb) for _, yb in data)


def direct_surface(model, obj, d1, d2, s, data, **kw) -> np.ndarray:
    theta = obj.weights()
    ref = np.zeros((len(s.y), len(s.x)))
    for i, b in enumerate(s.y):
        for j, a in enumerate(s.x):
            ref[i, j] = direct_loss(model, theta + float(a) * d1 + float(b) * d2, data, **kw)
    return ref


@pytest.fixture(scope="module")
def digits64():
    x, y = digits(dtype=torch.float64)
    return x[:240], y[:240]


STRATEGIES = [{"batched": True}, {"batched": False}, {}]


@pytest.mark.parametrize("kw", STRATEGIES, ids=["vmap", "loop", "auto"])
def test_mlp_surface_equals_plain_calls(digits64, kw):
    x, y = digits64
    model = mlp((64, 16, 16, 10), seed=0).double()
    before = _state(model)
    data = [(x[:100], y[:100]), (x[100:200], y[100:200]), (x[200:], y[200:])]  # uneven
    obj = Objective(model, F.cross_entropy, data)
    d1, d2 = random_directions(obj, 2, seed=1)
    s = surface(obj, None, [d1, d2], n=(7, 6), chunk_size=2, progress=False, **kw)
    np.testing.assert_allclose(s.loss, direct_surface(model, obj, d1, d2, s, data), rtol=1e-10)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_first_layer_from_products_is_used_and_exact(digits64):
    x, y = digits64
    model = mlp((64, 16, 10), seed=0).double()
    obj = Objective(model, F.cross_entropy, (x, y))
    d1, d2 = random_directions(obj, 2, seed=2)
    theta, fixed = obj.resolve()
    D = torch.stack([obj.as_flat(d1), obj.as_flat(d2)])
    ab = torch.tensor([[0.5, -0.25], [-1.0, 0.75], [0.0, 0.0], [0.3, 0.3]], dtype=torch.float64)
    pts = theta + ab @ D
    for batched in (True, False):
        eng = Engine(obj, ("loss", "accuracy"), fixed, batched=batched)
        r = eng.evaluate(pts, plane=(theta, D, lambda idx, k: ab[k]))
        assert eng.first_layer == "0" and r.complete and r.evaluated.all()
        for i in range(len(ab)):
            w = obj.layout.to_weights(pts[i])
            assert r["loss"][i] == pytest.approx(direct_loss(model, w, [(x, y)]), rel=1e-12)
        plain = Engine(obj, ("loss", "accuracy"), fixed, batched=batched).evaluate(pts)
        np.testing.assert_allclose(r["loss"], plain["loss"], rtol=1e-12)
        np.testing.assert_array_equal(r["accuracy"], plain["accuracy"])


class SmallCNN(nn.Module):
    def __init__(self, bn: bool = False):
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4) if bn else nn.Identity()
        self.conv2 = nn.Conv2d(4, 4, 3, stride=2)
        self.head = nn.Linear(4 * 3 * 3, 10)

    def forward(self, x):
        h = torch.relu(self.bn(self.conv(x.view(-1, 1, 8, 8))))
        return self.head(torch.relu(self.conv2(h)).flatten(1))


class ImageCNN(SmallCNN):
    """Takes (N, 1, 8, 8) images: the first convolution gets the raw input."""

    def forward(self, x):
        h = torch.relu(self.bn(self.conv(x)))
        return self.head(torch.relu(self.conv2(h)).flatten(1))


@pytest.mark.parametrize("kw", STRATEGIES, ids=["vmap", "loop", "auto"])
def test_cnn_surface_equals_plain_calls(digits64, kw):
    x, y = digits64
    torch.manual_seed(0)
    model = ImageCNN().double()
    data = [(x[:120].view(-1, 1, 8, 8), y[:120]), (x[120:].view(-1, 1, 8, 8), y[120:])]
    obj = Objective(model, F.cross_entropy, data)
    d1, d2 = random_directions(obj, 2, seed=3)
    s = surface(obj, None, [d1, d2], n=(6, 5), chunk_size=2, progress=False, **kw)
    np.testing.assert_allclose(s.loss, direct_surface(model, obj, d1, d2, s, data), rtol=1e-10)
    theta, fixed = obj.resolve()
    eng = Engine(obj, "loss", fixed)
    D = torch.stack([obj.as_flat(d1), obj.as_flat(d2)])
    eng.evaluate(theta[None], plane=(theta, D, lambda idx, k: torch.zeros(len(k), 2)))
    assert eng.first_layer == "conv"


@pytest.mark.parametrize("kw", STRATEGIES, ids=["vmap", "loop", "auto"])
def test_batchnorm_eval_and_recompute_equal_plain_calls(digits64, kw):
    x, y = digits64
    torch.manual_seed(1)
    model = ImageCNN(bn=True).double()
    imgs = x.view(-1, 1, 8, 8)
    # running statistics that differ from what the data gives
    with torch.no_grad():
        model.train()
        model(imgs[:50] * 3 + 1)
        model.eval()
    before = _state(model)
    data = [(imgs[i : i + 80], y[i : i + 80]) for i in (0, 80, 160)]  # equal sizes
    obj = Objective(model, F.cross_entropy, data)
    d1, d2 = random_directions(obj, 2, seed=4)
    s = surface(obj, None, [d1, d2], n=(5, 4), chunk_size=2, progress=False, **kw)
    np.testing.assert_allclose(s.loss, direct_surface(model, obj, d1, d2, s, data), rtol=1e-10)
    r = surface(obj, None, [d1, d2], n=(5, 4), chunk_size=2, bn="recompute", progress=False, **kw)
    ref = direct_surface(model, obj, d1, d2, r, data, recompute=data)
    np.testing.assert_allclose(r.loss, ref, rtol=1e-9)
    assert not np.allclose(r.loss, s.loss)  # the statistics matter here
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_buffers_at_equal_plain_train_mode_statistics(digits64):
    x, y = digits64
    torch.manual_seed(2)
    model = ImageCNN(bn=True).double()
    imgs = x.view(-1, 1, 8, 8)
    data = [(imgs[:120], y[:120]), (imgs[120:], y[120:])]
    obj = Objective(model, F.cross_entropy, data)
    theta, fixed = obj.resolve()
    d = obj.as_flat(random_directions(obj, 1, seed=5)[0])
    eng = Engine(obj, "loss", fixed, bn="recompute")
    pts = torch.stack([theta, theta + 0.5 * d])
    bufs = eng.buffers_at(pts)
    one = eng.buffers_at(pts[1])
    for i in range(2):
        m = copy.deepcopy(model)
        _load(m, obj.layout.to_weights(pts[i]))
        m.bn.reset_running_stats()
        m.bn.momentum = None
        m.train()
        with torch.no_grad():
            for xb, _ in data:
                m(xb)
        torch.testing.assert_close(bufs["bn.running_mean"][i], m.bn.running_mean)
        torch.testing.assert_close(bufs["bn.running_var"][i], m.bn.running_var)
    torch.testing.assert_close(one["bn.running_var"], bufs["bn.running_var"][1])
    assert torch.equal(model.bn.running_mean, fixed["bn.running_mean"])  # untouched
    with pytest.raises(LossvizError, match="bn='recompute'"):
        Engine(obj, "loss", fixed).buffers_at(theta)
    with pytest.raises(LossvizError, match="entries"):
        eng.buffers_at(theta[:-1])


class ScaledFirst(nn.Module):
    """The first Linear sees ``2·x``, not the input itself."""

    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(64, 10)

    def forward(self, x):
        return self.lin(2 * x)


class NormFirst(nn.Module):
    """A LayerNorm first, then a Linear."""

    def __init__(self):
        super().__init__()
        self.norm = nn.LayerNorm(64)
        self.lin = nn.Linear(64, 10)

    def forward(self, x):
        return self.lin(self.norm(x))


class CopyFirst(nn.Module):
    """Works on a changed copy of its input: the first Linear never sees the input
    tensor itself."""

    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(64, 10)

    def forward(self, x):
        x = x.clone()
        x.mul_(0.5)
        return self.lin(x)


class TiedFirst(nn.Module):
    """The first layer's weight is another layer's (tied): not by its own name."""

    def __init__(self):
        super().__init__()
        self.a = nn.Linear(64, 64, bias=False)
        self.b = nn.Linear(64, 64, bias=False)
        self.b.weight = self.a.weight
        self.head = nn.Linear(64, 10)

    def forward(self, x):
        return self.head(torch.tanh(self.b(x)) + torch.tanh(self.a(x)))


@pytest.mark.parametrize("cls", [ScaledFirst, NormFirst, CopyFirst, TiedFirst])
def test_models_whose_first_layer_is_not_plain(digits64, cls):
    x, y = digits64
    torch.manual_seed(3)
    model = cls().double()
    obj = Objective(model, F.cross_entropy, (x, y))
    d1, d2 = random_directions(obj, 2, seed=6)
    for kw in STRATEGIES:
        s = surface(obj, None, [d1, d2], n=(4, 3), chunk_size=3, progress=False, **kw)
        ref = direct_surface(model, obj, d1, d2, s, [(x, y)])
        np.testing.assert_allclose(s.loss, ref, rtol=1e-10)
    theta, fixed = obj.resolve()
    eng = Engine(obj, "loss", fixed)
    D = torch.stack([obj.as_flat(d1), obj.as_flat(d2)])
    eng.evaluate(theta[None], plane=(theta, D, lambda idx, k: torch.zeros(len(k), 2)))
    if cls in (NormFirst, CopyFirst):
        assert eng.first_layer is None


def test_single_linear_model_output_is_not_overwritten(digits64):
    """With one Linear the combined first layer is the model's output: a metric that
    keeps the outputs sees each point's own."""
    x, y = digits64
    model = mlp((64, 10), seed=0).double()
    obj = Objective(model, F.cross_entropy, (x, y))
    kept = []

    def keep(out, yy):
        kept.append(out)
        return out.sum() * 0

    d = random_directions(obj, 1, seed=7)[0]
    line(obj, None, d, n=4, metrics=("loss", keep), batched=False, progress=False)
    theta = obj.weights()
    assert len(kept) == 5  # one forward checks the metric first
    for t, out in zip(np.linspace(-1, 1, 4), kept[1:]):
        m = copy.deepcopy(model)
        _load(m, theta + float(t) * d)
        with torch.no_grad():
            torch.testing.assert_close(out, m(x))


def test_line_and_float32_match_plain_calls():
    x, y = digits()
    model = mlp((64, 32, 10), seed=1)
    obj = Objective(model, F.cross_entropy, (x[:500], y[:500]))
    d = random_directions(obj, 1, seed=8)[0]
    s = line(obj, None, d, n=9, chunk_size=2, progress=False)
    theta = obj.weights()
    ref = [direct_loss(model, theta + float(t) * d, [(x[:500], y[:500])]) for t in s.t]
    np.testing.assert_allclose(s.loss, ref, rtol=1e-5)


def test_custom_forward_and_streamed_data(digits64):
    x, y = digits64
    model = mlp((64, 16, 10), seed=0).double()

    def forward(m, batch):
        return F.cross_entropy(m(batch[0]), batch[1])

    class Loader:  # re-iterable, not held in memory
        def __iter__(self):
            return iter([(x[:100], y[:100]), (x[100:], y[100:])])

    obj = Objective(model, forward=forward, data=Loader())
    assert obj.held_batches() is None
    d1, d2 = random_directions(obj, 2, seed=9)
    for kw in STRATEGIES:
        s = surface(obj, None, [d1, d2], n=(4, 3), chunk_size=2, progress=False, **kw)
        ref = direct_surface(model, obj, d1, d2, s, [(x[:100], y[:100]), (x[100:], y[100:])])
        np.testing.assert_allclose(s.loss, ref, rtol=1e-10)


def test_engine_evaluate_interface(digits64):
    x, y = digits64
    model = mlp((64, 8, 10), seed=0).double()
    obj = Objective(model, F.cross_entropy, (x, y))
    theta, fixed = obj.resolve()
    pts = torch.stack([theta, 1.5 * theta, theta.neg()])
    eng = Engine(obj, ("loss", "error"), fixed)
    r = eng.evaluate(pts)
    assert list(r) == ["loss", "error"] and r.complete and r.evaluated.tolist() == [True] * 3
    assert r.strategy in ("vmap", "loop") and r.seconds > 0
    for i in range(3):
        w = obj.layout.to_weights(pts[i])
        assert r["loss"][i] == pytest.approx(direct_loss(model, w, [(x, y)]), rel=1e-12)
    assert Engine(obj).metrics == {"loss": "loss"}  # defaults: the loss at the model


def test_private_torch_apis_the_engine_relies_on():
    """``objective.reparametrized`` wraps torch's private ``_reparametrize_module`` and the
    first-layer shortcut reads ``Tensor._version``: this fails loudly if torch changes
    either."""
    from lossviz.objective import reparametrized

    m = nn.Sequential(nn.Linear(2, 2), nn.Linear(2, 2))
    m[1].weight = m[0].weight  # tied
    w = torch.full((2, 2), 3.0)
    with reparametrized(m, {"0.weight": w}):
        assert m[0].weight is w and m[1].weight is w
    assert m[0].weight is not w and isinstance(m[0].weight, nn.Parameter)
    batched = torch.stack([w, 2 * w])
    out = torch.func.vmap(lambda v: torch.func.functional_call(m, {"0.weight": v}, (w[0],)))(
        batched
    )
    assert out.shape == (2, 2)
    t = torch.zeros(3)
    v = t._version
    t.add_(1)
    assert t._version == v + 1


def test_per_point_path_without_a_module_copy(digits64, monkeypatch):
    """A model that cannot be copied is evaluated point by point through
    ``Objective.bound``: the same numbers."""
    x, y = digits64
    model = mlp((64, 16, 10), seed=0).double()
    obj = Objective(model, F.cross_entropy, (x, y))
    d1, d2 = random_directions(obj, 2, seed=10)
    kw = {"n": (4, 3), "batched": False, "progress": False}
    a = surface(obj, None, [d1, d2], **kw)

    def refuse(self):
        raise LossvizError("the model cannot be copied (test)")

    monkeypatch.setattr(Objective, "module_copy", refuse)
    b = surface(obj, None, [d1, d2], **kw)
    np.testing.assert_allclose(a.loss, b.loss, rtol=1e-12)
    np.testing.assert_allclose(b.loss, direct_surface(model, obj, d1, d2, b, [(x, y)]), rtol=1e-10)
