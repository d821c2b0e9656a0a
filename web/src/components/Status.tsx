import type { ReactNode } from 'react';
import { ApiError } from '../api';

/** A job's, scan's or component's state as a coloured badge (text, not colour alone, says it). */
export function StateBadge({ state }: { state: string }) {
  return <span className={`badge state-${state}`}>{state}</span>;
}

/** A message box: what happened and what to do. ``role=alert`` for errors so a screen reader says them. */
export function Notice({ kind = 'info', children }: { kind?: 'info' | 'error' | 'ok' | 'warn'; children: ReactNode }) {
  return (
    <div className={`notice notice-${kind}`} role={kind === 'error' ? 'alert' : 'status'}>
      {children}
    </div>
  );
}

export function ErrorNotice({ error, what }: { error: ApiError | undefined; what: string }) {
  if (!error || error.unreachable || error.status === 401) return null; // the banner says those
  return (
    <Notice kind="error">
      Could not load {what}: {error.message}
    </Notice>
  );
}

/** A bar from 0 to 1. ``fill`` (a buffer) turns red near full; ``progress`` turns green when done. */
export function Meter({ value, label, tone = 'fill' }: { value: number | null | undefined; label: string; tone?: 'fill' | 'progress' }) {
  const fraction = Math.max(0, Math.min(1, value ?? 0));
  const high = tone === 'fill' ? (fraction > 0.9 ? 'meter-high' : '') : fraction >= 1 ? 'meter-done' : '';
  return (
    <div className="meter" role="meter" aria-label={label} aria-valuemin={0} aria-valuemax={1} aria-valuenow={fraction}>
      <div className={`meter-fill ${high}`} style={{ width: `${fraction * 100}%` }} />
    </div>
  );
}
