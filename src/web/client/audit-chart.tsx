import type { AuditReport } from './api.js';
import { percent } from './format.js';

/** Robust accuracy after each attack (clean accuracy first) as an SVG bar chart. */

const BAR = 56;
const GAP = 16;
const TOP = 24;
const HEIGHT = 140;
const LEFT = 40;

export function AttackChart({ report }: { report: AuditReport }) {
  const bars = [
    { name: 'clean', value: report.clean_accuracy },
    ...report.per_attack.map((a) => ({ name: a.name, value: a.robust_accuracy_after })),
  ];
  const width = LEFT + bars.length * (BAR + GAP);
  const summary = bars.map((b) => `${b.name} ${percent(b.value)}`).join(', ');
  return (
    <svg
      class="chart"
      viewBox={`0 0 ${width} ${TOP + HEIGHT + 28}`}
      role="img"
      aria-labelledby="chart-title chart-desc"
    >
      <title id="chart-title">Accuracy after each attack</title>
      <desc id="chart-desc">{summary}</desc>
      {[0, 0.5, 1].map((tick) => (
        <g key={tick}>
          <line
            class="tick"
            x1={LEFT - 4}
            x2={width}
            y1={TOP + HEIGHT * (1 - tick)}
            y2={TOP + HEIGHT * (1 - tick)}
          />
          <text class="axis" x={LEFT - 8} y={TOP + HEIGHT * (1 - tick) + 4} text-anchor="end">
            {percent(tick, 0)}
          </text>
        </g>
      ))}
      {bars.map((b, i) => {
        const x = LEFT + i * (BAR + GAP) + GAP / 2;
        const h = HEIGHT * b.value;
        return (
          <g key={b.name}>
            <rect
              class={i === 0 ? 'bar-clean' : 'bar-robust'}
              x={x}
              y={TOP + HEIGHT - h}
              width={BAR}
              height={h}
            />
            <text class="value" x={x + BAR / 2} y={TOP + HEIGHT - h - 6} text-anchor="middle">
              {percent(b.value)}
            </text>
            <text class="axis" x={x + BAR / 2} y={TOP + HEIGHT + 18} text-anchor="middle">
              {b.name}
            </text>
          </g>
        );
      })}
    </svg>
  );
}
