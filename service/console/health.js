// Health: liveness, readiness, engines and the adapters loaded on each, and request rate and
// latency computed from successive scrapes of /metrics.
import { html, useEffect, useRef, useState } from './vendor/htm-preact-standalone.mjs';
import { api, apiText, fmtNum, parseMetrics } from './api.js';
import { Chart, Err } from './ui.js';

const POLL_MS = 5000;
const KEEP = 60; // points in the charts (5 minutes)
// The console's own polling is not traffic.
const OWN = /^(\/metrics|\/healthz|\/readyz|\/v1\/engines|\/console)/;

// Totals of one scrape: API requests, 5xx, latency histogram (summed over routes), tokens.
function totals(samples) {
  const t = { requests: 0, errors: 0, sum: 0, count: 0, buckets: new Map(), routes: new Map(), tokens: new Map(), gauges: {} };
  for (const s of samples) {
    const route = s.labels.route;
    if (s.name === 'graft_http_requests_total' && !OWN.test(route)) {
      t.requests += s.value;
      if (Number(s.labels.status) >= 500) t.errors += s.value;
      const r = t.routes.get(`${s.labels.method} ${route}`) || { requests: 0, errors: 0 };
      r.requests += s.value;
      if (Number(s.labels.status) >= 500) r.errors += s.value;
      t.routes.set(`${s.labels.method} ${route}`, r);
    } else if (s.name.startsWith('graft_http_request_seconds') && !OWN.test(route)) {
      if (s.name.endsWith('_sum')) t.sum += s.value;
      else if (s.name.endsWith('_count')) t.count += s.value;
      else if (s.name.endsWith('_bucket')) t.buckets.set(s.labels.le, (t.buckets.get(s.labels.le) || 0) + s.value);
    } else if (s.name === 'graft_completion_tokens_total') {
      t.tokens.set(s.labels.model, s.value);
    } else if (s.name === 'graft_engines_ready' || s.name === 'graft_engine_restarts') {
      t.gauges[s.name] = s.value;
    }
  }
  return t;
}

// The q-quantile (seconds) of the requests between two scrapes, from histogram bucket deltas.
function quantile(prev, cur, q) {
  const keys = [...cur.buckets.keys()].filter((le) => le !== '+Inf').sort((a, b) => Number(a) - Number(b));
  const total = (cur.buckets.get('+Inf') || 0) - (prev.buckets.get('+Inf') || 0);
  if (total <= 0) return null;
  let below = 0; // buckets are cumulative: requests at or under the previous bound
  let lower = 0;
  for (const key of keys) {
    const upTo = (cur.buckets.get(key) || 0) - (prev.buckets.get(key) || 0);
    if (upTo >= q * total) return lower + (Number(key) - lower) * ((q * total - below) / Math.max(upTo - below, 1e-9));
    below = upTo;
    lower = Number(key);
  }
  return lower;
}

export function Health() {
  const [state, setState] = useState({ healthz: null, readyz: null, engines: null, errors: {} });
  const [series, setSeries] = useState([[], [], [], []]); // time, req/s, p50 ms, p95 ms
  const [now, setNow] = useState(null);
  const last = useRef(null);
  useEffect(() => {
    let timer = null;
    let stopped = false;
    const poll = async () => {
      const errors = {};
      const get = (name, call) => call().catch((e) => { errors[name] = e; return null; });
      const [healthz, readyz, engines, metrics] = await Promise.all([
        get('healthz', () => api('/healthz')), get('readyz', () => api('/readyz')),
        get('engines', () => api('/v1/engines')), get('metrics', () => apiText('/metrics'))]);
      if (stopped) return;
      setState({ healthz, readyz, engines, errors });
      if (metrics != null) {
        const at = Date.now() / 1000;
        const cur = { at, ...totals(parseMetrics(metrics)) };
        const prev = last.current;
        if (prev) {
          const dt = at - prev.at;
          const count = cur.count - prev.count;
          const point = [at, (cur.requests - prev.requests) / dt,
            count > 0 ? quantile(prev, cur, 0.5) * 1000 : null, count > 0 ? quantile(prev, cur, 0.95) * 1000 : null];
          setSeries((old) => old.map((col, i) => [...col, point[i]].slice(-KEEP)));
        }
        last.current = cur;
        setNow(cur);
      }
      timer = setTimeout(poll, POLL_MS);
    };
    poll();
    return () => { stopped = true; clearTimeout(timer); };
  }, []);
  const { healthz, readyz, engines, errors } = state;
  return html`<section aria-labelledby="health-h">
    <h2 id="health-h">Health</h2>
    <dl class="binding" aria-live="polite">
      <dt>liveness</dt><dd>${healthz ? healthz.status : (errors.healthz ? 'down' : '…')}</dd>
      <dt>readiness</dt><dd data-ready=${readyz ? 'yes' : 'no'}>${readyz ? readyz.status : (errors.readyz ? `not ready: ${errors.readyz.message}` : '…')}</dd>
      ${now && html`<dt>engines ready</dt><dd>${now.gauges.graft_engines_ready ?? '—'}</dd>
        <dt>local engine restarts</dt><dd>${now.gauges.graft_engine_restarts ?? '—'}</dd>
        <dt>average latency since start</dt><dd>${now.count ? `${fmtNum((now.sum / now.count) * 1000, 1)} ms over ${now.count} requests` : '—'}</dd>`}
    </dl>
    <h3 id="engines-h">Engines</h3>
    <${Err} error=${errors.engines}/>
    <table class="list" aria-labelledby="engines-h">
      <thead><tr><th>engine</th><th>healthy</th><th>ready</th><th>in flight</th><th>loaded adapters</th></tr></thead>
      <tbody>${(engines ? engines.data : []).map((e) => html`<tr key=${e.url} data-engine=${e.url}>
        <td>${e.url}</td><td>${e.healthy ? 'yes' : 'no'}</td><td>${e.ready ? 'yes' : 'no'}</td><td class="num">${e.in_flight}</td>
        <td class="adapters">${e.adapters.join(', ') || '—'}</td></tr>`)}</tbody>
    </table>
    <h3>Traffic</h3>
    <${Err} error=${errors.metrics}/>
    <p class="hint">From /metrics every ${POLL_MS / 1000} s; the console's own health and metrics calls are left out.</p>
    ${series[0].length > 0 ? html`
      <${Chart} title="API requests per second" data=${[series[0], series[1]]} series=${['req/s']} height=${150}/>
      <${Chart} title="Request latency (ms)" data=${[series[0], series[2], series[3]]} series=${['p50', 'p95']} height=${150}/>`
    : html`<p class="empty">Rates appear after the second scrape.</p>`}
    ${now && html`<table class="list" aria-label="Requests per route since start">
      <thead><tr><th>route</th><th>requests</th><th>5xx</th></tr></thead>
      <tbody>${[...now.routes.entries()].sort((a, b) => b[1].requests - a[1].requests).map(([route, r]) => html`<tr key=${route}>
        <td>${route}</td><td class="num">${r.requests}</td><td class="num">${r.errors}</td></tr>`)}</tbody>
    </table>
    ${now.tokens.size > 0 && html`<table class="list" aria-label="Generated tokens per model">
      <thead><tr><th>engine model</th><th>tokens generated</th></tr></thead>
      <tbody>${[...now.tokens.entries()].map(([m, n]) => html`<tr key=${m}><td>${m}</td><td class="num">${n}</td></tr>`)}</tbody>
    </table>`}`}
  </section>`;
}
