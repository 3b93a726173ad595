import os

os.environ.setdefault("LOSSVIZ_PROGRESS", "0")
