"""Live dashboards (ipywidgets + plotly FigureWidget + lossviz's own anywidget modules).

Importing ``lossviz.dash`` needs nothing extra; calling a dashboard needs the widget
stack: ``pip install 'lossviz[widgets]'`` (otherwise an ImportError says so).

- :func:`averaging` — SWA / EMA / LAWA of a run vs its last iterate, decay and k sliders.
- :func:`interpolation` — scrub the straight path between two checkpoints.
- :func:`landscape` — 2-D loss slices, coarse to fine, click for slices and ``λ_max``.
- :func:`spectrum` — the Hessian spectral density, top-k, per layer, over checkpoints.
- :func:`subspace` — a SubspaceTracker's gradient fraction and ``λ_max`` vs ``2/lr``, live.
- :func:`lossviz.teach.playground` — the optimization playground (in ``lossviz.teach``).

Each returns a dashboard object that displays itself in Jupyter / Voila (``.widget`` is
the root widget; ``.wait()`` joins its background work).
"""

from __future__ import annotations

import importlib

from ..deprecation import renamed
from ._common import EXTRA, require, widgets_dir

# re-exported for lossviz.teach's playground (not in __all__, not documented API): the
# dashboard base class, the FigureWidget that shares one plotly front end per page, and
# the slider / figure-style helpers every dashboard uses
from ._common import Dashboard as Dashboard
from ._common import figure_widget as figure_widget
from ._common import slider as slider
from ._common import style as style

__all__ = [
    "EXTRA",
    "averaging",
    "interpolation",
    "landscape",
    "spectrum",
    "subspace",
    "widgets_dir",
]


def _build(module: str, cls: str, args: dict):
    """Construct ``cls`` of the submodule ``module`` from a dashboard function's ``locals()``.

    The submodule is imported only now (the widget stack is needed only when a dashboard
    is made). The public function owns the defaults and the documentation; the class
    takes each of its parameters by name.
    """
    import inspect

    require()
    klass = getattr(importlib.import_module(f".{module}", __name__), cls)
    names = list(inspect.signature(klass).parameters)
    return klass(**{k: args[k] for k in names})


@renamed(layers="groups", recompute_data="bn_data")
def interpolation(
    obj,
    a,
    b,
    *,
    metrics=("loss", "accuracy"),
    groups="module",
    n: int = 25,
    samples=16,
    bn="eval",
    match: bool = False,
    rest_ms: float = 150,
    throttle_ms: int = 40,
    start: bool = True,
    path=None,
    **kw,
):
    """Scrub the straight path between two checkpoints (also ``PathResult.dashboard()``).

    The path is ``θ(α) = (1−α)·θ_a + α·θ_b`` for α in ``[0, 1]`` (linear interpolation,
    Goodfellow, Vinyals, Saxe 2015, "Qualitatively Characterizing Neural Network
    Optimization Problems").

    A view of :func:`lossviz.connectivity.interpolate`: the metrics on its ``n``-point α
    grid (computed in a background thread, with a progress bar) and the barrier of the
    first metric, ``kind="linear"``: ``B = max_α [L(θ(α)) − ((1−α)·L(θ_a) + α·L(θ_b))]``
    (Entezari, Sedghi, Saukh, Neyshabur 2022, "The Role of Permutation Invariance in
    Linear Mode Connectivity of Neural Networks"); a marker and readouts at α; what the
    model predicts at α on sample inputs (digit-like images with their predicted labels,
    or decision regions for 2-D inputs); and a per-layer mixer that interpolates only the
    chosen groups (the others, and their buffers, stay at ``a``) with a bar per group for
    its layer-wise barrier (:func:`lossviz.connectivity.layerwise_barriers`, base A:
    ``B_S = L(θ_a with block S replaced by ½(θ_a[S] + θ_b[S])) − ½(L(θ_a) + L(θ_b))``;
    Adilova, Andriushchenko, Kamp, Fischer, Jaggi 2024, "Layer-wise Linear Mode
    Connectivity").

    While dragging, the marker shows the grid point nearest α; when the slider rests for
    ``rest_ms`` the point at α itself (:func:`lossviz.connectivity.path_point`) is
    evaluated with :func:`lossviz.landscape.evaluate`. Toggles: weight matching
    (:func:`lossviz.alignment.weight_matching`: ``b`` permuted to align with ``a``,
    Ainsworth, Hayase, Srinivasa 2023, "Git Re-Basin: Merging Models modulo Permutation
    Symmetries"; the curve before matching stays dashed) and BatchNorm recompute
    (``bn="recompute"``: running statistics re-estimated at every α).

    Args:
        obj: a :class:`~lossviz.Objective` (the model is never changed).
        a: the start of the path (a model, Weights, a state dict or a checkpoint path).
        b: its end (the same kinds). Buffers follow the path as in
            :func:`~lossviz.connectivity.interpolate`.
        metrics: as :func:`lossviz.evaluate`; the first is the curve on the scrubber.
        groups: the mixer's rows: ``"module"`` (default), ``"param"`` or a mapping
            ``name -> parameter / module names`` (``layers=`` is a deprecated alias).
        n: points on the α grid (>= 3).
        samples: how many inputs of the first batch to show (or an ``(x, y)`` batch).
        bn: ``"eval"`` (running statistics interpolated with the weights) or
            ``"recompute"`` (re-estimated at every point); ``True`` / ``False`` as
            ``"recompute"`` / ``"eval"``.
        match: start with weight matching on.
        rest_ms: how long the slider rests (ms) before the point at α is evaluated.
        throttle_ms: how often (ms) a drag on the scrubber reaches the kernel.
        start: start computing now (otherwise on ``.recompute()``).
        path: a :class:`~lossviz.connectivity.PathResult` of ``(obj, a, b)`` with this
            ``n``, ``bn`` and ``metrics``, shown as it is (what ``PathResult.dashboard()``
            passes).
        **kw: ``bn_data`` (the data ``bn="recompute"`` re-estimates the running
            statistics on; ``recompute_data=`` is a deprecated alias), ``precision``,
            ``batched``, ``chunk_size``: passed to the kernels.

    Returns:
        An ``InterpolationDashboard`` (displays itself; ``.wait()``, ``.point(α)``).

    Raises:
        ImportError: the widget stack is not installed.
        TypeError: ``obj`` is not an Objective; an unknown keyword in ``**kw``.
        ArgumentTypeError: a deprecated alias given together with its new name
            (``layers=`` and ``groups=``); ``n`` or ``samples`` not an integer.
        LossvizError: bad ``n`` (< 3), ``bn``, ``groups``, ``metrics`` or kernel
            keywords (each named); ``bn="recompute"`` or ``bn_data=`` on a model whose
            BatchNorm statistics cannot be recomputed; endpoints that do not match the
            model; a ``path`` of another Objective, ``n``, ``bn`` or metrics.
    """
    return _build("_interpolation", "InterpolationDashboard", locals())


@renamed(blocks="groups")
def spectrum(
    source,
    checkpoints=None,
    *,
    n_probes: int = 10,
    steps: int = 60,
    k: int = 5,
    groups="module",
    log: bool = True,
    seed: int = 0,
    curvature: str = "hessian",
    start: bool = True,
):
    """Explore the Hessian spectrum: density, top-k, outliers, per layer, over checkpoints.

    The spectral density by stochastic Lanczos quadrature (:func:`lossviz.hessian_density`;
    Ghorbani, Krishnan, Xiao 2019, "An Investigation into Neural Net Optimization via
    Hessian Eigenvalue Density"): ``steps`` Lanczos steps per probe ``v`` give nodes
    ``λ_i`` and weights ``w_i``, and the curve is
    ``φ(t) = mean_v Σ_i w_i · N(t; λ_i, σ²)``. Shown with a smoothing slider (σ as a
    fraction of the spectral range; re-smooths the stored nodes, no new products), a
    log/linear axis, the top-``k`` eigenvalues
    (:func:`lossviz.hessian_eigs`) as markers, the outliers (``density.outliers()``), a
    per-layer table (:func:`lossviz.hessian_blocks`: λ_max and trace of each diagonal
    block) and, with ``checkpoints``, a checkpoint slider and λ_max over checkpoints.

    Everything is computed in a background thread (the shown checkpoint first, progress
    bar); moving a slider only redraws what is cached.

    Args:
        source: an :class:`~lossviz.Objective` (at its current weights, or at each of
            ``checkpoints``); a :class:`~lossviz.results.SpectralDensity` or
            :class:`~lossviz.results.EigenResult` (shown at once; what is missing is
            computed when the result carries its Objective); or a dict/list of them.
        checkpoints: with an Objective, a dict ``step -> point``, a list of points
            (models, state dicts, Weights, checkpoint paths) or a
            :class:`~lossviz.TrajectoryRecorder` (labelled by its steps).
        n_probes: probe vectors of the SLQ density (:func:`lossviz.hessian_density`).
        steps: Lanczos steps per probe.
        seed: seed of the probes and of the Lanczos start vectors.
        curvature: ``"hessian"`` or ``"ggn"``.
        k: how many top eigenvalues to mark (0: none).
        groups: the table's rows as :func:`lossviz.hessian_blocks` takes them:
            ``"module"``, a mapping ``name -> parameter names``, or None (no table);
            ``blocks=`` is a deprecated alias.
        log: start with a logarithmic density axis.
        start: start computing now (otherwise on ``.start()`` or the button).

    Returns:
        A ``SpectrumDashboard`` (displays itself; ``.wait()``, ``.points``, ``.curve()``).

    Raises:
        ImportError: the widget stack is not installed.
        TypeError: ``source`` is none of the kinds above.
        ArgumentTypeError: a count that is not an integer; ``checkpoints`` not a list,
            dict or TrajectoryRecorder; ``blocks=`` given together with ``groups=``.
        LossvizError: a bad count (``n_probes`` < 1, ``steps`` < 2, ``k`` < 0),
            ``curvature``, ``groups`` or checkpoint (named); ``checkpoints`` that is
            empty, or given with a result (not an Objective) as ``source``.
    """
    if checkpoints is not None:  # a list, a dict step -> point or a TrajectoryRecorder
        from ..points import as_points

        labels, pts, keyed = as_points(checkpoints, "checkpoints")
        # labels that repeat (a recorder's steps can) cannot be dict keys: plot by position
        checkpoints = dict(zip(labels, pts)) if keyed and len(set(labels)) == len(pts) else pts
    return _build("_spectrum", "SpectrumDashboard", locals())


def subspace(
    tracker,
    *,
    every_s: float = 0.3,
    window: int | None = None,
    smooth: int = 10,
    total: int | None = None,
    max_points: int | None = 4000,
):
    """Live monitor of a :class:`~lossviz.SubspaceTracker` while it trains.

    Also ``tracker.dashboard()``. Shows the gradient fraction ``f(t) = ‖V_kᵀg‖²/‖g‖²``
    per step, with ``V_k`` the top-k Hessian eigenvectors (with its moving average, and
    the full-data fraction at refreshes when the tracker has ``data=``); the overlap
    matrix ``S(t_i, t_j) = ‖V_k(t_i)ᵀV_k(t_j)‖_F² / k`` of the kept subspaces (Gur-Ari,
    Roberts, Dyer 2018, "Gradient Descent Happens in a Tiny Subspace"); ``λ_max`` against
    the stability threshold ``2/lr`` (from the optimizer, following lr changes; gradient
    descent on a quadratic is stable iff ``lr < 2/λ_max``, and training tends to drive
    ``λ_max`` up to about ``2/lr``: Cohen, Kaur, Li, Kolter, Talwalkar 2021, "Gradient
    Descent on Neural Networks Typically Occurs at the Edge of Stability"); and the
    training loss, with readouts (``λ_max·lr/2``).

    Display it, then train in the next cell (or in a thread): a listener on the tracker
    redraws at most every ``every_s`` seconds (the only host synchronization), always
    ending on the last step. ``update()`` redraws now. Sliders: moving-average window
    (``smooth`` steps) and the step range in percent of the run (at 100% it follows the
    newest step; ``window``: only the last ``window`` steps); a toggle pauses the
    redraws. ``total`` (expected steps) shows a progress bar; ``max_points`` thins long
    runs (every k-th step is drawn).

    Args:
        tracker: the :class:`~lossviz.SubspaceTracker` to watch.
        every_s: the least time (seconds) between two redraws while training.
        window: show only the last ``window`` steps (None: all).
        smooth: the moving-average window (steps) to start with.
        total: the number of steps expected (a progress bar), or None.
        max_points: at most about this many steps drawn per line (None: all).

    Returns:
        A ``SubspaceDashboard`` (displays itself; ``.update()``, ``.close()``).

    Raises:
        ImportError: the widget stack is not installed.
        TypeError: ``tracker`` is not a SubspaceTracker.
        ArgumentTypeError: ``every_s`` not a number; ``window``, ``smooth``, ``total`` or
            ``max_points`` not an integer (or None where allowed).
        LossvizError: a bad number (named): ``every_s`` < 0 or not finite, an integer
            below 1.
    """
    return _build("_subspace", "SubspaceDashboard", locals())


def landscape(
    obj_or_surface,
    center=None,
    *,
    directions: str | None = None,
    trajectory=None,
    models=None,
    metrics=("loss",),
    n=None,
    span=None,
    kind: str = "contour",
    log: bool = False,
    refine: bool = True,
    seed: int = 0,
    throttle_ms: float = 200,
    debounce_ms: float = 250,
    start: bool = True,
):
    """Explore the 2-D loss surface live (also ``surface.dashboard()``).

    The surface is ``f(a, b) = L(θ + a·d1 + b·d2)`` on a grid of plane coordinates
    ``(a, b)`` (Li, Xu, Taylor, Studer, Goldstein 2018, "Visualizing the Loss Landscape
    of Neural Nets").

    A contour / heatmap / 3-D view of :func:`lossviz.surface`, computed coarse to fine in
    a background thread (redrawn at most every ``throttle_ms`` while it refines). The
    direction picker: ``"random"`` (filter-normalized as Li et al. 2018: Gaussian ``d``,
    each filter ``j`` of a weight with ``ndim >= 2`` rescaled to
    ``d[j]·‖θ[j]‖ / (‖d[j]‖ + 1e-10)``, biases and norm parameters zeroed; with a seed
    box), ``"pca"`` (of ``trajectory``), ``"eigen"`` (top-2 Hessian eigenvectors at the
    center), ``"plane"`` (through the first three ``models``). The trajectory (projected)
    and the named models are drawn on the map. Controls: resolution, span (× the
    default), log scale, metric. Clicking a point (or ``.inspect(a, b)``) computes the
    metrics there, the 1-D slices through it along both directions
    (:func:`lossviz.line`) and ``λ_max`` (:func:`lossviz.hessian_eigs`).

    Args:
        obj_or_surface: an :class:`~lossviz.Objective`, or a :class:`~lossviz.Surface`
            (shown at once; recomputing and inspecting use its ``.objective``).
        center: θ (default: the model) for random / eigen directions; PCA is centred on
            the last checkpoint, a plane on the first model.
        directions: the initial choice (default ``"random"``; ``"given"`` for a Surface).
        trajectory: checkpoints (a list, a mapping label -> checkpoint or a
            :class:`~lossviz.TrajectoryRecorder`), overlaid and used by ``"pca"``.
        models: named points to mark (``(a, b, c)`` or a mapping name -> model).
        metrics: as :func:`lossviz.evaluate`; the dropdown picks the one shown.
        n: grid points ``(nx, ny)`` or one int (default 31, or the Surface's grid).
        span: a half-width or ``((a_lo, a_hi), (b_lo, b_hi))`` for every choice (default:
            ±1 for random, around the trajectory for PCA, around the three models for a
            plane, ±h with ``½·λ1·h² = 4`` for eigenvectors).
        kind: ``"contour"``, ``"heatmap"`` or ``"surface"`` (3-D).
        log: start with a log10 color scale.
        refine: compute coarse to fine (otherwise the whole grid at once).
        seed: the seed of the random directions.
        throttle_ms: the least time (ms) between two redraws while the grid refines.
        debounce_ms: how long (ms) the resolution / span sliders rest before recomputing.
        start: start computing now (otherwise on ``.recompute()``).

    Returns:
        A ``LandscapeDashboard`` (displays itself; ``.surface``, ``.inspect(a, b)``).

    Raises:
        ImportError: the widget stack is not installed.
        TypeError: ``obj_or_surface`` is neither an Objective nor a Surface (or the
            Surface's objective is not an Objective).
        LossvizError: a bad choice, grid, span or point (named): a ``kind`` or
            ``directions`` not listed; ``"pca"`` without at least 3 checkpoints in
            ``trajectory``, ``"plane"`` without three ``models``; a trajectory of fewer
            than 2 checkpoints; a grid below 3×3; a span that is not positive and finite;
            a Surface without a center and two directions.
    """
    return _build("_landscape", "LandscapeDashboard", locals())


def averaging(
    obj,
    points,
    *,
    decay: float = 0.9,
    k: int = 5,
    swa_start=None,
    per: str = "step",
    accuracy: bool = True,
    curvature: bool = True,
    bn: str = "average",
    tol: float = 1e-3,
    seed: int = 0,
    start: bool = True,
):
    """Weight averages of a training run next to its last iterate, with decay / k sliders.

    A view of :func:`lossviz.averaging.compare_averages` (the loss, accuracy and
    ``λ_max`` of the raw last snapshot, SWA, EMA(β) and LAWA(k); Izmailov et al. 2018,
    "Averaging Weights Leads to Wider Optima and Better Generalization"; Kaddour 2022,
    "Stop Wasting My Time!") and of :func:`lossviz.averaging.average_coefficients` (the
    weight ``c_i`` of each snapshot in each average, ``θ̄ = Σ_i c_i θ_i``; EMA:
    ``e_i = β^{Δ_i} e_{i-1} + (1-β^{Δ_i}) θ_i``). Moving a slider redraws the
    coefficients at once and computes the new row in a background thread (each decay /
    ``k`` once; cached).

    Args:
        obj: the :class:`~lossviz.Objective` (never changed).
        points: the snapshots (a :class:`~lossviz.TrajectoryRecorder`, a dict
            ``step -> point`` or a list).
        decay: the EMA decay to start with, one of the slider's values: 0, 0.5, 0.8,
            0.9, 0.95, 0.98, 0.99, 0.995, 0.999.
        k: LAWA's ``k`` to start with (1 to the number of snapshots).
        swa_start: SWA's first step (None: the later half).
        per: ``"step"`` or ``"snapshot"``: how the EMA counts the gaps.
        accuracy: also the accuracy (a classification loss).
        curvature: also ``λ_max`` (:func:`lossviz.hessian_eigs`).
        bn: ``"average"`` or ``"recompute"`` (BatchNorm statistics, as
            :func:`~lossviz.averaging.compare_averages`).
        tol: the relative residual tolerance of ``λ_max``.
        seed: the seed of the Lanczos start vectors.
        start: start computing now (otherwise when a slider moves).

    Returns:
        An ``AveragingDashboard`` (displays itself; ``.wait()``, ``.shown()``,
        ``.coefficients()``).

    Raises:
        ImportError: the widget stack is not installed.
        ArgumentTypeError: ``points`` is not a list / dict / recorder; a number of the
            wrong type.
        LossvizError: ``decay`` not one of the slider's values, ``k`` above the number of
            snapshots, or another bad value (as :func:`~lossviz.averaging.compare_averages`).
    """
    return _build("_averaging", "AveragingDashboard", locals())
