/**
 * `moira repack`: a copy of a GGUF model whose Q4_K matrices are stored re-laid (Q4_K_R16, 16-row
 * panels: native/kernels.h), the layout the native backend re-lays them into at load with
 * --weight-layout relaid. Mapping the copy gives that layout's decode speed without paying the
 * re-lay (and fresh memory) at every start, and lets the ExpertStore read re-laid experts from
 * disk. The copy holds the same numbers: the native backend computes Q4_K's bits from it, on
 * CPUs with AVX-512 (elsewhere it refuses the copy); it is as large as the original (the panels
 * keep Q4_K's packed scales). Its metadata names the layout (RELAID_LAYOUT_KEY), which a model
 * must carry to be opened. llama.cpp cannot read it.
 */
import { existsSync, realpathSync } from "node:fs";
import { InvalidArgumentError, UnsupportedError } from "../errors.js";
import { GGUFWeightSource, readGGUF } from "../formats/gguf/reader.js";
import { writeGGUF, type GGUFTensorInput } from "../formats/gguf/writer.js";
import { GGUFValueType, type GGUFMetadataValue, type TensorMeta } from "../formats/model-file.js";
import { GGMLType, RELAID_LAYOUT, RELAID_LAYOUT_KEY } from "../formats/quant/types.js";
import { loadNativeAddon } from "../backend/native/addon.js";
import { TOKEN_EMBEDDING } from "../model/steps.js";

export interface RepackResult {
  readonly path: string;
  /** tensors stored re-laid, and in all */
  readonly relaid: number;
  readonly tensors: number;
  readonly bytes: number;
  /** the CPU's best ISA: moira runs the copy only with AVX-512 */
  readonly isa: string;
}

/**
 * Whether a tensor is stored re-laid: Q4_K, 2-D (a matrix) or 3-D (stacked experts), each matrix's
 * rows in 16s and columns in 256s; never the token embeddings, whose rows are gathered one by one.
 */
function repackable(t: TensorMeta): boolean {
  return t.type === GGMLType.Q4_K && t.name !== TOKEN_EMBEDDING && (t.dims.length === 2 || t.dims.length === 3) &&
    t.dims[0]! % 256 === 0 && t.dims[1]! % 16 === 0;
}

/** Writes `out`, `src` with every repackable tensor re-laid; `onProgress(done, total)` in bytes. */
export function repackModel(src: string, out: string, onProgress?: (done: number, total: number) => void): RepackResult {
  const file = readGGUF(src);
  if (sameFile(src, out)) throw new InvalidArgumentError(`repack: --out ${out} is the input model; write the copy to another path`);
  const metas = [...file.tensors.values()];
  const relaid = metas.filter(repackable).length;
  if (relaid === 0) {
    throw new UnsupportedError(
      `repack: ${src} has no Q4_K matrix with rows in 16s and columns in 256s besides the token embeddings: nothing to re-lay ` +
      "(repack re-lays Q4_K only; use the file as it is)",
    );
  }
  const addon = loadNativeAddon();
  const source = new GGUFWeightSource(file);
  try {
    // the latest re-laid tensor (the addon's memory, which the collector does not see): freed when
    // the writer asks for the next tensor, having written this one, and at the end
    let held: ArrayBuffer | undefined;
    const release = (): void => {
      if (held) addon.freeAligned(held);
      held = undefined;
    };
    const tensors: GGUFTensorInput[] = metas.map((t) => {
      if (!repackable(t)) return { name: t.name, type: t.type, dims: t.dims, data: () => { release(); return source.load(t.name).data; } };
      const cols = t.dims[0]!, rows = t.dims.slice(1).reduce((a, b) => a * b, 1);
      return {
        name: t.name, type: GGMLType.Q4_K_R16, dims: t.dims,
        data: () => { release(); held = addon.relayoutQ4K(source.load(t.name).data, rows, cols); return new Uint8Array(held); },
      };
    });
    const metadata = new Map<string, GGUFMetadataValue>(file.metadata);
    metadata.set(RELAID_LAYOUT_KEY, { type: GGUFValueType.STRING, value: RELAID_LAYOUT });
    try {
      const bytes = writeGGUF(out, { metadata, tensors, alignment: file.alignment, onTensor: onProgress });
      return { path: out, relaid, tensors: metas.length, bytes, isa: addon.supportedIsas()[0]! };
    } finally {
      release();
    }
  } finally {
    source.close();
  }
}

/** Whether `b` exists and is the file `a` names. */
function sameFile(a: string, b: string): boolean {
  return existsSync(b) && realpathSync(a) === realpathSync(b);
}
