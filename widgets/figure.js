// lossviz figure: plotly's FigureWidget front end, compiled once per page.
//
// plotly ships its whole front end (about 5 MB of JavaScript) inline with every
// FigureWidget, and anywidget compiles each copy on its own. anywidget also gives a
// model 2 s to initialize; a model that takes longer ignores every later message from the
// kernel, so its plot is drawn once and never updates. On a page that creates several
// figures at once (every lossviz dashboard, any Voila app) the compilations queue up and
// the third or fourth figure misses that deadline on a slow machine.
//
// Here every lossviz figure imports plotly's module from one shared promise: it is compiled
// once, and each figure then runs plotly's own initialize/render on its model.
const KEY = "__lossviz_plotly_figure_module__";

function sharedModule(model) {
  const cache = (globalThis[KEY] = globalThis[KEY] || {});
  const key = model.get("_plotly_key");
  if (!cache[key]) {
    const url = URL.createObjectURL(
      new Blob([model.get("_plotly_esm")], { type: "text/javascript" }));
    cache[key] = import(/* webpackIgnore: true */ url).then(
      (mod) => { URL.revokeObjectURL(url); return mod; },
      (err) => { URL.revokeObjectURL(url); delete cache[key]; throw err; });
  }
  return cache[key];
}

export default () => {
  let widget = null;
  return {
    async initialize(ctx) {
      const mod = await sharedModule(ctx.model);
      widget = typeof mod.default === "function" ? await mod.default() : mod.default;
      return widget.initialize ? widget.initialize(ctx) : undefined;
    },
    render(ctx) {
      return widget.render(ctx);
    },
  };
};
