// Adapters: versions with their validation facts and provenance, upload, delete; trainings with
// their live progress and loss curves.
import { html, useState } from './vendor/htm-preact-standalone.mjs';
import { api, enc, fmtBytes, fmtNum, fmtTime } from './api.js';
import { Chart, Err, Field, JobProgress, confirmAction, isFinished, useAsync, useJob } from './ui.js';
import { loadAdapters } from './domains.js';

// The API has no list of jobs: the console remembers the trainings this tab started or followed.
const TRAININGS = 'graft.trainings';
const rememberedJobs = () => JSON.parse(sessionStorage.getItem(TRAININGS) || '[]');

export function Adapters() {
  const adapters = useAsync(async () => {
    const list = await loadAdapters();
    return Promise.all(list.map(async (a) => ({
      name: a.name, versions: (await api(`/v1/adapters/${enc(a.name)}/versions`)).data })));
  }, []);
  const [jobs, setJobs] = useState(rememberedJobs);
  const follow = (id) => {
    const next = [id, ...jobs.filter((j) => j !== id)].slice(0, 10);
    sessionStorage.setItem(TRAININGS, JSON.stringify(next));
    setJobs(next);
  };
  const forget = (id) => {
    const next = jobs.filter((j) => j !== id);
    sessionStorage.setItem(TRAININGS, JSON.stringify(next));
    setJobs(next);
  };
  return html`<section aria-labelledby="adapters-h">
    <h2 id="adapters-h">Adapters</h2>
    <${Err} error=${adapters.error}/>
    ${(adapters.data || []).map((a) => html`<${AdapterVersions} key=${a.name} adapter=${a} onChange=${adapters.reload}/>`)}
    ${adapters.data && adapters.data.length === 0 && html`<p class="empty">No adapter yet: upload a PEFT LoRA or train one.</p>`}
    <div class="columns">
      <${UploadVersion} onDone=${adapters.reload}/>
      <${StartTraining} onStarted=${follow}/>
    </div>
    <div class="panel">
      <h3 id="trainings-h">Training jobs</h3>
      <${FollowJob} onFollow=${follow}/>
      ${jobs.map((id) => html`<${TrainingJob} key=${id} id=${id} onDone=${adapters.reload} onForget=${() => forget(id)}/>`)}
      ${jobs.length === 0 && html`<p class="empty">No training followed in this tab.</p>`}
    </div>
  </section>`;
}

function AdapterVersions({ adapter, onChange }) {
  const [error, setError] = useState(null);
  const remove = async (v) => {
    if (!(await confirmAction(`Delete ${adapter.name}@${v}? Refused while a domain uses it or can roll back to it.`, 'Delete version'))) return;
    setError(null);
    try {
      await api(`/v1/adapters/${enc(adapter.name)}/versions/${v}`, { method: 'DELETE' });
    } catch (e) {
      setError(e);
    }
    onChange();
  };
  return html`<div class="panel" data-adapter=${adapter.name}>
    <h3>${adapter.name}</h3>
    <${Err} error=${error}/>
    <table class="list" aria-label=${`Versions of ${adapter.name}`}>
      <thead><tr><th>version</th><th>rank</th><th>target modules</th><th>size</th><th>sha256</th><th>created</th>
        <th>provenance</th><th><span class="sr-only">actions</span></th></tr></thead>
      <tbody>${adapter.versions.map((v) => html`<tr key=${v.version} data-version=${v.version}>
        <td class="num">${v.version}</td><td class="num">${v.rank}</td><td>${(v.target_modules || []).join(', ')}</td>
        <td class="num">${fmtBytes(v.bytes)}</td>
        <td><code title=${v.sha256}>${v.sha256.slice(0, 12)}…</code></td><td>${fmtTime(v.created_at)}</td>
        <td>${v.provenance ? html`<${Provenance} p=${v.provenance}/>` : 'uploaded'}</td>
        <td><button class="danger" onClick=${() => remove(v.version)} aria-label=${`Delete ${adapter.name} version ${v.version}`}>Delete</button></td>
      </tr>`)}</tbody>
    </table>
    ${adapter.versions.filter((v) => v.provenance && v.provenance.loss && (v.provenance.loss.curve || []).length > 1)
      .map((v) => html`<${LossChart} key=${v.version} title=${`${adapter.name}@${v.version}: training loss`} curve=${v.provenance.loss.curve}/>`)}
  </div>`;
}

function Provenance({ p }) {
  if (p.compose) {  // a version composed from stored ones (POST …/versions with a JSON compose body)
    const c = p.compose;
    return html`<div class="provenance">
      composed (${c.method}${c.density != null ? `, density ${c.density}` : ''}${c.svd_rank ? `, svd rank ${c.svd_rank}` : ''}) of
      ${c.sources.map((s, i) => html`${i ? ' + ' : ''}${fmtNum(s.weight, 3)} × <code title=${s.sha256}>${s.adapter}@${s.version}</code>`)}
    </div>`;
  }
  const params = p.params || {};
  return html`<div class="provenance">
    trained on <a href=${`#corpora/${enc(p.corpus)}`}>${p.corpus}</a> (generation ${p.generation ?? '—'}),
    recipe ${p.recipe}, ${p.examples} examples${params.rank ? `, rank ${params.rank}` : ''}${params.epochs ? `, ${params.epochs} epoch(s)` : ''},
    final loss ${fmtNum(p.loss && p.loss.final, 4)}
    ${p.eval_id && html`, <a href=${`#evals/${p.eval_id}`}>evaluation</a>`}
    ${p.data_sha256 && html`<br/><small>data <code title=${p.data_sha256}>${p.data_sha256.slice(0, 12)}…</code>${p.job_id ? `, job ${p.job_id.slice(0, 8)}` : ''}</small>`}
  </div>`;
}

function LossChart({ title, curve }) {
  // The stored curve is the trainer's per-step losses averaged into at most a few hundred points
  // (provenance does not keep how many steps each covers), so x counts points, not steps.
  const xs = curve.map((_, i) => i + 1);
  return html`<${Chart} title=${title} data=${[xs, curve]} series=${['loss']} xLabel="point" height=${160}/>`;
}

function UploadVersion({ onDone }) {
  const [error, setError] = useState(null);
  const [done, setDone] = useState(null);
  const submit = async (e) => {
    e.preventDefault();
    const f = new FormData(e.target);
    const name = f.get('name').trim();
    const form = new FormData();
    for (const file of e.target.elements.files.files) form.append('files', file, file.name);
    setError(null);
    setDone(null);
    try {
      const r = await api(`/v1/adapters/${enc(name)}/versions`, { method: 'POST', form });
      setDone(`Stored ${r.adapter}@${r.version} (rank ${r.rank}, sha256 ${r.sha256.slice(0, 12)}…).`);
      e.target.reset();
    } catch (err) {
      setError(err);
    }
    onDone();
  };
  return html`<form class="panel" onSubmit=${submit} aria-labelledby="adapter-upload-h">
    <h3 id="adapter-upload-h">Upload a version</h3>
    <${Field} label="Adapter name">${(id) => html`<input id=${id} name="name" required/>`}<//>
    <${Field} label="Files" hint="adapter_config.json + adapter_model.safetensors, or one .tar.gz/.zip">${(id) => html`<input id=${id} name="files" type="file" multiple required/>`}<//>
    <button type="submit" class="primary">Upload version</button>
    <p aria-live="polite" class="ok">${done}</p>
    <${Err} error=${error}/>
  </form>`;
}

function StartTraining({ onStarted }) {
  const corpora = useAsync(() => api('/v1/corpora').then((r) => r.data), []);
  const domains = useAsync(() => api('/v1/domains').then((r) => r.data), []);
  const evalsets = useAsync(() => api('/v1/evalsets').then((r) => r.data), []);
  const [error, setError] = useState(null);
  const submit = async (e) => {
    e.preventDefault();
    const f = new FormData(e.target);
    const body = { corpus: f.get('corpus'), recipe: f.get('recipe'), rank: Number(f.get('rank')),
      max_examples: Number(f.get('max_examples')) };
    // Left empty, epochs and learning rate are the recipe's defaults (the gateway fills them in).
    for (const name of ['epochs', 'learning_rate']) if (f.get(name)) body[name] = Number(f.get(name));
    if (f.get('domain')) body.promote = { domain: f.get('domain') };
    if (f.get('evalset')) body.evalset = f.get('evalset');
    setError(null);
    try {
      const r = await api(`/v1/adapters/${enc(f.get('name').trim())}/trainings`, { method: 'POST', json: body });
      onStarted(r.job_id);
    } catch (err) {
      setError(err);
    }
  };
  const options = (r) => (r.data || []).map((x) => html`<option value=${x.name}>${x.name}</option>`);
  return html`<form class="panel grid" onSubmit=${submit} aria-labelledby="train-h">
    <h3 id="train-h">Train a version</h3>
    <${Field} label="Adapter name">${(id) => html`<input id=${id} name="name" required/>`}<//>
    <${Field} label="Corpus">${(id) => html`<select id=${id} name="corpus" required>${options(corpora)}</select>`}<//>
    <${Field} label="Recipe">${(id) => html`<select id=${id} name="recipe"><option value="reader">reader</option><option value="memorize">memorize</option></select>`}<//>
    <${Field} label="Rank">${(id) => html`<input id=${id} name="rank" type="number" min="1" defaultValue="8"/>`}<//>
    <${Field} label="Epochs">${(id) => html`<input id=${id} name="epochs" type="number" min="1" placeholder="the recipe's"/>`}<//>
    <${Field} label="Max examples">${(id) => html`<input id=${id} name="max_examples" type="number" min="1" defaultValue="200"/>`}<//>
    <${Field} label="Learning rate">${(id) => html`<input id=${id} name="learning_rate" type="number" step="any" placeholder="the recipe's"/>`}<//>
    <${Field} label="Promote to domain (optional)">${(id) => html`<select id=${id} name="domain"><option value="">none</option>${options(domains)}</select>`}<//>
    <${Field} label="Evaluate on (needs a domain)">${(id) => html`<select id=${id} name="evalset"><option value="">none</option>${options(evalsets)}</select>`}<//>
    <div class="row"><button type="submit" class="primary">Start training</button></div>
    <${Err} error=${error}/>
  </form>`;
}

function FollowJob({ onFollow }) {
  const submit = (e) => {
    e.preventDefault();
    const id = new FormData(e.target).get('job').trim();
    if (id) onFollow(id);
    e.target.reset();
  };
  return html`<form class="inline" onSubmit=${submit} aria-label="Follow a training job">
    <${Field} label="Follow a job by id">${(id) => html`<input id=${id} name="job" placeholder="job id (from the CLI or the API)"/>`}<//>
    <button type="submit">Follow</button>
  </form>`;
}

function TrainingJob({ id, onDone, onForget }) {
  const [points, setPoints] = useState([]);
  const onEvent = (job) => {
    const p = job.progress || {};
    if (p.step != null && p.loss != null) {
      setPoints((old) => (old.length && old[old.length - 1][0] === p.step ? old : [...old, [p.step, p.loss]]));
    }
  };
  const { job, error } = useJob(id, { onEvent, onDone, intervalMs: 2000 });
  const cancel = async () => {
    if (!(await confirmAction('Cancel this training?', 'Cancel training'))) return;
    try { await api(`/v1/jobs/${enc(id)}/cancel`, { method: 'POST' }); } catch { /* shown by the next poll */ }
  };
  const result = job && job.result;
  return html`<div class="training" data-job=${id}>
    <h4>Job <code>${id.slice(0, 8)}</code>${job && job.kind !== 'train' ? ` (${job.kind})` : ''}</h4>
    <${JobProgress} job=${job} error=${error} label="Training"/>
    ${points.length > 1 && html`<${Chart} title="Training loss (live)" data=${[points.map((p) => p[0]), points.map((p) => p[1])]}
      series=${['loss']} xLabel="step" height=${160}/>`}
    ${result && html`<p class="ok">Result: ${result.adapter}@${result.version}
      ${result.eval_id && html`, <a href=${`#evals/${result.eval_id}`}>evaluation</a>`}
      ${result.promotion && html`, promotion: ${JSON.stringify(result.promotion)}`}</p>`}
    <div class="row">
      ${job && !isFinished(job) && job.kind === 'train' && html`<button onClick=${cancel}>Cancel</button>`}
      <button onClick=${onForget}>Stop following</button>
    </div>
  </div>`;
}
