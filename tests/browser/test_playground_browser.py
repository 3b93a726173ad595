"""teach.playground in JupyterLab and through Voila, in chromium."""

import subprocess
import sys
import time

from lab_harness import (
    ARTIFACTS,
    _env,
    cell_errors,
    free_port,
    kill,
    notebook,
    open_and_run,
    plot_js,
    shot,
    wait_plot,
)


def _drag_slider(page, index, frac):
    handle = page.locator(".widget-slider .noUi-handle").nth(index)
    track = page.locator(".widget-slider .noUi-target").nth(index).bounding_box()
    hb = handle.bounding_box()
    y = hb["y"] + hb["height"] / 2
    page.mouse.move(hb["x"] + hb["width"] / 2, y)
    page.mouse.down()
    for i in range(15):
        page.mouse.move(hb["x"] + (track["x"] + track["width"] * frac - hb["x"]) * (i + 1) / 15, y)
        page.wait_for_timeout(20)
    page.mouse.up()


def _exercise(page, prefix):
    # figure 0: contour + trajectories; its SGD trajectory must move with the lr slider
    wait_plot(page, 0, "gd.data[1].x && gd.data[1].x.length > 10", timeout=120_000)
    shot(page, f"{prefix}_01_initial")
    page.evaluate(plot_js(0, "(window.__lvT = JSON.stringify(Array.from(gd.data[1].x)))"))
    handle = page.locator(".widget-slider .noUi-handle").first  # lr
    handle.focus()
    for _ in range(4):
        handle.press("ArrowRight")
    wait_plot(page, 0, "JSON.stringify(Array.from(gd.data[1].x)) !== window.__lvT", timeout=60_000)
    # mouse drag on the steps slider (4th slider) to its right end -> longer trajectories
    page.wait_for_timeout(500)
    n_before = page.evaluate(plot_js(0, "gd.data[1].x.length"))
    _drag_slider(page, 3, 1.0)
    steps = page.locator(".widget-slider").nth(3)
    try:
        wait_plot(page, 0, f"gd.data[1].x.length > {n_before}", timeout=60_000)
    except Exception:
        shot(page, f"{prefix}_failed_drag")
        raise AssertionError(
            f"steps slider after drag: {steps.inner_text()!r}, "
            f"trajectory {page.evaluate(plot_js(0, 'gd.data[1].x.length'))} "
            f"points (before {n_before})"
        ) from None
    shot(page, f"{prefix}_02_moved")
    # edge of stability tab: push lr past 2/λ_max -> the title says it diverges
    page.locator(".widget-tab .lm-TabBar-tab", has_text="edge of stability").first.click()
    eos = page.locator(".widget-slider .noUi-handle").nth(5)
    eos.wait_for(state="visible")
    readout = page.locator(".widget-slider .widget-readout").nth(5)
    eos.focus()
    for _ in range(6):  # 0.09 -> 0.105, past 2/λ_max = 0.1
        eos.press("ArrowRight")
    titles = (
        "Array.from(document.querySelectorAll('.js-plotly-plot'))"
        ".map(g => g.layout && g.layout.title && g.layout.title.text).filter(t => t)"
    )
    try:
        page.wait_for_function(f"{titles}.some(t => t.includes('diverges'))", timeout=60_000)
    except Exception:
        shot(page, f"{prefix}_failed_eos")
        raise AssertionError(
            f"edge-of-stability lr slider reads {readout.inner_text()!r}; "
            f"plot titles {page.evaluate(titles)}"
        ) from None
    shot(page, f"{prefix}_03_eos")
    page.locator(".widget-tab .lm-TabBar-tab", has_text="Muon").first.click()
    # the fourth figure must still take the kernel's updates (anywidget drops every message
    # to a model whose front end took over 2 s to start: lossviz figures share one module)
    muon = page.locator(".widget-slider .noUi-handle").nth(7)
    muon.wait_for(state="visible")
    page.evaluate(plot_js(3, "(window.__lvM = JSON.stringify(Array.from(gd.data[1].y)))"))
    muon.focus()
    for _ in range(3):
        muon.press("ArrowLeft")
    wait_plot(page, 3, "JSON.stringify(Array.from(gd.data[1].y)) !== window.__lvM", timeout=60_000)
    shot(page, f"{prefix}_04_muon")


def test_playground_jupyterlab(page, lab):
    open_and_run(page, lab, "playground.ipynb")
    page.locator(".lossviz-playground").first.wait_for(state="visible", timeout=120_000)
    _exercise(page, "playground_lab")
    assert page.console_errors == [], page.console_errors
    assert cell_errors(page) == []


def test_playground_voila(browser_ok, page, tmp_path):
    nb = notebook("playground", tmp_path)
    port = free_port()
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    log = open(ARTIFACTS / "voila.log", "w")
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "voila",
            nb.name,
            "--no-browser",
            f"--port={port}",
            "--Voila.ip=127.0.0.1",
            # jupytext's JupyterLab extension needs JupyterLab's shared
            # modules and fails to load in Voila (a console error)
            "--VoilaConfiguration.extension_denylist=jupyterlab-jupytext",
        ],
        cwd=tmp_path,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
        env=_env(),
    )
    try:
        import socket

        for _ in range(240):  # voila has no /api/status in single-notebook mode
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if proc.poll() is not None:
                    raise RuntimeError("voila exited; see out/browser/voila.log") from None
                time.sleep(0.5)
        page.goto(f"http://127.0.0.1:{port}/", timeout=180_000)
        page.locator(".lossviz-playground").first.wait_for(state="visible", timeout=180_000)
        _exercise(page, "playground_voila")
        assert page.console_errors == [], page.console_errors
    finally:
        kill(proc)
        log.close()
