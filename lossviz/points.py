"""Several points at once: the one parser every function that takes several points uses.

A function that takes several points (``sharpness_along``, ``trace_along``,
``roughness_along``, ``merge``, ``greedy_soup``, ``averaging_variance``,
``barrier_matrix``, ``pca_directions``, ``dash.spectrum``) accepts the same three forms:

- a list or tuple (or any other iterable) of points: labelled ``0, 1, …``;
- a dict ``label -> point`` (e.g. ``{step: state_dict}``): labelled by its keys;
- a :class:`~lossviz.TrajectoryRecorder` (anything with ``checkpoints`` and ``steps``):
  its snapshots, labelled by their steps.

A point is whatever the function takes for one point (a model, a state dict,
:class:`~lossviz.Weights`, a checkpoint path, a flat tensor); this module does not resolve
points, it only separates them and their labels. A single point where several are
expected (a model, a path, a tensor, or a mapping ``str -> tensor``: a state dict) is an
error that says to wrap it in a list.

>>> import torch
>>> a, b = {"w": torch.zeros(2)}, {"w": torch.ones(2)}
>>> as_points([a, b]).labels
[0, 1]
>>> as_points({10: a, 20: b}).labels
[10, 20]
>>> as_points(a, "checkpoints")  # doctest: +ELLIPSIS
Traceback (most recent call last):
...
lossviz.errors.ArgumentTypeError: checkpoints is a single point (a state dict): pass a list ...
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from typing import Any, NamedTuple

import numpy as np
from torch import Tensor, nn

from .errors import ArgumentTypeError, LossvizError

__all__ = ["Points", "as_points", "is_recorder"]

_FORMS = "a list of points, a dict label -> point or a TrajectoryRecorder"


class Points(NamedTuple):
    """Several points and their labels, as :func:`as_points` returns them.

    Attributes:
        labels: ``labels[i]`` names ``points[i]``.
        points: The points, unresolved, in order.
        keyed: True when the labels were given (the keys of a dict, the steps of a
            recorder), False for the positions ``0, 1, …`` of a list.
    """

    labels: list
    points: list
    keyed: bool

    def items(self) -> list[tuple[Any, Any]]:
        """``[(label, point), ...]``."""
        return list(zip(self.labels, self.points))


def is_recorder(x) -> bool:
    """Whether ``x`` is a trajectory recorder.

    That is an object (not a mapping, a sequence, a tensor or a module) with
    ``checkpoints`` and ``steps``, such as :class:`~lossviz.TrajectoryRecorder`.

    Args:
        x: Any object.

    Returns:
        True for a recorder.
    """
    return (
        not isinstance(x, (Mapping, list, tuple, Tensor, nn.Module))
        and hasattr(x, "checkpoints")
        and hasattr(x, "steps")
    )


def _single(x) -> str | None:
    """What kind of single point ``x`` is, or None when it is not one."""
    if isinstance(x, nn.Module):
        return "a model"
    if isinstance(x, (str, bytes)) or isinstance(x, os.PathLike):
        return "a checkpoint path"
    if isinstance(x, Tensor):
        return "a tensor"
    if isinstance(x, np.ndarray):
        return "an array"
    if (
        isinstance(x, Mapping)
        and x
        and all(isinstance(k, str) for k in x)
        and all(isinstance(v, Tensor) for v in x.values())
    ):
        return "a state dict"
    return None


def as_points(points, name: str = "points", *, at_least: int = 1, what: str = "") -> Points:
    """``points`` (a list, a dict ``label -> point`` or a recorder) as :class:`Points`.

    The result is ``(labels, points, keyed)``.

    Args:
        points: the points, in one of the three forms (see the module docstring).
        name: the argument's name, used in error messages.
        at_least: the fewest points the caller can use.
        what: the caller's name, for the "needs at least" message.

    Returns:
        :class:`Points`: the labels (dict keys, recorder steps, or ``0, 1, …``) and the
        points, in order.

    Raises:
        ArgumentTypeError: ``points`` is a single point, None, or not one of the forms.
        LossvizError: fewer than ``at_least`` points (e.g. an empty list), or a recorder
            whose steps and checkpoints differ in number.
    """
    if points is None:
        raise ArgumentTypeError(f"{name} must be {_FORMS}, got None")
    single = _single(points)
    if single is not None:
        raise ArgumentTypeError(
            f"{name} is a single point ({single}): pass a list [a, b, ...] or a dict label -> point"
        )
    if is_recorder(points):
        labels, pts, keyed = list(points.steps), list(points.checkpoints), True
        if len(labels) != len(pts):
            raise LossvizError(
                f"{name}: the recorder has {len(labels)} steps for {len(pts)} checkpoints"
            )
    elif isinstance(points, Mapping):
        labels, pts, keyed = list(points.keys()), list(points.values()), True
    elif isinstance(points, Iterable):
        pts, keyed = list(points), False
        labels = list(range(len(pts)))
    else:
        raise ArgumentTypeError(f"{name} must be {_FORMS}, got {type(points).__name__}")
    if not pts:
        noun = name if name.endswith("s") else "points"
        raise LossvizError(f"{name} is empty: no {noun} given (at least {at_least} needed)")
    if len(pts) < at_least:
        raise LossvizError(
            f"{name}: {what or 'this'} needs at least {at_least} points, got {len(pts)}"
        )
    return Points(labels, pts, keyed)
