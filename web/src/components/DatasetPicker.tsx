import { useState } from 'react';
import { api, type Entry } from '../api';
import { useLoad } from '../hooks';

/** A small folder browser that picks a dataset (any entry a source reads). */
export function DatasetPicker({ onPick }: { onPick: (path: string) => void }) {
  const [folder, setFolder] = useState('');
  const { data, error } = useLoad(() => api<{ entries: Entry[] }>(`/datasets?path=${encodeURIComponent(folder)}`), [folder]);
  const up = folder.split('/').slice(0, -1).join('/');
  return (
    <div className="picker" aria-label="Choose a dataset">
      <div className="muted small">data root{folder ? ` / ${folder}` : ''}</div>
      {error && <p className="field-error">{error.message}</p>}
      <ul>
        {folder && <li><button type="button" className="link" onClick={() => setFolder(up)}>⬑ up</button></li>}
        {data?.entries.map((e) => (
          <li key={e.path}>
            {e.kind === 'folder'
              ? <button type="button" className="link" onClick={() => setFolder(e.path)}>📁 {e.name}</button>
              : <button type="button" className="link" disabled={!e.source} onClick={() => onPick(e.path)}>{e.name}</button>}
          </li>
        ))}
      </ul>
    </div>
  );
}
