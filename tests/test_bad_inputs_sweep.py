"""A sweep over every public function's arguments with values no argument of that kind
accepts (a float or a string for a count, a negative count, NaN for a tolerance, an
unknown option). Each must raise a lossviz error (a ``ValueError`` or ``TypeError``) that
names the argument, before any work starts: the model's forward is never run."""

import pytest
import torch
from torch import nn

import lossviz as lv

F = nn.functional
FORWARDS = [0]


class _Net(nn.Module):
    """A small classifier that counts its forward passes (in a module-level list, which
    lossviz's private copy shares)."""

    def __init__(self, seed=0):
        super().__init__()
        torch.manual_seed(seed)
        self.fc1 = nn.Linear(4, 6)
        self.fc2 = nn.Linear(6, 3)

    def forward(self, x):
        FORWARDS[0] += 1
        return self.fc2(torch.tanh(self.fc1(x)))


def _setup():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(24, 4, generator=g, dtype=torch.float64)
    y = torch.randint(0, 3, (24,), generator=g)
    a, b, c = (_Net(s).double() for s in (0, 1, 2))
    obj = lv.Objective(a, F.cross_entropy, (x, y))
    return obj, a, b, c


OBJ, A, B, C = _setup()
D = lv.random_directions(OBJ, 2)
CK = [OBJ.weights(A), OBJ.weights(B), OBJ.weights(C)]

COUNT = ("count", [2.5, "3", -1, float("nan")])
SEED = ("seed", [2.5, "0", -1])
TOL = ("tolerance", ["small", float("nan"), -1.0, [1e-3]])
OPTION = ("option", ["nonsense", 3])
FLAG = ("flag", ["yes", 2])

# function, base arguments, {argument: kind of bad values}
CALLS = [
    (
        lv.hessian_eigs,
        (OBJ,),
        {
            "k": COUNT,
            "which": OPTION,
            "tol": TOL,
            "max_hvp": COUNT,
            "seed": SEED,
            "curvature": OPTION,
            "block_size": COUNT,
            "progress": FLAG,
        },
    ),
    (
        lv.hessian_density,
        (OBJ,),
        {"n_probes": COUNT, "steps": COUNT, "seed": SEED, "curvature": OPTION, "progress": FLAG},
    ),
    (
        lv.hessian_trace,
        (OBJ,),
        {
            "method": OPTION,
            "rtol": TOL,
            "max_hvp": COUNT,
            "seed": SEED,
            "curvature": OPTION,
            "batch_size": COUNT,
            "progress": FLAG,
        },
    ),
    (
        lv.hessian_diagonal,
        (OBJ,),
        {"n_probes": COUNT, "seed": SEED, "curvature": OPTION, "progress": FLAG},
    ),
    (
        lv.hessian_blocks,
        (OBJ,),
        {
            "k": COUNT,
            "tol": TOL,
            "rtol": TOL,
            "max_hvp": COUNT,
            "seed": SEED,
            "curvature": OPTION,
            "progress": FLAG,
        },
    ),
    (lv.sharpness_along, (OBJ, CK), {"k": COUNT, "tol": TOL, "curvature": OPTION, "seed": SEED}),
    (
        lv.trace_along,
        (OBJ, CK),
        {"rtol": TOL, "max_hvp": COUNT, "method": OPTION, "curvature": OPTION, "seed": SEED},
    ),
    (
        lv.line,
        (OBJ, None, D[0]),
        {"n": COUNT, "progress": FLAG, "batched": FLAG, "chunk_size": COUNT, "precision": OPTION},
    ),
    (
        lv.surface,
        (OBJ, None, D),
        {"n": COUNT, "refine": FLAG, "progress": FLAG, "chunk_size": COUNT, "precision": OPTION},
    ),
    (
        lv.evaluate,
        (OBJ, [A, B]),
        {"progress": FLAG, "chunk_size": COUNT, "batched": FLAG, "precision": OPTION, "bn": OPTION},
    ),
    (lv.interpolate, (OBJ, A, B), {"n": COUNT, "bn": OPTION, "progress": FLAG}),
    (lv.barrier, (OBJ, A, B), {"n": COUNT, "kind": OPTION, "metric": OPTION}),
    (
        lv.barrier_matrix,
        (OBJ, [A, B, C]),
        {"n": COUNT, "kind": OPTION, "metric": OPTION, "bn": OPTION, "progress": FLAG},
    ),
    (
        lv.layerwise_barriers,
        (OBJ, A, B),
        {
            "base": OPTION,
            "metric": OPTION,
            "n": COUNT,
            "bn": OPTION,
            "groups": OPTION,
            "progress": FLAG,
        },
    ),
    (
        lv.layerwise_barriers_over,
        (OBJ, [(A, B)]),
        {"base": OPTION, "metric": OPTION, "bn": OPTION, "groups": OPTION},
    ),
    (
        lv.roughness_index,
        (OBJ,),
        {
            "n_directions": COUNT,
            "n_points": COUNT,
            "radius": TOL,
            "seed": SEED,
            "n_bootstrap": COUNT,
            "confidence": TOL,
            "norm": OPTION,
        },
    ),
    (
        lv.roughness_along,
        (OBJ, CK),
        {"n_directions": COUNT, "n_points": COUNT, "radius": TOL, "seed": SEED},
    ),
    (lv.random_directions, (OBJ,), {"n": COUNT, "seed": SEED, "norm": OPTION, "ignore": OPTION}),
    (lv.pca_directions, (CK,), {"n": COUNT}),
    (lv.eigen_directions, (OBJ,), {"n": COUNT}),
    (lv.weight_matching, (A, B), {"max_iter": COUNT, "seed": SEED}),
    (lv.merge, (CK,), {"method": OPTION}),
    (lv.greedy_soup, (OBJ, CK), {"metric": OPTION, "bn": OPTION, "progress": FLAG}),
]

CASES = [
    (fn, args, name, value)
    for fn, args, params in CALLS
    for name, (_, values) in params.items()
    for value in values
]


def _id(case):
    fn, _, name, value = case
    return f"{fn.__name__}-{name}={value!r}"


@pytest.mark.parametrize("case", CASES, ids=[_id(c) for c in CASES])
def test_bad_argument_is_refused_before_any_work(case):
    fn, args, name, value = case
    before = FORWARDS[0]
    with pytest.raises((lv.LossvizError, TypeError, ValueError)) as e:
        fn(*args, **{name: value})
    msg = str(e.value)
    assert name in msg, f"{fn.__name__}({name}={value!r}) raised {type(e.value).__name__}: {msg}"
    assert isinstance(e.value, lv.LossvizError), f"{type(e.value).__name__}: {msg}"
    assert FORWARDS[0] == before, f"{fn.__name__} ran {FORWARDS[0] - before} forward(s) first"


def test_the_sweep_is_broad():
    assert len(CASES) >= 250 and len({c[0] for c in CASES}) == len(CALLS)
