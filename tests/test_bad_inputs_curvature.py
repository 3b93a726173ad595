"""Off the happy path, for the curvature kernels: every bad argument of the Hessian
functions, the Lanczos / SLQ / Hutchinson kernels, the subspace metrics, SubspaceTracker,
TrajectoryRecorder and the curvature timelines. Each probe asserts the error type (a
``LossvizError`` / ``ValueError`` / ``TypeError``), that the message names the argument,
and that no curvature product was computed before the error. The inputs that must simply
work (zero and low-rank Hessians, float16 models on the CPU, inference mode, every form of
``v0``) are checked against closed forms or plain-autograd Hessians."""

import math
import warnings

import numpy as np
import pytest
import torch
from torch import nn
from torch.autograd.functional import hessian

import lossviz as lv
from lossviz.hutchinson import hutchinson_diagonal, hutchinson_trace
from lossviz.hvp import CurvatureOperator
from lossviz.lanczos import lanczos
from lossviz.slq import slq
from lossviz.subspace import SubspaceTracker, gradient_fraction, subspace_overlap
from lossviz.trajectory import TrajectoryRecorder, sharpness_along, trace_along

F = nn.functional


def _mlp(seed=0, dtype=torch.float64):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(5, 7), nn.Tanh(), nn.Linear(7, 3)).to(dtype)


def _data(n=20, seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 5, generator=g, dtype=dtype), torch.randint(0, 3, (n,), generator=g)


M = _mlp()
X, Y = _data()
OBJ = lv.Objective(M, F.cross_entropy, (X, Y))
P = OBJ.n_params  # 66
A = torch.diag(torch.arange(1.0, 9.0, dtype=torch.float64))  # a symmetric 8 x 8 matrix
NONSYM = torch.triu(torch.ones(6, 6, dtype=torch.float64))
W_BAD = {n: torch.zeros(2, dtype=torch.float64) for n in OBJ.names}  # wrong shapes
V2 = torch.eye(P, dtype=torch.float64)[:2]  # an orthonormal pair
TRACKER = SubspaceTracker(_mlp(), F.cross_entropy, k=2, every=1, track=("lambda_max",))

TE = TypeError
VE = ValueError


def _nan_v0():
    v = torch.ones(P, dtype=torch.float64)
    v[3] = float("nan")
    return v


def _int_matrix():
    return torch.eye(4, dtype=torch.long)


PROBES = [
    # --- hessian_eigs ------------------------------------------------------------------
    ("eigs k float", lambda: lv.hessian_eigs(OBJ, k=2.5), TE, "k"),
    ("eigs k str", lambda: lv.hessian_eigs(OBJ, k="3"), TE, "k"),
    ("eigs k bool", lambda: lv.hessian_eigs(OBJ, k=True), TE, "k"),
    ("eigs k 0", lambda: lv.hessian_eigs(OBJ, k=0), VE, "k"),
    ("eigs k negative", lambda: lv.hessian_eigs(OBJ, k=-2), VE, "k"),
    ("eigs k > P", lambda: lv.hessian_eigs(OBJ, k=1000), VE, "k=1000"),
    ("eigs which", lambda: lv.hessian_eigs(OBJ, which="top"), VE, "which"),
    ("eigs which None", lambda: lv.hessian_eigs(OBJ, which=None), VE, "which"),
    ("eigs tol 0", lambda: lv.hessian_eigs(OBJ, tol=0), VE, "tol"),
    ("eigs tol negative", lambda: lv.hessian_eigs(OBJ, tol=-1e-3), VE, "tol"),
    ("eigs tol nan", lambda: lv.hessian_eigs(OBJ, tol=float("nan")), VE, "tol"),
    ("eigs tol >= 1", lambda: lv.hessian_eigs(OBJ, tol=1.5), VE, "tol"),
    ("eigs tol str", lambda: lv.hessian_eigs(OBJ, tol="1e-4"), TE, "tol"),
    ("eigs max_hvp 0", lambda: lv.hessian_eigs(OBJ, max_hvp=0), VE, "max_hvp"),
    ("eigs max_hvp < k", lambda: lv.hessian_eigs(OBJ, k=5, max_hvp=2), VE, "max_hvp"),
    ("eigs max_hvp float", lambda: lv.hessian_eigs(OBJ, max_hvp=10.0), TE, "max_hvp"),
    ("eigs seed negative", lambda: lv.hessian_eigs(OBJ, seed=-1), VE, "seed"),
    ("eigs seed float", lambda: lv.hessian_eigs(OBJ, seed=1.5), TE, "seed"),
    ("eigs v0 size", lambda: lv.hessian_eigs(OBJ, v0=torch.ones(P + 1)), VE, "v0"),
    ("eigs v0 nan", lambda: lv.hessian_eigs(OBJ, v0=_nan_v0()), VE, "v0"),
    ("eigs v0 zero", lambda: lv.hessian_eigs(OBJ, v0=torch.zeros(P)), VE, "v0"),
    ("eigs v0 3-d", lambda: lv.hessian_eigs(OBJ, v0=torch.ones(2, 3, P)), VE, "v0"),
    ("eigs v0 weights shape", lambda: lv.hessian_eigs(OBJ, v0=W_BAD), VE, "v0"),
    ("eigs v0 str", lambda: lv.hessian_eigs(OBJ, v0="warm"), TE, "v0"),
    ("eigs v0 empty", lambda: lv.hessian_eigs(OBJ, v0=[]), VE, "v0"),
    ("eigs v0 list of str", lambda: lv.hessian_eigs(OBJ, v0=["a"]), TE, "v0"),
    ("eigs curvature", lambda: lv.hessian_eigs(OBJ, curvature="fisher"), VE, "curvature"),
    ("eigs groups str", lambda: lv.hessian_eigs(OBJ, groups="layer"), VE, "groups"),
    ("eigs groups int", lambda: lv.hessian_eigs(OBJ, groups=5), TE, "groups"),
    ("eigs groups unknown", lambda: lv.hessian_eigs(OBJ, groups={"a": ["nope"]}), VE, "groups"),
    ("eigs groups empty", lambda: lv.hessian_eigs(OBJ, groups={"a": []}), VE, "groups"),
    ("eigs groups empty map", lambda: lv.hessian_eigs(OBJ, groups={}), VE, "groups"),
    (
        "eigs groups repeated",
        lambda: lv.hessian_eigs(OBJ, groups={"a": ["0.weight", "0.weight"]}),
        VE,
        "groups",
    ),
    ("eigs groups non-str", lambda: lv.hessian_eigs(OBJ, groups={"a": [0]}), TE, "groups"),
    ("eigs groups + v0", lambda: lv.hessian_eigs(OBJ, groups="module", v0=V2), VE, "v0"),
    ("eigs groups on matrix", lambda: lv.hessian_eigs(A, groups="module"), VE, "groups"),
    ("eigs block_size 0", lambda: lv.hessian_eigs(OBJ, block_size=0), VE, "block_size"),
    ("eigs progress str", lambda: lv.hessian_eigs(OBJ, progress="yes"), TE, "progress"),
    ("eigs progress int", lambda: lv.hessian_eigs(OBJ, progress=1), TE, "progress"),
    ("eigs at on matrix", lambda: lv.hessian_eigs(A, at=M), VE, "at"),
    ("eigs at mismatch", lambda: lv.hessian_eigs(OBJ, at={"x": torch.ones(1)}), VE, "point"),
    ("eigs integer matrix", lambda: lv.hessian_eigs(_int_matrix(), k=1), TE, "obj"),
    ("eigs complex matrix", lambda: lv.hessian_eigs(A.to(torch.cdouble), k=1), TE, "obj"),
    ("eigs non-square", lambda: lv.hessian_eigs(torch.ones(3, 4), k=1), VE, "obj"),
    ("eigs non-symmetric", lambda: lv.hessian_eigs(NONSYM, k=1), VE, "symmetric"),
    ("eigs nan matrix", lambda: lv.hessian_eigs(A * float("nan"), k=1), VE, "obj"),
    ("eigs empty matrix", lambda: lv.hessian_eigs(torch.zeros(0, 0), k=1), VE, "obj"),
    ("eigs module", lambda: lv.hessian_eigs(M, k=1), TE, "obj"),
    ("eigs str obj", lambda: lv.hessian_eigs("H", k=1), TE, "obj"),
    # --- hessian_density -----------------------------------------------------------------
    ("density n_probes 0", lambda: lv.hessian_density(OBJ, n_probes=0), VE, "n_probes"),
    ("density n_probes neg", lambda: lv.hessian_density(OBJ, n_probes=-2), VE, "n_probes"),
    ("density n_probes float", lambda: lv.hessian_density(OBJ, n_probes=2.0), TE, "n_probes"),
    ("density steps 0", lambda: lv.hessian_density(OBJ, steps=0), VE, "steps"),
    ("density steps str", lambda: lv.hessian_density(OBJ, steps="10"), TE, "steps"),
    ("density seed", lambda: lv.hessian_density(OBJ, seed=-3), VE, "seed"),
    ("density curvature", lambda: lv.hessian_density(OBJ, curvature="gn"), VE, "curvature"),
    ("density progress", lambda: lv.hessian_density(OBJ, progress="no"), TE, "progress"),
    ("density non-symmetric", lambda: lv.hessian_density(NONSYM), VE, "symmetric"),
    # --- hessian_trace ---------------------------------------------------------------------
    ("trace max_hvp 0", lambda: lv.hessian_trace(OBJ, max_hvp=0), VE, "max_hvp"),
    ("trace max_hvp 1", lambda: lv.hessian_trace(OBJ, max_hvp=1), VE, "max_hvp"),
    ("trace max_hvp None", lambda: lv.hessian_trace(OBJ, max_hvp=None), TE, "max_hvp"),
    (
        "trace hutch++ budget",
        lambda: lv.hessian_trace(OBJ, method="hutch++", max_hvp=6),
        VE,
        "max_hvp",
    ),
    ("trace method", lambda: lv.hessian_trace(OBJ, method="exact"), VE, "method"),
    ("trace rtol negative", lambda: lv.hessian_trace(OBJ, rtol=-0.1), VE, "rtol"),
    ("trace rtol nan", lambda: lv.hessian_trace(OBJ, rtol=float("nan")), VE, "rtol"),
    ("trace rtol str", lambda: lv.hessian_trace(OBJ, rtol="0.01"), TE, "rtol"),
    ("trace batch_size 0", lambda: lv.hessian_trace(OBJ, batch_size=0), VE, "batch_size"),
    (
        "trace groups + hutch++",
        lambda: lv.hessian_trace(OBJ, groups="module", method="hutch++"),
        VE,
        "groups",
    ),
    ("trace groups bad", lambda: lv.hessian_trace(OBJ, groups="layers"), VE, "groups"),
    ("trace seed", lambda: lv.hessian_trace(OBJ, seed="0"), TE, "seed"),
    ("trace integer matrix", lambda: lv.hessian_trace(_int_matrix()), TE, "obj"),
    # --- hessian_diagonal ------------------------------------------------------------------
    ("diagonal n_probes 0", lambda: lv.hessian_diagonal(OBJ, n_probes=0), VE, "n_probes"),
    ("diagonal n_probes neg", lambda: lv.hessian_diagonal(OBJ, n_probes=-5), VE, "n_probes"),
    ("diagonal n_probes float", lambda: lv.hessian_diagonal(OBJ, n_probes=1.5), TE, "n_probes"),
    ("diagonal batch_size", lambda: lv.hessian_diagonal(OBJ, batch_size=-1), VE, "batch_size"),
    ("diagonal curvature", lambda: lv.hessian_diagonal(OBJ, curvature=None), VE, "curvature"),
    # --- hessian_blocks --------------------------------------------------------------------
    ("blocks groups", lambda: lv.hessian_blocks(OBJ, "layer"), VE, "groups"),
    ("blocks k", lambda: lv.hessian_blocks(OBJ, k=0), VE, "k"),
    ("blocks tol", lambda: lv.hessian_blocks(OBJ, tol=0), VE, "tol"),
    ("blocks rtol", lambda: lv.hessian_blocks(OBJ, rtol=-1), VE, "rtol"),
    ("blocks max_hvp", lambda: lv.hessian_blocks(OBJ, max_hvp=1), VE, "max_hvp"),
    ("blocks progress", lambda: lv.hessian_blocks(OBJ, progress="off"), TE, "progress"),
    ("blocks on matrix", lambda: lv.hessian_blocks(A), TE, "obj"),
    # --- kernels ---------------------------------------------------------------------------
    ("lanczos k", lambda: lanczos(A, k=2.5), TE, "k"),
    ("lanczos tol", lambda: lanczos(A, tol=0), VE, "tol"),
    ("lanczos max_matvec", lambda: lanczos(A, max_matvec=0), VE, "max_matvec"),
    ("lanczos v0 size", lambda: lanczos(A, v0=torch.ones(3)), VE, "v0"),
    ("lanczos basis_size", lambda: lanczos(A, basis_size=0), VE, "basis_size"),
    ("lanczos check", lambda: lanczos(A, check="yes"), TE, "check"),
    ("lanczos block_size", lambda: lanczos(A, block_size=0), VE, "block_size"),
    ("lanczos check_every", lambda: lanczos(A, check_every=0), VE, "check_every"),
    ("lanczos integer op", lambda: lanczos(_int_matrix(), k=1), TE, "op"),
    ("lanczos non-symmetric", lambda: lanczos(NONSYM, k=1), VE, "symmetric"),
    ("lanczos not an operator", lambda: lanczos([[1.0]], k=1), TE, "op"),
    ("slq n_probes", lambda: slq(A, 0, 3), VE, "n_probes"),
    ("slq steps", lambda: slq(A, 2, 0), VE, "steps"),
    ("slq group", lambda: slq(A, 2, 3, group=0), VE, "group"),
    ("hutchinson max_matvec", lambda: hutchinson_trace(A, max_matvec=0), VE, "max_matvec"),
    ("hutchinson min_samples", lambda: hutchinson_trace(A, min_samples=1), VE, "min_samples"),
    ("hutchinson method", lambda: hutchinson_trace(A, method="x"), VE, "method"),
    ("hutchinson sketch", lambda: hutchinson_trace(A, method="hutch++", sketch=0), VE, "sketch"),
    ("diag kernel n_probes", lambda: hutchinson_diagonal(A, 0), VE, "n_probes"),
    ("diag kernel seed", lambda: hutchinson_diagonal(A, 3, seed=-1), VE, "seed"),
    # --- sharpness_along / trace_along -----------------------------------------------------
    ("sharpness obj", lambda: sharpness_along(M, [M]), TE, "obj"),
    ("sharpness k", lambda: sharpness_along(OBJ, [M], k=0), VE, "k"),
    ("sharpness lr 0", lambda: sharpness_along(OBJ, [M], lr=0), VE, "lr"),
    ("sharpness lr str", lambda: sharpness_along(OBJ, [M], lr="0.1"), TE, "lr"),
    ("sharpness tol", lambda: sharpness_along(OBJ, [M], tol=0), VE, "tol"),
    ("sharpness curvature", lambda: sharpness_along(OBJ, [M], curvature="x"), VE, "curvature"),
    ("sharpness warm_start", lambda: sharpness_along(OBJ, [M], warm_start=1), TE, "warm_start"),
    ("sharpness seed", lambda: sharpness_along(OBJ, [M], seed=-1), VE, "seed"),
    ("sharpness checkpoints str", lambda: sharpness_along(OBJ, "ckpt"), TE, "checkpoints"),
    ("sharpness checkpoints empty", lambda: sharpness_along(OBJ, []), VE, "checkpoints"),
    (
        "sharpness checkpoint keys",
        lambda: sharpness_along(OBJ, [M, {"x": torch.ones(1)}]),
        VE,
        "checkpoints[1]",
    ),
    ("sharpness checkpoint type", lambda: sharpness_along(OBJ, [M, 42]), TE, "checkpoints[1]"),
    ("sharpness steps", lambda: sharpness_along(OBJ, [M], steps=[1, 2]), VE, "steps"),
    ("trace_along rtol", lambda: trace_along(OBJ, [M], rtol=-1), VE, "rtol"),
    ("trace_along max_hvp", lambda: trace_along(OBJ, [M], max_hvp=0), VE, "max_hvp"),
    ("trace_along method", lambda: trace_along(OBJ, [M], method="x"), VE, "method"),
    ("trace_along lr", lambda: trace_along(OBJ, [M], lr=-1), VE, "lr"),
    ("trace_along obj", lambda: trace_along(A, [M]), TE, "obj"),
    # --- gradient_fraction / subspace_overlap ----------------------------------------------
    ("fraction g str", lambda: gradient_fraction("g", V2), TE, "g"),
    ("fraction V int", lambda: gradient_fraction(torch.ones(P), 5), TE, "V"),
    ("fraction V size", lambda: gradient_fraction(torch.ones(P), torch.eye(3)), VE, "V"),
    ("fraction g nan", lambda: gradient_fraction(_nan_v0(), V2), VE, "g"),
    ("fraction V nan", lambda: gradient_fraction(torch.ones(P), V2 * float("nan")), VE, "V"),
    ("fraction check", lambda: gradient_fraction(torch.ones(P), V2, check="no"), TE, "check"),
    ("fraction V not orthonormal", lambda: gradient_fraction(torch.ones(P), 2 * V2), VE, "V"),
    ("fraction V empty", lambda: gradient_fraction(torch.ones(P), []), VE, "V"),
    ("overlap sizes", lambda: subspace_overlap(V2, torch.eye(3)), VE, "V1"),
    ("overlap V1 empty", lambda: subspace_overlap([], V2), VE, "V1"),
    ("overlap V2 type", lambda: subspace_overlap(V2, "V"), TE, "V2"),
    ("overlap check", lambda: subspace_overlap(V2, V2, check=None), TE, "check"),
    # --- SubspaceTracker -------------------------------------------------------------------
    ("tracker model", lambda: SubspaceTracker("m", F.cross_entropy), TE, "model"),
    ("tracker no loss", lambda: SubspaceTracker(M), TE, "loss_fn"),
    ("tracker loss_fn", lambda: SubspaceTracker(M, 5), TE, "loss_fn"),
    ("tracker forward", lambda: SubspaceTracker(M, forward="f"), TE, "forward"),
    ("tracker k float", lambda: SubspaceTracker(M, F.cross_entropy, k=2.5), TE, "k"),
    ("tracker k 0", lambda: SubspaceTracker(M, F.cross_entropy, k=0), VE, "k"),
    ("tracker every 0", lambda: SubspaceTracker(M, F.cross_entropy, every=0), VE, "every"),
    ("tracker every str", lambda: SubspaceTracker(M, F.cross_entropy, every="5"), TE, "every"),
    (
        "tracker curvature",
        lambda: SubspaceTracker(M, F.cross_entropy, curvature="fisher"),
        VE,
        "curvature",
    ),
    (
        "tracker track unknown",
        lambda: SubspaceTracker(M, F.cross_entropy, track=("sharpness",)),
        VE,
        "track",
    ),
    ("tracker track empty", lambda: SubspaceTracker(M, F.cross_entropy, track=()), VE, "track"),
    ("tracker track int", lambda: SubspaceTracker(M, F.cross_entropy, track=5), TE, "track"),
    (
        "tracker optimizer",
        lambda: SubspaceTracker(M, F.cross_entropy, optimizer=object()),
        TE,
        "optimizer",
    ),
    ("tracker tol 0", lambda: SubspaceTracker(M, F.cross_entropy, tol=0), VE, "tol"),
    ("tracker tol 2", lambda: SubspaceTracker(M, F.cross_entropy, tol=2), VE, "tol"),
    ("tracker max_hvp", lambda: SubspaceTracker(M, F.cross_entropy, max_hvp=0), VE, "max_hvp"),
    (
        "tracker trace_rtol",
        lambda: SubspaceTracker(M, F.cross_entropy, trace_rtol=-1),
        VE,
        "trace_rtol",
    ),
    (
        "tracker trace_max_hvp",
        lambda: SubspaceTracker(M, F.cross_entropy, trace_max_hvp=1),
        VE,
        "trace_max_hvp",
    ),
    ("tracker bn", lambda: SubspaceTracker(M, F.cross_entropy, bn="batch"), VE, "bn"),
    (
        "tracker params",
        lambda: SubspaceTracker(M, F.cross_entropy, params="0.weight"),
        TE,
        "params",
    ),
    ("tracker device", lambda: SubspaceTracker(M, F.cross_entropy, device="nope"), VE, "device"),
    (
        "tracker max_subspaces 1",
        lambda: SubspaceTracker(M, F.cross_entropy, max_subspaces=1),
        VE,
        "max_subspaces",
    ),
    (
        "tracker max_subspaces neg",
        lambda: SubspaceTracker(M, F.cross_entropy, max_subspaces=-1),
        VE,
        "max_subspaces",
    ),
    (
        "tracker warm_start",
        lambda: SubspaceTracker(M, F.cross_entropy, warm_start=1),
        TE,
        "warm_start",
    ),
    ("tracker seed", lambda: SubspaceTracker(M, F.cross_entropy, seed=-1), VE, "seed"),
    ("tracker step loss str", lambda: TRACKER.step((X, Y), loss="abc"), TE, "loss"),
    ("tracker step loss vector", lambda: TRACKER.step((X, Y), loss=torch.ones(3)), TE, "loss"),
    ("tracker subspace before step", lambda: TRACKER.subspace, VE, "step"),
    ("tracker add_listener", lambda: TRACKER.add_listener(5), TE, "fn"),
    ("tracker records start", lambda: TRACKER.records(start=-1), VE, "start"),
    # --- TrajectoryRecorder ----------------------------------------------------------------
    ("recorder model", lambda: TrajectoryRecorder("m"), TE, "model"),
    ("recorder every 0", lambda: TrajectoryRecorder(M, every=0), VE, "every"),
    ("recorder every float", lambda: TrajectoryRecorder(M, every=1.5), TE, "every"),
    ("recorder max_points", lambda: TrajectoryRecorder(M, max_points=1), VE, "max_points"),
    ("recorder dtype", lambda: TrajectoryRecorder(M, dtype=torch.int8), TE, "dtype"),
    ("recorder buffers", lambda: TrajectoryRecorder(M, buffers="yes"), TE, "buffers"),
    ("recorder snapshot step", lambda: TrajectoryRecorder(M).snapshot(step=1.5), TE, "step"),
]


@pytest.fixture
def product_counter(monkeypatch):
    """Counts the curvature products of every Objective (none may run before an error)."""
    calls = {"n": 0}
    orig = CurvatureOperator.apply

    def counting(self, V):
        calls["n"] += V.shape[0]
        return orig(self, V)

    monkeypatch.setattr(CurvatureOperator, "apply", counting)
    return calls


def test_probe_count():
    assert len(PROBES) >= 150
    assert len({p[0] for p in PROBES}) == len(PROBES)


@pytest.mark.parametrize("label,call,exc,text", PROBES, ids=[p[0] for p in PROBES])
def test_bad_argument(label, call, exc, text, product_counter):
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no half-run with a warning instead of an error
        with pytest.raises(exc) as info:
            call()
    assert isinstance(info.value, (lv.LossvizError, ValueError, TypeError))
    assert text in str(info.value), str(info.value)
    assert product_counter["n"] == 0, "a product was computed before the error"


# --- what must simply work ------------------------------------------------------------------
def _dense(model, loss_fn, x, y):
    """The Hessian of ``loss_fn(model(x), y)`` by plain autograd on a float64 copy."""
    names = [n for n, _ in model.named_parameters()]
    shapes = [p.shape for p in model.parameters()]
    sizes = [p.numel() for p in model.parameters()]

    def f(theta):
        d = {n: t.view(s) for n, t, s in zip(names, torch.split(theta, sizes), shapes)}
        return loss_fn(torch.func.functional_call(model, d, (x,)), y)

    theta = torch.cat([p.detach().reshape(-1).double() for p in model.parameters()])
    return hessian(f, theta)


def test_zero_hessian_density_puts_all_mass_at_zero():
    nodes, weights, _, complete = slq(torch.zeros(5, 5), 2, 3)
    assert complete and np.all(np.isfinite(nodes)) and np.all(nodes == 0)
    np.testing.assert_allclose(weights.sum(1), 1, atol=1e-6)
    # an Objective whose loss is linear in the weights: H = 0 exactly
    lin = nn.Linear(4, 1).double()
    obj = lv.Objective(lin, data=(torch.randn(6, 4, dtype=torch.float64),), forward=_sum_out)
    d = lv.hessian_density(obj, n_probes=3, steps=4, progress=False)
    assert np.all(d.nodes == 0) and d.moment(0) == pytest.approx(1.0)
    x, phi = d.smooth(sigma=0.1)
    assert abs(x[np.argmax(phi)]) < 1e-2
    e = lv.hessian_eigs(obj, k=2, progress=False)
    np.testing.assert_array_equal(e.values, [0.0, 0.0])


def _sum_out(m, b):
    return m(b[0]).sum()


def test_low_rank_density_is_an_exact_quadrature():
    """A rank-2 operator exhausts the Krylov space after 2 steps: the quadrature is still
    exact (Σ w λ^p = vᵀA^p v) and finite."""
    g = torch.Generator().manual_seed(1)
    U = torch.linalg.qr(torch.randn(9, 2, generator=g, dtype=torch.float64))[0]
    Ar = U @ torch.diag(torch.tensor([3.0, -1.0], dtype=torch.float64)) @ U.T
    nodes, weights, _, _ = slq(Ar, 4, 6, seed=2)
    assert np.all(np.isfinite(nodes)) and np.all(weights >= -1e-12)
    np.testing.assert_allclose(weights.sum(1), 1, atol=1e-12)
    gen = lv.slq.probe_generator(2, torch.device("cpu"))
    Z = lv.slq.rademacher(4, 9, dtype=torch.float64, device="cpu", generator=gen) / 3.0
    for p in range(1, 8):
        want = torch.einsum("ij,jk,ik->i", Z, torch.linalg.matrix_power(Ar, p), Z).numpy()
        np.testing.assert_allclose((weights * nodes**p).sum(1), want, atol=1e-10)


def test_float16_model_on_cpu():
    m16 = _mlp(dtype=torch.float16)
    x, y = _data(dtype=torch.float16)
    obj = lv.Objective(m16, F.cross_entropy, (x, y))
    H = _dense(m16, F.cross_entropy, x.double(), y)
    exact = torch.linalg.eigvalsh(H).flip(0).numpy()
    with pytest.warns(UserWarning, match="float16"):
        e = lv.hessian_eigs(obj, k=2, progress=False)
    np.testing.assert_allclose(e.values, exact[:2], rtol=2e-2)
    assert e.all_converged and e.residuals.max() <= 4 * torch.finfo(torch.float16).eps
    d = lv.hessian_density(obj, n_probes=2, steps=12, progress=False)
    assert np.all(np.isfinite(d.nodes))
    assert abs(d.nodes.max() - exact[0]) < 2e-2 * exact[0]
    t = lv.hessian_trace(obj, rtol=0.1, max_hvp=200, progress=False)
    assert abs(t.value - float(torch.trace(H))) < 5 * t.stderr + 2e-2 * abs(t.value)
    diag = lv.hessian_diagonal(obj, n_probes=4, progress=False)
    assert diag.flatten().dtype == torch.float32 and torch.isfinite(diag.flatten()).all()


def test_curvature_inside_inference_mode_and_no_grad():
    obj = lv.Objective(_mlp(), F.cross_entropy, (X, Y))
    H = _dense(obj.model, F.cross_entropy, X, Y)
    top = float(torch.linalg.eigvalsh(H)[-1])
    for ctx in (torch.inference_mode, torch.no_grad):
        with ctx():
            e = lv.hessian_eigs(obj, k=1, tol=1e-10, progress=False)
            t = lv.hessian_trace(obj, rtol=0, max_hvp=40, progress=False)
            d = lv.hessian_density(obj, n_probes=2, steps=5, progress=False)
            diag = lv.hessian_diagonal(obj, n_probes=4, progress=False)
            hv = obj.hvp(obj.weights())
        assert e.values[0] == pytest.approx(top, rel=1e-9)
        assert abs(t.value - float(torch.trace(H))) < 6 * t.stderr
        assert d.complete and np.isfinite(d.nodes).all() and diag.complete
        torch.testing.assert_close(hv.flatten(), H @ obj.weights().flatten())


def test_every_form_of_v0():
    obj = lv.Objective(_mlp(), F.cross_entropy, (X, Y))
    H = _dense(obj.model, F.cross_entropy, X, Y)
    want = torch.linalg.eigvalsh(H).flip(0)[:2].numpy()
    e = lv.hessian_eigs(obj, k=2, tol=1e-10, progress=False)
    for v0 in (e, e.vectors, e.vectors[0], torch.stack([obj.as_flat(v) for v in e.vectors])):
        r = lv.hessian_eigs(obj, k=2, tol=1e-10, v0=v0, progress=False)
        np.testing.assert_allclose(r.values, want, rtol=1e-9)
    r = lv.hessian_eigs(A, k=2, v0=torch.ones(8, dtype=torch.long), progress=False)
    np.testing.assert_allclose(r.values, [8.0, 7.0], rtol=1e-9)


def test_symmetric_dense_matrices_still_work():
    """The symmetry check has a tolerance: a dense Hessian with rounding asymmetry and a
    float32 matrix are accepted; eigenpairs are right."""
    H = _dense(OBJ.model, F.cross_entropy, X, Y)
    Hn = H + 1e-14 * torch.randn(H.shape, generator=torch.Generator().manual_seed(0))
    e = lv.hessian_eigs(Hn, k=1, progress=False)
    assert e.values[0] == pytest.approx(float(torch.linalg.eigvalsh(H)[-1]), rel=1e-8)
    e32 = lv.hessian_eigs(A.float(), k=2, progress=False)
    np.testing.assert_allclose(e32.values, [8.0, 7.0], rtol=1e-5)


def test_tol_below_the_dtype_precision_is_warned_about():
    with pytest.warns(UserWarning, match="tol=1e-20 is below what float64"):
        e = lv.hessian_eigs(A, k=1, tol=1e-20, progress=False)
    assert e.values[0] == pytest.approx(8.0)


def test_hutch_plus_plus_minimum_budget_is_enough():
    """The smallest accepted budget runs and gives a finite estimate with an error bar."""
    t = lv.hessian_trace(A, method="hutch++", max_hvp=10, progress=False)
    assert math.isfinite(t.stderr) and t.stderr > 0 and t.n_hvp == 10
    assert abs(t.value - 36.0) < 5 * t.stderr
    t2 = lv.hessian_trace(A, max_hvp=2, progress=False)
    assert t2.value == pytest.approx(36.0) and len(t2.samples) == 2
