import type { ComponentChildren } from 'preact';
import type { ModelSummary } from './api.js';

/** Form pieces both views use: a labelled field, a text input and the served-model picker. */

export function Field({ id, label, children }: { id: string; label: string; children: ComponentChildren }) {
  return (
    <div class="field">
      <label for={id}>{label}</label>
      {children}
    </div>
  );
}

/** A labelled text input; `invalid` marks it for assistive technology when the service rejected it. */
export function TextField({
  id,
  label,
  value,
  onValue,
  inputMode,
  required,
  invalid,
}: {
  id: string;
  label: string;
  value: string;
  onValue: (value: string) => void;
  inputMode?: 'decimal' | 'numeric';
  required?: boolean;
  invalid?: boolean;
}) {
  return (
    <Field id={id} label={label}>
      <input
        id={id}
        inputMode={inputMode}
        required={required}
        value={value}
        aria-invalid={invalid}
        onInput={(e) => onValue((e.currentTarget as HTMLInputElement).value)}
      />
    </Field>
  );
}

/** A select of the served models by name. */
export function ModelSelect({
  id,
  models,
  value,
  onValue,
  invalid,
}: {
  id: string;
  models: ModelSummary[] | undefined;
  value: string;
  onValue: (name: string) => void;
  invalid?: boolean;
}) {
  return (
    <select
      id={id}
      value={value}
      aria-invalid={invalid}
      onChange={(e) => onValue((e.currentTarget as HTMLSelectElement).value)}
    >
      {(models ?? []).map((m) => (
        <option key={m.name} value={m.name}>
          {m.name}
        </option>
      ))}
    </select>
  );
}
