import { number } from '../format';

export interface Series {
  x: number[];
  y: (number | null)[];
}

interface Props {
  title: string;
  series: Series;
  xLabel: string;
  yLabel?: string;
  width?: number;
  height?: number;
}

/** A line plot in SVG: one series, its range on both axes, the newest value in the title. */
export function Plot({ title, series, xLabel, yLabel, width = 320, height = 160 }: Props) {
  const points = series.x.map((x, i) => [x, series.y[i]] as const).filter((p): p is readonly [number, number] =>
    p[1] !== null && Number.isFinite(p[1]) && Number.isFinite(p[0]));
  const pad = { left: 56, right: 10, top: 8, bottom: 30 };
  const w = width - pad.left - pad.right;
  const h = height - pad.top - pad.bottom;
  const xs = points.map((p) => p[0]);
  const ys = points.map((p) => p[1]);
  const [x0, x1] = [Math.min(...xs), Math.max(...xs)];
  let [y0, y1] = [Math.min(...ys), Math.max(...ys)];
  if (y0 === y1) [y0, y1] = [y0 - 1, y1 + 1];
  const sx = (x: number) => pad.left + (x1 > x0 ? ((x - x0) / (x1 - x0)) * w : w / 2);
  const sy = (y: number) => pad.top + h - ((y - y0) / (y1 - y0)) * h;
  const newest = points.length ? points[points.length - 1][1] : undefined;
  return (
    <figure className="plot" aria-label={title}>
      <figcaption>
        {title}
        {newest !== undefined && <span className="plot-value">{number(newest)}</span>}
      </figcaption>
      <svg width={width} height={height} role="img" aria-label={`${title} against ${xLabel}`}>
        <rect x={pad.left} y={pad.top} width={w} height={h} className="plot-frame" />
        {points.length > 0 && (
          <>
            <text x={pad.left - 4} y={pad.top + 10} className="tick" textAnchor="end">{number(y1)}</text>
            <text x={pad.left - 4} y={pad.top + h} className="tick" textAnchor="end">{number(y0)}</text>
            <text x={pad.left} y={height - 16} className="tick">{number(x0)}</text>
            <text x={pad.left + w} y={height - 16} className="tick" textAnchor="end">{number(x1)}</text>
            <polyline
              className="plot-line"
              points={points.map(([x, y]) => `${sx(x).toFixed(1)},${sy(y).toFixed(1)}`).join(' ')}
            />
            {points.length === 1 && <circle cx={sx(points[0][0])} cy={sy(points[0][1])} r={3} className="plot-dot" />}
          </>
        )}
        {points.length === 0 && (
          <text x={pad.left + w / 2} y={pad.top + h / 2} className="tick" textAnchor="middle">waiting for values</text>
        )}
        <text x={pad.left + w / 2} y={height - 3} className="axis-label" textAnchor="middle">{xLabel}</text>
        {yLabel && (
          <text x={12} y={pad.top + h / 2} className="axis-label" textAnchor="middle"
            transform={`rotate(-90 12 ${pad.top + h / 2})`}>{yLabel}</text>
        )}
      </svg>
    </figure>
  );
}
