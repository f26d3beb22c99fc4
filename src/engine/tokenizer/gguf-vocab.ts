/**
 * The vocabulary of a GGUF file (`tokenizer.ggml.*` keys), read the way llama.cpp's
 * `llama_vocab::load` reads it: defaults per tokenizer model, special token ids, token types and
 * the pre-tokenizer name.
 */
import { ModelFormatError, UnsupportedError } from "../../errors.js";
import { GGUFValueType, type Metadata } from "../../formats/model-file.js";

/** tokenizer.ggml.token_type values. */
export const enum TokenType {
  Undefined = 0,
  Normal = 1,
  Unknown = 2,
  Control = 3,
  UserDefined = 4,
  Unused = 5,
  Byte = 6,
}

export interface GGUFVocab {
  readonly model: "llama" | "gpt2";
  /** tokenizer.ggml.pre, "default" when absent. */
  readonly pre: string;
  readonly tokens: readonly string[];
  readonly scores: Float32Array | null;
  readonly types: Uint8Array;
  readonly merges: readonly string[];
  readonly bosId: number | null;
  readonly eosId: number | null;
  readonly eotId: number | null;
  readonly eomId: number | null;
  readonly unkId: number | null;
  readonly padId: number | null;
  readonly addBos: boolean;
  readonly addEos: boolean;
  readonly addSpacePrefix: boolean;
  /** general.name, lower case: llama.cpp adjusts a few token attributes by model name. */
  readonly modelName: string;
  readonly chatTemplate: string | null;
}

function get(meta: Metadata, key: string): unknown {
  const v = meta.get(key);
  return v === undefined ? undefined : v.value;
}

function optId(meta: Metadata, key: string, fallback: number | null, nTokens: number): number | null {
  const v = get(meta, key);
  if (v === undefined) return fallback;
  const id = Number(v);
  // llama.cpp ignores out-of-range ids (with a warning) and keeps the default.
  if (!Number.isInteger(id) || id < 0 || id >= nTokens) return fallback;
  return id;
}

function optBool(meta: Metadata, key: string, fallback: boolean): boolean {
  const v = get(meta, key);
  return typeof v === "boolean" ? v : fallback;
}

function stringArray(meta: Metadata, key: string, required: boolean): string[] {
  const v = meta.get(key);
  if (v === undefined) {
    if (required) throw new ModelFormatError(`GGUF metadata: ${key} is missing; the file has no vocabulary`);
    return [];
  }
  if (v.type !== GGUFValueType.ARRAY || v.itemType !== GGUFValueType.STRING) {
    throw new ModelFormatError(`GGUF metadata: ${key} must be an array of strings`);
  }
  return Array.from(v.value as ArrayLike<string>);
}

export function readGGUFVocab(meta: Metadata): GGUFVocab {
  const modelName = get(meta, "tokenizer.ggml.model");
  if (modelName !== "llama" && modelName !== "gpt2") {
    throw new UnsupportedError(
      `tokenizer.ggml.model = ${JSON.stringify(modelName)}: moira supports "llama" (SentencePiece) and "gpt2" (byte-level BPE) vocabularies`);
  }
  const tokens = stringArray(meta, "tokenizer.ggml.tokens", true).map((t, i) => (t === "" ? `[EMPTY_${i}]` : t));
  const n = tokens.length;
  const scoresV = meta.get("tokenizer.ggml.scores");
  let scores: Float32Array | null = null;
  if (scoresV !== undefined && scoresV.type === GGUFValueType.ARRAY) {
    scores = Float32Array.from(scoresV.value as ArrayLike<number>);
    if (scores.length !== n) throw new ModelFormatError(`GGUF metadata: tokenizer.ggml.scores has ${scores.length} entries for ${n} tokens`);
  }
  const types = new Uint8Array(n).fill(TokenType.Normal);
  const typesV = meta.get("tokenizer.ggml.token_type");
  if (typesV !== undefined && typesV.type === GGUFValueType.ARRAY) {
    const arr = typesV.value as ArrayLike<number>;
    if (arr.length !== n) throw new ModelFormatError(`GGUF metadata: tokenizer.ggml.token_type has ${arr.length} entries for ${n} tokens`);
    for (let i = 0; i < n; i++) types[i] = Number(arr[i]);
  }
  const spm = modelName === "llama";
  const merges = spm ? [] : stringArray(meta, "tokenizer.ggml.merges", true);
  const pre = String(get(meta, "tokenizer.ggml.pre") ?? "default");

  // Defaults as in llama.cpp: SPM bos 1 / eos 2 / unk 0; GPT-2 bos = eos = 11.
  let addBos = spm;
  if (!spm && ["llama3", "llama-v3", "llama-bpe", "falcon3", "tekken", "chameleon"].includes(pre)) addBos = true;
  const chat = get(meta, "tokenizer.chat_template");
  return {
    model: modelName,
    pre,
    tokens,
    scores,
    types,
    merges,
    bosId: optId(meta, "tokenizer.ggml.bos_token_id", spm ? 1 : 11, n),
    eosId: optId(meta, "tokenizer.ggml.eos_token_id", spm ? 2 : 11, n),
    eotId: optId(meta, "tokenizer.ggml.eot_token_id", null, n),
    eomId: optId(meta, "tokenizer.ggml.eom_token_id", null, n),
    unkId: optId(meta, "tokenizer.ggml.unknown_token_id", spm ? 0 : null, n),
    padId: optId(meta, "tokenizer.ggml.padding_token_id", null, n),
    addBos: optBool(meta, "tokenizer.ggml.add_bos_token", addBos),
    addEos: optBool(meta, "tokenizer.ggml.add_eos_token", false),
    addSpacePrefix: optBool(meta, "tokenizer.ggml.add_space_prefix", spm),
    modelName: String(get(meta, "general.name") ?? "").toLowerCase(),
    chatTemplate: typeof chat === "string" ? chat : null,
  };
}
