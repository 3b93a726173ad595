"""Harness of the real-browser tests: JupyterLab (and Voila) on 127.0.0.1 driven by Debian chromium
through pip playwright. Skipped, with the reason, where chromium, playwright or the
notebook stack is missing; CI installs all of them (.ci/run). Screenshots go to
out/browser/ (ignored by git)."""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS = ROOT / "out" / "browser"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-extensions",
]


def chromium_path() -> str | None:
    for c in (
        os.environ.get("LOSSVIZ_CHROMIUM"),
        shutil.which("chromium"),
        shutil.which("chromium-browser"),
        "/usr/bin/chromium",
    ):
        if c and Path(c).is_file():
            return c
    return None


def _missing() -> str | None:
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "pip playwright is not installed (pip install 'lossviz[browser-tests]')"
    for mod in ("jupyterlab", "jupytext", "ipykernel", "ipywidgets", "anywidget"):
        try:
            __import__(mod)
        except ImportError:
            return f"{mod} is not installed (pip install 'lossviz[browser-tests]')"
    if chromium_path() is None:
        return "chromium is not installed (apt-get install -y chromium)"
    return None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def notebook(name: str, dest: Path) -> Path:
    """notebooks/<name>.py (jupytext percent) -> dest/<name>.ipynb, without outputs."""
    import jupytext

    nb = jupytext.read(ROOT / "notebooks" / f"{name}.py")
    out = dest / f"{name}.ipynb"
    jupytext.write(nb, out, fmt="ipynb")
    return out


def _env(**extra) -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT)] + [p for p in [env.get("PYTHONPATH")] if p])
    env["LOSSVIZ_PROGRESS"] = "0"
    env.update(extra)
    return env


def kill(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(10)
    except (ProcessLookupError, subprocess.TimeoutExpired):
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


class Lab:
    def __init__(self, root: Path):
        self.root = root
        self.port = free_port()
        self.token = secrets.token_hex(16)
        settings = Path(tempfile.mkdtemp(prefix="lv-jlset-"))
        d = settings / "@jupyterlab" / "apputils-extension"
        d.mkdir(parents=True)
        (d / "notification.jupyterlab-settings").write_text(
            json.dumps({"fetchNews": "false", "checkForUpdates": False})
        )
        env = _env(
            JUPYTER_CONFIG_DIR=tempfile.mkdtemp(prefix="lv-jcfg-"),
            JUPYTERLAB_SETTINGS_DIR=str(settings),
            JUPYTER_RUNTIME_DIR=tempfile.mkdtemp(prefix="lv-jrt-"),
        )
        cmd = [
            sys.executable,
            "-m",
            "jupyterlab",
            "--no-browser",
            "--ServerApp.ip=127.0.0.1",
            "--ServerApp.allow_root=True",
            f"--ServerApp.port={self.port}",
            "--ServerApp.port_retries=0",
            f"--IdentityProvider.token={self.token}",
            f"--ServerApp.root_dir={root}",
            "--LabApp.expose_app_in_browser=True",
            f"--LabApp.workspaces_dir={tempfile.mkdtemp(prefix='lv-jws-')}",
            "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate",
        ]
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        self.log = open(ARTIFACTS / "jupyter.log", "w")
        self.proc = subprocess.Popen(
            cmd, stdout=self.log, stderr=subprocess.STDOUT, env=env, start_new_session=True
        )
        url = f"http://127.0.0.1:{self.port}/api/status?token={self.token}"
        for _ in range(240):
            try:
                urllib.request.urlopen(url, timeout=1)
                return
            except Exception:
                if self.proc.poll() is not None:
                    raise RuntimeError(f"jupyter lab exited; see {ARTIFACTS}") from None
                time.sleep(0.5)
        kill(self.proc)
        raise RuntimeError("jupyter lab did not come up in 120 s")

    def url(self, nb: str) -> str:
        # a fresh workspace per page: otherwise JupyterLab reopens the notebooks of the
        # previous test next to this one
        ws = secrets.token_hex(4)
        return (
            f"http://127.0.0.1:{self.port}/lab/workspaces/{ws}/tree/{nb}?reset&token={self.token}"
        )

    def close(self):
        kill(self.proc)
        self.log.close()


@pytest.fixture(scope="session")
def browser_ok():
    why = _missing()
    if why:
        pytest.skip(why)


@pytest.fixture(scope="session")
def lab_root(browser_ok, tmp_path_factory):
    root = tmp_path_factory.mktemp("lab-root")
    for name in ("interpolation", "playground", "spectrum", "landscape", "subspace"):
        if (ROOT / "notebooks" / f"{name}.py").is_file():
            notebook(name, root)
    return root


@pytest.fixture(scope="session")
def lab(lab_root):
    server = Lab(lab_root)
    yield server
    server.close()


@pytest.fixture(scope="session")
def browser(browser_ok):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=chromium_path(), headless=True, args=CHROMIUM_ARGS)
        yield b
        b.close()


# console messages that are not lossviz's: the offline JupyterLab fetching optional
# resources (fonts, extension manager listings, the news feed)
BENIGN = ("Failed to load resource", "net::ERR_", "favicon")


@pytest.fixture
def page(browser):
    ctx = browser.new_context(viewport={"width": 1500, "height": 1700})
    pg = ctx.new_page()
    pg.console_errors = []

    def on_console(m):
        if m.type == "error" and not any(s in m.text for s in BENIGN):
            pg.console_errors.append(m.text)

    pg.on("console", on_console)
    pg.on("pageerror", lambda e: pg.console_errors.append(f"pageerror: {e}"))
    yield pg
    ctx.close()


KERNEL_IDLE = (
    "window.jupyterapp && window.jupyterapp.shell.currentWidget"
    " && window.jupyterapp.shell.currentWidget.sessionContext"
    " && window.jupyterapp.shell.currentWidget.sessionContext.session"
    " && window.jupyterapp.shell.currentWidget.sessionContext.session.kernel"
    " && window.jupyterapp.shell.currentWidget.sessionContext.session.kernel"
    ".status === 'idle'"
)


def open_and_run(page, lab, nb: str) -> None:
    """Open ``nb`` in JupyterLab, wait for an idle kernel, run all cells."""
    page.goto(lab.url(nb))
    page.wait_for_function(KERNEL_IDLE, timeout=120_000)
    page.evaluate("window.jupyterapp.commands.execute('notebook:run-all-cells')")


def shot(page, name: str) -> Path:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    p = ARTIFACTS / f"{name}.png"
    page.screenshot(path=str(p), full_page=True)
    return p


def plot_js(i: int, expr: str) -> str:
    """JS evaluating ``expr`` with ``gd`` = the i-th plotly graph on the page."""
    return (
        f"(() => {{ const gd = document.querySelectorAll('.js-plotly-plot')[{i}];"
        f" if (!gd || !gd.layout) return null; return {expr}; }})()"
    )


def wait_plot(page, i: int, cond: str, timeout=60_000):
    page.wait_for_function(
        f"(() => {{ const gd = document.querySelectorAll('.js-plotly-plot')[{i}];"
        f" try {{ return !!(gd && gd.layout && gd.data && ({cond})); }}"
        " catch (e) { return false; } })()",  # a plot still being drawn: not yet
        timeout=timeout,
    )


def cell_errors(page) -> list[str]:
    """The tracebacks shown in the notebook's outputs (an assertion that failed in a cell,
    an exception in a widget callback): each error output's text."""
    return page.evaluate(
        "Array.from(document.querySelectorAll("
        "'.jp-OutputArea-output[data-mime-type=\"application/vnd.jupyter.error\"]'))"
        ".map(e => e.textContent.slice(0, 2000))"
    )
