# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # What is in a loss landscape: basins, saddles, N-D slices, and the path through them
#
# A contour plot of the loss `f(a, b) = L(θ + a·d1 + b·d2)` *shows* a landscape; its
# **topology** says what is in it. Flood the landscape from below: the sublevel sets
# `{f ≤ t}` grow as the level `t` rises. A **basin** is born at each local minimum `m`;
# when two basins touch, at a **saddle** `s`, the one born higher dies (its *depth* or
# persistence is `s − f(m)`; Edelsbrunner et al. 2002). The merges form a **merge tree**,
# and Landscaper (Chen et al. 2026) summarises a landscape's roughness by **SMAD**, the
# mean gap between each minimum and the saddle where it first merges: 0 for one smooth
# bowl, large for a few deep, separated basins.
#
# A 2-D slice is a thin view of thousands of dimensions. An **N-D slice**
# (`lv.hypercube`) adds directions; its **min-projection** onto two of them shows the
# lowest loss reachable by also moving along the others.
#
# Here, on the digits: a small MLP trained with SGD, the landscape around it in random and
# PCA planes, their topology, a 3-D slice, and the training run animated over its
# landscape. Each assertion says whether it holds **by construction** (it cannot fail
# unless lossviz is wrong) or is **robust for this run** (true of this landscape, checked
# with margins).

# %%
import numpy as np
import torch

import lossviz as lv
from lossviz import Objective
from lossviz.data import digits, mlp

x, y = digits()
model = mlp((64, 32, 10), seed=0)
recorder = lv.TrajectoryRecorder(model, every=5)
opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
gen = torch.Generator().manual_seed(0)
for _ in range(300):
    recorder.step()
    idx = torch.randint(0, len(y), (128,), generator=gen)
    opt.zero_grad()
    torch.nn.functional.cross_entropy(model(x[idx]), y[idx]).backward()
    opt.step()
recorder.snapshot()  # the trained weights, last
obj = Objective(model, torch.nn.functional.cross_entropy, (x, y))
print(recorder, f"loss {obj.loss():.4f}")

# %% [markdown]
# ## Around the trained model: one basin
#
# In a plane of two filter-normalized random directions (Li et al. 2018) the trained
# model sits in one smooth bowl: one basin, nothing to merge, SMAD 0. *Robust for this
# run*: the random slices of a trained MLP are bowls at every span we tried (±0.25 to
# ±100).

# %%
s = lv.surface(obj, span=((-1, 1), (-1, 1)), n=31, progress=False)
topo = s.topology()
print(topo)
assert topo.n_basins == 1 and topo.smad() == 0.0  # a single basin has no merge: by construction
topo.plot()  # persistence diagram, merge tree, the contour with its minimum

# %% [markdown]
# ## Along the path of training: basins appear with the span
#
# The plane of the trajectory's top-2 principal directions (`lv.pca_directions`, centred
# on the trained model) holds most of the path. Close to the trained model it is one
# basin too; zoomed out far enough to take in the plateau where training started and
# beyond, the landscape has several basins (the deepest extra one here is ~0.3 deep). The
# basin count is *robust for this run* with a `min_persistence` margin that leaves out
# the noise-level basins (depth ≤ 0.01). The global minimum on the plane lies beyond the
# trained model (at `a < 0`), where the path was heading: SGD had not finished descending.

# %%
pca = lv.pca_directions(recorder, 2)
print(pca)
tops = {}
for half in (2, 20):
    w = lv.surface(obj, None, pca, span=((-half, half),) * 2, n=31, progress=False)
    tops[half] = w.topology()
    print(f"PCA plane ±{half}: {tops[half]}")
near, wide = tops[2], tops[20]
assert near.n_basins == 1  # robust for this run
assert near.coords(near.minima)[0, 0] < 0 and wide.coords(wide.minima)[0, 0] < 0  # robust
assert w.topology(min_persistence=0.01).n_basins >= 2  # robust for this run
assert wide.smad() > 0  # more than one basin: a positive gap (by construction)
# leaving out shallow basins never adds any (by construction)
n_by_threshold = [w.topology(min_persistence=m).n_basins for m in (0, 0.01, 0.1, 1)]
print("basins deeper than 0, 0.01, 0.1, 1:", n_by_threshold)
assert n_by_threshold == sorted(n_by_threshold, reverse=True)
wide.plot()

# %% [markdown]
# The surface that frames the trajectory (the default span of a PCA surface: the path
# plus a quarter on each side), with its basins on the contour:

# %%
sp = lv.surface(obj, None, pca, n=25, progress=False)
tp = sp.topology()
print(tp)
assert np.abs(sp.paths["trajectory"][-1]).max() < 1e-9  # the plane is centred on the end
tp.plot("contour")

# %% [markdown]
# ## A 3-D slice and its min-projection
#
# `lv.hypercube` evaluates the loss on a grid in three directions here: the two PCA
# directions and a filter-normalized random one, `c3 ∈ [-1, 1]`. Its min-projection onto
# the PCA plane, `P(a, b) = min_{c3} f(a, b, c3)`, is the lowest loss reachable by also
# moving along `d3`. The grid of `c3` holds 0, where the 3-D slice *is* the 2-D PCA
# surface (the same `(a, b)` grid), so
#
# - `f(a, b, 0)` equals the 2-D surface at every grid point (*by construction*, up to the
#   rounding of the two evaluation orders);
# - the min-projection is `≤` the 2-D slice everywhere (*by construction*: a minimum over
#   a set that contains the slice's value).

# %%
d3 = lv.random_directions(obj, 3, seed=0)[2]
span = [(sp.x[0], sp.x[-1]), (sp.y[0], sp.y[-1]), (-1.0, 1.0)]
h = lv.hypercube(
    obj, [*pca.directions, d3], center=pca.center, n=(25, 25, 7), span=span, progress=False
)
print(h)
k0 = int(np.flatnonzero(h.axes[2] == 0)[0])
slice0 = h.loss[:, :, k0].T  # rows follow b, as in a Surface
assert np.allclose(slice0, sp.loss, rtol=1e-5, atol=1e-6)
pmin = h.projection((0, 1), reduce="min")
assert (pmin <= sp.loss + 1e-6).all()
gain = sp.loss - pmin
print(f"moving along d3 lowers the loss by up to {gain.max():.3f} (median {np.median(gain):.3f})")
t3 = h.topology(min_persistence=0.01)
print(t3)
h.plot((0, 1), reduce="min", topology=t3)

# %% [markdown]
# ## The training run, animated over its landscape
#
# `surface.animate(recorder)` draws the PCA surface once and the path frame by frame:
# the path so far, a marker at the checkpoint, and in the title the step, the loss *at
# the checkpoint itself* (evaluated) and the loss read off the plane at its projection.
# They differ where the plane misses part of the path, and agree at the trained model
# (the centre). Press ▶, or drag the slider. `fig.write_html("run.html",
# include_plotlyjs=True)` saves it as one file that plays offline;
# `lv.save_animation(fig, "run.gif")` writes a GIF (needs kaleido and a Chromium).

# %%
fig = sp.animate(recorder, progress=False)
steps = recorder.steps
losses = lv.evaluate(obj, recorder.checkpoints, progress=False)["loss"]
marker = np.array([f.data[-1].customdata[0] for f in fig.frames])
where = np.array([[f.data[-1].x[0], f.data[-1].y[0]] for f in fig.frames])
# the frames show the evaluated losses and the surface's coordinates (by construction)
assert [f.name for f in fig.frames] == [str(s) for s in steps]
assert np.array_equal(marker[:, 1], losses)
assert np.allclose(where, sp.paths["trajectory"], atol=1e-6)
assert abs(marker[-1, 1] - obj.loss()) < 1e-6
print(fig.frames[0].layout.title.text)
print(fig.frames[-1].layout.title.text)
# training went downhill: robust for this run
assert losses[-1] < 0.1 * losses[0]
fig
