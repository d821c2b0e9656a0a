import { lazy, Suspense, useCallback, useEffect, useState, type ReactNode } from 'react';
import { API, ApiError, getToken, onConnectionProblem, setToken, whoAmI, type Me } from './api';
import { Link } from './components/Link';
import { Notice } from './components/Status';
import { Admin } from './pages/Admin';
import { Datasets } from './pages/Datasets';
import { JobPage } from './pages/Job';
import { Jobs } from './pages/Jobs';
import { LiveStreams } from './pages/LiveStreams';
import { Login } from './pages/Login';
import { PipelineForm } from './pages/PipelineForm';
import { Pipelines } from './pages/Pipelines';
import { Topology } from './pages/Topology';
import { match, navigate, useRoute } from './router';
import { SessionContext } from './session';

// h5web and three.js are most of the bundle: loaded only when a file is opened
const Viewer = lazy(() => import('./pages/Viewer'));

const NAV = [
  { href: '/jobs', label: 'Jobs' },
  { href: '/data', label: 'Datasets' },
  { href: '/pipelines', label: 'Pipelines' },
  { href: '/live', label: 'Live streams' },
  { href: '/topology', label: 'Topology' },
];

/** Polls /health while the service does not answer; the banner goes when it answers again. */
function useServerGone(): ApiError | null {
  const [gone, setGone] = useState<ApiError | null>(null);
  useEffect(() => onConnectionProblem((error) => setGone(error?.unreachable ? error : null)), []);
  useEffect(() => {
    if (!gone) return undefined;
    const timer = window.setInterval(async () => {
      try {
        if ((await fetch(`${API}/health`)).ok) setGone(null);
      } catch {
        // still away
      }
    }, 3000);
    return () => window.clearInterval(timer);
  }, [gone]);
  return gone;
}

function Page({ path, query }: { path: string; query: URLSearchParams }): ReactNode {
  let params: Record<string, string> | null;
  if (path === '/' || path === '/jobs') return <Jobs />;
  if ((params = match('/jobs/:id', path))) return <JobPage id={params.id} tab={query.get('tab') ?? 'live'} />;
  if (path === '/data') return <Datasets path={query.get('path') ?? ''} />;
  if (path === '/view') {
    return (
      <Suspense fallback={<p className="muted">Loading the viewer…</p>}>
        <Viewer file={query.get('file') ?? ''} />
      </Suspense>
    );
  }
  if (path === '/pipelines') return <Pipelines />;
  if ((params = match('/pipelines/:name', path))) {
    return <PipelineForm name={params.name} dataset={query.get('dataset') ?? ''} stream={query.get('stream') ?? ''} />;
  }
  if (path === '/live') return <LiveStreams />;
  if (path === '/topology') return <Topology />;
  if (path === '/admin') return <Admin />;
  return (
    <Notice kind="warn">
      There is no page {path}. <Link href="/jobs">Go to the jobs</Link>.
    </Notice>
  );
}

export function App() {
  const route = useRoute();
  const [me, setMe] = useState<Me | null>(null);
  const [checking, setChecking] = useState(() => getToken() !== null);
  const [loginReason, setLoginReason] = useState<string>();
  const gone = useServerGone();

  const logout = useCallback((reason?: string) => {
    setToken(null);
    setMe(null);
    setLoginReason(reason);
  }, []);

  // a token kept from earlier in this tab: check it once
  useEffect(() => {
    const token = getToken();
    if (!token) return;
    whoAmI(token)
      .then(setMe)
      .catch((error: ApiError) => {
        if (error.status === 401) logout(`Your token was refused: ${error.message}. Log in with a valid one.`);
      })
      .finally(() => setChecking(false));
  }, [logout]);

  // a token refused later (expired, revoked): back to the login page, saying why
  useEffect(() => onConnectionProblem((error) => {
    if (error?.status === 401) logout(`Your token was refused: ${error.message}. Log in with a valid one.`);
  }), [logout]);

  const banner = gone && (
    <div className="banner" role="alert">
      <strong>The service does not answer.</strong> It may have stopped, or the network is down. This page checks
      again every few seconds and carries on when it answers; if it lasts, ask whoever runs <code>lightpipe serve</code>.
    </div>
  );

  if (checking && !me) {
    return <>{banner}<p className="muted center">Checking your token…</p></>;
  }
  if (!me) {
    return (
      <>
        {banner}
        <Login reason={loginReason} onLogin={(token, who) => {
          setToken(token);
          setMe(who);
          setLoginReason(undefined);
          if (route.path === '/login') navigate('/jobs', true);
        }} />
      </>
    );
  }
  const nav = me.role === 'admin' ? [...NAV, { href: '/admin', label: 'Admin' }] : NAV;
  const current = (href: string) => route.path === href || route.path.startsWith(`${href}/`) ||
    (href === '/jobs' && route.path === '/') || (href === '/data' && route.path === '/view');
  return (
    <SessionContext.Provider value={{ me, logout }}>
      <a className="skip" href="#main">Skip to the page</a>
      {banner}
      <header className="top">
        <Link href="/jobs" className="brand"><span className="logo" aria-hidden="true">◆</span> lightpipe</Link>
        <nav aria-label="Pages">
          <ul>
            {nav.map((item) => (
              <li key={item.href}>
                <Link href={item.href} aria-current={current(item.href) ? 'page' : undefined}>{item.label}</Link>
              </li>
            ))}
          </ul>
        </nav>
        <div className="who">
          <span>{me.user} <span className="muted">({me.role}{me.folders.length ? `, ${me.folders.join(', ')}` : ''})</span></span>
          <button type="button" onClick={() => logout('You logged out.')}>Log out</button>
        </div>
      </header>
      <main id="main" tabIndex={-1} className={route.path === '/view' ? 'main wide' : 'main'}>
        <Page path={route.path} query={route.query} />
      </main>
    </SessionContext.Provider>
  );
}
