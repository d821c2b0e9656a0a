import '@h5web/app/styles.css';
import { App as H5Web, H5GroveProvider, createBasicFetcher, type DataProviderApi } from '@h5web/app';
import { useMemo } from 'react';
import { API, api, authHeaders, download } from '../api';
import { Link } from '../components/Link';
import { Notice } from '../components/Status';
import { useLoad } from '../hooks';

/** ``job:<id>/<path>``: a job's result; anything else: a path in the data root. */
function jobFile(file: string): { job: string; path: string } | null {
  const m = /^job:([^/]+)\/(.+)$/.exec(file);
  return m ? { job: m[1], path: m[2] } : null;
}

type GetExportURL = NonNullable<DataProviderApi['getExportURL']>;

/** h5web's export menu: computed in the page when h5web can, else fetched from h5grove with the token. */
function exporter(file: string): GetExportURL {
  return (format, dataset, selection, builtIn) => async () => {
    if (builtIn) return new Blob([builtIn()]);
    const query = new URLSearchParams({ file, path: dataset.path, format, ...(selection ? { selection } : {}) });
    const response = await fetch(`${API}/h5grove/data/?${query}`, { headers: authHeaders() });
    if (!response.ok) throw new Error(`export failed: ${response.status}`);
    return response.blob();
  };
}

interface Meta {
  attributes?: { name: string }[];
  children?: { name: string; kind: string }[];
}

async function startPath(file: string): Promise<string> {
  const meta = (path: string) => api<Meta>(`/h5grove/meta/?file=${encodeURIComponent(file)}&path=${encodeURIComponent(path)}`);
  const root = await meta('/');
  if (root.attributes?.some((a) => a.name === 'default')) return '/';  // h5web follows it
  try {
    // a detector's raw file (DECTRIS master, NXmx): its first data block, shown as images
    const data = await meta('/entry/data');
    const first = data.children?.find((c) => c.kind === 'dataset' || c.kind === 'external_link');
    return first ? `/entry/data/${first.name}` : '/';
  } catch {
    return '/';
  }
}

/**
 * h5web on the service's h5grove routes (the token in the request headers). It follows the file's NeXus ``default``
 * attributes, so a result opens on its default plot. Loaded lazily: most of the bundle is here.
 */
export default function Viewer({ file }: { file: string }) {
  const fetcher = useMemo(() => createBasicFetcher({ headers: authHeaders() }), []);
  // ask once ourselves, so that a file that cannot be opened gets the server's sentence, not a stack
  // and find where to start: the NeXus default plot when the file names one, else a raw file's first frames
  const check = useLoad(() => startPath(file), [file]);
  const job = jobFile(file);
  const name = file.split('/').pop();
  return (
    <div className="viewer-page">
      <div className="viewer-head">
        <h1>{name}</h1>
        <span className="muted">{job ? `result of job ${job.job}` : `data root / ${file}`}</span>
        <span className="spacer" />
        {job && <Link className="button" href={`/jobs/${job.job}?tab=results`}>Back to the job</Link>}
        {job && <button type="button" onClick={() => download(job.job, job.path)}>Download</button>}
        {!job && <Link className="button" href={`/data?path=${encodeURIComponent(file.split('/').slice(0, -1).join('/'))}`}>Back to the folder</Link>}
      </div>
      {!file && <Notice kind="warn">No file given: open one from the Datasets page or a job's results.</Notice>}
      {check.error && (
        <Notice kind="error">
          This file cannot be opened: {check.error.message}. Pick another file, or if it is still being written,
          try again when its scan has finished.
        </Notice>
      )}
      {file && check.data !== undefined && (
        <div className="h5web" data-testid="h5web">
          <H5GroveProvider url={`${location.origin}${API}/h5grove`} filepath={file} fetcher={fetcher}
            getExportURL={exporter(file)}>
            <H5Web sidebarOpen disableDarkMode initialPath={check.data} />
          </H5GroveProvider>
        </div>
      )}
    </div>
  );
}
