"""lossviz: see and measure neural-network loss landscapes."""

from .errors import CheckpointError, DataError, LossvizError, NonFiniteLossError
from .hessian import (
    hessian_blocks,
    hessian_density,
    hessian_diagonal,
    hessian_eigs,
    hessian_trace,
)
from .objective import Objective
from .results import BlockResults, EigenResult, SpectralDensity, TraceResult
from .weights import Weights, load_checkpoint

__version__ = "0.1.0"

__all__ = [
    "BlockResults",
    "CheckpointError",
    "DataError",
    "EigenResult",
    "LossvizError",
    "NonFiniteLossError",
    "Objective",
    "SpectralDensity",
    "TraceResult",
    "Weights",
    "hessian_blocks",
    "hessian_density",
    "hessian_diagonal",
    "hessian_eigs",
    "hessian_trace",
    "load_checkpoint",
]
