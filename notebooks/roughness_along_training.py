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
# # The roughness index along training
#
# Wu, Jian, Du, Chen & Zhou (2021, *Roughness Index for Loss Landscapes of Neural Network
# Models of PDEs*, arXiv 2103.11069) summarize how oscillatory a loss landscape is around a
# point $\theta^*$ with one number. Along $M$ filter-normalized random directions $d_j$,
# sample the slices $f_j(t_k) = L(\theta^* + t_k d_j)$ at $m+1$ evenly spaced
# $t_k \in [-\ell, \ell]$; the normalized total variation of a slice and the roughness
# index are
#
# $$TV_j = \frac{\sum_k |f_j(t_{k+1}) - f_j(t_k)|}{2\ell\,(\max_k f_j - \min_k f_j)},
# \qquad RI = \frac{\operatorname{std}_j(TV_j)}{\operatorname{mean}_j(TV_j)}.$$
#
# A monotone slice has $TV_j = 1/(2\ell)$ whatever its shape, so $RI = 0$ when every slice
# is monotone and grows as slices start to wiggle differently in different directions. The
# paper's defaults are $M = 100$, $m + 1 = 11$, $\ell = 0.1$, used here. `roughness_index`
# also gives a percentile bootstrap interval over the directions (`ci`).
#
# Their observation, on neural-network solvers of PDEs: **along the gradient-descent path
# the RI first increases, then decreases**. Here we check it on a classifier: a ReLU MLP
# (64-64-64-10) trained on the digits by full-batch gradient descent with momentum.

# %%
import numpy as np
import torch

import lossviz as lv
from lossviz.data import digits, mlp, train

x, y = digits()
model = mlp((64, 64, 64, 10), seed=0)
snaps = train(model, (x, y), steps=400, lr=0.1, momentum=0.9, batch_size=None, every=10)
steps = [0, 10, 20, 30, 60, 120, 240, 400]
checkpoints = {s: snaps[s // 10] for s in steps}  # snaps[40] is the final state
obj = lv.Objective(model, torch.nn.functional.cross_entropy, (x, y))
losses = [obj.loss(checkpoints[s]) for s in steps]
print("loss along training:", np.round(losses, 4).tolist())

# %%
along = lv.roughness_along(
    obj, checkpoints, n_directions=100, n_points=11, radius=0.1, n_bootstrap=1000, progress=False
)
along

# %%
along.plot()

# %% [markdown]
# The slices behind one number. At the start most slices are monotone ($TV = 1/(2\ell) =
# 5$). At the peak about half of them already bend into a valley (a valley with its bottom
# in the middle has $TV = 1/\ell = 10$) while the others are still monotone: the TVs differ
# most. At the end every slice is a valley and the TVs are alike again.

# %%
ri, ci = along.values, along.ci
peak = int(np.nanargmax(ri))
along.results[peak].plot()

# %%
print("RI:", np.round(ri, 3).tolist())
print("95% bootstrap intervals:", np.round(ci, 3).tolist())
print(f"peak at step {steps[peak]}: RI {ri[peak]:.3f}; start {ri[0]:.3f}; end {ri[-1]:.3f}")
# increasing then decreasing: the peak is neither at the start nor at the end ...
assert 0 < peak < len(steps) - 1, ri
# ... the rise is more than the bootstrap noise: the intervals do not overlap ...
assert ri[peak] > 1.3 * ri[0] and ci[peak, 0] > ci[0, 1], (ri, ci)
# ... and so is the fall, which halves the index at least
assert ri[-1] < 0.5 * ri[peak] and ci[-1, 1] < ci[peak, 0], (ri, ci)
# the mechanism: monotone slices at the start, a mix at the peak, valleys at the end
bent = [float(np.mean(r.tv[~r.flat] > 5 + 1e-6)) for r in along.results]
print("share of slices that are not monotone:", np.round(bent, 2).tolist())
assert bent[0] < 0.3 and 0.3 < bent[peak] < 0.8 and np.all(along.results[-1].tv > 7), bent
# the loss itself decreases all along: the roughness is not a rescaled loss curve
assert all(b < a for a, b in zip(losses, losses[1:])), losses

# %% [markdown]
# **What we did not reproduce.** The paper's models are PDE solvers; on this classifier the
# pattern holds for full-batch gradient descent (seeds 0, 1, 2 give peaks of 0.23 at steps
# 10–30 and end values 0.03–0.05). With mini-batch SGD (batch 128) on a narrower 64-32-10
# network the RI rises to about 0.2 within 25 steps and then stays there, without the
# decrease.
