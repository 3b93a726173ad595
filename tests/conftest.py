import os

import torch

os.environ.setdefault("LOSSVIZ_PROGRESS", "0")
# tiny models: one thread is faster and immune to oversubscription on shared CI cores
torch.set_num_threads(1)
