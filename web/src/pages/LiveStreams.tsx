import { useState, type FormEvent } from 'react';
import { api, ApiError, post, type Job, type Page, type Template } from '../api';
import { Link } from '../components/Link';
import { ErrorNotice, Notice, StateBadge } from '../components/Status';
import { count, rate } from '../format';
import { useLoad } from '../hooks';
import { navigate } from '../router';
import { useSession } from '../session';

/** Jobs on live detector streams: start one on a stream the service offers, stop the running ones. */
export function LiveStreams() {
  const { me } = useSession();
  const templates = useLoad(() => api<Template[]>('/pipelines'), []);
  const jobs = useLoad(() => api<Page<Job>>('/jobs?state=running&limit=200'), [], 2000);
  const [pipeline, setPipeline] = useState('');
  const [stream, setStream] = useState(me.live_streams?.[0] ?? '');
  const [message, setMessage] = useState<{ kind: 'ok' | 'error'; text: string }>();
  const live = jobs.data?.items.filter((j) => j.dataset.includes('://')) ?? [];
  const chosen = pipeline || templates.data?.find((t) => t.name.includes('live'))?.name || templates.data?.[0]?.name || '';

  const start = async (event: FormEvent) => {
    event.preventDefault();
    setMessage(undefined);
    try {
      const job = await post<Job>('/jobs', { pipeline: chosen, stream: stream.trim() });
      navigate(`/jobs/${job.id}`);
    } catch (caught) {
      setMessage({ kind: 'error', text: caught instanceof ApiError ? caught.message : String(caught) });
    }
  };
  const stop = async (job: Job) => {
    if (!window.confirm(`Stop the live job ${job.id} on ${job.dataset}? Its current series closes as aborted.`)) return;
    try {
      await post(`/jobs/${job.id}/cancel`, { reason: 'stopped from the web UI' });
      setMessage({ kind: 'ok', text: `Job ${job.id} is stopping.` });
      jobs.reload();
    } catch (caught) {
      setMessage({ kind: 'error', text: caught instanceof ApiError ? caught.message : String(caught) });
    }
  };
  return (
    <>
      <h1>Live streams</h1>
      <p className="muted">A live job reads a detector's stream: one scan per series it sends, until you stop it.</p>
      <form className="card inline-form" onSubmit={start} aria-label="Start a live job">
        <div className="field">
          <label htmlFor="live-pipeline">Pipeline</label>
          <select id="live-pipeline" value={chosen} onChange={(e) => setPipeline(e.target.value)}>
            {templates.data?.map((t) => <option key={t.name} value={t.name}>{t.name}</option>)}
          </select>
        </div>
        <div className="field">
          <label htmlFor="live-stream">Detector stream</label>
          <input id="live-stream" type="text" list="live-streams" value={stream} onChange={(e) => setStream(e.target.value)}
            placeholder="eiger://HOST:PORT" />
          <datalist id="live-streams">{me.live_streams?.map((s) => <option key={s} value={s} />)}</datalist>
        </div>
        <button type="submit" className="primary" disabled={!chosen || !stream.trim()}>Start live job</button>
        {chosen && stream && <Link href={`/pipelines/${encodeURIComponent(chosen)}?stream=${encodeURIComponent(stream)}`}>with parameters…</Link>}
      </form>
      {!me.live_streams?.length && (
        <p className="muted small">This service offers no detector stream to users (setting live_streams){me.role === 'admin' ? '; as an admin you may name any.' : '.'}</p>
      )}
      {message && <Notice kind={message.kind}>{message.text}</Notice>}
      <ErrorNotice error={jobs.error} what="the running jobs" />
      <h2>Running live jobs</h2>
      {live.length === 0 && <p className="muted">None.</p>}
      {live.length > 0 && (
        <table className="table">
          <thead><tr><th scope="col">Job</th><th scope="col">Pipeline</th><th scope="col">Stream</th><th scope="col">State</th><th scope="col">Written</th><th scope="col">Rate</th><th scope="col"><span className="sr-only">Actions</span></th></tr></thead>
          <tbody>
            {live.map((j) => (
              <tr key={j.id}>
                <td><Link href={`/jobs/${j.id}`} className="mono">{j.id}</Link></td>
                <td>{j.pipeline}</td><td className="path">{j.dataset}</td><td><StateBadge state={j.state} /></td>
                <td>{count(j.progress.written)}</td><td>{rate(j.progress.rate)}</td>
                <td className="actions">
                  <Link className="button" href={`/jobs/${j.id}`}>Watch</Link>
                  <button type="button" className="danger" disabled={j.cancel_requested} onClick={() => stop(j)}>{j.cancel_requested ? 'Stopping…' : 'Stop'}</button>
                </td>
              </tr>
            ))}
          </tbody>
        </table>
      )}
    </>
  );
}
