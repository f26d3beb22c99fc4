import { test } from "node:test";
import assert from "node:assert/strict";
import { existsSync, readFileSync } from "node:fs";
import { openGGUF } from "../../formats/gguf/reader.js";
import { shared, skipUnlessPresent, skipWithoutShared } from "../../../test/shared.js";
import { GGUFTokenizer, loadTokenizer, type Tokenizer } from "./index.js";

const VOCAB_DIR = "fixtures/gguf-vocab";
const vocabPath = (name: string): string => shared(VOCAB_DIR, `ggml-vocab-${name}.gguf`);
const TINYMOE = "models/tinymoe-trained.gguf";

const cache = new Map<string, Tokenizer>();
function vocab(name: string): Tokenizer {
  let t = cache.get(name);
  if (!t) { t = loadTokenizer(openGGUF(name.endsWith(".gguf") ? shared(name) : vocabPath(name))); cache.set(name, t); }
  return t;
}

/** Text samples: `count` slices of `size` characters spread over a ../shared/text file. */
function samples(file: string, count: number, size: number): string[] {
  const all = readFileSync(shared("text", file), "utf8");
  const out: string[] = [];
  for (let i = 0; i < count; i++) {
    const at = Math.floor((all.length - size) * (i / Math.max(1, count - 1)));
    out.push(Array.from(all.slice(at, at + size + 2)).slice(1, -1).join("")); // whole code points
  }
  return out;
}
const TEXT_FILES = ["wikipedia_texts.txt", "c4_texts.txt", "arxiv_texts.txt", "github_oss_with_stack_texts.txt"];

// llama.cpp's test-tokenizer-0 vectors: cases separated by "\n__ggml_vocab_test__\n" in .inp, one
// line of ids per case in .out; tokenized without BOS (add_special = false), parse_special = false.
for (const name of ["llama-spm", "phi-3", "deepseek-llm"]) {
  test(`llama.cpp tokenizer vectors: ${name}`, { skip: skipWithoutShared }, () => {
    const tok = vocab(name);
    const inputs = readFileSync(vocabPath(name) + ".inp", "utf8").split("\n__ggml_vocab_test__\n");
    assert.equal(inputs.pop(), "", "the .inp file ends with a separator");
    const lines = readFileSync(vocabPath(name) + ".out", "utf8").split("\n");
    assert.ok(lines.length >= inputs.length);
    const failures: string[] = [];
    inputs.forEach((text, i) => {
      const expected = lines[i]!.trim() === "" ? [] : lines[i]!.trim().split(/\s+/).map(Number);
      const got = tok.encode(text, { addBos: false, parseSpecial: false });
      if (JSON.stringify(got) !== JSON.stringify(expected)) failures.push(`case ${i} ${JSON.stringify(text)}: expected ${expected.join(" ")}, got ${got.join(" ")}`);
    });
    assert.deepEqual(failures, [], `${failures.length} of ${inputs.length} cases differ`);
    assert.equal(inputs.length, 46);
  });
}

test("GGUF vocabularies decode what they encode (llama-spm, phi-3, deepseek-llm, gpt-neox)", { skip: skipWithoutShared }, () => {
  const texts = [
    ...TEXT_FILES.flatMap((f) => samples(f, 2, 1500)),
    " leading space", "  two", "trailing  \n", "\ttabs\tand\r\nCRLF", "😀 emoji 👍🏽 and 漢字 カタカナ한국어", "a<s>b</s>c <|endoftext|>",
  ];
  for (const name of ["llama-spm", "phi-3", "deepseek-llm", "gpt-neox"]) {
    const tok = vocab(name);
    for (const text of texts) {
      const ids = tok.encode(text, { addBos: false });
      assert.equal(tok.decode(ids), text, `${name}: ${JSON.stringify(text.slice(0, 60))}`);
      // with BOS: decode keeps its text unless skipSpecial
      if (tok.bosId !== null && name !== "gpt-neox") {
        assert.equal(tok.decode(tok.encode(text, { addBos: true }), { skipSpecial: true }), text);
      }
    }
  }
});

test("gpt-neox vocabulary loads with the default pre-tokenizer and its special tokens", { skip: skipWithoutShared }, () => {
  const tok = vocab("gpt-neox") as GGUFTokenizer;
  assert.equal(tok.kind, "bpe");
  assert.equal(tok.vocabSize, 50432);
  assert.equal(tok.tokenText(0), "<|endoftext|>");
  assert.deepEqual(tok.encode("<|endoftext|>", { addBos: false, parseSpecial: true }), [0]);
  assert.notDeepEqual(tok.encode("<|endoftext|>", { addBos: false }), [0]);
  const ids = tok.encode("Hello world", { addBos: false });
  assert.deepEqual(ids.map((i) => tok.tokenText(i)), ["Hello", "Ġworld"]);
});

test("tinymoe (LLaMA SentencePiece) tokenizes exactly like llama.cpp (node-llama-cpp)", { skip: skipWithoutShared, timeout: 120_000 }, async () => {
  const tok = vocab(TINYMOE);
  assert.equal(tok.vocabSize, 32000);
  assert.equal(tok.bosId, 1);
  assert.deepEqual(tok.eosIds, [2]);
  assert.equal(tok.addBosDefault, true);
  const { getLlama } = await import("node-llama-cpp");
  const llama = await getLlama({ gpu: false, build: "never" });
  const model = await llama.loadModel({ modelPath: shared(TINYMOE), gpuLayers: 0 });
  try {
    const texts = [
      ...TEXT_FILES.flatMap((f) => samples(f, 3, 3000)),
      "Hello world", " Hello", "", " ", "a\n\nb  c\t", "<s>hi</s> <unk>", "😀 漢字 \u00a0nbsp \u2028",
    ];
    for (const text of texts) {
      // model.tokenize() does not add BOS (add_special = false); so neither do we here.
      const expected = Array.from(model.tokenize(text));
      assert.deepEqual(tok.encode(text, { addBos: false }), expected, JSON.stringify(text.slice(0, 80)));
      const expectedSpecial = Array.from(model.tokenize(text, true));
      assert.deepEqual(tok.encode(text, { addBos: false, parseSpecial: true }), expectedSpecial, `parseSpecial: ${JSON.stringify(text.slice(0, 80))}`);
      assert.equal(tok.decode(expected), text);
      assert.equal(model.detokenize(expected), tok.decode(expected));
    }
    assert.equal(tok.encode("Hello")[0], 1, "BOS by default");
  } finally {
    await model.dispose();
  }
});

test("encoding 10 KB takes well under 100 ms (SPM and BPE)", { skip: skipWithoutShared }, () => {
  const text = samples("wikipedia_texts.txt", 1, 10_000)[0]!;
  const code = samples("github_oss_with_stack_texts.txt", 1, 10_000)[0]!;
  for (const name of [TINYMOE, "deepseek-llm"]) {
    const tok = vocab(name);
    tok.encode(text); // warm-up (JIT, lazy Unicode tables)
    for (const t of [text, code]) {
      const t0 = performance.now();
      tok.encode(t);
      const ms = performance.now() - t0;
      // a complexity guard, not a benchmark: ~25 ms here; a quadratic merge loop takes seconds
      assert.ok(ms < 1000, `${name}: ${ms.toFixed(1)} ms`);
    }
  }
});

/** Random text with multibyte characters: emoji (4-byte, ZWJ, skin tones), CJK, accents. */
function randomText(rand: () => number, pieces: number): string {
  const pool = ["the", " cat", " ", "  ", "\n", "\t", "é", "naïve", "😀", "👍🏽", "👨‍👩‍👧", "漢字", "テスト", "한국어", "ß", "Ω", ".", ",", "123", "<s>", "\u00a0", "∑"];
  let s = "";
  for (let i = 0; i < pieces; i++) s += pool[Math.floor(rand() * pool.length)];
  return s;
}

function checkStreamDecoder(tok: Tokenizer, label: string): void {
  let seed = 12345;
  const rand = (): number => ((seed = (seed * 1103515245 + 12345) & 0x7fffffff) / 0x80000000);
  for (let round = 0; round < 40; round++) {
    const text = randomText(rand, 1 + Math.floor(rand() * 30));
    for (const addBos of [false, true]) {
      const ids = tok.encode(text, { addBos });
      for (const skipSpecial of [false, true]) {
        const dec = tok.createStreamDecoder({ skipSpecial });
        let streamed = "";
        for (const id of ids) {
          const piece = dec.push(id);
          assert.ok(!piece.includes("\uFFFD"), `${label}: a partial character escaped the stream decoder`);
          streamed += piece;
        }
        streamed += dec.flush();
        assert.equal(streamed, tok.decode(ids, { skipSpecial }), `${label}: ${JSON.stringify(text)}`);
        // a stream that continues a prompt: its text is what the whole decode adds to the prompt's
        const cut = 1 + Math.floor(rand() * Math.max(1, ids.length - 1));
        const prompt = ids.slice(0, cut), promptText = tok.decode(prompt, { skipSpecial });
        if (cut >= ids.length || promptText.endsWith("\uFFFD")) continue;
        const cont = tok.createStreamDecoder({ skipSpecial, after: prompt });
        const rest = ids.slice(cut).map((id) => cont.push(id)).join("") + cont.flush();
        assert.equal(promptText + rest, tok.decode(ids, { skipSpecial }), `${label} after ${cut} tokens: ${JSON.stringify(text)}`);
      }
    }
  }
  // Byte-fallback / byte-level pieces of one character arrive one by one: nothing until complete.
  const ids = tok.encode("😀", { addBos: false });
  const dec = tok.createStreamDecoder();
  const outs = ids.map((id) => dec.push(id));
  assert.equal(outs.join("") + dec.flush(), "😀");
  if (ids.length > 1) assert.equal(outs[0], "");
}

test("stream decoder: concatenated pushes + flush == decode (SPM, BPE)", { skip: skipWithoutShared }, () => {
  for (const name of [TINYMOE, "phi-3", "deepseek-llm", "gpt-neox"]) checkStreamDecoder(vocab(name), name);
});

test("invalid ids and a vocabulary-less model fail with typed errors", { skip: skipWithoutShared }, () => {
  const tok = vocab("llama-spm");
  assert.throws(() => tok.decode([32000]), { name: "InvalidArgumentError" });
  assert.throws(() => tok.tokenText(-1), { name: "InvalidArgumentError" });
  const model = openGGUF(vocabPath("llama-spm"));
  const meta = new Map(model.metadata);
  meta.delete("tokenizer.ggml.model");
  assert.throws(() => loadTokenizer({ ...model, metadata: meta }), { name: "ModelFormatError" });
  meta.set("tokenizer.ggml.model", { type: 8, value: "rwkv" });
  assert.throws(() => loadTokenizer({ ...model, metadata: meta }), { name: "UnsupportedError" });
});

test("phi-3 special tokens strip the whitespace after them (llama.cpp rstrip)", { skip: skipWithoutShared || skipUnlessPresent(existsSync(vocabPath("phi-3")), `${vocabPath("phi-3")} not found`) }, () => {
  const tok = vocab("phi-3");
  const end = tok.encode("<|end|>", { addBos: false, parseSpecial: true });
  assert.equal(end.length, 1);
  assert.deepEqual(tok.encode("<|end|>\nHi", { addBos: false, parseSpecial: true }), [end[0]!, ...tok.encode("Hi", { addBos: false })]);
});

test("tokenBytes: a text's tokens' bytes concatenate to its bytes (SPM byte fallback, BPE byte-level)", { skip: skipWithoutShared }, () => {
  const text = "Hello wörld 😀 naïve\n\tend";
  for (const name of ["llama-spm", "deepseek-llm"]) {
    const tok = vocab(name);
    const ids = tok.encode(text, { addBos: false });
    const bytes = Buffer.concat(ids.map((id) => tok.tokenBytes(id)));
    // SentencePiece puts a space before the text (decode() removes it again)
    const want = Buffer.from((tok as GGUFTokenizer).kind === "spm" ? " " + text : text);
    assert.deepEqual(bytes, want, name);
  }
  assert.throws(() => vocab("llama-spm").tokenBytes(-1), { name: "InvalidArgumentError" });
});
