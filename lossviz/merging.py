"""Merging weights: averages, Fisher merging, task arithmetic, greedy soups, variance.

- uniform soup (Wortsman et al. 2022, "Model soups"): ``θ = (1/k) Σ_i θ_i``;
- weighted: ``θ = Σ_i w_i θ_i / Σ_i w_i``;
- Fisher merging (Matena & Raffel 2022): ``θ = Σ_i λ_i F_i ⊙ θ_i / Σ_i λ_i F_i`` with ``F_i``
  the diagonal empirical Fisher ``mean_n (∇_θ ℓ(x_n, y_n; θ_i))²`` (per-sample gradients with
  ``torch.func``);
- task arithmetic (Ilharco et al. 2023): ``θ = θ0 + λ Σ_i (θ_i - θ0)``;
- the variance of averaged weights (Tian et al. 2024, "vanishing variance") and of the
  averaged network's activations (Jordan et al. 2023, REPAIR's "variance collapse").
"""

from __future__ import annotations

import math
import time
import warnings
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor, nn

from . import validate
from .deprecation import renamed
from .errors import ArgumentTypeError, CheckpointError, LossvizError
from .interrupt import api
from .objective import Objective, call_model, reparametrized
from .points import as_points
from .provenance import Provenance
from .results import DataResult
from .weights import Weights, state_of

_METHODS = ("uniform", "weighted", "fisher", "task_arithmetic")


def _named(points, name: str = "points", **kw) -> tuple[list, list[dict]]:
    """``(names, state dicts)`` of a list, a mapping name -> point or a TrajectoryRecorder.

    See :func:`lossviz.points.as_points`; ``kw``: its ``at_least`` and ``what``.
    """
    names, pts, _ = as_points(points, name, **kw)
    return names, [state_of(p, f"{name}[{nm!r}]") for nm, p in zip(names, pts)]


def _labels(names: list, name: str = "points") -> list[str]:
    return [f"{name}[{nm!r}]" for nm in names]


def check_compatible(states: list[dict], labels: list[str], *, integers: bool = False) -> None:
    """Check that state dicts can be combined entry by entry (averaged, merged).

    Every state dict must have the keys and shapes of the first one (a different
    architecture is a :class:`~lossviz.errors.CheckpointError` listing the keys only in
    one of them and the shape mismatches); with ``integers=True`` their non-floating
    tensors must also be equal, as they cannot be averaged (``num_batches_tracked``
    counters excepted: combiners take the first point's).

    Args:
        states: the state dicts, ``name -> tensor``.
        labels: their names, used in the error messages.
        integers: also require equal non-floating tensors.

    Raises:
        CheckpointError: a key or a shape differs from the first state dict's.
        LossvizError: with ``integers=True``, a non-floating tensor differs.
    """
    ref, r = states[0], labels[0]
    for lab, st in zip(labels[1:], states[1:]):
        only_ref = [k for k in ref if k not in st]
        only_st = [k for k in st if k not in ref]
        shapes = [
            f"{k}: {tuple(ref[k].shape)} vs {tuple(st[k].shape)}"
            for k in ref
            if k in st and ref[k].shape != st[k].shape
        ]
        if only_ref or only_st or shapes:
            parts = [f"keys only in {r}: {only_ref[:10]}"] if only_ref else []
            parts += [f"keys only in {lab}: {only_st[:10]}"] if only_st else []
            parts += [f"shape mismatches: {shapes[:10]}"] if shapes else []
            raise CheckpointError(
                f"{lab} does not match {r} (a different architecture?): " + "; ".join(parts)
            )
    if integers:
        _check_integers(states, labels)


def _floating(t: Tensor) -> bool:
    return t.is_floating_point() or t.is_complex()


def _check_integers(states: list[dict], labels: list[str]) -> None:
    """Non-floating tensors cannot be averaged: they must agree.

    ``num_batches_tracked`` counters are excepted (taken from the first point).
    """
    ref = states[0]
    for key, v0 in ref.items():
        if _floating(v0) or key.endswith("num_batches_tracked"):
            continue
        for lab, st in zip(labels[1:], states[1:]):
            if _floating(st[key]) or not torch.equal(st[key].to(v0.device), v0):
                raise LossvizError(
                    f"{key!r} is a non-floating tensor ({v0.dtype}) that differs between "
                    f"{labels[0]} and {lab}: it cannot be averaged"
                )


def _coeffs(weights, k: int, what: str, names: list, *, name: str = "weights") -> list[float]:
    """One finite number per point (a number is repeated)."""
    if isinstance(weights, Mapping):
        extra = [n for n in weights if n not in names]
        missing = [n for n in names if n not in weights]
        if extra or missing:
            raise LossvizError(
                f"{name}: keys must be the points' names; missing {missing[:10]}, unknown "
                f"{extra[:10]}"
            )
        weights = [weights[n] for n in names]
    if isinstance(weights, Tensor) or isinstance(weights, np.ndarray):
        if weights.ndim == 0:
            weights = weights.item()
        else:
            weights = weights.tolist()
    if not isinstance(weights, (list, tuple)):
        try:
            return [validate.number(weights, name)] * k
        except ArgumentTypeError:
            raise ArgumentTypeError(
                f"{name} must be a number or a list of {k} numbers (one per point), got "
                f"{type(weights).__name__}"
            ) from None
    if len(weights) != k:
        raise LossvizError(f"{name}: {len(weights)} weights for {k} points ({what})")
    return [validate.number(v, f"{name}[{i}]") for i, v in enumerate(weights)]


def _check_fisher_obj(obj, name: str = "obj") -> None:
    if not isinstance(obj, Objective):
        raise ArgumentTypeError(f"{name} must be an Objective, got {type(obj).__name__}")
    obj.require_local("the empirical Fisher / Fisher merging")
    if obj.forward is not None:
        raise LossvizError(
            "the empirical Fisher needs per-sample losses: build the "
            "Objective with loss_fn and (inputs, targets) batches, not forward="
        )


@api
def empirical_fisher(obj: Objective, at=None) -> Weights:
    """Diagonal empirical Fisher ``F = mean_n (∇_θ ℓ(x_n, y_n; θ))²`` over the Objective's samples.

    The per-sample gradients come from ``torch.func.vmap`` of ``torch.func.grad`` (one
    sample at a time for modules vmap cannot batch); the squares are summed in float64.
    This is the ``F_i`` of Fisher merging (Matena & Raffel 2022, "Merging Models with
    Fisher-Weighted Averaging").

    Args:
        obj: an :class:`~lossviz.Objective` built with ``loss_fn`` and
            ``(inputs, targets)`` tensor batches (not ``forward=``).
        at: the point (default: the model's weights).

    Returns:
        :class:`~lossviz.weights.Weights`: ``F`` for each of the Objective's varying
        parameters, in the parameters' dtypes.

    Raises:
        ArgumentTypeError: ``obj`` is not an Objective.
        LossvizError: ``obj`` was built with ``forward=`` (no per-sample losses).
        DataError: a batch of ``obj`` is not an ``(inputs, targets)`` pair of tensors.
        CheckpointError: ``at`` does not match the model (keys, shapes).

    With ``ℓ_n = (w·x_n - y_n)²`` at ``w = 0`` the gradients are ``-2·x_n·y_n``:

    >>> x, y = torch.tensor([[1.0], [2.0]]), torch.tensor([[1.0], [1.0]])
    >>> obj = Objective(nn.Linear(1, 1, bias=False), nn.functional.mse_loss, (x, y))
    >>> empirical_fisher(obj, at={"weight": torch.zeros(1, 1)})["weight"].tolist()
    [[10.0]]
    """
    _check_fisher_obj(obj)
    flat, fixed = obj.resolve(at, name="at")
    theta = obj.layout.unflatten(flat.detach())

    def one(params, x, y):
        return obj.batch_loss(params, fixed, (x[None], y[None]))

    g = torch.func.grad(one)
    total = {k: torch.zeros_like(v, dtype=torch.float64) for k, v in theta.items()}
    n = 0
    for i, (batch, nb) in enumerate(obj.batches()):
        x, y = validate.xy_batch(batch, i, "the empirical Fisher")
        try:
            gs = torch.func.vmap(g, in_dims=(None, 0, 0))(theta, x, y)
        except Exception:  # noqa: BLE001 - modules vmap cannot batch: one sample at a time
            gs = None
        if gs is None:
            for j in range(nb):
                gi = torch.func.grad(one)(theta, x[j], y[j])
                for k in total:
                    total[k] += gi[k].detach().to(torch.float64) ** 2
        else:
            for k in total:
                total[k] += (gs[k].detach().to(torch.float64) ** 2).sum(0)
        n += nb
    return Weights({k: (v / n).to(theta[k].dtype) for k, v in total.items()})


@api
def merge(
    points,
    *more,
    method: str = "uniform",
    weights=None,
    base=None,
    obj: Objective | None = None,
) -> Weights:
    """Merge checkpoints into one set of weights.

    The methods (sums in float64):

    - ``"uniform"``: ``(1/k) Σ_i θ_i``, the uniform soup (Wortsman et al. 2022, "Model
      soups: averaging weights of multiple fine-tuned models improves accuracy without
      increasing inference time");
    - ``"weighted"``: ``Σ_i w_i θ_i / Σ_i w_i`` (their sum not 0);
    - ``"fisher"``: ``Σ_i λ_i F_i ⊙ θ_i / Σ_i λ_i F_i`` with ``F_i`` the diagonal empirical
      Fisher of ``obj`` at ``θ_i`` (:func:`empirical_fisher`; Matena & Raffel 2022,
      "Merging Models with Fisher-Weighted Averaging"); where every ``F_i`` is 0 the
      weighted mean is used;
    - ``"task_arithmetic"``: ``θ0 + λ Σ_i (θ_i - θ0)`` with ``θ0 = base`` (Ilharco et al.
      2023, "Editing Models with Task Arithmetic"); a ``λ_i`` per task scales each
      ``θ_i - θ0``.

    Non-floating tensors must agree between the points, except integer
    ``num_batches_tracked`` counters, which come from the first point (the base for task
    arithmetic); floating-point buffers are averaged like the parameters (the Fisher is
    only defined for the Objective's varying parameters: other entries get the uniform or
    weighted mean).

    Args:
        points: a list, a mapping name -> point or a :class:`~lossviz.TrajectoryRecorder`
            (its steps are the names) of models, state dicts, Weights or checkpoint paths
            with identical keys and shapes.
        method: ``"uniform"``, ``"weighted"``, ``"fisher"`` or ``"task_arithmetic"``.
        weights: ``w_i`` (required for ``"weighted"``), the optional ``λ_i >= 0`` of
            ``"fisher"`` (default 1), or ``λ`` of ``"task_arithmetic"`` (a number, or one
            per task; default 1); a number, a list / array with one per point, or a
            mapping name -> weight (keys: the points' names). Not with ``"uniform"``.
        base: ``θ0`` for ``"task_arithmetic"`` (required there, not allowed otherwise).
        obj: the :class:`~lossviz.Objective` whose data defines the Fisher (required for
            ``"fisher"``, not allowed otherwise).

    Other Args:
        *more: not accepted: the points come as one list (an error that says so).

    Returns:
        :class:`~lossviz.weights.Weights` with every entry of the points
        (``.state_dict()`` for a plain dict).

    Raises:
        ArgumentTypeError: more than one positional argument, ``points`` not a list /
            mapping / recorder (or a single point), a point of the wrong type, ``obj``
            not an Objective, or ``weights`` not numbers.
        LossvizError: an unknown ``method``; ``weights`` / ``base`` / ``obj`` missing or
            given for a method that does not use them; ``weights`` of the wrong length,
            with the wrong keys, not finite, negative for ``"fisher"`` or summing to 0;
            non-floating tensors that differ; ``obj`` built with ``forward=``; no points.
        CheckpointError: points (or ``base``) with different keys or shapes, a checkpoint
            that cannot be read, or (``"fisher"``) points that do not match ``obj``'s
            model.
        DataError: (``"fisher"``) a batch of ``obj`` is not ``(inputs, targets)``.

    >>> a, b = {"w": torch.tensor([1.0, 2.0])}, {"w": torch.tensor([3.0, 6.0])}
    >>> merge([a, b])["w"].tolist()
    [2.0, 4.0]
    >>> merge([a, b], method="weighted", weights=[3, 1])["w"].tolist()
    [1.5, 3.0]
    >>> merge([b], method="task_arithmetic", base=a, weights=0.5)["w"].tolist()
    [2.0, 4.0]
    """
    if more:
        raise ArgumentTypeError(
            f"merge takes the points as one list, merge([a, b, ...]); got {1 + len(more)} "
            "positional arguments"
        )
    method = validate.choice(method, "method", _METHODS)
    if method == "uniform" and weights is not None:
        raise LossvizError("method='uniform' takes no weights; use method='weighted'")
    if method == "weighted" and weights is None:
        raise LossvizError("method='weighted' needs weights= (one per point)")
    if method == "task_arithmetic" and base is None:
        raise LossvizError("task_arithmetic needs base= (the pre-trained weights θ0)")
    if method != "task_arithmetic" and base is not None:
        raise LossvizError(f"base= is only used with method='task_arithmetic', not {method!r}")
    if method == "fisher":
        if obj is None:
            raise LossvizError(
                "method='fisher' needs obj= (an Objective whose data defines the Fisher)"
            )
        _check_fisher_obj(obj)
    elif obj is not None:
        raise LossvizError(f"obj= is only used with method='fisher', not {method!r}")
    names, states = _named(points)
    check_compatible(states, _labels(names))
    k = len(states)
    ref = states[0]
    dev = next(iter(ref.values())).device
    if method == "task_arithmetic":
        b = state_of(base, "base")
        check_compatible([b] + states, ["base"] + _labels(names), integers=True)
        lam = _coeffs(1.0 if weights is None else weights, k, "task_arithmetic", names)
        out = {}
        for key, v0 in b.items():
            if not _floating(v0):
                out[key] = v0.clone()
                continue
            acc = v0.to(torch.float64).clone()
            for li, st in zip(lam, states):
                acc += li * (st[key].to(v0.device, torch.float64) - v0.to(torch.float64))
            out[key] = acc.to(v0.dtype)
        return Weights(out)
    w = [1.0] * k if weights is None else _coeffs(weights, k, method, names)
    total = math.fsum(w)
    if method == "fisher" and any(wi < 0 for wi in w):
        raise LossvizError(f"weights (the λ_i of Fisher merging) must be >= 0, got {w}")
    if total == 0 or abs(total) <= 1e-12 * math.fsum(abs(wi) for wi in w):
        raise LossvizError(f"weights sum to 0: {w}; a weighted mean needs a nonzero sum")
    _check_integers(states, _labels(names))
    if method == "fisher":
        missing = [key for key in obj.layout.names if key not in ref]
        if missing:
            raise CheckpointError(f"the points lack parameters {missing[:10]} of the Objective")
        for nm, st in zip(names, states):
            obj.resolve(st, name=f"points[{nm!r}]")
    out = {}
    for key, v0 in ref.items():
        if not _floating(v0):
            out[key] = v0.clone()
            continue
        acc = sum(wi * st[key].to(dev, torch.float64) for wi, st in zip(w, states))
        out[key] = (acc / total).to(v0.dtype)
    if method == "fisher":
        fishers = [empirical_fisher(obj, st) for st in states]
        for key in obj.layout.names:
            num = sum(
                wi * F[key].to(dev, torch.float64) * st[key].to(dev, torch.float64)
                for wi, F, st in zip(w, fishers, states)
            )
            den = sum(wi * F[key].to(dev, torch.float64) for wi, F in zip(w, fishers))
            ok = den != 0
            merged = torch.where(
                ok, num / torch.where(ok, den, torch.ones_like(den)), out[key].to(torch.float64)
            )
            out[key] = merged.to(ref[key].dtype)
    return Weights(out)


@api
@renamed(recompute_data="bn_data")
def greedy_soup(
    obj_val: Objective,
    points,
    *,
    metric: str = "accuracy",
    bn: str = "eval",
    bn_data=None,
    progress=None,
):
    """Greedy soup: add ingredients to a uniform soup only while the held-out metric improves.

    Wortsman et al. 2022, "Model soups: averaging weights of multiple fine-tuned models
    improves accuracy without increasing inference time": sort the ingredients by their
    held-out ``metric`` on ``obj_val`` (best first), start from the best and add each next
    one only if the uniform soup of the chosen ones strictly improves it. An ingredient
    or soup whose metric is NaN ranks last / is not added (with a warning). Ctrl-C
    propagates (nothing is changed).

    Args:
        obj_val: the held-out :class:`~lossviz.Objective` the metric is measured on.
        points: a list, a mapping name -> point or a :class:`~lossviz.TrajectoryRecorder`
            of ingredients with identical keys and shapes.
        metric: ``"accuracy"`` (higher is better), ``"loss"`` or ``"error"`` (lower is
            better).
        bn: ``"eval"`` (the points' running statistics) or ``"recompute"`` (BatchNorm
            statistics of every soup re-estimated on ``bn_data``).
        bn_data: the batches for ``bn="recompute"`` (default: ``obj_val``'s data);
            ``recompute_data=`` is its deprecated name.
        progress: show progress bars (None: unless ``LOSSVIZ_PROGRESS=0``).

    Returns:
        ``(Weights, chosen)``: the soup and the chosen ingredients (indices, or names
        for a mapping, in the order added).

    Raises:
        ArgumentTypeError: ``obj_val`` is not an Objective, ``points`` is not a list /
            mapping / recorder (or a single point), ``progress`` is not a bool, or both
            ``bn_data`` and its deprecated name are given.
        LossvizError: an unknown ``metric`` / ``bn``, ``bn_data`` without
            ``bn="recompute"``, non-floating tensors that differ between the points, a
            metric that does not apply to the model's outputs, or a metric that is NaN
            for every ingredient.
        CheckpointError: points with different keys or shapes, or that do not match the
            model of ``obj_val``.
    """
    from .landscape import evaluate

    if not isinstance(obj_val, Objective):
        raise ArgumentTypeError(f"obj_val must be an Objective, got {type(obj_val).__name__}")
    metric = validate.choice(metric, "metric", ("accuracy", "loss", "error"))
    bn = validate.choice(bn, "bn", ("eval", "recompute"))
    if bn_data is not None and bn != "recompute":
        raise LossvizError("bn_data is only used with bn='recompute'")
    if progress is not None:
        progress = validate.boolean(progress, "progress")
    names, states = _named(points)
    check_compatible(states, _labels(names), integers=True)
    for nm, st in zip(names, states):
        obj_val.resolve(st, name=f"points[{nm!r}]")
    sign = 1.0 if metric == "accuracy" else -1.0
    kw = {"bn": "recompute", "bn_data": bn_data} if bn == "recompute" else {}

    def run(P, at) -> list[float]:
        res = evaluate(obj_val, P, metrics=(metric,), at=at, progress=progress, **kw)
        if not getattr(res, "complete", True):  # an inner call turned Ctrl-C into NaN
            raise KeyboardInterrupt
        return [float(v) for v in res[metric]]

    def score(sts: list[dict]) -> list[float]:
        return [run(obj_val.resolve(st)[0][None], st)[0] for st in sts]

    same_buffers = all(
        all(torch.equal(states[0][k], st[k]) for k in states[0] if k not in obj_val.layout.names)
        for st in states[1:]
    )
    if same_buffers:
        P = torch.stack([obj_val.resolve(st)[0] for st in states])
        single = run(P, states[0])
    else:
        single = score(states)
    if all(math.isnan(v) for v in single):
        raise LossvizError(f"greedy_soup: the {metric} is NaN for every ingredient")
    nan = [names[i] for i, v in enumerate(single) if math.isnan(v)]
    if nan:
        warnings.warn(
            f"greedy_soup: the {metric} is NaN for ingredients {nan[:10]}; they rank last",
            stacklevel=3,
        )
    order = sorted(range(len(states)), key=lambda i: (math.isnan(single[i]), -sign * single[i]))
    chosen = [order[0]]
    best = single[order[0]]
    for i in order[1:]:
        cand = merge([states[j] for j in chosen + [i]])
        val = score([cand])[0]
        if math.isnan(val):
            warnings.warn(
                f"greedy_soup: the {metric} of the soup with {names[i]!r} added is NaN; not added",
                stacklevel=3,
            )
        elif sign * val > sign * best:
            chosen.append(i)
            best = val
    soup = (
        merge([states[j] for j in chosen])
        if len(chosen) > 1
        else Weights({k: v.clone() for k, v in states[chosen[0]].items()})
    )
    return soup, [names[j] for j in chosen]


#: the row label of the model's outputs in :attr:`VarianceTable.activations`
OUTPUT = "(output)"


@dataclass(kw_only=True, repr=False)
class VarianceTable(DataResult):
    """Per-layer variance before and after averaging k models (:func:`averaging_variance`).

    The "vanishing variance" of averaged uncorrelated weights, ``Var(mean) ≈ Var/k``,
    against the Xavier target ``2/(fan_in + fan_out)`` (Tian, Al-Ars, Kitsak, Hofstee
    2024, "Vanishing Variance Problem in Fully Decentralized Neural-Network Systems"),
    and, with an Objective, the variance of the activations and outputs of the averaged
    network against the models' ("variance collapse", Jordan, Sedghi, Saukh, Entezari,
    Neyshabur 2023, "REPAIR: REnormalizing Permuted Activations for Interpolation Repair").

    Attributes:
        rows: one dict per weight matrix: ``layer`` (its key), ``before`` (mean over the
            models of the variance of its entries), ``after`` (variance of the uniform
            average), ``ratio`` (``after / before``; NaN when ``before`` is 0), ``1/k``
            and ``xavier`` (``2/(fan_in + fan_out)``).
        k: the number of models averaged.
        activations: None without an Objective; else one dict per hooked layer and a
            last one with ``layer == "(output)"`` for the model's outputs: ``layer``,
            ``units`` (the number of units ``C``), ``before`` (mean over the models of the
            mean over units of the variance over the data), ``after`` (the same for the
            averaged network), ``ratio`` (``after / before``; NaN when ``before`` is 0),
            ``1/k`` and ``models`` (the ``k`` per-model values whose mean is ``before``).
        seconds: wall time.
        provenance: where it comes from (:class:`~lossviz.provenance.Provenance`;
            None when built by hand).
    """

    rows: list
    k: int
    activations: list | None = None
    seconds: float = 0.0

    @property
    def table(self) -> list[dict]:
        """The rows (one dict per layer)."""
        return self.rows

    @property
    def output(self) -> dict | None:
        """The ``"(output)"`` row of :attr:`activations` (None without an Objective)."""
        if not self.activations:
            return None
        return next((r for r in self.activations if r["layer"] == OUTPUT), None)

    def to_pandas(self, what: str = "weights"):
        """The rows as a ``pandas.DataFrame`` indexed by layer (needs pandas).

        Args:
            what: ``"weights"`` (:attr:`rows`) or ``"activations"`` (:attr:`activations`).

        Returns:
            The ``DataFrame``.

        Raises:
            LossvizError: ``what="activations"`` for a table computed without an
                Objective, or an unknown ``what``.
        """
        import pandas as pd

        return pd.DataFrame(self._which(what)).set_index("layer")

    def _which(self, what: str) -> list:
        what = validate.choice(what, "what", ("weights", "activations"))
        if what == "weights":
            return self.rows
        if self.activations is None:
            raise LossvizError(
                "no activation variances: pass obj= to averaging_variance to compute them"
            )
        return self.activations

    _WCOLS = ["layer", "before", "after", "ratio", "1/k", "xavier"]
    _ACOLS = ["layer", "units", "before", "after", "ratio", "1/k"]

    @staticmethod
    def _cells(rows: list, cols: list) -> list[list[str]]:
        return [
            [str(r["layer"])] + [str(r[c]) if c == "units" else f"{r[c]:.4g}" for c in cols[1:]]
            for r in rows
        ]

    @staticmethod
    def _text(cols: list, cells: list) -> list[str]:
        w = [max(len(c), *(len(x[i]) for x in cells)) for i, c in enumerate(cols)]
        return [
            "  ".join(s.ljust(w[i]) if i == 0 else s.rjust(w[i]) for i, s in enumerate(cs))
            for cs in [cols] + cells
        ]

    def __repr__(self) -> str:
        lines = [f"VarianceTable({len(self.rows)} layers, k={self.k} models)"]
        lines += self._text(self._WCOLS, self._cells(self.rows, self._WCOLS))
        if self.activations:
            lines.append("activation variance (mean over units of the variance over the data):")
            lines += self._text(self._ACOLS, self._cells(self.activations, self._ACOLS))
        return "\n".join(lines)

    def _repr_html_(self) -> str:
        from .formatting import html_table

        out = html_table(
            self._WCOLS,
            self._cells(self.rows, self._WCOLS),
            f"weight variance before / after averaging {self.k} models",
        )
        if self.activations:
            out += html_table(
                self._ACOLS,
                self._cells(self.activations, self._ACOLS),
                f"activation variance over the data, the {self.k} models vs their average",
            )
        return out

    def plot(self, what: str = "weights"):
        """A plotly figure of the table.

        Args:
            what: ``"weights"``: bars of the weight variance before and after averaging
                and the Xavier target; ``"activations"``: the ratio ``after / before`` of
                the activation variance per layer (log scale) with the ``1/k`` line.

        Returns:
            A ``plotly.graph_objects.Figure``.

        Raises:
            LossvizError: ``what="activations"`` for a table computed without an
                Objective, or an unknown ``what``.
        """
        import plotly.graph_objects as go

        rows = self._which(what)
        x = [r["layer"] for r in rows]
        if what == "activations":
            fig = go.Figure(
                [
                    go.Scatter(
                        x=x,
                        y=[r["ratio"] for r in rows],
                        mode="markers+lines",
                        name="activation variance ratio (average / models)",
                    ),
                    go.Scatter(
                        x=x,
                        y=[r["ratio"] for r in self.rows]
                        if len(self.rows) == len(x)
                        else [None] * len(x),
                        mode="markers",
                        name="weight variance ratio",
                        visible=True if len(self.rows) == len(x) else "legendonly",
                    ),
                    go.Scatter(
                        x=x,
                        y=[1.0 / self.k] * len(x),
                        mode="lines",
                        name=f"1/k = 1/{self.k}",
                        line={"dash": "dash"},
                    ),
                ]
            )
            fig.update_layout(
                title=f"variance collapse, averaging {self.k} models",
                yaxis_type="log",
                yaxis_title="variance of the average / mean variance of the models",
                xaxis_title="layer (data flows left to right)",
                template="plotly_white",
            )
            return fig
        fig = go.Figure(
            [
                go.Bar(x=x, y=[r["before"] for r in rows], name="before (mean over models)"),
                go.Bar(x=x, y=[r["after"] for r in rows], name="after averaging"),
                go.Scatter(
                    x=x,
                    y=[r["xavier"] for r in rows],
                    mode="markers+lines",
                    name="Xavier 2/(fan_in+fan_out)",
                    line={"dash": "dash"},
                ),
            ]
        )
        fig.update_layout(
            title=f"weight variance, averaging {self.k} models",
            barmode="group",
            yaxis_title="variance",
            template="plotly_white",
        )
        return fig


def _default_layers(model: nn.Module) -> list[str]:
    """The BatchNorm layers if the model has any, else its Linear and Conv layers."""
    mods = dict(model.named_modules())
    has_bn = any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in mods.values())
    kinds = (nn.modules.batchnorm._BatchNorm,) if has_bn else (nn.Linear, nn.modules.conv._ConvNd)
    return [n for n, m in mods.items() if n and isinstance(m, kinds)]


def _check_layers(layers, model: nn.Module) -> list[str]:
    if layers is None:
        return _default_layers(model)
    if isinstance(layers, str) or not isinstance(layers, (list, tuple)):
        raise ArgumentTypeError(
            f"layers must be a list of module names (e.g. ['0', '2']), got {type(layers).__name__}"
        )
    mods = dict(model.named_modules())
    out = []
    for i, n in enumerate(layers):
        if not isinstance(n, str):
            raise ArgumentTypeError(f"layers[{i}] must be a module name (str), got {n!r}")
        if n not in mods or not n:
            raise LossvizError(
                f"layers[{i}] = {n!r} is not a submodule of the model; its modules are "
                f"{[m for m in mods if m][:20]}"
            )
        if n not in out:
            out.append(n)
    return out


def _unit_dim(t: Tensor, linear: bool) -> int:
    """The units of an activation: the last axis after a Linear layer or for 2-D, else axis 1."""
    return -1 if linear or t.ndim == 2 else 1


class _Moments:
    """Per-unit count, mean and sum of squared deviations, merged batch by batch (Chan et al.)."""

    def __init__(self):
        self.n = 0
        self.mean = None
        self.m2 = None

    def add(self, t: Tensor, dim: int, where: str) -> None:
        if not isinstance(t, Tensor) or not t.is_floating_point() or t.ndim < 2:
            what = f"a {t.ndim}-d {t.dtype} tensor" if isinstance(t, Tensor) else type(t).__name__
            raise LossvizError(
                f"{where} is {what}: the activation variance needs a floating tensor with a "
                "batch axis and a unit axis (pass layers= to choose other modules)"
            )
        o = t.detach().to(torch.float64).movedim(dim, -1)
        o = o.reshape(-1, o.shape[-1])
        nb = o.shape[0]
        if nb == 0:
            return
        mb = o.mean(0)
        m2b = ((o - mb) ** 2).sum(0)
        if self.mean is None:
            self.n, self.mean, self.m2 = nb, mb, m2b
            return
        if mb.shape != self.mean.shape:
            raise LossvizError(f"{where} has {mb.numel()} units, earlier {self.mean.numel()}")
        n = self.n + nb
        d = mb - self.mean
        self.mean = self.mean + d * (nb / n)
        self.m2 = self.m2 + m2b + d * d * (self.n * nb / n)
        self.n = n

    def variance(self) -> Tensor:
        return self.m2 / self.n


def _activation_variances(
    obj: Objective, points: list, labels: list, layers: list, strict: bool
) -> list:
    """Per point, ``{layer: per-unit variance over the data}`` (and ``OUTPUT``).

    A layer that does not run in the forward raises with ``strict`` (named by the user),
    else it is left out (a default layer).
    """
    copy = obj.module_copy()
    acc: dict[str, _Moments] = {}

    def hook(name: str, linear: bool):
        where = f"the output of layer {name!r}"

        def h(_m, _inp, o):
            acc[name].add(o, _unit_dim(o, linear) if isinstance(o, Tensor) else 1, where)

        return h

    handles = [
        copy.get_submodule(n).register_forward_hook(
            hook(n, isinstance(copy.get_submodule(n), nn.Linear))
        )
        for n in layers
    ]
    out = []
    try:
        for lab, st in zip(labels, points):
            flat, fixed = obj.resolve(st, name=lab)
            tensors = dict(fixed)
            tensors.update(obj.layout.unflatten(flat))
            acc.clear()
            acc.update({n: _Moments() for n in layers + [OUTPUT]})
            for batch, _nb in obj.batches():
                # buffers are copied for each batch: a forward that updates them in place
                # (BatchNorm in train mode) changes nothing that is kept
                tb = {k: (v.clone() if k in obj.buffer_names else v) for k, v in tensors.items()}
                with torch.no_grad(), reparametrized(copy, tb):
                    y = call_model(copy, batch[0])
                acc[OUTPUT].add(
                    y, _unit_dim(y, False) if isinstance(y, Tensor) else 1, "the output"
                )
            unused = [n for n, a in acc.items() if a.mean is None]
            if unused and strict:
                raise LossvizError(f"layers {unused[:10]} did not run in the model's forward")
            out.append({n: a.variance() for n, a in acc.items() if a.mean is not None})
            if list(out[-1]) != list(out[0]):
                raise LossvizError(
                    f"the layers that run differ between {labels[0]} ({list(out[0])[:10]}) "
                    f"and {lab} ({list(out[-1])[:10]})"
                )
    finally:
        for h in handles:
            h.remove()
    return out


@api
def averaging_variance(points, *more, obj: Objective | None = None, layers=None) -> VarianceTable:
    """The per-layer variance of weights (and activations) before and after averaging k models.

    Weights, per layer (floating tensors with ``ndim >= 2``): ``before = mean_i Var(W_i)``
    over the k models (population variance of the entries), ``after = Var((1/k) Σ_i
    W_i)``, ``ratio = after / before`` (about ``1/k`` for uncorrelated models, about 1 for
    models near one another), and the Xavier target ``2/(fan_in + fan_out)``: the
    "vanishing variance" of Tian, Al-Ars, Kitsak, Hofstee 2024 ("Vanishing Variance
    Problem in Fully Decentralized Neural-Network Systems").

    Activations, with ``obj``: the averaged network ``θ̄ = merge(points)`` (the uniform
    mean of every floating tensor, buffers included) and each model ``θ_i`` run on all of
    ``obj``'s data, in ``obj``'s mode (eval; its ``bn=``), with forward hooks on a private
    copy of the model. For a layer with output ``a(x)`` and units ``u = 1..C`` (the last
    axis of a Linear layer's output or of a 2-D output, else axis 1, the channels; the
    other axes are samples, e.g. batch and spatial positions)::

        v(θ) = (1/C) Σ_u Var_x[a_u(x; θ)]      (population variance over the data)
        before = (1/k) Σ_i v(θ_i),   after = v(θ̄),   ratio = after / before

    The same for the model's outputs (the row ``"(output)"``). For independently trained
    networks the ratio falls with depth, far below ``1/k`` at the output: the "variance
    collapse" of averaged (interpolated) networks (Jordan, Sedghi, Saukh, Entezari,
    Neyshabur 2023, "REPAIR: REnormalizing Permuted Activations for Interpolation
    Repair", which compares the per-unit standard deviations; ``ratio`` is the ratio of
    the mean variances). Aligned (:func:`~lossviz.alignment.weight_matching`) or
    fine-tuned-from-one-parent models keep it near 1.

    Args:
        points: a list, a mapping name -> point or a :class:`~lossviz.TrajectoryRecorder`
            (at least 2 points with identical keys and shapes).
        obj: an :class:`~lossviz.Objective` built with ``loss_fn`` and ``(inputs,
            targets)`` batches (its model and data define the activations); None: weights
            only.
        layers: the module names whose outputs are measured (with ``obj``); default the
            BatchNorm layers if the model has any, else its Linear and Conv layers (the
            layers REPAIR corrects), those of them that run in the forward.

    Other Args:
        *more: not accepted: the points come as one list (an error that says so).

    Returns:
        :class:`VarianceTable`: one row per weight matrix, and with ``obj`` its
        ``activations`` (one row per layer, then ``"(output)"``).

    Raises:
        ArgumentTypeError: more than one positional argument, ``points`` not a list /
            mapping / recorder (or a single point), ``obj`` not an Objective, or
            ``layers`` not a list of names.
        LossvizError: fewer than 2 points, or no floating tensor with ``ndim >= 2``;
            ``layers`` without ``obj`` or naming no submodule; ``obj`` built with
            ``forward=``; a measured output that is not a floating tensor with a batch
            and a unit axis; a layer named in ``layers`` that does not run in the
            forward.
        CheckpointError: points with different keys or shapes, a checkpoint that
            cannot be read, or (with ``obj``) points that do not match its model.

    >>> a, b = {"w": torch.tensor([[1.0, -1.0]])}, {"w": torch.tensor([[-1.0, 1.0]])}
    >>> r = averaging_variance([a, b]).rows[0]
    >>> r["before"], r["after"], r["xavier"]
    (1.0, 0.0, 0.6666666666666666)

    With ``y = w·x``, ``w = ±1`` and ``x ∈ {0, 1}``: each model's output varies
    (variance 1/4), their average is 0:

    >>> x, y = torch.tensor([[0.0], [1.0]]), torch.zeros(2, 1)
    >>> obj = Objective(nn.Linear(1, 1, bias=False), nn.functional.mse_loss, (x, y))
    >>> p, q = {"weight": torch.ones(1, 1)}, {"weight": -torch.ones(1, 1)}
    >>> out = averaging_variance([p, q], obj=obj).output
    >>> out["before"], out["after"]
    (0.25, 0.0)
    """
    if more:
        raise ArgumentTypeError(
            "averaging_variance takes the points as one list, averaging_variance([a, b, ...]); "
            f"got {1 + len(more)} positional arguments"
        )
    if obj is None:
        if layers is not None:
            raise LossvizError("layers= is only used with obj= (the activations need data)")
    else:
        if not isinstance(obj, Objective):
            raise ArgumentTypeError(f"obj must be an Objective, got {type(obj).__name__}")
        obj.require_local("the activation variance")
        if obj.forward is not None:
            raise LossvizError(
                "the activation variance needs the model's inputs: build the Objective with "
                "loss_fn and (inputs, targets) batches, not forward="
            )
        explicit = layers is not None
        layers = _check_layers(layers, obj.model)
    t0 = time.perf_counter()
    names, states = _named(points, at_least=2, what="averaging_variance")
    labels = _labels(names)
    check_compatible(states, labels)
    rows = []
    for key, v0 in states[0].items():
        if not v0.is_floating_point() or v0.ndim < 2 or v0.numel() == 0:
            continue
        ws = [st[key].to(v0.device, torch.float64) for st in states]
        before = float(np.mean([float(w.var(correction=0)) for w in ws]))
        after = float(torch.stack(ws).mean(0).var(correction=0))
        fan_in, fan_out = nn.init._calculate_fan_in_and_fan_out(v0)
        rows.append(
            {
                "layer": key,
                "before": before,
                "after": after,
                "ratio": after / before if before > 0 else float("nan"),
                "1/k": 1.0 / len(states),
                "xavier": 2.0 / (fan_in + fan_out),
            }
        )
    if not rows:
        raise LossvizError("points: no weight matrix (a tensor with ndim >= 2) to compare")
    k = len(states)
    activations = None
    if obj is not None:
        _check_integers(states, labels)
        for lab, st in zip(labels, states):
            obj.resolve(st, name=lab)  # every point matches the model before any work
        avg = merge(states)
        var = _activation_variances(
            obj, states + [avg], labels + ["the average"], layers, strict=explicit
        )
        activations = []
        for n in var[0]:
            models = [float(v[n].mean()) for v in var[:k]]
            before = math.fsum(models) / k
            after = float(var[k][n].mean())
            activations.append(
                {
                    "layer": n,
                    "units": int(var[k][n].numel()),
                    "before": before,
                    "after": after,
                    "ratio": after / before if before > 0 else float("nan"),
                    "1/k": 1.0 / k,
                    "models": models,
                }
            )
    return VarianceTable(
        rows=rows,
        k=k,
        activations=activations,
        seconds=time.perf_counter() - t0,
        provenance=Provenance.of(states if obj is None else obj, kernel="averaging_variance"),
    )
