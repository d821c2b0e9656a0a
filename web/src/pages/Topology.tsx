import { api, type JobTopology } from '../api';
import { Link } from '../components/Link';
import { ErrorNotice, Meter, StateBadge } from '../components/Status';
import { count, percent, rate, seconds } from '../format';
import { useLoad } from '../hooks';

/** Every running job's components (from its control channel): state, heartbeat age, counts, buffer fill, rate. */
export function Topology() {
  const { data, error } = useLoad(() => api<{ jobs: JobTopology[] }>('/topology'), [], 2000);
  return (
    <>
      <h1>Topology</h1>
      <p className="muted">Every running job you may see, part by part, refreshed every two seconds. A part that stopped beating, or failed, is red.</p>
      <ErrorNotice error={error} what="the topology" />
      {data && data.jobs.length === 0 && <p className="muted">No job is running. <Link href="/jobs">See the jobs</Link>.</p>}
      {data?.jobs.map((job) => (
        <section key={job.id} className="card topology" aria-label={`Job ${job.id}`}>
          <h2>
            <Link href={`/jobs/${job.id}`}>{job.pipeline}</Link> <span className="mono small">{job.id}</span>{' '}
            <StateBadge state={job.state} />
          </h2>
          <p className="muted">
            {job.dataset}; {job.current_scan?.name ? `scan ${job.current_scan.name} ${job.current_scan.state}` : 'waiting for a scan'}
            {job.current_scan ? `, ${job.current_scan.scans_done} done` : ''}
          </p>
          {!job.reachable && <p className="bad">Its control channel does not answer: the job may be starting, or its process is stuck.</p>}
          {job.components.length > 0 && (
            <table className="table compact">
              <thead>
                <tr><th scope="col">Component</th><th scope="col">Kind</th><th scope="col">State</th><th scope="col">Heartbeat</th><th scope="col">In</th><th scope="col">Out</th><th scope="col">Failed</th><th scope="col">Buffer</th><th scope="col">Rate</th><th scope="col">Detail</th></tr>
              </thead>
              <tbody>
                {job.components.map((c) => (
                  <tr key={c.name} className={c.state === 'failed' ? 'failed-row' : ''}>
                    <td>{c.name}</td><td>{c.kind}</td><td><StateBadge state={c.state} /></td>
                    <td>{seconds(c.heartbeat_age_s)} ago</td>
                    <td>{count(c.events_in)}</td><td>{count(c.events_out)}</td>
                    <td className={c.failed ? 'bad' : ''}>{count(c.failed)}</td>
                    <td>{c.fill === null ? '' : <><Meter value={c.fill} label={`buffer of ${c.name}`} /> {percent(c.fill)}</>}</td>
                    <td>{rate(c.rate)}</td>
                    <td className={c.state === 'failed' ? 'bad' : 'muted'}>{c.detail}</td>
                  </tr>
                ))}
              </tbody>
            </table>
          )}
        </section>
      ))}
    </>
  );
}
