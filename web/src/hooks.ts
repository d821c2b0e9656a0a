import { useCallback, useEffect, useRef, useState } from 'react';
import { ApiError } from './api';

export interface Loaded<T> {
  data: T | undefined;
  error: ApiError | undefined;
  reload: () => void;
}

/** Load ``fetcher()`` now, again every ``everyMs`` while ``everyMs`` is set, and on ``reload``. */
export function useLoad<T>(fetcher: () => Promise<T>, deps: unknown[], everyMs?: number): Loaded<T> {
  const [data, setData] = useState<T>();
  const [error, setError] = useState<ApiError>();
  const [tick, setTick] = useState(0);
  const latest = useRef(fetcher);
  latest.current = fetcher;
  useEffect(() => {
    let alive = true;
    let timer: number | undefined;
    const run = async () => {
      try {
        const value = await latest.current();
        if (!alive) return;
        setData(value);
        setError(undefined);
      } catch (caught) {
        if (!alive) return;
        setError(caught instanceof ApiError ? caught : new ApiError(-1, String(caught)));
      }
      if (alive && everyMs) timer = window.setTimeout(run, everyMs);
    };
    run();
    return () => {
      alive = false;
      window.clearTimeout(timer);
    };
    // eslint-disable-next-line react-hooks/exhaustive-deps
  }, [...deps, tick, everyMs]);
  const reload = useCallback(() => setTick((t) => t + 1), []);
  return { data, error, reload };
}
