"""Teaching optimization: ``playground()``, an interactive 2-D optimizer playground.

Optimizers from ``torch.optim`` (and SAM) run on classic 2-D test functions; trajectories
over the contours and loss against step update as the sliders move. Two more panels: the
edge of stability (gradient descent on a quadratic diverges past ``lr = 2/λ_max``) and a
Muon-style orthogonalized update on a small matrix problem. Runs in Jupyter and as a Voila
page (``voila notebooks/playground.ipynb``). Needs ``pip install 'lossviz[widgets]'``.

The computations (:func:`run`, :func:`sam_step`, :func:`newton_schulz`,
:func:`run_matrix`) need only torch and numpy.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from . import validate
from .dash import Dashboard, figure_widget, require, slider, style
from .errors import ArgumentTypeError, LossvizError

__all__ = [
    "FUNCTIONS",
    "OPTIMIZERS",
    "Playground",
    "StabilityChart",
    "newton_schulz",
    "playground",
    "run",
    "sam_step",
    "stability_chart",
]


@dataclass(frozen=True)
class Function2D:
    """A 2-D function ``f(xy)`` on ``xy[..., 2]`` with a plotting box and a start point.

    Calling it, ``fn(xy, kappa=10.0)``, evaluates ``f`` on the last axis of ``xy``
    (``kappa`` is used by the ill-conditioned quadratic only).

    Attributes:
        name: the name shown in the playground (its key in :data:`FUNCTIONS`).
        f: ``f(xy, kappa) -> tensor`` of shape ``xy.shape[:-1]``.
        box: ``(x0, x1, y0, y1)``, the plotted region.
        start: the default start point ``(x, y)``.
        minima: known minimizers ``(x, y)`` (their lowest value is the "min" of the loss
            plot; empty: 0).
        log: draw contours of ``log10(f − min_grid f + 1e-3)`` (else of ``f``).

    >>> xy = torch.tensor([[1.0, 1.0], [3.0, 2.0]])
    >>> FUNCTIONS["Rosenbrock"](xy)[0].item(), FUNCTIONS["Himmelblau"](xy)[1].item()
    (0.0, 0.0)
    """

    name: str
    f: Callable[[torch.Tensor, float], torch.Tensor]
    box: tuple[float, float, float, float]  # x0, x1, y0, y1
    start: tuple[float, float]
    minima: tuple = ()
    log: bool = True  # contours of log(f - f_min + eps)

    def __call__(self, xy: torch.Tensor, kappa: float = 10.0) -> torch.Tensor:
        return self.f(xy, kappa)


def _quadratic(xy, kappa):
    return 0.5 * (xy[..., 0] ** 2 + kappa * xy[..., 1] ** 2) / math.sqrt(kappa)


def _rosenbrock(xy, kappa):
    x, y = xy[..., 0], xy[..., 1]
    return (1 - x) ** 2 + 100 * (y - x**2) ** 2


def _himmelblau(xy, kappa):
    x, y = xy[..., 0], xy[..., 1]
    return (x**2 + y - 11) ** 2 + (x + y**2 - 7) ** 2


def _saddle(xy, kappa):
    x, y = xy[..., 0], xy[..., 1]
    return x**2 - y**2 + 0.1 * y**4  # saddle at 0, minima at y = ±√5


def _sharp_flat(xy, kappa):
    x, y = xy[..., 0], xy[..., 1]
    sharp = 1.2 * torch.exp(-((x + 1.5) ** 2 + y**2) / (2 * 0.15**2))
    flat = 1.0 * torch.exp(-((x - 1.5) ** 2 + y**2) / (2 * 0.9**2))
    return 1.3 - sharp - flat + 0.02 * (x**2 + y**2)


def _multiwell(xy, kappa):
    x, y = xy[..., 0], xy[..., 1]
    return torch.sin(2 * x) * torch.cos(2 * y) + 0.1 * (x**2 + y**2) + 1.2


FUNCTIONS: dict[str, Function2D] = {
    "ill-conditioned quadratic": Function2D(
        "ill-conditioned quadratic", _quadratic, (-5, 5, -2.5, 2.5), (-4.5, 1.5), ((0, 0),)
    ),
    "Rosenbrock": Function2D("Rosenbrock", _rosenbrock, (-2, 2, -1, 3), (-1.5, 2.5), ((1, 1),)),
    "Himmelblau": Function2D(
        "Himmelblau",
        _himmelblau,
        (-5, 5, -5, 5),
        (0.0, -0.5),
        ((3, 2), (-2.805118, 3.131312), (-3.779310, -3.283186), (3.584428, -1.848126)),
    ),
    "saddle": Function2D("saddle", _saddle, (-2, 2, -3, 3), (-1.5, 0.01), (), log=False),
    "sharp vs flat minima": Function2D(
        "sharp vs flat minima",
        _sharp_flat,
        (-3, 3.5, -2.5, 2.5),
        (0.2, 1.6),
        ((-1.5, 0), (1.5, 0)),
        log=False,
    ),
    "multi-well": Function2D("multi-well", _multiwell, (-4, 4, -4, 4), (2.5, 2.9), (), log=False),
}


def _opt(name: str, params, lr: float, momentum: float):
    o = torch.optim
    if name in ("SGD", "SAM"):
        return o.SGD(params, lr=lr)
    if name == "momentum":
        return o.SGD(params, lr=lr, momentum=momentum)
    if name == "Nesterov":
        return o.SGD(params, lr=lr, momentum=momentum, nesterov=momentum > 0)
    if name == "Adam":
        return o.Adam(params, lr=lr, betas=(momentum, 0.999))
    if name == "AdamW":
        return o.AdamW(params, lr=lr, betas=(momentum, 0.999), weight_decay=0.01)
    if name == "RMSprop":
        return o.RMSprop(params, lr=lr, momentum=0.0)
    if name == "Adagrad":
        return o.Adagrad(params, lr=lr)
    raise LossvizError(f"unknown optimizer {name!r}; choose from {OPTIMIZERS}")


OPTIMIZERS = ("SGD", "momentum", "Nesterov", "Adam", "AdamW", "RMSprop", "Adagrad", "SAM")


GAP_FLOOR = 1e-12  # loss − min is drawn on a log axis; exact convergence sits here


def sam_step(p: torch.Tensor, loss_fn, opt, rho: float) -> float:
    """One sharpness-aware minimization (SAM) step on the tensor ``p``, in place.

    With ``g = ∇L(p)`` and ``ε = ρ·g / (‖g‖ + 1e-12)``, the gradient ``∇L(p + ε)`` is
    taken at the perturbed point and applied at ``p`` by ``opt`` (for plain SGD:
    ``p ← p − lr·∇L(p + ε)``). Foret, Kleiner, Mobahi, Neyshabur 2021,
    "Sharpness-Aware Minimization for Efficiently Improving Generalization".

    Args:
        p: the parameter tensor (``requires_grad=True``; the one ``opt`` updates).
        loss_fn: ``loss_fn(p) -> scalar tensor``, differentiable in ``p``.
        opt: a ``torch.optim`` optimizer over ``[p]``.
        rho: the radius ρ of the perturbation (``rho = 0``: an ordinary step).

    Returns:
        The loss at ``p`` before the step, as a float.

    Raises:
        RuntimeError: from autograd, when ``loss_fn(p)`` is not a scalar that depends on
            ``p`` (or ``p`` does not require grad).

    On ``L(p) = ½‖p‖²`` from ``p = (3, 4)`` with ``ρ = 0.5`` (``ε = (0.3, 0.4)``) and
    SGD at ``lr = 0.1``: ``p ← p − 0.1·(p + ε) = (2.67, 3.56)``.

    >>> p = torch.tensor([3.0, 4.0], dtype=torch.float64, requires_grad=True)
    >>> opt = torch.optim.SGD([p], lr=0.1)
    >>> sam_step(p, lambda q: 0.5 * (q**2).sum(), opt, rho=0.5)
    12.5
    >>> [round(v, 10) for v in p.tolist()]
    [2.67, 3.56]
    """
    opt.zero_grad()
    loss = loss_fn(p)
    loss.backward()
    g = p.grad.detach().clone()
    eps = rho * g / (g.norm() + 1e-12)
    with torch.no_grad():
        p.add_(eps)
    opt.zero_grad()
    loss_fn(p).backward()
    with torch.no_grad():
        p.sub_(eps)
    opt.step()
    return float(loss.detach())


def run(
    fn: Function2D,
    optimizer: str,
    *,
    lr: float,
    steps: int,
    momentum: float = 0.9,
    rho: float = 0.05,
    kappa: float = 10.0,
    start=None,
) -> tuple[np.ndarray, np.ndarray]:
    """Run ``optimizer`` on the 2-D function ``fn`` for ``steps`` steps (in float64).

    ``loss[t] = fn(trajectory[t])``. A run stops early when the iterate becomes
    non-finite or leaves ``max(|x|, |y|) <= 1e6`` (diverges): the point that left is not
    recorded and the rest of both arrays stays NaN. The optimizers are ``torch.optim``'s:
    ``"SGD"``, ``"momentum"`` (SGD with ``momentum``), ``"Nesterov"``, ``"Adam"`` and
    ``"AdamW"`` (``betas=(momentum, 0.999)``, AdamW with ``weight_decay=0.01``),
    ``"RMSprop"``, ``"Adagrad"`` (``momentum`` unused) and ``"SAM"`` (:func:`sam_step`
    around plain SGD).

    Args:
        fn: one of :data:`FUNCTIONS`' values.
        optimizer: one of :data:`OPTIMIZERS`.
        lr: the learning rate (> 0).
        steps: the number of steps (>= 1).
        momentum: SGD's momentum, Adam's β₁ (in ``[0, 1)``).
        rho: SAM's radius ρ (>= 0).
        kappa: the condition number of the ill-conditioned quadratic
            ``f = (x² + κ·y²) / (2√κ)`` (> 0; other functions ignore it).
        start: the start point ``(x, y)`` (None: ``fn.start``).

    Returns:
        ``(trajectory, loss)``: arrays of shapes ``(steps + 1, 2)`` and ``(steps + 1,)``.

    Raises:
        ArgumentTypeError: ``fn`` is not a :class:`Function2D`; ``lr``, ``momentum``,
            ``rho`` or ``kappa`` not a number; ``steps`` not an integer.
        LossvizError: an unknown ``optimizer``; a number out of its range (named).

    Gradient descent on ``½(x² + y²)`` (κ = 1) halves the point at ``lr = 0.5``:

    >>> traj, loss = run(FUNCTIONS["ill-conditioned quadratic"], "SGD", lr=0.5, steps=2,
    ...                  kappa=1.0, start=(4.0, 2.0))
    >>> traj.tolist(), loss.tolist()
    ([[4.0, 2.0], [2.0, 1.0], [1.0, 0.5]], [10.0, 2.5, 0.625])
    """
    if not isinstance(fn, Function2D):
        raise ArgumentTypeError(
            f"fn must be one of lossviz.teach.FUNCTIONS' values, got {type(fn).__name__}"
        )
    validate.choice(optimizer, "optimizer", OPTIMIZERS)
    lr = validate.number(lr, "lr", low=0, low_open=True)
    steps = validate.integer(steps, "steps")
    momentum = validate.number(momentum, "momentum", low=0, high=1, high_open=True)
    rho = validate.number(rho, "rho", low=0)
    kappa = validate.number(kappa, "kappa", low=0, low_open=True)
    p = torch.tensor(
        start if start is not None else fn.start, dtype=torch.float64, requires_grad=True
    )
    opt = _opt(optimizer, [p], lr, momentum)
    traj = np.full((steps + 1, 2), np.nan)
    loss = np.full(steps + 1, np.nan)

    def f(q):
        return fn(q, kappa)

    for t in range(steps + 1):
        traj[t] = p.detach().numpy()
        if t == steps:
            with torch.no_grad():
                loss[t] = float(f(p))
            break
        if optimizer == "SAM":
            loss[t] = sam_step(p, f, opt, rho)
        else:
            opt.zero_grad()
            v = f(p)
            v.backward()
            loss[t] = float(v.detach())
            opt.step()
        if not torch.isfinite(p).all() or p.detach().abs().max() > 1e6:
            break
    return traj, loss


def newton_schulz(G: torch.Tensor, steps: int = 5) -> torch.Tensor:
    """Approximately orthogonalize ``G`` (``U Vᵀ`` of its SVD ``G = U S Vᵀ``).

    The quintic Newton–Schulz iteration of Muon (Jordan et al. 2024, "Muon: An optimizer
    for hidden layers in neural networks"): ``X_0 = G / (‖G‖_F + 1e-7)``, then ``steps``
    times ``X ← a·X + (b·A + c·A²)·X`` with ``A = X Xᵀ`` and ``(a, b, c) = (3.4445,
    −4.7750, 2.0315)`` (on ``Gᵀ`` when ``G`` has more rows than columns). Each singular
    value goes through ``s ← a·s + b·s³ + c·s⁵``; the singular vectors are kept. The
    coefficients trade exactness for speed: the singular values end near 1 (about 0.7 to
    1.2 after 5 steps for a well-conditioned ``G``), not at 1.

    Args:
        G: a 2-D tensor.
        steps: the number of iterations.

    Returns:
        A tensor of ``G``'s shape.

    Raises:
        ArgumentTypeError: ``G`` is not a tensor or ``steps`` not an integer.
        LossvizError: ``G`` is not 2-D or ``steps`` < 1.

    Against the scalar iteration on the singular values of a diagonal matrix:

    >>> def p(s):
    ...     return 3.4445 * s - 4.7750 * s**3 + 2.0315 * s**5
    >>> d = torch.tensor([3.0, 1.0], dtype=torch.float64)
    >>> s = d / (d.norm() + 1e-7)
    >>> for _ in range(5):
    ...     s = p(s)
    >>> torch.allclose(newton_schulz(torch.diag(d)), torch.diag(s))
    True
    """
    if not isinstance(G, torch.Tensor):
        raise ArgumentTypeError(f"G must be a 2-D tensor, got {type(G).__name__}")
    if G.dim() != 2:
        raise LossvizError(f"G must be a 2-D tensor (a matrix), got shape {tuple(G.shape)}")
    steps = validate.integer(steps, "steps")
    a, b, c = 3.4445, -4.7750, 2.0315
    X = G / (G.norm() + 1e-7)
    tr = X.shape[0] > X.shape[1]
    if tr:
        X = X.T
    for _ in range(steps):
        A = X @ X.T
        X = a * X + (b * A + c * A @ A) @ X
    return X.T if tr else X


def matrix_problem(seed: int = 0, m: int = 8, n: int = 6, cond: float = 100.0):
    """A least-squares problem ``min_W mean((W X − Y)²)`` with ill-conditioned inputs.

    ``X = U·diag(s)·R`` with ``U`` a random ``n×n`` orthogonal matrix, ``s`` log-spaced
    from 1 down to ``1/cond`` and ``R`` a Gaussian ``n×64`` matrix (so ``U·diag(s)`` has
    condition number ``cond``, ``X`` about that); ``Y = W_true X`` for a Gaussian
    ``W_true`` (``m×n``), so the minimum is 0. :func:`run_matrix` minimizes the mean
    over all ``m·N`` entries, ``‖W X − Y‖_F² / (m·N)`` with ``N = 64``.

    Args:
        seed: the seed of the random matrices.
        m: rows of ``W`` (outputs).
        n: columns of ``W`` (inputs).
        cond: the condition number of ``U·diag(s)`` (> 0).

    Returns:
        ``(X, Y)``: float64 tensors of shapes ``(n, 64)`` and ``(m, 64)``.

    Raises:
        ValueError: ``cond <= 0`` (from ``math.log10``).

    >>> X, Y = matrix_problem()
    >>> tuple(X.shape), tuple(Y.shape)
    ((6, 64), (8, 64))
    """
    g = torch.Generator().manual_seed(seed)
    U, _ = torch.linalg.qr(torch.randn(n, n, generator=g, dtype=torch.float64))
    s = torch.logspace(0, -math.log10(cond), n, dtype=torch.float64)
    X = U @ torch.diag(s) @ torch.randn(n, 64, generator=g, dtype=torch.float64)
    W_true = torch.randn(m, n, generator=g, dtype=torch.float64)
    return X, W_true @ X


def run_matrix(method: str, lr: float, steps: int, momentum: float = 0.9, seed: int = 0):
    """Minimize :func:`matrix_problem`'s loss with SGD + momentum or Muon.

    From ``W = 0``: ``g = ∇ mean((W X − Y)²)``, ``buf ← momentum·buf + g``, then
    ``W ← W − lr·buf`` (``"SGD"``) or ``W ← W − lr·newton_schulz(buf)`` (``"Muon"``,
    Jordan et al. 2024; no Nesterov momentum and no shape scaling here). A run stops
    early (the rest of the losses NaN) once the loss is not finite or exceeds 1e12.

    Args:
        method: ``"SGD"`` or ``"Muon"``.
        lr: the learning rate (> 0).
        steps: the number of updates (>= 1).
        momentum: the momentum coefficient (in ``[0, 1)``).
        seed: the seed of :func:`matrix_problem` (>= 0).

    Returns:
        ``(losses, singular_values)``: the loss before each update and after the last
        (shape ``(steps + 1,)``), and the singular values of the last update applied
        (the orthogonalized one for Muon).

    Raises:
        ArgumentTypeError: ``lr`` or ``momentum`` not a number; ``steps`` or ``seed`` not
            an integer.
        LossvizError: an unknown ``method``; a number out of its range (named).
    """
    validate.choice(method, "method", ("SGD", "Muon"))
    lr = validate.number(lr, "lr", low=0, low_open=True)
    steps = validate.integer(steps, "steps")
    momentum = validate.number(momentum, "momentum", low=0, high=1, high_open=True)
    validate.seed(seed)
    X, Y = matrix_problem(seed)
    W = torch.zeros(Y.shape[0], X.shape[0], dtype=torch.float64, requires_grad=True)
    buf = torch.zeros_like(W)
    losses = np.full(steps + 1, np.nan)
    upd = torch.zeros_like(W)
    for t in range(steps + 1):
        loss = ((W @ X - Y) ** 2).mean()
        losses[t] = float(loss.detach())
        if t == steps or not math.isfinite(losses[t]) or losses[t] > 1e12:
            break
        (g,) = torch.autograd.grad(loss, W)
        buf = momentum * buf + g
        upd = newton_schulz(buf) if method == "Muon" else buf
        with torch.no_grad():
            W -= lr * upd
    return losses, torch.linalg.svdvals(upd.detach()).numpy()


class Playground(Dashboard):
    """The optimization playground (see :func:`playground`).

    ``.widget`` is the root widget. The optimizer runs happen in a background thread (the
    latest settings win; ``wait()`` joins it).

    Args:
        function: the initial function, a key of :data:`FUNCTIONS`.
        optimizers: the optimizers shown at first (names in :data:`OPTIMIZERS`).
        lr: the initial learning rate (a log slider over ``[1e-4, 10^0.5]``).
        steps: the initial number of steps (a slider over ``[5, 400]``).
        grid: contour grid points per axis (>= 2).

    Raises:
        ImportError: the widget stack is not installed.
        ArgumentTypeError: ``lr`` not a number, ``steps`` or ``grid`` not an integer.
        LossvizError: an unknown ``function`` or optimizer; ``lr`` outside the slider's
            ``[1e-4, 10^0.5]``; ``steps`` outside ``[5, 400]``; ``grid`` < 2.

    Attributes:
        widget: the root widget.
        results: ``optimizer -> (trajectory, loss)`` of the runs drawn (as :func:`run`).
        start: the start point set by a click on the contour (None: the function's).
    """

    def __init__(
        self,
        function: str = "ill-conditioned quadratic",
        optimizers=("SGD", "momentum", "Adam"),
        *,
        lr: float = 0.05,
        steps: int = 100,
        grid: int = 80,
    ):
        require()
        super().__init__()
        import ipywidgets as W
        import plotly.graph_objects as go
        from plotly.subplots import make_subplots

        if function not in FUNCTIONS:
            raise LossvizError(f"unknown function {function!r}; choose from {list(FUNCTIONS)}")
        bad = [o for o in optimizers if o not in OPTIMIZERS]
        if bad:
            raise LossvizError(f"unknown optimizer(s) {bad}; choose from {OPTIMIZERS}")
        self.grid = validate.integer(grid, "grid", low=2)
        lr = validate.number(lr, "lr", low=1e-4, high=10**0.5)
        steps = validate.integer(steps, "steps", low=5, high=400)
        self.start = None
        sl = W.Layout(width="330px")
        self.function = W.Dropdown(
            options=list(FUNCTIONS), value=function, description="function", layout=sl
        )
        self.optimizers = W.SelectMultiple(
            options=OPTIMIZERS, value=tuple(optimizers), description="optimizers", rows=8, layout=sl
        )
        wide = {"description_width": "initial"}
        self.lr = slider("lr", lr, -4, 0.5, 0.05, kind="log", readout_format=".3g", layout=sl)
        self.momentum = slider("momentum / β₁", 0.9, 0.0, 0.99, 0.01, layout=sl, style=wide)
        self.rho = slider("SAM ρ", 0.05, 0.0, 0.5, 0.01, layout=sl)
        self.steps = slider("steps", steps, 5, 400, 5, kind="int", layout=sl)
        self.kappa = slider("κ (quadratic)", 10, 0, 3, 0.1, kind="log", layout=sl, style=wide)
        self.info = W.HTML("")

        fn = FUNCTIONS[function]
        cx, cy, z = self._contour(fn)
        base = go.Figure(
            go.Contour(
                x=cx,
                y=cy,
                z=z,
                ncontours=30,
                colorscale="Viridis",
                showscale=False,
                contours={"coloring": "heatmap"},
                hoverinfo="skip",
            )
        )
        colors = [
            "#e41a1c",
            "#ff7f00",
            "#ffff33",
            "#4daf4a",
            "#f781bf",
            "#a65628",
            "#ffffff",
            "#00ffff",
        ]
        for name, c in zip(OPTIMIZERS, colors):
            base.add_trace(
                go.Scatter(
                    x=[],
                    y=[],
                    mode="lines+markers",
                    name=name,
                    line={"color": c, "width": 2},
                    marker={"size": 3},
                )
            )
        base.add_trace(
            go.Scatter(
                x=[fn.start[0]],
                y=[fn.start[1]],
                mode="markers",
                name="start",
                marker={
                    "symbol": "star",
                    "size": 14,
                    "color": "white",
                    "line": {"color": "black", "width": 1},
                },
            )
        )
        style(
            base,
            560,
            460,
            (40, 10, 40, 40),
            title={"text": function, "font": {"size": 13}},
            legend={"bgcolor": "rgba(255,255,255,0.7)", "x": 0.01, "y": 0.99},
            xaxis={"range": list(fn.box[:2])},
            yaxis={"range": list(fn.box[2:])},
        )
        self.fig = figure_widget(base)
        lossf = go.Figure(
            [
                go.Scatter(
                    x=[],
                    y=[],
                    mode="lines",
                    name=n,
                    line={"color": c if c != "#ffffff" else "#555", "width": 2},
                )
                for n, c in zip(OPTIMIZERS, colors)
            ]
        )
        style(
            lossf,
            460,
            460,
            (50, 10, 40, 40),
            yaxis_type="log",
            title={"text": "loss − min vs step", "font": {"size": 13}},
            xaxis_title="step",
            showlegend=False,
        )
        self.loss_fig = figure_widget(lossf)
        self.fig.data[0].on_click(self._on_click)

        # function and κ redraw the contour first (_new_function), then the runs
        for w in (self.optimizers, self.lr, self.momentum, self.rho, self.steps):
            w.observe(self._update, names="value")
        self.function.observe(self._new_function, names="value")
        self.kappa.observe(self._new_function, names="value")

        # ---- edge of stability ----------------------------------------------------------
        self.eos_lam = np.array([20.0, 5.0, 1.0])
        lam = self.eos_lam[0]
        self.eos_lr = slider(
            "GD lr", round(1.8 / lam, 4), 0.005, 0.15, 0.0025, readout_format=".4f", layout=sl
        )
        eos = make_subplots(
            rows=1,
            cols=2,
            subplot_titles=(
                "GD on a quadratic: loss vs step",
                "|1 − lr·λ_max| (growth factor per step)",
            ),
        )
        eos.add_trace(go.Scatter(x=[], y=[], mode="lines", name="loss"), row=1, col=1)
        lrs = np.linspace(0.005, 0.15, 200)
        eos.add_trace(
            go.Scatter(x=lrs, y=np.abs(1 - lrs * lam), mode="lines", name="|1 − lr·λ|"),
            row=1,
            col=2,
        )
        eos.add_trace(
            go.Scatter(x=[], y=[], mode="markers", marker={"size": 12}, name="current lr"),
            row=1,
            col=2,
        )
        eos.add_vline(
            x=2 / lam,
            line={"dash": "dash", "color": "#d62728"},
            row=1,
            col=2,
            annotation_text="2/λ_max",
            annotation_position="bottom right",
        )
        eos.add_hline(y=1, line={"dash": "dot", "color": "#999"}, row=1, col=2)
        eos.update_yaxes(type="log", row=1, col=1)
        eos.update_xaxes(title_text="step", row=1, col=1)
        eos.update_xaxes(title_text="lr", row=1, col=2)
        style(
            eos,
            1000,
            320,
            (50, 10, 50, 40),
            showlegend=False,
            title={"text": "", "font": {"size": 13}},
        )
        self.eos_fig = figure_widget(eos)
        self.eos_lr.observe(lambda ch: self._update_eos(), names="value")

        # ---- Muon ----------------------------------------------------------------------
        self.muon_lr, self.sgd_lr = (
            slider(f"{m} lr", 0.02, -3, 0, 0.05, kind="log", readout_format=".3g", layout=sl)
            for m in ("Muon", "SGD")
        )
        mu = make_subplots(
            rows=1,
            cols=2,
            subplot_titles=(
                "8×6 least squares (κ=100): loss vs step",
                "singular values of the last update",
            ),
        )
        mu.add_trace(
            go.Scatter(x=[], y=[], mode="lines", name="SGD + momentum", line={"color": "#1f77b4"}),
            row=1,
            col=1,
        )
        mu.add_trace(
            go.Scatter(x=[], y=[], mode="lines", name="Muon", line={"color": "#d62728"}),
            row=1,
            col=1,
        )
        mu.add_trace(
            go.Bar(
                x=[], y=[], name="SGD + momentum", marker={"color": "#1f77b4"}, showlegend=False
            ),
            row=1,
            col=2,
        )
        mu.add_trace(
            go.Bar(x=[], y=[], name="Muon", marker={"color": "#d62728"}, showlegend=False),
            row=1,
            col=2,
        )
        mu.update_yaxes(type="log", row=1, col=1)
        style(mu, 1000, 320, (50, 10, 50, 40))
        self.muon_fig = figure_widget(mu)
        self.muon_lr.observe(lambda ch: self._update_muon(), names="value")
        self.sgd_lr.observe(lambda ch: self._update_muon(), names="value")

        controls = W.HBox(
            [
                W.VBox([self.function, self.optimizers]),
                W.VBox([self.lr, self.momentum, self.rho, self.steps, self.kappa]),
            ]
        )
        tabs = W.Tab(
            children=[
                W.VBox([controls, self.info, W.HBox([self.fig, self.loss_fig])]),
                W.VBox([self.eos_lr, self.eos_fig]),
                W.VBox([W.HBox([self.sgd_lr, self.muon_lr]), self.muon_fig]),
            ]
        )
        for i, t in enumerate(["optimizers", "edge of stability", "Muon"]):
            tabs.set_title(i, t)
        self.widget = W.VBox(
            [
                W.HTML(
                    "<b>lossviz optimization playground</b> — click the "
                    "contour to move the start point"
                ),
                tabs,
            ]
        )
        self.widget.add_class("lossviz-playground")
        self.results: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        self._lock = threading.Lock()
        self._draw_lock = threading.Lock()  # the worker and the contour share self.fig
        self._gen = 0
        self._request = None
        self._worker = None
        settings = self._settings()
        self._draw(settings, self._runs(settings))  # complete before the first display
        self._update_eos()
        self._update_muon()

    def _contour(self, fn):
        x0, x1, y0, y1 = fn.box
        cx, cy = np.linspace(x0, x1, self.grid), np.linspace(y0, y1, self.grid)
        X, Y = np.meshgrid(cx, cy)
        with torch.no_grad():
            z = fn(
                torch.tensor(np.stack([X, Y], -1)),
                self.kappa.value if hasattr(self, "kappa") else 10.0,
            ).numpy()
        if fn.log:
            z = np.log10(z - z.min() + 1e-3)
        return cx, cy, z

    def _new_function(self, change=None):
        fn = FUNCTIONS[self.function.value]
        if change is not None and change["owner"] is self.function:
            self.start = None
        cx, cy, z = self._contour(fn)
        with self._draw_lock, self.fig.batch_update():
            c = self.fig.data[0]
            c.x, c.y, c.z = cx, cy, z
            self.fig.layout.xaxis.range = list(fn.box[:2])
            self.fig.layout.yaxis.range = list(fn.box[2:])
            self.fig.layout.title.text = fn.name
        self._update()

    def _on_click(self, trace, points, state):
        if points.xs:
            self.start = (float(points.xs[0]), float(points.ys[0]))
            self._update()

    def _settings(self) -> dict:
        fn = FUNCTIONS[self.function.value]
        return {
            "fn": fn,
            "start": self.start or fn.start,
            "kappa": self.kappa.value,
            "optimizers": tuple(self.optimizers.value),
            "lr": self.lr.value,
            "steps": self.steps.value,
            "momentum": self.momentum.value,
            "rho": self.rho.value,
        }

    def _update(self, change=None):
        """Queue a recomputation with the current settings.

        One worker thread runs the newest request and drops the ones it was superseded by.
        """
        settings = self._settings()
        with self._lock:
            self._gen += 1
            self._request = (self._gen, settings)
            if self._worker is None:
                self._worker = self._spawn(self._work, name="lossviz-playground")

    def _work(self):
        try:
            while True:
                with self._lock:
                    item, self._request = self._request, None
                    if item is None:
                        self._worker = None
                        return
                gen, settings = item
                results = self._runs(settings, gen)
                if results is not None and gen == self._gen:
                    self._draw(settings, results)
        except BaseException:
            with self._lock:
                self._worker = None
            raise

    def _on_error(self, e: Exception) -> None:
        self.info.value = f"<small style='color:#d62728'>error: {e}</small>"

    def _runs(self, s: dict, gen: int | None = None):
        """Each chosen optimizer's run; ``None`` once a newer request has come in."""
        out = {}
        for name in s["optimizers"]:
            if gen is not None and gen != self._gen:
                return None
            out[name] = run(
                s["fn"],
                name,
                lr=s["lr"],
                steps=s["steps"],
                momentum=s["momentum"],
                rho=s["rho"],
                kappa=s["kappa"],
                start=s["start"],
            )
        return out

    def _draw(self, s: dict, results: dict) -> None:
        fn, start, kappa = s["fn"], s["start"], s["kappa"]
        with torch.no_grad():
            grid_min = 0.0
            if fn.minima:
                grid_min = min(
                    float(fn(torch.tensor(m, dtype=torch.float64), kappa)) for m in fn.minima
                )
        self.results = results
        finals = []
        with self._draw_lock, self.fig.batch_update(), self.loss_fig.batch_update():
            for i, name in enumerate(OPTIMIZERS):
                t = self.fig.data[1 + i]
                lt = self.loss_fig.data[i]
                if name in self.results:
                    traj, loss = self.results[name]
                    ok = np.isfinite(traj).all(1)
                    t.x, t.y = traj[ok, 0], traj[ok, 1]
                    gap = loss - grid_min
                    okl = np.isfinite(gap)
                    lt.x, lt.y = np.arange(len(loss))[okl], np.maximum(gap[okl], GAP_FLOOR)
                    t.visible = lt.visible = True
                    last = loss[np.isfinite(loss)]
                    finals.append(
                        f"{name}: {last[-1]:.4g}"
                        if len(last) and len(last) == len(loss)
                        else f"{name}: diverged"
                    )
                else:
                    t.x, t.y, lt.x, lt.y = [], [], [], []
                    t.visible = lt.visible = False
            mark = self.fig.data[-1]
            mark.x, mark.y = [start[0]], [start[1]]
            # the whole run on the x axis, even where every optimizer stopped early
            self.loss_fig.layout.xaxis.range = [0, s["steps"]]
        self.info.value = "<small>final loss — " + "; ".join(finals) + "</small>"

    def _update_eos(self):
        lam = self.eos_lam
        lr = self.eos_lr.value
        steps = 60
        x = np.ones_like(lam)
        losses = []
        for _ in range(steps):
            losses.append(0.5 * float(np.sum(lam * x * x)))
            x = x - lr * lam * x  # gradient descent on ½ Σ λ_i x_i²
        losses = np.array(losses)
        stable = lr < 2 / lam[0]
        with self.eos_fig.batch_update():
            self.eos_fig.data[0].x = np.arange(steps)
            self.eos_fig.data[0].y = np.maximum(losses, 1e-300)
            self.eos_fig.data[2].x = [lr]
            self.eos_fig.data[2].y = [abs(1 - lr * lam[0])]
            self.eos_fig.data[2].marker.color = "#2ca02c" if stable else "#d62728"
            self.eos_fig.layout.title.text = (
                f"lr = {lr:.4f} {'<' if stable else '≥'} 2/λ_max = {2 / lam[0]:.4f}: "
                f"{'converges' if stable else 'diverges'}"
            )

    def _update_muon(self):
        steps = 150
        ls, ss = run_matrix("SGD", self.sgd_lr.value, steps)
        lm, sm = run_matrix("Muon", self.muon_lr.value, steps)
        with self.muon_fig.batch_update():
            for i, v in ((0, ls), (1, lm)):
                ok = np.isfinite(v)
                self.muon_fig.data[i].x = np.arange(len(v))[ok]
                self.muon_fig.data[i].y = v[ok]
            for i, s in ((2, ss), (3, sm)):
                self.muon_fig.data[i].x = [f"σ{j + 1}" for j in range(len(s))]
                self.muon_fig.data[i].y = s / (s.max() + 1e-300)


def playground(
    function: str = "ill-conditioned quadratic", optimizers=("SGD", "momentum", "Adam"), **kw
) -> Playground:
    """An interactive optimization playground (ipywidgets + plotly).

    2-D test functions (an ill-conditioned quadratic with a
    condition-number slider, Rosenbrock, Himmelblau, a saddle, sharp vs flat minima, a
    multi-well function), ``torch.optim`` optimizers (SGD, momentum, Nesterov, Adam, AdamW,
    RMSprop, Adagrad) and SAM with lr / momentum / ρ sliders; trajectories over the contours
    and loss against step; an edge-of-stability tab (gradient descent on a quadratic
    diverges past ``lr = 2/λ_max``, the threshold drawn); a Muon tab (momentum SGD against
    a Newton–Schulz orthogonalized update on a small least-squares matrix problem).
    Needs ``pip install 'lossviz[widgets]'``; also runs as a Voila page.

    The edge-of-stability tab runs gradient descent on ``½·Σ_i λ_i x_i²``: each
    coordinate is multiplied by ``1 − lr·λ_i`` per step, so it converges iff
    ``lr < 2/λ_max``; in training, ``λ_max`` tends to rise to about ``2/lr`` (Cohen,
    Kaur, Li, Kolter, Talwalkar 2021, "Gradient Descent on Neural Networks Typically
    Occurs at the Edge of Stability"). SAM is :func:`sam_step` (Foret et al. 2021), Muon
    :func:`newton_schulz` (Jordan et al. 2024).

    Args:
        function: the initial function, a key of :data:`FUNCTIONS`.
        optimizers: the optimizers shown at first (names in :data:`OPTIMIZERS`).
        **kw: ``lr`` (initial learning rate), ``steps`` (initial number of steps),
            ``grid`` (contour points per axis), as :class:`Playground` takes them.

    Returns:
        A :class:`Playground` (displays itself in Jupyter / Voila).

    Raises:
        ImportError: the widget stack is not installed.
        LossvizError: an unknown ``function`` or optimizer.
        TypeError: an unknown keyword in ``**kw``.
    """
    return Playground(function, optimizers, **kw)


class StabilityChart(Dashboard):
    """A network's measured eigenvalues on the ``(ηλ, β)`` stability chart.

    See :func:`stability_chart`. Every number drawn comes from :func:`lossviz.stability`
    (a :class:`~lossviz.StabilityResult`): the traces of its ``plot()`` (the region
    ``ρ(M)``, its boundary, the points ``(ηλ_i, β)``) and its ``verdicts``. Moving the
    learning-rate or momentum slider calls :func:`lossviz.stability` on the measured
    result again (no new Hessian products).

    Args:
        source: an :class:`~lossviz.Objective` (its Hessian is measured once) or a
            :class:`~lossviz.StabilityResult`.
        lr: the initial learning rate ``η > 0`` (the slider spans ``η/100 … 100η``).
        momentum: the initial momentum ``β`` in ``[0, 0.99]``.
        **kw: passed to :func:`lossviz.stability` for the measurement (``batch_size``,
            ``k``, ``at``, ``curvature``, ``seed``, ...).

    Raises:
        ImportError: the widget stack is not installed.
        LossvizError: as :func:`lossviz.stability` (``lr <= 0``, ``momentum`` outside
            ``[0, 1)``, ...), or ``momentum`` above the slider's 0.99.
        ArgumentTypeError: as :func:`lossviz.stability`.

    Attributes:
        widget: the root widget.
        measured: the :class:`~lossviz.StabilityResult` measured at construction.
        result: the :class:`~lossviz.StabilityResult` drawn now.
        fig: the chart (a FigureWidget): heatmap, boundary, measured points.
    """

    def __init__(self, source, lr: float, *, momentum: float = 0.0, **kw):
        require()
        super().__init__()
        import ipywidgets as W
        import plotly.graph_objects as go

        from .stability import stability

        self._stability = stability
        self.measured = stability(source, lr, momentum=momentum, **kw)
        if momentum > 0.99:
            raise LossvizError(f"momentum must be at most 0.99 on the chart, got {momentum}")
        lg = math.log10(lr)
        sl = W.Layout(width="360px")
        self.lr = slider(
            "lr η", lr, lg - 2, lg + 2, 0.01, kind="log", readout_format=".3g", layout=sl
        )
        self.momentum = slider("momentum β", momentum, 0.0, 0.99, 0.01, layout=sl)
        self.info = W.HTML("")
        base = go.Figure(self.measured.plot())
        style(base, 760, 460, (60, 10, 50, 50))
        self.fig = figure_widget(base)
        self.lr.observe(lambda ch: self._update(), names="value")
        self.momentum.observe(lambda ch: self._update(), names="value")
        self.widget = W.VBox(
            [
                W.HTML(
                    "<b>stability of gradient descent / heavy ball at this point</b> — "
                    "each dot is ηλ_i for a measured Hessian eigenvalue; stable inside the "
                    "black curve ρ(M) = 1"
                ),
                W.HBox([self.lr, self.momentum]),
                self.info,
                self.fig,
            ]
        )
        self.result = self.measured
        self._update()

    def _update(self) -> None:
        """Re-evaluate with the sliders' ``lr`` / ``β`` (lossviz.stability) and draw it."""
        r = self._stability(self.measured, self.lr.value, momentum=self.momentum.value)
        self.result = r
        new = r.plot()  # the result's own traces: the view computes nothing
        with self.fig.batch_update():
            heat, line, pts = self.fig.data[0], self.fig.data[1], self.fig.data[2]
            heat.x, heat.y, heat.z = new.data[0].x, new.data[0].y, new.data[0].z
            line.x, line.y, line.z = new.data[1].x, new.data[1].y, new.data[1].z
            pts.x, pts.y, pts.customdata = new.data[2].x, new.data[2].y, new.data[2].customdata
            self.fig.layout.title.text = new.layout.title.text
        rows = "".join(
            f"<li>{v['condition']}: <b>{v['verdict']}</b> ({_fmt(v['value'])} vs "
            f"{_fmt(v['bound'])}, margin {_fmt(v['margin'])})</li>"
            for v in r.verdicts
        )
        self.info.value = f"<small><ul>{rows}</ul></small>"


def _fmt(x) -> str:
    """A number as lossviz formats it (``-`` for None)."""
    from .formatting import number

    return "-" if x is None else number(x)


def stability_chart(source, lr: float, *, momentum: float = 0.0, **kw) -> StabilityChart:
    """A real network's Hessian eigenvalues on the ``(ηλ, β)`` stability chart.

    Gradient descent with momentum ``β`` (heavy ball; ``β = 0`` is plain gradient
    descent) is stable along an eigenvector of ``H`` with eigenvalue ``λ`` iff the
    spectral radius of ``[[1 + β − ηλ, −β], [1, 0]]`` is below 1, i.e.
    ``0 < ηλ < 2 + 2β`` (Polyak 1964; the edge of stability of Cohen et al. 2021 is the
    ``β = 0`` end, ``λ_max = 2/η``). The chart shades ``ρ(M)`` over the plane, draws the
    boundary and puts each measured eigenvalue at ``(ηλ_i, β)``; sliders move ``η`` and
    ``β`` and the points and verdicts follow. All numbers come from
    :func:`lossviz.stability`; the chart only draws its result.

    Args:
        source: an :class:`~lossviz.Objective` or a :class:`~lossviz.StabilityResult`.
        lr: the initial learning rate ``η > 0``.
        momentum: the initial momentum ``β`` in ``[0, 0.99]``.
        **kw: passed to :func:`lossviz.stability` (``batch_size``, ``k``, ``at``, ...).

    Returns:
        A :class:`StabilityChart` (displays itself in Jupyter / Voila).

    Raises:
        ImportError: the widget stack is not installed.
        LossvizError: as :func:`lossviz.stability`.
        ArgumentTypeError: as :func:`lossviz.stability`.
    """
    return StabilityChart(source, lr, momentum=momentum, **kw)
