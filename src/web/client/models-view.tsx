import { useEffect, useState } from 'preact/hooks';
import { callJson, errorText, type ModelDetail, type ModelSummary, modelPath } from './api.js';
import { decimal, percent } from './format.js';
import { type MetricRow, metricRows } from './metrics.js';

/** Every served model's card, side by side. */

function Metric({ row }: { row: MetricRow }) {
  return (
    <>
      <dt>{row.label}</dt>
      <dd>
        {row.value ?? <span class="absent">not in the card</span>}
        {row.key && row.key !== row.label && <span class="key-name">card: {row.key}</span>}
      </dd>
    </>
  );
}

function Card({ summary }: { summary: ModelSummary }) {
  const [detail, setDetail] = useState<ModelDetail | undefined>(undefined);
  const [error, setError] = useState<unknown>(undefined);
  useEffect(() => {
    callJson<ModelDetail>(modelPath(summary.name)).then(setDetail, setError);
  }, [summary.name]);
  const rows = detail ? metricRows(detail.metrics) : undefined;
  const budget = [
    summary.eps_in !== null ? `in-distribution: L2 ${decimal(summary.eps_in)}` : undefined,
    summary.eps_out !== null ? `out-distribution: L2 ${decimal(summary.eps_out)}` : undefined,
  ].filter((x) => x !== undefined);
  return (
    <article class="card" aria-labelledby={`card-${summary.name}`}>
      <h2 id={`card-${summary.name}`}>{summary.name}</h2>
      <dl>
        <dt>Objective</dt>
        <dd>{summary.objective ?? <span class="absent">not in the card</span>}</dd>
        <dt>Architecture</dt>
        <dd>{detail?.architecture ?? <span class="absent">{detail ? 'not in the card' : '…'}</span>}</dd>
        <dt>Training data</dt>
        <dd>{detail?.data ?? <span class="absent">{detail ? 'not in the card' : '…'}</span>}</dd>
        <dt>Input</dt>
        <dd>
          {summary.input_shape.join('×')}, {summary.num_classes} classes
        </dd>
        {budget.length > 0 && (
          <>
            <dt>Trained robust</dt>
            <dd>{budget.join('; ')}</dd>
          </>
        )}
        <dt>Temperature</dt>
        <dd>{decimal(summary.temperature)}</dd>
        <dt>OOD threshold</dt>
        <dd>{percent(summary.ood_threshold)} confidence</dd>
        {rows?.headline.map((row) => (
          <Metric key={row.label} row={row} />
        ))}
      </dl>
      {error !== undefined && (
        <p class="error" role="alert">
          {errorText(error)}
        </p>
      )}
      {rows && rows.rest.length > 0 && (
        <details>
          <summary>More from the card ({rows.rest.length})</summary>
          <dl>
            {rows.rest.map((row) => (
              <Metric key={row.key ?? row.label} row={row} />
            ))}
          </dl>
        </details>
      )}
      <p class="actions">
        <a href={`#image/${encodeURIComponent(summary.name)}`}>Look at an image with {summary.name}</a>
        <a href={`#audit/model:${encodeURIComponent(summary.name)}`}>Audit {summary.name}</a>
      </p>
    </article>
  );
}

export function ModelsView({ models, error }: { models: ModelSummary[] | undefined; error: unknown }) {
  if (error !== undefined) {
    return (
      <p class="error" role="alert">
        {errorText(error)}
      </p>
    );
  }
  if (!models) return <p aria-busy="true">Loading the served models…</p>;
  if (models.length === 0) {
    return <p>This service serves no models. Start it with a models folder (ratio serve --models DIR).</p>;
  }
  return (
    <>
      <p class="lead">
        {models.length} served model{models.length === 1 ? '' : 's'}, from their cards. Figures the card does
        not carry are marked; <code>ratio eval</code> measures them.
      </p>
      <div class="cards">
        {models.map((m) => (
          <Card key={m.name} summary={m} />
        ))}
      </div>
    </>
  );
}
