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
# # Mode-connecting curves
# Two MLPs trained on the digits from different seeds are separated by a loss barrier on
# the straight line between them. Garipov et al. 2018 ("Loss Surfaces, Mode Connectivity,
# and Fast Ensembling of DNNs") showed that such minima are nonetheless joined by simple
# curves of low loss. `lossviz.connect` trains one: a quadratic Bezier curve
# `φ(t) = (1-t)²·θA + 2t(1-t)·w + t²·θB` whose bend `w` minimises the expected loss
# `E_t L(φ(t))`, `t ~ U(0, 1)`, with the endpoints fixed.

# %%
import numpy as np
import torch

import lossviz as lv
from lossviz.data import digits, mlp, train

x, y = digits()
a, b = mlp(seed=0), mlp(seed=1)
train(a, (x, y), steps=300, seed=0)
train(b, (x, y), steps=300, seed=1)
obj = lv.Objective(a, torch.nn.functional.cross_entropy, (x, y))

# %% [markdown]
# The straight line first: a barrier of about 0.5 above the endpoints' losses.

# %%
line = lv.interpolate(obj, a, b, n=25, progress=False)
print(f"straight-line barrier: {line.barrier('loss'):.3f}")
assert line.barrier("loss") > 0.3

# %% [markdown]
# Now the curve: 500 SGD steps (momentum 0.9), each at a random `t` on the full data.
# The result holds the loss and accuracy along the curve and, at the same `t`, along the
# straight line.

# %%
curve = lv.connect(obj, a, b, curve="bezier", bends=1, steps=500, lr=0.1, progress=False)
curve

# %%
curve.plot()

# %% [markdown]
# The curve's highest loss is close to the endpoints', while the line's is far above
# them. Every value is the Objective's loss at the curve's point: check the worst one.

# %%
ends = max(curve["loss"][0], curve["loss"][-1])
worst = curve.max("loss")
on_line = curve.max("loss", path="line")
print(f"endpoints {ends:.4f}, worst on the curve {worst:.4f}, on the line {on_line:.4f}")
assert worst - ends < 0.1 * line.barrier("loss")
assert curve.barrier("loss") < 0.1 * curve.barrier("loss", path="line")
t_worst = curve.ts[int(np.argmax(curve["loss"]))]
assert abs(obj.loss(curve.point(t_worst)) - worst) < 1e-5 * max(1.0, worst)
# the endpoints are the models themselves, bit for bit
assert all(torch.equal(curve.point(0.0)[k], a.state_dict()[k]) for k in curve.a)

# %% [markdown]
# ## The plane through A, B and the bend
# As in Garipov et al.'s `plane.py`: Gram–Schmidt with A as the origin. With one bend the
# whole curve lies in this plane; the surface shows the valley it follows round the
# barrier of the straight line.

# %%
s = curve.surface(n=(21, 21), progress=False)
assert np.allclose(s.paths["curve"], curve.coords())
s.plot()

# %% [markdown]
# How the training went: the loss of every step, each at its own random `t`.

# %%
curve.plot_training()

# %% [markdown]
# ## On the interpolation dashboard
# `curve.dashboard()` opens the straight-path dashboard between the same endpoints, on the
# same `t` grid, with the curve's own numbers drawn next to the line (red, dotted) and its
# barrier in the readout.

# %%
d = curve.dashboard()
d.wait()
drawn = next(t for t in d.fig.data if t.name == "loss on the bezier curve")
assert list(drawn.y) == list(curve["loss"]) and list(drawn.x) == list(curve.ts)
d
