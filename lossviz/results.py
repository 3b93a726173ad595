"""Result types of the curvature kernels, and :class:`Result`, the base of every result.

The curvature results are small keyword-only dataclasses with a readable repr (text and
HTML) and ``.plot()`` returning a plotly figure. :class:`Result` gives every lossviz
result type ``.provenance`` (where it comes from) and ``.save(path)`` (read back with
:func:`lossviz.load`, no pickle).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, fields

import numpy as np

from .errors import LossvizError, warn
from .formatting import html_table, number
from .provenance import Provenance
from .weights import Weights

#: registry name -> result class: the only classes :func:`lossviz.load` builds
REGISTRY: dict[str, type] = {}


class Result:
    """Base of every lossviz result type.

    * ``provenance``: a :class:`~lossviz.provenance.Provenance` (set by the kernel that
      computed it; None for a result built by hand);
    * ``objective``, ``at``, ``at_version``: the live references of the provenance (None
      when there are none, e.g. after :func:`lossviz.load` or unpickling);
    * ``save(path)``: write it to one ``.npz`` file (arrays + JSON, no pickle), read back
      with :func:`lossviz.load`.

    Subclasses defined in lossviz are registered by class name (:data:`REGISTRY`).
    """

    __slots__ = ()

    def __init_subclass__(cls, **kw):
        super().__init_subclass__(**kw)
        if cls.__module__.startswith("lossviz.") and not cls.__name__.startswith("_"):
            if cls.__name__ != "DataResult":
                REGISTRY[cls.__name__] = cls

    @property
    def objective(self):
        """The :class:`~lossviz.Objective` it was computed with (live; None when unknown).

        Assigning one (or None) changes what ``.dashboard()`` recomputes with.
        """
        p = getattr(self, "provenance", None)
        return None if p is None else p.objective

    @objective.setter
    def objective(self, value) -> None:
        if self.provenance is None:
            if value is None:
                return
            self.provenance = Provenance.of(value, kernel=None)
        self.provenance.objective = value

    @property
    def at(self):
        """The point it was computed at (live; None for the model's own weights or unknown)."""
        p = getattr(self, "provenance", None)
        return None if p is None else p.at

    @property
    def at_version(self):
        """An exact record of the point (tells whether the weights changed since)."""
        p = getattr(self, "provenance", None)
        return None if p is None else p.at_version

    def save(self, path) -> None:
        """Write this result to ``path`` (one ``.npz`` file), read back by :func:`lossviz.load`.

        The file holds its arrays and a JSON description, no pickle. The saved facts of
        the provenance are kept, its live references (Objective, point) are not.

        Args:
            path: Where to write it (str or path-like), used as given.

        Raises:
            ArgumentTypeError: ``path`` is not a str / path.
            LossvizError: a field cannot be saved, or the file cannot be written.
        """
        from .store import save

        save(self, path)

    # what store.save writes and store.load gives back (dataclasses: their init fields)
    def _fields(self) -> dict:
        return {f.name: getattr(self, f.name) for f in fields(self) if f.init}

    @classmethod
    def _from_fields(cls, values: dict):
        return cls(**values)


@dataclass(kw_only=True, repr=False, eq=False)
class DataResult(Result):
    """Base of the dataclass results: the ``provenance`` field."""

    provenance: Provenance | None = field(default=None, compare=False)


class ByMetric:
    """One metric's values of a result that holds ``values: name -> array``.

    ``result["accuracy"]`` (a :class:`~lossviz.errors.LossvizError` naming the metrics
    there are, for another name), ``result.loss`` and ``result.<metric>`` for every other
    metric computed (Slice1D, Surface, PathResult, CurveResult).
    """

    __slots__ = ()

    def __getitem__(self, metric: str) -> np.ndarray:
        values = self.values
        if not isinstance(metric, str) or metric not in values:
            raise LossvizError(f"no metric {metric!r}; have {list(values)}")
        return values[metric]

    @property
    def loss(self) -> np.ndarray:
        """The ``"loss"`` values (a :class:`~lossviz.errors.LossvizError` if not computed)."""
        return self["loss"]

    def __getattr__(self, name: str):
        values = self.__dict__.get("values")
        if values is not None and name in values:
            return values[name]
        raise AttributeError(name)


def deprecated_obj(self):
    """``result.obj``: deprecated alias of ``result.objective``."""
    warn(f"{type(self).__name__}.obj is deprecated: use .objective", DeprecationWarning)
    return self.objective


@dataclass(kw_only=True, repr=False)
class EigenResult(DataResult):
    """Extreme eigenpairs of the Hessian (or Gauss-Newton) at a point.

    What :func:`lossviz.hessian_eigs` returns (Lanczos; Wu & Simon 2000).

    Attributes:
        values: the eigenvalues (float64), ordered by ``which``: largest / magnitude
            descending, smallest ascending, both ascending.
        vectors: the unit eigenvectors (Weights shaped like the parameters, or flat
            tensors for a bare operator).
        residuals: ``||Hv - λv|| / |λ|_max`` per pair.
        n_hvp: curvature products used.
        converged: per pair, whether its residual is below the tolerance.
        which: ``"largest"``, ``"smallest"``, ``"magnitude"`` or ``"both"``.
        curvature: ``"hessian"`` or ``"ggn"``.
        n_params: the operator's size.
        seconds: wall time.
        complete: False when interrupted (Ctrl-C): the pairs found so far.
        provenance: where it comes from (:class:`~lossviz.provenance.Provenance`;
            None when built by hand).
    """

    values: np.ndarray
    vectors: list
    residuals: np.ndarray
    n_hvp: int
    converged: np.ndarray
    which: str = "largest"
    curvature: str = "hessian"
    n_params: int = 0
    seconds: float = 0.0
    complete: bool = True

    @property
    def all_converged(self) -> bool:
        """Whether every pair converged."""
        return bool(np.all(self.converged))

    @property
    def labels(self) -> list[str]:
        """Each value's name, numbered in the whole spectrum as in the dashboards.

        ``λ1`` is the largest eigenvalue and ``λP`` the smallest (``P = n_params``): the
        ``"largest"`` values are ``λ1, λ2, …``; the ``"smallest"`` (ascending) are ``λP,
        λ(P−1), …``; ``"both"`` is the smallest ones, then the largest ones (all of the
        spectrum, each by its rank, when they meet); ``"magnitude"`` values are ranked by
        ``|λ|`` instead: ``|λ|1, |λ|2, …``.
        """
        m, P = len(self.values), int(self.n_params)

        def bottom(i):  # the i-th smallest (0: the smallest)
            return f"λ{P - i}" if P > 0 else ("λP" if i == 0 else f"λ(P−{i})")

        if self.which == "largest":
            return [f"λ{i + 1}" for i in range(m)]
        if self.which == "magnitude":
            return [f"|λ|{i + 1}" for i in range(m)]
        if self.which == "smallest" or (self.which == "both" and m == P):
            return [bottom(i) for i in range(m)]
        lo = m // 2  # "both": k of each end, ascending
        return [bottom(i) for i in range(lo)] + [f"λ{m - lo - j}" for j in range(m - lo)]

    def __repr__(self) -> str:
        vals = ", ".join(number(v) for v in self.values)
        state = "converged" if self.all_converged else "NOT converged"
        if not self.complete:
            state += ", INCOMPLETE: interrupted"
        return (
            f"EigenResult({self.which} {len(self.values)} of {self.curvature}, "
            f"{self.n_params:,} params): [{vals}]; max residual "
            f"{self.residuals.max():.1e}, {self.n_hvp} HVPs, {self.seconds:.2f} s, {state}"
        )

    def _repr_html_(self) -> str:
        rows = [
            [lab, number(v), f"{r:.1e}", "yes" if c else "no"]
            for lab, v, r, c in zip(self.labels, self.values, self.residuals, self.converged)
        ]
        cap = (
            f"{self.which} eigenvalues of the {self.curvature} ({self.n_params:,} params, "
            f"{self.n_hvp} HVPs, {self.seconds:.2f} s)"
            + ("" if self.complete else " INCOMPLETE: interrupted")
        )
        return html_table(["eigenvalue", "value", "residual", "converged"], rows, cap)

    def plot(self):
        """The eigenvalues as bars, residuals on hover (a plotly Figure)."""
        import plotly.graph_objects as go

        fig = go.Figure(
            go.Bar(
                x=self.labels,
                y=self.values,
                customdata=self.residuals,
                hovertemplate="%{x} = %{y:.6g}<br>residual %{customdata:.1e}<extra></extra>",
            )
        )
        fig.update_layout(
            title=f"{self.which} eigenvalues of the {self.curvature}",
            yaxis_title="eigenvalue",
            template="plotly_white",
        )
        return fig

    def dashboard(self, **kw):
        """The Hessian spectrum explorer (:func:`lossviz.dash.spectrum`) on these eigenvalues.

        They are shown as markers; the density and the per-layer table are computed when
        the result carries its Objective (``hessian_eigs`` on an Objective).

        Args:
            **kw: Passed on to :func:`lossviz.dash.spectrum`.

        Returns:
            The dashboard widget.
        """
        from lossviz import dash

        return dash.spectrum(self, **kw)


@dataclass(kw_only=True, repr=False)
class TraceResult(DataResult):
    """A trace estimate with its standard error (:func:`lossviz.hessian_trace`).

    Hutchinson 1989 (``tr(H) ≈ mean_z zᵀHz``) or Hutch++ (Meyer et al. 2021); stopping
    rule: ``stderr <= rtol·|value|``. ``value = mean(samples) + exact_part`` and
    ``stderr = std(samples, ddof=1)/√len(samples)``.

    Attributes:
        value: the estimate of ``tr(H)``.
        stderr: its standard error.
        n_hvp: curvature products used.
        samples: the per-probe samples (without ``exact_part``).
        method: ``"hutchinson"`` or ``"hutch++"``.
        curvature: ``"hessian"`` or ``"ggn"``.
        exact_part: the part computed exactly (Hutch++'s low-rank sketch).
        seconds: wall time.
        complete: False when interrupted (Ctrl-C): the probes done so far.
        provenance: where it comes from (:class:`~lossviz.provenance.Provenance`;
            None when built by hand).
    """

    value: float
    stderr: float
    n_hvp: int
    samples: np.ndarray
    method: str = "hutchinson"
    curvature: str = "hessian"
    exact_part: float = 0.0
    seconds: float = 0.0
    complete: bool = True  # False when interrupted (Ctrl-C): the probes done so far

    def __repr__(self) -> str:
        return (
            f"TraceResult(tr = {number(self.value)} ± {self.stderr:.3g} (std. error), "
            f"{self.method}, {self.n_hvp} HVPs, {self.seconds:.2f} s"
            + ("" if self.complete else ", INCOMPLETE: interrupted")
            + ")"
        )

    def _repr_html_(self) -> str:
        return html_table(
            ["trace", "std. error", "method", "HVPs", "samples"],
            [
                [
                    number(self.value),
                    f"{self.stderr:.3g}",
                    self.method,
                    self.n_hvp,
                    len(self.samples),
                ]
            ],
            f"trace of the {self.curvature}"
            + ("" if self.complete else " INCOMPLETE: interrupted"),
        )

    def plot(self):
        """The running estimate with a ±2 standard error band over the probes (plotly)."""
        import plotly.graph_objects as go

        s = np.asarray(self.samples, dtype=np.float64).reshape(-1) + self.exact_part
        n = np.arange(1, len(s) + 1)
        mean = np.cumsum(s) / n
        sq = np.cumsum(s * s) / n
        se = np.sqrt(np.maximum(sq - mean**2, 0) * n / np.maximum(n - 1, 1) / n)
        fig = go.Figure(
            [
                go.Scatter(x=n, y=mean + 2 * se, line=dict(width=0), showlegend=False),
                go.Scatter(
                    x=n, y=mean - 2 * se, fill="tonexty", line=dict(width=0), name="±2 std. errors"
                ),
                go.Scatter(x=n, y=mean, name="running estimate"),
            ]
        )
        fig.update_layout(
            title=f"trace estimate ({self.method}): {number(self.value)} ± {self.stderr:.3g}",
            xaxis_title="probes",
            yaxis_title="trace",
            template="plotly_white",
        )
        return fig


@dataclass(kw_only=True, repr=False)
class SpectralDensity(DataResult):
    """Stochastic Lanczos quadrature (:func:`lossviz.hessian_density`).

    Per-probe ``nodes`` (Ritz values) and ``weights`` (Ghorbani, Krishnan, Xiao 2019, "An
    Investigation into Neural Net Optimization via Hessian Eigenvalue Density"):
    ``∫ f dμ ≈ mean_probes Σ_i w_i f(λ_i)`` for the spectral measure
    ``μ = (1/P) Σ_j δ(λ_j)``.

    Attributes:
        nodes: ``(probes, steps)`` Ritz values.
        weights: ``(probes, steps)`` quadrature weights (each row sums to 1).
        n_hvp: curvature products used.
        n_params: the operator's size ``P``.
        curvature: ``"hessian"`` or ``"ggn"``.
        seconds: wall time.
        complete: False when interrupted: fewer probes or steps than asked.
        provenance: where it comes from (:class:`~lossviz.provenance.Provenance`;
            None when built by hand).
    """

    nodes: np.ndarray
    weights: np.ndarray
    n_hvp: int
    n_params: int
    curvature: str = "hessian"
    seconds: float = 0.0
    complete: bool = True  # False when interrupted: fewer probes or steps than asked

    def moment(self, p: int) -> float:
        """``(1/P) tr(H^p)`` estimated by the quadrature, ``mean_probes Σ_i w_i λ_i^p``.

        Args:
            p: The power (exact per probe for ``p <= 2·steps - 1``).

        Returns:
            The estimate.
        """
        return float(np.mean(np.sum(self.weights * self.nodes**p, axis=1)))

    def default_sigma(self) -> float:
        """The default smoothing width: 1/200 of the nodes' span (at least 1e-12/200)."""
        span = float(self.nodes.max() - self.nodes.min())
        return max(span, 1e-12) / 200

    def smooth(self, grid=None, sigma: float | None = None) -> tuple[np.ndarray, np.ndarray]:
        """The smoothed density ``φ(t) = mean_probes Σ_i w_i N(t; λ_i, σ²)``.

        It integrates to 1.

        Args:
            grid: The points ``x`` (default: 1000 points covering the nodes ± 4σ).
            sigma: The Gaussian width σ (default :meth:`default_sigma`).

        Returns:
            ``(x, φ(x))`` as float64 arrays.
        """
        sigma = float(sigma or self.default_sigma())
        if grid is None:
            lo, hi = self.nodes.min() - 4 * sigma, self.nodes.max() + 4 * sigma
            grid = np.linspace(lo, hi, 1000)
        x = np.asarray(grid, dtype=np.float64)
        lam = self.nodes.reshape(-1)
        w = self.weights.reshape(-1) / self.nodes.shape[0]
        dens = np.zeros_like(x)
        for i in range(0, len(lam), 512):  # bounded memory
            d = (x[:, None] - lam[None, i : i + 512]) / sigma
            dens += (np.exp(-0.5 * d * d) * w[None, i : i + 512]).sum(1)
        return x, dens / (sigma * np.sqrt(2 * np.pi))

    def outliers(
        self, mass: float = 0.9, gap: float = 0.15, agree: float = 1e-3, floor: float = 0.05
    ) -> np.ndarray:
        """Eigenvalues separated from the bulk by a gap, sorted descending by magnitude.

        Sagun et al. (2017) and Papyan (2019) describe the Hessian of a classifier as a bulk
        near zero and a few outliers (about ``C - 1`` for ``C`` classes with cross-entropy).
        An isolated eigenvalue is resolved by Lanczos from any start vector, the bulk is not,
        so outliers are looked for among the Ritz values every probe agrees on, and the
        boundary is put at the largest *relative gap*. Exactly, for each end of the spectrum
        (the top, and the bottom by the same rule on ``-λ``):

        1. The bulk is the central ``mass`` of the spectral measure: ``c`` is the weighted
           median of the pooled nodes and ``e`` the weighted ``(1 + mass) / 2`` quantile
           (the ``(1 - mass) / 2`` quantile at the bottom); distances ``d = λ - c``.
        2. ``m_i`` is the median over probes of each probe's i-th largest distance.
           Candidates are the leading run ``m_1 >= ... >= m_K`` with ``m_i > e - c`` that
           every probe found: the probes' i-th values spread by at most ``agree · m_i``.
        3. With ``n_i = m_{i+1}`` for ``i < K`` and ``n_K`` the largest over probes of the
           (K+1)-th distance (the best Ritz estimate of the next eigenvalue), the relative
           gap is ``ρ_i = (m_i - n_i) / max(n_i, e - c, floor · r)``, where
           ``r = max |λ - c|`` over all nodes is the spectral radius about the centre:
           a gap among values all tiny next to the largest eigenvalue is no separation.
        4. With ``k = argmax ρ_i``, the outliers are ``c + m_1, ..., c + m_k`` if
           ``ρ_k >= gap``; none otherwise.

        The count is the number of eigenvalues above the largest relative gap, so a spectrum
        whose large eigenvalues decay smoothly into the bulk (no clear gap) may give fewer
        than the number of classes, and a bulk without outliers gives none. An outlier of
        multiplicity ``m`` is listed once: a Krylov method sees one direction per distinct
        eigenvalue (use :func:`lossviz.hessian_eigs` for multiplicities).

        Args:
            mass: The share of the spectral measure that defines the bulk (its centre and
                edges).
            gap: The smallest relative gap ``ρ`` that counts as a separation.
            agree: The largest relative spread, over probes, of a Ritz value counted as
                converged.
            floor: The smallest denominator of ``ρ``, as a fraction of the spectral radius.

        Returns:
            The outliers (each the median over probes of its Ritz value), largest
            magnitude first; empty when none, and (with a warning) for fewer than 2
            probes, where agreement cannot be checked.

        Example:
            >>> import torch, lossviz as lv
            >>> lam = torch.cat([torch.linspace(-1, 1, 300), torch.tensor([8.0, 5.0])])
            >>> A = torch.diag(lam.double())
            >>> d = lv.hessian_density(A, n_probes=3, steps=40, progress=False)
            >>> [round(float(v), 6) for v in d.outliers()]
            [8.0, 5.0]
        """
        if self.nodes.shape[0] < 2:
            warn(
                "outliers() needs at least 2 probes (hessian_density(n_probes=2 or more)): "
                "with one, a converged eigenvalue cannot be told from a Ritz value of the "
                "bulk; no outliers are reported"
            )
            return np.array([])
        lam = self.nodes.reshape(-1).astype(np.float64)
        w = self.weights.reshape(-1).astype(np.float64)
        order = np.argsort(lam, kind="stable")
        cw = np.cumsum(w[order]) / w.sum()

        def quantile(p: float) -> float:
            return float(lam[order][min(int(np.searchsorted(cw, p)), len(lam) - 1)])

        center = quantile(0.5)
        least = max(floor * float(np.max(np.abs(lam - center))), 1e-300)
        out: list[float] = []
        for sign, edge in ((1.0, quantile((1 + mass) / 2)), (-1.0, quantile((1 - mass) / 2))):
            dist = np.sort(sign * (self.nodes - center), axis=1)[:, ::-1]
            med = np.median(dist, axis=0)
            e = max(sign * (edge - center), 0.0)
            k_run = 0
            while (
                k_run < dist.shape[1] - 1
                and med[k_run] > e
                and np.ptp(dist[:, k_run]) <= agree * med[k_run]
            ):
                k_run += 1
            if k_run == 0:
                continue
            nxt = np.concatenate([med[1:k_run], [dist[:, k_run].max()]])
            rho = (med[:k_run] - nxt) / np.maximum(np.maximum(nxt, e), least)
            k = int(np.argmax(rho))
            if rho[k] >= gap:
                out.extend(float(center + sign * v) for v in med[: k + 1])
        return np.array(sorted(out, key=lambda v: -abs(v)))

    def _outlier_count(self) -> str:
        """``"N outlier(s)"`` for the repr; ``n/a`` with fewer than 2 probes (no warning)."""
        if self.nodes.shape[0] < 2:
            return "outliers n/a (needs 2 probes)"
        return f"{len(self.outliers())} outlier(s)"

    def __repr__(self) -> str:
        return (
            f"SpectralDensity({self.curvature}, {self.nodes.shape[0]} probes × "
            f"{self.nodes.shape[1]} steps, {self.n_params:,} params): support ≈ "
            f"[{number(self.nodes.min())}, {number(self.nodes.max())}], "
            f"{self._outlier_count()}, {self.n_hvp} HVPs, {self.seconds:.2f} s"
            + ("" if self.complete else ", INCOMPLETE: interrupted")
        )

    def _repr_html_(self) -> str:
        if self.nodes.shape[0] < 2:
            outs = "n/a (needs 2 probes)"
        else:
            outs = ", ".join(number(v) for v in self.outliers()[:12])
        return html_table(
            ["probes", "steps", "λ min", "λ max", "outliers", "HVPs"],
            [
                [
                    self.nodes.shape[0],
                    self.nodes.shape[1],
                    number(self.nodes.min()),
                    number(self.nodes.max()),
                    outs or "none",
                    self.n_hvp,
                ]
            ],
            f"spectral density of the {self.curvature} (SLQ)"
            + ("" if self.complete else " INCOMPLETE: interrupted"),
        )

    def plot(self, log: bool = True, sigma: float | None = None):
        """The smoothed density, outliers marked with dotted lines (a plotly Figure).

        Args:
            log: A logarithmic density axis (values below 1e-7 of the peak are clipped).
            sigma: The smoothing width (default :meth:`default_sigma`).

        Returns:
            The figure.
        """
        import plotly.graph_objects as go

        x, d = self.smooth(sigma=sigma)
        if log:  # the Gaussian tails below 1e-7 of the peak are left out of view
            d = np.maximum(d, 1e-7 * max(d.max(), 1e-300))
        fig = go.Figure(go.Scatter(x=x, y=d, mode="lines", name="density"))
        for v in self.outliers():
            fig.add_vline(x=v, line=dict(dash="dot", width=1, color="firebrick"))
        fig.update_layout(
            title=f"spectral density of the {self.curvature} (SLQ, {self.nodes.shape[0]} probes)",
            xaxis_title="eigenvalue",
            yaxis_title="density",
            yaxis_type="log" if log else "linear",
            template="plotly_white",
        )
        return fig

    def dashboard(self, **kw):
        """The Hessian spectrum explorer (:func:`lossviz.dash.spectrum`) on this density.

        Smoothing slider, log/linear axis, outliers; the top-k markers and the per-layer
        table are computed when the result carries its Objective (``hessian_density`` on
        an Objective).

        Args:
            **kw: Passed on to :func:`lossviz.dash.spectrum`.

        Returns:
            The dashboard widget.
        """
        from lossviz import dash

        return dash.spectrum(self, **kw)


@dataclass(kw_only=True, repr=False)
class BlockResults(DataResult, Mapping):
    """One result per block of parameters (e.g. per layer), with a combined table.

    From :func:`lossviz.hessian_blocks`, or ``groups=`` in :func:`lossviz.hessian_eigs` /
    :func:`lossviz.hessian_trace`.

    Attributes:
        results: block name -> EigenResult, TraceResult or a row (dict column -> value).
        kind: what each block holds (e.g. ``"largest eigenvalues"``, ``"trace"``).
        complete: False when interrupted (Ctrl-C): fewer blocks, or a partial one.
        provenance: where it comes from (:class:`~lossviz.provenance.Provenance`;
            None when built by hand).
    """

    results: dict = field(default_factory=dict)
    kind: str = "eigs"
    complete: bool = True  # False when interrupted (Ctrl-C): fewer blocks, or a partial one

    def __getitem__(self, k):
        return self.results[k]

    def __iter__(self):
        return iter(self.results)

    def __len__(self):
        return len(self.results)

    @property
    def table(self) -> list[dict]:
        """One dict per block: ``"block"`` and its numbers (eigenvalues, trace, ...)."""
        rows = []
        for name, r in self.results.items():
            if isinstance(r, EigenResult):
                row = {"block": name, "params": r.n_params}
                row.update({f"λ{i + 1}": float(v) for i, v in enumerate(r.values)})
                row["max residual"] = float(r.residuals.max())
            elif isinstance(r, TraceResult):
                row = {"block": name, "trace": r.value, "std. error": r.stderr}
            else:
                row = {"block": name, **dict(r)}
            rows.append(row)
        return rows

    def to_pandas(self):
        """:attr:`table` as a ``pandas.DataFrame`` indexed by block."""
        import pandas as pd

        return pd.DataFrame(self.table).set_index("block")

    def _cols(self):
        cols = []
        for row in self.table:
            cols += [c for c in row if c not in cols]
        return cols

    def __repr__(self) -> str:
        cols = self._cols()
        rows = [
            [number(r[c]) if isinstance(r.get(c), float) else str(r.get(c, "")) for c in cols]
            for r in self.table
        ]
        widths = [max(len(c), *(len(r[i]) for r in rows)) for i, c in enumerate(cols)]
        line = lambda cells: "  ".join(
            s.rjust(w) if i else s.ljust(w)  # noqa: E731
            for i, (s, w) in enumerate(zip(cells, widths))
        )
        state = "" if self.complete else ", INCOMPLETE: interrupted"
        return "\n".join(
            [f"BlockResults({self.kind}, {len(self)} blocks{state})", line(cols)]
            + [line(r) for r in rows]
        )

    def _repr_html_(self) -> str:
        cols = self._cols()
        rows = [
            [number(r[c]) if isinstance(r.get(c), float) else r.get(c, "") for c in cols]
            for r in self.table
        ]
        state = "" if self.complete else " INCOMPLETE: interrupted"
        return html_table(cols, rows, f"per-block {self.kind}{state}")

    def plot(self, column: str | None = None):
        """One bar per block (error bars of 2 standard errors for the trace).

        Args:
            column: The column to show (default: the first numeric one, e.g. ``λ1``).

        Returns:
            A plotly Figure.
        """
        import plotly.graph_objects as go

        rows = self.table
        cols = [
            c for c in self._cols() if c not in ("block", "params", "std. error", "max residual")
        ]
        column = column or cols[0]
        err = None
        if column == "trace":
            err = dict(type="data", array=[2 * r.get("std. error", 0) for r in rows])
        fig = go.Figure(
            go.Bar(x=[r["block"] for r in rows], y=[r.get(column) for r in rows], error_y=err)
        )
        fig.update_layout(title=f"{column} per block", yaxis_title=column, template="plotly_white")
        return fig


class DiagonalResult(Weights, Result):
    """A Hutchinson estimate of ``diag(H) ≈ mean_z z ⊙ Hz`` (:func:`lossviz.hessian_diagonal`).

    :class:`~lossviz.Weights` shaped like the parameters (usable wherever Weights are),
    with ``stderr`` (Weights: the standard error of each entry, NaN with one probe),
    ``n_probes`` (probes done), ``requested`` (probes asked for), ``complete`` (False
    when interrupted: fewer probes than asked) and ``provenance``. Arithmetic on it gives
    plain Weights.

    Args:
        tensors: the estimate, name -> tensor.
        stderr: Weights: the standard error of each entry.
        n_probes: probes done.
        requested: probes asked for (default ``n_probes``).
        complete: False when interrupted.
        curvature: ``"hessian"`` or ``"ggn"``.
        seconds: wall time.
        provenance: where it comes from (None when built by hand).

    Raises:
        TypeError: an entry of ``tensors`` is not a tensor.
    """

    __slots__ = (
        "stderr",
        "n_probes",
        "requested",
        "complete",
        "curvature",
        "seconds",
        "provenance",
    )

    def __init__(
        self,
        tensors,
        *,
        stderr,
        n_probes: int,
        requested: int | None = None,
        complete: bool = True,
        curvature: str = "hessian",
        seconds: float = 0.0,
        provenance: Provenance | None = None,
    ):
        super().__init__(tensors)
        self.stderr = stderr
        self.n_probes = n_probes
        self.requested = n_probes if requested is None else requested
        self.complete = complete
        self.curvature = curvature
        self.seconds = seconds
        self.provenance = provenance

    def _fields(self) -> dict:
        return {
            "tensors": Weights(self._t),
            "stderr": self.stderr,
            "n_probes": self.n_probes,
            "requested": self.requested,
            "complete": self.complete,
            "curvature": self.curvature,
            "seconds": self.seconds,
            "provenance": self.provenance,
        }

    def __reduce__(self):
        return (_diagonal_result, (), self._fields())

    def __setstate__(self, state: dict) -> None:
        DiagonalResult.__init__(self, **state)

    def __repr__(self) -> str:
        state = (
            ""
            if self.complete
            else f", INCOMPLETE: interrupted after {self.n_probes} of {self.requested} probes"
        )
        return (
            f"DiagonalResult(diag of the {self.curvature}, {len(self)} tensors, "
            f"{self.numel:,} numbers, {self.n_probes} probes, {self.seconds:.2f} s{state})"
        )


def _diagonal_result(*old):
    """An empty DiagonalResult that ``__setstate__`` fills (unpickling).

    With arguments, one pickled by an older lossviz (tensors, stderr, n_probes, requested,
    complete, curvature, seconds).
    """
    if old:
        t, stderr, n_probes, requested, complete, curvature, seconds = old
        return DiagonalResult(
            t,
            stderr=stderr,
            n_probes=n_probes,
            requested=requested,
            complete=complete,
            curvature=curvature,
            seconds=seconds,
        )
    return DiagonalResult.__new__(DiagonalResult)
