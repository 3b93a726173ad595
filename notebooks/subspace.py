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
# # Watching training live: the gradient subspace and the edge of stability
# Two observations about how gradient descent moves through a loss landscape, both measured
# here while a small MLP learns the digits, with a `SubspaceTracker` and its live dashboard.
#
# **Gradient descent happens in a tiny subspace** (Gur-Ari, Roberts & Dyer, 2018). Take the
# top-k eigenvectors `V_k` of the Hessian, k = the number of classes. After a short initial
# phase, most of the gradient lies in their span: the fraction `‖V_kᵀg‖² / ‖g‖²` is close
# to 1 (top panel), although k = 10 is tiny next to the 8,970 parameters. The subspace also
# changes slowly: the overlap `‖V_iᵀV_j‖²_F / k` between the subspaces of two refreshes
# (heatmap; 1 = same span, 0 = orthogonal) stays high once training settles.
#
# **The edge of stability** (Cohen, Kaur, Li, Kolter & Talwalkar, 2021). On a quadratic with
# top curvature λ_max, gradient descent with step size lr converges only if
# `λ_max < 2/lr`. Neural networks sharpen while they train (λ_max rises) until λ_max
# reaches 2/lr; then it hovers there (`λ_max·lr/2 ≈ 1`) while the loss keeps going down,
# non-monotonically. Below, lr starts at 0.4 (2/lr = 5, under λ_max at initialization, so
# λ_max first drops to the threshold) and is halved at step 500: 2/lr doubles to 10, and
# λ_max climbs after it. (Cohen et al. use full-batch gradient descent; with these large
# batches of 256 the same picture shows, a little noisier.)

# %%
import os

import numpy as np
import torch
from torch import nn

from lossviz import SubspaceTracker, dash
from lossviz.data import digits, mlp

torch.manual_seed(0)
x, y = digits()
targets = nn.functional.one_hot(y, 10).float()


def half_sse(out, target):
    """½·‖f(x) − y‖² averaged over samples (the MSE scaling of Cohen et al.)."""
    return 0.5 * (out - target).pow(2).sum(1).mean()


# the run's length (LOSSVIZ_SUBSPACE_STEPS: the browser test uses a shorter run); lr is
# halved after the first third
STEPS = int(os.environ.get("LOSSVIZ_SUBSPACE_STEPS", "1500"))
HALVE_AT = STEPS // 3
model = mlp((64, 64, 64, 10), nn.Tanh, seed=0)
opt = torch.optim.SGD(model.parameters(), lr=0.4)
schedule = torch.optim.lr_scheduler.MultiStepLR(opt, milestones=[HALVE_AT], gamma=0.5)
tracker = SubspaceTracker(
    model,
    half_sse,
    k=10,
    every=10,
    optimizer=opt,
    track=("gradient_fraction", "overlap", "lambda_max"),
)

# %% [markdown]
# Display the dashboard first; the training loop in the next cell fills it in live (it
# redraws at most every 0.3 s: the only time it reads numbers back from the device).
#
# Call `tracker.step(batch)` once per training step, **before `optimizer.step()`** (and
# before the scheduler steps). Record `t` then measures the weights θ_t that step `t` starts
# from, on that step's batch b_t: the gradient fraction is the share of
# g_t = ∇L_{b_t}(θ_t), exactly the gradient the optimizer is about to apply. At a refresh
# (every `every` steps) the top-k eigenvectors are those of the Hessian of b_t at θ_t,
# computed first; `lr` is the rate step `t` uses.

# %%
d = dash.subspace(tracker, total=STEPS + 1)
d

# %%
gen = torch.Generator().manual_seed(0)
for _ in range(STEPS + 1):
    idx = torch.randint(0, len(y), (256,), generator=gen)
    batch = (x[idx], targets[idx])
    opt.zero_grad()
    loss = half_sse(model(batch[0]), batch[1])
    tracker.step(batch, loss=loss)  # θ_t on the batch of step t, before the update
    loss.backward()
    opt.step()
    schedule.step()

# %% [markdown]
# Now move the sliders: **smooth** averages the noisy mini-batch fraction over more steps,
# **steps** zooms on a range (e.g. the first 100 steps, where the fraction climbs and the
# subspace still turns). The loop can also run in a background thread
# (`threading.Thread(target=train).start()`); the dashboard is the same. `tracker.history`
# holds every number shown.

# %%
d.update()
h = tracker.history
frac = np.array([r["gradient_fraction"] for r in h])
ref = [r for r in h if r["refreshed"]]
lam = {r["step"]: r["lambda_max"] for r in ref}
# the dashboard shows the tracker's numbers
assert d.fig.data[0].x == tuple(range(STEPS + 1))
np.testing.assert_array_equal(np.array(d.fig.data[0].y, dtype=float), frac)
assert list(d.fig.data[3].y) == [r["lambda_max"] for r in ref]
steps, M = tracker.overlap_matrix()
np.testing.assert_array_equal(np.array(d.heat.data[0].z, dtype=float), M)
# the papers' effects below need the whole run (a shorter one, LOSSVIZ_SUBSPACE_STEPS,
# only checks the dashboard); with the default 1,500 steps the windows are steps 100-1500,
# 200-500 (lr 0.4) and 1000-1500 (lr 0.2)
settled = frac[STEPS // 15 :].mean()
early = np.median([lam[s] * 0.4 / 2 for s in lam if 0.4 * HALVE_AT <= s < HALVE_AT])
late = np.median([lam[s] * 0.2 / 2 for s in lam if s >= 2 * HALVE_AT])
if STEPS >= 1500:
    # Gur-Ari et al.: after the first steps most of the gradient is in the top-10 subspace
    assert settled > 0.8
    # Cohen et al.: λ_max settles at 2/lr, and follows it when lr is halved
    assert 0.85 < early < 1.4 and 0.85 < late < 1.4
    assert lam[STEPS] > 1.4 * lam[HALVE_AT]
print(f"mean gradient fraction, steps {STEPS // 15}-{STEPS}: {settled:.3f}")
print(f"median λ_max·lr/2: {early:.2f} (lr 0.4), {late:.2f} (lr 0.2)")
