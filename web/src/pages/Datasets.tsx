import { api, type Entry } from '../api';
import { Link } from '../components/Link';
import { ErrorNotice } from '../components/Status';
import { bytes } from '../format';
import { useLoad } from '../hooks';

/** Kinds of dataset that h5web opens. */
export const VIEWABLE = new Set(['hdf5', 'nexus', 'cxi', 'dectris_master']);

const KIND_LABELS: Record<string, string> = {
  folder: 'folder', hdf5: 'HDF5', nexus: 'NeXus', cxi: 'CXI', dectris_master: 'DECTRIS master',
  image_series: 'image series', image: 'image',
};

function Breadcrumbs({ path }: { path: string }) {
  const parts = path ? path.split('/') : [];
  return (
    <nav aria-label="Folder" className="crumbs">
      <Link href="/data">data root</Link>
      {parts.map((part, i) => {
        const to = parts.slice(0, i + 1).join('/');
        return (
          <span key={to}>
            {' / '}
            {i === parts.length - 1 ? <span aria-current="page">{part}</span> : <Link href={`/data?path=${encodeURIComponent(to)}`}>{part}</Link>}
          </span>
        );
      })}
    </nav>
  );
}

/** The data root, folder by folder: open a file in the viewer or process it with a pipeline. */
export function Datasets({ path }: { path: string }) {
  const { data, error } = useLoad(() => api<{ entries: Entry[] }>(`/datasets?path=${encodeURIComponent(path)}`), [path]);
  return (
    <>
      <h1>Datasets</h1>
      <Breadcrumbs path={path} />
      <ErrorNotice error={error} what="this folder" />
      {data && data.entries.length === 0 && <p className="muted">This folder holds no dataset lightpipe reads.</p>}
      {data && data.entries.length > 0 && (
        <table className="table">
          <thead>
            <tr><th scope="col">Name</th><th scope="col">Kind</th><th scope="col">Size</th><th scope="col">Modified</th><th scope="col"><span className="sr-only">Actions</span></th></tr>
          </thead>
          <tbody>
            {data.entries.map((e) => (
              <tr key={e.path}>
                <td>
                  {e.kind === 'folder'
                    ? <Link href={`/data?path=${encodeURIComponent(e.path)}`}>📁 {e.name}</Link>
                    : VIEWABLE.has(e.kind)
                      ? <Link href={`/view?file=${encodeURIComponent(e.path)}`}>{e.name}</Link>
                      : e.name}
                  {e.linked_files && <span className="muted small"> + {e.linked_files.length} data files</span>}
                  {e.files !== undefined && <span className="muted small"> ({e.files} files)</span>}
                </td>
                <td>{KIND_LABELS[e.kind] ?? e.kind}</td>
                <td>{e.kind === 'folder' ? '' : bytes(e.size)}</td>
                <td>{new Date(e.modified * 1000).toLocaleString('en-GB', { dateStyle: 'short', timeStyle: 'short' })}</td>
                <td className="actions">
                  {VIEWABLE.has(e.kind) && <Link className="button" href={`/view?file=${encodeURIComponent(e.path)}`}>View</Link>}
                  {e.kind !== 'folder' && e.source && (
                    <Link className="button" href={`/pipelines?dataset=${encodeURIComponent(e.path)}`}>Process…</Link>
                  )}
                </td>
              </tr>
            ))}
          </tbody>
        </table>
      )}
    </>
  );
}
