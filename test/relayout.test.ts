/**
 * Q4_K matrices re-laid at load in 16-row panels (Backend.relayout, GGML type Q4_K_R16: the native
 * backend where its AVX-512 kernels run) compute exactly what the file's layout computes:
 *  - matmul: the AVX-512 kernels give Q4_K's bits for 1 to 13 tokens (decode tiles of up to 4 on
 *    the packed nibbles, and the panels a prompt takes); every ISA gives a batch the bits of one
 *    token at a time and stays within rounding of its own Q4_K kernels (and of the reference);
 *  - the expert FFN (moeFfn) with re-laid experts gives the Q4_K experts' bits;
 *  - a Session's logits (prompt and decode) are bit-identical with weightLayout "relaid" and "gguf",
 *    and the re-laid session really runs on Q4_K_R16 weights;
 *  - with tied embeddings the head is re-laid and the embedding rows still gathered, same logits;
 *  - what cannot be re-laid or read is refused with an error naming it;
 *  - the CLI re-lays only when asked, or for decodes long enough to pay for it.
 */
import { test, after } from "node:test";
import assert from "node:assert/strict";
import { mkdtempSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import type { WeightMatrix } from "../src/backend/backend.js";
import { RefBackend } from "../src/backend/ref/ref-backend.js";
import { NativeBackend, loadNativeAddon } from "../src/backend/native/index.js";
import { GGMLType, rowBytes } from "../src/formats/quant/types.js";
import { fp32ToFp16 } from "../src/formats/quant/dequantize.js";
import { Rng, argmax } from "../src/engine/sampler.js";
import { makeModel } from "../src/tools/make-model/index.js";
import { Model } from "../src/model/model.js";
import { Session } from "../src/engine/session.js";
import { ResidentExperts } from "../src/model/experts.js";
import { readGGUF } from "../src/formats/gguf/reader.js";
import { writeGGUF } from "../src/formats/gguf/writer.js";
import { RELAYOUT_MIN_TOKENS, parseWeightLayout, weightLayoutFor } from "../src/cli/common.js";

const addon = loadNativeAddon();
const dir = mkdtempSync(join(tmpdir(), "moira-relayout-"));
after(() => rmSync(dir, { recursive: true, force: true }));

function q4k(rows: number, cols: number, r: Rng): WeightMatrix {
  const data = new Uint8Array(rows * rowBytes(GGMLType.Q4_K, cols));
  for (let i = 0; i < data.length; i++) data[i] = Math.floor(r.next() * 256);
  const dv = new DataView(data.buffer);
  for (let b = 0; b < data.length; b += 144) {
    dv.setUint16(b, fp32ToFp16(0.004 + 0.01 * r.next()), true);
    dv.setUint16(b + 2, fp32ToFp16(0.002 + 0.005 * r.next()), true);
  }
  return { type: GGMLType.Q4_K, rows, cols, data };
}

function relaid(w: WeightMatrix): WeightMatrix {
  return { type: GGMLType.Q4_K_R16, rows: w.rows, cols: w.cols, data: new Uint8Array(addon.relayoutQ4K(w.data, w.rows, w.cols)) };
}

function mm(be: NativeBackend | RefBackend, w: WeightMatrix, x: Float32Array, nTok: number): Float32Array {
  const out = new Float32Array(nTok * w.rows).fill(NaN);
  be.matmul(w, x, nTok, out);
  return out;
}

test("Q4_K_R16 matmul: Q4_K's bits on AVX-512, batch = one token at a time on every ISA, near the reference", () => {
  const nat = NativeBackend.create();
  const r = new Rng(11);
  const start = addon.isa(), startThreads = nat.threads;
  try {
    for (const [rows, cols] of [[16, 256], [48, 512], [160, 1536]] as const) {
      const w = q4k(rows, cols, r), wr = relaid(w);
      assert.equal(wr.data.byteLength, rows * rowBytes(GGMLType.Q4_K_R16, cols));
      for (const nTok of [1, 2, 3, 4, 5, 8, 13]) {
        const x = new Float32Array(nTok * cols).map(() => r.next() * 2 - 1);
        const ref = mm(new RefBackend(), w, x, nTok);
        for (const isa of addon.supportedIsas()) {
          addon.setIsa(isa);
          for (const th of [1, 2]) {
            nat.setThreads(th);
            const got = mm(nat, wr, x, nTok);
            if (isa === "avx512") assert.deepEqual(got, mm(nat, w, x, nTok), `${rows}x${cols} T=${nTok} ${th}t: Q4_K's bits`);
            const single = new Float32Array(nTok * rows);
            for (let t = 0; t < nTok; t++) single.set(mm(nat, wr, x.subarray(t * cols, (t + 1) * cols), 1), t * rows);
            assert.deepEqual(got, single, `${isa} ${rows}x${cols} T=${nTok} ${th}t: batch = one token at a time`);
            // the Q4_K kernels of this ISA quantize the activations the same way: rounding apart, the
            // same values; both within the activations' int8 rounding of the f32 reference
            const q = mm(nat, w, x, nTok);
            const scale = Math.max(...ref.map(Math.abs));
            for (let i = 0; i < got.length; i++) {
              assert.ok(Math.abs(got[i] - q[i]) <= 1e-5 * scale, `${isa} ${rows}x${cols} T=${nTok}: [${i}] ${got[i]} vs Q4_K ${q[i]}`);
              assert.ok(Math.abs(got[i] - ref[i]) <= 0.02 * scale, `${isa} ${rows}x${cols} T=${nTok}: [${i}] ${got[i]} vs reference ${ref[i]}`);
            }
          }
        }
      }
    }
  } finally {
    addon.setIsa(start);
    nat.setThreads(startThreads);
  }
});

test("Q4_K_R16 experts: moeFfn gives the Q4_K experts' bits (AVX-512; elsewhere within rounding), decode and prompt", () => {
  const nat = NativeBackend.create();
  const r = new Rng(12);
  const d = 512, ff = 256;
  const ex = Array.from({ length: 3 }, () => ({ gate: q4k(ff, d, r), up: q4k(ff, d, r), down: q4k(d, ff, r) }));
  const exR = ex.map((e) => ({ gate: relaid(e.gate), up: relaid(e.up), down: relaid(e.down) }));
  for (const nTok of [1, 6]) {
    const x = new Float32Array(nTok * d).map(() => r.next() * 2 - 1);
    // every token visits experts 0 and 2 (slots sorted by expert, token order within)
    const tokens = Int32Array.from([...Array(nTok).keys(), ...Array(nTok).keys()]);
    const weights = Float32Array.from({ length: 2 * nTok }, () => r.next());
    const batch = (e: typeof ex) => ({ experts: [e[0], e[2]], offsets: Int32Array.of(0, nTok, 2 * nTok), tokens, weights });
    const a = new Float32Array(nTok * d), b = new Float32Array(nTok * d);
    nat.moeFfn(x, nTok, batch(ex), a);
    nat.moeFfn(x, nTok, batch(exR), b);
    if (addon.isa() === "avx512") assert.deepEqual(b, a, `T=${nTok}`);
    else for (let i = 0; i < a.length; i++) assert.ok(Math.abs(a[i] - b[i]) <= 1e-3 * (1 + Math.abs(a[i])), `T=${nTok} [${i}]`);
  }
});

test("a Session's logits are bit-identical with re-laid weights, which it really uses", async () => {
  const out = join(dir, "tiny-q4k.gguf");
  await makeModel({ out, preset: "tiny-olmoe", type: "Q4_K", layers: 2, experts: 16, topK: 4, seed: 3 });
  const run = (layout: "relaid" | "gguf") => {
    const backend = NativeBackend.create({ weightLayout: layout });
    const model = Model.open(out);
    const s = new Session(model, { backend, contextLength: 64 });
    const logits: Float32Array[] = [s.prefill([5, 17, 99, 3, 250, 41, 7])];
    for (let i = 0; i < 5; i++) logits.push(s.decodeStep(argmax(logits[logits.length - 1])));
    const experts = (s.experts as ResidentExperts).acquire(0, [0], {} as never)[0];
    return { logits, types: [experts.gate.type, experts.up.type, experts.down.type, model.weights.matrix("blk.0.attn_q.weight", model.config.nHead * model.config.headDimK, model.config.dModel).type] };
  };
  const g = run("gguf"), rl = run("relaid");
  assert.deepEqual(g.types, [GGMLType.Q4_K, GGMLType.Q4_K, GGMLType.Q4_K, GGMLType.Q4_K]);
  if (addon.isa() === "avx512") assert.deepEqual(rl.types, [GGMLType.Q4_K_R16, GGMLType.Q4_K_R16, GGMLType.Q4_K_R16, GGMLType.Q4_K_R16]);
  else assert.deepEqual(rl.types, g.types, "re-laid only where the AVX-512 kernels run");
  assert.equal(rl.logits.length, g.logits.length);
  rl.logits.forEach((l, i) => assert.deepEqual(l, g.logits[i], `forward ${i}`));
});

test("tied embeddings: the output head re-laid, the embedding rows still gathered from the file's layout", async () => {
  const src = join(dir, "tiny-q4k-untied.gguf"), out = join(dir, "tiny-q4k-tied.gguf");
  await makeModel({ out: src, preset: "tiny-olmoe", type: "Q4_K", layers: 1, experts: 16, topK: 4, seed: 4, vocab: 512 });
  // the same model without output.weight: the head is the token embeddings (llama.cpp's rule)
  const g = readGGUF(src), bytes = readFileSync(src);
  const tensors = [...g.tensors.values()].filter((t) => t.name !== "output.weight")
    .map((t) => ({ name: t.name, type: t.type, dims: [...t.dims], data: bytes.subarray(t.file!.offset, t.file!.offset + t.nbytes) }));
  writeGGUF(out, { metadata: new Map(g.metadata), tensors });
  const run = (layout: "relaid" | "gguf") => {
    const model = Model.open(out);
    const s = new Session(model, { backend: NativeBackend.create({ weightLayout: layout }), contextLength: 32 });
    const logits: Float32Array[] = [s.prefill([9, 8, 7, 300])];
    for (let i = 0; i < 3; i++) logits.push(s.decodeStep(argmax(logits[logits.length - 1])));
    return { logits, head: model.weights.matrix("token_embd.weight", model.config.vocabSize, model.config.dModel).type };
  };
  const a = run("gguf"), b = run("relaid");
  assert.equal(a.head, GGMLType.Q4_K);
  if (addon.isa() === "avx512") assert.equal(b.head, GGMLType.Q4_K_R16);
  b.logits.forEach((l, i) => assert.deepEqual(l, a.logits[i], `forward ${i}`));
});

test("re-laid Q4_K: bad shapes and gathers are refused, naming the problem", () => {
  const r = new Rng(13);
  const w = q4k(32, 256, r);
  assert.throws(() => addon.relayoutQ4K(w.data, 24, 256), /multiple of 16/);
  assert.throws(() => addon.relayoutQ4K(w.data, 32, 200), /cols of 256/);
  assert.throws(() => addon.relayoutQ4K(w.data.subarray(0, 100), 32, 256), /too small/);
  const wr = relaid(w);
  const x = new Float32Array(256), out = new Float32Array(32);
  assert.throws(() => addon.matmul(GGMLType.Q4_K_R16, wr.data, 24, 256, x, 1, out), /multiple of 16 rows/);
  assert.throws(() => addon.getRows(GGMLType.Q4_K_R16, wr.data, 32, 256, Int32Array.of(1), out), /no rows to gather/);
  assert.throws(() => NativeBackend.create({ weightLayout: "packed" as never }), /weight layout must be "relaid" or "gguf"/);
});

test("the CLI's weight layout: asked, else MOIRA_WEIGHT_LAYOUT, else re-laid only for long decodes", () => {
  const env = process.env.MOIRA_WEIGHT_LAYOUT;
  try {
    delete process.env.MOIRA_WEIGHT_LAYOUT;
    assert.equal(weightLayoutFor(undefined, 128), "gguf");
    assert.equal(weightLayoutFor(undefined, RELAYOUT_MIN_TOKENS), "relaid");
    assert.equal(weightLayoutFor(undefined, Infinity), "relaid");
    assert.equal(weightLayoutFor("relaid", 1), "relaid");
    process.env.MOIRA_WEIGHT_LAYOUT = "relaid";
    assert.equal(weightLayoutFor(undefined, 1), "relaid");
    assert.equal(weightLayoutFor("gguf", 1), "gguf");
    process.env.MOIRA_WEIGHT_LAYOUT = "fast";
    assert.throws(() => weightLayoutFor(undefined, 1), /must be relaid or gguf, got "fast"/);
    assert.throws(() => parseWeightLayout("packed"), /must be relaid or gguf/);
  } finally {
    if (env === undefined) delete process.env.MOIRA_WEIGHT_LAYOUT;
    else process.env.MOIRA_WEIGHT_LAYOUT = env;
  }
});
