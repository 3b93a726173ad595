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
# # The Hessian spectrum over training: a bulk and a few outliers
# The Hessian of a trained classifier has a characteristic spectrum: almost all of its
# eigenvalues sit in a **bulk** near zero, and a handful of large **outliers** stand apart
# from it, about as many as there are classes (Sagun et al. 2017). Ghorbani, Krishnan and
# Xiao (2019) measured the whole density of large networks with stochastic Lanczos
# quadrature (SLQ) and saw the outliers appear early in training; Papyan (2019, 2020)
# traced them to the Gauss-Newton part of the Hessian, to the class means of the
# per-example gradients.
#
# Here: an MLP trained on the digits (10 classes, 2,410 parameters), with checkpoints kept
# along the way, explored with `dash.spectrum`.

# %%
import numpy as np
import torch

import lossviz as lv
from lossviz import dash
from lossviz.data import digits, mlp, train

x, y = digits()
model = mlp((64, 32, 10), seed=0)
snaps = train(model, (x, y), steps=400, lr=0.1, every=10, seed=0)  # one every 10 steps
checkpoints = {s: snaps[s // 10] for s in (0, 10, 20, 50, 100, 200, 400)}
obj = lv.Objective(model, torch.nn.functional.cross_entropy, (x, y))
print(obj, f"loss at step 0: {obj.loss(at=checkpoints[0]):.3f}, at 400: {obj.loss():.3f}")

# %% [markdown]
# ## The explorer
# For every checkpoint a background thread computes the SLQ density
# (`lv.hessian_density`: 10 random probes × 60 Lanczos steps), the top 10 eigenvalues
# (`lv.hessian_eigs`, red dotted markers) and, per layer, the top eigenvalue and the trace
# of its diagonal block (`lv.hessian_blocks`). The shown checkpoint comes first; the
# others follow and are then shown instantly.
#
# - **σ / range** smooths the curve: SLQ gives each probe a Gauss quadrature, a few
#   *nodes* (Ritz values) with *weights*, and the curve is a sum of Gaussians of width σ
#   on them. Moving the slider only re-smooths the stored nodes. At a small σ the bulk
#   breaks into spikes: those are quadrature nodes, not eigenvalues. The outliers stay
#   sharp, because they *are* eigenvalues: every probe finds them (that is how
#   `density.outliers()` tells them apart, orange triangles).
# - **log / linear**: an outlier is one eigenvalue out of 2,410, a mass of 1/2,410.
#   On a linear axis only the bulk is visible; on the log axis the outliers appear.
# - **checkpoint**: the spectrum along training, with λ_max per checkpoint on the right.

# %%
d = dash.spectrum(obj, checkpoints, n_probes=10, steps=60, k=10)
d

# %% [markdown]
# ## What the dashboard shows is what the kernels compute
# (This cell waits for the background work.) The curve on screen is the kernel's density
# smoothed at the shown σ, the markers are the Lanczos eigenvalues, the table rows are the
# blocks kernel's.

# %%
d.wait()
assert d.errors == []
shown = d.point
at = checkpoints[0]
dens = lv.hessian_density(obj, n_probes=10, steps=60, at=at, seed=0)
top = lv.hessian_eigs(obj, k=10, at=at, seed=0)
xs, ys = d.curve()
assert np.array_equal(d.fig.data[0].y, ys)
# equal to float32 rounding (the first products on an Objective also time the methods)
assert np.allclose(ys, dens.smooth(xs, d.sigma)[1], rtol=1e-4, atol=1e-9 * ys.max())
assert np.allclose(d.fig.data[2].x, top.values, rtol=1e-5)
assert np.allclose(d.fig.data[3].x, dens.outliers(), rtol=1e-4)
print(
    f"{shown.label}: λ_max {top.values[0]:.4f}, {len(dens.outliers())} outliers, σ = {d.sigma:.4g}"
)

# %% [markdown]
# ## Over training
# λ_max grows fast in the first 50 steps (the loss drops from 2.3 to 0.25 while the
# network becomes sharper), then relaxes. The outliers appear as the classes are learned
# and settle at about one per class, while the negative eigenvalues of the untrained
# network shrink towards zero: the bulk becomes a narrow spike at 0.

# %%
rows = []
for p in d.points:
    rows.append(
        (
            p.label,
            p.eigs.values[0],
            len(p.outliers()),
            p.density.nodes.min(),
            [r["λ1"] for r in p.blocks.table],
        )
    )
    print(
        f"{p.label:>9}: λ_max {rows[-1][1]:7.3f}   outliers {rows[-1][2]:2d}   "
        f"most negative Ritz value {rows[-1][3]:7.3f}   λ_max per layer "
        + ", ".join(f"{v:.3f}" for v in rows[-1][4])
    )
lmax = np.array([r[1] for r in rows])
n_out = [r[2] for r in rows]
neg = np.array([r[3] for r in rows])
assert lmax.max() > 3 * lmax[0] and lmax[-1] < 0.8 * lmax.max()  # sharpening, then not
assert n_out[-1] >= 8 and n_out[-1] > n_out[0]  # about one per class
assert abs(neg[-1]) < 0.2 * abs(neg[0])  # negative part shrinks
np.testing.assert_allclose(d.lmax_fig.data[0].y, lmax)  # the λ_max plot
print("all checks passed")
