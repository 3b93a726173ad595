"""Bad inputs to alignment and merging: every row is one argument and one bad value; the
call must raise the given exception type, before any work, with a message naming the
argument."""

import itertools

import pytest
import torch
from reference import assert_unchanged, snapshot
from torch import nn

from lossviz.alignment import apply_permutation, permutation_spec, reset_bn, weight_matching
from lossviz.errors import ArgumentTypeError, CheckpointError, DataError, LossvizError
from lossviz.merging import averaging_variance, empirical_fisher, greedy_soup, merge
from lossviz.objective import Objective

F = nn.functional


def mlp(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 3)).eval()


def bn_net(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(4, 6), nn.BatchNorm1d(6), nn.ReLU(), nn.Linear(6, 3)).eval()


class Fx:
    """Small models, points and data shared by the probes (built once per test)."""

    def __init__(self):
        self.a, self.b = mlp(0), mlp(1)
        self.na, self.nb = bn_net(0), bn_net(1)
        g = torch.Generator().manual_seed(0)
        self.x = torch.randn(12, 4, generator=g)
        self.y = torch.randint(0, 3, (12,), generator=g)
        self.obj = Objective(self.a, F.cross_entropy, (self.x, self.y))
        self.fobj = Objective(
            self.a, data=(self.x, self.y), forward=lambda m, b: F.cross_entropy(m(b[0]), b[1])
        )
        self.spec = permutation_spec(self.a)
        sd = self.b.state_dict()
        self.missing = {k: v for k, v in sd.items() if k != "2.bias"}
        self.wrong_shape = dict(sd, **{"0.weight": torch.zeros(7, 4)})
        self.extra = dict(sd, extra=torch.zeros(2))
        self.nan = dict(sd, **{"0.weight": torch.full((6, 4), float("nan"))})
        self.ints = {k: v.long() for k, v in sd.items()}
        self.params_only = dict(self.nb.named_parameters())
        self.no_weights = nn.Sequential(nn.ReLU())


def _rows():
    s = lambda f: f  # noqa: E731 - a probe: f(fx) runs the call
    cyc = lambda fx: itertools.cycle([(fx.x, fx.y)])  # noqa: E731
    return [
        # weight_matching -------------------------------------------------------------------
        ("wm-a-int", s(lambda fx: weight_matching(42, fx.b)), ArgumentTypeError, "from a"),
        ("wm-a-path", s(lambda fx: weight_matching("a.pt", fx.b)), ArgumentTypeError, "from a"),
        ("wm-model-str", s(lambda fx: weight_matching("m", fx.a, fx.b)), TypeError, "model"),
        ("wm-a-none", s(lambda fx: weight_matching(fx.a, None, fx.b)), TypeError, "a must"),
        ("wm-b-int", s(lambda fx: weight_matching(fx.a, fx.a, 5)), TypeError, "b:"),
        ("wm-b-missing", s(lambda fx: weight_matching(fx.a, fx.missing)), CheckpointError, "b"),
        ("wm-b-shape", s(lambda fx: weight_matching(fx.a, fx.wrong_shape)), CheckpointError, "b "),
        ("wm-b-extra", s(lambda fx: weight_matching(fx.a, fx.extra)), CheckpointError, "extra"),
        ("wm-b-nan", s(lambda fx: weight_matching(fx.a, fx.nan)), LossvizError, "b has NaN"),
        ("wm-b-int-dtype", s(lambda fx: weight_matching(fx.a, fx.ints)), TypeError, "b:"),
        ("wm-b-empty", s(lambda fx: weight_matching(fx.a, {})), CheckpointError, "b is empty"),
        (
            "wm-b-no-buffers",
            s(lambda fx: weight_matching(fx.na, fx.params_only, data=fx.x)),
            CheckpointError,
            "running_mean",
        ),
        (
            "wm-max-iter-0",
            s(lambda fx: weight_matching(fx.a, fx.b, max_iter=0)),
            LossvizError,
            "max_iter",
        ),
        (
            "wm-max-iter-float",
            s(lambda fx: weight_matching(fx.a, fx.b, max_iter=2.5)),
            TypeError,
            "max_iter",
        ),
        (
            "wm-max-iter-bool",
            s(lambda fx: weight_matching(fx.a, fx.b, max_iter=True)),
            TypeError,
            "max_iter",
        ),
        ("wm-seed-neg", s(lambda fx: weight_matching(fx.a, fx.b, seed=-1)), LossvizError, "seed"),
        ("wm-seed-str", s(lambda fx: weight_matching(fx.a, fx.b, seed="0")), TypeError, "seed"),
        ("wm-spec-str", s(lambda fx: weight_matching(fx.a, fx.b, spec="x")), TypeError, "spec"),
        (
            "wm-spec-other-model",
            s(
                lambda fx: weight_matching(
                    fx.na,
                    fx.nb,
                    spec=permutation_spec(
                        nn.Sequential(nn.Linear(4, 5), nn.ReLU(), nn.Linear(5, 3))
                    ),
                )
            ),
            LossvizError,
            "spec",
        ),
        ("wm-data-str", s(lambda fx: weight_matching(fx.a, fx.b, data="abc")), TypeError, "data"),
        ("wm-data-int", s(lambda fx: weight_matching(fx.a, fx.b, data=3)), TypeError, "data"),
        ("wm-data-empty", s(lambda fx: weight_matching(fx.a, fx.b, data=[])), DataError, "data"),
        (
            "wm-data-shape",
            s(lambda fx: weight_matching(fx.a, fx.b, data=torch.randn(3, 7))),
            DataError,
            "data",
        ),
        (
            "wm-data-0-samples",
            s(lambda fx: weight_matching(fx.a, fx.b, data=torch.randn(0, 4))),
            DataError,
            "data",
        ),
        (
            "wm-data-no-inputs",
            s(lambda fx: weight_matching(fx.a, fx.b, data=(None, fx.y))),
            DataError,
            "data",
        ),
        # permutation_spec ------------------------------------------------------------------
        ("spec-model-none", s(lambda fx: permutation_spec(None)), TypeError, "model"),
        (
            "spec-data-shape",
            s(lambda fx: permutation_spec(fx.a, data=torch.randn(2, 9))),
            DataError,
            "data",
        ),
        # apply_permutation -----------------------------------------------------------------
        ("ap-spec", s(lambda fx: apply_permutation("x", fx.a, {})), TypeError, "spec"),
        ("ap-state", s(lambda fx: apply_permutation(fx.spec, 5, {})), TypeError, "state"),
        ("ap-perms-list", s(lambda fx: apply_permutation(fx.spec, fx.a, [1])), TypeError, "perms"),
        (
            "ap-perms-space",
            s(lambda fx: apply_permutation(fx.spec, fx.a, {9: torch.arange(6)})),
            LossvizError,
            "perms",
        ),
        (
            "ap-perms-len",
            s(lambda fx: apply_permutation(fx.spec, fx.a, {1: torch.arange(5)})),
            LossvizError,
            "perms[1]",
        ),
        (
            "ap-perms-dup",
            s(lambda fx: apply_permutation(fx.spec, fx.a, {1: torch.zeros(6, dtype=torch.long)})),
            LossvizError,
            "perms[1]",
        ),
        (
            "ap-perms-float",
            s(lambda fx: apply_permutation(fx.spec, fx.a, {1: torch.arange(6.0)})),
            TypeError,
            "perms[1]",
        ),
        (
            "ap-perms-str",
            s(lambda fx: apply_permutation(fx.spec, fx.a, {1: "012345"})),
            TypeError,
            "perms[1]",
        ),
        (
            "ap-state-lacks",
            s(
                lambda fx: apply_permutation(
                    fx.spec, {"0.weight": fx.a[0].weight}, {1: torch.arange(6)}
                )
            ),
            CheckpointError,
            "state lacks",
        ),
        # reset_bn --------------------------------------------------------------------------
        ("bn-obj", s(lambda fx: reset_bn(3, fx.na, fx.x)), TypeError, "obj_or_model"),
        ("bn-weights-none", s(lambda fx: reset_bn(fx.na, None, fx.x)), TypeError, "weights"),
        (
            "bn-weights-key",
            s(lambda fx: reset_bn(fx.na, {"nope": torch.zeros(1)}, fx.x)),
            CheckpointError,
            "weights",
        ),
        ("bn-no-batchnorm", s(lambda fx: reset_bn(fx.a, fx.b, fx.x)), LossvizError, "BatchNorm"),
        ("bn-data-none", s(lambda fx: reset_bn(fx.na, fx.nb)), DataError, "data"),
        ("bn-data-str", s(lambda fx: reset_bn(fx.na, fx.nb, "abc")), TypeError, "data"),
        ("bn-data-empty", s(lambda fx: reset_bn(fx.na, fx.nb, [])), DataError, "data"),
        ("bn-data-endless", s(lambda fx: reset_bn(fx.na, fx.nb, cyc(fx))), DataError, "data"),
        (
            "bn-data-shape",
            s(lambda fx: reset_bn(fx.na, fx.nb, torch.randn(5, 9))),
            DataError,
            "data",
        ),
        (
            "bn-data-batch-types",
            s(lambda fx: reset_bn(fx.na, fx.nb, [("x", "y")])),
            DataError,
            "data",
        ),
        (
            "bn-repair-model",
            s(lambda fx: reset_bn(fx.na, fx.nb, fx.x, repair=fx.na)),
            TypeError,
            "repair",
        ),
        (
            "bn-repair-one",
            s(lambda fx: reset_bn(fx.na, fx.nb, fx.x, repair=(fx.na,))),
            TypeError,
            "repair",
        ),
        (
            "bn-repair-bad-point",
            s(lambda fx: reset_bn(fx.na, fx.nb, fx.x, repair=(fx.na, {"q": torch.ones(1)}))),
            CheckpointError,
            "repair[1]",
        ),
        (
            "bn-alpha-range",
            s(lambda fx: reset_bn(fx.na, fx.nb, fx.x, repair=(fx.na, fx.nb), alpha=2)),
            LossvizError,
            "alpha",
        ),
        (
            "bn-alpha-str",
            s(lambda fx: reset_bn(fx.na, fx.nb, fx.x, repair=(fx.na, fx.nb), alpha="x")),
            TypeError,
            "alpha",
        ),
        (
            "bn-alpha-nan",
            s(lambda fx: reset_bn(fx.na, fx.nb, fx.x, repair=(fx.na, fx.nb), alpha=float("nan"))),
            LossvizError,
            "alpha",
        ),
        (
            "bn-alpha-no-repair",
            s(lambda fx: reset_bn(fx.na, fx.nb, fx.x, alpha=0.3)),
            LossvizError,
            "alpha",
        ),
        (
            "bn-custom-forward",
            s(
                lambda fx: reset_bn(
                    Objective(fx.na, data=(fx.x, fx.y), forward=lambda m, b: m(b[0]).sum()), fx.nb
                )
            ),
            DataError,
            "data",
        ),
        # merge -----------------------------------------------------------------------------
        ("merge-two-args", s(lambda fx: merge(fx.a, fx.b)), TypeError, "one list"),
        ("merge-module", s(lambda fx: merge(fx.a)), TypeError, "points"),
        ("merge-state-dict", s(lambda fx: merge(fx.a.state_dict())), TypeError, "points"),
        ("merge-path", s(lambda fx: merge("a.pt")), TypeError, "points"),
        ("merge-int", s(lambda fx: merge(5)), TypeError, "points"),
        ("merge-empty", s(lambda fx: merge([])), LossvizError, "points"),
        ("merge-bad-item", s(lambda fx: merge([fx.a, 5])), TypeError, "points[1]"),
        ("merge-empty-item", s(lambda fx: merge([fx.a, {}])), CheckpointError, "points[1]"),
        ("merge-keys", s(lambda fx: merge([fx.a, fx.missing])), CheckpointError, "points[1]"),
        ("merge-shapes", s(lambda fx: merge([fx.a, fx.wrong_shape])), CheckpointError, "0.weight"),
        ("merge-method", s(lambda fx: merge([fx.a, fx.b], method="ties")), LossvizError, "method"),
        (
            "merge-method-type",
            s(lambda fx: merge([fx.a, fx.b], method=None)),
            LossvizError,
            "method",
        ),
        (
            "merge-weighted-none",
            s(lambda fx: merge([fx.a, fx.b], method="weighted")),
            LossvizError,
            "weights",
        ),
        (
            "merge-weights-len",
            s(lambda fx: merge([fx.a, fx.b], method="weighted", weights=[1, 2, 3])),
            LossvizError,
            "weights",
        ),
        (
            "merge-weights-inf",
            s(lambda fx: merge([fx.a, fx.b], method="weighted", weights=[1, float("inf")])),
            LossvizError,
            "weights[1]",
        ),
        (
            "merge-weights-zero-sum",
            s(lambda fx: merge([fx.a, fx.b], method="weighted", weights=[1, -1])),
            LossvizError,
            "weights",
        ),
        (
            "merge-weights-str",
            s(lambda fx: merge([fx.a, fx.b], method="weighted", weights="12")),
            TypeError,
            "weights",
        ),
        (
            "merge-weights-str-item",
            s(lambda fx: merge([fx.a, fx.b], method="weighted", weights=["1", 2])),
            TypeError,
            "weights[0]",
        ),
        (
            "merge-weights-bool",
            s(lambda fx: merge([fx.a, fx.b], method="weighted", weights=[True, 1])),
            TypeError,
            "weights[0]",
        ),
        (
            "merge-weights-map-keys",
            s(lambda fx: merge({"p": fx.a, "q": fx.b}, method="weighted", weights={"p": 1})),
            LossvizError,
            "weights",
        ),
        (
            "merge-uniform-weights",
            s(lambda fx: merge([fx.a, fx.b], weights=[1, 2])),
            LossvizError,
            "weights",
        ),
        (
            "merge-ta-no-base",
            s(lambda fx: merge([fx.a, fx.b], method="task_arithmetic")),
            LossvizError,
            "base",
        ),
        (
            "merge-ta-bad-base",
            s(lambda fx: merge([fx.a], method="task_arithmetic", base=fx.missing)),
            CheckpointError,
            "base",
        ),
        (
            "merge-ta-base-int",
            s(lambda fx: merge([fx.a], method="task_arithmetic", base=3)),
            TypeError,
            "base",
        ),
        ("merge-base-uniform", s(lambda fx: merge([fx.a, fx.b], base=fx.a)), LossvizError, "base"),
        (
            "merge-fisher-no-obj",
            s(lambda fx: merge([fx.a, fx.b], method="fisher")),
            LossvizError,
            "obj",
        ),
        (
            "merge-fisher-obj-str",
            s(lambda fx: merge([fx.a, fx.b], method="fisher", obj="x")),
            TypeError,
            "obj",
        ),
        (
            "merge-fisher-forward",
            s(lambda fx: merge([fx.a, fx.b], method="fisher", obj=fx.fobj)),
            LossvizError,
            "forward",
        ),
        (
            "merge-fisher-neg",
            s(lambda fx: merge([fx.a, fx.b], method="fisher", obj=fx.obj, weights=[1, -1])),
            LossvizError,
            "weights",
        ),
        (
            "merge-fisher-other-model",
            s(lambda fx: merge([fx.na, fx.nb], method="fisher", obj=fx.obj)),
            CheckpointError,
            "points",
        ),
        ("merge-obj-uniform", s(lambda fx: merge([fx.a, fx.b], obj=fx.obj)), LossvizError, "obj"),
        (
            "merge-int-tensors",
            s(
                lambda fx: merge(
                    [
                        dict(fx.a.state_dict(), mask=torch.ones(3, dtype=torch.bool)),
                        dict(fx.b.state_dict(), mask=torch.zeros(3, dtype=torch.bool)),
                    ]
                )
            ),
            LossvizError,
            "'mask'",
        ),
        # greedy_soup -----------------------------------------------------------------------
        ("soup-obj", s(lambda fx: greedy_soup("x", [fx.a, fx.b])), TypeError, "obj_val"),
        (
            "soup-metric",
            s(lambda fx: greedy_soup(fx.obj, [fx.a, fx.b], metric="f1")),
            LossvizError,
            "metric",
        ),
        (
            "soup-bn",
            s(lambda fx: greedy_soup(fx.obj, [fx.a, fx.b], bn="train")),
            LossvizError,
            "bn",
        ),
        (
            "soup-bn-data",
            s(lambda fx: greedy_soup(fx.obj, [fx.a, fx.b], bn_data=fx.x)),
            LossvizError,
            "bn_data",
        ),
        (
            "soup-progress",
            s(lambda fx: greedy_soup(fx.obj, [fx.a, fx.b], progress="yes")),
            TypeError,
            "progress",
        ),
        ("soup-empty", s(lambda fx: greedy_soup(fx.obj, [])), LossvizError, "points"),
        ("soup-single-module", s(lambda fx: greedy_soup(fx.obj, fx.a)), TypeError, "points"),
        (
            "soup-other-model",
            s(lambda fx: greedy_soup(fx.obj, [fx.na, fx.nb])),
            CheckpointError,
            "points",
        ),
        # empirical_fisher ------------------------------------------------------------------
        ("fisher-obj", s(lambda fx: empirical_fisher("x")), TypeError, "obj"),
        ("fisher-forward", s(lambda fx: empirical_fisher(fx.fobj)), LossvizError, "forward"),
        (
            "fisher-at",
            s(lambda fx: empirical_fisher(fx.obj, fx.wrong_shape)),
            CheckpointError,
            "0.weight",
        ),
        # averaging_variance ----------------------------------------------------------------
        ("var-single", s(lambda fx: averaging_variance([fx.a])), LossvizError, "points"),
        ("var-two-args", s(lambda fx: averaging_variance(fx.a, fx.b)), TypeError, "one list"),
        ("var-module", s(lambda fx: averaging_variance(fx.a)), TypeError, "points"),
        (
            "var-no-matrix",
            s(lambda fx: averaging_variance([{"w": torch.ones(3)}, {"w": torch.zeros(3)}])),
            LossvizError,
            "ndim",
        ),
    ]


ROWS = _rows()


@pytest.fixture(scope="module")
def fx():
    return Fx()


@pytest.mark.parametrize("probe, exc, needle", [r[1:] for r in ROWS], ids=[r[0] for r in ROWS])
def test_bad_input_is_a_clear_error(fx, probe, exc, needle):
    snaps = [snapshot(m) for m in (fx.a, fx.b, fx.na, fx.nb)]
    with pytest.raises(exc) as info:
        probe(fx)
    assert isinstance(info.value, LossvizError), type(info.value)
    assert needle in str(info.value), str(info.value)
    for m, sn in zip((fx.a, fx.b, fx.na, fx.nb), snaps):
        assert_unchanged(m, sn)


def test_enough_probes():
    assert len(ROWS) >= 30
