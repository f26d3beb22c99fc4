/**
 * Q2_K quantization for low-bit expert copies (src/formats/quant has Q2_K dequantize only).
 * A port of llama.cpp's quantize_row_q2_K_ref: per 16 elements, make_qkx2_quants to [0, 3] with
 * weights |x| (x ≈ scale·L − min); the 16 scales and mins of a 256-element block are themselves
 * quantized to 4 bits against the block's f16 `d` and `dmin`.
 *
 * block_q2_K (84 B): scales[16] (low nibble scale, high nibble min) | qs[64] | d f16 | dmin f16.
 */
import { fp32ToFp16, fp16ToFp32, roundHalfEven } from "../formats/quant/dequantize.js";
import { UnsupportedError } from "../errors.js";

const QK_K = 256;
const nearestInt = (x: number) => roundHalfEven(x);

function makeQkx2(x: Float32Array, xo: number, w: Float32Array, L: Uint8Array, lo: number, nmax: number, out: { min: number }): number {
  const n = 16, rmin = -0.5, rdelta = 0.1, nstep = 15;
  let min = x[xo]!, max = x[xo]!, sumW = 0, sumX = 0;
  for (let i = 0; i < n; i++) {
    const xi = x[xo + i]!;
    if (xi < min) min = xi;
    if (xi > max) max = xi;
    sumW += w[i]!;
    sumX += w[i]! * xi;
  }
  if (min > 0) min = 0;
  if (max === min) {
    for (let i = 0; i < n; i++) L[lo + i] = 0;
    out.min = -min;
    return 0;
  }
  const range = max - min;
  let iscale = nmax / range, scale = 1 / iscale, best = 0;
  for (let i = 0; i < n; i++) {
    const l = Math.max(0, Math.min(nmax, nearestInt(iscale * (x[xo + i]! - min))));
    L[lo + i] = l;
    const d = scale * l + min - x[xo + i]!;
    best += w[i]! * d * d;
  }
  const aux = new Uint8Array(n);
  for (let is = 0; is <= nstep; is++) {
    iscale = (rmin + rdelta * is + nmax) / range;
    let sL = 0, sL2 = 0, sXL = 0;
    for (let i = 0; i < n; i++) {
      const l = Math.max(0, Math.min(nmax, nearestInt(iscale * (x[xo + i]! - min))));
      aux[i] = l;
      const wl = w[i]! * l;
      sL += wl; sL2 += wl * l; sXL += wl * x[xo + i]!;
    }
    const D = sumW * sL2 - sL * sL;
    if (D > 0) {
      let s = (sumW * sXL - sumX * sL) / D;
      let m = (sL2 * sumX - sL * sXL) / D;
      if (m > 0) { m = 0; s = sXL / sL2; }
      let err = 0;
      for (let i = 0; i < n; i++) { const d = s * aux[i]! + m - x[xo + i]!; err += w[i]! * d * d; }
      if (err < best) {
        for (let i = 0; i < n; i++) L[lo + i] = aux[i]!;
        best = err; scale = s; min = m;
      }
    }
  }
  out.min = -min;
  return scale;
}

/** Quantizes src (a whole number of 256-element blocks) to Q2_K. */
export function quantizeQ2K(src: Float32Array): Uint8Array {
  if (src.length % QK_K !== 0) throw new UnsupportedError(`Q2_K: ${src.length} elements are not whole blocks of ${QK_K}`);
  const nb = src.length / QK_K;
  const out = new Uint8Array(nb * 84);
  const dv = new DataView(out.buffer);
  const L = new Uint8Array(QK_K);
  const w = new Float32Array(16);
  const scales = new Float32Array(16), mins = new Float32Array(16);
  const m = { min: 0 };
  for (let i = 0; i < nb; i++) {
    const xo = i * QK_K, o = i * 84;
    let maxScale = 0, maxMin = 0;
    for (let j = 0; j < 16; j++) {
      for (let l = 0; l < 16; l++) w[l] = Math.abs(src[xo + 16 * j + l]!);
      scales[j] = makeQkx2(src, xo + 16 * j, w, L, 16 * j, 3, m);
      mins[j] = m.min;
      if (scales[j]! > maxScale) maxScale = scales[j]!;
      if (mins[j]! > maxMin) maxMin = mins[j]!;
    }
    let d = 0, dmin = 0;
    if (maxScale > 0) {
      const is = 15 / maxScale;
      for (let j = 0; j < 16; j++) out[o + j] = Math.min(15, nearestInt(is * scales[j]!));
      d = fp32ToFp16(maxScale / 15);
    }
    if (maxMin > 0) {
      const is = 15 / maxMin;
      for (let j = 0; j < 16; j++) out[o + j] |= Math.min(15, nearestInt(is * mins[j]!)) << 4;
      dmin = fp32ToFp16(maxMin / 15);
    }
    dv.setUint16(o + 80, d, true);
    dv.setUint16(o + 82, dmin, true);
    const df = fp16ToFp32(d), dmf = fp16ToFp32(dmin);
    for (let j = 0; j < 16; j++) {
      const dj = df * (out[o + j]! & 0xf);
      if (!dj) continue;
      const dm = dmf * (out[o + j]! >> 4);
      for (let ii = 0; ii < 16; ii++) {
        L[16 * j + ii] = Math.max(0, Math.min(3, nearestInt((src[xo + 16 * j + ii]! + dm) / dj)));
      }
    }
    for (let j = 0; j < QK_K; j += 128) {
      for (let l = 0; l < 32; l++) {
        out[o + 16 + j / 4 + l] = L[j + l]! | (L[j + l + 32]! << 2) | (L[j + l + 64]! << 4) | (L[j + l + 96]! << 6);
      }
    }
  }
  return out;
}
