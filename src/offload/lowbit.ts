/**
 * Low-bit expert copies: a sidecar GGUF holding only the stacked expert tensors of a model, re-
 * quantized to a smaller type, under the same names. Cold experts (few prompt tokens want them,
 * or a decode miss with a small routing weight) are read from it: fewer bytes over the slow link
 * for a small accuracy cost.
 *
 * Types: Q4_0 / Q4_K / Q8_0 ... through src/formats/quant (Q2_K / Q3_K have no quantizer there;
 * Q2_K has one in lowbit-quant.ts).
 */
import { statSync } from "node:fs";
import type { Model } from "../model/model.js";
import { describeExperts, expertTensorNames, type LayerExpertTensors } from "../model/experts.js";
import { readGGUF } from "../formats/gguf/reader.js";
import { GGUFWeightSource } from "../formats/gguf/reader.js";
import { ModelWeights } from "../model/weights.js";
import { dequantize } from "../formats/quant/dequantize.js";
import { quantize, QUANTIZE_TYPES } from "../formats/quant/quantize.js";
import { GGMLType, typeFromName, typeInfo, typeName } from "../formats/quant/types.js";
import { GGUFValueType, type GGUFMetadataValue } from "../formats/model-file.js";
import { writeGGUF, type GGUFTensorInput } from "../formats/gguf/writer.js";
import { FileAccessError, InvalidArgumentError, ModelFormatError, UnsupportedError } from "../errors.js";
import type { LowbitSource } from "./store.js";
import { quantizeQ2K } from "./lowbit-quant.js";
import { loadNativeAddon, type NativeAddon } from "../backend/native/addon.js";

const SOURCE_KEY = "moira.lowbit.source_size";

/** Types quantize-experts can write. */
export const LOWBIT_TYPES: readonly GGMLType[] = [...QUANTIZE_TYPES.filter((t) => t !== GGMLType.F32), GGMLType.Q2_K];

function lowbitQuantize(type: GGMLType, x: Float32Array): Uint8Array {
  return type === GGMLType.Q2_K ? quantizeQ2K(x) : quantize(type, x);
}

/** Source types the addon's fused dequantize + Q2_K quantize reads (kernels' dequant_row). */
const NATIVE_DEQUANT_TYPES: ReadonlySet<GGMLType> = new Set([
  GGMLType.F32, GGMLType.F16, GGMLType.BF16, GGMLType.Q8_0, GGMLType.Q4_0,
  GGMLType.Q2_K, GGMLType.Q3_K, GGMLType.Q4_K, GGMLType.Q5_K, GGMLType.Q6_K,
]);

/** The native addon when it is built (MOIRA_NO_NATIVE_QUANT=1 forces the TypeScript path). */
function nativeAddon(): NativeAddon | undefined {
  if (process.env.MOIRA_NO_NATIVE_QUANT === "1") return undefined;
  try { return loadNativeAddon(); } catch { return undefined; }
}

/**
 * `nExpert` stacked experts of `srcType` re-quantized to `type`. Q2_K runs in the addon when it is
 * loaded (bit-identical to the TypeScript quantizer, ~50x faster); otherwise per expert in TypeScript.
 */
function requantizeStacked(srcType: GGMLType, type: GGMLType, src: Uint8Array, nExpert: number, expertBytes: number, perExpert: number): Uint8Array {
  const native = type === GGMLType.Q2_K ? nativeAddon() : undefined;
  const si = typeInfo(srcType);
  if (native && NATIVE_DEQUANT_TYPES.has(srcType) && perExpert % 256 === 0 && perExpert / si.blockSize * si.typeSize === expertBytes) {
    return native.dequantizeQuantizeQ2K(srcType, src.subarray(0, nExpert * expertBytes), nExpert * perExpert);
  }
  const outBytes: Uint8Array[] = [];
  let total = 0;
  for (let e = 0; e < nExpert; e++) {
    const f = dequantize(srcType, src.subarray(e * expertBytes, (e + 1) * expertBytes), perExpert);
    const q = native ? native.quantizeQ2K(f, perExpert) : lowbitQuantize(type, f);
    outBytes.push(q);
    total += q.length;
  }
  const all = new Uint8Array(total);
  let at = 0;
  for (const q of outBytes) { all.set(q, at); at += q.length; }
  return all;
}

/**
 * The type one expert tensor is written in: `t`, or where its rows are not whole blocks of `t`
 * (Qwen1.5-MoE's expert width 1408 is not a multiple of 256) Q4_0 in place of a K-quant of at
 * most 4 bits and Q8_0 in place of a larger one, as llama.cpp falls back.
 */
function lowbitTypeFor(t: GGMLType, cols: number, name: string): GGMLType {
  if (cols % typeInfo(t).blockSize === 0) return t;
  const fb = t === GGMLType.Q5_K || t === GGMLType.Q6_K ? GGMLType.Q8_0 : GGMLType.Q4_0;
  if (cols % typeInfo(fb).blockSize !== 0) {
    throw new UnsupportedError(`quantize-experts: ${name} rows of ${cols} are not whole ${typeName(t)} blocks of ${typeInfo(t).blockSize} (nor ${typeName(fb)} blocks)`);
  }
  return fb;
}

export interface QuantizeExpertsResult {
  readonly path: string;
  readonly bytes: number;
  readonly type: string;
  readonly expertBytes: number;
}

/** Writes the sidecar: every expert tensor dequantized and re-quantized to `typeName`. */
export function writeLowbitSidecar(model: Model, type: string, out: string, onProgress?: (done: number, total: number) => void): QuantizeExpertsResult {
  let t: GGMLType;
  try { t = typeFromName(type); } catch { throw new UnsupportedError(`quantize-experts: unknown --type "${type}"`); }
  if (!LOWBIT_TYPES.includes(t)) {
    throw new UnsupportedError(`quantize-experts: cannot write ${typeName(t)}; use one of ${LOWBIT_TYPES.map(typeName).join(", ")}`);
  }
  const cfg = model.config;
  const layers = describeExperts(cfg, model.weights);
  const tensors: GGUFTensorInput[] = [];
  let expertBytes = 0;
  for (const [l, lt] of layers) {
    const names = expertTensorNames(l);
    let eb = 0;
    for (const part of ["gate", "up", "down"] as const) {
      const s = lt[part];
      const pt = lowbitTypeFor(t, s.cols, names[part]);
      const info = typeInfo(pt);
      eb += (s.rows * s.cols / info.blockSize) * info.typeSize;
      tensors.push({
        name: names[part], type: pt, dims: [s.cols, s.rows, s.nExpert],
        data: () => {
          const src = model.weights.stackedData(names[part]);
          // already in the fallback type (make-model and llama.cpp pick it for such widths): as is
          if (pt === s.type) return src.subarray(0, s.nExpert * s.expertBytes);
          return requantizeStacked(s.type, pt, src, s.nExpert, s.expertBytes, s.rows * s.cols);
        },
      });
    }
    expertBytes = Math.max(expertBytes, eb);
  }
  const metadata: Array<[string, GGUFMetadataValue]> = [
    ["general.architecture", { type: GGUFValueType.STRING, value: "moira-lowbit-experts" }],
    ["general.name", { type: GGUFValueType.STRING, value: `low-bit ${typeName(t)} experts of ${model.file.path}` }],
    [SOURCE_KEY, { type: GGUFValueType.UINT64, value: BigInt(statSync(model.file.path).size) }],
  ];
  const bytes = writeGGUF(out, { metadata, tensors, onTensor: onProgress });
  return { path: out, bytes, type: typeName(t), expertBytes };
}

/** Opens a sidecar and checks it matches the model (same layers, shapes). */
export function openLowbitSidecar(model: Model, path: string): LowbitSource {
  try { statSync(path); } catch { throw new FileAccessError(`low-bit sidecar ${path} not found (write it with moira quantize-experts)`); }
  const file = readGGUF(path);
  const md = file.metadata.get(SOURCE_KEY);
  const modelSize = statSync(model.file.path).size;
  if (md && md.type === GGUFValueType.UINT64 && Number(md.value) !== modelSize) {
    throw new ModelFormatError(`low-bit sidecar ${path} was written for a model of ${md.value} bytes, ${model.file.path} has ${modelSize}: rewrite it with moira quantize-experts`);
  }
  const weights = new ModelWeights(new GGUFWeightSource(file));
  const cfg = model.config;
  let tensors: Map<number, LayerExpertTensors>;
  try {
    tensors = describeExperts(cfg, weights);
  } catch (e) {
    if (e instanceof ModelFormatError) throw new ModelFormatError(`low-bit sidecar ${path} does not match the model: ${e.message}`);
    throw e;
  }
  if (tensors.size === 0) throw new InvalidArgumentError(`low-bit sidecar ${path} has no expert tensors`);
  return { path, tensors };
}
