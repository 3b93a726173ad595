"""Small float64 models, and references computed without lossviz: dense Hessians and
Gauss-Newton matrices by plain autograd on a copy of the model, losses and gradients by
``model(x)`` and ``backward()``, and the model-unchanged check shared by every test."""

from __future__ import annotations

import copy
import json
import os
import re
import subprocess
import sys

import torch
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel

import lossviz as lv

F = nn.functional


class AttentionBlock(nn.Module):
    """LayerNorm + multi-head self-attention (SDPA) + MLP, mean-pooled to a classifier."""

    def __init__(self, d=8, heads=2, classes=3):
        super().__init__()
        self.ln1 = nn.LayerNorm(d)
        self.qkv = nn.Linear(d, 3 * d)
        self.proj = nn.Linear(d, d)
        self.ln2 = nn.LayerNorm(d)
        self.fc = nn.Linear(d, d)
        self.head = nn.Linear(d, classes)
        self.heads = heads

    def forward(self, x):
        b, t, d = x.shape
        q, k, v = self.qkv(self.ln1(x)).split(d, dim=-1)
        q, k, v = (z.view(b, t, self.heads, d // self.heads).transpose(1, 2) for z in (q, k, v))
        a = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        x = x + self.proj(a.transpose(1, 2).reshape(b, t, d))
        x = x + torch.tanh(self.fc(self.ln2(x)))
        return self.head(x.mean(1))


class TiedNet(nn.Module):
    """Input embedding and output layer share one weight matrix."""

    def __init__(self, vocab=7, d=4):
        super().__init__()
        self.emb = nn.Embedding(vocab, d)
        self.mid = nn.Linear(d, d)
        self.out = nn.Linear(d, vocab, bias=False)
        self.out.weight = self.emb.weight

    def forward(self, idx):
        return self.out(torch.tanh(self.mid(self.emb(idx).mean(1))))


def mlp_case(seed=0, n=40):
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    m = nn.Sequential(nn.Linear(5, 7), nn.Tanh(), nn.Linear(7, 3)).double()
    x = torch.randn(n, 5, generator=g, dtype=torch.float64)
    y = torch.randint(0, 3, (n,), generator=g)
    return m, F.cross_entropy, (x, y)


def cnn_case(seed=0, n=12):
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    m = nn.Sequential(
        nn.Conv2d(1, 3, 3), nn.BatchNorm2d(3), nn.ReLU(), nn.Flatten(), nn.Linear(3 * 4 * 4, 3)
    ).double()
    # running statistics that differ from the batch statistics
    m[1].running_mean.normal_(0, 0.3, generator=g)
    m[1].running_var.uniform_(0.5, 2.0, generator=g)
    x = torch.randn(n, 1, 6, 6, generator=g, dtype=torch.float64)
    y = torch.randint(0, 3, (n,), generator=g)
    return m, F.cross_entropy, (x, y)


def attention_case(seed=0, n=6):
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    m = AttentionBlock().double()
    x = torch.randn(n, 5, 8, generator=g, dtype=torch.float64)
    y = torch.randint(0, 3, (n,), generator=g)
    return m, F.cross_entropy, (x, y)


def tied_case(seed=0, n=10):
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    m = TiedNet().double()
    x = torch.randint(0, 7, (n, 3), generator=g)
    y = torch.randint(0, 7, (n,), generator=g)
    return m, F.cross_entropy, (x, y)


CASES = {"mlp": mlp_case, "cnn_bn": cnn_case, "attention": attention_case, "tied": tied_case}


def _batches_of(data):
    """The batches of ``data`` as the user gave it: one batch (a tuple/list whose first
    item is a tensor, a dict or a tensor) or an iterable of batches (list, DataLoader)."""
    if isinstance(data, (torch.Tensor, dict)):
        return [data]
    if isinstance(data, (tuple, list)) and data and isinstance(data[0], torch.Tensor):
        return [data]
    return list(data)


def _n_samples(batch) -> int:
    """The leading size of the batch's first tensor."""
    if isinstance(batch, torch.Tensor):
        return batch.shape[0]
    first = next(iter(batch.values() if isinstance(batch, dict) else batch))
    return _n_samples(first)


def _model_copy(model: nn.Module, bn: str, at) -> nn.Module:
    """A fresh deep copy of ``model`` in eval mode (BatchNorm in train mode for
    ``bn="train"``), with the tensors of ``at`` (a module, a state dict or a checkpoint
    file) loaded into it."""
    m = copy.deepcopy(model)
    m.eval()
    if bn == "train":
        for mod in m.modules():
            if isinstance(
                mod, (nn.modules.batchnorm._BatchNorm, nn.modules.instancenorm._InstanceNorm)
            ):
                mod.train()
    if at is not None:
        if isinstance(at, nn.Module):
            sd = at.state_dict()
        elif isinstance(at, (str, os.PathLike)):
            if str(at).endswith(".safetensors"):
                from safetensors.torch import load_file

                sd = load_file(str(at))
            else:
                sd = torch.load(at, weights_only=True)
                sd = sd.get("state_dict", sd)
        else:
            sd = dict(at)
        own = m.state_dict()
        unknown = set(sd) - set(own)
        assert not unknown, f"reference: unknown keys {unknown}"
        with torch.no_grad():
            for k, v in sd.items():
                own[k].copy_(v)  # in place: tied tensors stay tied
    return m


def _spec(model, loss_fn, data, kw):
    """``dense_hessian(obj)``: the user's arguments an Objective was built from (its
    model, loss, data and options: nothing lossviz computed)."""
    if isinstance(model, lv.Objective):
        obj = model
        assert loss_fn is None and data is None
        held = obj.held_batches()
        assert held is not None, "pass the data explicitly for a streamed Objective"
        kw = {
            "bn": obj.bn,
            "params": list(obj.names),
            "forward": obj.forward,
            "reduction": obj.reduction,
            **kw,
        }
        return obj.model, obj.loss_fn, held, kw
    return model, loss_fn, data, kw


def reference_loss(model, loss_fn, data, *, forward=None, reduction="mean"):
    """The full-data loss as a graph on the parameters of ``model`` itself (call it on a
    copy): ``Σ_b n_b·L_b / Σ_b n_b`` (``reduction="mean"``) or ``Σ_b L_b`` ("sum")."""
    batches = _batches_of(data)
    sizes = [_n_samples(b) for b in batches]
    total = 0
    with sdpa_kernel([SDPBackend.MATH]):  # double backward through attention
        for b, nb in zip(batches, sizes):
            lb = forward(model, b) if forward is not None else loss_fn(model(b[0]), b[1])
            total = total + (lb * nb if reduction == "mean" else lb)
    return total / sum(sizes) if reduction == "mean" else total


def _params(m: nn.Module, params) -> list[torch.Tensor]:
    named = dict(m.named_parameters())  # one entry per tensor: tied weights once
    names = (
        list(params)
        if params is not None
        else [n for n, p in named.items() if p.requires_grad and p.numel() > 0]
    )
    for n in names:
        named[n].requires_grad_(True)
    return [named[n] for n in names]


def _flat_grad(out, ps, **kw) -> torch.Tensor:
    gs = torch.autograd.grad(out, ps, allow_unused=True, **kw)
    return torch.cat(
        [
            torch.zeros(p.numel(), dtype=p.dtype, device=p.device) if g is None else g.reshape(-1)
            for g, p in zip(gs, ps)
        ]
    )


def _jacobian(out: torch.Tensor, ps) -> torch.Tensor:
    """``d out / d θ`` as a dense ``(out.numel(), P)`` matrix, one backward per row."""
    flat = out.reshape(-1)
    return torch.stack([_flat_grad(flat[i], ps, retain_graph=True) for i in range(flat.numel())])


def dense_hessian(
    model,
    loss_fn=None,
    data=None,
    *,
    at=None,
    curvature="hessian",
    bn="eval",
    params=None,
    forward=None,
    reduction="mean",
) -> torch.Tensor:
    """The exact Hessian (or Gauss-Newton matrix) of a model's full-data loss, dense.

    Independent of lossviz: plain PyTorch autograd (double backward, one row at a time)
    on the parameters of a fresh deep copy of ``model`` (eval mode; BatchNorm in train
    mode with ``bn="train"``), with the loss built from ``model(x)`` and ``loss_fn`` and
    batches combined as a sample-weighted mean (``reduction="mean"``) or a sum. The GGN
    is ``Σ_b w_b J_bᵀ H_b J_b`` with ``J_b`` the Jacobian of the outputs and ``H_b`` the
    Hessian of the loss in the outputs, both by plain autograd. ``torch.func.hessian``
    and ``jacrev(jacrev(f))`` are not used: they are wrong through BatchNorm with batch
    statistics in torch 2.13 (see ``test_torch_func_batchnorm_bug_is_avoided``).

    ``dense_hessian(obj)`` (an Objective) reads only what the Objective was built from
    (model, loss, held batches, ``bn``, ``params``, ``forward``, ``reduction``).
    ``params``: names of the varying parameters, in the order of the result's rows
    (default: every parameter with ``requires_grad``, in ``named_parameters`` order).
    """
    model, loss_fn, data, kw = _spec(
        model,
        loss_fn,
        data,
        {"bn": bn, "params": params, "forward": forward, "reduction": reduction}
        if not isinstance(model, lv.Objective)
        else {},
    )
    m = _model_copy(model, kw["bn"], at)
    ps = _params(m, kw["params"])
    if curvature == "hessian":
        loss = reference_loss(m, loss_fn, data, forward=kw["forward"], reduction=kw["reduction"])
        g = _flat_grad(loss, ps, create_graph=True)
        rows = [
            _flat_grad(gi, ps, retain_graph=True) if gi.requires_grad else torch.zeros_like(g)
            for gi in g
        ]
        return torch.stack(rows).detach()
    assert curvature == "ggn" and kw["forward"] is None
    batches = _batches_of(data)
    sizes = [_n_samples(b) for b in batches]
    G = 0
    with sdpa_kernel([SDPBackend.MATH]):
        for (x, y), nb in zip(batches, sizes):
            out = m(x)
            J = _jacobian(out, ps)
            o = out.detach()
            Hl = torch.autograd.functional.hessian(lambda z, y=y: loss_fn(z, y), o)
            Hl = Hl.reshape(o.numel(), o.numel())
            w = nb / sum(sizes) if kw["reduction"] == "mean" else 1.0
            G = G + w * J.T @ Hl @ J
    return G.detach()


def reference_gradient(
    model, loss_fn, data, *, bn="eval", at=None, params=None, forward=None, reduction="mean"
) -> tuple[float, torch.Tensor]:
    """``(loss, flat gradient)`` of the full-data loss by plain autograd on the parameters
    of a fresh copy of ``model`` (the same conventions as :func:`dense_hessian`)."""
    m = _model_copy(model, bn, at)
    ps = _params(m, params)
    loss = reference_loss(m, loss_fn, data, forward=forward, reduction=reduction)
    return float(loss.detach()), _flat_grad(loss, ps)


def snapshot(model: nn.Module):
    """Everything about a model a call must leave alone."""
    return {
        "params": {
            n: (
                p.detach().clone(),
                p.requires_grad,
                None if p.grad is None else p.grad.clone(),
                p.data_ptr(),
            )
            for n, p in model.named_parameters(remove_duplicate=False)
        },
        "buffers": {n: b.detach().clone() for n, b in model.named_buffers()},
        "modes": [(type(m).__name__, m.training) for m in model.modules()],
        "ids": [id(p) for p in model.parameters()],
    }


def assert_unchanged(model: nn.Module, snap) -> None:
    """Asserts that ``model`` is exactly as :func:`snapshot` recorded it: the same
    parameter objects and storage, values, dtypes, devices, ``requires_grad``, ``.grad``,
    buffers and the train/eval mode of every module."""
    now = snapshot(model)
    assert now["modes"] == snap["modes"], "train/eval mode changed"
    assert now["ids"] == snap["ids"], "parameters were replaced"
    assert now["params"].keys() == snap["params"].keys(), "parameter names changed"
    assert now["buffers"].keys() == snap["buffers"].keys(), "buffer names changed"
    for n, (p, rg, g, ptr) in snap["params"].items():
        p2, rg2, g2, ptr2 = now["params"][n]
        assert p.dtype == p2.dtype and p.device == p2.device, f"dtype/device of {n} changed"
        assert torch.equal(p, p2), f"parameter {n} changed"
        assert ptr == ptr2, f"storage of parameter {n} was replaced"
        assert rg == rg2, f"requires_grad of {n} changed"
        assert (g is None) == (g2 is None) and (g is None or torch.equal(g, g2)), (
            f".grad of {n} changed"
        )
    for n, b in snap["buffers"].items():
        b2 = now["buffers"][n]
        assert b.dtype == b2.dtype and torch.equal(b, b2), f"buffer {n} changed"


class Ticker:
    """Raises KeyboardInterrupt after ``left`` calls; shared by every copy of a model."""

    def __init__(self):
        self.left = None

    def __deepcopy__(self, memo):
        return self

    def __call__(self):
        if self.left is not None:
            self.left -= 1
            if self.left < 0:
                raise KeyboardInterrupt


class Tick(nn.Module):
    """An identity layer that calls a :class:`Ticker` at every forward."""

    def __init__(self, ticker):
        super().__init__()
        self.ticker = ticker

    def forward(self, x):
        self.ticker()
        return x


# ---- torchrun: a worker script on 2 ranks (gloo, CPU) ----------------------------------
_INFRA = re.compile(
    r"EADDRINUSE|[Aa]ddress already in use|DistNetworkError|RendezvousError|TCPStore|"
    r"Connection refused"
)


def run_ranks(worker: str, out, nproc: int = 2, timeout: int = 240) -> list[dict]:
    """Run ``worker`` under ``torchrun --nproc_per_node=nproc``; each rank's JSON results.

    The worker writes ``OUT_DIR/rank{r}.json``. A port taken between torchrun's choice and
    its use is retried once (never when a check of the worker failed); a hang fails.
    """
    import pytest

    env = {
        **os.environ,
        "OUT_DIR": str(out),
        "OMP_NUM_THREADS": "1",
        "LOSSVIZ_PROGRESS": "0",
        "PYTHONPATH": os.pathsep.join(
            [os.path.dirname(os.path.dirname(worker)), os.environ.get("PYTHONPATH", "")]
        ),
    }
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        f"--nproc_per_node={nproc}",
        "--nnodes=1",
        "--rdzv-backend=c10d",
        "--rdzv-endpoint=localhost:0",
        worker,
    ]
    for attempt in range(2):
        try:
            p = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired as e:
            pytest.fail(f"the {nproc}-rank run did not finish in {timeout} s (a hang?): {e}")
        text = p.stdout + p.stderr
        failed_check = "AssertionError" in text or "LossvizError" in text
        if p.returncode and attempt == 0 and not failed_check and _INFRA.search(text):
            continue
        break
    assert p.returncode == 0, f"torchrun failed:\n{p.stdout[-4000:]}\n{p.stderr[-6000:]}"
    return [json.loads((out / f"rank{r}.json").read_text()) for r in range(nproc)]
