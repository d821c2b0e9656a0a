import { useEffect, useRef, useState } from 'react';
import { getToken } from '../api';
import { count, number, percent, rate, seconds } from '../format';
import { colour, openLive, type LiveImage, type LiveMessage } from '../live';
import { Plot, type Series } from './Plot';
import { Notice } from './Status';

/** Points kept per time series: ten minutes at one update a second. */
const MAX_POINTS = 600;
/** Delays kept for the on-page figure and for benchmarks/ui_live.py. */
const MAX_DELAYS = 10_000;

/**
 * What the live view has drawn, for people (the figure under the image) and for benchmarks/ui_live.py, which reads
 * it as ``window.lightpipeLive``: images drawn, images received of the name shown (more than drawn when a newer one
 * replaced one not yet drawn), and for each image drawn the milliseconds from its result to the frame that drew it.
 */
export interface LiveStats {
  shown: number;
  received: number;
  delaysMs: number[];
}

declare global {
  interface Window {
    lightpipeLive?: LiveStats;
  }
}

interface Props {
  jobId: string;
  running: boolean;
  onEnded: () => void;
}

function append(series: Series, x: number, y: number | null): Series {
  const xs = [...series.x, x];
  const ys = [...series.y, y];
  return xs.length > MAX_POINTS ? { x: xs.slice(-MAX_POINTS), y: ys.slice(-MAX_POINTS) } : { x: xs, y: ys };
}

/** Evenly spaced values: the coordinates of an image's axis, not a curve worth a plot. */
function isAxis(values: (number | null)[]): boolean {
  if (values.length < 3 || values.some((v) => v === null)) return false;
  const v = values as number[];
  const step = v[1] - v[0];
  return step !== 0 && v.every((x, i) => i === 0 || Math.abs(x - v[i - 1] - step) <= 1e-9 * Math.abs(step) * v.length);
}

function median(values: number[]): number | undefined {
  if (!values.length) return undefined;
  const sorted = [...values].sort((a, b) => a - b);
  return sorted[Math.floor(sorted.length / 2)];
}

/**
 * The live part of a job's page: the newest intermediate image of each name (canvas; a newer image replaces one not
 * yet drawn), progress from the websocket, and plots of throughput and of each value a solver reports.
 */
export function LiveView({ jobId, running, onEnded }: Props) {
  const canvas = useRef<HTMLCanvasElement>(null);
  const pending = useRef<Map<string, LiveImage>>(new Map());
  const latest = useRef<Map<string, LiveImage>>(new Map());
  const schedule = useRef<() => void>(() => undefined);
  const frame = useRef<number>(0);
  const [names, setNames] = useState<string[]>([]);
  const [selected, setSelected] = useState<string>();
  const selectedRef = useRef<string>();
  selectedRef.current = selected;
  const [shownHeader, setShownHeader] = useState<LiveImage['header']>();
  const [progress, setProgress] = useState<Record<string, unknown>>();
  const [throughput, setThroughput] = useState<Series>({ x: [], y: [] });
  const [scalars, setScalars] = useState<Record<string, Series>>({});
  const [curves, setCurves] = useState<Record<string, number[]>>({});
  const [failed, setFailed] = useState<LiveMessage>();
  const [connection, setConnection] = useState<'connecting' | 'open' | 'ended' | 'lost' | 'refused'>('connecting');
  const [closeReason, setCloseReason] = useState('');
  const [delay, setDelay] = useState<number>();
  const [attempt, setAttempt] = useState(0);
  const t0 = useRef<number>(Date.now() / 1000);

  useEffect(() => {
    const stats: LiveStats = { shown: 0, received: 0, delaysMs: [] };
    window.lightpipeLive = stats;
    const token = getToken();
    if (!token) return undefined;
    let lastDelayUpdate = 0;
    const draw = () => {
      frame.current = 0;
      const name = selectedRef.current;
      const image = name ? pending.current.get(name) : undefined;
      if (!image || !canvas.current) return;
      pending.current.delete(name!);
      const [ny, nx] = image.header.shape;
      const target = canvas.current;
      if (target.width !== nx || target.height !== ny) {
        target.width = nx;
        target.height = ny;
      }
      const context = target.getContext('2d');
      if (!context) return;
      const rgba = context.createImageData(nx, ny);
      colour(image.pixels, image.header.min ?? 0, image.header.max ?? 1, rgba.data);
      context.putImageData(rgba, 0, 0);
      target.dataset.seq = String(image.header.seq);
      stats.shown += 1;
      target.dataset.shown = String(stats.shown);
      const delayMs = performance.timeOrigin + performance.now() - image.header.time * 1000;
      stats.delaysMs.push(delayMs);
      if (stats.delaysMs.length > MAX_DELAYS) stats.delaysMs.splice(0, stats.delaysMs.length - MAX_DELAYS);
      setShownHeader(image.header);
      if (performance.now() - lastDelayUpdate > 1000) {
        lastDelayUpdate = performance.now();
        setDelay(median(stats.delaysMs.slice(-50)));
      }
    };
    schedule.current = () => {
      if (!frame.current) frame.current = requestAnimationFrame(draw);
    };
    setConnection('connecting');
    const close = openLive(jobId, token, {
      message: (message) => {
        const now = Date.now() / 1000 - t0.current;
        switch (message.type) {
          case 'hello':
            setConnection('open');
            break;
          case 'progress':
            setProgress(message);
            if (typeof message.events_per_s === 'number') {
              setThroughput((s) => append(s, now, message.events_per_s as number));
            }
            break;
          case 'values': {
            const values = message.values as Record<string, number | number[] | null>;
            const newCurves: Record<string, number[]> = {};
            const newScalars: [string, number | null][] = [];
            for (const [name, value] of Object.entries(values)) {
              if (!Array.isArray(value)) newScalars.push([name, value]);
              else if (!isAxis(value)) newCurves[name] = value;
            }
            if (Object.keys(newCurves).length) setCurves((c) => ({ ...c, ...newCurves }));
            if (newScalars.length) {
              setScalars((s) => {
                const next = { ...s };
                for (const [name, value] of newScalars) next[name] = append(next[name] ?? { x: [], y: [] }, now, value);
                return next;
              });
            }
            break;
          }
          case 'failed':
            setFailed(message);
            break;
          case 'finished':
            setConnection('ended');
            onEnded();
            break;
          default:
            break;
        }
      },
      image: (image) => {
        const name = image.header.name;
        pending.current.set(name, image);
        latest.current.set(name, image);
        setNames((known) => (known.includes(name) ? known : [...known, name]));
        setSelected((current) => current ?? name);
        if (name === (selectedRef.current ?? name)) {
          stats.received += 1;
          schedule.current();
        }
      },
      closed: (code, reason) => {
        if (code === 1000) {
          setConnection('ended');
          onEnded();
        } else if (code >= 4400 && code < 4500) {
          setConnection('refused');
          setCloseReason(reason);
        } else {
          setConnection('lost');
          setCloseReason(reason);
        }
      },
    });
    return () => {
      close();
      if (frame.current) cancelAnimationFrame(frame.current);
      frame.current = 0;
    };
  }, [jobId, attempt, onEnded]);

  // another image name chosen: draw its newest at once
  useEffect(() => {
    const image = selected ? latest.current.get(selected) : undefined;
    if (image && selected) {
      pending.current.set(selected, image);
      schedule.current();
    }
  }, [selected]);

  // a lost connection is tried again while the job runs (a restarted service, a network glitch)
  useEffect(() => {
    if (connection !== 'lost' || !running) return undefined;
    const timer = window.setTimeout(() => setAttempt((a) => a + 1), 2000);
    return () => window.clearTimeout(timer);
  }, [connection, running]);

  const p = progress ?? {};
  // a job that ended without images (most pipelines have no solver) gets no empty picture frame
  const noImage = !shownHeader && (connection === 'ended' || !running);
  const throughputSpan = throughput.x.length ? throughput.x[throughput.x.length - 1] - throughput.x[0] : 0;
  const curveEntries = Object.entries(curves);
  const scalarEntries = Object.entries(scalars);
  return (
    <section className="live" aria-labelledby="live-title">
      <h2 id="live-title">Live view</h2>
      {connection === 'lost' && running && (
        <Notice kind="warn">
          The live connection was lost{closeReason ? ` (${closeReason})` : ''}; reconnecting… The job goes on meanwhile.
        </Notice>
      )}
      {connection === 'refused' && <Notice kind="error">The live view was refused: {closeReason}</Notice>}
      <div className="live-grid">
        <div className="live-image">
          <div className="live-image-head">
            {names.length > 1 ? (
              <label>
                Image{' '}
                <select value={selected} onChange={(e) => setSelected(e.target.value)}>
                  {names.map((n) => <option key={n}>{n}</option>)}
                </select>
              </label>
            ) : (
              <span className="muted">{names[0] ?? 'Image'}</span>
            )}
            {shownHeader && (
              <span className="muted">
                {shownHeader.part === 'phase' ? 'phase, ' : ''}
                {shownHeader.source_shape?.join(' × ')} · range {number(shownHeader.min)} … {number(shownHeader.max)}
              </span>
            )}
          </div>
          <div className={noImage ? 'canvas-box canvas-none' : shownHeader ? 'canvas-box' : 'canvas-box canvas-waiting'}>
            <canvas ref={canvas} width={1} height={1} data-testid="live-canvas" aria-label="Newest intermediate image" />
            {!shownHeader && (
              <p className="canvas-empty">
                {noImage ? 'No intermediate image: this pipeline has no stage that sends one (a solver).' : 'Waiting for the first intermediate image…'}
              </p>
            )}
          </div>
          {shownHeader && <div className="colourbar" aria-hidden="true" />}
          <p className="muted small" data-testid="live-stats">
            {shownHeader
              ? `image #${shownHeader.seq} of scan ${shownHeader.scan}; delay to screen ${delay === undefined ? '…' : seconds(delay / 1000)}`
              : { connecting: 'connecting…', open: 'connected, live', ended: 'the run has ended', lost: 'connection lost', refused: 'refused' }[connection]}
          </p>
        </div>
        <div className="live-side">
          <dl className="figures">
            <dt>Scan</dt><dd>{String(p.scan ?? '–')}</dd>
            <dt>Received</dt><dd>{count(p.received as number)}</dd>
            <dt>Written</dt><dd>{count(p.written as number)}</dd>
            <dt>Failed</dt><dd className={(p.failed as number) > 0 ? 'bad' : ''}>{count(p.failed as number)}</dd>
            <dt>Rate now</dt><dd>{rate(p.events_per_s as number)}</dd>
            <dt>Lag</dt><dd>{seconds(p.lag_s as number)}</dd>
            <dt>Buffer</dt><dd>{percent(p.buffer_fill as number)}</dd>
          </dl>
          {failed && (
            <Notice kind="error">
              Newest failed event: #{String(failed.index)} in {String(failed.stage)}: {String(failed.message)}
            </Notice>
          )}
        </div>
      </div>
      <div className="plots">
        {(throughputSpan >= 1 || running) && <Plot title="Throughput (events/s)" series={throughput} xLabel="seconds on this page" />}
        {curveEntries.map(([name, values]) => (
          <Plot key={name} title={name} series={{ x: values.map((_, i) => i), y: values }} xLabel="index" />
        ))}
        {scalarEntries.map(([name, series]) => (
          <Plot key={name} title={name} series={series} xLabel="seconds on this page" />
        ))}
      </div>
    </section>
  );
}
