// lossviz per-layer mixer: an anywidget ES module (no build step).
// One row per layer: a toggle (interpolate this layer along alpha, or keep it at model A),
// its parameter count, and a bar with the barrier measured when only that layer is
// interpolated (layer-wise mode connectivity). Clicking toggles; the kernel gets `mask`.
function fmt(v) {
  if (v === null || v === undefined || !isFinite(v)) return "…";
  const a = Math.abs(v);
  return a !== 0 && (a < 1e-3 || a >= 1e4) ? v.toExponential(2) : v.toPrecision(3);
}

function render({ model, el: host }) {
  const root = document.createElement("div");
  root.className = "lossviz-mixer";
  host.appendChild(root);

  function setMask(m) {
    if (model.get("disabled")) return;
    model.set("mask", m);
    model.save_changes();
  }

  function draw() {
    const layers = model.get("layers"), mask = model.get("mask"), bars = model.get("barriers") || [];
    root.innerHTML = "";
    root.classList.toggle("lossviz-mixer-disabled", !!model.get("disabled"));
    const head = document.createElement("div");
    head.className = "lossviz-mixer-head";
    const title = document.createElement("span");
    title.textContent = model.get("title");
    head.appendChild(title);
    for (const [txt, val] of [["all", true], ["none", false]]) {
      const b = document.createElement("button");
      b.className = "lossviz-mixer-btn";
      b.textContent = txt;
      b.addEventListener("click", () => setMask(layers.map(() => val)));
      head.appendChild(b);
    }
    root.appendChild(head);
    const finite = bars.filter((v) => v !== null && isFinite(v));
    const top = finite.length ? Math.max(...finite.map(Math.abs), 1e-12) : 1;
    layers.forEach((name, i) => {
      const row = document.createElement("div");
      row.className = "lossviz-mixer-row" + (mask[i] ? " on" : "");
      row.tabIndex = 0;
      row.setAttribute("role", "switch");
      row.setAttribute("aria-checked", mask[i] ? "true" : "false");
      row.dataset.layer = name;
      const box = document.createElement("span");
      box.className = "lossviz-mixer-box";
      box.textContent = mask[i] ? "α" : "A";
      const nm = document.createElement("span");
      nm.className = "lossviz-mixer-name";
      nm.textContent = name;
      const np = document.createElement("span");
      np.className = "lossviz-mixer-n";
      np.textContent = (model.get("sizes")[i] || 0).toLocaleString();
      const barWrap = document.createElement("span");
      barWrap.className = "lossviz-mixer-barwrap";
      const bar = document.createElement("span");
      bar.className = "lossviz-mixer-bar";
      const v = bars[i];
      bar.style.width = (v !== null && v !== undefined && isFinite(v) ? Math.max(0, v) / top * 100 : 0) + "%";
      barWrap.appendChild(bar);
      const val = document.createElement("span");
      val.className = "lossviz-mixer-val";
      val.textContent = fmt(v);
      row.append(box, nm, np, barWrap, val);
      const toggle = () => { const m = mask.slice(); m[i] = !m[i]; setMask(m); };
      row.addEventListener("click", toggle);
      row.addEventListener("keydown", (ev) => {
        if (ev.key === " " || ev.key === "Enter") { ev.preventDefault(); toggle(); }
      });
      root.appendChild(row);
    });
    const foot = document.createElement("div");
    foot.className = "lossviz-mixer-foot";
    foot.textContent = model.get("note");
    root.appendChild(foot);
  }
  const keys = ["layers", "mask", "barriers", "sizes", "disabled", "note", "title"];
  for (const k of keys) model.on("change:" + k, draw);
  draw();
  return () => { for (const k of keys) model.off("change:" + k, draw); };
}

export default { render };
