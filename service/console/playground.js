// Playground: a chat against any domain with streamed tokens; each answer's cited passages beside
// it, and a click on one shows the chunk.
import { html, useRef, useState } from './vendor/htm-preact-standalone.mjs';
import { api, fmtNum, streamEvents } from './api.js';
import { Err, Field, useAsync } from './ui.js';
import { Metadata } from './corpora.js';

export function Playground() {
  const models = useAsync(() => api('/v1/models').then((r) => r.data), []);
  const [turns, setTurns] = useState([]); // {role, content, citations?, adapter?, error?}
  const [busy, setBusy] = useState(false);
  const [shown, setShown] = useState(null); // the citation whose chunk is open
  const [error, setError] = useState(null);
  const abort = useRef(null);
  const form = useRef(null);

  const send = async (e) => {
    e.preventDefault();
    const f = new FormData(form.current);
    const question = (f.get('message') || '').trim();
    if (!question || busy) return;
    const history = [...turns, { role: 'user', content: question }];
    const body = { model: f.get('model'), stream: true, max_tokens: Number(f.get('max_tokens')),
      temperature: Number(f.get('temperature')), messages: history.map((t) => ({ role: t.role, content: t.content })) };
    if (f.get('no_retrieval')) body.retrieval = false;
    else if (f.get('k')) body.retrieval = { k: Number(f.get('k')), mode: f.get('mode') };
    form.current.elements.message.value = '';
    setError(null);
    setBusy(true);
    let answer = { role: 'assistant', content: '', citations: [], adapter: null, streaming: true };
    setTurns([...history, answer]);
    abort.current = new AbortController();
    try {
      for await (const event of streamEvents('/v1/chat/completions', body, abort.current.signal)) {
        if (event.error) throw Object.assign(new Error(event.error.message), { code: event.error.code });
        const delta = event.choices && event.choices[0] && event.choices[0].delta;
        answer = { ...answer, content: answer.content + ((delta && delta.content) || ''),
          citations: event.citations || answer.citations, adapter: event.adapter || answer.adapter };
        setTurns([...history, answer]);
      }
    } catch (err) {
      if (err.name !== 'AbortError') {
        setError(err);
        answer = { ...answer, error: true };
      }
    } finally {
      answer = { ...answer, streaming: false };
      setTurns([...history, answer]);
      setBusy(false);
      abort.current = null;
    }
  };
  const keydown = (e) => { // Enter sends, Shift+Enter starts a new line
    if (e.key === 'Enter' && !e.shiftKey) { e.preventDefault(); form.current.requestSubmit(); }
  };
  const ids = (models.data || []).map((m) => m.id);
  return html`<section aria-labelledby="playground-h">
    <h2 id="playground-h">Playground</h2>
    <${Err} error=${models.error}/>
    <div class="chat-layout">
      <div class="chat">
        <ol class="turns" aria-label="Conversation">
          ${turns.map((t, i) => html`<li key=${i} class=${`turn ${t.role}`} aria-busy=${t.streaming ? 'true' : 'false'}>
            <div class="who">${t.role === 'user' ? 'You' : `Answer${t.adapter ? ` (${t.adapter})` : ''}`}</div>
            <div class="pre content" aria-live=${t.role === 'assistant' ? 'polite' : undefined}>${t.content}${t.streaming ? '▍' : ''}</div>
            ${t.citations && t.citations.length > 0 && html`<ul class="citations" aria-label="Cited passages">
              ${t.citations.map((c) => html`<li><button type="button" class="citation" aria-pressed=${shown === c}
                onClick=${() => setShown(shown === c ? null : c)}>[${c.index}] ${c.document_id}</button></li>`)}</ul>`}
          </li>`)}
        </ol>
        <${Err} error=${error}/>
        <form ref=${form} class="grid" onSubmit=${send} aria-label="Ask">
          <${Field} label="Domain">${(id) => html`<select id=${id} name="model">${ids.map((m) => html`<option value=${m}>${m}</option>`)}</select>`}<//>
          <${Field} label="Max tokens">${(id) => html`<input id=${id} name="max_tokens" type="number" min="1" defaultValue="64"/>`}<//>
          <${Field} label="Temperature">${(id) => html`<input id=${id} name="temperature" type="number" step="0.1" min="0" max="2" defaultValue="0"/>`}<//>
          <${Field} label="Passages (k)" hint="blank: the domain's">${(id) => html`<input id=${id} name="k" type="number" min="0" max="100"/>`}<//>
          <${Field} label="Mode">${(id) => html`<select id=${id} name="mode"><option value="hybrid">hybrid</option><option value="dense">dense</option><option value="bm25">bm25</option></select>`}<//>
          <div class="field check"><input id="chat-closed-book" name="no_retrieval" type="checkbox"/><label for="chat-closed-book">no retrieval</label></div>
          <div class="field wide">
            <label for="chat-message">Message</label>
            <textarea id="chat-message" name="message" rows="3" onKeyDown=${keydown} aria-describedby="chat-hint"></textarea>
            <small id="chat-hint">Enter sends, Shift+Enter adds a line.</small>
          </div>
          <div class="row">
            <button type="submit" class="primary" disabled=${busy}>Send</button>
            ${busy && html`<button type="button" onClick=${() => abort.current && abort.current.abort()}>Stop</button>`}
            <button type="button" onClick=${() => { setTurns([]); setShown(null); }} disabled=${busy}>Clear</button>
          </div>
        </form>
      </div>
      <aside class="passage panel" aria-labelledby="passage-h" aria-live="polite">
        <h3 id="passage-h">Cited passage</h3>
        ${shown ? html`<div class="chunk" data-chunk=${shown.chunk_id}>
          <p class="meta">[${shown.index}] <strong>${shown.document_id}</strong> · corpus ${shown.corpus} · chunk ${shown.chunk_id} · score ${fmtNum(shown.score)}</p>
          <p class="text pre">${shown.text}</p>
          <${Metadata} data=${shown.metadata}/>
        </div>` : html`<p class="empty">Click a citation under an answer to read the chunk.</p>`}
      </aside>
    </div>
  </section>`;
}
