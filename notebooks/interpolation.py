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
# # Scrubbing the path between two networks
# Two MLPs trained on the digits from different seeds. `lossviz.interpolate` computes the
# loss and accuracy along the straight path between them; its `.dashboard()` is a view of
# that very result (`dash.interpolation(obj, a, b)` builds the same): the curve, the barrier,
# what the network predicts at α, and a per-layer mixer with the layer-wise barriers. Every
# number on it is what the kernels (`interpolate`, `layerwise_barriers`, `evaluate`) return.

# %%
import torch

from lossviz import Objective
from lossviz.connectivity import interpolate
from lossviz.data import digits, mlp, train

x, y = digits()
a, b = mlp(seed=0), mlp(seed=1)
train(a, (x, y), steps=150, seed=0)
train(b, (x, y), steps=150, seed=1)
obj = Objective(a, torch.nn.functional.cross_entropy, (x, y))

# %%
path = interpolate(obj, a, b, n=25, progress=False)
path

# %%
d = path.dashboard()
d

# %% [markdown]
# The curve on the dashboard is the PathResult's, and the layer bars are
# `layerwise_barriers` with base A (Adilova et al. 2024): the model with one layer
# averaged, minus the mean of the endpoint losses.

# %%
from lossviz.connectivity import layerwise_barriers  # noqa: E402

d.wait()
assert d.path is path and list(d.fig.data[0].y) == list(path["loss"])
lw = layerwise_barriers(obj, a, b, groups=d.groups, base="A", progress=False)
assert d.mixer.barriers == [lw.barriers["A"][g] for g in d.groups]
print(f"barrier {path.barrier('loss'):.4g}; layer-wise (base A): {d.mixer.barriers}")
