"""Argument checks shared by every public function: one helper per kind of argument.

Each returns the normalized value or raises an error that names the argument, says what
was expected and shows what was given: :class:`~lossviz.errors.ArgumentTypeError` (a
``TypeError`` and a ``LossvizError``) for the wrong type,
:class:`~lossviz.errors.LossvizError` (a ``ValueError``) for a value out of range. They
run before any work starts.

>>> integer(3, "k")
3
>>> integer(2.5, "k")
Traceback (most recent call last):
...
lossviz.errors.ArgumentTypeError: k must be an integer, got 2.5 (float)
>>> number(0, "tol", low=0, low_open=True)
Traceback (most recent call last):
...
lossviz.errors.LossvizError: tol must be > 0, got 0
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable
from numbers import Integral, Real

import numpy as np
import torch

from .errors import ArgumentTypeError, DataError, LossvizError


def show(value) -> str:
    """``repr(value)`` cut to 60 characters, followed by the type name in parentheses.

    Args:
        value: Any object.

    Returns:
        The text error messages show for a given value.
    """
    s = repr(value)
    if len(s) > 60:
        s = s[:57] + "..."
    return f"{s} ({type(value).__name__})"


def integer(
    value, name: str, *, low: int | None = 1, high: int | None = None, none: bool = False
) -> int | None:
    """An integer in ``[low, high]`` (``None`` allowed when ``none``).

    Python and NumPy integers and one-element integer tensors are accepted; booleans,
    floats (even ``3.0``) and strings are refused.

    Args:
        value: The value to check.
        name: The argument's name (for messages).
        low: The smallest allowed value (no bound when None).
        high: The largest allowed value (no bound when None).
        none: Whether None is allowed (and returned).

    Returns:
        ``int(value)``, or None.

    Raises:
        ArgumentTypeError: if ``value`` is not an integer.
        LossvizError: if it is outside ``[low, high]``.
    """
    if value is None and none:
        return None
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (Integral, np.integer)):
        if (
            isinstance(value, torch.Tensor)
            and value.numel() == 1
            and not value.is_floating_point()
            and value.dtype != torch.bool
        ):
            value = int(value)
        else:
            raise ArgumentTypeError(f"{name} must be an integer, got {show(value)}")
    value = int(value)
    if low is not None and value < low:
        raise LossvizError(f"{name} must be an integer >= {low}, got {value}")
    if high is not None and value > high:
        raise LossvizError(f"{name} must be an integer <= {high}, got {value}")
    return value


def number(
    value,
    name: str,
    *,
    low: float | None = None,
    high: float | None = None,
    low_open: bool = False,
    high_open: bool = False,
    none: bool = False,
    finite: bool = True,
) -> float | None:
    """A real number (Python, NumPy or one-element tensor) in the given range.

    NaN is always refused, infinities unless ``finite=False``.

    Args:
        value: The value to check.
        name: The argument's name (for messages).
        low: The lower bound (none when None).
        high: The upper bound (none when None).
        low_open: Exclude ``low`` itself.
        high_open: Exclude ``high`` itself.
        none: Whether None is allowed (and returned).
        finite: Whether infinities are refused.

    Returns:
        ``float(value)``, or None.

    Raises:
        ArgumentTypeError: if ``value`` is not a real number (booleans and complex numbers
            included).
        LossvizError: if it is NaN, infinite (with ``finite``) or out of range.
    """
    if value is None and none:
        return None
    if isinstance(value, torch.Tensor) and value.numel() == 1 and value.dtype != torch.bool:
        value = value.item()
    if (
        isinstance(value, (bool, np.bool_))
        or not isinstance(value, (Real, np.number))
        or isinstance(value, complex)
    ):
        raise ArgumentTypeError(f"{name} must be a number, got {show(value)}")
    value = float(value)
    if math.isnan(value) or (finite and math.isinf(value)):
        raise LossvizError(f"{name} must be a finite number, got {value}")
    if low is not None and (value <= low if low_open else value < low):
        raise LossvizError(f"{name} must be {'>' if low_open else '>='} {low:g}, got {value:g}")
    if high is not None and (value >= high if high_open else value > high):
        raise LossvizError(f"{name} must be {'<' if high_open else '<='} {high:g}, got {value:g}")
    return value


def choice(value, name: str, choices: Iterable):
    """One of ``choices``, compared with ``==`` and the same type.

    Args:
        value: The value to check.
        name: The argument's name (for messages).
        choices: The allowed values.

    Returns:
        ``value`` unchanged.

    Raises:
        LossvizError: if ``value`` is none of ``choices`` (a comparison that raises counts
            as no match).
    """
    choices = tuple(choices)
    try:
        ok = any(value == c and type(value) is type(c) for c in choices)
    except Exception:  # noqa: BLE001 - e.g. a tensor compared with a string
        ok = False
    if not ok:
        opts = ", ".join(repr(c) for c in choices)
        raise LossvizError(f"{name} must be one of {opts}; got {show(value)}")
    return value


def boolean(value, name: str) -> bool:
    """True or False (a Python or NumPy bool, nothing else).

    Args:
        value: The value to check.
        name: The argument's name (for messages).

    Returns:
        ``bool(value)``.

    Raises:
        ArgumentTypeError: if ``value`` is not a bool.
    """
    if not isinstance(value, (bool, np.bool_)):
        raise ArgumentTypeError(f"{name} must be True or False, got {show(value)}")
    return bool(value)


def progress(value, name: str = "progress") -> bool:
    """Whether to show a progress bar: the one reading of every ``progress=`` argument.

    In a ``torch.distributed`` job the bars show on rank 0 only.

    Args:
        value: None (on, unless the environment sets ``LOSSVIZ_PROGRESS`` to ``0``,
            ``false`` or ``False``), True or False.
        name: The argument's name (for messages).

    Returns:
        True to show the bar.

    Raises:
        ArgumentTypeError: if ``value`` is neither None nor a bool.
    """
    from .errors import is_rank_zero

    if value is None:
        on = os.environ.get("LOSSVIZ_PROGRESS", "1") not in ("0", "false", "False")
    else:
        on = boolean(value, name)
    return on and is_rank_zero()


def seed(value, name: str = "seed") -> int:
    """A seed for ``torch.Generator.manual_seed``: an integer >= 0.

    Args:
        value: The value to check.
        name: The argument's name (for messages).

    Returns:
        The seed as an ``int``.

    Raises:
        ArgumentTypeError: if ``value`` is not an integer.
        LossvizError: if it is negative.
    """
    return integer(value, name, low=0)


def callable_(value, name: str, what: str = "a callable", *, none: bool = False):
    """A callable (None allowed when ``none``).

    Args:
        value: The value to check.
        name: The argument's name (for messages).
        what: How the message describes what was expected.
        none: Whether None is allowed (and returned).

    Returns:
        ``value`` unchanged.

    Raises:
        ArgumentTypeError: if ``value`` is not callable.
    """
    if value is None and none:
        return None
    if not callable(value):
        raise ArgumentTypeError(f"{name} must be {what}, got {show(value)}")
    return value


def device(value, name: str = "device") -> torch.device:
    """A device this torch can use.

    ``"cuda"`` needs a CUDA build and a GPU, ``"mps"`` an Apple GPU; an index must exist.

    Args:
        value: A ``torch.device``, a string such as ``"cpu"`` or ``"cuda:0"``, or an int.
        name: The argument's name (for messages).

    Returns:
        The ``torch.device``.

    Raises:
        ArgumentTypeError: if ``value`` is of another type.
        LossvizError: if it names no device, an unavailable one, or an unsupported type.
    """
    if isinstance(value, torch.device):
        dev = value
    elif isinstance(value, (str, int)) and not isinstance(value, bool):
        try:
            dev = torch.device(value)
        except (RuntimeError, TypeError, ValueError) as e:
            raise LossvizError(f"{name}={value!r} is not a device ({e})") from None
    else:
        raise ArgumentTypeError(
            f"{name} must be a torch.device or a string like 'cpu' or 'cuda', got {show(value)}"
        )
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            why = (
                "this torch build has no CUDA support"
                if torch.version.cuda is None
                else "no CUDA device is visible"
            )
            raise LossvizError(f"{name}={str(dev)!r} but {why}; use device='cpu'")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise LossvizError(
                f"{name}={str(dev)!r} but only {torch.cuda.device_count()} CUDA device(s) exist"
            )
    elif dev.type == "mps":
        if not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
            raise LossvizError(
                f"{name}='mps' but no Apple GPU (MPS) is available; use device='cpu'"
            )
    elif dev.type not in ("cpu", "xpu", "hpu", "privateuseone"):
        raise LossvizError(f"{name}={str(dev)!r}: unsupported device type {dev.type!r}")
    return dev


def xy_batch(batch, i: int, what: str):
    """A batch's ``(inputs, targets)`` tensors, for computations that need them per sample.

    Args:
        batch: one batch of an Objective's data.
        i: its index, for the message.
        what: what needs them (``"the empirical Fisher"``), for the message.

    Returns:
        ``(inputs, targets)``: the batch's first two entries.

    Raises:
        DataError: the batch is not a tuple / list starting with two tensors.
    """
    if not (
        isinstance(batch, (tuple, list))
        and len(batch) >= 2
        and isinstance(batch[0], torch.Tensor)
        and isinstance(batch[1], torch.Tensor)
    ):
        raise DataError(
            f"{what} needs (inputs, targets) tensor batches; batch {i} is {type(batch).__name__}"
        )
    return batch[0], batch[1]
