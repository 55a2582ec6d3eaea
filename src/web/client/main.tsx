import { render } from 'preact';
import { useEffect, useRef, useState } from 'preact/hooks';
import {
  apiKey,
  callJson,
  KEY_CHANGED_EVENT,
  type ModelSummary,
  setApiKey,
  UNAUTHORIZED_EVENT,
} from './api.js';
import { AuditView } from './audit-view.js';
import { ImageView } from './image-view.js';
import { ModelsView } from './models-view.js';

/** The page: a header with the views and the API key, and the view the URL's hash names. */

type ViewName = 'models' | 'image' | 'audit';

const VIEWS: Array<{ name: ViewName; title: string }> = [
  { name: 'models', title: 'Models' },
  { name: 'image', title: 'Look at an image' },
  { name: 'audit', title: 'Audit a model' },
];

/** #models, #image, #image/<model>, #audit, #audit/<id>. */
function parseHash(hash: string): { view: ViewName; arg: string | undefined } {
  const [name, ...rest] = hash.replace(/^#/, '').split('/');
  const view = VIEWS.find((v) => v.name === name)?.name ?? 'models';
  const arg = rest.length > 0 ? decodeURIComponent(rest.join('/')) : undefined;
  return { view, arg };
}

function KeyField() {
  const [open, setOpen] = useState(false);
  const [draft, setDraft] = useState(apiKey());
  const [saved, setSaved] = useState(apiKey() !== '');
  const input = useRef<HTMLInputElement>(null);
  useEffect(() => {
    const onUnauthorized = () => {
      setOpen(true);
      requestAnimationFrame(() => input.current?.focus());
    };
    window.addEventListener(UNAUTHORIZED_EVENT, onUnauthorized);
    return () => window.removeEventListener(UNAUTHORIZED_EVENT, onUnauthorized);
  }, []);
  return (
    <details class="key" open={open} onToggle={(e) => setOpen((e.currentTarget as HTMLDetailsElement).open)}>
      <summary>API key{saved ? ' (set)' : ''}</summary>
      <form
        onSubmit={(e) => {
          e.preventDefault();
          setApiKey(draft.trim());
          setSaved(draft.trim() !== '');
          setOpen(false);
        }}
      >
        <label for="api-key">Key, sent as a bearer token; kept in this tab only</label>
        <input
          id="api-key"
          ref={input}
          type="password"
          autocomplete="off"
          value={draft}
          onInput={(e) => setDraft((e.currentTarget as HTMLInputElement).value)}
        />
        <div class="row">
          <button type="submit">Use key</button>
          <button
            type="button"
            onClick={() => {
              setDraft('');
              setApiKey('');
              setSaved(false);
            }}
          >
            Forget key
          </button>
        </div>
      </form>
    </details>
  );
}

function App() {
  const [route, setRoute] = useState(parseHash(location.hash));
  const [models, setModels] = useState<ModelSummary[] | undefined>(undefined);
  const [modelsError, setModelsError] = useState<unknown>(undefined);
  const [keyVersion, setKeyVersion] = useState(0);
  const heading = useRef<HTMLHeadingElement>(null);
  const first = useRef(true);

  useEffect(() => {
    const onHash = () => setRoute(parseHash(location.hash));
    window.addEventListener('hashchange', onHash);
    return () => window.removeEventListener('hashchange', onHash);
  }, []);
  useEffect(() => {
    callJson<{ models: ModelSummary[] }>('/v1/models')
      .then((answer) => {
        setModels(answer.models);
        setModelsError(undefined);
      })
      .catch(setModelsError);
  }, [keyVersion]);
  useEffect(() => {
    // A view change moves the focus to its heading (not on the first load).
    if (first.current) first.current = false;
    else heading.current?.focus();
  }, [route.view]);
  useEffect(() => {
    // After a key was entered, reload what a 401 may have refused.
    const onKey = () => setKeyVersion((v) => v + 1);
    window.addEventListener(KEY_CHANGED_EVENT, onKey);
    return () => window.removeEventListener(KEY_CHANGED_EVENT, onKey);
  }, []);

  const current = VIEWS.find((v) => v.name === route.view)!;
  return (
    <>
      <header>
        <p class="brand">ratio-audit</p>
        <nav aria-label="Views">
          <ul>
            {VIEWS.map((v) => (
              <li key={v.name}>
                <a href={`#${v.name}`} aria-current={v.name === route.view ? 'page' : undefined}>
                  {v.title}
                </a>
              </li>
            ))}
            <li>
              <a href="/docs">API reference</a>
            </li>
          </ul>
        </nav>
        <KeyField />
      </header>
      <main>
        <h1 ref={heading} tabIndex={-1}>
          {current.title}
        </h1>
        {route.view === 'models' && <ModelsView models={models} error={modelsError} />}
        {route.view === 'image' && <ImageView models={models} error={modelsError} initialModel={route.arg} />}
        {route.view === 'audit' && <AuditView models={models} auditId={route.arg} />}
      </main>
    </>
  );
}

render(<App />, document.getElementById('app')!);
