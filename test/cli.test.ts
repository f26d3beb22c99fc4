/**
 * The CLI as a user meets it: the README's quick start on a fresh model, the contract forms of
 * `logits`, `inspect`, `convert`, and bad input giving one clear line and a non-zero exit (no stack trace).
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { mkdtempSync, readFileSync, writeFileSync, copyFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { REPO_ROOT, shared, skipUnlessShared } from "./shared.js";
import { hfFixtures, maxAbsDiff } from "./hf-fixtures.js";
import { readGGUF } from "../src/formats/gguf/reader.js";
import { writeGGUF } from "../src/formats/gguf/writer.js";
import { GGUFValueType } from "../src/formats/model-file.js";
import { GGMLType } from "../src/formats/quant/types.js";

const dir = mkdtempSync(join(tmpdir(), "moira-cli-"));

function moira(...args: string[]) {
  const r = spawnSync(process.execPath, [join(REPO_ROOT, "bin", "moira.js"), ...args], { encoding: "utf8", maxBuffer: 256 << 20 });
  return { code: r.status, signal: r.signal, stdout: r.stdout, stderr: r.stderr };
}

/** A user-facing failure: exit 1, one "moira: ..." message mentioning `what`, no stack trace. */
function assertUserError(r: ReturnType<typeof moira>, what: RegExp) {
  assert.equal(r.code, 1, `exit code; stderr: ${r.stderr}`);
  assert.match(r.stderr, /^moira: /);
  assert.match(r.stderr, what);
  assert.doesNotMatch(r.stderr, /\n\s+at .*:\d+:\d+/, "no stack trace");
}

const tiny = join(dir, "tiny.gguf");

test("quick start: make-model --preset tiny, then run, logits, inspect", () => {
  let r = moira("make-model", "--preset", "tiny", "--out", tiny);
  assert.equal(r.code, 0, r.stderr);
  r = moira("run", "--model", tiny, "--prompt", "Once upon a time", "--max-tokens", "12", "--seed", "3");
  assert.equal(r.code, 0, r.stderr);
  assert.ok(r.stdout.trim().length > 0, "generated some text");
  assert.match(r.stderr, /prefill: \d+ tokens .* tok\/s/);
  assert.match(r.stderr, /decode: \d+ tokens .* tok\/s/);
  // same seed, same text; greedy is deterministic too
  assert.equal(moira("run", "--model", tiny, "--prompt", "Once upon a time", "--max-tokens", "12", "--seed", "3").stdout, r.stdout);
  // -f FILE and -f - (standard input) give the prompt as -p does
  const promptFile = join(dir, "prompt.txt");
  writeFileSync(promptFile, "Once upon a time");
  assert.equal(moira("run", "--model", tiny, "-f", promptFile, "--max-tokens", "12", "--seed", "3").stdout, r.stdout);
  const piped = spawnSync(process.execPath, [join(REPO_ROOT, "bin", "moira.js"), "run", "--model", tiny, "--file", "-", "--max-tokens", "12", "--seed", "3"],
    { encoding: "utf8", input: "Once upon a time" });
  assert.equal(piped.status, 0, piped.stderr);
  assert.equal(piped.stdout, r.stdout);
  assertUserError(moira("run", "--model", tiny, "--max-tokens", "2"), /no prompt: give -p\/--prompt TEXT or -f\/--file FILE/);
  assertUserError(moira("run", "--model", tiny, "-p", "x", "-f", promptFile), /not both/);
  assertUserError(moira("run", "--model", tiny, "-f", join(dir, "missing.txt")), /cannot read prompt file .*missing\.txt: no such file/);

  r = moira("logits", "--model", tiny, "--tokens", "1,2,3", "--json");
  assert.equal(r.code, 0, r.stderr);
  const { logits } = JSON.parse(r.stdout) as { logits: number[][] };
  assert.equal(logits.length, 3);
  const vocab = readGGUF(tiny).tensors.get("token_embd.weight")!.dims[1];
  for (const row of logits) {
    assert.equal(row.length, vocab);
    assert.ok(row.every(Number.isFinite));
  }

  // an f16 KV cache: same shape of output, close logits; a bad type is one clear line
  r = moira("logits", "--model", tiny, "--tokens", "1,2,3", "--json", "--kv-type", "f16");
  assert.equal(r.code, 0, r.stderr);
  const l16 = (JSON.parse(r.stdout) as { logits: number[][] }).logits;
  assert.equal(l16.length, 3);
  l16.forEach((row, t) => row.forEach((v, i) => assert.ok(Math.abs(v - logits[t][i]) < 0.05, `f16 cache logit ${t},${i}`)));
  r = moira("logits", "--model", tiny, "--tokens", "1,2,3", "--kv-type", "q8");
  assert.notEqual(r.code, 0);
  assert.match(r.stderr, /KV cache type must be f32 or f16/);

  r = moira("inspect", "--model", tiny, "--json");
  assert.equal(r.code, 0, r.stderr);
  const s = JSON.parse(r.stdout);
  assert.equal(s.architecture, "llama");
  assert.equal(s.experts, 8);
  assert.equal(s.expertsPerToken, 2);
  assert.ok(s.params.activePerToken < s.params.total);
  assert.ok(s.bytes.experts > 0 && s.bytes.experts < s.bytes.total);
  assert.ok(s.bytes.byType.F16 > 0);
  assert.match(moira("inspect", "--model", tiny).stdout, /experts: +8, top-2/);
});

test("run --chat uses the model's chat template; --backend ref gives the same greedy text as native", () => {
  const a = moira("run", "--model", tiny, "--prompt", "Hello", "--max-tokens", "8", "--temperature", "0", "--chat");
  assert.equal(a.code, 0, a.stderr);
  const n = moira("run", "--model", tiny, "--prompt", "The history of", "--max-tokens", "10", "--temperature", "0");
  const r = moira("run", "--model", tiny, "--prompt", "The history of", "--max-tokens", "10", "--temperature", "0", "--backend", "ref");
  assert.equal(n.code, 0, n.stderr);
  assert.equal(n.stdout, r.stdout);
  assert.match(r.stderr, /backend: ref/);
});

test("run --stop cuts the text where a stop string starts; the context caps --max-tokens with a note, never an error mid-run", () => {
  const args = ["run", "--model", tiny, "--prompt", "Once upon a time", "--temperature", "0"];
  const full = moira(...args, "--max-tokens", "16");
  assert.equal(full.code, 0, full.stderr);
  const text = full.stdout.replace(/\n$/, "");
  const at = Math.floor(text.length / 2);
  const stop = text.slice(at, at + 2);
  const cut = moira(...args, "--max-tokens", "16", "--stop", "never-there", "--stop", stop);
  assert.equal(cut.code, 0, cut.stderr);
  assert.equal(cut.stdout, text.slice(0, text.indexOf(stop)) + "\n");
  assert.match(cut.stderr, /stop: stop-string/);
  assertUserError(moira(...args, "--stop", ""), /a stop string must not be empty/);

  // 5 prompt tokens (BOS included) in 8 positions: 4 tokens, the last one sampled and never stored
  const capped = moira(...args, "--max-tokens", "20", "-c", "8", "-t", "1"); // llama.cpp's short forms of --context, --threads
  assert.equal(capped.code, 0, capped.stderr);
  assert.match(capped.stderr, /note: the context holds 8 positions: after a 5-token prompt at most 4 tokens \(--max-tokens 20\)/);
  assert.match(capped.stderr, /decode: 4 tokens .* stop: context-full/);
  assertUserError(moira(...args, "--context", "4"), /the prompt is 5 tokens, more than the context's 4 positions: shorten the prompt or raise --context/);
});

test("run --ignore-eos generates past the end-of-generation token", { skip: skipUnlessShared() }, () => {
  const args = ["run", "--model", shared("models", "tinymoe-trained.gguf"), "--prompt", "Hi!", "--temperature", "0", "--max-tokens", "60"];
  const ends = moira(...args);
  assert.equal(ends.code, 0, ends.stderr);
  const m = /decode: (\d+) tokens .* stop: stop-token/.exec(ends.stderr);
  assert.ok(m && Number(m[1]) < 60, `greedy "Hi!" ends at an end-of-generation token: ${ends.stderr}`);
  const past = moira(...args, "--ignore-eos");
  assert.match(past.stderr, /decode: 60 tokens .* stop: max-tokens/);
  assert.ok(past.stdout.startsWith(ends.stdout.replace(/\n$/, "")), "the same text up to the end-of-generation token");
});

test("convert: a GGUF written from each HF fixture gives the same logits as the HF directory", { skip: skipUnlessShared() }, () => {
  const fixtures = hfFixtures().filter((x) => x.ref);
  assert.ok(fixtures.length >= 7, `expected the reference fixtures, found ${fixtures.length}`);
  for (const f of fixtures) {
    const out = join(dir, `${f.name}.gguf`);
    let r = moira("convert", "--model", f.dir, "--out", out);
    assert.equal(r.code, 0, r.stderr);
    const ids = f.ref!.input_ids.join(",");
    const hf = moira("logits", "--model", f.dir, "--tokens", ids, "--json");
    assert.equal(hf.code, 0, `logits on ${f.dir}: exit ${hf.code}, signal ${hf.signal}: ${hf.stderr}`);
    const a = JSON.parse(hf.stdout).logits.flat();
    r = moira("logits", "--model", out, "--tokens", ids, "--json");
    assert.equal(r.code, 0, r.stderr);
    const b = JSON.parse(r.stdout).logits.flat();
    assert.equal(maxAbsDiff(a, b), 0, f.name);
    assert.ok(maxAbsDiff(b, f.ref!.hf_logits) < 1e-4, `${f.name} vs transformers`);
  }
});

/** Rewrites tiny.gguf with a change to its metadata or tensors. */
function variant(name: string, edit: (md: Map<string, any>, tensors: Array<{ name: string; type: GGMLType; dims: number[]; data: Uint8Array }>) => void): string {
  const g = readGGUF(tiny);
  const bytes = readFileSync(tiny);
  const md = new Map(g.metadata);
  const tensors = [...g.tensors.values()].map((t) => ({ name: t.name, type: t.type, dims: [...t.dims], data: bytes.subarray(t.file!.offset, t.file!.offset + t.nbytes) }));
  edit(md, tensors);
  const p = join(dir, name);
  writeGGUF(p, { metadata: md, tensors });
  return p;
}

test("bad input: clear typed errors naming the problem, exit 1, no stack trace", () => {
  const bytes = readFileSync(tiny);
  const truncated = join(dir, "truncated.gguf");
  writeFileSync(truncated, bytes.subarray(0, Math.floor(bytes.length * 0.6)));
  assertUserError(moira("run", "--model", truncated, "--prompt", "x", "--max-tokens", "1"), /truncated|past end of file|runs past/i);

  const magic = join(dir, "magic.gguf");
  const m = Buffer.from(bytes); m.write("GGUX", 0, "latin1");
  writeFileSync(magic, m);
  assertUserError(moira("inspect", "--model", magic), /not a GGUF file/i);

  const headerCut = join(dir, "header-cut.gguf");
  writeFileSync(headerCut, bytes.subarray(0, 100));
  assertUserError(moira("inspect", "--model", headerCut), /truncated|end of file|past/i);

  assertUserError(moira("run", "--model", join(dir, "nope.gguf"), "--prompt", "x"), /nope\.gguf/);

  const arch = variant("arch.gguf", (md) => md.set("general.architecture", { type: GGUFValueType.STRING, value: "gpt9" }));
  assertUserError(moira("inspect", "--model", arch), /architecture "gpt9" is not supported; supported: llama/);

  const missing = variant("missing.gguf", (_, t) => t.splice(t.findIndex((x) => x.name === "blk.1.ffn_up_exps.weight"), 1));
  assertUserError(moira("inspect", "--model", missing), /blk\.1\.ffn_up_exps\.weight is missing/);

  const shape = variant("shape.gguf", (md) => md.set("llama.expert_count", { type: GGUFValueType.UINT32, value: 4 }));
  assertUserError(moira("inspect", "--model", shape), /blk\.0\.ffn_gate_inp\.weight: expected shape \[256, 4\], found \[256, 8\]/);

  const q41 = variant("q41.gguf", (_, t) => {
    const x = t.find((y) => y.name === "blk.0.attn_q.weight")!;
    x.type = GGMLType.Q4_1;
    x.data = new Uint8Array((x.dims[0] / 32) * 20 * x.dims[1]);
  });
  assertUserError(moira("inspect", "--model", q41), /blk\.0\.attn_q\.weight has type Q4_1, which moira cannot compute with/);

  assertUserError(moira("logits", "--model", tiny, "--tokens", "1,x,3"), /--tokens: "x" is not a token id/);
  assertUserError(moira("logits", "--model", tiny, "--tokens", "1,999999"), /token id 999999 is outside the vocabulary/);
  assertUserError(moira("run", "--model", tiny, "--prompt", "x", "--temperature", "-1"), /temperature must be >= 0/);
  assertUserError(moira("run", "--model", tiny, "--prompt", "x", "--backend", "gpu"), /unknown backend "gpu"/);
  const usage = moira("run", "--prompt", "x");
  assert.notEqual(usage.code, 0);
  assert.match(usage.stderr, /required option.*--model/);
});

test("run --memory-budget: the KV cache holds the prompt and --max-tokens, no more; same text as all-resident", async () => {
  const { Model } = await import("../src/model/model.js");
  const { planMemory, formatBytes } = await import("../src/offload/planner.js");
  const { KvCache } = await import("../src/model/kv-cache.js");
  const { loadTokenizer } = await import("../src/engine/tokenizer/index.js");
  const model = Model.open(tiny);
  let budget: number, full: number, kvBytes: number;
  try {
    const tok = loadTokenizer(model.file);
    const needed = tok.encode("Once upon a time", { addBos: tok.addBosDefault }).length + 10;
    kvBytes = KvCache.bytes(model.config, needed, "f32");
    // below what a default-length context (the model's, at most 4096) needs even for a one-token prompt
    full = Math.min(model.config.contextLength, 4096);
    budget = planMemory(model, { budget: 2 ** 40, contextLength: full, maxBatch: 1 }).minimumBytes - 1;
  } finally {
    model.close();
  }
  const args = ["run", "--model", tiny, "--prompt", "Once upon a time", "--max-tokens", "10", "--temperature", "0", "--kv-type", "f32"];
  const r = moira(...args, "--memory-budget", String(budget), "--stats");
  assert.equal(r.code, 0, r.stderr);
  assert.doesNotMatch(r.stderr, /context shortened/);
  assert.match(r.stderr, new RegExp(`KV cache ${formatBytes(kvBytes)} \\+`), r.stderr);
  assert.equal(r.stdout.split("\n")[0], moira(...args).stdout.split("\n")[0]);
  // an explicit --context is not second-guessed: refused with the minimum
  assertUserError(moira(...args, "--memory-budget", String(budget), "--context", String(full)), new RegExp(`below the minimum .* \\(${full} positions\\)`));
});

test("bad HF directory: missing config.json is named", () => {
  const d = mkdtempSync(join(dir, "hf-"));
  copyFileSync(tiny, join(d, "model.safetensors"));
  assertUserError(moira("inspect", "--model", d), /config\.json/);
});

test("chat: answers each piped line, reuses the cache, /reset starts over", () => {
  const r = spawnSync(process.execPath, [join(REPO_ROOT, "bin", "moira.js"), "chat", "--model", tiny, "--max-tokens", "6", "--temperature", "0"],
    { input: "Hello\nTell me more\n/reset\nHello\n", encoding: "utf8" });
  assert.equal(r.status, 0, r.stderr);
  const stats = r.stderr.split("\n").filter((l) => /^\(\d+ tokens/.test(l));
  assert.equal(stats.length, 3);
  const replies = r.stdout.split("\n").filter((l) => l.length > 0);
  // greedy: the first turn after /reset repeats the very first reply
  assert.equal(replies.length, 3);
  assert.equal(replies[2], replies[0]);
});

test("the KV cache is f16 unless --kv-type says otherwise (run, bench); logits keeps f32 for exact logits", async () => {
  const { Model } = await import("../src/model/model.js");
  const { formatBytes } = await import("../src/offload/planner.js");
  const { KvCache } = await import("../src/model/kv-cache.js");
  const model = Model.open(tiny);
  const config = model.config;
  model.close();
  // bench: its plan holds the KV cache of prompt + generated + 1 positions, at f16 unless told
  const bench = (...extra: string[]) => {
    const r = moira("bench", "--model", tiny, "--prompt-tokens", "5", "--gen-tokens", "3", "--memory-budget", "1GiB", "--json", ...extra);
    assert.equal(r.code, 0, r.stderr);
    return JSON.parse(r.stdout) as { plan: { kvBytes: number }; tokens: number[]; decodeMs: number };
  };
  const b16 = bench(), b32 = bench("--kv-type", "f32");
  assert.equal(b16.plan.kvBytes, KvCache.bytes(config, 9, "f16"));
  assert.equal(b32.plan.kvBytes, KvCache.bytes(config, 9, "f32"));
  assert.equal(b16.tokens.length, 3);
  assert.ok(b16.decodeMs > 0);
  // run: the memory plan on stderr shows the KV cache of prompt + --max-tokens positions, at f16 unless told
  const { loadTokenizer } = await import("../src/engine/tokenizer/index.js");
  const m2 = Model.open(tiny);
  const tok = loadTokenizer(m2.file);
  const needed = tok.encode("Once upon a time", { addBos: tok.addBosDefault }).length + 4;
  m2.close();
  const planKv = (...extra: string[]) => {
    const r = moira("run", "--model", tiny, "--prompt", "Once upon a time", "--max-tokens", "4", "--temperature", "0", "--memory-budget", "1GiB", "--stats", ...extra);
    assert.equal(r.code, 0, r.stderr);
    return /KV cache (\S+ \S+) \+/.exec(r.stderr)?.[1];
  };
  assert.equal(planKv(), formatBytes(KvCache.bytes(config, needed, "f16")));
  assert.equal(planKv("--kv-type", "f32"), formatBytes(KvCache.bytes(config, needed, "f32")));
  // logits: the default is the f32 cache, bit for bit
  const logits = (...extra: string[]) => JSON.parse(moira("logits", "--model", tiny, "--tokens", "5,6,7,8", "--json", ...extra).stdout).logits as number[][];
  assert.deepEqual(logits(), logits("--kv-type", "f32"));
  assert.notDeepEqual(logits(), logits("--kv-type", "f16"));
});
