/**
 * Low-bit expert copies: a sidecar GGUF holding only the stacked expert tensors of a model, re-
 * quantized to a smaller type, under the same names. Cold experts (few prompt tokens want them,
 * or a decode miss with a small routing weight) are read from it: fewer bytes over the slow link
 * for a small accuracy cost.
 *
 * Types: Q4_0 / Q4_K / Q8_0 ... through src/formats/quant (Q2_K / Q3_K have no quantizer there;
 * Q2_K has one in lowbit-quant.ts).
 */
import { closeSync, openSync, readSync, statSync } from "node:fs";
import { createHash } from "node:crypto";
import type { Model } from "../model/model.js";
import { describeExperts, expertBiasNames, expertTensorNames, isMoeLayer, type LayerExpertTensors } from "../model/experts.js";
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

/** sha256 (hex) of pieces of the source model's routers and experts: see sourceFingerprint. */
const FINGERPRINT_KEY = "moira.lowbit.source_fingerprint";
/** Bytes hashed from the start of each router; from the start and the end of each expert tensor. */
const ROUTER_PIECE = 64 << 10;
const EXPERT_PIECE = 4 << 10;

/**
 * A fingerprint of the model a sidecar is made from: sha256 over its architecture and MoE shape,
 * each MoE layer's tensor names, types and dims, the first 64 KiB of its router and the first
 * and last 4 KiB of each stacked expert tensor (the first expert's and the last expert's bytes).
 * Two models of the same shape (the same file size, even) differ there; a 60 GB model costs a
 * few hundred small reads. (The architecture counts: make-model's presets of one shape share
 * their weights byte for byte.)
 */
export function sourceFingerprint(model: Model): string {
  const hash = createHash("sha256");
  const source = model.file.weights;
  const fds = new Map<string, number>();
  const piece = (name: string, from: number, length: number): Uint8Array => {
    const meta = source.tensors.get(name)!;
    const start = Math.max(0, Math.min(from, meta.nbytes));
    const n = Math.min(length, meta.nbytes - start);
    if (meta.file) {
      let fd = fds.get(meta.file.path);
      if (fd === undefined) { fd = openSync(meta.file.path, "r"); fds.set(meta.file.path, fd); }
      const buf = Buffer.alloc(n);
      let got = 0;
      while (got < n) {
        const r = readSync(fd, buf, got, n - got, meta.file.offset + start + got);
        if (r === 0) throw new ModelFormatError(`${model.file.path}: tensor ${name} runs past the end of the file`);
        got += r;
      }
      return buf;
    }
    // converted on load (a Hugging Face directory): the whole tensor, then the piece
    return source.load(name).data.subarray(start, start + n);
  };
  try {
    const c = model.config;
    const arch = model.file.metadata.get("general.architecture")?.value;
    hash.update(`moira lowbit source v1: ${String(arch)}, ${c.nLayer} layers, d_model ${c.dModel}, ${c.nExpert} experts of d_ff ${c.expertFf}, top-${c.nExpertUsed}\n`);
    for (let l = 0; l < model.config.nLayer; l++) {
      if (!isMoeLayer(model.config, l)) continue;
      const e = expertTensorNames(l);
      const parts: Array<[string, number[]]> = [[`blk.${l}.ffn_gate_inp.weight`, [0, ROUTER_PIECE]]];
      for (const name of [e.gate, e.up, e.down]) parts.push([name, [0, EXPERT_PIECE, Number.MAX_SAFE_INTEGER, EXPERT_PIECE]]);
      for (const [name, ranges] of parts) {
        const meta = source.tensors.get(name);
        if (!meta) { hash.update(`${name} absent\n`); continue; }
        hash.update(`${name} ${typeName(meta.type)} [${meta.dims.join(",")}] ${meta.nbytes}\n`);
        for (let i = 0; i < ranges.length; i += 2) {
          const from = ranges[i] === Number.MAX_SAFE_INTEGER ? meta.nbytes - ranges[i + 1]! : ranges[i]!;
          hash.update(piece(name, from, ranges[i + 1]!));
        }
      }
    }
  } finally {
    for (const fd of fds.values()) closeSync(fd);
  }
  return hash.digest("hex");
}

/** Types quantize-experts can write. */
export const LOWBIT_TYPES: readonly GGMLType[] = [...QUANTIZE_TYPES.filter((t) => t !== GGMLType.F32), GGMLType.Q2_K];

function lowbitQuantize(type: GGMLType, x: Float32Array): Uint8Array {
  return type === GGMLType.Q2_K ? quantizeQ2K(x) : quantize(type, x);
}

/** Source types the addon's fused dequantize + Q2_K quantize reads (kernels' dequant_row). */
const NATIVE_DEQUANT_TYPES: ReadonlySet<GGMLType> = new Set([
  GGMLType.F32, GGMLType.F16, GGMLType.BF16, GGMLType.Q8_0, GGMLType.Q4_0,
  GGMLType.Q2_K, GGMLType.Q3_K, GGMLType.Q4_K, GGMLType.Q5_K, GGMLType.Q6_K, GGMLType.MXFP4,
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
  const relaid = [...model.file.weights.tensors.values()].find((m) => m.type === GGMLType.Q4_K_R16);
  if (relaid) {
    throw new UnsupportedError(
      `quantize-experts: ${model.file.path} stores ${relaid.name} re-laid (Q4_K_R16, written by moira repack); ` +
      "low-bit copies are made from, and serve, the model file it was re-laid from",
    );
  }
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
    if (lt.biases) {
      // the experts' biases (GPT-OSS) travel with them: copied as they are (F32)
      const bn = expertBiasNames(l);
      for (const part of ["gate", "up", "down"] as const) {
        const s = lt.biases[part];
        eb += s.expertBytes;
        tensors.push({ name: bn[part], type: s.type, dims: [s.cols, s.nExpert], data: () => model.weights.stackedData(bn[part]).subarray(0, s.nExpert * s.expertBytes) });
      }
    }
    expertBytes = Math.max(expertBytes, eb);
  }
  const metadata: Array<[string, GGUFMetadataValue]> = [
    ["general.architecture", { type: GGUFValueType.STRING, value: "moira-lowbit-experts" }],
    ["general.name", { type: GGUFValueType.STRING, value: `low-bit ${typeName(t)} experts of ${model.file.path}` }],
    [FINGERPRINT_KEY, { type: GGUFValueType.STRING, value: sourceFingerprint(model) }],
  ];
  const bytes = writeGGUF(out, { metadata, tensors, onTensor: onProgress });
  return { path: out, bytes, type: typeName(t), expertBytes };
}

/**
 * Opens a sidecar and checks it was made from this model (its source fingerprint) and matches it
 * (same layers, shapes). A sidecar without a fingerprint (written before moira recorded one) is
 * refused too: nothing says whose experts it holds.
 */
export function openLowbitSidecar(model: Model, path: string): LowbitSource {
  try { statSync(path); } catch { throw new FileAccessError(`low-bit sidecar ${path} not found (write it with moira quantize-experts)`); }
  const file = readGGUF(path);
  const md = file.metadata.get(FINGERPRINT_KEY);
  const redo = `re-run moira quantize-experts ${model.file.path} --out ${path}`;
  if (!md || md.type !== GGUFValueType.STRING) {
    throw new ModelFormatError(`low-bit sidecar ${path} has no ${FINGERPRINT_KEY}, so nothing says which model its experts come from: ${redo}`);
  }
  const own = sourceFingerprint(model);
  if (md.value !== own) {
    throw new ModelFormatError(`low-bit sidecar ${path} was written from another model (source fingerprint ${String(md.value).slice(0, 12)}…, ${model.file.path} has ${own.slice(0, 12)}…): ${redo}`);
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
