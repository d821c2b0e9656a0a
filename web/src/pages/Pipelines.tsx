import { api, type Template } from '../api';
import { Link } from '../components/Link';
import { ErrorNotice } from '../components/Status';
import { useLoad } from '../hooks';

/** The registered pipeline templates; each opens its form (with the dataset chosen on the Datasets page, if any). */
export function Pipelines() {
  const dataset = new URLSearchParams(location.search).get('dataset') ?? '';
  const { data, error } = useLoad(() => api<Template[]>('/pipelines'), []);
  const suffix = dataset ? `?dataset=${encodeURIComponent(dataset)}` : '';
  return (
    <>
      <h1>Pipelines</h1>
      <p className="muted">
        {dataset ? <>Choose a pipeline to process <strong>{dataset}</strong>.</> : 'Choose a pipeline, then a dataset and its parameters.'}
      </p>
      <ErrorNotice error={error} what="the pipelines" />
      {data && data.length === 0 && <p className="muted">No pipeline template is registered yet; an admin registers them on the Admin page.</p>}
      <ul className="cards">
        {data?.map((t) => (
          <li key={t.name} className="card">
            <h2><Link href={`/pipelines/${encodeURIComponent(t.name)}${suffix}`}>{t.name}</Link> <span className="muted small">v{t.version}</span></h2>
            <p>{t.description || <span className="muted">No description.</span>}</p>
          </li>
        ))}
      </ul>
    </>
  );
}
