// graph_viz viewer: draws the precomputed layered layout on a canvas. All log text reaches the page
// through textContent (never innerHTML), so hostile node names and kernel code stay text.
// Per-graph lookups (name index, input/user adjacency, colours, layer extents) are built once when
// a graph is first shown, in O(nodes + edges); drawing culls to the view, so a frame costs
// O(nodes + edges) at worst and far less zoomed in.
"use strict";
(function () {
  performance.mark("graph_viz:start");
  const model = JSON.parse(document.getElementById("graph-model").textContent);
  performance.mark("graph_viz:parsed");
  const NODE_W = 180, NODE_H = 34, LAYER_H = 74;  // LAYER_H = NODE_HEIGHT + Y_GAP in model.py
  const TEXT_SCALE = 0.3;  // node labels are drawn from this zoom on
  const READABLE_SCALE = 0.5;  // `f` never zooms out further than this (labels stay legible)
  const DOTS_BELOW_PX = 3;  // nodes less tall than this on screen are drawn as pixels, without edges
  const COLORS = {
    input: "#d7ecff", output: "#d9f2d0", none: "#e4e4e4", forward: "#ffd8a8", backward: "#d9c8f2",
    both: "#f2c6da", saved: "#00897b", selected: "#d00000", inputs: "#1565c0", users: "#2e7d32",
    match: "#ff8800", kernel: "#ffd24d", group: "#7b1fa2",
  };
  const canvas = document.getElementById("graph-canvas");
  const ctx = canvas.getContext("2d");
  const minimap = document.getElementById("minimap");
  const mctx = minimap.getContext("2d");
  const kernelsById = new Map(model.kernels.map((k) => [k.id, k]));
  const graphInfo = new Map();  // graph index -> prepared lookups (see prepare)
  const state = {
    graph: null, info: null, scale: 1, tx: 0, ty: 0, selected: -1, kernel: null, group: -1,
    matches: new Set(), collapse: false, expanded: new Set(), collapsedGroups: new Set(),
    repr: null, pending: false,
  };

  function el(tag, text, cls) {
    const e = document.createElement(tag);
    if (text !== undefined) e.textContent = String(text);
    if (cls) e.className = cls;
    return e;
  }
  function clear(node) { while (node.firstChild) node.removeChild(node.firstChild); }
  // "Forward graph 1 [inference 1, 0/1] rank 1 (7 nodes)": AOT id, dynamo's compile id (frame/recompile),
  // and the process or rank when the log holds several runs
  function graphLabel(g) {
    const aotId = g.kind === "other" ? "" : " " + g.compile_id;  // "other" graphs have no AOT id
    const ids = g.kind + aotId + (g.dynamo_compile_id ? ", " + g.dynamo_compile_id : "");
    return g.title + " [" + ids + "]" + (g.run_label ? " " + g.run_label : "") + " (" + g.nodes.length + " nodes)";
  }
  function nodeLabel(n) { return n.name + "  " + (n.op === "call_function" ? n.target : n.op); }
  function annotation(dtype, shape) { return dtype ? dtype + "[" + shape + "]" : "?"; }
  function formatBytes(b) {
    if (b === null || b === undefined) return "? (symbolic or unknown shape)";
    const units = ["B", "KiB", "MiB", "GiB", "TiB"];
    let v = b, u = 0;
    while (v >= 1024 && u < units.length - 1) { v /= 1024; u++; }
    return b.toLocaleString("en-US") + " B" + (u ? " (" + v.toFixed(2) + " " + units[u] + ")" : "");
  }
  function kernelColorFor(index) {  // golden-angle hues: neighbouring kernels get distant colours
    const h = (index * 137.508) % 360, sat = 0.62, light = 0.8;  // hsl -> rgb
    const c = (1 - Math.abs(2 * light - 1)) * sat, hp = h / 60, x = c * (1 - Math.abs((hp % 2) - 1)), m = light - c / 2;
    const [r, g, b] = hp < 1 ? [c, x, 0] : hp < 2 ? [x, c, 0] : hp < 3 ? [0, c, x] : hp < 4 ? [0, x, c] : hp < 5 ? [x, 0, c] : [c, 0, x];
    return "#" + [r, g, b].map((v) => Math.round((v + m) * 255).toString(16).padStart(2, "0")).join("");
  }
  // ---- per-graph lookups -----------------------------------------------------------------------
  function prepare(gi) {
    if (graphInfo.has(gi)) return graphInfo.get(gi);
    const g = model.graphs[gi], nodes = g.nodes, num = nodes.length;
    const nameIndex = new Map();
    for (let j = 0; j < num; j++) nameIndex.set(nodes[j].name, j);
    // Inputs and users as CSR arrays: inputs of j are inList[inStart[j] .. inStart[j + 1]).
    let numEdges = 0;
    for (let j = 0; j < num; j++) numEdges += nodes[j].inputs.length;
    const inStart = new Int32Array(num + 1), inList = new Int32Array(numEdges);
    const outCount = new Int32Array(num + 1);
    let e = 0;
    for (let j = 0; j < num; j++) {
      inStart[j] = e;
      for (const name of nodes[j].inputs) {
        const i = nameIndex.get(name);
        if (i === undefined) continue;
        inList[e++] = i;
        outCount[i + 1]++;
      }
    }
    inStart[num] = e;
    const outStart = new Int32Array(num + 1);
    for (let j = 0; j < num; j++) outStart[j + 1] = outStart[j] + outCount[j + 1];
    const outList = new Int32Array(e), cursor = outStart.slice(0, num);
    for (let j = 0; j < num; j++) for (let k = inStart[j]; k < inStart[j + 1]; k++) outList[cursor[inList[k]]++] = j;
    // Chains and source groups: the head is the node drawn for the whole run when collapsed.
    const chainHead = new Int32Array(num).fill(-1), chainSize = new Map(), chainFirst = new Map();
    for (let j = 0; j < num; j++) {
      const c = nodes[j].chain;
      if (c === undefined || c < 0) continue;
      if (!chainFirst.has(c)) chainFirst.set(c, j);
      chainHead[j] = chainFirst.get(c);
      chainSize.set(c, (chainSize.get(c) || 0) + 1);
    }
    const groups = g.groups || [];
    // Kernel colours: one per kernel of this graph's output code, in the kernel list's order; the
    // list shows each colour next to its kernel (the legend).
    const kernels = model.kernels.filter((k) => k.graph === gi);
    const kernelColor = new Map(kernels.map((k, i) => [k.id, kernelColorFor(i)]));
    const fills = new Array(num);
    let x0 = Infinity, x1 = -Infinity, y0 = Infinity, y1 = -Infinity, numLayers = 0;
    for (let j = 0; j < num; j++) {
      const n = nodes[j];
      let fill = COLORS.none;
      if (n.op === "placeholder") fill = COLORS.input;
      else if (n.op === "output") fill = COLORS.output;
      else if (n.kernels.length) fill = kernelColor.get(n.kernels[0][0]) || COLORS.none;
      else if (n.side) fill = COLORS[n.side] || COLORS.none;
      fills[j] = fill;
      if (n.x < x0) x0 = n.x;
      if (n.x + NODE_W > x1) x1 = n.x + NODE_W;
      if (n.y < y0) y0 = n.y;
      if (n.y + NODE_H > y1) y1 = n.y + NODE_H;
      if (n.layer + 1 > numLayers) numLayers = n.layer + 1;
    }
    const rgb = new Uint8Array(num * 3), parsedColors = new Map();
    for (let j = 0; j < num; j++) {
      let c = parsedColors.get(fills[j]);
      if (!c) { const v = parseInt(fills[j].slice(1), 16); c = [v >> 16, (v >> 8) & 255, v & 255]; parsedColors.set(fills[j], c); }
      rgb[3 * j] = c[0]; rgb[3 * j + 1] = c[1]; rgb[3 * j + 2] = c[2];
    }
    // Horizontal extent of each layer, for "fit the layers in view".
    const layerX0 = new Float64Array(numLayers).fill(Infinity), layerX1 = new Float64Array(numLayers).fill(-Infinity);
    for (let j = 0; j < num; j++) {
      const n = nodes[j];
      if (n.x < layerX0[n.layer]) layerX0[n.layer] = n.x;
      if (n.x + NODE_W > layerX1[n.layer]) layerX1[n.layer] = n.x + NODE_W;
    }
    const info = {
      index: gi, nameIndex, inStart, inList, outStart, outList, chainHead, chainSize, groups, kernels,
      kernelColor, fills, rgb, bounds: num ? { x0, x1, y0, y1 } : { x0: 0, x1: 1, y0: 0, y1: 1 }, layerX0, layerX1,
      searchText: null, overview: null,
    };
    graphInfo.set(gi, info);
    return info;
  }
  const nameSets = new Map();  // graph index -> Set of node names, for graphs not prepared yet
  function hasName(gi, name) {
    if (graphInfo.has(gi)) return graphInfo.get(gi).nameIndex.has(name);
    if (!nameSets.has(gi)) nameSets.set(gi, new Set(model.graphs[gi].nodes.map((m) => m.name)));
    return nameSets.get(gi).has(name);
  }
  // The node drawn for j: the head of its collapsed source group or collapsed chain, else j itself.
  function computeRepr() {
    const nodes = state.graph.nodes, info = state.info, repr = new Int32Array(nodes.length);
    for (let j = 0; j < nodes.length; j++) {
      const n = nodes[j];
      let r = j;
      if (n.group !== undefined && n.group >= 0 && state.collapsedGroups.has(n.group)) r = info.groups[n.group].head;
      else if (state.collapse && n.chain >= 0 && !state.expanded.has(n.chain)) r = info.chainHead[j];
      repr[j] = r;
    }
    state.repr = repr;
  }
  function rep(j) { return state.repr ? state.repr[j] : j; }
  function isCollapsedHead(j) {
    const n = state.graph.nodes[j];
    if (n.group !== undefined && n.group >= 0 && state.collapsedGroups.has(n.group)) return "group";
    if (state.collapse && n.chain >= 0 && !state.expanded.has(n.chain)) return "chain";
    return "";
  }
  function reveal(j) {  // expand whatever hides node j
    const n = state.graph.nodes[j];
    if (n.group !== undefined && n.group >= 0) state.collapsedGroups.delete(n.group);
    if (state.collapse && n.chain >= 0) state.expanded.add(n.chain);
    computeRepr();
    syncGroupList();
  }

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
  if (!model.graphs.length) {
    graphList.appendChild(el("div", "no graphs found in this log (it needs TORCH_LOGS=aot_graphs,output_code)", "muted"));
    document.getElementById("details").firstElementChild.textContent = "No graphs to show.";
  }
  const warnings = document.getElementById("warnings");
  if (!model.warnings.length) warnings.textContent = "none";
  model.warnings.slice(0, 200).forEach((w) => warnings.appendChild(el("div", "line " + w[0] + ": " + w[1])));
  buildLegend();

  function buildLegend() {
    const legend = document.getElementById("legend");
    const entries = [
      ["fill", COLORS.input, "graph input (placeholder)"], ["fill", COLORS.output, "graph output"],
      ["fill", COLORS.none, "no kernel"], ["fill", "linear-gradient(90deg,hsl(0,62%,80%),hsl(137,62%,80%),hsl(275,62%,80%))", "computed by a kernel: colours listed under Kernels"],
      ["fill", COLORS.forward, "joint graph: forward"], ["fill", COLORS.backward, "joint graph: backward"],
      ["fill", COLORS.both, "joint graph: both"], ["fill", COLORS.kernel, "nodes of the selected kernel"],
      ["frame", COLORS.saved, "saved for backward"], ["frame", COLORS.selected, "selected node"],
      ["frame", COLORS.inputs, "its inputs (and edges)"], ["frame", COLORS.users, "its users (and edges)"],
      ["frame", COLORS.match, "search match"], ["frame", COLORS.group, "source group of the selection"],
    ];
    for (const [kind, color, text] of entries) {
      const row = el("div", undefined, "legend-row");
      const swatch = el("span", undefined, "swatch");
      if (kind === "fill") swatch.style.background = color; else swatch.style.border = "2px solid " + color;
      row.appendChild(swatch);
      row.appendChild(el("span", text));
      legend.appendChild(row);
    }
  }

  function selectGraph(i, keepView) {
    state.graph = model.graphs[i];
    state.info = prepare(i);
    state.selected = -1; state.kernel = null; state.group = -1;
    state.expanded = new Set(); state.collapsedGroups = new Set();
    if (document.getElementById("collapse-groups").checked) state.info.groups.forEach((_, gi) => state.collapsedGroups.add(gi));
    computeRepr();
    for (const b of graphList.children) b.classList.toggle("active", b.dataset.graph === String(i));
    buildKernelList();
    buildGroupList();
    markMatches();
    if (!keepView) fitInitial();
    showGraphDetails();
    draw();
  }
  function buildKernelList() {
    const list = document.getElementById("kernel-list");
    clear(list);
    const kernels = state.info.kernels;
    if (!kernels.length) list.appendChild(el("div", "no output code for this graph", "muted"));
    kernels.forEach((k) => {
      const label = k.kind === "extern" || k.kind === "fallback" ? k.name + " @line " + k.line : k.name;
      const b = el("button", undefined, "item");
      const swatch = el("span", undefined, "swatch");
      swatch.style.background = state.info.kernelColor.get(k.id);
      swatch.dataset.color = state.info.kernelColor.get(k.id);
      b.appendChild(swatch);
      b.appendChild(document.createTextNode(label + " (" + k.nodes.length + " nodes)"));
      b.dataset.kernel = k.id;
      b.addEventListener("click", () => selectKernel(k.id));
      list.appendChild(b);
    });
  }
  const MAX_GROUP_ROWS = 500;
  function buildGroupList() {
    const list = document.getElementById("group-list");
    clear(list);
    const groups = state.info.groups;
    document.getElementById("group-count").textContent = groups.length ? "(" + groups.length + ")" : "";
    if (!groups.length) {
      list.appendChild(el("div", "no `# File:` source lines in this graph", "muted"));
      return;
    }
    groups.slice(0, MAX_GROUP_ROWS).forEach((grp, gi) => {
      const row = el("div", undefined, "group-row");
      const toggle = el("button", "", "toggle");
      toggle.dataset.groupToggle = String(gi);
      toggle.title = "collapse / expand this group";
      toggle.addEventListener("click", () => { toggleGroup(gi); });
      const b = el("button", grp.label + " (" + grp.size + ")", "item");
      b.title = grp.source;
      b.dataset.group = String(gi);
      b.addEventListener("click", () => showGroup(gi));
      row.appendChild(toggle);
      row.appendChild(b);
      list.appendChild(row);
    });
    if (groups.length > MAX_GROUP_ROWS) list.appendChild(el("div", (groups.length - MAX_GROUP_ROWS) + " more (click a node to see its group)", "muted"));
    syncGroupList();
  }
  function syncGroupList() {
    for (const t of document.querySelectorAll("#group-list button.toggle")) {
      const collapsed = state.collapsedGroups.has(Number(t.dataset.groupToggle));
      t.textContent = collapsed ? "+" : "\u2212";
      t.classList.toggle("collapsed", collapsed);
    }
    for (const b of document.querySelectorAll("#group-list button.item")) b.classList.toggle("active", Number(b.dataset.group) === state.group);
  }
  function toggleGroup(gi) {
    if (state.collapsedGroups.has(gi)) state.collapsedGroups.delete(gi); else state.collapsedGroups.add(gi);
    computeRepr();
    syncGroupList();
    draw();
  }

  // ---- camera --------------------------------------------------------------------------------
  function viewSize() {
    const r = canvas.getBoundingClientRect();
    return { w: Math.max(1, r.width), h: Math.max(1, r.height), left: r.left, top: r.top };
  }
  function resize() {
    const v = viewSize();
    const dpr = window.devicePixelRatio || 1;
    canvas.width = Math.max(1, Math.round(v.w * dpr));
    canvas.height = Math.max(1, Math.round(v.h * dpr));
    draw();
  }
  function layerRange(y0, y1) {  // layers whose boxes intersect graph y range [y0, y1]
    const last = state.info.layerX0.length - 1;
    return [Math.max(0, Math.floor((y0 - NODE_H) / LAYER_H) + 1), Math.min(last, Math.floor(y1 / LAYER_H))];
  }
  function bandExtent(l0, l1) {
    let x0 = Infinity, x1 = -Infinity;
    for (let l = l0; l <= l1; l++) {
      x0 = Math.min(x0, state.info.layerX0[l]);
      x1 = Math.max(x1, state.info.layerX1[l]);
    }
    return { x0, x1 };
  }
  // The whole graph when it fits at a readable zoom; else the widest layer band in view, fitted to
  // the width but never below READABLE_SCALE (the minimap shows the rest).
  function fitLayers(anchorY) {
    if (!state.graph || !state.graph.nodes.length) return;
    const v = viewSize(), b = state.info.bounds;
    const whole = Math.min(v.w / (b.x1 - b.x0 + 40), v.h / (b.y1 - b.y0 + 40));
    if (whole >= READABLE_SCALE) {
      state.scale = Math.min(1.2, whole);
      state.tx = v.w / 2 - ((b.x0 + b.x1) / 2) * state.scale;
      state.ty = 20 - b.y0 * state.scale;
      return;
    }
    // The graph y at the view's centre stays there (with anchorY: the graph y at the view's top).
    const centre = Math.min(b.y1, Math.max(b.y0, (v.h / 2 - state.ty) / state.scale));
    const range = (scale) => anchorY !== undefined ? [anchorY, anchorY + v.h / scale] : [centre - v.h / 2 / scale, centre + v.h / 2 / scale];
    let scale = 1.2;
    for (let iteration = 0; iteration < 3; iteration++) {  // the band depends on the zoom, the zoom on the band
      const [l0, l1] = layerRange(...range(scale));
      if (l0 > l1) break;
      const { x0, x1 } = bandExtent(l0, l1);
      if (x1 < x0) break;
      scale = Math.max(READABLE_SCALE, Math.min(1.2, v.w / (x1 - x0 + 40)));
      state.tx = v.w / 2 - ((x0 + x1) / 2) * scale;
    }
    state.scale = scale;
    state.ty = anchorY !== undefined ? 20 - anchorY * scale : v.h / 2 - centre * scale;
  }
  function fitInitial() {
    if (!state.graph.nodes.length) { state.scale = 1; state.tx = 0; state.ty = 0; return; }
    fitLayers(state.info.bounds.y0);
  }
  function fitAll() {  // the whole graph, however small that makes it
    if (!state.graph || !state.graph.nodes.length) return;
    const v = viewSize(), b = state.info.bounds;
    state.scale = Math.max(0.0005, Math.min(1.2, v.w / (b.x1 - b.x0 + 40), v.h / (b.y1 - b.y0 + 40)));
    state.tx = v.w / 2 - ((b.x0 + b.x1) / 2) * state.scale;
    state.ty = 20 - b.y0 * state.scale;
  }
  function centerOn(j) {
    const n = state.graph.nodes[j], v = viewSize();
    state.scale = Math.max(state.scale, 0.8);
    state.tx = v.w / 2 - (n.x + NODE_W / 2) * state.scale;
    state.ty = v.h / 2 - (n.y + NODE_H / 2) * state.scale;
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
    if (!state.graph) { drawMinimap(); return; }
    const { scale, tx, ty, info } = state;
    ctx.setTransform(dpr * scale, 0, 0, dpr * scale, dpr * tx, dpr * ty);
    const vx0 = -tx / scale, vy0 = -ty / scale, vx1 = (w - tx) / scale, vy1 = (h - ty) / scale;
    const nodes = state.graph.nodes, repr = state.repr, inStart = info.inStart, inList = info.inList;
    const kernelNodes = state.kernel ? new Set(kernelsById.get(state.kernel).nodes.map((p) => p[0])) : null;
    const sel = state.selected;
    if (scale * NODE_H < DOTS_BELOW_PX) { renderDots(kernelNodes, dpr); return; }
    // the selected node's source group, framed behind everything
    const selGroup = sel >= 0 && nodes[sel].group >= 0 ? nodes[sel].group : state.group;
    if (selGroup >= 0 && selGroup < info.groups.length && !state.collapsedGroups.has(selGroup)) drawGroupFrame(selGroup, scale);
    // edges
    ctx.lineWidth = 1 / scale;
    ctx.strokeStyle = "rgba(90,90,90,0.45)";
    ctx.beginPath();
    let numEdges = 0;
    for (let j = 0; j < nodes.length; j++) {
      const dst = repr[j], b = nodes[dst];
      for (let k = inStart[j]; k < inStart[j + 1]; k++) {
        const src = repr[inList[k]];
        if (src === dst) continue;
        const a = nodes[src];
        if ((a.y > b.y ? a.y : b.y) + NODE_H < vy0 || (a.y < b.y ? a.y : b.y) > vy1) continue;
        if ((a.x > b.x ? a.x : b.x) + NODE_W < vx0 || (a.x < b.x ? a.x : b.x) > vx1) continue;
        ctx.moveTo(a.x + NODE_W / 2, a.y + NODE_H);
        ctx.lineTo(b.x + NODE_W / 2, b.y);
        numEdges++;
      }
    }
    ctx.stroke();
    // the selected node's input and user edges, on top
    const inputs = new Set(), users = new Set();
    if (sel >= 0) {
      for (let k = inStart[sel]; k < inStart[sel + 1]; k++) inputs.add(repr[inList[k]]);
      for (let k = info.outStart[sel]; k < info.outStart[sel + 1]; k++) users.add(repr[info.outList[k]]);
      const s0 = nodes[repr[sel]];
      ctx.lineWidth = 2.5 / scale;
      for (const [set, color, down] of [[inputs, COLORS.inputs, true], [users, COLORS.users, false]]) {
        ctx.strokeStyle = color;
        ctx.beginPath();
        for (const i of set) {
          if (i === repr[sel]) continue;
          const a = down ? nodes[i] : s0, b = down ? s0 : nodes[i];
          ctx.moveTo(a.x + NODE_W / 2, a.y + NODE_H);
          ctx.lineTo(b.x + NODE_W / 2, b.y);
        }
        ctx.stroke();
      }
    }
    // nodes
    const showText = scale > TEXT_SCALE;
    ctx.font = "12px sans-serif";
    ctx.textBaseline = "middle";
    let numDrawn = 0;
    for (let j = 0; j < nodes.length; j++) {
      if (repr[j] !== j) continue;
      const n = nodes[j];
      if (n.x + NODE_W < vx0 || n.x > vx1 || n.y + NODE_H < vy0 || n.y > vy1) continue;
      numDrawn++;
      ctx.fillStyle = kernelNodes && kernelNodes.has(n.name) ? COLORS.kernel : info.fills[j];
      ctx.fillRect(n.x, n.y, NODE_W, NODE_H);
      const collapsed = isCollapsedHead(j);
      if (n.saved) {  // saved for backward: a teal frame inside the box
        ctx.lineWidth = 2.5 / scale;
        ctx.strokeStyle = COLORS.saved;
        ctx.strokeRect(n.x + 2, n.y + 2, NODE_W - 4, NODE_H - 4);
      }
      let frame = null;
      if (j === sel) frame = COLORS.selected;
      else if (inputs.has(j)) frame = COLORS.inputs;
      else if (users.has(j)) frame = COLORS.users;
      else if (state.matches.has(j)) frame = COLORS.match;
      else if (collapsed === "group") frame = COLORS.group;
      else if (collapsed) frame = "#333";
      if (frame) {
        ctx.lineWidth = (j === sel ? 3 : 2) / scale;
        ctx.strokeStyle = frame;
        ctx.strokeRect(n.x, n.y, NODE_W, NODE_H);
      }
      if (showText) {
        ctx.fillStyle = "#111";
        let label = n.name, second = (n.op === "call_function" ? n.target : n.op).slice(0, 22) + " " + n.shape.slice(0, 12);
        if (collapsed === "chain") label += " +" + (info.chainSize.get(n.chain) - 1) + " (chain)";
        if (collapsed === "group") {
          const grp = info.groups[n.group];
          label = "[+] " + grp.size + " nodes";
          second = grp.label;
        }
        ctx.fillText(label.slice(0, 28), n.x + 5, n.y + 11);
        ctx.fillStyle = "#555";
        ctx.fillText(second.slice(0, 30), n.x + 5, n.y + 25);
      }
    }
    document.getElementById("status").textContent =
      numDrawn + " of " + nodes.length + " nodes drawn, " + numEdges + " edges, zoom " + scale.toFixed(2);
    drawMinimap();
  }
  // Zoomed far out a node is a few pixels: write them straight into the canvas pixels (O(nodes), no
  // path work) and leave the edges out; the selection, its neighbours and matches get markers.
  function renderDots(kernelNodes, dpr) {
    const { scale, tx, ty, info } = state, nodes = state.graph.nodes, repr = state.repr;
    const W = canvas.width, H = canvas.height;
    if (!state.pixels || state.pixels.width !== W || state.pixels.height !== H) state.pixels = ctx.createImageData(W, H);
    const img = state.pixels, data = img.data;
    data.fill(255);
    const s = scale * dpr, ox = tx * dpr, oy = ty * dpr;
    const bw = Math.max(1, Math.round(NODE_W * s)), bh = Math.max(1, Math.round(NODE_H * s));
    let numDrawn = 0;
    for (let j = 0; j < nodes.length; j++) {
      if (repr[j] !== j) continue;
      const n = nodes[j], x0 = Math.floor(n.x * s + ox), y0 = Math.floor(n.y * s + oy);
      if (x0 + bw <= 0 || y0 + bh <= 0 || x0 >= W || y0 >= H) continue;
      numDrawn++;
      let r = info.rgb[3 * j], g = info.rgb[3 * j + 1], b = info.rgb[3 * j + 2];
      if (kernelNodes && kernelNodes.has(n.name)) { r = 255; g = 210; b = 77; }
      else if (r > 220 && g > 220 && b > 220) { r -= 70; g -= 70; b -= 70; }  // pale fills would vanish on white
      for (let y = Math.max(0, y0); y < Math.min(H, y0 + bh); y++) {
        for (let x = Math.max(0, x0), o = 4 * (y * W + x); x < Math.min(W, x0 + bw); x++, o += 4) {
          data[o] = r; data[o + 1] = g; data[o + 2] = b;
        }
      }
    }
    ctx.setTransform(1, 0, 0, 1, 0, 0);
    ctx.putImageData(img, 0, 0);
    ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
    const marker = (j, color) => {
      const n = nodes[repr[j]];
      ctx.strokeStyle = color;
      ctx.strokeRect(n.x * scale + tx - 3, n.y * scale + ty - 3, NODE_W * scale + 6, NODE_H * scale + 6);
    };
    ctx.lineWidth = 2;
    let numMarked = 0;
    for (const j of state.matches) { if (numMarked++ < 5000) marker(j, COLORS.match); }
    if (state.selected >= 0) {
      const sel = state.selected;
      for (let k = info.inStart[sel]; k < info.inStart[sel + 1]; k++) marker(info.inList[k], COLORS.inputs);
      for (let k = info.outStart[sel]; k < info.outStart[sel + 1]; k++) marker(info.outList[k], COLORS.users);
      ctx.lineWidth = 3;
      marker(sel, COLORS.selected);
    }
    document.getElementById("status").textContent =
      numDrawn + " of " + nodes.length + " nodes drawn as dots (edges hidden below zoom " +
      (DOTS_BELOW_PX / NODE_H).toFixed(2) + "), zoom " + scale.toFixed(4);
    drawMinimap();
  }
  function groupBounds(gi) {
    const grp = state.info.groups[gi], nodes = state.graph.nodes;
    let x0 = Infinity, y0 = Infinity, x1 = -Infinity, y1 = -Infinity;
    for (let j = grp.head; j < grp.head + grp.size; j++) {
      const n = nodes[j];
      x0 = Math.min(x0, n.x); y0 = Math.min(y0, n.y); x1 = Math.max(x1, n.x + NODE_W); y1 = Math.max(y1, n.y + NODE_H);
    }
    return { x0, y0, x1, y1 };
  }
  function drawGroupFrame(gi, scale) {
    const b = groupBounds(gi);
    ctx.fillStyle = "rgba(123,31,162,0.06)";
    ctx.fillRect(b.x0 - 8, b.y0 - 18, b.x1 - b.x0 + 16, b.y1 - b.y0 + 26);
    ctx.lineWidth = 1.5 / scale;
    ctx.strokeStyle = COLORS.group;
    ctx.strokeRect(b.x0 - 8, b.y0 - 18, b.x1 - b.x0 + 16, b.y1 - b.y0 + 26);
    if (scale > TEXT_SCALE) {
      ctx.fillStyle = COLORS.group;
      ctx.font = "11px sans-serif";
      ctx.textBaseline = "middle";
      ctx.fillText(state.info.groups[gi].label, b.x0 - 4, b.y0 - 9);
    }
  }

  // ---- minimap: the whole graph squeezed into a fixed box (x and y scaled separately, so very tall
  // graphs stay usable); the red frame is the view; click or drag it to move the view ----------------
  function minimapTransform() {
    const b = state.info.bounds;
    return { sx: minimap.width / (b.x1 - b.x0), sy: minimap.height / (b.y1 - b.y0), b };
  }
  function buildOverview() {
    const info = state.info, nodes = state.graph.nodes;
    const off = document.createElement("canvas");
    off.width = minimap.width; off.height = minimap.height;
    const o = off.getContext("2d"), img = o.createImageData(off.width, off.height), data = img.data;
    const W = off.width, H = off.height;
    for (let k = 0; k < data.length; k += 4) { data[k] = data[k + 1] = data[k + 2] = 250; data[k + 3] = 255; }
    const { sx, sy, b } = minimapTransform();
    const bw = Math.max(1, Math.round(NODE_W * sx)), bh = Math.max(1, Math.round(NODE_H * sy));
    for (let j = 0; j < nodes.length; j++) {
      const x0 = Math.min(W - 1, Math.floor((nodes[j].x - b.x0) * sx)), y0 = Math.min(H - 1, Math.floor((nodes[j].y - b.y0) * sy));
      let r = info.rgb[3 * j], g = info.rgb[3 * j + 1], bl = info.rgb[3 * j + 2];
      if (r > 220 && g > 220 && bl > 220) { r -= 70; g -= 70; bl -= 70; }
      for (let y = y0; y < Math.min(H, y0 + bh); y++) {
        for (let x = x0, o4 = 4 * (y * W + x); x < Math.min(W, x0 + bw); x++, o4 += 4) {
          data[o4] = r; data[o4 + 1] = g; data[o4 + 2] = bl;
        }
      }
    }
    o.putImageData(img, 0, 0);
    info.overview = off;
  }
  function drawMinimap() {
    mctx.setTransform(1, 0, 0, 1, 0, 0);
    mctx.clearRect(0, 0, minimap.width, minimap.height);
    minimap.style.display = state.graph && state.graph.nodes.length ? "block" : "none";
    if (!state.graph || !state.graph.nodes.length) return;
    if (!state.info.overview) buildOverview();
    mctx.drawImage(state.info.overview, 0, 0);
    const v = viewSize(), { sx, sy, b } = minimapTransform();
    const x0 = (-state.tx / state.scale - b.x0) * sx, y0 = (-state.ty / state.scale - b.y0) * sy;
    mctx.lineWidth = 1.5;
    mctx.strokeStyle = COLORS.selected;
    mctx.strokeRect(x0, y0, Math.max(3, (v.w / state.scale) * sx), Math.max(3, (v.h / state.scale) * sy));
  }
  function minimapMoveTo(e) {
    if (!state.graph || !state.graph.nodes.length) return;
    const r = minimap.getBoundingClientRect(), v = viewSize(), { sx, sy, b } = minimapTransform();
    const gx = (e.clientX - r.left) * (minimap.width / r.width) / sx + b.x0;
    const gy = (e.clientY - r.top) * (minimap.height / r.height) / sy + b.y0;
    state.tx = v.w / 2 - gx * state.scale;
    state.ty = v.h / 2 - gy * state.scale;
    draw();
  }
  let minimapDrag = false;
  minimap.addEventListener("mousedown", (e) => { minimapDrag = true; minimapMoveTo(e); e.stopPropagation(); e.preventDefault(); });
  window.addEventListener("mousemove", (e) => { if (minimapDrag) minimapMoveTo(e); });
  window.addEventListener("mouseup", () => { minimapDrag = false; });

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
    const v = viewSize();
    const mx = e.clientX - v.left, my = e.clientY - v.top;
    const factor = Math.exp(-e.deltaY * 0.0015);
    const scale = Math.min(4, Math.max(0.0005, state.scale * factor));
    state.tx = mx - ((mx - state.tx) / state.scale) * scale;
    state.ty = my - ((my - state.ty) / state.scale) * scale;
    state.scale = scale;
    draw();
  }, { passive: false });
  window.addEventListener("keydown", (e) => {
    const focus = document.activeElement;
    if (focus && focus.tagName === "INPUT" && (focus.type === "search" || focus.type === "text")) return;  // typing
    if (!state.graph) return;  // a log with no graphs: nothing to fit
    if (e.key === "f") { fitLayers(); draw(); } else if (e.key === "F") { fitAll(); draw(); }
  });
  window.addEventListener("resize", resize);

  function nodeAt(clientX, clientY) {
    const v = viewSize();
    const x = (clientX - v.left - state.tx) / state.scale, y = (clientY - v.top - state.ty) / state.scale;
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
    if (isCollapsedHead(j)) reveal(j);
    selectNode(j, false);
  }

  document.getElementById("collapse").addEventListener("change", (e) => {
    state.collapse = e.target.checked; state.expanded = new Set();
    if (state.graph) computeRepr();
    draw();
  });
  document.getElementById("collapse-groups").addEventListener("change", (e) => {
    if (!state.graph) return;
    state.collapsedGroups = new Set();
    if (e.target.checked) state.info.groups.forEach((_, gi) => state.collapsedGroups.add(gi));
    computeRepr();
    syncGroupList();
    draw();
  });

  // ---- search: every graph; matches outlined in the shown graph, results listed per graph --------
  const search = document.getElementById("search");
  search.addEventListener("input", () => { runSearch(); draw(); });
  search.addEventListener("keydown", (e) => {
    if (e.key !== "Enter" || !state.results || !state.results.length) return;
    const q = search.value.trim();
    const here = state.graph ? state.info.index : -1;
    let hit = state.graph && state.info.nameIndex.has(q) ? [here, state.info.nameIndex.get(q)] : null;
    if (!hit) hit = state.results.find((r) => r[0] === here && r[1].length) ? [here, state.results.find((r) => r[0] === here)[1][0]] : null;
    if (!hit) hit = [state.results[0][0], state.results[0][1][0]];
    gotoNodeIndex(hit[0], hit[1]);
  });
  function searchTexts(gi) {
    const info = prepare(gi);
    if (!info.searchText) {
      info.searchText = model.graphs[gi].nodes.map((n) =>
        (n.name + "\n" + n.target + "\n" + n.dtype + "[" + n.shape + "]").toLowerCase());
    }
    return info.searchText;
  }
  const MAX_RESULTS_PER_GRAPH = 50;
  function runSearch() {
    const q = search.value.trim().toLowerCase();
    const out = document.getElementById("search-results");
    clear(out);
    state.results = [];
    if (!q) { markMatches(); return; }
    let total = 0;
    model.graphs.forEach((g, gi) => {
      const texts = searchTexts(gi), found = [];
      for (let j = 0; j < texts.length; j++) if (texts[j].includes(q)) found.push(j);
      if (found.length) { state.results.push([gi, found]); total += found.length; }
    });
    markMatches();
    out.appendChild(el("div", total + " matches in " + state.results.length + " of " + model.graphs.length + " graphs", "muted"));
    for (const [gi, found] of state.results) {
      const g = model.graphs[gi];
      out.appendChild(el("div", g.title + ": " + found.length, "result-graph"));
      for (const j of found.slice(0, MAX_RESULTS_PER_GRAPH)) {
        const b = el("button", nodeLabel(g.nodes[j]), "item");
        b.dataset.node = g.nodes[j].name;
        b.dataset.graph = String(gi);
        b.addEventListener("click", () => gotoNodeIndex(gi, j));
        out.appendChild(b);
      }
      if (found.length > MAX_RESULTS_PER_GRAPH) out.appendChild(el("div", (found.length - MAX_RESULTS_PER_GRAPH) + " more", "muted"));
    }
  }
  function markMatches() {
    state.matches = new Set();
    if (!state.graph || !state.results) return;
    for (const [gi, found] of state.results) if (gi === state.info.index) state.matches = new Set(found);
  }

  // ---- details -------------------------------------------------------------------------------
  function row(table, key, value) {
    const tr = el("tr");
    tr.appendChild(el("td", key));
    const td = el("td");
    if (value instanceof Node) td.appendChild(value); else td.textContent = String(value);
    tr.appendChild(td);
    table.appendChild(tr);
    return tr;
  }
  function linkButton(text, onClick) {
    const b = el("button", text, "item");
    b.addEventListener("click", onClick);
    return b;
  }
  function gotoNodeIndex(gi, j) {
    if (!state.graph || state.info.index !== gi) selectGraph(gi, true);
    selectNode(j, true);
  }
  function gotoNode(graphIndex, name) {
    selectGraph(graphIndex, true);
    const j = state.info.nameIndex.get(name);
    if (j !== undefined) selectNode(j, true);
  }
  function showGroup(gi) {
    state.group = gi;
    const grp = state.info.groups[gi];
    syncGroupList();
    const d = document.getElementById("details");
    clear(d);
    d.appendChild(el("h1", grp.label));
    const t = el("table");
    row(t, "source", grp.source);
    row(t, "nodes", grp.size);
    row(t, "state", state.collapsedGroups.has(gi) ? "collapsed into one box" : "expanded");
    d.appendChild(t);
    d.appendChild(el("h2", "Nodes"));
    const nodes = state.graph.nodes;
    for (let j = grp.head; j < grp.head + grp.size; j++) {
      const b = linkButton(nodeLabel(nodes[j]), () => { reveal(j); selectNode(j, true); });
      b.dataset.node = nodes[j].name;
      d.appendChild(b);
    }
    const b = groupBounds(gi), v = viewSize();
    state.scale = Math.max(READABLE_SCALE, Math.min(1.2, v.w / (b.x1 - b.x0 + 60), v.h / (b.y1 - b.y0 + 60)));
    state.tx = v.w / 2 - ((b.x0 + b.x1) / 2) * state.scale;
    state.ty = v.h / 2 - ((b.y0 + b.y1) / 2) * state.scale;
    draw();
  }
  const MAX_SAVED_ROWS = 200;
  function showSavedMemory(container, g) {
    const mem = g.saved_memory;
    if (!mem || !mem.tensors.length) return;
    container.appendChild(el("h2", "Saved for backward (forward \u2192 backward): " + mem.tensors.length + " tensors"));
    const t = el("table");
    t.id = "saved-memory";
    const total = row(t, "total", formatBytes(mem.total_bytes) + (mem.unknown.length ? " + " + mem.unknown.length + " of unknown size" : ""));
    total.dataset.bytes = String(mem.total_bytes);
    total.id = "saved-total";
    const acts = row(t, "activations", formatBytes(mem.activation_bytes) + " (graph inputs saved as well are alive anyway)");
    acts.dataset.bytes = String(mem.activation_bytes);
    const side = g.kind === "backward" ? g.related.forward : g.kind === "forward" ? g.related.backward : undefined;
    // largest first; unknown sizes last
    const order = mem.tensors.map((_, i) => i).sort((a, b) => (mem.tensors[b].bytes ?? -1) - (mem.tensors[a].bytes ?? -1) || a - b);
    for (const i of order.slice(0, MAX_SAVED_ROWS)) {
      const tensor = mem.tensors[i];
      const b = linkButton(tensor.name + "  " + annotation(tensor.dtype, tensor.shape) + (tensor.input ? "  (input)" : ""), () => {
        const j = state.info.nameIndex.get(tensor.name);
        if (j !== undefined) { reveal(j); selectNode(j, true); } else if (side !== undefined) gotoNode(side, tensor.name);
      });
      const tr = row(t, formatBytes(tensor.bytes).split(" (")[0], b);
      tr.dataset.name = tensor.name;
      tr.dataset.bytes = tensor.bytes === null ? "" : String(tensor.bytes);
    }
    if (order.length > MAX_SAVED_ROWS) row(t, "", (order.length - MAX_SAVED_ROWS) + " smaller ones not listed (all in model.json)");
    container.appendChild(t);
  }
  function showGraphDetails() {
    const d = document.getElementById("details");
    clear(d);
    const g = state.graph;
    d.appendChild(el("h1", g.title));
    const t = el("table");
    row(t, "kind", g.kind);
    row(t, "AOT id", g.compile_id);
    row(t, "dynamo compile id", g.dynamo_compile_id || "not in the log");
    if (g.run_label) row(t, "run", g.run_label);
    row(t, "log line", g.line);
    row(t, "nodes", g.nodes.length);
    row(t, "complete", g.complete ? "yes" : "no (truncated)");
    row(t, "output code", g.module === null ? "none" : model.modules[g.module].aot_id);
    row(t, "source groups", (g.groups || []).length);
    const unmapped = g.unmapped_nodes;
    row(t, "nodes without kernel", unmapped.length ? unmapped.slice(0, 300).join(", ") + (unmapped.length > 300 ? ", ... (" + unmapped.length + ")" : "") : "none");
    d.appendChild(t);
    showSavedMemory(d, g);
  }
  function neighbourList(container, title, start, list, id) {
    const nodes = state.graph.nodes, count = start[state.selected + 1] - start[state.selected];
    container.appendChild(el("h2", title + " (" + count + ")"));
    const box = el("div");
    box.id = id;
    for (let k = start[state.selected]; k < start[state.selected + 1]; k++) {
      const i = list[k];
      const n = nodes[i];
      const b = linkButton(nodeLabel(n) + "  " + annotation(n.dtype, n.shape), () => { reveal(i); selectNode(i, true); });
      b.dataset.node = n.name;
      box.appendChild(b);
    }
    if (!count) box.appendChild(el("div", "none", "muted"));
    container.appendChild(box);
  }
  function noKernelReason(n, g) {
    if (n.unlinked_reason) return n.unlinked_reason;  // the linker's reason (graph_viz/mapping.py)
    if (n.op === "placeholder" || n.op === "output") return "-";
    if (g.module === null) return "none: this graph has no output code in the log";
    if (n.op === "getitem") return "none: a getitem picks one output of the node it indexes (no kernel of its own)";
    if (g.unmapped_nodes.includes(n.name)) return "none found: no comment, op match or call() data flow names this node";
    return "none: a view, which the output code does as reinterpret_tensor (no kernel)";
  }
  function selectNode(j, center) {
    if (rep(j) !== j) reveal(j);
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
    // The page's model lists each graph's `# File:` lines once (model.page_model): n.source indexes them.
    const source = typeof n.source === "number" ? state.graph.sources[n.source] : n.source;
    row(t, "source", source || "(no stack trace)");
    row(t, "log line", n.line);
    d.appendChild(t);
    const g = state.graph;
    neighbourList(d, "Inputs", state.info.inStart, state.info.inList, "node-inputs");
    neighbourList(d, "Users", state.info.outStart, state.info.outList, "node-users");
    const related = el("div");
    const r = g.related;
    if (n.saved) {
      if (g.kind === "forward" && r.backward !== undefined)
        related.appendChild(linkButton("saved for backward: open in " + model.graphs[r.backward].title, () => gotoNode(r.backward, n.name)));
      if (g.kind === "backward" && r.forward !== undefined)
        related.appendChild(linkButton("saved by forward: open in " + model.graphs[r.forward].title, () => gotoNode(r.forward, n.name)));
    }
    for (const kind of ["joint", "forward", "backward"]) {
      const other = r[kind];
      if (other === undefined || kind === g.kind) continue;
      if (hasName(other, n.name))
        related.appendChild(linkButton("same name in " + model.graphs[other].title, () => gotoNode(other, n.name)));
    }
    if (related.childNodes.length) { d.appendChild(el("h2", "Related graphs")); d.appendChild(related); }
    if (n.group !== undefined && n.group >= 0) {
      const grp = state.info.groups[n.group];
      d.appendChild(el("h2", "Source group"));
      const b = linkButton(grp.label + " (" + grp.size + " nodes)", () => showGroup(n.group));
      b.dataset.group = String(n.group);
      d.appendChild(b);
    }
    d.appendChild(el("h2", "Kernels computing this node"));
    if (!n.kernels.length) d.appendChild(el("div", noKernelReason(n, g), "muted"));
    for (const [kid, evidence] of n.kernels) {
      const k = kernelsById.get(kid);
      const b = linkButton(k.name + "  [" + evidence + "]", () => selectKernel(kid));
      b.dataset.kernel = kid;
      d.appendChild(b);
    }
    if (n.kernels.length) showKernelCode(d, kernelsById.get(n.kernels[0][0]));
    draw();
  }
  function codeBlock(lines, id) {
    const code = el("div", undefined, "code");
    code.id = id;
    for (const [number, text, highlighted] of lines) {
      const div = el("div", undefined, highlighted ? "hl" : undefined);
      div.appendChild(el("span", number, "ln"));
      div.appendChild(document.createTextNode(text));
      code.appendChild(div);
    }
    return code;
  }
  function showKernelCode(container, k) {
    container.appendChild(el("h2", "Code of " + k.name + " (" + k.kind + ", log line " + k.line + ")"));
    container.appendChild(codeBlock(k.code.split("\n").map((line, i) => [i + 1, line, false]), "kernel-code"));
    // The call() wrapper that launches it, with the launch lines highlighted (numbers are log lines).
    const module = k.module === null || k.module === undefined ? null : model.modules[k.module];
    if (!module || !module.call || !module.call.length) return;
    const launches = new Set(k.launch_lines || []);
    container.appendChild(el("h2", "call() of " + module.aot_id + ": launched at log line " + ([...launches].join(", ") || "-")));
    const block = codeBlock(module.call.map(([line, text]) => [line, text, launches.has(line)]), "call-code");
    container.appendChild(block);
    const first = block.querySelector(".hl");
    if (first) block.scrollTop = Math.max(0, first.offsetTop - block.offsetTop - block.clientHeight / 3);
  }
  function selectKernel(kid) {
    const k = kernelsById.get(kid);
    if (k.graph !== null && (!state.graph || model.graphs[k.graph] !== state.graph)) selectGraph(k.graph, false);
    state.kernel = kid;
    const first = k.nodes.length && state.info ? state.info.nameIndex.get(k.nodes[0][0]) : undefined;
    if (first !== undefined) { if (rep(first) !== first) reveal(first); centerOn(first); }  // bring the kernel's nodes into view
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
    selectGraph, selectNode, selectKernel, fitAll, fitLayers, runSearch,
    renderNow: render,  // synchronous frame, for timing
    nodeScreenPosition(name, graphIndex) {
      const info = graphIndex === undefined ? state.info : prepare(graphIndex);
      const n = model.graphs[info.index].nodes[info.nameIndex.get(name)];
      const v = viewSize();
      return { x: v.left + state.tx + (n.x + NODE_W / 2) * state.scale, y: v.top + state.ty + (n.y + NODE_H / 2) * state.scale };
    },
    visibleNodeCount() {  // nodes whose boxes intersect the view (for the fit tests)
      if (!state.graph) return 0;
      const v = viewSize(), s = state.scale;
      let count = 0;
      for (const n of state.graph.nodes) {
        const x = state.tx + n.x * s, y = state.ty + n.y * s;
        if (x + NODE_W * s >= 0 && x <= v.w && y + NODE_H * s >= 0 && y <= v.h) count++;
      }
      return count;
    },
  };
  resize();
  if (model.graphs.length) selectGraph(0);
  requestAnimationFrame(() => {
    render();
    performance.mark("graph_viz:ready");
    document.body.dataset.ready = "1";
  });
})();
