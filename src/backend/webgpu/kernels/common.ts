/**
 * What every WGSL kernel shares: the variant a pipeline is built for (chosen once, from what the
 * adapter offers), workgroup reductions (subgroup ops or a shared-memory fold), and readers of
 * GGUF bytes from a storage buffer of u32 words.
 */
import { UnsupportedError } from "../../../errors.js";
import type { GpuBatch, GpuBinding, GpuDevice, GpuFeatures } from "../device.js";

/** Invocations per workgroup of the one-invocation-per-element kernels (KernelFamily.perElement). */
export const ELEM_WG = 256;

/** Choices a kernel set is built with; each defaults to the best the adapter offers. */
export interface KernelOptions {
  /** workgroup sums and maxima: subgroup ops (features subgroups + subgroup_id) or a shared-memory fold */
  readonly reduction?: "subgroup" | "workgroup";
  /**
   * quantized matvec: activations quantized to int8 per 32 elements and dotted with dot4I8Packed
   * (WGSL packed_4x8_integer_dot_product), or f32 activations against weights dequantized to f32
   */
  readonly matvec?: "int8-dot" | "f32";
  /** f16 data (F16 weight tiles, f16 KV caches): WGSL's f16 type (shader-f16) or halves unpacked from u32 words */
  readonly f16?: "shader-f16" | "unpack";
}

export type KernelVariant = Required<KernelOptions>;

/** The variant that needs no optional feature: what every adapter can run. */
export const PORTABLE_VARIANT: KernelVariant = { reduction: "workgroup", matvec: "f32", f16: "unpack" };

/** Resolves options against the device: unset ones take the best offered; a requested one the adapter lacks throws. */
export function kernelVariant(features: GpuFeatures, o: KernelOptions = {}): KernelVariant {
  const need = (ok: boolean, what: string) => {
    if (!ok) throw new UnsupportedError(`this WebGPU adapter does not offer ${what}`);
  };
  const reduction = o.reduction ?? (features.subgroupId ? "subgroup" : "workgroup");
  if (reduction === "subgroup") need(features.subgroupId, "subgroups with the subgroup_id builtin");
  const matvec = o.matvec ?? (features.packedInt8Dot ? "int8-dot" : "f32");
  if (matvec === "int8-dot") need(features.packedInt8Dot, "packed int8 dot products (dot4I8Packed)");
  const f16 = o.f16 ?? (features.shaderF16 ? "shader-f16" : "unpack");
  if (f16 === "shader-f16") need(features.shaderF16, "shader-f16");
  return { reduction, matvec, f16 };
}

/** A short stable name of a variant, for labels and test names. */
export function variantName(v: KernelVariant): string {
  return `${v.reduction}/${v.matvec}/${v.f16}`;
}

/** The base every kernel family builds on: the device, its variant, and pipelines by source. */
export abstract class KernelFamily {
  readonly variant: KernelVariant;
  private readonly pipelines = new Map<string, GPUComputePipeline>();

  constructor(readonly dev: GpuDevice, options: KernelOptions = {}) {
    this.variant = kernelVariant(dev.features, options);
  }

  /** The pipeline named `key` in this family, its WGSL built by `source` on first use. */
  protected pipeline(key: string, source: () => string): GPUComputePipeline {
    let p = this.pipelines.get(key);
    if (!p) {
      p = this.dev.pipeline(source());
      this.pipelines.set(key, p);
    }
    return p;
  }
  /**
   * Records `source` (its workgroups of ELEM_WG) with one invocation per element i < n: its Params
   * are `params` (u32 values, f32 ones as their bits) followed by the grid's pitch.
   */
  protected perElement(batch: GpuBatch, key: string, source: string, n: number, params: readonly number[], bindings: readonly GpuBinding[]): void {
    if (n === 0) return;
    const p = this.pipeline(key, () => source);
    const groups = grid2d(Math.ceil(n / ELEM_WG), this.dev.limits.maxComputeWorkgroupsPerDimension);
    batch.dispatch(p, Uint32Array.of(...params, groups[0]), bindings, groups);
  }


  /** `enable` directives for this variant; with `f16`, the kernel declares f16 data when the variant allows. */
  protected enables(uses: { f16?: boolean } = {}): string {
    const lines: string[] = [];
    if (this.variant.reduction === "subgroup") lines.push("enable subgroups;");
    if (uses.f16 && this.variant.f16 === "shader-f16") lines.push("enable f16;");
    return lines.join("\n");
  }
}

/**
 * Workgroup-wide reductions over `lanes` values per invocation, for a 1-D workgroup of `wg`
 * invocations: `wgSum(v)` / `wgMax(v)` take an array<f32, lanes> and return the reduced array to
 * every invocation (so all of them may branch on it). Call from uniform control flow only. The
 * entry point declares `@builtin(local_invocation_index) li: u32` as its last parameter, followed
 * by `ids`, and runs `init` first.
 */
export interface Reduction {
  /** module-scope declarations (shared scratch, invocation ids, the functions) */
  readonly decls: string;
  /** builtin parameters of the entry point after `li` (empty, or starting with a comma) */
  readonly ids: string;
  /** first statement of the entry point */
  readonly init: string;
}

export function reduction(variant: KernelVariant, wg: number, lanes: number, ops: readonly ("sum" | "max")[]): Reduction {
  const combine = { sum: (a: string, b: string) => `${a} + ${b}`, max: (a: string, b: string) => `max(${a}, ${b})` };
  const name = { sum: "wgSum", max: "wgMax" };
  const sub = { sum: "subgroupAdd", max: "subgroupMax" };
  if (variant.reduction === "subgroup") {
    // a subgroup has >= 4 invocations in WebGPU, so at most wg / 4 subgroups write partials
    const slots = Math.max(1, wg / 4);
    const fns = ops.map((op) => `
fn ${name[op]}(v: array<f32, ${lanes}>) -> array<f32, ${lanes}> {
  for (var l = 0u; l < ${lanes}u; l++) {
    let s = ${sub[op]}(v[l]);
    if (gSgi == 0u) { red[l * ${slots}u + gSgid] = s; }
  }
  workgroupBarrier();
  var out: array<f32, ${lanes}>;
  for (var l = 0u; l < ${lanes}u; l++) {
    var a = red[l * ${slots}u];
    for (var i = 1u; i < gNsg; i++) { a = ${combine[op]("a", `red[l * ${slots}u + i]`)}; }
    out[l] = a;
  }
  workgroupBarrier();
  return out;
}`).join("\n");
    return {
      decls: `var<workgroup> red: array<f32, ${lanes * slots}>;
var<private> gSgi: u32;
var<private> gSgid: u32;
var<private> gNsg: u32;
${fns}`,
      ids: ", @builtin(subgroup_invocation_id) sgi: u32, @builtin(subgroup_id) sgid: u32, @builtin(num_subgroups) nsg: u32",
      init: "gSgi = sgi; gSgid = sgid; gNsg = nsg;",
    };
  }
  // a two-stage fold with three barriers and none inside a loop (lavapipe compiles barriers in
  // loops slowly): `chunks` invocations per lane fold `chunk` entries each, then every invocation
  // folds its lanes' partials
  const chunk = 1 << Math.ceil(Math.log2(Math.sqrt(wg)));
  const chunks = wg / chunk;
  if (lanes * chunks > wg) throw new Error(`a reduction of ${lanes} lanes needs a workgroup of at least ${lanes * chunks}`);
  const fns = ops.map((op) => `
fn ${name[op]}(v: array<f32, ${lanes}>) -> array<f32, ${lanes}> {
  for (var l = 0u; l < ${lanes}u; l++) { red[l * ${wg}u + gLi] = v[l]; }
  workgroupBarrier();
  if (gLi < ${lanes * chunks}u) {
    let o = (gLi / ${chunks}u) * ${wg}u + (gLi % ${chunks}u) * ${chunk}u;
    var a = red[o];
    for (var i = 1u; i < ${chunk}u; i++) { a = ${combine[op]("a", "red[o + i]")}; }
    part[gLi] = a;
  }
  workgroupBarrier();
  var out: array<f32, ${lanes}>;
  for (var l = 0u; l < ${lanes}u; l++) {
    var a = part[l * ${chunks}u];
    for (var i = 1u; i < ${chunks}u; i++) { a = ${combine[op]("a", `part[l * ${chunks}u + i]`)}; }
    out[l] = a;
  }
  workgroupBarrier();
  return out;
}`).join("\n");
  return {
    decls: `var<workgroup> red: array<f32, ${lanes * wg}>;
var<workgroup> part: array<f32, ${lanes * chunks}>;
var<private> gLi: u32;
${fns}`,
    ids: "",
    init: "gLi = li;",
  };
}

/**
 * Readers of GGUF bytes at any byte offset of the storage buffer `W` (array<u32>, little-endian):
 * blocks of 17, 18, 34, 110 or 210 bytes leave most fields unaligned to words.
 */
export const WEIGHT_READERS = /* wgsl */ `
fn wByte(i: u32) -> u32 { return (W[i >> 2u] >> ((i & 3u) << 3u)) & 0xffu; }
fn wI8(i: u32) -> i32 { return bitcast<i32>(wByte(i) << 24u) >> 24u; }
// the f16 at an even byte offset
fn wHalf(i: u32) -> f32 { return unpack2x16float(W[i >> 2u] >> ((i & 2u) << 3u)).x; }
// 4 bytes from any byte offset, as one little-endian word
fn wWord(i: u32) -> u32 {
  let s = (i & 3u) << 3u;
  let a = W[i >> 2u];
  if (s == 0u) { return a; }
  return (a >> s) | (W[(i >> 2u) + 1u] << (32u - s));
}
// the 4 bytes of a word as unsigned / signed values
fn u8x4(w: u32) -> vec4<f32> { return vec4<f32>(vec4<u32>(w, w >> 8u, w >> 16u, w >> 24u) & vec4<u32>(0xffu)); }
fn i8x4(w: u32) -> vec4<f32> {
  return vec4<f32>(vec4<i32>(bitcast<i32>(w << 24u), bitcast<i32>(w << 16u), bitcast<i32>(w << 8u), bitcast<i32>(w)) >> vec4<u32>(24u));
}
`;

/** f32 bits for a parameter block. */
export function f32Bits(x: number): number {
  const f = new Float32Array([x]);
  return new Uint32Array(f.buffer)[0]!;
}

/** [x, y, 1] workgroups covering n groups when n may exceed the per-dimension limit; `x` is the row pitch the shader uses. */
export function grid2d(n: number, maxPerDim: number): [number, number, number] {
  if (n <= maxPerDim) return [n, 1, 1];
  return [maxPerDim, Math.ceil(n / maxPerDim), 1];
}
