"""Off the happy path for landscapes, paths and connectivity (issue 10).

- a table of bad arguments: every one is refused with the right exception type, a message
  naming the argument, before any forward pass, and the user's model unchanged;
- non-finite losses make barriers / summaries non-finite and say where;
- Ctrl-C: partial results marked incomplete (NaN, never a final-looking number), or the
  interrupt propagates from inner calls; nothing runs after it;
- metrics that do not apply (accuracy of a regression) are refused or left out;
- integer buffers: every path's endpoints are exactly L(A) and L(B);
- ``reduction="sum"``: the loss is Σ_b L_b;
- zero-size parameters and zero-norm filters in directions.

Every number is checked against a direct computation (``obj.loss`` at the point or plain
PyTorch), never against lossviz's own path code.
"""

from __future__ import annotations

import copy
import types
import warnings

import numpy as np
import pytest
import torch
from reference import assert_unchanged, snapshot
from torch import nn

import lossviz as lv
from lossviz.connectivity import (
    barrier,
    barrier_matrix,
    interpolate,
    layerwise_barriers,
    layerwise_barriers_over,
)
from lossviz.directions import (
    eigen_directions,
    model_direction,
    pca_directions,
    plane_through,
    random_directions,
)
from lossviz.errors import ArgumentTypeError, CheckpointError, DataError, LossvizError
from lossviz.interrupt import api
from lossviz.landscape import evaluate, line, surface
from lossviz.roughness import roughness_along, roughness_index

F = nn.functional
CALLS = [0]  # forward passes of Counting models (the private copies included)


class Counting(nn.Module):
    """A small MLP that counts its forward passes (in a module-level list, so the private
    copy lossviz evaluates counts too)."""

    def __init__(self, seed=0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.fc1 = nn.Linear(5, 6).double()
        self.fc2 = nn.Linear(6, 3).double()
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(torch.randn(p.shape, generator=g, dtype=torch.float64))

    def forward(self, x):
        CALLS[0] += 1
        return self.fc2(torch.tanh(self.fc1(x)))


def _xy(n=24, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 5, generator=g, dtype=torch.float64), torch.randint(
        0, 3, (n,), generator=g
    )


def _bn_model(seed=0):
    torch.manual_seed(seed)
    m = nn.Sequential(nn.Linear(5, 4), nn.BatchNorm1d(4), nn.Tanh(), nn.Linear(4, 3)).double()
    m[1].running_mean.normal_()
    m[1].running_var.uniform_(0.5, 2)
    return m.eval()


@pytest.fixture(scope="module")
def c():
    x, y = _xy()
    m = Counting(0)
    m.fc1.weight.grad = torch.ones_like(m.fc1.weight)  # must survive every call
    obj = lv.Objective(m, F.cross_entropy, [(x[:10], y[:10]), (x[10:], y[10:])])
    bn_m = _bn_model(0)
    bnobj = lv.Objective(bn_m, F.cross_entropy, (x, y))
    ns = types.SimpleNamespace(
        x=x,
        y=y,
        m=m,
        obj=obj,
        a=Counting(1),
        b=Counting(2),
        c3=Counting(3),
        P=obj.layout.size,
        bn_m=bn_m,
        bnobj=bnobj,
        bn_a=_bn_model(1),
        bn_b=_bn_model(2),
    )
    ns.d = random_directions(obj, 2, seed=0)
    ns.dbn = random_directions(bnobj, 1, seed=0)[0]
    return ns


T, V, C, D = ArgumentTypeError, LossvizError, CheckpointError, DataError
NAN = float("nan")

# (id, call, exception, regex the message must match (names the argument), before any work)
PROBES = [
    # line ------------------------------------------------------------------------------
    ("line n=0", lambda c: line(c.obj, None, c.d[0], n=0), V, r"^n must", True),
    ("line n=1", lambda c: line(c.obj, None, c.d[0], n=1), V, r"^n must be an integer >= 2", True),
    ("line n=2.5", lambda c: line(c.obj, None, c.d[0], n=2.5), T, r"^n must be an integer", True),
    ("line n='5'", lambda c: line(c.obj, None, c.d[0], n="5"), T, r"^n must", True),
    ("line n=True", lambda c: line(c.obj, None, c.d[0], n=True), T, r"^n must", True),
    ("line span=(1,0)", lambda c: line(c.obj, None, c.d[0], span=(1, 0)), V, r"^span", True),
    ("line span=(0,0)", lambda c: line(c.obj, None, c.d[0], span=(0, 0)), V, r"^span", True),
    ("line span=3", lambda c: line(c.obj, None, c.d[0], span=3), T, r"^span", True),
    ("line span 3 items", lambda c: line(c.obj, None, c.d[0], span=(0, 1, 2)), V, r"^span", True),
    ("line span nan", lambda c: line(c.obj, None, c.d[0], span=(0, NAN)), V, r"^span\[1\]", True),
    ("line span inf", lambda c: line(c.obj, None, c.d[0], span=(0, np.inf)), V, r"^span", True),
    ("line span str", lambda c: line(c.obj, None, c.d[0], span=("a", 1)), T, r"^span\[0\]", True),
    ("line metrics acc", lambda c: line(c.obj, None, c.d[0], metrics=("acc",)), V, "metrics", True),
    ("line metrics 5", lambda c: line(c.obj, None, c.d[0], metrics=5), T, r"^metrics", True),
    ("line metrics ()", lambda c: line(c.obj, None, c.d[0], metrics=()), V, r"^metrics", True),
    ("line metrics [3]", lambda c: line(c.obj, None, c.d[0], metrics=[3]), T, r"^metrics", True),
    (
        "line metrics twice",
        lambda c: line(c.obj, None, c.d[0], metrics=("loss", "loss")),
        V,
        r"^metrics.*twice",
        True,
    ),
    (
        "line metric not scalar",
        lambda c: line(c.obj, None, c.d[0], metrics=(lambda o, t: o,)),
        V,
        "metric0.*scalar",
        False,
    ),
    ("line precision", lambda c: line(c.obj, None, c.d[0], precision="int8"), V, "precision", True),
    ("line precision 16", lambda c: line(c.obj, None, c.d[0], precision=16), T, "precision", True),
    ("line batched", lambda c: line(c.obj, None, c.d[0], batched="yes"), T, r"^batched", True),
    ("line chunk_size=0", lambda c: line(c.obj, None, c.d[0], chunk_size=0), V, "chunk_size", True),
    (
        "line chunk_size=1.5",
        lambda c: line(c.obj, None, c.d[0], chunk_size=1.5),
        T,
        "chunk_size",
        True,
    ),
    ("line unknown kw", lambda c: line(c.obj, None, c.d[0], chunksize=3), T, "chunksize", True),
    ("line progress", lambda c: line(c.obj, None, c.d[0], progress="no"), T, r"^progress", True),
    ("line bn", lambda c: line(c.obj, None, c.d[0], bn="batch"), V, r"^bn must", True),
    ("line bn train", lambda c: line(c.obj, None, c.d[0], bn="train"), V, r"^bn='train'", True),
    (
        "line bn recompute no BN",
        lambda c: line(c.obj, None, c.d[0], bn="recompute"),
        V,
        r"^bn=",
        True,
    ),
    (
        "line bn_data w/o recompute",
        lambda c: line(c.obj, None, c.d[0], bn_data=c.x),
        V,
        "bn_data",
        True,
    ),
    (
        "line bn_data type",
        lambda c: line(c.bnobj, None, c.dbn, bn="recompute", bn_data=5),
        T,
        r"^bn_data",
        True,
    ),
    (
        "line bn_data empty",
        lambda c: line(c.bnobj, None, c.dbn, bn="recompute", bn_data=[]),
        D,
        r"^bn_data is empty",
        True,
    ),
    (
        "line direction size",
        lambda c: line(c.obj, None, torch.zeros(c.P + 1)),
        V,
        "^direction",
        True,
    ),
    ("line direction 2-D", lambda c: line(c.obj, None, torch.zeros(2, c.P)), V, "^direction", True),
    (
        "line direction NaN",
        lambda c: line(c.obj, None, torch.full((c.P,), NAN, dtype=torch.float64)),
        V,
        "^direction holds NaN",
        True,
    ),
    (
        "line direction inf",
        lambda c: line(c.obj, None, c.d[0] * float("inf")),
        V,
        "^direction holds NaN or inf",
        True,
    ),
    ("line direction int", lambda c: line(c.obj, None, 3), T, "^direction", True),
    (
        "line direction wrong keys",
        lambda c: line(c.obj, None, {"w": torch.zeros(3)}),
        C,
        "^direction",
        True,
    ),
    ("line center keys", lambda c: line(c.obj, {"x": torch.zeros(1)}, c.d[0]), C, "^center", True),
    ("line center type", lambda c: line(c.obj, 5, c.d[0]), T, "^center", True),
    ("line center path", lambda c: line(c.obj, "/nonexistent.pt", c.d[0]), C, "^center", True),
    ("line obj", lambda c: line(c.m, None, c.d[0]), T, r"^obj must be a lossviz.Objective", True),
    # surface ---------------------------------------------------------------------------
    ("surface n=(3,)", lambda c: surface(c.obj, None, c.d, n=(3,)), V, r"^n must", True),
    ("surface n=1", lambda c: surface(c.obj, None, c.d, n=1), V, r"^n\[0\]", True),
    ("surface n=(3, 0)", lambda c: surface(c.obj, None, c.d, n=(3, 0)), V, r"^n\[1\]", True),
    ("surface n='5'", lambda c: surface(c.obj, None, c.d, n="5"), T, r"^n must", True),
    ("surface n=(3, 2.0)", lambda c: surface(c.obj, None, c.d, n=(3, 2.0)), T, r"^n\[1\]", True),
    ("surface span flat", lambda c: surface(c.obj, None, c.d, span=(1, 0)), T, r"^span\[0\]", True),
    ("surface span 3", lambda c: surface(c.obj, None, c.d, span=((0, 1),) * 3), V, r"^span", True),
    (
        "surface span low=high",
        lambda c: surface(c.obj, None, c.d, span=((0, 1), (1, 1))),
        V,
        r"^span\[1\]",
        True,
    ),
    ("surface span None-ish", lambda c: surface(c.obj, None, c.d, span=5), T, r"^span", True),
    ("surface one direction", lambda c: surface(c.obj, None, c.d[:1]), V, "^directions", True),
    ("surface directions=5", lambda c: surface(c.obj, None, 5), T, "^directions", True),
    (
        "surface direction size",
        lambda c: surface(c.obj, None, [c.d[0], torch.zeros(3)]),
        V,
        r"^directions\[1\]",
        True,
    ),
    (
        "surface direction NaN",
        lambda c: surface(c.obj, None, [c.d[0], c.d[1] * NAN]),
        V,
        r"^directions\[1\] holds NaN",
        True,
    ),
    ("surface refine", lambda c: surface(c.obj, None, c.d, refine="yes"), T, "^refine", True),
    ("surface callback", lambda c: surface(c.obj, None, c.d, callback=3), T, "^callback", True),
    ("surface points list", lambda c: surface(c.obj, None, c.d, points=[c.a]), T, "^points", True),
    (
        "surface trajectory int",
        lambda c: surface(c.obj, None, c.d, n=3, trajectory=5),
        T,
        "^trajectory",
        True,
    ),
    (
        "surface trajectory coords",
        lambda c: surface(c.obj, None, c.d, n=3, trajectory=np.zeros((3, 3))),
        V,
        "^trajectory",
        True,
    ),
    (
        "surface point mismatch",
        lambda c: surface(c.obj, None, c.d, n=3, points={"p": nn.Linear(2, 2)}),
        C,
        "^point 'p'",
        True,
    ),
    (
        "surface parallel directions + points",
        lambda c: surface(c.obj, None, [c.d[0], 2 * c.d[0]], n=3, points={"p": c.a}),
        V,
        "^point 'p'.*parallel",
        True,
    ),
    ("surface obj", lambda c: surface(None), T, "^obj", True),
    ("surface metrics", lambda c: surface(c.obj, None, c.d, metrics="auc"), V, "^metrics", True),
    # evaluate --------------------------------------------------------------------------
    ("evaluate points 1-D", lambda c: evaluate(c.obj, torch.zeros(c.P)), V, "^points", True),
    ("evaluate points P-1", lambda c: evaluate(c.obj, torch.zeros(2, c.P - 1)), V, "^points", True),
    ("evaluate points (0, P)", lambda c: evaluate(c.obj, torch.zeros(0, c.P)), V, "^points", True),
    ("evaluate points []", lambda c: evaluate(c.obj, []), V, "^points is empty", True),
    ("evaluate points int", lambda c: evaluate(c.obj, 5), T, "^points", True),
    ("evaluate points model", lambda c: evaluate(c.obj, c.a), T, "^points", True),
    ("evaluate points state", lambda c: evaluate(c.obj, c.a.state_dict()), T, "^points", True),
    (
        "evaluate points bool",
        lambda c: evaluate(c.obj, torch.zeros(1, c.P, dtype=torch.bool)),
        T,
        "^points",
        True,
    ),
    (
        "evaluate points[1] bad",
        lambda c: evaluate(c.obj, [c.a, nn.Linear(2, 2)]),
        C,
        r"^points\[1\]",
        True,
    ),
    ("evaluate at", lambda c: evaluate(c.obj, [c.a], at={"x": torch.zeros(2)}), C, "^at", True),
    ("evaluate metrics", lambda c: evaluate(c.obj, [c.a], metrics=("acc",)), V, "^metrics", True),
    ("evaluate bn", lambda c: evaluate(c.obj, [c.a], bn="x"), V, "^bn", True),
    (
        "evaluate chunk_size",
        lambda c: evaluate(c.obj, [c.a], chunk_size=-2),
        V,
        "^chunk_size",
        True,
    ),
    ("evaluate batched", lambda c: evaluate(c.obj, [c.a], batched=1), T, "^batched", True),
    ("evaluate obj", lambda c: evaluate(c.m, [c.a]), T, "^obj", True),
    # interpolate / barrier -------------------------------------------------------------
    ("interpolate n=1", lambda c: interpolate(c.obj, c.a, c.b, n=1), V, r"^n must", True),
    ("interpolate n=3.0", lambda c: interpolate(c.obj, c.a, c.b, n=3.0), T, r"^n must", True),
    (
        "interpolate metrics",
        lambda c: interpolate(c.obj, c.a, c.b, metrics=("acc",)),
        V,
        "^metrics",
        True,
    ),
    (
        "interpolate metrics []",
        lambda c: interpolate(c.obj, c.a, c.b, metrics=[]),
        V,
        "^metrics",
        True,
    ),
    (
        "interpolate bn=train",
        lambda c: interpolate(c.obj, c.a, c.b, bn="train"),
        V,
        "^bn must",
        True,
    ),
    ("interpolate bn=None", lambda c: interpolate(c.obj, c.a, c.b, bn=None), V, "^bn must", True),
    (
        "interpolate bn_data w/o recompute",
        lambda c: interpolate(c.obj, c.a, c.b, bn_data=c.x),
        V,
        "^bn_data",
        True,
    ),
    (
        "interpolate bn_data type",
        lambda c: interpolate(c.bnobj, c.bn_a, c.bn_b, bn="recompute", bn_data=5),
        T,
        "^bn_data",
        True,
    ),
    (
        "interpolate bn_data empty",
        lambda c: interpolate(c.bnobj, c.bn_a, c.bn_b, bn="recompute", bn_data=[]),
        D,
        "^bn_data is empty",
        True,
    ),
    ("interpolate a type", lambda c: interpolate(c.obj, 5, c.b), T, "^a:", True),
    ("interpolate b mismatch", lambda c: interpolate(c.obj, c.a, nn.Linear(2, 2)), C, "^b:", True),
    (
        "interpolate b shapes",
        lambda c: interpolate(c.obj, c.a, {**c.b.state_dict(), "fc2.bias": torch.zeros(4)}),
        C,
        r"^b:.*fc2\.bias",
        True,
    ),
    ("interpolate obj", lambda c: interpolate(c.a, c.a, c.b), T, "^obj", True),
    ("interpolate unknown kw", lambda c: interpolate(c.obj, c.a, c.b, foo=1), T, "foo", True),
    (
        "interpolate progress",
        lambda c: interpolate(c.obj, c.a, c.b, progress=2),
        T,
        "^progress",
        True,
    ),
    (
        "interpolate precision",
        lambda c: interpolate(c.obj, c.a, c.b, precision="x"),
        V,
        "^precision",
        True,
    ),
    ("barrier kind", lambda c: barrier(c.obj, c.a, c.b, kind="max"), V, "^kind", True),
    ("barrier kind None", lambda c: barrier(c.obj, c.a, c.b, kind=None), V, "^kind", True),
    ("barrier metric", lambda c: barrier(c.obj, c.a, c.b, metric="acc"), V, "^metric", True),
    ("barrier metric callable", lambda c: barrier(c.obj, c.a, c.b, metric=len), T, "^metric", True),
    ("barrier n", lambda c: barrier(c.obj, c.a, c.b, n=0), V, r"^n must", True),
    ("barrier obj", lambda c: barrier(c.a, c.a, c.b), T, "^obj", True),
    # barrier_matrix --------------------------------------------------------------------
    ("barrier_matrix 1 point", lambda c: barrier_matrix(c.obj, [c.a]), V, "^points", True),
    ("barrier_matrix model", lambda c: barrier_matrix(c.obj, c.a), T, "^points", True),
    (
        "barrier_matrix state dict",
        lambda c: barrier_matrix(c.obj, c.a.state_dict()),
        T,
        "^points",
        True,
    ),
    (
        "barrier_matrix kind",
        lambda c: barrier_matrix(c.obj, [c.a, c.b], kind="x"),
        V,
        "^kind",
        True,
    ),
    ("barrier_matrix n", lambda c: barrier_matrix(c.obj, [c.a, c.b], n=-1), V, r"^n must", True),
    (
        "barrier_matrix metric",
        lambda c: barrier_matrix(c.obj, [c.a, c.b], metric="f1"),
        V,
        "^metric",
        True,
    ),
    (
        "barrier_matrix point",
        lambda c: barrier_matrix(c.obj, {"a": c.a, "z": nn.Linear(2, 2)}),
        C,
        r"^points\['z'\]",
        True,
    ),
    (
        "barrier_matrix names clash",
        lambda c: barrier_matrix(c.obj, {1: c.a, "1": c.b}),
        V,
        "^points",
        True,
    ),
    ("barrier_matrix bn", lambda c: barrier_matrix(c.obj, [c.a, c.b], bn="train"), V, "^bn", True),
    # layer-wise ------------------------------------------------------------------------
    (
        "layerwise groups str",
        lambda c: layerwise_barriers(c.obj, c.a, c.b, groups="x"),
        V,
        "^groups",
        True,
    ),
    (
        "layerwise groups int",
        lambda c: layerwise_barriers(c.obj, c.a, c.b, groups=5),
        T,
        "^groups",
        True,
    ),
    (
        "layerwise groups {}",
        lambda c: layerwise_barriers(c.obj, c.a, c.b, groups={}),
        V,
        "^groups",
        True,
    ),
    (
        "layerwise group empty",
        lambda c: layerwise_barriers(c.obj, c.a, c.b, groups={"g": []}),
        V,
        "^groups: group 'g' is empty",
        True,
    ),
    (
        "layerwise group non-str",
        lambda c: layerwise_barriers(c.obj, c.a, c.b, groups={"g": [0]}),
        T,
        "^groups",
        True,
    ),
    (
        "layerwise group unknown",
        lambda c: layerwise_barriers(c.obj, c.a, c.b, groups={"g": ["nope"]}),
        V,
        "^groups.*nope",
        True,
    ),
    ("layerwise base", lambda c: layerwise_barriers(c.obj, c.a, c.b, base="C"), V, "^base", True),
    ("layerwise n=1", lambda c: layerwise_barriers(c.obj, c.a, c.b, n=1), V, r"^n must", True),
    ("layerwise n=0.5", lambda c: layerwise_barriers(c.obj, c.a, c.b, n=0.5), T, r"^n must", True),
    (
        "layerwise metric",
        lambda c: layerwise_barriers(c.obj, c.a, c.b, metric="acc"),
        V,
        "^metric",
        True,
    ),
    ("layerwise a", lambda c: layerwise_barriers(c.obj, "nope.pt", c.b), C, "^a:", True),
    ("layerwise obj", lambda c: layerwise_barriers(c.a, c.a, c.b), T, "^obj", True),
    ("layerwise_over pairs int", lambda c: layerwise_barriers_over(c.obj, 5), T, "^pairs", True),
    (
        "layerwise_over pairs []",
        lambda c: layerwise_barriers_over(c.obj, []),
        V,
        "^pairs is empty",
        True,
    ),
    (
        "layerwise_over pair len",
        lambda c: layerwise_barriers_over(c.obj, [(c.a,)]),
        V,
        r"^pairs\[0\]",
        True,
    ),
    (
        "layerwise_over pair point",
        lambda c: layerwise_barriers_over(c.obj, {"e1": (c.a, 5)}),
        T,
        r"^pairs\['e1'\]\[1\]",
        True,
    ),
    (
        "layerwise_over base",
        lambda c: layerwise_barriers_over(c.obj, [(c.a, c.b)], base="AB"),
        V,
        "^base",
        True,
    ),
    # roughness -------------------------------------------------------------------------
    (
        "roughness n_directions=1",
        lambda c: roughness_index(c.obj, n_directions=1),
        V,
        "^n_directions",
        True,
    ),
    (
        "roughness n_directions=2.0",
        lambda c: roughness_index(c.obj, n_directions=2.0),
        T,
        "^n_directions",
        True,
    ),
    ("roughness n_points=1", lambda c: roughness_index(c.obj, n_points=1), V, "^n_points", True),
    ("roughness radius<0", lambda c: roughness_index(c.obj, radius=-1), V, "^radius", True),
    ("roughness radius=0", lambda c: roughness_index(c.obj, radius=0), V, "^radius", True),
    ("roughness radius nan", lambda c: roughness_index(c.obj, radius=NAN), V, "^radius", True),
    ("roughness radius str", lambda c: roughness_index(c.obj, radius="0.1"), T, "^radius", True),
    ("roughness seed<0", lambda c: roughness_index(c.obj, seed=-1), V, "^seed", True),
    ("roughness seed float", lambda c: roughness_index(c.obj, seed=0.5), T, "^seed", True),
    ("roughness norm", lambda c: roughness_index(c.obj, norm="batch"), V, "^norm", True),
    (
        "roughness confidence",
        lambda c: roughness_index(c.obj, confidence=1.5),
        V,
        "^confidence",
        True,
    ),
    (
        "roughness confidence 0",
        lambda c: roughness_index(c.obj, confidence=0),
        V,
        "^confidence",
        True,
    ),
    (
        "roughness n_bootstrap",
        lambda c: roughness_index(c.obj, n_bootstrap=0),
        V,
        "^n_bootstrap",
        True,
    ),
    ("roughness at", lambda c: roughness_index(c.obj, at=5), T, "^at", True),
    ("roughness kw", lambda c: roughness_index(c.obj, directions=3), T, "directions", True),
    ("roughness bn", lambda c: roughness_index(c.obj, bn="recompute"), V, "^bn=", True),
    ("roughness obj", lambda c: roughness_index(c.m), T, "^obj", True),
    ("roughness_along int", lambda c: roughness_along(c.obj, 5), T, "^checkpoints", True),
    ("roughness_along model", lambda c: roughness_along(c.obj, c.a), T, "^checkpoints", True),
    (
        "roughness_along state",
        lambda c: roughness_along(c.obj, c.a.state_dict()),
        T,
        "^checkpoints",
        True,
    ),
    ("roughness_along []", lambda c: roughness_along(c.obj, []), V, "^checkpoints is empty", True),
    (
        "roughness_along bad checkpoint",
        lambda c: roughness_along(c.obj, [c.a, nn.Linear(2, 2)], n_directions=2),
        C,
        r"^checkpoints\[1\]",
        True,
    ),
    (
        "roughness_along n_points",
        lambda c: roughness_along(c.obj, [c.a], n_points=0),
        V,
        "^n_points",
        True,
    ),
    # directions ------------------------------------------------------------------------
    ("random_directions n=0", lambda c: random_directions(c.m, 0), V, r"^n must", True),
    ("random_directions n=1.5", lambda c: random_directions(c.m, 1.5), T, r"^n must", True),
    ("random_directions norm", lambda c: random_directions(c.m, norm="x"), V, "^norm", True),
    (
        "random_directions ignore",
        lambda c: random_directions(c.m, ignore="bias"),
        V,
        "^ignore",
        True,
    ),
    ("random_directions seed", lambda c: random_directions(c.m, seed="a"), T, "^seed", True),
    ("random_directions obj", lambda c: random_directions(5), T, "^obj_or_weights", True),
    (
        "random_directions NaN weights",
        lambda c: random_directions({"w": torch.full((2, 2), NAN)}),
        V,
        "^obj_or_weights holds NaN",
        True,
    ),
    (
        "random_directions no elements",
        lambda c: random_directions({"w": torch.zeros(0, 3)}),
        V,
        "^obj_or_weights has no parameters",
        True,
    ),
    ("pca too few", lambda c: pca_directions([c.a, c.b], 2), V, "^trajectory", True),
    ("pca same point", lambda c: pca_directions([c.a, c.a, c.a], 1), V, "^trajectory: all", True),
    (
        "pca 1-D trajectory, n=2",
        lambda c: pca_directions(
            [
                c.a.state_dict(),
                c.b.state_dict(),
                {k: 2 * v - c.a.state_dict()[k] for k, v in c.b.state_dict().items()},
            ],
            2,
        ),
        V,
        "^trajectory: the checkpoints span fewer than 2",
        True,
    ),
    ("pca n=0", lambda c: pca_directions([c.a, c.b, c.m], 0), V, r"^n must", True),
    ("pca center=7", lambda c: pca_directions([c.a, c.b, c.m], 1, center=7), V, "^center", True),
    (
        "pca center='middle'",
        lambda c: pca_directions([c.a, c.b, c.m], 1, center="x"),
        V,
        "^center",
        True,
    ),
    (
        "pca center=True",
        lambda c: pca_directions([c.a, c.b, c.m], 1, center=True),
        V,
        "^center",
        True,
    ),
    ("pca trajectory model", lambda c: pca_directions(c.a, 1), T, "^trajectory", True),
    ("pca trajectory state", lambda c: pca_directions(c.a.state_dict(), 1), T, "^trajectory", True),
    (
        "pca mismatch",
        lambda c: pca_directions([c.a, c.b, nn.Linear(2, 2)], 1),
        C,
        "^checkpoint 2",
        True,
    ),
    (
        "pca NaN checkpoint",
        lambda c: pca_directions([c.a, c.b, {k: v * NAN for k, v in c.m.state_dict().items()}], 1),
        V,
        "checkpoint 2: NaN",
        True,
    ),
    (
        "plane names",
        lambda c: plane_through(c.a, c.b, c.m, names=("a", "a", "c")),
        V,
        "^names",
        True,
    ),
    ("plane names str", lambda c: plane_through(c.a, c.b, c.m, names="abc"), V, "^names", True),
    ("plane same", lambda c: plane_through(c.a, c.a, c.m), V, "a and b are the same point", True),
    ("plane c type", lambda c: plane_through(c.a, c.b, 5), T, "^c:", True),
    (
        "plane b mismatch",
        lambda c: plane_through(c.a, nn.Linear(2, 2), c.m),
        C,
        "^b has different",
        True,
    ),
    ("model_direction b", lambda c: model_direction(c.a, 5), T, "^b:", True),
    ("model_direction a", lambda c: model_direction(None, c.b), T, "^a:", True),
    (
        "model_direction mismatch",
        lambda c: model_direction(c.a, nn.Linear(2, 2)),
        C,
        "^a and b",
        True,
    ),
    ("eigen_directions obj", lambda c: eigen_directions(c.m, 2), T, "^obj", True),
    ("eigen_directions n=0", lambda c: eigen_directions(c.obj, 0), V, r"^n must", True),
    ("eigen_directions n=P+1", lambda c: eigen_directions(c.obj, c.P + 1), V, r"^n must", True),
    ("eigen_directions n='2'", lambda c: eigen_directions(c.obj, "2"), T, r"^n must", True),
]


@pytest.mark.parametrize(
    "call,exc,match,before_work", [p[1:] for p in PROBES], ids=[p[0] for p in PROBES]
)
def test_bad_argument_is_a_clear_error(c, call, exc, match, before_work):
    snap, bn_snap = snapshot(c.m), snapshot(c.bn_m)
    n0 = CALLS[0]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(exc, match=match) as info:
            call(c)
    assert isinstance(info.value, LossvizError)  # one base class for every input error
    if before_work:
        assert CALLS[0] == n0, "a forward pass ran before the argument was checked"
    assert_unchanged(c.m, snap)
    assert_unchanged(c.bn_m, bn_snap)


def test_enough_probes():
    assert len(PROBES) >= 100
    assert len({p[0] for p in PROBES}) == len(PROBES)


# non-finite values -------------------------------------------------------------------------
class Scalar(nn.Module):
    def __init__(self, w=0.0):
        super().__init__()
        self.w = nn.Parameter(torch.tensor([w], dtype=torch.float64))


def _pt(w):
    return {"w": torch.tensor([w], dtype=torch.float64)}


def _pole_obj():
    """L(w) = 1/(w-1)²: +inf at w = 1 (α = ½ between w = 0 and w = 2)."""
    return lv.Objective(
        Scalar(), forward=lambda m, b: 1.0 / (m.w[0] - 1.0) ** 2, data=(torch.zeros(1),)
    )


def test_infinite_loss_on_the_path_makes_the_barrier_infinite_and_says_where():
    obj = _pole_obj()
    with pytest.warns(UserWarning, match=r"not finite .*α=0\.5 \(inf\)"):
        r = interpolate(obj, _pt(0), _pt(2), n=5)
    assert r.loss[0] == obj.loss(_pt(0)) == 1.0 and r.loss[-1] == obj.loss(_pt(2)) == 1.0
    assert r.loss[2] == np.inf  # kept as inf, not turned into NaN and skipped
    assert r.barrier() == np.inf and r.barrier("loss", "mean") == np.inf
    assert r.barrier_alpha() == 0.5
    assert r.nonfinite("loss") == {0.5: np.inf}
    assert "NOT FINITE at α = 0.5 (inf)" in repr(r) and "inf" in r._repr_html_()
    with pytest.warns(UserWarning, match=r"α=0\.5"):
        assert barrier(obj, _pt(0), _pt(2), n=5) == np.inf
    fig = r.plot()  # draws the curve with its infinite point, and no barrier marker
    assert "barrier (linear)" not in {t.name for t in fig.data}
    path = [t for t in fig.data if t.name == "path"][0]
    np.testing.assert_array_equal(path.y, r.loss)


def test_nan_on_the_path_makes_the_barrier_nan():
    # log(w - 0.3): NaN for w < 0.3 (α = 0.25 between w = 1 and w = -1 is w = 0.5; α = ½ is 0)
    obj = lv.Objective(
        Scalar(), forward=lambda m, b: torch.log(m.w[0] - 0.3), data=(torch.zeros(1),)
    )
    with pytest.warns(UserWarning, match=r"not finite at 3 of 5 .*α=0\.5 \(nan\)"):
        r = interpolate(obj, _pt(1), _pt(2 - 3), n=5)
    assert np.isnan(r.barrier()) and np.isnan(r.barrier("loss", "mean"))
    assert r.barrier_alpha() == 0.5
    # a NaN endpoint too: never a finite barrier
    with pytest.warns(UserWarning):
        assert np.isnan(barrier(obj, _pt(1), _pt(0), n=3))


def test_barrier_matrix_and_layerwise_with_non_finite_losses():
    obj = _pole_obj()
    pts = {"A": _pt(0), "B": _pt(2), "C": _pt(0.5)}
    with pytest.warns(UserWarning, match=r"A–B at α = 0\.5 \(inf\)"):
        M = barrier_matrix(obj, pts, n=5)
    assert M.values[0, 1] == M.values[1, 0] == np.inf
    for i, j in ((0, 2), (1, 2)):  # finite paths: the direct barrier
        al = np.linspace(0, 1, 5)
        wi, wj = float(pts[M.names[i]]["w"]), float(pts[M.names[j]]["w"])
        f = np.array([obj.loss(_pt((1 - t) * wi + t * wj)) for t in al])
        assert M.values[i, j] == pytest.approx(max(f - ((1 - al) * f[0] + al * f[-1])), abs=1e-12)
    assert "inf" in repr(M)

    class Two(nn.Module):
        def __init__(self, u, v):
            super().__init__()
            self.p = Scalar(u)
            self.q = Scalar(v)

    def two(u, v):
        return {
            "p.w": torch.tensor([u], dtype=torch.float64),
            "q.w": torch.tensor([v], dtype=torch.float64),
        }

    lobj = lv.Objective(
        Two(0, 0),
        forward=lambda m, b: 1 / (m.p.w[0] - 1) ** 2 + m.q.w[0] ** 2,
        data=(torch.zeros(1),),
    )
    with pytest.warns(UserWarning, match=r"block 'p' averaged in base A \(inf\)"):
        lw = layerwise_barriers(lobj, two(0, 0), two(2, 2))
    ref = 0.5 * (lobj.loss(two(0, 0)) + lobj.loss(two(2, 2)))
    assert lw.table["p"]["A"] == np.inf and lw.full == np.inf
    assert lw.table["q"]["A"] == pytest.approx(lobj.loss(two(0, 1)) - ref, abs=1e-12)
    assert lw.complete


def test_slices_and_surfaces_report_non_finite_points():
    obj = lv.Objective(Scalar(), forward=lambda m, b: 1.0 / m.w[0] ** 2, data=(torch.zeros(1),))
    d = {"w": torch.tensor([1.0], dtype=torch.float64)}
    with pytest.warns(UserWarning, match=r"t=-1 \(inf\)"):
        s = line(obj, _pt(1), d, span=(-2, 0), n=3)  # w = -1, 0, 1
    assert s.loss.tolist() == [1.0, np.inf, 1.0]  # inf kept, not NaN
    assert s.nonfinite().tolist() == [-1.0] and s.n_evaluated == 3
    assert "NOT FINITE at 1 point(s): t=-1 (inf)" in repr(s) and "max inf" in repr(s)
    assert "<td>1</td>" in s._repr_html_()  # the "not finite" column

    obj2 = lv.Objective(
        Scalar(), forward=lambda m, b: torch.log(m.w[0]) + 0 * m.w.sum(), data=(torch.zeros(1),)
    )
    dd = [
        {"w": torch.tensor([1.0], dtype=torch.float64)},
        {"w": torch.tensor([0.5], dtype=torch.float64)},
    ]
    with pytest.warns(UserWarning, match="not finite"):
        sf = surface(obj2, _pt(1), dd, n=(3, 3), span=((-2, 0), (-1, 1)))
    bad = sf.nonfinite()
    assert len(bad) == int((~np.isfinite(sf.loss)).sum()) > 0
    assert "NOT FINITE" in repr(sf) and sf.n_evaluated == 9


def test_roughness_with_non_finite_slices_is_nan():
    class W(nn.Module):
        def __init__(self):
            super().__init__()
            self.W = nn.Parameter(torch.full((1, 1), 0.05, dtype=torch.float64))

    obj = lv.Objective(W(), forward=lambda m, b: torch.log(m.W[0, 0]), data=(torch.zeros(1),))
    # |d| = |W| = 0.05: at t = ±2 one end of every slice is W = -0.05, log < 0 is NaN
    with pytest.warns(UserWarning, match=r"not finite on 6 of 6 slices"):
        r = roughness_index(obj, n_directions=6, n_points=5, radius=2.0, progress=False)
    assert r.nonfinite.tolist() == list(range(6))
    assert np.isnan(r.value) and np.isnan(r.ci[0])
    assert "NOT FINITE" in repr(r)


# Ctrl-C ---------------------------------------------------------------------------------
def _interrupting(after, seed=0, data=None):
    """An Objective whose forward raises KeyboardInterrupt at its ``after+1``-th call once
    armed (after the check when it is built)."""
    x, y = _xy()
    state = {"calls": 0, "armed": False}
    model = Counting(seed)

    def fwd(m, batch):
        if state["armed"]:
            state["calls"] += 1
            if state["calls"] > after:
                raise KeyboardInterrupt
        return F.cross_entropy(m(batch[0]), batch[1])

    obj = lv.Objective(model, forward=fwd, data=(x, y) if data is None else data)
    state["armed"] = True
    plain = lv.Objective(model, F.cross_entropy, (x, y) if data is None else data)
    return obj, plain, state, model


def _lerp(a, b, t):
    sa, sb = a.state_dict(), b.state_dict()
    return {k: torch.lerp(v, sb[k], float(t)) for k, v in sa.items()}


ONE = {"batched": False, "chunk_size": 1, "progress": False}


def test_interrupted_barrier_matrix_is_nan_where_not_evaluated_never_zero():
    obj, plain, state, model = _interrupting(after=6)
    snap = snapshot(model)
    a, b, c3 = Counting(1), Counting(2), Counting(3)
    with pytest.warns(UserWarning, match="interrupted"):
        M = barrier_matrix(obj, [a, b, c3], n=5, **ONE)
    assert state["calls"] == 7  # 3 endpoints + pair (0, 1); nothing ran after Ctrl-C
    assert not M.complete and "INCOMPLETE" in repr(M)
    al = np.linspace(0, 1, 5)
    f = np.array([plain.loss(_lerp(a, b, t)) for t in al])
    assert M.values[0, 1] == pytest.approx(max(f - ((1 - al) * f[0] + al * f[-1])), abs=1e-12)
    assert np.isnan(M.values[0, 2]) and np.isnan(M.values[1, 2]) and np.isnan(M.values[2, 1])
    assert M.endpoint_values == pytest.approx([plain.loss(a), plain.loss(b), plain.loss(c3)])
    assert "incomplete" in M._repr_html_()
    fig = M.plot()
    assert fig.layout.title.text.endswith(" (incomplete)")
    np.testing.assert_array_equal(np.asarray(fig.data[0].z, dtype=float), M.values)
    assert_unchanged(model, snap)


def test_interrupted_interpolate_is_incomplete_and_its_barrier_nan():
    obj, plain, state, model = _interrupting(after=2)
    snap = snapshot(model)
    a, b = Counting(1), Counting(2)
    with pytest.warns(UserWarning, match="interrupted"):
        r = interpolate(obj, a, b, n=5, **ONE)
    assert not r.complete and state["calls"] == 3
    assert r.loss[:2] == pytest.approx([plain.loss(a), plain.loss(_lerp(a, b, 0.25))], abs=1e-12)
    assert np.isnan(r.loss[2:]).all()
    assert np.isnan(r.barrier()) and np.isnan(r.barrier("loss", "mean"))
    assert np.isnan(r.barrier_alpha()) and "INCOMPLETE (2 of 5 α)" in repr(r)
    assert r.evaluated.tolist() == [True, True, False, False, False] and r.nonfinite() == {}
    assert "incomplete" in r._repr_html_()
    fig = r.plot()  # the evaluated α drawn, NaN (gaps) after; no barrier marker
    assert fig.layout.title.text.endswith(" (incomplete)")
    assert "barrier (linear)" not in {t.name for t in fig.data}
    path = [t for t in fig.data if t.name == "path"][0]
    np.testing.assert_array_equal(np.asarray(path.y, dtype=float), r.loss)
    # barrier() returns one number: the interrupt propagates instead
    obj2, _, state2, _ = _interrupting(after=2)
    with pytest.raises(KeyboardInterrupt):
        barrier(obj2, a, b, n=5, **ONE)
    assert state2["calls"] == 3
    assert_unchanged(model, snap)


def test_interrupted_layerwise_barriers():
    obj, plain, state, model = _interrupting(after=3)
    a, b = Counting(1), Counting(2)
    with pytest.warns(UserWarning, match="interrupted"):
        lw = layerwise_barriers(obj, a, b, **ONE)
    assert state["calls"] == 4 and not lw.complete and "INCOMPLETE" in repr(lw)
    ref = 0.5 * (plain.loss(a) + plain.loss(b))
    mid = {k: 0.5 * (v + b.state_dict()[k]) for k, v in a.state_dict().items()}
    assert lw.full == pytest.approx(plain.loss(mid) - ref, abs=1e-12)
    assert all(np.isnan(v) for row in lw.barriers.values() for v in row.values())
    assert "incomplete" in lw._repr_html_()
    z = np.asarray(lw.plot().data[0].z, dtype=float)  # bases × (groups, all layers)
    assert np.isnan(z[:, :-1]).all() and z[:, -1] == pytest.approx([lw.full] * len(z))

    obj, plain, state, _ = _interrupting(after=7)  # per pair: A, B, full, 2 groups × 2 bases
    with pytest.warns(UserWarning, match="interrupted"):
        over = layerwise_barriers_over(obj, {"e1": (a, b), "e2": (b, Counting(3))}, **ONE)
    assert state["calls"] == 8 and not over.complete
    assert over.results[0].complete and not over.results[1].complete
    single = layerwise_barriers(plain, a, b, progress=False)
    assert over.matrix("A")[0] == pytest.approx([single.table[g]["A"] for g in single.groups])
    assert np.isnan(over.matrix("A")[1]).all() and np.isnan(over.full[1])
    assert "INCOMPLETE" in repr(over) and "<table>" in over._repr_html_()
    z = np.asarray(over.plot().data[0].z, dtype=float)
    assert z[0] == pytest.approx([*over.matrix("A")[0], over.full[0]]) and np.isnan(z[1]).all()


def test_interrupted_roughness_along_stops_at_the_interrupted_checkpoint():
    obj, plain, state, model = _interrupting(after=8)  # 6 points per checkpoint
    snap = snapshot(model)
    cks = [Counting(1), Counting(2), Counting(3)]
    kw = {"n_directions": 2, "n_points": 3, "radius": 0.5, **ONE}
    with pytest.warns(UserWarning, match="interrupted"):
        r = roughness_along(obj, cks, **kw)
    assert state["calls"] == 9  # nothing carried on after the interrupt
    assert not r.complete and r.results[2] is None and not r.results[1].complete
    assert np.isnan(r.values[1:]).all() and np.isfinite(r.values[0])
    assert r.results[0].slices == pytest.approx(
        roughness_index(plain, cks[0], **kw).slices, abs=1e-12
    )
    assert "not evaluated" in repr(r) and "INCOMPLETE" in repr(r)
    assert "not evaluated" in r._repr_html_()
    fig = r.plot()
    np.testing.assert_array_equal(np.asarray(fig.data[0].y, dtype=float), r.values)
    assert_unchanged(model, snap)


def test_interrupt_inside_another_lossviz_call_propagates():
    obj, _, state, model = _interrupting(after=2)
    snap = snapshot(model)

    @api
    def outer():
        return surface(obj, n=(3, 3), **ONE)

    with pytest.raises(KeyboardInterrupt):
        outer()
    assert state["calls"] == 3
    # at the top level the same call keeps what it has
    state["calls"] = 0
    with pytest.warns(UserWarning, match="interrupted"):
        s = surface(obj, n=(3, 3), **ONE)
    assert not s.complete and s.n_evaluated == 2 and np.isnan(s.loss).sum() == 7
    with pytest.warns(UserWarning, match="interrupted"):
        e = evaluate(obj, [model, model, model], **{k: v for k, v in ONE.items()})
    assert not e.complete and e.evaluated.tolist() == [False, False, False]
    assert_unchanged(model, snap)


def test_interrupted_roughness_index_is_nan():
    obj, _, state, _ = _interrupting(after=4)
    with pytest.warns(UserWarning, match="interrupted"):
        r = roughness_index(obj, n_directions=3, n_points=3, **ONE)
    assert not r.complete and np.isnan(r.value) and state["calls"] == 5
    assert "INCOMPLETE" in repr(r)


# metrics that do not apply -------------------------------------------------------------
def _regression():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(20, 3, generator=g, dtype=torch.float64)
    y = torch.randn(20, 1, generator=g, dtype=torch.float64)
    torch.manual_seed(0)
    return nn.Linear(3, 1).double(), x, y


def test_accuracy_of_a_regression_is_refused_or_left_out():
    m, x, y = _regression()
    obj = lv.Objective(m, F.mse_loss, (x, y))
    a, b = nn.Linear(3, 1).double(), nn.Linear(3, 1).double()
    with pytest.warns(UserWarning, match=r"'accuracy' \(a default metric\) is left out"):
        r = interpolate(obj, a, b, n=3)
    assert list(r.values) == ["loss"]
    assert r.loss[-1] == pytest.approx(obj.loss(b), abs=1e-12)
    for call in (
        lambda: interpolate(obj, a, b, n=3, metrics=("loss", "accuracy")),
        lambda: surface(obj, n=3, metrics=("accuracy",)),
        lambda: line(obj, n=3, metrics=("loss", "error")),
        lambda: evaluate(obj, [a], metrics=("accuracy",)),
        lambda: barrier(obj, a, b, metric="accuracy"),
        lambda: barrier_matrix(obj, [a, b], metric="error"),
        lambda: layerwise_barriers(obj, a, b, metric="accuracy"),
    ):
        with pytest.raises(LossvizError, match=r"'(accuracy|error)' does not apply.*\(20, 1\)"):
            call()


def _direct_outputs(model, state, x):
    mm = copy.deepcopy(model)
    mm.load_state_dict(state)
    with torch.no_grad():
        return mm.eval()(x)


@pytest.mark.parametrize("case", ["logits_float01", "probabilities", "n1_int_labels", "onehot"])
def test_accuracy_rules_against_direct_counts(case):
    g = torch.Generator().manual_seed(1)
    x = torch.randn(30, 4, generator=g, dtype=torch.float64)
    torch.manual_seed(1)
    if case == "onehot":
        m = nn.Linear(4, 3).double()
        lab = torch.randint(0, 3, (30,), generator=g)
        y = F.one_hot(lab, 3).double()
        loss = F.cross_entropy

        def direct(out):
            return (out.argmax(1) == lab).double().mean()
    elif case == "probabilities":
        m = nn.Sequential(nn.Linear(4, 1), nn.Sigmoid()).double()
        y = torch.randint(0, 2, (30, 1), generator=g).double()
        loss = F.binary_cross_entropy

        def direct(out):
            return ((out > 0.5) == (y > 0.5)).double().mean()
    elif case == "n1_int_labels":
        m = nn.Linear(4, 1).double()
        y = torch.randint(0, 2, (30,), generator=g)

        def loss(out, t):
            return F.binary_cross_entropy_with_logits(out[:, 0], t.double())

        def direct(out):
            return ((out[:, 0] > 0) == (y == 1)).double().mean()
    else:
        m = nn.Linear(4, 1).double()
        y = torch.randint(0, 2, (30, 1), generator=g).double()
        loss = F.binary_cross_entropy_with_logits

        def direct(out):
            return ((out > 0) == (y > 0.5)).double().mean()

    obj = lv.Objective(m, loss, (x, y))
    flat, _ = obj.resolve()
    pts = torch.stack([flat, flat + 0.3 * torch.randn(flat.shape, generator=g, dtype=flat.dtype)])
    r = evaluate(obj, pts, metrics=("accuracy", "error"), progress=False)
    for i in range(2):
        st = {k: v for k, v in obj.layout.to_weights(pts[i]).items()}
        want = float(direct(_direct_outputs(m, st, x)))
        assert r["accuracy"][i] == pytest.approx(want, abs=1e-12)
        assert r["error"][i] == pytest.approx(1 - want, abs=1e-12)
    assert 0 < r["accuracy"][0] < 1 or case == "onehot"


def test_accuracy_leaves_out_ignored_labels_and_refuses_multilabel():
    g = torch.Generator().manual_seed(2)
    x = torch.randn(30, 4, generator=g, dtype=torch.float64)
    y = torch.randint(0, 3, (30,), generator=g)
    y[::3] = -100
    torch.manual_seed(2)
    m = nn.Linear(4, 3).double()
    obj = lv.Objective(m, nn.CrossEntropyLoss(ignore_index=-100), (x, y))
    acc = evaluate(obj, [m], metrics=("accuracy",), progress=False)["accuracy"][0]
    with torch.no_grad():
        keep = y != -100
        want = float((m(x).argmax(1)[keep] == y[keep]).double().mean())
    assert acc == pytest.approx(want, abs=1e-12)

    ml = torch.randint(0, 2, (30, 3), generator=g).double()  # multi-label 0/1 rows
    ml[0] = torch.tensor([1.0, 1.0, 0.0])
    mobj = lv.Objective(m, F.binary_cross_entropy_with_logits, (x, ml))
    with pytest.raises(LossvizError, match="accuracy.*multi-label"):
        evaluate(mobj, [m], metrics=("accuracy",))


# integer buffers -----------------------------------------------------------------------
class Scaled(nn.Module):
    """A forward that uses an integer buffer (and a float buffer)."""

    def __init__(self, seed, k, s):
        super().__init__()
        torch.manual_seed(seed)
        self.fc = nn.Linear(5, 3).double()
        self.register_buffer("k", torch.tensor(k))
        self.register_buffer("s", torch.tensor(s, dtype=torch.float64))

    def forward(self, x):
        return self.fc(x) * self.k * self.s


def _state(a, b, t, k_from):
    sa, sb = a.state_dict(), b.state_dict()
    st = {k: torch.lerp(v, sb[k], t) for k, v in sa.items() if v.is_floating_point()}
    st["k"] = k_from.state_dict()["k"]
    return st


def test_integer_buffers_endpoints_are_exact_and_interior_takes_the_nearest():
    x, y = _xy()
    model = Scaled(0, 1, 1.0)
    snap = snapshot(model)
    obj = lv.Objective(model, F.cross_entropy, [(x[:10], y[:10]), (x[10:], y[10:])])
    a, b = Scaled(1, 1, 1.0), Scaled(2, 3, 2.0)
    la, lb = obj.loss(a), obj.loss(b)
    r = interpolate(obj, a, b, n=5, progress=False)
    assert r.loss[0] == pytest.approx(la, abs=1e-12) and r.loss[-1] == pytest.approx(lb, abs=1e-12)
    for i, t in enumerate(r.alphas[1:-1], 1):
        want = obj.loss(_state(a, b, t, a if t <= 0.5 else b))
        assert r.loss[i] == pytest.approx(want, abs=1e-12)
    assert r.barrier() == pytest.approx(
        max(r.loss - ((1 - r.alphas) * la + r.alphas * lb)), abs=1e-12
    )
    M = barrier_matrix(obj, [a, b], n=5, progress=False)
    assert M.endpoint_values == pytest.approx([la, lb], abs=1e-12)
    assert M.values[0, 1] == pytest.approx(r.barrier(), abs=1e-12)
    lw = layerwise_barriers(obj, a, b, progress=False)
    assert lw.endpoint_values == pytest.approx((la, lb), abs=1e-12)
    ref = 0.5 * (la + lb)
    assert lw.full == pytest.approx(obj.loss(_state(a, b, 0.5, a)) - ref, abs=1e-12)
    # base B keeps B's buffers (k = 3) with block fc averaged = the full average's params
    assert lw.table["fc"]["B"] == pytest.approx(
        obj.loss({**_state(a, b, 0.5, b), "s": b.s}) - ref, abs=1e-12
    )
    assert_unchanged(model, snap)


def test_num_batches_tracked_differs_between_endpoints():
    x, y = _xy()
    model = _bn_model(0)
    obj = lv.Objective(model, F.cross_entropy, (x, y))
    a, b = _bn_model(1), _bn_model(2)
    b[1].num_batches_tracked.fill_(7)
    r = interpolate(obj, a, b, n=3, progress=False, metrics=("loss",))
    assert r.loss[0] == pytest.approx(obj.loss(a), abs=1e-12)
    assert r.loss[-1] == pytest.approx(obj.loss(b), abs=1e-12)
    rr = interpolate(obj, a, b, n=3, bn="recompute", progress=False, metrics=("loss",))
    assert np.isfinite(rr.loss).all() and rr.complete


# reduction="sum" --------------------------------------------------------------------
def test_summed_loss_is_the_sum_over_batches():
    x, y = _xy(n=27)
    data = [(x[:7], y[:7]), (x[7:20], y[7:20]), (x[20:], y[20:])]
    model = Counting(0)
    obj = lv.Objective(model, nn.CrossEntropyLoss(reduction="sum"), data)
    assert obj.reduction == "sum"
    a, b = Counting(1), Counting(2)
    r = evaluate(obj, [a, b], metrics=("loss", "accuracy"), progress=False)
    for i, mm in enumerate((a, b)):
        with torch.no_grad():
            want = sum(float(F.cross_entropy(mm(xb), yb, reduction="sum")) for xb, yb in data)
            acc = float((mm(x).argmax(1) == y).double().mean())  # accuracy: a sample mean
        assert r["loss"][i] == pytest.approx(want, rel=1e-12)
        assert r["accuracy"][i] == pytest.approx(acc, abs=1e-12)
    p = interpolate(obj, a, b, n=3, progress=False)
    assert p.loss[0] == pytest.approx(r["loss"][0], rel=1e-12)
    assert p.loss[-1] == pytest.approx(r["loss"][1], rel=1e-12)
    s = line(obj, a, random_directions(obj, 1)[0], n=3, progress=False)
    assert s.loss[1] == pytest.approx(r["loss"][0], rel=1e-12)


# zero-size parameters and zero-norm filters --------------------------------------------
class WithEmpty(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.fc = nn.Linear(4, 3).double()
        self.empty = nn.Parameter(torch.zeros(0, 5, dtype=torch.float64))
        self.norows = nn.Parameter(torch.zeros(3, 0, dtype=torch.float64))

    def forward(self, x):
        return self.fc(x) + self.empty.sum() + self.norows.sum()


def test_zero_size_parameters_get_empty_directions():
    m = WithEmpty()
    for norm in ("filter", "layer", "none"):
        for ignore in ("biasbn", None):
            (d,) = random_directions(m, 1, norm=norm, ignore=ignore)
            assert d["empty"].shape == (0, 5) and d["norows"].shape == (3, 0)
    (d,) = random_directions(m, 1)
    torch.testing.assert_close(d["fc.weight"].norm(dim=1), m.fc.weight.detach().norm(dim=1))
    traj = [
        {
            k: v + 0.1 * i * (k == "fc.weight") * torch.randn_like(v)
            for k, v in m.state_dict().items()
        }
        for i in range(4)
    ]
    pca = pca_directions(traj, 2)
    assert pca.directions[0]["empty"].shape == (0, 5)
    x = torch.randn(8, 4, dtype=torch.float64)
    y = torch.randint(0, 3, (8,))
    obj = lv.Objective(m, F.cross_entropy, (x, y), params=["fc.weight", "fc.bias", "empty"])
    s = surface(obj, n=(3, 3), progress=False)
    assert s.loss[1, 1] == pytest.approx(obj.loss(), abs=1e-12)
    assert np.isfinite(roughness_index(obj, n_directions=3, n_points=3, progress=False).value)


def test_zero_norm_filters_get_zero_directions():
    m = nn.Linear(4, 3).double()
    with torch.no_grad():
        m.weight[1].zero_()
    (d,) = random_directions(m, 1, seed=3)
    assert torch.count_nonzero(d["weight"][1]) == 0
    torch.testing.assert_close(d["weight"].norm(dim=1), m.weight.detach().norm(dim=1))
    z = nn.Linear(4, 3).double()
    with torch.no_grad():
        z.weight.zero_()
    for norm in ("filter", "layer"):
        (dz,) = random_directions(z, 1, norm=norm, ignore=None)
        assert torch.isfinite(dz.flatten()).all() and torch.count_nonzero(dz["weight"]) == 0


def test_barrier_takes_one_metric_not_metrics():
    obj = _pole_obj()
    with pytest.raises(TypeError, match="one metric=, not metrics="):
        barrier(obj, _pt(0), _pt(0.5), metrics=("loss",))
