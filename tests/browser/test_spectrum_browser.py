"""dash.spectrum in a real JupyterLab + chromium: run the notebook, wait for the density,
move the smoothing slider by keys and by mouse drag, toggle log/linear, move the
checkpoint slider by keys and by mouse drag; the plot must change each time and the
console stay free of errors."""

from lab_harness import cell_errors, open_and_run, plot_js, shot, wait_plot

TITLE = "gd.layout.title.text"
# a checksum of the density curve (trace 0): changes when any point of it changes
SUM = "Array.from(gd.data[0].y).reduce((a, v, i) => a + v * (1 + i % 97), 0)"


def remember(page):
    page.evaluate(plot_js(0, f"(window.__lvSum = {SUM})"))


def changed(page, timeout=60_000):
    wait_plot(
        page,
        0,
        f"gd.data[0].y && gd.data[0].y.length === 1500 && {SUM} !== window.__lvSum",
        timeout=timeout,
    )


def drag(page, handle, track, frac):
    """Drag a noUiSlider handle to ``frac`` of its track, in small mouse moves."""
    hb = handle.bounding_box()
    y = hb["y"] + hb["height"] / 2
    x0 = hb["x"] + hb["width"] / 2
    x1 = track["x"] + track["width"] * frac
    page.mouse.move(x0, y)
    page.mouse.down()
    for i in range(25):
        page.mouse.move(x0 + (x1 - x0) * (i + 1) / 25, y)
        page.wait_for_timeout(20)
    page.mouse.up()


def test_spectrum_dashboard(page, lab):
    open_and_run(page, lab, "spectrum.ipynb")
    page.locator(".lossviz-dash-spectrum").first.wait_for(state="visible", timeout=180_000)
    # the density of the shown checkpoint arrives from the background thread
    wait_plot(
        page,
        0,
        f"{TITLE}.startsWith('step 0 · σ') && gd.data[0].y.length === 1500",
        timeout=180_000,
    )
    # the notebook's last cell waits for every checkpoint and checks the numbers
    page.locator(".jp-OutputArea-output", has_text="all checks passed").first.wait_for(
        timeout=240_000
    )
    wait_plot(page, 1, "Array.from(gd.data[0].y).every(v => v !== null)", timeout=60_000)
    assert page.evaluate(plot_js(0, "gd.layout.yaxis.type")) == "log"
    n_markers = page.evaluate(plot_js(0, "gd.data[2].x.length"))
    n_out = page.evaluate(plot_js(0, "gd.data[3].x.length"))
    # a ReLU network at initialisation has no gap in its spectrum: the count shown (0 here,
    # 3 at step 10, 9 from step 20 on) is what density.outliers() says, in plot and title
    assert n_markers == 10
    assert f"{n_out} outlier" in page.evaluate(plot_js(0, TITLE))
    assert "Linear" in page.locator(".lossviz-spectrum-layers").first.inner_text()
    shot(page, "spectrum_01_initial")

    sliders = page.locator(".lossviz-dash-spectrum .widget-slider")
    sigma_handle = sliders.nth(0).locator(".noUi-handle")
    ckpt_handle = sliders.nth(1).locator(".noUi-handle")

    # 1) smoothing slider by keys: a wider kernel, a lower and smoother curve
    peak0 = page.evaluate(plot_js(0, "Math.max(...Array.from(gd.data[0].y))"))
    title0 = page.evaluate(plot_js(0, TITLE))
    remember(page)
    sigma_handle.focus()
    for _ in range(6):
        sigma_handle.press("ArrowRight")
    changed(page)
    wait_plot(page, 0, f"{TITLE} !== {title0!r}")
    page.wait_for_timeout(500)  # let the last key's update land
    peak1 = page.evaluate(plot_js(0, "Math.max(...Array.from(gd.data[0].y))"))
    assert peak1 < peak0
    shot(page, "spectrum_02_sigma_keys")

    # 2) smoothing slider by mouse drag to the left end: the sharpest curve
    remember(page)
    drag(page, sigma_handle, sliders.nth(0).locator(".noUi-target").bounding_box(), 0.0)
    changed(page)
    page.wait_for_function(
        "(() => { const r = document.querySelectorAll("
        "'.lossviz-dash-spectrum .widget-readout')[0];"
        " return r && parseFloat(r.textContent) < 0.0012; })()",
        timeout=60_000,
    )
    wait_plot(page, 0, "Math.max(...Array.from(gd.data[0].y)) > 2 * " + repr(peak0), timeout=60_000)
    shot(page, "spectrum_03_sigma_drag")

    # 3) log / linear axis
    page.locator(".lossviz-dash-spectrum .widget-toggle-button", has_text="linear").click()
    wait_plot(page, 0, "gd.layout.yaxis.type === 'linear'")
    shot(page, "spectrum_04_linear")
    page.locator(".lossviz-dash-spectrum .widget-toggle-button", has_text="log").click()
    wait_plot(page, 0, "gd.layout.yaxis.type === 'log'")

    # 4) checkpoint slider by keys: step 0 -> step 20, another density, other markers
    remember(page)
    markers0 = page.evaluate(plot_js(0, "Array.from(gd.data[2].x)"))
    ckpt_handle.focus()
    ckpt_handle.press("ArrowRight")
    ckpt_handle.press("ArrowRight")
    wait_plot(page, 0, f"{TITLE}.startsWith('step 20 · σ')")
    changed(page)
    assert page.evaluate(plot_js(0, "Array.from(gd.data[2].x)")) != markers0
    wait_plot(page, 1, "gd.data[1].x[0] === 20")
    shot(page, "spectrum_05_checkpoint_keys")

    # 5) checkpoint slider by mouse drag to the right end: the trained network
    remember(page)
    drag(page, ckpt_handle, sliders.nth(1).locator(".noUi-target").bounding_box(), 1.0)
    wait_plot(page, 0, f"{TITLE}.startsWith('step 400 · σ')", timeout=60_000)
    changed(page)
    wait_plot(page, 1, "gd.data[1].x[0] === 400")
    assert "ready" in page.locator(".lossviz-ckpt-status").first.inner_text()
    # the trained network has more outliers than the initial one
    assert page.evaluate(plot_js(0, "gd.data[3].x.length")) > n_out
    shot(page, "spectrum_06_checkpoint_drag")
    # the lower half: λ_max over checkpoints and the per-layer table
    page.locator(".lossviz-spectrum-layers").first.evaluate(
        "e => e.closest('.lossviz-dash-spectrum').scrollIntoView({block: 'end'})"
    )
    page.wait_for_timeout(300)
    assert "Linear" in page.locator(".lossviz-spectrum-layers").first.inner_text()
    shot(page, "spectrum_07_layers")
    assert page.console_errors == [], page.console_errors
    assert cell_errors(page) == []
