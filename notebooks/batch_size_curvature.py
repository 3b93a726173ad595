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
# # Mini-batch curvature and the learning rate–batch size rule
# **The paper.** Granziol, Zohren and Roberts (2022), "Learning Rates as a Function of
# Batch Size: A Random Matrix Theory Approach to Neural Network Training" (JMLR 23).
#
# **The claim.** The Hessian of a mini-batch of B samples is the full-data Hessian plus a
# random-matrix perturbation whose size shrinks as the batch grows (its variance scales
# like `1/B − 1/N` for B samples drawn without replacement from N). The perturbation
# pushes the top eigenvalue up, so the sharpness of the batch Hessian, `λ_max(B)`, is
# larger for small batches and falls with B towards the full-data value.
#
# **The implied rule.** A gradient step on the batch loss is stable along the top
# eigenvector only if `η < 2/λ_max(B)`. So the largest usable learning rate grows with the
# batch size: about linearly while the noise term dominates `λ_max(B)` (small B: the
# "linear scaling rule" of SGD), and it saturates at `2/λ_max(full)` once the batch is
# large enough for the noise to be negligible.
#
# Here: a tanh MLP 64-32-10 (2,410 parameters) trained on 80 % of the digits (400 SGD
# steps, `lossviz.data.train`), then, for each batch size, `λ_max` of the Hessian of 12
# random batches drawn without replacement (`lv.hessian_eigs` on an `Objective` holding
# that batch).

# %%
import numpy as np
import plotly.graph_objects as go
import torch
from torch import nn

import lossviz as lv
from lossviz.data import digits, mlp, train

(x, y), _ = digits(split=0.2, seed=0)
ce = nn.functional.cross_entropy
model = mlp((64, 32, 10), nn.Tanh, seed=0)
train(model, (x, y), steps=400, lr=0.1, seed=0)
full = lv.hessian_eigs(lv.Objective(model, ce, (x, y)), k=1, tol=1e-4)
lam_full = float(full.values[0])
print(f"{len(y)} training samples; λ_max of the full-data Hessian {lam_full:.3f}")

# %%
SIZES = (16, 32, 64, 128, 256, 512, 1024)
REPEATS = 12
gen = torch.Generator().manual_seed(0)
lam = {}
for B in SIZES:
    vals = []
    for r in range(REPEATS):
        idx = torch.randperm(len(y), generator=gen)[:B]
        batch_obj = lv.Objective(model, ce, (x[idx], y[idx]))
        vals.append(float(lv.hessian_eigs(batch_obj, k=1, tol=1e-3, seed=r).values[0]))
    lam[B] = np.array(vals)
    m, se = lam[B].mean(), lam[B].std(ddof=1) / np.sqrt(REPEATS)
    print(f"B = {B:4d}: λ_max {m:.3f} ± {se:.3f} (range {lam[B].min():.2f}–{lam[B].max():.2f})")

# %%
mean = np.array([lam[B].mean() for B in SIZES])
se = np.array([lam[B].std(ddof=1) / np.sqrt(REPEATS) for B in SIZES])
fig = go.Figure()
for B in SIZES:
    fig.add_trace(
        go.Scatter(
            x=[B] * REPEATS,
            y=lam[B],
            mode="markers",
            marker=dict(color="lightgray", size=5),
            showlegend=False,
        )
    )
fig.add_trace(
    go.Scatter(
        x=list(SIZES),
        y=mean,
        error_y=dict(type="data", array=2 * se),
        mode="lines+markers",
        name="mean over batches (± 2 s.e.)",
    )
)
fig.add_hline(y=lam_full, line_dash="dash", annotation_text=f"full data: {lam_full:.2f}")
fig.update_layout(
    title="sharpness of the mini-batch Hessian",
    xaxis_type="log",
    xaxis_title="batch size B",
    yaxis_title="λ_max of the batch Hessian",
    template="plotly_white",
)
fig

# %% [markdown]
# ## The learning rate each batch size allows
# `η_max(B) = 2/λ_max(B)`, against the linear-scaling line through the smallest batch.
# It rises with B, more slowly than linearly, and levels off at the full-data threshold:
# past a few hundred samples a larger batch does not allow a larger step.

# %%
eta = 2 / mean
fig = go.Figure(go.Scatter(x=list(SIZES), y=eta, mode="lines+markers", name="2 / λ_max(B)"))
fig.add_trace(
    go.Scatter(
        x=list(SIZES),
        y=eta[0] * np.array(SIZES) / SIZES[0],
        mode="lines",
        name="∝ B",
        line_dash="dot",
    )
)
fig.add_hline(y=2 / lam_full, line_dash="dash", annotation_text="2 / λ_max(full)")
fig.update_layout(
    xaxis_type="log",
    yaxis_type="log",
    xaxis_title="batch size B",
    yaxis_title="largest stable learning rate",
    template="plotly_white",
)
fig

# %%
# small batches are much sharper than the full data ...
assert mean[0] > 1.8 * lam_full, (mean[0], lam_full)
# ... λ_max(B) falls with B (never rising by more than the noise; 16 > 64 > 256) ...
assert np.all(np.diff(mean) < 2 * np.hypot(se[1:], se[:-1])), mean
assert mean[0] > mean[2] > mean[4] and mean[4] < 1.3 * lam_full
# ... towards the full-data value
assert abs(mean[-1] / lam_full - 1) < 0.1
# the implied step size grows with B and levels off at 2/λ_max(full)
assert eta[-1] > 2 * eta[0] and abs(eta[-1] * lam_full / 2 - 1) < 0.1
print(
    f"λ_max: B=16 {mean[0]:.2f}, B=256 {mean[4]:.2f}, B=1024 {mean[-1]:.2f}, full {lam_full:.2f};"
    f" η_max(1024)/η_max(16) = {eta[-1] / eta[0]:.2f} (batch ratio 64)"
)
