"""Where the Lanczos / SLQ bases live (``basis_device=``) and in which precision
(``basis_dtype=``): the same numbers as the default, eigenvalues within the stated
tolerance of the dense Hessian (``reference.dense_hessian``, plain autograd), the bytes
stored equal to the documented formula (docs/memory.md), bad values rejected before any
product."""

import functools
import math
import warnings

import numpy as np
import pytest
import torch
from reference import CASES, assert_unchanged, dense_hessian, snapshot

import lossviz as lv
import lossviz.lanczos as lanczos_mod
import lossviz.slq as slq_mod
from lossviz.basis import Basis
from lossviz.errors import ArgumentTypeError, LossvizError
from lossviz.lanczos import basis_rows, lanczos
from lossviz.slq import probe_generator, rademacher, slq

EPS32 = torch.finfo(torch.float32).eps
EPS_BF16 = torch.finfo(torch.bfloat16).eps


class Counting:
    """A dense symmetric matrix as an operator that counts its products."""

    def __init__(self, A):
        self.A, self.n_products = A, 0
        self.shape, self.dtype, self.device = A.shape, A.dtype, A.device

    def apply(self, V):
        self.n_products += V.shape[0]
        return V @ self.A  # A symmetric


def spectrum_matrix(n=300, seed=0, dtype=torch.float64):
    """``U diag(λ) Uᵀ`` with a known spectrum: a well separated top (10, 9.5, 9, 8.5,
    8, 7.5), a cluster and a bulk in [-1, 1]; ``U`` a random rotation."""
    g = torch.Generator().manual_seed(seed)
    top = torch.tensor([10.0, 9.5, 9.0, 8.5, 8.0, 7.5], dtype=torch.float64)
    cluster = 5.0 + 1e-3 * torch.arange(4, dtype=torch.float64)
    bulk = torch.rand(n - 10, generator=g, dtype=torch.float64) * 2 - 1
    lam = torch.cat([top, cluster, bulk])
    U, _ = torch.linalg.qr(torch.randn(n, n, generator=g, dtype=torch.float64))
    A = (U * lam) @ U.T
    return (0.5 * (A + A.T)).to(dtype), np.sort(lam.numpy())[::-1]


@functools.cache
def _mlp():
    m, loss, data = CASES["mlp"]()
    return m, loss, data, dense_hessian(m, loss, data)


def mlp():
    m, loss, data, H = _mlp()
    return m, lv.Objective(m, loss, data), H.clone()


def test_cpu_basis_is_identical_to_the_default():
    m, obj, H = mlp()
    snap = snapshot(m)
    a = lv.hessian_eigs(obj, k=4, which="both", tol=1e-10, progress=False)
    b = lv.hessian_eigs(obj, k=4, which="both", tol=1e-10, basis_device="cpu", progress=False)
    assert np.array_equal(a.values, b.values)
    for va, vb in zip(a.vectors, b.vectors):
        assert all(torch.equal(va[n], vb[n]) for n in va)
    ev = np.linalg.eigvalsh(H.numpy())
    expect = np.concatenate([ev[:4], ev[-4:]])
    assert np.allclose(np.sort(a.values), np.sort(expect), rtol=0, atol=1e-8 * abs(ev).max())
    # the first batched product times the product methods (and returns the first
    # method's): after it, every product uses the chosen one
    lv.hessian_density(obj, n_probes=3, steps=2, progress=False)
    da = lv.hessian_density(obj, n_probes=3, steps=20, progress=False)
    db = lv.hessian_density(obj, n_probes=3, steps=20, basis_device="cpu", progress=False)
    assert np.array_equal(da.nodes, db.nodes) and np.array_equal(da.weights, db.weights)
    assert_unchanged(m, snap)


def _streamed(monkeypatch, chunk_bytes):
    """The column-block path a basis on another device takes, forced on the CPU."""
    part = functools.partial(Basis, streamed=True, chunk_bytes=chunk_bytes)
    monkeypatch.setattr(lanczos_mod, "Basis", part)
    monkeypatch.setattr(slq_mod, "Basis", part)


@pytest.mark.parametrize("block_size", [1, 3])
def test_streamed_basis_gives_the_same_numbers(monkeypatch, block_size):
    # the path of basis_device="cpu" under a CUDA operator: column blocks of a few
    # hundred bytes (many blocks), thick restarts (basis_size=18) and a warm start
    A, lam = spectrum_matrix()
    kw = dict(k=5, tol=1e-10, basis_size=18, block_size=block_size, v0=torch.ones(300))
    ref = lanczos(A, **kw)
    _streamed(monkeypatch, chunk_bytes=700)
    out = lanczos(A, **kw)
    assert out.basis_bytes == basis_rows(300, 5, "largest", block_size, 18) * 300 * 8
    assert np.allclose(out.values, ref.values, rtol=1e-12, atol=0)
    assert np.allclose(out.values, lam[:5], rtol=1e-9, atol=0)
    assert out.n_matvec == ref.n_matvec
    sign = torch.sign((out.vectors * ref.vectors).sum(1, keepdim=True))
    assert torch.allclose(out.vectors * sign, ref.vectors, atol=1e-7)
    nodes, weights, _, _ = slq(A, 3, 25, seed=1)
    _streamed(monkeypatch, chunk_bytes=500)
    n2, w2, _, _ = slq(A, 3, 25, seed=1)
    assert np.allclose(n2, nodes, atol=1e-10) and np.allclose(w2, weights, atol=1e-10)


def test_float32_basis_eigenvalues_within_the_stated_tolerance_of_the_dense_hessian():
    # stated (docs/memory.md): Ritz values within max(tol, 4·eps32)·|λ|max (plus rounding)
    m, obj, H = mlp()
    snap = snapshot(m)
    ev = np.linalg.eigvalsh(H.numpy())
    scale = abs(ev).max()
    tol = 1e-6
    r = lv.hessian_eigs(
        obj, k=4, which="both", tol=tol, basis_dtype=torch.float32, progress=False, check=True
    )
    assert r.converged.all()
    expect = np.sort(np.concatenate([ev[:4], ev[-4:]]))
    err = np.abs(np.sort(r.values) - expect).max()
    assert err <= 2 * max(tol, 4 * EPS32) * scale, err
    V = torch.stack([obj.as_flat(v) for v in r.vectors])
    assert V.dtype == torch.float64  # vectors come back in the working precision
    assert (V @ V.T - torch.eye(len(V), dtype=V.dtype)).abs().max() < 1e-6
    # true residuals with the dense Hessian: they bound the distance to the spectrum
    res = (V @ H - torch.as_tensor(r.values)[:, None] * V).norm(dim=1) / scale
    assert (res.numpy() <= 2 * tol).all()
    assert_unchanged(m, snap)


def test_float32_basis_keeps_full_reorthogonalization_through_restarts():
    # many restarts (basis 16 for 6 pairs) against a cluster and a bulk: a basis losing
    # orthogonality shows as ghost copies of the top eigenvalue, or missed ones
    A, lam = spectrum_matrix()
    op = Counting(A)
    out = lanczos(op, 6, tol=1e-6, basis_size=16, basis_dtype=torch.float32, check=True)
    assert out.converged.all()
    assert np.allclose(out.values, lam[:6], rtol=0, atol=2 * 1e-6 * lam[0])
    Y = out.vectors
    assert (Y @ Y.T - torch.eye(6, dtype=Y.dtype)).abs().max() < 1e-6
    assert out.basis_bytes == basis_rows(300, 6, basis_size=16) * 300 * 4
    # a tol below what float32 storage resolves is raised to 4·eps32, with a warning
    with pytest.warns(UserWarning, match="float32 basis resolves"):
        lanczos(A, 2, tol=1e-9, basis_dtype=torch.float32)


def test_bfloat16_basis_under_a_float32_operator():
    A, lam = spectrum_matrix(dtype=torch.float32)
    with pytest.warns(UserWarning, match="bfloat16 basis resolves"):
        out = lanczos(A, 3, tol=1e-3, basis_dtype=torch.bfloat16)
    floor = 4 * EPS_BF16
    assert out.converged.all()
    # residuals are true products' (forced check): each Ritz value lies within its
    # residual (times |λ|max) of an eigenvalue. (At such a loose tolerance Lanczos may
    # stop before meeting every one of the top three: docs/memory.md says so.)
    assert (out.residuals <= floor).all()
    err = np.abs(out.values[:, None] - lam[None]).min(1)
    assert (err <= out.residuals * out.norm_estimate + 1e-5).all(), err
    assert abs(out.values[0] - lam[0]) <= floor * lam[0]
    assert out.basis_bytes == basis_rows(300, 3) * 300 * 2


def test_float32_basis_slq_moments_are_exact_to_float32():
    # Σ_i w_i λ_i^p = vᵀ A^p v (p <= 2m - 1) for each probe v (the seeded Rademacher
    # probes, normalized), here with the basis stored in float32
    A, _ = spectrum_matrix(n=120)
    seed, probes, m = 3, 4, 12
    nodes, weights, _, _ = slq(A, probes, m, seed=seed, basis_dtype=torch.float32)
    gen = probe_generator(seed, torch.device("cpu"))
    Z = rademacher(probes, 120, dtype=torch.float64, device="cpu", generator=gen) / 120**0.5
    scale = 10.0
    for p in (0, 1, 2, 3):
        exact = ((Z @ torch.linalg.matrix_power(A, p)) * Z).sum(1).numpy()
        quad = (weights * nodes**p).sum(1)
        assert np.allclose(quad, exact, rtol=0, atol=50 * EPS32 * scale**p), (p, quad, exact)


@pytest.mark.parametrize(
    "kw,kind,words",
    [
        ({"basis_dtype": torch.float16}, LossvizError, ["basis_dtype=float16", "bfloat16"]),
        ({"basis_dtype": torch.int32}, LossvizError, ["basis_dtype=int32", "not supported"]),
        ({"basis_dtype": "float8"}, LossvizError, ["basis_dtype='float8'", "expected one of"]),
        ({"basis_dtype": 1.5}, ArgumentTypeError, ["basis_dtype must be a torch.dtype"]),
        ({"basis_device": "nowhere"}, LossvizError, ["basis_device='nowhere'"]),
        ({"basis_device": [0]}, ArgumentTypeError, ["basis_device must be"]),
    ],
)
def test_bad_basis_arguments_are_named_before_any_product(kw, kind, words):
    A, _ = spectrum_matrix(n=40)
    for fn in (
        lambda op: lv.hessian_eigs(op, k=2, progress=False, **kw),
        lambda op: lv.hessian_density(op, n_probes=2, steps=5, progress=False, **kw),
        lambda op: lanczos(op, 2, **kw),
        lambda op: slq(op, 2, 5, **kw),
    ):
        op = Counting(A)
        with pytest.raises(kind) as e:
            fn(op)
        assert all(w in str(e.value) for w in words), str(e.value)
        assert op.n_products == 0


def test_more_precise_basis_than_the_products_is_refused():
    m, loss, data = CASES["mlp"]()
    m = m.float()
    obj = lv.Objective(m, loss, (data[0].float(), data[1]))
    snap = snapshot(m)
    with pytest.raises(LossvizError, match="more precise than the products"):
        lv.hessian_eigs(obj, k=2, basis_dtype=torch.float64, progress=False)
    with pytest.raises(LossvizError, match="more precise"):
        lv.hessian_eigs(obj, k=2, groups="module", basis_dtype="float64", progress=False)
    assert_unchanged(m, snap)


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_basis_without_a_gpu_is_named():
    A, _ = spectrum_matrix(n=40)
    with pytest.raises(LossvizError, match="basis_device='cuda'"):
        lanczos(A, 2, basis_device="cuda")


@pytest.mark.parametrize(
    "dtype,k,which,b,size",
    [
        (torch.float64, 5, "largest", 1, None),
        (torch.float32, 3, "both", 2, None),
        (torch.bfloat16, 2, "largest", 1, 12),
    ],
)
def test_stored_basis_bytes_are_the_documented_formula(dtype, k, which, b, size):
    # docs/memory.md: (m + b) · n numbers of basis_dtype, m + b = basis_rows(...)
    A, _ = spectrum_matrix(n=200, dtype=torch.float32 if dtype == torch.bfloat16 else torch.float64)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        out = lanczos(A, k, which=which, tol=0.05, block_size=b, basis_size=size, basis_dtype=dtype)
    rows = basis_rows(200, k, which, b, size)
    assert out.basis_bytes == rows * 200 * torch.empty((), dtype=dtype).element_size()
    if size is None:  # the documented default: 31 rows for k <= 5 with b = 1
        assert rows == (31 if b == 1 else max(2 * (2 * k) + 2 * b + 10, 6 * b) + b)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_peak_memory_follows_the_formula():
    # a diagonal operator (no memory of its own): the GPU peak is the basis plus a few
    # block-sized vectors; with basis_device="cpu" the basis leaves the GPU
    n, k = 1 << 22, 3
    d = torch.linspace(1.0, 2.0, n, device="cuda")

    class Diag:
        shape, dtype, device = (n, n), torch.float32, d.device

        def apply(self, V):
            return V * d

    rows = basis_rows(n, k)
    peaks = {}
    for where in (None, "cpu"):
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        out = lanczos(Diag(), k, tol=1e-3, max_matvec=3 * rows, basis_device=where)
        torch.cuda.synchronize()
        peaks[where] = (torch.cuda.max_memory_allocated() - base) / (4 * n)
        del out
    # in units of n float32 numbers: the basis (rows) + a few block / output vectors and
    # a restart's 64 MiB column block; never a second copy of the basis
    block = math.ceil((1 << 26) / (4 * n))
    assert rows <= peaks[None] <= rows + 8 + k + block, peaks
    assert peaks["cpu"] <= 8 + 2 * k + 2 * block, peaks


def test_group_blocks_and_density_take_the_basis_options():
    # per group: the eigenvalues of the diagonal block H_SS of the dense Hessian
    m, obj, H = mlp()
    snap = snapshot(m)
    kw = dict(basis_device="cpu", basis_dtype=torch.float32, progress=False)
    res = lv.hessian_eigs(obj, k=2, tol=1e-6, groups="module", **kw)
    sl = obj.layout.slices()
    for name, names in obj.layout.by_module().items():
        idx = torch.cat([torch.arange(sl[p].start, sl[p].stop) for p in names])
        ev = np.linalg.eigvalsh(H[idx][:, idx].numpy())[::-1][:2]
        assert np.allclose(res[name].values, ev, rtol=0, atol=2e-6 * abs(ev).max()), name
    blocks = lv.hessian_blocks(obj, k=2, tol=1e-6, max_hvp=200, **kw)
    for name in res:
        assert np.allclose(
            [blocks[name]["λ1"], blocks[name]["λ2"]], res[name].values, rtol=0, atol=1e-9
        )
    # the density: nodes and weights as with the float64 basis, to float32 accuracy
    lv.hessian_density(obj, n_probes=2, steps=2, progress=False)  # product method chosen
    a = lv.hessian_density(obj, n_probes=2, steps=15, progress=False)
    b = lv.hessian_density(obj, n_probes=2, steps=15, **kw)
    scale = abs(np.linalg.eigvalsh(H.numpy())).max()
    assert np.allclose(a.nodes, b.nodes, rtol=0, atol=1e-5 * scale)
    assert np.allclose(a.weights, b.weights, rtol=0, atol=1e-5)
    assert_unchanged(m, snap)
