import { useState, type FormEvent } from 'react';
import { ApiError, whoAmI, type Me } from '../api';
import { Notice } from '../components/Status';

interface Props {
  reason?: string;
  onLogin: (token: string, me: Me) => void;
}

/** The token form: the token is checked with /me, then kept in this tab's sessionStorage only. */
export function Login({ reason, onLogin }: Props) {
  const [token, setTokenText] = useState('');
  const [error, setError] = useState<string>();
  const [busy, setBusy] = useState(false);
  const submit = async (event: FormEvent) => {
    event.preventDefault();
    setBusy(true);
    setError(undefined);
    try {
      const value = token.trim();
      onLogin(value, await whoAmI(value));
    } catch (caught) {
      if (caught instanceof ApiError && caught.status === 401) {
        setError(`This token was refused: ${caught.message}. Check that you copied all of it, or ask an admin for a ` +
          'new one (lightpipe token create).');
      } else {
        setError(caught instanceof Error ? caught.message : String(caught));
      }
    } finally {
      setBusy(false);
    }
  };
  return (
    <main className="login">
      <form onSubmit={submit} className="card login-card" aria-labelledby="login-title">
        <h1 id="login-title"><span className="logo" aria-hidden="true">◆</span> lightpipe</h1>
        <p className="muted">
          Log in with the token you were given. <code>lightpipe serve</code> prints an admin token at its first start;
          an admin makes more on the Admin page or with <code>lightpipe token create</code>.
        </p>
        {reason && <Notice kind="warn">{reason}</Notice>}
        <label htmlFor="token">Token</label>
        <input id="token" name="token" type="password" autoComplete="off" autoFocus required value={token}
          onChange={(e) => setTokenText(e.target.value)} placeholder="lp_…" />
        <p className="muted small">Kept only in this browser tab, until you log out or close it.</p>
        {error && <Notice kind="error">{error}</Notice>}
        <button type="submit" className="primary" disabled={busy || !token.trim()}>{busy ? 'Checking…' : 'Log in'}</button>
      </form>
    </main>
  );
}
