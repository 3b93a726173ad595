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
# # Vanishing variance: what averaging does to weights and to activations
#
# Average the weights of $k$ networks, $\bar\theta = \frac1k\sum_i \theta_i$. If the
# networks were trained independently, their hidden units are in unrelated orders and the
# entries of $W_i$ are (nearly) uncorrelated, so the variance of the averaged weights is
# divided by about $k$:
# $\operatorname{Var}(\bar W) \approx \operatorname{Var}(W)/k$ — the "vanishing variance"
# of Tian, Al-Ars, Kitsak & Hofstee 2024 (*Vanishing Variance Problem in Fully
# Decentralized Neural-Network Systems*), who compare it with the Xavier target
# $2/(\text{fan}_\text{in} + \text{fan}_\text{out})$.
#
# What the network computes suffers more. Jordan, Sedghi, Saukh, Entezari & Neyshabur
# (2022, ICLR 2023, *REPAIR: REnormalizing Permuted Activations for Interpolation Repair*)
# call it **variance collapse**: in an averaged (interpolated) network the activations of
# each layer vary less over the data than in the endpoints, and the loss compounds layer
# after layer: each layer receives inputs that already vary less and multiplies them by
# weights that are smaller, so the output variance falls far faster than $1/k$.
#
# `averaging_variance(points, obj=obj)` measures both. For a layer with output
# $a_u(x)$, units $u = 1..C$:
#
# $$v(\theta) = \frac1C \sum_u \operatorname{Var}_x[a_u(x;\theta)], \qquad
# \text{ratio} = \frac{v(\bar\theta)}{\frac1k\sum_i v(\theta_i)}$$
#
# (population variance over all the data; the row `(output)` is the logits). A ratio of
# 1 means no collapse. Two ways to prevent it: **align** the networks first (Git Re-Basin
# weight matching puts their units in the same order), or average networks that share a
# **parent** (fine-tunes of one pre-trained model).

# %%
import copy

import torch

import lossviz as lv
from lossviz.alignment import weight_matching
from lossviz.data import digits, mlp, train
from lossviz.landscape import evaluate
from lossviz.merging import averaging_variance, merge

x, y = digits()
sizes = (64, 128, 128, 128, 10)  # three hidden ReLU layers: depth makes the collapse visible
K = 4
nets = []
for s in range(K):
    m = mlp(sizes, seed=s)
    train(m, (x, y), steps=300, seed=s)
    nets.append(m)
obj = lv.Objective(nets[0], torch.nn.functional.cross_entropy, (x, y))


def accuracy(point):
    return float(evaluate(obj, [point], metrics=("accuracy",), progress=False)["accuracy"][0])


# %% [markdown]
# ## Independent networks: $1/k$ for the weights, far less for the outputs

# %%
two = averaging_variance(nets[:2], obj=obj)
four = averaging_variance(nets, obj=obj)
four

# %%
four.plot("activations")

# %%
four.plot()

# %% [markdown]
# Every weight matrix keeps about $1/k$ of its variance, while the activation ratio falls
# layer by layer, and the output variance is a small fraction of $1/k$. The averaged
# network has lost its function:

# %%
print(
    f"accuracy: models {[round(accuracy(n), 3) for n in nets]}, "
    f"average of 2 {accuracy(merge(nets[:2])):.3f}, of {K} {accuracy(merge(nets)):.3f}"
)
print(f"output variance ratio: k=2 {two.output['ratio']:.3g}, k={K} {four.output['ratio']:.3g}")

# %%
for t in (two, four):
    k = t.k
    # the weights: about 1/k in every layer
    for r in t.rows:
        assert 0.8 / k < r["ratio"] < 1.25 / k, r
    # the activations: below 1/k after the first layer and falling with depth
    ratios = [r["ratio"] for r in t.activations]
    assert all(b < a for a, b in zip(ratios[:-2], ratios[1:-1])), ratios
    assert all(r < 1 / k for r in ratios[1:]), ratios
    # the output variance collapses far faster than 1/k
    assert t.output["ratio"] < 0.1 / k, t.output
# doubling k divides the output variance by much more than 2
assert four.output["ratio"] < 0.25 * two.output["ratio"], (two.output, four.output)

# %% [markdown]
# ## Aligned networks: weight matching keeps most of the variance
#
# `weight_matching(a, b)` permutes the hidden units of `b` to match `a` (the function of
# `b` is unchanged; lossviz checks it). Averaging the aligned networks:

# %%
aligned = [nets[0].state_dict()] + [weight_matching(nets[0], n) for n in nets[1:]]
al = averaging_variance(aligned, obj=obj)
al

# %%
print(
    f"output variance ratio: aligned {al.output['ratio']:.3g} vs independent "
    f"{four.output['ratio']:.3g}; accuracy of the aligned average {accuracy(merge(aligned)):.3f}"
)
# alignment prevents most of the collapse: the output keeps a large share of its variance,
# hundreds of times what the unaligned average keeps ...
assert al.output["ratio"] > 0.15 and al.output["ratio"] > 100 * four.output["ratio"]
# ... but not all of it: the weights are still not identical (REPAIR rescales the units
# to recover the rest; `lossviz.alignment.reset_bn(..., repair=True)`)
assert al.output["ratio"] < 0.9

# %% [markdown]
# ## Networks with one parent: no collapse
#
# Four fine-tunes (different mini-batch seeds) of one parent stay in its basin: the
# averaged weights are almost the same as each of them, and nothing collapses.

# %%
parent = mlp(sizes, seed=0)
train(parent, (x, y), steps=150, seed=0)
tunes = []
for s in range(K):
    m = copy.deepcopy(parent)
    train(m, (x, y), steps=100, seed=10 + s)
    tunes.append(m)
shared = averaging_variance(tunes, obj=obj)
shared

# %%
print(f"accuracy of the average of the fine-tunes: {accuracy(merge(tunes)):.3f}")
for r in shared.rows + shared.activations:
    assert 0.9 < r["ratio"] < 1.1, r
