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
# # Optimizers on a quadratic: step size, momentum and SAM
#
# The optimization playground (`lossviz.teach.playground()`, also served as a Voila page
# from `notebooks/playground.py`) runs `torch.optim` optimizers on 2-D functions. This
# notebook explains what it shows and checks every claim against a closed form.
#
# The ill-conditioned quadratic is
# $f(x, y) = \frac{x^2 + \kappa y^2}{2\sqrt\kappa}$, with Hessian eigenvalues
# $\lambda_\text{min} = 1/\sqrt\kappa$ (along $x$) and $\lambda_\text{max} = \sqrt\kappa$
# (along $y$).

# %%
import math

import numpy as np

from lossviz import teach
from lossviz.teach import FUNCTIONS, run

quad = FUNCTIONS["ill-conditioned quadratic"]
KAPPA = 10.0
lam = np.array([1 / math.sqrt(KAPPA), math.sqrt(KAPPA)])  # the Hessian's eigenvalues
edge = 2 / lam.max()
print(f"λ = {lam.round(4).tolist()}, 2/λ_max = {edge:.4f}")

p = teach.playground("ill-conditioned quadratic", ("SGD", "momentum", "SAM"), lr=0.1, steps=100)
p.wait()
p

# %% [markdown]
# ## Gradient descent diverges past $2/\lambda_\text{max}$
#
# On a quadratic, a gradient step multiplies each eigen-coordinate by $1 - \eta\lambda_i$:
# $x_t = (1 - \eta\lambda_x)^t x_0$ and $y_t = (1 - \eta\lambda_y)^t y_0$. The iterates
# shrink iff $|1 - \eta\lambda_i| < 1$ for every $i$, i.e. $\eta < 2/\lambda_\text{max}$;
# the sharpest direction alone decides. (Cohen et al. 2021 found that neural-network
# training drives $\lambda_\text{max}$ up to this very edge, $2/\eta$: the *edge of
# stability*.) `run` records the path; it matches the closed form to rounding:

# %%
start = np.array(quad.start)
t = np.arange(101)[:, None]
for factor in (0.95, 1.05):
    lr = factor * edge
    traj, loss = run(quad, "SGD", lr=lr, steps=100, kappa=KAPPA)
    np.testing.assert_allclose(traj, start * (1 - lr * lam) ** t, rtol=1e-9, atol=1e-12)
    print(f"lr = {factor} · 2/λ_max: loss {loss[0]:.3g} → {loss[-1]:.3g}")
    if factor < 1:
        assert loss[-1] < 1e-3 * loss[0]
    else:
        assert loss[-1] > 1e3 * loss[0] and np.all(np.diff(np.abs(traj[:, 1])) > 0)

# %% [markdown]
# The same in the playground: with the learning-rate slider just past the edge, the SGD
# curve it draws is this run, and its loss grows.

# %%
p.lr.value = 1.05 * edge
p.wait()
traj, loss = p.results["SGD"]
want, want_loss = run(quad, "SGD", lr=p.lr.value, steps=p.steps.value, kappa=p.kappa.value)
np.testing.assert_array_equal(traj, want)
sgd_trace = next(d for d in p.fig.data if d.name == "SGD")
np.testing.assert_array_equal(sgd_trace.x, traj[:, 0])
assert loss[-1] > loss[0]
print(p.info.value)

# %% [markdown]
# The *edge of stability* tab runs gradient descent on $\frac12\sum_i\lambda_i x_i^2$ with
# $\lambda = (20, 5, 1)$: the edge is at $\eta = 2/20 = 0.1$.

# %%
for lr, verdict in ((0.095, "converges"), (0.105, "diverges")):
    p.eos_lr.value = lr
    title = p.eos_fig.layout.title.text
    curve = np.array(p.eos_fig.data[0].y)
    print(title)
    assert title.endswith(verdict) and "2/λ_max = 0.1000" in title
    assert (curve[-1] < curve[0]) == (verdict == "converges")
    # the growth factor per step on the right-hand plot: |1 − lr·λ_max|
    assert p.eos_fig.data[2].y[0] == abs(1 - lr * 20)

# %% [markdown]
# ## Momentum: a larger stable step, acceleration, and overshoot
#
# Heavy-ball momentum, $v \leftarrow \beta v + \nabla f$, $\theta \leftarrow \theta - \eta
# v$ (PyTorch's SGD with `momentum=β`), is stable on a quadratic iff
# $\eta < 2(1+\beta)/\lambda_\text{max}$ (Polyak 1964): with $\beta = 0.9$, almost twice
# the step gradient descent tolerates.

# %%
beta = 0.9
_, gd = run(quad, "SGD", lr=1.5 * edge, steps=300, kappa=KAPPA)
_, hb = run(quad, "momentum", lr=1.5 * edge, momentum=beta, steps=300, kappa=KAPPA)
_, hb_past = run(
    quad, "momentum", lr=1.05 * (1 + beta) * edge, momentum=beta, steps=300, kappa=KAPPA
)
print(
    f"lr = 1.5·2/λ_max after 300 steps: GD {gd[-1]:.3g} (NaN: left the box), momentum {hb[-1]:.3g}"
)
assert not np.isfinite(gd[-1]) and hb[-1] < 1e-10
assert not np.isfinite(hb_past[-1]) or hb_past[-1] > hb_past[0]

# %% [markdown]
# With the best settings, gradient descent shrinks the error by
# $\frac{\kappa - 1}{\kappa + 1}$ per step and heavy ball by about
# $\frac{\sqrt\kappa - 1}{\sqrt\kappa + 1}$ (with $\eta = 4/(\sqrt{\lambda_\text{max}} +
# \sqrt{\lambda_\text{min}})^2$, $\beta = \big(\frac{\sqrt\kappa - 1}{\sqrt\kappa +
# 1}\big)^2$). At $\kappa = 100$: 0.980 against 0.818 per step.

# %%
K2 = 100.0
l1, l2 = 1 / math.sqrt(K2), math.sqrt(K2)
_, gd = run(quad, "SGD", lr=2 / (l1 + l2), steps=100, kappa=K2)
b_opt = ((math.sqrt(K2) - 1) / (math.sqrt(K2) + 1)) ** 2
_, hb = run(quad, "momentum", lr=4 / (math.sqrt(l1) + math.sqrt(l2)) ** 2, momentum=b_opt,
            steps=100, kappa=K2)  # fmt: skip
rate_gd = (gd[100] / gd[50]) ** (1 / 100)  # the loss is quadratic in the error
rate_hb = (hb[100] / hb[50]) ** (1 / 100)
print(f"per-step error factor: GD {rate_gd:.4f}, heavy ball {rate_hb:.4f}")
print(f"loss after 100 steps: GD {gd[-1]:.3g}, heavy ball {hb[-1]:.3g}")
assert abs(rate_gd - (K2 - 1) / (K2 + 1)) < 1e-6  # both eigen-directions contract alike
assert 0.80 < rate_hb < 0.85  # √κ-rate (0.818), times the t-factor of the double root
assert hb[-1] < 1e-9 * gd[-1]

# %% [markdown]
# Momentum's path overshoots: along the flat direction $x$ it swings past the minimum and
# back (the iterates keep velocity), where gradient descent at a stable step approaches
# from one side.

# %%
gd_path, _ = run(quad, "SGD", lr=0.1, steps=100, kappa=KAPPA)
hb_path, _ = run(quad, "momentum", lr=0.1, momentum=0.9, steps=100, kappa=KAPPA)
flips = lambda v: int(np.sum(np.diff(np.sign(v)) != 0))  # noqa: E731
print(f"sign changes of x: GD {flips(gd_path[:, 0])}, momentum {flips(hb_path[:, 0])}")
assert flips(gd_path[:, 0]) == 0 and flips(hb_path[:, 0]) >= 2

# %% [markdown]
# ## SAM: bouncing across the valley, and away from sharp minima
#
# Sharpness-aware minimization (Foret et al. 2021) takes the gradient at the perturbed
# point $\theta + \rho\,\nabla f/\lVert\nabla f\rVert$. On a quadratic it does **not**
# converge to the minimum: the flat coordinate goes to 0 while the sharp one settles into a
# 2-cycle $y \to -y$ across the valley (Bartlett, Long & Bousquet 2023, *The dynamics of
# sharpness-aware minimization*). With $\nabla f/\lVert\nabla f\rVert \approx \pm e_y$ the
# step is $y \leftarrow y - \eta\lambda(y \pm \rho)$, whose 2-cycle is
#
# $$|y^*| = \frac{\eta\lambda_\text{max}\rho}{2 - \eta\lambda_\text{max}}.$$

# %%
for lr, rho in ((0.2, 0.05), (0.4, 0.1), (0.6, 0.05)):
    path, loss = run(quad, "SAM", lr=lr, rho=rho, steps=400, kappa=KAPPA)
    y_star = lr * lam.max() * rho / (2 - lr * lam.max())
    print(f"lr {lr}, ρ {rho}: last y {path[-2:, 1].round(6).tolist()}, closed form ±{y_star:.6f}")
    assert abs(path[-1, 0]) < 1e-5
    np.testing.assert_allclose(np.abs(path[-4:, 1]), y_star, rtol=1e-6)
    assert np.sign(path[-1, 1]) == -np.sign(path[-2, 1])  # it alternates: a 2-cycle
    np.testing.assert_allclose(loss[-1], KAPPA * y_star**2 / (2 * math.sqrt(KAPPA)), rtol=1e-6)

# %% [markdown]
# The playground's SAM curve (400 steps) flattens at that loss instead of falling to 0:

# %%
p.steps.value = 400
p.lr.value = 0.6
p.wait()
_, sam_loss = p.results["SAM"]
y_star = 0.6 * lam.max() * p.rho.value / (2 - 0.6 * lam.max())
print(p.info.value)
np.testing.assert_allclose(sam_loss[-1], math.sqrt(KAPPA) * y_star**2 / 2, rtol=1e-6)

# %% [markdown]
# On *sharp vs flat minima* (a narrow well of width σ = 0.15 at (−1.5, 0) and a wide one
# at (1.5, 0)), gradient descent started inside the narrow well converges to its bottom.
# SAM with $\rho$ larger than the well cannot: a fixed point of SAM is a point whose
# *perturbed* point is stationary, so it stalls on the rim, $\rho$ away from the bottom
# (its perturbed point at the minimum). With small $\rho$ it stays inside, bouncing.

# %%
sf = FUNCTIONS["sharp vs flat minima"]
bottom = np.array([-1.5, 0.0])
for s in ((-1.5, 0.3), (-1.3, 0.2), (-1.7, -0.2)):
    gd_end = run(sf, "SGD", lr=0.02, steps=400, start=s)[0][-1]
    small = run(sf, "SAM", lr=0.02, rho=0.05, steps=400, start=s)[0][-1]
    big = run(sf, "SAM", lr=0.02, rho=0.5, steps=400, start=s)[0][-1]
    d = [float(np.linalg.norm(e - bottom)) for e in (gd_end, small, big)]
    print(f"start {s}: distance to the sharp minimum GD {d[0]:.3f}, SAM ρ=0.05 {d[1]:.3f}, "
          f"SAM ρ=0.5 {d[2]:.3f}")  # fmt: skip
    assert d[0] < 0.01 and d[1] < 0.1 and abs(d[2] - 0.5) < 0.02

# %% [markdown]
# ## Muon: an orthogonalized update
#
# The Muon tab compares momentum SGD with Muon (Jordan et al. 2024) on a least-squares
# problem $\min_W \lVert WX - Y\rVert^2$ with ill-conditioned inputs. Muon replaces the
# momentum buffer by its orthogonalized version (Newton–Schulz iterations towards
# $UV^\top$), so every direction of the update moves at a similar speed. The right-hand
# bars are the singular values of the last update, scaled by the largest.

# %%
sgd_sv, muon_sv = np.array(p.muon_fig.data[2].y), np.array(p.muon_fig.data[3].y)
print("SGD:", sgd_sv.round(3).tolist())
print("Muon:", muon_sv.round(3).tolist())
assert muon_sv[3] > 0.5 and sgd_sv[3] < 0.1

# %% [markdown]
# With each method's learning rate tuned on a grid from $10^{-3}$ to 1, this small problem
# does not show Muon converging faster (the best runs of both reach a loss of about
# $5\cdot10^{-4}$ in 150 steps); what it shows is the shape of the update.
