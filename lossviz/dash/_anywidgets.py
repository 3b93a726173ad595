"""lossviz's own front-end widgets (anywidget ES modules from ``widgets/``, no build step).

The classes exist only with the widget stack installed (``pip install 'lossviz[widgets]'``);
the module itself imports without it.
"""

from __future__ import annotations

from ._common import read_asset

try:
    import anywidget
    import traitlets
except ImportError:  # pragma: no cover - lossviz.dash.require() reports it
    anywidget = None

if anywidget is not None:

    class PathScrubber(anywidget.AnyWidget):
        """A slider whose track draws a precomputed curve with its barrier marked.

        The curve is ``curve`` over ``alphas`` (an optional dashed ``curve2``, e.g. before
        weight matching), the barrier marked at ``barrier_alpha``. Dragging is drawn in
        the browser alone; ``value`` (clipped to ``[min, max]``) reaches the kernel at
        most every ``throttle_ms`` while dragging, and exactly on release.
        """

        _esm = read_asset("scrubber.js")
        _css = read_asset("scrubber.css")
        value = traitlets.Float(0.0).tag(sync=True)
        min = traitlets.Float(0.0).tag(sync=True)
        max = traitlets.Float(1.0).tag(sync=True)
        step = traitlets.Float(0.001).tag(sync=True)
        alphas = traitlets.List(traitlets.Float()).tag(sync=True)
        curve = traitlets.List().tag(sync=True)
        curve2 = traitlets.List().tag(sync=True)
        barrier_alpha = traitlets.Float(None, allow_none=True).tag(sync=True)
        barrier = traitlets.Float(None, allow_none=True).tag(sync=True)
        metric = traitlets.Unicode("loss").tag(sync=True)
        description = traitlets.Unicode("α").tag(sync=True)
        status = traitlets.Unicode("").tag(sync=True)
        throttle_ms = traitlets.Int(40).tag(sync=True)
        width = traitlets.Int(560).tag(sync=True)
        height = traitlets.Int(110).tag(sync=True)

        @traitlets.validate("value")
        def _clip(self, proposal):
            v = float(proposal["value"])
            return min(self.max, max(self.min, v))

    class LayerMixer(anywidget.AnyWidget):
        """Per-layer toggles (interpolate along α, or keep at model A) with barrier bars.

        A bar per layer shows its layer-wise barrier (A with only that layer averaged,
        minus ``½(L(A) + L(B))``; Adilova et al. 2024). ``mask`` holds one bool per entry
        of ``layers`` (a ``traitlets.TraitError`` otherwise).
        """

        _esm = read_asset("mixer.js")
        _css = read_asset("mixer.css")
        layers = traitlets.List(traitlets.Unicode()).tag(sync=True)
        sizes = traitlets.List(traitlets.Int()).tag(sync=True)
        mask = traitlets.List(traitlets.Bool()).tag(sync=True)
        barriers = traitlets.List().tag(sync=True)
        disabled = traitlets.Bool(False).tag(sync=True)
        title = traitlets.Unicode("layers interpolated (α) / kept at A").tag(sync=True)
        note = traitlets.Unicode("").tag(sync=True)

        @traitlets.validate("mask")
        def _check_mask(self, proposal):
            m = [bool(v) for v in proposal["value"]]
            if len(m) != len(self.layers):
                raise traitlets.TraitError(
                    f"mask has {len(m)} entries for {len(self.layers)} layers"
                )
            return m
