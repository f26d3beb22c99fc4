/**
 * make-model: deterministic random Mixture-of-Experts GGUF files at chosen shapes, in the exact
 * layout llama.cpp loads, for every architecture in the registry (each one's presets, block
 * layout and keys are in its file, src/model/arch/, `makeModel`).
 *
 * The same options and seed always give a byte-identical file: every tensor is drawn from its own
 * PRNG stream seeded by (seed, tensor name), and the header holds nothing time- or host-dependent.
 *
 * Types: matrices (attention, experts, shared experts, embeddings, output) take `type`; norms,
 * routers (ffn_gate_inp*) and biases stay F32 as llama.cpp keeps them. A matrix whose rows are not
 * whole blocks of `type` falls back the way llama.cpp's quantizer does (Q4_K → Q4_0, Q5_K / Q6_K →
 * Q8_0; then F16). MXFP4 is llama.cpp's MXFP4_MOE file type: expert stacks in MXFP4, every other
 * matrix Q8_0. Default type: F16 for tiny presets (close to exact, for comparisons), Q8_0
 * otherwise.
 */
import { statSync } from "node:fs";
import { GGUFValueType, type GGUFMetadataValue } from "../../formats/model-file.js";
import { readGGUF } from "../../formats/gguf/reader.js";
import { GGMLType, typeFromName, typeInfo, typeName } from "../../formats/quant/types.js";
import { FileAccessError, InvalidArgumentError, UnsupportedError } from "../../errors.js";
import { archMetadata, tensorLayout, type TensorPlan } from "./layout.js";
import { makeModelArchitecture, resolveShape, shapeParams } from "./presets.js";
import type { ModelShape, ShapeOverrides } from "./shape.js";
import { encodeFloats, MAKE_MODEL_TYPES, randomFloats, randomTensorBytes, streamSeed, Xoshiro128 } from "./random-weights.js";
import {
  biasedRouter, embeddingWithSharedComponent, projectOutRows, readsNormOf, routingDescription, routingEnabled, routingTargets,
  sharedDirectionAfterNorm, validateRouting, type RoutingOptions,
} from "./routing.js";
import { quantizeRows } from "../../formats/quant/quantize.js";
import { builtinVocabMetadata, vocabFromMetadata } from "./vocab.js";
import { writeGGUF } from "../../formats/gguf/writer.js";

export { PRESETS, MAKE_MODEL_ARCHS, resolveShape } from "./presets.js";
export type { ModelShape, ShapeOverrides } from "./shape.js";
export { tensorLayout, archMetadata, type TensorPlan } from "./layout.js";
export { builtinVocabTokens, BUILTIN_CHAT_TEMPLATE } from "./vocab.js";
export { routingTargets, type RoutingOptions } from "./routing.js";

export interface MakeModelOptions extends ShapeOverrides {
  /** Output path (.gguf). */
  out: string;
  /** Named shape (implies its architecture); see PRESETS. */
  preset?: string;
  /** GGUF architecture; without a preset, its tiny preset is the base shape. */
  arch?: string;
  /** Type of the matrices: F32 F16 BF16 Q8_0 Q4_0 Q4_K Q5_K Q6_K, or MXFP4 (experts; the rest Q8_0). Default: F16 for tiny presets, else Q8_0. */
  type?: string;
  /** PRNG seed (default 0). */
  seed?: number;
  /** Copy tokenizer.* keys from this GGUF; the vocab size becomes its token count. */
  vocabFrom?: string;
  /**
   * Skewed per-layer expert popularity (off by default; see routing.ts): a Zipf exponent, or a
   * file of measured expert counts (`*__expert_counts__*.json`). Changes token_embd and the routers.
   */
  routing?: RoutingOptions;
  /** Called after each tensor is written: bytes of tensor data written so far, and in all. */
  onProgress?: (done: number, total: number) => void;
}

export interface MakeModelResult {
  path: string;
  /** File size. */
  bytes: number;
  /** Parameters in the file (every tensor element, norms included). */
  params: number;
  shape: ModelShape;
  type: string;
}

/** The llama_ftype that names a file's dominant type (general.file_type). */
const FILE_TYPE: Partial<Record<GGMLType, number>> = {
  [GGMLType.F32]: 0, [GGMLType.F16]: 1, [GGMLType.Q4_0]: 2, [GGMLType.Q8_0]: 7,
  [GGMLType.Q4_K]: 15, [GGMLType.Q5_K]: 17, [GGMLType.Q6_K]: 18, [GGMLType.BF16]: 32,
  [GGMLType.MXFP4]: 38, // LLAMA_FTYPE_MOSTLY_MXFP4_MOE
};

/**
 * The type matrix `name` takes in a file of type `type`. MXFP4 follows llama.cpp's MXFP4_MOE
 * (llama-quant.cpp, "MoE tensors -> MXFP4, other tensors -> Q8_0"): the expert stacks ffn_*_exps in
 * MXFP4, every other matrix (attention, shared experts, embeddings, output) in Q8_0. llama.cpp
 * tells expert stacks by a third dimension above 1, which also takes deepseek2's per-head
 * attn_k_b / attn_v_b (it later exempts such MLA tensors for one architecture); here they stay Q8_0.
 */
function matrixType(type: GGMLType, name: string): GGMLType {
  if (type !== GGMLType.MXFP4) return type;
  return /_exps\.weight$/.test(name) ? GGMLType.MXFP4 : GGMLType.Q8_0;
}

/** What a matrix of `type` is stored as when its rows are not whole blocks (as llama.cpp falls back). */
function storageType(type: GGMLType, ncols: number): GGMLType {
  const chain: GGMLType[] = [type];
  if (type === GGMLType.Q4_K) chain.push(GGMLType.Q4_0);
  if (type === GGMLType.Q4_K || type === GGMLType.Q5_K || type === GGMLType.Q6_K) chain.push(GGMLType.Q8_0);
  chain.push(GGMLType.F16);
  for (const t of chain) if (ncols % typeInfo(t).blockSize === 0) return t;
  return GGMLType.F32;
}

export function parseMakeModelType(name: string): GGMLType {
  let t: GGMLType;
  try {
    t = typeFromName(name);
  } catch {
    t = -1 as GGMLType;
  }
  if (!MAKE_MODEL_TYPES.includes(t)) {
    throw new UnsupportedError(`make-model: unknown or unsupported --type "${name}"; use one of ${MAKE_MODEL_TYPES.map(typeName).join(", ")}`);
  }
  return t;
}

/** The tensors of a model with their storage types, without generating anything. */
export function planModel(opts: Omit<MakeModelOptions, "out" | "onProgress">): { shape: ModelShape; type: GGMLType; tensors: Array<TensorPlan & { type: GGMLType }>; metadata: Array<[string, GGUFMetadataValue]> } {
  const seed = opts.seed ?? 0;
  if (!Number.isSafeInteger(seed) || seed < 0) throw new InvalidArgumentError(`make-model: --seed must be a non-negative integer, got ${seed}`);
  let shape = resolveShape(opts);
  const presetName = opts.preset ?? `tiny-${shape.arch}`;
  const type = parseMakeModelType(opts.type ?? (presetName.startsWith("tiny") ? "F16" : "Q8_0"));

  let vocab: { size: number; metadata: Array<[string, GGUFMetadataValue]> };
  if (opts.vocabFrom !== undefined) {
    if (opts.vocab !== undefined) throw new InvalidArgumentError("make-model: --vocab and --vocab-from exclude each other (the vocab file sets the size)");
    try {
      statSync(opts.vocabFrom);
    } catch {
      throw new FileAccessError(`make-model: --vocab-from ${opts.vocabFrom} not found`);
    }
    vocab = vocabFromMetadata(opts.vocabFrom, readGGUF(opts.vocabFrom).metadata);
  } else {
    vocab = builtinVocabMetadata(shape.vocab, makeModelArchitecture(shape.arch).makeModel.chat);
  }
  shape = { ...shape, vocab: vocab.size };

  const { makeModel: arch } = makeModelArchitecture(shape.arch);
  const tensors = tensorLayout(shape, arch).map((t) => ({ ...t, type: t.role === "f32" ? GGMLType.F32 : storageType(matrixType(type, t.name), t.dims[0]!) }));
  const str = (value: string): GGUFMetadataValue => ({ type: GGUFValueType.STRING, value });
  const metadata: Array<[string, GGUFMetadataValue]> = [
    ["general.architecture", str(shape.arch)],
    ["general.type", str("model")],
    ["general.name", str(`moira make-model ${opts.preset ?? shape.arch} ${typeName(type)} seed ${seed}`)],
    ["general.file_type", { type: GGUFValueType.UINT32, value: FILE_TYPE[type] ?? 0 }],
    ["general.quantization_version", { type: GGUFValueType.UINT32, value: 2 }],
    ...archMetadata(shape, arch),
    ...vocab.metadata,
  ];
  if (routingEnabled(opts.routing)) {
    validateRouting(opts.routing);
    metadata.push(["moira.routing", str(routingDescription(opts.routing))]);
  }
  return { shape, type, tensors, metadata };
}

/**
 * Writes a random MoE model. Deterministic: same options → byte-identical file. Resolves with
 * the path, the file size and the parameter count.
 */
export async function makeModel(opts: MakeModelOptions): Promise<MakeModelResult> {
  if (!opts.out) throw new InvalidArgumentError("make-model: an output path (--out FILE.gguf) is required");
  const seed = opts.seed ?? 0;
  const { shape, type, tensors, metadata } = planModel(opts);
  const routing = routingEnabled(opts.routing) ? opts.routing : undefined;
  const targets = routing ? routingTargets(shape, routing, seed) : null;
  const generate = (t: (typeof tensors)[number]): Uint8Array => {
    if (targets && t.name === "token_embd.weight") {
      const v = embeddingWithSharedComponent(seed, t.name, t.dims[0]!, t.dims[1]!, t.values);
      return t.type === GGMLType.F32 || t.type === GGMLType.F16 || t.type === GGMLType.BF16
        ? encodeFloats(t.type, v) : quantizeRows(t.type, v, t.dims[1]!, t.dims[0]!);
    }
    const normOf = (normName: string): Float32Array => {
      // the pre-FFN norm is post_attention_norm in the architectures that call it so (GLM-4.5)
      const norm = tensors.find((x) => x.name === normName) ?? tensors.find((x) => x.name === normName.replace(/ffn_norm\.weight$/, "post_attention_norm.weight"))!;
      return randomFloats(new Xoshiro128(streamSeed(seed, normName)), norm.dims[0]!, norm.values);
    };
    const reads = targets ? readsNormOf(t.name) : null;
    if (reads) {
      const v = randomFloats(new Xoshiro128(streamSeed(seed, t.name)), t.dims.reduce((a, b) => a * b, 1), t.values);
      projectOutRows(v, sharedDirectionAfterNorm(seed, normOf(reads)).dir);
      const rows = v.length / t.dims[0]!;
      return t.type === GGMLType.F32 || t.type === GGMLType.F16 || t.type === GGMLType.BF16
        ? encodeFloats(t.type, v) : quantizeRows(t.type, v, rows, t.dims[0]!);
    }
    const m = targets ? /^blk\.(\d+)\.ffn_gate_inp\.weight$/.exec(t.name) : null;
    // (multi-token-prediction blocks, after the `layers` ones, keep random routers)
    if (targets && m && Number(m[1]) < shape.layers) {
      const layer = Number(m[1]);
      const normWeight = normOf(`blk.${layer}.ffn_norm.weight`);
      const v = biasedRouter({
        seed, name: t.name, d: t.dims[0]!, nExpert: t.dims[1]!, topK: shape.topK, spec: t.values,
        layer, normWeight, target: targets[layer - shape.leadingDense]!,
      });
      return encodeFloats(GGMLType.F32, v);
    }
    return randomTensorBytes(t.type, t.dims, t.values, new Xoshiro128(streamSeed(seed, t.name)));
  };
  // each tensor is generated when it is written: one tensor in memory at a time
  const bytes = writeGGUF(opts.out, {
    metadata, onTensor: opts.onProgress,
    tensors: tensors.map((t) => ({ name: t.name, type: t.type, dims: t.dims, data: () => generate(t) })),
  });
  return { path: opts.out, bytes, params: shapeParams(tensors), shape, type: typeName(type) };
}
