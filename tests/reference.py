"""Small float64 models and their exact dense Hessians (torch.func.hessian)."""

from __future__ import annotations

import torch
from torch import nn
from torch.autograd.functional import hessian
from torch.func import jacrev

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


def dense_hessian(obj: lv.Objective, at=None, curvature="hessian") -> torch.Tensor:
    """The exact Hessian (or GGN) of the objective's full-data loss, dense float64.

    Plain autograd, reverse-over-reverse, one row at a time: ``torch.func.hessian`` and
    even ``jacrev(jacrev(f))`` are wrong through BatchNorm with batch statistics in torch
    2.13 (see ``test_torch_func_batchnorm_bug_is_avoided``); they agree elsewhere."""
    from lossviz.objective import _math_sdpa

    with _math_sdpa():
        return _dense(obj, at, curvature)


def _dense(obj, at, curvature):
    flat, fixed = obj.resolve(at)
    batches = list(obj.batches())
    total = sum(nb for _, nb in batches)

    def full_loss(theta):
        return sum(obj.batch_loss(theta, fixed, b) * (nb / total) for b, nb in batches)

    if curvature == "hessian":
        return hessian(full_loss, flat)
    # GGN: Σ_b w_b J_bᵀ H_ℓ J_b
    G = 0
    for b, nb in batches:
        J = torch.func.jacrev(lambda t, b=b: obj.batch_outputs(t, fixed, b))(flat)
        out = obj.batch_outputs(flat, fixed, b).detach()
        Hl = jacrev(jacrev(lambda o, b=b: obj.loss_fn(o, b[1])))(out)
        J2 = J.reshape(out.numel(), -1)
        G = G + (nb / total) * J2.T @ Hl.reshape(out.numel(), out.numel()) @ J2
    return G


def snapshot(model: nn.Module):
    """Everything about a model a call must leave alone."""
    return {
        "params": {
            n: (p.detach().clone(), p.requires_grad, None if p.grad is None else p.grad.clone())
            for n, p in model.named_parameters()
        },
        "buffers": {n: b.detach().clone() for n, b in model.named_buffers()},
        "modes": [m.training for m in model.modules()],
        "ids": [id(p) for p in model.parameters()],
    }


def assert_unchanged(model: nn.Module, snap) -> None:
    now = snapshot(model)
    assert now["modes"] == snap["modes"], "train/eval mode changed"
    assert now["ids"] == snap["ids"], "parameters were replaced"
    for n, (p, rg, g) in snap["params"].items():
        p2, rg2, g2 = now["params"][n]
        assert torch.equal(p, p2), f"parameter {n} changed"
        assert rg == rg2, f"requires_grad of {n} changed"
        assert (g is None) == (g2 is None) and (g is None or torch.equal(g, g2)), (
            f".grad of {n} changed"
        )
    for n, b in snap["buffers"].items():
        assert torch.equal(b, now["buffers"][n]), f"buffer {n} changed"


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
