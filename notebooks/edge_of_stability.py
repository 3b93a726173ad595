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
# # Gradient descent at the edge of stability
# **The paper.** Cohen, Kaur, Li, Kolter and Talwalkar (2021), "Gradient Descent on Neural
# Networks Typically Occurs at the Edge of Stability" (ICLR 2021).
#
# **The definition.** The sharpness `λ_max` is the largest eigenvalue of the Hessian of the
# training loss. On a quadratic with top curvature λ_max, gradient descent with step size
# η converges only if `λ_max < 2/η`; along the top eigenvector each step multiplies the
# error by `1 − η·λ_max`.
#
# **The claim.** With full-batch gradient descent, networks *sharpen*: λ_max rises during
# training ("progressive sharpening") until it reaches `2/η`, and then hovers just above
# it ("edge of stability") while the loss keeps decreasing, non-monotonically. The level
# follows η: a smaller step size lets λ_max rise higher. With the MSE loss the plateau
# lasts; with cross-entropy λ_max nears `2/η` and then decays, because the loss flattens
# as the margins grow.
#
# Here: a tanh MLP 64-64-64-10 (8,970 parameters) on all 1,797 digits, full-batch gradient
# descent from the same initialisation, the loss `½·‖f(x) − y‖²` averaged over samples
# (Cohen et al.'s scaling) to one-hot targets at η = 0.2 and η = 0.15, and cross-entropy at
# η = 0.5. A `TrajectoryRecorder` keeps the weights every 50 steps; `lv.sharpness_along`
# then measures λ_max at each (Lanczos, warm-started from the previous point).

# %%
import numpy as np
import plotly.graph_objects as go
import torch
from torch import nn

import lossviz as lv
from lossviz.data import digits, mlp

x, y = digits()
onehot = nn.functional.one_hot(y, 10).float()


def half_sse(out, target):
    """½·‖f(x) − y‖² averaged over samples (the MSE scaling of Cohen et al.)."""
    return 0.5 * (out - target).pow(2).sum(1).mean()


def gradient_descent(loss_fn, target, lr, steps, every=50):
    """Full-batch GD from one fixed initialisation; λ_max along the way."""
    model = mlp((64, 64, 64, 10), nn.Tanh, seed=0)
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    rec = lv.TrajectoryRecorder(model, every=every, max_points=1000)
    losses = []
    for _ in range(steps + 1):
        rec.step()  # the weights θ_t before step t (every `every` steps)
        opt.zero_grad()
        loss = loss_fn(model(x), target)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    obj = lv.Objective(model, loss_fn, (x, target))
    timeline = lv.sharpness_along(obj, rec, lr=lr)
    return timeline, np.array(losses)


runs = {
    ("MSE", 0.2): gradient_descent(half_sse, onehot, 0.2, 600),
    ("MSE", 0.15): gradient_descent(half_sse, onehot, 0.15, 800),
    ("cross-entropy", 0.5): gradient_descent(nn.functional.cross_entropy, y, 0.5, 1000, 100),
}
runs["MSE", 0.2][0]  # a CurvatureTimeline

# %%
runs["MSE", 0.2][0].plot()  # λ_max along training, with the line 2/η

# %% [markdown]
# All three runs on one scale: `λ_max · η / 2`, which is 1 at the edge of stability.

# %%
fig = go.Figure()
for (loss_name, lr), (tl, _) in runs.items():
    fig.add_trace(
        go.Scatter(
            x=tl.steps, y=tl.lambda_max * lr / 2, mode="lines+markers", name=f"{loss_name}, η {lr}"
        )
    )
fig.add_hline(y=1, line_dash="dash", annotation_text="λ_max = 2/η")
fig.update_layout(
    title="sharpness relative to the stability threshold, full-batch gradient descent",
    xaxis_title="step",
    yaxis_title="λ_max · η / 2",
    template="plotly_white",
)
fig

# %%
for (loss_name, lr), (tl, losses) in runs.items():
    lam = tl.lambda_max
    print(
        f"{loss_name:>13}, η {lr} (2/η = {2 / lr:5.2f}): λ_max "
        + " ".join(f"{s}:{v:.2f}" for s, v in zip(tl.steps, lam))
    )
    print(f"{'':>15}loss {losses[0]:.4f} -> {losses[-1]:.4f}")

# %% [markdown]
# ## The claims, checked
# - **progressive sharpening**: at initialisation λ_max = 6.85, well below `2/η` (10 and
#   13.3); it rises to the threshold;
# - **edge of stability (MSE)**: over the second half of each run, λ_max stays within
#   about ±25 % of `2/η`, at both step sizes, and the two plateaus differ as `2/η` does;
# - the loss still decreases, though not monotonically (it goes up on some steps);
# - **cross-entropy**: λ_max rises to near `2/η` (within 25 %), and then decays to well
#   below it as the loss goes to zero.

# %%
plateau = {}
for lr in (0.2, 0.15):
    tl, losses = runs["MSE", lr]
    lam, steps = tl.lambda_max, np.asarray(tl.steps)
    assert lam[0] < 0.75 * (2 / lr), "sharpening: λ_max starts below 2/η"
    late = lam[steps >= steps[-1] / 2] * lr / 2
    assert np.all((0.85 < late) & (late < 1.25)), late  # hovers at 2/η
    plateau[lr] = np.median(lam[steps >= steps[-1] / 2])
    assert losses[-1] < 0.5 * losses[0]
    assert np.any(np.diff(losses) > 0), "at the edge of stability the loss is not monotone"
# the plateau follows 2/η: 13.3 / 10 = 1.33
ratio = plateau[0.15] / plateau[0.2]
print(f"plateaus {plateau[0.2]:.2f} (η 0.2), {plateau[0.15]:.2f} (η 0.15): ratio {ratio:.2f}")
assert 1.15 < ratio < 1.5
tl, losses = runs["cross-entropy", 0.5]
lam = tl.lambda_max
peak = lam.max()
print(f"cross-entropy: peak λ_max {peak:.2f} (2/η = 4), final {lam[-1]:.2f}")
assert 0.75 * 4 < peak < 1.25 * 4  # nears 2/η ...
assert lam[-1] < 0.6 * peak and lam[0] < 0.3 * peak  # ... and then decays
assert losses[-1] < 0.02
