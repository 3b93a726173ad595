"""lossviz: see and measure neural-network loss landscapes.

``import lossviz as lv`` gives every public function and result type below;
``lv.dash`` (live dashboards) and ``lv.teach`` are imported on first use, and the widget
stack (ipywidgets, anywidget) only when a dashboard is opened.
"""

from .alignment import (
    PermutationSpec,
    apply_permutation,
    permutation_spec,
    reset_bn,
    weight_matching,
)
from .animation import animate, save_animation
from .averaging import AveragesComparison, average_trajectory, compare_averages
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
    path_point,
)
from .curves import CurveResult, connect
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
from .gradients import GradientConflict, gradient_conflict
from .hessian import (
    hessian_blocks,
    hessian_density,
    hessian_diagonal,
    hessian_eigs,
    hessian_trace,
)
from .hvp import CurvatureOperator
from .landscape import evaluate, line, surface
from .merge_comparison import MergeComparison, compare_merges, model_stock
from .merging import VarianceTable, averaging_variance, empirical_fisher, greedy_soup, merge
from .ndgrid import HypercubeResult, hypercube
from .objective import Objective
from .reporting import report
from .results import BlockResults, DiagonalResult, EigenResult, SpectralDensity, TraceResult
from .roughness import RoughnessAlong, RoughnessResult, roughness_along, roughness_index
from .sharpness import SharpnessResult, sharpness
from .slices import Evaluations, Slice1D, Surface
from .stability import StabilityResult, spectral_radius, stability
from .store import load
from .subspace import SubspaceTracker, gradient_fraction, lightning_callback, subspace_overlap
from .topology import TopologyResult, landscape_topology
from .trajectory import (
    CurvatureTimeline,
    LayerDynamics,
    SharpnessTimeline,
    TrajectoryRecorder,
    rho_sharpness_along,
    sharpness_along,
    trace_along,
)
from .weights import Weights, load_checkpoint

__version__ = "0.1.0"

__all__ = [
    # the loss of a model on data, and points in weight space
    "Objective",
    "Weights",
    "load_checkpoint",
    "load",  # a result saved with result.save(path)
    # errors for bad input (all ValueError; ArgumentTypeError is also a TypeError)
    "ArgumentTypeError",
    "CheckpointError",
    "DataError",
    "LossvizError",
    "NonFiniteLossError",
    # loss landscapes: evaluations, 1-D slices and 2-D surfaces
    "Evaluations",
    "Slice1D",
    "Surface",
    "evaluate",
    "line",
    "surface",
    # directions and planes to draw landscapes in
    "PCAResult",
    "Plane",
    "eigen_directions",
    "model_direction",
    "pca_directions",
    "plane_through",
    "random_directions",
    # curvature: the Hessian / Gauss-Newton operator and its spectrum
    "CurvatureOperator",
    "BlockResults",
    "DiagonalResult",
    "EigenResult",
    "SpectralDensity",
    "TraceResult",
    "hessian_blocks",
    "hessian_density",
    "hessian_diagonal",
    "hessian_eigs",
    "hessian_trace",
    # training runs: recorded trajectories and curvature along them
    "CurvatureTimeline",
    "LayerDynamics",
    "TrajectoryRecorder",
    "sharpness_along",
    "trace_along",
    # flatness: worst-case / average / adaptive sharpness, GAM; optimizer stability
    "SharpnessResult",
    "SharpnessTimeline",
    "StabilityResult",
    "rho_sharpness_along",
    "sharpness",
    "spectral_radius",
    "stability",
    # live tracking of the top Hessian subspace during training
    "SubspaceTracker",
    "gradient_fraction",
    "lightning_callback",
    "subspace_overlap",
    # roughness of the landscape around a point
    "RoughnessAlong",
    "RoughnessResult",
    "roughness_along",
    "roughness_index",
    # N-D slices and the topology of a landscape (basins, saddles, merge tree, SMAD)
    "HypercubeResult",
    "TopologyResult",
    "hypercube",
    "landscape_topology",
    # the training trajectory animated over its landscape (plotly frames; GIF / MP4)
    "animate",
    "save_animation",
    # mode connectivity: paths and barriers between models
    "BarrierMatrix",
    "LayerwiseOver",
    "LayerwiseResult",
    "PathResult",
    "barrier",
    "barrier_matrix",
    "interpolate",
    "layerwise_barriers",
    "layerwise_barriers_over",
    "path_point",
    # mode-connecting curves: low-loss paths trained between models
    "CurveResult",
    "connect",
    # permutation alignment of models
    "PermutationSpec",
    "apply_permutation",
    "permutation_spec",
    "reset_bn",
    "weight_matching",
    # averages along a training run: SWA, EMA, LAWA, Switch-EMA, vs the last iterate
    "AveragesComparison",
    "average_trajectory",
    "compare_averages",
    # per-group gradients and their conflict (cosines)
    "GradientConflict",
    "gradient_conflict",
    # merging models: averages, soups and their statistics
    "VarianceTable",
    "averaging_variance",
    "empirical_fisher",
    "greedy_soup",
    "merge",
    "compare_merges",
    "model_stock",
    "MergeComparison",
    # one self-contained HTML report of a model (``lossviz report`` on the command line)
    "report",
    # submodules imported on first use (lv.dash needs no widget stack until a dashboard opens)
    "dash",
    "teach",
]

_LAZY = ("dash", "teach")


def __getattr__(name: str):
    """``lv.dash`` / ``lv.teach``: imported on first access (PEP 562)."""
    if name in _LAZY:
        import importlib

        module = importlib.import_module(f"{__name__}.{name}")
        globals()[name] = module
        return module
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
