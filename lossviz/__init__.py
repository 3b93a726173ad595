"""lossviz: see and measure neural-network loss landscapes."""

from .alignment import apply_permutation, permutation_spec, reset_bn, weight_matching
from .connectivity import (
    BarrierMatrix,
    LayerwiseOver,
    LayerwiseResult,
    PathResult,
    barrier,
    barrier_matrix,
    interpolate,
    layerwise_barriers,
    layerwise_barriers_over,
)
from .directions import (
    PCAResult,
    Plane,
    eigen_directions,
    model_direction,
    pca_directions,
    plane_through,
    random_directions,
)
from .errors import (
    ArgumentTypeError,
    CheckpointError,
    DataError,
    LossvizError,
    NonFiniteLossError,
)
from .hessian import (
    hessian_blocks,
    hessian_density,
    hessian_diagonal,
    hessian_eigs,
    hessian_trace,
)
from .landscape import Evaluations, Slice1D, Surface, evaluate, line, surface
from .merging import VarianceTable, averaging_variance, empirical_fisher, greedy_soup, merge
from .objective import Objective
from .results import BlockResults, DiagonalResult, EigenResult, SpectralDensity, TraceResult
from .roughness import RoughnessAlong, RoughnessResult, roughness_along, roughness_index
from .subspace import SubspaceTracker, gradient_fraction, lightning_callback, subspace_overlap
from .trajectory import CurvatureTimeline, TrajectoryRecorder, sharpness_along, trace_along
from .weights import Weights, load_checkpoint

__version__ = "0.1.0"

__all__ = [
    "ArgumentTypeError",
    "BarrierMatrix",
    "BlockResults",
    "CheckpointError",
    "CurvatureTimeline",
    "DataError",
    "DiagonalResult",
    "EigenResult",
    "Evaluations",
    "LayerwiseOver",
    "LayerwiseResult",
    "LossvizError",
    "NonFiniteLossError",
    "Objective",
    "PCAResult",
    "PathResult",
    "Plane",
    "RoughnessAlong",
    "RoughnessResult",
    "Slice1D",
    "SpectralDensity",
    "SubspaceTracker",
    "Surface",
    "TraceResult",
    "TrajectoryRecorder",
    "VarianceTable",
    "Weights",
    "apply_permutation",
    "averaging_variance",
    "barrier",
    "barrier_matrix",
    "eigen_directions",
    "empirical_fisher",
    "evaluate",
    "gradient_fraction",
    "greedy_soup",
    "hessian_blocks",
    "hessian_density",
    "hessian_diagonal",
    "hessian_eigs",
    "hessian_trace",
    "interpolate",
    "layerwise_barriers",
    "layerwise_barriers_over",
    "lightning_callback",
    "line",
    "load_checkpoint",
    "merge",
    "model_direction",
    "pca_directions",
    "permutation_spec",
    "plane_through",
    "random_directions",
    "reset_bn",
    "roughness_along",
    "roughness_index",
    "sharpness_along",
    "subspace_overlap",
    "surface",
    "trace_along",
    "weight_matching",
]
