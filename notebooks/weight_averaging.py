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
# # Weight averaging: are the averages in flatter regions?
# Stochastic weight averaging (Izmailov et al. 2018, "Averaging Weights Leads to Wider
# Optima and Better Generalization") claims that the average of the iterates of SGD run
# with a large constant learning rate sits in a flatter region than the iterates
# themselves. Here an MLP on the digits is trained with SGD (600 steps at lr 0.5), then
# run 400 more steps at a largish constant lr 1.0 while a `TrajectoryRecorder` keeps a
# snapshot every 10 steps. `lv.compare_averages` builds SWA (the later half of the
# snapshots), an EMA (β = 0.99 per step) and LAWA (the latest 5 snapshots) from the
# snapshots and measures each one's loss, accuracy, λ_max (Lanczos) and tr(H)
# (Hutchinson) next to the raw last iterate. Four seeds, so that a claim that holds by
# luck on one run is not mistaken for the rule.

# %%
import numpy as np
import torch

import lossviz as lv
from lossviz.data import digits, mlp

F = torch.nn.functional
x, y = digits()


def run(seed: int) -> lv.TrajectoryRecorder:
    """SGD: 600 steps at lr 0.5, then 400 at lr 1.0 recorded every 10 steps."""
    model = mlp((64, 64, 10), seed=seed)
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    g = torch.Generator().manual_seed(seed)

    def step():
        idx = torch.randint(0, len(x), (32,), generator=g)
        opt.zero_grad()
        F.cross_entropy(model(x[idx]), y[idx]).backward()
        opt.step()

    for _ in range(600):
        step()
    for group in opt.param_groups:
        group["lr"] = 1.0
    rec = lv.TrajectoryRecorder(model, every=10)
    for _ in range(400):
        step()
        rec.step()
    rec.snapshot()  # the last iterate
    return rec


results = {}
for seed in range(4):
    rec = run(seed)
    obj = lv.Objective(rec.model, F.cross_entropy, (x, y))
    results[seed] = lv.compare_averages(
        obj, rec, ema_decays=(0.99,), lawa_k=5, sharpness=False, progress=False
    )
results[0]

# %%
results[0].plot()

# %% [markdown]
# What each average weighs: SWA is uniform over the later half, the EMA decays
# geometrically into the past, LAWA is uniform over the latest five snapshots.

# %%
results[0].plot("coefficients")

# %%
names = results[0].names
lam = np.array([r.lambda_max for r in results.values()])
tr = np.array([r.trace for r in results.values()])
loss = np.array([r.loss for r in results.values()])
for i, name in enumerate(names):
    print(
        f"{name:10s} λ_max {np.round(lam[:, i], 3)}  trace {np.round(tr[:, i], 2)}  "
        f"loss {np.round(loss[:, i], 4)}"
    )
last = names.index("last")
for name in ("swa", "ema(0.99)"):
    i = names.index(name)
    # the claim, per seed: a lower λ_max or a lower trace than the last iterate
    flatter = (lam[:, i] < lam[:, last]) | (tr[:, i] < tr[:, last])
    assert flatter.all(), (name, lam[:, i], lam[:, last], tr[:, i], tr[:, last])
    # and on average over the seeds, both measures are lower
    assert lam[:, i].mean() < lam[:, last].mean() and tr[:, i].mean() < tr[:, last].mean()
print("SWA and EMA(0.99) sit in flatter regions than the last iterate on every seed")

# %% [markdown]
# ## Where it fails: SWA from the start of the high-learning-rate phase
# The same comparison with SWA averaging *all* the snapshots of the lr = 1.0 phase
# (`swa_start=0`), including those right after the switch from lr 0.5, while the network
# is still improving quickly.

# %%
early = {}
for seed in range(4):
    rec = run(seed)
    obj = lv.Objective(rec.model, F.cross_entropy, (x, y))
    early[seed] = lv.compare_averages(
        obj,
        rec,
        ema_decays=(),
        lawa_k=None,
        swa_start=0,
        last=False,
        sharpness=False,
        progress=False,
    )
lam0 = np.array([r.lambda_max[0] for r in early.values()])
tr0 = np.array([r.trace[0] for r in early.values()])
loss0 = np.array([r.loss[0] for r in early.values()])
print(f"SWA from step 0: λ_max {np.round(lam0, 3)}  trace {np.round(tr0, 2)}")
print(f"                 loss {np.round(loss0, 4)}")
print(f"last iterate:    λ_max {np.round(lam[:, last], 3)}  trace {np.round(tr[:, last], 2)}")
print(
    f"trace below the last iterate's on {(tr0 < tr[:, last]).sum()} of 4 seeds, "
    f"loss below on {(loss0 < loss[:, last]).sum()} of 4"
)

# %% [markdown]
# **Measured here (2-core CPU, torch 2.x, float32):** SWA over the later half and the EMA
# (β = 0.99) have a lower λ_max and a lower trace than the last iterate on all four seeds
# (λ_max 0.41–0.53 against 0.42–0.81; trace 3.0–4.0 against 3.2–6.3); their loss is lower
# on two seeds and within 10 % of the last iterate's on the other two. Seed 1 is the close
# call: its last iterate is itself flat (λ_max 0.416 against SWA's 0.407, EMA's 0.410),
# which is why the per-seed assertion asks for a lower λ_max *or* trace. SWA over the
# *whole* high-learning-rate phase is not flatter: its trace was above the last iterate's
# on three of the four seeds, and its loss too. The run is not stationary at the start of
# that phase, so a uniform average carries early, worse points; Izmailov et al. average
# over a stationary phase after convergence, which is what `swa_start` (default: the
# later half of the snapshots) selects. The claim holds for averages of a stationary tail,
# not for any uniform average of the iterates.
