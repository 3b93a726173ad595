"""Bundled real data and small models for demos, notebooks, tests and benchmarks.

scikit-learn's digits (1,797 8×8 images, 10 classes) ships with scikit-learn: no download.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


def digits(*, split: float | None = None, dtype=torch.float32, device=None, seed: int = 0):
    """The digits dataset as tensors: inputs ``(N, 64)`` scaled to [0, 1], labels ``(N,)``.

    Args:
        split: A test fraction; when given the data are split along a fixed random
            permutation (``round(split * N)`` test samples).
        dtype: The dtype of the inputs.
        device: Where the tensors live.
        seed: The seed of the permutation used by ``split``.

    Returns:
        ``(x, y)``, or ``((x_train, y_train), (x_test, y_test))`` with ``split``.

    Raises:
        ImportError: if scikit-learn is not installed.
    """
    try:
        from sklearn.datasets import load_digits
    except ImportError as e:  # pragma: no cover
        raise ImportError("the digits data needs scikit-learn: pip install 'lossviz[demo]'") from e
    d = load_digits()
    x = torch.tensor(d.data, dtype=dtype, device=device) / 16.0
    y = torch.tensor(d.target, dtype=torch.long, device=device)
    if split is None:
        return x, y
    perm = torch.randperm(len(y), generator=torch.Generator().manual_seed(seed)).to(x.device)
    n_test = int(round(split * len(y)))
    te, tr = perm[:n_test], perm[n_test:]
    return (x[tr], y[tr]), (x[te], y[te])


def mlp(
    sizes=(64, 64, 64, 10), activation: type[nn.Module] = nn.ReLU, *, seed: int = 0
) -> nn.Module:
    """A fully connected network ``sizes[0] -> ... -> sizes[-1]`` with a fixed init seed.

    Args:
        sizes: The layer widths, input first.
        activation: The activation module class placed between linear layers.
        seed: The seed of the initialization (the global RNG state is restored).

    Returns:
        An ``nn.Sequential`` of ``nn.Linear`` layers and activations.
    """
    g = torch.random.fork_rng(devices=[])
    with g:
        torch.manual_seed(seed)
        layers: list[nn.Module] = []
        for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
            layers.append(nn.Linear(a, b))
            if i < len(sizes) - 2:
                layers.append(activation())
        return nn.Sequential(*layers)


def train(
    model: nn.Module,
    data: tuple[Tensor, Tensor],
    *,
    steps: int = 300,
    lr: float = 0.1,
    momentum: float = 0.9,
    batch_size: int | None = 128,
    loss_fn=nn.functional.cross_entropy,
    seed: int = 0,
    every: int | None = None,
) -> list[dict[str, Tensor]]:
    """Train ``model`` in place with SGD (this one is meant to change the model).

    Args:
        model: The model to train; left in eval mode.
        data: ``(x, y)`` tensors.
        steps: The number of SGD steps.
        lr: The learning rate.
        momentum: The SGD momentum.
        batch_size: Mini-batches drawn with replacement; the full data when None or at
            least ``len(y)``.
        loss_fn: ``loss_fn(model(x), y)`` is minimized.
        seed: The seed of the mini-batch sampling.
        every: Snapshot period in steps (only the final state when None or 0).

    Returns:
        State-dict snapshots (detached clones) every ``every`` steps, then the last one.
    """
    x, y = data
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum)
    gen = torch.Generator().manual_seed(seed)
    snaps = []
    model.train()
    for step in range(steps):
        if every and step % every == 0:
            snaps.append({k: v.detach().clone() for k, v in model.state_dict().items()})
        if batch_size is None or batch_size >= len(y):
            xb, yb = x, y
        else:
            idx = torch.randint(0, len(y), (batch_size,), generator=gen).to(x.device)
            xb, yb = x[idx], y[idx]
        opt.zero_grad(set_to_none=True)
        loss_fn(model(xb), yb).backward()
        opt.step()
    model.eval()
    snaps.append({k: v.detach().clone() for k, v in model.state_dict().items()})
    return snaps
