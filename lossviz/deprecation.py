"""Deprecated keyword names: one decorator for every renamed option.

>>> import warnings
>>> @renamed(blocks="groups")
... def f(*, groups=None):
...     return groups
>>> with warnings.catch_warnings(record=True) as w:
...     warnings.simplefilter("always")
...     f(blocks="module"), w[0].category.__name__
('module', 'DeprecationWarning')
"""

from __future__ import annotations

import functools

from .errors import ArgumentTypeError, warn

__all__ = ["renamed"]


def renamed(**old_to_new: str):
    """Keep old keyword names of a function working.

    ``@renamed(old="new")`` moves ``old=`` to ``new=`` with a :class:`DeprecationWarning`
    naming both. The wrapper records the mapping in its ``__renamed__`` attribute.

    Args:
        **old_to_new: ``old_name="new_name"`` pairs.

    Returns:
        A decorator.

    Raises:
        ArgumentTypeError: (when the decorated function is called) if both the old and the
            new name are given.
    """

    def deco(fn):
        @functools.wraps(fn)
        def wrapper(*args, **kwargs):
            for old, new in old_to_new.items():
                if old in kwargs:
                    if new in kwargs:
                        raise ArgumentTypeError(
                            f"{fn.__name__}: pass {new}= only ({old}= is its deprecated name)"
                        )
                    warn(
                        f"{fn.__name__}: {old}= is deprecated, use {new}= (same meaning)",
                        DeprecationWarning,
                    )
                    kwargs[new] = kwargs.pop(old)
            return fn(*args, **kwargs)

        wrapper.__renamed__ = dict(old_to_new)
        return wrapper

    return deco
