"""The documentation site builds strictly (mkdocs-material, mkdocstrings, mkdocs-jupyter).

Every page under ``docs/`` and every notebook under ``notebooks/`` is in the navigation,
the home page is the README, and the API reference is generated from the docstrings.
"""

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

pytest.importorskip("mkdocs", reason="the docs site needs the dev extra (mkdocs-material)")
yaml = pytest.importorskip("yaml")


def _nav_files(nav) -> list[str]:
    out = []
    for item in nav:
        if isinstance(item, str):
            out.append(item)
        elif isinstance(item, dict):
            for v in item.values():
                out.extend(_nav_files(v) if isinstance(v, list) else [v])
    return out


def test_every_page_and_notebook_is_in_the_navigation():
    text = (ROOT / "mkdocs.yml").read_text()
    nav = set(_nav_files(yaml.safe_load(text)["nav"]))
    pages = {p.name for p in (ROOT / "docs").glob("*.md")}
    notebooks = {f"gallery/{p.name}" for p in (ROOT / "notebooks").glob("*.py")}
    missing = (pages | notebooks) - nav
    assert not missing, f"not in mkdocs.yml's nav: {sorted(missing)}"
    assert not (nav - pages - notebooks), sorted(nav - pages - notebooks)


def test_the_site_builds_strictly(tmp_path):
    r = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "-q", "-d", str(tmp_path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-6000:]
    home = (tmp_path / "index.html").read_text()
    assert "In ten lines" in home and "docs/core.md" not in home  # the README, links fixed
    api = (tmp_path / "api" / "index.html").read_text()
    for name in ("hessian_eigs", "surface", "interpolate", "Objective"):
        assert name in api, name
    for nb in (ROOT / "notebooks").glob("*.py"):
        assert (tmp_path / "gallery" / nb.stem / "index.html").exists(), nb.name
