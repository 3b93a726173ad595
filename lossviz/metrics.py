"""Metrics evaluated at points in weight space: what ``metrics=`` accepts, how accuracy is read.

:func:`resolve_metrics` turns ``metrics=`` (a name, a callable ``(outputs, targets) ->
scalar``, or a list / mapping of them) into an ordered ``name -> metric`` dict;
:func:`accuracy_rule` decides, from the outputs and the targets, how accuracy applies
(class scores and labels, one logit / probability per sample with 0/1 targets, or class
probabilities as targets), or says why it does not; :func:`accuracy_value` applies a rule
to one batch; :func:`as_scalar` checks a metric's value. The engine
(:class:`lossviz.engine.Engine`) combines the per-batch values over the data.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping

import torch
from torch import Tensor, nn

from . import validate
from .errors import ArgumentTypeError, LossvizError
from .objective import Objective, is_one_of, loss_target

__all__ = [
    "BUILTIN",
    "accuracy_rule",
    "accuracy_value",
    "as_scalar",
    "loss_evaluator",
    "resolve_metrics",
]

#: the metrics known by name
BUILTIN = ("loss", "accuracy", "error")


def resolve_metrics(obj: Objective, metrics, name: str = "metrics") -> dict[str, str | Callable]:
    """``metrics`` as an ordered ``name -> "loss" | "accuracy" | "error" | callable``.

    A name is its own key; a callable is keyed by its ``__name__`` (``"metric{i}"`` for a
    lambda, ``i`` its position); a mapping gives the keys.

    Args:
        obj: the :class:`~lossviz.objective.Objective` the metrics are for (with a custom
            ``forward=`` only ``"loss"`` is available).
        metrics: a name (``"loss"``, ``"accuracy"``, ``"error"``), a callable
            ``(outputs, targets) -> scalar``, or a list / mapping name -> of them.
        name: the argument's name, used in the error messages.

    Returns:
        The ordered dict ``name -> metric``.

    Raises:
        ArgumentTypeError: if ``metrics`` or one of its entries is neither a name nor a
            callable.
        LossvizError: for an unknown metric name, a key given twice, no metric at all,
            or a metric other than ``"loss"`` with a custom ``forward=``.
    """
    if isinstance(metrics, str) or callable(metrics):
        metrics = (metrics,)
    if isinstance(metrics, Mapping):
        items = list(metrics.items())
    elif isinstance(metrics, Iterable) and not isinstance(metrics, (bytes, Tensor)):
        items = []
        for i, m in enumerate(metrics):
            if isinstance(m, str):
                items.append((m, m))
            elif callable(m):
                mname = getattr(m, "__name__", "") or f"metric{i}"
                items.append((f"metric{i}" if mname == "<lambda>" else mname, m))
            else:
                raise ArgumentTypeError(
                    f"{name}: a metric is 'loss', 'accuracy', 'error' or a callable "
                    f"(outputs, targets) -> scalar, got {validate.show(m)}"
                )
    else:
        raise ArgumentTypeError(
            f"{name} must be a metric name, a callable, or a list / mapping of them, got "
            f"{type(metrics).__name__}"
        )
    out: dict[str, str | Callable] = {}
    for mname, m in items:
        if isinstance(m, str) and m not in BUILTIN:
            raise LossvizError(
                f"{name}: unknown metric {m!r}; use one of {BUILTIN} or a callable "
                "(outputs, targets) -> scalar"
            )
        if not isinstance(m, str) and not callable(m):
            raise ArgumentTypeError(
                f"{name}: metric {mname!r} must be a name or a callable, got {validate.show(m)}"
            )
        if mname in out:
            raise LossvizError(f"{name}: metric name {mname!r} given twice")
        out[str(mname)] = m
    if not out:
        raise LossvizError(f"{name} is empty: no metric to compute")
    if obj.forward is not None and any(m != "loss" for m in out.values()):
        raise LossvizError(
            f"{name}: with a custom forward= only the 'loss' metric is available "
            "(outputs and targets are not known)"
        )
    return out


# losses whose outputs are probabilities or values compared with 0/1 targets directly
# (threshold ½); the logit losses (BCEWithLogits) and unknown ones threshold at 0
_F = nn.functional
_HALF_THRESHOLD = (
    nn.BCELoss,
    _F.binary_cross_entropy,
    nn.MSELoss,
    _F.mse_loss,
    nn.L1Loss,
    _F.l1_loss,
    nn.SmoothL1Loss,
    _F.smooth_l1_loss,
    nn.HuberLoss,
    _F.huber_loss,
)


def _is_binary(ys: list[Tensor]) -> bool:
    return all(bool(((y == 0) | (y == 1)).all()) for y in ys)


def accuracy_rule(out, ys: list[Tensor], loss_fn=None, ignore_index: int = -100):
    """How accuracy is read from ``out`` and targets like ``ys``, or why it does not apply.

    - class scores ``(..., C)``, ``C >= 2``, with integer labels ``(...)`` in ``[0, C)``:
      ``argmax == label`` (labels equal to ``ignore_index`` are left out);
    - one output per sample (``(N,)`` or ``(N, 1)``) with targets that are all 0 or 1
      (integer, bool or float): ``(output > t) == target``, ``t = 0.5`` when the loss takes
      probabilities or is a regression loss on 0/1 targets (``BCELoss``, ``MSELoss``, …),
      else ``t = 0`` (logits, ``BCEWithLogitsLoss``);
    - targets shaped like the outputs ``(N, C)`` that are class probabilities (one-hot, or
      non-negative rows summing to 1): ``argmax == argmax``.

    Anything else (float regression targets, multi-label 0/1 rows, mismatched shapes) has no
    accuracy.

    Args:
        out: the model's outputs on one batch.
        ys: the targets of every batch to check (the labels must be in range in all).
        loss_fn: the loss (through ``functools.partial``), to choose the threshold of a
            one-output model; None: threshold 0.
        ignore_index: the class label left out (a classification loss's
            ``ignore_index``).

    Returns:
        A rule for :func:`accuracy_value`, one of ``("classes", ignore_index)``,
        ``("binary1", t)`` (outputs ``(N, 1)``), ``("binary", t)`` or ``("onehot",)``; or
        a string saying why accuracy does not apply. It never raises for data that has
        no accuracy.
    """
    y = ys[0]
    if not isinstance(out, Tensor) or not isinstance(y, Tensor):
        return (
            f"the outputs ({type(out).__name__}) and targets ({type(y).__name__}) are not "
            "both tensors"
        )
    if y.is_complex() or out.is_complex() or not out.is_floating_point():
        return f"outputs {out.dtype} / targets {y.dtype} are not real-valued scores and labels"
    f, _ = loss_target(loss_fn) if loss_fn is not None else (None, {})
    thr = 0.5 if f is not None and is_one_of(f, _HALF_THRESHOLD) else 0.0
    integral = not y.is_floating_point()
    if out.ndim >= 1 and out.ndim == y.ndim + 1 and out.shape[:-1] == y.shape:
        c = int(out.shape[-1])
        if c >= 2:
            if not integral:
                return "class scores need integer class labels, the targets are floating-point"
            for yy in ys:
                ok = ((yy >= 0) & (yy < c)) | (yy == ignore_index)
                if not bool(ok.all()):
                    return f"the targets hold labels outside 0..{c - 1}"
            return ("classes", ignore_index)
        if c == 1 and _is_binary(ys):
            return ("binary1", thr)
        return "one output per sample with targets that are not all 0 or 1 (a regression)"
    if out.shape == y.shape and out.ndim >= 1:
        if out.ndim == 1 or out.shape[-1] == 1:
            if _is_binary(ys):
                return ("binary", thr)
            return "one output per sample with targets that are not all 0 or 1 (a regression)"
        if all(
            bool((yy >= 0).all()) and bool(((yy.to(torch.float64).sum(-1) - 1).abs() <= 1e-3).all())
            for yy in ys
        ):
            return ("onehot",)
        return (
            "targets shaped like the outputs that are not class probabilities (rows of "
            "non-negative numbers summing to 1): a regression or multi-label task"
        )
    return "the outputs and targets do not have the shapes of class scores and labels"


def accuracy_value(out: Tensor, y: Tensor, rule=None) -> Tensor:
    """The accuracy (float64 scalar) of outputs ``out`` on targets ``y`` by ``rule``.

    The fraction of samples predicted right (for class labels, over the samples whose
    label is not ``ignore_index``; NaN if there is none).

    Args:
        out: the model's outputs on one batch.
        y: the batch's targets.
        rule: a rule from :func:`accuracy_rule` (None: worked out from ``out`` and ``y``,
            with ``ignore_index=-100`` and threshold 0).

    Returns:
        A float64 scalar tensor in ``[0, 1]``.

    Raises:
        LossvizError: if ``rule`` is None and accuracy does not apply to ``out`` and
            ``y``.
    """
    if rule is None:
        rule = accuracy_rule(out, [y])
        if isinstance(rule, str):
            raise LossvizError(
                f"accuracy does not apply to outputs {tuple(out.shape)} and targets "
                f"{tuple(y.shape)}: {rule}"
            )
    kind = rule[0]
    if kind == "classes":
        valid = y != rule[1]
        correct = (out.argmax(-1) == y) & valid
        return correct.sum(dtype=torch.float64) / valid.sum(dtype=torch.float64)
    if kind == "binary1":
        correct = (out[..., 0] > rule[1]) == (y > 0.5)
    elif kind == "binary":
        correct = (out > rule[1]) == (y > 0.5)
    else:
        correct = out.argmax(-1) == y.argmax(-1)
    return correct.to(torch.float64).mean()


def as_scalar(v, name: str) -> Tensor:
    """A metric's value as a float64 scalar; anything else is an error naming the metric.

    Args:
        v: the value a metric returned.
        name: the metric's name, used in the error message.

    Returns:
        ``v`` as a 0-d float64 tensor.

    Raises:
        LossvizError: if ``v`` is not a tensor with one element.
    """
    if not isinstance(v, Tensor) or v.numel() != 1:
        shape = tuple(v.shape) if isinstance(v, Tensor) else type(v).__name__
        raise LossvizError(
            f"metric {name!r} must return a scalar tensor (mean over the batch), got {shape}"
        )
    return v.reshape(()).to(torch.float64)


def loss_evaluator(loss_fn) -> Callable:
    """``loss_fn`` for evaluation without gradients: the same value, faster where known.

    A cross-entropy on class labels (``torch.nn.functional.cross_entropy`` itself, or an
    ``nn.CrossEntropyLoss`` without class weights or label smoothing, reduction ``"mean"``
    or ``"sum"``) is evaluated on a CPU, for 2-D float32 / float64 scores ``z`` and 1-D
    integer labels ``y``, as

        ``ℓ_i = logsumexp_c(z_ic) − z_{i,y_i}``,
        ``L = Σ_{i: y_i ≠ ignore} ℓ_i / |{i: y_i ≠ ignore}|``

    (the sum without the division for ``reduction="sum"``), which is the definition of
    ``cross_entropy``: PyTorch's CPU ``log_softmax`` kernel, which ``cross_entropy``
    runs, is about twice as slow as this for a few classes (the 10 of digits), and the
    loss is most of the cost of a small model's forward. Every other loss, input shape,
    dtype (autocast's half types), device, or a call with gradients enabled, goes to
    ``loss_fn`` unchanged. Same value up to float rounding (the order of the sums).

    Args:
        loss_fn: the Objective's loss function ``(outputs, targets) -> scalar``.

    Returns:
        A callable ``(outputs, targets) -> scalar`` with ``loss_fn``'s value.

    Examples:
        >>> import torch
        >>> z, y = torch.randn(50, 10, dtype=torch.float64), torch.randint(0, 10, (50,))
        >>> f = loss_evaluator(torch.nn.functional.cross_entropy)
        >>> bool(torch.isclose(f(z, y), torch.nn.functional.cross_entropy(z, y)))
        True
    """
    if loss_fn is nn.functional.cross_entropy:
        ignore, total = -100, False
    elif (
        type(loss_fn) is nn.CrossEntropyLoss
        and loss_fn.weight is None
        and loss_fn.label_smoothing == 0.0
        and loss_fn.reduction in ("mean", "sum")
    ):
        ignore, total = loss_fn.ignore_index, loss_fn.reduction == "sum"
    else:
        return loss_fn

    labels: dict = {}  # the last targets seen, and what depends only on them

    def cross_entropy(out, y):
        if not (
            isinstance(out, Tensor)
            and isinstance(y, Tensor)
            and out.dim() == 2
            and y.dim() == 1
            and out.device.type == "cpu"
            and out.dtype in (torch.float32, torch.float64)
            and y.dtype in (torch.int64, torch.int32)
            and y.device == out.device
            and y.shape[0] == out.shape[0]
            and out.shape[1] > 0
            and not torch.is_grad_enabled()
        ):
            return loss_fn(out, y)
        if labels.get("y") is not y or labels["version"] != y._version:
            keep = y != ignore
            n = int(keep.sum())
            labels.update(
                y=y,
                version=y._version,
                index=torch.where(keep, y, 0).long()[:, None],
                keep=None if n == y.shape[0] else keep,
                n=n,
            )
        # scores transposed: the max, exp and sum run along the samples (contiguous)
        t = out.T.contiguous()
        top = t.amax(0)
        per = (t - top).exp_().sum(0).log_().add_(top).sub_(out.gather(1, labels["index"])[:, 0])
        if labels["keep"] is not None:
            per = torch.where(labels["keep"], per, 0.0)
        return per.sum() if total else per.sum() / labels["n"]

    return cross_entropy
