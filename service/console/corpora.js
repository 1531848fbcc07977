// Corpora: list with their stats, create, upload (drag and drop or file picker) with the job's
// progress, search, documents, delete.
import { html, useState } from './vendor/htm-preact-standalone.mjs';
import { api, enc, fmtBytes, fmtNum, fmtTime } from './api.js';
import { Err, Field, JobProgress, confirmAction, useAsync, useJob } from './ui.js';

export function Corpora({ sub }) {
  const list = useAsync(() => api('/v1/corpora'), []);
  const [error, setError] = useState(null);
  const remove = async (name) => {
    if (!(await confirmAction(`Delete corpus "${name}" with all its documents and index?`, 'Delete corpus'))) return;
    setError(null);
    try {
      await api(`/v1/corpora/${enc(name)}`, { method: 'DELETE' });
      if (sub === name) location.hash = '#corpora';
    } catch (e) {
      setError(e);
    }
    list.reload();
  };
  const corpora = list.data ? list.data.data : [];
  return html`<section aria-labelledby="corpora-h">
    <h2 id="corpora-h">Corpora</h2>
    <${CreateCorpus} onCreated=${(name) => { list.reload(); location.hash = `#corpora/${enc(name)}`; }}/>
    <${Err} error=${list.error}/><${Err} error=${error}/>
    <table class="list" aria-label="Corpora">
      <thead><tr><th>name</th><th>documents</th><th>chunks</th><th>generation</th><th>size</th>
        <th>chunking</th><th>embedding model</th><th><span class="sr-only">actions</span></th></tr></thead>
      <tbody>${corpora.map((c) => html`<tr key=${c.name} data-corpus=${c.name} class=${c.name === sub ? 'selected' : ''}>
        <td><a href=${`#corpora/${enc(c.name)}`}>${c.name}</a></td>
        <td class="num">${c.documents}</td><td class="num">${c.chunks}</td><td class="num">${c.generation ?? '—'}</td>
        <td class="num">${fmtBytes(c.bytes)}</td>
        <td>${c.chunk_size}/${c.chunk_overlap}${c.contextual_headers ? ' + headers' : ''}</td>
        <td>${c.embedding_model}</td>
        <td><button class="danger" onClick=${() => remove(c.name)} aria-label=${`Delete corpus ${c.name}`}>Delete</button></td>
      </tr>`)}</tbody>
    </table>
    ${list.data && corpora.length === 0 && html`<p class="empty">No corpus yet: create one above.</p>`}
    ${sub && html`<${CorpusDetail} key=${sub} name=${sub} onChange=${list.reload}/>`}
  </section>`;
}

function CreateCorpus({ onCreated }) {
  const [error, setError] = useState(null);
  const submit = async (e) => {
    e.preventDefault();
    const f = new FormData(e.target);
    const body = { name: f.get('name').trim() };
    if (f.get('chunk_size')) body.chunk_size = Number(f.get('chunk_size'));
    if (f.get('chunk_overlap')) body.chunk_overlap = Number(f.get('chunk_overlap'));
    if (f.get('contextual_headers')) body.contextual_headers = true;
    setError(null);
    try {
      await api('/v1/corpora', { method: 'POST', json: body });
      e.target.reset();
      onCreated(body.name);
    } catch (err) {
      setError(err);
    }
  };
  return html`<form class="inline" onSubmit=${submit} aria-label="Create a corpus">
    <${Field} label="New corpus name">${(id) => html`<input id=${id} name="name" required/>`}<//>
    <${Field} label="Chunk size (tokens)">${(id) => html`<input id=${id} name="chunk_size" type="number" min="16" placeholder="default"/>`}<//>
    <${Field} label="Overlap">${(id) => html`<input id=${id} name="chunk_overlap" type="number" min="0" placeholder="default"/>`}<//>
    <div class="field check"><input id="corpus-headers" name="contextual_headers" type="checkbox"/><label for="corpus-headers">contextual headers</label></div>
    <button type="submit" class="primary">Create corpus</button>
    <${Err} error=${error}/>
  </form>`;
}

function CorpusDetail({ name, onChange }) {
  const [docsVersion, setDocsVersion] = useState(0);
  const changed = () => { onChange(); setDocsVersion((v) => v + 1); };
  return html`<div class="detail" aria-labelledby="corpus-detail-h">
    <h3 id="corpus-detail-h">Corpus ${name}</h3>
    <div class="columns">
      <${Upload} corpus=${name} onDone=${changed}/>
      <${Search} corpus=${name}/>
    </div>
    <${Documents} key=${docsVersion} corpus=${name} onChange=${changed}/>
  </div>`;
}

function Upload({ corpus, onDone }) {
  const [jobId, setJobId] = useState(null);
  const [error, setError] = useState(null);
  const [over, setOver] = useState(false);
  const { job, error: jobError } = useJob(jobId, { onDone });
  const send = async (files) => {
    if (!files.length) return;
    const form = new FormData();
    for (const file of files) form.append('files', file, file.name);
    setError(null);
    try {
      const answer = await api(`/v1/corpora/${enc(corpus)}/documents`, { method: 'POST', form });
      setJobId(answer.job_id);
    } catch (e) {
      setError(e);
    }
  };
  const submit = (e) => {
    e.preventDefault();
    const input = e.target.elements.files;
    send([...input.files]).then(() => { input.value = ''; });
  };
  const drop = (e) => {
    e.preventDefault();
    setOver(false);
    send([...e.dataTransfer.files]);
  };
  return html`<form class="panel" onSubmit=${submit} aria-labelledby="upload-h">
    <h4 id="upload-h">Upload documents</h4>
    <div class=${`drop${over ? ' over' : ''}`} data-dropzone
        onDragOver=${(e) => { e.preventDefault(); setOver(true); }} onDragLeave=${() => setOver(false)} onDrop=${drop}>
      <p>Drop files here (txt, md, html, pdf, jsonl), or choose them:</p>
      <label for="upload-files">Files to upload</label>
      <input id="upload-files" name="files" type="file" multiple/>
      <button type="submit" class="primary">Upload</button>
    </div>
    <${Err} error=${error}/>
    ${jobId && html`<${JobProgress} job=${job} error=${jobError} label="Ingestion"/>`}
  </form>`;
}

function Search({ corpus }) {
  const [hits, setHits] = useState(null);
  const [error, setError] = useState(null);
  const [busy, setBusy] = useState(false);
  const submit = async (e) => {
    e.preventDefault();
    const f = new FormData(e.target);
    setError(null);
    setBusy(true);
    try {
      const answer = await api(`/v1/corpora/${enc(corpus)}/search`, {
        method: 'POST', json: { query: f.get('query'), k: Number(f.get('k')), mode: f.get('mode') } });
      setHits(answer.hits);
    } catch (err) {
      setError(err);
    } finally {
      setBusy(false);
    }
  };
  return html`<div class="panel">
    <h4 id="search-h">Search</h4>
    <form class="inline" onSubmit=${submit} aria-labelledby="search-h">
      <${Field} label="Query">${(id) => html`<input id=${id} name="query" type="search" required/>`}<//>
      <${Field} label="k">${(id) => html`<input id=${id} name="k" type="number" min="1" max="100" defaultValue="5"/>`}<//>
      <${Field} label="Mode">${(id) => html`<select id=${id} name="mode"><option value="hybrid">hybrid</option><option value="dense">dense</option><option value="bm25">bm25</option></select>`}<//>
      <button type="submit" disabled=${busy}>Search</button>
    </form>
    <${Err} error=${error}/>
    ${hits && html`<p aria-live="polite">${hits.length} hit${hits.length === 1 ? '' : 's'}</p>
      <ol class="hits">${hits.map((h) => html`<li key=${h.chunk_id} class="hit">
        <div class="meta"><strong>${h.document_id}</strong> · chunk ${h.chunk_id} · score ${fmtNum(h.score)}</div>
        <p class="text">${h.text}</p>
        <${Metadata} data=${h.metadata}/>
      </li>`)}</ol>`}
  </div>`;
}

export function Metadata({ data }) {
  const entries = Object.entries(data || {});
  if (!entries.length) return null;
  return html`<dl class="metadata">${entries.map(([k, v]) => html`<dt>${k}</dt><dd>${typeof v === 'string' ? v : JSON.stringify(v)}</dd>`)}</dl>`;
}

function Documents({ corpus, onChange }) {
  const [after, setAfter] = useState([]);
  const page = useAsync(() => api(`/v1/corpora/${enc(corpus)}/documents?limit=50${after.length ? `&after=${enc(after[after.length - 1])}` : ''}`), [corpus, after]);
  const [error, setError] = useState(null);
  const remove = async (id) => {
    if (!(await confirmAction(`Delete document "${id}" from ${corpus}?`, 'Delete document'))) return;
    setError(null);
    try {
      await api(`/v1/corpora/${enc(corpus)}/documents/${id.split('/').map(enc).join('/')}`, { method: 'DELETE' });
    } catch (e) {
      setError(e);
    }
    onChange();
  };
  const docs = page.data ? page.data.data : [];
  return html`<div class="panel">
    <h4>Documents</h4>
    <${Err} error=${page.error}/><${Err} error=${error}/>
    <table class="list" aria-label=${`Documents of ${corpus}`}>
      <thead><tr><th>id</th><th>chunks</th><th>size</th><th>updated</th><th>metadata</th><th><span class="sr-only">actions</span></th></tr></thead>
      <tbody>${docs.map((d) => html`<tr key=${d.id} data-document=${d.id}>
        <td>${d.id}</td><td class="num">${d.chunks}</td><td class="num">${fmtBytes(d.bytes)}</td><td>${fmtTime(d.updated_at)}</td>
        <td><${Metadata} data=${d.metadata}/></td>
        <td><button class="danger" onClick=${() => remove(d.id)} aria-label=${`Delete document ${d.id}`}>Delete</button></td>
      </tr>`)}</tbody>
    </table>
    <div class="row">
      ${after.length > 0 && html`<button onClick=${() => setAfter(after.slice(0, -1))}>Previous page</button>`}
      ${page.data && page.data.has_more && html`<button onClick=${() => setAfter([...after, docs[docs.length - 1].id])}>Next page</button>`}
    </div>
  </div>`;
}
