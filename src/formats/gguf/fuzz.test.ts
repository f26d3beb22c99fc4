/**
 * Fuzzing parseGGUF with byte flips, length-field corruption and truncation of valid files:
 * every outcome must be success or a MoiraError, within bounded time and memory.
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import { existsSync, readFileSync } from "node:fs";
import { MoiraError } from "../../errors.js";
import { GGUFValueType } from "../model-file.js";
import { GGMLType } from "../quant/types.js";
import { parseGGUF } from "./parse.js";
import { serializeGGUF } from "./writer.js";
import { shared, skipIfAbsent } from "../../../test/shared.js";
import { Rng } from "../../engine/sampler.js";

function rng(seed: number): () => number {
  const r = new Rng(seed);
  return () => r.next();
}

function smallFile(): Uint8Array {
  return serializeGGUF({
    metadata: [
      ["general.architecture", { type: GGUFValueType.STRING, value: "llama" }],
      ["llama.block_count", { type: GGUFValueType.UINT32, value: 2 }],
      ["llama.rope.freq_base", { type: GGUFValueType.FLOAT32, value: 10000 }],
      ["t.u64", { type: GGUFValueType.UINT64, value: 5n }],
      ["t.bool", { type: GGUFValueType.BOOL, value: false }],
      ["tokenizer.ggml.tokens", { type: GGUFValueType.ARRAY, itemType: GGUFValueType.STRING, value: ["<unk>", "<s>", "</s>", "▁a", "b"] }],
      ["tokenizer.ggml.scores", { type: GGUFValueType.ARRAY, itemType: GGUFValueType.FLOAT32, value: [0, 0, 0, -1, -2] }],
      ["t.arr.i64", { type: GGUFValueType.ARRAY, itemType: GGUFValueType.INT64, value: [1n, -1n] }],
    ],
    tensors: [
      { name: "token_embd.weight", type: GGMLType.F32, dims: [4, 5], data: new Uint8Array(80) },
      { name: "blk.0.ffn_up_exps.weight", type: GGMLType.Q8_0, dims: [32, 2, 2], data: new Uint8Array(34 * 4) },
      { name: "blk.0.attn_q.weight", type: GGMLType.Q4_K, dims: [256, 1], data: new Uint8Array(144) },
    ],
  });
}

interface Outcome { ok: number; errors: Map<string, number> }

function fuzz(base: Uint8Array, iterations: number, seed: number, hotLength: number, outcome: Outcome): void {
  const r = rng(seed);
  const memBefore = process.memoryUsage();
  let worst = 0;
  for (let it = 0; it < iterations; it++) {
    let buf = base.slice();
    const kind = r();
    if (kind < 0.25) {
      buf = buf.subarray(0, Math.floor(r() * buf.length));
    } else if (kind < 0.55) {
      const flips = 1 + Math.floor(r() * 8);
      for (let i = 0; i < flips; i++) {
        const at = r() < 0.8 ? Math.floor(r() * Math.min(hotLength, buf.length)) : Math.floor(r() * buf.length);
        buf[at] = Math.floor(r() * 256);
      }
    } else if (kind < 0.85) {
      // a plausible-looking but wrong u64/u32 at a random spot: huge, off by a little, or 0xff..
      const at = Math.floor(r() * Math.min(hotLength, buf.length - 8));
      const dv = new DataView(buf.buffer, buf.byteOffset);
      const pick = r();
      if (pick < 0.3) dv.setBigUint64(at, BigInt(Math.floor(r() * 2 ** 52)), true);
      else if (pick < 0.6) dv.setUint32(at, (dv.getUint32(at, true) + Math.floor(r() * 5) - 2) >>> 0, true);
      else dv.setBigUint64(at, 0xffffffffffffffffn, true);
    } else {
      const at = Math.floor(r() * buf.length);
      buf[at] ^= 1 << Math.floor(r() * 8);
      buf = buf.subarray(0, buf.length - Math.floor(r() * 64));
    }
    // sometimes claim a larger file than the buffer holds (a header prefix): must still be safe
    const fileSize = r() < 0.1 ? buf.length + Math.floor(r() * 1e6) : undefined;
    const t0 = performance.now();
    try {
      parseGGUF(buf, fileSize);
      outcome.ok++;
    } catch (e) {
      if (!(e instanceof MoiraError)) {
        assert.fail(`iteration ${it} (seed ${seed}): ${(e as Error)?.constructor?.name}: ${(e as Error)?.message}`);
      }
      outcome.errors.set(e.name, (outcome.errors.get(e.name) ?? 0) + 1);
    }
    const ms = performance.now() - t0;
    assert.ok(ms < 2000, `iteration ${it} took ${ms.toFixed(0)} ms`);
    if (it % 16 === 0) {
      const m = process.memoryUsage();
      worst = Math.max(worst, m.heapUsed - memBefore.heapUsed + m.arrayBuffers - memBefore.arrayBuffers);
    }
  }
  const limit = 50 * base.length + 50e6;
  assert.ok(worst < limit, `memory grew by ${worst} bytes (limit ${limit})`);
}

test("fuzz: parseGGUF on corrupted small files succeeds or throws a MoiraError", () => {
  const outcome: Outcome = { ok: 0, errors: new Map() };
  fuzz(smallFile(), 3000, 1234, Infinity, outcome);
  assert.ok(outcome.errors.size >= 2, `few error kinds: ${[...outcome.errors.keys()]}`);
  assert.ok(outcome.ok > 0 && outcome.errors.get("ModelFormatError")! > 500, JSON.stringify([outcome.ok, [...outcome.errors]]));
});

test("fuzz: parseGGUF on corrupted llama.cpp vocab headers", (t) => {
  const path = shared("fixtures", "gguf-vocab", "ggml-vocab-llama-spm.gguf");
  if (skipIfAbsent(t, existsSync(path), `${path} not found (../shared absent)`)) return; // the small-file fuzz above still runs without ../shared
  const base = new Uint8Array(readFileSync(path));
  const outcome: Outcome = { ok: 0, errors: new Map() };
  fuzz(base, 300, 99, 4096, outcome);
  assert.ok(outcome.errors.size >= 1);
});
