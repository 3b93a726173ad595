"""lossviz: see and measure neural-network loss landscapes."""

from .directions import (
    PCAResult,
    Plane,
    eigen_directions,
    model_direction,
    pca_directions,
    plane_through,
    random_directions,
)
from .errors import CheckpointError, DataError, LossvizError, NonFiniteLossError
from .hessian import (
    hessian_blocks,
    hessian_density,
    hessian_diagonal,
    hessian_eigs,
    hessian_trace,
)
from .landscape import Evaluations, Slice1D, Surface, evaluate, line, surface
from .objective import Objective
from .results import BlockResults, EigenResult, SpectralDensity, TraceResult
from .roughness import RoughnessAlong, RoughnessResult, roughness_along, roughness_index
from .subspace import SubspaceTracker, gradient_fraction, lightning_callback, subspace_overlap
from .trajectory import CurvatureTimeline, TrajectoryRecorder, sharpness_along, trace_along
from .weights import Weights, load_checkpoint

__version__ = "0.1.0"

__all__ = [
    "BlockResults",
    "CheckpointError",
    "CurvatureTimeline",
    "DataError",
    "EigenResult",
    "Evaluations",
    "LossvizError",
    "NonFiniteLossError",
    "Objective",
    "PCAResult",
    "Plane",
    "RoughnessAlong",
    "RoughnessResult",
    "Slice1D",
    "SpectralDensity",
    "SubspaceTracker",
    "Surface",
    "TraceResult",
    "TrajectoryRecorder",
    "Weights",
    "eigen_directions",
    "evaluate",
    "gradient_fraction",
    "hessian_blocks",
    "hessian_density",
    "hessian_diagonal",
    "hessian_eigs",
    "hessian_trace",
    "lightning_callback",
    "line",
    "load_checkpoint",
    "model_direction",
    "pca_directions",
    "plane_through",
    "random_directions",
    "roughness_along",
    "roughness_index",
    "sharpness_along",
    "subspace_overlap",
    "surface",
    "trace_along",
]
