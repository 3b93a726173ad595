"""dash.interpolation in a real JupyterLab + chromium: run the notebook, move the α slider
by keys and by mouse drag (ipywidgets slider and lossviz's scrubber), toggle a layer in the
mixer; the plot must change and the console stay free of errors."""

import numpy as np
from lab_harness import cell_errors, open_and_run, plot_js, shot, wait_plot

TITLE = "gd.layout.title.text"


def test_interpolation_dashboard(page, lab):
    open_and_run(page, lab, "interpolation.ipynb")
    page.locator(".lossviz-scrubber").first.wait_for(state="visible", timeout=180_000)
    # the α grid arrives from the background thread; the marker then sits at α = 0 (exact)
    wait_plot(page, 0, f"{TITLE}.startsWith('α = 0.00 · exact')", timeout=180_000)
    curve = page.evaluate(plot_js(0, "Array.from(gd.data[0].y)"))
    assert len(curve) == 25 and all(v is not None for v in curve)
    page.wait_for_function(
        "document.querySelector('.lossviz-scrubber-curve')"
        " && document.querySelector('.lossviz-scrubber-curve')"
        ".getAttribute('d').length > 50"
    )
    shot(page, "interpolation_01_initial")
    marker0 = page.evaluate(plot_js(0, "[gd.data[2].x[0], gd.data[2].y[0]]"))

    # 1) keys on the ipywidgets slider: 5 × ArrowRight -> α = 0.05
    handle = page.locator(".widget-slider .noUi-handle").first
    handle.focus()
    for _ in range(5):
        handle.press("ArrowRight")
    wait_plot(page, 0, f"{TITLE} === 'α = 0.05 · exact'", timeout=60_000)
    marker1 = page.evaluate(plot_js(0, "[gd.data[2].x[0], gd.data[2].y[0]]"))
    assert marker1 != marker0 and abs(marker1[0] - 0.05) < 1e-9
    readout = page.locator(".lossviz-readout").first.inner_text()
    assert "0.050" in readout
    shot(page, "interpolation_02_keys")

    # 2) mouse drag on the ipywidgets slider to its far right -> α = 1
    track = page.locator(".widget-slider .noUi-target").first.bounding_box()
    hb = handle.bounding_box()
    y = hb["y"] + hb["height"] / 2
    page.mouse.move(hb["x"] + hb["width"] / 2, y)
    page.mouse.down()
    for i in range(30):
        page.mouse.move(track["x"] + track["width"] * (i + 1) / 30 + 5, y)
        page.wait_for_timeout(15)
    page.mouse.up()
    wait_plot(page, 0, f"{TITLE} === 'α = 1.00 · exact'", timeout=60_000)
    shot(page, "interpolation_03_slider_drag")

    # 3) mouse drag on lossviz's scrubber to the middle of its track -> α ≈ 0.5
    svg = page.locator(".lossviz-scrubber-svg").first.bounding_box()
    x0, x1 = svg["x"] + 44, svg["x"] + svg["width"] - 12  # PAD.l / PAD.r of scrubber.js
    ys = svg["y"] + svg["height"] / 2
    page.mouse.move(x0 + 2, ys)
    page.mouse.down()
    for i in range(20):
        page.mouse.move(x0 + (x1 - x0) * 0.5 * (i + 1) / 20, ys)
        page.wait_for_timeout(15)
    page.mouse.up()
    wait_plot(
        page,
        0,
        f"{TITLE}.endsWith('exact') && Math.abs(gd.data[2].x[0] - 0.5) < 0.02",
        timeout=60_000,
    )
    slider_readout = page.locator(".widget-readout").first.inner_text()
    assert abs(float(slider_readout) - 0.5) < 0.02  # linked to the ipywidgets slider
    shot(page, "interpolation_04_scrubber_drag")

    # 4) scrubber keys: End -> α = 1
    page.locator(".lossviz-scrubber").first.focus()
    page.keyboard.press("End")
    wait_plot(page, 0, f"{TITLE} === 'α = 1.00 · exact'", timeout=60_000)

    # 5) mixer: keep the first layer at A -> a new α grid, a different curve
    before = page.evaluate(plot_js(0, "Array.from(gd.data[0].y)"))
    page.evaluate(plot_js(0, "(window.__lvBefore = JSON.stringify(Array.from(gd.data[0].y)))"))
    page.locator(".lossviz-mixer-row").first.click()
    page.wait_for_function(
        "document.querySelector('.lossviz-mixer-row').getAttribute('aria-checked') === 'false'"
    )
    wait_plot(
        page, 0, "JSON.stringify(Array.from(gd.data[0].y)) !== window.__lvBefore", timeout=60_000
    )
    page.wait_for_function(
        "Array.from(document.querySelectorAll('.lossviz-mixer-val'))"
        ".every(e => e.textContent !== '…')",
        timeout=60_000,
    )
    after = page.evaluate(plot_js(0, "Array.from(gd.data[0].y)"))
    assert after != before
    shot(page, "interpolation_05_mixer")

    # 6) weight matching on the full path (mixer back to "all"): b permuted onto a; the
    # curve before matching stays, dashed
    page.evaluate(plot_js(0, "(window.__lvBefore = JSON.stringify(Array.from(gd.data[0].y)))"))
    page.locator(".lossviz-mixer button", has_text="all").click()
    page.wait_for_function(
        "Array.from(document.querySelectorAll('.lossviz-mixer-row'))"
        ".every(e => e.getAttribute('aria-checked') === 'true')"
    )
    wait_plot(
        page, 0, "JSON.stringify(Array.from(gd.data[0].y)) !== window.__lvBefore", timeout=60_000
    )
    full = page.evaluate(plot_js(0, "Array.from(gd.data[0].y)"))
    assert np.allclose(full, before, rtol=1e-5)  # the full path again
    page.evaluate(plot_js(0, "(window.__lvBefore = JSON.stringify(Array.from(gd.data[0].y)))"))
    page.locator(".widget-checkbox", has_text="weight matching").locator("input").click()
    wait_plot(
        page,
        0,
        "Array.from(gd.data[1].y).every(v => v !== null)"
        " && JSON.stringify(Array.from(gd.data[0].y)) !== window.__lvBefore",
        timeout=180_000,
    )
    page.wait_for_function(
        "document.querySelector('.lossviz-readout').textContent.includes('before matching')",
        timeout=60_000,
    )
    matched = page.evaluate(plot_js(0, "Array.from(gd.data[0].y)"))
    unmatched = page.evaluate(plot_js(0, "Array.from(gd.data[1].y)"))
    # two seeds of the same MLP: aligning the hidden units lowers the middle of the path
    assert max(matched) < max(unmatched)
    np.testing.assert_allclose(unmatched, before, rtol=1e-5)
    wait_plot(page, 0, f"{TITLE} === 'α = 1.00 · exact'", timeout=60_000)
    shot(page, "interpolation_06_matching")
    assert page.console_errors == [], page.console_errors
    assert cell_errors(page) == []
