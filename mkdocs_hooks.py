"""mkdocs hooks: the README as home page, and the gallery as the tests executed it.

The README is the site's home page (one text, two places).

``tests/test_notebooks.py`` executes each notebook of ``notebooks/`` through a kernel and
writes it, with its outputs, to ``build/executed-notebooks/<name>.ipynb`` (ignored by git).
A gallery page ``gallery/<name>.py`` is rendered from that executed notebook when it exists
and was executed from the current source (the sha256 of the source is in its metadata);
otherwise from the source, without outputs. The page's URL is the same either way.
Plotly figures in the outputs are plain divs: the pages that have one load plotly.js from
the site's own assets, so the gallery works offline.
"""

import hashlib
import json
from pathlib import Path

from mkdocs.plugins import event_priority
from mkdocs.utils import get_relative_url

ROOT = Path(__file__).resolve().parent
README = ROOT / "README.md"
EXECUTED = ROOT / "build" / "executed-notebooks"
PLOTLY_JS = "assets/javascripts/plotly.min.js"
_needs_plotly = False


def executed_notebook(source: Path) -> Path | None:
    """The executed notebook of ``source`` when one exists and matches the source."""
    executed = EXECUTED / f"{source.stem}.ipynb"
    try:
        meta = json.loads(executed.read_text(encoding="utf-8"))["metadata"]["lossviz"]
        digest = hashlib.sha256(source.read_bytes()).hexdigest()
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return executed if meta.get("source_sha256") == digest else None


@event_priority(-50)  # after mkdocs-jupyter has wrapped the notebooks (its NotebookFile)
def on_files(files, config):
    """Point each gallery page whose notebook was executed at the executed notebook.

    mkdocs-jupyter renders ``page.file.abs_src_path`` (its ``include`` matches both the
    ``.py`` sources and ``executed-notebooks/*.ipynb``); the page keeps its URL.
    """
    for file in files:
        if file.src_uri.startswith("gallery/") and file.src_uri.endswith(".py"):
            executed = executed_notebook(Path(file.abs_src_path))
            if executed is not None:
                file.abs_src_path = str(executed)
    return files


def on_pre_build(config):
    """A new build: no page has asked for plotly.js yet."""
    global _needs_plotly
    _needs_plotly = False


def on_page_read_source(page, config):
    """The home page's source: the README, with its ``docs/`` links made site-relative."""
    if page.file.src_uri == "index.md":
        return README.read_text(encoding="utf-8").replace("](docs/", "](")
    return None


def on_post_page(output, page, config):
    """Pages with plotly figures load plotly.js (from the site) before the figures draw."""
    global _needs_plotly
    if 'class="plotly-graph-div"' not in output:
        return output
    _needs_plotly = True
    src = get_relative_url(PLOTLY_JS, page.url)
    return output.replace("</head>", f'<script src="{src}"></script>\n</head>', 1)


def on_post_build(config):
    """Write plotly.js (the version the kernel drew the figures with) into the site."""
    if not _needs_plotly:
        return
    from plotly.offline import get_plotlyjs

    target = Path(config["site_dir"]) / PLOTLY_JS
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(get_plotlyjs(), encoding="utf-8")
