import { useCallback, useEffect, useRef, useState } from 'react';
import { api, ApiError, download, FINAL_STATES, post, type Chunk, type FailedEvent, type Job, type JobFile,
  type LogLine, type Scan } from '../api';
import { Link } from '../components/Link';
import { LiveView } from '../components/LiveView';
import { ErrorNotice, Meter, Notice, StateBadge } from '../components/Status';
import { WeatherPlot } from '../components/Weather';
import { bytes, count, percent, rate, seconds, when } from '../format';
import { useLoad } from '../hooks';
import { navigate } from '../router';
import { progressFraction } from './Jobs';

const TABS = [
  { id: 'live', label: 'Progress and live view' },
  { id: 'results', label: 'Results' },
  { id: 'weather', label: 'Weather plot' },
  { id: 'log', label: 'Log' },
  { id: 'yaml', label: 'Pipeline' },
];
const RESULT_SUFFIXES = ['.nxs', '.h5', '.cxi'];

function Actions({ job, onDone }: { job: Job; onDone: () => void }) {
  const [message, setMessage] = useState<{ kind: 'ok' | 'error'; text: string }>();
  const act = async (what: 'abort' | 'cancel') => {
    const question = what === 'cancel'
      ? 'Cancel this job? Its current scan is aborted (what was processed is kept) and no further scan starts.'
      : 'Abort the current scan? It closes as aborted, with what was processed kept; a live job goes on to its next series.';
    if (!window.confirm(question)) return;
    try {
      const answer = await post<{ scan?: string; state?: string }>(`/jobs/${job.id}/${what}`, { reason: `${what} from the web UI` });
      setMessage({ kind: 'ok', text: what === 'abort' ? `Scan ${answer.scan ?? ''} is being aborted.` : `Cancel requested (job ${answer.state}).` });
      onDone();
    } catch (caught) {
      setMessage({ kind: 'error', text: caught instanceof ApiError ? caught.message : String(caught) });
    }
  };
  const running = job.state === 'running';
  if (FINAL_STATES.has(job.state) && !message) return null;  // nothing left to stop
  return (
    <div className="actions">
      <button type="button" disabled={!running} onClick={() => act('abort')}>Abort current scan</button>
      <button type="button" className="danger" disabled={FINAL_STATES.has(job.state) || job.cancel_requested} onClick={() => act('cancel')}>
        {job.cancel_requested && !FINAL_STATES.has(job.state) ? 'Cancelling…' : job.dataset.includes('://') ? 'Stop live job' : 'Cancel job'}
      </button>
      {message && <Notice kind={message.kind}>{message.text}</Notice>}
    </div>
  );
}

function Summary({ job }: { job: Job }) {
  const p = job.progress;
  return (
    <div className="summary card">
      <dl className="figures wide">
        <dt>Received</dt><dd>{count(p.received)}</dd>
        <dt>Written</dt><dd>{count(p.written)}</dd>
        <dt>Failed</dt><dd className={p.failed ? 'bad' : ''}>{count(p.failed)}</dd>
        <dt>In flight</dt><dd>{count(p.in_flight)}</dd>
        <dt>Rate</dt><dd>{rate(p.rate)}</dd>
        <dt>Lag</dt><dd>{seconds(p.lag_s)}</dd>
        <dt>Buffer fill</dt><dd><Meter value={p.buffer_fill} label="buffer fill" /> {percent(p.buffer_fill)}</dd>
        <dt>Heartbeat</dt><dd>{job.heartbeat_age_s === null ? '–' : `${seconds(job.heartbeat_age_s)} ago`}</dd>
        <dt>Scan</dt><dd>{p.scan || '–'}{p.total ? <span className="muted"> ({count(p.total)} data events)</span> : ''}</dd>
      </dl>
      <Meter value={progressFraction(job)} label="progress" tone="progress" />
    </div>
  );
}

function Results({ job }: { job: Job }) {
  const live = !FINAL_STATES.has(job.state);
  const scans = useLoad(() => api<Scan[]>(`/jobs/${job.id}/scans`), [job.id], live ? 2000 : undefined);
  const files = useLoad(() => api<JobFile[]>(`/jobs/${job.id}/files`), [job.id], live ? 2000 : undefined);
  const failed = useLoad(() => api<{ items: FailedEvent[]; total: number }>(`/jobs/${job.id}/failed?limit=200`), [job.id],
    live ? 3000 : undefined);
  const [downloadError, setDownloadError] = useState<string>();
  return (
    <>
      <h2>Scans</h2>
      <ErrorNotice error={scans.error} what="the scans" />
      {scans.data?.length === 0 && <p className="muted">No scan has started yet.</p>}
      {!!scans.data?.length && (
        <table className="table">
          <thead><tr><th scope="col">Scan</th><th scope="col">State</th><th scope="col">Received</th><th scope="col">Written</th><th scope="col">Failed</th><th scope="col">Time</th></tr></thead>
          <tbody>
            {scans.data.map((s) => (
              <tr key={s.name}>
                <td>{s.name}</td><td><StateBadge state={s.state} />{s.error && <div className="bad small">{s.error}</div>}</td>
                <td>{count(s.received)}</td><td>{count(s.written)}</td><td className={s.failed ? 'bad' : ''}>{count(s.failed)}</td>
                <td>{seconds(s.seconds)}</td>
              </tr>
            ))}
          </tbody>
        </table>
      )}
      <h2>Files</h2>
      <ErrorNotice error={files.error} what="the files" />
      {downloadError && <Notice kind="error">The download failed: {downloadError}</Notice>}
      {files.data?.length === 0 && <p className="muted">No file yet.</p>}
      {!!files.data?.length && (
        <table className="table">
          <thead><tr><th scope="col">File</th><th scope="col">Scan</th><th scope="col">Size</th><th scope="col"><span className="sr-only">Actions</span></th></tr></thead>
          <tbody>
            {files.data.map((f) => (
              <tr key={f.path}>
                <td className="path">{f.path}{f.partial && <span className="badge state-running">being written</span>}</td>
                <td>{f.scan ?? ''}</td>
                <td>{bytes(f.bytes)}</td>
                <td className="actions">
                  {RESULT_SUFFIXES.some((s) => f.path.endsWith(s)) && (
                    <Link className="button" href={`/view?file=${encodeURIComponent(f.viewer)}`}>Open in viewer</Link>
                  )}
                  <button type="button" onClick={() => download(job.id, f.path).catch((e: Error) => setDownloadError(e.message))}>Download</button>
                </td>
              </tr>
            ))}
          </tbody>
        </table>
      )}
      <h2>Failed events {failed.data ? <span className="muted small">({count(failed.data.total)})</span> : null}</h2>
      <ErrorNotice error={failed.error} what="the failed events" />
      {failed.data?.total === 0 && <p className="muted">None: every event received was written.</p>}
      {!!failed.data?.items.length && (
        <table className="table">
          <thead><tr><th scope="col">Scan</th><th scope="col">Event</th><th scope="col">Stream</th><th scope="col">Stage</th><th scope="col">Message</th></tr></thead>
          <tbody>
            {failed.data.items.map((f) => (
              <tr key={`${f.scan}-${f.index}-${f.stage}`} className="failed-row">
                <td>{f.scan}</td><td>{f.index}</td><td>{f.stream}</td><td>{f.stage}</td><td>{f.message}</td>
              </tr>
            ))}
          </tbody>
        </table>
      )}
    </>
  );
}

function Weather({ job }: { job: Job }) {
  const [chunks, setChunks] = useState<Chunk[]>([]);
  const [error, setError] = useState<ApiError>();
  const after = useRef(0);
  const live = !FINAL_STATES.has(job.state);
  useEffect(() => {
    let alive = true;
    let timer: number | undefined;
    const load = async () => {
      try {
        for (;;) {
          const page = await api<{ items: Chunk[]; next: number }>(`/jobs/${job.id}/chunks?after=${after.current}&limit=5000`);
          if (!alive) return;
          after.current = page.next;
          if (page.items.length) setChunks((c) => [...c, ...page.items]);
          if (page.items.length < 5000) break;
        }
        setError(undefined);
      } catch (caught) {
        if (alive && caught instanceof ApiError) setError(caught);
      }
      if (alive && live) timer = window.setTimeout(load, 2000);
    };
    load();
    return () => {
      alive = false;
      window.clearTimeout(timer);
    };
  }, [job.id, live]);
  return (
    <>
      <p className="muted">
        One row per worker, one mark per chunk of events from its start to its end, split into the time each stage took
        (hover a mark for its figures). Gaps are workers waiting; long marks are slow chunks; red is failure.
      </p>
      <ErrorNotice error={error} what="the chunk records" />
      <WeatherPlot chunks={chunks} />
    </>
  );
}

function Log({ job }: { job: Job }) {
  const [lines, setLines] = useState<LogLine[]>([]);
  const [components, setComponents] = useState<string[]>([]);
  const [component, setComponent] = useState('');
  const [error, setError] = useState<ApiError>();
  const live = !FINAL_STATES.has(job.state);
  useEffect(() => {
    let alive = true;
    let after = 0;
    let timer: number | undefined;
    setLines([]);
    const load = async () => {
      try {
        const page = await api<{ lines: LogLine[]; next: number; components: string[] }>(
          `/jobs/${job.id}/log?after=${after}&limit=1000${component ? `&component=${encodeURIComponent(component)}` : ''}`);
        if (!alive) return;
        after = page.next;
        setComponents(page.components);
        if (page.lines.length) setLines((l) => [...l, ...page.lines]);
        setError(undefined);
        if (page.lines.length === 1000) {
          load();
          return;
        }
      } catch (caught) {
        if (alive && caught instanceof ApiError) setError(caught);
      }
      if (alive && live) timer = window.setTimeout(load, 1500);
    };
    load();
    return () => {
      alive = false;
      window.clearTimeout(timer);
    };
  }, [job.id, component, live]);
  return (
    <>
      <label>
        Component{' '}
        <select value={component} onChange={(e) => setComponent(e.target.value)}>
          <option value="">all</option>
          {components.map((c) => <option key={c}>{c}</option>)}
        </select>
      </label>
      <ErrorNotice error={error} what="the log" />
      <div className="log" role="log" aria-label="Job log" tabIndex={0}>
        {lines.length === 0 && <p className="muted">No line yet.</p>}
        {lines.map((l) => (
          <div key={l.id} className={`log-line level-${l.level}`}>
            <span className="muted">{l.time.slice(11, 19)}</span> <span className="level">{l.level}</span>{' '}
            <span className="component">{l.component}</span> {l.message}
          </div>
        ))}
      </div>
    </>
  );
}

/** One job: its state and actions, then tabs for the live view, results, weather plot, log and exact pipeline. */
export function JobPage({ id, tab }: { id: string; tab: string }) {
  const [ended, setEnded] = useState(false);
  const { data: job, error, reload } = useLoad(() => api<Job>(`/jobs/${id}`), [id], ended ? 3000 : 1000);
  const onEnded = useCallback(() => setEnded(true), []);
  useEffect(() => {
    if (ended) reload();
  }, [ended, reload]);
  if (error && !job) {
    return (
      <>
        <h1>Job {id}</h1>
        <ErrorNotice error={error} what="this job" />
        <Link href="/jobs">All jobs</Link>
      </>
    );
  }
  if (!job) return <p className="muted">Loading job {id}…</p>;
  const final = FINAL_STATES.has(job.state);
  return (
    <>
      <div className="page-head">
        <h1>{job.pipeline} <span className="muted small">v{job.version}</span></h1>
        <StateBadge state={job.state} />
        <span className="spacer" />
        <Actions job={job} onDone={reload} />
      </div>
      <p className="muted">
        Job <span className="mono">{job.id}</span> on <span className="path">{job.dataset}</span> by {job.owner}; created {when(job.created)}
        {job.started && `, started ${when(job.started)}`}{job.finished && `, ended ${when(job.finished)}`}.
        {Object.keys(job.overrides).length > 0 && ` Changed: ${Object.entries(job.overrides).map(([k, v]) => `${k} = ${JSON.stringify(v)}`).join(', ')}.`}
      </p>
      {job.state === 'failed' && (
        <Notice kind="error">This job failed: {job.error || 'no reason recorded'}. The Log tab has the details; what was processed before the failure is in Results.</Notice>
      )}
      {job.state === 'interrupted' && <Notice kind="warn">This job was interrupted (the service stopped while it ran). {job.error}</Notice>}
      {job.state === 'queued' && <Notice>Waiting for a free slot: the service runs a limited number of jobs at once.</Notice>}
      <Summary job={job} />
      <div className="tabs" role="tablist" aria-label="Job views">
        {TABS.map((t) => (
          <button key={t.id} type="button" role="tab" aria-selected={tab === t.id} id={`tab-${t.id}`}
            aria-controls={`panel-${t.id}`} className={tab === t.id ? 'tab active' : 'tab'}
            onClick={() => navigate(`/jobs/${job.id}?tab=${t.id}`, true)}>{t.label}</button>
        ))}
      </div>
      <div role="tabpanel" id={`panel-${tab}`} aria-labelledby={`tab-${tab}`} className="tab-panel">
        {tab === 'live' && (final && !ended
          ? <><Notice>This job has ended; its results are under Results. The live view shows what it last sent, if the service still keeps it.</Notice><LiveView jobId={job.id} running={false} onEnded={onEnded} /></>
          : <LiveView jobId={job.id} running={!final} onEnded={onEnded} />)}
        {tab === 'results' && <Results job={job} />}
        {tab === 'weather' && <Weather job={job} />}
        {tab === 'log' && <Log job={job} />}
        {tab === 'yaml' && (
          <>
            <p className="muted">The exact pipeline this job runs (template, your changes and the dataset's source), and the engine.</p>
            <pre className="code">{job.yaml}</pre>
            <p className="muted small">Engine: {job.engine?.name} {job.engine && JSON.stringify(job.engine.options)}</p>
          </>
        )}
      </div>
    </>
  );
}
