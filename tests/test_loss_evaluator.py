"""The engine's no-grad cross-entropy (``metrics.loss_evaluator``) equals PyTorch's."""

import math

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from lossviz.metrics import loss_evaluator


def _reference(z, y, ignore=-100, total=False):
    """The definition, in float64, sample by sample."""
    terms = [
        torch.logsumexp(z[i].double(), 0) - z[i, y[i]].double()
        for i in range(len(y))
        if int(y[i]) != ignore
    ]
    if not terms:
        return math.nan if not total else 0.0
    s = float(torch.stack(terms).sum())
    return s if total else s / len(terms)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("scale", [1.0, 30.0, 1e4])
def test_cross_entropy_equals_the_definition_and_torch(dtype, scale):
    g = torch.Generator().manual_seed(0)
    z = (torch.randn(300, 10, generator=g) * scale).to(dtype)
    y = torch.randint(0, 10, (300,), generator=g)
    f = loss_evaluator(F.cross_entropy)
    assert f is not F.cross_entropy
    with torch.no_grad():
        got = f(z, y)
        want = F.cross_entropy(z, y)
    assert got.dtype == want.dtype
    rtol = 1e-6 if dtype == torch.float32 else 1e-12
    assert math.isclose(float(got), float(want), rel_tol=rtol, abs_tol=rtol)
    assert math.isclose(float(got), _reference(z, y), rel_tol=rtol, abs_tol=rtol)


def test_ignored_labels_sum_reduction_and_the_module_form():
    g = torch.Generator().manual_seed(1)
    z = torch.randn(64, 7, generator=g, dtype=torch.float64)
    y = torch.randint(0, 7, (64,), generator=g)
    y[::5] = -100
    z[::5] = float("nan")  # ignored rows never reach the value (as in PyTorch)
    with torch.no_grad():
        assert math.isclose(float(loss_evaluator(F.cross_entropy)(z, y)), _reference(z, y))
        assert math.isclose(float(F.cross_entropy(z, y)), _reference(z, y))
        y3 = torch.where(y == -100, 3, y)
        for mod, ig, total in [
            (nn.CrossEntropyLoss(reduction="sum"), -100, True),
            (nn.CrossEntropyLoss(ignore_index=3), 3, False),
        ]:
            yy = y if ig == -100 else y3
            zz = torch.where(torch.isnan(z), 0.0, z)
            got = float(loss_evaluator(mod)(zz, yy))
            assert math.isclose(got, float(mod(zz, yy)), rel_tol=1e-12)
            assert math.isclose(got, _reference(zz, yy, ig, total), rel_tol=1e-12)
        # every label ignored: NaN, as PyTorch's mean
        allig = torch.full((5,), -100)
        assert math.isnan(float(loss_evaluator(F.cross_entropy)(z[:5], allig)))
        assert math.isnan(float(F.cross_entropy(torch.zeros(5, 7), allig)))


def test_targets_changed_in_place_are_seen():
    z = torch.randn(20, 4, dtype=torch.float64)
    y = torch.randint(0, 4, (20,))
    f = loss_evaluator(F.cross_entropy)
    with torch.no_grad():
        f(z, y)
        y[:10] = -100  # same tensor object, new version: the cached labels are redone
        assert math.isclose(float(f(z, y)), float(F.cross_entropy(z, y)), rel_tol=1e-12)
        y2 = y.clone()
        y2[:] = 1
        assert math.isclose(float(f(z, y2)), float(F.cross_entropy(z, y2)), rel_tol=1e-12)


def test_other_losses_and_inputs_go_to_the_loss_unchanged():
    mse = nn.MSELoss()
    assert loss_evaluator(mse) is mse
    for mod in [
        nn.CrossEntropyLoss(label_smoothing=0.1),
        nn.CrossEntropyLoss(weight=torch.ones(3)),
        nn.CrossEntropyLoss(reduction="none"),
    ]:
        assert loss_evaluator(mod) is mod
    calls = []

    def spy(out, y):
        calls.append(out.shape)
        return F.cross_entropy(out, y)

    assert loss_evaluator(spy) is spy
    f = loss_evaluator(F.cross_entropy)
    z3 = torch.randn(4, 3, 5)  # (N, C, d): PyTorch's own kernel
    y3 = torch.randint(0, 3, (4, 5))
    probs = torch.softmax(torch.randn(4, 3), 1)  # class probabilities as targets
    z = torch.randn(4, 3, requires_grad=True)
    with torch.no_grad():
        assert torch.equal(f(z3, y3), F.cross_entropy(z3, y3))
        assert torch.equal(f(z, probs), F.cross_entropy(z, probs))
        assert torch.equal(f(z.bfloat16(), y3[:, 0]), F.cross_entropy(z.bfloat16(), y3[:, 0]))
    # with gradients enabled: PyTorch's function, so the graph is its own
    out = f(z, y3[:, 0])
    assert out.requires_grad and torch.equal(out, F.cross_entropy(z, y3[:, 0]))
