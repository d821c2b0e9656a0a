import { useMemo, useState } from 'react';
import type { Chunk } from '../api';
import { count, seconds } from '../format';

// colours for stages, distinct and not red (red means failure)
const PALETTE = ['#4c78a8', '#f58518', '#54a24b', '#b279a2', '#72b7b2', '#eeca3b', '#9d755d', '#bab0ac', '#ff9da6',
  '#79706e', '#8cd17d', '#499894'];
const FAILED = '#d62728';
const OK = '#54a24b';

interface Props {
  chunks: Chunk[];
}

/**
 * ExaFEL's "computational weather plot": one row per worker, one mark per chunk from its start to its end, split into
 * the stages' shares of its time (or coloured by failure), time on the x axis.
 */
export function WeatherPlot({ chunks }: Props) {
  const [by, setBy] = useState<'stage' | 'failure'>('stage');
  const layout = useMemo(() => {
    const workers = [...new Set(chunks.map((c) => c.worker))].sort();
    const stages: string[] = [];
    for (const c of chunks) for (const s of Object.keys(c.stages)) if (!stages.includes(s)) stages.push(s);
    const t0 = Math.min(...chunks.map((c) => c.started));
    const t1 = Math.max(...chunks.map((c) => c.finished));
    return { workers, stages, t0, span: Math.max(t1 - t0, 1e-3) };
  }, [chunks]);
  if (!chunks.length) return <p className="muted">No chunk has been recorded for this job yet.</p>;
  const { workers, stages, t0, span } = layout;
  const rowH = 22;
  const left = 150;
  const width = 1000;
  const plotW = width - left - 20;
  const height = workers.length * rowH + 44;
  const x = (t: number) => left + ((t - t0) / span) * plotW;
  const colourOf = (stage: string) => PALETTE[stages.indexOf(stage) % PALETTE.length];
  const ticks = Array.from({ length: 6 }, (_, i) => (span * i) / 5);
  const digits = Math.max(0, Math.ceil(-Math.log10(span / 5)));  // enough to tell neighbouring ticks apart
  const failedChunks = chunks.filter((c) => c.failed > 0).length;
  return (
    <figure className="weather" aria-label="Weather plot">
      <div className="weather-head">
        <fieldset className="inline">
          <legend>Colour by</legend>
          <label><input type="radio" name="weather-by" checked={by === 'stage'} onChange={() => setBy('stage')} /> stage</label>
          <label><input type="radio" name="weather-by" checked={by === 'failure'} onChange={() => setBy('failure')} /> failure</label>
        </fieldset>
        <span className="muted">
          {count(chunks.length)} chunks on {workers.length} worker{workers.length === 1 ? '' : 's'} over {seconds(span)}
          {failedChunks ? `, ${failedChunks} with failed events` : ''}
        </span>
      </div>
      <svg viewBox={`0 0 ${width} ${height}`} width="100%" role="img" data-testid="weather-plot"
        aria-label={`Chunks of ${workers.length} workers against time`}>
        {workers.map((w, i) => (
          <g key={w}>
            <rect x={left} y={i * rowH + 4} width={plotW} height={rowH - 2} className={i % 2 ? 'row-odd' : 'row-even'} />
            <text x={left - 6} y={i * rowH + rowH / 2 + 8} textAnchor="end" className="tick">
              {w.length > 22 ? `…${w.slice(-21)}` : w}
            </text>
          </g>
        ))}
        {chunks.map((c) => {
          const row = workers.indexOf(c.worker);
          const y = row * rowH + 6;
          const x0 = x(c.started);
          const w = Math.max(x(c.finished) - x0, 1);
          const total = Object.values(c.stages).reduce((a, b) => a + b, 0);
          const title = `${c.worker}: events ${c.start}–${c.stop - 1} of ${c.scan}, ${seconds(c.finished - c.started)}` +
            (c.failed ? `, ${c.failed} failed` : '') + '\n' +
            Object.entries(c.stages).map(([s, t]) => `${s}: ${seconds(t)}`).join('\n');
          if (by === 'failure' || total <= 0) {
            return (
              <rect key={c.id} x={x0} y={y} width={w} height={rowH - 6} fill={c.failed ? FAILED : OK}
                className="chunk" data-failed={c.failed > 0}><title>{title}</title></rect>
            );
          }
          let offset = x0;
          return (
            <g key={c.id} className="chunk" data-failed={c.failed > 0}>
              <title>{title}</title>
              {Object.entries(c.stages).map(([s, t]) => {
                const part = (t / total) * w;
                const mark = <rect key={s} x={offset} y={y} width={part} height={rowH - 6} fill={colourOf(s)} />;
                offset += part;
                return mark;
              })}
              {c.failed > 0 && <rect x={x0} y={y} width={w} height={rowH - 6} fill="none" stroke={FAILED} strokeWidth={2} />}
            </g>
          );
        })}
        {ticks.map((t) => (
          <text key={t} x={x(t0 + t)} y={height - 22} textAnchor="middle" className="tick">{t.toFixed(digits)}</text>
        ))}
        <text x={left + plotW / 2} y={height - 4} textAnchor="middle" className="axis-label">seconds since the first chunk started</text>
      </svg>
      <ul className="legend">
        {by === 'stage'
          ? stages.map((s) => <li key={s}><span className="swatch" style={{ background: colourOf(s) }} />{s}</li>)
          : [<li key="ok"><span className="swatch" style={{ background: OK }} />all events written</li>,
             <li key="failed"><span className="swatch" style={{ background: FAILED }} />some events failed</li>]}
        {by === 'stage' && <li><span className="swatch swatch-outline" />outlined: some events failed</li>}
      </ul>
    </figure>
  );
}
