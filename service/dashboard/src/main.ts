// The dashboard page: the pool map, the cluster's use and forecast, search, time travel.
// Read-only by construction: it sends GET requests to the query API and nothing else. Live
// updates poll the map with If-None-Match (the server answers 304 until a new commit), so an
// idle dashboard costs a header exchange a second; with `as_of` set nothing is polled, since
// an answer at a past basis never changes.

import * as api from "./api";
import { ElementGrid, cellCidr, cellColour, CONFLICT, ERROR, FREE, IN_CONFLICT, IN_ERROR, PINNED, WAITING } from "./poolmap";

interface Paint {
  basis: number;
  fetchMs: number;
  drawMs: number;
  cells: number;
  at: number; // performance.now() when the frame with it was presented
}

const page = new URLSearchParams(location.search);
const LAST_CLUSTER = "ipledger.dashboard.cluster";
const POLL_MS = Math.max(Number(page.get("poll") ?? "1000") || 1000, 100);

const state = {
  cluster: "",
  asOf: null as string | null,
  live: null as api.Basis | null,
  map: null as api.PoolMap | null,
  etag: null as string | null,
  grids: [] as ElementGrid[],
  view: "map",
  clusterShownAt: -1,
  paints: [] as Paint[],
  selected: null as string | null,
};

// For the browser tests and bench/dashboard.py: what was drawn, and when.
(window as unknown as { ipledgerDashboard: typeof state }).ipledgerDashboard = state;

function byId<T extends HTMLElement>(id: string): T {
  const found = document.getElementById(id);
  if (found === null) {
    throw new Error(`no #${id}`);
  }
  return found as T;
}

type Child = Node | string | number | null | undefined;

function el(tag: string, attrs: Record<string, string> = {}, ...children: Child[]): HTMLElement {
  const element = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs)) {
    element.setAttribute(name, value);
  }
  for (const child of children) {
    if (child !== null && child !== undefined) {
      element.append(typeof child === "number" ? String(child) : child);
    }
  }
  return element;
}

function status(text: string, error = false): void {
  const line = byId("status");
  line.textContent = text;
  line.classList.toggle("error", error);
}

function eventText(event: api.Event | null): Child {
  if (event === null) {
    return "—";
  }
  const link = el("a", { href: "#", class: "offset", "data-offset": String(event.offset) }, `@${event.offset}`);
  return el("span", {}, link, ` ${event.time}`, event.eventId === null ? "" : ` (${event.eventId})`);
}

function rgbText(rgb: [number, number, number]): string {
  return `rgb(${rgb[0]}, ${rgb[1]}, ${rgb[2]})`;
}

// --- the map ---------------------------------------------------------------------------------

async function loadMap(): Promise<void> {
  const started = performance.now();
  const path = api.clusterPath(state.cluster, "/map");
  const params = { as_of: state.asOf ?? undefined };
  const answer = await api.getIfChanged<api.PoolMap>(path, params, state.asOf === null ? state.etag : null);
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
      at: performance.now(),
    });
    document.body.dataset.basis = String(answer.body.basis.offset);
  });
  if (state.view === "cluster") {
    void showCluster();
  }
}

function drawMap(map: api.PoolMap): number {
  const grids = byId("grids");
  const same =
    state.grids.length === map.elements.length &&
    state.grids.every((grid, i) => grid.element.cidr === map.elements[i].cidr && grid.element.cells === map.elements[i].cells);
  if (!same) {
    grids.replaceChildren();
    state.grids = map.elements.map((element, i) => new ElementGrid(element, i));
    for (const grid of state.grids) {
      const element = grid.element;
      const title = el("h3", {}, `${element.family} ${element.cidr} by /${element.maskSize}`, el("span", { class: "count" }));
      const box = el("figure", { class: "element" }, title, grid.canvas);
      grid.canvas.addEventListener("mousemove", (event) => hover(grid, event));
      grid.canvas.addEventListener("mouseleave", () => (byId("tooltip").hidden = true));
      grid.canvas.addEventListener("click", (event) => void select(grid, event));
      grids.append(box);
    }
  }
  let cells = 0;
  map.elements.forEach((element, i) => {
    const grid = state.grids[i];
    (grid as { element: api.MapElement }).element = element;
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

function flagNames(flags: number): string[] {
  const names: string[] = [];
  if (flags & ERROR) names.push("error");
  if (flags & CONFLICT) names.push("conflict");
  if (flags & WAITING) names.push("waiting");
  if (flags & PINNED) names.push("pinned");
  return names;
}

function showMarked(map: api.PoolMap): void {
  const waiting: string[] = [];
  const troubled: string[] = [];
  map.nodes.flags.forEach((flags, i) => {
    if (flags & WAITING) waiting.push(map.nodes.names[i]);
    if (flags & (ERROR | CONFLICT)) troubled.push(`${map.nodes.names[i]} (${flagNames(flags & (ERROR | CONFLICT)).join(", ")})`);
  });
  const list = (names: string[]): HTMLElement =>
    el("ul", {}, ...names.slice(0, 50).map((name) => el("li", {}, name)), names.length > 50 ? el("li", {}, `… ${names.length - 50} more`) : null);
  byId("marked").replaceChildren(
    el("h3", {}, `Waiting for a CIDR: ${waiting.length}`),
    list(waiting),
    el("h3", {}, `In error or conflict: ${troubled.length}`),
    list(troubled),
  );
}

function describe(grid: ElementGrid, event: MouseEvent): { cidr: string; node: string | null; text: string } | null {
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

function hover(grid: ElementGrid, event: MouseEvent): void {
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

async function select(grid: ElementGrid, event: MouseEvent): Promise<void> {
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

async function showNode(name: string, into: HTMLElement): Promise<void> {
  const at = state.map?.basis.offset;
  const path = api.clusterPath(state.cluster, `/nodes/${encodeURIComponent(name)}`);
  try {
    const { node } = await api.get<{ node: api.Node }>(path, { as_of: at });
    const decisions = await api.get<api.Page<api.Decision>>(api.clusterPath(state.cluster, "/decisions"), {
      from_offset: node.lastChange.offset,
      limit: 1,
      as_of: at,
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
        el("dd", { class: "last-change" }, eventText(node.lastChange), cause ? ` ${cause.type}${cause.error ? ` (${cause.error})` : ""}` : ""),
      ),
      el("a", { href: "#", class: "search-node", "data-query": node.name }, "Search its history"),
    );
  } catch (error) {
    into.replaceChildren(el("p", { class: "error" }, String((error as Error).message)));
  }
}

// --- time travel -----------------------------------------------------------------------------

function showBasis(): void {
  const slider = byId<HTMLInputElement>("slider");
  if (state.live !== null) {
    slider.max = String(state.live.offset);
  }
  if (state.asOf === null && state.live !== null) {
    slider.value = String(state.live.offset);
  }
  const basis = state.map?.basis;
  const text = basis === undefined ? "" : `offset ${basis.offset} of partition ${basis.partition}`;
  byId("basis").textContent = state.asOf === null ? `live — ${text}` : `as of ${state.asOf} — ${text}`;
  byId("live").classList.toggle("active", state.asOf === null);
  document.body.classList.toggle("travelling", state.asOf !== null);
}

async function travel(asOf: string | null): Promise<void> {
  state.asOf = asOf === "" ? null : asOf;
  state.etag = null;
  state.clusterShownAt = -1;
  try {
    await loadMap();
    status("");
  } catch (error) {
    status(String((error as Error).message), true);
  }
  if (state.view === "cluster") {
    await showCluster();
  }
}

// --- the cluster: use over time, forecast, waiting nodes, rejections --------------------------

async function showCluster(): Promise<void> {
  const basis = state.map?.basis.offset;
  if (basis === undefined || basis === state.clusterShownAt) {
    return;
  }
  state.clusterShownAt = basis;
  const at = { as_of: basis };
  const pools = await api.get<api.Page<api.PoolElement>>(api.clusterPath(state.cluster, "/pools"), { ...at, limit: 1000 });
  byId("pools").replaceChildren(
    el("tr", {}, ...["element", "node CIDRs used", "free", "pod addresses", "rate (CIDRs/day)", "runs out"].map((h) => el("th", {}, h))),
    ...pools.items.map((pool) =>
      el(
        "tr",
        {},
        el("td", {}, `${pool.family} ${pool.cidr} /${pool.maskSize}`),
        el("td", {}, `${pool.nodeCIDRs.used.toLocaleString()} of ${pool.nodeCIDRs.total.toLocaleString()}`),
        el("td", {}, pool.nodeCIDRs.free.toLocaleString()),
        el("td", {}, `${pool.podAddresses.used.toLocaleString()} of ${pool.podAddresses.capacity.toLocaleString()}`),
        el("td", {}, pool.forecast.nodeCIDRsPerDay.toFixed(1)),
        el("td", { class: "forecast" }, pool.forecast.exhaustsAt === null ? "not at the recent rate" : `${pool.forecast.exhaustsAt} (in ${days(pool.forecast.secondsLeft)})`),
      ),
    ),
  );
  const [waiting, troubled, rejections] = await Promise.all([
    api.get<api.Page<api.Node>>(api.clusterPath(state.cluster, "/nodes"), { ...at, waiting: "true", limit: 100 }),
    api.get<api.Page<api.Node>>(api.clusterPath(state.cluster, "/nodes"), { ...at, error: "true", limit: 100 }),
    api.get<api.Page<api.Rejection>>(api.clusterPath(state.cluster, "/rejections"), {
      ...at,
      from_offset: Math.max(basis - 100000, 0),
      limit: 1000,
    }),
  ]);
  byId("waiting").replaceChildren(
    el("h3", {}, `Nodes waiting for a CIDR${waiting.next ? " (first 100)" : ""}: ${waiting.items.length}`),
    el("ul", {}, ...waiting.items.map((node) => el("li", {}, node.name))),
    el("h3", {}, `Nodes in error: ${troubled.items.length}`),
    el("ul", {}, ...troubled.items.map((node) => el("li", {}, `${node.name}: ${node.error}`))),
  );
  const recent = rejections.items.slice(-20).reverse();
  byId("rejections").replaceChildren(
    el("tr", {}, el("th", {}, "offset"), el("th", {}, "reason"), el("th", {}, "record")),
    ...recent.map((row) => el("tr", {}, el("td", {}, row.offset), el("td", {}, row.reason), el("td", { class: "raw" }, row.raw.slice(0, 160)))),
  );
  await drawUsage(pools.items, basis);
}

function days(seconds: number | null): string {
  if (seconds === null) return "—";
  return seconds >= 86400 ? `${(seconds / 86400).toFixed(1)} days` : `${(seconds / 3600).toFixed(1)} hours`;
}

// Use over time: the node CIDRs used of each element at 24 offsets up to the basis.
async function drawUsage(now: api.PoolElement[], basis: number): Promise<void> {
  const samples = 24;
  const offsets = Array.from({ length: samples }, (_, i) => Math.round((basis * (i + 1)) / samples));
  const series = await Promise.all(
    offsets.map((offset) =>
      api
        .get<api.Page<api.PoolElement>>(api.clusterPath(state.cluster, "/pools"), { as_of: offset, limit: 1000 })
        .then((page) => page.items)
        .catch(() => [] as api.PoolElement[]),
    ),
  );
  const canvas = byId<HTMLCanvasElement>("usage");
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
      const x = 40 + ((width - 50) * (i + 1)) / samples;
      const y = 10 + (height - 40) * (1 - share);
      if (i === 0) context.moveTo(x, y);
      else context.lineTo(x, y);
    });
    context.stroke();
    context.fillStyle = colours[e % colours.length];
    context.fillText(element.cidr, 50 + e * 150, 26);
  });
}

// --- search ----------------------------------------------------------------------------------

const ADDRESS = /^(\d{1,3}(\.\d{1,3}){3}|[0-9a-fA-F:]*:[0-9a-fA-F:.]*)$/;

async function allPages<T>(path: string, params: Record<string, string | number | undefined>): Promise<T[]> {
  const items: T[] = [];
  let after: string | undefined;
  for (let page = 0; page < 20; page++) {
    const body = await api.get<api.Page<T>>(path, { ...params, limit: 1000, after });
    items.push(...body.items);
    if (body.next === null) break;
    after = body.next;
  }
  return items;
}

function holdingsTable(holdings: api.Holding[]): HTMLElement {
  return el(
    "table",
    { class: "history" },
    el("tr", {}, ...["address", "node", "owner", "since", "until"].map((h) => el("th", {}, h))),
    ...holdings.map((h) =>
      el("tr", { class: h.until === null ? "held" : "ended" }, el("td", {}, h.address), el("td", {}, h.node), el("td", {}, h.owner), el("td", {}, eventText(h.since)), el("td", {}, h.until === null ? "held" : eventText(h.until))),
    ),
  );
}

async function search(query: string): Promise<void> {
  const results = byId("results");
  const text = query.trim();
  if (!text) return;
  const at = { as_of: state.map?.basis.offset };
  const found: HTMLElement[] = [];
  results.replaceChildren(el("p", {}, "searching…"));
  const attempt = async (what: () => Promise<void>): Promise<void> => {
    try {
      await what();
    } catch (error) {
      if (!(error instanceof api.ApiError) || (error.status !== 404 && error.status !== 400)) throw error;
    }
  };
  try {
    if (ADDRESS.test(text)) {
      const path = api.clusterPath(state.cluster, `/ips/${encodeURIComponent(text)}`);
      await attempt(async () => {
        const holder = await api.get<{ holder: api.Holding }>(path, at);
        found.push(el("h3", {}, `${text} is held by ${holder.holder.owner} on ${holder.holder.node}`));
      });
      await attempt(async () => {
        const history = await allPages<api.Holding>(`${path}/history`, at);
        found.push(el("h3", {}, `History of ${text}: ${history.length} holdings`), holdingsTable(history));
      });
    } else {
      await attempt(async () => {
        const box = el("div", { class: "node-detail" });
        await api.get(api.clusterPath(state.cluster, `/nodes/${encodeURIComponent(text)}`), at);
        await showNode(text, box);
        found.push(el("h3", {}, `Node ${text}`), box);
      });
      await attempt(async () => {
        const owner = api.clusterPath(state.cluster, `/owners/${encodeURIComponent(text)}`);
        const history = await allPages<api.Holding>(owner, { ...at, history: "true" });
        if (history.length > 0) {
          found.push(el("h3", {}, `Owner ${text}: ${history.length} holdings`), holdingsTable(history));
        }
      });
    }
    results.replaceChildren(...(found.length ? found : [el("p", {}, `Nothing found for ${text} at this basis.`)]));
  } catch (error) {
    results.replaceChildren(el("p", { class: "error" }, String((error as Error).message)));
  }
}

// --- wiring ----------------------------------------------------------------------------------

function show(view: string): void {
  state.view = view;
  for (const section of document.querySelectorAll<HTMLElement>("main > section")) {
    section.hidden = section.id !== `view-${view}`;
  }
  for (const button of document.querySelectorAll<HTMLElement>("nav button")) {
    button.classList.toggle("active", button.dataset.view === view);
  }
  if (view === "cluster") {
    void showCluster().catch((error: Error) => status(error.message, true));
  }
}

function legend(): void {
  const swatch = (rgb: [number, number, number], label: string): HTMLElement =>
    el("span", { class: "swatch" }, el("i", { style: `background: ${rgbText(rgb)}` }), label);
  byId("legend").replaceChildren(
    swatch(FREE, "free"),
    swatch(cellColour(true, 0, 0, 1), "held, empty"),
    swatch(cellColour(true, 0, 1, 2), "half full"),
    swatch(cellColour(true, 0, 1, 1), "full"),
    swatch(IN_ERROR, "node in error"),
    swatch(IN_CONFLICT, "node in conflict"),
  );
}

async function poll(): Promise<void> {
  if (state.asOf === null && state.cluster) {
    try {
      await loadMap();
      status("");
    } catch (error) {
      status(`live update failed: ${(error as Error).message}`, true);
    }
  }
  setTimeout(() => void poll(), POLL_MS);
}

async function start(): Promise<void> {
  legend();
  document.querySelectorAll<HTMLElement>("nav button").forEach((button) => button.addEventListener("click", () => show(button.dataset.view ?? "map")));
  document.addEventListener("click", (event) => {
    const target = event.target as HTMLElement;
    if (target.matches("a.offset")) {
      event.preventDefault();
      byId<HTMLInputElement>("asof").value = target.dataset.offset ?? "";
      void travel(target.dataset.offset ?? null);
    } else if (target.matches("a.search-node")) {
      event.preventDefault();
      byId<HTMLInputElement>("query").value = target.dataset.query ?? "";
      show("search");
      void search(target.dataset.query ?? "");
    }
  });
  byId("search-form").addEventListener("submit", (event) => {
    event.preventDefault();
    void search(byId<HTMLInputElement>("query").value);
  });
  byId("travel").addEventListener("submit", (event) => {
    event.preventDefault();
    void travel(byId<HTMLInputElement>("asof").value.trim() || null);
  });
  const slider = byId<HTMLInputElement>("slider");
  slider.addEventListener("change", () => {
    byId<HTMLInputElement>("asof").value = slider.value;
    void travel(slider.value === slider.max ? null : slider.value);
  });
  byId("live").addEventListener("click", () => {
    byId<HTMLInputElement>("asof").value = "";
    void travel(null);
  });
  const picker = byId<HTMLSelectElement>("cluster");
  picker.addEventListener("change", () => {
    state.cluster = picker.value;
    localStorage.setItem(LAST_CLUSTER, state.cluster);
    state.grids = [];
    state.etag = null;
    state.clusterShownAt = -1;
    void travel(state.asOf);
  });
  state.asOf = page.get("as_of");
  if (state.asOf !== null) byId<HTMLInputElement>("asof").value = state.asOf;
  show(page.get("view") ?? "map");
  // The map of the cluster asked for (or the one shown last) is fetched at once, beside the
  // list of clusters, not after it: the first paint waits for one round trip, not two.
  const wanted = page.get("cluster") ?? localStorage.getItem(LAST_CLUSTER);
  let first: Promise<void> | null = null;
  if (wanted) {
    state.cluster = wanted;
    first = travel(state.asOf);
  }
  const clusters = await allPages<api.Cluster>("/v1/clusters", {});
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

void start().catch((error: Error) => status(error.message, true));
