"""Training dynamics on scikit-learn's digits, measured with lossviz's SubspaceTracker.

(a) Gradient subspace (Gur-Ari, Roberts, Dyer 2018): tanh MLP 64-32-10, SGD lr 0.2,
    batch 256, cross-entropy, k = 10. The fraction of the mini-batch gradient in the
    top-10 subspace of the same mini-batch Hessian (refreshed every 10 steps), and of the
    full-data gradient in the top-10 subspace of the full-data Hessian (every 50 steps).
    Also the Lanczos products per refresh with and without the warm start.
(b) Edge of stability (Cohen et al. 2021): tanh MLP 64-64-64-10, full-batch gradient
    descent; λ_max every 50 steps against 2/lr. MSE to one-hot targets
    (½·||f(x) - y||² averaged over samples, Cohen et al.'s scaling) at lr 0.1 and 0.2, and
    cross-entropy at lr 0.5.

Every measurement is taken at θ_t on the batch of step t (the SubspaceTracker
convention): the trackers are called before ``optimizer.step()``, so a record's gradient is
the one the optimizer applies and its eigenvectors are those of the Hessian at θ_t. Run:

    PYTHONPATH=. python benchmarks/dynamics_digits.py            # about 35 s on 2 CPU cores
    PYTHONPATH=. python benchmarks/dynamics_digits.py --quick    # fewer steps
    PYTHONPATH=. python benchmarks/dynamics_digits.py --part eos --device cuda
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch
from torch import nn

from lossviz.data import digits, mlp
from lossviz.subspace import SubspaceTracker


def half_sse(out, target):
    """½·||f(x) - y||² averaged over samples (the MSE scaling of Cohen et al. 2021)."""
    return 0.5 * (out - target).pow(2).sum(1).mean()


def gradient_subspace(steps: int, device: str) -> dict:
    x, y = digits(device=device)
    model = mlp((64, 32, 10), nn.Tanh, seed=0).to(device)
    opt = torch.optim.SGD(model.parameters(), lr=0.2)
    ce = nn.functional.cross_entropy
    mb = SubspaceTracker(
        model,
        ce,
        k=10,
        every=10,
        optimizer=opt,
        track=("gradient_fraction", "overlap", "lambda_max"),
    )
    full = SubspaceTracker(
        model,
        ce,
        k=10,
        every=50,
        data=(x, y),
        optimizer=opt,
        track=("gradient_fraction", "overlap", "lambda_max"),
    )
    # the same solves without the warm start
    cold = SubspaceTracker(model, ce, k=10, every=10, warm_start=False, track=("lambda_max",))
    cold_full = SubspaceTracker(
        model, ce, k=10, every=50, data=(x, y), warm_start=False, track=("lambda_max",)
    )
    gen = torch.Generator().manual_seed(0)
    t0 = time.perf_counter()
    for _ in range(steps + 1):
        idx = torch.randint(0, len(y), (256,), generator=gen).to(device)
        batch = (x[idx], y[idx])
        for tr in (mb, full, cold, cold_full):
            tr.step(batch)  # θ_t on the batch of step t, before the update
        opt.zero_grad()
        loss = ce(model(batch[0]), batch[1])
        loss.backward()
        opt.step()
    secs = time.perf_counter() - t0
    mbh = {r["step"]: r for r in mb.history if r["refreshed"]}
    fh = {r["step"]: r for r in full.history if r["refreshed"]}

    def hvps(tr):
        return [r["n_hvp"] for r in tr.history if r["refreshed"]][1:]  # after the first

    out = {
        "minibatch_fraction": {s: r["gradient_fraction"] for s, r in mbh.items()},
        "minibatch_lambda_max": {s: r["lambda_max"] for s, r in mbh.items()},
        "minibatch_overlap_prev": {s: r["overlap_prev"] for s, r in mbh.items()},
        "full_fraction": {s: r["gradient_fraction_data"] for s, r in fh.items()},
        "full_lambda_max": {s: r["lambda_max"] for s, r in fh.items()},
        "full_overlap_first": {s: r["overlap_first"] for s, r in fh.items()},
        "full_loss": full.history[-1]["loss"],
        "hvp_per_refresh": {
            "mini-batch warm": float(np.mean(hvps(mb))),
            "mini-batch cold": float(np.mean(hvps(cold))),
            "full-data warm": float(np.mean(hvps(full))),
            "full-data cold": float(np.mean(hvps(cold_full))),
        },
        "seconds": secs,
    }
    print("\n(a) gradient subspace: tanh MLP 64-32-10, SGD lr 0.2, batch 256, k = 10")
    print("step  mini-batch fraction  (λ_max)   | full-data fraction  (λ_max, overlap w/ first)")
    for s in sorted(mbh):
        if s in (0, 10, 20, 30, 40, 50, 100, 200, 300, 400, 500, 600, 700, 800, 900, 1000) or (
            s == max(mbh)
        ):
            line = f"{s:5d}  {mbh[s]['gradient_fraction']:.3f}  ({mbh[s]['lambda_max']:.2f})"
            if s in fh:
                line += (
                    f"          | {fh[s]['gradient_fraction_data']:.3f}  "
                    f"({fh[s]['lambda_max']:.2f}, {fh[s]['overlap_first']:.2f})"
                )
            print(line)
    w = out["hvp_per_refresh"]
    print(
        "HVPs per refresh (mean over the refreshes after the first), warm vs cold start: "
        f"mini-batch every 10 steps {w['mini-batch warm']:.1f} vs {w['mini-batch cold']:.1f}; "
        f"full data every 50 steps {w['full-data warm']:.1f} vs {w['full-data cold']:.1f}"
    )
    print(f"({secs:.0f} s)")
    return out


def edge_of_stability(loss_name: str, lr: float, steps: int, device: str, every=50) -> dict:
    x, y = digits(device=device)
    target = nn.functional.one_hot(y, 10).to(x.dtype) if loss_name == "mse" else y
    loss_fn = half_sse if loss_name == "mse" else nn.functional.cross_entropy
    model = mlp((64, 64, 64, 10), nn.Tanh, seed=0).to(device)
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    tr = SubspaceTracker(
        model, loss_fn, k=1, every=every, data=(x, target), optimizer=opt, track=("lambda_max",)
    )
    t0 = time.perf_counter()
    for _ in range(steps + 1):
        opt.zero_grad()
        loss = loss_fn(model(x), target)
        tr.step((x, target), loss=loss)  # θ_t, before the update
        loss.backward()
        opt.step()
    secs = time.perf_counter() - t0
    rows = [(r["step"], r["lambda_max"], r["train_loss"]) for r in tr.history if r["refreshed"]]
    print(f"\n(b) edge of stability, {loss_name}, full-batch GD lr {lr} (2/lr = {2 / lr:g})")
    print("step   λ_max    loss")
    for s, lam, lo in rows:
        if s % (2 * every) == 0 or s == rows[-1][0]:
            print(f"{s:5d}  {lam:7.3f}  {lo:.4f}")
    print(f"({secs:.0f} s)")
    return {
        "lr": lr,
        "two_over_lr": 2 / lr,
        "steps": [r[0] for r in rows],
        "lambda_max": [r[1] for r in rows],
        "loss": [r[2] for r in rows],
        "seconds": secs,
    }


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--part", choices=("all", "subspace", "eos"), default="all")
    ap.add_argument("--quick", action="store_true", help="half the steps")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--json", help="also write the numbers to this file")
    args = ap.parse_args()
    f = 0.5 if args.quick else 1.0
    res = {}
    if args.part in ("all", "subspace"):
        res["subspace"] = gradient_subspace(int(1000 * f), args.device)
    if args.part in ("all", "eos"):
        res["eos_mse_lr0.1"] = edge_of_stability("mse", 0.1, int(2000 * f), args.device)
        res["eos_mse_lr0.2"] = edge_of_stability("mse", 0.2, int(1000 * f), args.device)
        res["eos_ce_lr0.5"] = edge_of_stability("ce", 0.5, int(3000 * f), args.device, every=100)
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(res, fh, indent=1, default=str)


if __name__ == "__main__":
    main()
