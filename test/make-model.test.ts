/**
 * make-model writes GGUF files that our reader parses and llama.cpp loads and runs, for every
 * architecture and the main types; files are deterministic; quantized blocks drawn directly
 * from the PRNG have the intended statistics; bad arguments are typed errors.
 */
import { test, after } from "node:test";
import assert from "node:assert/strict";
import { mkdtempSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { makeModel, planModel, PRESETS } from "../src/tools/make-model/index.js";
import { builtinVocabMetadata } from "../src/tools/make-model/vocab.js";
import { openGGUF, readGGUF } from "../src/formats/gguf/reader.js";
import { dequantize } from "../src/formats/quant/dequantize.js";
import { GGMLType, typeName } from "../src/formats/quant/types.js";
import { InvalidArgumentError, UnsupportedError } from "../src/errors.js";
import { withLlamaModel, disposeOracleLlama } from "./llama-oracle.js";
import { shared, skipUnlessShared } from "./shared.js";

after(() => disposeOracleLlama());

const dir = mkdtempSync(join(tmpdir(), "moira-make-model-"));
process.on("exit", () => rmSync(dir, { recursive: true, force: true }));

const TINY = ["tiny", "tiny-qwen2moe", "tiny-qwen3moe", "tiny-olmoe", "tiny-deepseek2", "tiny-glm4moe", "tiny-gpt-oss"];
const TYPES = ["F32", "F16", "Q8_0", "Q4_0", "Q4_K", "Q6_K"];

for (const preset of TINY) {
  test(`make-model ${preset}: every type parses and runs greedy in llama.cpp`, async () => {
    for (const type of TYPES) {
      const out = join(dir, `${preset}-${type}.gguf`);
      const r = await makeModel({ preset, type, seed: 1, out });
      const plan = planModel({ preset, type, seed: 1 });

      // our reader sees exactly the planned tensors and the architecture
      const file = readGGUF(out);
      assert.equal(file.fileSize, r.bytes);
      const arch = file.metadata.get("general.architecture");
      assert.equal(arch?.value, PRESETS[preset]!.arch);
      assert.deepEqual([...file.tensors.keys()], plan.tensors.map((t) => t.name));
      for (const t of plan.tensors) {
        const got = file.tensors.get(t.name)!;
        assert.deepEqual(got.dims, t.dims, t.name);
        assert.equal(typeName(got.type), typeName(t.type), t.name);
      }
      // the requested type really is the type of the expert matrices (tiny shapes are whole K-blocks)
      assert.equal(typeName(file.tensors.get("blk.1.ffn_up_exps.weight")!.type), type);
      assert.equal(file.tensors.get("blk.1.ffn_gate_inp.weight")!.type, GGMLType.F32);

      // llama.cpp loads it and greedy-generates from a 4-token prompt
      const vocab = r.shape.vocab;
      const tokens = await withLlamaModel(out, (m) => m.greedy([1, 400, 500, 600], 16), { contextSize: 64 });
      assert.equal(tokens.length, 16, `${preset} ${type}`);
      for (const t of tokens) assert.ok(Number.isInteger(t) && t >= 0 && t < vocab, `${preset} ${type}: token ${t}`);
      assert.ok(new Set(tokens).size > 1, `${preset} ${type}: generation collapsed to one token: ${tokens}`);
      rmSync(out);
    }
  });
}

test("make-model: llama.cpp logits are finite and routing-relevant scales give non-degenerate output", async () => {
  const out = join(dir, "logits.gguf");
  await makeModel({ preset: "tiny", type: "F16", out });
  const rows = await withLlamaModel(out, (m) => m.logProbs([1, 400, 500, 600, 700, 800]), { contextSize: 64 });
  const argmaxes = new Set<number>();
  for (const row of rows) {
    let best = 0;
    for (let i = 0; i < row.length; i++) {
      assert.ok(!Number.isNaN(row[i]!), "NaN log-prob");
      if (row[i]! > row[best]!) best = i;
    }
    argmaxes.add(best);
  }
  assert.ok(argmaxes.size > 1, "every position predicts the same token");
});

test("make-model is deterministic: same flags and seed give the same bytes; another seed differs", async () => {
  const a = join(dir, "det-a.gguf"), b = join(dir, "det-b.gguf"), c = join(dir, "det-c.gguf");
  for (const type of ["F16", "Q4_K"]) {
    await makeModel({ preset: "tiny-deepseek2", type, seed: 7, out: a });
    await makeModel({ preset: "tiny-deepseek2", type, seed: 7, out: b });
    await makeModel({ preset: "tiny-deepseek2", type, seed: 8, out: c });
    const ba = readFileSync(a), bb = readFileSync(b), bc = readFileSync(c);
    assert.ok(ba.equals(bb), `${type}: two runs differ`);
    assert.equal(ba.length, bc.length);
    assert.ok(!ba.equals(bc), `${type}: seed has no effect`);
  }
});

test("make-model: generated quantized blocks dequantize to zero-mean weights of the planned std", async () => {
  for (const type of ["Q8_0", "Q4_0", "Q4_K", "Q5_K", "Q6_K", "BF16", "MXFP4"]) {
    const out = join(dir, `stats-${type}.gguf`);
    await makeModel({ preset: "tiny", type, out });
    const f = openGGUF(out);
    try {
      const t = f.weights.load("blk.0.ffn_up_exps.weight");
      const n = t.dims.reduce((x, y) => x * y, 1);
      const w = dequantize(t.type, t.data, n);
      let sum = 0, sq = 0;
      for (const v of w) { sum += v; sq += v * v; }
      const mean = sum / n, std = Math.sqrt(sq / n - mean * mean);
      const target = 1 / Math.sqrt(256);
      assert.ok(Math.abs(std / target - 1) < 0.1, `${type}: std ${std} vs ${target}`);
      assert.ok(Math.abs(mean) < 0.05 * target, `${type}: mean ${mean}`);
    } finally {
      f.weights.close();
    }
  }
});

test("make-model: shape flags override a preset; sizes follow", () => {
  const p = planModel({ preset: "tiny", layers: 3, experts: 4, topK: 1, dFf: 512, vocab: 1000 });
  assert.equal(p.shape.layers, 3);
  assert.equal(p.shape.vocab, 1000);
  assert.deepEqual(p.tensors.find((t) => t.name === "blk.2.ffn_down_exps.weight")!.dims, [512, 256, 4]);
  assert.deepEqual(p.tensors.find((t) => t.name === "token_embd.weight")!.dims, [256, 1000]);
  const md = new Map(p.metadata);
  assert.equal(md.get("llama.expert_used_count")?.value, 1);
  // large presets plan instantly and have their real parameter counts
  const olmoe = planModel({ preset: "olmoe-1b-7b", type: "Q4_K" });
  const params = olmoe.tensors.reduce((a, t) => a + t.dims.reduce((x, y) => x * y, 1), 0);
  assert.ok(params > 6.5e9 && params < 7.2e9, `olmoe-1b-7b has ${params} params`);
  // GPT-OSS at its real shapes: 20.9 B and 116.8 B parameters (OpenAI's model card: 21 B and 117 B)
  for (const [preset, lo, hi] of [["gpt-oss-20b", 20.8e9, 21.0e9], ["gpt-oss-120b", 116.7e9, 116.9e9]] as const) {
    const n = planModel({ preset, type: "MXFP4" }).tensors.reduce((a, t) => a + t.dims.reduce((x, y) => x * y, 1), 0);
    assert.ok(n > lo && n < hi, `${preset} has ${n} params`);
  }
  // rows that are not whole K-blocks fall back (qwen1.5-moe expert d_ff 1408 = 5.5 × 256)
  const qwen = planModel({ preset: "qwen1.5-moe-a2.7b", type: "Q4_K" });
  assert.equal(qwen.tensors.find((t) => t.name === "blk.0.ffn_down_exps.weight")!.type, GGMLType.Q4_0);
  assert.equal(qwen.tensors.find((t) => t.name === "blk.0.ffn_up_exps.weight")!.type, GGMLType.Q4_K);
});

test("make-model --type MXFP4 is llama.cpp's MXFP4_MOE: expert stacks MXFP4, every other matrix Q8_0, norms and routers F32", () => {
  for (const preset of ["tiny-qwen2moe", "tiny-deepseek2"]) {
    const p = planModel({ preset, type: "MXFP4" });
    assert.equal(new Map(p.metadata).get("general.file_type")?.value, 38);
    for (const t of p.tensors) {
      // (rows that are not whole blocks of 32 fall back to F16, as for Q8_0 files)
      const want = t.role === "f32" ? GGMLType.F32 : t.dims[0]! % 32 !== 0 ? GGMLType.F16
        : /_exps\.weight$/.test(t.name) ? GGMLType.MXFP4 : GGMLType.Q8_0;
      assert.equal(typeName(t.type), typeName(want), `${preset} ${t.name}`);
    }
    assert.ok(p.tensors.some((t) => /_shexp\.weight$/.test(t.name) && t.type === GGMLType.Q8_0), `${preset}: shared experts stay Q8_0`);
  }
});

test("make-model: bad arguments are typed errors", async () => {
  const out = join(dir, "bad.gguf");
  await assert.rejects(makeModel({ preset: "nope", out }), InvalidArgumentError);
  await assert.rejects(makeModel({ arch: "gpt2", out }), UnsupportedError);
  await assert.rejects(makeModel({ type: "Q9_9", out }), UnsupportedError);
  await assert.rejects(makeModel({ type: "Q2_K", out }), UnsupportedError);
  await assert.rejects(makeModel({ preset: "tiny-olmoe", arch: "llama", out }), InvalidArgumentError);
  await assert.rejects(makeModel({ preset: "tiny", topK: 9, out }), InvalidArgumentError);
  await assert.rejects(makeModel({ arch: "olmoe", kvHeads: 2, out }), InvalidArgumentError);
  await assert.rejects(makeModel({ preset: "tiny", seed: -1, out }), InvalidArgumentError);
  await assert.rejects(makeModel({ preset: "tiny", out: "" }), InvalidArgumentError);
  assert.throws(() => builtinVocabMetadata(10), InvalidArgumentError);
});

test("make-model: built-in vocabulary tokenizes English into word pieces in llama.cpp", async () => {
  const out = join(dir, "vocab.gguf");
  await makeModel({ preset: "tiny", out });
  const toks = await withLlamaModel(out, async (m) => m.tokenize("The history of the world"));
  assert.equal(toks.length, 5, `tokens: ${toks}`);
  const md = readGGUF(out).metadata;
  assert.equal(typeof md.get("tokenizer.chat_template")?.value, "string");
});

test("make-model --vocab-from copies a real vocabulary", { skip: skipUnlessShared() }, async () => {
  const out = join(dir, "spm.gguf");
  const r = await makeModel({ preset: "tiny", vocabFrom: shared("fixtures", "gguf-vocab", "ggml-vocab-llama-spm.gguf"), out });
  assert.equal(r.shape.vocab, 32000);
  const file = readGGUF(out);
  assert.deepEqual(file.tensors.get("token_embd.weight")!.dims, [256, 32000]);
  assert.equal(file.metadata.get("tokenizer.ggml.model")?.value, "llama");
  const toks = await withLlamaModel(out, async (m) => m.greedy([1, 450, 3303, 310], 4), { contextSize: 64 });
  assert.equal(toks.length, 4);
});
