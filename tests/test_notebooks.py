"""The teaching notebooks run top to bottom, with the assertions on what they show.

They are jupytext percent scripts (open them in Jupyter with jupytext); here each runs as
a plain script, so no kernel is needed."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

NB = Path(__file__).resolve().parent.parent / "notebooks"


# Every jupytext notebook in notebooks/ runs here; a new notebook is picked up by adding it.
NOTEBOOKS = sorted(p.name for p in NB.glob("*.py"))


def test_the_notebooks_are_found():
    assert len(NOTEBOOKS) >= 6, NOTEBOOKS


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_notebook_runs_with_its_assertions(name):
    env = dict(os.environ, LOSSVIZ_PROGRESS="0", PYTHONPATH=str(NB.parent))
    r = subprocess.run(
        [sys.executable, str(NB / name)], env=env, capture_output=True, text=True, timeout=600
    )
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-4000:]
