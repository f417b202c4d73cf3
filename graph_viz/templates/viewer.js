// graph_viz viewer: draws the precomputed layered layout on a canvas. All log text reaches the page
// through textContent (never innerHTML), so hostile node names and kernel code stay text.
"use strict";
(function () {
  const model = JSON.parse(document.getElementById("graph-model").textContent);
  const NODE_W = 180, NODE_H = 34;
  // Joint graph: where the partitioner put each node (by name in the forward/backward graphs).
  const SIDE_COLORS = { forward: "#ffd8a8", backward: "#d9c8f2", both: "#f2c6da" };
  const canvas = document.getElementById("graph-canvas");
  const ctx = canvas.getContext("2d");
  const kernelsById = new Map(model.kernels.map((k) => [k.id, k]));
  const state = {
    graph: null, nameIndex: null, scale: 1, tx: 0, ty: 0, selected: -1, kernel: null,
    matches: new Set(), collapse: false, expanded: new Set(), chainHead: null, pending: false,
  };

  function el(tag, text, cls) {
    const e = document.createElement(tag);
    if (text !== undefined) e.textContent = String(text);
    if (cls) e.className = cls;
    return e;
  }
  function clear(node) { while (node.firstChild) node.removeChild(node.firstChild); }
  function hue(text) {
    let h = 0;
    for (let i = 0; i < text.length; i++) h = (h * 31 + text.charCodeAt(i)) >>> 0;
    return h % 360;
  }
  function graphLabel(g) { return g.title + " [" + g.kind + " " + g.compile_id + "] (" + g.nodes.length + " nodes)"; }

  // ---- sidebar -------------------------------------------------------------------------------
  document.getElementById("log-title").textContent = model.source;
  const s = model.summary;
  document.getElementById("summary").textContent =
    s.num_graphs + " graphs, " + s.num_nodes + " nodes, " + s.num_kernels + " kernels, " +
    s.num_warnings + " warnings; " + s.num_unmapped_nodes + " non-view nodes without a kernel, " +
    s.kernels_without_nodes.length + " kernels without a node";
  const graphList = document.getElementById("graph-list");
  model.graphs.forEach((g, i) => {
    const b = el("button", graphLabel(g), "item");
    b.dataset.graph = String(i);
    b.addEventListener("click", () => selectGraph(i));
    graphList.appendChild(b);
  });
  const warnings = document.getElementById("warnings");
  if (!model.warnings.length) warnings.textContent = "none";
  model.warnings.slice(0, 200).forEach((w) => warnings.appendChild(el("div", "line " + w[0] + ": " + w[1])));

  function selectGraph(i, keepView) {
    state.graph = model.graphs[i];
    state.nameIndex = new Map(state.graph.nodes.map((n, j) => [n.name, j]));
    state.selected = -1; state.kernel = null; state.matches = new Set(); state.expanded = new Set();
    computeChains();
    for (const b of graphList.children) b.classList.toggle("active", b.dataset.graph === String(i));
    const list = document.getElementById("kernel-list");
    clear(list);
    const kernels = model.kernels.filter((k) => k.graph === i);
    if (!kernels.length) list.appendChild(el("div", "no output code for this graph", "muted"));
    kernels.forEach((k) => {
      const label = k.kind === "extern" || k.kind === "fallback" ? k.name + " @line " + k.line : k.name;
      const b = el("button", label + " (" + k.nodes.length + " nodes)", "item");
      b.dataset.kernel = k.id;
      b.addEventListener("click", () => selectKernel(k.id));
      list.appendChild(b);
    });
    runSearch();
    if (!keepView) fit();
    showGraphDetails();
    draw();
  }

  // Chains: nodes with the same chain id are consecutive producer -> consumer links.
  function computeChains() {
    const nodes = state.graph.nodes;
    const head = new Int32Array(nodes.length).fill(-1);
    const firstOf = new Map();
    const size = new Map();
    nodes.forEach((n, j) => {
      if (n.chain < 0) return;
      if (!firstOf.has(n.chain)) firstOf.set(n.chain, j);
      head[j] = firstOf.get(n.chain);
      size.set(n.chain, (size.get(n.chain) || 0) + 1);
    });
    state.chainHead = head;
    state.chainSize = size;
  }
  function rep(j) {  // the node drawn for j (the chain head when its chain is collapsed)
    if (!state.collapse) return j;
    const n = state.graph.nodes[j];
    if (n.chain < 0 || state.expanded.has(n.chain)) return j;
    return state.chainHead[j];
  }

  // ---- camera --------------------------------------------------------------------------------
  function resize() {
    const r = canvas.getBoundingClientRect();
    const dpr = window.devicePixelRatio || 1;
    canvas.width = Math.max(1, Math.round(r.width * dpr));
    canvas.height = Math.max(1, Math.round(r.height * dpr));
    draw();
  }
  function fit() {  // readable: the whole graph if it fits, else its top at the view's width
    const nodes = state.graph.nodes;
    if (!nodes.length) { state.scale = 1; state.tx = 0; state.ty = 0; return; }
    const { x0, y0, x1, y1 } = bounds();
    const r = canvas.getBoundingClientRect();
    const whole = Math.min(r.width / (x1 - x0 + 40), r.height / (y1 - y0 + 40));
    state.scale = Math.max(0.005, Math.min(1.2, Math.max(whole, Math.min(0.9, r.width / (x1 - x0 + 40)))));
    state.tx = r.width / 2 - ((x0 + x1) / 2) * state.scale;
    state.ty = 20 - y0 * state.scale;
  }
  function bounds() {
    let x0 = Infinity, y0 = Infinity, x1 = -Infinity, y1 = -Infinity;
    for (const n of state.graph.nodes) {
      x0 = Math.min(x0, n.x); y0 = Math.min(y0, n.y);
      x1 = Math.max(x1, n.x + NODE_W); y1 = Math.max(y1, n.y + NODE_H);
    }
    return { x0, y0, x1, y1 };
  }
  function fitAll() {  // the whole graph, however small that makes it
    if (!state.graph.nodes.length) return;
    const { x0, y0, x1, y1 } = bounds();
    const r = canvas.getBoundingClientRect();
    state.scale = Math.max(0.001, Math.min(1.2, r.width / (x1 - x0 + 40), r.height / (y1 - y0 + 40)));
    state.tx = r.width / 2 - ((x0 + x1) / 2) * state.scale;
    state.ty = 20 - y0 * state.scale;
  }
  function centerOn(j) {
    const n = state.graph.nodes[j];
    const r = canvas.getBoundingClientRect();
    state.scale = Math.max(state.scale, 0.8);
    state.tx = r.width / 2 - (n.x + NODE_W / 2) * state.scale;
    state.ty = r.height / 2 - (n.y + NODE_H / 2) * state.scale;
  }

  // ---- drawing (level of detail: no text when small, culled to the view) -----------------------
  function draw() {
    if (state.pending) return;
    state.pending = true;
    requestAnimationFrame(() => { state.pending = false; render(); });
  }
  function render() {
    const dpr = window.devicePixelRatio || 1;
    ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
    const w = canvas.width / dpr, h = canvas.height / dpr;
    ctx.fillStyle = "#fff";
    ctx.fillRect(0, 0, w, h);
    if (!state.graph) return;
    const { scale, tx, ty } = state;
    ctx.setTransform(dpr * scale, 0, 0, dpr * scale, dpr * tx, dpr * ty);
    const vx0 = -tx / scale, vy0 = -ty / scale, vx1 = (w - tx) / scale, vy1 = (h - ty) / scale;
    const nodes = state.graph.nodes;
    const visible = (n) => n.x + NODE_W >= vx0 && n.x <= vx1 && n.y + NODE_H >= vy0 && n.y <= vy1;
    const kernelNodes = state.kernel ? new Set(kernelsById.get(state.kernel).nodes.map((p) => p[0])) : null;
    // edges
    ctx.lineWidth = 1 / scale;
    ctx.strokeStyle = "rgba(90,90,90,0.45)";
    ctx.beginPath();
    let numEdges = 0;
    for (let j = 0; j < nodes.length; j++) {
      const dst = rep(j);
      const b = nodes[dst];
      for (const name of nodes[j].inputs) {
        const i = state.nameIndex.get(name);
        if (i === undefined) continue;
        const src = rep(i);
        if (src === dst) continue;
        const a = nodes[src];
        if (Math.max(a.y, b.y) + NODE_H < vy0 || Math.min(a.y, b.y) > vy1) continue;
        if (Math.max(a.x, b.x) + NODE_W < vx0 || Math.min(a.x, b.x) > vx1) continue;
        ctx.moveTo(a.x + NODE_W / 2, a.y + NODE_H);
        ctx.lineTo(b.x + NODE_W / 2, b.y);
        numEdges++;
      }
    }
    ctx.stroke();
    // nodes
    const showText = scale > 0.3;
    ctx.font = "12px sans-serif";
    ctx.textBaseline = "middle";
    let numDrawn = 0;
    for (let j = 0; j < nodes.length; j++) {
      if (rep(j) !== j) continue;
      const n = nodes[j];
      if (!visible(n)) continue;
      numDrawn++;
      let fill = "#e4e4e4";
      if (n.op === "placeholder") fill = "#d7ecff";
      else if (n.op === "output") fill = "#d9f2d0";
      else if (n.kernels.length) fill = "hsl(" + hue(n.kernels[0][0]) + ",55%,82%)";
      else if (n.side) fill = SIDE_COLORS[n.side];
      if (kernelNodes && kernelNodes.has(n.name)) fill = "#ffd24d";
      ctx.fillStyle = fill;
      ctx.fillRect(n.x, n.y, NODE_W, NODE_H);
      const collapsedChain = state.collapse && n.chain >= 0 && !state.expanded.has(n.chain);
      if (n.saved) {  // saved for backward: a teal frame inside the box
        ctx.lineWidth = 2.5 / scale;
        ctx.strokeStyle = "#00897b";
        ctx.strokeRect(n.x + 2, n.y + 2, NODE_W - 4, NODE_H - 4);
      }
      if (j === state.selected || state.matches.has(j) || collapsedChain) {
        ctx.lineWidth = (j === state.selected ? 3 : 2) / scale;
        ctx.strokeStyle = j === state.selected ? "#d00" : state.matches.has(j) ? "#f80" : "#333";
        ctx.strokeRect(n.x, n.y, NODE_W, NODE_H);
      }
      if (showText) {
        ctx.fillStyle = "#111";
        let label = n.name;
        if (collapsedChain) label += " +" + (state.chainSize.get(n.chain) - 1) + " (chain)";
        ctx.fillText(label.slice(0, 28), n.x + 5, n.y + 11);
        ctx.fillStyle = "#555";
        ctx.fillText((n.op === "call_function" ? n.target : n.op).slice(0, 22) + " " + n.shape.slice(0, 12), n.x + 5, n.y + 25);
      }
    }
    document.getElementById("status").textContent =
      numDrawn + " of " + nodes.length + " nodes drawn, " + numEdges + " edges, zoom " + scale.toFixed(2);
  }

  // ---- interaction ---------------------------------------------------------------------------
  let drag = null;
  canvas.addEventListener("mousedown", (e) => { drag = { x: e.clientX, y: e.clientY, tx: state.tx, ty: state.ty, moved: false }; });
  window.addEventListener("mousemove", (e) => {
    if (!drag) return;
    const dx = e.clientX - drag.x, dy = e.clientY - drag.y;
    if (Math.abs(dx) + Math.abs(dy) > 3) drag.moved = true;
    state.tx = drag.tx + dx; state.ty = drag.ty + dy;
    draw();
  });
  window.addEventListener("mouseup", (e) => {
    if (drag && !drag.moved) clickAt(e);
    drag = null;
  });
  canvas.addEventListener("wheel", (e) => {
    e.preventDefault();
    const r = canvas.getBoundingClientRect();
    const mx = e.clientX - r.left, my = e.clientY - r.top;
    const factor = Math.exp(-e.deltaY * 0.0015);
    const scale = Math.min(4, Math.max(0.005, state.scale * factor));
    state.tx = mx - ((mx - state.tx) / state.scale) * scale;
    state.ty = my - ((my - state.ty) / state.scale) * scale;
    state.scale = scale;
    draw();
  }, { passive: false });
  window.addEventListener("keydown", (e) => {
    if (e.key === "f" && document.activeElement.tagName !== "INPUT") { fitAll(); draw(); }
  });
  window.addEventListener("resize", resize);

  function nodeAt(clientX, clientY) {
    const r = canvas.getBoundingClientRect();
    const x = (clientX - r.left - state.tx) / state.scale, y = (clientY - r.top - state.ty) / state.scale;
    const nodes = state.graph.nodes;
    for (let j = 0; j < nodes.length; j++) {
      const n = nodes[j];
      if (rep(j) === j && x >= n.x && x <= n.x + NODE_W && y >= n.y && y <= n.y + NODE_H) return j;
    }
    return -1;
  }
  function clickAt(e) {
    if (!state.graph) return;
    const j = nodeAt(e.clientX, e.clientY);
    if (j < 0) return;
    const n = state.graph.nodes[j];
    if (state.collapse && n.chain >= 0 && !state.expanded.has(n.chain)) state.expanded.add(n.chain);
    selectNode(j, false);
  }

  document.getElementById("collapse").addEventListener("change", (e) => {
    state.collapse = e.target.checked; state.expanded = new Set(); draw();
  });

  const search = document.getElementById("search");
  search.addEventListener("input", () => { runSearch(); draw(); });
  search.addEventListener("keydown", (e) => {
    if (e.key !== "Enter" || !state.matches.size) return;
    const exact = state.nameIndex.get(search.value.trim());
    selectNode(exact !== undefined ? exact : state.matches.values().next().value, true);
  });
  function runSearch() {
    const q = search.value.trim().toLowerCase();
    const out = document.getElementById("search-results");
    clear(out);
    state.matches = new Set();
    if (!q || !state.graph) return;
    state.graph.nodes.forEach((n, j) => {
      if (n.name.toLowerCase().includes(q) || n.target.toLowerCase().includes(q) ||
          (n.dtype + "[" + n.shape + "]").toLowerCase().includes(q)) state.matches.add(j);
    });
    out.appendChild(el("div", state.matches.size + " matches", "muted"));
    let shown = 0;
    for (const j of state.matches) {
      if (shown++ >= 100) break;
      const n = state.graph.nodes[j];
      const b = el("button", n.name + "  " + n.target, "item");
      b.dataset.node = n.name;
      b.addEventListener("click", () => selectNode(j, true));
      out.appendChild(b);
    }
  }

  // ---- details -------------------------------------------------------------------------------
  function row(table, key, value) {
    const tr = el("tr");
    tr.appendChild(el("td", key));
    const td = el("td");
    if (value instanceof Node) td.appendChild(value); else td.textContent = String(value);
    tr.appendChild(td);
    table.appendChild(tr);
  }
  function linkButton(text, onClick) {
    const b = el("button", text, "item");
    b.addEventListener("click", onClick);
    return b;
  }
  function gotoNode(graphIndex, name) {
    selectGraph(graphIndex, true);
    const j = state.nameIndex.get(name);
    if (j !== undefined) selectNode(j, true);
  }
  function showGraphDetails() {
    const d = document.getElementById("details");
    clear(d);
    const g = state.graph;
    d.appendChild(el("h1", g.title));
    const t = el("table");
    row(t, "kind", g.kind);
    row(t, "compile id", g.compile_id);
    row(t, "log line", g.line);
    row(t, "nodes", g.nodes.length);
    row(t, "complete", g.complete ? "yes" : "no (truncated)");
    row(t, "output code", g.module === null ? "none" : model.modules[g.module].aot_id);
    if (g.saved.length) row(t, "saved for backward", g.saved.join(", "));
    row(t, "nodes without kernel", g.unmapped_nodes.length ? g.unmapped_nodes.join(", ") : "none");
    d.appendChild(t);
  }
  function selectNode(j, center) {
    state.selected = j;
    const n = state.graph.nodes[j];
    if (center) centerOn(j);
    const d = document.getElementById("details");
    clear(d);
    d.appendChild(el("h1", n.name));
    const t = el("table");
    t.id = "node-table";
    row(t, "op", n.op);
    row(t, "target", n.target);
    row(t, "args", n.args.join(", "));
    row(t, "dtype", n.dtype);
    row(t, "shape", "[" + n.shape + "]");
    row(t, "stride", "[" + n.stride + "]");
    row(t, "device", n.device);
    row(t, "source", n.source || "(no stack trace)");
    row(t, "log line", n.line);
    d.appendChild(t);
    const g = state.graph;
    const related = el("div");
    const r = g.related;
    if (g.saved.includes(n.name)) {
      if (g.kind === "forward" && r.backward !== undefined)
        related.appendChild(linkButton("saved for backward: open in " + model.graphs[r.backward].title, () => gotoNode(r.backward, n.name)));
      if (g.kind === "backward" && r.forward !== undefined)
        related.appendChild(linkButton("saved by forward: open in " + model.graphs[r.forward].title, () => gotoNode(r.forward, n.name)));
    }
    for (const kind of ["joint", "forward", "backward"]) {
      const other = r[kind];
      if (other === undefined || kind === g.kind) continue;
      if (model.graphs[other].nodes.some((m) => m.name === n.name))
        related.appendChild(linkButton("same name in " + model.graphs[other].title, () => gotoNode(other, n.name)));
    }
    if (related.childNodes.length) { d.appendChild(el("h2", "Related graphs")); d.appendChild(related); }
    d.appendChild(el("h2", "Kernels computing this node"));
    if (!n.kernels.length) d.appendChild(el("div", n.op === "call_function" ? "none found (views are free reinterpretations)" : "-", "muted"));
    for (const [kid, evidence] of n.kernels) {
      const k = kernelsById.get(kid);
      const b = linkButton(k.name + "  [" + evidence + "]", () => selectKernel(kid));
      b.dataset.kernel = kid;
      d.appendChild(b);
    }
    if (n.kernels.length) showKernelCode(d, kernelsById.get(n.kernels[0][0]));
    draw();
  }
  function showKernelCode(container, k) {
    container.appendChild(el("h2", "Code of " + k.name + " (" + k.kind + ", log line " + k.line + ")"));
    const code = el("div", undefined, "code");
    code.id = "kernel-code";
    const lines = k.code.split("\n");
    lines.forEach((line, i) => {
      const div = el("div");
      div.appendChild(el("span", i + 1, "ln"));
      div.appendChild(document.createTextNode(line));
      code.appendChild(div);
    });
    container.appendChild(code);
  }
  function selectKernel(kid) {
    const k = kernelsById.get(kid);
    if (k.graph !== null && model.graphs[k.graph] !== state.graph) selectGraph(k.graph, false);
    state.kernel = kid;
    const first = k.nodes.length ? state.nameIndex.get(k.nodes[0][0]) : undefined;
    if (first !== undefined) centerOn(first);  // bring the kernel's nodes into view
    for (const b of document.getElementById("kernel-list").children) b.classList.toggle("active", b.dataset.kernel === kid);
    const d = document.getElementById("details");
    clear(d);
    d.appendChild(el("h1", k.name));
    const t = el("table");
    row(t, "kind", k.kind);
    row(t, "module", k.module === null ? "-" : model.modules[k.module].aot_id);
    row(t, "nodes", k.nodes.length ? k.nodes.map((p) => p[0] + " (" + p[1] + ")").join(", ") : "none found");
    if (k.source_nodes && k.source_nodes.length) row(t, "source nodes (comment)", k.source_nodes.join(", "));
    if (k.kernel_path) row(t, "kernel path", k.kernel_path);
    row(t, "launched at log line", (k.launch_lines || []).join(", ") || "-");
    d.appendChild(t);
    showKernelCode(d, k);
    draw();
  }

  window.graphViz = {
    model, state,
    selectGraph, selectNode, selectKernel, fitAll,
    renderNow: render,  // synchronous frame, for timing
    nodeScreenPosition(name) {
      const j = state.nameIndex.get(name);
      const n = state.graph.nodes[j];
      const r = canvas.getBoundingClientRect();
      return { x: r.left + state.tx + (n.x + NODE_W / 2) * state.scale, y: r.top + state.ty + (n.y + NODE_H / 2) * state.scale };
    },
  };
  resize();
  if (model.graphs.length) selectGraph(0);
  requestAnimationFrame(() => { render(); document.body.dataset.ready = "1"; });
})();
