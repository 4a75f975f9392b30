// service/dashboard/src/api.ts
var ApiError = class extends Error {
  constructor(status2, detail) {
    super(detail);
    this.status = status2;
  }
};
async function get(path, params = {}) {
  const response = await fetch(url(path, params), { cache: "no-store" });
  if (!response.ok) {
    throw await problem(response);
  }
  return await response.json();
}
async function getIfChanged(path, params, etag) {
  const headers = {};
  if (etag !== null) {
    headers["If-None-Match"] = etag;
  }
  const response = await fetch(url(path, params), { cache: "no-store", headers });
  if (response.status === 304) {
    return null;
  }
  if (!response.ok) {
    throw await problem(response);
  }
  return { body: await response.json(), etag: response.headers.get("ETag") };
}
function url(path, params) {
  const query = new URLSearchParams();
  for (const [name, value] of Object.entries(params)) {
    if (value !== void 0 && value !== "") {
      query.set(name, String(value));
    }
  }
  const text = query.toString();
  return text ? `${path}?${text}` : path;
}
function clusterPath(cluster, rest = "") {
  return `/v1/clusters/${encodeURIComponent(cluster)}${rest}`;
}
async function problem(response) {
  try {
    const body = await response.json();
    return new ApiError(response.status, body.detail ?? body.title ?? response.statusText);
  } catch {
    return new ApiError(response.status, response.statusText);
  }
}

// service/dashboard/src/poolmap.ts
var ERROR = 1;
var CONFLICT = 2;
var WAITING = 4;
var PINNED = 8;
var FREE = [226, 232, 240];
var IN_ERROR = [147, 51, 234];
var IN_CONFLICT = [17, 24, 39];
var EMPTY = [134, 239, 172];
var HALF = [250, 204, 21];
var FULL = [220, 38, 38];
function cellColour(held, flags, used, capacity) {
  if (!held) {
    return FREE;
  }
  if (flags & CONFLICT) {
    return IN_CONFLICT;
  }
  if (flags & ERROR) {
    return IN_ERROR;
  }
  const share = capacity > 0 ? Math.min(used / capacity, 1) : 1;
  return share <= 0.5 ? mix(EMPTY, HALF, share * 2) : mix(HALF, FULL, share * 2 - 1);
}
function mix(from, to, t) {
  return [0, 1, 2].map((i) => Math.round(from[i] + (to[i] - from[i]) * t));
}
function packed(rgb) {
  return (255 << 24 | rgb[2] << 16 | rgb[1] << 8 | rgb[0]) >>> 0;
}
function columns(cells) {
  return 2 ** Math.ceil(Math.log2(Math.max(cells, 1)) / 2);
}
var ElementGrid = class {
  constructor(element, index) {
    this.element = element;
    this.index = index;
    this.holder = new Int32Array(0);
    this.use = new Int32Array(0);
    this.columns = columns(element.cells);
    this.rows = Math.max(Math.ceil(element.cells / this.columns), 1);
    this.canvas = document.createElement("canvas");
    this.canvas.width = this.columns;
    this.canvas.height = this.rows;
    this.canvas.className = "grid";
    this.canvas.dataset.element = String(index);
    this.canvas.dataset.cidr = element.cidr;
    this.canvas.dataset.cells = String(element.cells);
  }
  /** Paints every cell of `element` (this grid's element at a new basis) from `map`. */
  draw(element, map) {
    const cells = element.cells;
    const holder = new Int32Array(cells).fill(-1);
    const use = new Int32Array(cells);
    const held = element.held;
    for (let i = 0; i < held.length; i += 3) {
      holder[held[i]] = held[i + 1];
      use[held[i]] = held[i + 2];
    }
    const context = this.canvas.getContext("2d");
    if (context === null) {
      throw new Error("no 2d canvas");
    }
    const image = context.createImageData(this.columns, this.rows);
    const pixels = new Uint32Array(image.data.buffer);
    const flags = map.nodes.flags;
    const capacity = element.podCapacity;
    const free = packed(FREE);
    const table = /* @__PURE__ */ new Map();
    let heldCells = 0;
    for (let cell = 0; cell < cells; cell++) {
      const node = holder[cell];
      if (node < 0) {
        pixels[cell] = free;
        continue;
      }
      heldCells++;
      const key = use[cell] * 4 + (flags[node] & (ERROR | CONFLICT));
      let colour = table.get(key);
      if (colour === void 0) {
        colour = packed(cellColour(true, flags[node], use[cell], capacity));
        table.set(key, colour);
      }
      pixels[cell] = colour;
    }
    context.putImageData(image, 0, 0);
    this.holder = holder;
    this.use = use;
    this.canvas.dataset.held = String(heldCells);
    return heldCells;
  }
  /** The cell under a mouse event on the canvas (which CSS may have scaled), or null. */
  cellAt(event) {
    const box = this.canvas.getBoundingClientRect();
    const x = Math.floor((event.clientX - box.left) / box.width * this.columns);
    const y = Math.floor((event.clientY - box.top) / box.height * this.rows);
    const cell = y * this.columns + x;
    if (x < 0 || y < 0 || x >= this.columns || cell >= this.element.cells) {
      return null;
    }
    const node = this.holder[cell];
    return { element: this.element, cell, node: node >= 0 ? node : null, used: this.use[cell] };
  }
};
function cellCidr(element, cell) {
  const base = element.cidr.split("/")[0];
  const step = BigInt(element.perCell) * BigInt(cell);
  if (base.includes(":")) {
    const shift2 = BigInt(128 - element.maskSize);
    return `${formatV6(parseV6(base) + (step << shift2))}/${element.maskSize}`;
  }
  const shift = BigInt(32 - element.maskSize);
  const value = parseV4(base) + (step << shift);
  return `${formatV4(value)}/${element.maskSize}`;
}
function parseV4(text) {
  return text.split(".").reduce((acc, part) => (acc << 8n) + BigInt(Number(part)), 0n);
}
function formatV4(value) {
  return [24n, 16n, 8n, 0n].map((shift) => String(value >> shift & 255n)).join(".");
}
function parseV6(text) {
  const [head, tail] = text.includes("::") ? text.split("::") : [text, ""];
  const left = head ? head.split(":") : [];
  const right = tail ? tail.split(":") : [];
  const groups = [...left, ...Array(8 - left.length - right.length).fill("0"), ...right];
  return groups.reduce((acc, group) => (acc << 16n) + BigInt(parseInt(group, 16)), 0n);
}
function formatV6(value) {
  const groups = [];
  for (let i = 7; i >= 0; i--) {
    groups.push(Number(value >> BigInt(i * 16) & 0xffffn));
  }
  let best = -1;
  let bestLength = 1;
  for (let i = 0; i < 8; ) {
    if (groups[i] !== 0) {
      i++;
      continue;
    }
    let j = i;
    while (j < 8 && groups[j] === 0) j++;
    if (j - i > bestLength) {
      best = i;
      bestLength = j - i;
    }
    i = j;
  }
  const hex = groups.map((group) => group.toString(16));
  if (best < 0) {
    return hex.join(":");
  }
  return `${hex.slice(0, best).join(":")}::${hex.slice(best + bestLength).join(":")}`;
}

// service/dashboard/src/main.ts
var page = new URLSearchParams(location.search);
var LAST_CLUSTER = "ipledger.dashboard.cluster";
var POLL_MS = Math.max(Number(page.get("poll") ?? "1000") || 1e3, 100);
var state = {
  cluster: "",
  asOf: null,
  live: null,
  map: null,
  etag: null,
  grids: [],
  view: "map",
  clusterShownAt: -1,
  paints: [],
  selected: null
};
window.ipledgerDashboard = state;
function byId(id) {
  const found = document.getElementById(id);
  if (found === null) {
    throw new Error(`no #${id}`);
  }
  return found;
}
function el(tag, attrs = {}, ...children) {
  const element = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs)) {
    element.setAttribute(name, value);
  }
  for (const child of children) {
    if (child !== null && child !== void 0) {
      element.append(typeof child === "number" ? String(child) : child);
    }
  }
  return element;
}
function status(text, error = false) {
  const line = byId("status");
  line.textContent = text;
  line.classList.toggle("error", error);
}
function eventText(event) {
  if (event === null) {
    return "—";
  }
  const link = el("a", { href: "#", class: "offset", "data-offset": String(event.offset) }, `@${event.offset}`);
  return el("span", {}, link, ` ${event.time}`, event.eventId === null ? "" : ` (${event.eventId})`);
}
function rgbText(rgb) {
  return `rgb(${rgb[0]}, ${rgb[1]}, ${rgb[2]})`;
}
async function loadMap() {
  const started = performance.now();
  const path = clusterPath(state.cluster, "/map");
  const params = { as_of: state.asOf ?? void 0 };
  const answer = await getIfChanged(path, params, state.asOf === null ? state.etag : null);
  if (answer === null) {
    return;
  }
  const fetched = performance.now();
  state.map = answer.body;
  state.etag = state.asOf === null ? answer.etag : null;
  if (state.asOf === null) {
    state.live = answer.body.basis;
  }
  const cells = drawMap(answer.body);
  const drawn = performance.now();
  showBasis();
  requestAnimationFrame(() => {
    state.paints.push({
      basis: answer.body.basis.offset,
      fetchMs: fetched - started,
      drawMs: drawn - fetched,
      cells,
      at: performance.now()
    });
    document.body.dataset.basis = String(answer.body.basis.offset);
  });
  if (state.view === "cluster") {
    void showCluster();
  }
}
function drawMap(map) {
  const grids = byId("grids");
  const same = state.grids.length === map.elements.length && state.grids.every((grid, i) => grid.element.cidr === map.elements[i].cidr && grid.element.cells === map.elements[i].cells);
  if (!same) {
    grids.replaceChildren();
    state.grids = map.elements.map((element, i) => new ElementGrid(element, i));
    for (const grid of state.grids) {
      const element = grid.element;
      const title = el("h3", {}, `${element.family} ${element.cidr} by /${element.maskSize}`, el("span", { class: "count" }));
      const box = el("figure", { class: "element" }, title, grid.canvas);
      grid.canvas.addEventListener("mousemove", (event) => hover(grid, event));
      grid.canvas.addEventListener("mouseleave", () => byId("tooltip").hidden = true);
      grid.canvas.addEventListener("click", (event) => void select(grid, event));
      grids.append(box);
    }
  }
  let cells = 0;
  map.elements.forEach((element, i) => {
    const grid = state.grids[i];
    grid.element = element;
    const held = grid.draw(element, map);
    cells += element.cells;
    const count = grid.canvas.parentElement?.querySelector(".count");
    if (count) {
      const scale = element.perCell > 1 ? `, ${element.perCell} node CIDRs a cell` : "";
      count.textContent = ` — ${held.toLocaleString()} of ${element.cells.toLocaleString()} held${scale}`;
    }
  });
  if (map.elements.length === 0) {
    grids.replaceChildren(el("p", {}, "This cluster has no pool (yet) at this basis."));
  }
  showMarked(map);
  return cells;
}
function flagNames(flags) {
  const names = [];
  if (flags & ERROR) names.push("error");
  if (flags & CONFLICT) names.push("conflict");
  if (flags & WAITING) names.push("waiting");
  if (flags & PINNED) names.push("pinned");
  return names;
}
function showMarked(map) {
  const waiting = [];
  const troubled = [];
  map.nodes.flags.forEach((flags, i) => {
    if (flags & WAITING) waiting.push(map.nodes.names[i]);
    if (flags & (ERROR | CONFLICT)) troubled.push(`${map.nodes.names[i]} (${flagNames(flags & (ERROR | CONFLICT)).join(", ")})`);
  });
  const list = (names) => el("ul", {}, ...names.slice(0, 50).map((name) => el("li", {}, name)), names.length > 50 ? el("li", {}, `… ${names.length - 50} more`) : null);
  byId("marked").replaceChildren(
    el("h3", {}, `Waiting for a CIDR: ${waiting.length}`),
    list(waiting),
    el("h3", {}, `In error or conflict: ${troubled.length}`),
    list(troubled)
  );
}
function describe(grid, event) {
  const cell = grid.cellAt(event);
  if (cell === null || state.map === null) {
    return null;
  }
  const cidr = cellCidr(cell.element, cell.cell);
  if (cell.node === null) {
    return { cidr, node: null, text: `${cidr}: free` };
  }
  const name = state.map.nodes.names[cell.node];
  const flags = flagNames(state.map.nodes.flags[cell.node]);
  const use = `${cell.used} of ${cell.element.podCapacity} pod addresses`;
  return { cidr, node: name, text: `${name} — ${cidr} — ${use}${flags.length ? ` — ${flags.join(", ")}` : ""}` };
}
function hover(grid, event) {
  const tooltip = byId("tooltip");
  const found = describe(grid, event);
  if (found === null) {
    tooltip.hidden = true;
    return;
  }
  tooltip.textContent = found.text;
  tooltip.dataset.node = found.node ?? "";
  tooltip.style.left = `${event.pageX + 14}px`;
  tooltip.style.top = `${event.pageY + 14}px`;
  tooltip.hidden = false;
}
async function select(grid, event) {
  const found = describe(grid, event);
  if (found === null) {
    return;
  }
  const detail = byId("detail");
  if (found.node === null) {
    state.selected = null;
    detail.replaceChildren(el("h3", {}, found.cidr), el("p", {}, "Free: no node holds this CIDR at this basis."));
    return;
  }
  state.selected = found.node;
  await showNode(found.node, detail);
}
async function showNode(name, into) {
  const at = state.map?.basis.offset;
  const path = clusterPath(state.cluster, `/nodes/${encodeURIComponent(name)}`);
  try {
    const { node } = await get(path, { as_of: at });
    const decisions = await get(clusterPath(state.cluster, "/decisions"), {
      from_offset: node.lastChange.offset,
      limit: 1,
      as_of: at
    });
    const cause = decisions.items[0];
    const use = Object.entries(node.podAddresses).map(([family, value]) => `${family}: ${value.used} used, ${value.free} free`);
    into.replaceChildren(
      el("h3", { class: "node-name" }, node.name),
      el(
        "dl",
        {},
        el("dt", {}, "podCIDRs"),
        el("dd", { class: "pod-cidrs" }, node.podCIDRs.join(", ") || "none"),
        el("dt", {}, "pod addresses"),
        el("dd", {}, use.join("; ") || "—"),
        el("dt", {}, "addresses"),
        el("dd", {}, node.addresses.join(", ") || "—"),
        el("dt", {}, "state"),
        el("dd", {}, [node.waiting ? "waiting for a CIDR" : "", node.pinned ? "pinned" : ""].filter(Boolean).join(", ") || "ok"),
        node.error ? el("dt", {}, "error") : null,
        node.error ? el("dd", { class: "error" }, node.error) : null,
        node.conflict ? el("dt", {}, "conflict") : null,
        node.conflict ? el("dd", { class: "error" }, node.conflict) : null,
        el("dt", {}, "last change"),
        el("dd", { class: "last-change" }, eventText(node.lastChange), cause ? ` ${cause.type}${cause.error ? ` (${cause.error})` : ""}` : "")
      ),
      el("a", { href: "#", class: "search-node", "data-query": node.name }, "Search its history")
    );
  } catch (error) {
    into.replaceChildren(el("p", { class: "error" }, String(error.message)));
  }
}
function showBasis() {
  const slider = byId("slider");
  if (state.live !== null) {
    slider.max = String(state.live.offset);
  }
  if (state.asOf === null && state.live !== null) {
    slider.value = String(state.live.offset);
  }
  const basis = state.map?.basis;
  const text = basis === void 0 ? "" : `offset ${basis.offset} of partition ${basis.partition}`;
  byId("basis").textContent = state.asOf === null ? `live — ${text}` : `as of ${state.asOf} — ${text}`;
  byId("live").classList.toggle("active", state.asOf === null);
  document.body.classList.toggle("travelling", state.asOf !== null);
}
async function travel(asOf) {
  state.asOf = asOf === "" ? null : asOf;
  state.etag = null;
  state.clusterShownAt = -1;
  try {
    await loadMap();
    status("");
  } catch (error) {
    status(String(error.message), true);
  }
  if (state.view === "cluster") {
    await showCluster();
  }
}
async function showCluster() {
  const basis = state.map?.basis.offset;
  if (basis === void 0 || basis === state.clusterShownAt) {
    return;
  }
  state.clusterShownAt = basis;
  const at = { as_of: basis };
  const pools = await get(clusterPath(state.cluster, "/pools"), { ...at, limit: 1e3 });
  byId("pools").replaceChildren(
    el("tr", {}, ...["element", "node CIDRs used", "free", "pod addresses", "rate (CIDRs/day)", "runs out"].map((h) => el("th", {}, h))),
    ...pools.items.map(
      (pool) => el(
        "tr",
        {},
        el("td", {}, `${pool.family} ${pool.cidr} /${pool.maskSize}`),
        el("td", {}, `${pool.nodeCIDRs.used.toLocaleString()} of ${pool.nodeCIDRs.total.toLocaleString()}`),
        el("td", {}, pool.nodeCIDRs.free.toLocaleString()),
        el("td", {}, `${pool.podAddresses.used.toLocaleString()} of ${pool.podAddresses.capacity.toLocaleString()}`),
        el("td", {}, pool.forecast.nodeCIDRsPerDay.toFixed(1)),
        el("td", { class: "forecast" }, pool.forecast.exhaustsAt === null ? "not at the recent rate" : `${pool.forecast.exhaustsAt} (in ${days(pool.forecast.secondsLeft)})`)
      )
    )
  );
  const [waiting, troubled, rejections] = await Promise.all([
    get(clusterPath(state.cluster, "/nodes"), { ...at, waiting: "true", limit: 100 }),
    get(clusterPath(state.cluster, "/nodes"), { ...at, error: "true", limit: 100 }),
    get(clusterPath(state.cluster, "/rejections"), {
      ...at,
      from_offset: Math.max(basis - 1e5, 0),
      limit: 1e3
    })
  ]);
  byId("waiting").replaceChildren(
    el("h3", {}, `Nodes waiting for a CIDR${waiting.next ? " (first 100)" : ""}: ${waiting.items.length}`),
    el("ul", {}, ...waiting.items.map((node) => el("li", {}, node.name))),
    el("h3", {}, `Nodes in error: ${troubled.items.length}`),
    el("ul", {}, ...troubled.items.map((node) => el("li", {}, `${node.name}: ${node.error}`)))
  );
  const recent = rejections.items.slice(-20).reverse();
  byId("rejections").replaceChildren(
    el("tr", {}, el("th", {}, "offset"), el("th", {}, "reason"), el("th", {}, "record")),
    ...recent.map((row) => el("tr", {}, el("td", {}, row.offset), el("td", {}, row.reason), el("td", { class: "raw" }, row.raw.slice(0, 160))))
  );
  await drawUsage(pools.items, basis);
}
function days(seconds) {
  if (seconds === null) return "—";
  return seconds >= 86400 ? `${(seconds / 86400).toFixed(1)} days` : `${(seconds / 3600).toFixed(1)} hours`;
}
async function drawUsage(now, basis) {
  const samples = 24;
  const offsets = Array.from({ length: samples }, (_, i) => Math.round(basis * (i + 1) / samples));
  const series = await Promise.all(
    offsets.map(
      (offset) => get(clusterPath(state.cluster, "/pools"), { as_of: offset, limit: 1e3 }).then((page2) => page2.items).catch(() => [])
    )
  );
  const canvas = byId("usage");
  const context = canvas.getContext("2d");
  if (context === null) return;
  const width = canvas.width;
  const height = canvas.height;
  context.clearRect(0, 0, width, height);
  context.strokeStyle = "#cbd5e1";
  context.strokeRect(40.5, 10.5, width - 50, height - 40);
  context.fillStyle = "#475569";
  context.font = "12px sans-serif";
  context.fillText("100%", 2, 16);
  context.fillText("0%", 14, height - 28);
  context.fillText("offset 0", 40, height - 12);
  context.fillText(`offset ${basis}`, width - 90, height - 12);
  const colours = ["#2563eb", "#db2777", "#16a34a", "#ea580c", "#7c3aed", "#0891b2"];
  now.forEach((element, e) => {
    context.strokeStyle = colours[e % colours.length];
    context.lineWidth = 2;
    context.beginPath();
    series.forEach((items, i) => {
      const then = items.find((item) => item.cidr === element.cidr);
      const share = then ? then.nodeCIDRs.used / Math.max(then.nodeCIDRs.total, 1) : 0;
      const x = 40 + (width - 50) * (i + 1) / samples;
      const y = 10 + (height - 40) * (1 - share);
      if (i === 0) context.moveTo(x, y);
      else context.lineTo(x, y);
    });
    context.stroke();
    context.fillStyle = colours[e % colours.length];
    context.fillText(element.cidr, 50 + e * 150, 26);
  });
}
var ADDRESS = /^(\d{1,3}(\.\d{1,3}){3}|[0-9a-fA-F:]*:[0-9a-fA-F:.]*)$/;
async function allPages(path, params) {
  const items = [];
  let after;
  for (let page2 = 0; page2 < 20; page2++) {
    const body = await get(path, { ...params, limit: 1e3, after });
    items.push(...body.items);
    if (body.next === null) break;
    after = body.next;
  }
  return items;
}
function holdingsTable(holdings) {
  return el(
    "table",
    { class: "history" },
    el("tr", {}, ...["address", "node", "owner", "since", "until"].map((h) => el("th", {}, h))),
    ...holdings.map(
      (h) => el("tr", { class: h.until === null ? "held" : "ended" }, el("td", {}, h.address), el("td", {}, h.node), el("td", {}, h.owner), el("td", {}, eventText(h.since)), el("td", {}, h.until === null ? "held" : eventText(h.until)))
    )
  );
}
async function search(query) {
  const results = byId("results");
  const text = query.trim();
  if (!text) return;
  const at = { as_of: state.map?.basis.offset };
  const found = [];
  results.replaceChildren(el("p", {}, "searching…"));
  const attempt = async (what) => {
    try {
      await what();
    } catch (error) {
      if (!(error instanceof ApiError) || error.status !== 404 && error.status !== 400) throw error;
    }
  };
  try {
    if (ADDRESS.test(text)) {
      const path = clusterPath(state.cluster, `/ips/${encodeURIComponent(text)}`);
      await attempt(async () => {
        const holder = await get(path, at);
        found.push(el("h3", {}, `${text} is held by ${holder.holder.owner} on ${holder.holder.node}`));
      });
      await attempt(async () => {
        const history = await allPages(`${path}/history`, at);
        found.push(el("h3", {}, `History of ${text}: ${history.length} holdings`), holdingsTable(history));
      });
    } else {
      await attempt(async () => {
        const box = el("div", { class: "node-detail" });
        await get(clusterPath(state.cluster, `/nodes/${encodeURIComponent(text)}`), at);
        await showNode(text, box);
        found.push(el("h3", {}, `Node ${text}`), box);
      });
      await attempt(async () => {
        const owner = clusterPath(state.cluster, `/owners/${encodeURIComponent(text)}`);
        const history = await allPages(owner, { ...at, history: "true" });
        if (history.length > 0) {
          found.push(el("h3", {}, `Owner ${text}: ${history.length} holdings`), holdingsTable(history));
        }
      });
    }
    results.replaceChildren(...found.length ? found : [el("p", {}, `Nothing found for ${text} at this basis.`)]);
  } catch (error) {
    results.replaceChildren(el("p", { class: "error" }, String(error.message)));
  }
}
function show(view) {
  state.view = view;
  for (const section of document.querySelectorAll("main > section")) {
    section.hidden = section.id !== `view-${view}`;
  }
  for (const button of document.querySelectorAll("nav button")) {
    button.classList.toggle("active", button.dataset.view === view);
  }
  if (view === "cluster") {
    void showCluster().catch((error) => status(error.message, true));
  }
}
function legend() {
  const swatch = (rgb, label) => el("span", { class: "swatch" }, el("i", { style: `background: ${rgbText(rgb)}` }), label);
  byId("legend").replaceChildren(
    swatch(FREE, "free"),
    swatch(cellColour(true, 0, 0, 1), "held, empty"),
    swatch(cellColour(true, 0, 1, 2), "half full"),
    swatch(cellColour(true, 0, 1, 1), "full"),
    swatch(IN_ERROR, "node in error"),
    swatch(IN_CONFLICT, "node in conflict")
  );
}
async function poll() {
  if (state.asOf === null && state.cluster) {
    try {
      await loadMap();
      status("");
    } catch (error) {
      status(`live update failed: ${error.message}`, true);
    }
  }
  setTimeout(() => void poll(), POLL_MS);
}
async function start() {
  legend();
  document.querySelectorAll("nav button").forEach((button) => button.addEventListener("click", () => show(button.dataset.view ?? "map")));
  document.addEventListener("click", (event) => {
    const target = event.target;
    if (target.matches("a.offset")) {
      event.preventDefault();
      byId("asof").value = target.dataset.offset ?? "";
      void travel(target.dataset.offset ?? null);
    } else if (target.matches("a.search-node")) {
      event.preventDefault();
      byId("query").value = target.dataset.query ?? "";
      show("search");
      void search(target.dataset.query ?? "");
    }
  });
  byId("search-form").addEventListener("submit", (event) => {
    event.preventDefault();
    void search(byId("query").value);
  });
  byId("travel").addEventListener("submit", (event) => {
    event.preventDefault();
    void travel(byId("asof").value.trim() || null);
  });
  const slider = byId("slider");
  slider.addEventListener("change", () => {
    byId("asof").value = slider.value;
    void travel(slider.value === slider.max ? null : slider.value);
  });
  byId("live").addEventListener("click", () => {
    byId("asof").value = "";
    void travel(null);
  });
  const picker = byId("cluster");
  picker.addEventListener("change", () => {
    state.cluster = picker.value;
    localStorage.setItem(LAST_CLUSTER, state.cluster);
    state.grids = [];
    state.etag = null;
    state.clusterShownAt = -1;
    void travel(state.asOf);
  });
  state.asOf = page.get("as_of");
  if (state.asOf !== null) byId("asof").value = state.asOf;
  show(page.get("view") ?? "map");
  const wanted = page.get("cluster") ?? localStorage.getItem(LAST_CLUSTER);
  let first = null;
  if (wanted) {
    state.cluster = wanted;
    first = travel(state.asOf);
  }
  const clusters = await allPages("/v1/clusters", {});
  picker.replaceChildren(...clusters.map((cluster) => el("option", { value: cluster.name }, cluster.name)));
  if (first !== null && clusters.some((cluster) => cluster.name === wanted)) {
    picker.value = state.cluster;
    await first;
  } else {
    await first;
    state.cluster = clusters[0]?.name ?? "";
    picker.value = state.cluster;
    state.grids = [];
    if (!state.cluster) {
      status("No cluster yet: nothing has been applied.");
    } else {
      await travel(state.asOf);
    }
  }
  localStorage.setItem(LAST_CLUSTER, state.cluster);
  setTimeout(() => void poll(), POLL_MS);
}
void start().catch((error) => status(error.message, true));
