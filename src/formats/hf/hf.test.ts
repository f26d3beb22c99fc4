import { test } from "node:test";
import assert from "node:assert/strict";
import { copyFileSync, existsSync, mkdtempSync, readFileSync, readdirSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { FileAccessError, MissingTensorError, ModelFormatError, UnsupportedError } from "../../errors.js";
import type { GGUFMetadataValue, ModelFile } from "../model-file.js";
import { GGMLType } from "../quant/types.js";
import { openSafetensors } from "../safetensors/reader.js";
import { writeSafetensors, type SafetensorsTensorInput } from "../safetensors/writer.js";
import { openModel } from "../open.js";
import { convertHFToGGUF, hfConfigToGGUFMetadata, mapTensorName, openHFDirectory, parseHFConfig, permuteQKRows, type HFModelConfig } from "./index.js";
import { shared, skipWithoutShared } from "../../../test/shared.js";

const FIXTURES = shared("fixtures", "hf-tiny-moe");
const fixtureNames = (): string[] => existsSync(FIXTURES)
  ? readdirSync(FIXTURES).filter((f) => f.endsWith("_config.json")).map((f) => f.replace(/_config\.json$/, "")).sort()
  : [];

function fixtureDir(name: string): string {
  const dir = mkdtempSync(join(tmpdir(), `moira-hf-${name}-`));
  copyFileSync(join(FIXTURES, `${name}.safetensors`), join(dir, "model.safetensors"));
  copyFileSync(join(FIXTURES, `${name}_config.json`), join(dir, "config.json"));
  return dir;
}

function md(m: ModelFile, key: string): GGUFMetadataValue["value"] | undefined {
  return m.metadata.get(key)?.value;
}

function dims(m: ModelFile, name: string): readonly number[] | undefined {
  return m.weights.tensors.get(name)?.dims;
}

const f32 = (a: ArrayLike<number>) => new Uint8Array(new Float32Array(a).buffer);
const bytesEqual = (a: Uint8Array, b: Uint8Array) => a.length === b.length && Buffer.compare(Buffer.from(a), Buffer.from(b)) === 0;

test("HF fixtures: every one opens with llama.cpp's metadata keys and tensor dims consistent with config.json", { skip: skipWithoutShared }, () => {
  const names = fixtureNames();
  assert.ok(names.length >= 8, `expected the hf-tiny-moe fixtures, found ${names.length}`);
  for (const name of names) {
    const cfg = JSON.parse(readFileSync(join(FIXTURES, `${name}_config.json`), "utf8"));
    const m = openHFDirectory(fixtureDir(name));
    const arch = String(md(m, "general.architecture"));
    const k = (s: string) => md(m, `${arch}.${s}`);
    const H = cfg.hidden_size, L = cfg.num_hidden_layers, nHead = cfg.num_attention_heads;
    const nKv = cfg.num_key_value_heads ?? nHead;
    assert.equal(m.format, "hf");
    assert.equal(k("block_count"), L, name);
    assert.equal(k("embedding_length"), H, name);
    assert.equal(k("attention.head_count"), nHead, name);
    assert.equal(k("attention.head_count_kv"), nKv, name);
    assert.equal(k("context_length"), cfg.max_position_embeddings ?? 4096, name);
    assert.equal(k("feed_forward_length"), cfg.intermediate_size, name);
    assert.equal(k("expert_used_count"), cfg.num_experts_per_tok, name);
    assert.equal(k("rope.freq_base"), cfg.rope_theta, name);
    assert.ok(Math.abs(Number(k("attention.layer_norm_rms_epsilon")) - cfg.rms_norm_eps) < 1e-12, name);
    assert.equal(md(m, "general.file_type"), 0, name); // all-F32 fixtures
    assert.deepEqual(dims(m, "token_embd.weight"), [H, cfg.vocab_size], name);
    assert.deepEqual(dims(m, "output.weight"), [H, cfg.vocab_size], name);
    assert.deepEqual(dims(m, "output_norm.weight"), [H], name);
    let E: number, F: number;
    if (cfg.model_type === "mixtral") {
      assert.equal(arch, "llama");
      E = cfg.num_local_experts; F = cfg.intermediate_size;
      const hd = cfg.head_dim ?? H / nHead;
      assert.equal(k("expert_count"), E);
      assert.equal(k("vocab_size"), cfg.vocab_size);
      assert.equal(k("rope.dimension_count"), hd);
      assert.equal(k("attention.key_length"), hd);
      for (let l = 0; l < L; l++) {
        assert.deepEqual(dims(m, `blk.${l}.attn_q.weight`), [H, nHead * hd]);
        assert.deepEqual(dims(m, `blk.${l}.attn_k.weight`), [H, nKv * hd]);
        assert.deepEqual(dims(m, `blk.${l}.attn_v.weight`), [H, nKv * hd]);
        assert.deepEqual(dims(m, `blk.${l}.attn_output.weight`), [nHead * hd, H]);
      }
    } else if (cfg.model_type === "qwen2_moe") {
      assert.equal(arch, "qwen2moe");
      E = cfg.num_experts; F = cfg.moe_intermediate_size;
      assert.equal(k("expert_count"), E);
      assert.equal(k("expert_feed_forward_length"), F);
      assert.equal(k("expert_shared_feed_forward_length"), cfg.shared_expert_intermediate_size);
      assert.equal(k("expert_weights_norm"), cfg.norm_topk_prob);
      const hd = H / nHead, S = cfg.shared_expert_intermediate_size;
      for (let l = 0; l < L; l++) {
        assert.deepEqual(dims(m, `blk.${l}.attn_q.bias`), [nHead * hd]);
        assert.deepEqual(dims(m, `blk.${l}.attn_k.bias`), [nKv * hd]);
        assert.deepEqual(dims(m, `blk.${l}.ffn_gate_shexp.weight`), [H, S]);
        assert.deepEqual(dims(m, `blk.${l}.ffn_up_shexp.weight`), [H, S]);
        assert.deepEqual(dims(m, `blk.${l}.ffn_down_shexp.weight`), [S, H]);
        assert.deepEqual(dims(m, `blk.${l}.ffn_gate_inp_shexp.weight`), [H, 1]);
      }
    } else {
      assert.equal(cfg.model_type, "deepseek_v2");
      assert.equal(arch, "deepseek2");
      E = cfg.n_routed_experts; F = cfg.moe_intermediate_size;
      const nope = cfg.qk_nope_head_dim, rope = cfg.qk_rope_head_dim, v = cfg.v_head_dim, lora = cfg.kv_lora_rank;
      assert.equal(k("expert_count"), E);
      assert.equal(k("expert_feed_forward_length"), F);
      assert.equal(k("expert_shared_count"), cfg.n_shared_experts);
      assert.equal(k("leading_dense_block_count"), cfg.first_k_dense_replace);
      assert.equal(k("expert_weights_scale"), cfg.routed_scaling_factor);
      // transformers' DeepseekV2 never renormalises the top-k weights, whatever norm_topk_prob says
      assert.equal(k("expert_weights_norm"), false);
      assert.equal(k("expert_gating_func"), 1);
      assert.equal(k("attention.kv_lora_rank"), lora);
      assert.equal(k("attention.q_lora_rank"), undefined);
      assert.equal(k("attention.key_length"), nope + rope);
      assert.equal(k("attention.value_length"), v);
      assert.equal(k("rope.dimension_count"), rope);
      const S = cfg.n_shared_experts * F;
      for (let l = 0; l < L; l++) {
        assert.deepEqual(dims(m, `blk.${l}.attn_q.weight`), [H, nHead * (nope + rope)]);
        assert.deepEqual(dims(m, `blk.${l}.attn_kv_a_mqa.weight`), [H, lora + rope]);
        assert.deepEqual(dims(m, `blk.${l}.attn_kv_a_norm.weight`), [lora]);
        assert.deepEqual(dims(m, `blk.${l}.attn_kv_b.weight`), [lora, nHead * (nope + v)]);
        assert.deepEqual(dims(m, `blk.${l}.attn_output.weight`), [nHead * v, H]);
        assert.deepEqual(dims(m, `blk.${l}.ffn_gate_shexp.weight`), [H, S]);
        assert.deepEqual(dims(m, `blk.${l}.ffn_down_shexp.weight`), [S, H]);
      }
    }
    for (let l = 0; l < L; l++) {
      assert.deepEqual(dims(m, `blk.${l}.attn_norm.weight`), [H], `${name} ${l}`);
      assert.deepEqual(dims(m, `blk.${l}.ffn_norm.weight`), [H]);
      assert.deepEqual(dims(m, `blk.${l}.ffn_gate_inp.weight`), [H, E]);
      assert.deepEqual(dims(m, `blk.${l}.ffn_gate_exps.weight`), [H, F, E], `${name} gate_exps`);
      assert.deepEqual(dims(m, `blk.${l}.ffn_up_exps.weight`), [H, F, E]);
      assert.deepEqual(dims(m, `blk.${l}.ffn_down_exps.weight`), [F, H, E]);
    }
    // every tensor loads with its advertised size and type
    for (const [tn, meta] of m.weights.tensors) {
      assert.equal(meta.type, GGMLType.F32, tn);
      assert.equal(meta.nbytes, meta.dims.reduce((a, b) => a * b, 1) * 4, tn);
      const t = m.weights.load(tn);
      assert.equal(t.data.byteLength, meta.nbytes, tn);
    }
    assert.throws(() => m.weights.load("blk.99.attn_q.weight"), MissingTensorError);
    m.weights.close();
  }
});

test("HF: packed mlp.experts.gate_up_proj (full_mixtral) and classic w1/w2/w3 (mixtral_classic) give byte-identical GGUF tensors", { skip: skipWithoutShared }, () => {
  const packed = openHFDirectory(fixtureDir("full_mixtral"));
  const classic = openHFDirectory(fixtureDir("mixtral_classic"));
  assert.deepEqual([...packed.weights.tensors.keys()].sort(), [...classic.weights.tensors.keys()].sort());
  for (const name of packed.weights.tensors.keys()) {
    assert.deepEqual(packed.weights.tensors.get(name), classic.weights.tensors.get(name), name);
    assert.ok(bytesEqual(packed.weights.load(name).data, classic.weights.load(name).data), `${name} differs`);
  }
  // and the stacked tensor is expert-major: expert 1's gate rows are w1 of expert 1
  const st = openSafetensors(join(FIXTURES, "mixtral_classic.safetensors"));
  const gate = classic.weights.load("blk.1.ffn_gate_exps.weight").data;
  const w1 = st.read("model.layers.1.block_sparse_moe.experts.1.w1.weight");
  assert.ok(bytesEqual(gate.subarray(w1.length, 2 * w1.length), w1));
  const down = classic.weights.load("blk.0.ffn_down_exps.weight").data;
  const w2 = st.read("model.layers.0.block_sparse_moe.experts.3.w2.weight");
  assert.ok(bytesEqual(down.subarray(3 * w2.length), w2));
  st.close();
  packed.weights.close();
  classic.weights.close();
});

test("HF: Q/K rows permuted as llama.cpp's LlamaModel.permute (hand example)", () => {
  // 2 heads of head_dim 4 (rows), 1 column: within a head rows [a0 a1 b0 b1] → [a0 b0 a1 b1]
  const q = Float32Array.from([0, 1, 2, 3, 10, 11, 12, 13]);
  assert.deepEqual([...permuteQKRows(new Uint32Array(q.buffer), 8, 1, 2)].map((u) => new Float32Array(new Uint32Array([u]).buffer)[0]),
    [0, 2, 1, 3, 10, 12, 11, 13]);
  // whole rows move: head_dim 4, 1 head, 2 columns
  const w = Uint16Array.from([1, 2, 3, 4, 5, 6, 7, 8]);
  assert.deepEqual([...permuteQKRows(w, 4, 2, 1)], [1, 2, 5, 6, 3, 4, 7, 8]);
});

/** A tiny Mixtral checkpoint written from JS, for cases the fixtures do not cover. */
function tinyMixtral(dir: string, opts: { dtype?: "F32" | "F16" | "BF16"; config?: Record<string, unknown>; drop?: string[] } = {}): SafetensorsTensorInput[] {
  const H = 8, nHead = 2, nKv = 1, hd = 4, F = 6, E = 2, V = 5;
  const config = { model_type: "mixtral", hidden_size: H, num_hidden_layers: 1, num_attention_heads: nHead, num_key_value_heads: nKv, intermediate_size: F, num_local_experts: E, num_experts_per_tok: 1, vocab_size: V, rms_norm_eps: 1e-5, rope_theta: 10000, ...opts.config };
  writeFileSync(join(dir, "config.json"), JSON.stringify(config));
  const dtype = opts.dtype ?? "F32";
  let seed = 1;
  const t = (name: string, shape: number[]): SafetensorsTensorInput => {
    const n = shape.reduce((a, b) => a * b, 1);
    const vals = Array.from({ length: n }, () => (seed++ % 97) / 8);
    const data = dtype === "F32" ? f32(vals) : new Uint8Array(new Uint16Array(vals.map((v) => (dtype === "BF16" ? new Uint32Array(new Float32Array([v]).buffer)[0] >>> 16 : toHalf(v)))).buffer);
    return { name, dtype, shape, data };
  };
  const p = "model.layers.0.";
  const all = [
    t("model.embed_tokens.weight", [V, H]), t("model.norm.weight", [H]), t("lm_head.weight", [V, H]),
    t(p + "input_layernorm.weight", [H]), t(p + "post_attention_layernorm.weight", [H]),
    t(p + "self_attn.q_proj.weight", [nHead * hd, H]), t(p + "self_attn.k_proj.weight", [nKv * hd, H]),
    t(p + "self_attn.v_proj.weight", [nKv * hd, H]), t(p + "self_attn.o_proj.weight", [H, nHead * hd]),
    t(p + "block_sparse_moe.gate.weight", [E, H]),
    ...Array.from({ length: E }, (_, e) => [
      t(`${p}block_sparse_moe.experts.${e}.w1.weight`, [F, H]), t(`${p}block_sparse_moe.experts.${e}.w2.weight`, [H, F]),
      t(`${p}block_sparse_moe.experts.${e}.w3.weight`, [F, H]),
    ]).flat(),
  ].filter((x) => !opts.drop?.includes(x.name));
  return all;
}

function toHalf(v: number): number {
  // exact for the small multiples of 1/8 used here
  if (v === 0) return 0;
  const e = Math.floor(Math.log2(v));
  return ((e + 15) << 10) | Math.round((v / 2 ** e - 1) * 1024);
}

test("HF: Q/K permutation applied to Mixtral q_proj / k_proj (k with num_key_value_heads), not to v", () => {
  const dir = mkdtempSync(join(tmpdir(), "moira-hf-perm-"));
  const tensors = tinyMixtral(dir);
  writeSafetensors(join(dir, "model.safetensors"), tensors);
  const m = openHFDirectory(dir);
  const src = (n: string) => new Float32Array(tensors.find((t) => t.name === n)!.data.slice().buffer);
  const H = 8;
  const rows = (a: Float32Array, r: number) => [...a.subarray(r * H, (r + 1) * H)];
  const q = new Float32Array(m.weights.load("blk.0.attn_q.weight").data.slice().buffer);
  const qs = src("model.layers.0.self_attn.q_proj.weight");
  // head_dim 4: new row order within each head is [0, 2, 1, 3]
  [0, 2, 1, 3, 4, 6, 5, 7].forEach((from, to) => assert.deepEqual(rows(q, to), rows(qs, from), `q row ${to}`));
  const k = new Float32Array(m.weights.load("blk.0.attn_k.weight").data.slice().buffer);
  const ks = src("model.layers.0.self_attn.k_proj.weight");
  [0, 2, 1, 3].forEach((from, to) => assert.deepEqual(rows(k, to), rows(ks, from), `k row ${to}`));
  assert.deepEqual([...new Float32Array(m.weights.load("blk.0.attn_v.weight").data.slice().buffer)], [...src("model.layers.0.self_attn.v_proj.weight")]);
  m.weights.close();
});

test("HF: no permutation for NeoX-rope architectures (qwen2moe)", { skip: skipWithoutShared }, () => {
  const m = openHFDirectory(fixtureDir("qwen_moe_tiny"));
  const st = openSafetensors(join(FIXTURES, "qwen_moe_tiny.safetensors"));
  assert.ok(bytesEqual(m.weights.load("blk.1.attn_q.weight").data, st.read("model.layers.1.self_attn.q_proj.weight")));
  assert.ok(bytesEqual(m.weights.load("blk.1.attn_k.bias").data, st.read("model.layers.1.self_attn.k_proj.bias")));
  st.close();
  m.weights.close();
});

test("HF: F16/BF16 matrices keep their type; norms, biases and routers become F32; general.file_type follows", () => {
  for (const dtype of ["F16", "BF16"] as const) {
    const dir = mkdtempSync(join(tmpdir(), "moira-hf-half-"));
    const tensors = tinyMixtral(dir, { dtype });
    writeSafetensors(join(dir, "model.safetensors"), tensors);
    const m = openHFDirectory(dir);
    const half = dtype === "F16" ? GGMLType.F16 : GGMLType.BF16;
    assert.equal(md(m, "general.file_type"), dtype === "F16" ? 1 : 32);
    assert.equal(m.weights.tensors.get("blk.0.ffn_up_exps.weight")!.type, half);
    assert.equal(m.weights.tensors.get("token_embd.weight")!.type, half);
    assert.equal(m.weights.tensors.get("blk.0.attn_q.weight")!.type, half);
    for (const n of ["blk.0.attn_norm.weight", "output_norm.weight", "blk.0.ffn_gate_inp.weight"]) {
      const meta = m.weights.tensors.get(n)!;
      assert.equal(meta.type, GGMLType.F32, n);
      const t = m.weights.load(n);
      assert.equal(t.data.byteLength, meta.nbytes);
    }
    // widening is exact: the norm's values are the multiples of 1/8 written above
    const norm = new Float32Array(m.weights.load("output_norm.weight").data.slice().buffer);
    const srcNorm = tensors.find((t) => t.name === "model.norm.weight")!;
    const expected = [...new Uint16Array(srcNorm.data.slice().buffer)].map((h) => dtype === "BF16" ? new Float32Array(new Uint32Array([h << 16]).buffer)[0] : halfToFloatRef(h));
    assert.deepEqual([...norm], expected);
    m.weights.close();
  }
});

function halfToFloatRef(h: number): number {
  const e = (h >> 10) & 31, f = h & 1023;
  return e === 0 ? f * 2 ** -24 : (1 + f / 1024) * 2 ** (e - 15);
}

test("HF: sharded checkpoint (model.safetensors.index.json, two shards) opens like the single file", { skip: skipWithoutShared }, () => {
  const single = openHFDirectory(fixtureDir("qwen_moe_tiny"));
  const dir = mkdtempSync(join(tmpdir(), "moira-hf-sharded-"));
  copyFileSync(join(FIXTURES, "qwen_moe_tiny_config.json"), join(dir, "config.json"));
  const st = openSafetensors(join(FIXTURES, "qwen_moe_tiny.safetensors"));
  const all = [...st.tensors.values()].map((t) => ({ name: t.name, dtype: t.dtype, shape: t.shape, data: st.read(t.name) }));
  st.close();
  const half = Math.floor(all.length / 2);
  const shards = ["model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"];
  writeSafetensors(join(dir, shards[0]), all.slice(0, half));
  writeSafetensors(join(dir, shards[1]), all.slice(half));
  const weightMap = Object.fromEntries(all.map((t, i) => [t.name, shards[i < half ? 0 : 1]]));
  writeFileSync(join(dir, "model.safetensors.index.json"), JSON.stringify({ metadata: { total_size: 0 }, weight_map: weightMap }));
  writeFileSync(join(dir, "tokenizer.json"), "{}");
  const sharded = openModel(dir);
  assert.equal(sharded.tokenizerJsonPath, join(dir, "tokenizer.json"));
  assert.equal(single.tokenizerJsonPath, undefined);
  assert.deepEqual([...sharded.weights.tensors.keys()], [...single.weights.tensors.keys()]);
  for (const n of single.weights.tensors.keys()) assert.ok(bytesEqual(sharded.weights.load(n).data, single.weights.load(n).data), n);
  sharded.weights.close();
  single.weights.close();
});

test("HF: DeepSeek-V2 split MLA layout (current llama.cpp): attn_k_b / attn_v_b from kv_b_proj", { skip: skipWithoutShared }, () => {
  const m = openHFDirectory(fixtureDir("deepseek_full"), { mlaLayout: "split" });
  const cfg = JSON.parse(readFileSync(join(FIXTURES, "deepseek_full_config.json"), "utf8"));
  const nHead = cfg.num_attention_heads, nope = cfg.qk_nope_head_dim, v = cfg.v_head_dim, lora = cfg.kv_lora_rank, rope = cfg.qk_rope_head_dim;
  assert.equal(md(m, "deepseek2.attention.head_count_kv"), 1);
  assert.equal(md(m, "deepseek2.attention.key_length"), lora + rope);
  assert.equal(md(m, "deepseek2.attention.value_length"), lora);
  assert.equal(md(m, "deepseek2.attention.key_length_mla"), nope + rope);
  assert.equal(md(m, "deepseek2.attention.value_length_mla"), v);
  assert.equal(m.weights.tensors.has("blk.0.attn_kv_b.weight"), false);
  assert.deepEqual(dims(m, "blk.0.attn_k_b.weight"), [nope, lora, nHead]);
  assert.deepEqual(dims(m, "blk.0.attn_v_b.weight"), [lora, v, nHead]);
  const st = openSafetensors(join(FIXTURES, "deepseek_full.safetensors"));
  const kvb = new Float32Array(st.read("model.layers.0.self_attn.kv_b_proj.weight").buffer); // [nHead*(nope+v), lora]
  st.close();
  const kb = new Float32Array(m.weights.load("blk.0.attn_k_b.weight").data.slice().buffer); // torch [nHead, lora, nope]
  const vb = new Float32Array(m.weights.load("blk.0.attn_v_b.weight").data.slice().buffer); // torch [nHead, v, lora]
  for (let h = 0; h < nHead; h++) {
    for (let c = 0; c < lora; c++) {
      for (let r = 0; r < nope; r++) assert.equal(kb[(h * lora + c) * nope + r], kvb[(h * (nope + v) + r) * lora + c]);
      for (let r = 0; r < v; r++) assert.equal(vb[(h * v + r) * lora + c], kvb[(h * (nope + v) + nope + r) * lora + c]);
    }
  }
  m.weights.close();
});

test("HF → GGUF file: convertHFToGGUF writes what openGGUF reads back identically", { skip: skipWithoutShared }, () => {
  const dir = fixtureDir("gqa_mixtral");
  const out = join(mkdtempSync(join(tmpdir(), "moira-hf-gguf-")), "m.gguf");
  convertHFToGGUF(dir, out);
  const hf = openHFDirectory(dir);
  const gguf = openModel(out);
  assert.equal(gguf.format, "gguf");
  for (const [k, v] of hf.metadata) assert.deepEqual(gguf.metadata.get(k)?.value, v.type === 6 ? Math.fround(v.value as number) : v.value, k);
  for (const [n, t] of hf.weights.tensors) {
    assert.deepEqual(gguf.weights.tensors.get(n)?.dims, t.dims, n);
    assert.ok(bytesEqual(gguf.weights.load(n).data, hf.weights.load(n).data), n);
  }
  hf.weights.close();
  gguf.weights.close();
});

test("HF: tied embeddings drop output.weight", () => {
  const dir = mkdtempSync(join(tmpdir(), "moira-hf-tied-"));
  writeSafetensors(join(dir, "model.safetensors"), tinyMixtral(dir, { config: { tie_word_embeddings: true } }));
  const m = openHFDirectory(dir);
  assert.equal(m.weights.tensors.has("output.weight"), false);
  assert.equal(m.weights.tensors.has("token_embd.weight"), true);
  m.weights.close();
});

test("HF: bad input gives typed errors naming the path, field or tensor", () => {
  const base = () => mkdtempSync(join(tmpdir(), "moira-hf-bad-"));
  // no config.json
  let dir = base();
  assert.throws(() => openHFDirectory(dir), (e: unknown) => e instanceof FileAccessError && e.message.includes(join(dir, "config.json")));
  assert.throws(() => openHFDirectory(join(dir, "absent")), FileAccessError);
  assert.throws(() => openModel(join(dir, "absent")), FileAccessError);
  // config but no weights
  tinyMixtral(dir);
  assert.throws(() => openHFDirectory(dir), (e: unknown) => e instanceof ModelFormatError && e.message.includes(dir) && /safetensors/.test(e.message));
  // unknown model_type
  dir = base();
  writeSafetensors(join(dir, "model.safetensors"), tinyMixtral(dir, { config: { model_type: "llama4" } }));
  assert.throws(() => openHFDirectory(dir), (e: unknown) => e instanceof UnsupportedError && /HF model_type llama4 is not supported; supported: mixtral, /.test(e.message));
  // missing required field
  dir = base();
  writeSafetensors(join(dir, "model.safetensors"), tinyMixtral(dir, { config: { num_local_experts: undefined } }));
  assert.throws(() => openHFDirectory(dir), (e: unknown) => e instanceof ModelFormatError && /field "num_local_experts" is missing/.test(e.message));
  assert.throws(() => parseHFConfig({ model_type: "mixtral", hidden_size: "8" }), /field "hidden_size" must be a non-negative integer/);
  assert.throws(() => parseHFConfig([]), ModelFormatError);
  // a shape contradicting config.json
  dir = base();
  writeSafetensors(join(dir, "model.safetensors"), tinyMixtral(dir, { config: { hidden_size: 16 } }));
  assert.throws(() => openHFDirectory(dir), (e: unknown) => e instanceof ModelFormatError && /tensor \S+: expected torch shape/.test(e.message));
  // an incomplete expert set
  dir = base();
  writeSafetensors(join(dir, "model.safetensors"), tinyMixtral(dir, { drop: ["model.layers.0.block_sparse_moe.experts.1.w3.weight"] }));
  assert.throws(() => openHFDirectory(dir), (e: unknown) => e instanceof ModelFormatError && /expert 1 has no up projection/.test(e.message));
  // an unmappable tensor
  dir = base();
  writeSafetensors(join(dir, "model.safetensors"), [...tinyMixtral(dir), { name: "model.layers.0.mystery.weight", dtype: "F32", shape: [1], data: f32([0]) }]);
  assert.throws(() => openHFDirectory(dir), (e: unknown) => e instanceof ModelFormatError && /model\.layers\.0\.mystery\.weight/.test(e.message));
  // truncated safetensors
  dir = base();
  writeSafetensors(join(dir, "model.safetensors"), tinyMixtral(dir));
  const bytes = readFileSync(join(dir, "model.safetensors"));
  writeFileSync(join(dir, "model.safetensors"), bytes.subarray(0, bytes.length - 10));
  assert.throws(() => openHFDirectory(dir), (e: unknown) => e instanceof ModelFormatError && /tensor model\.layers\.0\.block_sparse_moe\.experts\.1\.w3\.weight/.test(e.message));
  // unsupported dtype
  dir = base();
  tinyMixtral(dir);
  const header = new TextEncoder().encode(JSON.stringify({ "model.embed_tokens.weight": { dtype: "I8", shape: [4], data_offsets: [0, 4] } }));
  const file = new Uint8Array(8 + header.length + 4);
  new DataView(file.buffer).setBigUint64(0, BigInt(header.length), true);
  file.set(header, 8);
  writeFileSync(join(dir, "model.safetensors"), file);
  assert.throws(() => openHFDirectory(dir), (e: unknown) => e instanceof UnsupportedError && /tensor model\.embed_tokens\.weight has dtype I8/.test(e.message));
});

test("HF: name mapping table", () => {
  const cases: [string, string | null][] = [
    ["model.embed_tokens.weight", "token_embd.weight"],
    ["lm_head.weight", "output.weight"],
    ["model.norm.weight", "output_norm.weight"],
    ["model.layers.3.input_layernorm.weight", "blk.3.attn_norm.weight"],
    ["model.layers.3.post_attention_layernorm.weight", "blk.3.ffn_norm.weight"],
    ["model.layers.0.self_attn.q_proj.bias", "blk.0.attn_q.bias"],
    ["model.layers.0.self_attn.o_proj.weight", "blk.0.attn_output.weight"],
    ["model.layers.0.self_attn.q_norm.weight", "blk.0.attn_q_norm.weight"],
    ["model.layers.0.block_sparse_moe.gate.weight", "blk.0.ffn_gate_inp.weight"],
    ["model.layers.0.mlp.gate.weight", "blk.0.ffn_gate_inp.weight"],
    ["model.layers.0.mlp.shared_expert.up_proj.weight", "blk.0.ffn_up_shexp.weight"],
    ["model.layers.0.mlp.shared_expert_gate.weight", "blk.0.ffn_gate_inp_shexp.weight"],
    ["model.layers.0.mlp.shared_experts.down_proj.weight", "blk.0.ffn_down_shexp.weight"],
    ["model.layers.0.mlp.gate_proj.weight", "blk.0.ffn_gate.weight"],
    ["model.layers.0.self_attn.q_a_proj.weight", "blk.0.attn_q_a.weight"],
    ["model.layers.0.self_attn.q_a_layernorm.weight", "blk.0.attn_q_a_norm.weight"],
    ["model.layers.0.self_attn.q_b_proj.weight", "blk.0.attn_q_b.weight"],
    ["model.layers.0.self_attn.kv_a_proj_with_mqa.weight", "blk.0.attn_kv_a_mqa.weight"],
    ["model.layers.0.self_attn.kv_a_layernorm.weight", "blk.0.attn_kv_a_norm.weight"],
    ["model.layers.0.mlp.experts.0.gate_proj.weight", null],
    ["model.layers.0.whatever.weight", null],
  ];
  for (const [hf, gguf] of cases) assert.equal(mapTensorName(hf), gguf, hf);
});

test("HF config: qwen3_moe, olmoe and deepseek_v2 with q_lora keys", () => {
  const base = { hidden_size: 64, num_hidden_layers: 2, num_attention_heads: 4, vocab_size: 10, num_experts_per_tok: 2 };
  const q3 = parseHFConfig({ ...base, model_type: "qwen3_moe", intermediate_size: 96, moe_intermediate_size: 32, num_experts: 8, head_dim: 32, norm_topk_prob: true });
  assert.equal(q3.arch, "qwen3moe");
  assert.equal(q3.headDim, 32);
  assert.equal(q3.permuteQK, false);
  const ol = parseHFConfig({ ...base, model_type: "olmoe", intermediate_size: 32, num_experts: 8 });
  assert.equal(ol.arch, "olmoe");
  assert.equal(ol.expertFfnSize, 32);
  const ds = parseHFConfig({ ...base, model_type: "deepseek_v2", intermediate_size: 96, moe_intermediate_size: 16, n_routed_experts: 8, n_shared_experts: 2, first_k_dense_replace: 1, q_lora_rank: 24, kv_lora_rank: 16, qk_nope_head_dim: 8, qk_rope_head_dim: 4, v_head_dim: 8, scoring_func: "sigmoid" });
  assert.equal(ds.mla?.qLoraRank, 24);
  assert.equal(ds.sharedFfnSize, 32);
  assert.equal(ds.firstDenseLayers, 1);
  const m = (c: HFModelConfig) => new Map([...hfConfigToGGUFMetadata(c)].map(([k, v]) => [k, v.value]));
  const q3m = m(q3);
  assert.equal(q3m.get("general.architecture"), "qwen3moe");
  assert.equal(q3m.get("qwen3moe.attention.key_length"), 32);
  assert.equal(q3m.get("qwen3moe.attention.value_length"), 32);
  assert.equal(q3m.get("qwen3moe.expert_feed_forward_length"), 32);
  assert.equal(q3m.get("qwen3moe.expert_count"), 8);
  assert.equal(q3m.get("qwen3moe.expert_weights_norm"), true);
  const olm = m(ol);
  assert.equal(olm.get("olmoe.expert_weights_norm"), false);
  assert.equal(olm.get("olmoe.feed_forward_length"), 32);
  assert.equal(olm.get("olmoe.attention.layer_norm_rms_epsilon"), 1e-5);
  const dsm = m(ds);
  assert.equal(dsm.get("deepseek2.attention.q_lora_rank"), 24);
  assert.equal(dsm.get("deepseek2.leading_dense_block_count"), 1);
  assert.equal(dsm.get("deepseek2.expert_gating_func"), 2);
  assert.equal(dsm.get("deepseek2.expert_shared_count"), 2);
  assert.equal(dsm.get("deepseek2.feed_forward_length"), 96);
  assert.throws(() => parseHFConfig({ ...base, model_type: "deepseek_v2", intermediate_size: 96, moe_intermediate_size: 16, n_routed_experts: 8, qk_nope_head_dim: 8, qk_rope_head_dim: 4, v_head_dim: 8 }), /field "kv_lora_rank" is missing/);
});
