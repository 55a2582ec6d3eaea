import { useEffect, useRef, useState } from 'preact/hooks';
import { AUTOATTACK_VERSIONS } from '../../engine/types.js';
import { type AuditJob, type AuditReport, call, callJson, errorText, type ModelSummary } from './api.js';
import { AttackChart } from './audit-chart.js';
import { followAudit, isFinal } from './audit-events.js';
import { type ProgressLine, ProgressTracker, progressText } from './audit-progress.js';
import { Field, ModelSelect, TextField } from './fields.js';
import { decimal, duration, percent } from './format.js';

/**
 * An AutoAttack audit: a served or uploaded model and a data file, submitted as the multipart form
 * of POST /v1/audits; live progress from its event stream; the report with a chart, the per-point
 * table and the JSON, JUnit and Markdown files. The audit's id is in the URL (#audit/<id>), so a
 * reload follows it again.
 */

const SHOWN_POINTS = 50;

/** The audit's settings as typed, sent as form fields of the same names (empty ones left out). */
interface Settings {
  norm: string;
  eps: string;
  version: string;
  n: string;
  seed: string;
  iterations: string;
  restarts: string;
  queries: string;
}

const NORMS = ['L2', 'Linf'] as const;

const DEFAULT_SETTINGS: Settings = {
  norm: 'L2',
  eps: '0.5',
  version: 'standard',
  n: '100',
  seed: '0',
  iterations: '',
  restarts: '',
  queries: '',
};

type ModelSource = 'served' | 'upload';
const MODEL_SOURCES: ReadonlyArray<[ModelSource, string]> = [
  ['served', 'a served model'],
  ['upload', 'upload one'],
];

interface Downloads {
  json: string;
  junit: string;
  markdown: string;
}

function Report({ job, classNames }: { job: AuditJob; classNames: readonly string[] }) {
  const report = job.result as unknown as AuditReport;
  const [all, setAll] = useState(false);
  const [downloads, setDownloads] = useState<Downloads | undefined>(undefined);
  const [downloadError, setDownloadError] = useState('');
  useEffect(() => {
    const urls: string[] = [];
    const revokeAll = () => {
      for (const url of urls) URL.revokeObjectURL(url);
    };
    const fetchOne = async (format: keyof Downloads) => {
      const res = await call(`/v1/audits/${encodeURIComponent(job.id)}/report?format=${format}`);
      const url = URL.createObjectURL(await res.blob());
      urls.push(url);
      return url;
    };
    Promise.all([fetchOne('json'), fetchOne('junit'), fetchOne('markdown')]).then(
      ([json, junit, markdown]) => setDownloads({ json, junit, markdown }),
      (e: unknown) => setDownloadError(errorText(e)),
    );
    return revokeAll;
  }, [job.id]);
  const points = all ? report.samples : report.samples.slice(0, SHOWN_POINTS);
  const className = (index: number) => classNames[index] ?? String(index);
  return (
    <section class="report" aria-labelledby="report-title">
      <h2 id="report-title">Report</h2>
      <p id="audit-summary" class="verdict">
        Robust accuracy <strong>{percent(report.robust_accuracy)}</strong> (clean{' '}
        {percent(report.clean_accuracy)}) on {report.n} points: AutoAttack {report.version}, {report.norm} eps{' '}
        {decimal(report.eps)}, seed {report.seed}, {report.backend}, {duration(report.seconds)}.
      </p>
      {report.warnings.length > 0 && (
        <ul class="warnings">
          {report.warnings.map((w) => (
            <li key={w}>warning: {w}</li>
          ))}
        </ul>
      )}
      <AttackChart report={report} />
      <table class="attacks start">
        <caption>Per attack (robust accuracy after it and every attack before it)</caption>
        <thead>
          <tr>
            <th scope="col">attack</th>
            <th scope="col">robust accuracy after</th>
            <th scope="col">broken</th>
            <th scope="col">seconds</th>
          </tr>
        </thead>
        <tbody>
          {report.per_attack.map((a) => (
            <tr key={a.name}>
              <th scope="row">{a.name}</th>
              <td>{percent(a.robust_accuracy_after)}</td>
              <td>{a.broken}</td>
              <td>{decimal(a.seconds)}</td>
            </tr>
          ))}
        </tbody>
      </table>
      <p class="downloads">
        {downloads ? (
          <>
            <a href={downloads.json} download={`audit-${job.id}.json`}>
              JSON report
            </a>
            <a href={downloads.junit} download={`audit-${job.id}.xml`}>
              JUnit XML
            </a>
            <a href={downloads.markdown} download={`audit-${job.id}.md`}>
              Markdown summary
            </a>
          </>
        ) : downloadError ? (
          <span class="error" role="alert">
            {downloadError}
          </span>
        ) : (
          <span aria-busy="true">Preparing the files…</span>
        )}
      </p>
      <section class="scroll" aria-label="Per-point results">
        <table class="points">
          <caption>
            Per point ({points.length} of {report.samples.length})
          </caption>
          <thead>
            <tr>
              <th scope="col">point</th>
              <th scope="col">clean</th>
              <th scope="col">predicted</th>
              <th scope="col">broken by</th>
              <th scope="col">perturbation norm</th>
              <th scope="col">seconds</th>
            </tr>
          </thead>
          <tbody>
            {points.map((p) => (
              <tr key={p.index}>
                <th scope="row">{p.index}</th>
                <td>{p.clean_correct ? 'correct' : 'wrong'}</td>
                <td>{className(p.predicted)}</td>
                <td>{p.broken_by ?? 'robust'}</td>
                <td>{p.perturbation_norm === null ? '' : decimal(p.perturbation_norm)}</td>
                <td>{decimal(p.seconds)}</td>
              </tr>
            ))}
          </tbody>
        </table>
      </section>
      {!all && report.samples.length > SHOWN_POINTS && (
        <button type="button" class="start" onClick={() => setAll(true)}>
          Show all {report.samples.length} points
        </button>
      )}
    </section>
  );
}

function Following({
  id,
  classNames,
  onDone,
}: {
  id: string;
  classNames: (job: AuditJob) => readonly string[];
  onDone: () => void;
}) {
  const [job, setJob] = useState<AuditJob | undefined>(undefined);
  const [line, setLine] = useState<ProgressLine | undefined>(undefined);
  const [error, setError] = useState('');
  const [cancelling, setCancelling] = useState(false);
  const tracker = useRef<ProgressTracker | undefined>(undefined);
  const latest = useRef<AuditJob | undefined>(undefined);

  useEffect(() => {
    const controller = new AbortController();
    const seen = (next: AuditJob) => {
      tracker.current ??= new ProgressTracker(next);
      latest.current = next;
      setJob(next);
      setLine(tracker.current.update(next));
    };
    followAudit(id, seen, controller.signal).then(seen, (e: unknown) => {
      if (!controller.signal.aborted) setError(errorText(e));
    });
    // The elapsed time moves between events too.
    const timer = setInterval(() => {
      if (latest.current && tracker.current && !isFinal(latest.current)) {
        setLine(tracker.current.update(latest.current));
      }
    }, 1000);
    return () => {
      controller.abort();
      clearInterval(timer);
    };
  }, [id]);

  const cancel = async () => {
    setCancelling(true);
    try {
      await call(`/v1/audits/${encodeURIComponent(id)}`, { method: 'DELETE' });
    } catch (e) {
      setError(errorText(e));
      setCancelling(false);
    }
  };

  if (error) {
    return (
      <section class="following">
        <p class="error" role="alert">
          {error}
        </p>
        <button type="button" onClick={onDone}>
          New audit
        </button>
      </section>
    );
  }
  if (!job || !line) return <p aria-busy="true">Joining audit {id}…</p>;
  const final = isFinal(job);
  return (
    <section class="following" aria-labelledby="audit-title">
      <h2 id="audit-title">
        Audit of {job.parameters.model}: {job.parameters.norm} eps {decimal(job.parameters.eps)},{' '}
        {job.parameters.version}, n {job.parameters.n}
      </h2>
      <p class="state">
        State: <strong id="audit-state">{job.state}</strong>
        {job.state === 'failed' && job.error ? `: ${job.error}` : ''}
        {job.state === 'cancelled' ? ' (cancelled)' : ''}
      </p>
      {!final && (
        <div class="working" role="status" aria-live="polite">
          <progress
            aria-label="Points done in this attack"
            max={line.total || undefined}
            value={line.total ? line.done : undefined}
          />
          <span id="audit-progress">{progressText(line)}</span>
        </div>
      )}
      <div class="row">
        {!final && (
          <button type="button" class="danger" onClick={cancel} disabled={cancelling}>
            {cancelling ? 'Cancelling…' : 'Cancel audit'}
          </button>
        )}
        {final && (
          <button type="button" onClick={onDone}>
            New audit
          </button>
        )}
      </div>
      {job.state === 'succeeded' && job.result && <Report job={job} classNames={classNames(job)} />}
    </section>
  );
}

export function AuditView({
  models,
  auditId,
}: {
  models: ModelSummary[] | undefined;
  auditId: string | undefined;
}) {
  const preselected = auditId?.startsWith('model:') ? auditId.slice('model:'.length) : undefined;
  const following = auditId && !preselected ? auditId : undefined;
  const [source, setSource] = useState<ModelSource>('served');
  const [model, setModel] = useState(preselected ?? '');
  const [modelFiles, setModelFiles] = useState<File[]>([]);
  const [dataset, setDataset] = useState<File | undefined>(undefined);
  const [labels, setLabels] = useState<File | undefined>(undefined);
  const [settings, setSettings] = useState<Settings>(DEFAULT_SETTINGS);
  const [submitting, setSubmitting] = useState(false);
  const [error, setError] = useState<{ message: string; fields: string[] } | undefined>(undefined);

  useEffect(() => {
    if (!model && models && models.length > 0) setModel(models[0].name);
  }, [models]);
  useEffect(() => {
    if (preselected) {
      setSource('served');
      setModel(preselected);
    }
  }, [preselected]);

  if (following) {
    return (
      <Following
        id={following}
        classNames={(job) => models?.find((m) => m.name === job.parameters.model)?.class_names ?? []}
        onDone={() => {
          location.hash = '#audit';
        }}
      />
    );
  }

  const submit = async (e: Event) => {
    e.preventDefault();
    setError(undefined);
    const form = new FormData();
    if (source === 'served') form.append('model', model);
    else for (const file of modelFiles) form.append('model_files', file, file.name);
    if (dataset) form.append('dataset', dataset, dataset.name);
    if (labels) form.append('labels', labels, labels.name);
    for (const [name, value] of Object.entries(settings)) {
      if (value.trim() !== '') form.append(name, value.trim());
    }
    setSubmitting(true);
    try {
      const job = await callJson<AuditJob>('/v1/audits', { method: 'POST', body: form });
      location.hash = `#audit/${encodeURIComponent(job.id)}`;
    } catch (e) {
      const fields =
        e instanceof Error && 'fields' in e
          ? (e as { fields: ReadonlyArray<{ field: string; message: string }> }).fields.map((f) => f.field)
          : [];
      setError({ message: errorText(e), fields });
    } finally {
      setSubmitting(false);
    }
  };
  const invalid = (field: string) =>
    error?.fields.some((f) => f === field || f.startsWith(`${field}.`)) ? true : undefined;
  const setting = (name: keyof Settings) => (value: string) =>
    setSettings((current) => ({ ...current, [name]: value }));
  const settingField = (
    name: keyof Settings,
    label: string,
    inputMode: 'decimal' | 'numeric',
    required?: boolean,
  ) => (
    <TextField
      id={`audit-${name}`}
      label={label}
      inputMode={inputMode}
      required={required}
      value={settings[name]}
      onValue={setting(name)}
      invalid={invalid(name)}
    />
  );
  const settingSelect = (name: keyof Settings, label: string, options: readonly string[]) => (
    <Field id={`audit-${name}`} label={label}>
      <select
        id={`audit-${name}`}
        value={settings[name]}
        onChange={(e) => setting(name)((e.currentTarget as HTMLSelectElement).value)}
      >
        {options.map((option) => (
          <option key={option} value={option}>
            {option}
          </option>
        ))}
      </select>
    </Field>
  );

  return (
    <form class="audit" onSubmit={submit} aria-describedby="audit-intro">
      <p id="audit-intro" class="lead">
        AutoAttack (Croce &amp; Hein) on the first <em>n</em> labelled points of a data file: robust accuracy
        is the share of points still classified correctly after every attack within the budget.
      </p>
      <fieldset>
        <legend>Model</legend>
        <div class="row">
          {MODEL_SOURCES.map(([value, text]) => (
            <label class="inline" key={value}>
              <input
                type="radio"
                name="source"
                value={value}
                checked={source === value}
                onChange={() => setSource(value)}
              />{' '}
              {text}
            </label>
          ))}
        </div>
        {source === 'served' ? (
          <Field id="audit-model" label="Served model">
            <ModelSelect
              id="audit-model"
              models={models}
              value={model}
              onValue={setModel}
              invalid={invalid('model')}
            />
          </Field>
        ) : (
          <Field
            id="audit-model-files"
            label="Model files: one .onnx, or model.json with its weight shards (card.json optional)"
          >
            <input
              id="audit-model-files"
              type="file"
              multiple
              required
              accept=".onnx,.json,.bin"
              aria-invalid={invalid('model_files')}
              onChange={(e) => setModelFiles([...((e.currentTarget as HTMLInputElement).files ?? [])])}
            />
          </Field>
        )}
      </fieldset>
      <fieldset>
        <legend>Data</legend>
        <Field
          id="audit-dataset"
          label="Labelled test set: CIFAR binary, idx, .npy or a zip of an image folder"
        >
          <input
            id="audit-dataset"
            type="file"
            required
            aria-invalid={invalid('dataset')}
            onChange={(e) => setDataset((e.currentTarget as HTMLInputElement).files?.[0])}
          />
        </Field>
        <Field id="audit-labels" label="Labels file (for idx or .npy images; optional)">
          <input
            id="audit-labels"
            type="file"
            aria-invalid={invalid('labels')}
            onChange={(e) => setLabels((e.currentTarget as HTMLInputElement).files?.[0])}
          />
        </Field>
      </fieldset>
      <fieldset>
        <legend>Threat model and budget</legend>
        <div class="grid-fields">
          {settingSelect('norm', 'Norm', NORMS)}
          {settingField('eps', 'eps (Linf: pixels in [0,1])', 'decimal', true)}
          {settingSelect('version', 'Version', AUTOATTACK_VERSIONS)}
          {settingField('n', 'n (points)', 'numeric', true)}
          {settingField('seed', 'Seed', 'numeric')}
        </div>
        <details>
          <summary>Smaller budgets (smoke tests only)</summary>
          <div class="grid-fields">
            {settingField('iterations', 'Iterations (empty: 100)', 'numeric')}
            {settingField('restarts', 'Restarts (empty: default)', 'numeric')}
            {settingField('queries', 'Square queries (empty: 5000)', 'numeric')}
          </div>
        </details>
      </fieldset>
      {error && (
        <p class="error" role="alert">
          {error.message}
        </p>
      )}
      <button type="submit" class="start" disabled={submitting}>
        {submitting ? 'Uploading…' : 'Start the audit'}
      </button>
    </form>
  );
}
