/**
 * A Hugging Face `tokenizer.json` (+ `tokenizer_config.json`, `config.json`) as the
 * `tokenizer.ggml.*` keys llama.cpp's convert_hf_to_gguf.py writes:
 *
 * - byte-level BPE (Qwen, DeepSeek, OLMoE): `tokenizer.ggml.model = "gpt2"`, the pre-tokenizer
 *   name llama.cpp knows it by (`tokenizer.ggml.pre`), tokens, token types and merges;
 * - BPE with byte fallback (Llama / Mistral / Mixtral tokenizer.json): `"llama"` (SentencePiece),
 *   tokens, scores and types. llama.cpp's own converter (LlamaHfVocab) gives every token the score
 *   -1000, which leaves llama.cpp's score-ordered merging to merge left to right; here a token's
 *   score is minus the rank of the first merge that makes it, so llama.cpp merges in the
 *   tokenizer's own order.
 *
 * Special token ids, add_bos/add_eos and the chat template follow gguf-py's SpecialVocab.
 * The pre-tokenizer is named as llama.cpp names it: by the sha256 of the ids of its check text
 * (llama.cpp's table, for the pre-tokenizers moira implements), else by the pre_tokenizer's shape
 * in tokenizer.json. Either way the result is checked: moira's llama.cpp-exact tokenizer built
 * from the written keys must encode probe texts (llama.cpp's check text among them) exactly as the
 * tokenizer.json does; when the named pre-tokenizer fails, the others are tried.
 */
import { createHash } from "node:crypto";
import { existsSync, readFileSync } from "node:fs";
import { join } from "node:path";
import { FileAccessError, ModelFormatError } from "../../errors.js";
import { GGUFValueType, type GGUFMetadataValue } from "../model-file.js";
import { GGUFTokenizer } from "../../engine/tokenizer/gguf-tokenizer.js";
import { HFTokenizer } from "../../engine/tokenizer/hf-tokenizer.js";
import { readGGUFVocab, TokenType } from "../../engine/tokenizer/gguf-vocab.js";

/** llama.cpp's check text (convert_hf_to_gguf.py, get_vocab_base_pre): its token ids name a pre-tokenizer. */
export const LLAMA_CPP_CHECK_TEXT = "\n \n\n \n\n\n \t \t\t \t\n  \n   \n    \n     \n🚀 (normal) 😶\u200d🌫️ (multiple emojis concatenated) ✅ 🦙🦙 3 33 333 3333 33333 333333 3333333 33333333 3.3 3..3 3...3 កាន់តែពិសេសអាច😁 ?我想在apple工作1314151天～ ------======= нещо на Български ''''''```````\"\"\"\"......!!!!!!?????? I've been 'told he's there, 'RE you sure? 'M not sure I'll make it, 'D you like some tea? We'Ve a'lL";

/**
 * sha256 of `str(tokenizer.encode(check text))` → tokenizer.ggml.pre, from llama.cpp's
 * get_vocab_base_pre, for the pre-tokenizers moira's GGUF tokenizer implements. (Where two
 * entries share a hash, llama.cpp keeps the later one: mpt/olmo → olmo.)
 */
const PRE_BY_CHECK_HASH: ReadonlyMap<string, string> = new Map([
  ["e636dc30a262dcc0d8c323492e32ae2b70728f4df7dfe9737d9f920a282b8aea", "qwen2"], // Qwen1.5
  ["d4540891389ea895b53b399da6ac824becc30f2fba0e9ddbb98f92e55ca0e97c", "qwen2"], // Qwen3-Embedding
  ["b3f499bb4255f8ca19fccd664443283318f2fd2414d5e0b040fbdd0cc195d6c5", "deepseek-r1-qwen"],
  ["0ef9807a4087ebef797fc749390439009c3b9eda9ad1a097abbe738f486c01e5", "llama-bpe"],
  ["049ecf7629871e3041641907f3de7c733e4dbfdc736f57d882ba0b0845599754", "deepseek-llm"],
  ["347715f544604f9118bb75ed199f68779f423cabb20db6de6f31b908d04d7821", "deepseek-coder"],
  ["877081d19cf6996e2c4ff0e1236341e9b7bde288f5311a56a937f0afbbb3aeb5", "deepseek-v3"],
  ["8aeee3860c56296a157a1fe2fad249ec40aa59b1bb5709f4ade11c4e6fe652ed", "falcon"],
  ["9d032fcbd5501f4a38150912590928bfb36091efb5df11b8e2124b0390e3fb1e", "falcon3"],
  ["b6dc8df998e1cfbdc4eac8243701a65afe638679230920b50d6f17d81c098166", "olmo"],
  ["35d91631860c815f952d711435f48d356ebac988362536bed955d43bfa436e34", "starcoder"],
  ["3ce83efda5659b07b1ad37ca97ca5797ea4285d9b9ab0dc679e4a720c9da7454", "gpt-2"],
  ["32d85c31273f8019248f2559fed492d929ea28b17e51d81d3bb36fff23ca72b3", "stablelm2"],
  ["6221ad2852e85ce96f791f476e0b390cf9b474c9e3d1362f53a24a06dc8220ff", "refact"],
  ["9c2227e4dd922002fb81bde4fc02b0483ca4f12911410dee2255e4987644e3f8", "command-r"],
  ["a8594e3edff7c29c003940395316294b2c623e09894deebbc65f33f1515df79e", "dbrx"],
  ["c136ed14d01c2745d4f60a9596ae66800e2b61fa45643e72436041855ad4089d", "smaug-bpe"],
  ["c7ea5862a53e4272c035c8238367063e2b270d51faa48c0f09e9d5b54746c360", "poro-chat"],
  ["7fc505bd3104ca1083b150b17d088b59534ede9bde81f0dd2090967d7fe52cee", "viking"],
  ["b53802fb28e26d645c3a310b34bfe07da813026ec7c7716883404d5e0f8b1901", "jais"],
  ["7b3e7548e4308f52a76e8229e4e6cc831195d0d1df43aed21ac6c93da05fec5f", "codeshell"],
  ["63b97e4253352e6f357cc59ea5b583e3a680eaeaf2632188c2b952de2588485e", "tekken"],
  ["855059429035d75a914d1eda9f10a876752e281a054a7a3d421ef0533e5b6249", "smollm"],
  ["3c30d3ad1d6b64202cd222813e7736c2db6e1bd6d67197090fc1211fbc612ae7", "bloom"],
  ["bc01ce58980e1db43859146dc51b1758b3b88729b217a74792e9f8d43e479d21", "gpt3-finnish"],
  ["4e2b24cc4770243d65a2c9ec19770a72f08cffc161adbb73fcbb6b7dd45a0aae", "exaone"],
  ["fcace8b9cac38ce847670c970cd5892031a753a1ef381abd1d9af00f713da085", "phi-2"],
  ["ad851be1dba641f2e3711822f816db2c265f788b37c63b4e1aeacb9ee92de8eb", "gigachat"],
  ["d4c8f286ea6b520b3d495c4455483cfa2302c0cfcd4be05d781b6a8a0a7cdaf1", "megrez"],
  ["ccc2ef013c104be7bae2965776d611e1d7a8a2a9c547dd93a682c9a9fc80352e", "gpt-4o"],
  ["1994ffd01900cfb37395608534236ecd63f2bd5995d6cb1004dda1af50240f15", "trillion"],
  ["d353350c764d8c3b39c763113960e4fb4919bea5fbf208a0e3b22e8469dc7406", "llama4"],
  ["0e9433cbbb161f89e264eb32e8e64bfe69e834973ffca5d41d3948a604a3e2a3", "pixtral"],
  ["b6e8e1518dc4305be2fe39c313ed643381c4da5db34a98f6a04c093f8afbe99b", "chatglm-bpe"],
  ["81d72c7348a9f0ebe86f23298d37debe0a5e71149e29bd283904c02262b27516", "chatglm-bpe"],
  ["a1336059768a55c99a734006ffb02203cd450fed003e9a71886c88acf24fdbc2", "glm4"],
  ["9ca2dd618e8afaf09731a7cf6e2105b373ba6a1821559f258b272fe83e6eb902", "glm4"],
  ["1431a23e583c97432bc230bff598d103ddb5a1f89960c8f1d1051aaa944d0b35", "minerva-7b"],
  ["7e57df22b1fe23a7b1e1c7f3dc4e3f96d43a4eb0836d0c6bdc3436d7b2f1c664", "hunyuan"],
  ["bba3b3366b646dbdded5dbc42d59598b849371afc42f7beafa914afaa5b70aa6", "hunyuan-dense"],
  ["8b5a93ed704057481f240da0be7e7dca721d7f8f4755263b6807227a2cbeae65", "roberta-bpe"],
  ["60824e3c0d9401f89943cbb2fff727f0e2d4c545ba4df2d6e4f09a6db0f5b450", "chameleon"],
]);

/** The pre-tokenizers tried, in this order, when neither the hash nor the shape names one that checks out. */
const PRE_CANDIDATES = [
  "gpt-2", "qwen2", "llama-bpe", "dbrx", "deepseek-llm", "deepseek-v3", "deepseek-coder", "default", "falcon",
  "starcoder", "tekken", "gpt-4o", "poro-chat", "viking",
] as const;

/** tokenizer.json pre-tokenizer regexes (Split, Isolated) and the llama.cpp pre-tokenizer that implements each. */
const PRE_BY_SPLIT_REGEX: ReadonlyMap<string, string> = new Map([
  ["(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+", "qwen2"],
  ["(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}{1,3}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+", "llama-bpe"],
]);

/** Texts the converted vocabulary must tokenize as tokenizer.json does. */
const PROBE_TEXTS = [
  LLAMA_CPP_CHECK_TEXT,
  "Hello world! The quick brown fox jumps over the lazy dog.",
  "  leading spaces, trailing spaces  \n\ttabs\r\nand CRLF",
  "Ünïcödé: naïve café, 日本語のテキスト, 中文文本, 한국어, עברית, العربية, Ελληνικά, emoji 👩‍💻🎉",
  "def f(x):\n    return x**2 + 1_000_000 # comment\n",
  "Numbers 1234567890 and 3.14159, dates 2024-01-31.",
];

interface AddedToken { id: number; content: string; special?: boolean; normalized?: boolean }
interface TokenizerJson {
  added_tokens?: AddedToken[];
  normalizer?: Record<string, unknown> | null;
  pre_tokenizer?: Record<string, unknown> | null;
  post_processor?: Record<string, unknown> | null;
  decoder?: Record<string, unknown> | null;
  model?: { type?: string; vocab?: unknown; merges?: unknown; byte_fallback?: boolean; unk_token?: string | null; ignore_merges?: boolean };
}
type Json = Record<string, unknown>;

export interface HFTokenizerConversion {
  /** tokenizer.ggml.* (and tokenizer.chat_template*) keys, in gguf-py's order. */
  readonly keys: Array<[string, GGUFMetadataValue]>;
  readonly model: "gpt2" | "llama";
  readonly pre: string;
  /** Things the user should know (a pre-tokenizer found by shape, a check that failed). */
  readonly notes: string[];
}

function readJson(path: string): Json {
  let text: string;
  try { text = readFileSync(path, "utf8"); } catch (e) { throw new FileAccessError(`cannot read ${path}: ${(e as Error).message}`); }
  try { return JSON.parse(text) as Json; } catch (e) { throw new ModelFormatError(`${path} is not valid JSON: ${(e as Error).message}`); }
}

const str = (value: string): GGUFMetadataValue => ({ type: GGUFValueType.STRING, value });
const u32 = (value: number): GGUFMetadataValue => ({ type: GGUFValueType.UINT32, value });
const bool = (value: boolean): GGUFMetadataValue => ({ type: GGUFValueType.BOOL, value });
const strings = (value: string[]): GGUFMetadataValue => ({ type: GGUFValueType.ARRAY, itemType: GGUFValueType.STRING, value });

/** convert_hf_to_gguf.py's does_token_look_special: added tokens that ought to be control tokens. */
function looksSpecial(t: string): boolean {
  return ["<pad>", "<mask>", "<2mass>", "[@BOS@]"].includes(t) || (t.startsWith("<|") && t.endsWith("|>"))
    || (t.startsWith("<｜") && t.endsWith("｜>")) || (t.startsWith("<unused") && t.endsWith(">"));
}

/** A merge as gguf-py writes it: "left right", spaces inside a part as U+0120 (the list form allows them). */
function mergeString(m: unknown, i: number): string {
  if (typeof m === "string") return m;
  if (Array.isArray(m) && m.length === 2 && typeof m[0] === "string" && typeof m[1] === "string") {
    return m.map((p: string) => p.replaceAll(" ", "\u0120")).join(" ");
  }
  throw new ModelFormatError(`tokenizer.json: model.merges[${i}] is neither "a b" nor ["a", "b"]`);
}

/** Walks a normalizer / pre-tokenizer / decoder tree (Sequence nesting) depth first. */
function* components(node: unknown): Generator<Json> {
  if (!node || typeof node !== "object") return;
  const n = node as Json;
  yield n;
  for (const k of ["normalizers", "pretokenizers", "decoders", "processors"]) {
    if (Array.isArray(n[k])) for (const c of n[k] as unknown[]) yield* components(c);
  }
}

/** The pre-tokenizer tokenizer.json's pre_tokenizer looks like, when its shape says. */
function preByShape(tj: TokenizerJson): string | null {
  const parts = [...components(tj.pre_tokenizer)].filter((c) => c.type !== "Sequence");
  const byteLevel = parts.filter((c) => c.type === "ByteLevel");
  const splits = parts.filter((c) => c.type === "Split");
  if (parts.length === 1 && byteLevel.length === 1 && byteLevel[0]!.use_regex !== false) return "gpt-2";
  if (splits.length === 1 && parts.length === 2 && byteLevel.length === 1 && byteLevel[0]!.use_regex === false) {
    const re = (splits[0]!.pattern as { Regex?: string } | undefined)?.Regex;
    if (re !== undefined) return PRE_BY_SPLIT_REGEX.get(re) ?? null;
  }
  return null;
}

/** How a tokenizer.json's model is written to GGUF, or why it is not. */
function vocabKind(tj: TokenizerJson): "gpt2" | "llama" | string {
  const m = tj.model;
  if (!m || m.type !== "BPE") return `its model is ${m?.type ?? "missing"} (moira converts BPE tokenizers: byte-level, or with byte fallback)`;
  if (m.byte_fallback) return "llama";
  const byteLevel = [...components(tj.pre_tokenizer), ...components(tj.decoder)].some((c) => c.type === "ByteLevel");
  return byteLevel ? "gpt2" : "its BPE model is neither byte-level nor byte-fallback";
}

/** Whether a SentencePiece-style tokenizer.json puts ▁ before the text (Prepend normalizer or Metaspace). */
function addsSpacePrefix(tj: TokenizerJson): boolean {
  for (const c of components(tj.normalizer)) if (c.type === "Prepend" && c.prepend === "\u2581") return true;
  for (const c of components(tj.pre_tokenizer)) {
    if (c.type === "Metaspace") return c.prepend_scheme !== undefined ? c.prepend_scheme !== "never" : c.add_prefix_space !== false;
  }
  return false;
}

/**
 * sha256 of the check text's ids as transformers' tokenizer.encode gives them (special tokens
 * added): the ids without specials, wrapped in the post-processor's template (TemplateProcessing).
 */
function checkHash(tj: TokenizerJson, reference: HFTokenizer): string {
  let ids = reference.encode(LLAMA_CPP_CHECK_TEXT, { addBos: false, addEos: false, parseSpecial: true });
  for (const p of components(tj.post_processor)) {
    if (p.type !== "TemplateProcessing" || !Array.isArray(p.single)) continue;
    const specials = (p.special_tokens ?? {}) as Record<string, { ids?: number[] }>;
    const out: number[] = [];
    for (const piece of p.single as Array<{ SpecialToken?: { id: string }; Sequence?: unknown }>) {
      if (piece.SpecialToken) out.push(...(specials[piece.SpecialToken.id]?.ids ?? []));
      else if (piece.Sequence) out.push(...ids);
    }
    ids = out;
  }
  return createHash("sha256").update(`[${ids.join(", ")}]`).digest("hex");
}

/** The first probe text the written keys tokenize differently from tokenizer.json, or null. */
function firstMismatch(keys: ReadonlyArray<[string, GGUFMetadataValue]>, reference: HFTokenizer): string | null {
  let tok: GGUFTokenizer;
  try { tok = new GGUFTokenizer(readGGUFVocab(new Map(keys))); } catch (e) { return `the keys do not load: ${(e as Error).message}`; }
  for (const text of PROBE_TEXTS) {
    const a = tok.encode(text, { addBos: false, parseSpecial: true }).join(",");
    const b = reference.encode(text, { addBos: false, parseSpecial: true }).join(",");
    if (a !== b) return JSON.stringify(text.length > 40 ? `${text.slice(0, 40)}…` : text);
  }
  return null;
}

/**
 * The tokenizer keys of the checkpoint in `dir`, or null when it has no tokenizer.json.
 * `vocabSize`: config.json's vocab_size (the embedding rows; ids beyond the tokenizer's are
 * written as unused [PADn] tokens, as llama.cpp does). Throws UnsupportedError-free: a tokenizer
 * moira cannot convert comes back as `{ unsupported }`.
 */
export function convertHFTokenizer(dir: string, options: { vocabSize: number }): HFTokenizerConversion | { unsupported: string } | null {
  const path = join(dir, "tokenizer.json");
  if (!existsSync(path)) return null;
  const tj = readJson(path) as TokenizerJson;
  const configPath = join(dir, "tokenizer_config.json");
  const tc = existsSync(configPath) ? readJson(configPath) : null;
  const kind = vocabKind(tj);
  if (kind !== "gpt2" && kind !== "llama") return { unsupported: `${path}: ${kind}` };

  // ---- tokens and types (get_vocab_base / LlamaHfVocab) ----
  const vocab = tj.model!.vocab;
  if (!vocab || typeof vocab !== "object" || Array.isArray(vocab)) throw new ModelFormatError(`${path}: model.vocab must be an object of token → id`);
  const added = tj.added_tokens ?? [];
  const byId = new Map<number, string>();
  for (const [t, id] of Object.entries(vocab as Record<string, number>)) byId.set(id, t);
  for (const a of added) byId.set(a.id, a.content);
  let maxId = -1;
  for (const id of byId.keys()) maxId = Math.max(maxId, id);
  const n = options.vocabSize;
  if (maxId >= n) throw new ModelFormatError(`${path}: token id ${maxId} is beyond config.json's vocab_size ${n}`);
  const addedById = new Map(added.map((a) => [a.id, a]));
  const specialContents = new Set<string>();
  for (const typ of ["bos", "eos", "unk", "sep", "pad", "cls", "mask"]) {
    const c = configToken(tc?.[`${typ}_token`]);
    if (c !== null) specialContents.add(c);
  }
  const unkToken = tj.model!.unk_token ?? configToken(tc?.unk_token);
  const tokens: string[] = new Array(n);
  const types = new Int32Array(n);
  for (let i = 0; i < n; i++) {
    const t = byId.get(i);
    if (t === undefined) { tokens[i] = `[PAD${i}]`; types[i] = TokenType.Unused; continue; }
    const a = addedById.get(i);
    if (kind === "llama" && /^<0x[0-9A-Fa-f]{2}>$/.test(t)) types[i] = TokenType.Byte;
    else if (kind === "llama" && t === unkToken) types[i] = TokenType.Unknown;
    else if (a && (a.special || looksSpecial(t))) types[i] = TokenType.Control;
    else if (kind === "llama" && specialContents.has(t)) types[i] = TokenType.Control;
    else if (a) types[i] = TokenType.UserDefined;
    else types[i] = TokenType.Normal;
    // user-defined tokens are matched in raw text by llama.cpp: their ▁ is a space there
    tokens[i] = types[i] === TokenType.UserDefined ? t.replaceAll("\u2581", " ") : t;
  }

  const rawMerges = Array.isArray(tj.model!.merges) ? (tj.model!.merges as unknown[]) : [];
  const merges = rawMerges.map(mergeString);
  const keys: Array<[string, GGUFMetadataValue]> = [["tokenizer.ggml.model", str(kind)]];
  let pre = "default";
  const notes: string[] = [];
  const reference = new HFTokenizer(tj, tc ?? {});
  let preFrom = "";
  if (kind === "gpt2") {
    const hash = checkHash(tj, reference);
    const byHash = PRE_BY_CHECK_HASH.get(hash);
    const byShape = preByShape(tj);
    pre = byHash ?? byShape ?? "default";
    preFrom = byHash ? "llama.cpp's check-text hash" : byShape ? "the pre_tokenizer in tokenizer.json" : "no match (llama.cpp's check-text hash " + hash + " is not in moira's table)";
  }
  keys.push(["tokenizer.ggml.pre", str(pre)]);
  keys.push(["tokenizer.ggml.tokens", strings(tokens)]);
  if (kind === "llama") {
    // minus the rank of the first merge that makes a token; tokens no merge makes come last
    const scores = new Float32Array(n).fill(0);
    const made = new Set<number>();
    const ids = new Map<string, number>();
    for (let i = 0; i < n; i++) ids.set(tokens[i]!, i);
    merges.forEach((m, r) => {
      const sp = m.indexOf(" ");
      const id = ids.get(m.slice(0, sp) + m.slice(sp + 1));
      if (id !== undefined && !made.has(id)) { made.add(id); scores[id] = -r; }
    });
    for (let i = 0; i < n; i++) {
      if (types[i] === TokenType.Unused || types[i] === TokenType.UserDefined) scores[i] = -1000;
      else if (!made.has(i) && types[i] === TokenType.Normal && [...tokens[i]!].length > 1) scores[i] = -(merges.length + 1);
    }
    keys.push(["tokenizer.ggml.scores", { type: GGUFValueType.ARRAY, itemType: GGUFValueType.FLOAT32, value: scores }]);
  }
  keys.push(["tokenizer.ggml.token_type", { type: GGUFValueType.ARRAY, itemType: GGUFValueType.INT32, value: types }]);
  if (kind === "gpt2") keys.push(["tokenizer.ggml.merges", strings(merges)]);
  keys.push(...specialVocabKeys(dir, tj, tc, n));
  if (kind === "llama" && !addsSpacePrefix(tj)) keys.push(["tokenizer.ggml.add_space_prefix", bool(false)]);

  // ---- the check: moira's llama.cpp tokenizer on these keys = tokenizer.json ----
  const at = keys.findIndex(([k]) => k === "tokenizer.ggml.pre");
  let bad = firstMismatch(keys, reference);
  if (bad !== null && kind === "gpt2") {
    for (const candidate of PRE_CANDIDATES) {
      if (candidate === pre) continue;
      keys[at] = ["tokenizer.ggml.pre", str(candidate)];
      if (firstMismatch(keys, reference) === null) {
        notes.push(`tokenizer.ggml.pre: ${candidate} (${preFrom} said ${pre}, which tokenizes differently from tokenizer.json)`);
        pre = candidate;
        preFrom = "";
        bad = null;
        break;
      }
    }
    if (bad !== null) keys[at] = ["tokenizer.ggml.pre", str(pre)];
  }
  if (bad !== null) {
    notes.push(`warning: the converted vocabulary (tokenizer.ggml.model ${kind}, pre ${pre}) tokenizes ${bad} differently from ${path}; llama.cpp and moira will not reproduce the model's tokenization exactly`);
  } else if (preFrom && !preFrom.startsWith("llama.cpp")) {
    notes.push(`tokenizer.ggml.pre: ${pre}, from ${preFrom} (checked against tokenizer.json)`);
  }
  return { keys, model: kind, pre, notes };
}

type ConfigToken = unknown;
function configToken(t: ConfigToken): string | null {
  if (typeof t === "string") return t;
  if (t && typeof t === "object" && typeof (t as Json).content === "string") return (t as Json).content as string;
  return null;
}

/** gguf-py's SpecialVocab: special token ids, add_*_token, the chat template. */
function specialVocabKeys(dir: string, tj: TokenizerJson, tc: Json | null, nVocab: number): Array<[string, GGUFMetadataValue]> {
  const TYPES = ["bos", "eos", "unk", "sep", "pad", "cls", "mask"] as const;
  const ID_KEY: Record<(typeof TYPES)[number], string> = {
    bos: "tokenizer.ggml.bos_token_id", eos: "tokenizer.ggml.eos_token_id", unk: "tokenizer.ggml.unknown_token_id",
    sep: "tokenizer.ggml.seperator_token_id", pad: "tokenizer.ggml.padding_token_id", cls: "tokenizer.ggml.cls_token_id",
    mask: "tokenizer.ggml.mask_token_id",
  };
  const ids = new Map<string, number>();
  const add = new Map<string, boolean>();
  const set = (typ: string, id: unknown): void => {
    if (typeof id !== "number" || !Number.isInteger(id) || id < 0 || id >= nVocab || ids.has(typ)) return;
    ids.set(typ, id);
  };
  const added = tj.added_tokens ?? [];
  let chat: unknown = null;
  if (tc) {
    const cfg: Json = { ...tc };
    const bos = configToken(cfg.bos_token), eos = configToken(cfg.eos_token);
    // the post-processor's template says whether BOS / EOS are added (the simple cases)
    for (const p of components(tj.post_processor)) {
      if (p.type !== "TemplateProcessing" || !Array.isArray(p.single)) continue;
      const single = p.single as Array<{ SpecialToken?: { id?: string } }>;
      if (single.length > 1) {
        const first = single[0]!.SpecialToken?.id, last = single[single.length - 1]!.SpecialToken?.id;
        if (first) add.set("bos", first === bos);
        if (last) add.set("eos", last === eos);
      }
    }
    chat = cfg.chat_template ?? null;
    for (const typ of TYPES) {
      const a = cfg[`add_${typ}_token`];
      if (typeof a === "boolean") add.set(typ, a);
      const c = configToken(cfg[`${typ}_token`]);
      if (c === null) continue;
      set(typ, added.find((t) => t.content === c)?.id);
    }
  }
  if (chat === null) {
    const jinja = join(dir, "chat_template.jinja"), json = join(dir, "chat_template.json");
    if (existsSync(jinja)) chat = readFileSync(jinja, "utf8");
    else if (existsSync(json)) chat = readJson(json).chat_template ?? null;
  }
  const configPath = join(dir, "config.json");
  if (existsSync(configPath)) {
    const config = readJson(configPath);
    for (const typ of TYPES) set(typ, config[`${typ}_token_id`] ?? (config.text_config as Json | undefined)?.[`${typ}_token_id`]);
  }
  const out: Array<[string, GGUFMetadataValue]> = [];
  for (const typ of TYPES) if (ids.has(typ)) out.push([ID_KEY[typ], u32(ids.get(typ)!)]);
  for (const typ of TYPES) if (add.has(typ)) out.push([`tokenizer.ggml.add_${typ}_token`, bool(add.get(typ)!)]);
  if (typeof chat === "string") {
    out.push(["tokenizer.chat_template", str(chat)]);
  } else if (Array.isArray(chat)) {
    const named = chat.filter((t): t is { name: string; template: string } => typeof t?.name === "string" && typeof t?.template === "string");
    const others: string[] = [];
    for (const t of named) {
      if (t.name === "default") out.push(["tokenizer.chat_template", str(t.template)]);
      else { out.push([`tokenizer.chat_template.${t.name}`, str(t.template)]); others.push(t.name); }
    }
    if (others.length > 0) out.push(["tokenizer.chat_templates", strings(others)]);
  }
  return out;
}
