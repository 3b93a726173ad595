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
# # Git Re-Basin: the barrier between two networks is (mostly) a permutation
# **The paper.** Ainsworth, Hayase and Srinivasa (2023), "Git Re-Basin: Merging Models
# modulo Permutation Symmetries" (ICLR 2023); the conjecture of Entezari, Sedghi, Saukh and
# Neyshabur (2022); linear mode connectivity of Frankle, Dziugaite, Roy and Carbin (2020).
#
# **The definitions.** On the straight line `θ(α) = (1 − α)·θ_A + α·θ_B` the loss barrier is
# `max_α L(θ(α)) − ((1 − α)·L(θ_A) + α·L(θ_B))` (the height of the path above the chord;
# `kind="mean"` uses `max_α L(θ(α)) − ½(L(θ_A) + L(θ_B))`). Two networks are *linearly
# mode connected* when it is about zero. Permuting the hidden units of a layer (rows of
# its weight and bias, columns of the next weight) gives a different point that computes
# exactly the same function. **Weight matching** chooses, layer by layer, the permutation
# of B's units that maximizes `Σ_l ⟨W_l^A, P_l W_l^B P_{l−1}ᵀ⟩` (a linear assignment
# problem per layer, by coordinate descent).
#
# **The claims.**
# 1. Two networks trained from different random seeds are separated by a loss barrier;
# 2. after weight matching B to A, the barrier (almost) disappears: the two solutions were
#    in the same basin modulo permutations;
# 3. two fine-tunes of one parent are linearly connected without any alignment (they
#    share the parent's permutation).
#
# Here: ReLU MLPs 64-64-64-10 on all 1,797 digits (SGD, momentum 0.9, batches of 128,
# 300 steps, `lossviz.data.train`), the loss evaluated on the same data.

# %%
import copy

import numpy as np
import plotly.graph_objects as go
import torch
from torch import nn

import lossviz as lv
from lossviz.data import digits, mlp, train

x, y = digits()
SIZES = (64, 64, 64, 10)


def trained(seed, steps=300):
    m = mlp(SIZES, seed=seed)
    train(m, (x, y), steps=steps, lr=0.1, seed=seed)
    return m


obj = lv.Objective(mlp(SIZES), nn.functional.cross_entropy, (x, y))
a, b = trained(1), trained(2)
b_aligned = lv.weight_matching(a, b)  # b's hidden units permuted towards a
path = lv.interpolate(obj, a, b)
path_aligned = lv.interpolate(obj, a, b_aligned)
path

# %% [markdown]
# The permuted network is the same function (lossviz checks it; here once more on all the
# digits), but a different point in weight space:

# %%
b2 = copy.deepcopy(b)
b2.load_state_dict(dict(b_aligned))
with torch.no_grad():
    same = (b2(x) - b(x)).abs().max().item()
moved = sum((b_aligned[k] - v).abs().sum().item() for k, v in b.state_dict().items())
print(f"max |f_b(x) − f_b_aligned(x)| = {same:.2e}; Σ|θ_b − θ_b_aligned| = {moved:.1f}")
assert same < 1e-4 and moved > 1

# %%
fig = go.Figure()
for name, p in (("A → B", path), ("A → B after weight matching", path_aligned)):
    fig.add_trace(go.Scatter(x=p.alphas, y=p.loss, mode="lines+markers", name=name))
fig.update_layout(
    title="training loss on the line between two networks",
    xaxis_title="α  (θ = (1 − α)·θ_A + α·θ_B)",
    yaxis_title="loss",
    template="plotly_white",
)
fig

# %% [markdown]
# ## Three pairs of seeds, and fine-tunes of one parent
# The fine-tunes: a parent trained 300 steps (seed 0), then two copies trained 100 more
# steps each, on different mini-batch orders (seeds 11 and 12).

# %%
rows = []
for sa, sb in ((1, 2), (3, 4), (5, 6)):
    ma, mb = (a, b) if (sa, sb) == (1, 2) else (trained(sa), trained(sb))
    raw = lv.interpolate(obj, ma, mb)
    al = lv.interpolate(obj, ma, lv.weight_matching(ma, mb))
    rows.append(
        (
            f"seeds {sa}, {sb}",
            raw.barrier("loss"),
            al.barrier("loss"),
            raw.barrier("accuracy"),
            al.barrier("accuracy"),
        )
    )
parent = trained(0)
f1, f2 = copy.deepcopy(parent), copy.deepcopy(parent)
train(f1, (x, y), steps=100, seed=11)
train(f2, (x, y), steps=100, seed=12)
ft = lv.interpolate(obj, f1, f2)
print("pair            loss barrier: raw  aligned   accuracy drop: raw  aligned")
for r in rows:
    print(f"{r[0]:<16}{r[1]:17.4f}{r[2]:9.4f}{r[3]:21.3f}{r[4]:9.3f}")
print(
    f"fine-tunes:     loss barrier {ft.barrier('loss'):.4f} (mean kind "
    f"{ft.barrier('loss', 'mean'):.4f}), accuracy drop {ft.barrier('accuracy'):.4f}"
)

# %%
M = lv.barrier_matrix(
    obj, {"A": a, "B": b, "B aligned": b_aligned, "fine-tune 1": f1, "fine-tune 2": f2}
)
M.plot()

# %%
raw_b = np.array([r[1] for r in rows])
aligned_b = np.array([r[2] for r in rows])
raw_acc, aligned_acc = np.array([r[3] for r in rows]), np.array([r[4] for r in rows])
# 1. independent seeds: a clear barrier (0.4-0.55 in loss, 5-18 % of accuracy lost)
assert np.all(raw_b > 0.25), raw_b
assert np.all(raw_acc > 0.03), raw_acc
# 2. weight matching removes almost all of it
assert np.all(aligned_b < 0.1) and np.all(aligned_b < 0.25 * raw_b), aligned_b
assert np.all(aligned_acc < 0.03) and np.all(aligned_acc < 0.5 * raw_acc), aligned_acc
# 3. fine-tunes of one parent are linearly connected
assert ft.barrier("loss") < 0.01 and ft.barrier("loss", "mean") < 0.01
print(f"mean barrier {raw_b.mean():.3f} -> {aligned_b.mean():.3f} after weight matching")
