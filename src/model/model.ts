/**
 * Model: an opened checkpoint (GGUF file or HF directory) with its architecture, frozen config
 * and shape-checked weights. Nothing here decides where weights live; see ExpertProvider.
 */
import type { ModelFile } from "../formats/model-file.js";
import { openModel } from "../formats/open.js";
import { GGUFValueType, type FileMapper } from "../formats/model-file.js";
import type { Architecture } from "./architecture.js";
import type { ModelConfig } from "./config.js";
import { ModelWeights } from "./weights.js";
import { architectureFor } from "./registry.js";
import { expertTensorNames, isMoeLayer } from "./experts.js";
import { ModelFormatError } from "../errors.js";

export interface ExpectedTensor {
  readonly name: string;
  /** GGUF-order dims */
  readonly dims: readonly number[];
  readonly optional?: boolean;
}

/** Every tensor the recipes will read, with its shape, derived from the config. */
export function expectedTensors(c: ModelConfig): ExpectedTensor[] {
  const t: ExpectedTensor[] = [
    { name: "token_embd.weight", dims: [c.dModel, c.vocabSize] },
    { name: "output_norm.weight", dims: [c.dModel] },
  ];
  if (!c.tiedEmbeddings) t.push({ name: "output.weight", dims: [c.dModel, c.vocabSize] });
  for (let l = 0; l < c.nLayer; l++) {
    const b = (n: string) => `blk.${l}.${n}`;
    t.push({ name: b("attn_norm.weight"), dims: [c.dModel] }, { name: b("ffn_norm.weight"), dims: [c.dModel] });
    if (c.mla) {
      const m = c.mla, dK = m.qkNopeDim + m.qkRopeDim;
      if (m.qLoraRank > 0) {
        t.push({ name: b("attn_q_a.weight"), dims: [c.dModel, m.qLoraRank] },
          { name: b("attn_q_a_norm.weight"), dims: [m.qLoraRank] },
          { name: b("attn_q_b.weight"), dims: [m.qLoraRank, c.nHead * dK] });
      } else {
        t.push({ name: b("attn_q.weight"), dims: [c.dModel, c.nHead * dK] });
      }
      t.push({ name: b("attn_kv_a_mqa.weight"), dims: [c.dModel, m.kvLoraRank + m.qkRopeDim] },
        { name: b("attn_kv_a_norm.weight"), dims: [m.kvLoraRank] },
        { name: b("attn_kv_b.weight"), dims: [m.kvLoraRank, c.nHead * (m.qkNopeDim + m.vHeadDim)], optional: true },
        // newer llama.cpp files split attn_kv_b per head instead (k part transposed)
        { name: b("attn_k_b.weight"), dims: [m.qkNopeDim, m.kvLoraRank, c.nHead], optional: true },
        { name: b("attn_v_b.weight"), dims: [m.kvLoraRank, m.vHeadDim, c.nHead], optional: true },
        { name: b("attn_output.weight"), dims: [c.nHead * m.vHeadDim, c.dModel] });
    } else {
      const q = c.nHead * c.headDimK, k = c.nKvHead * c.headDimK, v = c.nKvHead * c.headDimV;
      t.push({ name: b("attn_q.weight"), dims: [c.dModel, q] }, { name: b("attn_k.weight"), dims: [c.dModel, k] },
        { name: b("attn_v.weight"), dims: [c.dModel, v] }, { name: b("attn_output.weight"), dims: [c.nHead * c.headDimV, c.dModel] },
        { name: b("attn_q.bias"), dims: [q], optional: true }, { name: b("attn_k.bias"), dims: [k], optional: true },
        { name: b("attn_v.bias"), dims: [v], optional: true });
      if (c.qkNorm === "head") t.push({ name: b("attn_q_norm.weight"), dims: [c.headDimK] }, { name: b("attn_k_norm.weight"), dims: [c.headDimK] });
      if (c.qkNorm === "full") t.push({ name: b("attn_q_norm.weight"), dims: [q] }, { name: b("attn_k_norm.weight"), dims: [k] });
    }
    if (!isMoeLayer(c, l)) {
      t.push({ name: b("ffn_gate.weight"), dims: [c.dModel, c.denseFf] }, { name: b("ffn_up.weight"), dims: [c.dModel, c.denseFf] },
        { name: b("ffn_down.weight"), dims: [c.denseFf, c.dModel] });
      continue;
    }
    const e = expertTensorNames(l);
    t.push({ name: b("ffn_gate_inp.weight"), dims: [c.dModel, c.nExpert] },
      { name: e.gate, dims: [c.dModel, c.expertFf, c.nExpert] }, { name: e.up, dims: [c.dModel, c.expertFf, c.nExpert] },
      { name: e.down, dims: [c.expertFf, c.dModel, c.nExpert] });
    if (c.sharedFf > 0) {
      t.push({ name: b("ffn_gate_shexp.weight"), dims: [c.dModel, c.sharedFf] }, { name: b("ffn_up_shexp.weight"), dims: [c.dModel, c.sharedFf] },
        { name: b("ffn_down_shexp.weight"), dims: [c.sharedFf, c.dModel] });
      if (c.arch === "qwen2moe") t.push({ name: b("ffn_gate_inp_shexp.weight"), dims: [c.dModel] });
    }
  }
  return t;
}

export class Model {
  private constructor(
    readonly file: ModelFile,
    readonly arch: Architecture,
    readonly config: ModelConfig,
    readonly weights: ModelWeights,
  ) {}

  /**
   * Opens a GGUF file or HF directory, reads its config and checks every tensor's presence and
   * shape. `map` (GGUF only): tensors are views of one file mapping instead of copies.
   */
  static open(path: string, options: { map?: FileMapper } = {}): Model {
    const file = openModel(path, options);
    try {
      const archValue = file.metadata.get("general.architecture");
      if (!archValue || archValue.type !== GGUFValueType.STRING) {
        throw new ModelFormatError(`${path}: metadata key general.architecture is missing`);
      }
      const arch = architectureFor(archValue.value);
      const config = arch.config(file.metadata, file.weights.tensors);
      const weights = new ModelWeights(file.weights);
      for (const t of expectedTensors(config)) {
        if (t.optional && !weights.has(t.name)) continue;
        weights.meta(t.name, t.dims);
      }
      if (config.mla) {
        for (let l = 0; l < config.nLayer; l++) {
          if (!weights.has(`blk.${l}.attn_kv_b.weight`) && !(weights.has(`blk.${l}.attn_k_b.weight`) && weights.has(`blk.${l}.attn_v_b.weight`))) {
            throw new ModelFormatError(`layer ${l}: MLA needs blk.${l}.attn_kv_b.weight or both blk.${l}.attn_k_b.weight and blk.${l}.attn_v_b.weight`);
          }
        }
      }
      return new Model(file, arch, config, weights);
    } catch (e) {
      file.weights.close();
      throw e;
    }
  }

  close(): void {
    this.file.weights.close();
  }
}
