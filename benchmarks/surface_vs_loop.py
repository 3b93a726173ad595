"""Loss surface: the per-point loop (the reference tool's way) vs lossviz.landscape.surface.

The loop copies each grid point's weights into a copy of the model
(``torch.nn.utils.vector_to_parameters``) and runs a forward pass per point; lossviz runs
its engine (``lossviz.engine.Engine``): chunks of grid points under ``vmap`` or one point at
a time, with the first layer from three products for the whole grid where that is exact,
the fastest of these timed on real chunks on a CPU. Same model, data and directions, one
process, runs interleaved (the best of ``--repeat`` kept). Prints both wall times and
process CPU times (steadier on a shared machine), their ratios and the largest
difference between the two grids.

    python benchmarks/surface_vs_loop.py --model mlp64 --device cpu --n 31
    python benchmarks/surface_vs_loop.py --model mlp --device cpu --n 51
    python benchmarks/surface_vs_loop.py --model resnet18 --device cuda --n 51
"""

from __future__ import annotations

import argparse
import copy
import os
import platform
import sys
import time

import numpy as np
import torch
from torch import nn

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from lossviz.directions import random_directions
from lossviz.landscape import surface
from lossviz.objective import Objective


def small_resnet(num_classes=10):
    """A stand-in when torchvision is missing: a few residual BatchNorm blocks."""

    class Block(nn.Module):
        def __init__(self, c):
            super().__init__()
            self.c1, self.b1 = nn.Conv2d(c, c, 3, padding=1, bias=False), nn.BatchNorm2d(c)
            self.c2, self.b2 = nn.Conv2d(c, c, 3, padding=1, bias=False), nn.BatchNorm2d(c)

        def forward(self, x):
            return torch.relu(x + self.b2(self.c2(torch.relu(self.b1(self.c1(x))))))

    return nn.Sequential(
        nn.Conv2d(3, 64, 3, padding=1, bias=False),
        nn.BatchNorm2d(64),
        nn.ReLU(),
        Block(64),
        Block(64),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(64, num_classes),
    )


def setup(name: str, device: torch.device):
    torch.manual_seed(0)
    if name in ("mlp", "mlp64"):
        from lossviz.data import digits, mlp

        x, y = digits(device=device)
        sizes = (64, 256, 256, 10) if name == "mlp" else (64, 64, 64, 10)
        model = mlp(sizes, seed=0).to(device)
        return model, (x, y), f"MLP {'-'.join(map(str, sizes))}, all 1,797 digits"
    try:
        import torchvision

        model = torchvision.models.resnet18(num_classes=10)
        label = "ResNet-18 (torchvision), batch 256 of random 32x32 images"
    except ImportError:
        model = small_resnet(10)
        label = "small ResNet stand-in (no torchvision), batch 256 of random 32x32 images"
    model = model.to(device).eval()
    x = torch.randn(256, 3, 32, 32, device=device)
    y = torch.randint(0, 10, (256,), device=device)
    return model, (x, y), label


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def loop_surface(model, data, center, d1, d2, xs, ys, device):
    """The reference way: a copy of the model, weights copied in, one forward per point."""
    m = copy.deepcopy(model).eval()
    x, y = data
    params = list(m.parameters())
    out = np.zeros((len(ys), len(xs)))
    with torch.no_grad():
        for i, b in enumerate(ys):
            for j, a in enumerate(xs):
                nn.utils.vector_to_parameters(center + float(a) * d1 + float(b) * d2, params)
                out[i, j] = nn.functional.cross_entropy(m(x), y).item()
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", choices=("mlp64", "mlp", "resnet18"), default="mlp64")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--n", type=int, default=31, help="grid points per axis")
    ap.add_argument("--chunk-size", type=int, default=None, help="grid points per vmap call")
    ap.add_argument("--precision", default=None, help="e.g. bf16 (lossviz only)")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    ap.add_argument(
        "--repeat", type=int, default=3, help="timed runs of each, interleaved (best kept)"
    )
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    model, data, label = setup(args.model, device)
    obj = Objective(model, nn.functional.cross_entropy, data)
    d1, d2 = random_directions(obj, 2, seed=0)
    center = obj.resolve()[0]
    f1, f2 = obj.as_flat(d1), obj.as_flat(d2)
    xs = ys = np.linspace(-1, 1, args.n)
    kw = {"progress": False, "chunk_size": args.chunk_size, "precision": args.precision}

    # warm-up (kernel selection, allocator) for both
    loop_surface(model, data, center, f1, f2, xs[:2], ys[:2], device)
    surface(obj, None, [d1, d2], n=(3, 3), **kw)
    sync(device)

    t_loop, t_lv, c_loop, c_lv = [], [], [], []
    for _ in range(args.repeat):
        t0, c0 = time.perf_counter(), time.process_time()
        ref = loop_surface(model, data, center, f1, f2, xs, ys, device)
        sync(device)
        t_loop.append(time.perf_counter() - t0)
        c_loop.append(time.process_time() - c0)
        t0, c0 = time.perf_counter(), time.process_time()
        s = surface(obj, None, [d1, d2], n=(args.n, args.n), **kw)
        sync(device)
        t_lv.append(time.perf_counter() - t0)
        c_lv.append(time.process_time() - c0)
    tl, tb = min(t_loop), min(t_lv)
    cl, cb = min(c_loop), min(c_lv)
    diff = float(np.nanmax(np.abs(s.loss - ref)))
    dev = (
        torch.cuda.get_device_name(device)
        if device.type == "cuda"
        else (f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads")
    )
    print(f"model   : {label}")
    print(f"device  : {dev}; torch {torch.__version__}")
    prec = args.precision or "fp32"
    print(f"grid    : {args.n}x{args.n} = {args.n**2} points, precision {prec}")
    print(f"loop    : {tl:.3f} s ({1e3 * tl / args.n**2:.2f} ms/point)")
    print(f"lossviz : {tb:.3f} s ({1e3 * tb / args.n**2:.2f} ms/point, {s.strategy})")
    print(f"speed-up: {tl / tb:.2f}x wall, {cl / cb:.2f}x process CPU time")
    print(
        f"max |difference| of the two grids: {diff:.2e} (losses {np.nanmin(ref):.4g} to "
        f"{np.nanmax(ref):.4g})"
    )
    return tl, tb, diff, cl, cb


if __name__ == "__main__":
    main()
