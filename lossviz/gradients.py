"""Per-group gradients and how much they conflict.

For groups ``G`` of the samples (the classes, or any per-sample group ids), the mean
gradient of each group ``ḡ_G = (1/|G|) Σ_{n ∈ G} ∇_θ ℓ_n(θ)`` (``ℓ_n`` the loss of sample
``n`` alone) and their cosine matrix ``C_{GH} = ⟨ḡ_G, ḡ_H⟩ / (‖ḡ_G‖ ‖ḡ_H‖)``: negative
entries are groups whose gradients pull the weights in opposite directions (gradient
conflict, as in Yu, Kumar, Gupta, Levine, Hausman, Finn 2020, "Gradient Surgery for
Multi-Task Learning"; per-class gradient alignment as in Fort, Nowak, Jastrzebski,
Narayanan 2019, "Stiffness: A New Perspective on Generalization in Neural Networks").
Per-sample gradients come from ``torch.func.vmap(torch.func.grad(...))`` over the samples
of each batch, in chunks sized to the memory, accumulated per group in float64.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor, nn

from . import validate
from .engine import check_objective
from .errors import ArgumentTypeError, LossvizError, NonFiniteLossError, is_oom, warn
from .formatting import html_table, short
from .interrupt import api, keep_partial
from .provenance import Provenance
from .results import DataResult
from .weights import Weights

__all__ = ["GradientConflict", "gradient_conflict"]

#: bytes of per-sample gradients per chunk on the CPU (a GPU uses a quarter of its free memory)
CPU_BUDGET = 256 * 2**20


def _cosine(g: np.ndarray) -> np.ndarray:
    """``(G, G)`` cosines of the rows of ``g`` (NaN for a zero row)."""
    nrm = np.linalg.norm(g, axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        u = g / nrm[:, None]
        c = u @ u.T
    c[nrm == 0, :] = np.nan
    c[:, nrm == 0] = np.nan
    return np.clip(c, -1.0, 1.0)


@dataclass(kw_only=True, repr=False)
class GradientConflict(DataResult):
    """Per-group mean gradients and their cosines (:func:`gradient_conflict`).

    Attributes:
        ids: the group ids, in the order of the rows.
        counts: the number of samples of each group.
        norms: ``‖ḡ_G‖``, the norm of each group's mean gradient.
        cosine: ``(G, G)``: ``⟨ḡ_G, ḡ_H⟩ / (‖ḡ_G‖ ‖ḡ_H‖)`` (NaN for a zero gradient).
        sample_norms: the mean per-sample gradient norm ``(1/|G|) Σ_{n∈G} ‖∇ℓ_n‖`` per
            group (``norms / sample_norms`` is 1 when a group's samples all agree).
        layers: the module names of ``layer_cosine`` (empty without ``by_layer``).
        layer_cosine: ``(layers, G, G)`` the cosines over each module's parameters
            (None without ``by_layer``).
        layer_norms: ``(layers, G)`` the norms of each module's part of ``ḡ_G``.
        gradients: the ``ḡ_G`` as :class:`~lossviz.Weights` (None unless
            ``keep_gradients``).
        n_samples: the samples used (all samples whose group is reported).
        complete: False after Ctrl-C (every number is then NaN; ``counts`` are the
            samples seen).
        seconds: wall time.
        provenance: where it comes from (:class:`~lossviz.provenance.Provenance`;
            None when built by hand).
    """

    ids: list
    counts: np.ndarray
    norms: np.ndarray
    cosine: np.ndarray
    sample_norms: np.ndarray
    layers: list = field(default_factory=list)
    layer_cosine: np.ndarray | None = None
    layer_norms: np.ndarray | None = None
    gradients: list | None = None
    n_samples: int = 0
    complete: bool = True
    seconds: float = 0.0

    def conflicts(self, threshold: float = 0.0) -> list[tuple]:
        """The pairs of groups whose cosine is below ``threshold``, most negative first.

        Args:
            threshold: the cosine below which a pair counts as conflicting.

        Returns:
            ``[(id_a, id_b, cosine), ...]`` over the pairs ``a < b`` (by row).
        """
        out = [
            (self.ids[i], self.ids[j], float(self.cosine[i, j]))
            for i in range(len(self.ids))
            for j in range(i + 1, len(self.ids))
            if self.cosine[i, j] < threshold
        ]
        return sorted(out, key=lambda t: t[2])

    def __repr__(self) -> str:
        g = len(self.ids)
        state = "" if self.complete else ", INCOMPLETE: interrupted (numbers NaN)"
        off = self.cosine[~np.eye(g, dtype=bool)] if g > 1 else np.zeros(0)
        ok = off[np.isfinite(off)]
        lo, mid = (ok.min(), ok.mean()) if ok.size else (np.nan, np.nan)
        lines = [
            f"GradientConflict({g} groups, {self.n_samples} samples"
            + (f", {len(self.layers)} layers" if self.layers else "")
            + f"; off-diagonal cosine min {short(lo)}, mean {short(mid)}"
            + f"{state}; {self.seconds:.2f} s)"
        ]
        w = max([len(str(i)) for i in self.ids] + [5])
        lines.append(
            "  "
            + "group".ljust(w)
            + "  count  ‖ḡ‖        mean ‖g_n‖  "
            + " ".join(str(i)[:7].rjust(7) for i in self.ids[:12])
        )
        for k, i in enumerate(self.ids):
            lines.append(
                f"  {str(i).ljust(w)}  {int(self.counts[k]):5d}  {short(self.norms[k]):<10} "
                f"{short(self.sample_norms[k]):<11} "
                + " ".join(f"{self.cosine[k, j]:7.3f}" for j in range(min(g, 12)))
            )
        return "\n".join(lines)

    def _repr_html_(self) -> str:
        head = ["group", "count", "‖ḡ‖", "mean ‖g_n‖"] + [str(i) for i in self.ids]
        rows = [
            [str(i), int(self.counts[k]), short(self.norms[k]), short(self.sample_norms[k])]
            + [f"{self.cosine[k, j]:.3f}" for j in range(len(self.ids))]
            for k, i in enumerate(self.ids)
        ]
        cap = "per-group mean gradients: norms and cosines" + (
            "" if self.complete else " INCOMPLETE: interrupted"
        )
        return html_table(head, rows, cap)

    def plot(self, layer: str | None = None):
        """The cosine matrix as a heatmap (a plotly figure).

        Args:
            layer: a module name of :attr:`layers` (None: all parameters).

        Returns:
            The figure.

        Raises:
            LossvizError: ``layer`` is not one of :attr:`layers`.
        """
        import plotly.graph_objects as go

        if layer is None:
            c, what = self.cosine, "all parameters"
        else:
            if layer not in self.layers:
                raise LossvizError(
                    f"layer {layer!r} is not one of {self.layers[:10]} "
                    "(by_layer=True computes them)"
                )
            c, what = self.layer_cosine[self.layers.index(layer)], f"layer {layer}"
        labels = [str(i) for i in self.ids]
        fig = go.Figure(
            go.Heatmap(
                z=c,
                x=labels,
                y=labels,
                zmin=-1,
                zmax=1,
                colorscale="RdBu",
                text=np.round(c, 3),
                texttemplate="%{text}" if len(labels) <= 12 else None,
                hovertemplate="%{y} · %{x}: cos %{z:.4f}<extra></extra>",
            )
        )
        fig.update_layout(
            title=f"cosine of per-group mean gradients ({what})",
            xaxis_title="group",
            yaxis_title="group",
            yaxis_autorange="reversed",
            template="plotly_white",
            width=520,
            height=480,
        )
        return fig


# --------------------------------------------------------------------------------------
def _check_obj(obj) -> None:
    check_objective(obj)
    obj.require_local("gradient_conflict")
    if obj.forward is not None:
        raise LossvizError(
            "gradient_conflict needs per-sample losses: build the Objective with loss_fn and "
            "(inputs, targets) batches, not forward="
        )
    if obj.bn == "train":
        bns = [
            n
            for n, m in obj.model.named_modules()
            if isinstance(m, nn.modules.batchnorm._BatchNorm)
        ]
        if bns:
            raise LossvizError(
                f"per-sample gradients are undefined with BatchNorm in training mode (modules "
                f"{bns[:5]}: the batch statistics couple the samples of a batch); build the "
                "Objective with bn='eval' (the running statistics)"
            )


def _as_ids(groups, name: str = "groups") -> np.ndarray:
    if isinstance(groups, Tensor):
        a = groups.detach().cpu().numpy()
    elif isinstance(groups, np.ndarray):
        a = groups
    elif isinstance(groups, (list, tuple)):
        a = np.asarray(groups)
    else:
        raise ArgumentTypeError(
            f"{name} must be 'labels' or a 1-D tensor / array / list of per-sample group ids, "
            f"got {type(groups).__name__}"
        )
    if a.ndim != 1:
        raise LossvizError(f"{name} must be 1-D (one group id per sample), got shape {a.shape}")
    if a.dtype.kind == "f":
        if not np.all(np.isfinite(a)) or not np.all(a == np.round(a)):
            raise LossvizError(
                f"{name} holds floating-point values that are not whole numbers (or NaN): group "
                "ids must be integers, strings or booleans"
            )
        a = a.astype(np.int64)
    elif a.dtype.kind not in "iubUS":
        raise ArgumentTypeError(
            f"{name} must hold integers, strings or booleans, got dtype {a.dtype}"
        )
    return a


def _labels_of(obj) -> np.ndarray:
    ys = []
    for i, (b, _) in enumerate(obj.batches()):
        _, y = validate.xy_batch(b, i, "per-sample gradients")
        if y.is_floating_point() or y.ndim != 1:
            raise LossvizError(
                f"groups='labels' needs integer class labels of shape (n,); batch {i} has "
                f"targets {str(y.dtype).replace('torch.', '')} {tuple(y.shape)}: pass the group "
                "ids explicitly"
            )
        ys.append(y.detach().cpu().numpy())
    return np.concatenate(ys)


def _chunk(obj, n_params: int, itemsize: int) -> int:
    if obj.device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(obj.device)
        budget = free // 4
    else:
        budget = CPU_BUDGET
    return max(1, int(budget // max(1, 3 * n_params * itemsize)))


@api
def gradient_conflict(
    obj,
    groups="labels",
    *,
    at=None,
    by_layer: bool = False,
    ids=None,
    keep_gradients: bool = False,
    chunk_size: int | None = None,
    progress: bool | None = None,
) -> GradientConflict:
    """Per-group mean gradients and their cosine matrix (gradient conflict between groups).

    For each group ``G`` of samples, ``ḡ_G = (1/|G|) Σ_{n ∈ G} ∇_θ ℓ_n(θ)`` with ``ℓ_n``
    the loss of sample ``n`` alone (``loss_fn(model(x_n), y_n)`` on a batch of one), and
    ``C_{GH} = ⟨ḡ_G, ḡ_H⟩ / (‖ḡ_G‖ ‖ḡ_H‖)`` (Yu et al. 2020, "Gradient Surgery for
    Multi-Task Learning": conflicting gradients have negative cosine; Fort et al. 2019,
    "Stiffness: A New Perspective on Generalization in Neural Networks", per class). For a
    mean-reduced loss whose batch loss is the mean of the per-sample losses (not a
    class-weighted cross-entropy), ``Σ_G |G| ḡ_G / N`` is the full-data gradient
    :meth:`Objective.gradient`. Per-sample gradients are
    ``torch.func.vmap(torch.func.grad(ℓ))`` over chunks of each batch (sized to the
    memory: a quarter of the free GPU memory, 256 MiB on the CPU; halved on
    out-of-memory), accumulated per group in float64 on the compute device; modules vmap
    cannot batch are run one sample at a time. The model is never changed.

    Args:
        obj: an :class:`~lossviz.Objective` built with ``loss_fn`` and ``(inputs,
            targets)`` tensor batches (not ``forward=``), BatchNorm in eval mode.
        groups: ``"labels"`` (the class targets; samples labelled with the loss's
            ``ignore_index`` are left out) or one group id per sample (a 1-D
            tensor, array or list of integers, strings or booleans) in the order of the
            Objective's samples (batch by batch).
        at: the point (default: the model's weights).
        by_layer: also the cosines over each module's parameters
            (:meth:`lossviz.weights.Layout.by_module`).
        ids: the groups to report, in this order (default: every group present,
            sorted); samples of other groups are left out.
        keep_gradients: keep the ``ḡ_G`` (``result.gradients``, one Weights per group).
        chunk_size: samples per vmap call (default: from the memory).
        progress: show a progress bar over the batches (None: unless
            ``LOSSVIZ_PROGRESS=0``).

    Returns:
        :class:`GradientConflict`: ``ids``, ``counts``, ``norms``, ``cosine``,
        ``sample_norms`` (and per layer with ``by_layer``), ``.plot()`` (a heatmap).

    Raises:
        ArgumentTypeError: ``obj`` is not an Objective; ``groups`` of the wrong type;
            a flag or count of the wrong type.
        LossvizError: ``obj`` built with ``forward=``; BatchNorm in training mode
            (``bn="train"``: per-sample gradients are undefined); ``groups`` not 1-D,
            with non-integer floats, or of another length than the data's samples;
            ``"labels"`` with targets that are not integer class labels; a group of
            ``ids`` with no samples; ``chunk_size < 1``.
        DataError: a batch that is not ``(inputs, targets)``.
        NonFiniteLossError: a group's gradient is NaN or infinite (a non-finite loss).
        CheckpointError: ``at`` does not match the model.

    Two classes whose samples pull one weight in opposite directions:

    >>> x = torch.tensor([[1.0], [1.0], [-1.0]])
    >>> y = torch.tensor([[1.0], [1.0], [1.0]])
    >>> import lossviz as lv
    >>> obj = lv.Objective(nn.Linear(1, 1, bias=False), nn.functional.mse_loss, (x, y))
    >>> r = gradient_conflict(obj, [0, 0, 1], at={"weight": torch.zeros(1, 1)}, progress=False)
    >>> r.counts.tolist(), r.norms.tolist(), r.cosine.tolist()
    ([2, 1], [2.0, 2.0], [[1.0, -1.0], [-1.0, 1.0]])
    """
    from tqdm.auto import tqdm

    _check_obj(obj)
    by_layer = validate.boolean(by_layer, "by_layer")
    keep_gradients = validate.boolean(keep_gradients, "keep_gradients")
    chunk_size = validate.integer(chunk_size, "chunk_size", low=1, none=True)
    show = validate.progress(progress)
    if isinstance(groups, str):
        validate.choice(groups, "groups", ("labels",))
        raw = _labels_of(obj)
    else:
        raw = _as_ids(groups)
        n_total = sum(nb for _, nb in obj.batches())
        if len(raw) != n_total:
            raise LossvizError(
                f"groups has {len(raw)} ids but the data holds {n_total} samples (one id per "
                "sample, in the order of the batches)"
            )
    present = np.unique(raw)
    if isinstance(groups, str):  # samples with the ignored label are in no loss term
        present = present[present != obj.ignore_index]
    if ids is None:
        order = list(present)
    else:
        if isinstance(ids, (str, bytes)) or not hasattr(ids, "__iter__"):
            raise ArgumentTypeError(f"ids must be a list of group ids, got {type(ids).__name__}")
        order = list(np.asarray(list(ids)).tolist()) if not isinstance(ids, list) else list(ids)
        if len(set(order)) != len(order):
            raise LossvizError(f"ids has repeated groups: {order}")
        empty = [g for g in order if not np.any(raw == g)]
        if empty:
            raise LossvizError(f"group(s) {empty[:10]} of ids have no samples")
    order = [v.item() if isinstance(v, np.generic) else v for v in order]
    G = len(order)
    if G == 0:
        raise LossvizError("no group to compare")
    index = {g: i for i, g in enumerate(order)}
    gidx_all = np.array([index.get(v.item() if isinstance(v, np.generic) else v, -1) for v in raw])

    flat, fixed = obj.resolve(at, name="at")
    P = obj.layout.size
    theta = obj.layout.unflatten(flat.detach())
    dev = obj.device
    sums = torch.zeros(G, P, dtype=torch.float64, device=dev)
    norm_sums = torch.zeros(G, dtype=torch.float64, device=dev)
    counts = np.bincount(gidx_all[gidx_all >= 0], minlength=G)

    def one(params, x, y):
        return obj.batch_loss(params, fixed, (x[None], y[None]))

    grad = torch.func.grad(one)
    vgrad = torch.func.vmap(grad, in_dims=(None, 0, 0))
    names = obj.layout.names
    chunk = chunk_size or _chunk(obj, P, flat.element_size())
    use_vmap = True
    t0 = time.perf_counter()
    complete, start, seen = True, 0, np.zeros(G, dtype=np.int64)

    def per_sample(x, y) -> Tensor:
        nonlocal use_vmap
        if use_vmap:
            try:
                gs = vgrad(theta, x, y)
                return torch.cat([gs[k].detach().reshape(len(x), -1) for k in names], 1)
            except Exception as e:  # noqa: BLE001 - modules vmap cannot batch: one at a time
                if is_oom(e):
                    raise
                use_vmap = False
        rows = []
        for j in range(len(x)):
            gj = grad(theta, x[j], y[j])
            rows.append(torch.cat([gj[k].detach().reshape(-1) for k in names]))
        return torch.stack(rows)

    bar = tqdm(total=len(raw), desc="per-sample gradients", disable=not show, leave=False)
    try:
        for i, (b, nb) in enumerate(obj.batches()):
            x, y = validate.xy_batch(b, i, "per-sample gradients")
            gb = torch.as_tensor(gidx_all[start : start + nb], device=dev)
            j = 0
            while j < nb:
                c = min(chunk, nb - j)
                try:
                    g = per_sample(x[j : j + c], y[j : j + c]).to(torch.float64)
                except Exception as e:  # noqa: BLE001 - out of memory: smaller chunks
                    if not is_oom(e) or c == 1:
                        raise
                    chunk = max(1, c // 2)
                    continue
                gi = gb[j : j + c]
                keep = gi >= 0
                sums.index_add_(0, gi[keep], g[keep])
                norm_sums.index_add_(0, gi[keep], g[keep].norm(dim=1))
                j += c
                bar.update(c)
            seen += np.bincount(
                gidx_all[start : start + nb][gidx_all[start : start + nb] >= 0], minlength=G
            )
            start += nb
    except KeyboardInterrupt:
        if not keep_partial():
            raise
        complete = False
    finally:
        bar.close()
        obj.release()

    cnt = torch.as_tensor(counts, dtype=torch.float64, device=dev)
    mean = (sums / cnt[:, None]).cpu().numpy()
    bad = [order[k] for k in np.flatnonzero(~np.isfinite(mean).all(1))] if complete else []
    if bad:
        raise NonFiniteLossError(
            f"the per-sample gradients of group(s) {bad[:10]} hold NaN or inf at this point "
            "(a non-finite loss on some of their samples)"
        )
    if complete:
        norms = np.linalg.norm(mean, axis=1)
        cosine = _cosine(mean)
        sample_norms = (norm_sums / cnt).cpu().numpy()
        zero = [order[k] for k in np.flatnonzero(norms == 0)]
        if zero:
            warn(f"the mean gradient of group(s) {zero[:10]} is exactly 0: their cosines are NaN")
    else:
        counts = seen
        norms = sample_norms = np.full(G, np.nan)
        cosine = np.full((G, G), np.nan)
    res = GradientConflict(
        ids=order,
        counts=np.asarray(counts, dtype=np.int64),
        norms=norms,
        cosine=cosine,
        sample_norms=sample_norms,
        n_samples=int(np.sum(counts)),
        complete=complete,
        provenance=Provenance.of(obj, kernel="gradient_conflict", at=at),
    )
    if by_layer:
        sl = obj.layout.slices()
        mods = obj.layout.by_module()
        res.layers = list(mods)
        res.layer_cosine = np.full((len(mods), G, G), np.nan)
        res.layer_norms = np.full((len(mods), G), np.nan)
        if complete:
            for li, params in enumerate(mods.values()):
                part = np.concatenate([mean[:, sl[p]] for p in params], axis=1)
                res.layer_norms[li] = np.linalg.norm(part, axis=1)
                res.layer_cosine[li] = _cosine(part)
    if keep_gradients and complete:
        tmp = torch.as_tensor(mean, dtype=obj.dtype)
        res.gradients = [
            Weights({k: v.clone() for k, v in obj.layout.unflatten(tmp[k_]).items()})
            for k_ in range(G)
        ]
    res.seconds = time.perf_counter() - t0
    return res
