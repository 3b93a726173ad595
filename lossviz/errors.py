"""Errors lossviz raises for bad input. All are ``ValueError`` subclasses;
:class:`ArgumentTypeError` is also a ``TypeError``."""


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
