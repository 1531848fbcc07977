// Evaluations: runs per domain, their metrics over time, a run's items; a domain's tunings and
// reports (reports.js); start a run, add a set.
import { html, useState } from './vendor/htm-preact-standalone.mjs';
import { api, enc, fmtNum, fmtTime } from './api.js';
import { Chart, Err, Field, JobProgress, useAsync, useJob } from './ui.js';
import { loadAdapters } from './domains.js';
import { Reports } from './reports.js';

const CHARTED = ['hit_at_k', 'mrr_at_k', 'answer_contains', 'answer_f1', 'citation_precision'];

export function Evals({ sub }) {
  const [domain, setDomain] = useState('');
  const domains = useAsync(() => api('/v1/domains').then((r) => r.data), []);
  const runs = useAsync(() => api(`/v1/evals?limit=200${domain ? `&domain=${enc(domain)}` : ''}`).then((r) => r.data), [domain]);
  const list = runs.data || [];
  const finished = list.filter((r) => r.metrics).sort((a, b) => a.created_at - b.created_at);
  const chartData = [finished.map((r) => r.created_at), ...CHARTED.map((m) => finished.map((r) => r.metrics[m] ?? null))];
  return html`<section aria-labelledby="evals-h">
    <h2 id="evals-h">Evaluations</h2>
    <form class="inline" onSubmit=${(e) => e.preventDefault()} aria-label="Filter runs">
      <${Field} label="Domain">${(id) => html`<select id=${id} value=${domain} onChange=${(e) => setDomain(e.target.value)}>
        <option value="">all domains</option>
        ${(domains.data || []).map((d) => html`<option value=${d.name}>${d.name}</option>`)}</select>`}<//>
      <button type="button" onClick=${runs.reload}>Refresh</button>
    </form>
    <${Err} error=${runs.error}/>
    ${finished.length > 0 && html`<${Chart} title=${`Metrics over time${domain ? ` for ${domain}` : ''}`} data=${chartData} series=${CHARTED}/>`}
    <table class="list" aria-label="Evaluation runs">
      <thead><tr><th>started</th><th>domain</th><th>set</th><th>adapter</th><th>status</th>
        <th>hit@k</th><th>mrr@k</th><th>contains</th><th>F1</th><th>cit. prec.</th><th>p50 ms</th></tr></thead>
      <tbody>${list.map((r) => { const m = r.metrics || {}; return html`<tr key=${r.id} class=${r.id === sub ? 'selected' : ''}>
        <td><a href=${`#evals/${r.id}`}>${fmtTime(r.created_at)}</a></td><td>${r.domain}</td><td>${r.evalset}</td><td>${r.adapter}</td>
        <td>${r.status}</td><td class="num">${fmtNum(m.hit_at_k)}</td><td class="num">${fmtNum(m.mrr_at_k)}</td>
        <td class="num">${fmtNum(m.answer_contains)}</td><td class="num">${fmtNum(m.answer_f1)}</td>
        <td class="num">${fmtNum(m.citation_precision)}</td><td class="num">${fmtNum(m.latency_p50_ms, 0)}</td></tr>`; })}</tbody>
    </table>
    ${runs.data && list.length === 0 && html`<p class="empty">No evaluation run yet.</p>`}
    ${sub && html`<${RunItems} key=${sub} id=${sub}/>`}
    ${domain && html`<${Tunings} key=${domain} domain=${domain}/>`}
    ${domain && html`<${Reports} key=${`reports-${domain}`} domain=${domain}/>`}
    <div class="columns">
      <${StartRun} domains=${domains.data} onDone=${runs.reload}/>
      <${CreateSet}/>
    </div>
  </section>`;
}

// A domain's configuration versions (what its tunings found), and one version's trials and winner.
function Tunings({ domain }) {
  const configs = useAsync(() => api(`/v1/domains/${enc(domain)}/configs`).then((r) => r.data), [domain]);
  const [version, setVersion] = useState(null);
  const detail = useAsync(() => (version ? api(`/v1/domains/${enc(domain)}/configs/${version}`) : Promise.resolve(null)), [domain, version]);
  const v = detail.data;
  return html`<div class="detail" aria-labelledby="tunings-h">
    <h3 id="tunings-h">Tunings of ${domain}</h3>
    <${Err} error=${configs.error || detail.error}/>
    <table class="list" aria-label="Configuration versions">
      <thead><tr><th>version</th><th>metric</th><th>tuning</th><th>holdout</th><th>live config on holdout</th><th>template</th><th>k</th><th>mode</th><th>applied</th></tr></thead>
      <tbody>${(configs.data || []).map((c) => html`<tr key=${c.version} data-config=${c.version} class=${c.version === version ? 'selected' : ''}>
        <td><button type="button" class="link" onClick=${() => setVersion(c.version)}>${c.version}</button></td><td>${c.metric || '—'}</td>
        <td class="num">${fmtNum(c.tuning_score)}</td><td class="num">${fmtNum(c.holdout_score)}</td><td class="num">${fmtNum(c.current_score)}</td>
        <td>${c.config.prompt_template}</td><td class="num">${c.config.retrieval.k}</td><td>${c.config.retrieval.mode}</td><td>${c.applied ? 'yes' : ''}</td></tr>`)}</tbody>
    </table>
    ${configs.data && configs.data.length === 0 && html`<p class="empty">No tuning yet (graft domain tune, or POST /v1/domains/{d}/tunings).</p>`}
    ${v && html`<h4>Version ${v.version}: winner and its difference from the live configuration</h4>
      <dl class="binding">${Object.entries(v.diff).map(([field, change]) => html`<dt>${field}</dt><dd>${JSON.stringify(change.current)} → ${JSON.stringify(change.config)}</dd>`)}</dl>
      ${Object.keys(v.diff).length === 0 && html`<p>Same as the live configuration.</p>`}
      <table class="list" aria-label="Trials of the tuning">
        <thead><tr><th>trial</th><th>state</th><th>score</th><th>items</th><th>parameters</th></tr></thead>
        <tbody>${v.trials.map((t) => html`<tr key=${t.number} class=${t.params && t.score === v.tuning_score && t.state === 'complete' ? 'selected' : ''}>
          <td class="num">${t.number}</td><td>${t.state}${t.repeat ? ' (repeat)' : ''}</td><td class="num">${fmtNum(t.score)}</td><td class="num">${t.items}</td>
          <td class="pre">${Object.entries(t.params).map(([k, x]) => `${k} ${x}`).join(', ')}</td></tr>`)}</tbody>
      </table>`}
  </div>`;
}

function RunItems({ id }) {
  const run = useAsync(() => api(`/v1/evals/${enc(id)}`), [id]);
  const items = useAsync(() => api(`/v1/evals/${enc(id)}/items`).then((r) => r.items), [id]);
  const r = run.data;
  const mark = (x) => (x == null ? '—' : x ? html`<span class="yes">✓<span class="sr-only">yes</span></span>` : html`<span class="no">✗<span class="sr-only">no</span></span>`);
  return html`<div class="detail" aria-labelledby="run-h">
    <h3 id="run-h">Run ${id.slice(0, 8)}${r ? ` · ${r.domain} · ${r.evalset} · ${r.adapter} · k ${r.k}` : ''}</h3>
    <${Err} error=${run.error || items.error}/>
    ${r && r.metrics && html`<dl class="binding">${Object.entries(r.metrics).filter(([, v]) => typeof v === 'number')
      .map(([k, v]) => html`<dt>${k}</dt><dd>${fmtNum(v)}</dd>`)}</dl>`}
    <table class="list" aria-label="Items of the run">
      <thead><tr><th>id</th><th>question</th><th>output</th><th>retrieved</th><th>cited</th><th>hit</th><th>contains</th><th>F1</th></tr></thead>
      <tbody>${(items.data || []).map((i) => html`<tr key=${i.id}>
        <td>${i.id}</td><td>${i.question}</td><td class="pre">${i.output}</td>
        <td>${(i.retrieved_document_ids || []).join(', ')}</td><td>${(i.cited_document_ids || []).join(', ')}</td>
        <td>${mark(i.hit)}</td><td>${mark(i.answer_contains)}</td><td class="num">${fmtNum(i.answer_f1)}</td></tr>`)}</tbody>
    </table>
  </div>`;
}

function StartRun({ domains, onDone }) {
  const evalsets = useAsync(() => api('/v1/evalsets').then((r) => r.data), []);
  const adapters = useAsync(loadAdapters, []);
  const [jobId, setJobId] = useState(null);
  const [error, setError] = useState(null);
  const { job, error: jobError } = useJob(jobId, { onDone, intervalMs: 1000 });
  const submit = async (e) => {
    e.preventDefault();
    const f = new FormData(e.target);
    const body = { domain: f.get('domain'), evalset: f.get('evalset'), max_tokens: Number(f.get('max_tokens')) };
    if (f.get('adapter')) {
      const [name, version] = f.get('adapter').split('@');
      body.adapter = { name, version: Number(version) };
    }
    if (f.get('no_retrieval')) body.retrieval = false;
    setError(null);
    try {
      setJobId((await api('/v1/evals', { method: 'POST', json: body })).job_id);
    } catch (err) {
      setError(err);
    }
  };
  return html`<form class="panel grid" onSubmit=${submit} aria-labelledby="run-start-h">
    <h3 id="run-start-h">Run an evaluation</h3>
    <${Field} label="Domain">${(id) => html`<select id=${id} name="domain" required>${(domains || []).map((d) => html`<option value=${d.name}>${d.name}</option>`)}</select>`}<//>
    <${Field} label="Evaluation set">${(id) => html`<select id=${id} name="evalset" required>${(evalsets.data || []).map((s) => html`<option value=${s.name}>${s.name}</option>`)}</select>`}<//>
    <${Field} label="Candidate adapter (optional)">${(id) => html`<select id=${id} name="adapter"><option value="">the domain's binding</option>
      ${(adapters.data || []).flatMap((a) => a.versions.map((v) => html`<option value=${`${a.name}@${v}`}>${a.name}@${v}</option>`))}</select>`}<//>
    <${Field} label="Max tokens">${(id) => html`<input id=${id} name="max_tokens" type="number" min="1" defaultValue="64"/>`}<//>
    <div class="field check"><input id="run-closed-book" name="no_retrieval" type="checkbox"/><label for="run-closed-book">closed book (no retrieval)</label></div>
    <div class="row"><button type="submit" class="primary">Start run</button></div>
    <${Err} error=${error}/>
    ${jobId && html`<${JobProgress} job=${job} error=${jobError} label="Evaluation"/>`}
  </form>`;
}

function CreateSet() {
  const [error, setError] = useState(null);
  const [done, setDone] = useState(null);
  const submit = async (e) => {
    e.preventDefault();
    const f = new FormData(e.target);
    const form = new FormData();
    const file = e.target.elements.file.files[0];
    form.append('files', file, file.name);
    const name = f.get('name').trim();
    setError(null);
    setDone(null);
    try {
      const r = await api(`/v1/evalsets${name ? `?name=${enc(name)}` : ''}`, { method: 'POST', form });
      setDone(`Stored set ${r.name}: ${r.items} items.`);
      e.target.reset();
    } catch (err) {
      setError(err);
    }
  };
  return html`<form class="panel" onSubmit=${submit} aria-labelledby="set-h">
    <h3 id="set-h">Add an evaluation set</h3>
    <${Field} label="Name (default: the file's)">${(id) => html`<input id=${id} name="name"/>`}<//>
    <${Field} label="JSONL file" hint='one {"id", "question", "answers", "document_ids"} per line'>${(id) => html`<input id=${id} name="file" type="file" accept=".jsonl,.json,application/jsonl" required/>`}<//>
    <button type="submit">Add set</button>
    <p aria-live="polite" class="ok">${done}</p>
    <${Err} error=${error}/>
  </form>`;
}
