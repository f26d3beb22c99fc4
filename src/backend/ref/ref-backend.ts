/**
 * The reference backend: plain TypeScript, f64 accumulation, no tricks. It is the oracle every
 * other backend is tested against op by op, so clarity beats speed. Dequantized weights are cached
 * per weight buffer (tests run it on small models; it is not meant for multi-GB ones).
 */
import { SWIGLU, type AttentionParams, type Backend, type ExpertBatch, type KvArray, type KvTensor, type RopeParams, type WeightMatrix } from "../backend.js";
import { HostOps, hostKv, hostTensor, ropeCosSin } from "../host-ops.js";
import { dequantize, fp16ToFp32, fp32ToFp16 } from "../../formats/quant/dequantize.js";
import { GGMLType, rowBytes } from "../../formats/quant/types.js";
import { InvalidArgumentError } from "../../errors.js";

export class RefBackend extends HostOps implements Backend {
  readonly name = "ref";
  // dequantized copies, keyed by the weight's byte buffer
  private readonly f32Cache = new WeakMap<Uint8Array, Float32Array>();

  private weightF32(w: WeightMatrix): Float32Array {
    let f = this.f32Cache.get(w.data);
    if (!f) {
      const need = w.rows * rowBytes(w.type, w.cols);
      if (w.data.byteLength < need) {
        throw new InvalidArgumentError(`weight of ${w.rows}x${w.cols} needs ${need} bytes, has ${w.data.byteLength}`);
      }
      f = w.type === GGMLType.F32
        ? new Float32Array(w.data.buffer.slice(w.data.byteOffset, w.data.byteOffset + w.rows * w.cols * 4))
        : dequantize(w.type, w.data, w.rows * w.cols);
      this.f32Cache.set(w.data, f);
    }
    return f;
  }

  matmul(w: WeightMatrix, x: Float32Array, nTokens: number, out: Float32Array): void {
    const W = this.weightF32(w);
    const { rows, cols } = w;
    for (let t = 0; t < nTokens; t++) {
      const xo = t * cols;
      for (let r = 0; r < rows; r++) {
        const wo = r * cols;
        let s = 0;
        for (let c = 0; c < cols; c++) s += W[wo + c] * x[xo + c];
        out[t * rows + r] = s;
      }
    }
  }

  matmulMany(ws: readonly WeightMatrix[], x: Float32Array, nTokens: number, outs: readonly Float32Array[]): void {
    ws.forEach((w, i) => this.matmul(w, x, nTokens, outs[i]));
  }

  rmsNorm(x: Float32Array, weight: Float32Array, eps: number, dim: number, out: Float32Array): void {
    const n = x.length / dim;
    for (let t = 0; t < n; t++) {
      const o = t * dim;
      let ss = 0;
      for (let i = 0; i < dim; i++) ss += x[o + i] * x[o + i];
      const scale = 1 / Math.sqrt(ss / dim + eps);
      for (let i = 0; i < dim; i++) out[o + i] = x[o + i] * scale * weight[i];
    }
  }

  rope(x: Float32Array, p: RopeParams): void {
    const half = p.ropeDim / 2;
    for (let t = 0; t < p.nTokens; t++) {
      for (let h = 0; h < p.nHead; h++) {
        const base = (t * p.nHead + h) * p.headStride + p.ropeOffset;
        for (let i = 0; i < half; i++) {
          const { cos: c, sin: s } = ropeCosSin(p, p.pos0 + t, i);
          const i0 = p.neox ? base + i : base + 2 * i;
          const i1 = p.neox ? base + i + half : base + 2 * i + 1;
          const a = x[i0], b = x[i1];
          x[i0] = a * c - b * s;
          x[i1] = a * s + b * c;
        }
      }
    }
  }

  attention(q: Float32Array, kt: KvTensor, vt: KvTensor, p: AttentionParams, out: Float32Array): void {
    const kc = hostKv(kt, "attention"), vc = hostKv(vt, "attention");
    const { nTokens, nPast, nHead, nKvHead, headDimK, headDimV, scale } = p;
    const window = p.window ?? 0;
    // an f16 cache reads as its exact f32 values
    const nCtxAll = nPast + nTokens;
    const widen = (c: KvArray, n: number): Float32Array => c instanceof Float32Array ? c : Float32Array.from(c.subarray(0, n), fp16ToFp32);
    const k = widen(kc, nCtxAll * nKvHead * headDimK), v = widen(vc, nCtxAll * nKvHead * headDimV);
    const group = nHead / nKvHead;
    const scores = new Float64Array(nPast + nTokens);
    for (let t = 0; t < nTokens; t++) {
      // rows [j0, nCtx): causal, and within the window when there is one
      const nCtx = nPast + t + 1;
      const j0 = window > 0 ? Math.max(0, nCtx - window) : 0;
      for (let h = 0; h < nHead; h++) {
        const kvh = Math.floor(h / group);
        const qo = (t * nHead + h) * headDimK;
        const sink = p.sinks ? p.sinks[h] : -Infinity;
        let max = sink;
        for (let j = j0; j < nCtx; j++) {
          const ko = (j * nKvHead + kvh) * headDimK;
          let s = 0;
          for (let d = 0; d < headDimK; d++) s += q[qo + d] * k[ko + d];
          s *= scale;
          scores[j] = s;
          if (s > max) max = s;
        }
        let sum = Math.exp(sink - max);
        for (let j = j0; j < nCtx; j++) { scores[j] = Math.exp(scores[j] - max); sum += scores[j]; }
        const oo = (t * nHead + h) * headDimV;
        for (let d = 0; d < headDimV; d++) {
          let acc = 0;
          for (let j = j0; j < nCtx; j++) acc += scores[j] * v[(j * nKvHead + kvh) * headDimV + d];
          out[oo + d] = acc / sum;
        }
      }
    }
  }

  f32ToF16(x: Float32Array, out: Uint16Array): void {
    for (let i = 0; i < x.length; i++) out[i] = fp32ToFp16(x[i]);
  }

  siluMul(gate: Float32Array, up: Float32Array, out: Float32Array): void {
    for (let i = 0; i < out.length; i++) {
      const g = gate[i];
      out[i] = (g / (1 + Math.exp(-g))) * up[i];
    }
  }

  moeFfn(x: Float32Array, nTokens: number, b: ExpertBatch, out: Float32Array): void {
    const d = b.experts.length > 0 ? b.experts[0].gate.cols : 0;
    if (!b.accumulate && !b.slotOut) out.fill(0, 0, nTokens * d);
    b.experts.forEach((w, i) => {
      const s0 = b.offsets[i], n = b.offsets[i + 1] - s0, ff = w.gate.rows;
      if (n === 0) return;
      const xg = new Float32Array(n * d);
      for (let j = 0; j < n; j++) xg.set(x.subarray(b.tokens[s0 + j] * d, (b.tokens[s0 + j] + 1) * d), j * d);
      const g = new Float32Array(n * ff), u = new Float32Array(n * ff), y = new Float32Array(n * d);
      this.matmul(w.gate, xg, n, g);
      this.matmul(w.up, xg, n, u);
      if (w.biases) { addRowBias(g, w.biases.gate); addRowBias(u, w.biases.up); }
      const act = b.activation ?? SWIGLU;
      if (act.kind === "swiglu") this.siluMul(g, u, g);
      else swigluOai(g, u, act.alpha, act.limit, g);
      this.matmul(w.down, g, n, y);
      if (w.biases) addRowBias(y, w.biases.down);
      if (b.slotOut) { hostTensor(b.slotOut, "moeFfn").set(y, s0 * d); return; }
      for (let j = 0; j < n; j++) {
        const t = b.tokens[s0 + j], wt = b.weights[s0 + j];
        for (let c = 0; c < d; c++) out[t * d + c] += wt * y[j * d + c];
      }
    });
  }

  getRows(w: WeightMatrix, ids: ArrayLike<number>, out: Float32Array): void {
    const rb = rowBytes(w.type, w.cols);
    for (let t = 0; t < ids.length; t++) {
      const id = ids[t];
      if (!(id >= 0 && id < w.rows)) throw new InvalidArgumentError(`token id ${id} is outside the vocabulary (0..${w.rows - 1})`);
      const row = w.data.subarray(id * rb, (id + 1) * rb);
      out.set(dequantize(w.type, row, w.cols), t * w.cols);
    }
  }

  dispose(): void {}
}

/** x's rows (of bias.length) += bias, each sum rounded to f32 as ggml's f32 add. */
function addRowBias(x: Float32Array, bias: Float32Array): void {
  for (let i = 0; i < x.length; i++) x[i] += bias[i % bias.length];
}

/** out = GPT-OSS's clamped SwiGLU of gate and up (see ExpertActivation). */
function swigluOai(gate: Float32Array, up: Float32Array, alpha: number, limit: number, out: Float32Array): void {
  for (let i = 0; i < out.length; i++) {
    const g = Math.min(gate[i], limit), u = Math.min(Math.max(up[i], -limit), limit);
    out[i] = (g / (1 + Math.exp(-alpha * g))) * (u + 1);
  }
}
