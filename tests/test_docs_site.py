"""The documentation site's navigation (mkdocs-material, mkdocstrings, mkdocs-jupyter).

Every page under ``docs/`` and every notebook under ``notebooks/`` is in the navigation.
The strict build itself (home page = the README, API reference from the docstrings, the
gallery with the notebooks' outputs) is the last test of ``tests/test_notebooks.py``, so
that it runs after the notebooks have been executed.
"""

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
