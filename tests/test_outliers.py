"""`SpectralDensity.outliers()`: the largest-relative-gap rule, on spectra with a known answer.

References: matrices with a chosen spectrum (bulk + outliers), hand-built quadratures, and
the dense Hessian of a digits MLP from plain autograd (`tests/reference.py`)."""

import numpy as np
import pytest
import torch
from reference import dense_hessian
from torch import nn

import lossviz as lv
from lossviz.data import digits, mlp, train
from lossviz.results import SpectralDensity


def operator(spectrum, seed=0):
    """A dense symmetric matrix with the given eigenvalues in a random basis."""
    lam = torch.as_tensor(np.asarray(spectrum), dtype=torch.float64)
    g = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(len(lam), len(lam), generator=g, dtype=torch.float64))
    return (q * lam) @ q.T


def density(spectrum, probes=6, steps=60, seed=0):
    return lv.hessian_density(
        operator(spectrum, seed), n_probes=probes, steps=steps, seed=seed, progress=False
    )


RNG = np.random.default_rng(0)
UNIFORM = RNG.uniform(-1, 1, 1200)


def test_known_outliers_at_both_ends():
    out = density(np.concatenate([UNIFORM, [40.0, 25.0, 12.0, -9.0]])).outliers()
    np.testing.assert_allclose(out, [40.0, 25.0, 12.0, -9.0], rtol=1e-6)


def test_nine_outliers_like_a_classifier():
    """C − 1 = 9 outliers spread over a factor 3 above a Marchenko-Pastur bulk."""
    x = RNG.standard_normal((1000, 2000)) / np.sqrt(2000)
    bulk = 0.1 * np.linalg.eigvalsh(x @ x.T)  # support ≈ [0.0085, 0.29]
    top = np.geomspace(2.0, 0.6, 9)
    out = density(np.concatenate([bulk, top])).outliers()
    np.testing.assert_allclose(out, top, rtol=1e-6)


@pytest.mark.parametrize(
    "name,spectrum",
    [
        ("uniform", UNIFORM),
        (
            "semicircle",
            np.linalg.eigvalsh(
                (lambda a: (a + a.T) / np.sqrt(2400))(RNG.standard_normal((1200, 1200)))
            ),
        ),
        ("smooth decay", np.exp(-np.arange(1200) / 20.0)),
    ],
)
def test_no_gap_no_outliers(name, spectrum):
    assert len(density(spectrum).outliers()) == 0, name


def test_the_rule_as_documented_on_a_hand_built_quadrature():
    # three probes that agree: a bulk linspace(-1, 1, 41) and the values 3, 2.5; the weighted
    # median of the 43 equally weighted nodes, the centre c, is 0.05
    row = np.concatenate([[3.0, 2.5], np.linspace(1, -1, 41)])
    nodes = np.array([row] * 3)
    weights = np.full_like(nodes, 1 / row.size)
    d = SpectralDensity(nodes=nodes, weights=weights, n_hvp=0, n_params=row.size)
    # ρ = (2.95 - 2.45)/2.45 = 0.20, (2.45 - 0.95)/0.95 = 1.58, then 0.05/0.9...: the boundary
    # is after 2.5
    np.testing.assert_allclose(d.outliers(), [3.0, 2.5])
    assert len(d.outliers(gap=1.6)) == 0  # the largest ρ is below the threshold: none
    # a value the probes disagree on is no converged eigenvalue: the run stops before it,
    # and the last gap is to the largest of the probes' values (ρ = (2.95 - 2.5)/2.5 = 0.18)
    nodes2 = nodes.copy()
    nodes2[:, 1] = [2.5, 2.45, 2.55]
    d2 = SpectralDensity(nodes=nodes2, weights=weights, n_hvp=0, n_params=row.size)
    np.testing.assert_allclose(d2.outliers(), [3.0])
    assert len(d2.outliers(gap=0.19)) == 0


def test_digits_mlp_outliers_are_the_exact_top_eigenvalues():
    """After a little training the Hessian of a digits classifier has C − 1 = 9 outliers."""
    x, y = digits(dtype=torch.float64)
    x, y = x[:500], y[:500]
    model = mlp((64, 16, 10), nn.ReLU, seed=1).double()
    train(model, (x, y), steps=200, lr=0.1, seed=1)
    obj = lv.Objective(model, nn.functional.cross_entropy, (x, y))
    dens = lv.hessian_density(obj, n_probes=6, steps=60, seed=0, progress=False)
    out = dens.outliers()
    exact = np.linalg.eigvalsh(dense_hessian(obj).numpy())[::-1]
    assert len(out) == 9
    np.testing.assert_allclose(out, exact[:9], rtol=1e-6)
    # and the boundary is a real gap in the exact spectrum
    assert exact[8] > 1.5 * exact[9]
    assert f"{len(out)} outlier" in repr(dens)


def test_one_probe_cannot_tell_outliers_and_says_so():
    """With one probe every Ritz value "agrees" with itself: no count, a warning instead."""
    spec = np.concatenate([np.exp(-np.arange(1200) / 20.0)])  # no gap anywhere
    d = density(spec, probes=1, steps=20)
    with pytest.warns(UserWarning, match="at least 2 probes"):
        assert len(d.outliers()) == 0
    assert "outliers n/a (needs 2 probes)" in repr(d)
    assert "n/a (needs 2 probes)" in d._repr_html_()
    # two probes suffice to reject the unconverged bulk values
    assert len(density(spec, probes=2, steps=20).outliers()) == 0
