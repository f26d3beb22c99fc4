/**
 * Backend.matmulMany (q, k and v in one op) must give each output exactly the bits of a separate
 * matmul: native for every ISA this CPU runs and 1 and 2 threads, with mixed weight types (one
 * activation per kind), and the reference backend's composition.
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import { RefBackend } from "../src/backend/ref/ref-backend.js";
import type { WeightMatrix } from "../src/backend/backend.js";
import { GGMLType, rowBytes } from "../src/formats/quant/types.js";
import { dequantize, fp32ToFp16 } from "../src/formats/quant/dequantize.js";
import { NativeBackend, loadNativeAddon } from "../src/backend/native/index.js";
import { Rng } from "../src/engine/sampler.js";

const addon = loadNativeAddon();
const nat = NativeBackend.create();

function weight(type: GGMLType, rows: number, cols: number, r: Rng): WeightMatrix {
  const data = new Uint8Array(rows * rowBytes(type, cols));
  const dv = new DataView(data.buffer);
  if (type === GGMLType.F16) for (let i = 0; i < rows * cols; i++) dv.setUint16(2 * i, fp32ToFp16(r.next() * 2 - 1), true);
  else {
    for (let i = 0; i < data.length; i++) data[i] = Math.floor(r.next() * 256);
    if (type === GGMLType.MXFP4) {
      for (let b = 0; b < data.length; b += 17) data[b] = 118 + Math.floor(r.next() * 8);  // E8M0 scales 2^-10 .. 2^-3
    } else {
      const [block, offs] = type === GGMLType.Q8_0 ? [34, [0]] : type === GGMLType.Q4_0 ? [18, [0]] : type === GGMLType.Q6_K ? [210, [208]] : type === GGMLType.Q5_K ? [176, [0, 2]] : [144, [0, 2]];
      for (let b = 0; b < data.length; b += block) for (const o of offs) dv.setUint16(b + o, fp32ToFp16(0.01), true);
    }
  }
  return { type, rows, cols, data };
}

test("matmulMany = separate matmuls, bit for bit (native: every ISA, 1 and 2 threads; ref)", () => {
  const r = new Rng(77);
  const cols = 512;
  const ws = [weight(GGMLType.Q4_K, 67, cols, r), weight(GGMLType.Q6_K, 33, cols, r), weight(GGMLType.Q8_0, 5, cols, r), weight(GGMLType.F16, 17, cols, r)];
  const startIsa = addon.isa(), startThreads = nat.threads;
  try {
    for (const nTok of [1, 3, 17]) {
      const x = new Float32Array(nTok * cols).map(() => r.next() * 2 - 1);
      for (const isa of addon.supportedIsas()) {
        for (const th of [1, 2]) {
          addon.setIsa(isa);
          nat.setThreads(th);
          const outs = ws.map((w) => new Float32Array(nTok * w.rows).fill(NaN));
          nat.matmulMany(ws, x, nTok, outs);
          ws.forEach((w, i) => {
            const want = new Float32Array(nTok * w.rows);
            nat.matmul(w, x, nTok, want);
            assert.deepEqual(outs[i], want, `${isa}/${th}t T=${nTok} matrix ${i}`);
          });
        }
      }
      const ref = new RefBackend();
      const outs = ws.map((w) => new Float32Array(nTok * w.rows));
      ref.matmulMany(ws, x, nTok, outs);
      ws.forEach((w, i) => {
        const want = new Float32Array(nTok * w.rows);
        ref.matmul(w, x, nTok, want);
        assert.deepEqual(outs[i], want, `ref T=${nTok} matrix ${i}`);
      });
    }
    assert.throws(() => nat.matmulMany([ws[0], weight(GGMLType.Q4_K, 3, 256, r)], new Float32Array(cols), 1, [new Float32Array(67), new Float32Array(3)]), /cols/);
  } finally {
    addon.setIsa(startIsa);
    nat.setThreads(startThreads);
  }
});

test("a batch's rows are the one-token matmul's bits (native: every ISA, 1 and 2 threads; Q4_K / Q5_K / Q6_K / Q8_0 / Q4_0 / MXFP4's 16-row panels from 5 tokens on; Q8_0 / Q4_0 / MXFP4 rows in groups of 16 blocks and a tail)", () => {
  const r = new Rng(78);
  const startIsa = addon.isa(), startThreads = nat.threads;
  try {
    for (const [type, rows, cols] of [[GGMLType.Q4_K, 67, 512], [GGMLType.Q4_K, 48, 1280], [GGMLType.Q5_K, 35, 1280], [GGMLType.Q6_K, 35, 512], [GGMLType.Q6_K, 35, 1536], [GGMLType.Q8_0, 19, 768], [GGMLType.Q4_0, 21, 1408], [GGMLType.MXFP4, 37, 2880]] as const) {
      const w = weight(type, rows, cols, r);
      for (const nTok of [2, 3, 4, 5, 7, 8, 9, 13, 33]) {
        const x = new Float32Array(nTok * cols).map(() => (r.next() * 2 - 1) * (1 + 30 * r.next()));
        for (const isa of addon.supportedIsas()) {
          addon.setIsa(isa);
          for (const th of [1, 2]) {
            nat.setThreads(th);
            const batch = new Float32Array(nTok * rows).fill(NaN);
            nat.matmul(w, x, nTok, batch);
            for (let t = 0; t < nTok; t++) {
              const one = new Float32Array(rows).fill(NaN);
              nat.matmul(w, x.subarray(t * cols, (t + 1) * cols), 1, one);
              assert.deepEqual(batch.subarray(t * rows, (t + 1) * rows), one, `${isa}/${th}t type ${type} rows=${rows} cols=${cols} T=${nTok} token ${t}`);
            }
          }
        }
      }
    }
  } finally {
    addon.setIsa(startIsa);
    nat.setThreads(startThreads);
  }
});

test("MXFP4 scales of every E8M0 byte class (0 and 1: the subnormals 2^-128, 2^-127; normal ones) match the dequantized weights (native: every ISA, a row at a time and in panels)", () => {
  const r = new Rng(79);
  const rows = 19, cols = 576;  // 18 blocks: a group of 16 and a tail of 2
  const w = weight(GGMLType.MXFP4, rows, cols, r);
  const exps = [0, 1, 2, 3, 100, 127, 128, 140];  // row i's blocks all take exps[i % 8]
  for (let b = 0; b < w.data.length; b += 17) w.data[b] = exps[Math.floor(b / 17 / (cols / 32)) % exps.length]!;
  const deq = dequantize(GGMLType.MXFP4, w.data, rows * cols);
  const startIsa = addon.isa();
  try {
    for (const nTok of [1, 8]) {
      // large activations keep dw * dy out of the subnormal range
      const x = new Float32Array(nTok * cols).map(() => (r.next() * 2 - 1) * 1e6);
      for (const isa of addon.supportedIsas()) {
        addon.setIsa(isa);
        const out = new Float32Array(nTok * rows);
        nat.matmul(w, x, nTok, out);
        for (let t = 0; t < nTok; t++) for (let i = 0; i < rows; i++) {
          let want = 0, mag = 0;
          for (let c = 0; c < cols; c++) { const p = deq[i * cols + c]! * x[t * cols + c]!; want += p; mag += Math.abs(p); }
          assert.ok(Math.abs(out[t * rows + i]! - want) <= 0.02 * mag, `${isa} T=${nTok} token ${t} row ${i}: ${out[t * rows + i]} vs ${want} (magnitude ${mag})`);
        }
      }
    }
  } finally {
    addon.setIsa(startIsa);
  }
});
