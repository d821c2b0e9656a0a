import { useState } from 'react';
import { api, type Job, type Page } from '../api';
import { Link } from '../components/Link';
import { ErrorNotice, Meter, StateBadge } from '../components/Status';
import { count, when } from '../format';
import { useLoad } from '../hooks';
import { useSession } from '../session';

const STATES = ['queued', 'running', 'completed', 'failed', 'cancelled', 'interrupted'];
const PAGE = 25;

export function progressFraction(job: Job): number {
  // total counts a scan's data events; written also counts its darks and flats, hence the cap
  const p = job.progress;
  if (job.state === 'completed') return 1;
  return p.total > 0 ? Math.min(1, (p.written + p.failed) / p.total) : 0;
}

/** Every job the token may see, newest first, refreshed every two seconds. */
export function Jobs() {
  const { me } = useSession();
  const [state, setState] = useState('');
  const [offset, setOffset] = useState(0);
  const query = `/jobs?limit=${PAGE}&offset=${offset}${state ? `&state=${state}` : ''}`;
  const { data, error } = useLoad(() => api<Page<Job>>(query), [query], 2000);
  return (
    <>
      <div className="page-head">
        <h1>Jobs</h1>
        <label>
          State{' '}
          <select value={state} onChange={(e) => { setState(e.target.value); setOffset(0); }}>
            <option value="">any</option>
            {STATES.map((s) => <option key={s}>{s}</option>)}
          </select>
        </label>
        <span className="spacer" />
        <Link className="button primary" href="/pipelines">New job…</Link>
      </div>
      <ErrorNotice error={error} what="the jobs" />
      {data && data.items.length === 0 && (
        <p className="muted">No job {state ? `in state ${state}` : 'yet'}. <Link href="/pipelines">Submit one</Link> from a pipeline.</p>
      )}
      {data && data.items.length > 0 && (
        <table className="table">
          <thead>
            <tr>
              <th scope="col">Job</th><th scope="col">Pipeline</th><th scope="col">Dataset or stream</th>
              {me.role === 'admin' && <th scope="col">Owner</th>}
              <th scope="col">State</th><th scope="col">Progress</th><th scope="col">Created</th>
            </tr>
          </thead>
          <tbody>
            {data.items.map((j) => (
              <tr key={j.id}>
                <td><Link href={`/jobs/${j.id}`} className="mono">{j.id}</Link></td>
                <td>{j.pipeline} <span className="muted small">v{j.version}</span></td>
                <td className="path">{j.dataset}</td>
                {me.role === 'admin' && <td>{j.owner}</td>}
                <td><StateBadge state={j.state} /></td>
                <td className="progress-cell">
                  <Meter value={progressFraction(j)} label={`progress of job ${j.id}`} tone="progress" />
                  <span className="small">{count(j.progress.written)} written{j.progress.failed ? `, ${count(j.progress.failed)} failed` : ''}</span>
                </td>
                <td>{when(j.created)}</td>
              </tr>
            ))}
          </tbody>
        </table>
      )}
      {data && data.total > PAGE && (
        <div className="pager">
          <button type="button" disabled={offset === 0} onClick={() => setOffset(Math.max(0, offset - PAGE))}>Newer</button>
          <span className="muted">{offset + 1}–{Math.min(offset + PAGE, data.total)} of {data.total}</span>
          <button type="button" disabled={offset + PAGE >= data.total} onClick={() => setOffset(offset + PAGE)}>Older</button>
        </div>
      )}
    </>
  );
}
