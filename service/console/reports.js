// A domain's reports: every route to its knowledge (closed book, retrieval, tuned configuration,
// reader, memorize, composed) run on one evaluation set, each row's metrics with the 95 % interval
// of its difference against the retrieval row; start one.
import { html, useState } from './vendor/htm-preact-standalone.mjs';
import { api, enc, fmtNum, fmtTime } from './api.js';
import { Err, Field, JobProgress, useAsync, useJob } from './ui.js';
import { loadAdapters } from './domains.js';

const METRICS = ['hit_at_k', 'mrr_at_k', 'recall_at_k', 'answer_contains', 'answer_f1', 'exact_match',
  'citation_precision', 'abstention'];
const ADAPTER_ROUTES = [['reader', 'Reader adapter'], ['memorize', 'Memorize adapter'], ['composed', 'Composed adapter']];

export function Reports({ domain }) {
  const reports = useAsync(() => api(`/v1/domains/${enc(domain)}/reports`).then((r) => r.data), [domain]);
  const [chosen, setChosen] = useState(null);
  const list = reports.data || [];
  const shown = list.find((r) => r.job_id === chosen) || list.find((r) => r.result);
  return html`<div class="detail" aria-labelledby="reports-h">
    <h3 id="reports-h">Reports of ${domain}</h3>
    <${Err} error=${reports.error}/>
    <table class="list" aria-label="Reports">
      <thead><tr><th>started</th><th>set</th><th>status</th></tr></thead>
      <tbody>${list.map((r) => html`<tr key=${r.job_id} data-report=${r.job_id} class=${shown && r.job_id === shown.job_id ? 'selected' : ''}>
        <td><button type="button" class="link" onClick=${() => setChosen(r.job_id)}>${fmtTime(r.created_at)}</button></td>
        <td>${r.evalset}</td><td>${r.status}${r.reason ? `: ${r.reason}` : ''}</td></tr>`)}</tbody>
    </table>
    ${reports.data && list.length === 0 && html`<p class="empty">No report yet (graft domain report, or the form below).</p>`}
    ${shown && shown.result && html`<${ReportTable} result=${shown.result}/>`}
    <${StartReport} domain=${domain} onDone=${reports.reload}/>
  </div>`;
}

function ReportTable({ result }) {
  const rows = result.rows;
  const metrics = METRICS.filter((m) => rows.some((r) => r.metrics && r.metrics[m] != null));
  const what = (r) => {
    if (!r.available) return `not available: ${r.reason}`;
    if (r.status !== 'succeeded') return `${r.status}: ${r.reason}`;
    const source = r.source ? ` (${r.source})` : '';
    if (r.adapter) return `${r.engine_model}${source}`;
    if (r.config_version != null) return `config ${r.config_version}${source}`;
    return `${r.engine_model}${r.retrieval ? '' : ', no retrieval'}`;
  };
  const cell = (r, m) => {
    const d = r.delta && r.delta[m];
    return html`<td class="num">${fmtNum(r.metrics && r.metrics[m])}${d && html`<br/><span class="delta">${d.delta >= 0 ? '+' : ''}${fmtNum(d.delta)} [${fmtNum(d.low)}, ${fmtNum(d.high)}]</span>`}</td>`;
  };
  return html`<table class="list" aria-label="Report table">
    <caption>${result.domain} on ${result.evalset}: each metric, and below it the difference against ${result.reference} with its 95 % interval</caption>
    <thead><tr><th>route</th><th>what</th>${metrics.map((m) => html`<th>${m}</th>`)}<th>run</th></tr></thead>
    <tbody>${rows.map((r) => html`<tr key=${r.route} data-route=${r.route}>
      <td>${r.label}</td><td>${what(r)}</td>${metrics.map((m) => cell(r, m))}
      <td>${r.eval_id ? html`<a href=${`#evals/${r.eval_id}`}>${r.eval_id.slice(0, 8)}</a>` : '—'}</td></tr>`)}</tbody>
  </table>`;
}

function StartReport({ domain, onDone }) {
  const evalsets = useAsync(() => api('/v1/evalsets').then((r) => r.data), []);
  const adapters = useAsync(loadAdapters, []);
  const [jobId, setJobId] = useState(null);
  const [error, setError] = useState(null);
  const { job, error: jobError } = useJob(jobId, { onDone, intervalMs: 1000 });
  const submit = async (e) => {
    e.preventDefault();
    const f = new FormData(e.target);
    const routes = {};
    for (const [route] of ADAPTER_ROUTES) {
      const value = f.get(route);
      if (value === 'none') routes[route] = false;
      else if (value) {
        const [name, version] = value.split('@');
        routes[route] = { name, version: Number(version) };
      }
    }
    if (f.get('tuned')) routes.tuned = { version: Number(f.get('tuned')) };
    setError(null);
    try {
      setJobId((await api(`/v1/domains/${enc(domain)}/reports`, { method: 'POST', json: { evalset: f.get('evalset'), routes } })).job_id);
    } catch (err) {
      setError(err);
    }
  };
  const versions = (adapters.data || []).flatMap((a) => a.versions.map((v) => `${a.name}@${v}`));
  return html`<form class="panel grid" onSubmit=${submit} aria-labelledby="report-start-h">
    <h4 id="report-start-h">Start a report of ${domain}</h4>
    <${Field} label="Report set">${(id) => html`<select id=${id} name="evalset" required>${(evalsets.data || []).map((s) => html`<option value=${s.name}>${s.name}</option>`)}</select>`}<//>
    ${ADAPTER_ROUTES.map(([route, label]) => html`<${Field} key=${route} label=${label}>${(id) => html`<select id=${id} name=${route}>
      <option value="">the newest the domain's records name</option><option value="none">leave the row out</option>
      ${versions.map((v) => html`<option value=${v}>${v}</option>`)}</select>`}<//>`)}
    <${Field} label="Tuned configuration version (optional)">${(id) => html`<input id=${id} name="tuned" type="number" min="1"/>`}<//>
    <div class="row"><button type="submit" class="primary">Start report</button></div>
    <${Err} error=${error}/>
    ${jobId && html`<${JobProgress} job=${job} error=${jobError} label="Report"/>`}
  </form>`;
}
