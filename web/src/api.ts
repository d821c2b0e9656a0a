// The service's REST API, as the browser uses it: the token from this tab's sessionStorage (never a URL),
// every answer's error turned into an ApiError with the server's own sentence.

export const API = '/api/v1';
const TOKEN_KEY = 'lightpipe.token';

export function getToken(): string | null {
  return sessionStorage.getItem(TOKEN_KEY);
}

export function setToken(token: string | null): void {
  if (token) sessionStorage.setItem(TOKEN_KEY, token);
  else sessionStorage.removeItem(TOKEN_KEY);
}

/** One problem the server names: a field (``stages.photons.params.threshold``) and its line in the YAML. */
export interface Problem {
  field?: string | null;
  line?: number | null;
  message: string;
}

/** An answer that is not 2xx, or no answer at all (``status`` 0: the server went away). */
export class ApiError extends Error {
  constructor(
    readonly status: number,
    message: string,
    readonly problems: Problem[] = [],
  ) {
    super(message);
  }

  get unreachable(): boolean {
    return this.status === 0;
  }
}

type Listener = (error: ApiError | null) => void;
const listeners = new Set<Listener>();

/** Called with the error when the server is unreachable or refuses the token, and with null once it answers again. */
export function onConnectionProblem(listener: Listener): () => void {
  listeners.add(listener);
  return () => listeners.delete(listener);
}

function announce(error: ApiError | null): void {
  listeners.forEach((listener) => listener(error));
}

export function authHeaders(token = getToken()): Record<string, string> {
  return token ? { Authorization: `Bearer ${token}` } : {};
}

async function send(path: string, init: RequestInit = {}, token = getToken()): Promise<Response> {
  let response: Response;
  try {
    response = await fetch(`${API}${path}`, {
      ...init,
      headers: { ...authHeaders(token), ...(init.body ? { 'Content-Type': 'application/json' } : {}), ...init.headers },
    });
  } catch {
    const gone = new ApiError(
      0,
      'The lightpipe service does not answer: it may have stopped or the network is down. ' +
        'This page retries by itself; if it lasts, ask whoever runs `lightpipe serve` to start it again.',
    );
    announce(gone);
    throw gone;
  }
  if (response.ok) {
    announce(null);
    return response;
  }
  let detail = `${response.status} ${response.statusText}`;
  let problems: Problem[] = [];
  try {
    const body = await response.json();
    if (typeof body.detail === 'string') detail = body.detail;
    if (Array.isArray(body.problems)) problems = body.problems;
  } catch {
    // not JSON (a proxy's page): the status line says enough
  }
  const error = new ApiError(response.status, detail, problems);
  if (response.status === 401) announce(error);
  else announce(null);
  throw error;
}

export async function api<T>(path: string, init: RequestInit = {}): Promise<T> {
  const response = await send(path, init);
  return (await response.json()) as T;
}

export function post<T>(path: string, body?: unknown): Promise<T> {
  return api<T>(path, { method: 'POST', body: body === undefined ? undefined : JSON.stringify(body) });
}

/** Check a token before keeping it: ``/me`` with it, without touching the stored one. */
export async function whoAmI(token: string): Promise<Me> {
  const response = await send('/me', {}, token);
  return (await response.json()) as Me;
}

/** Save one of a job's files: fetched with the token (a link cannot carry it), then handed to the browser. */
export async function download(jobId: string, path: string): Promise<void> {
  const response = await send(`/jobs/${encodeURIComponent(jobId)}/files/${path.split('/').map(encodeURIComponent).join('/')}`);
  const url = URL.createObjectURL(await response.blob());
  const link = document.createElement('a');
  link.href = url;
  link.download = path.split('/').pop() ?? path;
  document.body.append(link);
  link.click();
  link.remove();
  setTimeout(() => URL.revokeObjectURL(url), 10_000);
}

// -- what the API answers ------------------------------------------------------------------------------------------

export interface Me {
  user: string;
  role: 'user' | 'admin';
  folders: string[];
  expires: string;
  live_streams?: string[];
}

export interface Progress {
  scan: string;
  received: number;
  written: number;
  failed: number;
  in_flight: number;
  total: number;
  rate: number;
  lag_s: number;
  buffer_fill: number;
}

export interface Job {
  id: string;
  owner: string;
  pipeline: string;
  version: number;
  dataset: string;
  overrides: Record<string, unknown>;
  state: string;
  error: string;
  cancel_requested: boolean;
  created: string | null;
  started: string | null;
  finished: string | null;
  updated: string | null;
  heartbeat_age_s: number | null;
  progress: Progress;
  yaml?: string;
  packages?: Record<string, string>;
  engine?: { name: string; options: Record<string, unknown> };
}

export const FINAL_STATES = new Set(['completed', 'failed', 'cancelled', 'interrupted']);

export interface Page<T> {
  items: T[];
  total: number;
  limit: number;
  offset: number;
}

export interface Template {
  name: string;
  version: number;
  description: string;
  retired: boolean;
  created: string;
  created_by: string;
  yaml?: string;
  params_schema?: JsonSchema;
  versions?: number[];
}

export interface JsonSchema {
  type?: string | string[];
  title?: string;
  description?: string;
  default?: unknown;
  unit?: string;
  minimum?: number;
  maximum?: number;
  exclusiveMinimum?: number;
  exclusiveMaximum?: number;
  enum?: unknown[];
  const?: unknown;
  anyOf?: JsonSchema[];
  items?: JsonSchema;
  prefixItems?: JsonSchema[];
  properties?: Record<string, JsonSchema>;
  $ref?: string;
  $defs?: Record<string, JsonSchema>;
  'x-order'?: string[];
}

export interface Entry {
  name: string;
  path: string;
  kind: string;
  size: number;
  modified: number;
  source: string | null;
  linked_files?: string[];
  files?: number;
  images?: number;
}

export interface Scan {
  name: string;
  state: string;
  error: string;
  received: number;
  written: number;
  failed: number;
  files: string[];
  started: string | null;
  finished: string | null;
  seconds: number | null;
}

export interface JobFile {
  path: string;
  bytes: number;
  modified: number;
  scan: string | null;
  partial: boolean;
  viewer: string;
}

export interface FailedEvent {
  scan: string;
  index: number;
  stream: string;
  stage: string;
  message: string;
}

export interface Chunk {
  id: number;
  scan: string;
  pass: number;
  worker: string;
  start: number;
  stop: number;
  started: number;
  finished: number;
  failed: number;
  stages: Record<string, number>;
}

export interface LogLine {
  id: number;
  time: string;
  component: string;
  level: string;
  message: string;
}

export interface Component {
  name: string;
  kind: string;
  state: string;
  detail: string;
  heartbeat_age_s: number;
  events_in: number;
  events_out: number;
  failed: number;
  fill: number | null;
  rate: number;
}

export interface JobTopology extends Job {
  reachable: boolean;
  components: Component[];
  current_scan: { name: string; state: string; scans_done: number } | null;
}

export interface Token {
  id: number;
  user: string;
  role: string;
  label: string;
  prefix: string;
  folders: string[];
  created: string;
  expires: string;
  revoked: boolean;
  last_used: string | null;
  token?: string;
}
