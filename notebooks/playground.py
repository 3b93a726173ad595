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
# # Optimization playground
# Optimizers from `torch.optim` (and SAM) on 2-D test functions, the edge of stability, and
# a Muon-style orthogonalized update. Also served as a page: `voila notebooks/playground.ipynb`.

# %%
from lossviz import teach

p = teach.playground()
p
