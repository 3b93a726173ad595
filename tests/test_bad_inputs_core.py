"""Off the happy path, for the functional core: every bad argument of ``Objective`` and its
methods, data lossviz cannot use, points and ``Weights``. Each probe asserts the error type
and that the message names the argument (or the thing) that was wrong; the cases that must
simply work are checked against plain PyTorch."""

import functools
import itertools

import numpy as np
import pytest
import torch
from reference import assert_unchanged, snapshot
from torch import nn
from torch.autograd.functional import hessian

import lossviz as lv

F = nn.functional


def _mlp(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(5, 7), nn.Tanh(), nn.Linear(7, 3)).double()


def _data(n=20, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 5, generator=g, dtype=torch.float64)
    y = torch.randint(0, 3, (n,), generator=g)
    return x, y


X, Y = _data()


class _NoParams(nn.Module):
    def forward(self, x):
        return x


class _Mixed(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Linear(5, 3).double()
        self.b = nn.Linear(3, 3)  # float32

    def forward(self, x):
        return self.b(self.a(x).float()).double()


class _IntParam(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(5, 3).double()
        self.steps = nn.Parameter(torch.zeros(2, dtype=torch.long), requires_grad=False)

    def forward(self, x):
        return self.lin(x)


class _Once:
    """An iterable whose ``__iter__`` returns the same generator every time: its second
    pass is empty (a one-shot source that looks re-iterable)."""

    def __init__(self, batches):
        self._it = iter(batches)

    def __iter__(self):
        return (b for b in self._it)


class _Alternating:
    """A re-iterable source whose passes alternate between all batches and all but the
    last (a sampler that draws a different number each pass)."""

    def __init__(self, batches):
        self.batches, self.passes = batches, 0

    def __iter__(self):
        self.passes += 1
        return iter(self.batches if self.passes % 2 else self.batches[:-1])


def _uneven():
    return [(X[:7], Y[:7]), (X[7:15], Y[7:15]), (X[15:], Y[15:])]


# (id, lambda building the Objective, error type, text the message must contain)
OBJECTIVE_PROBES = [
    (
        "model not a module",
        lambda: lv.Objective("mlp", F.cross_entropy, (X, Y)),
        TypeError,
        "model",
    ),
    ("loss_fn a string", lambda: lv.Objective(_mlp(), "ce", (X, Y)), TypeError, "loss_fn"),
    (
        "forward not callable",
        lambda: lv.Objective(_mlp(), data=(X, Y), forward=3),
        TypeError,
        "forward",
    ),
    (
        "neither loss_fn nor forward",
        lambda: lv.Objective(_mlp(), data=(X, Y)),
        TypeError,
        "loss_fn",
    ),
    (
        "bn unknown",
        lambda: lv.Objective(_mlp(), F.cross_entropy, (X, Y), bn="batch"),
        ValueError,
        "bn",
    ),
    (
        "reduction unknown",
        lambda: lv.Objective(_mlp(), F.cross_entropy, (X, Y), reduction="avg"),
        ValueError,
        "reduction",
    ),
    (
        "reduction contradicts loss",
        lambda: lv.Objective(
            _mlp(), nn.CrossEntropyLoss(reduction="sum"), (X, Y), reduction="mean"
        ),
        ValueError,
        "reduction",
    ),
    (
        "reduction none",
        lambda: lv.Objective(_mlp(), nn.CrossEntropyLoss(reduction="none"), (X, Y)),
        ValueError,
        "reduction",
    ),
    (
        "partial reduction none",
        lambda: lv.Objective(_mlp(), functools.partial(F.cross_entropy, reduction="none"), (X, Y)),
        ValueError,
        "reduction",
    ),
    (
        "max_batches 0",
        lambda: lv.Objective(_mlp(), F.cross_entropy, (X, Y), max_batches=0),
        ValueError,
        "max_batches",
    ),
    (
        "max_batches float",
        lambda: lv.Objective(_mlp(), F.cross_entropy, (X, Y), max_batches=2.5),
        TypeError,
        "max_batches",
    ),
    ("data missing", lambda: lv.Objective(_mlp(), F.cross_entropy), ValueError, "data"),
    (
        "data a string",
        lambda: lv.Objective(_mlp(), F.cross_entropy, "digits.csv"),
        TypeError,
        "data",
    ),
    ("data an int", lambda: lv.Objective(_mlp(), F.cross_entropy, 5), TypeError, "data"),
    ("data an empty list", lambda: lv.Objective(_mlp(), F.cross_entropy, []), ValueError, "empty"),
    (
        "data an empty generator",
        lambda: lv.Objective(_mlp(), F.cross_entropy, iter([])),
        ValueError,
        "empty",
    ),
    (
        "batch with no samples",
        lambda: lv.Objective(_mlp(), F.cross_entropy, (X[:0], Y[:0])),
        ValueError,
        "no samples",
    ),
    (
        "empty batch among others",
        lambda: lv.Objective(_mlp(), F.cross_entropy, [(X, Y), (X[:0], Y[:0])]),
        ValueError,
        "batch 1",
    ),
    (
        "inputs and targets of different sizes",
        lambda: lv.Objective(_mlp(), F.cross_entropy, (X, Y[:10])),
        ValueError,
        "targets",
    ),
    (
        "float class labels",
        lambda: lv.Objective(_mlp(), F.cross_entropy, (X, Y.double())),
        ValueError,
        "targets",
    ),
    (
        "labels out of range",
        lambda: lv.Objective(_mlp(), F.cross_entropy, (X, Y + 3)),
        ValueError,
        "out of range",
    ),
    (
        "negative labels",
        lambda: lv.Objective(_mlp(), F.cross_entropy, (X, Y - 2)),
        ValueError,
        "out of range",
    ),
    (
        "labels out of range in a later batch",
        lambda: lv.Objective(_mlp(), F.cross_entropy, [(X[:10], Y[:10]), (X[10:], Y[10:] + 3)]),
        ValueError,
        "batch 1",
    ),
    (
        "boolean labels",
        lambda: lv.Objective(_mlp(), F.cross_entropy, (X, Y > 0)),
        ValueError,
        "targets",
    ),
    (
        "dict batch without forward",
        lambda: lv.Objective(_mlp(), F.cross_entropy, {"x": X, "y": Y}),
        ValueError,
        "forward",
    ),
    (
        "inputs without targets",
        lambda: lv.Objective(_mlp(), F.cross_entropy, (X,)),
        ValueError,
        "targets",
    ),
    (
        "bare tensor as data",
        lambda: lv.Objective(_mlp(), F.cross_entropy, X),
        ValueError,
        "targets",
    ),
    (
        "three-element batch",
        lambda: lv.Objective(_mlp(), F.cross_entropy, (X, Y, Y)),
        ValueError,
        "forward",
    ),
    (
        "float32 data, float64 model",
        lambda: lv.Objective(_mlp(), F.cross_entropy, (X.float(), Y)),
        ValueError,
        "float32",
    ),
    (
        "element-wise loss, targets broadcast",
        lambda: lv.Objective(nn.Linear(5, 1).double(), F.mse_loss, (X, X[:, 0])),
        ValueError,
        "targets",
    ),
    (
        "element-wise loss module, targets broadcast",
        lambda: lv.Objective(nn.Linear(5, 2).double(), nn.MSELoss(), (X, X[:, :1])),
        ValueError,
        "targets",
    ),
    (
        "params empty",
        lambda: lv.Objective(_mlp(), F.cross_entropy, (X, Y), params=[]),
        ValueError,
        "params",
    ),
    (
        "params unknown",
        lambda: lv.Objective(_mlp(), F.cross_entropy, (X, Y), params=["nope"]),
        ValueError,
        "params",
    ),
    (
        "params duplicated",
        lambda: lv.Objective(_mlp(), F.cross_entropy, (X, Y), params=["0.weight", "0.weight"]),
        ValueError,
        "params",
    ),
    (
        "params a bare string",
        lambda: lv.Objective(_mlp(), F.cross_entropy, (X, Y), params="0.weight"),
        TypeError,
        "params",
    ),
    (
        "params not names",
        lambda: lv.Objective(_mlp(), F.cross_entropy, (X, Y), params=[0]),
        TypeError,
        "params",
    ),
    (
        "params predicate selects nothing",
        lambda: lv.Objective(_mlp(), F.cross_entropy, (X, Y), params=lambda n: False),
        ValueError,
        "params",
    ),
    (
        "params integer tensor",
        lambda: lv.Objective(_IntParam(), F.cross_entropy, (X, Y), params=["steps"]),
        ValueError,
        "floating",
    ),
    (
        "params of mixed dtypes",
        lambda: lv.Objective(_Mixed(), F.cross_entropy, (X, Y)),
        ValueError,
        "dtypes",
    ),
    (
        "model without parameters",
        lambda: lv.Objective(_NoParams(), F.cross_entropy, (X, Y)),
        ValueError,
        "parameters",
    ),
    (
        "device nonsense",
        lambda: lv.Objective(_mlp(), F.cross_entropy, (X, Y), device="gpu0"),
        ValueError,
        "device",
    ),
    (
        "device a float",
        lambda: lv.Objective(_mlp(), F.cross_entropy, (X, Y), device=0.5),
        TypeError,
        "device",
    ),
    (
        "loss_fn detaches",
        lambda: lv.Objective(_mlp(), lambda o, t: F.cross_entropy(o.detach(), t), (X, Y)),
        ValueError,
        "detach",
    ),
    (
        "loss_fn goes through numpy",
        lambda: lv.Objective(
            _mlp(), lambda o, t: torch.tensor(float(F.cross_entropy(o, t))), (X, Y)
        ),
        ValueError,
        "gradient",
    ),
    (
        "forward uses a captured model",
        lambda: lv.Objective(
            _mlp(), data=(X, Y), forward=lambda m, b: F.cross_entropy(_CAPTURED(b[0]), b[1])
        ),
        ValueError,
        "forward",
    ),
    (
        "loss not a scalar",
        lambda: lv.Objective(
            _mlp(),
            data=(X, Y),
            forward=lambda m, b: F.cross_entropy(m(b[0]), b[1], reduction="none"),
        ),
        ValueError,
        "scalar",
    ),
    (
        "loss a Python float",
        lambda: lv.Objective(_mlp(), data=(X, Y), forward=lambda m, b: 1.0),
        ValueError,
        "scalar",
    ),
    (
        "loss an integer tensor",
        lambda: lv.Objective(
            _mlp(), data=(X, Y), forward=lambda m, b: (m(b[0]).argmax(1) == b[1]).sum()
        ),
        ValueError,
        "floating",
    ),
    (
        "loss_fn raises",
        lambda: lv.Objective(_mlp(), lambda o, t: o.view(7, 7), (X, Y)),
        ValueError,
        "loss_fn",
    ),
    (
        "NumPy arrays as data",
        lambda: lv.Objective(_mlp(), F.cross_entropy, (X.numpy(), Y.numpy())),
        ValueError,
        "NumPy",
    ),
    (
        "a list of NumPy batches",
        lambda: lv.Objective(_mlp(), F.cross_entropy, [(X.numpy(), Y.numpy())]),
        ValueError,
        "NumPy",
    ),
    (
        "Python lists as data",
        lambda: lv.Objective(_mlp(), F.cross_entropy, (X.tolist(), Y.tolist())),
        ValueError,
        "lists",
    ),
    (
        "device meta",
        lambda: lv.Objective(_mlp(), F.cross_entropy, (X, Y), device="meta"),
        ValueError,
        "device",
    ),
    (
        "endless iterator",
        lambda: lv.Objective(_mlp(), F.cross_entropy, itertools.cycle([(X, Y)])),
        ValueError,
        "max_batches",
    ),
]
_CAPTURED = _mlp(5)

if not torch.cuda.is_available():
    OBJECTIVE_PROBES.append(
        (
            "cuda without CUDA",
            lambda: lv.Objective(_mlp(), F.cross_entropy, (X, Y), device="cuda"),
            ValueError,
            "device",
        )
    )


@pytest.mark.parametrize(
    "build, exc, text", [p[1:] for p in OBJECTIVE_PROBES], ids=[p[0] for p in OBJECTIVE_PROBES]
)
def test_objective_probe(build, exc, text):
    with pytest.raises(exc) as e:
        build()
    assert isinstance(e.value, lv.LossvizError), type(e.value)
    assert text in str(e.value), str(e.value)


def _obj():
    return lv.Objective(_mlp(), F.cross_entropy, (X, Y))


def _bad_safetensors(tmp_path):
    p = tmp_path / "bad.safetensors"
    p.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all")
    return p


METHOD_PROBES = [
    ("point an int", lambda o, t: o.loss(5), TypeError, "point"),
    ("point with a string entry", lambda o, t: o.loss({"0.weight": "w"}), TypeError, "non-tensor"),
    (
        "point missing parameters",
        lambda o, t: o.loss({"0.weight": torch.zeros(7, 5)}),
        ValueError,
        "missing",
    ),
    (
        "point of another shape",
        lambda o, t: o.loss({**_mlp().state_dict(), "0.bias": torch.zeros(3)}),
        ValueError,
        "0.bias",
    ),
    ("checkpoint not found", lambda o, t: o.loss(t / "nope.pt"), ValueError, "not found"),
    ("corrupt safetensors", lambda o, t: o.loss(_bad_safetensors(t)), ValueError, "safetensors"),
    (
        "direction of the wrong size",
        lambda o, t: o.hvp(torch.zeros(5, dtype=torch.float64)),
        ValueError,
        "size",
    ),
    ("direction a 0-d tensor", lambda o, t: o.hvp(torch.tensor(1.0)), ValueError, "size"),
    ("direction a string", lambda o, t: o.hvp("up"), TypeError, "Weights"),
    (
        "direction missing a tensor",
        lambda o, t: o.hvp({"0.weight": torch.zeros(7, 5)}),
        ValueError,
        "direction",
    ),
    (
        "direction a complex tensor",
        lambda o, t: o.hvp(torch.zeros(o.n_params, dtype=torch.complex128)),
        TypeError,
        "real",
    ),
    (
        "hvp_batched a 3-d tensor",
        lambda o, t: o.hvp_batched(torch.zeros(2, 2, o.n_params)),
        ValueError,
        "vs",
    ),
    ("curvature unknown", lambda o, t: o.operator(curvature="hess"), ValueError, "curvature"),
    (
        "hvp curvature unknown",
        lambda o, t: o.hvp(o.weights(), curvature="fisher"),
        ValueError,
        "curvature",
    ),
]


@pytest.mark.parametrize(
    "call, exc, text", [p[1:] for p in METHOD_PROBES], ids=[p[0] for p in METHOD_PROBES]
)
def test_objective_method_probe(call, exc, text, tmp_path):
    obj = _obj()
    with pytest.raises(exc) as e:
        call(obj, tmp_path)
    assert isinstance(e.value, (lv.LossvizError, TypeError)), type(e.value)
    assert text in str(e.value), str(e.value)


W = lv.Weights({"a": torch.ones(2), "b": torch.zeros(3)})

WEIGHTS_PROBES = [
    ("different keys", lambda: W + lv.Weights({"a": torch.ones(2)}), ValueError, "keys"),
    (
        "keys in another order",
        lambda: W + lv.Weights({"b": torch.zeros(3), "a": torch.ones(2)}),
        ValueError,
        "order",
    ),
    (
        "different shapes (broadcastable)",
        lambda: W + lv.Weights({"a": torch.ones(1), "b": torch.zeros(3)}),
        ValueError,
        "shapes",
    ),
    (
        "dot with other shapes",
        lambda: W.dot({"a": torch.ones(2, 1), "b": torch.zeros(3)}),
        ValueError,
        "shapes",
    ),
    ("times a string", lambda: W * "2", TypeError, "str"),
    ("times a vector", lambda: W * torch.ones(2), TypeError, "Tensor"),
    ("a non-tensor entry", lambda: lv.Weights({"a": [1.0]}), TypeError, "a"),
]


@pytest.mark.parametrize(
    "call, exc, text", [p[1:] for p in WEIGHTS_PROBES], ids=[p[0] for p in WEIGHTS_PROBES]
)
def test_weights_probe(call, exc, text):
    with pytest.raises(exc) as e:
        call()
    assert text in str(e.value), str(e.value)


def test_weights_numpy_scalars_and_sum():
    w = lv.Weights({"a": torch.ones(2, dtype=torch.float64)})
    for s in (np.float64(2.5), np.float32(2.5), np.int64(2), np.array(2.5)):
        for out in (s * w, w * s):
            assert isinstance(out, lv.Weights)
            assert torch.allclose(out["a"], torch.full((2,), float(s), dtype=torch.float64))
    assert torch.equal((w / np.float64(2))["a"], torch.full((2,), 0.5, dtype=torch.float64))
    assert torch.equal(sum([w, w, w])["a"], torch.full((2,), 3.0, dtype=torch.float64))
    # the eigenvalues of an EigenResult are NumPy floats: scaling a vector by one works
    obj = _obj()
    e = lv.hessian_eigs(obj, k=1, progress=False)
    v = e.values[0] * e.vectors[0]
    assert torch.allclose(v.flatten(), float(e.values[0]) * e.vectors[0].flatten())
    assert isinstance(w.state_dict(), dict) and set(w.state_dict()) == {"a"}


def test_weights_save_load_and_copy(tmp_path):
    import copy

    w = lv.Weights({"a": torch.arange(3.0), "b": torch.ones(2, 2)})
    torch.save(w, tmp_path / "w.pt")
    back = torch.load(tmp_path / "w.pt", weights_only=True)
    assert list(back) == ["a", "b"] and all(torch.equal(back[k], w[k]) for k in w)
    assert lv.load_checkpoint(tmp_path / "w.pt").keys() == w.keys()
    for c in (copy.copy(w), copy.deepcopy(w)):
        assert isinstance(c, lv.Weights) and all(torch.equal(c[k], w[k]) for k in w)
    d = copy.deepcopy(w)
    d["a"].add_(1)
    assert torch.equal(w["a"], torch.arange(3.0))  # a deep copy owns its tensors


# ---- data that must simply work, checked against plain PyTorch ------------------------
def _direct_loss(model, batches, reduction="mean"):
    total = sum(F.cross_entropy(model(x), y, reduction="sum") for x, y in batches)
    n = sum(len(y) for _, y in batches)
    return float(total / n) if reduction == "mean" else float(total)


def test_one_shot_and_streamed_data_equal_the_list():
    m = _mlp()
    batches = _uneven()
    want = _direct_loss(m, batches)
    gen = lv.Objective(m, F.cross_entropy, (b for b in batches))  # read once, kept
    assert gen.n_batches == 3
    assert gen.loss() == pytest.approx(want, rel=1e-12)
    assert gen.loss() == pytest.approx(want, rel=1e-12)  # and again: it was kept
    ds = torch.utils.data.TensorDataset(X, Y)
    loader = torch.utils.data.DataLoader(ds, batch_size=7)  # re-iterable: read every pass
    lo = lv.Objective(m, F.cross_entropy, loader)
    assert lo.n_batches is None and lo.loss() == pytest.approx(want, rel=1e-12)
    assert lo.loss() == pytest.approx(want, rel=1e-12)
    cyc = lv.Objective(m, F.cross_entropy, itertools.cycle(batches), max_batches=3)
    assert cyc.loss() == pytest.approx(want, rel=1e-12)
    assert lv.Objective(m, F.cross_entropy, batches, max_batches=1).loss() == pytest.approx(
        _direct_loss(m, batches[:1]), rel=1e-12
    )


def test_one_shot_source_that_looks_reiterable_is_detected():
    obj = lv.Objective(_mlp(), F.cross_entropy, _Once(_uneven()))
    obj.loss()  # the first pass
    with pytest.raises(lv.DataError, match="only once"):
        obj.loss()


def test_data_that_changes_between_passes_is_refused():
    obj = lv.Objective(_mlp(), F.cross_entropy, _Alternating(_uneven()))
    obj.loss()  # the probe read pass 1, this is pass 2
    with pytest.raises(lv.DataError, match="changed between passes"):
        obj.loss()


def test_sum_reduction_is_the_sum_over_batches():
    m = _mlp()
    batches = _uneven()
    for loss_fn in (
        nn.CrossEntropyLoss(reduction="sum"),
        functools.partial(F.cross_entropy, reduction="sum"),
    ):
        obj = lv.Objective(m, loss_fn, batches)
        assert obj.reduction == "sum" and "reduction='sum'" in repr(obj)
        assert obj.loss() == pytest.approx(_direct_loss(m, batches, "sum"), rel=1e-12)
    obj = lv.Objective(
        m, lambda o, t: F.cross_entropy(o, t, reduction="sum"), batches, reduction="sum"
    )
    names = [n for n, _ in m.named_parameters()]
    flat0 = torch.cat([p.detach().reshape(-1) for p in m.parameters()])

    def direct(flat):
        ps, i = {}, 0
        for n, p in m.named_parameters():
            ps[n] = flat[i : i + p.numel()].view_as(p)
            i += p.numel()
        return sum(
            F.cross_entropy(torch.func.functional_call(m, ps, (x,)), y, reduction="sum")
            for x, y in batches
        )

    g = torch.autograd.functional.jacobian(direct, flat0)
    assert torch.allclose(obj.gradient().flatten(), g, rtol=1e-10, atol=1e-12)
    H = hessian(direct, flat0)
    v = torch.randn(flat0.numel(), dtype=torch.float64)
    assert torch.allclose(obj.hvp(v).flatten(), H @ v, rtol=1e-9, atol=1e-11)
    assert names == obj.names


def test_inference_mode_and_no_grad():
    m = _mlp()
    with torch.inference_mode():
        xi, yi = _data()
    obj = lv.Objective(m, F.cross_entropy, (xi, yi))  # data made under inference_mode
    ref = lv.Objective(m, F.cross_entropy, (X, Y))
    g_ref = ref.gradient().flatten()
    with torch.no_grad():  # valid use: it must simply work
        assert torch.allclose(obj.gradient().flatten(), g_ref, rtol=1e-12)
    with torch.inference_mode():
        e = lv.hessian_eigs(obj, k=1, tol=1e-10, progress=False)
        t = lv.hessian_trace(obj, max_hvp=40, progress=False)
        v = obj.hvp(ref.weights())
    assert not v["0.weight"].is_inference()
    flat0 = torch.cat([p.detach().reshape(-1) for p in m.parameters()])

    def direct(flat):
        ps, i = {}, 0
        for n, p in m.named_parameters():
            ps[n] = flat[i : i + p.numel()].view_as(p)
            i += p.numel()
        return F.cross_entropy(torch.func.functional_call(m, ps, (X,)), Y)

    H = hessian(direct, flat0)
    assert e.values[0] == pytest.approx(float(torch.linalg.eigvalsh(H)[-1]), rel=1e-8)
    assert np.isfinite(t.value)


# ---- the user's model is never changed, whatever the forward does ---------------------
class _Counter(nn.Module):
    """A module whose forward updates a buffer in place (a call counter) and caches the
    last activation in an attribute."""

    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(5, 3).double()
        self.register_buffer("calls", torch.zeros((), dtype=torch.long))
        self.register_buffer("scale", torch.ones((), dtype=torch.float64))
        self.last = None

    def forward(self, x):
        self.calls += 1
        self.scale.mul_(1.0)  # an in-place write that leaves the value
        out = self.lin(x) * self.scale
        self.last = out
        return out


def _bn_model():
    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(5, 6), nn.BatchNorm1d(6), nn.Tanh(), nn.Linear(6, 3)).double()
    m[1].running_mean.normal_(0, 0.3)
    m[1].running_var.uniform_(0.5, 2.0)
    m.eval()
    return m


def test_forward_that_calls_train_changes_nothing():
    m = _bn_model()
    snap = snapshot(m)

    def fwd(model, batch):
        model.train()  # switches BatchNorm to batch statistics and updates running stats
        return F.cross_entropy(model(batch[0]), batch[1])

    obj = lv.Objective(m, data=(X, Y), forward=fwd)
    l1 = obj.loss()
    e1 = lv.hessian_eigs(obj, k=2, tol=1e-10, progress=False).values
    lv.hessian_trace(obj, max_hvp=20, progress=False)
    obj.gradient()
    assert_unchanged(m, snap)
    # the running statistics of the private copy never drift: the same numbers again
    assert obj.loss() == l1
    np.testing.assert_allclose(
        lv.hessian_eigs(obj, k=2, tol=1e-10, progress=False).values, e1, rtol=1e-9
    )
    # what it computes is the batch-statistics loss (direct evaluation on a copy)
    import copy

    c = copy.deepcopy(m).train()
    assert l1 == pytest.approx(float(F.cross_entropy(c(X), Y)), rel=1e-12)


def test_forward_that_writes_buffers_changes_nothing():
    m = _Counter()
    m(X)  # the user's own call: calls = 1, last set
    snap = snapshot(m)
    last = m.last
    obj = lv.Objective(m, F.cross_entropy, (X, Y))
    l1 = obj.loss()
    lv.hessian_eigs(obj, k=1, progress=False)
    lv.surface(obj, n=(3, 3), progress=False)
    lv.interpolate(obj, m, m, n=3, progress=False)
    assert_unchanged(m, snap)
    assert int(m.calls) == 1 and m.last is last
    assert obj.loss() == l1


def test_forward_that_raises_after_writing_buffers_changes_nothing():
    m = _bn_model()
    snap = snapshot(m)
    n = {"calls": 0}

    def fwd(model, batch):
        n["calls"] += 1
        model.train()
        out = model(batch[0])  # running stats updated, then it fails
        if n["calls"] > 1:
            raise RuntimeError("failing forward")
        return F.cross_entropy(out, batch[1])

    obj = lv.Objective(m, data=(X, Y), forward=fwd)
    with pytest.raises(RuntimeError, match="failing forward"):
        lv.hessian_eigs(obj, k=1, progress=False)
    with pytest.raises(RuntimeError, match="failing forward"):
        obj.loss()
    assert_unchanged(m, snap)

    class Stop(nn.Module):
        def forward(self, x):
            raise KeyboardInterrupt

    m2 = nn.Sequential(nn.Linear(5, 3).double(), nn.BatchNorm1d(3).double(), Stop())
    m2.train()
    snap2 = snapshot(m2)
    with pytest.raises(KeyboardInterrupt):
        lv.Objective(m2, F.cross_entropy, (X, Y))
    assert_unchanged(m2, snap2)


def _dense_top(model, x, y):
    names = [n for n, _ in model.named_parameters()]
    flat0 = torch.cat([p.detach().reshape(-1) for p in model.parameters()])

    def f(flat):
        ps, i = {}, 0
        for n, p in zip(names, model.parameters()):
            ps[n] = flat[i : i + p.numel()].view_as(p)
            i += p.numel()
        return F.cross_entropy(torch.func.functional_call(model, ps, (x,)), y)

    return float(torch.linalg.eigvalsh(hessian(f, flat0))[-1])


def test_models_that_cannot_be_deep_copied():
    import copy

    # a cached non-leaf activation in an attribute
    m = _Counter()
    m.last = m.lin(X) * 2  # a non-leaf tensor: deepcopy refuses it
    with pytest.raises(RuntimeError):
        copy.deepcopy(m)
    snap = snapshot(m)
    obj = lv.Objective(m, F.cross_entropy, (X, Y))
    e = lv.hessian_eigs(obj, k=1, tol=1e-10, progress=False)
    assert_unchanged(m, snap)
    assert e.values[0] == pytest.approx(_dense_top(_counter_copy(m), X, Y), rel=1e-8)
    # the old weight_norm (a forward pre-hook writing a non-leaf weight attribute)
    torch.manual_seed(0)
    with pytest.warns(FutureWarning):
        wn = nn.utils.weight_norm(nn.Linear(5, 3).double())
    wn(X)
    obj = lv.Objective(wn, F.cross_entropy, (X, Y))
    e = lv.hessian_eigs(obj, k=1, tol=1e-10, progress=False)
    assert obj.names == ["bias", "weight_g", "weight_v"]
    assert e.values[0] == pytest.approx(_weight_norm_top(obj, wn.weight_g.shape), rel=1e-8)
    # and the first step of a SubspaceTracker in a training loop
    tr = lv.SubspaceTracker(m, F.cross_entropy, k=2, every=1)
    tr.step((X, Y))
    assert tr.history[0]["lambda_max"] == pytest.approx(
        _dense_top(_counter_copy(m), X, Y), rel=1e-6
    )
    assert_unchanged(m, snap)


def _counter_copy(m):
    c = _Counter()
    c.load_state_dict(m.state_dict())
    return c


def _weight_norm_top(obj, g_shape):
    """λ_max of a weight-normalized linear classifier, by hand: w = g·v/||v|| (row norms).
    torch's own double backward through ``torch._weight_norm`` is wrong in torch 2.13
    (``gradgradcheck`` fails), so neither autograd.functional.hessian on the module nor
    torch.func can be the reference."""
    flat0, _ = obj.resolve()
    ng = int(torch.Size(g_shape).numel())

    def f(flat):
        b, g, v = flat[:3], flat[3 : 3 + ng].view(g_shape), flat[3 + ng :].view(3, 5)
        w = g * v / v.norm(dim=1, keepdim=True)
        return F.cross_entropy(X @ w.T + b, Y)

    return float(torch.linalg.eigvalsh(hessian(f, flat0))[-1])


def test_weight_norm_hessians_are_exact():
    # torch 2.13's double backward of torch._weight_norm is wrong: lossviz routes it
    # through composite ops (gradgradcheck of the fused op fails; the composite passes)
    v = torch.randn(3, 5, dtype=torch.float64, requires_grad=True)
    g = torch.randn(3, 1, dtype=torch.float64, requires_grad=True)
    fused_ok = torch.autograd.gradgradcheck(
        lambda v, g: torch._weight_norm(v, g, 0), (v, g), raise_exception=False
    )
    torch.manual_seed(0)
    m = nn.utils.parametrizations.weight_norm(nn.Linear(5, 3).double())
    obj = lv.Objective(m, F.cross_entropy, (X, Y))
    e = lv.hessian_eigs(obj, k=1, tol=1e-10, progress=False)
    assert obj.names == [
        "bias",
        "parametrizations.weight.original0",
        "parametrizations.weight.original1",
    ]
    want = _weight_norm_top(obj, m.parametrizations.weight.original0.shape)
    assert e.values[0] == pytest.approx(want, rel=1e-8), f"fused op double backward ok: {fused_ok}"
