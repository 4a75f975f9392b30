// The pool map: each pool element a grid of its node CIDRs on a canvas, one pixel per cell
// (scaled up by CSS with pixelated rendering), so 65,536 cells are one putImageData rather
// than 65,536 DOM nodes or fill calls. Colours are a pure function of a cell's state
// (cellColour), which the browser tests recompute to check what was drawn.

import type { MapElement, PoolMap } from "./api";

export const ERROR = 1;
export const CONFLICT = 2;
export const WAITING = 4;
export const PINNED = 8;

export type Rgb = [number, number, number];

export const FREE: Rgb = [226, 232, 240];
export const IN_ERROR: Rgb = [147, 51, 234];
export const IN_CONFLICT: Rgb = [17, 24, 39];
// Use from empty to full: green, then yellow at half, then red.
const EMPTY: Rgb = [134, 239, 172];
const HALF: Rgb = [250, 204, 21];
const FULL: Rgb = [220, 38, 38];

/** The colour of a cell: free, or its holder's flags, or the share of its pod addresses used. */
export function cellColour(held: boolean, flags: number, used: number, capacity: number): Rgb {
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

function mix(from: Rgb, to: Rgb, t: number): Rgb {
  return [0, 1, 2].map((i) => Math.round(from[i] + (to[i] - from[i]) * t)) as Rgb;
}

/** An opaque colour as the canvas's bytes R, G, B, A read as one little-endian 32-bit word. */
function packed(rgb: Rgb): number {
  return ((255 << 24) | (rgb[2] << 16) | (rgb[1] << 8) | rgb[0]) >>> 0;
}

/** Columns of an element's grid: a square (or 2:1) of its cells. */
export function columns(cells: number): number {
  return 2 ** Math.ceil(Math.log2(Math.max(cells, 1)) / 2);
}

export interface Cell {
  element: MapElement;
  cell: number;
  node: number | null; // index in map.nodes, null when free
  used: number;
}

/** One element's canvas, and where each of its cells is held. */
export class ElementGrid {
  readonly canvas: HTMLCanvasElement;
  readonly columns: number;
  readonly rows: number;
  private holder = new Int32Array(0);
  private use = new Int32Array(0);

  constructor(
    readonly element: MapElement,
    readonly index: number,
  ) {
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
  draw(element: MapElement, map: PoolMap): number {
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
    // One 32-bit write a cell, from colours computed once per (flags, use) rather than per cell:
    // 65,536 cells draw in milliseconds.
    const pixels = new Uint32Array(image.data.buffer);
    const flags = map.nodes.flags;
    const capacity = element.podCapacity;
    const free = packed(FREE);
    const table = new Map<number, number>();
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
      if (colour === undefined) {
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
  cellAt(event: MouseEvent): Cell | null {
    const box = this.canvas.getBoundingClientRect();
    const x = Math.floor(((event.clientX - box.left) / box.width) * this.columns);
    const y = Math.floor(((event.clientY - box.top) / box.height) * this.rows);
    const cell = y * this.columns + x;
    if (x < 0 || y < 0 || x >= this.columns || cell >= this.element.cells) {
      return null;
    }
    const node = this.holder[cell];
    return { element: this.element, cell, node: node >= 0 ? node : null, used: this.use[cell] };
  }
}

/** The node CIDR (first one of the cell) of `cell` of `element`, as text. */
export function cellCidr(element: MapElement, cell: number): string {
  const base = element.cidr.split("/")[0];
  const step = BigInt(element.perCell) * BigInt(cell);
  if (base.includes(":")) {
    const shift = BigInt(128 - element.maskSize);
    return `${formatV6(parseV6(base) + (step << shift))}/${element.maskSize}`;
  }
  const shift = BigInt(32 - element.maskSize);
  const value = parseV4(base) + (step << shift);
  return `${formatV4(value)}/${element.maskSize}`;
}

function parseV4(text: string): bigint {
  return text.split(".").reduce((acc, part) => (acc << 8n) + BigInt(Number(part)), 0n);
}

function formatV4(value: bigint): string {
  return [24n, 16n, 8n, 0n].map((shift) => String((value >> shift) & 255n)).join(".");
}

function parseV6(text: string): bigint {
  const [head, tail] = text.includes("::") ? text.split("::") : [text, ""];
  const left = head ? head.split(":") : [];
  const right = tail ? tail.split(":") : [];
  const groups = [...left, ...Array(8 - left.length - right.length).fill("0"), ...right];
  return groups.reduce((acc, group) => (acc << 16n) + BigInt(parseInt(group, 16)), 0n);
}

function formatV6(value: bigint): string {
  const groups: number[] = [];
  for (let i = 7; i >= 0; i--) {
    groups.push(Number((value >> BigInt(i * 16)) & 0xffffn));
  }
  // The longest run of two or more zero groups becomes "::" (RFC 5952).
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
