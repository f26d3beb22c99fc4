/**
 * A Hugging Face checkpoint directory (config.json + safetensors) seen as the GGUF file
 * llama.cpp's convert_hf_to_gguf.py would make of it: GGUF metadata keys, GGUF tensor names,
 * dims and types. Tensors are converted when loaded, never all at once.
 */
import { existsSync, statSync } from "node:fs";
import { basename, join, resolve } from "node:path";
import { FileAccessError, MissingTensorError } from "../../errors.js";
import { GGUFValueType, type GGUFMetadataValue, type ModelFile, type TensorData, type TensorMeta, type WeightSource } from "../model-file.js";
import { GGMLType } from "../quant/types.js";
import { writeGGUF } from "../gguf/writer.js";
import { openSafetensorsDirectory, type SafetensorsArchive } from "../safetensors/reader.js";
import { hfConfigToGGUFMetadata, readHFConfig, type HFModelConfig, type MLALayout } from "./config.js";
import { materialize } from "./convert-tensor.js";
import { planTensors, type SourceTensor, type TensorPlan } from "./tensor-names.js";
import { convertHFTokenizer } from "./tokenizer.js";

export { hfConfigToGGUFMetadata, parseHFConfig, readHFConfig, HF_MODEL_TYPES, type HFModelConfig, type MLAConfig, type MLALayout } from "./config.js";
export { mapTensorName, planTensors, type TensorPlan, type TensorRecipe, type SourceTensor } from "./tensor-names.js";
export { permuteQKRows } from "./convert-tensor.js";
export { convertHFTokenizer, LLAMA_CPP_CHECK_TEXT, type HFTokenizerConversion } from "./tokenizer.js";

/** llama.cpp's LlamaFileType for unquantized files (and MXFP4 experts): what general.file_type says. */
const FILE_TYPE = { ALL_F32: 0, MOSTLY_F16: 1, MOSTLY_BF16: 32, MOSTLY_MXFP4_MOE: 38 } as const;
/** gguf-py writes GGML_QUANT_VERSION into every file. */
const GGML_QUANT_VERSION = 2;

/** Serves the converted tensors of a checkpoint by GGUF name. */
export class HFWeightSource implements WeightSource {
  readonly tensors: ReadonlyMap<string, TensorMeta>;

  constructor(private readonly archive: SafetensorsArchive, private readonly plans: ReadonlyMap<string, TensorPlan>) {
    this.tensors = new Map([...plans.values()].map((p) => [p.name, { name: p.name, type: p.type, dims: p.dims, nbytes: p.nbytes }]));
  }

  load(name: string): TensorData {
    const plan = this.plans.get(name);
    if (!plan) throw new MissingTensorError(`tensor ${name} is not in this checkpoint (after HF → GGUF name mapping)`);
    const shapeOf = (n: string): readonly number[] => {
      const t = this.archive.tensors.get(n);
      if (!t) throw new MissingTensorError(`tensor ${n}, which ${name} is made from, is not in the checkpoint`);
      return t.shape;
    };
    const data = materialize(plan, (n) => this.archive.read(n), shapeOf);
    return { name: plan.name, type: plan.type, dims: plan.dims, nbytes: plan.nbytes, data };
  }

  /** The conversion recipe of a tensor (which HF tensors, which rearrangement). */
  plan(name: string): TensorPlan | undefined {
    return this.plans.get(name);
  }

  close(): void {
    this.archive.close();
  }
}

export interface HFModelFile extends ModelFile {
  readonly format: "hf";
  readonly config: HFModelConfig;
  readonly weights: HFWeightSource;
}

/** general.file_type from the types of the 2-D+ tensors (the ones a quantizer would touch). */
function fileType(plans: Iterable<TensorPlan>): number {
  let f16 = 0, bf16 = 0;
  for (const p of plans) {
    if (p.dims.length < 2) continue;
    if (p.type === GGMLType.MXFP4) return FILE_TYPE.MOSTLY_MXFP4_MOE;
    if (p.type === GGMLType.F16) f16++;
    else if (p.type === GGMLType.BF16) bf16++;
  }
  if (bf16 > f16) return FILE_TYPE.MOSTLY_BF16;
  return f16 > 0 ? FILE_TYPE.MOSTLY_F16 : FILE_TYPE.ALL_F32;
}

/**
 * Opens a Hugging Face checkpoint directory. Throws FileAccessError when the directory or its
 * config.json is missing, ModelFormatError when there are no safetensors or they contradict the
 * config, UnsupportedError for model types and dtypes moira does not convert.
 */
export function openHFDirectory(dir: string, options: { mlaLayout?: MLALayout } = {}): HFModelFile {
  const root = resolve(dir);
  if (!existsSync(root) || !statSync(root).isDirectory()) throw new FileAccessError(`${root} is not a directory`);
  const configPath = join(root, "config.json");
  if (!existsSync(configPath)) throw new FileAccessError(`${configPath} not found: a Hugging Face checkpoint directory needs config.json`);
  const config = readHFConfig(configPath);
  const archive = openSafetensorsDirectory(root);
  try {
    const sources = new Map<string, SourceTensor>([...archive.tensors.values()].map((t) => [t.name, { name: t.name, dtype: t.dtype, shape: t.shape }]));
    const plans = planTensors(sources, config, options);
    const metadata = hfConfigToGGUFMetadata(config, { name: basename(root), ...options });
    const extra: [string, GGUFMetadataValue][] = [
      ["general.file_type", { type: GGUFValueType.UINT32, value: fileType(plans.values()) }],
      ["general.quantization_version", { type: GGUFValueType.UINT32, value: GGML_QUANT_VERSION }],
    ];
    for (const [k, v] of extra) metadata.set(k, v);
    const tokenizerJson = join(root, "tokenizer.json");
    return {
      path: root,
      format: "hf",
      metadata,
      weights: new HFWeightSource(archive, plans),
      config,
      ...(existsSync(tokenizerJson) ? { tokenizerJsonPath: tokenizerJson } : {}),
    };
  } catch (e) {
    archive.close();
    throw e;
  }
}

export interface ConvertResult {
  /** tokenizer.ggml.model written ("gpt2" / "llama"), or null when the file has no tokenizer keys. */
  readonly tokenizer: string | null;
  /** What the user should know: no tokenizer.json, a tokenizer moira cannot convert, a check that failed. */
  readonly notes: string[];
}

/**
 * Writes a checkpoint directory as a GGUF file, as llama.cpp's converter would: the tokenizer
 * keys come from tokenizer.json (+ tokenizer_config.json) when the directory has one (see
 * ./tokenizer.ts); without one the file has none, which the notes say (llama.cpp refuses such a
 * file; its converter refuses the directory). Holds every tensor in memory at once: meant for
 * the small models of tests and tools.
 */
export function convertHFToGGUF(dir: string, outPath: string, options: { mlaLayout?: MLALayout } = {}): ConvertResult {
  const model = openHFDirectory(dir, options);
  try {
    const notes: string[] = [];
    const metadata = new Map(model.metadata);
    const tok = convertHFTokenizer(model.path, { vocabSize: model.config.vocabSize });
    let tokenizer: string | null = null;
    const noKeys = "the GGUF has no tokenizer.ggml.* keys: llama.cpp will not load it (key not found in model: tokenizer.ggml.model), and moira runs it from token ids only";
    if (tok === null) {
      notes.push(`note: ${join(model.path, "tokenizer.json")} not found, so ${noKeys}`);
    } else if ("unsupported" in tok) {
      notes.push(`note: cannot convert the tokenizer (${tok.unsupported}), so ${noKeys}`);
    } else {
      for (const [k, v] of tok.keys) metadata.set(k, v);
      tokenizer = tok.model;
      notes.push(...tok.notes);
    }
    const tensors = [...model.weights.tensors.keys()].map((name) => {
      const t = model.weights.load(name);
      return { name: t.name, type: t.type, dims: t.dims, data: t.data };
    });
    writeGGUF(outPath, { metadata, tensors });
    return { tokenizer, notes };
  } finally {
    model.weights.close();
  }
}
