"""Eigenvalues are named by their rank in the whole spectrum (λ1 the largest, λP the
smallest) in every view: the result's table and plot, the report, the dashboards."""

import numpy as np
import torch

import lossviz as lv

SPECTRUM = torch.tensor([5.0, 3.0, 2.0, 1.0, 0.5, -0.25, -1.0, -4.0], dtype=torch.float64)
A = torch.diag(SPECTRUM)  # P = 8: λ1 = 5 ... λ8 = -4


def _named(r) -> dict:
    return dict(zip(r.labels, (float(v) for v in r.values)))


def _rank(name: str) -> float:
    """The eigenvalue a name stands for, from the known spectrum."""
    return float(SPECTRUM[int(name[1:]) - 1])


def test_labels_are_ranks_in_the_spectrum():
    q = dict(progress=False)
    for which, k in [("largest", 3), ("smallest", 3), ("both", 2), ("both", 5)]:
        r = lv.hessian_eigs(A, k, which=which, **q)
        named = _named(r)
        assert len(named) == len(r.values)
        for name, v in named.items():
            assert np.isclose(v, _rank(name), atol=1e-8), (which, k, name, v)
    r = lv.hessian_eigs(A, 3, which="magnitude", **q)
    assert r.labels == ["|λ|1", "|λ|2", "|λ|3"]
    assert np.allclose(np.abs(r.values), [5.0, 4.0, 3.0])


def test_table_and_plot_use_the_labels():
    r = lv.hessian_eigs(A, 2, which="smallest", progress=False)
    assert r.labels == ["λ8", "λ7"]
    assert list(r.plot().data[0].x) == ["λ8", "λ7"]
    html = r._repr_html_()
    assert "λ8" in html and "λ7" in html and "λ1" not in html
