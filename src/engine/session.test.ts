/** Session with an f16 KV cache: agrees with the f32 cache closely, on every backend, and is incremental-exact. */
import { test } from "node:test";
import assert from "node:assert/strict";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { makeModel } from "../tools/make-model/index.js";
import { Model } from "../model/model.js";
import { KvCache } from "../model/kv-cache.js";
import { Session } from "./session.js";
import { backendsUnderTest } from "../../test/backends.js";

test("kvType f16: close to f32, same on ref and native, token by token == one batch", { timeout: 120_000 }, async () => {
  const dir = mkdtempSync(join(tmpdir(), "moira-kv16-"));
  try {
    const path = join(dir, "m.gguf");
    await makeModel({ preset: "tiny-qwen2moe", type: "F32", seed: 3, out: path });
    const model = Model.open(path);
    const prompt = [301, 777, 1234, 42, 999, 500, 17, 2000, 300, 123];
    const V = model.config.vocabSize;
    assert.equal(KvCache.bytes(model.config, 64, "f16") * 2, KvCache.bytes(model.config, 64));
    const results: Float32Array[] = [];
    for (const backend of await backendsUnderTest()) {
      const f32 = new Session(model, { backend, contextLength: 16 }).forward(prompt, { allLogits: true });
      const s = new Session(model, { backend, contextLength: 16, kvType: "f16" });
      assert.ok(s.kv.k[0] instanceof Uint16Array);
      const f16 = s.forward(prompt, { allLogits: true });
      // f16 rounding of keys and values (relative 2^-11) moves logits a little, not the prediction
      let maxDiff = 0;
      for (let i = 0; i < f16.length; i++) maxDiff = Math.max(maxDiff, Math.abs(f16[i] - f32[i]));
      assert.ok(maxDiff < 0.05, `${backend.name}: f16 vs f32 cache logits differ by ${maxDiff}`);
      assert.ok(maxDiff > 0, `${backend.name}: the f16 cache should round something`);
      // one token at a time gives the batch's logits (bit for bit on native, where attention chunks
      // are fixed; within f64 noise on ref)
      const inc = new Session(model, { backend, contextLength: 16, kvType: "f16" });
      for (let t = 0; t < prompt.length; t++) {
        const row = inc.forward([prompt[t]]);
        const want = f16.subarray(t * V, (t + 1) * V);
        if (backend.name === "native") assert.deepEqual(row, want, `native token ${t}`);
        else for (let i = 0; i < V; i++) assert.ok(Math.abs(row[i] - want[i]) < 1e-4, `ref token ${t}`);
      }
      results.push(f16);
    }
    for (let b = 1; b < results.length; b++) {
      let maxDiff = 0;
      for (let i = 0; i < results[0].length; i++) maxDiff = Math.max(maxDiff, Math.abs(results[b][i] - results[0][i]));
      assert.ok(maxDiff < 1e-3, `native vs ref with an f16 cache: logits differ by ${maxDiff}`);
    }
    model.close();
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test("reusePrefix: a prompt that extends the cached tokens prefills only the rest, and generates what a fresh session does", { timeout: 120_000 }, async () => {
  const { generate } = await import("./generate.js");
  const dir = mkdtempSync(join(tmpdir(), "moira-reuse-"));
  try {
    const path = join(dir, "m.gguf");
    await makeModel({ preset: "tiny", seed: 5, out: path });
    const model = Model.open(path);
    const first = [1, 301, 777, 1234, 42, 999];
    const second = [...first, 500, 17, 2000, 300, 123];
    const greedy = async (session: Session, prompt: number[], cachedTokens: number) => {
      const out: number[] = [];
      for await (const t of generate(session, null, prompt, { maxTokens: 12, temperature: 0, repeatPenalty: 1.3, cachedTokens, stopTokens: [] })) out.push(t.token);
      return out;
    };
    for (const backend of await backendsUnderTest()) {
      for (const kvType of ["f32", "f16"] as const) {
        const cold = new Session(model, { backend, contextLength: 64, kvType });
        const want = await greedy(cold, second, 0);
        const warm = new Session(model, { backend, contextLength: 64, kvType });
        await greedy(warm, first, 0);
        // the cache holds the first prompt and most of its reply: the common prefix is the first prompt
        assert.deepEqual(warm.tokens.slice(0, first.length), first);
        const kept = warm.reusePrefix(second);
        assert.equal(kept, first.length);
        assert.equal(warm.position, first.length);
        assert.deepEqual(await greedy(warm, second, kept), want, `${backend.name} ${kvType}`);
        // the whole prompt cached: its last token is run again, for fresh logits
        assert.equal(warm.reusePrefix(second), second.length - 1);
        assert.deepEqual(await greedy(warm, second, second.length - 1), want, `${backend.name} ${kvType}, all cached`);
        // a prompt that parts from the cache early keeps only the shared tokens
        assert.equal(warm.reusePrefix([1, 301, 5]), 2);
        assert.deepEqual(warm.tokens, [1, 301]);
      }
    }
    model.close();
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});
