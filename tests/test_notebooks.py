"""The teaching notebooks run top to bottom, with the assertions on what they show, and the
documentation site builds strictly with their outputs.

They are jupytext percent scripts. Each is executed here once, through a real Jupyter
kernel (nbclient, the venv's ``python3`` kernelspec, ``LOSSVIZ_PROGRESS=0``): a failing
assertion, any other exception, and any error output (a figure that cannot be displayed)
fail its test with the cell's traceback. The executed notebook is written to
``build/executed-notebooks/<name>.ipynb`` (ignored by git), and the last test builds the
site, whose gallery then shows these outputs (``mkdocs_hooks.py``) instead of the bare
sources: the notebooks are executed once, for the assertions and for the site.
"""

import hashlib
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
NB = ROOT / "notebooks"
EXECUTED = ROOT / "build" / "executed-notebooks"  # read by mkdocs_hooks.py

# Every jupytext notebook in notebooks/ runs here; a new notebook is picked up by adding it.
NOTEBOOKS = sorted(p.name for p in NB.glob("*.py"))

# The notebooks executed (and written to EXECUTED) by this test session.
_EXECUTED_NOW: set[str] = set()

# Run in the kernel before the first cell (``--IPKernelApp.exec_files``): plotly figures
# become a plotly mimetype bundle (JupyterLab) and a plain ``text/html`` div (the static
# site) that neither embeds plotly.js nor loads anything from a CDN: the site loads
# plotly.js once, from its own assets (mkdocs_hooks.py).
KERNEL_SETUP = """\
import plotly.io as _pio
from plotly.io.base_renderers import MimetypeRenderer as _MimetypeRenderer


class _LossvizStaticHtml(_MimetypeRenderer):
    def to_mimebundle(self, fig_dict):
        from plotly.io import to_html

        html = to_html(
            fig_dict,
            include_plotlyjs=False,
            include_mathjax=False,
            full_html=False,
            default_width="100%",
            default_height=525,
            validate=False,
        )
        return {"text/html": html}


_pio.renderers["lossviz_static_html"] = _LossvizStaticHtml()
_pio.renderers.default = "plotly_mimetype+lossviz_static_html"
del _pio, _MimetypeRenderer, _LossvizStaticHtml
"""

WIDGET_VIEW = "application/vnd.jupyter.widget-view+json"
WIDGET_NOTE = (
    "An interactive dashboard (ipywidgets) is displayed here when the notebook runs in "
    "Jupyter: open it with `lossviz lab`."
)
WIDGET_NOTE_HTML = (
    "<p><em>An interactive dashboard (ipywidgets) is displayed here when the notebook runs "
    "in Jupyter: open it with <code>lossviz lab</code>.</em></p>"
)
# a rendered output in mkdocs-jupyter's page (nbconvert's lab template)
_OUTPUT_DIV = re.compile(r'<div class="[^"]*\bjp-OutputArea-output\b[^"]*" data-mime-type=')
_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


def _plain(text: str) -> str:
    return _ANSI.sub("", text)


def _static_widgets(nb) -> int:
    """Replace each widget view by a note, and drop the widget state.

    A dashboard's state is the whole live model (megabytes of figure data) and needs the
    widget manager from a CDN; a static page shows a note where the dashboard would be.
    """
    n = 0
    for cell in nb.cells:
        for out in cell.get("outputs", []):
            if WIDGET_VIEW in out.get("data", {}):
                out["data"] = {
                    "text/html": WIDGET_NOTE_HTML,
                    "text/plain": WIDGET_NOTE,
                }
                n += 1
    nb.metadata.pop("widgets", None)
    return n


@pytest.fixture(scope="module")
def kernel_setup(tmp_path_factory):
    path = tmp_path_factory.mktemp("kernel") / "lossviz_notebook_setup.py"
    path.write_text(KERNEL_SETUP)
    return path


def _execute(nb, name: str, kernel_setup: Path) -> None:
    """Run ``nb`` in a fresh ``python3`` kernel (cwd ``notebooks/``); fail on any error."""
    # not importorskip: without them the notebooks' claims would go unchecked (the dev
    # extra brings nbclient, ipykernel and jupytext)
    import nbclient
    from nbclient.exceptions import CellExecutionError

    client = nbclient.NotebookClient(
        nb,
        timeout=600,
        kernel_name="python3",
        resources={"metadata": {"path": str(NB)}},
        extra_arguments=[f"--IPKernelApp.exec_files={kernel_setup}"],
        # every output is in once the last cell is idle; a graceful shutdown of a kernel
        # that imported torch costs ~2 s a notebook
        shutdown_kernel="immediate",
    )
    # the kernel gets this environment (progress bars off; the package from this checkout)
    env = dict(os.environ, LOSSVIZ_PROGRESS="0", PYTHONPATH=str(ROOT))
    try:
        client.execute(env=env)
    except CellExecutionError as e:
        pytest.fail(f"{name}: a cell raised\n{_plain(str(e))}", pytrace=False)
    errors = [
        (i, o)
        for i, cell in enumerate(nb.cells)
        for o in cell.get("outputs", [])
        if o.get("output_type") == "error"
    ]
    if errors:  # e.g. a display formatter that raised: the cell itself "succeeded"
        i, o = errors[0]
        tb = _plain("\n".join(o.get("traceback", [])))
        pytest.fail(f"{name}: error output in cell {i}:\n{nb.cells[i].source}\n{tb}", False)


def test_the_notebooks_are_found():
    assert len(NOTEBOOKS) >= 6, NOTEBOOKS


def test_the_kernel_this_suite_runs_the_notebooks_in(kernel_setup):
    """This Python and environment; figures a static page can show; widgets as a note."""
    import nbformat

    code = [
        "import os, sys\nprint(sys.executable)\nprint(os.environ['LOSSVIZ_PROGRESS'])",
        "import plotly.graph_objects as go\ngo.Figure(go.Scatter(x=[1, 2], y=[3, 4]))",
        "import ipywidgets\nipywidgets.IntSlider(3)",
        "assert 1 + 1 == 3, 'the claim does not hold'",
        "class Bad:\n    def _repr_html_(self):\n        raise ValueError('cannot draw')\nBad()",
    ]
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(c) for c in code[:3]])
    _execute(nb, "check", kernel_setup)
    exe, progress = nb.cells[0].outputs[0]["text"].split()
    assert Path(exe).resolve() == Path(sys.executable).resolve() and progress == "0"
    (fig,) = nb.cells[1].outputs
    assert {"application/vnd.plotly.v1+json", "text/html"} <= set(fig["data"])
    html = fig["data"]["text/html"]
    assert 'class="plotly-graph-div"' in html and "Plotly.newPlot" in html
    assert "<script src" not in html and len(html) < 20_000  # no plotly.js, no CDN
    assert "widgets" in nb.metadata and _static_widgets(nb) == 1
    assert "widgets" not in nb.metadata
    assert nb.cells[2].outputs[0]["data"]["text/plain"] == WIDGET_NOTE
    # an assertion in a cell fails the test, with the cell's traceback in the message
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(code[3])])
    with pytest.raises(pytest.fail.Exception, match="(?s)1 \\+ 1 == 3.*AssertionError"):
        _execute(nb, "check", kernel_setup)
    # so does an error output of a cell whose code itself succeeded (a display that raised)
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(code[4])])
    with pytest.raises(pytest.fail.Exception, match="(?s)_repr_html_.*ValueError: cannot draw"):
        _execute(nb, "check", kernel_setup)


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_notebook_runs_with_its_assertions(name, kernel_setup):
    import jupytext
    import nbformat

    stem = name.removesuffix(".py")
    out = EXECUTED / f"{stem}.ipynb"
    out.unlink(missing_ok=True)  # a failing notebook leaves no stale outputs for the site
    source = (NB / name).read_bytes()
    nb = jupytext.reads(source.decode("utf-8"), fmt="py:percent")
    _execute(nb, name, kernel_setup)
    _static_widgets(nb)
    nb.metadata["lossviz"] = {
        "source": f"notebooks/{name}",
        "source_sha256": hashlib.sha256(source).hexdigest(),
    }
    EXECUTED.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    nbformat.write(nb, tmp)
    os.replace(tmp, out)  # atomic: a concurrent site build never reads half a notebook
    _EXECUTED_NOW.add(stem)


# Defined last, so that in one pytest run it follows the notebooks above (pytest runs a
# module's tests in order) and the gallery shows their outputs; run alone, it builds the
# gallery from the sources (or from executed notebooks that match their sources).
def test_the_site_builds_strictly(tmp_path):
    pytest.importorskip("mkdocs", reason="the docs site needs the dev extra (mkdocs-material)")
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
    pages = {}
    for nb in NB.glob("*.py"):
        page = tmp_path / "gallery" / nb.stem / "index.html"
        assert page.exists(), nb.name
        pages[nb.stem] = page.read_text()

    # the notebooks executed above: their pages show their outputs, not only the source
    with_plots = []
    for stem in sorted(_EXECUTED_NOW):
        executed = json.loads((EXECUTED / f"{stem}.ipynb").read_text())
        outputs = [o for c in executed["cells"] for o in c.get("outputs", [])]
        html = pages[stem]
        if outputs:  # (the class name alone is also in the page's CSS)
            assert _OUTPUT_DIV.search(html), f"{stem}: no output on its page"
        texts = [
            line.strip()
            for o in outputs
            if o.get("output_type") == "stream" and o.get("name") == "stdout"
            for line in "".join(o["text"]).splitlines()
            if line.strip() and not any(ch in line for ch in "<>&\"'")
        ]
        if texts:  # a printed line (numbers measured by the notebook) is on the page
            assert texts[0] in html, (stem, texts[0])
        if "plotly-graph-div" in html:
            with_plots.append(stem)
            assert "assets/javascripts/plotly.min.js" in html, stem
            assert "cdn.plot.ly" not in html and "cdn.jsdelivr" not in html, stem
        assert WIDGET_VIEW not in html, stem
    if _EXECUTED_NOW:
        assert with_plots, "no executed notebook's page shows a plotly figure"
        assert (tmp_path / "assets" / "javascripts" / "plotly.min.js").stat().st_size > 10**6
