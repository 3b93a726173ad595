"""Permutation alignment: the traced permutation structure, weight matching, BatchNorm
re-estimation and REPAIR."""

import copy

import pytest
import torch
from torch import nn

from lossviz.alignment import apply_permutation, permutation_spec, reset_bn, weight_matching
from lossviz.errors import CheckpointError, DataError, LossvizError
from tests.reference import assert_unchanged, snapshot


class ResNet(nn.Module):
    """Two residual stages: an identity shortcut and a strided 1×1 projection."""

    def __init__(self):
        super().__init__()
        self.conv0, self.bn0 = nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4)
        self.c1, self.b1 = nn.Conv2d(4, 4, 3, padding=1), nn.BatchNorm2d(4)
        self.c2, self.b2 = nn.Conv2d(4, 4, 3, padding=1), nn.BatchNorm2d(4)
        self.c3, self.b3 = nn.Conv2d(4, 6, 3, stride=2, padding=1), nn.BatchNorm2d(6)
        self.down, self.bd = nn.Conv2d(4, 6, 1, stride=2), nn.BatchNorm2d(6)
        self.ln = nn.LayerNorm(6)
        self.fc = nn.Linear(6, 3)

    def forward(self, x):
        x = torch.relu(self.bn0(self.conv0(x)))
        x = x + self.b2(self.c2(torch.relu(self.b1(self.c1(x)))))
        x = torch.relu(x)
        x = torch.relu(self.b3(self.c3(x)) + self.bd(self.down(x)))
        return self.fc(self.ln(x.mean((2, 3))))


def mlp(seed):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(5, 7), nn.ReLU(), nn.Linear(7, 6), nn.Tanh(), nn.Linear(6, 3))


def cnn(seed):
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(1, 3, 3),
        nn.BatchNorm2d(3),
        nn.ReLU(),
        nn.Conv2d(3, 5, 3),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(5 * 2 * 2, 3),
    )


def resnet(seed):
    torch.manual_seed(seed)
    return ResNet()


def _randomize_norms(m, seed):
    g = torch.Generator().manual_seed(seed)
    for mod in m.modules():
        if isinstance(mod, (nn.BatchNorm2d, nn.LayerNorm)):
            mod.weight.data.normal_(generator=g)
            mod.bias.data.normal_(generator=g)
        if isinstance(mod, nn.BatchNorm2d):
            mod.running_mean.normal_(generator=g)
            mod.running_var.uniform_(0.5, 2.0, generator=g)
    return m.eval()


CASES = {
    "mlp": (mlp, lambda: torch.randn(8, 5), 2),
    "cnn_bn": (cnn, lambda: torch.randn(8, 1, 6, 6), 2),
    "resnet": (resnet, lambda: torch.randn(8, 1, 6, 6), 3),
}


def _load(model, state):
    m = copy.deepcopy(model)
    m.load_state_dict(dict(state))
    return m.eval()


@pytest.mark.parametrize("case", list(CASES))
def test_permutations_keep_the_function(case):
    make, inputs, n_spaces = CASES[case]
    torch.manual_seed(0)
    model = _randomize_norms(make(0), 1)
    spec = permutation_spec(model)
    assert len(spec.spaces) == n_spaces
    x = inputs()
    perms = {s: torch.randperm(n) for s, n in spec.sizes.items()}
    permuted = apply_permutation(spec, model, perms)
    assert any(not torch.equal(permuted[k], v) for k, v in model.state_dict().items())
    m2 = _load(model, permuted)
    torch.testing.assert_close(m2(x), model(x), atol=1e-5, rtol=0)


@pytest.mark.parametrize("case", list(CASES))
def test_weight_matching(case):
    make, inputs, _ = CASES[case]
    a, b = _randomize_norms(make(1), 2), _randomize_norms(make(2), 3)
    a.train()
    first = next(a.parameters())
    first.grad = torch.ones_like(first)
    snap_a, snap_b = snapshot(a), snapshot(b)
    x = inputs()
    spec = permutation_spec(a)
    # a permuted copy of a is matched back exactly
    perms = {
        s: torch.randperm(n, generator=torch.Generator().manual_seed(s))
        for s, n in spec.sizes.items()
    }
    shuffled = apply_permutation(spec, a, perms)
    back = weight_matching(a, a, shuffled)
    for k, v in a.state_dict().items():
        assert torch.equal(back[k], v), k
    # two unrelated models: same function as b, closer to a
    aligned = weight_matching(a, a, b, seed=1)
    assert set(aligned) == set(b.state_dict())
    torch.testing.assert_close(_load(b, aligned)(x), b.eval()(x), atol=1e-5, rtol=0)
    inner = lambda w: sum(
        float((a.state_dict()[k] * w[k]).sum())  # noqa: E731
        for k, _ in a.named_parameters()
    )
    assert inner(aligned) >= inner(b.state_dict()) - 1e-6
    assert_unchanged(a, snap_a)
    assert_unchanged(b, snap_b)


def test_spec_ties_residual_additions():
    spec = permutation_spec(ResNet())
    tied = next(e for e in spec.spaces.values() if ("conv0.weight", 0, None) in e)
    names = {n for n, _, _ in tied}
    assert {"c2.weight", "b2.running_mean", "c1.weight", "down.weight"} <= names
    out = next(e for e in spec.spaces.values() if ("c3.weight", 0, None) in e)
    assert {("down.weight", 0, None), ("ln.weight", 0, None), ("fc.weight", 1, None)} <= set(out)
    # flattened conv channels feed the Linear layer in blocks of H·W features
    assert ("6.weight", 1, "cmajor") in permutation_spec(cnn(0)).spaces[2]
    assert "ResNet" not in repr(spec) and "units" in repr(spec)


class Attn(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 4)
        self.attn = nn.MultiheadAttention(4, 2, batch_first=True)

    def forward(self, x):
        return self.attn(self.fc(x), x, x)[0]


class Grouped(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(4, 4, 3, groups=2)

    def forward(self, x):
        return self.conv(x)


class RawParam(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(3, 3)
        self.scale = nn.Parameter(torch.ones(3))

    def forward(self, x):
        return self.fc(x) * self.scale


class Branchy(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(3, 3)

    def forward(self, x):
        if x.sum() > 0:
            return self.fc(x)
        return x


@pytest.mark.parametrize(
    "model, match",
    [
        (Attn(), r"'attn' \(MultiheadAttention\)"),
        (Grouped(), r"'conv'.*groups=2"),
        (RawParam(), r"'scale'"),
        (Branchy(), "torch.fx"),
    ],
)
def test_unpermutable_layers_are_named(model, match):
    with pytest.raises(LossvizError, match=match):
        weight_matching(model, model, model)


def test_unknown_ops_keep_spaces_fixed():
    class Cat(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b, self.c = nn.Linear(3, 4), nn.Linear(3, 4), nn.Linear(8, 2)

        def forward(self, x):
            return self.c(torch.cat([self.a(x), self.b(x)], 1))

    spec = permutation_spec(Cat())
    assert spec.spaces == {} and any("cat" in f for f in spec.fixed_by)


def test_mismatched_checkpoints():
    a, b = mlp(0), mlp(1)
    bad = {k: v for k, v in b.state_dict().items() if k != "2.bias"}
    with pytest.raises(CheckpointError, match=r"2\.bias"):
        weight_matching(a, a, bad)
    wrong = dict(b.state_dict())
    wrong["0.weight"] = torch.zeros(8, 5)
    with pytest.raises(CheckpointError, match=r"0\.weight.*\(7, 5\).*\(8, 5\)"):
        weight_matching(a, a, wrong)
    with pytest.raises(LossvizError, match="max_iter"):
        weight_matching(a, a, b, max_iter=0)


def test_reset_bn_matches_swa_utils_and_leaves_model_alone():
    model = _randomize_norms(cnn(0), 1).train()
    model[0].weight.grad = torch.ones_like(model[0].weight)
    snap = snapshot(model)
    other = _randomize_norms(cnn(1), 2)
    x = torch.randn(20, 1, 6, 6)
    batches = [(x[:8], None), (x[8:], None)]
    w = reset_bn(model, other.state_dict(), batches)
    ref = copy.deepcopy(other)
    torch.optim.swa_utils.update_bn([x[:8], x[8:]], ref)
    for k, v in ref.state_dict().items():
        torch.testing.assert_close(w[k], v)
    assert not torch.equal(w["1.running_mean"], other[1].running_mean)
    assert_unchanged(model, snap)
    with pytest.raises(DataError):
        reset_bn(model, other.state_dict(), [])
    with pytest.raises(CheckpointError, match="nope"):
        reset_bn(model, {"nope": torch.zeros(1)}, x)


def _stats(m, name, x):
    out = []
    h = m.get_submodule(name).register_forward_hook(lambda _m, _i, o: out.append(o))
    with torch.no_grad():
        m(x)
    h.remove()
    o = out[0].double()
    return o.mean(0), o.std(0, correction=0)


def test_repair_matches_interpolated_statistics():
    a, b = mlp(1).double(), mlp(2).double()
    x = torch.randn(64, 5, dtype=torch.float64)
    mid = {k: 0.25 * v + 0.75 * b.state_dict()[k] for k, v in a.state_dict().items()}
    w = reset_bn(a, mid, x, repair=(a, b), alpha=0.75)
    m = _load(a, w)
    for name in ("0", "2", "4"):
        mu, sd = _stats(m, name, x)
        mua, sda = _stats(a, name, x)
        mub, sdb = _stats(b, name, x)
        torch.testing.assert_close(mu, 0.25 * mua + 0.75 * mub)
        torch.testing.assert_close(sd, 0.25 * sda + 0.75 * sdb)


def test_repair_with_batchnorm():
    a, b = _randomize_norms(cnn(1), 1).double(), _randomize_norms(cnn(2), 2).double()
    x = torch.randn(32, 1, 6, 6, dtype=torch.float64)
    mid = {
        k: (0.5 * (v + b.state_dict()[k]) if v.is_floating_point() else v)
        for k, v in a.state_dict().items()
    }
    m = _load(a, reset_bn(a, mid, x, repair=(a, b)))
    chan = lambda t: t.transpose(0, 1).reshape(t.shape[1], -1)  # noqa: E731
    out = {}
    for name, net in (("m", m), ("a", a), ("b", b)):
        h = net[1].register_forward_hook(lambda _m, _i, o, name=name: out.update({name: chan(o)}))
        with torch.no_grad():
            net(x)
        h.remove()
    for f in (lambda t: t.mean(1), lambda t: t.std(1, correction=0)):
        torch.testing.assert_close(f(out["m"]), 0.5 * (f(out["a"]) + f(out["b"])))
