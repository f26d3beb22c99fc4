/**
 * The routing primitive against a reference written from llama.cpp's build_moe_ffn (gating,
 * selection bias, group-limited top-k, softmax over the chosen logits, normalisation, scale), on
 * configs built directly; and the model's route step and the Fate predictor choosing alike.
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import { ExpertRouter, type RoutingConfig } from "./routing.js";
import { expertGatingOf, validateConfig, type ModelConfig } from "./config.js";
import { ModelWeights } from "./weights.js";
import { route, type ForwardContext } from "./steps.js";
import type { KvCache } from "./kv-cache.js";
import type { ExpertProvider } from "./experts.js";
import { RefBackend } from "../backend/ref/ref-backend.js";
import { GGMLType } from "../formats/quant/types.js";
import type { TensorData, WeightSource } from "../formats/model-file.js";
import { NextLayerRouter } from "../offload/fate-predictor.js";
import { ModelFormatError, UnsupportedError } from "../errors.js";

/**
 * llama.cpp's build_moe_ffn routing, one token, in plain arrays: probs = gating(logits);
 * selection = probs + bias; with groups, groups scored by the sum of their top-2 selection
 * scores, all but the best expertGroupsUsed masked to -inf; top-k by selection (stable sort: ties
 * to the lower id); weights = probs of the chosen (softmax-weight: softmax of them); /sum (clamped
 * at 6.103515625e-5) when normTopK; * routedScale.
 */
function reference(cfg: RoutingConfig, logits: readonly number[], bias: readonly number[] | null): { experts: number[]; weights: number[] } {
  const softmax = (x: readonly number[]) => {
    const m = Math.max(...x);
    const e = x.map((v) => Math.exp(v - m));
    const s = e.reduce((a, b) => a + b, 0);
    return e.map((v) => v / s);
  };
  const byScore = (s: readonly number[]) => s.map((_, i) => i).sort((a, b) => (s[b]! > s[a]! ? 1 : s[b]! < s[a]! ? -1 : a - b));
  const probs = cfg.expertGating === "softmax" ? softmax(logits)
    : cfg.expertGating === "sigmoid" ? logits.map((x) => 1 / (1 + Math.exp(-x)))
    : [...logits];
  let selection = probs.map((p, e) => p + (bias ? bias[e]! : 0));
  if (cfg.expertGroups > 1) {
    const per = cfg.nExpert / cfg.expertGroups;
    const groupScores = Array.from({ length: cfg.expertGroups }, (_, g) => {
      const top = [...selection.slice(g * per, (g + 1) * per)].sort((a, b) => b - a);
      return top[0]! + top[1]!;
    });
    const kept = new Set(byScore(groupScores).slice(0, cfg.expertGroupsUsed));
    selection = selection.map((s, e) => (kept.has(Math.floor(e / per)) ? s : -Infinity));
  }
  const experts = byScore(selection).slice(0, cfg.nExpertUsed);
  let weights = experts.map((e) => probs[e]!);
  if (cfg.expertGating === "softmax-weight") weights = softmax(weights);
  if (cfg.normTopK) {
    const sum = Math.max(weights.reduce((a, b) => a + b, 0), 6.103515625e-5);
    weights = weights.map((w) => w / sum);
  }
  return { experts, weights: weights.map((w) => w * cfg.routedScale) };
}

const base: RoutingConfig = { nExpert: 16, nExpertUsed: 4, expertGating: "softmax", expertGroups: 1, expertGroupsUsed: 1, normTopK: false, routedScale: 1 };

/** A deterministic pseudo-random stream in [-1, 1). */
function noise(seed: number): () => number {
  let x = seed >>> 0;
  return () => { x = (Math.imul(x, 1664525) + 1013904223) >>> 0; return x / 2 ** 31 - 1; };
}

function routeRows(cfg: RoutingConfig, logits: Float32Array, nTokens: number, bias: Float32Array | null) {
  const experts = new Int32Array(nTokens * cfg.nExpertUsed), weights = new Float32Array(nTokens * cfg.nExpertUsed);
  new ExpertRouter(cfg).route(logits, nTokens, bias, experts, weights);
  return { experts, weights };
}

/** Routes random rows with `cfg` and checks each token against the reference. */
function checkAgainstReference(cfg: RoutingConfig, o: { seed: number; bias?: boolean; spread?: number }): void {
  const rand = noise(o.seed), nTokens = 40, nE = cfg.nExpert, k = cfg.nExpertUsed;
  const logits = Float32Array.from({ length: nTokens * nE }, () => rand() * (o.spread ?? 4));
  const bias = o.bias ? Float32Array.from({ length: nE }, () => rand() * 0.5) : null;
  const got = routeRows(cfg, logits, nTokens, bias);
  for (let t = 0; t < nTokens; t++) {
    const ref = reference(cfg, Array.from(logits.subarray(t * nE, (t + 1) * nE)), bias && Array.from(bias));
    assert.deepEqual(Array.from(got.experts.subarray(t * k, (t + 1) * k)), ref.experts, `token ${t} experts`);
    ref.weights.forEach((w, j) => {
      const g = got.weights[t * k + j]!;
      assert.ok(Math.abs(g - w) <= 1e-6 * Math.max(1, Math.abs(w)), `token ${t} weight ${j}: ${g} vs ${w}`);
    });
  }
}

test("softmax gating, with and without renormalisation and scale, matches the reference", () => {
  checkAgainstReference(base, { seed: 1 });
  checkAgainstReference({ ...base, normTopK: true }, { seed: 2 });
  checkAgainstReference({ ...base, normTopK: true, routedScale: 2.5, nExpert: 64, nExpertUsed: 6 }, { seed: 3 });
});

test("sigmoid gating with a selection bias and scale (DeepSeek-V3 / GLM-4.5 shape) matches the reference", () => {
  checkAgainstReference({ ...base, expertGating: "sigmoid", normTopK: true, routedScale: 2.5 }, { seed: 4, bias: true });
  checkAgainstReference({ ...base, expertGating: "sigmoid", nExpert: 20, nExpertUsed: 3 }, { seed: 5, bias: true });
});

test("softmax over the chosen logits (GPT-OSS) matches the reference, and softmax gating renormalised", () => {
  const cfg: RoutingConfig = { ...base, expertGating: "softmax-weight" };
  checkAgainstReference(cfg, { seed: 6 });
  checkAgainstReference({ ...cfg, normTopK: true }, { seed: 7, bias: true });
  // softmax of the chosen logits = the softmax over all experts renormalised over the chosen
  const rand = noise(8);
  const logits = Float32Array.from({ length: 5 * 16 }, () => rand() * 3);
  const a = routeRows(cfg, logits, 5, null), b = routeRows({ ...base, normTopK: true }, logits, 5, null);
  assert.deepEqual(a.experts, b.experts);
  a.weights.forEach((w, i) => assert.ok(Math.abs(w - b.weights[i]!) < 1e-6));
});

test("group-limited top-k (DeepSeek-V3: 8 groups, best 4, top-8 of 64) matches the reference", () => {
  const cfg: RoutingConfig = { nExpert: 64, nExpertUsed: 8, expertGating: "sigmoid", expertGroups: 8, expertGroupsUsed: 4, normTopK: true, routedScale: 2.5 };
  checkAgainstReference(cfg, { seed: 9, bias: true });
  checkAgainstReference({ ...cfg, expertGating: "softmax", normTopK: false, routedScale: 1 }, { seed: 10 });
  checkAgainstReference({ ...cfg, expertGroupsUsed: 1, nExpertUsed: 6 }, { seed: 11, bias: true, spread: 8 });
});

test("the selection bias moves the choice, never the weights", () => {
  const cfg: RoutingConfig = { ...base, nExpert: 4, nExpertUsed: 2, expertGating: "sigmoid" };
  const logits = Float32Array.of(2, 1, 0, -1);
  assert.deepEqual(Array.from(routeRows(cfg, logits, 1, null).experts), [0, 1]);
  const r = routeRows(cfg, logits, 1, Float32Array.of(0, 0, 0, 1));
  assert.deepEqual(Array.from(r.experts), [3, 0]);
  assert.equal(r.weights[0], Math.fround(1 / (1 + Math.exp(1))));
  assert.equal(r.weights[1], Math.fround(1 / (1 + Math.exp(-2))));
});

test("a group is scored by its two best experts, not its best one", () => {
  // groups of 4: group 0 holds the single best expert but a poor second; group 1's two are both good
  const cfg: RoutingConfig = { ...base, nExpert: 8, nExpertUsed: 2, expertGating: "sigmoid", expertGroups: 2, expertGroupsUsed: 1 };
  const logits = Float32Array.of(5, -5, -5, -5, 2, 2, -5, -5);
  assert.deepEqual(Array.from(routeRows(cfg, logits, 1, null).experts), [4, 5]);
  assert.deepEqual(Array.from(routeRows({ ...cfg, expertGroups: 1 }, logits, 1, null).experts), [0, 4]);
});

test("ties go to the lower expert id, and to the lower group", () => {
  const flat = new Float32Array(16);
  assert.deepEqual(Array.from(routeRows(base, flat, 1, null).experts), [0, 1, 2, 3]);
  const tied = Float32Array.of(0, 1, 0, 1, 0, 1, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0);
  assert.deepEqual(Array.from(routeRows(base, tied, 1, null).experts), [1, 3, 5, 7]);
  // four groups of 4, groups 1 and 3 tie for best: group 1 is kept
  const cfg: RoutingConfig = { ...base, nExpertUsed: 2, expertGroups: 4, expertGroupsUsed: 1 };
  const g = Float32Array.of(0, 0, 0, 0, 1, 1, 0, 0, 0, 0, 0, 0, 0, 1, 1, 0);
  assert.deepEqual(Array.from(routeRows(cfg, g, 1, null).experts), [4, 5]);
});

test("normalisation divides by the chosen weights' sum, floored like llama.cpp's", () => {
  const cfg: RoutingConfig = { ...base, nExpert: 4, nExpertUsed: 2, expertGating: "sigmoid", normTopK: true };
  const r = routeRows(cfg, Float32Array.of(-20, -21, -22, -23), 1, null);
  const s0 = 1 / (1 + Math.exp(20)), s1 = 1 / (1 + Math.exp(21));
  assert.ok(s0 + s1 < 6.103515625e-5);
  assert.equal(r.weights[0], Math.fround(s0 / 6.103515625e-5));
  assert.equal(r.weights[1], Math.fround(s1 / 6.103515625e-5));
});

test("rank: its first k are the routed experts; beyond the best groups, the others by selection score", () => {
  const cfg: RoutingConfig = { ...base, nExpert: 8, nExpertUsed: 2, expertGating: "sigmoid", expertGroups: 2, expertGroupsUsed: 1 };
  const router = new ExpertRouter(cfg);
  const logits = Float32Array.of(0, 3, 1, 2, 4, -1, -2, -3);
  const bias = Float32Array.of(0, 0, 0, 0, 0, 0, 0, 0.1);
  const experts = new Int32Array(8), scores = new Float64Array(8);
  assert.equal(router.rank(logits, bias, 8, experts, scores), 8);
  // group 0 (best two: 3, 2) beats group 1 (4, -1); then group 1 by selection score
  assert.deepEqual(Array.from(experts), [1, 3, 2, 0, 4, 5, 7, 6]); // 7 passes 6 by its bias
  assert.equal(scores[6], 1 / (1 + Math.exp(3)) + Math.fround(0.1)); // expert 7's, biased
  const routed = routeRows(cfg, logits, 1, bias).experts;
  assert.deepEqual(Array.from(routed), Array.from(experts.subarray(0, 2)));
  assert.equal(router.rank(logits, bias, 3, experts), 3);
  assert.equal(router.rank(logits, bias, 0, experts), 0);
});

test("probabilities: softmax, or sigmoid, per expert", () => {
  const logits = Float32Array.of(1, 2, 3, 0);
  const out = new Float32Array(4);
  new ExpertRouter({ ...base, nExpert: 4, nExpertUsed: 2 }).probabilities(logits, out);
  const s = [1, 2, 3, 0].map((x) => Math.exp(x - 3)), sum = s.reduce((a, b) => a + b);
  s.forEach((v, i) => assert.equal(out[i], Math.fround(v / sum)));
  new ExpertRouter({ ...base, nExpert: 4, nExpertUsed: 2, expertGating: "sigmoid" }).probabilities(logits, out);
  [1, 2, 3, 0].forEach((x, i) => assert.equal(out[i], Math.fround(1 / (1 + Math.exp(-x)))));
});

// ---------------------------------------------------------------------------------------------
// config, and the model step and the predictor routing alike

function modelConfig(over: Partial<ModelConfig>): ModelConfig {
  return validateConfig({
    arch: "test", nLayer: 2, nextnLayers: 0, dModel: 8, nHead: 2, nKvHead: 2, headDimK: 4, headDimV: 4, vocabSize: 10, contextLength: 16,
    rmsEps: 1e-5, ropeTheta: 10000, ropeDim: 4, ropeNeox: true, ropeFreqScale: 1, nExpert: 16, nExpertUsed: 4, expertFf: 4,
    denseFf: 0, sharedFf: 0, leadingDense: 0, normTopK: true, routedScale: 1, expertGating: "softmax", expertGroups: 1,
    expertGroupsUsed: 1, qkNorm: "none", mla: null, tiedEmbeddings: true, ...over,
  });
}

test("gating codes and group counts are checked", () => {
  assert.equal(expertGatingOf("x", 0), "softmax");
  assert.equal(expertGatingOf("x", 2), "sigmoid");
  assert.equal(expertGatingOf("x", 3), "softmax-weight");
  assert.throws(() => expertGatingOf("x", 4), UnsupportedError);
  assert.equal(modelConfig({ expertGroups: 8, expertGroupsUsed: 4 }).expertGroups, 8);
  assert.throws(() => modelConfig({ expertGroups: 3, expertGroupsUsed: 1 }), ModelFormatError); // 16 / 3
  assert.throws(() => modelConfig({ expertGroups: 16, expertGroupsUsed: 4 }), ModelFormatError); // groups of 1
  assert.throws(() => modelConfig({ expertGroups: 4, expertGroupsUsed: 5 }), ModelFormatError);
  assert.throws(() => modelConfig({ expertGroups: 8, expertGroupsUsed: 1 }), ModelFormatError); // 2 experts < top-4
});

/** F32 tensors held in memory: name → [GGUF dims, values]. */
function memoryWeights(tensors: Record<string, [number[], Float32Array]>): ModelWeights {
  const data = (name: string): TensorData => {
    const [dims, v] = tensors[name]!;
    return { name, type: GGMLType.F32, dims, nbytes: v.byteLength, data: new Uint8Array(v.buffer, v.byteOffset, v.byteLength) };
  };
  const source: WeightSource = {
    tensors: new Map(Object.keys(tensors).map((n) => [n, data(n)])),
    load: data,
    close() {},
  };
  return new ModelWeights(source);
}

test("the model's route step and the Fate predictor choose the same experts (bias and groups included)", () => {
  const cfg = modelConfig({ expertGating: "sigmoid", expertGroups: 4, expertGroupsUsed: 2, routedScale: 2.5 });
  const rand = noise(12), d = cfg.dModel, nE = cfg.nExpert, k = cfg.nExpertUsed, nTokens = 6;
  const weights = memoryWeights({
    "blk.1.ffn_gate_inp.weight": [[d, nE], Float32Array.from({ length: nE * d }, () => rand())],
    "blk.1.exp_probs_b.bias": [[nE], Float32Array.from({ length: nE }, () => rand() * 0.3)],
  });
  const backend = new RefBackend();
  const h = Float32Array.from({ length: nTokens * d }, () => rand() * 2);
  const ctx: ForwardContext = { backend, cfg, weights, experts: {} as ExpertProvider, nTokens, sequences: [{ kv: {} as KvCache, pos0: 0, nTokens }] };
  const routed = route(ctx, 1, h);
  const predictor = new NextLayerRouter(cfg, weights, backend);
  const logits = predictor.logits(1, h, nTokens);
  for (let t = 0; t < nTokens; t++) {
    const row = h.subarray(t * d, (t + 1) * d);
    assert.deepEqual(predictor.predict(1, row, 1, k).experts, Array.from(routed.experts.subarray(t * k, (t + 1) * k)), `token ${t}`);
    const ref = reference(cfg, Array.from(logits.subarray(t * nE, (t + 1) * nE)), Array.from(weights.vector("blk.1.exp_probs_b.bias", nE)));
    assert.deepEqual(Array.from(routed.experts.subarray(t * k, (t + 1) * k)), ref.experts);
  }
  // prefill: every routed (token, expert) is one vote
  const votes = predictor.votes(1, logits, nTokens, k);
  const counted = new Float64Array(nE);
  for (const e of routed.experts) counted[e]! += 1;
  assert.deepEqual(votes, counted);
});
