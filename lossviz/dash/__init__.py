"""Live dashboards (ipywidgets + plotly FigureWidget + lossviz's own anywidget modules).

Importing ``lossviz.dash`` needs nothing extra; calling a dashboard needs the widget
stack: ``pip install 'lossviz[widgets]'`` (otherwise an ImportError says so).

- :func:`interpolation` — scrub the straight path between two checkpoints.
- :func:`landscape` — 2-D loss slices, coarse to fine, click for slices and ``λ_max``.
- :func:`spectrum` — the Hessian spectral density, top-k, per layer, over checkpoints.
- :func:`subspace` — a SubspaceTracker's gradient fraction and ``λ_max`` vs ``2/lr``, live.
- :func:`lossviz.teach.playground` — the optimization playground (in ``lossviz.teach``).

Each returns a dashboard object that displays itself in Jupyter / Voila (``.widget`` is
the root widget; ``.wait()`` joins its background work).
"""

from __future__ import annotations

from ._common import EXTRA, require, widgets_dir

__all__ = ["EXTRA", "interpolation", "landscape", "spectrum", "subspace", "widgets_dir"]


def interpolation(
    obj,
    a,
    b,
    *,
    metrics=("loss", "accuracy"),
    layers=None,
    n: int = 25,
    samples=16,
    bn: bool = False,
    match: bool = False,
    rest_ms: float = 150,
    throttle_ms: int = 40,
    start: bool = True,
):
    """Scrub the straight path ``θ(α) = (1−α)·θ_a + α·θ_b`` between two checkpoints.

    Shows the metrics along the path (an ``n``-point α grid computed in a background
    thread, with a progress bar), a marker and readouts at α, the loss barrier
    ``max_α L(α) − ((1−α)L(0) + αL(1))``, what the model predicts at α on sample inputs
    (digit-like images with their predicted labels, or decision regions for 2-D inputs),
    and a per-layer mixer that interpolates only the chosen layers (others stay at
    ``a``; the bars give each layer's own barrier). While dragging, values come from the
    grid (marked "cached"); when the slider rests for ``rest_ms`` the exact point is
    evaluated. Toggles: weight matching (``lossviz.alignment.weight_matching``: ``b``
    permuted to align with ``a``; the curve before matching stays dashed) and BatchNorm
    recompute (running statistics re-estimated at every point).

    Args:
        obj: a :class:`~lossviz.Objective` (the model is never changed).
        a, b: the endpoints (models, Weights, state dicts, checkpoint paths). Parameters
            that do not vary and buffers are taken from ``a``.
        metrics: as :func:`lossviz.evaluate`; the first is the curve on the scrubber.
        layers: grouping for the mixer: ``"module"`` (default), ``"param"`` or a mapping
            ``name -> parameter names``.
        n: points on the α grid (>= 3).
        samples: how many inputs of the first batch to show (or an ``(x, y)`` batch).
        bn, match: initial state of the two toggles.
    """
    require()
    from ._interpolation import InterpolationDashboard

    return InterpolationDashboard(
        obj,
        a,
        b,
        metrics=metrics,
        layers=layers,
        n=n,
        samples=samples,
        bn=bn,
        match=match,
        rest_ms=rest_ms,
        throttle_ms=throttle_ms,
        start=start,
    )


def spectrum(
    source,
    checkpoints=None,
    *,
    n_probes: int = 10,
    steps: int = 60,
    k: int = 5,
    blocks="module",
    log: bool = True,
    seed: int = 0,
    curvature: str = "hessian",
    start: bool = True,
):
    """Explore the Hessian spectrum: the SLQ density (:func:`lossviz.hessian_density`) with
    a smoothing slider (σ as a fraction of the spectral range; re-smooths the stored
    nodes, no new products), a log/linear axis, the top-``k`` eigenvalues
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
        checkpoints: with an Objective, a dict ``step -> point`` or a list of points
            (models, state dicts, Weights, checkpoint paths).
        n_probes, steps, seed, curvature: as :func:`lossviz.hessian_density`.
        k: how many top eigenvalues to mark (0: none).
        blocks: ``"module"``, a mapping ``name -> parameter names``, or None (no table).
        log: start with a logarithmic density axis.
        start: start computing now (otherwise on ``.start()`` or the button).
    """
    require()
    from ._spectrum import SpectrumDashboard

    return SpectrumDashboard(
        source,
        checkpoints,
        n_probes=n_probes,
        steps=steps,
        k=k,
        blocks=blocks,
        log=log,
        seed=seed,
        curvature=curvature,
        start=start,
    )


def subspace(
    tracker,
    *,
    every_s: float = 0.3,
    window: int | None = None,
    smooth: int = 10,
    total: int | None = None,
    max_points: int | None = 4000,
):
    """Live monitor of a :class:`~lossviz.SubspaceTracker` while it trains (also
    ``tracker.dashboard()``): the gradient fraction ``‖V_kᵀg‖²/‖g‖²`` per step (with its
    moving average, and the full-data fraction at refreshes when the tracker has
    ``data=``), the overlap matrix of the kept subspaces, ``λ_max`` against ``2/lr`` (from
    the optimizer, following lr changes) and the training loss, with readouts
    (``λ_max·lr/2``).

    Display it, then train in the next cell (or in a thread): a listener on the tracker
    redraws at most every ``every_s`` seconds (the only host synchronization), always
    ending on the last step. ``update()`` redraws now. Sliders: moving-average window
    (``smooth`` steps) and the step range in percent of the run (at 100% it follows the
    newest step; ``window``: only the last ``window`` steps); a toggle pauses the
    redraws. ``total`` (expected steps) shows a progress bar; ``max_points`` thins long
    runs (every k-th step is drawn).
    """
    require()
    from ._subspace import SubspaceDashboard

    return SubspaceDashboard(
        tracker, every_s=every_s, window=window, smooth=smooth, total=total, max_points=max_points
    )


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
    """Explore the 2-D loss surface ``f(a, b) = L(θ + a·d1 + b·d2)`` live (also
    ``surface.dashboard()``).

    A contour / heatmap / 3-D view of :func:`lossviz.surface`, computed coarse to fine in
    a background thread (redrawn at most every ``throttle_ms`` while it refines). The
    direction picker: ``"random"`` (filter-normalized, with a seed box), ``"pca"`` (of
    ``trajectory``), ``"eigen"`` (top-2 Hessian eigenvectors at the center), ``"plane"``
    (through the first three ``models``). The trajectory (projected) and the named models
    are drawn on the map. Controls: resolution, span (× the default), log scale, metric.
    Clicking a point (or ``.inspect(a, b)``) computes the metrics there, the 1-D slices
    through it along both directions (:func:`lossviz.line`) and ``λ_max``
    (:func:`lossviz.hessian_eigs`).

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
    """
    require()
    from ._landscape import LandscapeDashboard

    return LandscapeDashboard(
        obj_or_surface,
        center,
        directions=directions,
        trajectory=trajectory,
        models=models,
        metrics=metrics,
        n=n,
        span=span,
        kind=kind,
        log=log,
        refine=refine,
        seed=seed,
        throttle_ms=throttle_ms,
        debounce_ms=debounce_ms,
        start=start,
    )
