// lossviz path scrubber: an anywidget ES module (no build step).
// The track draws the precomputed loss-along-alpha curve with the barrier marked. Dragging
// the handle is handled entirely in the browser (instant); the kernel receives the value
// throttled (every `throttle_ms` while dragging, and the final value on release).
const NS = "http://www.w3.org/2000/svg";

function el(tag, attrs, parent) {
  const e = document.createElementNS(NS, tag);
  for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, v);
  if (parent) parent.appendChild(e);
  return e;
}

function fmt(v) {
  if (v === null || v === undefined || !isFinite(v)) return "–";
  const a = Math.abs(v);
  return a !== 0 && (a < 1e-3 || a >= 1e4) ? v.toExponential(2) : v.toPrecision(4);
}

// round to the step without binary noise (0.07, not 0.07000000000000001)
function snap(a, step) {
  return parseFloat((Math.round(a / step) * step).toFixed(10));
}

// linear interpolation of ys (on xs) at x
function interp(xs, ys, x) {
  if (!xs.length) return NaN;
  if (x <= xs[0]) return ys[0];
  for (let i = 1; i < xs.length; i++) {
    if (x <= xs[i]) {
      const t = (x - xs[i - 1]) / (xs[i] - xs[i - 1] || 1);
      return ys[i - 1] + t * (ys[i] - ys[i - 1]);
    }
  }
  return ys[ys.length - 1];
}

function render({ model, el: host }) {
  const W = () => model.get("width"), H = () => model.get("height");
  const PAD = { l: 44, r: 12, t: 10, b: 22 };
  const root = document.createElement("div");
  root.className = "lossviz-scrubber";
  root.tabIndex = 0;
  root.setAttribute("role", "slider");
  host.appendChild(root);
  const svg = el("svg", { class: "lossviz-scrubber-svg" }, null);
  root.appendChild(svg);
  const label = document.createElement("div");
  label.className = "lossviz-scrubber-label";
  root.appendChild(label);

  let dragging = false, local = model.get("value"), lastSent = 0, timer = null;

  const x0 = () => PAD.l, x1 = () => W() - PAD.r;
  const toX = (a) => x0() + (a - model.get("min")) / (model.get("max") - model.get("min")) * (x1() - x0());
  const toA = (px) => {
    const lo = model.get("min"), hi = model.get("max");
    let a = lo + (px - x0()) / (x1() - x0()) * (hi - lo);
    a = Math.min(hi, Math.max(lo, a));
    const step = model.get("step");
    return step > 0 ? snap(a, step) : a;
  };

  function yScale() {
    const ys = model.get("curve").filter((v) => v !== null && isFinite(v));
    const ys2 = (model.get("curve2") || []).filter((v) => v !== null && isFinite(v));
    const all = ys.concat(ys2);
    let lo = Math.min(...all), hi = Math.max(...all);
    if (!all.length) { lo = 0; hi = 1; }
    if (hi - lo < 1e-12) { hi = lo + 1; }
    const y = (v) => H() - PAD.b - (v - lo) / (hi - lo) * (H() - PAD.t - PAD.b);
    y.lo = lo; y.hi = hi;
    return y;
  }

  function path(xs, ys, y) {
    let d = "", pen = false;
    for (let i = 0; i < xs.length; i++) {
      const v = ys[i];
      if (v === null || !isFinite(v)) { pen = false; continue; }
      d += (pen ? "L" : "M") + toX(xs[i]).toFixed(1) + "," + y(v).toFixed(1);
      pen = true;
    }
    return d;
  }

  let handle, handleLine, readout;
  function draw() {
    svg.setAttribute("width", W());
    svg.setAttribute("height", H());
    svg.setAttribute("viewBox", `0 0 ${W()} ${H()}`);
    while (svg.firstChild) svg.removeChild(svg.firstChild);
    el("rect", { x: x0(), y: PAD.t, width: x1() - x0(), height: H() - PAD.t - PAD.b,
                 class: "lossviz-scrubber-bg" }, svg);
    const xs = model.get("alphas"), ys = model.get("curve"), y = yScale();
    const ys2 = model.get("curve2") || [];
    if (ys2.length === xs.length) el("path", { d: path(xs, ys2, y), class: "lossviz-scrubber-curve2" }, svg);
    el("path", { d: path(xs, ys, y), class: "lossviz-scrubber-curve" }, svg);
    // axis ticks
    for (const a of [model.get("min"), (model.get("min") + model.get("max")) / 2, model.get("max")]) {
      const t = el("text", { x: toX(a), y: H() - 6, class: "lossviz-scrubber-tick" }, svg);
      t.textContent = a.toFixed(2);
    }
    // the axis labels are the ends of the scale, shared by both curves
    if (ys.concat(ys2).some((v) => v !== null && isFinite(v))) {
      const lo = y.lo, hi = y.hi;
      const tl = el("text", { x: PAD.l - 4, y: y(hi) + 4, class: "lossviz-scrubber-ytick" }, svg);
      tl.textContent = fmt(hi);
      const tb = el("text", { x: PAD.l - 4, y: y(lo), class: "lossviz-scrubber-ytick" }, svg);
      tb.textContent = fmt(lo);
    }
    const ba = model.get("barrier_alpha");
    if (ba !== null && ba !== undefined && isFinite(ba) && xs.length && model.get("barrier") > 0) {
      const bv = interp(xs, ys, ba);
      el("line", { x1: toX(ba), x2: toX(ba), y1: PAD.t, y2: H() - PAD.b, class: "lossviz-scrubber-barrier-line" }, svg);
      el("circle", { cx: toX(ba), cy: y(bv), r: 4, class: "lossviz-scrubber-barrier" }, svg);
      const t = el("text", { x: toX(ba) + 5, y: PAD.t + 10, class: "lossviz-scrubber-barrier-text" }, svg);
      t.textContent = "barrier " + fmt(model.get("barrier"));
    }
    handleLine = el("line", { y1: PAD.t, y2: H() - PAD.b, class: "lossviz-scrubber-handle-line" }, svg);
    handle = el("circle", { r: 6, class: "lossviz-scrubber-handle" }, svg);
    place(local);
  }

  function place(a) {
    const xs = model.get("alphas"), ys = model.get("curve"), y = yScale();
    const v = interp(xs, ys, a);
    const px = toX(a);
    handleLine.setAttribute("x1", px); handleLine.setAttribute("x2", px);
    handle.setAttribute("cx", px);
    handle.setAttribute("cy", isFinite(v) ? y(v) : H() / 2);
    root.setAttribute("aria-valuenow", a.toFixed(3));
    label.textContent = `${model.get("description")} = ${a.toFixed(3)}   ${model.get("metric")} ≈ ${fmt(v)}`
      + (model.get("status") ? "   " + model.get("status") : "");
  }

  function send(a, force) {
    const now = performance.now();
    const gap = model.get("throttle_ms");
    const flush = () => { timer = null; lastSent = performance.now(); model.set("value", local); model.save_changes(); };
    if (force || now - lastSent >= gap) {
      if (timer) { clearTimeout(timer); timer = null; }
      flush();
    } else if (!timer) {
      timer = setTimeout(flush, gap - (now - lastSent));
    }
  }

  function move(ev, force) {
    const r = svg.getBoundingClientRect();
    local = toA(ev.clientX - r.left);
    place(local);
    send(local, force);
  }
  svg.addEventListener("pointerdown", (ev) => {
    dragging = true;
    svg.setPointerCapture(ev.pointerId);
    root.focus();
    move(ev, true);
    ev.preventDefault();
  });
  svg.addEventListener("pointermove", (ev) => { if (dragging) move(ev, false); });
  const end = (ev) => {
    if (!dragging) return;
    dragging = false;
    try { svg.releasePointerCapture(ev.pointerId); } catch (e) { /* already released */ }
    move(ev, true);
  };
  svg.addEventListener("pointerup", end);
  svg.addEventListener("pointercancel", end);
  root.addEventListener("keydown", (ev) => {
    const step = model.get("step") > 0 ? model.get("step") : 0.01;
    const lo = model.get("min"), hi = model.get("max");
    let a = local;
    if (ev.key === "ArrowRight" || ev.key === "ArrowUp") a = local + step;
    else if (ev.key === "ArrowLeft" || ev.key === "ArrowDown") a = local - step;
    else if (ev.key === "PageUp") a = local + 10 * step;
    else if (ev.key === "PageDown") a = local - 10 * step;
    else if (ev.key === "Home") a = lo;
    else if (ev.key === "End") a = hi;
    else return;
    ev.preventDefault();
    local = Math.min(hi, Math.max(lo, snap(a, step)));
    place(local);
    send(local, false);
  });

  const onValue = () => { if (!dragging) { local = model.get("value"); place(local); } };
  model.on("change:value", onValue);
  const redraw = () => draw();
  for (const k of ["alphas", "curve", "curve2", "barrier_alpha", "barrier", "width", "height", "min", "max"])
    model.on("change:" + k, redraw);
  model.on("change:status", () => place(local));
  model.on("change:metric", () => place(local));
  draw();
  return () => {
    if (timer) clearTimeout(timer);
    model.off("change:value", onValue);
    for (const k of ["alphas", "curve", "curve2", "barrier_alpha", "barrier", "width", "height", "min", "max"])
      model.off("change:" + k, redraw);
  };
}

export default { render };
