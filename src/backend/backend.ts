/**
 * The Backend interface: the ops a model recipe needs, over activation tensors the backend owns
 * (f32, row-major: host Float32Arrays for ref and native, device buffers for webgpu) and weights
 * in GGUF block layouts. `ref` (plain TypeScript) is the oracle; `native` (C++ addon) and `webgpu`
 * (WGSL on a WebGPU device) must agree with it op by op (test/conformance.test.ts).
 *
 * Memory follows ggml's buffers-before-kernels: a backend makes its tensors (alloc, upload), its
 * ops read and write them where they are, and only `download` brings values to the host. A forward
 * keeps its activations, the KV cache (allocKv) and the weights in the backend's memory throughout.
 *
 * Conventions: a "row" is `dim` consecutive floats; a batch of `nTokens` rows is stored back to back.
 */
import type { GGMLType } from "../formats/quant/types.js";
import type { FileMapper } from "../formats/model-file.js";
import type { RoutingConfig } from "../model/routing.js";

/**
 * A 2-D weight in GGUF layout: `rows` rows of `cols` elements (cols = GGUF ne0), each row a run of
 * quant blocks of `type`; `data` holds rows * rowBytes(type, cols) bytes. An expert of a stacked
 * `[n_expert, rows, cols]` tensor is a WeightMatrix whose data is that expert's slice.
 */
export interface WeightMatrix {
  readonly type: GGMLType;
  readonly rows: number;
  readonly cols: number;
  readonly data: Uint8Array;
}

export interface RopeParams {
  nTokens: number;
  nHead: number;
  /** floats between the starts of consecutive heads (>= ropeOffset + ropeDim) */
  headStride: number;
  /** the rotated dims of each head are [ropeOffset, ropeOffset + ropeDim) */
  ropeOffset: number;
  ropeDim: number;
  /** position of token 0; token t sits at pos0 + t */
  pos0: number;
  theta: number;
  /** NeoX style rotates (i, i + ropeDim/2); normal (GPT-J / llama.cpp "norm") rotates (2i, 2i+1) */
  neox: boolean;
  /** linear position scaling: the angle uses pos * freqScale (1 = none) */
  freqScale: number;
  /** YaRN scaling (absent: none); see RopeYarn */
  yarn?: RopeYarn;
}

/**
 * YaRN rope scaling as llama.cpp's ggml_rope_ext computes it (rope_yarn, ext_factor 1): dim pair i
 * turns by theta_interp (1 - r) + theta_extrap r, theta_extrap = pos theta^(-2i/ropeDim) and
 * theta_interp = freqScale theta_extrap, where the ramp r = 1 - clamp((i - low) / max(0.001, high - low), 0, 1)
 * keeps the fast pairs (i <= low) unscaled and fully interpolates the slow ones (i >= high);
 * cos and sin are multiplied by mscale.
 */
export interface RopeYarn {
  /** llama.cpp's corr_dims: the ramp's ends, in dim pairs */
  low: number;
  high: number;
  /** the magnitude cos and sin are multiplied by */
  mscale: number;
}

/**
 * A tensor of f32 values in a device's memory, opaque outside the backend that made it (alloc,
 * upload, view); `length` elements.
 */
export interface DeviceTensor {
  readonly length: number;
}

/**
 * An activation tensor: a Float32Array for the host backends (ref, native: their ops take and give
 * Float32Arrays), a DeviceTensor of the backend that made it otherwise. Every op takes only tensors
 * of its own backend.
 */
export type Tensor = Float32Array | DeviceTensor;

/** How long a backend's tensors live: until collected (host arrays), or until the end of the forward they were made in (endForward). */
export type TensorLifetime = "collected" | "forward";

/**
 * The routed experts of a MoE layer, all in memory as their stacked tensors (llama.cpp's
 * ffn_*_exps): gate/up [nExpert * ff, d], down [nExpert * d, ff], expert e's rows at e * ff (e * d).
 */
export interface StackedExperts {
  readonly nExpert: number;
  readonly gate: WeightMatrix;
  readonly up: WeightMatrix;
  readonly down: WeightMatrix;
  /** per-expert biases (GPT-OSS): gate/up [nExpert * ff], down [nExpert * d] */
  readonly biases?: { readonly gate: Float32Array; readonly up: Float32Array; readonly down: Float32Array };
}

/** Backend.addSlots: the sum starts from out's values ("accumulate") or from 0 ("overwrite"). */
export type SlotSum = "overwrite" | "accumulate";

/** A layer's routing as Backend.moeRouted chose it, still in the backend's memory until read. */
export interface PendingRouting {
  /** Downloads the choice: experts and weights [nTokens, k], best first (waits for the work before it). */
  read(): { readonly experts: Int32Array; readonly weights: Float32Array };
}

/** A KV cache row store in host memory: f32, or IEEE f16 bit patterns (see Backend.f32ToF16). */
export type KvArray = Float32Array | Uint16Array;

/**
 * A KV cache row store in a backend's own memory (a GPU buffer), opaque outside that backend:
 * written by Backend.storeKv, read by Backend.attention.
 */
export interface DeviceKv {
  readonly type: "f32" | "f16";
  /** elements (rows x row length) */
  readonly length: number;
}

/** A KV cache array: host memory (ref, native) or the backend's own (webgpu). */
export type KvTensor = KvArray | DeviceKv;

/** Whether a KV cache array is in host memory (a typed array). */
export function isHostKv(a: KvTensor): a is KvArray {
  return a instanceof Float32Array || a instanceof Uint16Array;
}

/** A KV array allocated by a backend: page-granular host memory (native) or device memory (webgpu). */
export interface KvStorage {
  readonly array: KvTensor;
  /**
   * Gives back the whole pages inside elements [from, to) (they read as 0 afterwards); returns
   * the bytes given back. Only for elements the cache will write before it reads them again.
   */
  discard(from: number, to: number): number;
  /** Frees the memory now; `array` must not be used afterwards. */
  dispose(): void;
}

/** Where a set of rows sits in an array: the first row's offset and the distance between rows, in elements. */
export interface RowLayout {
  readonly offset: number;
  readonly stride: number;
}

export interface AttentionParams {
  /** new query tokens; query t sits at position nPast + t and sees cache rows [0, nPast + t] */
  nTokens: number;
  nPast: number;
  nHead: number;
  nKvHead: number;
  headDimK: number;
  headDimV: number;
  /** softmax scale, usually 1/sqrt(headDimK) */
  scale: number;
  /**
   * Sliding window (llama.cpp's LLAMA_SWA_TYPE_STANDARD): the query at position p sees only the
   * cache rows j with p - j < window. Absent or 0: every row up to p.
   */
  window?: number;
  /**
   * Attention sinks [nHead] (GPT-OSS): one more logit per head in the softmax denominator, unscaled,
   * that weights no value (the head may attend to nothing).
   */
  sinks?: Float32Array;
}

/** One expert's biases, added to each projection's output (GPT-OSS): gate/up [ff], down [d]. */
export interface SwigluBiases {
  readonly gate: Float32Array;
  readonly up: Float32Array;
  readonly down: Float32Array;
}

/** One expert's SwiGLU weights: gate/up [ff, d], down [d, ff] (types may differ per matrix). */
export interface SwigluWeights {
  readonly gate: WeightMatrix;
  readonly up: WeightMatrix;
  readonly down: WeightMatrix;
  readonly biases?: SwigluBiases;
}

/**
 * How an expert's gate and up outputs g, u combine into its hidden activation:
 * - "swiglu": silu(g) * u;
 * - "swiglu-oai" (GPT-OSS, llama.cpp's ggml_swiglu_oai): with g' = min(g, limit) and
 *   u' = clamp(u, -limit, limit), g' * sigmoid(alpha * g') * (u' + 1).
 */
export type ExpertActivation =
  | { readonly kind: "swiglu" }
  | { readonly kind: "swiglu-oai"; readonly alpha: number; readonly limit: number };

/** The plain SwiGLU activation (every architecture but GPT-OSS). */
export const SWIGLU: ExpertActivation = { kind: "swiglu" };

/**
 * Tokens gathered per expert, in "slots": expert i owns slots offsets[i] .. offsets[i+1]; slot s
 * carries token tokens[s] with routing weight weights[s].
 */
export interface ExpertBatch {
  readonly experts: readonly SwigluWeights[];
  /** [experts.length + 1] */
  readonly offsets: Int32Array;
  /** [nSlot] */
  readonly tokens: Int32Array;
  /** [nSlot] */
  readonly weights: Float32Array;
  /**
   * Add into `out` instead of overwriting it. Each slot's term is added in slot order with the
   * same rounding either way, so a layer's experts computed in groups (in expert order) give the
   * same bits as one call (how an ExpertStore with few working slots runs a prompt).
   */
  readonly accumulate?: boolean;
  /**
   * [nSlot, d]: when given, each slot's own expert output (unweighted) is written here, in slot
   * order, and `out` is left alone. A layer whose experts become available at different times
   * (some still being read from disk) computes them as they come and sums the slots afterwards
   * with `addSlots`, which rounds exactly as `out` would have.
   */
  readonly slotOut?: Tensor;
  /** How gate and up combine (default SWIGLU), after each expert's biases (SwigluWeights.biases) are added. */
  readonly activation?: ExpertActivation;
}

export interface Backend {
  readonly name: string;
  /** Optional: weight types (of BACKEND_TYPES) this backend computes, here, besides COMPUTE_TYPES; none where absent. */
  readonly extraTypes?: readonly GGMLType[];
  /**
   * How the ops read weights: "in-place" (from their bytes where they are, at every op: ref, native)
   * or "cached" (copied once into the backend's memory, recognised afterwards by where the bytes
   * are: webgpu). Memory that is reused for other weights (the offloading ExpertStore's slots)
   * needs "in-place".
   */
  readonly weightReads: "in-place" | "cached";
  /** See TensorLifetime. Host backends: "collected" (a tensor may be kept from one forward to the next). */
  readonly tensorLifetime: TensorLifetime;
  /** A new tensor of n elements; their values are unspecified until an op writes them (host backends: zeros). */
  alloc(n: number): Tensor;
  /** A tensor holding `data`'s values (a host backend may return `data` itself). */
  upload(data: Float32Array): Tensor;
  /** The tensor's values on the host, after every op recorded before (a host backend returns the tensor itself). */
  download(t: Tensor): Float32Array;
  /** Elements [offset, offset + length) of t as a tensor sharing its memory (writes through). */
  view(t: Tensor, offset: number, length: number): Tensor;
  /**
   * Optional: a forward has ended (the Session says so); with tensorLifetime "forward", the tensors
   * made since the previous end are freed.
   */
  endForward?(): void;
  /** out[t, r] = sum_c W[r, c] * x[t, c].  x: [nTokens, w.cols], out: [nTokens, w.rows] */
  matmul(w: WeightMatrix, x: Tensor, nTokens: number, out: Tensor): void;
  /**
   * Several matmuls over one input (q, k and v): outs[i] gets exactly what matmul(ws[i], x, nTokens,
   * outs[i]) would write; a backend may run them as one op (input prepared once, one dispatch).
   * Every ws[i] has x's cols.
   */
  matmulMany(ws: readonly WeightMatrix[], x: Tensor, nTokens: number, outs: readonly Tensor[]): void;
  /** out[i] = x[i] / rms(row) * weight[i % dim]; rows of `dim`, as many as x holds */
  rmsNorm(x: Tensor, weight: Float32Array, eps: number, dim: number, out: Tensor): void;
  /** rotary embedding, in place. x: [nTokens, nHead, headStride] */
  rope(x: Tensor, p: RopeParams): void;
  /**
   * Causal attention of new queries over a KV cache.
   * q: [nTokens, nHead, headDimK]; k: [>= nPast+nTokens, nKvHead, headDimK];
   * v: [>= nPast+nTokens, nKvHead, headDimV]; out: [nTokens, nHead, headDimV].
   * Head h reads kv head h / (nHead / nKvHead) (GQA). k and v are both f32 or both f16 (Uint16Array
   * of IEEE half bit patterns, widened exactly to f32 on read).
   */
  attention(q: Tensor, k: KvTensor, v: KvTensor, p: AttentionParams, out: Tensor): void;
  /**
   * Writes rows into a KV cache array from element `offset`: src's values as they are into an f32
   * cache, rounded to IEEE f16 (as f32ToF16) into an f16 one. The cache is one this backend can
   * read (a host array, or one its allocKv made).
   */
  storeKv(cache: KvTensor, offset: number, src: Tensor): void;
  /** out[i] = x[i] rounded to IEEE f16 (nearest even; overflow to ±Inf), as bit patterns (host arrays). */
  f32ToF16(x: Float32Array, out: Uint16Array): void;
  /** out[i] = silu(gate[i]) * up[i] */
  siluMul(gate: Tensor, up: Tensor, out: Tensor): void;
  /** x[i] += y[i] for i < x.length, each sum rounded to f32 (a residual connection). */
  add(x: Tensor, y: Tensor): void;
  /** x[r, c] += bias[c] over x's rows of bias.length, each sum rounded to f32. */
  addRowBias(x: Tensor, bias: Float32Array): void;
  /** y[t, c] *= sigmoid(g[t]) over y's rows of `dim` (a per-row gate: Qwen2-MoE's shared expert). */
  sigmoidGateRows(y: Tensor, g: Tensor, dim: number): void;
  /**
   * dst[to.offset + r * to.stride + c] = src[from.offset + r * from.stride + c] for r < rows,
   * c < width: rows of a strided layout copied into another (MLA's latent and per-head k/v, the
   * rows the output head reads).
   */
  copyRows(src: Tensor, from: RowLayout, dst: Tensor, to: RowLayout, width: number, rows: number): void;
  /**
   * The MoE expert layer: out[t] = Σ over t's slots, in slot order, of
   * weight · (down(act(gate x_t + b_gate, up x_t + b_up)) + b_down), act the batch's activation
   * (default silu(g) ⊙ u), the biases each expert's own (none: 0); each step rounds like f32 `out += w * y`.
   * x: [nTokens, d]; out: [nTokens, d] (overwritten; rows without slots become 0).
   */
  moeFfn(x: Tensor, nTokens: number, batch: ExpertBatch, out: Tensor): void;
  /**
   * out[t] (+)= Σ over t's slots s (tokens[s] = t), in slot order, of weights[s] · y[s], each step
   * rounded like f32 `out += w * y` (the sum moeFfn makes; for slot outputs computed apart, slotOut).
   * y: [tokens.length, d]; without `accumulate`, out starts from 0.
   */
  addSlots(out: Tensor, y: Tensor, tokens: Int32Array, weights: Float32Array, d: number, accumulate: SlotSum): void;
  /**
   * Optional: a whole routed-expert layer in the backend's memory, with nothing read back (llama.cpp's
   * build_moe_ffn with MUL_MAT_ID): logits [nTokens, nExpert] routed as model/routing.ts routes
   * (`routing`: the layer's RoutingConfig and selection bias), then each token's chosen experts
   * run on x [nTokens, d] from the stacked weights and are summed into out [nTokens, d]
   * (overwritten) in ascending expert order, as moeFfn sums slots sorted by expert. Returns the choice,
   * readable later (observers); or null, having recorded nothing, for more tokens than it serves well
   * (an indirect matvec reads an expert's weights once per slot: a prompt is better routed on the
   * host and run expert by expert, moeFfn).
   */
  moeRouted?(
    x: Tensor, logits: Tensor, nTokens: number, routing: { readonly cfg: RoutingConfig; readonly bias: Float32Array | null },
    experts: StackedExperts, activation: ExpertActivation, out: Tensor,
  ): PendingRouting | null;
  /** out[t, :] = dequantized row ids[t] of w.  out: [ids.length, w.cols] */
  getRows(w: WeightMatrix, ids: ArrayLike<number>, out: Tensor): void;
  /**
   * Optional: `w` re-laid, once, in a layout this backend computes faster with (in its own memory;
   * the result computes exactly what `w` does), or null to keep `w`. `unitRows`: the rows of the
   * pieces the matrix will be cut into (an expert's rows in a stacked tensor; w.rows if none). For
   * weights that stay in memory for good (the all-resident path), never for memory reused for
   * other weights (the ExpertStore's slots).
   */
  relayout?(w: WeightMatrix, unitRows: number): WeightMatrix | null;
  /**
   * Optional: maps a byte range of a file into memory the kernels can read in place, every page
   * present on return (no copy, no page faults later). Where absent, weights are read into copies.
   */
  readonly mapFile?: FileMapper;
  /**
   * Optional: a KV array of `elements` f32 values or f16 bit patterns in the backend's memory:
   * page-granular host memory (native: untouched pages cost nothing, discarded ones are given back)
   * or device memory (webgpu: the cache then never crosses to the host). Where absent, the cache
   * uses plain typed arrays, which hold every page they have touched until collected.
   */
  readonly allocKv?: (type: "f32" | "f16", elements: number) => KvStorage;
  /**
   * Optional: refuses, before any is loaded, weights this backend cannot hold (UnsupportedError
   * naming the tensors, their sizes and the limit), e.g. a tensor larger than a device's largest buffer.
   */
  checkWeights?(tensors: ReadonlyArray<{ readonly name: string; readonly bytes: number }>): void;
  /** Frees native resources; the backend must not be used afterwards. */
  dispose(): void;
}
