"""Shared pieces of the dashboards: the optional-dependency check, where the front-end
modules live, the display base class, background workers and a debouncer."""

from __future__ import annotations

import functools
import threading
import traceback
from pathlib import Path

EXTRA = "pip install 'lossviz[widgets]'"


def require() -> None:
    """Raise an ImportError naming the extra when the widget stack is not installed."""
    missing = []
    for mod in ("ipywidgets", "anywidget"):
        try:
            __import__(mod)
        except ImportError:
            missing.append(mod)
    if missing:
        raise ImportError(f"lossviz.dash needs {' and '.join(missing)}: {EXTRA}")


def widgets_dir() -> Path:
    """The folder holding lossviz's front-end modules (``scrubber.js``, ``mixer.js``, …):
    the top-level ``widgets/`` folder of a source checkout / editable install, or
    ``<prefix>/share/lossviz/widgets`` where a wheel installs them."""
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
    return (widgets_dir() / name).read_text(encoding="utf-8")


@functools.cache
def _figure_widget_class():
    import hashlib

    import plotly
    import plotly.graph_objects as go
    import traitlets

    bundle = str(go.FigureWidget._esm)
    digest = hashlib.sha1(bundle.encode(), usedforsecurity=False).hexdigest()[:16]
    key = f"{plotly.__version__}-{digest}"

    class FigureWidget(go.FigureWidget):
        """plotly's FigureWidget with its front end compiled once per page (``figure.js``):
        anywidget compiles every figure's inline 5 MB module separately and drops the
        kernel's messages to a model that took over 2 s, so with several figures on a page
        some plots never updated (seen in Voila)."""

        _esm = read_asset("figure.js")
        _plotly_esm = traitlets.Unicode(bundle).tag(sync=True)
        _plotly_key = traitlets.Unicode(key).tag(sync=True)

    return FigureWidget


def figure_widget(fig):
    """``go.FigureWidget(fig)`` for the dashboards: the same widget, but every figure on the
    page shares one compiled copy of plotly's front end (see ``widgets/figure.js``)."""
    return _figure_widget_class()(fig)


class Dashboard:
    """Base class: displays as its root widget (``.widget``); ``wait()`` joins the
    background work; ``close()`` closes every widget."""

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
        """Block until the background work started so far (and work it started) is done."""
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
        """Close this dashboard's widgets (its widget tree and figures) and nothing else:
        ``Widget.close_all`` would close every widget in the kernel."""
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
    """Call ``fn(*args)`` once ``delay`` seconds after the last :meth:`__call__` (a
    background timer); :meth:`flush` runs a pending call now, in the caller's thread."""

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
        with self._lock:
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None
        self._fire()

    def cancel(self):
        with self._lock:
            if self._timer is not None:
                self._timer.cancel()
            self._timer, self._args = None, None


def finite_list(values) -> list:
    """A JSON-safe list: non-finite values become ``None``."""
    import math

    return [float(v) if v is not None and math.isfinite(float(v)) else None for v in values]


def sync_figures(*figs) -> None:
    """Copy each FigureWidget's current data and layout into its synced widget state.

    Restyles are one-shot messages; a view created later (a page reload, Voila, a second
    display, a figure nested in a container and displayed after it was updated) is built
    from ``_widget_data`` / ``_widget_layout``, which plotly sets only at construction and
    when the figure itself is displayed. Existing views ignore the change (no re-render).
    """
    from copy import deepcopy

    for f in figs:
        with f.hold_sync():
            f._widget_layout = deepcopy(f._layout_obj._props)
            f._widget_data = deepcopy(f._data)
