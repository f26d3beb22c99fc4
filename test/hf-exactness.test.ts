/**
 * Exactness against Hugging Face transformers (float64 references in ../shared): logits of every
 * fixture within 1e-4, KV-cached greedy decoding reproduces transformers' greedy continuation.
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import { Model } from "../src/model/model.js";
import { Session } from "../src/engine/session.js";
import { argmax } from "../src/engine/sampler.js";
import { RefBackend } from "../src/backend/ref/ref-backend.js";
import { backendsUnderTest } from "./backends.js";
import type { Backend } from "../src/backend/backend.js";
import { hfFixtures, maxAbsDiff, readGenReference } from "./hf-fixtures.js";
import { skipWithoutShared } from "./shared.js";

function greedy(model: Model, backend: Backend, prompt: number[], n: number): { ids: number[]; logits: Float32Array[] } {
  const s = new Session(model, { backend, contextLength: prompt.length + n + 1 });
  let logits = s.prefill(prompt);
  const ids: number[] = [], all: Float32Array[] = [];
  for (let i = 0; i < n; i++) {
    all.push(logits);
    const t = argmax(logits);
    ids.push(t);
    if (i < n - 1) logits = s.decodeStep(t);
  }
  return { ids, logits: all };
}

test("HF fixtures: logits within 1e-4 of transformers, greedy continuation identical", { skip: skipWithoutShared }, async () => {
  const backends = await backendsUnderTest();
  const fixtures = hfFixtures().filter((f) => f.ref);
  assert.ok(fixtures.length >= 7, `expected the reference fixtures, found ${fixtures.length}`);
  for (const backend of backends) {
    for (const f of fixtures) {
      const ref = f.ref!;
      const model = Model.open(f.dir);
      const s = new Session(model, { backend, contextLength: 16 });
      const logits = s.forward(ref.input_ids, { allLogits: true });
      const diff = maxAbsDiff(logits, ref.hf_logits);
      assert.ok(diff < 1e-4, `${backend.name} ${f.name}: max |logit - hf| = ${diff}`);
      if (ref.greedy_ids) {
        const g = greedy(model, backend, ref.input_ids, ref.greedy_ids.length);
        assert.deepEqual(g.ids, ref.greedy_ids, `${backend.name} ${f.name}: greedy continuation`);
      }
      model.close();
    }
    backend.dispose();
  }
});

test("HF full_mixtral: KV-cached decode reproduces generated_ids and step_logits", { skip: skipWithoutShared }, async () => {
  const gen = readGenReference();
  const dir = hfFixtures().find((f) => f.name === "full_mixtral")!.dir;
  for (const backend of await backendsUnderTest()) {
    const model = Model.open(dir);
    const g = greedy(model, backend, gen.prompt_ids, gen.generated_ids.length);
    assert.deepEqual(g.ids, gen.generated_ids);
    const flat = new Float32Array(g.logits.length * gen.vocab_size);
    g.logits.forEach((l, i) => flat.set(l, i * gen.vocab_size));
    const diff = maxAbsDiff(flat, gen.step_logits);
    assert.ok(diff < 1e-4, `${backend.name}: max |step logit - hf| = ${diff}`);
    model.close();
    backend.dispose();
  }
});

test("HF mixtral_classic (per-expert w1/w2/w3 layout) gives the same logits as the packed full_mixtral", { skip: skipWithoutShared }, () => {
  const fx = hfFixtures();
  const packed = Model.open(fx.find((f) => f.name === "full_mixtral")!.dir);
  const classic = Model.open(fx.find((f) => f.name === "mixtral_classic")!.dir);
  const backend = new RefBackend();
  const ids = [22, 25, 29, 38, 36];
  const a = new Session(packed, { backend, contextLength: 8 }).forward(ids, { allLogits: true });
  const b = new Session(classic, { backend, contextLength: 8 }).forward(ids, { allLogits: true });
  assert.equal(maxAbsDiff(a, b), 0);
});
