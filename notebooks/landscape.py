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
# # The loss landscape around a trained network, and the path that led there
#
# A network has thousands of weights, so its loss `L(θ)` cannot be drawn; a *slice* can:
# `f(a, b) = L(θ + a·d1 + b·d2)` on a grid of `(a, b)`, for two directions `d1`, `d2`
# (Li et al. 2018, "Visualizing the Loss Landscape of Neural Nets"). Which directions
# matters:
#
# - **random** directions (filter-normalized, so that every filter moves in proportion to
#   its own size) show the typical shape around θ, but in thousands of dimensions a random
#   plane is almost orthogonal to where training went: the trajectory projects onto a dot;
# - the **PCA** of the checkpoints saved during training: the path of SGD is nearly
#   two-dimensional, so the first two principal directions hold most of its variance and
#   the plane through them shows the whole descent, from the initialization to the
#   trained model at the origin;
# - the top **Hessian eigenvectors**: the steepest curvature around θ.
#
# `dash.landscape` computes the surface in the background (coarse grid first, refined
# while you watch), draws the trajectory on it, and, when you click a point, the 1-D
# slices through it and the sharpness `λ_max` there.

# %%
import torch

import lossviz as lv
from lossviz import Objective, dash
from lossviz.data import digits, mlp

x, y = digits()
model = mlp((64, 32, 10), seed=0)
recorder = lv.TrajectoryRecorder(model, every=5)  # snapshots on the host, thinned
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
with torch.no_grad():
    acc = (model(x).argmax(1) == y).float().mean().item()
print(recorder, f"loss {obj.loss():.4f}, accuracy {acc:.3f}")
assert acc > 0.95

# %% [markdown]
# How two-dimensional is the path? The explained variance of its first two principal
# directions:

# %%
pca = lv.pca_directions(recorder.checkpoints, 2)
print(pca)
assert pca.explained_variance_ratio.sum() > 0.8

# %% [markdown]
# The dashboard, in the PCA plane with the trajectory (white, from *start* to *end*).
# Change the direction picker, the resolution (keys or drag), the span, the kind of plot;
# click on the map.

# %%
d = dash.landscape(obj, directions="pca", trajectory=recorder, n=31)
d

# %% [markdown]
# What it shows is `lossviz.surface` on these directions, and the path ends at the origin:
# the PCA plane is centred on the last checkpoint, the trained model.

# %%
d.wait()
s = d.surface
ref = lv.surface(obj, None, pca, n=31, progress=False)
assert abs(s.loss - ref.loss).max() < 1e-5
end = s.paths["trajectory"][-1]
assert abs(end).max() < 1e-3
print(f"loss on the grid: {s.loss.min():.4f} … {s.loss.max():.3f}")

# %% [markdown]
# Inspect the trained model (the origin) and the start of the path: the panel on the right
# shows the 1-D slices through the point along PC1 and PC2, the loss there and `λ_max`,
# the largest Hessian eigenvalue. Two things to see:
#
# - the start of the drawn path is the *projection* of the initialization onto the plane:
#   the plane holds most of the path, not all of it, so the loss there differs from the
#   loss of the initialization itself;
# - training made the network *sharper*: `λ_max` grew along the way (progressive
#   sharpening, Cohen et al. 2021), but stayed below the stability limit of SGD with
#   momentum `β` and step `η`, `λ_max < 2(1+β)/η` (here 38).

# %%
start = [float(v) for v in s.paths["trajectory"][0]]
d.inspect(*start)
d.wait()
at_start = d.inspection
d.inspect(0.0, 0.0)
d.wait()
at_end = d.inspection
init = obj.loss(at=recorder.checkpoints[0])
print(
    f"start of the path: loss {at_start['values']['loss']:.4f} (the initialization "
    f"itself: {init:.4f}), λ_max {at_start['lambda_max']:.4g}"
)
print(
    f"trained model:     loss {at_end['values']['loss']:.4f}, λ_max "
    f"{at_end['lambda_max']:.4g}, stable below {2 * (1 + 0.9) / 0.1:.0f}"
)
assert abs(at_end["values"]["loss"] - obj.loss()) < 1e-5
assert abs(at_end["lambda_max"] - lv.hessian_eigs(obj, k=1).values[0]) < 1e-6
assert at_start["values"]["loss"] > 10 * at_end["values"]["loss"]
assert at_start["lambda_max"] < at_end["lambda_max"] < 2 * (1 + 0.9) / 0.1

# %% [markdown]
# The surface in the notebook stays live: pick *Hessian eigenvectors* to see the two
# directions of steepest curvature at the trained model (the span is set so that the
# quadratic model `½·λ1·h²` rises by 4 at the edge), or *random* directions and a seed.
# Any surface computed by `lossviz.surface` opens the same way: `surface.dashboard()`.
