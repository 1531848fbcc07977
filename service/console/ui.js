// Pieces every section uses: loading data, errors, confirmation, job progress, charts.
import { html, useCallback, useEffect, useRef, useState } from './vendor/htm-preact-standalone.mjs';
import { api } from './api.js';

// Load something from the API; `reload` runs the loader again (after every change the page makes).
export function useAsync(loader, deps) {
  const [state, setState] = useState({ data: null, error: null, loading: true });
  const generation = useRef(0);
  const reload = useCallback(async () => {
    const mine = ++generation.current;
    setState((s) => ({ ...s, loading: true }));
    try {
      const data = await loader();
      if (mine === generation.current) setState({ data, error: null, loading: false });
    } catch (error) {
      if (mine === generation.current) setState((s) => ({ data: s.data, error, loading: false }));
    }
  }, deps);
  useEffect(() => { reload(); }, [reload]);
  return { ...state, reload };
}

export function Err({ error }) {
  if (!error) return null;
  const text = error.message || String(error);
  const code = error.code ? ` (${error.code})` : '';
  return html`<p class="error" role="alert">${text}${code}</p>`;
}

// A modal confirmation (native <dialog>: focus starts on Cancel and stays in it, Esc cancels). One
// host at the root.
let openConfirm = null;
export function confirmAction(message, okLabel = 'Confirm') {
  return openConfirm ? openConfirm(message, okLabel) : Promise.resolve(window.confirm(message));
}

export function ConfirmHost() {
  const dialog = useRef(null);
  const [ask, setAsk] = useState(null);
  useEffect(() => {
    openConfirm = (message, okLabel) => new Promise((resolve) => setAsk({ message, okLabel, resolve }));
    return () => { openConfirm = null; };
  }, []);
  useEffect(() => {
    const d = dialog.current;
    if (ask && d && !d.open) d.showModal();
  }, [ask]);
  const close = (answer) => {
    if (dialog.current && dialog.current.open) dialog.current.close();
    if (ask) ask.resolve(answer);
    setAsk(null);
  };
  return html`<dialog ref=${dialog} class="confirm" aria-labelledby="confirm-text"
      onCancel=${(e) => { e.preventDefault(); close(false); }}>
    <form method="dialog" onSubmit=${(e) => { e.preventDefault(); close(true); }}>
      <p id="confirm-text">${ask ? ask.message : ''}</p>
      <div class="row">
        <button type="button" onClick=${() => close(false)} autofocus>Cancel</button>
        <button type="submit" class="primary">${ask ? ask.okLabel : 'Confirm'}</button>
      </div>
    </form>
  </dialog>`;
}

const FINISHED = new Set(['succeeded', 'failed', 'cancelled']);
export const isFinished = (job) => job && FINISHED.has(job.status);

// Follow a job until it finishes; `onEvent(job)` sees every poll, `onDone(job)` the last one.
export function useJob(jobId, { onDone, onEvent, intervalMs = 500 } = {}) {
  const [job, setJob] = useState(null);
  const [error, setError] = useState(null);
  const callbacks = useRef({});
  callbacks.current = { onDone, onEvent };
  useEffect(() => {
    if (!jobId) return undefined;
    let stopped = false;
    let timer = null;
    setJob(null);
    setError(null);
    const poll = async () => {
      try {
        const current = await api(`/v1/jobs/${encodeURIComponent(jobId)}`);
        if (stopped) return;
        setJob(current);
        setError(null);
        if (callbacks.current.onEvent) callbacks.current.onEvent(current);
        if (isFinished(current)) {
          if (callbacks.current.onDone) callbacks.current.onDone(current);
          return;
        }
      } catch (e) {
        if (stopped) return;
        setError(e);
        if (e.status === 404 || e.status === 401) return;
      }
      timer = setTimeout(poll, intervalMs);
    };
    poll();
    return () => { stopped = true; clearTimeout(timer); };
  }, [jobId]);
  return { job, error };
}

function progressOf(job) {
  const p = job.progress || {};
  if (p.documents_total != null) {
    const text = `${p.documents_done} of ${p.documents_total} documents, ${p.chunks_done} of ${p.chunks_total ?? '?'} chunks`;
    const total = (p.chunks_total || 0) + p.documents_total;
    return { value: (p.chunks_done || 0) + p.documents_done, max: total || 1, text };
  }
  if (p.total != null) return { value: p.done, max: p.total || 1, text: `${p.done} of ${p.total} questions` };
  if (p.steps) {
    const loss = p.loss != null ? `, loss ${Number(p.loss).toFixed(4)}` : '';
    const eta = p.eta_s != null ? `, about ${Math.round(p.eta_s)} s left` : '';
    return { value: p.step || 0, max: p.steps, text: `${p.stage}: step ${p.step} of ${p.steps}${loss}${eta}` };
  }
  return { value: null, max: 1, text: p.stage ? `stage: ${p.stage}` : '' };
}

// A job's progress bar, status and per-file errors; announced to screen readers as it changes.
export function JobProgress({ job, error, label = 'Job' }) {
  if (!job) {
    return html`<div class="job" aria-live="polite">${error ? html`<${Err} error=${error}/>` : `${label}: starting…`}</div>`;
  }
  const done = job.status === 'succeeded' ? 1 : 0;
  const p = progressOf(job);
  const value = isFinished(job) ? (done ? p.max : p.value) : p.value;
  return html`<div class="job" data-job=${job.id} data-status=${job.status}>
    <div aria-live="polite" role="status">
      <span class=${`status status-${job.status}`}>${label} ${job.status}</span>
      ${p.text && html` · <span class="job-text">${p.text}</span>`}
    </div>
    <progress max=${p.max} value=${value == null ? undefined : value} aria-label=${`${label} progress`}></progress>
    ${job.reason && html`<p class="error" role="alert">${job.reason}</p>`}
    ${job.errors && job.errors.length > 0 && html`<ul class="file-errors" role="alert" aria-label="Per-file errors">
      ${job.errors.map((e) => html`<li><strong>${e.file || e.document_id || 'item'}</strong>: ${e.error || e.message || JSON.stringify(e)}</li>`)}
    </ul>`}
    <${Err} error=${error}/>
  </div>`;
}

// The x range from the data itself: uPlot widens a single point (or all at one x) to a thousand
// days of time axis; pad it by a little instead.
const padded = (pad) => (u) => {
  const xs = u.data[0] || [];
  if (!xs.length) return [0, 1];
  const lo = Math.min(...xs);
  const hi = Math.max(...xs);
  return lo === hi ? [lo - pad, hi + pad] : [lo, hi];
};

// Every chart here counts something non-negative (rates, milliseconds, scores, losses).
const fromZero = (u, min, max) => [Math.min(0, min ?? 0), max > 0 ? max * 1.1 : 1];

// A uPlot line chart. `data` is [[x...], [y1...], ...]; `series` names each y; x is unix seconds
// unless `xLabel` says otherwise.

export function Chart({ title, data, series, height = 200, xLabel = null }) {
  const box = useRef(null);
  const plot = useRef(null);
  const shape = JSON.stringify([series, xLabel]);
  useEffect(() => {
    if (!window.uPlot || !box.current) return undefined;
    const colors = ['#2563eb', '#dc2626', '#16a34a', '#9333ea', '#ea580c', '#0891b2', '#4b5563'];
    const width = Math.max(280, Math.min(box.current.clientWidth || 600, 900));
    plot.current = new window.uPlot({
      width, height,
      scales: { x: { time: !xLabel, range: padded(xLabel ? 1 : 30) }, y: { range: fromZero } },
      axes: [{ label: xLabel || undefined }, {}],
      series: [{ label: xLabel || 'time' }, ...series.map((label, i) => ({ label, stroke: colors[i % colors.length], width: 2, points: { show: true } }))],
    }, data, box.current);
    return () => { plot.current.destroy(); plot.current = null; };
  }, [shape]);
  useEffect(() => { if (plot.current) plot.current.setData(data); }, [data]);
  const points = data[0] ? data[0].length : 0;
  return html`<figure class="chart">
    <figcaption>${title}</figcaption>
    <div ref=${box} role="img" aria-label=${`${title}: ${points} points of ${series.join(', ')}`}></div>
  </figure>`;
}

// A labelled form field: <label> tied to its control by id.
let fieldCount = 0;
export function Field({ label, children, hint }) {
  const id = useRef(`f${++fieldCount}`).current;
  const control = typeof children === 'function' ? children(id) : children;
  return html`<div class="field"><label for=${id}>${label}</label>${control}${hint && html`<small>${hint}</small>`}</div>`;
}
