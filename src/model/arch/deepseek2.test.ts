/**
 * DeepSeek-V3 / Kimi-K2 in deepseek2: their routing (sigmoid scores, the exp_probs_b selection
 * bias, group-limited top-k, renormalised and scaled weights) and DeepSeek's YaRN (the rope's ramp,
 * the attention's mscale^2), as make-model writes them and as config.json gives them; against
 * llama.cpp (node-llama-cpp's prebuilt binary) where it can run. The continuations and
 * per-type statistics are test/llama-exactness.test.ts's (tiny-deepseek3 there).
 */
import { test, after } from "node:test";
import assert from "node:assert/strict";
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { deepseek2 } from "./deepseek2.js";
import { Model } from "../model.js";
import { ExpertRouter, selectionBias } from "../routing.js";
import { makeModel, planModel, resolveShape } from "../../tools/make-model/index.js";
import { readGGUF } from "../../formats/gguf/reader.js";
import { convertHFToGGUF, hfConfigToGGUFMetadata, parseHFConfig } from "../../formats/hf/index.js";
import { writeSafetensors } from "../../formats/safetensors/writer.js";
import { GGMLType } from "../../formats/quant/types.js";
import type { GGUFMetadataValue } from "../../formats/model-file.js";
import { RefBackend } from "../../backend/ref/ref-backend.js";
import { ropeOf } from "../steps.js";
import { architectureFor } from "../registry.js";
import { f32, str, u32 } from "../../formats/metadata-value.js";
import { InvalidArgumentError, ModelFormatError } from "../../errors.js";
import {
  disposeOracleLlama, llamaMissing, logSoftmax, maxLogProbGap, moiraForward, moiraGreedy, parityPrompts, routerSites, rowGap, withLlamaModel,
} from "../../../test/llama-oracle.js";
import { nativeOrRef } from "../../../test/backends.js";

after(() => disposeOracleLlama());

const dir = mkdtempSync(join(tmpdir(), "moira-deepseek3-"));
after(() => rmSync(dir, { recursive: true, force: true }));

let tinyPath: string | null = null;
/** tiny-deepseek3 in F32, written once. */
async function tinyF32(): Promise<string> {
  tinyPath ??= (await makeModel({ preset: "tiny-deepseek3", type: "F32", seed: 7, out: join(dir, "tiny-deepseek3-F32.gguf") })).path;
  return tinyPath;
}

const keysOf = (md: ReadonlyArray<[string, GGUFMetadataValue]> | ReadonlyMap<string, GGUFMetadataValue>) => new Map([...md].map(([k, v]) => [k, v.value]));

test("make-model tiny-deepseek3: DeepSeek-V3's keys and selection biases; moira's config from them", async () => {
  const path = await tinyF32();
  const g = readGGUF(path);
  const k = keysOf(g.metadata);
  assert.equal(k.get("deepseek2.expert_gating_func"), 2);
  assert.equal(k.get("deepseek2.expert_group_count"), 4);
  assert.equal(k.get("deepseek2.expert_group_used_count"), 2);
  assert.equal(k.get("deepseek2.expert_weights_norm"), true);
  assert.equal(k.get("deepseek2.expert_weights_scale"), 2.5);
  assert.equal(k.get("deepseek2.rope.scaling.type"), "yarn");
  assert.equal(k.get("deepseek2.rope.scaling.factor"), 40);
  assert.equal(k.get("deepseek2.rope.scaling.original_context_length"), 64);
  assert.equal(k.get("deepseek2.rope.scaling.yarn_log_multiplier"), Math.fround(0.1));
  assert.equal(k.get("deepseek2.attention.q_lora_rank"), 128);
  // a selection bias per MoE layer, F32 like the routers; none in the dense layer
  assert.equal(g.tensors.has("blk.0.exp_probs_b.bias"), false);
  for (const l of [1, 2]) {
    const t = g.tensors.get(`blk.${l}.exp_probs_b.bias`)!;
    assert.equal(t.type, GGMLType.F32);
    assert.deepEqual(t.dims, [16]);
  }

  const model = Model.open(path);
  try {
    const c = model.config;
    assert.equal(c.expertGating, "sigmoid");
    assert.equal(c.expertGroups, 4);
    assert.equal(c.expertGroupsUsed, 2);
    assert.equal(c.normTopK, true);
    assert.equal(c.routedScale, 2.5);
    assert.equal(c.ropeFreqScale, 1 / 40);
    // DeepSeek's YaRN: with yarn_log_multiplier the rope keeps unit magnitude and the attention
    // logits take mscale^2, mscale = 1 + 0.1 * mscale_all_dim * ln(factor)
    assert.deepEqual(c.ropeYarn, { origContext: 64, betaFast: 32, betaSlow: 1, mscale: 1 });
    const mscale = 1 + 0.1 * Math.log(40);
    assert.ok(Math.abs(c.mla!.kqScale / (mscale * mscale / Math.sqrt(96)) - 1) < 1e-6, `kqScale ${c.mla!.kqScale}`);
    assert.equal(c.mla!.qLoraRank, 128);
  } finally {
    model.close();
  }
});

// (metadata in memory holds the values as given; a file holds them as f32)
test("make-model deepseek-v3 and kimi-k2: the real models' keys (as llama.cpp's converter writes them from their config.json)", () => {
  const v3 = keysOf(planModel({ preset: "deepseek-v3", layers: 4 }).metadata);
  const expectV3: Record<string, unknown> = {
    "deepseek2.embedding_length": 7168, "deepseek2.attention.head_count": 128, "deepseek2.expert_count": 256, "deepseek2.expert_used_count": 8,
    "deepseek2.expert_group_count": 8, "deepseek2.expert_group_used_count": 4, "deepseek2.expert_gating_func": 2, "deepseek2.expert_weights_norm": true,
    "deepseek2.expert_weights_scale": 2.5, "deepseek2.expert_shared_count": 1, "deepseek2.expert_feed_forward_length": 2048,
    "deepseek2.feed_forward_length": 18432, "deepseek2.leading_dense_block_count": 3, "deepseek2.attention.q_lora_rank": 1536,
    "deepseek2.attention.kv_lora_rank": 512, "deepseek2.rope.dimension_count": 64, "deepseek2.attention.key_length_mla": 192,
    "deepseek2.attention.value_length_mla": 128, "deepseek2.vocab_size": 129280, "deepseek2.rope.freq_base": 10000,
    "deepseek2.rope.scaling.factor": 40, "deepseek2.rope.scaling.original_context_length": 4096,
    "deepseek2.rope.scaling.yarn_beta_fast": 32, "deepseek2.rope.scaling.yarn_beta_slow": 1,
  };
  for (const [key, v] of Object.entries(expectV3)) assert.equal(v3.get(key), v, key);
  const k2plan = planModel({ preset: "kimi-k2", layers: 2 });
  const k2 = keysOf(k2plan.metadata);
  const expectK2: Record<string, unknown> = {
    "deepseek2.attention.head_count": 64, "deepseek2.expert_count": 384, "deepseek2.expert_weights_scale": 2.827,
    "deepseek2.leading_dense_block_count": 1, "deepseek2.vocab_size": 163840, "deepseek2.rope.freq_base": 50000,
    "deepseek2.rope.scaling.factor": 32, "deepseek2.rope.scaling.yarn_beta_fast": 1, "deepseek2.rope.scaling.yarn_beta_slow": 1,
    "deepseek2.expert_gating_func": 2, "deepseek2.expert_weights_norm": true,
  };
  for (const [key, v] of Object.entries(expectK2)) assert.equal(k2.get(key), v, key);
  // one group: no group keys (llama.cpp groups experts only when there are more than one group)
  assert.equal(k2.has("deepseek2.expert_group_count"), false);
  // moira's config of it: Kimi-K2's beta_fast 1 and beta_slow 1, as transformers reads them
  // (llama.cpp's deepseek2 takes 32 and 1 whatever the file says)
  const c = deepseek2.config(new Map(k2plan.metadata), new Map(k2plan.tensors.map((x) => [x.name, { name: x.name, type: x.type, dims: x.dims, nbytes: 0 }])));
  assert.deepEqual(c.ropeYarn, { origContext: 4096, betaFast: 1, betaSlow: 1, mscale: 1 });
  assert.equal(c.expertGroups, 1);
  assert.equal(c.routedScale, 2.827);
});

test("deepseek2: groups that do not split the experts, or that a token all searches, are refused", async () => {
  assert.throws(() => resolveShape({ preset: "deepseek-v3", experts: 100 }), (e: unknown) => e instanceof InvalidArgumentError && /expert groups must split --experts 100/.test(e.message));
  assert.throws(() => resolveShape({ preset: "tiny-deepseek3", topK: 9 }), InvalidArgumentError); // 2 groups of 4 hold 8
  const g = readGGUF(await tinyF32());
  const md = new Map(g.metadata);
  md.set("deepseek2.expert_group_used_count", { type: 4, value: 4 });
  assert.throws(() => deepseek2.config(md, g.tensors), (e: unknown) => e instanceof ModelFormatError && /expert_group_used_count 4 must be below expert_group_count 4/.test(e.message));
  md.set("deepseek2.expert_group_count", { type: 4, value: 3 });
  md.set("deepseek2.expert_group_used_count", { type: 4, value: 2 });
  assert.throws(() => deepseek2.config(md, g.tensors), /expert_group_count 3 must divide expert_count 16/);
});

test("tiny-deepseek3's routing: the selection biases and the groups change choices; weights are the unbiased sigmoids renormalised x 2.5", async (t) => {
  const model = Model.open(await tinyF32());
  try {
    const cfg = model.config;
    const prompt = parityPrompts(cfg.vocabSize, 3).flat();
    const { router } = moiraForward(model, new RefBackend(), prompt);
    const k = cfg.nExpertUsed, nE = cfg.nExpert, per = nE / cfg.expertGroups;
    const routed = new ExpertRouter(cfg), unbiased = new ExpertRouter(cfg), ungrouped = new ExpertRouter({ ...cfg, expertGroups: 1, expertGroupsUsed: 1 });
    const e = new Int32Array(k), w = new Float32Array(k), e2 = new Int32Array(k), w2 = new Float32Array(k);
    let rows = 0, byBias = 0, byGroups = 0;
    for (const [layer, logits] of router) {
      const bias = selectionBias(model.weights, cfg, layer)!;
      assert.ok(bias, `layer ${layer} has a selection bias`);
      for (let t = 0; t < prompt.length; t++) {
        const row = logits.subarray(t * nE, (t + 1) * nE);
        routed.route(row, 1, bias, e, w);
        rows++;
        // at most expert_group_used_count groups
        assert.ok(new Set([...e].map((x) => Math.floor(x / per))).size <= cfg.expertGroupsUsed);
        // weights: sigmoid of the logits, renormalised over the chosen, times 2.5
        const s = [...e].map((x) => 1 / (1 + Math.exp(-row[x]!)));
        const sum = s.reduce((a, b) => a + b, 0);
        s.forEach((v, j) => assert.ok(Math.abs(w[j]! - (v / sum) * 2.5) < 1e-6, `weight ${w[j]} vs ${(v / sum) * 2.5}`));
        unbiased.route(row, 1, null, e2, w2);
        if ([...e].some((x) => !e2.includes(x))) byBias++;
        ungrouped.route(row, 1, bias, e2, w2);
        if ([...e].some((x) => !e2.includes(x))) byGroups++;
      }
    }
    t.diagnostic(`of ${rows} choices, the selection bias changed ${byBias} and the group limit ${byGroups}`);
    assert.ok(byBias >= rows / 10, `the selection bias changed ${byBias} of ${rows} choices`);
    assert.ok(byGroups >= rows / 10, `the group limit changed ${byGroups} of ${rows} choices`);
  } finally {
    model.close();
  }
});

/**
 * ggml's rope_yarn as ggml-cpu computes it (f32, the angle advanced by theta_scale per pair):
 * normal (GPT-J) rotation of one head of `n` dims at position `pos`, ext_factor 1.
 */
function ggmlRopeYarn(x: Float32Array, pos: number, o: { base: number; freqScale: number; nCtxOrig: number; betaFast: number; betaSlow: number; attnFactor: number }): Float32Array {
  const f = Math.fround, n = x.length;
  const corrDim = (nRot: number) => f(f(n * f(Math.log(f(o.nCtxOrig / f(nRot * f(2 * Math.PI)))))) / f(2 * f(Math.log(o.base))));
  const low = Math.max(0, Math.floor(corrDim(o.betaFast))), high = Math.min(n - 1, Math.ceil(corrDim(o.betaSlow)));
  const thetaScale = f(Math.pow(o.base, f(-2 / n)));
  const out = new Float32Array(n);
  let theta = f(pos);
  for (let i0 = 0; i0 < n; i0 += 2) {
    const interp = f(o.freqScale * theta);
    const y = f(f(i0 / 2 - low) / Math.max(0.001, high - low));
    const ramp = f(1 - Math.min(1, Math.max(0, y)));
    const t = f(f(interp * f(1 - ramp)) + f(theta * ramp));
    const mscale = f(o.attnFactor * f(1 + f(0.1 * f(Math.log(1 / o.freqScale)))));
    const c = f(f(Math.cos(t)) * mscale), s = f(f(Math.sin(t)) * mscale);
    out[i0] = f(f(x[i0]! * c) - f(x[i0 + 1]! * s));
    out[i0 + 1] = f(f(x[i0]! * s) + f(x[i0 + 1]! * c));
    theta = f(theta * thetaScale);
  }
  return out;
}

test("YaRN rope: moira's rope of a model (ropeOf, ref and native backends) is ggml's rope_yarn: deepseek2's and the generic one", async () => {
  const backends = [new RefBackend(), await nativeOrRef()];
  const model = Model.open(await tinyF32());
  try {
    // the generic YaRN (any other architecture): rope.scaling.* keys added to a tiny-qwen3moe
    const q = planModel({ preset: "tiny-qwen3moe" });
    const md = new Map(q.metadata);
    md.set("qwen3moe.rope.scaling.type", str("yarn"));
    md.set("qwen3moe.rope.scaling.factor", f32(4));
    md.set("qwen3moe.rope.scaling.original_context_length", u32(32));
    const generic = architectureFor("qwen3moe").config(md, new Map(q.tensors.map((x) => [x.name, { name: x.name, type: x.type, dims: x.dims, nbytes: 0 }])));
    assert.deepEqual(generic.ropeYarn, { origContext: 32, betaFast: 32, betaSlow: 1, mscale: 1 + 0.1 * Math.log(4) });
    const cases = [
      // llama.cpp's deepseek2 with yarn_log_multiplier: attn_factor 1 / (1 + 0.1 ln factor), the rope's magnitude 1
      { cfg: model.config, n: model.config.mla!.qkRopeDim, nCtxOrig: 64, attnFactor: 1 / (1 + 0.1 * Math.log(40)) },
      // elsewhere: attn_factor 1, the rope's magnitude YaRN's own 1 + 0.1 ln factor
      { cfg: generic, n: generic.ropeDim, nCtxOrig: 32, attnFactor: 1 },
    ];
    for (const { cfg, n, nCtxOrig, attnFactor } of cases) {
      for (const backend of backends) {
        for (const pos of [0, 3, 63, 200, 4000]) {
          const x = Float32Array.from({ length: n }, (_, i) => Math.sin(i * 1.7 + 0.3));
          const got = x.slice();
          backend.rope(got, { nTokens: 1, nHead: 1, headStride: n, ropeOffset: 0, pos0: pos, ...ropeOf(cfg, n), neox: false });
          const want = ggmlRopeYarn(x, pos, { base: cfg.ropeTheta, freqScale: cfg.ropeFreqScale, nCtxOrig, betaFast: 32, betaSlow: 1, attnFactor });
          // f32 angles drift from f64 ones by ~pos * 1e-7 rad
          const tol = 2e-6 + pos * 2e-7;
          got.forEach((v, i) => assert.ok(Math.abs(v - want[i]!) <= tol, `${cfg.arch} ${backend.name} pos ${pos} dim ${i}: ${v} vs ggml ${want[i]}`));
        }
      }
    }
  } finally {
    model.close();
    for (const b of backends) b.dispose();
  }
});

test("llama.cpp, F32: every routing decision of tiny-deepseek3's prefill is llama.cpp's (the log-prob gap is far below what any one flipped decision moves)", async (t) => {
  const missing = await llamaMissing();
  if (missing) return t.skip(missing);
  const backend = await nativeOrRef();
  const path = await tinyF32();
  const model = Model.open(path);
  try {
    let worstGap = 0, leastMove = Infinity, sites = 0;
    await withLlamaModel(path, async (llama) => {
      for (const prompt of parityPrompts(model.config.vocabSize, 3)) {
        const base = moiraForward(model, backend, prompt);
        const lp = base.logits.map((l) => logSoftmax(l));
        worstGap = Math.max(worstGap, maxLogProbGap(lp, await llama.logProbs(prompt)));
        for (const site of routerSites(model, base.router)) {
          if (!Number.isFinite(site.margin)) continue;
          const flipped = moiraForward(model, backend, prompt, site).logits;
          leastMove = Math.min(leastMove, Math.max(...flipped.map((l, p) => rowGap(logSoftmax(l), lp[p]!))));
          sites++;
        }
      }
    });
    t.diagnostic(`F32 prefill log-prob gap ${worstGap.toFixed(4)}; the least move of one flipped routing decision (of ${sites}) ${leastMove.toFixed(4)}`);
    assert.ok(sites >= 2 * 18, `${sites} routing decisions`);
    // llama.cpp's f16 KV cache alone accounts for the gap (~0.01, as for every architecture)
    assert.ok(worstGap < 0.02, `gap ${worstGap}`);
    assert.ok(leastMove > 4 * worstGap, `a flipped decision moves log-probs by ${leastMove} only, not far above the gap ${worstGap}`);
  } finally {
    model.close();
    backend.dispose();
  }
});

// ---- Hugging Face: DeepSeek-V3 and Kimi-K2 config.json ------------------------------------------

/** deepseek-ai/DeepSeek-V3's config.json (the fields the converters read). */
const DEEPSEEK_V3 = {
  architectures: ["DeepseekV3ForCausalLM"], model_type: "deepseek_v3", vocab_size: 129280, hidden_size: 7168, intermediate_size: 18432,
  moe_intermediate_size: 2048, num_hidden_layers: 61, num_nextn_predict_layers: 1, num_attention_heads: 128, num_key_value_heads: 128,
  n_shared_experts: 1, n_routed_experts: 256, ep_size: 1, routed_scaling_factor: 2.5, kv_lora_rank: 512, q_lora_rank: 1536,
  qk_rope_head_dim: 64, v_head_dim: 128, qk_nope_head_dim: 128, topk_method: "noaux_tc", n_group: 8, topk_group: 4, num_experts_per_tok: 8,
  moe_layer_freq: 1, first_k_dense_replace: 3, norm_topk_prob: true, scoring_func: "sigmoid", max_position_embeddings: 163840,
  rms_norm_eps: 1e-6, rope_theta: 10000,
  rope_scaling: { beta_fast: 32, beta_slow: 1, factor: 40, mscale: 1.0, mscale_all_dim: 1.0, original_max_position_embeddings: 4096, type: "yarn" },
  tie_word_embeddings: false,
};

/** moonshotai/Kimi-K2-Instruct's: DeepSeek-V3's classes under model_type kimi_k2. */
const KIMI_K2 = {
  ...DEEPSEEK_V3, model_type: "kimi_k2", vocab_size: 163840, num_attention_heads: 64, num_key_value_heads: 64, n_routed_experts: 384,
  routed_scaling_factor: 2.827, n_group: 1, topk_group: 1, first_k_dense_replace: 1, num_nextn_predict_layers: 0, max_position_embeddings: 131072,
  rope_theta: 50000, rope_scaling: { beta_fast: 1.0, beta_slow: 1.0, factor: 32.0, mscale: 1.0, mscale_all_dim: 1.0, original_max_position_embeddings: 4096, type: "yarn" },
};

test("HF config: deepseek_v3 and kimi_k2 become deepseek2 with llama.cpp's routing and YaRN keys", () => {
  for (const [cfg, want] of [
    [DEEPSEEK_V3, { expert_count: 256, expert_group_count: 8, expert_group_used_count: 4, expert_weights_scale: 2.5, leading_dense_block_count: 3, "rope.scaling.factor": 40, "rope.scaling.yarn_beta_fast": 32 }],
    [KIMI_K2, { expert_count: 384, expert_group_count: 1, expert_group_used_count: 1, expert_weights_scale: 2.827, leading_dense_block_count: 1, "rope.scaling.factor": 32, "rope.scaling.yarn_beta_fast": 1 }],
  ] as const) {
    const parsed = parseHFConfig(cfg);
    assert.equal(parsed.arch, "deepseek2");
    const k = keysOf(hfConfigToGGUFMetadata(parsed, { mlaLayout: "split" }));
    const expect: Record<string, unknown> = {
      ...want, expert_gating_func: 2, expert_weights_norm: true, expert_shared_count: 1, expert_used_count: 8, "attention.q_lora_rank": 1536,
      "attention.kv_lora_rank": 512, "attention.head_count_kv": 1, "attention.key_length": 576, "attention.value_length": 512,
      "attention.key_length_mla": 192, "attention.value_length_mla": 128, "rope.dimension_count": 64, "rope.scaling.type": "yarn",
      "rope.scaling.original_context_length": 4096, "rope.scaling.yarn_beta_slow": 1, "rope.scaling.yarn_log_multiplier": 0.1,
    };
    for (const [key, v] of Object.entries(expect)) assert.equal(k.get(`deepseek2.${key}`), v, `${cfg.model_type} ${key}`);
  }
});

/** A seeded normal draw (Box-Muller over a 32-bit LCG). */
function gaussian(seed: number): () => number {
  let s = seed >>> 0;
  const u = () => ((s = (Math.imul(s, 1664525) + 1013904223) >>> 0) + 0.5) / 2 ** 32;
  return () => Math.sqrt(-2 * Math.log(u())) * Math.cos(2 * Math.PI * u());
}

/**
 * A random DeepSeek-V3-style checkpoint (config.json, model.safetensors, a byte-level BPE
 * tokenizer.json): 3 layers, the first dense; 8 experts in 4 groups (2 searched), top-2, a shared
 * expert, selection biases; q LoRA; YaRN x40 over 16 positions with mscale_all_dim 0.707 (as
 * DeepSeek-V2's), so that the ramp and the attention mscale both matter in a short prompt.
 */
function syntheticV3(path: string): typeof DEEPSEEK_V3 {
  const H = 64, V = 64, nH = 4, nope = 16, rope = 8, vDim = 16, qLora = 32, kvLora = 32, I = 128, mI = 64, E = 8;
  const cfg = {
    ...DEEPSEEK_V3, vocab_size: V, hidden_size: H, intermediate_size: I, moe_intermediate_size: mI, num_hidden_layers: 3, num_nextn_predict_layers: 0,
    num_attention_heads: nH, num_key_value_heads: nH, n_routed_experts: E, kv_lora_rank: kvLora, q_lora_rank: qLora, qk_rope_head_dim: rope,
    v_head_dim: vDim, qk_nope_head_dim: nope, n_group: 4, topk_group: 2, num_experts_per_tok: 2, first_k_dense_replace: 1, max_position_embeddings: 640,
    rope_scaling: { beta_fast: 32, beta_slow: 1, factor: 40, mscale: 0.707, mscale_all_dim: 0.707, original_max_position_embeddings: 16, type: "yarn" },
  };
  const g = gaussian(11);
  const tensors: Array<{ name: string; dtype: "F32"; shape: number[]; data: Uint8Array }> = [];
  const add = (name: string, shape: number[], std: number, center = 0) => {
    const n = shape.reduce((a, b) => a * b, 1);
    tensors.push({ name, dtype: "F32", shape, data: new Uint8Array(Float32Array.from({ length: n }, () => center + std * g()).buffer) });
  };
  add("model.embed_tokens.weight", [V, H], 1);
  for (let l = 0; l < 3; l++) {
    const p = `model.layers.${l}.`;
    add(`${p}input_layernorm.weight`, [H], 0.1, 1);
    add(`${p}self_attn.q_a_proj.weight`, [qLora, H], 1 / Math.sqrt(H));
    add(`${p}self_attn.q_a_layernorm.weight`, [qLora], 0.1, 1);
    add(`${p}self_attn.q_b_proj.weight`, [nH * (nope + rope), qLora], 1 / Math.sqrt(qLora));
    add(`${p}self_attn.kv_a_proj_with_mqa.weight`, [kvLora + rope, H], 1 / Math.sqrt(H));
    add(`${p}self_attn.kv_a_layernorm.weight`, [kvLora], 0.1, 1);
    add(`${p}self_attn.kv_b_proj.weight`, [nH * (nope + vDim), kvLora], 1 / Math.sqrt(kvLora));
    add(`${p}self_attn.o_proj.weight`, [H, nH * vDim], 1 / Math.sqrt(nH * vDim));
    add(`${p}post_attention_layernorm.weight`, [H], 0.1, 1);
    if (l === 0) {
      add(`${p}mlp.gate_proj.weight`, [I, H], 1 / Math.sqrt(H));
      add(`${p}mlp.up_proj.weight`, [I, H], 1 / Math.sqrt(H));
      add(`${p}mlp.down_proj.weight`, [H, I], 1 / Math.sqrt(I));
      continue;
    }
    add(`${p}mlp.gate.weight`, [E, H], 1.5 / Math.sqrt(H));
    add(`${p}mlp.gate.e_score_correction_bias`, [E], 0.1);
    for (let e = 0; e < E; e++) {
      add(`${p}mlp.experts.${e}.gate_proj.weight`, [mI, H], 1 / Math.sqrt(H));
      add(`${p}mlp.experts.${e}.up_proj.weight`, [mI, H], 1 / Math.sqrt(H));
      add(`${p}mlp.experts.${e}.down_proj.weight`, [H, mI], 1 / Math.sqrt(mI));
    }
    add(`${p}mlp.shared_experts.gate_proj.weight`, [mI, H], 1 / Math.sqrt(H));
    add(`${p}mlp.shared_experts.up_proj.weight`, [mI, H], 1 / Math.sqrt(H));
    add(`${p}mlp.shared_experts.down_proj.weight`, [H, mI], 1 / Math.sqrt(mI));
  }
  add("model.norm.weight", [H], 0.1, 1);
  add("lm_head.weight", [V, H], 4 / Math.sqrt(H));
  mkdirSync(path, { recursive: true });
  writeSafetensors(join(path, "model.safetensors"), tensors);
  writeFileSync(join(path, "config.json"), JSON.stringify(cfg));
  // pieces only (the tests pass token ids); what llama.cpp needs to load the file
  const pieces = ["Ċ", "Ġ", ...Array.from({ length: V - 2 }, (_, i) => String.fromCharCode(97 + (i % 26)).repeat(1 + Math.floor(i / 26)))];
  writeFileSync(join(path, "tokenizer.json"), JSON.stringify({
    version: "1.0", added_tokens: [], normalizer: null,
    pre_tokenizer: { type: "ByteLevel", add_prefix_space: false, trim_offsets: true, use_regex: true },
    post_processor: null, decoder: { type: "ByteLevel", add_prefix_space: true, trim_offsets: true, use_regex: true },
    model: { type: "BPE", dropout: null, unk_token: null, continuing_subword_prefix: null, end_of_word_suffix: null, fuse_unk: false, byte_fallback: false,
      vocab: Object.fromEntries(pieces.map((p, i) => [p, i])), merges: [] },
  }));
  return cfg;
}

test("HF: a DeepSeek-V3-style checkpoint runs the same from its directory and from its conversion, and as llama.cpp runs the conversion", async (t) => {
  const hfDir = join(dir, "hf-v3");
  syntheticV3(hfDir);
  const gguf = join(dir, "hf-v3.gguf");
  convertHFToGGUF(hfDir, gguf);
  const k = keysOf(readGGUF(gguf).metadata);
  assert.equal(k.get("deepseek2.expert_gating_func"), 2);
  assert.equal(k.get("deepseek2.rope.scaling.yarn_log_multiplier"), Math.fround(0.1 * 0.707));
  const backend = await nativeOrRef();
  const fromDir = Model.open(hfDir), fromFile = Model.open(gguf);
  try {
    assert.equal(fromFile.config.expertGroups, 4);
    assert.equal(fromFile.config.ropeYarn!.origContext, 16);
    const prompt = [5, 17, 33, 2, 60, 41, 12, 9, 28, 50];
    const a = moiraGreedy(fromDir, backend, prompt, 12), b = moiraGreedy(fromFile, backend, prompt, 12);
    assert.deepEqual(a.ids, b.ids);
    a.logits.forEach((l, i) => assert.deepEqual(l, b.logits[i]));
    const missing = await llamaMissing();
    if (missing) return t.skip(missing);
    const { theirs, lp } = await withLlamaModel(gguf, async (m) => ({ theirs: await m.greedy(prompt, 12), lp: await m.logProbs(prompt) }));
    const gap = maxLogProbGap(moiraForward(fromFile, backend, prompt).logits.map((l) => logSoftmax(l)), lp);
    t.diagnostic(`llama.cpp: greedy ${theirs.join(",")} (moira ${b.ids.join(",")}), prefill log-prob gap ${gap.toFixed(4)}`);
    assert.deepEqual(b.ids.slice(0, theirs.length), theirs);
    assert.ok(gap < 0.02, `prefill log-prob gap ${gap}`);
  } finally {
    fromDir.close();
    fromFile.close();
    backend.dispose();
  }
});
