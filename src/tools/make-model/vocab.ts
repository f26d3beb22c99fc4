/**
 * Vocabularies for make-model files: a built-in SentencePiece-style ("llama" tokenizer model)
 * vocabulary generated in code, or the tokenizer.* keys copied from a vocab GGUF.
 *
 * llama.cpp's SPM tokenizer starts from characters and repeatedly merges the adjacent pair whose
 * concatenation is a vocabulary piece with the highest score. A word piece is therefore only
 * reachable if a chain of its prefixes is in the vocabulary too, so every word brings all its
 * "▁"-prefixed prefixes; shorter pieces score higher so that merges grow words left to right.
 */
import { GGUFValueType, type GGUFMetadataValue } from "../../formats/model-file.js";
import { InvalidArgumentError } from "../../errors.js";

/** llama.cpp token types. */
export const TokenType = { NORMAL: 1, UNKNOWN: 2, CONTROL: 3, USER_DEFINED: 4, UNUSED: 5, BYTE: 6 } as const;

const WORDS = (
  "the of and to in a is that for it as was with be by on not he i this are or his from at which but have an they " +
  "you were her she there been one all we their has would when if so can what more no will out up about who them " +
  "time some could into then than other its only new also two may people these first like any after over my very " +
  "made me our even most just where because many before through did back years much your way down should work " +
  "well how between life each world being under make both us those while never same long last here used day " +
  "great state own year house part still might good place know must old think small found take another world " +
  "water number off give hand again high around however without school home end name said come get see go use " +
  "system model data expert experts memory layer token tokens language learning training network research " +
  "university city country government war history music film music book game team season family group company " +
  "problem answer question number value result function code file list string return true false null import from " +
  "class def self print let const var if else for while the hello world what is your name how are you today " +
  "please thank yes no good morning night weather story once upon there lived king queen small little big dog cat"
).split(" ").filter((w, i, all) => w.length > 0 && all.indexOf(w) === i);

const SUFFIXES = ["s", "ed", "ing", "ly", "er", "est", "tion", "ment", "ness", "al", "ic", "ous", "ive", "able"];

export interface VocabEntry {
  readonly piece: string;
  readonly score: number;
  readonly type: number;
}

/** The tokens of the built-in vocabulary (before padding to a requested size). */
export function builtinVocabTokens(): VocabEntry[] {
  const pieces: string[] = [];
  const seen = new Set<string>();
  const push = (p: string): void => {
    if (!seen.has(p)) { seen.add(p); pieces.push(p); }
  };
  // single characters: printable ASCII with and without the word-start marker
  push("▁");
  for (let c = 33; c < 127; c++) push(String.fromCharCode(c));
  for (let c = 33; c < 127; c++) push("▁" + String.fromCharCode(c));
  // letter bigrams inside words (common ones), so suffixes and unknown words merge a little
  const common = "etaoinshrdlucmfwypvbgk";
  for (const x of common) for (const y of common) push(x + y);
  for (const suf of SUFFIXES) for (let i = 2; i <= suf.length; i++) push(suf.slice(0, i));
  // words with every prefix
  for (const w of WORDS) for (let i = 2; i <= w.length; i++) push("▁" + w.slice(0, i));
  for (const w of WORDS) {
    push("▁" + w[0]!.toUpperCase() + w.slice(1, 2));
    if (w.length > 1) for (let i = 3; i <= w.length + 1; i++) push("▁" + w[0]!.toUpperCase() + w.slice(1, i - 1));
  }
  // digits and digit pairs
  for (let n = 0; n < 100; n++) push(String(n));

  const out: VocabEntry[] = [
    { piece: "<unk>", score: 0, type: TokenType.UNKNOWN },
    { piece: "<s>", score: 0, type: TokenType.CONTROL },
    { piece: "</s>", score: 0, type: TokenType.CONTROL },
  ];
  for (let b = 0; b < 256; b++) {
    out.push({ piece: `<0x${b.toString(16).toUpperCase().padStart(2, "0")}>`, score: 0, type: TokenType.BYTE });
  }
  // shorter pieces merge first: score falls with length, then with position
  const ordered = pieces.map((p, i) => ({ p, i })).sort((x, y) => [...x.p].length - [...y.p].length || x.i - y.i);
  ordered.forEach(({ p }, rank) => out.push({ piece: p, score: -rank, type: TokenType.NORMAL }));
  return out;
}

/** A llama-2 style chat template using only <s>, </s> and plain text. */
export const BUILTIN_CHAT_TEMPLATE =
  "{% for message in messages %}" +
  "{% if message['role'] == 'system' %}{{ '<<SYS>>\\n' + message['content'] + '\\n<</SYS>>\\n\\n' }}" +
  "{% elif message['role'] == 'user' %}{{ bos_token + '[INST] ' + message['content'] + ' [/INST]' }}" +
  "{% elif message['role'] == 'assistant' %}{{ ' ' + message['content'] + eos_token }}" +
  "{% endif %}{% endfor %}";

/** Minimum size of the built-in vocabulary: specials, bytes and single characters. */
export const MIN_BUILTIN_VOCAB = 3 + 256 + 1 + 94 * 2;

/**
 * tokenizer.* metadata of the built-in vocabulary with exactly `size` tokens (0 = its natural
 * size): longer lists are padded with unused `<unused_N>` tokens, shorter ones truncated. With
 * `chat` (an architecture's own chat format) its control tokens follow the built-in ones and its
 * template replaces the built-in one.
 */
export function builtinVocabMetadata(
  size: number, chat?: { readonly template: string; readonly controlTokens: readonly string[] },
): { size: number; metadata: Array<[string, GGUFMetadataValue]> } {
  let tokens = builtinVocabTokens();
  if (chat) tokens.push(...chat.controlTokens.map((piece) => ({ piece, score: 0, type: TokenType.CONTROL })));
  if (size === 0) size = tokens.length;
  if (size < MIN_BUILTIN_VOCAB) {
    throw new InvalidArgumentError(`make-model: --vocab ${size} is below the built-in vocabulary's minimum of ${MIN_BUILTIN_VOCAB} (specials, 256 bytes, characters)`);
  }
  if (size < tokens.length) tokens = tokens.slice(0, size);
  const lowest = tokens.reduce((m, t) => Math.min(m, t.score), 0);
  for (let i = tokens.length; i < size; i++) tokens.push({ piece: `<unused_${i}>`, score: lowest - 1, type: TokenType.UNUSED });
  const arr = (itemType: GGUFValueType, value: ArrayLike<unknown>): GGUFMetadataValue => ({ type: GGUFValueType.ARRAY, itemType, value });
  return {
    size,
    metadata: [
      ["tokenizer.ggml.model", { type: GGUFValueType.STRING, value: "llama" }],
      ["tokenizer.ggml.tokens", arr(GGUFValueType.STRING, tokens.map((t) => t.piece))],
      ["tokenizer.ggml.scores", arr(GGUFValueType.FLOAT32, Float32Array.from(tokens, (t) => t.score))],
      ["tokenizer.ggml.token_type", arr(GGUFValueType.INT32, Int32Array.from(tokens, (t) => t.type))],
      ["tokenizer.ggml.bos_token_id", { type: GGUFValueType.UINT32, value: 1 }],
      ["tokenizer.ggml.eos_token_id", { type: GGUFValueType.UINT32, value: 2 }],
      ["tokenizer.ggml.unknown_token_id", { type: GGUFValueType.UINT32, value: 0 }],
      ["tokenizer.ggml.add_bos_token", { type: GGUFValueType.BOOL, value: true }],
      ["tokenizer.ggml.add_eos_token", { type: GGUFValueType.BOOL, value: false }],
      ["tokenizer.chat_template", { type: GGUFValueType.STRING, value: chat?.template ?? BUILTIN_CHAT_TEMPLATE }],
    ],
  };
}

/** Copies every tokenizer.* key of another GGUF's metadata; the vocab size is its token count. */
export function vocabFromMetadata(source: string, metadata: ReadonlyMap<string, GGUFMetadataValue>): { size: number; metadata: Array<[string, GGUFMetadataValue]> } {
  const tokens = metadata.get("tokenizer.ggml.tokens");
  if (!tokens || tokens.type !== GGUFValueType.ARRAY) {
    throw new InvalidArgumentError(`make-model: --vocab-from ${source} has no tokenizer.ggml.tokens array; pass a GGUF with a vocabulary (e.g. llama.cpp's models/ggml-vocab-*.gguf)`);
  }
  const out: Array<[string, GGUFMetadataValue]> = [];
  for (const [k, v] of metadata) if (k.startsWith("tokenizer.")) out.push([k, v]);
  return { size: tokens.value.length, metadata: out };
}
