"""Landscape topology (lossviz.topology): basins, saddles, merge tree and SMAD, tested
against a brute-force reference written here without GUDHI or scipy (the sublevel sets
flooded level by level in plain Python), against closed forms in 1-D, and on sums of
Gaussian wells whose basins are known by construction."""

from __future__ import annotations

import itertools
import sys
from collections import deque

import numpy as np
import pytest

import lossviz as lv
from lossviz.slices import Slice1D, Surface
from lossviz.topology import TopologyResult, landscape_topology

pytest.importorskip("gudhi", reason="lossviz.topology needs gudhi (pip install gudhi)")


# --- the brute-force reference -------------------------------------------------------------
def _neighbours(p, shape):
    for ax in range(len(shape)):
        for step in (-1, 1):
            q = list(p)
            q[ax] += step
            if 0 <= q[ax] < shape[ax]:
                yield tuple(q)


def _components(f, t):
    """The connected components of ``{f <= t}`` (axis neighbours), by breadth-first search."""
    seen = set()
    comps = []
    for p in itertools.product(*(range(n) for n in f.shape)):
        if f[p] > t or p in seen:
            continue
        comp = {p}
        seen.add(p)
        todo = deque([p])
        while todo:
            a = todo.popleft()
            for b in _neighbours(a, f.shape):
                if b not in seen and f[b] <= t:
                    seen.add(b)
                    comp.add(b)
                    todo.append(b)
        comps.append(comp)
    return comps


def brute_topology(f):
    """``(pairs, leaves, merges)`` by flooding the sublevel sets level by level.

    pairs: sorted ``(birth, death, min point, saddle point)`` (death inf for the global
    minimum; the saddle point is the grid point entering at the death level, unique for
    distinct values); leaves: sorted ``(minimum value, first merge level, volume fraction)``;
    merges: the sorted merge levels (one per merge node).
    """
    f = np.asarray(f, dtype=np.float64)
    prev = []  # (points, birth, min point, tree node)
    pairs, merges = [], []
    node_value, node_parent, leaf_of = [], [], {}
    leaf_volume = {}
    for t in sorted(set(f.reshape(-1).tolist())):
        now = []
        for comp in _components(f, t):
            olds = [o for o in prev if next(iter(o[0])) in comp]
            if not olds:
                p = min(comp, key=lambda q: f[q])
                node_value.append(t)
                node_parent.append(-1)
                leaf_of[len(node_value) - 1] = p
                now.append((comp, t, p, len(node_value) - 1))
                continue
            if len(olds) == 1:
                now.append((comp, olds[0][1], olds[0][2], olds[0][3]))
                continue
            olds.sort(key=lambda o: o[1])
            entering = [q for q in comp if f[q] == t]
            for o in olds[1:]:
                pairs.append((o[1], t, o[2], entering[0] if len(entering) == 1 else None))
            node_value.append(t)
            node_parent.append(-1)
            new = len(node_value) - 1
            merges.append(t)
            for o in olds:
                if o[3] in leaf_of and o[3] not in leaf_volume:
                    leaf_volume[o[3]] = len(o[0]) / f.size
                node_parent[o[3]] = new
            now.append((comp, olds[0][1], olds[0][2], new))
        prev = now
    (last,) = prev
    pairs.append((last[1], np.inf, last[2], None))
    leaves = []
    for n in leaf_of:
        par = node_parent[n]
        leaves.append(
            (node_value[n], node_value[par] if par >= 0 else np.nan, leaf_volume.get(n, 1.0))
        )
    return sorted(pairs, key=lambda q: (q[0], q[1])), sorted(leaves), sorted(merges)


def assert_matches_brute(r: TopologyResult, f, *, where=True):
    pairs, leaves, merges = brute_topology(f)
    got = sorted(zip(r.minimum_values, r.saddle_values))
    np.testing.assert_array_equal(np.array(got), np.array([(b, d) for b, d, *_ in pairs]))
    gaps = r.leaf_gaps()
    mine = sorted(zip(r.minimum_values, r.minimum_values + gaps, r.leaf_volumes))
    np.testing.assert_allclose(np.array(mine), np.array(leaves), rtol=0, atol=1e-12)
    k = r.n_basins
    np.testing.assert_array_equal(np.sort(r.tree_value[k:]), np.array(merges))
    if where:  # distinct values: minima and saddles are unique grid points
        by_birth = {b: (p, s) for b, _, p, s in pairs}
        for i in range(k):
            p, s = by_birth[r.minimum_values[i]]
            assert tuple(r.minima[i]) == p
            if i > 0:
                assert tuple(r.saddles[i]) == s
                assert f[tuple(r.saddles[i])] == r.saddle_values[i]
        assert (r.saddles[0] == -1).all()
    # SMAD from the reference's leaves (Landscaper's definition)
    g = np.array([b - a for a, b, _ in leaves if np.isfinite(b)])
    v = np.array([vol for a, b, vol in leaves if np.isfinite(b)])
    assert r.smad() == pytest.approx(g.mean() if len(g) else 0.0, abs=1e-12)
    assert r.smad(weighted=True) == pytest.approx((g * v).mean() if len(g) else 0.0, abs=1e-12)


def test_brute_force_reference_on_a_hand_made_case():
    # 1-D: minima 1 (index 1) and 0 (index 3), saddle 2 between them
    pairs, leaves, merges = brute_topology(np.array([3.0, 1.0, 2.0, 0.0, 4.0]))
    assert pairs == [(0.0, np.inf, (3,), None), (1.0, 2.0, (1,), (2,))]
    assert leaves == [(0.0, 2.0, 0.2), (1.0, 2.0, 0.2)] and merges == [2.0]


# --- closed forms in 1-D ---------------------------------------------------------------------
def closed_form_1d(f):
    """Every strict local minimum ``m`` of a 1-D array with distinct values, and its death:
    ``min`` over both sides of the highest value met before reaching a lower value
    (``inf`` for the global minimum, and on a side with no lower value)."""
    out = []
    n = len(f)
    for i in range(n):
        if (i == 0 or f[i - 1] > f[i]) and (i == n - 1 or f[i + 1] > f[i]):
            sides = []
            for rng in (range(i - 1, -1, -1), range(i + 1, n)):
                top = -np.inf
                for j in rng:
                    if f[j] < f[i]:
                        sides.append(top)
                        break
                    top = max(top, f[j])
            out.append((f[i], min(sides) if sides else np.inf))
    return sorted(out)


@pytest.mark.parametrize("seed", range(6))
def test_1d_random_against_the_closed_form_and_the_reference(seed):
    f = np.random.default_rng(seed).permutation(40).astype(np.float64)
    r = landscape_topology(f)
    assert sorted(zip(r.minimum_values, r.saddle_values)) == closed_form_1d(f)
    assert_matches_brute(r, f)


def test_1d_two_wells_exact_depths():
    t = np.linspace(-3, 3, 61)
    f = -2 * np.exp(-((t + 1.5) ** 2) / 0.2) - 1.0 * np.exp(-((t - 1.5) ** 2) / 0.2)
    r = landscape_topology(f, axes=[t])
    assert r.n_basins == 2
    np.testing.assert_allclose(r.coords(r.minima)[:, 0], [-1.5, 1.5], atol=1e-12)
    # the saddle is the highest point between the wells: the grid maximum on [-1.5, 1.5]
    inner = f[(t >= -1.5) & (t <= 1.5)]
    assert r.saddle_values[1] == inner.max()
    assert r.depths[1] == pytest.approx(inner.max() - f[t == 1.5][0], abs=0)
    assert r.minimum_values[0] == f.min()
    assert_matches_brute(r, f)


# --- Gaussian wells ---------------------------------------------------------------------------
def wells(grid_axes, centers, depths, width):
    mesh = np.meshgrid(*grid_axes, indexing="ij")
    f = np.zeros(mesh[0].shape)
    for c, a in zip(centers, depths):
        r2 = sum((m - ci) ** 2 for m, ci in zip(mesh, c))
        f -= a * np.exp(-r2 / (2 * width**2))
    return f


def test_2d_gaussian_wells_have_known_basins():
    x = np.linspace(-2, 2, 21)
    y = np.linspace(-2, 2, 17)
    centers = [(-1.0, -1.0), (1.0, -1.0), (0.0, 1.0)]
    depths = [3.0, 2.0, 1.0]
    f = wells([x, y], centers, depths, 0.35)
    r = landscape_topology(f, axes=[x, y])
    assert r.n_basins == 3
    # minima at the wells' centres (on the grid), deepest first
    np.testing.assert_allclose(r.coords(r.minima), np.array(centers), atol=1e-12)
    # wells this far apart barely overlap: each minimum ≈ -depth, each saddle a little
    # below 0 (≈ -5·exp(-1 / (2·0.35²)) = -0.084 between the two deepest)
    np.testing.assert_allclose(r.minimum_values, [-3, -2, -1], atol=2e-3)
    assert (r.saddle_values[1:] < 0).all() and (r.saddle_values[1:] > -0.1).all()
    assert_matches_brute(r, f)


def test_3d_gaussian_wells_and_the_grid_order():
    a = np.linspace(-1, 1, 9)
    b = np.linspace(-1, 1, 7)
    c = np.linspace(-1, 1, 8)
    centers = [(-0.5, -1 / 3, -1 / 7), (0.5, 2 / 3, 5 / 7)]
    f = wells([a, b, c], centers, [2.0, 1.0], 0.3)
    r = landscape_topology(f, axes=[a, b, c])
    assert r.n_basins == 2
    # a non-square grid: the minima's indices are the arrays' own (C order), not GUDHI's
    assert tuple(r.minima[0]) == np.unravel_index(np.argmin(f), f.shape)
    np.testing.assert_allclose(r.coords(r.minima), np.array(centers), atol=1e-12)
    assert_matches_brute(r, f)


@pytest.mark.parametrize("shape", [(7, 9), (5, 4, 6), (3, 3, 3, 3)])
@pytest.mark.parametrize("seed", range(3))
def test_random_grids_match_the_reference(shape, seed):
    # distinct values: many basins, saddles and merges (the hardest case for the tree)
    f = np.random.default_rng(seed).permutation(int(np.prod(shape))).reshape(shape) * 0.5
    r = landscape_topology(f)
    assert_matches_brute(r, f)
    # the tree: every node but the root has a parent at a level not below its own
    par = r.tree_parent
    assert (par == -1).sum() == 1
    ok = par >= 0
    assert (r.tree_value[par[ok]] >= r.tree_value[ok]).all()


# --- ties and plateaus ----------------------------------------------------------------------------
def test_a_flat_floor_is_one_basin():
    f = np.full((6, 6), 5.0)
    f[1:4, 1:4] = 1.0  # a flat floor of 9 points
    r = landscape_topology(f)
    assert r.n_basins == 1 and r.smad() == 0.0 and r.smad(weighted=True) == 0.0
    assert f[tuple(r.minima[0])] == 1.0
    assert_matches_brute(r, f, where=False)


def test_a_constant_grid_is_one_basin_of_infinite_depth():
    r = landscape_topology(np.zeros((4, 5)))
    assert r.n_basins == 1 and r.depths[0] == np.inf and r.leaf_volumes[0] == 1.0
    assert r.smad() == 0.0 and len(r.tree_value) == 1


def test_equal_minima_and_a_flat_ridge():
    # two equal minima (0) behind a flat ridge (2) with a pass at 1, and a third basin
    f = np.array(
        [
            [3, 3, 3, 3, 3, 3, 3],
            [3, 0, 0, 2, 0, 3, 3],
            [3, 0, 0, 1, 0, 2, 3],
            [3, 3, 3, 3, 3, 0.5, 3],
        ],
        dtype=np.float64,
    )
    r = landscape_topology(f)
    assert sorted(r.minimum_values.tolist()) == [0, 0, 0.5]
    assert sorted(r.saddle_values.tolist()) == [1, 2, np.inf]
    assert_matches_brute(r, f, where=False)


def test_two_basins_merging_at_the_same_level_make_one_node():
    # three basins meeting at one level 2: a merge node with three children
    f = np.array([0.0, 2, 0.5, 2, 1, 3])
    r = landscape_topology(f)
    assert r.n_basins == 3 and len(r.tree_value) == 4
    assert (r.tree_parent[:3] == 3).all() and r.tree_value[3] == 2
    assert_matches_brute(r, f, where=False)


def test_min_persistence_drops_shallow_basins():
    f = np.array([0.0, 5, 1, 1.2, 1.1, 6, 2, 8])
    full = landscape_topology(f)
    assert full.n_basins == 4  # 0, 1, 1.1 (depth 0.1), 2
    r = landscape_topology(f, min_persistence=0.15)
    assert sorted(r.minimum_values.tolist()) == [0, 1, 2]
    assert sorted(r.saddle_values.tolist()) == [5, 6, np.inf]
    # the merge tree of the deeper basins is unchanged by the shallow one
    assert sorted(r.tree_value[3:].tolist()) == [5, 6]
    assert (landscape_topology(f, min_persistence=10).n_basins) == 1


# --- non-finite values ---------------------------------------------------------------------------
def test_nan_and_inf_are_refused_by_default_naming_where():
    f = np.ones((4, 4))
    f[2, 1] = np.nan
    with pytest.raises(lv.LossvizError, match=r"1 grid point\(s\) are NaN or inf .*\(2, 1\).*top"):
        landscape_topology(f)
    f[2, 1] = -np.inf
    with pytest.raises(lv.LossvizError, match="-inf"):
        landscape_topology(f, nonfinite="top")
    with pytest.raises(lv.LossvizError, match="no grid point has a finite value"):
        landscape_topology(np.full(3, np.nan), nonfinite="top")


def test_nonfinite_top_places_them_above_everything():
    f = np.array([3.0, 0.0, 2.0, np.nan, 1.0, 4.0, np.inf, 0.5])
    r = landscape_topology(f, nonfinite="top")
    assert np.isnan(f[3]) and np.isinf(f[6])  # the caller's array is not changed
    # 0 and 1 are separated by NaN: they merge only at inf; 0.5 too (behind inf)
    assert r.n_basins == 3 and r.n_nonfinite == 2
    assert sorted(r.saddle_values.tolist()) == [np.inf] * 3
    assert np.isinf(r.smad()) and "separated by non-finite values only" in repr(r)
    # the values keep the NaN (they are drawn blank)
    assert np.isnan(r.values[3]) and np.isinf(r.values[6])
    g = np.array([3.0, 0.0, 2.0, np.nan, 1.0, 0.5])  # a NaN on a slope changes nothing
    g2 = g.copy()
    g2[3] = 1e9
    a, b = landscape_topology(g, nonfinite="top"), landscape_topology(g2)
    np.testing.assert_array_equal(a.minimum_values, b.minimum_values)


def test_an_interrupted_surface_is_refused():
    v = np.arange(12.0).reshape(3, 4)
    ev = np.ones((3, 4), bool)
    ev[2, 2:] = False
    v[~ev] = np.nan
    s = Surface(
        x=np.arange(4.0), y=np.arange(3.0), values={"loss": v}, complete=False, evaluated=ev
    )
    with pytest.raises(lv.LossvizError, match=r"incomplete.*10 of 12"):
        landscape_topology(s)


# --- result types and inputs ----------------------------------------------------------------
def test_surface_axes_are_a_then_b():
    x = np.linspace(-1, 1, 11)
    y = np.linspace(-2, 2, 9)
    f = wells([x, y], [(0.6, -1.0), (-0.4, 1.0)], [2, 1], 0.3)  # f[j, i] at (x_j, y_i)
    s = Surface(x=x, y=y, values={"loss": f.T.copy(), "other": -f.T})
    r = s.topology()
    assert r.axis_names == ["a", "b"] and r.n_basins == 2
    np.testing.assert_allclose(r.coords(r.minima), [[0.6, -1.0], [-0.4, 1.0]], atol=1e-12)
    assert_matches_brute(r, f)
    with pytest.raises(lv.LossvizError, match="no metric 'nope'"):
        s.topology("nope")
    with pytest.raises(lv.LossvizError, match="carries its own coordinates"):
        landscape_topology(s, axes=[x, y])
    line = Slice1D(t=np.linspace(0, 1, 5), values={"loss": np.array([1.0, 0, 1, -1, 2])})
    r1 = landscape_topology(line)
    assert r1.axis_names == ["t"] and r1.coords(r1.minima)[:, 0].tolist() == [0.75, 0.25]


def test_save_load_round_trip_and_repr(tmp_path):
    x = np.linspace(-2, 2, 21)
    f = wells([x, x], [(-1, -1), (1, 1)], [2, 1], 0.4)
    r = landscape_topology(f, axes=[x, x], min_persistence=1e-6)
    p = tmp_path / "topo.npz"
    r.save(p)
    back = lv.load(p)
    assert isinstance(back, TopologyResult)
    for name in ("minima", "minimum_values", "saddles", "saddle_values", "tree_parent"):
        np.testing.assert_array_equal(getattr(back, name), getattr(r, name))
    np.testing.assert_array_equal(back.values, r.values)
    assert back.smad() == r.smad() and back.provenance.kernel == "landscape_topology"
    assert "2 basin(s)" in repr(back) and "SMAD" in back._repr_html_()


def test_plots():
    x = np.linspace(-2, 2, 15)
    f2 = wells([x, x], [(-1, -1), (1, 1)], [2, 1], 0.4)
    r2 = landscape_topology(f2, axes=[x, x])
    for kind in ("summary", "diagram", "barcode", "tree", "contour"):
        fig = r2.plot(kind)
        assert len(fig.data) >= 2
    # the contour marks the minima at their coordinates
    marks = [t for t in r2.plot("contour").data if t.name == "minima"][0]
    np.testing.assert_allclose(np.c_[marks.x, marks.y], r2.coords(r2.minima))
    r1 = landscape_topology(np.array([3.0, 1, 2, 0, 4]))
    assert len(r1.plot("contour").data) == 3 and len(r1.plot().data) > 3
    r3 = landscape_topology(wells([x[:6]] * 3, [(0, 0, 0)], [1], 0.5))
    assert r3.values is None and len(r3.plot().data) > 3
    with pytest.raises(lv.LossvizError, match="HypercubeResult.plot"):
        r3.plot("contour")
    with pytest.raises(lv.LossvizError, match="kind must be one of"):
        r2.plot("pie")


@pytest.mark.parametrize(
    "values,kw,err,match",
    [
        ("abc", {}, TypeError, "values must be"),
        (None, {}, TypeError, "values must be"),
        (np.array([]), {}, lv.LossvizError, "empty"),
        (np.float64(3.0), {}, lv.LossvizError, "1 to 8 dimensions"),
        (np.zeros((2,) * 9), {}, lv.LossvizError, "1 to 8 dimensions"),
        (np.array(["a", "b"]), {}, TypeError, "real numbers"),
        (np.zeros(3), {"min_persistence": -1}, lv.LossvizError, "min_persistence"),
        (np.zeros(3), {"min_persistence": "x"}, TypeError, "min_persistence"),
        (np.zeros(3), {"nonfinite": "ignore"}, lv.LossvizError, "nonfinite"),
        (np.zeros(3), {"axes": [np.arange(2)]}, lv.LossvizError, r"axes\[0\]"),
        (np.zeros(3), {"axes": [np.arange(3)] * 2}, lv.LossvizError, "2 arrays"),
        (np.zeros(3), {"metric": 3}, TypeError, "metric"),
    ],
)
def test_bad_input(values, kw, err, match):
    with pytest.raises(err, match=match):
        landscape_topology(values, **kw)


def test_a_grid_too_large_for_gudhi_says_how_large(monkeypatch):
    import lossviz.topology as T

    monkeypatch.setattr(T, "_available_memory", lambda: 1e6)
    with pytest.raises(lv.LossvizError, match=r"40×40 grid .* 6\.24e\+03 cells, about .*MiB"):
        landscape_topology(np.zeros((40, 40)))


def test_without_gudhi_the_error_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "gudhi", None)
    with pytest.raises(ImportError, match=r"lossviz\[topology\]"):
        landscape_topology(np.array([1.0, 0.0, 1.0]))


def test_a_gudhi_numbering_its_vertices_otherwise_is_caught(monkeypatch):
    import gudhi

    import lossviz.topology as T

    class Transposed:  # a GUDHI that would number the vertices in another order
        __version__ = "test"

        @staticmethod
        def CubicalComplex(vertices):
            return gudhi.CubicalComplex(vertices=np.asarray(vertices).T.copy())

    monkeypatch.setattr(T, "_gudhi", lambda: Transposed)
    with pytest.raises(RuntimeError, match="numbers the vertices"):
        landscape_topology(np.random.default_rng(0).random((5, 7)))
