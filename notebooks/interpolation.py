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
# Two MLPs trained on the digits from different seeds; `dash.interpolation` shows the loss
# and accuracy along the straight path between them, what the network predicts at α, and a
# per-layer mixer.

# %%
import torch

from lossviz import Objective, dash
from lossviz.data import digits, mlp, train

x, y = digits()
a, b = mlp(seed=0), mlp(seed=1)
train(a, (x, y), steps=150, seed=0)
train(b, (x, y), steps=150, seed=1)
obj = Objective(a, torch.nn.functional.cross_entropy, (x, y))

# %%
d = dash.interpolation(obj, a, b, n=25)
d
