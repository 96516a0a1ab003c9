/**
 * Kubernetes manifests checked offline against the API's own schemas, strictly: the models of
 * kubernetes-models (generated from Kubernetes' OpenAPI) and @kubernetes-models/keda (from KEDA's
 * CRDs) check every field they know, its type, format and required fields. Those schemas do not
 * forbid unknown fields (the API server does that, with field validation), so a misspelled field
 * would pass them silently: here the manifest is handed to the validator behind a Proxy that
 * records every field the validator reads, and a field it never read is one the schema does not
 * have. Map-like fields (labels, a ConfigMap's data, a trigger's metadata) are read key by key by
 * the validator, so their keys count as known.
 */
import { readdirSync, readFileSync } from 'node:fs';
import path from 'node:path';
import { ScaledObject } from '@kubernetes-models/keda/keda.sh/v1alpha1/ScaledObject';
import { Deployment } from 'kubernetes-models/apps/v1/Deployment';
import { StatefulSet } from 'kubernetes-models/apps/v1/StatefulSet';
import { Job } from 'kubernetes-models/batch/v1/Job';
import { PodDisruptionBudget } from 'kubernetes-models/policy/v1/PodDisruptionBudget';
import { ConfigMap } from 'kubernetes-models/v1/ConfigMap';
import { Namespace } from 'kubernetes-models/v1/Namespace';
import { Secret } from 'kubernetes-models/v1/Secret';
import { Service } from 'kubernetes-models/v1/Service';
import { parseAllDocuments } from 'yaml';

/** The kinds our manifests use (each import loads its schemas); another one is reported, not skipped. */
const MODELS: Record<string, Record<string, unknown>> = {
  v1: { ConfigMap, Namespace, Secret, Service },
  'apps/v1': { Deployment, StatefulSet },
  'batch/v1': { Job },
  'policy/v1': { PodDisruptionBudget },
  'keda.sh/v1alpha1': { ScaledObject },
};

export type Manifest = Record<string, any>;

export interface ManifestDocument {
  /** Relative to the folder that was read. */
  file: string;
  /** The document's place in its file, from 0. */
  index: number;
  doc: Manifest;
}

/** Every document of every .yaml file under `dir` but kustomization.yaml files (they are not API objects). */
export function readManifests(dir: string): ManifestDocument[] {
  const files = readdirSync(dir, { recursive: true, encoding: 'utf8' })
    .filter((file) => file.endsWith('.yaml') && path.basename(file) !== 'kustomization.yaml')
    .sort();
  return files.flatMap((file) => parseManifests(readFileSync(path.join(dir, file), 'utf8'), file));
}

/** The documents of one YAML text; a syntax error throws, naming the file. */
export function parseManifests(text: string, file: string): ManifestDocument[] {
  return parseAllDocuments(text).map((document, index) => {
    if (document.errors.length > 0) throw new Error(`${file} document ${index}: ${document.errors[0]!.message}`);
    return { file, index, doc: document.toJS() as Manifest };
  });
}

/** What is wrong with one object: schema errors, then fields the schema does not have; empty when valid. */
export function manifestProblems(doc: Manifest): string[] {
  const group = MODELS[String(doc.apiVersion)];
  const model = group?.[String(doc.kind)] as { prototype: { validate(): void } } | undefined;
  if (!model) return [`${doc.apiVersion} ${doc.kind} is not a kind this check has a schema for`];
  const read = new Map<string, Set<string>>();
  const note = (at: string, key: string | symbol) => {
    if (typeof key === 'string') (read.get(at) ?? read.set(at, new Set()).get(at)!).add(key);
  };
  const watched = (value: unknown, at: string): unknown => {
    if (value === null || typeof value !== 'object') return value;
    return new Proxy(value, {
      get(target, key, receiver) {
        note(at, key);
        const field = Reflect.get(target, key, receiver);
        return typeof key === 'string' && Object.hasOwn(target, key) ? watched(field, `${at}/${key}`) : field;
      },
      has(target, key) {
        note(at, key);
        return Reflect.has(target, key);
      },
    });
  };
  const problems: string[] = [];
  try {
    model.prototype.validate.call(watched(doc, ''));
  } catch (err) {
    problems.push((err as Error).message);
  }
  const unknown = (value: unknown, at: string): void => {
    if (value === null || typeof value !== 'object') return;
    for (const [key, field] of Object.entries(value)) {
      if (!Array.isArray(value) && !read.get(at)?.has(key)) problems.push(`data${at}/${key} is not a field of ${doc.kind}`);
      else unknown(field, `${at}/${key}`);
    }
  };
  unknown(doc, '');
  return problems;
}
