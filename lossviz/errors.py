"""Errors lossviz raises for bad input.

All are ``ValueError`` subclasses; :class:`ArgumentTypeError` is also a ``TypeError``.
"""

import contextlib
import os
import sys
import warnings


class LossvizError(ValueError):
    """Base class of lossviz's input errors."""


class ArgumentTypeError(LossvizError, TypeError):
    """An argument of the wrong type (catch it as ``TypeError`` or ``LossvizError``)."""


class CheckpointError(LossvizError):
    """A checkpoint or point whose keys or shapes do not match the model."""


class DataError(LossvizError):
    """Empty or malformed data."""


class NonFiniteLossError(LossvizError):
    """The loss (or a curvature product) is NaN or infinite at the point."""


@contextlib.contextmanager
def named(name: str | None):
    """Prefix the message of an error raised inside with the argument it is about.

    Nothing changes when ``name`` is None::

        with named("points[2]"):
            obj.resolve(p)   # CheckpointError("points[2]: point does not match ...")

    Args:
        name: The argument's name, or None.

    Yields:
        None.

    Raises:
        LossvizError: the same subclass as the one raised inside, with the prefixed
            message.
        ArgumentTypeError: in place of a ``TypeError`` raised inside.
    """
    if name is None:
        yield
        return
    try:
        yield
    except LossvizError as e:
        raise type(e)(f"{name}: {e}") from None
    except TypeError as e:
        raise ArgumentTypeError(f"{name}: {e}") from None


_PKG = os.path.dirname(os.path.abspath(__file__))


def warn(message: str, category=UserWarning) -> None:
    """``warnings.warn`` attributed to the first frame outside lossviz (the user's line).

    In a ``torch.distributed`` job only rank 0 warns (see :func:`is_rank_zero`).

    Args:
        message: The warning text.
        category: The warning class.
    """
    if not is_rank_zero():
        return
    f, level = sys._getframe(0), 1
    while f is not None and os.path.abspath(f.f_code.co_filename).startswith(_PKG + os.sep):
        f, level = f.f_back, level + 1
    warnings.warn(message, category, stacklevel=level)


def is_rank_zero() -> bool:
    """Whether this process is rank 0 of a ``torch.distributed`` job (or not in one).

    Progress bars and warnings show on rank 0 only.

    Returns:
        False on the ranks other than 0 of an initialised default process group.
    """
    import torch.distributed as dist

    return not (dist.is_available() and dist.is_initialized()) or dist.get_rank() == 0


def is_oom(e: BaseException) -> bool:
    """Whether ``e`` is an out-of-memory error (CUDA, MPS or a failed CPU allocation).

    The one test every memory-aware loop uses to halve its chunk.

    Args:
        e: The caught exception.

    Returns:
        True for ``torch.OutOfMemoryError``, ``MemoryError`` and a ``RuntimeError`` whose
        message says "out of memory" or "can't allocate".

    Examples:
        >>> is_oom(RuntimeError("CUDA out of memory. Tried to allocate 2 GiB")), is_oom(KeyError())
        (True, False)
    """
    import torch

    oom = getattr(torch, "OutOfMemoryError", None)
    if (oom is not None and isinstance(e, oom)) or isinstance(e, MemoryError):
        return True
    s = str(e).lower()
    return isinstance(e, RuntimeError) and ("out of memory" in s or "can't allocate" in s)
