# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # Hessian spectra of a network trained on digits
#
# What the curvature of a trained network looks like, measured with lossviz and checked
# against the exact Hessian: the top eigenvalues (Lanczos), the spectral density
# (stochastic Lanczos quadrature, Ghorbani et al. 2019) with its bulk and outliers
# (Sagun et al. 2017; Papyan 2019), the trace (Hutchinson) and the curvature per layer.
# Everything runs on a laptop CPU in under a minute.

# %%
import numpy as np
import torch
from torch import nn

import lossviz as lv
from lossviz.data import digits, mlp, train

torch.manual_seed(0)
(x, y), (x_test, y_test) = digits(split=0.2, seed=0)
model = mlp((64, 32, 10), nn.Tanh, seed=0)
train(model, (x, y), steps=400, lr=0.1, momentum=0.9)
obj = lv.Objective(model, nn.functional.cross_entropy, (x, y))
with torch.no_grad():
    test_acc = (model(x_test).argmax(1) == y_test).float().mean().item()
print(obj, f"train loss {obj.loss():.4f}, test accuracy {test_acc:.3f}")
assert test_acc > 0.9

# %% [markdown]
# ## Top eigenpairs, checked against the exact Hessian
#
# The network has 2,410 parameters: small enough to form the exact Hessian in float64
# and compare. `hessian_eigs` runs thick-restart Lanczos with full reorthogonalization
# until every residual `||Hv - λv||` is below `tol · |λ|max`.

# %%
top = lv.hessian_eigs(obj, k=10, tol=1e-6)
top

# %%
model64 = mlp((64, 32, 10), nn.Tanh, seed=0).double()
model64.load_state_dict({k: v.double() for k, v in model.state_dict().items()})
obj64 = lv.Objective(model64, nn.functional.cross_entropy, (x.double(), y))
flat, fixed = obj64.resolve()
H = torch.autograd.functional.hessian(lambda t: obj64.batch_loss(t, fixed, (x.double(), y)), flat)
exact = torch.linalg.eigvalsh(H).numpy()
print("exact top-10:", np.round(exact[::-1][:10], 5))
print("lossviz     :", np.round(top.values, 5))
assert np.allclose(top.values, exact[::-1][:10], rtol=1e-4)

# %% [markdown]
# The most negative eigenvalues too (`which="both"` gives both ends): a trained network
# still has directions of negative curvature, tiny next to the top ones.

# %%
both = lv.hessian_eigs(obj, k=3, which="both", tol=1e-6)
print(both.values)
assert np.allclose(both.values[:3], exact[:3], rtol=1e-3, atol=1e-6)
assert both.values[0] < 0 < both.values[-1]

# %% [markdown]
# ## The spectral density: a bulk near zero and a few outliers
#
# Sagun et al. observed that the Hessian of a trained classifier has a bulk of
# eigenvalues near zero and a number of large outliers related to the number of classes
# (here 10). With exact eigenvalues at hand we can check the quadrature: each probe's
# moments are unbiased for those of the exact spectrum, so their mean agrees within the
# Monte-Carlo error of 10 probes.

# %%
dens = lv.hessian_density(obj, n_probes=10, steps=80)
fig = dens.plot(log=True)
fig

# %%
P = obj.n_params
for p in (1, 2):
    per_probe = np.sum(dens.weights * dens.nodes**p, axis=1)
    quad, se = per_probe.mean(), per_probe.std(ddof=1) / np.sqrt(len(per_probe))
    true = float(np.mean(exact**p))
    print(f"(1/P) tr(H^{p}): quadrature {quad:.5f} ± {se:.5f}, exact {true:.5f}")
    assert abs(quad - true) < 4 * se
out = dens.outliers()
print(f"{len(out)} outliers:", np.round(out, 3))
# every reported outlier is an exact eigenvalue
assert all(np.min(np.abs(exact - v)) < 1e-3 * abs(v) for v in out)
# the bulk holds almost all of the spectrum: 95% of the eigenvalues are within 2% of λmax
assert np.mean(np.abs(exact) < 0.02 * exact.max()) > 0.95

# %% [markdown]
# ## Trace, with an honest standard error
#
# Hutchinson's estimator stops when its standard error is below `rtol` of the estimate
# (PyHessian stops when the running mean changes by less than 1e-3, which stops early).

# %%
tr = lv.hessian_trace(obj, rtol=0.02, max_hvp=3000)
print(tr, "exact:", float(np.sum(exact)))
assert abs(tr.value - np.sum(exact)) < 4 * tr.stderr
tr.plot()

# %% [markdown]
# ## Curvature per layer
#
# The same analysis on each diagonal block `H_SS` of the Hessian (one block per module):
# the first layer carries most of the curvature here.

# %%
per_layer = lv.hessian_blocks(obj, "module", k=1, rtol=0.05)
per_layer

# %%
sl = obj.layout.slices()
for name, row in zip(per_layer, per_layer.table):
    idx = np.concatenate(
        [np.arange(sl[p].start, sl[p].stop) for p in obj.names if p.startswith(name + ".")]
    )
    block_top = float(np.linalg.eigvalsh(H[idx][:, idx].numpy())[-1])
    print(f"layer {name}: λ1 {row['λ1']:.4f} (exact {block_top:.4f})")
    assert abs(row["λ1"] - block_top) < 1e-3 * block_top

# %% [markdown]
# ## Hessian vs Gauss-Newton
#
# The generalized Gauss-Newton matrix `JᵀH_ℓJ` is positive semi-definite; near a minimum
# its top eigenvalues are close to the Hessian's (the outliers come from it).

# %%
ggn = lv.hessian_eigs(obj, k=10, curvature="ggn", tol=1e-6)
print("GGN top-10:    ", np.round(ggn.values, 4))
print("Hessian top-10:", np.round(top.values, 4))
assert np.all(ggn.values > 0)
assert abs(ggn.values[0] - top.values[0]) < 0.1 * top.values[0]
