"""dash.subspace in a real JupyterLab + chromium: run the notebook, watch the plots grow
while the training cell runs, then move the sliders by keys and by mouse drag; the plots
must change and the console stay free of errors.

Independent of the machine's speed: the notebook runs a short training
(``LOSSVIZ_SUBSPACE_STEPS``, set in the kernel before its cells run), every wait is for a
state (a count drawn, the notebook's last output, an idle kernel), and the timeouts are
only safety nets. "Live" is checked from a log the page keeps of every count it draws,
not from two reads timed against the run."""

import re

from lab_harness import ARTIFACTS, KERNEL_IDLE, cell_errors, plot_js, shot, wait_plot

RUN = 300  # training steps in the notebook's run (its default is 1,500)
STEPS = RUN + 1  # records: steps 0..RUN
EVERY = 10  # the tracker's refresh interval in the notebook
SAFETY = 900_000  # ms: only hit when something is broken, never by a slow machine
N = "(gd.data[0].x ? gd.data[0].x.length : 0)"
STATUS = (
    "(() => { const w = window.jupyterapp.shell.currentWidget;"
    " const k = w && w.sessionContext.session && w.sessionContext.session.kernel;"
    " return k ? k.status : null; })()"
)
# the page polls the plot every 50 ms and logs [count, kernel status] whenever the count
# changes: the evidence that the plot grew while the training cell ran
RECORD = (
    "() => { window.__lvSeen = []; window.__lvRec = setInterval(() => {"
    " const gd = document.querySelectorAll('.js-plotly-plot')[0];"
    " const n = gd && gd.data && gd.data[0].x ? gd.data[0].x.length : 0;"
    f" const status = {STATUS};"
    " const s = window.__lvSeen, last = s[s.length - 1];"
    " if (!last || last[0] !== n) s.push([n, status]); }, 50); }"
)
SEEN_LIVE = f"window.__lvSeen.filter(([n, st]) => st === 'busy' && 0 < n && n < {STEPS})"
# the notebook's last cell printed its summary (after its assertions), or a cell failed
DONE = "median λ_max·lr/2:"
DONE_OR_ERROR = (
    "Array.from(document.querySelectorAll('.jp-OutputArea-output')).some(e =>"
    f" e.textContent.includes('{DONE}')"
    " || e.getAttribute('data-mime-type') === 'application/vnd.jupyter.error')"
)


def _kernel_exec(page, code: str) -> None:
    """Run ``code`` in the notebook's kernel, silently, before its cells."""
    page.evaluate(
        """async (code) => {
        const k = window.jupyterapp.shell.currentWidget.sessionContext.session.kernel;
        const f = k.requestExecute({code, silent: true, store_history: false});
        const reply = await f.done;
        if (reply.content.status !== 'ok') throw new Error('kernel: ' + reply.content.evalue);
    }""",
        code,
    )


def _run(page, command: str, before: str) -> None:
    """Make the code cell whose source contains ``before`` active and run a notebook
    command (markdown cells may quote the same code)."""
    page.evaluate(
        """([cmd, text]) => {
        const nb = window.jupyterapp.shell.currentWidget.content;
        const i = nb.widgets.findIndex(
            c => c.model.type === 'code' && c.model.sharedModel.getSource().includes(text));
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
    _kernel_exec(page, f"import os; os.environ['LOSSVIZ_SUBSPACE_STEPS'] = '{RUN}'")
    # the cells up to the dashboard; the training cell once its plot is on the page (the
    # plotly bundle takes seconds to load: a loop started before would be over by then)
    _run(page, "notebook:run-all-above", "tracker.step(batch")
    dashboard = page.locator(".lossviz-dash-subspace").first
    dashboard.wait_for(state="visible", timeout=SAFETY)
    wait_plot(page, 1, "true", timeout=SAFETY)
    page.wait_for_function(KERNEL_IDLE, timeout=SAFETY)
    assert cell_errors(page) == []
    dashboard.evaluate("e => e.scrollIntoView({block: 'start'})")
    page.evaluate(RECORD)
    _run(page, "notebook:run-all-below", "tracker.step(batch")

    # 1) live: a screenshot at the first count drawn mid-run (or at the end, on a machine
    # fast enough to finish first; it is only a picture), then the run's end
    page.wait_for_function(f"{SEEN_LIVE}.length > 0 || ({DONE_OR_ERROR})", timeout=SAFETY)
    dashboard.screenshot(path=str(ARTIFACTS / "subspace_01_live.png"))

    # 2) the run ends: the notebook's assertions passed, every step drawn
    page.wait_for_function(DONE_OR_ERROR, timeout=SAFETY)
    page.wait_for_function(KERNEL_IDLE, timeout=SAFETY)
    assert cell_errors(page) == []
    wait_plot(page, 0, f"{N} === {STEPS}", timeout=60_000)
    seen = page.evaluate("(() => { clearInterval(window.__lvRec); return window.__lvSeen; })()")
    live = page.evaluate(SEEN_LIVE)
    counts = [n for n, _ in seen]
    # the plot grew in several draws while the training cell ran, never shrank
    assert len({n for n, _ in live}) >= 2, seen
    assert counts == sorted(counts) and counts[-1] == STEPS, seen
    wait_plot(page, 1, "gd.data[0].z && gd.data[0].z.length > 10")  # overlap heatmap
    lam = page.evaluate(plot_js(0, "Array.from(gd.data[3].y)"))
    two = page.evaluate(plot_js(0, "Array.from(gd.data[4].y)"))
    assert len(lam) == RUN // EVERY + 1 and two[0] == 5 and two[-1] == 10  # lr halved
    readout = page.locator(".lossviz-subspace-readout").first.inner_text()
    assert "λ_max·lr/2" in readout and str(RUN) in readout
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
    assert RUN / 3 <= lo < 2 * RUN / 3 and hi == RUN
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
