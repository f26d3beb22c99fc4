/**
 * The native backend: moira's C++ kernels (AVX-512 / AVX2 / scalar, chosen at load) on a persistent
 * thread pool. Ops are synchronous: they return when every pool thread has finished.
 */
import { SWIGLU, type AttentionParams, type Backend, type ExpertBatch, type KvStorage, type KvTensor, type RopeParams, type WeightMatrix } from "../backend.js";
import { HostOps, checkExpertBatch, hostKv, hostTensor } from "../host-ops.js";
import { GGMLType, rowBytes, typeName } from "../../formats/quant/types.js";
import { InvalidArgumentError } from "../../errors.js";
import { loadNativeAddon, type Isa, type NativeAddon } from "./addon.js";
import { MappedFile } from "./io.js";

export interface NativeBackendOptions {
  /** compute threads (the JS thread counts as one); default: every core */
  threads?: number;
  /**
   * How resident weights are laid out (see relayout): "relaid" re-lays Q4_K matrices in 16-row
   * panels where the AVX-512 kernels run (faster decoding, seconds of load); "gguf" (default; the
   * MOIRA_WEIGHT_LAYOUT environment variable sets the default) computes on the file's own layout.
   */
  weightLayout?: WeightLayout;
}

export type WeightLayout = "relaid" | "gguf";

function layoutOption(v: string | undefined): WeightLayout {
  // the option, else MOIRA_WEIGHT_LAYOUT, else "gguf"
  if (v === undefined || v === "relaid" || v === "gguf") return v ?? "gguf";
  throw new InvalidArgumentError(`weight layout must be "relaid" or "gguf", got "${v}" (MOIRA_WEIGHT_LAYOUT)`);
}

export class NativeBackend extends HostOps implements Backend {
  readonly name = "native";
  /**
   * Q4_K re-laid in 16-row panels (a moira repack copy), with the AVX-512 kernels only: elsewhere
   * only a plain-C path computes it, ~20x slower than the file's own AVX2 kernels, so a model stored
   * that way is refused there (the matmul ops still compute it on any ISA).
   */
  get extraTypes(): readonly GGMLType[] { return this.isa === "avx512" ? [GGMLType.Q4_K_R16] : []; }
  private disposed = false;

  /** the mappings mapFile made: their pages can be given back once their tensor is re-laid */
  private readonly mapped = new WeakSet<ArrayBuffer>();

  private constructor(private readonly addon: NativeAddon, readonly weightLayout: WeightLayout) { super(); }

  static create(options: NativeBackendOptions = {}): NativeBackend {
    const layout = layoutOption(options.weightLayout ?? process.env.MOIRA_WEIGHT_LAYOUT);
    const addon = loadNativeAddon();
    if (options.threads !== undefined) addon.setThreads(options.threads);
    return new NativeBackend(addon, layout);
  }

  /** the kernel set in use (process-wide; MOIRA_ISA forces it at load) */
  get isa(): Isa { return this.addon.isa(); }
  get threads(): number { return this.addon.getThreads(); }
  /** Resizes the process-wide pool (threads are created here, never per op). */
  setThreads(n: number): void { this.addon.setThreads(n); }

  /** A private mapping of the range, populated (see MappedFile): resident weights without copies. */
  readonly mapFile = (path: string, offset: number, length: number): MappedFile => {
    const m = MappedFile.open(path, { offset, length }, { populate: true });
    this.mapped.add(m.buffer);
    return m;
  };

  /**
   * Q4_K matrices whose pieces are whole 16-row panels, re-laid as Q4_K_R16 (native/kernels.h) when
   * the AVX-512 kernels run: a decoded token's matvec does one vpdpbusd per 64 weights on nibbles
   * kept packed, about 2.4x the row kernel's rate in cache and 1.1-1.5x from RAM, same bits. The
   * copy is new memory; where the matrix was mapped from the file, the mapping's pages are given
   * back (the page cache keeps them; a later read of the GGUF bytes faults them in again).
   */
  relayout(w: WeightMatrix, unitRows: number): WeightMatrix | null {
    if (this.weightLayout !== "relaid" || this.isa !== "avx512") return null;
    if (w.type !== GGMLType.Q4_K || unitRows % 16 !== 0 || w.rows % 16 !== 0 || w.cols % 256 !== 0) return null;
    this.checkWeight(w);
    const addon = this.live();
    const data = new Uint8Array(addon.relayoutQ4K(w.data, w.rows, w.cols));
    if (this.mapped.has(w.data.buffer as ArrayBuffer)) addon.discardPages(w.data.buffer as ArrayBuffer, w.data.byteOffset, w.data.byteLength);
    return { type: GGMLType.Q4_K_R16, rows: w.rows, cols: w.cols, data };
  }

  /** Page-aligned native memory (large sizes are fresh mappings: no page is resident before it is written). */
  readonly allocKv = (type: "f32" | "f16", elements: number): KvStorage => {
    const addon = this.live();
    const size = type === "f16" ? 2 : 4;
    const buf = addon.allocAligned(elements * size, 4096);
    return {
      array: type === "f16" ? new Uint16Array(buf) : new Float32Array(buf),
      discard: (from, to) => to > from ? addon.discardPages(buf, from * size, (to - from) * size) : 0,
      dispose: () => addon.freeAligned(buf),
    };
  };

  private live(): NativeAddon {
    if (this.disposed) throw new InvalidArgumentError("NativeBackend used after dispose()");
    return this.addon;
  }

  private checkWeight(w: WeightMatrix): void {
    const need = w.rows * rowBytes(w.type, w.cols);
    if (w.data.byteLength < need) {
      throw new InvalidArgumentError(`${typeName(w.type)} weight of ${w.rows}x${w.cols} needs ${need} bytes, has ${w.data.byteLength}`);
    }
  }

  matmul(w: WeightMatrix, x: Float32Array, nTokens: number, out: Float32Array): void {
    this.checkWeight(w);
    this.live().matmul(w.type, w.data, w.rows, w.cols, x, nTokens, out);
  }

  matmulMany(ws: readonly WeightMatrix[], x: Float32Array, nTokens: number, outs: readonly Float32Array[]): void {
    const n = ws.length;
    if (n === 0) return;
    const cols = ws[0].cols;
    const types = new Int32Array(n), rows = new Int32Array(n), data: Uint8Array[] = new Array(n);
    for (let i = 0; i < n; i++) {
      const w = ws[i];
      this.checkWeight(w);
      if (w.cols !== cols) throw new InvalidArgumentError(`matmulMany: weight ${i} has ${w.cols} cols, weight 0 has ${cols}`);
      types[i] = w.type; rows[i] = w.rows; data[i] = w.data;
    }
    this.live().matmulMany(types, data, rows, cols, x, nTokens, outs as Float32Array[]);
  }

  rmsNorm(x: Float32Array, weight: Float32Array, eps: number, dim: number, out: Float32Array): void {
    this.live().rmsNorm(x, weight, eps, dim, out);
  }

  rope(x: Float32Array, p: RopeParams): void {
    const y = p.yarn;
    if (y) this.live().rope(x, p.nTokens, p.nHead, p.headStride, p.ropeOffset, p.ropeDim, p.pos0, p.theta, p.neox, p.freqScale, y.low, y.high, y.mscale);
    else this.live().rope(x, p.nTokens, p.nHead, p.headStride, p.ropeOffset, p.ropeDim, p.pos0, p.theta, p.neox, p.freqScale);
  }

  attention(q: Float32Array, k: KvTensor, v: KvTensor, p: AttentionParams, out: Float32Array): void {
    if (p.sinks && p.sinks.length < p.nHead) throw new InvalidArgumentError(`attention: ${p.sinks.length} sinks for ${p.nHead} heads`);
    if ((k instanceof Float32Array) !== (v instanceof Float32Array)) throw new InvalidArgumentError("attention: k and v must both be f32 or both f16");
    this.live().attention(q, hostKv(k, "attention"), hostKv(v, "attention"), p.nTokens, p.nPast, p.nHead, p.nKvHead, p.headDimK, p.headDimV, p.scale, out, p.window ?? 0, p.sinks);
  }

  f32ToF16(x: Float32Array, out: Uint16Array): void {
    if (out.length < x.length) throw new InvalidArgumentError(`f32ToF16: out holds ${out.length} values, x has ${x.length}`);
    this.live().f32ToF16(x, out);
  }

  siluMul(gate: Float32Array, up: Float32Array, out: Float32Array): void {
    this.live().siluMul(gate, up, out);
  }

  moeFfn(x: Float32Array, nTokens: number, b: ExpertBatch, out: Float32Array): void {
    const n = b.experts.length;
    const { d, ff } = checkExpertBatch(b, nTokens);
    const types = new Int32Array(n * 3);
    const data: Uint8Array[] = new Array(n * 3);
    let biases: Array<Float32Array | null> | undefined;
    for (let i = 0; i < n; i++) {
      const { gate, up, down, biases: eb } = b.experts[i];
      types[3 * i] = gate.type; types[3 * i + 1] = up.type; types[3 * i + 2] = down.type;
      data[3 * i] = gate.data; data[3 * i + 1] = up.data; data[3 * i + 2] = down.data;
      if (eb) {
        biases ??= new Array<Float32Array | null>(3 * n).fill(null);
        biases[3 * i] = eb.gate; biases[3 * i + 1] = eb.up; biases[3 * i + 2] = eb.down;
      }
    }
    if (n === 0) { if (!b.accumulate && !b.slotOut) out.fill(0); return; }
    const act = b.activation ?? SWIGLU;
    const oai = act.kind === "swiglu-oai" ? act : null;
    this.live().moeFfn(x, nTokens, d, ff, types, data, b.offsets, b.tokens, b.weights, out, b.accumulate === true, b.slotOut && hostTensor(b.slotOut, "moeFfn"),
      oai ? 1 : 0, oai?.alpha ?? 0, oai?.limit ?? 0, biases);
  }

  getRows(w: WeightMatrix, ids: ArrayLike<number>, out: Float32Array): void {
    this.checkWeight(w);
    const idArr = ids instanceof Int32Array ? ids : Int32Array.from(ids);
    for (const id of idArr) if (!(id >= 0 && id < w.rows)) throw new InvalidArgumentError(`getRows: id ${id} is outside the weight's ${w.rows} rows`);
    this.live().getRows(w.type, w.data, w.rows, w.cols, idArr, out);
  }

  /** The pool is process-wide and shared by every NativeBackend; dispose only fences this handle. */
  dispose(): void { this.disposed = true; }
  [Symbol.dispose](): void { this.dispose(); }
}
