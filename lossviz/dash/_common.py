"""Shared pieces of the dashboards.

The optional-dependency check, where the front-end modules live, the display base
class, background workers and a debouncer.
"""

from __future__ import annotations

import functools
import threading
import traceback
from pathlib import Path

EXTRA = "pip install 'lossviz[widgets]'"


def require() -> None:
    """Check that the widget stack (ipywidgets, anywidget) is installed.

    Raises:
        ImportError: ipywidgets or anywidget is missing (the message names the extra,
            ``pip install 'lossviz[widgets]'``).
    """
    missing = []
    for mod in ("ipywidgets", "anywidget"):
        try:
            __import__(mod)
        except ImportError:
            missing.append(mod)
    if missing:
        raise ImportError(f"lossviz.dash needs {' and '.join(missing)}: {EXTRA}")


def widgets_dir() -> Path:
    """The folder holding lossviz's front-end modules (``scrubber.js``, ``mixer.js``, …).

    Returns:
        The top-level ``widgets/`` folder of a source checkout / editable install, or
        ``<prefix>/share/lossviz/widgets`` where a wheel installs them.

    Raises:
        FileNotFoundError: neither holds them (a broken installation).
    """
    import sys
    import sysconfig

    here = Path(__file__).resolve().parent.parent  # .../lossviz
    cands = [here.parent / "widgets"]
    for scheme_path in {sysconfig.get_path("data"), sys.prefix, sys.base_prefix}:
        if scheme_path:
            cands.append(Path(scheme_path) / "share" / "lossviz" / "widgets")
    for cand in cands:
        if (cand / "scrubber.js").is_file():
            return cand
    raise FileNotFoundError(
        "lossviz's front-end modules (scrubber.js, mixer.js) were not found in any of "
        + ", ".join(str(c) for c in cands)
        + "; reinstall lossviz"
    )


def read_asset(name: str) -> str:
    """The text of the front-end file ``name`` in :func:`widgets_dir`.

    Args:
        name: a file name such as ``"scrubber.js"``.

    Returns:
        The file's contents (UTF-8).

    Raises:
        FileNotFoundError: the front-end folder or the file is missing.
    """
    return (widgets_dir() / name).read_text(encoding="utf-8")


@functools.cache
def _figure_widget_class():
    import hashlib

    import plotly
    import plotly.graph_objects as go
    import traitlets

    bundle = plotly_bundle()
    digest = hashlib.sha1(bundle.encode(), usedforsecurity=False).hexdigest()[:16]
    key = f"{plotly.__version__}-{digest}"

    class FigureWidget(go.FigureWidget):
        """Plotly's FigureWidget with its front end compiled once per page (``figure.js``).

        Anywidget compiles every figure's inline 5 MB module separately and drops the
        kernel's messages to a model that took over 2 s, so with several figures on a page
        some plots never updated (seen in Voila).
        """

        _esm = read_asset("figure.js")
        _plotly_esm = traitlets.Unicode(bundle).tag(sync=True)
        _plotly_key = traitlets.Unicode(key).tag(sync=True)

    return FigureWidget


def figure_widget(fig):
    """``go.FigureWidget(fig)`` for the dashboards.

    The same widget, but every figure on the page shares one compiled copy of plotly's
    front end (see ``widgets/figure.js``).

    Args:
        fig: a plotly figure (or anything ``go.FigureWidget`` takes).

    Returns:
        A ``FigureWidget`` (a subclass of ``plotly.graph_objects.FigureWidget``).

    Raises:
        FileNotFoundError: the front-end module ``figure.js`` is missing.
    """
    return _figure_widget_class()(fig)


class Dashboard:
    """Base class of the dashboards.

    Displays as its root widget (``.widget``); ``wait()`` joins the background work;
    ``close()`` closes every widget.

    Attributes:
        widget: the root widget (set by the subclass).
        errors: messages of the exceptions raised in background threads.
    """

    widget = None

    def __init__(self):
        self._threads: list[threading.Thread] = []
        self._tlock = threading.Lock()
        self.errors: list[str] = []

    def figures(self) -> list:
        """The plotly FigureWidgets of this dashboard."""
        return [v for v in vars(self).values() if type(v).__name__ == "FigureWidget"]

    def _repr_mimebundle_(self, **kw):
        sync_figures(*self.figures())
        return self.widget._repr_mimebundle_(**kw)

    def _spawn(self, fn, *args, name="lossviz-dash") -> threading.Thread:
        def run():
            try:
                fn(*args)
            except Exception as e:  # shown in the dashboard, never lost silently
                self.errors.append("".join(traceback.format_exception_only(type(e), e)).strip())
                self._on_error(e)

        t = threading.Thread(target=run, name=name, daemon=True)
        with self._tlock:
            self._threads = [x for x in self._threads if x.is_alive()] + [t]
        t.start()
        return t

    def _on_error(self, e: Exception) -> None:  # pragma: no cover - overridden
        pass

    def wait(self, timeout: float = 120.0) -> None:
        """Block until the background work started so far (and work it started) is done.

        Pending debounced calls are run first.

        Args:
            timeout: the most seconds to wait in all.

        Raises:
            TimeoutError: the work did not finish within ``timeout`` seconds.
        """
        import time

        end = time.monotonic() + timeout
        while True:
            for d in getattr(self, "_debouncers", []):
                d.flush()
            with self._tlock:
                alive = [t for t in self._threads if t.is_alive()]
            if not alive:
                return
            for t in alive:
                t.join(max(0.0, end - time.monotonic()))
            if time.monotonic() >= end:
                raise TimeoutError("the dashboard's background work did not finish in time")

    def close(self) -> None:
        """Close this dashboard's widgets (its widget tree and figures) and nothing else.

        ``Widget.close_all`` would close every widget in the kernel. Pending debounced
        calls are cancelled.
        """
        for d in getattr(self, "_debouncers", []):
            d.cancel()
        todo, seen = [self.widget, *self.figures()], set()
        while todo:
            w = todo.pop()
            if w is None or id(w) in seen:
                continue
            seen.add(id(w))
            todo.extend(getattr(w, "children", ()))
            w.close()


class Debounce:
    """Call ``fn(*args)`` once ``delay`` seconds after the last :meth:`__call__`.

    A background timer; :meth:`flush` runs a pending call now, in the caller's thread.
    With ``delay <= 0`` each call runs at once.

    Args:
        delay: seconds to wait after the last call.
        fn: the function to call with the last call's arguments.
    """

    def __init__(self, delay: float, fn):
        self.delay = float(delay)
        self.fn = fn
        self._lock = threading.Lock()
        self._timer: threading.Timer | None = None
        self._args = None

    def __call__(self, *args):
        with self._lock:
            if self._timer is not None:
                self._timer.cancel()
            self._args = args
            if self.delay <= 0:
                self._timer = None
            else:
                self._timer = threading.Timer(self.delay, self._fire)
                self._timer.daemon = True
                self._timer.start()
                return
        self._fire()

    def _fire(self):
        with self._lock:
            args, self._args, self._timer = self._args, None, None
        if args is not None:
            self.fn(*args)

    def flush(self):
        """Run the pending call (if any) now, in the caller's thread."""
        with self._lock:
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None
        self._fire()

    def cancel(self):
        """Drop the pending call (if any)."""
        with self._lock:
            if self._timer is not None:
                self._timer.cancel()
            self._timer, self._args = None, None


def finite_list(values) -> list:
    """A JSON-safe list: non-finite values become ``None``."""
    import math

    return [float(v) if v is not None and math.isfinite(float(v)) else None for v in values]


# ---- private plotly / ipywidgets names: used here and nowhere else -------------------------
# Checked with plotly 7.1.0, ipywidgets 8.1.9, anywidget 0.11.0. If an upgrade changes one,
# tests/test_dash_views.py::test_private_widget_apis_still_exist (check_private_apis) fails
# naming it. Each is needed: plotly offers no public way to read its front-end bundle or to
# refresh the synced state of a FigureWidget, ipywidgets none to wrap a widget's handler.


def plotly_bundle() -> str:
    """Plotly's FigureWidget front end (the anywidget ES module, ``FigureWidget._esm``)."""
    import plotly.graph_objects as go

    return str(go.FigureWidget._esm)


def sync_figures(*figs) -> None:
    """Copy each FigureWidget's current data and layout into its synced widget state.

    Restyles are one-shot messages; a view created later (a page reload, Voila, a second
    display, a figure nested in a container and displayed after it was updated) is built
    from ``_widget_data`` / ``_widget_layout``, which plotly sets only at construction and
    when the figure itself is displayed. Existing views ignore the change (no re-render).

    Args:
        *figs: plotly FigureWidgets.
    """
    from copy import deepcopy

    for f in figs:
        with f.hold_sync():
            f._widget_layout = deepcopy(f._layout_obj._props)
            f._widget_data = deepcopy(f._data)


def guard_messages(widget, lock) -> None:
    """Apply the front end's messages to ``widget`` while holding ``lock``.

    The handler ipywidgets registered (``Widget._handle_msg``) is wrapped; a widget
    without a comm (closed, or no kernel) is left as it is.

    Args:
        widget: an ipywidgets widget.
        lock: a lock (a context manager) held while each message is applied.
    """
    if widget.comm is None:
        return

    def handle(msg, _handle=widget._handle_msg):
        with lock:
            _handle(msg)

    widget.comm.on_msg(handle)


def check_private_apis() -> None:
    """Check the private plotly / ipywidgets names used here (run by the test suite).

    Raises:
        AssertionError: naming the first private name above that is gone or changed.
    """
    import ipywidgets
    import plotly.graph_objects as go

    bundle = plotly_bundle()
    assert len(bundle) > 10_000 and "export" in bundle, "plotly: FigureWidget._esm"
    fig = go.FigureWidget(go.Figure(go.Scatter(x=[1, 2], y=[3, 4])))
    for name in ("_widget_data", "_widget_layout"):
        assert fig.has_trait(name), f"plotly: FigureWidget.{name} is not a trait"
        assert fig.trait_metadata(name, "sync"), f"plotly: FigureWidget.{name} is not synced"
    assert isinstance(fig._data, list) and fig._data[0]["y"] is not None, "plotly: ._data"
    props = fig._layout_obj._props
    assert isinstance(props, dict), "plotly: FigureWidget._layout_obj._props"
    fig.layout.title.text = "t"
    sync_figures(fig)
    assert fig.get_state()["_widget_layout"]["title"]["text"] == "t", "plotly: _widget_layout"
    handler = getattr(ipywidgets.Widget, "_handle_msg", None)
    assert callable(handler), "ipywidgets: Widget._handle_msg"
    fig.close()


# ---- widget and figure construction shared by every dashboard --------------------------------
_SLIDERS = {"int": "IntSlider", "float": "FloatSlider", "log": "FloatLogSlider"}
_SLIDERS["range"] = "FloatRangeSlider"


def slider(description: str, value, lo, hi, step, *, kind: str = "float", width=None, **kw):
    """An ipywidgets slider over ``[lo, hi]`` in steps of ``step``.

    Args:
        description: the slider's label.
        value: its initial value (a ``(low, high)`` pair for ``"range"``).
        lo: the lowest value (an exponent of ``base`` for ``"log"``).
        hi: the highest value (an exponent of ``base`` for ``"log"``).
        step: the step (of the exponent for ``"log"``).
        kind: ``"int"`` (IntSlider), ``"float"`` (FloatSlider), ``"log"``
            (FloatLogSlider, ``base`` 10 unless given) or ``"range"``
            (FloatRangeSlider).
        width: a CSS width (otherwise ``layout=`` sizes it).
        **kw: passed to the ipywidgets slider.

    Returns:
        The ipywidgets slider.

    Raises:
        KeyError: an unknown ``kind``.
    """
    import ipywidgets as W

    if width is not None:
        kw["layout"] = W.Layout(width=width)
    cls = getattr(W, _SLIDERS[kind])
    return cls(value=value, min=lo, max=hi, step=step, description=description, **kw)


def style(fig, width: int, height: int, margin: tuple, **layout) -> None:
    """Apply the look every dashboard figure shares (in place).

    Args:
        fig: a plotly figure.
        width: its width in pixels.
        height: its height in pixels.
        margin: ``(left, right, top, bottom)`` in pixels.
        **layout: other layout keywords, as ``fig.update_layout`` takes them.
    """
    fig.update_layout(
        width=width,
        height=height,
        template="plotly_white",
        margin=dict(zip("lrtb", margin)),
        **layout,
    )
