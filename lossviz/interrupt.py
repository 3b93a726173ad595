"""What a public call does when it is interrupted (Ctrl-C).

Also the wrapper every public entry point goes through.

The rule: an interrupt either propagates (after the call has restored its state) or the
result is visibly partial (``complete=False``, NaN where nothing was computed), never a
number that looks final. Only the *outermost* lossviz call may turn an interrupt into a
partial result: an inner call (``hessian_eigs`` inside ``sharpness_along``, ``evaluate``
inside ``barrier_matrix``) lets the ``KeyboardInterrupt`` through, and the outer call
either marks its own result partial or lets it propagate too.

:func:`api` also runs every public call with inference mode off, so a call made inside
``torch.inference_mode()`` (or on data created there) can still differentiate.
"""

from __future__ import annotations

import contextvars
import functools

import torch

_DEPTH: contextvars.ContextVar[int] = contextvars.ContextVar("lossviz_call_depth", default=0)


def api(fn):
    """Mark ``fn`` as a public lossviz call (see the module docstring).

    Args:
        fn: The public function to wrap.

    Returns:
        A wrapper (``functools.wraps``) that counts the nesting depth of lossviz calls and
        runs ``fn`` with inference mode off.
    """

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        token = _DEPTH.set(_DEPTH.get() + 1)
        try:
            if torch.is_inference_mode_enabled():
                with torch.inference_mode(False):
                    return fn(*args, **kwargs)
            return fn(*args, **kwargs)
        finally:
            _DEPTH.reset(token)

    return wrapper


def keep_partial() -> bool:
    """Whether an interrupt may become a partial result here.

    True when the running call is the outermost lossviz call (or no lossviz call is
    running). Catch sites::

        except KeyboardInterrupt:
            if not keep_partial():
                raise
            ...  # mark the result incomplete

    Returns:
        True at the outermost level, False inside a nested call.
    """
    return _DEPTH.get() <= 1


class inner:
    """Context manager for a composite call's own work that is not a public call.

    For example a private loop over public kernels' internals: interrupts inside
    propagate.
    """

    def __enter__(self):
        self._token = _DEPTH.set(_DEPTH.get() + 1)
        return self

    def __exit__(self, *exc):
        _DEPTH.reset(self._token)
        return False
