"""``lossviz`` command line: ``lossviz demo`` trains a small network on the digits data
bundled with scikit-learn and writes an HTML report of its Hessian spectrum."""

from __future__ import annotations

import argparse
import html
import sys
import time
from pathlib import Path

import torch
from torch import nn


def _section(title: str, body: str) -> str:
    return f"<section><h2>{html.escape(title)}</h2>{body}</section>"


def demo(
    out: str = "lossviz-report.html",
    *,
    steps: int = 300,
    device: str = "cpu",
    seed: int = 0,
    quiet: bool = False,
) -> Path:
    """Train an MLP on digits, measure its curvature, write a self-contained HTML report."""
    import lossviz as lv
    from lossviz.data import digits, mlp, train

    say = (lambda *a: None) if quiet else (lambda *a: print(*a, flush=True))
    t0 = time.perf_counter()
    (xtr, ytr), (xte, yte) = digits(split=0.2, seed=seed)
    model = mlp((64, 64, 64, 10), nn.Tanh, seed=seed)
    snaps = train(
        model, (xtr, ytr), steps=steps, lr=0.1, momentum=0.9, seed=seed, every=max(1, steps // 10)
    )
    model = model.to(device)
    xtr, ytr, xte, yte = (t.to(device) for t in (xtr, ytr, xte, yte))
    with torch.no_grad():
        acc = (model(xte).argmax(1) == yte).float().mean().item()
    obj = lv.Objective(model, nn.functional.cross_entropy, (xtr, ytr))
    say(
        f"trained MLP 64-64-64-10 (tanh) on digits for {steps} SGD steps: "
        f"train loss {obj.loss():.4f}, test accuracy {acc:.3f}"
    )
    say(obj)
    eig = lv.hessian_eigs(obj, k=10, which="both", tol=1e-4)
    say(eig)
    dens = lv.hessian_density(obj, n_probes=8, steps=60, seed=seed)
    say(dens)
    tr = lv.hessian_trace(obj, rtol=0.02, max_hvp=2000, seed=seed)
    say(tr)
    layers = lv.hessian_blocks(obj, "module", k=1, rtol=0.05, max_hvp=1000)
    say(layers)
    ggn = lv.hessian_eigs(obj, k=10, curvature="ggn", tol=1e-4)
    say(ggn)
    pca = lv.pca_directions(snaps, 2)
    path = lv.surface(obj, None, pca, n=(41, 41), metrics=("loss", "accuracy"))
    say(f"loss surface on the PCA plane of the training path: {path}")
    rnd = lv.surface(obj, None, lv.random_directions(obj, 2, seed=seed), n=(41, 41))
    top_dir = lv.line(obj, None, eig.vectors[-1], span=(-3, 3), n=61)
    rough = lv.roughness_index(obj, n_directions=40, seed=seed)
    say(rough)

    figs = [
        ("Spectral density (stochastic Lanczos quadrature)", dens.plot(log=True)),
        ("Extreme eigenvalues of the Hessian", eig.plot()),
        ("Top eigenvalues of the Gauss-Newton matrix", ggn.plot()),
        ("Trace estimate", tr.plot()),
        ("Curvature per layer", layers.plot("λ1")),
        (
            "Loss on the PCA plane of the training trajectory (Li et al. 2018)",
            path.plot("contour", log=True),
        ),
        (
            "Loss around the trained model, filter-normalized random directions",
            rnd.plot("contour", log=True),
        ),
        ("Loss along the top Hessian eigenvector", top_dir.plot()),
        ("Roughness index (Wu et al. 2021): the 40 normalized slices", rough.plot()),
    ]
    parts = [
        "<h1>lossviz report</h1>",
        f"<p>MLP 64-64-64-10 (tanh), {obj.n_params:,} parameters, trained {steps} SGD steps "
        f"on scikit-learn's digits ({len(ytr)} training images). Train loss "
        f"{obj.loss():.4f}, test accuracy {acc:.3f}. Computed on {device} in "
        f"{time.perf_counter() - t0:.1f} s.</p>",
        _section(
            "Summary",
            eig._repr_html_()
            + tr._repr_html_()
            + dens._repr_html_()
            + layers._repr_html_()
            + ggn._repr_html_(),
        ),
    ]
    for i, (title, fig) in enumerate(figs):
        parts.append(
            _section(
                title, fig.to_html(full_html=False, include_plotlyjs="inline" if i == 0 else False)
            )
        )
    style = (
        "<style>body{font-family:system-ui,sans-serif;max-width:1000px;margin:auto;"
        "padding:1em}table{border-collapse:collapse;margin:.5em 0}td,th{border:1px solid"
        " #ccc;padding:2px 8px;text-align:right}caption{text-align:left;color:#555}</style>"
    )
    path = Path(out)
    path.write_text(
        "<!doctype html><html><head><meta charset='utf-8'><title>lossviz report"
        f"</title>{style}</head><body>{''.join(parts)}</body></html>",
        encoding="utf-8",
    )
    say(f"report written to {path.resolve()}")
    return path


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="lossviz", description=__doc__.split("\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    d = sub.add_parser("demo", help="train on bundled digits data and write an HTML report")
    d.add_argument("--out", default="lossviz-report.html")
    d.add_argument("--steps", type=int, default=300)
    d.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    d.add_argument("--seed", type=int, default=0)
    d.add_argument("--quiet", action="store_true")
    args = ap.parse_args(argv)
    if args.cmd == "demo":
        demo(args.out, steps=args.steps, device=args.device, seed=args.seed, quiet=args.quiet)
    return 0


if __name__ == "__main__":
    sys.exit(main())
