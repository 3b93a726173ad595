"""dash.landscape in a real JupyterLab + chromium: run the notebook, change the resolution
by keys and the span by a mouse drag, switch heatmap / 3-D, click on the map (1-D slices and
λ_max appear), switch the direction picker; the plots must change and the console stay
free of errors."""

from lab_harness import cell_errors, open_and_run, shot

TITLE = "gd.layout.title.text"
READOUT = ".lossviz-landscape-readout"
MAP, SLICES, THREE_D = "map", "slices", "3d"  # the boxes holding the three figures


def _gd(box: str) -> str:
    return f"document.querySelector('.lossviz-landscape-{box} .js-plotly-plot')"


def plot_js(box: str, expr: str) -> str:
    """JS evaluating ``expr`` with ``gd`` = the plotly graph in the dashboard's ``box``."""
    return (
        f"(() => {{ const gd = {_gd(box)}; if (!gd || !gd.layout) return null; return {expr}; }})()"
    )


def wait_plot(page, box: str, cond: str, timeout=60_000):
    page.wait_for_function(
        f"(() => {{ const gd = {_gd(box)};"
        f" return !!(gd && gd.layout && gd.data && ({cond})); }})()",
        timeout=timeout,
    )


def _z_ok(n: int) -> str:
    """The map's trace shows an n×n grid with no gap."""
    return (
        f"gd.data.some(t => t.visible !== false && t.z && t.z.length === {n}"
        f" && t.z.every(r => r.length === {n} && r.every(v => v !== null)))"
    )


def _shot(page, name):
    """A screenshot with the dashboard scrolled to the top of the notebook panel."""
    page.evaluate(
        "document.querySelector('.lossviz-dash-landscape').scrollIntoView({block: 'start'})"
    )
    page.wait_for_timeout(300)
    shot(page, name)


def test_landscape_dashboard(page, lab):
    open_and_run(page, lab, "landscape.ipynb")
    page.locator(".lossviz-dash-landscape").first.wait_for(state="visible", timeout=180_000)
    wait_plot(
        page,
        MAP,
        f"{TITLE} === 'loss · PCA of the trajectory · 31×31' && {_z_ok(31)}",
        timeout=180_000,
    )
    # the notebook inspected the trained model (a = b = 0): λ_max and both slices shown
    page.wait_for_function(
        f"document.querySelector('{READOUT} .lv-lambda') !== null", timeout=180_000
    )
    wait_plot(page, SLICES, "gd.data[0].x.length === 61 && gd.data[2].x.length === 61")
    path = page.evaluate(plot_js(MAP, "[gd.data[2].x.length, gd.data[2].text[0]]"))
    assert path == [61, "start"]  # every 5th of 300 steps and the final weights
    lam0 = page.locator(f"{READOUT} .lv-lambda").inner_text()
    assert float(lam0) > 0
    _shot(page, "landscape_01_initial")

    # 1) keys on the resolution slider: 2 × ArrowRight -> 35 × 35, refined in the background
    handle = page.locator(".lossviz-landscape-resolution .noUi-handle").first
    handle.focus()
    handle.press("ArrowRight")
    handle.press("ArrowRight")
    wait_plot(
        page,
        MAP,
        f"{TITLE} === 'loss · PCA of the trajectory · 35×35' && {_z_ok(35)}",
        timeout=120_000,
    )
    _shot(page, "landscape_02_resolution_keys")

    # 2) mouse drag on the span slider: one sixth of the track to the right -> span × 2
    x_before = page.evaluate(plot_js(MAP, "[gd.data[0].x[0], gd.data[0].x[34]]"))
    track = page.locator(".lossviz-landscape-span .noUi-target").first.bounding_box()
    hb = page.locator(".lossviz-landscape-span .noUi-handle").first.bounding_box()
    y = hb["y"] + hb["height"] / 2
    x0 = hb["x"] + hb["width"] / 2
    page.mouse.move(x0, y)
    page.mouse.down()
    for i in range(12):
        page.mouse.move(x0 + track["width"] / 6 * (i + 1) / 12, y)
        page.wait_for_timeout(20)
    page.mouse.up()
    wait_plot(
        page,
        MAP,
        f"gd.data[0].x[0] !== {x_before[0]} && {_z_ok(35)} && !{TITLE}.includes('refining')",
        timeout=120_000,
    )
    readout = page.locator(".lossviz-landscape-span .widget-readout").first.inner_text()
    assert float(readout) == 2.0
    x_after = page.evaluate(plot_js(MAP, "[gd.data[0].x[0], gd.data[0].x[34]]"))
    assert abs((x_after[1] - x_after[0]) / (x_before[1] - x_before[0]) - 2) < 1e-6
    _shot(page, "landscape_03_span_drag")

    # 3) heatmap instead of contours: the same grid, another trace
    page.locator(".lossviz-landscape-kind button", has_text="heatmap").click()
    wait_plot(
        page,
        MAP,
        "gd.data[1].visible === true && gd.data[0].visible === false && gd.data[1].z.length === 35",
    )

    # 4) click on the map: the nearest grid node is inspected, slices and λ_max follow
    drag = page.locator(".js-plotly-plot").first.locator(".nsewdrag").first.bounding_box()
    page.mouse.move(drag["x"] + 0.7 * drag["width"], drag["y"] + 0.3 * drag["height"])
    page.wait_for_timeout(300)
    page.mouse.click(drag["x"] + 0.7 * drag["width"], drag["y"] + 0.3 * drag["height"])
    wait_plot(page, MAP, "gd.data[4].x.length === 1 && gd.data[4].x[0] !== 0", timeout=60_000)
    clicked = page.evaluate(plot_js(MAP, "[gd.data[4].x[0], gd.data[4].y[0]]"))
    page.wait_for_function(
        f"document.querySelector('{READOUT} .lv-lambda') !== null"
        f" && document.querySelector('{READOUT} .lv-lambda').textContent !== '{lam0}'",
        timeout=120_000,
    )
    assert f"a = {clicked[0]:.4g}" in page.locator(READOUT).inner_text()
    wait_plot(page, SLICES, f"gd.data[1].x[0] === {clicked[0]} && gd.data[3].x[0] === {clicked[1]}")
    assert page.evaluate(plot_js(SLICES, "gd.data[0].x.length")) == 69
    _shot(page, "landscape_04_click")

    # 5) the direction picker: random directions, another surface; the inspection is reset
    z_pca = page.evaluate(plot_js(MAP, "JSON.stringify(gd.data[1].z)"))
    page.locator(".lossviz-landscape-directions button", has_text="random").click()
    wait_plot(page, MAP, f"{TITLE} === 'loss · random · 35×35' && {_z_ok(35)}", timeout=120_000)
    assert page.evaluate(plot_js(MAP, "JSON.stringify(gd.data[1].z)")) != z_pca
    assert page.evaluate(plot_js(MAP, "gd.data[4].x.length")) == 0
    assert page.evaluate(plot_js(MAP, "gd.layout.xaxis.title.text")).startswith("a · d1 (random")
    _shot(page, "landscape_05_random")

    # 6) the 3-D view replaces the map (same numbers)
    page.locator(".lossviz-landscape-kind button", has_text="3-D").click()
    wait_plot(
        page, THREE_D, "gd.data[0].type === 'surface' && gd.data[0].z.length === 35", timeout=60_000
    )
    page.wait_for_timeout(1500)
    _shot(page, "landscape_06_3d")

    # 7) back to contours, resolution dragged to its maximum: drawn coarse first, refined
    page.locator(".lossviz-landscape-kind button", has_text="contour").click()
    wait_plot(page, MAP, "gd.data[0].type === 'contour' && gd.data[0].visible !== false")
    track = page.locator(".lossviz-landscape-resolution .noUi-target").first.bounding_box()
    hb = handle.bounding_box()
    y = hb["y"] + hb["height"] / 2
    page.mouse.move(hb["x"] + hb["width"] / 2, y)
    page.mouse.down()
    for i in range(15):
        page.mouse.move(hb["x"] + (track["x"] + track["width"] + 10 - hb["x"]) * (i + 1) / 15, y)
        page.wait_for_timeout(20)
    page.mouse.up()
    try:
        wait_plot(
            page, MAP, f"{TITLE}.startsWith('loss · random · 101×101 · refining')", timeout=120_000
        )
    except Exception:
        _shot(page, "landscape_failed_refining")
        res = page.locator(".lossviz-landscape-resolution .widget-readout").first.inner_text()
        raise AssertionError(
            f"title {page.evaluate(plot_js(MAP, TITLE))!r}, resolution {res!r}"
        ) from None
    _shot(page, "landscape_07_refining")
    wait_plot(page, MAP, f"{TITLE} === 'loss · random · 101×101' && {_z_ok(101)}", timeout=180_000)
    _shot(page, "landscape_08_refined")
    assert page.console_errors == [], page.console_errors
    assert cell_errors(page) == []
