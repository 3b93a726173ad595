"""Why a merge fails: several merges of fine-tunes of one parent, side by side.

:func:`compare_merges` builds each merge of two or more fine-tunes ``θ_1, …, θ_k`` of one
parent ``θ_0`` and measures, for each: its loss and accuracy, its loss barrier to each
fine-tune, and a per-layer gradient-mismatch table (which layer's merged weights change
the gradient most). The merges:

- ``"uniform"``: ``(1/k) Σ_i θ_i`` (Wortsman et al. 2022, "Model soups"), :func:`merge`;
- ``"fisher"``: ``Σ_i F_i ⊙ θ_i / Σ_i F_i`` (Matena & Raffel 2022), :func:`merge`;
- ``"task_arithmetic"``: ``θ_0 + λ Σ_i (θ_i - θ_0)`` (Ilharco et al. 2023, "Editing
  Models with Task Arithmetic"), :func:`merge`;
- ``"greedy_soup"``: :func:`greedy_soup` (Wortsman et al. 2022);
- ``"model_stock"``: :func:`model_stock` (Jang, Yun, Han 2024, "Model Stock: All we need
  is just a few fine-tuned models", ECCV 2024, arXiv 2403.19522).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor

from . import validate
from .engine import check_objective
from .errors import ArgumentTypeError, LossvizError, warn
from .formatting import html_table, short
from .interrupt import api, keep_partial
from .merging import check_compatible
from .objective import Objective
from .points import as_points
from .provenance import Provenance
from .results import DataResult
from .weights import Weights, state_of

__all__ = ["MERGE_METHODS", "MergeComparison", "compare_merges", "model_stock"]

#: the merges :func:`compare_merges` knows
MERGE_METHODS = ("uniform", "fisher", "task_arithmetic", "greedy_soup", "model_stock")
_NEEDS_BASE = ("task_arithmetic", "model_stock")
#: the task-arithmetic scales tried when ``task_scale=None`` (chosen on held-out loss)
TASK_SCALES = tuple(round(0.1 * i, 1) for i in range(1, 11))
_MAX_CHUNK = 32  # gradients per vmap call


def _floating(t: Tensor) -> bool:
    return t.is_floating_point() or t.is_complex()


def _states(points, name: str) -> tuple[list[str], list[dict]]:
    labels, pts, _ = as_points(points, name, at_least=2, what="merging")
    names = [str(lab) for lab in labels]
    if len(set(names)) != len(names):
        raise LossvizError(f"{name}: names {names} are not distinct as strings")
    return names, [state_of(p, f"{name}[{nm!r}]") for nm, p in zip(names, pts)]


def _stock(states: list[dict], base: dict) -> tuple[Weights, dict, dict]:
    """Model Stock merge, per-tensor mean pairwise cosines and ratios (inputs checked)."""
    k = len(states)
    out, cosines, ratios = {}, {}, {}
    for key, v0 in base.items():
        if not _floating(v0):
            out[key] = v0.clone()
            continue
        w0 = v0.to(torch.float64)
        deltas = [st[key].to(v0.device, torch.float64) - w0 for st in states]
        norms = [float(d.norm()) for d in deltas]
        avg = sum(st[key].to(v0.device, torch.float64) for st in states) / k
        if all(nm == 0 for nm in norms):  # every fine-tune left it at the base
            cosines[key], ratios[key] = float("nan"), 1.0
            out[key] = v0.clone()
            continue
        pairs = []
        for i in range(k):
            for j in range(i + 1, k):
                den = norms[i] * norms[j]
                c = float((deltas[i] * deltas[j]).sum()) / den if den > 0 else 0.0
                pairs.append(min(1.0, max(-1.0, c)))
        cos = math.fsum(pairs) / len(pairs)
        den = 1.0 + (k - 1) * cos
        if den <= 1e-12:
            raise LossvizError(
                f"model_stock: the fine-tunes' changes of {key!r} cancel out (mean pairwise "
                f"cosine {cos:.6g} = -1/(k-1)): the ratio t = k·cos / (1 + (k-1)·cos) is "
                "not defined"
            )
        t = k * cos / den
        cosines[key], ratios[key] = cos, t
        out[key] = (t * avg + (1.0 - t) * w0).to(v0.dtype)
    return Weights(out), cosines, ratios


@api
def model_stock(points, *, base) -> Weights:
    """Model Stock: each tensor's average of the fine-tunes pulled toward the parent.

    Jang, Yun, Han 2024 ("Model Stock: All we need is just a few fine-tuned models", ECCV
    2024, arXiv 2403.19522), layer-wise as in the authors' code (one ratio per tensor of
    the state dict). For each floating tensor, with ``θ_0`` the parent (``base``) and
    ``k`` fine-tunes ``θ_i``::

        cos = mean over pairs i < j of cos∠(θ_i - θ_0, θ_j - θ_0)
        t   = k·cos / (1 + (k - 1)·cos)
        θ   = t · (1/k) Σ_i θ_i + (1 - t) · θ_0

    The paper derives ``t`` assuming every pair of fine-tunes makes the same angle; for
    ``k = 2`` ``cos`` is that angle's cosine, for ``k > 2`` it is the mean of the
    pairwise cosines (as mergekit does; the paper does not say). Sums in float64.

    Special cases: a tensor no fine-tune changed stays ``θ_0``; a tensor only some
    fine-tunes changed has an undefined angle with the others, counted as cosine 0 (the
    authors' code adds ``1e-8`` to the denominator, giving the same); a negative ``cos``
    gives ``t < 0`` (the merge moves from the parent *away* from the fine-tunes' mean:
    fine-tunes that do not share a parent, or that moved apart) and a warning naming the
    tensors. Non-floating tensors (``num_batches_tracked``) come from ``base``. Whether
    the checkpoints were really fine-tuned from ``base`` cannot be read off the weights;
    the formula is applied as given.

    Args:
        points: the fine-tunes: a list, a mapping name -> point or a
            :class:`~lossviz.TrajectoryRecorder` (at least 2; models, state dicts,
            Weights or checkpoint paths with identical keys and shapes).
        base: the parent ``θ_0`` (same forms, same keys and shapes).

    Returns:
        :class:`~lossviz.weights.Weights` with every entry of the points.

    Raises:
        ArgumentTypeError: ``points`` not a list / mapping / recorder, or a point or
            ``base`` of the wrong type.
        LossvizError: fewer than 2 points; non-floating tensors that differ; a tensor
            whose changes cancel out (``1 + (k - 1)·cos = 0``).
        CheckpointError: points or ``base`` with different keys or shapes (a different
            architecture), or a checkpoint that cannot be read.

    Two fine-tunes at 60° (``cos = ½``) give ``t = 2·½ / (1 + ½) = ⅔``:

    >>> base = {"w": torch.tensor([0.0, 0.0])}
    >>> a, b = {"w": torch.tensor([1.0, 0.0])}, {"w": torch.tensor([0.5, 0.75**0.5])}
    >>> model_stock([a, b], base=base)["w"].tolist()  # ⅔ of the mean (0.75, 0.433)
    [0.5, 0.28867512941360474]
    """
    names, states = _states(points, "points")
    b = state_of(base, "base")
    check_compatible([b] + states, ["base"] + [f"points[{n!r}]" for n in names], integers=True)
    w, cos, _ = _stock(states, b)
    _warn_negative(cos)
    return w


def _warn_negative(cos: dict) -> None:
    neg = [k for k, c in cos.items() if c < 0]
    if neg:
        warn(
            f"model_stock: the fine-tunes' changes point apart (mean pairwise cosine < 0) in "
            f"{neg[:5]}{' …' if len(neg) > 5 else ''}: t < 0 moves the merge away from their "
            "mean; are they fine-tunes of this base?"
        )


def _same_fixed(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def _value_grads(obj: Objective, states: list[dict], reduce) -> None:
    """The full-data loss and gradient at each state, handed to ``reduce`` chunk by chunk.

    ``reduce(indices, losses (c,), gradients (c, P))`` (float64, on the compute device)
    is called once per chunk, so that no more than a chunk of gradients is held. Points
    that share their fixed tensors (buffers, fixed parameters) go through one
    ``torch.func.vmap`` of ``grad_and_value`` per batch; a model vmap cannot run falls
    back to one point at a time. Batches combine as :meth:`Objective.gradient` does.
    """
    P = max(1, obj.layout.size)
    chunk = max(1, min(_MAX_CHUNK, (1 << 26) // P))  # at most ~512 MB of float64 gradients
    groups: list[tuple[dict, list[int]]] = []
    for i, st in enumerate(states):
        _, fx = obj.resolve(st)
        for g in groups:
            if _same_fixed(g[0], fx):
                g[1].append(i)
                break
        else:
            groups.append((fx, [i]))
    for fixed, idx in groups:
        for s in range(0, len(idx), chunk):
            part = idx[s : s + chunk]
            pts = torch.stack([obj.resolve(states[i])[0] for i in part])
            v, g = _vg(obj, fixed, pts)
            del pts
            reduce(part, v, g)


def _vg(obj: Objective, fixed: dict, pts: Tensor) -> tuple[Tensor, Tensor]:
    K = pts.shape[0]

    def local():
        tot = torch.zeros(K, pts.shape[1] + 1, dtype=torch.float64, device=pts.device)
        n = 0
        for b, nb in obj.batches():

            def f(p, b=b):
                return obj.batch_loss(p, fixed, b)

            fn = torch.func.grad_and_value(f)
            with torch.enable_grad():
                try:
                    g, v = torch.func.vmap(fn)(pts)
                except (LossvizError, KeyboardInterrupt):
                    raise
                except Exception:  # noqa: BLE001 - a model vmap cannot run: one at a time
                    outs = [fn(pts[i]) for i in range(K)]
                    g = torch.stack([o[0] for o in outs])
                    v = torch.stack([o[1] for o in outs])
            w = obj.batch_weight(nb)
            tot[:, 0] += v.detach().to(torch.float64) * w
            tot[:, 1:] += g.detach().to(torch.float64) * w
            n += nb
        return tot, n

    tot, n = obj.reduce_sums(local, (K, pts.shape[1] + 1), "merge gradients", inputs=pts)
    tot = tot / obj.normalizer(n)
    return tot[:, 0], tot[:, 1:]


def _evaluate(obj: Objective, states: list[dict], metrics: tuple) -> dict[str, np.ndarray]:
    """``metric -> (K,)`` at full states (batched where the fixed tensors agree)."""
    from .landscape import evaluate

    resolved = [obj.resolve(st) for st in states]
    out = {m: np.full(len(states), np.nan) for m in metrics}
    done = [False] * len(states)
    for i in range(len(states)):
        if done[i]:
            continue
        idx = [j for j in range(i, len(states)) if not done[j]]
        idx = [j for j in idx if _same_fixed(resolved[i][1], resolved[j][1])]
        ev = evaluate(
            obj,
            torch.stack([resolved[j][0] for j in idx]),
            metrics=metrics,
            at=states[i],
            progress=False,
        )
        if not getattr(ev, "complete", True):
            raise KeyboardInterrupt
        for m in metrics:
            out[m][idx] = ev[m]
        for j in idx:
            done[j] = True
    return out


def _module_of(key: str) -> str:
    return key.rsplit(".", 1)[0] if "." in key else key


@dataclass(kw_only=True, repr=False)
class MergeComparison(DataResult):
    """Merges of fine-tunes of one parent side by side (:func:`compare_merges`).

    ``M`` merges (:attr:`methods`), ``k`` fine-tunes (:attr:`finetunes`), ``L`` layers
    (:attr:`layers`: the modules owning the Objective's varying parameters). NaN where not
    computed (interrupted).

    Attributes:
        methods: the merge methods, in order.
        finetunes: the fine-tunes' names.
        layers: the layer (module) names of the diagnostic's last axis.
        loss: ``(M,)`` each merge's loss on the Objective's data.
        accuracy: ``(M,)`` each merge's accuracy (NaN when ``accuracy=False``).
        finetune_loss: ``(k,)`` each fine-tune's loss.
        finetune_accuracy: ``(k,)`` each fine-tune's accuracy.
        base_loss: the parent's loss (NaN without a base).
        base_accuracy: the parent's accuracy.
        barriers: ``(M, k)`` the loss barrier (:attr:`kind`) on the straight line from
            each merge to each fine-tune (:func:`lossviz.barrier_matrix`).
        finetune_barriers: ``(k, k)`` the loss barriers between the fine-tunes.
        kind: ``"linear"`` (Entezari et al. 2022) or ``"mean"`` (Frankle et al. 2020).
        n: the number of α per path.
        mismatch: ``(M, k, L)`` ``‖[∇L(θ_merge) - ∇L(θ_i)]_ℓ‖``: the gradient at the
            merge minus the gradient at fine-tune ``i``, restricted to layer ``ℓ``'s
            parameters.
        isolated: ``(M, k, L)`` ``‖∇L(θ_i^{ℓ←merge}) - ∇L(θ_i)‖``: how far putting only
            layer ``ℓ``'s merged tensors into fine-tune ``i`` moves its (whole)
            gradient.
        isolated_loss: ``(M, k, L)`` ``L(θ_i^{ℓ←merge}) - L(θ_i)``.
        grad_norm: ``(k, L)`` ``‖[∇L(θ_i)]_ℓ‖``, the scale of the two tables above.
        task_scale: the λ of task arithmetic (NaN when not computed).
        task_scales: the λ tried (with the held-out loss of each in
            ``task_scale_losses``); empty when ``task_scale`` was given.
        task_scale_losses: the held-out loss at each λ tried.
        chosen: the greedy soup's ingredients, in the order added.
        stock_cosine: Model Stock's mean pairwise cosine per tensor (``key -> cos``).
        stock_ratio: Model Stock's ratio ``t`` per tensor.
        task_cosine: ``(k, k)`` the cosine between the task vectors ``θ_i - θ_0`` over
            the varying parameters (None without a base).
        merged: ``method -> Weights``: each merge's full state (parameters and buffers).
        notes: what was chosen on which data, what was left out.
        complete: False after Ctrl-C.
        seconds: wall time.
        provenance: where it comes from (:class:`~lossviz.provenance.Provenance`; None
            when built by hand).
    """

    methods: list
    finetunes: list
    layers: list
    loss: np.ndarray
    accuracy: np.ndarray
    finetune_loss: np.ndarray
    finetune_accuracy: np.ndarray
    base_loss: float = float("nan")
    base_accuracy: float = float("nan")
    barriers: np.ndarray
    finetune_barriers: np.ndarray
    kind: str = "linear"
    n: int = 25
    mismatch: np.ndarray
    isolated: np.ndarray
    isolated_loss: np.ndarray
    grad_norm: np.ndarray
    task_scale: float = float("nan")
    task_scales: list = field(default_factory=list)
    task_scale_losses: list = field(default_factory=list)
    chosen: list = field(default_factory=list)
    stock_cosine: dict = field(default_factory=dict)
    stock_ratio: dict = field(default_factory=dict)
    task_cosine: np.ndarray | None = None
    merged: dict = field(default_factory=dict)
    notes: list = field(default_factory=list)
    complete: bool = True
    seconds: float = 0.0

    @property
    def table(self) -> list[dict]:
        """One dict per merge: loss, accuracy, mean / max barrier to the fine-tunes, worst layer."""
        rows = []
        for m, name in enumerate(self.methods):
            iso = self.isolated[m].mean(axis=0)
            worst = self.layers[int(np.argmax(iso))] if np.isfinite(iso).all() else None
            b = self.barriers[m]
            rows.append(
                {
                    "merge": name,
                    "loss": float(self.loss[m]),
                    "accuracy": float(self.accuracy[m]),
                    "mean barrier": float(np.mean(b)),
                    "max barrier": float(np.max(b)),
                    "worst layer": worst,
                }
            )
        return rows

    def layer_table(self, method: str) -> list[dict]:
        """The per-layer diagnostic of one merge, averaged over the fine-tunes.

        Args:
            method: one of :attr:`methods`.

        Returns:
            One dict per layer: ``layer``, ``mismatch`` and ``isolated`` (means over the
            fine-tunes), ``isolated loss`` and ``grad norm`` (means over the fine-tunes).

        Raises:
            KeyError: ``method`` is not one of :attr:`methods`.
        """
        if method not in self.methods:
            raise KeyError(f"no merge {method!r}; merges: {self.methods}")
        m = self.methods.index(method)
        return [
            {
                "layer": layer,
                "mismatch": float(np.mean(self.mismatch[m, :, j])),
                "isolated": float(np.mean(self.isolated[m, :, j])),
                "isolated loss": float(np.mean(self.isolated_loss[m, :, j])),
                "grad norm": float(np.mean(self.grad_norm[:, j])),
            }
            for j, layer in enumerate(self.layers)
        ]

    def to_pandas(self):
        """:attr:`table` as a ``pandas.DataFrame`` indexed by the merge."""
        import pandas as pd

        return pd.DataFrame(self.table).set_index("merge")

    def __repr__(self) -> str:
        cols = ["merge", "loss", "accuracy", "mean barrier", "max barrier", "worst layer"]
        cells = [
            [str(r[c]) if c in ("merge", "worst layer") else short(r[c]) for c in cols]
            for r in self.table
        ]
        cells += [
            [f"(fine-tune {nm})", short(lo), short(ac), "", "", ""]
            for nm, lo, ac in zip(self.finetunes, self.finetune_loss, self.finetune_accuracy)
        ]
        widths = [max(len(c), *(len(r[i]) for r in cells)) for i, c in enumerate(cols)]

        def line(xs):
            return "  ".join(
                s.rjust(w) if 0 < i < len(cols) - 1 else s.ljust(w)
                for i, (s, w) in enumerate(zip(xs, widths))
            )

        state = "" if self.complete else ", INCOMPLETE: interrupted"
        head = (
            f"MergeComparison({len(self.methods)} merges of {len(self.finetunes)} fine-tunes, "
            f"{self.kind} loss barriers, {len(self.layers)} layers{state})"
        )
        return "\n".join([head, line(cols)] + [line(c).rstrip() for c in cells] + self.notes)

    def _repr_html_(self) -> str:
        rows = self.table
        cols = list(rows[0])
        body = [
            [r["merge"]] + [short(r[c]) if c != "worst layer" else str(r[c]) for c in cols[1:]]
            for r in rows
        ]
        body += [
            [f"(fine-tune {nm})", short(lo), short(ac), "", "", ""]
            for nm, lo, ac in zip(self.finetunes, self.finetune_loss, self.finetune_accuracy)
        ]
        cap = f"merges of {len(self.finetunes)} fine-tunes ({self.kind} loss barriers)" + (
            "" if self.complete else " INCOMPLETE: interrupted"
        )
        if self.notes:
            cap += " (" + "; ".join(self.notes) + ")"
        return html_table(cols, body, cap)

    def plot(self, what: str = "summary"):
        """The comparison as a plotly figure.

        Args:
            what: ``"summary"``: loss, accuracy and the barriers to the fine-tunes per
                merge (the fine-tunes' own losses as dashed lines); ``"isolated"`` or
                ``"mismatch"``: a heatmap merge × layer of that diagnostic, averaged over
                the fine-tunes.

        Returns:
            The figure.

        Raises:
            LossvizError: an unknown ``what``.
        """
        import plotly.graph_objects as go
        from plotly.subplots import make_subplots

        what = validate.choice(what, "what", ("summary", "isolated", "mismatch"))
        if what != "summary":
            z = getattr(self, what).mean(axis=1)
            title = (
                "‖∇L(fine-tune with only this layer merged) − ∇L(fine-tune)‖"
                if what == "isolated"
                else "‖[∇L(merge) − ∇L(fine-tune)] restricted to the layer‖"
            )
            fig = go.Figure(
                go.Heatmap(
                    z=z,
                    x=list(self.layers),
                    y=list(self.methods),
                    colorscale="Viridis",
                    colorbar={"title": "norm"},
                    text=[[short(v) for v in r] for r in z],
                    texttemplate="%{text}",
                )
            )
            fig.update_layout(
                title=title + " (mean over the fine-tunes)",
                xaxis_title="layer",
                template="plotly_white",
            )
            return fig
        fig = make_subplots(
            rows=1, cols=3, subplot_titles=["loss", "accuracy", f"{self.kind} loss barrier"]
        )
        x = list(self.methods)
        fig.add_trace(go.Bar(x=x, y=self.loss, name="loss", showlegend=False), row=1, col=1)
        fig.add_trace(go.Bar(x=x, y=self.accuracy, name="accuracy", showlegend=False), row=1, col=2)
        for i, nm in enumerate(self.finetunes):
            fig.add_trace(go.Bar(x=x, y=self.barriers[:, i], name=f"to {nm}"), row=1, col=3)
            for col, v in ((1, self.finetune_loss[i]), (2, self.finetune_accuracy[i])):
                if np.isfinite(v):
                    fig.add_hline(y=float(v), line_dash="dash", line_color="gray", row=1, col=col)
        fig.update_layout(
            title="merges of fine-tunes (dashed: the fine-tunes themselves)",
            barmode="group",
            template="plotly_white",
            height=400,
            width=1100,
        )
        return fig


def _methods(methods) -> list[str]:
    if isinstance(methods, str):
        methods = (methods,)
    if not isinstance(methods, (list, tuple)):
        raise ArgumentTypeError(
            f"methods must be a list of names from {MERGE_METHODS}, got {type(methods).__name__}"
        )
    out = [validate.choice(m, f"methods[{i}]", MERGE_METHODS) for i, m in enumerate(methods)]
    if not out:
        raise LossvizError(f"methods is empty; choose from {MERGE_METHODS}")
    if len(set(out)) != len(out):
        raise LossvizError(f"methods has repeated names: {out}")
    return out


def _fisher_objs(fisher_data, names: list[str]) -> list | None:
    if fisher_data is None:
        return None
    if isinstance(fisher_data, Objective):
        raise ArgumentTypeError(
            "fisher_data must be one Objective per fine-tune (a list or a mapping name -> "
            "Objective), not a single Objective (pass that as obj)"
        )
    if isinstance(fisher_data, dict):
        extra = [k for k in fisher_data if str(k) not in names]
        missing = [n for n in names if n not in {str(k) for k in fisher_data}]
        if extra or missing:
            raise LossvizError(
                f"fisher_data: keys must be the fine-tunes' names {names}; missing "
                f"{missing[:10]}, unknown {extra[:10]}"
            )
        by = {str(k): v for k, v in fisher_data.items()}
        out = [by[n] for n in names]
    elif isinstance(fisher_data, (list, tuple)):
        if len(fisher_data) != len(names):
            raise LossvizError(
                f"fisher_data: {len(fisher_data)} Objectives for {len(names)} fine-tunes"
            )
        out = list(fisher_data)
    else:
        raise ArgumentTypeError(
            "fisher_data must be a list or a mapping of Objectives, got "
            f"{type(fisher_data).__name__}"
        )
    for nm, o in zip(names, out):
        check_objective(o, f"fisher_data[{nm!r}]")
        if o.forward is not None:
            raise LossvizError(
                f"fisher_data[{nm!r}]: the empirical Fisher needs per-sample losses: build it "
                "with loss_fn and (inputs, targets) batches, not forward="
            )
    return out


def _fisher_own(states: list[dict], fobjs: list) -> Weights:
    """Fisher merging with each fine-tune's Fisher on its own Objective's data.

    ``Σ_i F_i ⊙ θ_i / Σ_i F_i`` over the varying parameters (the uniform mean where every
    ``F_i`` is 0, and for the other floating tensors), as :func:`lossviz.merge` does
    with one Objective.
    """
    from .merging import empirical_fisher, merge

    out = merge(states).state_dict()
    fishers = [empirical_fisher(o, st) for o, st in zip(fobjs, states)]
    for key in fobjs[0].layout.names:
        v0 = states[0][key]
        dev = v0.device
        num = sum(
            F[key].to(dev, torch.float64) * st[key].to(dev, torch.float64)
            for F, st in zip(fishers, states)
        )
        den = sum(F[key].to(dev, torch.float64) for F in fishers)
        ok = den != 0
        merged = torch.where(
            ok, num / torch.where(ok, den, torch.ones_like(den)), out[key].to(torch.float64)
        )
        out[key] = merged.to(v0.dtype)
    return Weights(out)


def _scales(task_scale) -> tuple[list[float], bool]:
    if task_scale is None:
        return list(TASK_SCALES), True
    if isinstance(task_scale, (list, tuple)):
        if not task_scale:
            raise LossvizError("task_scale: an empty list of λ")
        return [validate.number(v, f"task_scale[{i}]") for i, v in enumerate(task_scale)], True
    return [validate.number(task_scale, "task_scale")], False


@api
def compare_merges(
    obj: Objective,
    finetunes,
    *,
    base=None,
    methods=MERGE_METHODS,
    held_out: Objective | None = None,
    fisher_data=None,
    task_scale=None,
    kind: str = "linear",
    n: int = 11,
    accuracy: bool = True,
    progress=None,
) -> MergeComparison:
    """Merge fine-tunes of one parent several ways and show where each merge fails.

    For each merge ``θ_m`` of the fine-tunes ``θ_1, …, θ_k`` (of the parent ``θ_0 =
    base``):

    - its loss and accuracy on ``obj``'s data (:func:`lossviz.evaluate`);
    - its loss barrier to each fine-tune on the straight line between them
      (:func:`lossviz.barrier_matrix`, ``kind="linear"``: Entezari et al. 2022, or
      ``"mean"``: Frankle et al. 2020), and the barriers between the fine-tunes;
    - a per-layer gradient-mismatch table. With ``∇L`` the full-data gradient of
      ``obj``'s loss, ``[g]_ℓ`` the entries of ``g`` that belong to layer ``ℓ`` (a module
      owning varying parameters, :meth:`~lossviz.weights.Layout.by_module`) and
      ``θ_i^{ℓ←m}`` fine-tune ``i`` with the floating tensors of layer ``ℓ`` (parameters
      and buffers) replaced by the merge's::

          mismatch[m, i, ℓ]      = ‖[∇L(θ_m) - ∇L(θ_i)]_ℓ‖
          isolated[m, i, ℓ]      = ‖∇L(θ_i^{ℓ←m}) - ∇L(θ_i)‖
          isolated_loss[m, i, ℓ] = L(θ_i^{ℓ←m}) - L(θ_i)

      ``mismatch`` is the gradient mismatch ``∇L(θ_m) - ∇L(θ_i)`` that Daheim, Möllenhoff,
      Ponti, Gurevych, Khan 2024 ("Model Merging by Uncertainty-Based Gradient Matching",
      ICLR 2024) relate to the error of a merge, here split by layer; ``isolated`` (one
      layer merged at a time, as the layer-wise barriers of Adilova et al. 2024 merge one
      layer) is lossviz's diagnostic: which layer's merged weights alone move the
      gradient, and the loss, most.

    The merges (``methods``): ``"uniform"`` (:func:`lossviz.merge`); ``"fisher"`` (the
    empirical Fisher of each fine-tune on ``obj``'s data, or on its own Objective of
    ``fisher_data``); ``"task_arithmetic"`` (``θ_0 +
    λ Σ_i (θ_i - θ_0)``; λ chosen on ``held_out``'s loss from ``task_scale`` as Ilharco et
    al. 2023 choose it on validation data); ``"greedy_soup"`` (:func:`lossviz.greedy_soup`
    on ``held_out``'s accuracy); ``"model_stock"`` (:func:`model_stock`). Without
    ``held_out`` the choices are made on ``obj``'s data (said in ``notes``). Whether the
    fine-tunes really come from ``base`` cannot be read off the weights: the formulas are
    applied as given, :attr:`MergeComparison.task_cosine` shows the task vectors' cosines,
    and Model Stock warns where they point apart. The models are never changed; Ctrl-C
    returns what was computed (``complete=False``).

    Args:
        obj: the :class:`~lossviz.Objective` everything is measured on (built with
            ``loss_fn`` and ``(inputs, targets)`` batches for ``"fisher"``).
        finetunes: at least two fine-tunes: a list, a mapping name -> point or a
            :class:`~lossviz.TrajectoryRecorder` (models, state dicts, Weights or
            checkpoint paths matching ``obj``'s model).
        base: the parent ``θ_0`` (required for ``"task_arithmetic"`` and
            ``"model_stock"``).
        methods: the merges, names from :data:`MERGE_METHODS`.
        held_out: an Objective on held-out data for the greedy soup and λ (default
            ``obj``).
        fisher_data: where each fine-tune's Fisher comes from: None (``obj``'s data for
            all) or one Objective per fine-tune (a list in order, or a mapping with the
            fine-tunes' names), e.g. each on its own training data as Matena & Raffel
            2022 do.
        task_scale: λ of task arithmetic: a number, or a list of λ to choose from on
            ``held_out``'s loss (None: ``0.1, 0.2, …, 1.0``).
        kind: the barrier, ``"linear"`` or ``"mean"``.
        n: the number of α per barrier path (at least 2).
        accuracy: also the accuracy (a classification loss).
        progress: show a progress bar (None: unless ``LOSSVIZ_PROGRESS=0``).

    Returns:
        :class:`MergeComparison`: ``.table``, ``.layer_table(method)``, ``.plot()``.

    Raises:
        ArgumentTypeError: ``obj`` / ``held_out`` not an Objective; ``finetunes`` not a
            list / mapping / recorder; ``methods`` not a list of names; ``fisher_data`` not a
            list / mapping of Objectives; an argument of the wrong type.
        LossvizError: fewer than 2 fine-tunes; an unknown or repeated method; ``base``
            missing for a method that needs it; ``"fisher"`` with an Objective built with
            ``forward=``; ``accuracy`` or ``"greedy_soup"`` with an Objective built with
            ``forward=``; ``fisher_data`` without ``"fisher"``, of the wrong length or
            keys; a bad ``kind`` / ``n`` / ``task_scale``; non-floating tensors
            that differ between the checkpoints.
        CheckpointError: fine-tunes or ``base`` of a different architecture (keys or
            shapes, named), or that do not match ``obj``'s model.
    """
    from tqdm.auto import tqdm

    from .connectivity import barrier_matrix
    from .merging import greedy_soup, merge

    t0 = time.perf_counter()
    check_objective(obj)
    if held_out is not None:
        check_objective(held_out, "held_out")
    methods = _methods(methods)
    need = [m for m in methods if m in _NEEDS_BASE]
    if need and base is None:
        raise LossvizError(
            f"methods {need} need base= (the parent the fine-tunes started from); pass it, "
            "or leave them out of methods"
        )
    if fisher_data is not None and "fisher" not in methods:
        raise LossvizError("fisher_data= is only used with the method 'fisher'")
    if "fisher" in methods and fisher_data is None and obj.forward is not None:
        raise LossvizError(
            "method 'fisher' needs per-sample losses: build obj with loss_fn and "
            "(inputs, targets) batches, not forward="
        )
    if obj.forward is not None and (accuracy or "greedy_soup" in methods):
        raise LossvizError(
            "accuracy (and the greedy soup, chosen on it) needs the model's outputs: with an "
            "Objective built with forward=, pass accuracy=False and leave 'greedy_soup' out"
        )
    if kind not in ("linear", "mean"):
        raise LossvizError(f"kind must be 'linear' or 'mean', got {kind!r}")
    n = validate.integer(n, "n", low=2)
    accuracy = validate.boolean(accuracy, "accuracy")
    show = validate.progress(progress)
    scales, choose = _scales(task_scale)
    names, states = _states(finetunes, "finetunes")
    labels = [f"finetunes[{nm!r}]" for nm in names]
    check_compatible(states, labels, integers=True)
    b = None
    if base is not None:
        b = state_of(base, "base")
        check_compatible([b] + states, ["base"] + labels, integers=True)
        obj.resolve(b, name="base")
    fobjs = _fisher_objs(fisher_data, names)
    for i, (lab, st) in enumerate(zip(labels, states)):
        obj.resolve(st, name=lab)
        if held_out is not None:
            held_out.resolve(st, name=lab)
        if fobjs is not None:
            fobjs[i].resolve(st, name=lab)
    sel = obj if held_out is None else held_out
    notes: list[str] = []
    if held_out is None and ("greedy_soup" in methods or ("task_arithmetic" in methods and choose)):
        notes.append("greedy soup / λ chosen on obj's own data (no held_out)")
    metrics = ("loss", "accuracy") if accuracy else ("loss",)
    M, k = len(methods), len(states)
    layers = list(obj.layout.by_module())
    L = len(layers)
    nan = lambda *s: np.full(s, np.nan)  # noqa: E731
    res = MergeComparison(
        methods=methods,
        finetunes=names,
        layers=layers,
        loss=nan(M),
        accuracy=nan(M),
        finetune_loss=nan(k),
        finetune_accuracy=nan(k),
        barriers=nan(M, k),
        finetune_barriers=nan(k, k),
        kind=kind,
        n=n,
        mismatch=nan(M, k, L),
        isolated=nan(M, k, L),
        isolated_loss=nan(M, k, L),
        grad_norm=nan(k, L),
        notes=notes,
        provenance=Provenance.of(obj, kernel="compare_merges"),
    )
    slices = obj.layout.slices()
    layer_idx = [
        torch.cat([torch.arange(slices[p].start, slices[p].stop) for p in ps]).to(obj.device)
        for ps in obj.layout.by_module().values()
    ]
    bar = tqdm(total=M + 2, desc="merges", disable=not show, leave=False)
    try:
        # the fine-tunes (and the parent): losses, gradients
        ev = _evaluate(obj, states + ([b] if b is not None else []), metrics)
        res.finetune_loss[:] = ev["loss"][:k]
        if accuracy:
            res.finetune_accuracy[:] = ev["accuracy"][:k]
        if b is not None:
            res.base_loss = float(ev["loss"][k])
            res.base_accuracy = float(ev["accuracy"][k]) if accuracy else float("nan")
            fb, _ = obj.resolve(b)
            tv = torch.stack([obj.resolve(st)[0] - fb for st in states]).to(torch.float64)
            nrm = tv.norm(dim=1, keepdim=True)
            u = tv / torch.where(nrm > 0, nrm, torch.ones_like(nrm))
            res.task_cosine = (u @ u.T).cpu().numpy()
        g_ft = torch.empty(k, obj.layout.size, dtype=torch.float64, device=obj.device)
        ft_vals = np.full(k, np.nan)

        def keep(part, v, g):
            g_ft[part] = g
            ft_vals[part] = v.cpu().numpy()

        _value_grads(obj, states, keep)
        for j, ix in enumerate(layer_idx):
            res.grad_norm[:, j] = g_ft[:, ix].norm(dim=1).cpu().numpy()
        bar.update(1)
        merges: dict[str, dict] = {}
        for m, method in enumerate(methods):
            if method == "uniform":
                w = merge(states)
            elif method == "fisher" and fobjs is None:
                w = merge(states, method="fisher", obj=obj)
            elif method == "fisher":
                w = _fisher_own(states, fobjs)
            elif method == "greedy_soup":
                w, chosen = greedy_soup(sel, dict(zip(names, states)), progress=False)
                res.chosen = list(chosen)
            elif method == "model_stock":
                w, cos, ratio = _stock(states, b)
                _warn_negative(cos)
                res.stock_cosine, res.stock_ratio = cos, ratio
            else:  # task arithmetic
                cands = [
                    merge(states, method="task_arithmetic", base=b, weights=lam) for lam in scales
                ]
                if choose:
                    lo = _evaluate(sel, [c.state_dict() for c in cands], ("loss",))["loss"]
                    if np.isnan(lo).all():
                        raise LossvizError("task_arithmetic: the loss is NaN at every λ tried")
                    best = int(np.nanargmin(lo))
                    res.task_scales, res.task_scale_losses = list(scales), lo.tolist()
                else:
                    best = 0
                res.task_scale = scales[best]
                w = cands[best]
            st = {**w.state_dict()}
            merges[method] = st
            res.merged[method] = Weights({key: v.clone() for key, v in st.items()})
            e = _evaluate(obj, [st], metrics)
            res.loss[m] = e["loss"][0]
            if accuracy:
                res.accuracy[m] = e["accuracy"][0]
            # the per-layer diagnostic: the merge, and each fine-tune with one layer merged
            swapped = []
            for ft in states:
                for layer in layers:
                    s2 = dict(ft)
                    for key, v in ft.items():
                        if _module_of(key) == layer and _floating(v):
                            s2[key] = st[key]
                    swapped.append(s2)

            def diagnose(part, v, g, m=m):
                for row, p in enumerate(part):
                    if p == 0:  # the merge itself
                        for i in range(k):
                            dm = g[row] - g_ft[i]
                            for j, ix in enumerate(layer_idx):
                                res.mismatch[m, i, j] = float(dm[ix].norm())
                        continue
                    i, j = divmod(p - 1, L)
                    res.isolated[m, i, j] = float((g[row] - g_ft[i]).norm())
                    res.isolated_loss[m, i, j] = float(v[row]) - ft_vals[i]

            _value_grads(obj, [st] + swapped, diagnose)
            bar.update(1)
        # barriers: every merge to every fine-tune, and between the fine-tunes
        pts = {f"merge:{m}": st for m, st in merges.items()}
        pts.update({f"finetune:{nm}": st for nm, st in zip(names, states)})
        bm = barrier_matrix(obj, pts, metric="loss", kind=kind, n=n, progress=False)
        if not bm.complete:
            raise KeyboardInterrupt
        V = bm.values
        res.barriers[:] = V[: len(merges), len(merges) :]
        res.finetune_barriers[:] = V[len(merges) :, len(merges) :]
        bar.update(1)
    except KeyboardInterrupt:
        if not keep_partial():
            raise
        res.complete = False
    finally:
        bar.close()
        obj.release()
    res.seconds = time.perf_counter() - t0
    return res
