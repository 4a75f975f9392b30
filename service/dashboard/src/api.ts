// The query API as the dashboard reads it: the JSON routes of docs/api.md, GET only.
// Every request goes to this page's own server (the Content-Security-Policy allows nothing
// else); a problem+json answer becomes an ApiError carrying its detail.

export interface Basis {
  partition: number;
  offset: number;
}

export interface Event {
  offset: number;
  time: string;
  eventId: string | null;
}

export interface MapElement {
  family: string;
  cidr: string;
  maskSize: number;
  nodeCIDRs: number;
  cells: number;
  perCell: number;
  podCapacity: number;
  held: number[]; // [cell, node index, pod addresses used, ...]
}

export interface PoolMap {
  basis: Basis;
  elements: MapElement[];
  nodes: { names: string[]; flags: number[] };
}

export interface Cluster {
  name: string;
  partition: number;
  basis: Basis;
  nodes: { total: number; withCIDR: number; waiting: number; inError: number; inConflict: number };
}

export interface PoolElement {
  family: string;
  cidr: string;
  maskSize: number;
  nodeCIDRs: { total: number; used: number; free: number };
  podAddresses: { used: number; capacity: number };
  forecast: {
    windowSeconds: number;
    nodeCIDRsPerDay: number;
    secondsLeft: number | null;
    exhaustsAt: string | null;
  };
}

export interface Node {
  name: string;
  podCIDRs: string[];
  error: string | null;
  conflict: string | null;
  addresses: string[];
  waiting: boolean;
  pinned: boolean;
  podAddresses: Record<string, { used: number; free: number }>;
  lastChange: Event;
}

export interface Holding {
  address: string;
  node: string;
  owner: string;
  since: Event;
  until: Event | null;
}

export interface Decision {
  offset: number;
  eventId: string | null;
  type: string;
  error: string | null;
  eventTime: string | null;
  logTime: string | null;
}

export interface Rejection {
  offset: number;
  reason: string;
  key: string | null;
  raw: string;
  rawEncoding: string;
  rejectedAt: string;
}

export interface Page<T> {
  items: T[];
  next: string | null;
  basis: Basis;
}

export class ApiError extends Error {
  constructor(
    readonly status: number,
    detail: string,
  ) {
    super(detail);
  }
}

/** A GET of `path` with `params` (undefined ones left out); the body, or an ApiError. */
export async function get<T>(path: string, params: Record<string, string | number | undefined> = {}): Promise<T> {
  const response = await fetch(url(path, params), { cache: "no-store" });
  if (!response.ok) {
    throw await problem(response);
  }
  return (await response.json()) as T;
}

/** A conditional GET: null when the server says the answer named by `etag` still holds. */
export async function getIfChanged<T>(
  path: string,
  params: Record<string, string | number | undefined>,
  etag: string | null,
): Promise<{ body: T; etag: string | null } | null> {
  const headers: Record<string, string> = {};
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
  return { body: (await response.json()) as T, etag: response.headers.get("ETag") };
}

export function url(path: string, params: Record<string, string | number | undefined>): string {
  const query = new URLSearchParams();
  for (const [name, value] of Object.entries(params)) {
    if (value !== undefined && value !== "") {
      query.set(name, String(value));
    }
  }
  const text = query.toString();
  return text ? `${path}?${text}` : path;
}

export function clusterPath(cluster: string, rest = ""): string {
  return `/v1/clusters/${encodeURIComponent(cluster)}${rest}`;
}

async function problem(response: Response): Promise<ApiError> {
  try {
    const body = (await response.json()) as { detail?: string; title?: string };
    return new ApiError(response.status, body.detail ?? body.title ?? response.statusText);
  } catch {
    return new ApiError(response.status, response.statusText);
  }
}
