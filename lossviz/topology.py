"""The topology of a loss landscape on a grid: basins, saddles, the merge tree and SMAD.

Sublevel-set persistence in dimension 0 (Edelsbrunner, Letscher, Zomorodian 2002,
"Topological Persistence and Simplification"): for a grid of values ``f`` (a 1-D slice,
a 2-D :class:`~lossviz.slices.Surface`, an N-D :class:`~lossviz.ndgrid.HypercubeResult`
or any array), follow the sublevel sets ``{x : f(x) <= t}`` as ``t`` grows. Two grid
points are neighbours when they differ by one step along one axis (``2·d`` neighbours
in ``d`` dimensions; the vertex construction of a cubical complex). A connected
component is *born* at a local minimum ``m`` (value ``f(m)``) and *dies* at the level
``s`` where it first touches a component born lower (the elder rule): ``s`` is the value
of the **saddle** that merges the two **basins**, ``s - f(m)`` the basin's **depth**
(its persistence). The deepest basin never dies (its saddle value is ``inf``).

The pairs ``(f(m), s)`` and their grid points come from GUDHI's cubical complexes
(``gudhi.CubicalComplex(vertices=f)``, ``persistence()``,
``vertices_of_persistence_pairs()``; The GUDHI Project, https://gudhi.inria.fr), a
maintained library: ``pip install gudhi`` (``lossviz[topology]``). GUDHI gives the pairs,
not which basin a dying basin merges into, so the **merge tree** is recovered by
labelling the connected components of ``{f <= s}`` (``scipy.ndimage.label``, the same
neighbours) at every saddle value ``s``: the components holding two or more basins merge
there. Its leaves are the minima, its inner nodes the merges (at the saddle's value and
grid point), its root the last merge; the number of merges at every level is checked
against GUDHI's pairs.

**SMAD**, the saddle–minimum average distance of Landscaper (Chen, Hadler, Xie, et al.
2026, "Landscaper: Understanding Loss Landscapes Through Multi-Dimensional Topological
Analysis", arXiv 2602.07135; ``LossLandscape.smad`` of their package): for every leaf
``ℓ`` of the merge tree (a minimum) with parent merge ``p``, the gap
``g_ℓ = f(p) - f(ℓ)``;

    SMAD = (1/K) Σ_ℓ g_ℓ              (K leaves with a parent; 0 for a single basin)
    SMAD_weighted = (1/K) Σ_ℓ g_ℓ·v_ℓ

with ``v_ℓ`` the basin's volume: the fraction of grid points in the component of
``{f < f(p)}`` holding ``ℓ`` (the basin just before its first merge; Landscaper uses the
points whose steepest descent ends at ``ℓ``, so weighted values differ slightly on the
same grid). ``normalize=True`` divides each gap by ``max f - min f``.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from . import validate
from .errors import ArgumentTypeError, LossvizError
from .formatting import number, short
from .provenance import Provenance
from .results import DataResult

__all__ = ["TopologyResult", "landscape_topology"]

#: bytes GUDHI uses per cell of a vertex-built cubical complex (measured: ~75 B on a
#: 119³-cell complex; rounded up)
BYTES_PER_CELL = 100


def _gudhi():
    try:
        import gudhi
    except ImportError:
        raise ImportError(
            "landscape topology needs GUDHI: pip install 'lossviz[topology]' (or pip install gudhi)"
        ) from None
    return gudhi


def _available_memory() -> float:
    try:
        return float(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
    except (ValueError, OSError, AttributeError):  # pragma: no cover
        return float(4 << 30)


def _gib(b: float) -> str:
    return f"{b / 2**30:.3g} GiB" if b >= 2**28 else f"{b / 2**20:.3g} MiB"


# the input --------------------------------------------------------------------------------
def _grid_of(source, metric):
    """``(f, axes, names, complete, evaluated, provenance source)`` of what was given."""
    from .slices import Slice1D, Surface

    kind = type(source).__name__
    if isinstance(source, Surface):
        v = np.asarray(source[metric], dtype=np.float64)
        ev = None if source.evaluated is None else np.asarray(source.evaluated).T
        return v.T, [source.x, source.y], ["a", "b"], source.complete, ev, source
    if isinstance(source, Slice1D):
        v = np.asarray(source[metric], dtype=np.float64)
        return v, [source.t], ["t"], source.complete, source.evaluated, source
    if kind == "HypercubeResult":
        v = source[metric]
        return (
            v,
            list(source.axes),
            [f"c{i}" for i in range(v.ndim)],
            source.complete,
            (source.evaluated),
            source,
        )
    if isinstance(source, (str, bytes, dict)) or source is None:
        raise ArgumentTypeError(
            "values must be a Surface, Slice1D, HypercubeResult or an array of loss values, "
            f"got {type(source).__name__}"
        )
    try:
        v = np.asarray(source)
    except (TypeError, ValueError) as e:
        raise ArgumentTypeError(f"values: not an array of numbers ({e})") from None
    if v.dtype == object or v.dtype.kind not in "biuf":
        raise ArgumentTypeError(f"values must hold real numbers, got dtype {v.dtype}")
    return v.astype(np.float64, copy=False), None, None, True, None, None


def _check_axes(axes, shape) -> list[np.ndarray]:
    if axes is None:
        return [np.arange(n, dtype=np.float64) for n in shape]
    if isinstance(axes, (str, bytes)) or not isinstance(axes, Sequence):
        raise ArgumentTypeError(
            f"axes must be a list of {len(shape)} coordinate arrays, got {type(axes).__name__}"
        )
    if len(axes) != len(shape):
        raise LossvizError(f"axes: {len(axes)} arrays for a {len(shape)}-D grid")
    out = []
    for i, (a, n) in enumerate(zip(axes, shape)):
        a = np.asarray(a, dtype=np.float64)
        if a.shape != (n,) or not np.isfinite(a).all():
            raise LossvizError(
                f"axes[{i}] must be {n} finite coordinates (the grid's axis {i}), got shape "
                f"{a.shape}"
            )
        out.append(a)
    return out


# the merge tree ---------------------------------------------------------------------------
def _merge_tree(f, leaf_vertex, pair_death):
    """The merge tree of the basins ``leaf_vertex`` (flat C-order indices, sorted by value).

    One labelling of ``{f <= s}`` per distinct saddle value ``s`` (``scipy.ndimage.label``,
    axis neighbours), and of ``{f < s}`` where a leaf merges (its volume).

    Returns ``(parent, value, vertex, leaf_volume)`` (nodes: the leaves first).
    """
    from scipy import ndimage

    structure = ndimage.generate_binary_structure(f.ndim, 1)
    flat = f.reshape(-1)
    k = len(leaf_vertex)
    parent = [-1] * k
    value = [float(flat[v]) for v in leaf_vertex]
    vertex = [int(v) for v in leaf_vertex]
    volume = np.zeros(k, dtype=np.float64)
    # the roots of the forest so far: node ids and a grid point of each one's component
    r_node = np.arange(k, dtype=np.int64)
    r_rep = np.asarray(leaf_vertex, dtype=np.int64).copy()
    deaths: dict[float, list[int]] = {}
    for d, s in pair_death:
        deaths.setdefault(d, []).append(s)
    for d in sorted(deaths):
        lab, _ = ndimage.label(f <= d, structure=structure)
        lab = lab.reshape(-1)
        labs = lab[r_rep]  # 0: a basin not born yet at this level
        u, cnt = np.unique(labs[labs > 0], return_counts=True)
        groups = u[cnt > 1]
        n_merged = int((cnt[cnt > 1] - 1).sum())
        if n_merged != len(deaths[d]):
            raise RuntimeError(  # pragma: no cover - a disagreement with GUDHI's pairs
                f"lossviz.topology: {n_merged} merges at level {d!r} but GUDHI reports "
                f"{len(deaths[d])}; please report this grid"
            )
        strict = sizes = None
        drop = np.zeros(len(r_node), dtype=bool)
        new_nodes, new_reps = [], []
        for g in groups:
            members = np.flatnonzero(labs == g)
            nodes = r_node[members]
            if strict is None and (nodes < k).any():
                strict, _ = ndimage.label(f < d, structure=structure)
                strict = strict.reshape(-1)
                sizes = np.bincount(strict)
            saddle = next(s for s in deaths[d] if lab[s] == g)
            new = len(parent)
            parent.append(-1)
            value.append(float(d))
            vertex.append(int(saddle))
            for nd in nodes.tolist():
                parent[nd] = new
                if nd < k:
                    lv = strict[leaf_vertex[nd]]
                    volume[nd] = sizes[lv] if lv > 0 else 1
            drop[members] = True
            new_nodes.append(new)
            new_reps.append(int(r_rep[members[0]]))
        r_node = np.concatenate([r_node[~drop], np.array(new_nodes, dtype=np.int64)])
        r_rep = np.concatenate([r_rep[~drop], np.array(new_reps, dtype=np.int64)])
    return (
        np.array(parent, dtype=np.int64),
        np.array(value, dtype=np.float64),
        np.array(vertex, dtype=np.int64),
        volume,
    )


def _persistence(f: np.ndarray, min_persistence: float):
    """GUDHI's 0-dimensional pairs: ``(births, deaths, birth vertices, death vertices)``.

    Vertices as flat C-order indices; the essential class has death ``inf`` and death
    vertex -1; pairs of persistence ``<= min_persistence`` are left out.
    """
    gudhi = _gudhi()
    cc = gudhi.CubicalComplex(vertices=f)
    cc.compute_persistence(homology_coeff_field=2, min_persistence=min_persistence)
    reg, ess = cc.vertices_of_persistence_pairs()
    flat_f = f.reshape(-1, order="F")

    def c_index(v):
        return np.ravel_multi_index(np.unravel_index(v, f.shape, order="F"), f.shape)

    bv = np.empty(0, np.int64)
    dv = np.empty(0, np.int64)
    if reg and len(reg[0]):
        bv, dv = reg[0][:, 0].astype(np.int64), reg[0][:, 1].astype(np.int64)
    ev = ess[0].astype(np.int64) if ess and len(ess[0]) else np.empty(0, np.int64)
    births = np.concatenate([flat_f[bv], flat_f[ev]])
    deaths = np.concatenate([flat_f[dv], np.full(len(ev), np.inf)])
    bvx = np.concatenate([c_index(bv), c_index(ev)]).astype(np.int64)
    dvx = np.concatenate([c_index(dv), np.full(len(ev), -1)]).astype(np.int64)
    # the values at the vertices must be GUDHI's own intervals (a guard against a GUDHI
    # whose vertex numbering differs from the column-major order read here)
    iv = np.asarray(cc.persistence_intervals_in_dimension(0), dtype=np.float64).reshape(-1, 2)
    if not (
        np.array_equal(np.sort(iv[:, 0]), np.sort(births))
        and np.array_equal(np.sort(iv[:, 1]), np.sort(deaths))
    ):
        raise RuntimeError(
            f"lossviz.topology: GUDHI {getattr(gudhi, '__version__', '?')} numbers the "
            "vertices of its persistence pairs differently than expected; please report it"
        )
    with np.errstate(invalid="ignore"):
        pers = deaths - births
    # pers is inf for the class that never dies and for a basin separated by non-finite
    # points only (death inf at a grid point): both kept
    keep = np.isfinite(births) & (pers > min_persistence)
    return births[keep], deaths[keep], bvx[keep], dvx[keep]


# the result -------------------------------------------------------------------------------
@dataclass(kw_only=True, repr=False)
class TopologyResult(DataResult):
    """Basins, saddles, merge tree and SMAD of a grid of loss values (:func:`landscape_topology`).

    Basins are ordered by their minimum's value (basin 0 holds the global minimum and
    never dies). Grid points are given as indices into the grid (one column per axis)
    and as coordinates (:meth:`coords`). For a :class:`~lossviz.slices.Surface` the axes
    are ``(a, b)`` (``x``, then ``y``): the grid is ``surface.values[m].T``.

    Attributes:
        minima: ``(K, d)`` int64 grid indices of the basins' minima.
        minimum_values: ``(K,)`` their values ``f(m)``, ascending.
        saddles: ``(K, d)`` int64 grid indices of the saddle where each basin dies
            (merges into a deeper one, by the elder rule); ``-1`` for basin 0.
        saddle_values: ``(K,)`` the saddles' values ``s`` (``inf`` for basin 0 and for a
            basin separated from the others by non-finite values only).
        tree_parent: ``(M,)`` int64 parent of each merge-tree node (-1 for the root);
            nodes ``0 .. K-1`` are the basins' minima, the others the merges.
        tree_value: ``(M,)`` the nodes' values (a minimum's value, or the level of a
            merge).
        tree_index: ``(M, d)`` int64 grid indices of the nodes (a minimum, or the saddle
            of a merge).
        leaf_volumes: ``(K,)`` fraction of the grid points in each basin just before its
            first merge (the component of ``{f < f(parent)}`` holding its minimum; 1 for
            a single basin).
        axes: the grid's coordinates, one ``(n_i,)`` float64 array per axis.
        axis_names: a name per axis (``["a", "b"]`` for a surface).
        values: the grid itself for 1-D and 2-D grids (None for more dimensions).
        min_persistence: basins of depth ``<= min_persistence`` were left out.
        nonfinite: ``"raise"`` or ``"top"``: how NaN / ``+inf`` values were handled.
        n_nonfinite: the number of grid points that were NaN or ``+inf`` (placed above
            every finite value with ``nonfinite="top"``).
        metric: the metric of the source the grid came from (``"loss"``).
        value_range: ``max f - min f`` over the finite values.
        provenance: where it comes from (:class:`~lossviz.provenance.Provenance`;
            None when built by hand).
    """

    minima: np.ndarray
    minimum_values: np.ndarray
    saddles: np.ndarray
    saddle_values: np.ndarray
    tree_parent: np.ndarray
    tree_value: np.ndarray
    tree_index: np.ndarray
    leaf_volumes: np.ndarray
    axes: list = field(default_factory=list)
    axis_names: list = field(default_factory=list)
    values: np.ndarray | None = None
    min_persistence: float = 0.0
    nonfinite: str = "raise"
    n_nonfinite: int = 0
    metric: str = "loss"
    value_range: float = 0.0

    # numbers ------------------------------------------------------------------------
    @property
    def n_basins(self) -> int:
        """The number of basins ``K`` (local minima of depth > ``min_persistence``)."""
        return len(self.minimum_values)

    @property
    def depths(self) -> np.ndarray:
        """``(K,)`` each basin's depth (persistence) ``s - f(m)``; ``inf`` for basin 0."""
        return self.saddle_values - self.minimum_values

    @property
    def ndim(self) -> int:
        """The grid's number of dimensions."""
        return self.minima.shape[1]

    def leaf_gaps(self) -> np.ndarray:
        """``(K,)`` ``f(parent) - f(ℓ)`` for each minimum ``ℓ`` (NaN without a parent).

        Returns:
            The gaps between each minimum and the first merge it takes part in (float64).
        """
        k = self.n_basins
        par = self.tree_parent[:k]
        out = np.full(k, np.nan)
        has = par >= 0
        out[has] = self.tree_value[par[has]] - self.tree_value[:k][has]
        return out

    def smad(self, weighted: bool = False, normalize: bool = False) -> float:
        """The saddle–minimum average distance (Landscaper's SMAD).

        ``(1/K) Σ_ℓ g_ℓ`` over the minima ``ℓ`` with a parent in the merge tree,
        ``g_ℓ = f(parent) - f(ℓ)`` (:meth:`leaf_gaps`); weighted,
        ``(1/K) Σ_ℓ g_ℓ·v_ℓ`` with ``v_ℓ`` the basin's volume fraction
        (``leaf_volumes``). 0 when there is a single basin (nothing to merge). A merge
        across non-finite values only (``nonfinite="top"``) has an infinite gap, and
        SMAD is then ``inf``.

        Args:
            weighted: weight each gap by its basin's volume fraction.
            normalize: divide each gap by ``max f - min f`` (``value_range``).

        Returns:
            SMAD as a float.

        Raises:
            ArgumentTypeError: a non-boolean ``weighted`` / ``normalize``.
        """
        validate.boolean(weighted, "weighted")
        validate.boolean(normalize, "normalize")
        g = self.leaf_gaps()
        has = np.isfinite(g) | (np.isinf(g) & (g > 0))
        if not has.any():
            return 0.0
        g = g[has]
        if weighted:
            g = g * self.leaf_volumes[has]
        if normalize:
            g = g / self.value_range if self.value_range > 0 else g * 0.0
        return float(np.mean(g))

    def coords(self, index: np.ndarray) -> np.ndarray:
        """Coordinates of grid indices (rows of ``minima``, ``saddles``, ``tree_index``).

        Args:
            index: ``(k, d)`` int grid indices (rows holding -1 give NaN).

        Returns:
            ``(k, d)`` float64 coordinates (``axes[i][index[:, i]]``).

        Raises:
            LossvizError: ``index`` is not ``(k, d)``.
        """
        index = np.asarray(index, dtype=np.int64)
        if index.ndim != 2 or index.shape[1] != len(self.axes):
            raise LossvizError(f"index must be (k, {len(self.axes)}), got {index.shape}")
        out = np.full(index.shape, np.nan)
        ok = (index >= 0).all(1)
        for i, a in enumerate(self.axes):
            out[ok, i] = np.asarray(a)[index[ok, i]]
        return out

    # display ------------------------------------------------------------------------
    def __repr__(self) -> str:
        grid = "×".join(str(len(a)) for a in self.axes)
        d = self.depths[1:]
        deep = ", ".join(short(x) for x in np.sort(d)[::-1][:3])
        sep = int(np.isinf(self.saddle_values[1:]).sum())
        extra = ""
        if self.n_nonfinite:
            extra = f", {self.n_nonfinite} non-finite point(s) placed on top"
        if sep:
            extra += f", {sep} basin(s) separated by non-finite values only"
        return (
            f"TopologyResult({grid} grid, {self.metric}: {self.n_basins} basin(s), global "
            f"minimum {short(self.minimum_values[0])} at {_at(self, 0)}"
            + (f", deepest other basins {deep}" if len(d) else "")
            + f"; SMAD {short(self.smad())}, weighted {short(self.smad(weighted=True))}"
            + (f"; min_persistence {number(self.min_persistence)}" if self.min_persistence else "")
            + extra
            + ")"
        )

    def _repr_html_(self) -> str:
        from .formatting import html_table

        rows = []
        sc = self.coords(self.saddles)
        for i in range(min(self.n_basins, 20)):
            rows.append(
                [
                    i,
                    short(self.minimum_values[i]),
                    _at(self, i),
                    short(self.saddle_values[i]),
                    "—" if i == 0 else "(" + ", ".join(f"{c:.3g}" for c in sc[i]) + ")",
                    short(self.depths[i]),
                    short(self.leaf_volumes[i]),
                ]
            )
        cap = (
            f"{self.n_basins} basin(s) of {self.metric}; SMAD {short(self.smad())}, weighted "
            f"{short(self.smad(weighted=True))}"
            + (f" (first 20 of {self.n_basins})" if self.n_basins > 20 else "")
        )
        return html_table(
            ["basin", "minimum", "at", "saddle", "saddle at", "depth", "volume"], rows, cap
        )

    def plot(self, kind: str = "summary"):
        """A plotly figure of the topology.

        Args:
            kind: ``"diagram"`` (persistence diagram: a point ``(f(m), s)`` per basin,
                basin 0 on the top line), ``"barcode"`` (a bar ``[f(m), s)`` per basin),
                ``"tree"`` (the merge tree, leaves at their minima's values, merges at the
                saddles'), ``"contour"`` (the grid with the minima and saddles marked; 1-D
                and 2-D grids: use :meth:`HypercubeResult.plot` for more dimensions) or
                ``"summary"`` (diagram, tree and contour / barcode side by side).

        Returns:
            A ``plotly.graph_objects.Figure``.

        Raises:
            LossvizError: an unknown ``kind``, or ``"contour"`` for a grid of more than two
                dimensions (or without its values).
        """
        import plotly.graph_objects as go
        from plotly.subplots import make_subplots

        validate.choice(kind, "kind", ("summary", "diagram", "barcode", "tree", "contour"))
        if kind == "contour" and (self.values is None or self.ndim > 2):
            raise LossvizError(
                "kind='contour' draws 1-D and 2-D grids; for an N-D grid use "
                "HypercubeResult.plot(axes=(i, j), topology=this) (a projection)"
            )
        if kind != "summary":
            fig = go.Figure()
            {
                "diagram": self._diagram,
                "barcode": self._barcode,
                "tree": self._tree,
                "contour": self._contour,
            }[kind](fig, None)
            fig.update_layout(template="plotly_white", title=f"{kind} of {self.metric}")
            return fig
        third = "contour" if self.values is not None and self.ndim <= 2 else "barcode"
        fig = make_subplots(
            rows=1, cols=3, subplot_titles=("persistence diagram", "merge tree", third)
        )
        self._diagram(fig, 1)
        self._tree(fig, 2)
        (self._contour if third == "contour" else self._barcode)(fig, 3)
        fig.update_layout(
            template="plotly_white",
            title=f"topology of {self.metric}: {self.n_basins} basin(s), SMAD {short(self.smad())}",
            showlegend=False,
        )
        return fig

    def _top(self) -> float:
        v = np.concatenate([self.minimum_values, self.tree_value])
        v = v[np.isfinite(v)]
        lo, hi = float(v.min()), float(v.max())
        return hi + 0.1 * max(hi - lo, self.value_range, 1e-12)

    def _diagram(self, fig, col):
        import plotly.graph_objects as go

        rc = {} if col is None else {"row": 1, "col": col}
        top = self._top()
        b, s = self.minimum_values, self.saddle_values
        inf = ~np.isfinite(s)
        lo = float(b.min())
        fig.add_trace(
            go.Scatter(x=[lo, top], y=[lo, top], mode="lines", line={"color": "gray"}), **rc
        )
        fig.add_trace(
            go.Scatter(
                x=b[~inf],
                y=s[~inf],
                mode="markers",
                name="basins",
                text=[f"basin {i}" for i in np.flatnonzero(~inf)],
            ),
            **rc,
        )
        fig.add_trace(
            go.Scatter(
                x=b[inf],
                y=np.full(int(inf.sum()), top),
                mode="markers",
                marker={"symbol": "triangle-up", "size": 10},
                name="never dies (∞)",
                text=[f"basin {i}" for i in np.flatnonzero(inf)],
            ),
            **rc,
        )
        fig.update_xaxes(title_text="birth (minimum)", **rc)
        fig.update_yaxes(title_text="death (saddle)", **rc)

    def _barcode(self, fig, col):
        import plotly.graph_objects as go

        rc = {} if col is None else {"row": 1, "col": col}
        top = self._top()
        for i, (b, s) in enumerate(zip(self.minimum_values, self.saddle_values)):
            fig.add_trace(
                go.Scatter(
                    x=[b, s if np.isfinite(s) else top],
                    y=[i, i],
                    mode="lines",
                    line={"width": 4},
                    name=f"basin {i}",
                ),
                **rc,
            )
        fig.update_xaxes(title_text=self.metric, **rc)
        fig.update_yaxes(title_text="basin", autorange="reversed", **rc)

    def _tree(self, fig, col):
        import plotly.graph_objects as go

        rc = {} if col is None else {"row": 1, "col": col}
        top = self._top()
        par, val = self.tree_parent, np.where(np.isfinite(self.tree_value), self.tree_value, top)
        kids: dict[int, list[int]] = {}
        for n, p in enumerate(par):
            kids.setdefault(int(p), []).append(n)
        x = np.zeros(len(par))
        pos = [0]

        def place(n):  # leaves left to right in depth-first order, deepest first
            ch = sorted(kids.get(n, []), key=lambda c: val[c])
            if not ch:
                x[n] = pos[0]
                pos[0] += 1
                return
            for c in ch:
                place(c)
            x[n] = np.mean([x[c] for c in ch])

        for r in kids.get(-1, []):
            place(r)
        xs, ys = [], []
        for n, p in enumerate(par):
            if p >= 0:
                xs += [x[n], x[n], x[p], None]
                ys += [val[n], val[p], val[p], None]
        fig.add_trace(go.Scatter(x=xs, y=ys, mode="lines", line={"color": "black"}), **rc)
        k = self.n_basins
        fig.add_trace(
            go.Scatter(
                x=x[:k],
                y=val[:k],
                mode="markers",
                marker={"color": "royalblue", "size": 8},
                text=[f"basin {i}" for i in range(k)],
                name="minima",
            ),
            **rc,
        )
        if len(par) > k:
            fig.add_trace(
                go.Scatter(
                    x=x[k:],
                    y=val[k:],
                    mode="markers",
                    marker={"color": "firebrick", "size": 8, "symbol": "x"},
                    name="merges (saddles)",
                ),
                **rc,
            )
        fig.update_xaxes(showticklabels=False, **rc)
        fig.update_yaxes(title_text=self.metric, **rc)

    def _contour(self, fig, col):
        import plotly.graph_objects as go

        rc = {} if col is None else {"row": 1, "col": col}
        mc = self.coords(self.minima)
        sc = self.coords(self.saddles[1:])
        sc = sc[np.isfinite(sc).all(1)] if len(sc) else sc
        if self.ndim == 1:
            t = np.asarray(self.axes[0])
            fig.add_trace(go.Scatter(x=t, y=self.values, mode="lines", name=self.metric), **rc)
            fig.add_trace(
                go.Scatter(x=mc[:, 0], y=self.minimum_values, mode="markers", name="minima"),
                **rc,
            )
            ok = np.isfinite(self.saddle_values[1:])
            fig.add_trace(
                go.Scatter(
                    x=self.coords(self.saddles[1:])[ok, 0] if ok.any() else [],
                    y=self.saddle_values[1:][ok],
                    mode="markers",
                    marker={"symbol": "x"},
                    name="saddles",
                ),
                **rc,
            )
            fig.update_xaxes(title_text=self.axis_names[0], **rc)
            return
        fig.add_trace(
            go.Contour(
                x=self.axes[0],
                y=self.axes[1],
                z=np.asarray(self.values).T,
                ncontours=30,
                showscale=col is None,
                colorbar={"title": self.metric},
            ),
            **rc,
        )
        fig.add_trace(
            go.Scatter(
                x=mc[:, 0],
                y=mc[:, 1],
                mode="markers",
                marker={"color": "white", "size": 9, "line": {"color": "black", "width": 1}},
                text=[f"basin {i}" for i in range(self.n_basins)],
                name="minima",
            ),
            **rc,
        )
        fig.add_trace(
            go.Scatter(
                x=sc[:, 0] if len(sc) else [],
                y=sc[:, 1] if len(sc) else [],
                mode="markers",
                marker={"color": "firebrick", "size": 9, "symbol": "x"},
                name="saddles",
            ),
            **rc,
        )
        fig.update_xaxes(title_text=self.axis_names[0], **rc)
        fig.update_yaxes(title_text=self.axis_names[1], **rc)


def _at(res: TopologyResult, i: int) -> str:
    c = res.coords(res.minima[i : i + 1])[0]
    return "(" + ", ".join(f"{v:.3g}" for v in c) + ")"


# the kernel -------------------------------------------------------------------------------
def landscape_topology(
    values,
    *,
    metric: str = "loss",
    axes=None,
    min_persistence: float = 0.0,
    nonfinite: str = "raise",
) -> TopologyResult:
    """0-dimensional sublevel-set persistence, merge tree and SMAD of a grid of values.

    The definitions (neighbours, basins, saddles, depths, merge tree, SMAD) are in the
    module docstring (:mod:`lossviz.topology`). The persistence pairs and their grid
    points come from GUDHI's cubical complexes (``gudhi.CubicalComplex``; Edelsbrunner,
    Letscher, Zomorodian 2002, "Topological Persistence and Simplification"); SMAD is
    Landscaper's (Chen, Hadler, Xie, et al. 2026, arXiv 2602.07135).

    Ties: points of equal value that are neighbours belong to one basin (a flat floor
    is one minimum, reported at one of its points); basins of depth 0 do not exist.

    Args:
        values: a :class:`~lossviz.slices.Surface` (axes ``(a, b)``), a
            :class:`~lossviz.slices.Slice1D`, a
            :class:`~lossviz.ndgrid.HypercubeResult` or an array of any number of
            dimensions (1 to 8).
        metric: the metric of a Surface / Slice1D / HypercubeResult to use.
        axes: coordinates of an array's grid, one array per axis (default: the indices);
            not used for the result types, which carry theirs.
        min_persistence: leave out basins of depth ``<= min_persistence`` (noise); 0
            keeps every basin of positive depth.
        nonfinite: what NaN and ``+inf`` values mean: ``"raise"`` (a
            :class:`~lossviz.errors.LossvizError` naming where they are) or ``"top"``
            (they lie above every finite value: basins that only meet across them merge
            at ``inf``). ``-inf`` is always an error.

    Returns:
        :class:`TopologyResult` (``provenance`` kernel ``"landscape_topology"``).

    Raises:
        LossvizError: an empty grid, more than 8 dimensions, a grid too large for the
            memory GUDHI needs (the message says how large), an incomplete (interrupted)
            result, NaN / ``inf`` values with ``nonfinite="raise"`` or ``-inf``, a grid
            with no finite value, bad ``axes``, a negative ``min_persistence``, an
            unknown ``nonfinite``, an unknown metric.
        ArgumentTypeError: ``values`` of the wrong type, a non-number
            ``min_persistence``.
        ImportError: GUDHI is not installed (``pip install 'lossviz[topology]'``).

    >>> import numpy as np
    >>> r = landscape_topology(np.array([3.0, 1.0, 2.0, 0.0, 4.0]))  # minima 1 and 0, saddle 2
    >>> r.minimum_values.tolist(), r.saddle_values.tolist(), r.smad()
    ([0.0, 1.0], [inf, 2.0], 1.5)
    """
    validate.choice(nonfinite, "nonfinite", ("raise", "top"))
    min_persistence = validate.number(min_persistence, "min_persistence", low=0)
    if not isinstance(metric, str):
        raise ArgumentTypeError(f"metric must be a metric's name, got {validate.show(metric)}")
    f, own_axes, names, complete, evaluated, src = _grid_of(values, metric)
    if f.size == 0:
        raise LossvizError("values: the grid is empty")
    if f.ndim < 1 or f.ndim > 8:
        raise LossvizError(f"values: a grid of 1 to 8 dimensions, got {f.ndim}")
    if own_axes is None:
        own_axes = _check_axes(axes, f.shape)
        names = [f"axis {i}" for i in range(f.ndim)]
    elif axes is not None:
        raise LossvizError(f"axes: a {type(values).__name__} carries its own coordinates")
    else:
        own_axes = [np.asarray(a, dtype=np.float64) for a in own_axes]
    if not complete:
        n_ev = "" if evaluated is None else f" ({int(np.sum(evaluated))} of {f.size} points)"
        raise LossvizError(
            f"values: the {type(values).__name__} is incomplete (interrupted){n_ev}: the "
            "topology of a partial grid is not the landscape's; compute it to the end first"
        )
    cells = float(np.prod([2.0 * n - 1 for n in f.shape]))
    need = cells * BYTES_PER_CELL + f.size * 8 * 4
    if need > 0.5 * _available_memory():
        raise LossvizError(
            f"values: a {'×'.join(map(str, f.shape))} grid makes a cubical complex of "
            f"{cells:.3g} cells, about {_gib(need)} of memory, more than half of the "
            f"{_gib(_available_memory())} available: use fewer points per axis (n=) or fewer "
            "directions, or a projection (HypercubeResult.projection)"
        )
    f = np.array(f, dtype=np.float64, order="C")  # a copy: a memmap is read once
    bad = np.isnan(f) | np.isposinf(f)
    neg = np.isneginf(f)
    if neg.any() or (bad.any() and nonfinite == "raise"):
        idx = np.argwhere(neg if neg.any() else bad)[:3]
        where = ", ".join(
            "(" + ", ".join(f"{own_axes[i][j]:.3g}" for i, j in enumerate(ix)) + ")" for ix in idx
        )
        what = "-inf" if neg.any() else "NaN or inf"
        n_bad = int((neg if neg.any() else bad).sum())
        hint = "" if neg.any() else "; pass nonfinite='top' to place them above every finite value"
        raise LossvizError(
            f"values: {n_bad} grid point(s) are {what} (at {where}{' …' if n_bad > 3 else ''})"
            f": sublevel sets of them are not defined{hint}"
        )
    if bad.all():
        raise LossvizError("values: no grid point has a finite value")
    n_bad = int(bad.sum())
    shown = f.copy() if f.ndim <= 2 else None
    f[bad] = np.inf
    births, deaths, bvx, dvx = _persistence(f, min_persistence)
    order = np.lexsort((bvx, births))
    births, deaths, bvx, dvx = births[order], deaths[order], bvx[order], dvx[order]
    ess = np.flatnonzero(dvx < 0)
    if len(ess) != 1:  # pragma: no cover - a connected grid has one class that never dies
        raise RuntimeError(f"lossviz.topology: {len(ess)} essential classes from GUDHI")
    # basin 0 is the essential one (the global minimum; ties broken by GUDHI)
    first = int(ess[0])
    perm = np.r_[first, np.delete(np.arange(len(births)), first)]
    births, deaths, bvx, dvx = births[perm], deaths[perm], bvx[perm], dvx[perm]
    pairs = [(float(d), int(s)) for d, s in zip(deaths[1:], dvx[1:])]
    parent, tval, tvert, vol = _merge_tree(f, bvx, pairs)
    finite = f[np.isfinite(f)]
    k = len(births)
    if k == 1:
        vol[0] = 1.0
    else:
        vol = vol / f.size
        vol[parent[:k] < 0] = 1.0
    shape = f.shape

    def grid_index(v):
        v = np.asarray(v, dtype=np.int64)
        out = np.full((len(v), len(shape)), -1, dtype=np.int64)
        ok = v >= 0
        if ok.any():
            out[ok] = np.stack(np.unravel_index(v[ok], shape), 1)
        return out

    return TopologyResult(
        minima=grid_index(bvx),
        minimum_values=births,
        saddles=grid_index(dvx),
        saddle_values=deaths,
        tree_parent=parent,
        tree_value=tval,
        tree_index=grid_index(tvert),
        leaf_volumes=vol,
        axes=own_axes,
        axis_names=list(names),
        values=shown,
        min_persistence=float(min_persistence),
        nonfinite=nonfinite,
        n_nonfinite=n_bad,
        metric=metric,
        value_range=float(finite.max() - finite.min()),
        provenance=_provenance(src),
    )


def _provenance(src) -> Provenance:
    """The source's facts (model, parameters, its Objective and point) under this kernel."""
    p = getattr(src, "provenance", None)
    out = Provenance.of(None, kernel="landscape_topology")
    if p is not None:
        for k in ("model", "n_params", "dtype", "device", "objective", "at", "at_version"):
            setattr(out, k, getattr(p, k))
    return out
