/**
 * GPT-OSS (openai/gpt-oss-20b, -120b; llama.cpp's LLM_ARCH_OPENAI_MOE, GGUF "gpt-oss"): GQA
 * attention with q/k/v/output biases, NeoX rope with YaRN scaling, a learned sink logit per head
 * in every softmax, and a sliding window (128) on every other layer (the even ones: llama.cpp's
 * set_swa_pattern(2)); the pre-FFN norm is post_attention_norm. The router has a bias, chooses
 * the top-k logits and weighs them by their softmax (SOFTMAX_WEIGHT). Experts have biases on
 * gate, up and down and a clamped SwiGLU: min(g, 7) * sigmoid(1.702 * min(g, 7)) * (clamp(u, ±7) + 1).
 * Real checkpoints keep the experts in MXFP4.
 */
import type { Architecture, ExpectedTensor } from "../architecture.js";
import { commonConfig, ffnTensors, modelTensors } from "../architecture.js";
import { validateConfig, type ModelConfig } from "../config.js";
import { addInPlace, attentionBlock, mixtureOfExperts, selfAttention } from "../steps.js";
import { expertBiasNames } from "../experts.js";
import type { ExpertActivation } from "../../backend/backend.js";
import { ModelFormatError, UnsupportedError } from "../../errors.js";
import { GGUFValueType } from "../../formats/model-file.js";
import { u32 } from "../../formats/metadata-value.js";
import { attentionLayout, normLayout, proj } from "../../tools/make-model/layout.js";
import { TINY_SHAPE } from "../../tools/make-model/shape.js";

/** The block's pre-FFN norm (llama.cpp's attn_post_norm: HF post_attention_layernorm). */
const FFN_NORM = "post_attention_norm";

/** llama.cpp's LLM_FFN_SWIGLU_OAI_MOE (alpha and limit hard-coded there, as in transformers' GptOssExperts). */
export const SWIGLU_OAI = Object.freeze({ kind: "swiglu-oai", alpha: 1.702, limit: 7.0 } as const) satisfies ExpertActivation;

/** The sliding window of layer l: cfg.slidingWindow's size on its windowed layers, else 0 (full attention). */
function windowOf(cfg: ModelConfig, l: number): number {
  const w = cfg.slidingWindow;
  return w && l % w.period < w.period - 1 ? w.size : 0;
}

/**
 * A harmony-format chat template (written for make-model's files, which have no tools): the
 * system message GPT-OSS expects, the first system or developer message as the developer's
 * instructions, then user turns and the assistant's final-channel replies; the reply opens with
 * `<|start|>assistant` (the model writes its channel). Real checkpoints carry OpenAI's own
 * template (tools, reasoning), which @huggingface/jinja also renders.
 */
const HARMONY_TEMPLATE =
  "{{- '<|start|>system<|message|>You are ChatGPT, a large language model trained by OpenAI.\\n" +
  "Knowledge cutoff: 2024-06\\nCurrent date: ' + strftime_now('%Y-%m-%d') + '\\n\\nReasoning: ' + (reasoning_effort or 'medium') + " +
  "'\\n\\n# Valid channels: analysis, commentary, final. Channel must be included for every message.<|end|>' -}}" +
  "{%- set turns = messages -%}" +
  "{%- if messages and (messages[0].role == 'system' or messages[0].role == 'developer') -%}" +
  "{{- '<|start|>developer<|message|># Instructions\\n\\n' + messages[0].content + '\\n\\n<|end|>' -}}" +
  "{%- set turns = messages[1:] -%}" +
  "{%- endif -%}" +
  "{%- for m in turns -%}" +
  "{%- if m.role == 'user' -%}{{- '<|start|>user<|message|>' + m.content + '<|end|>' -}}" +
  "{%- elif m.role == 'assistant' -%}{{- '<|start|>assistant<|channel|>final<|message|>' + m.content + '<|end|>' -}}" +
  "{%- endif -%}" +
  "{%- endfor -%}" +
  "{%- if add_generation_prompt -%}{{- '<|start|>assistant' -}}{%- endif -%}";

/** The harmony format's control tokens (o200k_harmony's), which make-model's vocabulary adds for this template. */
const HARMONY_TOKENS = ["<|start|>", "<|end|>", "<|message|>", "<|channel|>", "<|constrain|>", "<|return|>", "<|call|>"];

export const gptOss: Architecture = {
  name: "gpt-oss",
  description: "GPT-OSS",
  config(md, tensors) {
    const { m, ...c } = commonConfig("gpt-oss", md, tensors);
    const pattern = md.get("gpt-oss.attention.sliding_window_pattern");
    if (pattern && pattern.type === GGUFValueType.ARRAY) {
      throw new UnsupportedError("gpt-oss.attention.sliding_window_pattern as a per-layer array is not supported (a period is)");
    }
    const size = m.num("attention.sliding_window");
    const period = m.num("attention.sliding_window_pattern", 2);
    if (!Number.isInteger(size) || size <= 0 || !Number.isInteger(period) || period <= 0) {
      throw new ModelFormatError(`gpt-oss: attention.sliding_window ${size} and sliding_window_pattern ${period} must be positive integers`);
    }
    return validateConfig({
      ...c, ropeNeox: true,
      expertFf: m.num("expert_feed_forward_length"),
      // llama.cpp's graph for this architecture: softmax over the chosen logits, whatever the file says
      expertGating: "softmax-weight", normTopK: false, routedScale: 1,
      slidingWindow: Object.freeze({ size, period }),
    });
  },
  tensors(c) {
    return modelTensors(c, (l) => blockTensors(c, l));
  },
  layer(ctx, l, x) {
    const { cfg, weights } = ctx;
    const opts = { window: windowOf(cfg, l), sinks: weights.vector(`blk.${l}.attn_sinks.weight`, cfg.nHead) };
    const g = attentionBlock(ctx, l, x, (c, layer, h) => selfAttention(c, layer, h, opts), FFN_NORM); // gate input
    addInPlace(ctx, x, mixtureOfExperts(ctx, l, g, { activation: SWIGLU_OAI }));
  },
  hf: {
    modelTypes: ["gpt_oss"],
    defaults: { ropeTheta: 150000, rmsEps: 1e-5 },
    permuteQK: false,
    parse(f) {
      const ffnSize = f.positiveInt("intermediate_size");
      return { ffnSize, nExpert: f.positiveInt("num_local_experts"), expertFfnSize: ffnSize };
    },
    // GptOssModel
    metadata: (cfg, f) => [["attention.sliding_window", u32(f.positiveInt("sliding_window"))], ["expert_feed_forward_length", u32(cfg.expertFfnSize)]],
    planTensor(t, at, cfg, planner) {
      if (at.layer < 0 || at.layer >= cfg.nLayer) return undefined;
      const b = (n: string) => `blk.${at.layer}.${n}`;
      const E = cfg.nExpert, F = cfg.expertFfnSize, H = cfg.hiddenSize;
      const copy = (name: string, shape: readonly number[], why: string): "planned" => {
        planner.requireShape(t, shape, why);
        planner.add(name, t.shape, [t], { kind: "copy" });
        return "planned";
      };
      switch (at.rest) {
        case "post_attention_layernorm.weight": return copy(b(`${FFN_NORM}.weight`), [H], "hidden_size");
        case "self_attn.sinks": return copy(b("attn_sinks.weight"), [cfg.nHead], "num_attention_heads");
        case "mlp.router.weight": return copy(b("ffn_gate_inp.weight"), [E, H], "num_local_experts, hidden_size");
        case "mlp.router.bias": return copy(b("ffn_gate_inp.bias"), [E], "num_local_experts");
        case "mlp.experts.down_proj_bias": return copy(expertBiasNames(at.layer).down, [E, H], "num_local_experts, hidden_size");
        case "mlp.experts.gate_up_proj_bias": {
          planner.requireShape(t, [E, 2 * F], "num_local_experts, 2 * intermediate_size");
          const eb = expertBiasNames(at.layer);
          planner.add(eb.gate, [E, F], [t], { kind: "interleaved-gate-up", half: 0, transposed: false });
          planner.add(eb.up, [E, F], [t], { kind: "interleaved-gate-up", half: 1, transposed: false });
          return "planned";
        }
        // MXFP4 experts (the checkpoints OpenAI ships): each blocks tensor plans with its scales
        case "mlp.experts.gate_up_proj_blocks":
        case "mlp.experts.down_proj_blocks": {
          const gateUp = at.rest.startsWith("mlp.experts.gate_up");
          const [rows, cols] = gateUp ? [2 * F, H] : [H, F];
          if (cols % 32 !== 0) throw new ModelFormatError(`tensor ${t.name}: MXFP4 rows of ${cols} are not whole blocks of 32`);
          planner.requireShape(t, [E, rows, cols / 32, 16], gateUp ? "num_local_experts, 2 * intermediate_size, hidden_size / 32, 16" : "num_local_experts, hidden_size, intermediate_size / 32, 16");
          const scales = { name: t.name.replace(/_blocks$/, "_scales"), dtype: t.dtype, shape: [E, rows, cols / 32] };
          if (gateUp) {
            planner.add(b("ffn_gate_exps.weight"), [E, F, H], [t, scales], { kind: "mxfp4", rowParity: 0 });
            planner.add(b("ffn_up_exps.weight"), [E, F, H], [t, scales], { kind: "mxfp4", rowParity: 1 });
          } else {
            planner.add(b("ffn_down_exps.weight"), [E, H, F], [t, scales], { kind: "mxfp4" });
          }
          return "planned";
        }
        case "mlp.experts.gate_up_proj_scales":
        case "mlp.experts.down_proj_scales":
          return "planned"; // read with its blocks
        // dequantized checkpoints: [E, hidden, 2*ff] with gate and up interleaved, down [E, ff, hidden]
        case "mlp.experts.gate_up_proj":
          planner.requireShape(t, [E, H, 2 * F], "num_local_experts, hidden_size, 2 * intermediate_size");
          planner.add(b("ffn_gate_exps.weight"), [E, F, H], [t], { kind: "interleaved-gate-up", half: 0, transposed: true });
          planner.add(b("ffn_up_exps.weight"), [E, F, H], [t], { kind: "interleaved-gate-up", half: 1, transposed: true });
          return "planned";
        case "mlp.experts.down_proj":
          planner.requireShape(t, [E, F, H], "num_local_experts, intermediate_size, hidden_size");
          planner.add(b("ffn_down_exps.weight"), [E, H, F], [t], { kind: "packed-down", transposed: true });
          return "planned";
      }
      return undefined;
    },
  },
  makeModel: {
    presets: {
      // layer 0 windowed (16 positions, so that prompt and continuation outgrow it), layer 1 full,
      // layer 2 windowed; YaRN over an original context of 64 so that the ramp between
      // extrapolated and interpolated dims falls inside the head (real models: 4096)
      "tiny-gpt-oss": {
        ...TINY_SHAPE, arch: "gpt-oss", layers: 3, topK: 4, ropeTheta: 150000,
        ropeYarn: { factor: 32, origContext: 64, betaFast: 32, betaSlow: 1 }, slidingWindow: 16,
      },
      "gpt-oss-20b": {
        arch: "gpt-oss", layers: 24, dModel: 2880, heads: 64, kvHeads: 8, headDim: 64, experts: 32, topK: 4, dFf: 2880,
        sharedDFf: 0, leadingDense: 0, denseDFf: 0, vocab: 201088, context: 131072, ropeTheta: 150000, normEps: 1e-5,
        tiedEmbeddings: false, ropeYarn: { factor: 32, origContext: 4096, betaFast: 32, betaSlow: 1 }, slidingWindow: 128,
      },
      "gpt-oss-120b": {
        arch: "gpt-oss", layers: 36, dModel: 2880, heads: 64, kvHeads: 8, headDim: 64, experts: 128, topK: 4, dFf: 2880,
        sharedDFf: 0, leadingDense: 0, denseDFf: 0, vocab: 201088, context: 131072, ropeTheta: 150000, normEps: 1e-5,
        tiedEmbeddings: false, ropeYarn: { factor: 32, origContext: 4096, betaFast: 32, betaSlow: 1 }, slidingWindow: 128,
      },
    },
    defaultPreset: "tiny-gpt-oss",
    chat: { template: HARMONY_TEMPLATE, controlTokens: HARMONY_TOKENS },
    // head_dim is its own (64 for 2880 / 64 heads)
    resolveShape: (shape, { base }) => ({ ...shape, headDim: base.headDim }),
    block(s, l, add) {
      const b = `blk.${l}.`;
      normLayout(s, `${b}attn_norm.weight`, add);
      attentionLayout(s, b, add, { biases: true });
      add(`${b}attn_output.bias`, [s.dModel], "f32", { kind: "noise", std: 0.1 });
      // sink logits about as large as the scores they compete with
      add(`${b}attn_sinks.weight`, [s.heads], "f32", { kind: "noise", std: 1 });
      normLayout(s, `${b}${FFN_NORM}.weight`, add);
      // the router, with a bias that moves choices
      add(`${b}ffn_gate_inp.weight`, [s.dModel, s.experts], "f32", { kind: "noise", std: 1.5 / Math.sqrt(s.dModel) }); // [n_expert, d_model]
      add(`${b}ffn_gate_inp.bias`, [s.experts], "f32", { kind: "noise", std: 0.5 });
      // (gate and up at the usual scale rarely reach the clamps at +-7: larger ones would, but
      // their heavy-tailed products make int8 activations too coarse for quantized parity)
      const eb = expertBiasNames(l);
      add(`${b}ffn_gate_exps.weight`, [s.dModel, s.dFf, s.experts], "matrix", proj(s.dModel)); // [n_expert, d_ff, d_model]
      add(eb.gate, [s.dFf, s.experts], "f32", { kind: "noise", std: 0.1 }); // [n_expert, d_ff]
      add(`${b}ffn_up_exps.weight`, [s.dModel, s.dFf, s.experts], "matrix", proj(s.dModel));
      add(eb.up, [s.dFf, s.experts], "f32", { kind: "noise", std: 0.1 });
      add(`${b}ffn_down_exps.weight`, [s.dFf, s.dModel, s.experts], "matrix", proj(s.dFf)); // [n_expert, d_model, d_ff]
      add(eb.down, [s.dModel, s.experts], "f32", { kind: "noise", std: 0.1 }); // [n_expert, d_model]
    },
    metadata: (s) => [
      ["feed_forward_length", u32(s.dFf)],
      ["expert_feed_forward_length", u32(s.dFf)],
      ["attention.head_count_kv", u32(s.kvHeads)],
      ["attention.key_length", u32(s.headDim)],
      ["attention.value_length", u32(s.headDim)],
      ["attention.sliding_window", u32(s.slidingWindow ?? 0)],
    ],
  },
};

/**
 * Block l's tensors (llama.cpp's llama_model_openai_moe::load_arch_tensors): every bias and the
 * sinks are required.
 */
function blockTensors(c: ModelConfig, l: number): ExpectedTensor[] {
  const b = (n: string) => `blk.${l}.${n}`;
  const q = c.nHead * c.headDimK, kv = c.nKvHead * c.headDimK;
  const eb = expertBiasNames(l);
  return [
    { name: b("attn_norm.weight"), dims: [c.dModel] }, { name: b(`${FFN_NORM}.weight`), dims: [c.dModel] },
    { name: b("attn_q.weight"), dims: [c.dModel, q] }, { name: b("attn_q.bias"), dims: [q] },
    { name: b("attn_k.weight"), dims: [c.dModel, kv] }, { name: b("attn_k.bias"), dims: [kv] },
    { name: b("attn_v.weight"), dims: [c.dModel, kv] }, { name: b("attn_v.bias"), dims: [kv] },
    { name: b("attn_output.weight"), dims: [q, c.dModel] }, { name: b("attn_output.bias"), dims: [c.dModel] },
    { name: b("attn_sinks.weight"), dims: [c.nHead] },
    ...ffnTensors(c, l),
    { name: b("ffn_gate_inp.bias"), dims: [c.nExpert] },
    { name: eb.gate, dims: [c.expertFf, c.nExpert] }, { name: eb.up, dims: [c.expertFf, c.nExpert] },
    { name: eb.down, dims: [c.dModel, c.nExpert] },
  ];
}
