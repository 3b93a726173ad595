"""Errors lossviz raises for bad input. All are ``ValueError`` subclasses."""


class LossvizError(ValueError):
    """Base class of lossviz's input errors."""


class CheckpointError(LossvizError):
    """A checkpoint or point whose keys or shapes do not match the model."""


class DataError(LossvizError):
    """Empty or malformed data."""


class NonFiniteLossError(LossvizError):
    """The loss (or a curvature product) is NaN or infinite at the point."""
