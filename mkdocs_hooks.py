"""mkdocs hooks: the README is the site's home page (one text, two places)."""

from pathlib import Path

README = Path(__file__).resolve().parent / "README.md"


def on_page_read_source(page, config):
    """The home page's source: the README, with its ``docs/`` links made site-relative."""
    if page.file.src_uri == "index.md":
        return README.read_text(encoding="utf-8").replace("](docs/", "](")
    return None
