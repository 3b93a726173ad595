"""dash.subspace in a real JupyterLab + chromium: run the notebook, watch the plots grow
while the training cell runs, then move the sliders by keys and by mouse drag; the plots
must change and the console stay free of errors."""

import re

from lab_harness import ARTIFACTS, KERNEL_IDLE, plot_js, shot, wait_plot

STEPS = 1501  # records in the notebook's run
N = "(gd.data[0].x ? gd.data[0].x.length : 0)"
BUSY = KERNEL_IDLE.replace("=== 'idle'", "=== 'busy'")


def _run(page, command: str, before: str) -> None:
    """Make the cell whose source contains ``before`` active and run a notebook command."""
    page.evaluate(
        """([cmd, text]) => {
        const nb = window.jupyterapp.shell.currentWidget.content;
        const i = nb.widgets.findIndex(c => c.model.sharedModel.getSource().includes(text));
        if (i < 0) throw new Error('no cell with ' + text);
        nb.activeCellIndex = i;
        window.jupyterapp.commands.execute(cmd);  // its promise ends with the cells: not awaited
        return null;
    }""",
        [command, before],
    )


def _shown_range(page, timeout=60_000) -> tuple[int, int]:
    """The step range in the label once the plot shows the same one (both come from the
    kernel's last render)."""
    page.wait_for_function(
        "(() => { const gd = document.querySelectorAll('.js-plotly-plot')[0];"
        " const m = document.querySelector('.lossviz-range-label').textContent.match(/\\d+/g);"
        " return m && gd.data[0].x[0] === +m[0]"
        " && gd.data[0].x[gd.data[0].x.length - 1] === +m[1]; })()",
        timeout=timeout,
    )
    text = page.locator(".lossviz-range-label").first.inner_text()
    lo, hi = map(int, re.findall(r"\d+", text)[:2])
    return lo, hi


def _drag(page, handle, x_to):
    hb = handle.bounding_box()
    y = hb["y"] + hb["height"] / 2
    x0 = hb["x"] + hb["width"] / 2
    page.mouse.move(x0, y)
    page.mouse.down()
    for i in range(20):
        page.mouse.move(x0 + (x_to - x0) * (i + 1) / 20, y)
        page.wait_for_timeout(20)
    page.mouse.up()


def test_subspace_dashboard(page, lab):
    page.goto(lab.url("subspace.ipynb"))
    page.wait_for_function(KERNEL_IDLE, timeout=120_000)
    # the cells up to the dashboard; the training cell once its plot is on the page (the
    # plotly bundle takes seconds to load: a loop started before would be over by then)
    _run(page, "notebook:run-all-above", "tracker.step(batch")
    dashboard = page.locator(".lossviz-dash-subspace").first
    dashboard.wait_for(state="visible", timeout=180_000)
    wait_plot(page, 1, "true", timeout=180_000)
    page.wait_for_function(KERNEL_IDLE, timeout=120_000)
    dashboard.evaluate("e => e.scrollIntoView({block: 'start'})")
    _run(page, "notebook:run-all-below", "tracker.step(batch")

    # 1) live: the plots grow while the training cell runs (two counts, kernel busy)
    wait_plot(page, 0, f"{N} > 0", timeout=180_000)
    n1 = page.evaluate(plot_js(0, N))
    busy1 = page.evaluate(BUSY)
    wait_plot(page, 0, f"{N} > {max(n1, 300)}", timeout=120_000)
    n2 = page.evaluate(plot_js(0, N))
    busy2 = page.evaluate(BUSY)
    dashboard.screenshot(path=str(ARTIFACTS / "subspace_01_live.png"))  # fast: mid-run
    assert busy1 and 0 < n1 < n2 and n1 < STEPS, (n1, n2, busy1)
    assert n2 < STEPS and busy2, (n2, busy2)

    # 2) the run ends: every step drawn, the notebook's assertions passed
    wait_plot(page, 0, f"{N} === {STEPS}", timeout=240_000)
    page.wait_for_function(KERNEL_IDLE, timeout=240_000)
    page.get_by_text("median λ_max·lr/2").first.wait_for(timeout=60_000)
    wait_plot(page, 1, "gd.data[0].z && gd.data[0].z.length > 10")  # overlap heatmap
    lam = page.evaluate(plot_js(0, "Array.from(gd.data[3].y)"))
    two = page.evaluate(plot_js(0, "Array.from(gd.data[4].y)"))
    assert len(lam) == 151 and two[0] == 5 and two[-1] == 10  # lr halved at step 500
    readout = page.locator(".lossviz-subspace-readout").first.inner_text()
    assert "λ_max·lr/2" in readout and "1500" in readout
    shot(page, "subspace_02_done")

    # 3) keys on the smoothing slider: 10 -> 15 steps
    avg0 = page.evaluate(plot_js(0, "JSON.stringify(Array.from(gd.data[1].y))"))
    handle = page.locator(".widget-slider .noUi-handle").first
    handle.focus()
    for _ in range(5):
        handle.press("ArrowRight")
    wait_plot(page, 0, "gd.data[1].name === 'moving average (15)'", timeout=60_000)
    avg1 = page.evaluate(plot_js(0, "JSON.stringify(Array.from(gd.data[1].y))"))
    assert avg1 != avg0
    shot(page, "subspace_03_keys")

    # 4) mouse drag on the step range (percent of the run): the lower handle to the middle
    sliders = page.locator(".widget-slider .noUi-target")
    assert sliders.count() == 2
    track = sliders.nth(1).bounding_box()
    lower = sliders.nth(1).locator(".noUi-handle").first
    heat0 = page.evaluate(plot_js(1, "gd.data[0].x.length"))
    _drag(page, lower, track["x"] + track["width"] * 0.5)
    page.wait_for_timeout(1000)  # the last value of the drag wins
    lo, hi = _shown_range(page)
    assert 500 <= lo < 1000 and hi == STEPS - 1
    x = page.evaluate(plot_js(0, "[gd.data[0].x[0], gd.data[0].x[gd.data[0].x.length - 1]]"))
    assert x == [lo, hi]
    wait_plot(page, 1, f"gd.data[0].x.length < {heat0}", timeout=60_000)
    assert page.evaluate(plot_js(0, "Array.from(gd.layout.xaxis3.range)")) == [lo, hi]
    heat_x = page.evaluate(plot_js(1, "Array.from(gd.data[0].x)"))
    assert heat_x[0] >= lo and heat_x[-1] == hi
    shot(page, "subspace_04_range_drag")

    # 5) keys on the range's upper handle: the zoom ends earlier
    upper = sliders.nth(1).locator(".noUi-handle").nth(1)
    upper.focus()
    for _ in range(3):
        upper.press("ArrowLeft")
    page.wait_for_timeout(1000)
    lo2, hi2 = _shown_range(page)
    assert lo2 == lo and hi2 < hi
    assert page.evaluate(plot_js(0, "gd.data[0].x[gd.data[0].x.length - 1]")) == hi2

    # 6) the pause toggle
    page.locator(".widget-toggle-button", has_text="pause redraws").click()
    page.locator(".widget-toggle-button", has_text="resume redraws").wait_for(timeout=30_000)
    page.get_by_text("redraws paused").first.wait_for(timeout=30_000)
    shot(page, "subspace_05_paused")
    assert page.console_errors == [], page.console_errors
