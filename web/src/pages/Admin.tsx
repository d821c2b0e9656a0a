import { useEffect, useRef, useState, type ChangeEvent, type FormEvent } from 'react';
import { api, ApiError, post, type Problem, type Template, type Token } from '../api';
import { Link } from '../components/Link';
import { ErrorNotice, Notice, StateBadge } from '../components/Status';
import { when } from '../format';
import { useLoad } from '../hooks';
import { useSession } from '../session';

/** The YAML with line numbers, each problem under the line it names. */
function YamlProblems({ text, problems }: { text: string; problems: Problem[] }) {
  const byLine = new Map<number, string[]>();
  const unplaced: string[] = [];
  for (const p of problems) {
    const message = p.field ? `${p.field}: ${p.message}` : p.message;
    if (p.line) byLine.set(p.line, [...(byLine.get(p.line) ?? []), message]);
    else unplaced.push(message);
  }
  const lines = text.split('\n');
  const list = useRef<HTMLOListElement>(null);
  // the first line named in view, inside the listing's own scroll box
  useEffect(() => {
    const first = list.current?.querySelector<HTMLLIElement>('li.problem-line');
    if (list.current && first) list.current.scrollTop = first.offsetTop - list.current.clientHeight / 3;
  }, [text, problems]);
  return (
    <div className="yaml-problems" role="alert" aria-label="Validation problems">
      {unplaced.map((m) => <p key={m} className="field-error">{m}</p>)}
      <ol className="code numbered" ref={list}>
        {lines.map((line, i) => {
          const here = byLine.get(i + 1);
          return (
            <li key={i} className={here ? 'problem-line' : undefined} data-line={i + 1}>
              <code>{line || ' '}</code>
              {here?.map((m) => <div key={m} className="problem">line {i + 1}: {m}</div>)}
            </li>
          );
        })}
      </ol>
    </div>
  );
}

function Register({ onDone }: { onDone: () => void }) {
  const [text, setText] = useState('');
  const [problems, setProblems] = useState<Problem[]>();
  const [checked, setChecked] = useState('');
  const [message, setMessage] = useState<{ kind: 'ok' | 'error'; text: string }>();
  const load = async (event: ChangeEvent<HTMLInputElement>) => {
    const file = event.target.files?.[0];
    if (file) setText(await file.text());
  };
  const submit = async (event: FormEvent) => {
    event.preventDefault();
    setProblems(undefined);
    setMessage(undefined);
    const name = /^name:\s*["']?([^"'\s#]+)/m.exec(text)?.[1];
    try {
      let template: Template;
      try {
        template = await post<Template>('/pipelines', { yaml: text });
      } catch (caught) {
        // a template of this name exists: this text is its next version
        if (!(caught instanceof ApiError && caught.status === 409 && name && caught.message.includes('exists'))) throw caught;
        template = await post<Template>(`/pipelines/${encodeURIComponent(name)}/versions`, { yaml: text });
      }
      setMessage({ kind: 'ok', text: `Registered ${template.name} version ${template.version}.` });
      onDone();
    } catch (caught) {
      if (!(caught instanceof ApiError)) throw caught;
      if (caught.problems.length) {
        setProblems(caught.problems);
        setChecked(text);
      }
      const placed = caught.problems.filter((p) => p.line).length;
      setMessage({ kind: 'error', text: placed ? `The template was not registered: ${caught.problems.length} problem${caught.problems.length === 1 ? '' : 's'}, marked at ${placed === 1 ? 'its line' : 'their lines'} below.` : caught.message });
    }
  };
  return (
    <form onSubmit={submit} className="card" aria-labelledby="register-title">
      <h2 id="register-title">Register a template</h2>
      <p className="muted small">
        Paste a pipeline's YAML or upload its file. It is checked as <code>lightpipe validate</code> checks it; a name
        already registered gets a new version (versions are never edited).
      </p>
      <div className="field">
        <label htmlFor="template-file">Upload a YAML file</label>
        <input id="template-file" type="file" accept=".yaml,.yml,text/yaml" onChange={load} />
      </div>
      <div className="field">
        <label htmlFor="template-yaml">Pipeline YAML</label>
        <textarea id="template-yaml" rows={14} spellCheck={false} wrap="off" value={text} onChange={(e) => setText(e.target.value)}
          placeholder={'version: 2\nname: my-pipeline\nsource: ...'} />
      </div>
      <button type="submit" className="primary" disabled={!text.trim()}>Validate and register</button>
      {message && <Notice kind={message.kind}>{message.text}</Notice>}
      {problems && <YamlProblems text={checked} problems={problems} />}
    </form>
  );
}

function Templates({ reloadKey }: { reloadKey: number }) {
  const list = useLoad(() => api<Template[]>('/pipelines?retired=true'), [reloadKey]);
  const [open, setOpen] = useState<string>();
  const detail = useLoad(() => (open ? api<Template>(`/pipelines/${encodeURIComponent(open)}`) : Promise.resolve(undefined)), [open, reloadKey]);
  const [version, setVersion] = useState<number>();
  const shown = useLoad(() => (open && version ? api<Template>(`/pipelines/${encodeURIComponent(open)}/versions/${version}`) : Promise.resolve(undefined)),
    [open, version]);
  const [message, setMessage] = useState<string>();
  const retire = async (name: string) => {
    if (!window.confirm(`Retire ${name}? It takes no new jobs; its versions and jobs stay.`)) return;
    try {
      await post(`/pipelines/${encodeURIComponent(name)}/retire`);
      list.reload();
    } catch (caught) {
      setMessage(caught instanceof ApiError ? caught.message : String(caught));
    }
  };
  return (
    <section className="card" aria-labelledby="templates-title">
      <h2 id="templates-title">Templates and versions</h2>
      <ErrorNotice error={list.error} what="the templates" />
      {message && <Notice kind="error">{message}</Notice>}
      <table className="table compact">
        <thead><tr><th scope="col">Name</th><th scope="col">Newest</th><th scope="col">By</th><th scope="col">Registered</th><th scope="col"><span className="sr-only">Actions</span></th></tr></thead>
        <tbody>
          {list.data?.map((t) => (
            <tr key={t.name}>
              <td className="wrap"><Link href={`/pipelines/${encodeURIComponent(t.name)}`}>{t.name}</Link>{t.retired && <> <StateBadge state="retired" /></>}</td>
              <td>v{t.version}</td><td>{t.created_by}</td><td className="wrap">{when(t.created)}</td>
              <td className="actions">
                <button type="button" aria-expanded={open === t.name} onClick={() => { setOpen(open === t.name ? undefined : t.name); setVersion(undefined); }}>Versions</button>
                <button type="button" className="danger" disabled={t.retired} onClick={() => retire(t.name)}>Retire</button>
              </td>
            </tr>
          ))}
        </tbody>
      </table>
      {open && detail.data && (
        <div className="versions">
          <h3>{open}: versions</h3>
          <div className="inline">
            {detail.data.versions?.map((v) => (
              <button key={v} type="button" className={version === v ? 'active' : ''} onClick={() => setVersion(v)}>v{v}</button>
            ))}
          </div>
          {shown.data && (
            <>
              <p className="muted small">v{shown.data.version} by {shown.data.created_by}, {when(shown.data.created)}</p>
              <pre className="code">{shown.data.yaml}</pre>
            </>
          )}
        </div>
      )}
    </section>
  );
}

function Tokens() {
  const list = useLoad(() => api<Token[]>('/tokens'), []);
  const [user, setUser] = useState('');
  const [role, setRole] = useState<'user' | 'admin'>('user');
  const [days, setDays] = useState('');
  const [label, setLabel] = useState('');
  const [folders, setFolders] = useState('');
  const [made, setMade] = useState<Token>();
  const [message, setMessage] = useState<string>();
  const make = async (event: FormEvent) => {
    event.preventDefault();
    setMessage(undefined);
    setMade(undefined);
    try {
      const token = await post<Token>('/tokens', {
        user: user.trim(), role, label, days: days ? Number(days) : null,
        folders: folders.split(',').map((f) => f.trim()).filter(Boolean),
      });
      setMade(token);
      list.reload();
    } catch (caught) {
      setMessage(caught instanceof ApiError ? caught.message : String(caught));
    }
  };
  const revoke = async (token: Token) => {
    if (!window.confirm(`Revoke token ${token.prefix}… of ${token.user}? Whoever uses it is logged out.`)) return;
    try {
      await api(`/tokens/${token.id}`, { method: 'DELETE' });
      list.reload();
    } catch (caught) {
      setMessage(caught instanceof ApiError ? caught.message : String(caught));
    }
  };
  return (
    <section className="card" aria-labelledby="tokens-title">
      <h2 id="tokens-title">Tokens</h2>
      <form onSubmit={make} className="inline-form" aria-label="Make a token">
        <div className="field"><label htmlFor="tok-user">User</label><input id="tok-user" required value={user} onChange={(e) => setUser(e.target.value)} /></div>
        <div className="field"><label htmlFor="tok-role">Role</label>
          <select id="tok-role" value={role} onChange={(e) => setRole(e.target.value as 'user' | 'admin')}><option>user</option><option>admin</option></select></div>
        <div className="field"><label htmlFor="tok-days">Days</label><input id="tok-days" inputMode="decimal" value={days} onChange={(e) => setDays(e.target.value)} placeholder="default" /></div>
        <div className="field"><label htmlFor="tok-folders">Folders</label><input id="tok-folders" value={folders} onChange={(e) => setFolders(e.target.value)} placeholder="all; or visit1, visit2" /></div>
        <div className="field"><label htmlFor="tok-label">Label</label><input id="tok-label" value={label} onChange={(e) => setLabel(e.target.value)} /></div>
        <button type="submit" className="primary" disabled={!user.trim()}>Make token</button>
      </form>
      {message && <Notice kind="error">{message}</Notice>}
      {made?.token && (
        <Notice kind="ok">
          Token for {made.user}, shown only now: <code className="secret">{made.token}</code>{' '}
          <button type="button" onClick={() => navigator.clipboard?.writeText(made.token!)}>Copy</button>
        </Notice>
      )}
      <ErrorNotice error={list.error} what="the tokens" />
      <table className="table compact">
        <thead><tr><th scope="col">Id</th><th scope="col">User</th><th scope="col">Role</th><th scope="col">Label</th><th scope="col">Starts</th><th scope="col">Folders</th><th scope="col">Expires</th><th scope="col">Last used</th><th scope="col"><span className="sr-only">Actions</span></th></tr></thead>
        <tbody>
          {list.data?.map((t) => (
            <tr key={t.id} className={t.revoked ? 'muted' : ''}>
              <td>{t.id}</td><td>{t.user}</td><td>{t.role}</td><td>{t.label}</td><td className="mono">{t.prefix}…</td>
              <td>{t.folders.join(', ') || 'all'}</td><td>{when(t.expires)}</td><td>{when(t.last_used)}</td>
              <td>{t.revoked ? <StateBadge state="revoked" /> : <button type="button" className="danger" onClick={() => revoke(t)}>Revoke</button>}</td>
            </tr>
          ))}
        </tbody>
      </table>
    </section>
  );
}

/** Admins: register templates (validation problems at their lines), read versions, retire; make and revoke tokens. */
export function Admin() {
  const { me } = useSession();
  const [reloadKey, setReloadKey] = useState(0);
  if (me.role !== 'admin') return <Notice kind="warn">This page is for admins; your token has the role {me.role}.</Notice>;
  return (
    <>
      <h1>Admin</h1>
      <div className="admin-grid">
        <Register onDone={() => setReloadKey((k) => k + 1)} />
        <Templates reloadKey={reloadKey} />
      </div>
      <Tokens />
    </>
  );
}
