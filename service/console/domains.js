// Domains: bindings, the adapter history as a timeline, swap and rollback (confirmed, gate numbers
// shown, everything re-read after each call), bind or edit, delete.
import { html, useState } from './vendor/htm-preact-standalone.mjs';
import { api, enc, fmtNum, fmtTime } from './api.js';
import { Err, Field, confirmAction, useAsync } from './ui.js';

// The gate metrics: evaluation.metrics.METRICS (tests/service/test_console_gate_metrics.py checks it).
export const GATE_METRICS = ['hit_at_k', 'mrr_at_k', 'recall_at_k', 'answer_contains', 'answer_f1', 'exact_match',
  'citation_precision', 'abstention'];

// Every adapter with its live versions: [{name, versions: [1, 2]}].
export const loadAdapters = () => api('/v1/adapters').then((r) => r.data);

export function Domains({ sub }) {
  const list = useAsync(() => api('/v1/domains'), []);
  const [editing, setEditing] = useState(false);
  const domains = list.data ? list.data.data : [];
  const current = domains.find((d) => d.name === sub);
  return html`<section aria-labelledby="domains-h">
    <h2 id="domains-h">Domains</h2>
    <${Err} error=${list.error}/>
    <table class="list" aria-label="Domains">
      <thead><tr><th>name</th><th>corpora</th><th>adapter</th><th>retrieval</th><th>gate</th><th>system prompt</th></tr></thead>
      <tbody>${domains.map((d) => html`<tr key=${d.name} data-domain=${d.name} class=${d.name === sub ? 'selected' : ''}>
        <td><a href=${`#domains/${enc(d.name)}`}>${d.name}</a></td>
        <td>${d.corpora.join(', ') || '—'}</td>
        <td class="adapter" data-engine-model=${d.engine_model}>${d.adapter ? `${d.adapter.name}@${d.adapter.version}` : 'base model'}</td>
        <td>${retrievalText(d.retrieval)}</td>
        <td>${d.gate ? `${d.gate.evalset}: ${d.gate.metric} ≥ +${d.gate.min_delta}` : '—'}</td>
        <td class="clip">${d.system_prompt || '—'}</td>
      </tr>`)}</tbody>
    </table>
    ${list.data && domains.length === 0 && html`<p class="empty">No domain yet: bind one below.</p>`}
    ${sub && html`<${DomainDetail} key=${sub} name=${sub} onChange=${list.reload}/>`}
    <div class="row">
      <button onClick=${() => setEditing(!editing)} aria-expanded=${editing}>
        ${current ? `Edit binding of ${current.name}` : 'Bind a domain'}</button>
    </div>
    ${editing && html`<${BindForm} key=${sub || ''} domain=${current}
      onSaved=${(name) => { setEditing(false); list.reload(); location.hash = `#domains/${enc(name)}`; }}/>`}
  </section>`;
}

const retrievalText = (r) => (r ? `k ${r.k}, ${r.mode}${r.min_score != null ? `, min ${r.min_score}` : ''}` : '—');

function BindForm({ domain, onSaved }) {
  const corpora = useAsync(() => api('/v1/corpora').then((r) => r.data), []);
  const adapters = useAsync(loadAdapters, []);
  const evalsets = useAsync(() => api('/v1/evalsets').then((r) => r.data), []);
  const [error, setError] = useState(null);
  const d = domain || { corpora: [], retrieval: { k: 4, mode: 'hybrid' } };
  const submit = async (e) => {
    e.preventDefault();
    const f = new FormData(e.target);
    const name = (f.get('name') || '').trim();
    const body = { corpora: f.getAll('corpora'), system_prompt: f.get('system_prompt') || null,
      description: f.get('description') || null,
      retrieval: { k: Number(f.get('k')), mode: f.get('mode') } };
    if (f.get('min_score') !== '') body.retrieval.min_score = Number(f.get('min_score'));
    const adapter = f.get('adapter');
    if (adapter) {
      const [aname, version] = adapter.split('@');
      body.adapter = { name: aname, version: Number(version) };
    }
    if (f.get('gate_evalset')) {
      body.gate = { evalset: f.get('gate_evalset'), metric: f.get('gate_metric'), min_delta: Number(f.get('gate_min_delta') || 0) };
    }
    setError(null);
    try {
      await api(`/v1/domains/${enc(name)}`, { method: 'PUT', json: body });
      onSaved(name);
    } catch (err) {
      setError(err);
    }
  };
  const bound = d.adapter ? `${d.adapter.name}@${d.adapter.version}` : '';
  return html`<form class="panel grid" onSubmit=${submit} aria-label="Domain binding">
    <${Field} label="Domain name">${(id) => html`<input id=${id} name="name" required defaultValue=${d.name || ''} readonly=${!!domain}/>`}<//>
    <fieldset><legend>Corpora</legend>
      ${(corpora.data || []).map((c) => html`<div class="check"><input type="checkbox" name="corpora" value=${c.name}
        id=${`bind-corpus-${c.name}`} defaultChecked=${d.corpora.includes(c.name)}/><label for=${`bind-corpus-${c.name}`}>${c.name}</label></div>`)}
      ${corpora.data && corpora.data.length === 0 && html`<p class="empty">No corpora.</p>`}
    </fieldset>
    <${Field} label="Adapter version">${(id) => html`<select id=${id} name="adapter">
      <option value="">none (base model)</option>
      ${(adapters.data || []).flatMap((a) => a.versions.map((v) => html`<option value=${`${a.name}@${v}`} selected=${bound === `${a.name}@${v}`}>${a.name}@${v}</option>`))}
    </select>`}<//>
    <${Field} label="Description (shown to agents)">${(id) => html`<textarea id=${id} name="description" rows="2" maxlength="2000" defaultValue=${d.description || ''}></textarea>`}<//>
    <${Field} label="System prompt">${(id) => html`<textarea id=${id} name="system_prompt" rows="3" defaultValue=${d.system_prompt || ''}></textarea>`}<//>
    <${Field} label="Passages (k)">${(id) => html`<input id=${id} name="k" type="number" min="0" max="100" defaultValue=${d.retrieval.k}/>`}<//>
    <${Field} label="Retrieval mode">${(id) => html`<select id=${id} name="mode">
      ${['hybrid', 'dense', 'bm25'].map((m) => html`<option value=${m} selected=${d.retrieval.mode === m}>${m}</option>`)}</select>`}<//>
    <${Field} label="Minimum score">${(id) => html`<input id=${id} name="min_score" type="number" step="any" defaultValue=${d.retrieval.min_score ?? ''}/>`}<//>
    <fieldset><legend>Default swap gate (optional)</legend>
      <${GateFields} evalsets=${evalsets.data} gate=${d.gate}/>
    </fieldset>
    <div class="row"><button type="submit" class="primary">Save binding</button></div>
    <${Err} error=${error}/><${Err} error=${corpora.error || adapters.error}/>
  </form>`;
}

function GateFields({ evalsets, gate }) {
  return html`
    <${Field} label="Evaluation set">${(id) => html`<select id=${id} name="gate_evalset">
      <option value="">no gate</option>
      ${(evalsets || []).map((s) => html`<option value=${s.name} selected=${gate && gate.evalset === s.name}>${s.name}</option>`)}</select>`}<//>
    <${Field} label="Metric">${(id) => html`<select id=${id} name="gate_metric">
      ${GATE_METRICS.map((m) => html`<option value=${m} selected=${gate ? gate.metric === m : m === 'answer_contains'}>${m}</option>`)}</select>`}<//>
    <${Field} label="Minimum gain">${(id) => html`<input id=${id} name="gate_min_delta" type="number" step="any" min="-1" max="1"
      defaultValue=${gate ? gate.min_delta : 0}/>`}<//>`;
}

function DomainDetail({ name, onChange }) {
  const domain = useAsync(() => api(`/v1/domains/${enc(name)}`), [name]);
  const history = useAsync(() => api(`/v1/domains/${enc(name)}/history`).then((r) => r.data), [name]);
  const adapters = useAsync(loadAdapters, []);
  const evalsets = useAsync(() => api('/v1/evalsets').then((r) => r.data), []);
  const [picked, setPicked] = useState(null);
  const [useGate, setUseGate] = useState(false);
  const [outcome, setOutcome] = useState(null);
  const [error, setError] = useState(null);
  const [busy, setBusy] = useState(false);

  const reread = () => { domain.reload(); history.reload(); onChange(); };
  const act = async (message, okLabel, call, describe) => {
    if (!(await confirmAction(message, okLabel))) return;
    setError(null);
    setOutcome(null);
    setBusy(true);
    try {
      setOutcome(describe(await call()));
    } catch (e) {
      setError(e);
    } finally {
      setBusy(false);
      reread();
    }
  };
  const d = domain.data;
  const list = adapters.data || [];
  const adapterName = picked || (d && d.adapter ? d.adapter.name : (list[0] && list[0].name)) || '';
  const versions = (list.find((a) => a.name === adapterName) || { versions: [] }).versions;
  const swap = (e) => {
    e.preventDefault();
    const f = new FormData(e.target);
    const body = { adapter: f.get('adapter'), version: Number(f.get('version')) };
    if (useGate && f.get('gate_evalset')) {
      body.gate = { evalset: f.get('gate_evalset'), metric: f.get('gate_metric'), min_delta: Number(f.get('gate_min_delta') || 0) };
    }
    const from = d && d.adapter ? `${d.adapter.name}@${d.adapter.version}` : 'the base model';
    const gateText = body.gate ? ` if ${body.gate.metric} on ${body.gate.evalset} gains at least ${body.gate.min_delta}` : (d && d.gate ? ' (through the domain\'s default gate)' : '');
    act(`Swap ${name} from ${from} to ${body.adapter}@${body.version}${gateText}?`, 'Swap',
      () => api(`/v1/domains/${enc(name)}/adapter`, { method: 'POST', json: body }),
      (r) => ({ text: `Swapped to ${r.engine_model} in ${r.swap_seconds.toFixed(2)} s.`, gate: r.gate_result }));
  };
  const rollback = () => act(`Roll ${name} back to its previous adapter version?`, 'Roll back',
    () => api(`/v1/domains/${enc(name)}/rollback`, { method: 'POST' }),
    (r) => ({ text: `Rolled back to ${r.engine_model} in ${r.swap_seconds.toFixed(2)} s.` }));
  const remove = () => act(`Delete domain ${name}? Clients naming it get 404.`, 'Delete domain',
    () => api(`/v1/domains/${enc(name)}`, { method: 'DELETE' }),
    () => { location.hash = '#domains'; return { text: `Deleted ${name}.` }; });

  return html`<div class="detail" aria-labelledby="domain-detail-h">
    <h3 id="domain-detail-h">Domain ${name}</h3>
    <${Err} error=${domain.error}/>
    ${d && html`<dl class="binding">
      <dt>adapter</dt><dd data-current-adapter=${d.engine_model}>${d.engine_model}</dd>
      <dt>corpora</dt><dd>${d.corpora.join(', ') || '—'}</dd>
      <dt>retrieval</dt><dd>${retrievalText(d.retrieval)}</dd>
      <dt>description</dt><dd class="pre">${d.description || '—'}</dd>
      <dt>system prompt</dt><dd class="pre">${d.system_prompt || '—'}</dd>
      <dt>default gate</dt><dd>${d.gate ? `${d.gate.evalset}: ${d.gate.metric}, min gain ${d.gate.min_delta}` : 'none'}</dd>
    </dl>`}
    <div class="columns">
      <form class="panel" onSubmit=${swap} aria-labelledby="swap-h">
        <h4 id="swap-h">Swap adapter</h4>
        <${Field} label="Adapter">${(id) => html`<select id=${id} name="adapter" value=${adapterName}
            onChange=${(e) => setPicked(e.target.value)}>
          ${list.map((a) => html`<option value=${a.name}>${a.name}</option>`)}</select>`}<//>
        <${Field} label="Version">${(id) => html`<select id=${id} name="version">
          ${versions.map((v) => html`<option value=${v}>${v}</option>`)}</select>`}<//>
        <div class="field check"><input id="swap-gate" type="checkbox" checked=${useGate}
          onChange=${(e) => setUseGate(e.target.checked)}/><label for="swap-gate">gate this swap on an evaluation</label></div>
        ${useGate && html`<${GateFields} evalsets=${evalsets.data} gate=${d && d.gate}/>`}
        <div class="row">
          <button type="submit" class="primary" disabled=${busy || !versions.length}>Swap</button>
          <button type="button" onClick=${rollback} disabled=${busy}>Roll back</button>
          <button type="button" class="danger" onClick=${remove} disabled=${busy}>Delete domain</button>
        </div>
        <div aria-live="polite" role="status" class="outcome">
          ${busy && 'Working… (loading the adapter on every engine, warming it up, running the gate if any)'}
          ${outcome && html`<p class="ok">${outcome.text}</p>`}
          ${outcome && outcome.gate && html`<${GateNumbers} gate=${outcome.gate}/>`}
        </div>
        <${Err} error=${error}/>
      </form>
      <div class="panel">
        <h4 id="history-h">Adapter history</h4>
        <${Err} error=${history.error}/>
        <ol class="timeline" aria-labelledby="history-h">
          ${(history.data || []).slice().reverse().map((h, i) => html`<li key=${i} class=${`event-${h.action}`}>
            <time>${fmtTime(h.at)}</time>
            <strong>${h.action}</strong> ${h.from || 'base'} → ${h.to || 'base'}
            ${h.details && h.details.candidate && html` (candidate ${h.details.candidate})`}
            ${h.details && h.details.gate && html`<${GateNumbers} gate=${h.details.gate}/>`}
            ${h.api_key_id != null && html`<small> key #${h.api_key_id}</small>`}
          </li>`)}
        </ol>
      </div>
    </div>
  </div>`;
}

export function GateNumbers({ gate }) {
  const delta = gate.candidate != null && gate.current != null ? gate.candidate - gate.current : null;
  const run = (id) => html`<a href=${`#evals/${id}`}>${String(id).slice(0, 8)}</a>`;
  return html`<div class="gate">gate ${gate.passed ? 'passed' : 'refused'}: ${gate.metric}${' '}
    current ${fmtNum(gate.current)} (eval ${run(gate.current_eval_id)})${' '}
    vs candidate ${fmtNum(gate.candidate)} (eval ${run(gate.candidate_eval_id)}),${' '}
    gain ${fmtNum(delta)}, needed ${gate.min_delta}</div>`;
}
