"""Test settings. The shared test helpers (small float64 models, the references computed
without lossviz: ``dense_hessian``, ``reference_gradient``; and ``snapshot`` /
``assert_unchanged``, the one model-unchanged check) live in ``tests/reference.py``:
``from reference import ...`` (this folder is on ``sys.path`` under pytest)."""

import os

import torch

os.environ.setdefault("LOSSVIZ_PROGRESS", "0")
# tiny models: one thread is faster and immune to oversubscription on shared CI cores
torch.set_num_threads(1)
