/**
 * Model shapes make-model can write: one `ModelShape` per file, named presets at real models'
 * shapes (for speed and memory work) and tiny ones per architecture (for tests). Each
 * architecture's presets and shape rules are in its file (src/model/arch/, `makeModel`); this
 * gathers them from the registry and applies the rules every shape obeys.
 */
import { InvalidArgumentError, UnsupportedError } from "../../errors.js";
import type { Architecture } from "../../model/architecture.js";
import { ARCHITECTURES } from "../../model/registry.js";
import type { ModelShape, ShapeOverrides } from "./shape.js";

/** GGUF `general.architecture` values make-model writes. */
export const MAKE_MODEL_ARCHS: readonly string[] = ARCHITECTURES.map((a) => a.name);

/** Named shapes of every architecture, in registry order. */
export const PRESETS: Readonly<Record<string, ModelShape>> = gatherPresets();

/** A name twice or a preset of another architecture is a bug in an architecture file (plain Error). */
function gatherPresets(): Record<string, ModelShape> {
  const all: Record<string, ModelShape> = {};
  for (const a of ARCHITECTURES) {
    for (const [name, shape] of Object.entries(a.makeModel.presets)) {
      if (all[name]) throw new Error(`make-model preset "${name}" is both ${all[name]!.arch}'s and ${a.name}'s: preset names must be unique`);
      if (shape.arch !== a.name) throw new Error(`make-model preset "${name}" of ${a.name} says architecture "${shape.arch}"`);
      all[name] = shape;
    }
  }
  return all;
}

/** The architecture make-model writes under a GGUF name. */
export function makeModelArchitecture(name: string): Architecture {
  const a = ARCHITECTURES.find((x) => x.name === name);
  if (!a) throw new UnsupportedError(`make-model: unknown architecture "${name}"; known: ${MAKE_MODEL_ARCHS.join(", ")}`);
  return a;
}

export function presetShape(name: string): ModelShape {
  const shape = PRESETS[name];
  if (!shape) throw new InvalidArgumentError(`make-model: unknown preset "${name}"; known: ${Object.keys(PRESETS).join(", ")}`);
  return shape;
}

/**
 * Resolves preset / arch / overrides into one validated shape. A preset implies its arch; an
 * --arch that contradicts the preset is an error. Overriding d_model or heads makes the head
 * width dModel / heads, unless the architecture's own rules (makeModel.resolveShape) free it.
 */
export function resolveShape(opts: { preset?: string; arch?: string } & ShapeOverrides): ModelShape {
  let base: ModelShape;
  if (opts.preset !== undefined) {
    base = presetShape(opts.preset);
    if (opts.arch !== undefined && makeModelArchitecture(opts.arch).name !== base.arch) {
      throw new InvalidArgumentError(`make-model: preset "${opts.preset}" is architecture "${base.arch}", not "${opts.arch}"; drop --arch or pick another preset`);
    }
  } else {
    base = presetShape(makeModelArchitecture(opts.arch ?? "llama").makeModel.defaultPreset);
  }
  const { makeModel: rules } = makeModelArchitecture(base.arch);
  const dModel = opts.dModel ?? base.dModel;
  const heads = opts.heads ?? base.heads;
  const generic: ModelShape = {
    ...base,
    layers: opts.layers ?? base.layers,
    dModel, heads,
    kvHeads: opts.kvHeads ?? (opts.heads !== undefined && base.kvHeads === base.heads ? heads : base.kvHeads),
    headDim: opts.dModel !== undefined || opts.heads !== undefined ? dModel / heads : base.headDim,
    experts: opts.experts ?? base.experts,
    topK: opts.topK ?? base.topK,
    dFf: opts.dFf ?? base.dFf,
    sharedDFf: opts.sharedDFf ?? base.sharedDFf,
    vocab: opts.vocab ?? base.vocab,
    context: opts.context ?? base.context,
    ...(opts.nextnLayers !== undefined ? { nextnLayers: opts.nextnLayers } : {}),
  };
  if (opts.nextnLayers !== undefined && base.nextnLayers === undefined) {
    throw new InvalidArgumentError(`make-model: --nextn-layers: ${base.arch} has no multi-token-prediction layers`);
  }
  const shape = rules.resolveShape ? rules.resolveShape(generic, { base, flags: opts }) : generic;
  validateShape(shape);
  rules.validateShape?.(shape);
  return shape;
}

function validateShape(s: ModelShape): void {
  const bad = (msg: string): never => { throw new InvalidArgumentError(`make-model: ${msg}`); };
  const positive: Array<[string, number]> = [
    ["--layers", s.layers], ["--d-model", s.dModel], ["--heads", s.heads], ["--kv-heads", s.kvHeads],
    ["--experts", s.experts], ["--top-k", s.topK], ["--d-ff", s.dFf], ["--context", s.context],
  ];
  for (const [flag, v] of positive) if (!Number.isInteger(v) || v <= 0) bad(`${flag} must be a positive integer, got ${v}`);
  if (s.nextnLayers !== undefined && (!Number.isInteger(s.nextnLayers) || s.nextnLayers < 0)) bad(`--nextn-layers must be a non-negative integer, got ${s.nextnLayers}`);
  if (!Number.isInteger(s.sharedDFf) || s.sharedDFf < 0) bad(`--shared-d-ff must be a non-negative integer, got ${s.sharedDFf}`);
  if (!Number.isInteger(s.vocab) || s.vocab < 0) bad(`--vocab must be a non-negative integer, got ${s.vocab}`);
  if (s.topK > s.experts) bad(`--top-k ${s.topK} exceeds --experts ${s.experts}`);
  if (s.heads % s.kvHeads !== 0) bad(`--heads ${s.heads} is not a multiple of --kv-heads ${s.kvHeads}`);
  if (!Number.isInteger(s.headDim) || s.headDim % 2 !== 0) bad(`head width d_model / heads = ${s.dModel} / ${s.heads} must be an even integer`);
  if (s.dModel % 32 !== 0) bad(`--d-model ${s.dModel} must be a multiple of 32 (quant block size)`);
  if (s.dFf % 32 !== 0) bad(`--d-ff ${s.dFf} must be a multiple of 32 (quant block size)`);
}

/** Parameter count of a shape (what the file holds, norms included). */
export function shapeParams(tensors: ReadonlyArray<{ dims: readonly number[] }>): number {
  let n = 0;
  for (const t of tensors) n += t.dims.reduce((a, b) => a * b, 1);
  return n;
}
