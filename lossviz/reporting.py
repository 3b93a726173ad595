"""``lv.report``: one self-contained HTML report of the curvature and landscape of a model.

The report calls only public kernels (:func:`~lossviz.hessian_eigs`,
:func:`~lossviz.hessian_density`, :func:`~lossviz.surface`, ...) and draws their results with
their own ``.plot()``; every figure has a numbered caption that says what it shows, and the
numbers in captions, tables, the console (``verbose=True``) and the plots come from the same
result objects (e.g. the outlier count is always ``len(density.outliers())``). Eigenvalues
are numbered as in the dashboards: ``λ1`` is the largest, ``λP`` the smallest of ``P``.

The file opens offline: plotly.js is inlined once in its ``<head>``, nothing is loaded from
the network. It is written to a temporary file next to ``out`` and renamed, so a report is
complete or absent (Ctrl-C, a full disk or an error leave no partial file).

The module is ``lossviz.reporting`` (``from lossviz.reporting import SECTIONS``); the
function is also ``lv.report``.
"""

from __future__ import annotations

import contextlib
import html
import json
import math
import os
import tempfile
import time
from collections.abc import Iterable, Mapping
from pathlib import Path

import numpy as np
from torch import nn

from . import validate
from .errors import ArgumentTypeError, LossvizError, is_rank_zero, warn
from .formatting import html_table, number, short
from .interrupt import api

#: section name -> what it shows (the order of the report)
SECTIONS: dict[str, str] = {
    "eigenvalues": "top and bottom Hessian eigenvalues, and the loss along the top eigenvector",
    "density": "spectral density of the Hessian (SLQ) with its outliers",
    "trace": "trace of the Hessian (Hutchinson)",
    "ggn": "top eigenvalues of the Hessian against the Gauss-Newton matrix",
    "layers": "per-layer curvature (top eigenvalue and trace of each layer's Hessian block)",
    "flatness": "worst-case and average sharpness at rho, the second-order estimate, and the "
    "gradient-descent / heavy-ball stability at lr= (when given)",
    "surface": "loss on two filter-normalized random directions",
    "trajectory": "loss on the PCA plane of the checkpoints (needs checkpoints=)",
    "topology": "basins, their depths, saddles and SMAD of the random-direction surface and "
    "of the PCA plane (needs GUDHI)",
    "roughness": "roughness index along the checkpoints (at the model without checkpoints=)",
    "connectivity": "linear path, barrier and layer-wise barriers between pair=(a, b)",
    "curve": "a quadratic Bezier curve trained between pair=(a, b) against the straight line "
    "(it trains: off by default)",
}
#: the sections drawn without ``sections=``: these, plus trajectory and roughness with
#: ``checkpoints`` and connectivity with ``pair`` (``curve`` trains, so it is drawn only
#: when named)
DEFAULT_SECTIONS = (
    "eigenvalues",
    "density",
    "trace",
    "ggn",
    "layers",
    "flatness",
    "surface",
    "topology",
)

_STYLE = (
    "body{font-family:system-ui,sans-serif;max-width:1050px;margin:auto;padding:1em;"
    "color:#222}h1{margin-bottom:.2em}section{margin:2em 0}figure{margin:1em 0}"
    "figcaption{color:#444;font-size:.95em;margin-top:.3em}"
    "table{border-collapse:collapse;margin:.5em 0}td,th{border:1px solid #ccc;"
    "padding:2px 8px;text-align:right}caption{text-align:left;color:#555}"
    ".note{color:#8a4b00}"
)


# arguments ---------------------------------------------------------------------------------
def check_out(out, name: str = "out") -> Path:
    """The report's path, once its directory is known to exist and take a new file.

    Args:
        out: a file name (str or path-like).
        name: the argument's name in error messages (``--out`` on the command line).

    Returns:
        The path (``~`` expanded).

    Raises:
        ArgumentTypeError: ``out`` is not a non-empty str / path.
        LossvizError: ``out`` is a directory, its directory does not exist or cannot take a
            new file, or it exists and is not writable.
    """
    if not isinstance(out, (str, os.PathLike)) or not str(out).strip():
        raise ArgumentTypeError(f"{name} must be a file name such as 'lossviz-report.html'")
    path = Path(out).expanduser()
    if path.is_dir():
        raise LossvizError(f"{name} {str(out)!r} is a directory; give a file name in it")
    parent = path.parent.resolve()
    if not parent.exists():
        raise LossvizError(f"{name} {str(out)!r}: the directory {str(parent)!r} does not exist")
    if not parent.is_dir():
        raise LossvizError(f"{name} {str(out)!r}: {str(parent)!r} is not a directory")
    if path.exists() and not os.access(path, os.W_OK):
        raise LossvizError(f"{name} {str(out)!r} exists and is not writable")
    try:  # the real test (os.access says yes to root on a read-only file system)
        fd, probe = tempfile.mkstemp(dir=parent, prefix=f".{path.name}.", suffix=".tmp")
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise LossvizError(
            f"{name} {str(out)!r}: cannot write in {str(parent)!r} ({e.strerror})"
        ) from None
    return path


def write_atomic(path: Path, text: str) -> None:
    """Write ``text`` to a temporary file next to ``path``, then rename it over ``path``.

    An interrupt or a full disk never leaves a half-written file (nor the temporary one).

    Args:
        path: the destination.
        text: the contents (UTF-8).

    Raises:
        LossvizError: the file cannot be written.
    """
    try:
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as e:
        raise LossvizError(
            f"cannot write the report in {str(path.parent)!r}: {e.strerror}"
        ) from None
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes it private; a report is an ordinary file
        os.replace(tmp, path)
    except BaseException as e:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        if isinstance(e, OSError):
            raise LossvizError(
                f"cannot write the report {str(path)!r}: {e.strerror or e}"
            ) from None
        raise


def resolve_sections(sections, *, checkpoints: bool, pair: bool) -> list[str]:
    """The sections to draw, in report order.

    Args:
        sections: None (the defaults) or an iterable of names from :data:`SECTIONS`.
        checkpoints: whether ``checkpoints=`` was given.
        pair: whether ``pair=`` was given.

    Returns:
        The section names, in the order of :data:`SECTIONS`.

    Raises:
        ArgumentTypeError: ``sections`` is not None, a name or an iterable of names.
        LossvizError: an unknown or repeated name (the known ones are listed), no name,
            ``"trajectory"`` without checkpoints, ``"connectivity"`` or ``"curve"`` without
            a pair, or ``"topology"`` named without GUDHI installed.
    """
    known = ", ".join(SECTIONS)
    if sections is None:
        chosen = list(DEFAULT_SECTIONS)
        if checkpoints:
            chosen += ["trajectory", "roughness"]
        if pair:
            chosen.append("connectivity")
    else:
        if isinstance(sections, str):
            sections = [sections]
        if isinstance(sections, (bytes, Mapping)) or not isinstance(sections, Iterable):
            raise ArgumentTypeError(
                f"sections must be a list of section names ({known}), got {type(sections).__name__}"
            )
        chosen = list(sections)
        bad = [s for s in chosen if not isinstance(s, str)]
        if bad:
            raise ArgumentTypeError(f"sections must hold names (strings), got {bad[:5]!r}")
        unknown = [s for s in chosen if s not in SECTIONS]
        if unknown:
            raise LossvizError(f"sections: unknown {unknown}; the sections are {known}")
        if len(set(chosen)) != len(chosen):
            raise LossvizError(f"sections names a section twice: {chosen}")
        if not chosen:
            raise LossvizError(f"sections is empty: name at least one of {known}")
        if "trajectory" in chosen and not checkpoints:
            raise LossvizError("sections: 'trajectory' needs checkpoints= (3 or more)")
        for name in ("connectivity", "curve"):
            if name in chosen and not pair:
                raise LossvizError(f"sections: '{name}' needs pair=(a, b)")
        if "topology" in chosen and not has_gudhi():
            raise LossvizError(
                "sections: 'topology' needs GUDHI: pip install 'lossviz[topology]' (or pip "
                "install gudhi)"
            )
    return [s for s in SECTIONS if s in chosen]


def has_gudhi() -> bool:
    """Whether GUDHI (the ``topology`` extra) can be imported.

    Returns:
        True when ``import gudhi`` works.
    """
    try:
        import gudhi  # noqa: F401
    except ImportError:
        return False
    return True


def _check_pair(obj, pair):
    if isinstance(pair, (str, bytes, Mapping, nn.Module)) or not isinstance(pair, Iterable):
        raise ArgumentTypeError(
            f"pair must be two points (a, b): models, state dicts, Weights or checkpoint "
            f"paths; got {type(pair).__name__}"
        )
    pair = list(pair)
    if len(pair) != 2:
        raise LossvizError(f"pair must be two points (a, b), got {len(pair)}")
    for i, p in enumerate(pair):
        obj.resolve(p, name=f"pair[{i}]")  # keys and shapes, before any work
    return pair


# naming layers -----------------------------------------------------------------------------
def _describe(module: nn.Module) -> str:
    """A short description of a layer: its class and sizes (``Linear 64→10``)."""
    t = type(module).__name__
    if isinstance(module, nn.Linear):
        return f"{t} {module.in_features}→{module.out_features}"
    if isinstance(module, nn.modules.conv._ConvNd):
        k = "×".join(str(v) for v in module.kernel_size)
        return f"{t} {module.in_channels}→{module.out_channels}, {k}"
    if isinstance(module, nn.modules.batchnorm._NormBase):
        return f"{t} {module.num_features}"
    if isinstance(module, nn.Embedding):
        return f"{t} {module.num_embeddings}×{module.embedding_dim}"
    if isinstance(module, nn.LayerNorm):
        return f"{t} {'×'.join(str(v) for v in module.normalized_shape)}"
    return t


def layer_groups(obj) -> dict[str, list[str]]:
    """The varying parameters grouped by layer, named after the model's own modules.

    A group is named ``"<module name> (<class and sizes>)"``, e.g. ``"0 (Linear 64→64)"``
    or ``"block.conv1 (Conv2d 3→8, 3×3)"``; parameters owned by the root module are named
    by themselves.

    Args:
        obj: an :class:`~lossviz.Objective`.

    Returns:
        A dict ``label -> [parameter names]`` in parameter order (what ``groups=`` of
        :func:`~lossviz.hessian_blocks` and :func:`~lossviz.layerwise_barriers` take).
    """
    modules = dict(obj.model.named_modules())
    out: dict[str, list[str]] = {}
    for name, params in obj.layout.by_module().items():
        mod = modules.get(name)
        label = f"{name} ({_describe(mod)})" if mod is not None and name else name
        out[label] = params
    return out


# the document ------------------------------------------------------------------------------
class _Doc:
    """The HTML parts, numbered figures, and the machine-readable summary."""

    def __init__(self):
        self.parts: list[str] = []
        self.n_fig = 0
        self.summary: dict = {}

    def add(self, text: str) -> None:
        self.parts.append(text)

    def heading(self, title: str, intro: str = "") -> None:
        self.add(f"<h2>{html.escape(title)}</h2>")
        if intro:
            self.add(f"<p>{html.escape(intro)}</p>")

    def figure(self, fig, caption: str) -> None:
        self.n_fig += 1
        body = fig.to_html(
            full_html=False,
            include_plotlyjs=False,
            include_mathjax=False,
            config={"displaylogo": False, "responsive": True},
            default_height="460px",
        )
        self.add(
            f"<figure id='figure-{self.n_fig}'>{body}<figcaption><b>Figure {self.n_fig}.</b> "
            f"{html.escape(caption)}</figcaption></figure>"
        )

    def note(self, text: str) -> None:
        self.add(f"<p class='note'>{html.escape(text)}</p>")


def _json_safe(x):
    if isinstance(x, dict):
        return {str(k): _json_safe(v) for k, v in x.items()}
    if isinstance(x, (list, tuple, np.ndarray)):
        return [_json_safe(v) for v in x]
    if isinstance(x, (np.floating, float)):
        x = float(x)
        return x if math.isfinite(x) else str(x)
    if isinstance(x, (np.integer, np.bool_)):
        return x.item()
    return x


def _whole(result):
    """``result``, unless it is partial (a computation interrupted by Ctrl-C)."""
    if getattr(result, "complete", True) is False:
        raise KeyboardInterrupt
    return result


# the report --------------------------------------------------------------------------------
@api
def report(
    obj,
    *,
    checkpoints=None,
    pair=None,
    out="lossviz-report.html",
    sections=None,
    k: int = 5,
    grid: int = 21,
    n_probes: int = 4,
    steps: int = 40,
    max_hvp: int = 600,
    n_directions: int = 20,
    rho: float = 0.05,
    lr: float | None = None,
    momentum: float = 0.0,
    curve_steps: int = 500,
    seed: int = 0,
    title: str = "lossviz report",
    description: str | None = None,
    verbose: bool = False,
    progress: bool | None = None,
) -> Path:
    """Write one self-contained HTML report of the curvature and landscape at the model.

    Sections (:data:`SECTIONS`, chosen with ``sections=``):

    - ``eigenvalues``: the ``k`` largest and ``k`` smallest Hessian eigenvalues (thick-restart
      Lanczos, :func:`~lossviz.hessian_eigs` with ``which="both"``), numbered ``λ1 ≥ λ2 ≥
      …`` from the top and ``…, λP`` at the bottom, and the loss along the top eigenvector
      ``v1`` with the quadratic model ``L(θ) + ½·λ1·t²``;
    - ``density``: the spectral density by stochastic Lanczos quadrature (Ghorbani et al.
      2019) with its outliers (:meth:`~lossviz.SpectralDensity.outliers`; the same count
      in the caption, the table, the plot and the console);
    - ``trace``: ``tr(H) ≈ mean_z zᵀHz`` (Hutchinson 1989) with its standard error;
    - ``ggn``: the top eigenvalues of the Hessian against the Gauss-Newton ``G = Jᵀ H_ℓ J``;
    - ``layers``: the top eigenvalue and trace of each layer's diagonal block ``H_SS``
      (:func:`~lossviz.hessian_blocks`), named after the model's modules (:func:`layer_groups`);
    - ``flatness``: the worst-case sharpness ``max_{‖δ‖≤ρ} L(θ+δ) − L(θ)`` (a lower bound
      found by projected ascent; Keskar et al. 2017, Foret et al. 2021) next to its
      second-order estimate ``ρ‖g‖ + ½ρ²λ_max`` and the average sharpness
      ``E_{δ~N(0,ρ²I)} L(θ+δ) − L(θ)`` with its standard error (:func:`~lossviz.sharpness`);
      with ``lr`` the linear stability of gradient descent / heavy ball (``momentum``),
      ``λ_max < (2 + 2β)/η`` (:func:`~lossviz.stability`), else a note that it was not
      checked;
    - ``surface``: ``L(θ + a·d1 + b·d2)`` on filter-normalized random directions (Li et al.
      2018) on a ``grid × grid`` grid over ``[-1, 1]²``;
    - ``trajectory`` (with ``checkpoints``): the same on the PCA plane of the checkpoints
      (Li et al. 2018 §7), centred on the last one (with its buffers), axes labelled with
      their explained variance, start and end marked; the span is widened (up to twice)
      until the grid's minimum is inside the grid, and the caption says where it is;
    - ``topology``: for the random-direction surface and (with ``checkpoints``) the PCA
      plane, the 0-dimensional sublevel-set persistence of the loss
      (:func:`~lossviz.landscape_topology`, GUDHI): the basins, their depths, the saddles
      that merge them and Landscaper's SMAD, with the minima and saddles marked on the
      contour (non-finite grid points are placed above every finite value);
    - ``roughness``: the roughness index (Wu et al. 2021) at every checkpoint
      (:func:`~lossviz.roughness_along`), or at the model without checkpoints;
    - ``connectivity`` (with ``pair``): the loss along ``(1-α)·θA + α·θB``, its barrier
      ``max_α [L(θ(α)) - ((1-α)·L(θA) + α·L(θB))]`` (Entezari et al. 2022) and the
      layer-wise barriers (Adilova et al. 2024);
    - ``curve`` (with ``pair``; only when named, as it trains): a quadratic Bezier curve
      between the pair trained for ``curve_steps`` steps (:func:`~lossviz.connect`;
      Garipov et al. 2018), its loss next to the straight line's at the same ``t`` and
      both barriers (with BatchNorm, the statistics are re-estimated at every point of
      both paths, as ``connect`` does).

    A section a kernel cannot compute for this model (e.g. Gauss-Newton with a custom
    ``forward=``) is replaced by a note saying why, with a warning. Every argument, every
    checkpoint and both points of the pair are checked before any work. The model is never
    changed. An interrupt (Ctrl-C) propagates and leaves no file.

    Args:
        obj: the :class:`~lossviz.Objective` (model, loss, data).
        checkpoints: a training trajectory (a list, a dict ``label -> checkpoint`` or a
            :class:`~lossviz.TrajectoryRecorder`; at least 3 for the PCA plane).
        pair: two points ``(a, b)`` (models, state dicts, Weights or checkpoint paths).
        out: the report's file name (its directory must exist).
        sections: None (the defaults: eigenvalues, density, trace, ggn, layers, surface;
            plus trajectory and roughness with ``checkpoints`` and connectivity with
            ``pair``) or a list of names from :data:`SECTIONS`.
        k: eigenvalues at each end of the spectrum (and of the Gauss-Newton matrix).
        grid: points per axis of the surfaces (at least 3), and of the path between the
            pair.
        n_probes: SLQ probes of the density.
        steps: Lanczos steps per SLQ probe.
        max_hvp: the curvature-product budget of each eigen solve and trace estimate.
        n_directions: random directions of the roughness index (at least 2).
        rho: the radius ``ρ > 0`` of the sharpness ball (and the noise scale of the average
            sharpness).
        lr: the learning rate ``η > 0`` whose stability the flatness section checks (None:
            not checked, and the section says so).
        momentum: the heavy-ball momentum ``β`` in ``[0, 1)`` of that check (0: gradient
            descent).
        curve_steps: training steps of the mode-connecting curve (at least 1).
        seed: the seed of the random directions, probes and start vectors.
        title: the report's title.
        description: a paragraph under the title (plain text).
        verbose: print each result as it is computed (the results' own ``repr``).
        progress: progress bars (default on unless ``LOSSVIZ_PROGRESS=0``).

    Returns:
        The path of the report.

    Raises:
        ArgumentTypeError: ``obj`` is not an Objective, or an argument of the wrong type.
        LossvizError: a bad value (an unknown section, listed with the known ones; ``k``
            above half the parameter count; ``grid < 3``; ``rho <= 0``; ``lr <= 0``;
            ``momentum`` outside ``[0, 1)``; ...), fewer than 3 checkpoints for
            ``trajectory``, ``topology`` named without GUDHI, or the report cannot be
            written.
        CheckpointError: a checkpoint or a point of the pair does not match the model.
        KeyboardInterrupt: Ctrl-C; no file is written.
    """
    from .objective import Objective

    if not isinstance(obj, Objective):
        raise ArgumentTypeError(f"obj must be an Objective, got {type(obj).__name__}")
    path = check_out(out)
    chosen = resolve_sections(sections, checkpoints=checkpoints is not None, pair=pair is not None)
    P = obj.n_params
    k = validate.integer(k, "k", low=1)
    if ("eigenvalues" in chosen or "ggn" in chosen) and 2 * k > P:
        raise LossvizError(f"k must be at most half the parameter count ({P // 2}), got {k}")
    grid = validate.integer(grid, "grid", low=3)
    n_probes = validate.integer(n_probes, "n_probes", low=1)
    steps = validate.integer(steps, "steps", low=2)
    max_hvp = validate.integer(max_hvp, "max_hvp", low=1)
    n_directions = validate.integer(n_directions, "n_directions", low=2)
    rho = validate.number(rho, "rho", low=0, low_open=True)
    if not math.isfinite(rho):
        raise LossvizError(f"rho must be a finite number > 0, got {rho}")
    if lr is not None:
        lr = validate.number(lr, "lr", low=0, low_open=True)
        if not math.isfinite(lr):
            raise LossvizError(f"lr must be a finite number > 0, got {lr}")
    momentum = validate.number(momentum, "momentum", low=0, high=1, high_open=True)
    curve_steps = validate.integer(curve_steps, "curve_steps", low=1)
    seed = validate.seed(seed)
    if not isinstance(title, str):
        raise ArgumentTypeError(f"title must be a str, got {type(title).__name__}")
    if description is not None and not isinstance(description, str):
        raise ArgumentTypeError(f"description must be a str, got {type(description).__name__}")
    validate.boolean(verbose, "verbose")
    progress = validate.progress(progress)
    if checkpoints is not None:
        from .points import as_points

        need = 3 if "trajectory" in chosen else 1
        labels, pts, keyed = as_points(
            checkpoints, "checkpoints", at_least=need, what="the PCA plane of the trajectory"
        )
        for lab, p in zip(labels, pts):
            obj.resolve(p, name=f"checkpoints[{lab!r}]")
        # read once (a generator is used up), labels kept (dict keys, recorder steps)
        checkpoints = dict(zip(labels, pts)) if keyed else list(pts)
    if pair is not None:
        pair = _check_pair(obj, pair)

    t0 = time.perf_counter()
    say = print if verbose and is_rank_zero() else (lambda *a: None)
    doc = _Doc()
    ctx = _Context(obj, doc, say, k=k, max_hvp=max_hvp, seed=seed, progress=progress)
    ctx.rho, ctx.lr, ctx.momentum, ctx.curve_steps = rho, lr, momentum, curve_steps
    loss = ctx.loss = obj.loss()
    doc.summary.update(
        {"n_params": P, "loss": loss, "sections": chosen, "model": type(obj.model).__name__}
    )
    timing = doc.summary.setdefault("seconds_per_section", {})
    for name in chosen:
        doc.add(f"<section id='{name}'>")
        ts = time.perf_counter()
        try:
            _DRAW[name](
                ctx,
                checkpoints=checkpoints,
                pair=pair,
                grid=grid,
                n_probes=n_probes,
                steps=steps,
                n_directions=n_directions,
            )
        except LossvizError as e:
            msg = f"{name}: not computed for this model: {e}"
            warn(msg)
            doc.note(msg)
            doc.summary.setdefault("not_computed", {})[name] = str(e)
        timing[name] = time.perf_counter() - ts
        doc.add("</section>")
    seconds = time.perf_counter() - t0
    if is_rank_zero():  # a distributed Objective: every rank computes, rank 0 writes
        write_atomic(path, _page(obj, doc, title, description, loss, seconds))
        say(f"report written to {path.resolve()}")
    return path


class _Context:
    """What the sections share: the Objective, the document, and results used twice."""

    def __init__(self, obj, doc, say, *, k, max_hvp, seed, progress):
        self.obj, self.doc, self.say = obj, doc, say
        self.k, self.max_hvp, self.seed, self.progress = k, max_hvp, seed, progress
        self.loss = None  # the loss at the model
        self.eigs = None  # hessian_eigs(which="both")
        self.density = None
        self.groups = None
        self.random = None  # the surface on random directions
        self.plane = None  # the PCA plane of the checkpoints and its surface
        self.rho = self.lr = self.momentum = self.curve_steps = None

    def random_surface(self, grid):
        """The loss on two filter-normalized random directions (computed once)."""
        from .directions import random_directions
        from .landscape import surface

        if self.random is None:
            dirs = random_directions(self.obj, 2, seed=self.seed)
            self.random = _whole(
                surface(
                    self.obj, None, dirs, n=grid, span=((-1, 1), (-1, 1)), progress=self.progress
                )
            )
            self.say(self.random)
        return self.random

    def pca_plane(self, checkpoints, grid):
        """The PCA plane of the checkpoints and the loss on it (computed once).

        Returns:
            ``(pca, surface, coords, last, edge, i, j, widened, span)``.
        """
        if self.plane is None:
            self.plane = _plane(self, checkpoints, grid)
        return self.plane

    def both(self):
        from .hessian import hessian_eigs

        if self.eigs is None:
            self.eigs = _whole(
                hessian_eigs(
                    self.obj,
                    self.k,
                    which="both",
                    max_hvp=self.max_hvp,
                    seed=self.seed,
                    progress=self.progress,
                )
            )
            self.say(self.eigs)
        return self.eigs

    def layers(self):
        if self.groups is None:
            self.groups = layer_groups(self.obj)
        return self.groups


def _ranked(eig):
    """``(labels, values, residuals, converged)``, descending: λ1.. at the top, ..λP last."""
    order = np.argsort(-np.asarray(eig.values), kind="stable")
    return (
        [eig.labels[i] for i in order],
        np.asarray(eig.values)[order],
        np.asarray(eig.residuals)[order],
        np.asarray(eig.converged)[order],
    )


def _eigenvalues(ctx, **_):
    from .landscape import line

    obj, doc = ctx.obj, ctx.doc
    eig = ctx.both()
    P = obj.n_params
    labels, vals, res, conv = _ranked(eig)
    doc.heading(
        "Extreme eigenvalues of the Hessian",
        f"The {ctx.k} largest and {ctx.k} smallest eigenvalues of the Hessian of the loss "
        f"({P:,} parameters), by thick-restart Lanczos (Wu & Simon 2000). λ1 is the largest, "
        f"λ{P} the smallest, as in the dashboards.",
    )
    doc.add(
        html_table(
            ["eigenvalue", "value", "residual ‖Hv − λv‖/|λ|max", "converged"],
            [
                [lab, number(v), f"{r:.1e}", "yes" if c else "no"]
                for lab, v, r, c in zip(labels, vals, res, conv)
            ],
            f"{eig.n_hvp} Hessian-vector products, {eig.seconds:.2f} s",
        )
    )
    fig = eig.plot()
    fig.data[0].update(x=labels, y=vals, customdata=res)
    fig.update_layout(title=f"extreme eigenvalues of the Hessian (λ1 the largest, λ{P} the least)")
    state = (
        "all converged"
        if eig.all_converged
        else f"NOT all converged within {eig.n_hvp} products: max residual {float(np.max(res)):.1e}"
    )
    doc.figure(
        fig,
        f"The {ctx.k} largest (λ1 = {number(vals[0])}) and {ctx.k} smallest "
        f"(λ{P} = {number(vals[-1])}) eigenvalues of the Hessian; hover for the residuals "
        f"({state}). Negative eigenvalues are directions of negative curvature.",
    )
    doc.summary["eigenvalues"] = {"labels": labels, "values": vals, "converged": conv}
    lam1 = float(vals[0])
    v1 = eig.vectors[int(np.argmax(eig.values))]
    L0 = ctx.loss
    # the span where the quadratic model rises by max(L, 0.1): ½·λ1·h² = rise
    rise = max(abs(L0), 0.1)
    h = math.sqrt(2 * rise / lam1) if lam1 > 0 else 1.0
    sl = _whole(line(obj, None, v1, span=(-h, h), n=41, progress=ctx.progress))
    ctx.say(sl)
    fig = sl.plot()
    import plotly.graph_objects as go

    if lam1 > 0:
        fig.add_trace(
            go.Scatter(
                x=sl.t,
                y=L0 + 0.5 * lam1 * sl.t**2,
                mode="lines",
                name="L(θ) + ½·λ1·t²",
                line={"dash": "dot"},
            )
        )
    fig.update_layout(title="loss along the top eigenvector v1", xaxis_title="t (θ + t·v1)")
    doc.figure(
        fig,
        f"The loss L(θ + t·v1) along the unit eigenvector of λ1 = {number(lam1)}, for |t| ≤ "
        f"{short(h)}"
        + (
            f", with the quadratic model L(θ) + ½·λ1·t² (dotted), which rises by {short(rise)} "
            "at the ends; where they part the loss is not quadratic."
            if lam1 > 0
            else " (λ1 ≤ 0: no quadratic model drawn)."
        ),
    )


def _density(ctx, *, n_probes, steps, **_):
    from .hessian import hessian_density

    obj, doc = ctx.obj, ctx.doc
    dens = _whole(
        hessian_density(obj, n_probes=n_probes, steps=steps, seed=ctx.seed, progress=ctx.progress)
    )
    ctx.density = dens
    ctx.say(dens)
    outl = dens.outliers()  # the one count shown in the table, the plot and the caption
    doc.heading(
        "Spectral density of the Hessian",
        "Stochastic Lanczos quadrature (Ghorbani, Krishnan, Xiao 2019; Lin, Saad, Yang "
        "2016): the Ritz values of random probes, smoothed with a Gaussian. A bulk near "
        "zero and a few outliers is the typical picture (Sagun et al. 2017; Papyan 2019).",
    )
    doc.add(dens._repr_html_())
    shown = ", ".join(number(v) for v in outl[:12]) + (" …" if len(outl) > 12 else "")
    doc.figure(
        dens.plot(log=True),
        f"Smoothed spectral density (log scale) from {dens.nodes.shape[0]} probes × "
        f"{dens.nodes.shape[1]} Lanczos steps. {len(outl)} outlier(s), the eigenvalues "
        f"separated from the bulk (dotted red lines)" + (f": {shown}." if len(outl) else "."),
    )
    doc.summary["density"] = {
        "outliers": outl,
        "n_outliers": len(outl),
        "support": [float(dens.nodes.min()), float(dens.nodes.max())],
    }


def _trace(ctx, **_):
    from .hessian import hessian_trace

    obj, doc = ctx.obj, ctx.doc
    tr = _whole(
        hessian_trace(obj, rtol=0.05, max_hvp=ctx.max_hvp, seed=ctx.seed, progress=ctx.progress)
    )
    ctx.say(tr)
    doc.heading(
        "Trace of the Hessian",
        "Hutchinson's estimator tr(H) ≈ mean over Rademacher z of zᵀHz (Hutchinson 1989), "
        "run until its standard error is 5% of the estimate or the product budget is spent.",
    )
    doc.add(tr._repr_html_())
    cross = ""
    if ctx.density is not None:
        cross = (
            f" The density's own estimate of the same trace, P·∫λ dμ, is "
            f"{number(ctx.density.moment(1) * obj.n_params)}."
        )
    doc.figure(
        tr.plot(),
        f"The running estimate of tr(H) over {len(tr.samples)} probes, with a band of ±2 "
        f"standard errors: tr(H) = {number(tr.value)} ± {tr.stderr:.3g}.{cross}",
    )
    doc.summary["trace"] = {"value": tr.value, "stderr": tr.stderr}


def _ggn(ctx, **_):
    import plotly.graph_objects as go

    from .hessian import hessian_eigs

    obj, doc = ctx.obj, ctx.doc
    ggn = _whole(
        hessian_eigs(
            obj,
            ctx.k,
            curvature="ggn",
            max_hvp=ctx.max_hvp,
            seed=ctx.seed,
            progress=ctx.progress,
        )
    )
    ctx.say(ggn)
    eig = ctx.both()
    labels, vals, _, _ = _ranked(eig)
    top = vals[: ctx.k]
    g = np.sort(np.asarray(ggn.values))[::-1]
    doc.heading(
        "Hessian and Gauss-Newton",
        "The Hessian is H = G + Σ_i (∂ℓ/∂f_i)·∇²f_i: the Gauss-Newton matrix G = Jᵀ H_ℓ J "
        "(positive semi-definite for a convex loss) plus a term that vanishes where the "
        "residuals do. Near a minimum the top of both spectra agree.",
    )
    doc.add(
        html_table(
            ["eigenvalue", "Hessian", "Gauss-Newton", "difference"],
            [[labels[i], number(top[i]), number(g[i]), short(top[i] - g[i])] for i in range(ctx.k)],
            f"top {ctx.k} eigenvalues"
            + ("" if ggn.all_converged else " (Gauss-Newton NOT all converged)"),
        )
    )
    fig = go.Figure(
        [
            go.Bar(x=labels[: ctx.k], y=top, name="Hessian"),
            go.Bar(x=labels[: ctx.k], y=g, name="Gauss-Newton"),
        ]
    )
    fig.update_layout(
        title="top eigenvalues: Hessian vs Gauss-Newton",
        barmode="group",
        yaxis_title="eigenvalue",
        template="plotly_white",
    )
    doc.figure(
        fig,
        f"The {ctx.k} largest eigenvalues of the Hessian and of the Gauss-Newton matrix "
        f"(λ1: {number(top[0])} and {number(g[0])}).",
    )
    doc.summary["ggn"] = {"values": g}


def _layers(ctx, **_):
    from .hessian import hessian_blocks

    obj, doc = ctx.obj, ctx.doc
    groups = ctx.layers()
    blocks = _whole(
        hessian_blocks(
            obj,
            groups,
            k=1,
            rtol=0.1,
            max_hvp=ctx.max_hvp,
            seed=ctx.seed,
            progress=ctx.progress,
        )
    )
    ctx.say(blocks)
    doc.heading(
        "Curvature per layer",
        "The diagonal block H_SS of the Hessian for the parameters S of each layer (named "
        "after the model's modules): its largest eigenvalue (Lanczos) and its trace "
        "(Hutchinson, with its standard error).",
    )
    doc.add(blocks._repr_html_())
    rows = blocks.table
    top = max(rows, key=lambda r: r["λ1"])
    doc.figure(
        blocks.plot("λ1"),
        f"The largest eigenvalue of each layer's Hessian block; the sharpest layer is "
        f"{top['block']}, with λ1 = {number(top['λ1'])}.",
    )
    doc.figure(
        blocks.plot("trace"),
        "The trace of each layer's Hessian block, with error bars of 2 standard errors.",
    )
    doc.summary["layers"] = {r["block"]: {"λ1": r["λ1"], "trace": r["trace"]} for r in rows}


def _surface(ctx, *, grid, **_):
    doc = ctx.doc
    s = ctx.random_surface(grid)
    doc.heading(
        "Loss surface on random directions",
        "L(θ + a·d1 + b·d2) for two Gaussian directions, filter-normalized (each filter of "
        "d scaled to the norm of the same filter of θ; biases and norm layers left out): "
        "Li, Xu, Taylor, Studer, Goldstein 2018.",
    )
    v = s.loss
    log = bool(np.all(v[np.isfinite(v)] > 0))
    doc.figure(
        s.plot("contour", log=log),
        f"{'log10 of the loss' if log else 'The loss'} on a {grid}×{grid} grid over "
        f"[-1, 1]² around the model (the centre), directions seed {ctx.seed}: from "
        f"{short(np.nanmin(v))} to {short(np.nanmax(v))}.",
    )
    doc.summary["surface"] = {"min": np.nanmin(v), "max": np.nanmax(v)}


def _on_edge(s) -> tuple[bool, int, int]:
    v = np.where(np.isfinite(s.loss), s.loss, np.inf)
    i, j = np.unravel_index(int(np.argmin(v)), v.shape)
    return i in (0, v.shape[0] - 1) or j in (0, v.shape[1] - 1), int(i), int(j)


def _plane(ctx, checkpoints, grid):
    from .directions import pca_directions
    from .landscape import surface

    obj = ctx.obj
    # the checkpoints' varying parameters only (no buffers, no tied aliases), as the
    # Objective reads them: the plane lives where the surface is drawn
    if isinstance(checkpoints, Mapping):
        pca = pca_directions({lab: obj.weights(p) for lab, p in checkpoints.items()}, 2)
        last = list(checkpoints.values())[-1]
    else:
        pca = pca_directions([obj.weights(p) for p in checkpoints], 2)
        last = checkpoints[-1]
    ctx.say(pca)
    c = pca.coords[:, :2]
    lo, hi = c.min(0), c.max(0)
    w = np.maximum(hi - lo, 1e-12 * max(float(np.abs(c).max()), 1.0))
    mid = (lo + hi) / 2
    half = 0.5 * w + 0.25 * float(w.max())  # the path's box, a quarter wider on each side
    widened = 0
    while True:
        span = tuple((float(mid[a] - half[a]), float(mid[a] + half[a])) for a in range(2))
        # centred on the last checkpoint itself (pca.center holds its parameters), so its
        # buffers (BatchNorm statistics) are used, not the model's
        s = _whole(
            surface(
                obj,
                last,
                pca,
                span=span,
                n=grid,
                trajectory=c,
                points=pca.points,
                progress=ctx.progress,
            )
        )
        edge, i, j = _on_edge(s)
        if not edge or widened == 2:
            break
        half = 2 * half
        widened += 1
    ctx.say(s)
    return pca, s, c, last, edge, i, j, widened, span


def _trajectory(ctx, *, checkpoints, grid, **_):
    doc = ctx.doc
    pca, s, c, last, edge, i, j, widened, span = ctx.pca_plane(checkpoints, grid)
    ev = pca.explained_variance_ratio
    s.add_point("minimum", (float(s.x[j]), float(s.y[i])))
    v = s.loss
    log = bool(np.all(v[np.isfinite(v)] > 0))
    fig = s.plot("contour", log=log)
    fig.update_layout(
        title="loss on the PCA plane of the training trajectory",
        xaxis_title=f"PC1 ({100 * ev[0]:.1f}% of the variance)",
        yaxis_title=f"PC2 ({100 * ev[1]:.1f}% of the variance)",
    )
    doc.heading(
        "Loss on the plane of the training trajectory",
        "The two principal directions of the checkpoints' parameters (PCA; Li et al. 2018, "
        "§7), centred on the last checkpoint; the checkpoints are projected onto the plane.",
    )
    doc.add(pca._repr_html_())
    where = (
        "inside the grid"
        if not edge
        else "on the edge of the grid even after widening it twice: the loss keeps "
        "falling beyond it"
    )
    doc.figure(
        fig,
        f"{'log10 of the loss' if log else 'The loss'} on the plane of the first two "
        f"principal directions of {len(c)} checkpoints ({100 * (ev[0] + ev[1]):.1f}% of the "
        f"trajectory's variance), centred on the last checkpoint (a = b = 0, with its "
        f"buffers such as BatchNorm statistics), with the path (white), its start and end. "
        f"The grid's "
        f"minimum, loss {short(v[i, j])} at (a, b) = ({short(s.x[j])}, {short(s.y[i])}), is "
        f"{where}"
        + (f" (the span was doubled {widened}×)." if widened and not edge else ".")
        + " Training visited only the path: the rest of the plane is the loss between and "
        "beyond the checkpoints.",
    )
    from .animation import animate

    anim = animate(s, checkpoints, log=log, progress=ctx.progress)
    doc.figure(
        anim,
        "The same plane with the training run animated (press play or drag the slider): "
        "each frame adds one checkpoint to the path; its title gives the checkpoint, its "
        "loss evaluated at the checkpoint itself and the loss on the plane at its "
        "projection (≈, interpolated on the grid; the two differ by what the plane leaves "
        "out of the checkpoint).",
    )
    doc.summary["trajectory"] = {
        "explained_variance": ev[:2],
        "minimum": [float(s.x[j]), float(s.y[i]), float(v[i, j])],
        "minimum_inside": not edge,
        "span": span,
    }


def _roughness(ctx, *, checkpoints, n_directions, **_):
    from .roughness import roughness_along, roughness_index

    obj, doc = ctx.obj, ctx.doc
    doc.heading(
        "Roughness index",
        "Wu, Jian, Du, Chen, Zhou 2021: along random filter-normalized directions d_j, the "
        "normalized total variation TV_j of the 1-D slices L(θ + t·d_j), |t| ≤ 0.1; the "
        "index is std(TV)/mean(TV) (0 for slices that are all monotone or all alike), with "
        "a bootstrap interval over directions.",
    )
    kw = dict(n_directions=n_directions, seed=ctx.seed, progress=ctx.progress)
    if checkpoints is not None:
        r = _whole(roughness_along(obj, checkpoints, **kw))
        ctx.say(r)
        doc.add(r._repr_html_())
        doc.figure(
            r.plot(),
            f"The roughness index at each of the {len(r)} checkpoints ({n_directions} "
            "directions, 11 points each), with 95% bootstrap intervals.",
        )
        doc.summary["roughness"] = {"labels": [str(v) for v in r.labels], "values": r.values}
    else:
        r = _whole(roughness_index(obj, **kw))
        ctx.say(r)
        doc.add(r._repr_html_())
        doc.figure(
            r.plot(),
            f"The {n_directions} normalized slices at the model; roughness index "
            f"{short(r.value)} (95% interval [{short(r.ci[0])}, {short(r.ci[1])}]).",
        )
        doc.summary["roughness"] = {"value": r.value, "ci": r.ci}


def _connectivity(ctx, *, pair, grid, **_):
    from .connectivity import interpolate, layerwise_barriers

    obj, doc = ctx.obj, ctx.doc
    a, b = pair
    path = _whole(interpolate(obj, a, b, n=grid, progress=ctx.progress))
    ctx.say(path)
    bar = path.barrier("loss", "linear")
    doc.heading(
        "Mode connectivity between the pair",
        "The straight path θ(α) = (1-α)·θA + α·θB and its barrier "
        "max_α [L(θ(α)) - ((1-α)·L(θA) + α·L(θB))] (Entezari, Sedghi, Saukh, Neyshabur "
        "2022); layer-wise: the cost of averaging one layer of the two models (Adilova, "
        "Andriushchenko, Kamp, Fischer, Jaggi 2024).",
    )
    doc.add(path._repr_html_())
    has_bn = obj.bn == "eval" and any(
        isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats
        for m in obj.model.modules()
    )
    doc.figure(
        path.plot("linear"),
        f"The metrics along the straight path from A (α = 0) to B (α = 1) at {grid} points, "
        f"with the chord between the endpoints; loss barrier {short(bar)} at α = "
        f"{short(path.barrier_alpha('loss', 'linear'))}."
        + (
            " The BatchNorm running statistics are interpolated with the weights (bn='eval'); "
            "re-estimating them at every α (lv.interpolate(..., bn='recompute')) often gives "
            "a lower barrier."
            if has_bn
            else ""
        ),
    )
    lw = _whole(layerwise_barriers(obj, a, b, groups=ctx.layers(), progress=ctx.progress))
    ctx.say(lw)
    doc.add(lw._repr_html_())
    doc.figure(
        lw.plot(),
        "Layer-wise barriers: the loss of model A (or B) with one layer replaced by the "
        "average of both, minus the endpoints' mean loss; the last column averages every "
        f"layer at once (full-model barrier {short(lw.full)}).",
    )
    doc.summary["connectivity"] = {
        "barrier": bar,
        "layerwise": lw.table,
        "full": lw.full,
    }


def _flatness(ctx, **_):
    from .sharpness import sharpness
    from .stability import stability

    obj, doc, rho = ctx.obj, ctx.doc, ctx.rho
    kw = dict(seed=ctx.seed, progress=ctx.progress)
    worst = _whole(sharpness(obj, rho, kind="worst", gam=False, **kw))
    ctx.say(worst)
    avg = _whole(sharpness(obj, rho, kind="average", **kw))
    ctx.say(avg)
    doc.heading(
        "Flatness: sharpness and stability",
        f"Worst-case sharpness max over ‖δ‖ ≤ ρ of L(θ+δ) − L(θ) (Keskar et al. 2017; the "
        f"inner problem of SAM, Foret et al. 2021) found by projected gradient ascent with "
        f"{len(worst.restarts)} restarts: every point tried lies in the ball, so the value is "
        f"a lower bound of the maximum. Next to it the second-order estimate ρ‖g‖ + ½ρ²λ_max "
        f"(an estimate, not a bound). Average sharpness E over δ ~ N(0, ρ²I) of L(θ+δ) − "
        f"L(θ), by Monte-Carlo over antithetic pairs ±δ, with its standard error; its "
        f"perturbations have norm about ρ·√P = {short(rho * math.sqrt(obj.n_params))}, not ρ. "
        f"On a quadratic loss at its minimum the two are ½ρ²λ_max and ½ρ²·tr(H). ρ = {rho:g}.",
    )
    doc.add(worst._repr_html_())
    doc.add(avg._repr_html_())
    so = worst.second_order
    if math.isnan(worst.value):
        where = worst.nonfinite[0] if worst.nonfinite else {}
        found = (
            f"the loss is NOT FINITE inside the ball ({len(worst.nonfinite)} point(s), e.g. "
            f"{where.get('where', '?')}), so the worst case is undefined"
        )
    else:
        found = f"the largest found is {number(worst.value)} (a lower bound)"
    doc.figure(
        worst.plot(),
        f"Worst-case sharpness in the ℓ2 ball of radius ρ = {rho:g}: the best L(θ+δ) − L(θ) "
        f"after each ascent iteration; {found}"
        + (
            f"; the second-order estimate ρ‖g‖ + ½ρ²λ_max = {number(so)} (dashed; ‖g‖ = "
            f"{number(worst.grad_norm)}, λ_max = {number(worst.lambda_max)})."
            if so is not None
            else "."
        ),
    )
    doc.figure(
        avg.plot(),
        f"Average sharpness at ρ = {rho:g}: the {avg.n_samples} antithetic samples "
        f"½(L(θ+δ) + L(θ−δ)) − L(θ), δ ~ N(0, ρ²I); mean {number(avg.value)} ± "
        f"{number(avg.stderr if avg.stderr is not None else float('nan'))} (standard error).",
    )
    summary = {
        "rho": rho,
        "worst": worst.value,
        "worst_is_lower_bound": True,
        "second_order": so,
        "grad_norm": worst.grad_norm,
        "lambda_max": worst.lambda_max,
        "gam_first_order": worst.first_order,
        "average": avg.value,
        "average_stderr": avg.stderr,
        "average_samples": avg.n_samples,
        "stability": None,
    }
    if ctx.lr is None:
        doc.note(
            "Stability not checked: no learning rate was given. Pass lr= (and momentum= for "
            "heavy ball) to lv.report, or --lr / --momentum to lossviz report, to test "
            "λ_max < (2 + 2β)/η."
        )
    else:
        st = _whole(
            stability(
                obj,
                ctx.lr,
                momentum=ctx.momentum,
                k=min(ctx.k, obj.n_params),
                seed=ctx.seed,
                progress=ctx.progress,
            )
        )
        ctx.say(st)
        doc.add(st._repr_html_())
        verdict = "stable" if st.gd_stable else "UNSTABLE"
        res = np.asarray(st.residuals, dtype=np.float64)
        if len(res) and not np.all(res <= 1e-4):  # stability's tol: not all converged
            verdict += f" (eigenvalues NOT all converged: max residual {float(np.max(res)):.1e})"
        doc.figure(
            st.plot(),
            f"Linear stability of {st.method} with learning rate η = {st.lr:g} (Polyak 1964; "
            f"Cohen et al. 2021): along an eigenvector with eigenvalue λ the iteration "
            f"matrix has spectral radius ρ(M) < 1 iff 0 < ηλ < 2 + 2β (inside the black "
            f"line). The {len(st.eigenvalues)} measured top eigenvalues are the gold points: "
            f"λ_max = {number(st.lambda_max)} against the threshold (2 + 2β)/η = "
            f"{number(st.threshold)}: {verdict}, margin {number(st.gd_margin)}"
            f" (‖∇L‖ = {number(st.grad_norm)}; the condition is about a minimum).",
        )
        summary["stability"] = {
            "lr": st.lr,
            "momentum": st.momentum,
            "method": st.method,
            "lambda_max": st.lambda_max,
            "threshold": st.threshold,
            "stable": st.gd_stable,
            "margin": st.gd_margin,
            "eigenvalues": st.eigenvalues,
            "radius": st.radius,
            "residuals": st.residuals,
        }
    doc.summary["flatness"] = summary


def _topology(ctx, *, checkpoints, grid, **_):
    if not has_gudhi():
        raise LossvizError("GUDHI is not installed: pip install 'lossviz[topology]'")
    doc = ctx.doc
    grids = [("random", "two random directions", ctx.random_surface(grid))]
    if checkpoints is not None and len(checkpoints) >= 3:
        s = ctx.pca_plane(checkpoints, grid)[1]
        grids.append(("trajectory", "the PCA plane of the checkpoints", s))
        plane_note = ""
    elif checkpoints is None:
        plane_note = "The PCA plane of a training run is analysed too when checkpoints= is given."
    else:
        plane_note = f"The PCA plane needs 3 checkpoints or more ({len(checkpoints)} given)."
    doc.heading(
        "Topology of the landscape",
        "Sublevel-set persistence of the loss on the grid (Edelsbrunner, Letscher, Zomorodian "
        "2002; GUDHI's cubical complexes, grid points neighbours along the axes): each basin "
        "is born at a local minimum and dies at the saddle where it merges into a deeper one; "
        "its depth is the saddle's value minus the minimum's. SMAD is the mean gap between "
        "each minimum and its first merge (Landscaper, Chen et al. 2026); 0 for one basin. "
        "Basins are found on the grid: finer features need a finer grid.",
    )
    if plane_note:
        doc.note(plane_note)
    out = {}
    for key, what, s in grids:
        topo = s.topology(nonfinite="top")
        ctx.say(topo)
        doc.add(topo._repr_html_())
        fig = topo.plot("contour")
        fig.update_layout(title=f"minima and saddles of the loss on {what}")
        if key == "trajectory":
            fig.update_layout(xaxis_title="a (PC1)", yaxis_title="b (PC2)")
        d = np.sort(topo.depths[1:])[::-1]
        depths = ", ".join(short(x) for x in d[:8]) + (" …" if len(d) > 8 else "")
        smad, smad_w = topo.smad(), topo.smad(weighted=True)
        doc.figure(
            fig,
            f"The loss on {what} ({len(s.x)}×{len(s.y)} grid) with its {topo.n_basins} "
            f"basin(s): minima as white circles, the saddles where basins merge as red "
            f"crosses. The global minimum is {short(topo.minimum_values[0])}"
            + (f"; the other basins' depths are {depths}" if len(d) else " (a single basin)")
            + f"; SMAD {short(smad)} (volume-weighted {short(smad_w)})."
            + (
                f" {topo.n_nonfinite} non-finite grid point(s) were placed above every "
                "finite value."
                if topo.n_nonfinite
                else ""
            ),
        )
        out[key] = {
            "n_basins": topo.n_basins,
            "minimum_values": topo.minimum_values,
            "saddle_values": topo.saddle_values,
            "depths": topo.depths,
            "minima": topo.coords(topo.minima),
            "smad": smad,
            "smad_weighted": smad_w,
            "n_nonfinite": topo.n_nonfinite,
        }
    doc.summary["topology"] = out


def _curve(ctx, *, pair, grid, **_):
    from .curves import connect

    obj, doc = ctx.obj, ctx.doc
    a, b = pair
    c = connect(
        obj,
        a,
        b,
        curve="bezier",
        bends=1,
        steps=ctx.curve_steps,
        n=grid,
        seed=ctx.seed,
        progress=ctx.progress,
    )
    if c.stopped == "interrupted" or (c.evaluated is not None and not np.all(c.evaluated)):
        raise KeyboardInterrupt
    ctx.say(c)
    doc.heading(
        "A mode-connecting curve between the pair",
        "Garipov, Izmailov, Podoprikhin, Vetrov, Wilson 2018: the quadratic Bezier curve "
        "φ(t) = (1-t)²·θA + 2t(1-t)·w + t²·θB with the bend w trained to minimise the "
        "expected loss E over t ~ U(0, 1) of L(φ(t)), one random t per SGD step. Its loss "
        "is compared with the straight line (1-t)·θA + t·θB at the same t; barriers are "
        "max over t of f(t) − ((1-t)·f(0) + t·f(1)).",
    )
    doc.add(c._repr_html_())
    bar, line_bar = c.barrier("loss"), c.barrier("loss", path="line")
    notes = ""
    if c.bn == "recompute":
        notes += (
            " BatchNorm statistics are re-estimated at every point of both paths, so the "
            "straight line's barrier here can differ from the connectivity section's."
        )
    if c.stopped == "diverged":
        notes += (
            f" Training DIVERGED after {c.trained_steps} of {c.steps} steps (a non-finite "
            "loss): the last bend with a finite loss is shown."
        )
    doc.figure(
        c.plot("loss"),
        f"The loss along the trained quadratic Bezier curve (solid, {c.trained_steps} "
        f"{c.optimizer.upper()} steps, learning rate {c.lr:g}) and along the straight line "
        f"(dashed) at {len(c.ts)} values of t: barrier {short(bar)} on the curve (worst loss "
        f"{short(c.max('loss'))}) against {short(line_bar)} on the straight line (worst "
        f"loss {short(c.max('loss', path='line'))}).{notes}",
    )
    doc.summary["curve"] = {
        "barrier": bar,
        "line_barrier": line_bar,
        "max": c.max("loss"),
        "line_max": c.max("loss", path="line"),
        "t": c.ts,
        "loss": c.values["loss"],
        "line_loss": c.line_values["loss"],
        "steps": c.trained_steps,
        "bn": c.bn,
        "stopped": c.stopped,
    }


_DRAW = {
    "eigenvalues": _eigenvalues,
    "density": _density,
    "trace": _trace,
    "ggn": _ggn,
    "layers": _layers,
    "flatness": _flatness,
    "surface": _surface,
    "trajectory": _trajectory,
    "topology": _topology,
    "roughness": _roughness,
    "connectivity": _connectivity,
    "curve": _curve,
}


def _page(obj, doc: _Doc, title: str, description, loss: float, seconds: float) -> str:
    import plotly
    import torch
    from plotly.offline import get_plotlyjs

    from . import __version__

    n_all = sum(p.numel() for p in obj.model.parameters())
    head = [f"<h1>{html.escape(title)}</h1>"]
    if description:
        head.append(f"<p>{html.escape(description)}</p>")
    rows = [
        ["model", type(obj.model).__name__],
        ["parameters varied", f"{obj.n_params:,} of {n_all:,}"],
        ["loss at the model", number(loss)],
        ["device", str(obj.device)],
        ["computed in", f"{seconds:.1f} s"],
        ["lossviz / torch / plotly", f"{__version__} / {torch.__version__} / {plotly.__version__}"],
    ]
    s = doc.summary
    if "eigenvalues" in s:
        ev = s["eigenvalues"]
        rows.append(["λ1 (largest)", number(ev["values"][0])])
        rows.append([f"{ev['labels'][-1]} (smallest)", number(ev["values"][-1])])
    if "density" in s:
        rows.append(["outliers of the density", str(s["density"]["n_outliers"])])
    if "trace" in s:
        rows.append(["trace", f"{number(s['trace']['value'])} ± {s['trace']['stderr']:.3g}"])
    if "flatness" in s:
        f = s["flatness"]
        rows.append([f"worst-case sharpness (ρ = {f['rho']:g})", f"≥ {number(f['worst'])}"])
        if f["second_order"] is not None:
            rows.append(["its second-order estimate", number(f["second_order"])])
        rows.append(
            [
                f"average sharpness (ρ = {f['rho']:g})",
                f"{number(f['average'])} ± {number(f['average_stderr'])}",
            ]
        )
        st = f["stability"]
        rows.append(
            [
                "stability"
                if st is None
                else f"{st['method']} at η = {st['lr']:g} (λ_max < (2 + 2β)/η)",
                "not checked (no lr=)"
                if st is None
                else f"{'stable' if st['stable'] else 'UNSTABLE'}, margin {number(st['margin'])}",
            ]
        )
    if "topology" in s:
        for key, what in (("random", "random surface"), ("trajectory", "PCA plane")):
            if key in s["topology"]:
                t = s["topology"][key]
                rows.append([f"basins on the {what}", f"{t['n_basins']}, SMAD {short(t['smad'])}"])
    if "connectivity" in s:
        rows.append(["loss barrier of the pair", short(s["connectivity"]["barrier"])])
    if "curve" in s:
        rows.append(
            [
                "loss barrier: Bezier curve / straight line",
                f"{short(s['curve']['barrier'])} / {short(s['curve']['line_barrier'])}",
            ]
        )
    summary = html_table(["", ""], rows, "summary")
    data = json.dumps(_json_safe({**s, "lossviz": __version__, "seconds": seconds}))
    data = data.replace("</", "<\\/")
    return (
        "<!doctype html><html><head><meta charset='utf-8'>"
        f"<title>{html.escape(title)}</title><style>{_STYLE}</style>"
        f"<script type='text/javascript'>{get_plotlyjs()}</script>"
        f"<script type='application/json' id='lossviz-summary'>{data}</script>"
        f"</head><body>{''.join(head)}<section id='summary'>{summary}</section>"
        f"{''.join(doc.parts)}</body></html>"
    )
