// The console's only way to the gateway: its public API, with the admin key from sessionStorage.

const KEY = 'graft.key';

export const keyStore = {
  get: () => sessionStorage.getItem(KEY),
  set: (key) => sessionStorage.setItem(KEY, key),
  clear: () => sessionStorage.removeItem(KEY),
};

export class ApiError extends Error {
  constructor(status, message, code = null, param = null) {
    super(message);
    this.status = status;
    this.code = code;
    this.param = param;
  }
}

function errorFrom(status, data, text) {
  const error = data && data.error;
  if (error && error.message) return new ApiError(status, error.message, error.code, error.param);
  return new ApiError(status, `HTTP ${status}${text ? `: ${String(text).slice(0, 200)}` : ''}`);
}

function headers(extra = {}) {
  const key = keyStore.get();
  return key ? { Authorization: `Bearer ${key}`, ...extra } : extra;
}

// 401 anywhere means the key no longer works: the app listens and signs out with the message.
function noteUnauthorized(error) {
  if (error.status === 401) window.dispatchEvent(new CustomEvent('graft:unauthorized', { detail: error.message }));
  return error;
}

async function send(path, { method = 'GET', json, form, signal } = {}) {
  const init = { method, headers: headers(), signal, cache: 'no-store' };
  if (json !== undefined) {
    init.headers['Content-Type'] = 'application/json';
    init.body = JSON.stringify(json);
  } else if (form) {
    init.body = form;
  }
  try {
    return await fetch(path, init);
  } catch (error) {
    if (error.name === 'AbortError') throw error;
    throw new ApiError(0, `the gateway cannot be reached (${error.message})`);
  }
}

// Chunk ids are 64-bit: integers past 2^53 keep their exact digits, as strings, where the browser
// gives a reviver the source text (JSON.parse source text access); elsewhere they are rounded.
export function parseJson(text) {
  return JSON.parse(text, (key, value, context) => (
    typeof value === 'number' && !Number.isSafeInteger(value) && Number.isInteger(value) && context && context.source
      ? context.source : value));
}

// JSON in, JSON out; a non-2xx answer throws ApiError with the gateway's error message.
export async function api(path, options = {}) {
  const response = await send(path, options);
  const text = await response.text();
  let data = null;
  try {
    data = text ? parseJson(text) : null;
  } catch {
    data = null;
  }
  if (!response.ok) throw noteUnauthorized(errorFrom(response.status, data, text));
  return data;
}

export async function apiText(path) {
  const response = await send(path);
  const text = await response.text();
  if (!response.ok) throw noteUnauthorized(errorFrom(response.status, null, text));
  return text;
}

// A streamed completion: yields each server-sent event's JSON until [DONE].
export async function* streamEvents(path, body, signal) {
  const response = await send(path, { method: 'POST', json: body, signal });
  if (!response.ok) {
    const text = await response.text();
    let data = null;
    try { data = parseJson(text); } catch { /* not JSON */ }
    throw noteUnauthorized(errorFrom(response.status, data, text));
  }
  const reader = response.body.getReader();
  const decoder = new TextDecoder();
  let buffer = '';
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buffer += decoder.decode(value, { stream: true }).replace(/\r\n/g, '\n');
    let end;
    while ((end = buffer.indexOf('\n\n')) >= 0) {
      const block = buffer.slice(0, end);
      buffer = buffer.slice(end + 2);
      const data = block.split('\n').filter((l) => l.startsWith('data:')).map((l) => l.slice(5).trimStart()).join('\n');
      if (!data) continue;
      if (data === '[DONE]') return;
      yield parseJson(data);
    }
  }
}

// Prometheus text format → [{name, labels, value}] (comments and blank lines skipped).
export function parseMetrics(text) {
  const samples = [];
  for (const line of text.split('\n')) {
    if (!line || line.startsWith('#')) continue;
    const match = /^([a-zA-Z_:][\w:]*)(?:\{(.*)\})?\s+(\S+)/.exec(line);
    if (!match) continue;
    const labels = {};
    for (const [, k, v] of (match[2] || '').matchAll(/(\w+)="((?:[^"\\]|\\.)*)"/g)) labels[k] = v.replace(/\\(.)/g, '$1');
    samples.push({ name: match[1], labels, value: Number(match[3]) });
  }
  return samples;
}

export const enc = encodeURIComponent;

export function fmtBytes(n) {
  if (n == null) return '—';
  const units = ['B', 'kB', 'MB', 'GB', 'TB'];
  let i = 0;
  while (n >= 1000 && i < units.length - 1) { n /= 1000; i += 1; }
  return `${i ? n.toFixed(1) : n} ${units[i]}`;
}

export function fmtTime(seconds) {
  return seconds == null ? '—' : new Date(seconds * 1000).toLocaleString();
}

export function fmtNum(x, digits = 3) {
  if (x == null) return '—';
  return Number.isInteger(x) ? String(x) : Number(x).toFixed(digits);
}
