import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from lab_harness import browser, browser_ok, lab, lab_root, page  # noqa: E402, F401
