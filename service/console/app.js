// The graft ops console: sign in with an admin key (kept in this tab's sessionStorage, sent as the
// Bearer header), then one section per hash route. Every call is the public API.
import { html, render, useEffect, useState } from './vendor/htm-preact-standalone.mjs';
import { ApiError, api, keyStore } from './api.js';
import { ConfirmHost, Err } from './ui.js';
import { Corpora } from './corpora.js';
import { Domains } from './domains.js';
import { Adapters } from './adapters.js';
import { Evals } from './evals.js';
import { Playground } from './playground.js';
import { Health } from './health.js';

const SECTIONS = [
  ['corpora', 'Corpora', Corpora],
  ['domains', 'Domains', Domains],
  ['adapters', 'Adapters', Adapters],
  ['evals', 'Evaluations', Evals],
  ['playground', 'Playground', Playground],
  ['health', 'Health', Health],
];

// "#domains/support" → ["domains", "support"]
function route() {
  const [section, ...rest] = location.hash.replace(/^#\/?/, '').split('/');
  const known = SECTIONS.some(([id]) => id === section);
  return [known ? section : 'corpora', rest.length ? decodeURIComponent(rest.join('/')) : null];
}

// A key is good when it may list corpora (admin scope).
async function checkKey(key) {
  keyStore.set(key);
  try {
    await api('/v1/corpora');
  } catch (error) {
    keyStore.clear();
    if (error.status === 401) throw new ApiError(401, `The gateway refused this key: ${error.message}`, error.code);
    if (error.status === 403) throw new ApiError(403, `This key cannot run the console: ${error.message}`, error.code);
    throw error;
  }
}

function SignIn({ onSignedIn, notice }) {
  const [error, setError] = useState(notice ? new Error(notice) : null);
  const [busy, setBusy] = useState(false);
  const submit = async (e) => {
    e.preventDefault();
    setBusy(true);
    setError(null);
    try {
      await checkKey(new FormData(e.target).get('key'));
      onSignedIn();
    } catch (err) {
      setError(err);
    } finally {
      setBusy(false);
    }
  };
  return html`<main id="main" class="signin">
    <h1>graft console</h1>
    <form onSubmit=${submit} aria-labelledby="signin-h">
      <h2 id="signin-h">Sign in</h2>
      <div class="field">
        <label for="key">Admin API key</label>
        <input id="key" name="key" type="password" autocomplete="off" autofocus aria-describedby="key-hint"/>
        <small id="key-hint">Kept in this tab only (sessionStorage) and sent as the Bearer header; empty for a gateway without keys.</small>
      </div>
      <button type="submit" class="primary" disabled=${busy}>Sign in</button>
      <${Err} error=${error}/>
    </form>
  </main>`;
}

function Console({ onSignOut }) {
  const [[section, sub], setRoute] = useState(route());
  useEffect(() => {
    const changed = () => setRoute(route());
    window.addEventListener('hashchange', changed);
    return () => window.removeEventListener('hashchange', changed);
  }, []);
  useEffect(() => {
    const label = SECTIONS.find(([id]) => id === section)[1];
    document.title = `${label} · graft console`;
  }, [section]);
  const Section = SECTIONS.find(([id]) => id === section)[2];
  return html`
    <a class="skip" href="#main" onClick=${(e) => { e.preventDefault(); document.getElementById('main').focus(); }}>Skip to content</a>
    <header>
      <strong class="brand">graft</strong>
      <nav aria-label="Sections"><ul>
        ${SECTIONS.map(([id, label]) => html`<li><a href=${`#${id}`} aria-current=${id === section ? 'page' : undefined}>${label}</a></li>`)}
      </ul></nav>
      <button onClick=${onSignOut}>Sign out</button>
    </header>
    <main id="main" tabindex="-1"><${Section} key=${section} sub=${sub}/></main>
    <footer><a href="/console/static/vendor/VENDOR.md">Third-party licences</a></footer>`;
}

function App() {
  const [signedIn, setSignedIn] = useState(keyStore.get() !== null);
  const [notice, setNotice] = useState(null);
  useEffect(() => {
    const lost = (e) => { keyStore.clear(); setNotice(`Signed out: ${e.detail}`); setSignedIn(false); };
    window.addEventListener('graft:unauthorized', lost);
    return () => window.removeEventListener('graft:unauthorized', lost);
  }, []);
  const signOut = () => { keyStore.clear(); setNotice(null); setSignedIn(false); };
  return html`${signedIn ? html`<${Console} onSignOut=${signOut}/>` : html`<${SignIn} notice=${notice} onSignedIn=${() => setSignedIn(true)}/>`}
    <${ConfirmHost}/>`;
}

render(html`<${App}/>`, document.getElementById('app'));
performance.mark('graft-console-rendered');
