"""Hessian-vector products and top-5 eigenpairs of GPT-2-style decoders, by size.

For each size: the time and peak memory of one forward + backward (the physical reference:
a Hessian-vector product costs about 2-3 of them), of one Hessian-vector product through
``Objective.operator()``, and of ``hessian_eigs(k=5)``; the ratio HVP / (forward +
backward) is printed. Models are ``transformers.GPT2LMHeadModel(GPT2Config(...))`` with
random initialisation (nothing downloaded), the causal-LM loss through ``forward=`` on a
random token batch. Peak memory: ``torch.cuda.max_memory_allocated`` on a GPU, the growth
of the process's peak resident set (``ru_maxrss``) on a CPU (a lower bound per step, as
the peak only grows).

    python benchmarks/lm_scale.py --sizes 1M 10M --device cpu
    python benchmarks/lm_scale.py --sizes 1M 10M 30M 100M --device cuda
"""

from __future__ import annotations

import argparse
import os
import resource
import sys
import time

import torch

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

import lossviz as lv  # noqa: E402

#: approximate parameter count -> (layers, width, heads); vocabulary 8192, context 128
SIZES = {
    "1M": (2, 64, 4),
    "10M": (4, 256, 4),
    "30M": (6, 512, 8),
    "100M": (12, 768, 12),
}


def build(size: str, device):
    from transformers import GPT2Config, GPT2LMHeadModel

    n_layer, n_embd, n_head = SIZES[size]
    cfg = GPT2Config(
        n_layer=n_layer,
        n_embd=n_embd,
        n_head=n_head,
        vocab_size=8192,
        n_positions=128,
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
        bos_token_id=0,
        eos_token_id=0,
    )
    torch.manual_seed(0)
    return GPT2LMHeadModel(cfg).to(device).eval()


def lm_loss(model, batch):
    ids = batch[0]
    logits = model(input_ids=ids).logits
    return torch.nn.functional.cross_entropy(
        logits[:, :-1].reshape(-1, logits.shape[-1]), ids[:, 1:].reshape(-1)
    )


def peak_bytes(device) -> int:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device)
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def timed(fn, device, repeat=3):
    """(best seconds, peak bytes during the calls)."""
    fn()  # warm-up
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        best = min(best, time.perf_counter() - t0)
    return best, peak_bytes(device)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", nargs="+", default=["1M", "10M"], choices=list(SIZES))
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--batch", type=int, default=8, help="sequences per batch")
    ap.add_argument("--seq", type=int, default=128, help="tokens per sequence")
    ap.add_argument("--eigs", action="store_true", help="also time hessian_eigs(k=5)")
    args = ap.parse_args()
    device = torch.device(args.device)
    print(f"device: {device} ({torch.get_num_threads()} threads), torch {torch.__version__}")
    print("size   params      fwd+bwd      HVP    HVP/(f+b)   peak HVP    top-5 eigs (HVPs)")
    for size in args.sizes:
        model = build(size, device)
        n = sum(p.numel() for p in model.parameters())
        g = torch.Generator().manual_seed(0)
        ids = torch.randint(0, 8192, (args.batch, args.seq), generator=g).to(device)
        batch = (ids,)

        def fwd_bwd(model=model, batch=batch):
            model.zero_grad(set_to_none=True)
            lm_loss(model, batch).backward()

        t_fb, _ = timed(fwd_bwd, device)
        model.zero_grad(set_to_none=True)
        obj = lv.Objective(model, forward=lm_loss, data=batch)
        op = obj.operator()
        v = torch.randn(1, op.shape[0], generator=g).to(device, obj.dtype)
        t_hvp, mem = timed(lambda op=op, v=v: op.apply(v), device)
        eig = ""
        if args.eigs:
            t0 = time.perf_counter()
            e = lv.hessian_eigs(obj, k=5, progress=False)
            eig = f"{time.perf_counter() - t0:8.1f} s ({e.n_hvp})"
        print(
            f"{size:5s} {n / 1e6:7.2f} M {t_fb * 1e3:9.1f} ms {t_hvp * 1e3:8.1f} ms"
            f" {t_hvp / t_fb:8.2f}x {mem / 2**30:8.2f} GiB   {eig}"
        )
        del obj, op, model


if __name__ == "__main__":
    main()
