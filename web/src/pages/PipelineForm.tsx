import { useEffect, useRef, useState, type FormEvent } from 'react';
import { api, ApiError, post, type Job, type JsonSchema, type Template } from '../api';
import { DatasetPicker } from '../components/DatasetPicker';
import { Link } from '../components/Link';
import { ErrorNotice, Notice } from '../components/Status';
import { number } from '../format';
import { useLoad } from '../hooks';
import { navigate } from '../router';
import { useSession } from '../session';

/** One parameter as the form shows it: the schema with ``$ref`` resolved and ``anyOf [X, null]`` as nullable X. */
interface Field {
  key: string;
  name: string;
  schema: JsonSchema;
  nullable: boolean;
  kind: 'number' | 'integer' | 'boolean' | 'choice' | 'text' | 'json';
  choices: unknown[];
  defaultValue: unknown;
}

function resolve(schema: JsonSchema, defs: Record<string, JsonSchema>): JsonSchema {
  if (schema.$ref) {
    const target = defs[schema.$ref.replace('#/$defs/', '')] ?? {};
    const { $ref: _ref, ...rest } = schema;
    return { ...resolve(target, defs), ...rest };
  }
  return schema;
}

function fieldOf(key: string, name: string, raw: JsonSchema, defs: Record<string, JsonSchema>): Field {
  const schema = resolve(raw, defs);
  let inner = schema;
  let nullable = false;
  if (schema.anyOf) {
    const variants = schema.anyOf.map((v) => resolve(v, defs));
    const others = variants.filter((v) => v.type !== 'null');
    nullable = others.length < variants.length;
    if (others.length === 1) inner = { ...others[0], ...schema, anyOf: undefined, type: others[0].type };
    else if (others.every((v) => v.const !== undefined || v.enum)) {
      inner = { ...schema, anyOf: undefined, enum: others.flatMap((v) => v.enum ?? [v.const]) };
    } else inner = { ...schema, anyOf: undefined, type: undefined };
  }
  const choices = inner.enum ?? (inner.const !== undefined ? [inner.const] : []);
  const kind: Field['kind'] = choices.length ? 'choice'
    : inner.type === 'number' ? 'number'
      : inner.type === 'integer' ? 'integer'
        : inner.type === 'boolean' ? 'boolean'
          : inner.type === 'string' ? 'text' : 'json';
  return { key, name, schema: inner, nullable, kind, choices, defaultValue: schema.default };
}

/** The text an input starts with for ``value``. */
function shown(field: Field, value: unknown): string | boolean {
  if (field.kind === 'boolean') return Boolean(value);
  if (value === null || value === undefined) return '';
  if (field.kind === 'json' || field.kind === 'choice') return typeof value === 'string' && field.kind === 'choice' ? value : JSON.stringify(value);
  return String(value);
}

/** The value an input's text stands for; text that is no number is sent as it is, for the server to refuse. */
function parsed(field: Field, text: string | boolean): unknown {
  if (typeof text === 'boolean') return text;
  if (text.trim() === '' && field.nullable) return null;
  if (field.kind === 'number' || field.kind === 'integer') {
    const n = Number(text);
    return text.trim() !== '' && Number.isFinite(n) ? n : text;
  }
  if (field.kind === 'json' || field.kind === 'choice') {
    try {
      return JSON.parse(text);
    } catch {
      return text;
    }
  }
  return text;
}

function bounds(s: JsonSchema): string {
  // bounds of a billion and beyond only guard against nonsense: not worth a reader's attention
  const shownBound = (b: number | undefined) => b !== undefined && Math.abs(b) < 1e9;
  const parts: string[] = [];
  if (shownBound(s.minimum)) parts.push(`≥ ${number(s.minimum)}`);
  if (shownBound(s.exclusiveMinimum)) parts.push(`> ${number(s.exclusiveMinimum)}`);
  if (shownBound(s.maximum)) parts.push(`≤ ${number(s.maximum)}`);
  if (shownBound(s.exclusiveMaximum)) parts.push(`< ${number(s.exclusiveMaximum)}`);
  return parts.join(', ');
}

function ParamInput({ field, value, error, onChange }: {
  field: Field; value: string | boolean; error?: string; onChange: (v: string | boolean) => void;
}) {
  const id = `param-${field.key}`;
  const help = `${id}-help`;
  const errId = `${id}-error`;
  const describedBy = error ? `${help} ${errId}` : help;
  const s = field.schema;
  const range = bounds(s);
  const common = { id, name: field.key, 'aria-describedby': describedBy, 'aria-invalid': error ? true : undefined };
  return (
    <div className={`field ${error ? 'field-bad' : ''}`}>
      <label htmlFor={id}>
        {field.name}
        {s.unit && <span className="unit"> [{s.unit}]</span>}
      </label>
      {field.kind === 'boolean' ? (
        <input type="checkbox" {...common} checked={value as boolean} onChange={(e) => onChange(e.target.checked)} />
      ) : field.kind === 'choice' ? (
        <select {...common} value={value as string} onChange={(e) => onChange(e.target.value)}>
          {field.nullable && <option value="">(none)</option>}
          {field.choices.map((c) => {
            const text = typeof c === 'string' ? c : JSON.stringify(c);
            return <option key={text} value={text}>{text}</option>;
          })}
        </select>
      ) : (
        <input type="text" inputMode={field.kind === 'number' || field.kind === 'integer' ? 'decimal' : undefined}
          {...common} value={value as string} onChange={(e) => onChange(e.target.value)}
          placeholder={field.nullable ? '(none)' : undefined} />
      )}
      <p id={help} className="help">
        {s.description}
        {range && <span className="muted"> · {range}</span>}
        <span className="muted"> · template: {field.defaultValue === null || field.defaultValue === undefined ? 'none' : JSON.stringify(field.defaultValue)}</span>
      </p>
      {error && <p id={errId} className="field-error" role="alert">{error}</p>}
    </div>
  );
}

/**
 * A template's parameter form, generated from its JSON schema (one fieldset per stage, in data-flow order), and the
 * dataset or live stream to run it on. Only changed values are sent; the server checks them and its refusal is shown
 * at the field it names.
 */
export function PipelineForm({ name, dataset: initialDataset, stream: initialStream }: { name: string; dataset: string; stream: string }) {
  const { me } = useSession();
  const { data: template, error } = useLoad(() => api<Template>(`/pipelines/${encodeURIComponent(name)}`), [name]);
  const [values, setValues] = useState<Record<string, string | boolean>>({});
  const [mode, setMode] = useState<'dataset' | 'stream'>(initialStream ? 'stream' : 'dataset');
  const [dataset, setDataset] = useState(initialDataset);
  const [stream, setStream] = useState(initialStream || me.live_streams?.[0] || '');
  const [picking, setPicking] = useState(false);
  const [fieldErrors, setFieldErrors] = useState<Record<string, string>>({});
  const [formError, setFormError] = useState<string>();
  const [busy, setBusy] = useState(false);
  const formRef = useRef<HTMLFormElement>(null);

  const schema = template?.params_schema;
  const defs = schema?.$defs ?? {};
  const stages = (schema?.['x-order'] ?? Object.keys(schema?.properties ?? {})).map((stage) => {
    const s = schema!.properties![stage];
    return {
      stage, title: s.title ?? stage, description: s.description,
      fields: Object.entries(s.properties ?? {}).map(([p, ps]) => fieldOf(`${stage}.${p}`, p, ps, defs)),
    };
  });
  const fields = stages.flatMap((s) => s.fields);

  useEffect(() => {
    if (!template?.params_schema) return;
    const start: Record<string, string | boolean> = {};
    for (const f of fields) start[f.key] = shown(f, f.defaultValue);
    setValues(start);
    // eslint-disable-next-line react-hooks/exhaustive-deps
  }, [template]);

  const submit = async (event: FormEvent) => {
    event.preventDefault();
    setFieldErrors({});
    setFormError(undefined);
    const overrides: Record<string, unknown> = {};
    for (const f of fields) {
      const value = parsed(f, values[f.key] ?? '');
      if (JSON.stringify(value) !== JSON.stringify(f.defaultValue ?? null)) overrides[f.key] = value;
    }
    const target = mode === 'dataset' ? { dataset: dataset.trim() } : { stream: stream.trim() };
    if (!(target.dataset ?? target.stream)) {
      setFormError(mode === 'dataset' ? 'Choose a dataset to process.' : 'Give the detector stream, eiger://HOST:PORT.');
      return;
    }
    setBusy(true);
    try {
      const job = await post<Job>('/jobs', { pipeline: name, version: template?.version, overrides, ...target });
      navigate(`/jobs/${job.id}`);
    } catch (caught) {
      if (!(caught instanceof ApiError)) throw caught;
      const atFields: Record<string, string> = {};
      const rest: string[] = [];
      for (const problem of caught.problems) {
        const m = /^stages\.([^.]+)\.params\.([^.]+)/.exec(problem.field ?? '');
        const key = m ? `${m[1]}.${m[2]}` : undefined;
        if (key && fields.some((f) => f.key === key)) atFields[key] = problem.message;
        else rest.push(problem.message);
      }
      setFieldErrors(atFields);
      if (!Object.keys(atFields).length) setFormError(caught.message);
      else if (rest.length) setFormError(rest.join('; '));
      const first = Object.keys(atFields)[0];
      if (first) requestAnimationFrame(() => document.getElementById(`param-${first}`)?.focus());
    } finally {
      setBusy(false);
    }
  };

  if (error) return <><h1>{name}</h1><ErrorNotice error={error} what="this pipeline" /></>;
  if (!template) return <p className="muted">Loading {name}…</p>;
  const changed = fields.filter((f) => JSON.stringify(parsed(f, values[f.key] ?? '')) !== JSON.stringify(f.defaultValue ?? null)).length;
  return (
    <>
      <h1>{template.name} <span className="muted small">v{template.version}</span></h1>
      <p>{template.description}</p>
      {template.retired && <Notice kind="warn">This template is retired: it takes no new jobs.</Notice>}
      <form ref={formRef} onSubmit={submit} className="param-form" noValidate aria-label={`Submit ${template.name}`}>
        <fieldset className="card">
          <legend>What to process</legend>
          <div className="inline">
            <label><input type="radio" name="mode" checked={mode === 'dataset'} onChange={() => setMode('dataset')} /> a dataset</label>
            <label><input type="radio" name="mode" checked={mode === 'stream'} onChange={() => setMode('stream')} /> a live detector stream</label>
          </div>
          {mode === 'dataset' ? (
            <div className="field">
              <label htmlFor="dataset">Dataset</label>
              <div className="with-button">
                <input id="dataset" name="dataset" type="text" value={dataset} onChange={(e) => setDataset(e.target.value)}
                  placeholder="visit1/scan_master.h5" aria-describedby="dataset-help" />
                <button type="button" onClick={() => setPicking((p) => !p)} aria-expanded={picking}>Browse…</button>
              </div>
              <p id="dataset-help" className="help">A file, folder or glob relative to the data root.</p>
              {picking && <DatasetPicker onPick={(p) => { setDataset(p); setPicking(false); }} />}
            </div>
          ) : (
            <div className="field">
              <label htmlFor="stream">Detector stream</label>
              <input id="stream" name="stream" type="text" list="streams" value={stream} onChange={(e) => setStream(e.target.value)}
                placeholder="eiger://127.0.0.1:9999" aria-describedby="stream-help" />
              <datalist id="streams">{me.live_streams?.map((s) => <option key={s} value={s} />)}</datalist>
              <p id="stream-help" className="help">
                One scan per series the detector sends, until you stop the job.
                {me.live_streams?.length ? ` Offered here: ${me.live_streams.join(', ')}.` : ' This service offers no stream to users; admins may name any.'}
              </p>
            </div>
          )}
        </fieldset>
        {stages.map((s) => (
          <fieldset key={s.stage} className="card stage">
            <legend>{s.title}</legend>
            {s.description && <p className="muted small">{s.description}</p>}
            {s.fields.length === 0 && <p className="muted small">No parameter to set.</p>}
            <div className="fields">
              {s.fields.map((f) => (
                <ParamInput key={f.key} field={f} value={values[f.key] ?? ''} error={fieldErrors[f.key]}
                  onChange={(v) => setValues((old) => ({ ...old, [f.key]: v }))} />
              ))}
            </div>
          </fieldset>
        ))}
        {formError && <Notice kind="error">The job was not submitted: {formError}</Notice>}
        <div className="submit-bar">
          <button type="submit" className="primary" disabled={busy || template.retired}>{busy ? 'Submitting…' : 'Submit job'}</button>
          <span className="muted">{changed ? `${changed} parameter${changed === 1 ? '' : 's'} changed from the template` : 'the template as it is'}</span>
          <button type="button" onClick={() => { const start: Record<string, string | boolean> = {}; for (const f of fields) start[f.key] = shown(f, f.defaultValue); setValues(start); setFieldErrors({}); }}>Reset</button>
          <span className="spacer" />
          <Link href="/pipelines">Other pipelines</Link>
        </div>
        <details className="card">
          <summary>The template's YAML</summary>
          <pre className="code">{template.yaml}</pre>
        </details>
      </form>
    </>
  );
}
