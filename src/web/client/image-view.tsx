import type { ComponentChildren } from 'preact';
import { useEffect, useRef, useState } from 'preact/hooks';
import {
  type CounterfactualResponse,
  call,
  errorText,
  type ModelSummary,
  modelPath,
  type OodResponse,
  type PredictResponse,
  postJson,
} from './api.js';
import { Field, ModelSelect, TextField } from './fields.js';
import { decimal, duration, percent } from './format.js';
import { type Task, useElapsed, useTask } from './task.js';
import { predictionSentence, worstCaseSentence } from './verdicts.js';

/**
 * One image through one model: calibrated probabilities with the OOD verdict, the worst-case OOD
 * search and the counterfactual grid, as the API returns them. The image comes from a file (pick,
 * drop or paste) or a bundled test image.
 */

interface Sample {
  file: string;
  label: string;
  source: string;
}

interface ChosenImage {
  /** PNG or JPEG bytes as the service takes them. */
  blob: Blob;
  url: string;
  /** Who the image is, for alt text and headings. */
  description: string;
}

const SERVICE_TYPES = new Set(['image/png', 'image/jpeg']);

/** PNG and JPEG go as they are; anything else the browser decodes is re-encoded as PNG. */
async function serviceImage(file: Blob): Promise<Blob> {
  if (SERVICE_TYPES.has(file.type)) return file;
  let bitmap: ImageBitmap;
  try {
    bitmap = await createImageBitmap(file);
  } catch {
    throw new Error('This file is not an image the browser can read (PNG, JPEG, WebP, GIF, BMP).');
  }
  const canvas = document.createElement('canvas');
  canvas.width = bitmap.width;
  canvas.height = bitmap.height;
  canvas.getContext('2d')!.drawImage(bitmap, 0, 0);
  bitmap.close();
  return new Promise((resolve, reject) =>
    canvas.toBlob(
      (blob) => (blob ? resolve(blob) : reject(new Error('cannot encode the image'))),
      'image/png',
    ),
  );
}

function dataUrl(blob: Blob): Promise<string> {
  return new Promise((resolve, reject) => {
    const reader = new FileReader();
    reader.onload = () => resolve(String(reader.result));
    reader.onerror = () => reject(reader.error);
    reader.readAsDataURL(blob);
  });
}

const png = (base64: string) => `data:image/png;base64,${base64}`;

function Working({ started, what }: { started: number; what: string }) {
  const seconds = useElapsed(started);
  return (
    <div class="working" role="status">
      <progress aria-label={what} />
      <span>
        {what}… {duration(seconds)}
      </span>
    </div>
  );
}

function Panel<T>({
  id,
  title,
  task,
  what,
  children,
}: {
  id: string;
  title: string;
  task: Task<T>;
  what: string;
  children: (value: T) => ComponentChildren;
}) {
  return (
    <section class="panel" id={id} aria-labelledby={`${id}-title`} aria-busy={task.status === 'running'}>
      <h2 id={`${id}-title`}>{title}</h2>
      {task.status === 'idle' && <p class="absent">Choose an image above.</p>}
      {task.status === 'running' && <Working started={task.started} what={what} />}
      {task.status === 'error' && (
        <p class="error" role="alert">
          {task.message}
        </p>
      )}
      {task.status === 'done' && (
        <>
          {children(task.value)}
          <p class="timing">Answered in {decimal(task.seconds)} s.</p>
        </>
      )}
    </section>
  );
}

function Bar({ value, strong }: { value: number; strong?: boolean }) {
  // The width is set through the style property (CSSOM), which the CSP allows; no style attribute.
  return (
    <span class="bar" aria-hidden="true">
      <span class={strong ? 'fill strong' : 'fill'} style={{ width: `${(value * 100).toFixed(1)}%` }} />
    </span>
  );
}

function Prediction({ answer, classNames }: { answer: PredictResponse; classNames: readonly string[] }) {
  const p = answer.predictions[0];
  const many = p.probabilities.length > 20;
  const rows = many
    ? p.top_k.map((s) => ({ index: s.index, name: s.class, probability: s.probability }))
    : p.probabilities.map((probability, index) => ({
        index,
        name: classNames[index] ?? p.top_k.find((s) => s.index === index)?.class ?? `class ${index}`,
        probability,
      }));
  return (
    <>
      <p id="predict-verdict" class={p.in_distribution ? 'verdict in' : 'verdict out'}>
        {predictionSentence(answer)} Predicted: <strong>{p.predicted.class}</strong>.
      </p>
      <ol class="bars" aria-label={many ? 'The 10 most probable classes' : 'Probability of every class'}>
        {rows.map((row) => (
          <li key={row.index}>
            <span class="name">{row.name}</span>
            <Bar value={row.probability} strong={row.index === p.predicted.index} />
            <span class="value">{percent(row.probability)}</span>
          </li>
        ))}
      </ol>
      <p class="note">Calibrated with temperature {decimal(answer.temperature)}.</p>
    </>
  );
}

function WorstCase({ answer, image }: { answer: OodResponse; image: ChosenImage }) {
  const r = answer.results[0];
  return (
    <>
      <p id="ood-verdict" class={r.verdict === 'in_distribution' ? 'verdict in' : 'verdict out'}>
        {worstCaseSentence(answer)}
      </p>
      <ul class="compare">
        <li>
          <span class="name">clean</span>
          <Bar value={r.clean_confidence} />
          <span class="value">{percent(r.clean_confidence)}</span>
        </li>
        <li>
          <span class="name">worst case</span>
          <Bar value={r.worst_case_confidence} strong />
          <span class="value">{percent(r.worst_case_confidence)}</span>
        </li>
      </ul>
      <div class="pair">
        <figure>
          <img
            class="pixels"
            src={image.url}
            alt={`${image.description}, as chosen`}
            width={96}
            height={96}
          />
          <figcaption>your image</figcaption>
        </figure>
        <figure>
          <img
            class="pixels"
            src={png(r.worst_case_image)}
            alt={`The worst case within L2 ${decimal(answer.eps)} of ${image.description}: the model gives it ${percent(r.worst_case_confidence)} confidence for ${r.worst_case_class.class}`}
            width={96}
            height={96}
          />
          <figcaption>
            worst case: {percent(r.worst_case_confidence)} {r.worst_case_class.class}
          </figcaption>
        </figure>
      </div>
    </>
  );
}

function Counterfactuals({ answer, image }: { answer: CounterfactualResponse; image: ChosenImage }) {
  const original = answer.original_class.class;
  const radii = answer.targets[0]?.radii.map((r) => r.eps) ?? [];
  return (
    <section class="scroll" aria-label="Counterfactual grid">
      <table class="grid">
        <caption>
          {image.description} (predicted {original}) changed towards each target class within growing L2
          radii; under each image p(target) / p({original}).
        </caption>
        <thead>
          <tr>
            <th scope="col">target</th>
            <th scope="col">original</th>
            {radii.map((eps) => (
              <th scope="col" key={eps}>
                L2 {decimal(eps)}
              </th>
            ))}
          </tr>
        </thead>
        <tbody>
          {answer.targets.map((t) => (
            <tr key={t.index}>
              <th scope="row">
                {original} → {t.class}
              </th>
              <td>
                <figure>
                  <img
                    class="pixels"
                    src={image.url}
                    alt={`${image.description}, unchanged`}
                    width={64}
                    height={64}
                  />
                  <figcaption>
                    {percent(t.clean.p_target, 0)} / {percent(t.clean.p_original, 0)}
                  </figcaption>
                </figure>
              </td>
              {t.radii.map((r) => (
                <td key={r.eps}>
                  <figure>
                    <img
                      class="pixels"
                      src={png(r.image)}
                      alt={`${image.description} changed towards ${t.class} within L2 ${decimal(r.eps)}: p(${t.class}) ${percent(r.p_target)}, p(${original}) ${percent(r.p_original)}`}
                      width={64}
                      height={64}
                    />
                    <figcaption>
                      {percent(r.p_target, 0)} / {percent(r.p_original, 0)}
                    </figcaption>
                  </figure>
                </td>
              ))}
            </tr>
          ))}
        </tbody>
      </table>
    </section>
  );
}

function numberOrUndefined(text: string): number | undefined {
  const trimmed = text.trim();
  return trimmed === '' ? undefined : Number(trimmed);
}

export function ImageView({
  models,
  error,
  initialModel,
}: {
  models: ModelSummary[] | undefined;
  error: unknown;
  initialModel: string | undefined;
}) {
  const [model, setModel] = useState(initialModel ?? '');
  const [image, setImage] = useState<ChosenImage | undefined>(undefined);
  const [imageError, setImageError] = useState('');
  const [samples, setSamples] = useState<Sample[]>([]);
  const [dragging, setDragging] = useState(false);
  const [oodEps, setOodEps] = useState('');
  const [iterations, setIterations] = useState('');
  const [radii, setRadii] = useState('');
  const [runs, setRuns] = useState(0);
  const [prediction, runPrediction] = useTask<PredictResponse>();
  const [ood, runOod] = useTask<OodResponse>();
  const [counterfactuals, runCounterfactuals] = useTask<CounterfactualResponse>();
  const picker = useRef<HTMLInputElement>(null);

  useEffect(() => {
    if (!model && models && models.length > 0) setModel(models[0].name);
  }, [models]);
  useEffect(() => {
    if (initialModel) setModel(initialModel);
  }, [initialModel]);
  useEffect(() => {
    fetch('/web/samples/samples.json')
      .then((res) => (res.ok ? (res.json() as Promise<Sample[]>) : []))
      .then(setSamples, () => setSamples([]));
  }, []);
  useEffect(() => {
    const onPaste = (e: ClipboardEvent) => {
      const file = [...(e.clipboardData?.files ?? [])].find((f) => f.type.startsWith('image/'));
      if (file) {
        e.preventDefault();
        void choose(file, 'the pasted image');
      }
    };
    document.addEventListener('paste', onPaste);
    return () => document.removeEventListener('paste', onPaste);
  }, []);
  useEffect(() => () => (image ? URL.revokeObjectURL(image.url) : undefined), [image]);

  const summary = models?.find((m) => m.name === model);

  useEffect(() => {
    if (!image || !summary) return;
    const path = modelPath(summary.name);
    const its = numberOrUndefined(iterations);
    runPrediction(async (signal) => {
      const res = await call(`${path}/predict?top_k=${Math.min(10, summary.num_classes)}`, {
        method: 'POST',
        headers: { 'content-type': image.blob.type },
        body: image.blob,
        signal,
      });
      return (await res.json()) as PredictResponse;
    });
    const encoded = dataUrl(image.blob);
    runOod(async (signal) =>
      postJson<OodResponse>(
        `${path}/ood`,
        { images: [await encoded], eps: numberOrUndefined(oodEps), iterations: its },
        signal,
      ),
    );
    runCounterfactuals(async (signal) => {
      const list = radii
        .split(/[\s,]+/)
        .filter((r) => r !== '')
        .map(Number);
      return postJson<CounterfactualResponse>(
        `${path}/counterfactuals`,
        { image: await encoded, radii: list.length > 0 ? list : undefined, iterations: its },
        signal,
      );
    });
  }, [image, summary?.name, runs]);

  async function choose(file: Blob, description: string) {
    setImageError('');
    try {
      const blob = await serviceImage(file);
      setImage({ blob, url: URL.createObjectURL(blob), description });
    } catch (e) {
      setImageError(errorText(e));
    }
  }

  async function chooseSample(sample: Sample) {
    try {
      const res = await fetch(`/web/samples/${sample.file}`);
      await choose(await res.blob(), sample.label);
    } catch (e) {
      setImageError(errorText(e));
    }
  }

  if (error !== undefined) {
    return (
      <p class="error" role="alert">
        {errorText(error)}
      </p>
    );
  }
  return (
    <>
      <form class="choose" onSubmit={(e) => e.preventDefault()}>
        <Field id="image-model" label="Model">
          <ModelSelect id="image-model" models={models} value={model} onValue={setModel} />
        </Field>
        {/* biome-ignore lint/a11y/noStaticElementInteractions: dropping is a pointer shortcut; the file input inside is the keyboard way */}
        <div
          class={dragging ? 'drop dragging' : 'drop'}
          onDragOver={(e) => {
            e.preventDefault();
            setDragging(true);
          }}
          onDragLeave={() => setDragging(false)}
          onDrop={(e) => {
            e.preventDefault();
            setDragging(false);
            const file = e.dataTransfer?.files[0];
            if (file) void choose(file, file.name);
          }}
        >
          <label for="image-file">Pick an image file</label>
          <input
            id="image-file"
            ref={picker}
            type="file"
            accept="image/*"
            onChange={(e) => {
              const file = (e.currentTarget as HTMLInputElement).files?.[0];
              if (file) void choose(file, file.name);
            }}
          />
          <p class="hint">…or drop one here, or paste one (Ctrl+V) anywhere on this page.</p>
        </div>
        {samples.length > 0 && (
          <fieldset class="samples">
            <legend>…or take a test image</legend>
            {samples.map((s) => (
              <button
                type="button"
                class="sample"
                key={s.file}
                onClick={() => void chooseSample(s)}
                title={s.source}
              >
                <img class="pixels" src={`/web/samples/${s.file}`} alt="" width={32} height={32} />
                <span>{s.label}</span>
              </button>
            ))}
          </fieldset>
        )}
        <details class="settings">
          <summary>Analysis settings</summary>
          <TextField
            id="ood-eps"
            label="Worst-case OOD radius (L2; empty: the card's)"
            inputMode="decimal"
            value={oodEps}
            onValue={setOodEps}
          />
          <TextField
            id="iterations"
            label="APGD iterations (empty: 100)"
            inputMode="numeric"
            value={iterations}
            onValue={setIterations}
          />
          <TextField
            id="radii"
            label="Counterfactual radii (L2, comma-separated; empty: the defaults)"
            value={radii}
            onValue={setRadii}
          />
          <button type="button" disabled={!image} onClick={() => setRuns((n) => n + 1)}>
            Run again with these settings
          </button>
        </details>
      </form>
      {imageError && (
        <p class="error" role="alert">
          {imageError}
        </p>
      )}
      {image && (
        <div class="chosen">
          <img class="pixels" src={image.url} alt={image.description} width={96} height={96} />
          <p>
            <strong>{image.description}</strong> through <strong>{model}</strong>
            {summary && summary.input_shape.length === 3
              ? ` (resized to ${summary.input_shape[0]}×${summary.input_shape[1]})`
              : ''}
          </p>
        </div>
      )}
      <div class="panels">
        <Panel id="prediction" title="Calibrated probabilities" task={prediction} what="Predicting">
          {(answer) => <Prediction answer={answer} classNames={summary?.class_names ?? []} />}
        </Panel>
        <Panel id="worst-case" title="Worst-case OOD search" task={ood} what="Searching the worst case">
          {(answer) => (image ? <WorstCase answer={answer} image={image} /> : null)}
        </Panel>
        <Panel
          id="counterfactuals"
          title="Counterfactuals"
          task={counterfactuals}
          what="Computing counterfactuals"
        >
          {(answer) => (image ? <Counterfactuals answer={answer} image={image} /> : null)}
        </Panel>
      </div>
    </>
  );
}
