"""lossviz vs PyHessian 0.1, hessian-eigenthings 1.0 and curvlinops 3 on the same model and
batch, in one process: time, Hessian-vector products and error against a converged
reference for top-5 eigenpairs, the trace (100 probes) and the spectral density.

    python benchmarks/hessian_vs_peers.py                       # MLP on digits, CPU
    python benchmarks/hessian_vs_peers.py --model resnet18 --device cuda

Peers are optional (pip install 'lossviz[bench]'); a missing one is reported and skipped.
Each peer gets its own copy of the model (PyHessian changes the model it is given), and
each peer's operator (PyHessian's ``hessian``, hessian-eigenthings' ``HessianOperator``,
curvlinops' ``HessianLinearOperator`` and its SciPy wrapper) is built before its timed
region: the times are the solvers'. lossviz's own times include building its gradient
graph (``obj.release()`` before each run), so the ratios are conservative for lossviz.
curvlinops: both the 3.0 API (``params`` a list of parameters) and the newer one
(``params`` a dict name -> tensor; a list is rejected) are supported.
"""

from __future__ import annotations

import argparse
import copy
import inspect
import json
import time
import traceback

import numpy as np
import torch
from torch import nn

import lossviz as lv
from lossviz.data import digits, mlp, train
from lossviz.hvp import product_methods

F = nn.functional


def sync(device):
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def timed(fn, device):
    sync(device)
    t0 = time.perf_counter()
    out = fn()
    sync(device)
    return out, time.perf_counter() - t0


def curvlinops_hessian(model: nn.Module, data):
    """curvlinops' Hessian operator of the cross-entropy on ``data`` at ``model``'s
    parameters, for either API: ``params`` a dict name -> tensor (releases after 3.0, which
    reject a list) or a list of parameters (3.0 and earlier)."""
    from curvlinops import HessianLinearOperator

    named = {n: p for n, p in model.named_parameters() if p.requires_grad}
    ann = str(inspect.signature(HessianLinearOperator.__init__).parameters["params"].annotation)
    params = named if "dict" in ann.lower() else list(named.values())
    return HessianLinearOperator(model, nn.CrossEntropyLoss(), params, data)


def build(model_name: str, device: str, batch: int):
    if model_name == "mlp":
        x, y = digits()
        m = mlp((64, 256, 256, 10), seed=0)
        train(m, (x, y), steps=200, lr=0.05, momentum=0.9)
        return m.to(device).eval(), x.to(device), y.to(device)
    if model_name == "resnet18":
        import torchvision

        torch.manual_seed(0)
        m = torchvision.models.resnet18(num_classes=10)
        x = torch.randn(batch, 3, 32, 32)
        y = torch.randint(0, 10, (batch,))
        return m.to(device).eval(), x.to(device), y.to(device)
    raise SystemExit(f"unknown model {model_name}")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="mlp", choices=["mlp", "resnet18"])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--jobs", default="eigs,trace,density")
    ap.add_argument("--density-probes", type=int, default=10)
    ap.add_argument(
        "--peer-density-probes",
        type=int,
        default=2,
        help="probes for the peers' (slow) densities; times are also per probe",
    )
    ap.add_argument("--ref-probes", type=int, default=2000)
    ap.add_argument(
        "--trace-budget", type=int, default=1000, help="max_hvp of lossviz's rtol=0.01 trace"
    )
    ap.add_argument("--skip", default="", help="comma-separated peers to skip")
    ap.add_argument("--json", default=None, help="write the rows to this file")
    args = ap.parse_args()
    dev = args.device
    skip = set(filter(None, args.skip.split(",")))
    model, x, y = build(args.model, dev, args.batch)
    P = sum(p.numel() for p in model.parameters())
    print(
        f"# {args.model}: {P:,} parameters, batch {len(y)}, device {dev}"
        + (f" ({torch.cuda.get_device_name()})" if dev.startswith("cuda") else "")
        + f", torch {torch.__version__}"
    )
    rows = []

    def row(job, tool, seconds, n_hvp, err, note=""):
        rows.append(dict(job=job, tool=tool, seconds=seconds, n_hvp=n_hvp, error=err, note=note))
        print(
            f"{job:8s} {tool:34s} {seconds:8.3f} s  HVPs {str(n_hvp):>5s}  error {err}  {note}",
            flush=True,
        )

    def peer(name, fn):
        if name in skip or name.split(":")[0] in skip:
            return None
        try:
            return fn()
        except ImportError as e:
            print(f"  ({name} not installed: {e})")
        except Exception as e:  # noqa: BLE001 - a peer's failure is a result
            print(f"  ({name} failed: {type(e).__name__}: {str(e)[:200]})")
            traceback.print_exc(limit=1)
        return None

    obj = lv.Objective(model, F.cross_entropy, (x, y))
    # warm-up (CUDA context, cuDNN autotuning) outside every timing
    lv.hessian_eigs(obj, k=1, tol=1e-2, progress=False)
    obj.release()

    # reference: a tightly converged run (residuals from the Lanczos recurrence)
    ref, t_ref = timed(lambda: lv.hessian_eigs(obj, k=5, tol=1e-6, progress=False), dev)
    obj.release()
    lam = ref.values
    print(
        f"# reference top-5 {np.round(lam, 5).tolist()}, residuals <= "
        f"{ref.residuals.max():.1e} ({t_ref:.2f} s); HVP methods (s/vector): "
        f"{product_methods(obj).times}"
    )

    def eig_err(vals):
        vals = np.sort(np.asarray(vals, dtype=np.float64))[::-1][:5]
        if len(vals) < 5:
            return "n/a"
        return f"{np.max(np.abs(vals - lam)) / abs(lam[0]):.1e}"

    if "eigs" in args.jobs:
        r, t_lv = timed(lambda: lv.hessian_eigs(obj, k=5, tol=1e-4, progress=False), dev)
        obj.release()
        row(
            "top-5",
            "lossviz hessian_eigs(tol=1e-4)",
            t_lv,
            str(r.n_hvp),
            eig_err(r.values),
            f"max residual {r.residuals.max():.1e}",
        )
        for bs in (2, 4):
            rb, tb = timed(
                lambda bs=bs: lv.hessian_eigs(obj, k=5, tol=1e-4, block_size=bs, progress=False),
                dev,
            )
            obj.release()
            row(
                "top-5",
                f"lossviz hessian_eigs(block_size={bs})",
                tb,
                str(rb.n_hvp),
                eig_err(rb.values),
                f"max residual {rb.residuals.max():.1e}",
            )

        def pyh():
            from pyhessian import hessian

            m = copy.deepcopy(model)
            h = hessian(m, nn.CrossEntropyLoss(), data=(x, y), cuda=dev.startswith("cuda"))
            vals, t = timed(lambda: h.eigenvalues(top_n=5)[0], dev)
            row(
                "top-5",
                "PyHessian eigenvalues(top_n=5)",
                t,
                "?",
                eig_err(vals),
                f"values {np.round(vals, 4).tolist()}",
            )
            return t

        t_pyh = peer("pyhessian", pyh)

        def he(max_iter):
            import hessian_eigenthings as H

            m = copy.deepcopy(model)
            op = H.HessianOperator(m, [(x, y)], H.supervised_loss(F.cross_entropy))
            res, t = timed(lambda: H.lanczos(op, k=5, which="LA", max_iter=max_iter, seed=0), dev)
            vals = np.asarray(
                res.eigenvalues.detach().cpu()
                if torch.is_tensor(res.eigenvalues)
                else res.eigenvalues,
                dtype=np.float64,
            )
            row(
                "top-5",
                f"hessian-eigenthings lanczos({'default' if max_iter is None else max_iter})",
                t,
                "?",
                eig_err(vals),
                f"values {np.round(np.sort(vals)[::-1], 4).tolist()}",
            )
            return t

        peer("hessian-eigenthings", lambda: he(None))
        t_he30 = peer("hessian-eigenthings", lambda: he(30))

        def cl():
            from scipy.sparse.linalg import eigsh

            Hs = curvlinops_hessian(copy.deepcopy(model), [(x, y)]).to_scipy()
            vals, t = timed(lambda: eigsh(Hs, k=5, which="LA")[0], dev)
            row("top-5", "curvlinops eigsh(to_scipy(), k=5)", t, "?", eig_err(vals))
            return t

        t_cl_eigs = peer("curvlinops:eigs", cl)
        if t_pyh:
            print(f"# top-5 speed-up vs PyHessian: {t_pyh / t_lv:.1f}x")
        if t_he30:
            print(f"# top-5 speed-up vs hessian-eigenthings (30 steps): {t_he30 / t_lv:.1f}x")
        if t_cl_eigs:
            print(f"# top-5 speed-up vs curvlinops (eigsh): {t_cl_eigs / t_lv:.1f}x")

    if "trace" in args.jobs:
        tref, tt = timed(
            lambda: lv.hessian_trace(
                obj, rtol=0.002, max_hvp=args.ref_probes, seed=123, progress=False
            ),
            dev,
        )
        obj.release()
        print(
            f"# reference trace {tref.value:.4f} ± {tref.stderr:.4f} "
            f"({tref.n_hvp} probes, {tt:.1f} s)"
        )

        def tr_err(v):
            return f"{abs(v - tref.value) / abs(tref.value):.1e}"

        r, t_lv_tr = timed(
            lambda: lv.hessian_trace(obj, rtol=0.0, max_hvp=100, progress=False), dev
        )
        obj.release()
        row(
            "trace",
            "lossviz hessian_trace(100 probes)",
            t_lv_tr,
            str(r.n_hvp),
            tr_err(r.value),
            f"{r.value:.4f} ± {r.stderr:.4f}",
        )
        r2, t2 = timed(
            lambda: lv.hessian_trace(obj, max_hvp=args.trace_budget, progress=False), dev
        )
        obj.release()
        row(
            "trace",
            "lossviz hessian_trace(rtol=0.01)",
            t2,
            str(r2.n_hvp),
            tr_err(r2.value),
            f"{r2.value:.4f} ± {r2.stderr:.4f}",
        )

        def pyh_tr():
            from pyhessian import hessian

            m = copy.deepcopy(model)
            h = hessian(m, nn.CrossEntropyLoss(), data=(x, y), cuda=dev.startswith("cuda"))
            s, t = timed(h.trace, dev)
            row(
                "trace",
                "PyHessian trace()",
                t,
                str(len(s)),
                tr_err(float(np.mean(s))),
                f"{np.mean(s):.4f}, stopped after {len(s)} samples",
            )

        peer("pyhessian", pyh_tr)

        def he_tr():
            import hessian_eigenthings as H

            m = copy.deepcopy(model)
            op = H.HessianOperator(m, [(x, y)], H.supervised_loss(F.cross_entropy))
            res, t = timed(lambda: H.hutchinson(op, num_samples=100, seed=0), dev)
            v = float(getattr(res, "estimate", getattr(res, "trace", np.nan)))
            row("trace", "hessian-eigenthings hutchinson(100)", t, "100", tr_err(v), f"{v:.4f}")

        peer("hessian-eigenthings:trace", he_tr)

        def cl_tr():
            from curvlinops import hutchinson_trace

            H = curvlinops_hessian(copy.deepcopy(model), [(x, y)])
            v, t = timed(lambda: float(hutchinson_trace(H, 100)), dev)
            row("trace", "curvlinops hutchinson_trace(100)", t, "100", tr_err(v), f"{v:.4f}")
            return t

        t_cl = peer("curvlinops", cl_tr)
        if t_cl:
            print(f"# trace (100 probes) speed-up vs curvlinops: {t_cl / t_lv_tr:.1f}x")

    if "density" in args.jobs:
        n = args.density_probes
        d, t_lv_d = timed(
            lambda: lv.hessian_density(obj, n_probes=n, steps=100, progress=False), dev
        )
        t = t_lv_d
        obj.release()
        # error: the quadrature's first moment vs the reference trace / P, and λ_max
        row(
            "density",
            f"lossviz hessian_density({n}×100)",
            t,
            str(d.n_hvp),
            f"λmax {abs(d.nodes.max() - lam[0]) / abs(lam[0]):.1e}",
            f"{t / n:.2f} s/probe, outliers {np.round(d.outliers()[:10], 3).tolist()}",
        )
        npd = args.peer_density_probes

        def pyh_d():
            from pyhessian import hessian

            m = copy.deepcopy(model)
            h = hessian(m, nn.CrossEntropyLoss(), data=(x, y), cuda=dev.startswith("cuda"))
            (eig, _), t = timed(lambda: h.density(iter=100, n_v=npd), dev)
            row(
                "density",
                f"PyHessian density({npd}×100)",
                t,
                str(100 * npd),
                f"λmax {abs(np.max(eig) - lam[0]) / abs(lam[0]):.1e}",
                f"{t / npd:.2f} s/probe",
            )
            return t

        t_pyh_d = peer("pyhessian:density", pyh_d)
        if t_pyh_d:
            print(
                f"# density speed-up per probe vs PyHessian: {(t_pyh_d / npd) / (t_lv_d / n):.1f}x"
            )

        def he_d():
            import hessian_eigenthings as H

            m = copy.deepcopy(model)
            op = H.HessianOperator(m, [(x, y)], H.supervised_loss(F.cross_entropy))
            _, t = timed(
                lambda: H.spectral_density(op, num_runs=npd, lanczos_steps=100, seed=0), dev
            )
            row(
                "density",
                f"hessian-eigenthings spectral_density({npd}×100)",
                t,
                str(100 * npd),
                "",
                f"{t / npd:.2f} s/probe",
            )

        peer("hessian-eigenthings:density", he_d)

    pm = product_methods(obj)
    print(f"# HVP methods, seconds per vector: {pm.times} -> {pm.chosen}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()
