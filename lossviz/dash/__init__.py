"""Live dashboards (ipywidgets + plotly FigureWidget + lossviz's own anywidget modules).

Importing ``lossviz.dash`` needs nothing extra; calling a dashboard needs the widget
stack: ``pip install 'lossviz[widgets]'`` (otherwise an ImportError says so).

- :func:`interpolation` — scrub the straight path between two checkpoints.
- :func:`lossviz.teach.playground` — the optimization playground (in ``lossviz.teach``).

Each returns a dashboard object that displays itself in Jupyter / Voila (``.widget`` is
the root widget; ``.wait()`` joins its background work).
"""

from __future__ import annotations

from ._common import EXTRA, require, widgets_dir

__all__ = ["EXTRA", "interpolation", "widgets_dir"]


def interpolation(obj, a, b, *, metrics=("loss", "accuracy"), layers=None, n: int = 25,
                  samples=16, bn: bool = False, match: bool = False, rest_ms: float = 150,
                  throttle_ms: int = 40, start: bool = True):
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

    return InterpolationDashboard(obj, a, b, metrics=metrics, layers=layers, n=n,
                                  samples=samples, bn=bn, match=match, rest_ms=rest_ms,
                                  throttle_ms=throttle_ms, start=start)
