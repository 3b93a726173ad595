"""Mode connectivity on scikit-learn's digits (CPU, about a minute).

- Two ReLU MLPs 64-64-64-10 from different seeds (SGD with momentum, 300 steps): the loss
  barrier on the line between them, and again after Git Re-Basin weight matching.
- Two 100-step fine-tunes of one parent: the barrier between them.
- Layer-wise barriers (Adilova et al. 2024): 64-256-256-256-256-10 from two seeds (lr 0.05;
  and lr 0.1, where the first and last layers stop being "free" to average), the full-model
  barrier vs averaging a single layer; the narrow 64-64-64-10 for comparison.

Run: ``PYTHONPATH=. .venv/bin/python benchmarks/connectivity_digits.py``
"""

from __future__ import annotations

import copy
import os
import time

import torch
from torch import nn

from lossviz.alignment import weight_matching
from lossviz.connectivity import interpolate, layerwise_barriers
from lossviz.data import digits, mlp, train
from lossviz.objective import Objective

os.environ.setdefault("LOSSVIZ_PROGRESS", "0")
torch.set_num_threads(1)


def trained(sizes, seed, steps=300, lr=0.1):
    m = mlp(sizes, seed=seed)
    train(m, DATA, steps=steps, lr=lr, seed=seed)
    return m


def report(name, r):
    print(
        f"{name:<34} L(A) {r.loss[0]:.4f}  L(B) {r.loss[-1]:.4f}  "
        f"barrier linear {r.barrier('loss', 'linear'):.4f}  mean "
        f"{r.barrier('loss', 'mean'):.4f}  (accuracy drop "
        f"{r.barrier('accuracy', 'linear'):.4f})"
    )


def main():
    t0 = time.perf_counter()
    narrow = (64, 64, 64, 10)
    obj = Objective(mlp(narrow), nn.functional.cross_entropy, DATA)
    a, b = trained(narrow, 1), trained(narrow, 2)
    report("two seeds, 64-64-64-10", interpolate(obj, a, b))
    t1 = time.perf_counter()
    b_aligned = weight_matching(a, b)
    t_match = time.perf_counter() - t1
    report("after weight matching", interpolate(obj, a, b_aligned))
    print(f"{'':<34} (weight matching {t_match:.2f} s)")
    parent = trained(narrow, 0)
    f1, f2 = copy.deepcopy(parent), copy.deepcopy(parent)
    train(f1, DATA, steps=100, seed=11)
    train(f2, DATA, steps=100, seed=12)
    report("two fine-tunes of one parent", interpolate(obj, f1, f2))

    lw = layerwise_barriers(obj, a, b)
    singles = [v for row in lw.table.values() for v in row.values()]
    print(
        f"\nlayer-wise, 64-64-64-10: full {lw.full:.4f}, single layers "
        f"{min(singles):.4f}–{max(singles):.4f}"
    )
    print(lw)
    wide = (64, 256, 256, 256, 256, 10)
    objw = Objective(mlp(wide), nn.functional.cross_entropy, DATA)
    for lr in (0.05, 0.1):
        wa, wb = trained(wide, 1, lr=lr), trained(wide, 2, lr=lr)
        lw = layerwise_barriers(objw, wa, wb)
        singles = [v for row in lw.table.values() for v in row.values()]
        print(
            f"\nlayer-wise, 64-256-256-256-256-10, lr {lr}: full {lw.full:.4f}, single "
            f"layers {min(singles):.4f}–{max(singles):.4f}"
        )
        print(lw)
        if lr == 0.05:
            print(layerwise_barriers(objw, wa, wb, groups="cumulative"))
    print(f"\ntotal {time.perf_counter() - t0:.1f} s")


DATA = digits()

if __name__ == "__main__":
    main()
