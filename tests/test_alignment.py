"""Permutation alignment: the traced permutation structure, weight matching, BatchNorm
re-estimation and REPAIR."""

import copy
import io
import warnings

import pytest
import torch
from reference import Tick, Ticker, assert_unchanged, snapshot
from torch import nn

from lossviz.alignment import apply_permutation, permutation_spec, reset_bn, weight_matching
from lossviz.errors import CheckpointError, DataError, LossvizError


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


# function preservation: size coincidences the tracer must not be misled by ----------------
class LinearOn3D(nn.Module):
    """Issue 10: Linear(4, 6) on (N, 6, 4) inputs, then BatchNorm1d(6) (dim 1 is the
    length 6, not the features)."""

    def __init__(self):
        super().__init__()
        self.fc, self.bn, self.out = nn.Linear(4, 6), nn.BatchNorm1d(6), nn.Linear(36, 3)

    def forward(self, x):
        return self.out(torch.flatten(torch.relu(self.bn(self.fc(x))), 1))


class LinearBN(nn.Module):
    """The common MLP with BatchNorm1d: correct for 2-D inputs, wrong for 3-D ones."""

    def __init__(self):
        super().__init__()
        self.fc, self.bn, self.out = nn.Linear(4, 6), nn.BatchNorm1d(6), nn.Linear(6, 3)

    def forward(self, x):
        return self.out(torch.relu(self.bn(self.fc(x))))


class PReLUOn3D(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.p, self.b = nn.Linear(4, 6), nn.PReLU(6), nn.Linear(6, 2)

    def forward(self, x):
        return self.b(self.p(self.a(x)))


class Transposed(nn.Module):
    """``.T`` of a square activation (batch 6 = hidden 6) fed to the next layer."""

    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Linear(3, 6), nn.Linear(6, 2)

    def forward(self, x):
        return self.b(torch.relu(self.a(x)).T)


class Square(nn.Module):
    """Every size 6 (square weights, inputs of the same size as the hidden units)."""

    def __init__(self):
        super().__init__()
        self.a, self.b, self.c = nn.Linear(6, 6), nn.Linear(6, 6), nn.Linear(6, 6)

    def forward(self, x):
        return self.c(torch.tanh(self.b(torch.relu(self.a(x)))))


class ConvThenLinear(nn.Module):
    """A Linear layer over the length axis of a Conv1d output whose length = channels."""

    def __init__(self):
        super().__init__()
        self.c, self.l, self.o = nn.Conv1d(3, 5, 1), nn.Linear(5, 4), nn.Linear(4, 2)

    def forward(self, x):
        return self.o(torch.relu(self.l(torch.relu(self.c(x)))))


class EmbeddingBN(nn.Module):
    """Embedding(10, 5) of (N, 5) indices then BatchNorm1d(5): dim 1 is the sequence."""

    def __init__(self):
        super().__init__()
        self.e, self.bn, self.o = nn.Embedding(10, 5), nn.BatchNorm1d(5), nn.Linear(5, 2)

    def forward(self, x):
        return self.o(self.bn(self.e(x)))


class ConvLayerNorm(nn.Module):
    """LayerNorm(4) after a Conv2d with 4 channels normalizes the width (also 4)."""

    def __init__(self):
        super().__init__()
        self.c, self.ln, self.o = nn.Conv2d(1, 4, 3), nn.LayerNorm(4), nn.Conv2d(4, 2, 1)

    def forward(self, x):
        return self.o(self.ln(torch.relu(self.c(x))))


class Gate(nn.Module):
    """A size-1 gate broadcast over 6 hidden units."""

    def __init__(self):
        super().__init__()
        self.h, self.g, self.o = nn.Linear(4, 6), nn.Linear(4, 1), nn.Linear(6, 2)

    def forward(self, x):
        return self.o(torch.relu(self.h(x)) * torch.sigmoid(self.g(x)))


class MeanOverLength(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Linear(4, 6), nn.Linear(6, 2)

    def forward(self, x):
        return self.b(torch.relu(self.a(x)).mean(1))


class SingleHead(nn.Module):
    """Attention with d = sequence length = 4."""

    def __init__(self):
        super().__init__()
        self.q, self.k, self.v, self.o = (nn.Linear(4, 4) for _ in range(3)), None, None, None
        self.q, self.k, self.v = nn.Linear(4, 4), nn.Linear(4, 4), nn.Linear(4, 4)
        self.o = nn.Linear(4, 2)

    def forward(self, x):
        a = torch.softmax(self.q(x) @ self.k(x).transpose(-2, -1), -1)
        return self.o(a @ self.v(x))


def _coincidence_cases():
    from reference import AttentionBlock, TiedNet

    return {
        "linear_on_3d_bn": (LinearOn3D, lambda: torch.randn(5, 6, 4)),
        "linear_bn_2d": (LinearBN, lambda: torch.randn(5, 4)),
        "linear_bn_3d": (LinearBN, lambda: torch.randn(5, 6, 4)),
        "prelu_3d": (PReLUOn3D, lambda: torch.randn(5, 6, 4)),
        "transpose": (Transposed, lambda: torch.randn(6, 3)),
        "square_2d": (Square, lambda: torch.randn(6, 6)),
        "square_3d": (Square, lambda: torch.randn(6, 6, 6)),
        "conv_then_linear": (ConvThenLinear, lambda: torch.randn(5, 3, 5)),
        "embedding_bn": (EmbeddingBN, lambda: torch.randint(0, 10, (5, 5))),
        "conv_layernorm": (ConvLayerNorm, lambda: torch.randn(5, 1, 6, 6)),
        "gate": (Gate, lambda: torch.randn(5, 4)),
        "mean_over_length": (MeanOverLength, lambda: torch.randn(5, 6, 4)),
        "single_head": (SingleHead, lambda: torch.randn(5, 4, 4)),
        "attention_heads": (AttentionBlock, lambda: torch.randn(5, 5, 8)),
        "tied": (TiedNet, lambda: torch.randint(0, 7, (5, 3))),
    }


COINCIDENCES = _coincidence_cases()


def _random_norms(m, g):
    with torch.no_grad():
        for mod in m.modules():
            if isinstance(mod, (nn.BatchNorm1d, nn.LayerNorm)):
                mod.weight.normal_(generator=g)
                mod.bias.normal_(generator=g)
            if isinstance(mod, nn.BatchNorm1d):
                mod.running_mean.normal_(generator=g)
                mod.running_var.uniform_(0.5, 2.0, generator=g)
            if isinstance(mod, nn.PReLU):
                mod.weight.uniform_(-1, 1, generator=g)
    return m.eval()


@pytest.mark.parametrize("with_data", [False, True], ids=["no_data", "data"])
@pytest.mark.parametrize("case", list(COINCIDENCES))
def test_size_coincidences_keep_the_function(case, with_data):
    make, inputs = COINCIDENCES[case]
    g = torch.Generator().manual_seed(0)
    torch.manual_seed(1)
    a = _random_norms(make(), g)
    torch.manual_seed(2)
    b = _random_norms(make(), g)
    torch.manual_seed(3)
    x = inputs()
    snap_a, snap_b = snapshot(a), snapshot(b)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        r = weight_matching(a, b.state_dict(), data=x if with_data else None)
    m = _load(b, r.state_dict())
    # a plain forward of the permuted b on the inputs the model is meant for
    torch.testing.assert_close(m(x), b(x), atol=1e-5, rtol=0)
    assert_unchanged(a, snap_a)
    assert_unchanged(b, snap_b)


def test_issue_case_is_fixed_and_aligned_when_the_rank_is_known():
    torch.manual_seed(1)
    a = _random_norms(LinearBN(), torch.Generator().manual_seed(0))
    torch.manual_seed(2)
    b = _random_norms(LinearBN(), torch.Generator().manual_seed(1))
    x2, x3 = torch.randn(8, 4), torch.randn(8, 6, 4)
    # without data the rank is unknown: BatchNorm1d's units stay fixed, with a warning
    with pytest.warns(UserWarning, match=r"bn \(BatchNorm1d.*pass data="):
        same = weight_matching(a, b)
    assert all(torch.equal(same[k], v) for k, v in b.state_dict().items())
    # 2-D data: dim 1 is the features, the units are aligned
    r2 = weight_matching(a, b, data=x2)
    assert not torch.equal(r2["fc.weight"], b.fc.weight)
    torch.testing.assert_close(_load(b, r2)(x2), b(x2), atol=1e-5, rtol=0)
    # 3-D data: dim 1 is the length, nothing is permuted
    spec3 = permutation_spec(a, data=x3)
    assert spec3.spaces == {} and any("3-D" in f for f in spec3.fixed_by)
    # the spec traced on 2-D inputs does not hold for 3-D ones: refused, layers named
    spec2 = permutation_spec(a, data=x2)
    shuffled = apply_permutation(spec2, a, {1: torch.tensor([1, 0, 3, 2, 5, 4])})
    with pytest.raises(LossvizError, match=r"fc\.weight\[0\].*bn\.running_mean\[0\]"):
        weight_matching(a, shuffled, data=x3, spec=spec2)


def test_the_function_check_refuses_a_wrong_trace(monkeypatch):
    """Even if the tracer ties a wrong axis, no silently different model comes back."""
    from lossviz import alignment

    torch.manual_seed(1)
    a = _random_norms(LinearBN(), torch.Generator().manual_seed(0))
    torch.manual_seed(2)
    b = _random_norms(LinearBN(), torch.Generator().manual_seed(1))
    monkeypatch.setattr(alignment._Tracer, "rank_dependent", lambda self, x, name, kind: None)
    x3 = torch.randn(8, 6, 4)
    spec = permutation_spec(a, data=x3)  # wrongly ties BatchNorm's length axis
    assert len(spec.spaces) == 1
    shuffled = apply_permutation(spec, a, {1: torch.tensor([1, 0, 3, 2, 5, 4])})
    with pytest.raises(
        LossvizError, match=r"does not compute b's function.*'fc'.*bn\.running_mean\[0\]"
    ):
        weight_matching(a, shuffled, data=x3)
    with pytest.raises(LossvizError, match=r"does not compute b's function"):
        weight_matching(a, b, data=x3)


def test_inputs_that_cannot_be_made_up_need_data():
    class Reshaping(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Linear(4, 6), nn.Linear(6, 2)

        def forward(self, x):
            return self.b(torch.relu(self.a(x.view(x.shape[0], 3, 4))))

    torch.manual_seed(0)
    a, b = Reshaping(), Reshaping()
    with pytest.raises(LossvizError, match="could not make inputs.*data="):
        weight_matching(a, b)
    x = torch.randn(5, 12)
    r = weight_matching(a, b, data=x)
    torch.testing.assert_close(_load(b, r)(x), b(x), atol=1e-5, rtol=0)


def test_two_argument_form_and_the_result_is_a_point():
    a, b = _randomize_norms(cnn(1), 2), _randomize_norms(cnn(2), 3)
    x = torch.randn(6, 1, 6, 6)
    r = weight_matching(a, b)
    r3 = weight_matching(a, a.state_dict(), b.state_dict())
    assert list(r) == list(b.state_dict()) and all(torch.equal(r[k], r3[k]) for k in r)
    # load_state_dict (Weights or the plain dict), torch.save of the plain dict
    m = copy.deepcopy(b)
    m.load_state_dict(r)
    torch.testing.assert_close(m(x), b(x), atol=1e-5, rtol=0)
    sd = r.state_dict()
    assert type(sd) is dict and list(sd) == list(r)
    buf = io.BytesIO()
    torch.save(sd, buf)
    buf.seek(0)
    back = torch.load(buf, weights_only=True)
    assert all(torch.equal(back[k], r[k]) for k in r)
    # lossviz functions that take points
    from lossviz.connectivity import interpolate
    from lossviz.merging import merge
    from lossviz.objective import Objective

    obj = Objective(a, nn.functional.cross_entropy, (x, torch.randint(0, 3, (6,))))
    path = interpolate(obj, b, r, n=3, metrics=("loss",))
    assert path.loss[0] == pytest.approx(path.loss[-1], abs=1e-5)
    soup = merge([a, r])
    assert set(soup) == set(r)
    # an Objective as the architecture gives the data
    assert all(torch.equal(weight_matching(obj, b)[k], r[k]) for k in r)


def test_tied_weights_are_permuted_under_every_name():
    from reference import TiedNet

    torch.manual_seed(1)
    a = TiedNet()
    torch.manual_seed(2)
    b = TiedNet()
    x = torch.randint(0, 7, (6, 3))
    sd = b.state_dict()
    assert "out.weight" in sd and "emb.weight" in sd
    r = weight_matching(a, sd, data=x)
    assert torch.equal(r["out.weight"], r["emb.weight"])
    assert not torch.equal(r["emb.weight"], sd["emb.weight"])
    torch.testing.assert_close(_load(b, r)(x), b(x), atol=1e-5, rtol=0)


@pytest.mark.parametrize("when", ["first", "last"])
def test_ctrl_c_propagates_and_leaves_models_alone(when):
    """A KeyboardInterrupt raised by the model's forward (the first or the last one a call
    makes) propagates, and the user's models are unchanged."""
    ticker = Ticker()

    def net(seed):
        torch.manual_seed(seed)
        return nn.Sequential(
            nn.Linear(4, 6), nn.BatchNorm1d(6), Tick(ticker), nn.ReLU(), nn.Linear(6, 3)
        ).train()

    a, b = net(1), net(2)
    x = torch.randn(10, 4)
    snaps = [snapshot(a), snapshot(b)]
    mid = {k: (v + b.state_dict()[k]) / 2 for k, v in a.state_dict().items()}
    for call in (
        lambda: reset_bn(a, mid, [(x[:5],), (x[5:],)]),
        lambda: reset_bn(a, mid, x, repair=(a, b)),
        lambda: weight_matching(a, b, data=x),
    ):
        ticker.left = 10_000
        call()
        calls = 10_000 - ticker.left
        ticker.left = 0 if when == "first" else calls - 1
        with pytest.raises(KeyboardInterrupt):
            call()
        ticker.left = None
        assert_unchanged(a, snaps[0])
        assert_unchanged(b, snaps[1])
