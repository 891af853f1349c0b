import { useEffect, useState, useSyncExternalStore } from 'react';
import { useOccupancy, useRoom, useStatus, useWatch } from 'occupancy-client/react';

const DOCS = [
  ['1', 'Quarterly report'],
  ['2', 'Meeting notes'],
  ['3', 'Roadmap'],
];

// A router of a few lines: links change the URL without a reload, so leaving a document is an
// unmount (the hook leaves the room a moment later), not a closed page.
const subscribe = (fn) => (addEventListener('popstate', fn), () => removeEventListener('popstate', fn));
function navigate(to) {
  history.pushState(null, '', to);
  dispatchEvent(new PopStateEvent('popstate'));
}
function Link({ to, children, ...rest }) {
  const href = to + location.search;
  const go = (e) => {
    e.preventDefault();
    navigate(href);
  };
  return (
    <a href={href} onClick={go} {...rest}>
      {children}
    </a>
  );
}

export function App({ name, user }) {
  const path = useSyncExternalStore(subscribe, () => location.pathname);
  const m = /^\/document\/([^/]+)$/.exec(path);
  return m ? <DocumentPage id={decodeURIComponent(m[1])} name={name} user={user} /> : <DocumentList />;
}

function Status() {
  const status = useStatus();
  return (
    <span className={'status ' + status} data-testid="status">
      {status === 'open' ? 'live' : status === 'reconnecting' ? 'connection lost, reconnecting…' : status + '…'}
    </span>
  );
}

const label = (p) => p?.meta?.name || p?.id || '?';

/** Every document with who is editing it, watched live (without standing in any line). */
function DocumentList() {
  const views = useWatch(DOCS.map(([id]) => `document-${id}`));
  return (
    <main>
      <h1>
        Documents <Status />
      </h1>
      <ul data-testid="documents">
        {DOCS.map(([id, title]) => {
          const v = views[`document-${id}`];
          return (
            <li key={id} className={v?.stale ? 'stale' : undefined}>
              <Link to={`/document/${id}`} data-testid={`open-${id}`}>
                {title}
              </Link>{' '}
              <span className={v?.holder ? 'busy' : undefined} data-testid={`state-${id}`}>
                {!v ? '…' : v.holder ? `${label(v.holder)} is editing${v.waiting ? `, ${v.waiting} waiting` : ''}` : 'free'}
              </span>
            </li>
          );
        })}
      </ul>
    </main>
  );
}

const clock = (ms) => new Date(ms).toLocaleTimeString([], { hour: '2-digit', minute: '2-digit' });
const lostIt = ({ by, reason }) =>
  reason === 'idle'
    ? `You were idle, so ${label(by)} got the document.`
    : reason === 'server'
      ? `An administrator released the document; ${label(by)} has it now.`
      : `${label(by)} took the document over from you.`;
const activeMs = Number(new URLSearchParams(location.search).get('active_ms')) || 10000;

/** One document: who holds it, your place, who waits, Take over; editable only while you hold it. */
function DocumentPage({ id, name, user }) {
  const room = `document-${id}`;
  const occupancy = useOccupancy();
  // Stand in line while this page is shown; tell the server you are active when you type.
  const { view, holding, stale, error, takeover } = useRoom(room, { meta: { name }, active: activeMs });
  const [lost, setLost] = useState(null);
  useEffect(() => occupancy.on('displaced', (ev) => ev.room === room && setLost(ev)), [occupancy, room]);
  useEffect(() => {
    // For the browser test: StrictMode mounts this page twice in development.
    window.mounts = (window.mounts || 0) + 1;
  }, []);
  // "Carl took over" is shown while it is still true.
  const shownLost = lost && !holding && view?.holder?.id === lost.by.id ? lost : null;
  const myId = user || `~${occupancy.session}`;

  let position;
  if (error) position = ['', `Could not join: ${error.message}`];
  else if (stale) position = ['stale', 'Connection lost — reconnecting…'];
  else if (holding) position = ['holding', 'You hold this document.'];
  else position = ['waiting', `You are #${view.position} in line.`];
  const since = view?.held_since ? ` since ${clock(view.held_since)}` : '';
  const holder = !view
    ? ''
    : stale
      ? view.holder && `Last known: held by ${label(view.holder)}.`
      : !view.holder
        ? 'Nobody holds it.'
        : holding
          ? `Held by you (${label(view.holder)})${since}.`
          : `Held by ${label(view.holder)}${since}.`;
  const waiting = (view?.occupants || []).slice(1);
  const more = (view?.waiting || 0) - waiting.length;

  return (
    <main>
      <p>
        <Link to="/" data-testid="back">
          ← All documents
        </Link>{' '}
        <Status />
      </p>
      <h1>Document {id}</h1>
      <p className="note">
        You appear to the others as <strong data-testid="me">{name}</strong>.
      </p>
      {shownLost && (
        <p className="banner" data-testid="banner">
          {lostIt(shownLost)}
        </p>
      )}
      <p className={'position ' + position[0]} data-testid="position">
        {position[1]}
      </p>
      <p data-testid="holder">{holder}</p>
      {!holding && !stale && view?.position ? (
        <p>
          <button data-testid="takeover" onClick={() => takeover().catch((e) => alert(e.message))}>
            Take over
          </button>
        </p>
      ) : null}
      <textarea
        data-testid="editor"
        disabled={!holding}
        placeholder={
          holding
            ? 'Type here: you hold the document.'
            : stale
              ? 'Connection lost: editing resumes once the server confirms your place.'
              : 'Only the person who holds the document can type here.'
        }
      />
      <h2>Waiting</h2>
      <ol data-testid="queue">
        {waiting.map((p) => (
          <li key={p.id} className={p.id === myId ? 'me' : undefined}>
            {label(p) + (p.id === myId ? ' (you)' : '')}
          </li>
        ))}
      </ol>
      <p className="note">{more > 0 ? `… and ${more} more waiting` : view?.waiting ? '' : 'Nobody is waiting.'}</p>
    </main>
  );
}
