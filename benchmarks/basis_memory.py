"""Peak memory of ``hessian_eigs`` by where and how the Lanczos basis is stored.

One process per configuration (``--child``): an MLP of about ``n`` parameters, its
gradient graph built by a first product, then ``hessian_eigs(k=5)`` with a fixed product
budget. Reported: the stored basis (``(m + b) · n`` numbers of ``basis_dtype``,
docs/memory.md), and the growth of the peak memory during the solve -- the process's peak
resident set (``ru_maxrss``) on a CPU, ``torch.cuda.max_memory_allocated`` on a GPU --
in units of ``n`` numbers of the model's dtype.

    python benchmarks/basis_memory.py --n 2000000 --device cpu
    python benchmarks/basis_memory.py --n 50000000 --device cuda
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys

import torch

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

CONFIGS = {
    "default": {},
    "float32 basis": {"basis_dtype": "float32"},
    "cpu basis": {"basis_device": "cpu"},
    "cpu float32 basis": {"basis_device": "cpu", "basis_dtype": "float32"},
}


def child(n: int, device: str, name: str) -> dict:
    import lossviz as lv
    from lossviz.lanczos import basis_rows

    width = max(8, int((n / 2) ** 0.5))
    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Linear(width, width), torch.nn.Tanh(), torch.nn.Linear(width, width)
    ).double()
    model.to(device)
    x = torch.randn(32, width, dtype=torch.float64, device=device)
    y = torch.randint(0, width, (32,), device=device)
    obj = lv.Objective(model, torch.nn.functional.cross_entropy, (x, y))
    op = obj.operator()
    op @ torch.randn(obj.n_params, dtype=torch.float64, device=device)  # the graph
    cuda = device.startswith("cuda")
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    else:
        base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    r = lv.hessian_eigs(obj, k=5, tol=1e-3, max_hvp=40, progress=False, **CONFIGS[name])
    if cuda:
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated() - base
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - base
    kw = CONFIGS[name]
    item = 4 if kw.get("basis_dtype") == "float32" else 8
    return {
        "config": name,
        "n": obj.n_params,
        "basis_formula_bytes": basis_rows(obj.n_params, 5) * obj.n_params * item,
        "peak_growth_in_n_float64": peak / (8 * obj.n_params),
        "seconds": r.seconds,
    }


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--n", type=int, default=2_000_000)
    p.add_argument("--device", default="cpu")
    p.add_argument("--child", default=None)
    a = p.parse_args()
    if a.child:
        print(json.dumps(child(a.n, a.device, a.child)))
        return
    for name in CONFIGS:
        if a.device == "cpu" and "cpu" in name:
            continue  # the same as the default on a CPU
        cmd = [sys.executable, __file__, "--n", str(a.n), "--device", a.device, "--child", name]
        out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
        print(out.strip().splitlines()[-1])


if __name__ == "__main__":
    main()
