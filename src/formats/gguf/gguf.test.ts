import { test } from "node:test";
import assert from "node:assert/strict";
import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { FileAccessError, MissingTensorError, ModelFormatError, UnsupportedError } from "../../errors.js";
import { GGUFValueType, type GGUFMetadataValue } from "../model-file.js";
import { GGMLType } from "../quant/types.js";
import { dequantize, fp32ToFp16 } from "../quant/dequantize.js";
import { quantize } from "../quant/quantize.js";
import {
  GGUFWeightSource, metaArray, metaBool, metaNumber, metaNumberArray, metaOptNumber, metaString, metaStringArray,
  openGGUF, readGGUF,
} from "./reader.js";
import { parseGGUF } from "./parse.js";
import { openGGUFBytes } from "./memory.js";
import { serializeGGUF, writeGGUF, type GGUFTensorInput } from "./writer.js";
import { shared, skipWithoutShared } from "../../../test/shared.js";

const dir = mkdtempSync(join(tmpdir(), "moira-gguf-"));
process.on("exit", () => rmSync(dir, { recursive: true, force: true }));

function allTypesMetadata(): [string, GGUFMetadataValue][] {
  return [
    ["general.architecture", { type: GGUFValueType.STRING, value: "llama" }],
    ["t.u8", { type: GGUFValueType.UINT8, value: 255 }],
    ["t.i8", { type: GGUFValueType.INT8, value: -128 }],
    ["t.u16", { type: GGUFValueType.UINT16, value: 65535 }],
    ["t.i16", { type: GGUFValueType.INT16, value: -32768 }],
    ["t.u32", { type: GGUFValueType.UINT32, value: 4294967295 }],
    ["t.i32", { type: GGUFValueType.INT32, value: -2147483648 }],
    ["t.f32", { type: GGUFValueType.FLOAT32, value: Math.fround(0.1) }],
    ["t.bool", { type: GGUFValueType.BOOL, value: true }],
    ["t.str", { type: GGUFValueType.STRING, value: "héllo ▁wörld 🦙" }],
    ["t.u64", { type: GGUFValueType.UINT64, value: 18446744073709551615n }],
    ["t.i64", { type: GGUFValueType.INT64, value: -9223372036854775808n }],
    ["t.f64", { type: GGUFValueType.FLOAT64, value: 0.1 }],
    ["t.arr.str", { type: GGUFValueType.ARRAY, itemType: GGUFValueType.STRING, value: ["<s>", "", "▁the", "日本"] }],
    ["t.arr.f32", { type: GGUFValueType.ARRAY, itemType: GGUFValueType.FLOAT32, value: new Float32Array([1.5, -2, 0]) }],
    ["t.arr.i32", { type: GGUFValueType.ARRAY, itemType: GGUFValueType.INT32, value: [1, -2, 3] }],
    ["t.arr.u8", { type: GGUFValueType.ARRAY, itemType: GGUFValueType.UINT8, value: [0, 7, 255] }],
    ["t.arr.i8", { type: GGUFValueType.ARRAY, itemType: GGUFValueType.INT8, value: [-1] }],
    ["t.arr.u16", { type: GGUFValueType.ARRAY, itemType: GGUFValueType.UINT16, value: [65535, 2] }],
    ["t.arr.i16", { type: GGUFValueType.ARRAY, itemType: GGUFValueType.INT16, value: [-300] }],
    ["t.arr.u32", { type: GGUFValueType.ARRAY, itemType: GGUFValueType.UINT32, value: [4000000000] }],
    ["t.arr.bool", { type: GGUFValueType.ARRAY, itemType: GGUFValueType.BOOL, value: [true, false, true] }],
    ["t.arr.u64", { type: GGUFValueType.ARRAY, itemType: GGUFValueType.UINT64, value: [1n, 2n ** 63n] }],
    ["t.arr.i64", { type: GGUFValueType.ARRAY, itemType: GGUFValueType.INT64, value: [-5n] }],
    ["t.arr.f64", { type: GGUFValueType.ARRAY, itemType: GGUFValueType.FLOAT64, value: [Math.PI] }],
    ["t.arr.empty", { type: GGUFValueType.ARRAY, itemType: GGUFValueType.STRING, value: [] }],
  ];
}

function f16Bytes(values: number[]): Uint8Array {
  const h = new Uint16Array(values.map(fp32ToFp16));
  return new Uint8Array(h.buffer);
}

function smallTensors(): GGUFTensorInput[] {
  const x = new Float32Array(256 * 2).map((_, i) => Math.sin(i) * 0.1);
  return [
    { name: "token_embd.weight", type: GGMLType.F16, dims: [3, 5], data: f16Bytes(Array.from({ length: 15 }, (_, i) => i / 4)) },
    { name: "blk.0.attn_q.weight", type: GGMLType.Q4_K, dims: [256, 2], data: quantize(GGMLType.Q4_K, x) },
    { name: "blk.0.ffn_up_exps.weight", type: GGMLType.Q8_0, dims: [32, 2, 3], data: quantize(GGMLType.Q8_0, new Float32Array(192).fill(0.5)) },
    { name: "output_norm.weight", type: GGMLType.F32, dims: [7], data: new Uint8Array(new Float32Array([1, 2, 3, 4, 5, 6, 7]).buffer) },
  ];
}

function sameValue(a: GGUFMetadataValue, b: GGUFMetadataValue, key: string): void {
  assert.equal(a.type, b.type, key);
  if (a.type === GGUFValueType.ARRAY && b.type === GGUFValueType.ARRAY) {
    assert.equal(a.itemType, b.itemType, key);
    assert.deepEqual(Array.from(a.value), Array.from(b.value), key);
  } else {
    assert.deepEqual(a.value, b.value, key);
  }
}

test("write → read round trip: every metadata value type, tensors, alignment", () => {
  for (const alignment of [32, 64, 8]) {
    const md = allTypesMetadata();
    const tensors = smallTensors();
    const path = join(dir, `rt-${alignment}.gguf`);
    writeGGUF(path, { metadata: md, tensors, alignment });
    const bytes = readFileSync(path);
    assert.deepEqual(new Uint8Array(bytes), serializeGGUF({ metadata: md, tensors, alignment }), "stream and buffer writers agree");
    const g = readGGUF(path);
    assert.equal(g.version, 3);
    assert.equal(g.alignment, alignment);
    assert.equal(g.fileSize, bytes.length);
    assert.equal(g.dataOffset % alignment, 0);
    for (const [k, v] of md) sameValue(g.metadata.get(k)!, v, k);
    if (alignment === 32) assert.ok(!g.metadata.has("general.alignment"));
    else assert.equal(metaNumber(g.metadata, "general.alignment"), alignment);
    assert.deepEqual([...g.tensors.keys()], tensors.map((t) => t.name));
    const ws = new GGUFWeightSource(g);
    for (const t of tensors) {
      const meta = g.tensors.get(t.name)!;
      assert.deepEqual(meta.dims, t.dims);
      assert.equal(meta.type, t.type);
      assert.equal(meta.file!.offset % alignment, 0);
      assert.deepEqual(ws.load(t.name).data, t.data);
    }
    assert.throws(() => ws.load("blk.9.nope"), (e) => e instanceof MissingTensorError && /blk\.9\.nope/.test(e.message));
    ws.close();
    // with a mapper, tensors are views of the mapping (a plain in-memory copy of the file here)
    let disposed = 0;
    const mapped = new GGUFWeightSource(g, { map: (_p, off, len) => ({ buffer: new Uint8Array(bytes.subarray(off, off + len)).buffer, dispose: () => { disposed++; } }) });
    for (const t of tensors) assert.deepEqual(mapped.load(t.name).data, t.data);
    mapped.close();
    assert.equal(disposed, tensors.length);
    // parse of the in-memory bytes gives the same, and re-serializing what was read is byte-identical
    const p = parseGGUF(new Uint8Array(bytes));
    assert.equal(p.dataOffset, g.dataOffset);
    const again = serializeGGUF({
      metadata: g.metadata,
      tensors: [...g.tensors.values()].map((t) => ({ ...t, data: bytes.subarray(t.file!.offset, t.file!.offset + t.nbytes) })),
    });
    assert.deepEqual(again, new Uint8Array(bytes));
    // opened from memory (as a browser opens a fetched file): the same metadata and tensors, views of the bytes
    const mem = openGGUFBytes(new Uint8Array(bytes), "mem.gguf");
    for (const [k, v] of md) sameValue(mem.metadata.get(k)!, v, k);
    assert.deepEqual([...mem.weights.tensors.values()].map((t) => t.file!.offset), [...g.tensors.values()].map((t) => t.file!.offset));
    for (const t of tensors) assert.deepEqual(mem.weights.load(t.name).data, t.data);
    assert.throws(() => mem.weights.load("blk.9.nope"), (e) => e instanceof MissingTensorError && /blk\.9\.nope not found in mem\.gguf/.test(e.message));
    const end = Math.max(...[...g.tensors.values()].map((t) => t.file!.offset + t.nbytes));
    assert.throws(() => openGGUFBytes(new Uint8Array(bytes).subarray(0, end - 1), "cut.gguf"), (e) => e instanceof ModelFormatError && /cut\.gguf: .*truncated/.test(e.message));
  }
});

test("typed metadata accessors name the key and the types", () => {
  const md = new Map(allTypesMetadata());
  assert.equal(metaString(md, "general.architecture"), "llama");
  assert.equal(metaNumber(md, "t.u32"), 4294967295);
  assert.equal(metaNumber(md, "t.f32"), Math.fround(0.1));
  assert.equal(metaOptNumber(md, "t.none"), undefined);
  assert.equal(metaBool(md, "t.bool"), true);
  assert.deepEqual(metaStringArray(md, "t.arr.str"), ["<s>", "", "▁the", "日本"]);
  assert.deepEqual(metaNumberArray(md, "t.arr.i32"), [1, -2, 3]);
  assert.equal(metaArray(md, "t.arr.f32", GGUFValueType.FLOAT32).length, 3);
  assert.throws(() => metaString(md, "llama.block_count"), { name: "ModelFormatError", message: "metadata key llama.block_count missing" });
  assert.throws(() => metaNumber(md, "t.str"), { message: "metadata key t.str has type STRING, expected a number" });
  assert.throws(() => metaString(md, "t.u8"), { message: "metadata key t.u8 has type UINT8, expected STRING" });
  assert.throws(() => metaStringArray(md, "t.arr.f32"), { message: "metadata key t.arr.f32 has type ARRAY[FLOAT32], expected ARRAY[STRING]" });
  assert.throws(() => metaNumber(md, "t.u64"), /t\.u64: value 18446744073709551615 is too large/);
});

// ---------------------------------------------------------------------------------------------
// Bad input: each corruption gives a typed error naming the field or tensor.

function validFile(alignment = 32): Uint8Array {
  return serializeGGUF({ metadata: allTypesMetadata(), tensors: smallTensors(), alignment });
}

/** Byte offset just past the name string of tensor `name` in the tensor infos. */
function infoOffset(buf: Uint8Array, name: string): number {
  const enc = new TextEncoder().encode(name);
  outer: for (let i = buf.length - enc.length; i >= 0; i--) {
    for (let j = 0; j < enc.length; j++) if (buf[i + j] !== enc[j]) continue outer;
    const len = new DataView(buf.buffer, buf.byteOffset).getBigUint64(i - 8, true);
    if (len === BigInt(enc.length)) return i + enc.length;
  }
  throw new Error(`tensor info ${name} not found`);
}

function patch(buf: Uint8Array, fn: (dv: DataView, b: Uint8Array) => void): Uint8Array {
  const b = buf.slice();
  fn(new DataView(b.buffer), b);
  return b;
}

test("bad input: magic, version, truncation", () => {
  const good = validFile();
  assert.throws(() => parseGGUF(patch(good, (_, b) => b.set([0x47, 0x47, 0x4d, 0x4c], 0))),
    (e) => e instanceof ModelFormatError && /not a GGUF file: magic 47 47 4d 4c expected GGUF/.test(e.message));
  assert.throws(() => parseGGUF(new Uint8Array([1, 2])), (e) => e instanceof ModelFormatError && /not a GGUF file/.test(e.message));
  assert.throws(() => parseGGUF(patch(good, (dv) => dv.setUint32(4, 7, true))), (e) => e instanceof ModelFormatError && /version 7/.test(e.message));
  assert.throws(() => parseGGUF(patch(good, (dv) => dv.setUint32(4, 1, true))), (e) => e instanceof UnsupportedError && /version 1/.test(e.message));
  // header cut in the middle of the metadata
  assert.throws(() => parseGGUF(good.subarray(0, 200)), (e) => e instanceof ModelFormatError && /truncated/.test(e.message));
  // data cut: the last tensor runs past the end
  const p = parseGGUF(good);
  const last = p.tensors.get("output_norm.weight")!;
  const cut = good.subarray(0, last.file!.offset + 10);
  assert.throws(() => parseGGUF(cut), {
    name: "ModelFormatError",
    message: `<buffer>: tensor output_norm.weight: data [${last.file!.offset}, ${last.file!.offset + 28}) runs past end of file (size ${cut.length}); the file is truncated`,
  });
  // readGGUF on a truncated file on disk
  const path = join(dir, "truncated.gguf");
  writeFileSync(path, cut);
  assert.throws(() => readGGUF(path), (e) => e instanceof ModelFormatError && /tensor output_norm\.weight: data .* runs past end of file/.test(e.message));
  assert.throws(() => readGGUF(join(dir, "absent.gguf")), (e) => e instanceof FileAccessError && /model file .*absent\.gguf not found/.test(e.message));
  assert.throws(() => openGGUF(join(dir, "absent.gguf")), FileAccessError);
});

test("bad input: tensor infos", () => {
  const good = validFile();
  const q = infoOffset(good, "blk.0.attn_q.weight"); // n_dims u32, dims u64 x2, type u32, offset u64
  const up = infoOffset(good, "blk.0.ffn_up_exps.weight"); // 3 dims
  const check = (buf: Uint8Array, cls: Function, re: RegExp) =>
    assert.throws(() => parseGGUF(buf), (e) => e instanceof cls && re.test((e as Error).message));
  check(patch(good, (dv) => dv.setUint32(q + 4 + 16, 99, true)), UnsupportedError, /tensor blk\.0\.attn_q\.weight has GGML type id 99/);
  check(patch(good, (dv) => dv.setUint32(q, 5, true)), ModelFormatError, /tensor blk\.0\.attn_q\.weight: n_dims is 5/);
  check(patch(good, (dv) => dv.setUint32(q, 0, true)), ModelFormatError, /tensor blk\.0\.attn_q\.weight: n_dims is 0/);
  check(patch(good, (dv) => dv.setBigUint64(q + 4 + 8, 0n, true)), ModelFormatError, /tensor blk\.0\.attn_q\.weight: dim 1 is 0/);
  check(patch(good, (dv) => dv.setBigUint64(q + 4, 100n, true)), ModelFormatError, /blk\.0\.attn_q\.weight: row of 100 elements is not a whole number of Q4_K blocks/);
  check(patch(good, (dv) => dv.setBigUint64(q + 4 + 16 + 4, 8n, true)), ModelFormatError, /blk\.0\.attn_q\.weight: data offset 8 is not a multiple of the alignment 32/);
  check(patch(good, (dv) => dv.setBigUint64(up + 4 + 24 + 4, 0n, true)), ModelFormatError, /tensors token_embd\.weight and blk\.0\.ffn_up_exps\.weight overlap/);
  check(patch(good, (dv) => dv.setBigUint64(q + 4 + 8, 1n << 40n, true)), ModelFormatError, /blk\.0\.attn_q\.weight: data .* runs past end of file/);
  check(patch(good, (dv) => dv.setBigUint64(q + 4 + 8, 1n << 60n, true)), ModelFormatError, /blk\.0\.attn_q\.weight \(dim 1\): value .* is impossibly large/);
  // duplicate tensor name: rename output_norm.weight's last letter to make it equal to... a same-length name
  const dupT = serializeGGUF({ metadata: [], tensors: [
    { name: "a.weight", type: GGMLType.F32, dims: [1], data: new Uint8Array(4) },
    { name: "b.weight", type: GGMLType.F32, dims: [1], data: new Uint8Array(4) },
  ] });
  check(patch(dupT, (_, b) => { b[infoOffset(dupT, "b.weight") - 8] = "a".charCodeAt(0); }), ModelFormatError, /duplicate tensor name a\.weight/);
  // counts that the file cannot hold
  check(patch(good, (dv) => dv.setBigUint64(8, 1n << 40n, true)), ModelFormatError, /tensor count 1099511627776 cannot fit/);
  check(patch(good, (dv) => dv.setBigUint64(16, 1n << 30n, true)), ModelFormatError, /metadata count 1073741824 cannot fit/);
});

test("bad input: metadata", () => {
  const mk = (md: [string, GGUFMetadataValue][]) => serializeGGUF({ metadata: md, tensors: [] });
  const check = (buf: Uint8Array, cls: Function, re: RegExp) =>
    assert.throws(() => parseGGUF(buf), (e) => e instanceof cls && re.test((e as Error).message));
  // header: 24 bytes; first key string at 24 (u64 len), key bytes, then type u32, then value
  const one = mk([["k.str", { type: GGUFValueType.STRING, value: "abc" }]]);
  const typeAt = 24 + 8 + 5;
  check(patch(one, (dv) => dv.setUint32(typeAt, 13, true)), ModelFormatError, /metadata key k\.str has unknown value type 13/);
  check(patch(one, (dv) => dv.setBigUint64(typeAt + 4, 1000000n, true)), ModelFormatError, /metadata key k\.str: string length 1000000 runs past end of file/);
  check(patch(one, (dv) => dv.setBigUint64(24, 1n << 50n, true)), ModelFormatError, /metadata key #0: string length .* runs past end of file/);
  const arr = mk([["k.arr", { type: GGUFValueType.ARRAY, itemType: GGUFValueType.STRING, value: ["x", "y"] }]]);
  check(patch(arr, (dv) => dv.setBigUint64(typeAt + 8, 1n << 40n, true)), ModelFormatError, /metadata key k\.arr: array of 1099511627776 STRING needs at least/);
  check(patch(arr, (dv) => dv.setUint32(typeAt + 4, 42, true)), ModelFormatError, /metadata key k\.arr: unknown array item type 42/);
  check(patch(arr, (dv) => dv.setUint32(typeAt + 4, GGUFValueType.ARRAY, true)), UnsupportedError, /k\.arr: arrays of arrays/);
  const dup = mk([["k.aa", { type: GGUFValueType.UINT8, value: 1 }], ["k.ab", { type: GGUFValueType.UINT8, value: 2 }]]);
  check(patch(dup, (_, b) => { b[24 + 8 + 4 + 4 + 1 + 8 + 3] = "a".charCodeAt(0); }), ModelFormatError, /duplicate metadata key k\.aa/);
  // general.alignment: not a power of two, wrong type
  const al = validFile(64);
  const alKey = infoOffset(al, "general.alignment"); // type u32 then value u32
  check(patch(al, (dv) => dv.setUint32(alKey + 4, 48, true)), ModelFormatError, /general\.alignment is 48, must be a power of two/);
  check(patch(al, (dv) => dv.setUint32(alKey + 4, 0, true)), ModelFormatError, /general\.alignment is 0, must be a power of two/);
  check(patch(al, (dv) => dv.setUint32(alKey, GGUFValueType.FLOAT32, true)), ModelFormatError, /general\.alignment has type FLOAT32, expected UINT32/);
});

test("a header larger than the first read (multi-MiB vocab metadata) is read incrementally", () => {
  const tokens = Array.from({ length: 150_000 }, (_, i) => `tok_${i}_${"x".repeat(i % 17)}`);
  const path = join(dir, "big-vocab.gguf");
  writeGGUF(path, {
    metadata: [["tokenizer.ggml.tokens", { type: GGUFValueType.ARRAY, itemType: GGUFValueType.STRING, value: tokens }]],
    tensors: [{ name: "w", type: GGMLType.F32, dims: [2], data: new Uint8Array(new Float32Array([3, 4]).buffer) }],
  });
  const g = readGGUF(path);
  assert.ok(g.dataOffset > 2 << 20);
  assert.deepEqual(metaStringArray(g.metadata, "tokenizer.ggml.tokens"), tokens);
  const m = openGGUF(path);
  assert.equal(m.format, "gguf");
  assert.deepEqual([...new Float32Array(m.weights.load("w").data.slice().buffer)], [3, 4]);
  m.weights.close();
});

// ---------------------------------------------------------------------------------------------
// Real llama.cpp files from ../shared

const VOCABS = ["ggml-vocab-llama-spm", "ggml-vocab-phi-3", "ggml-vocab-deepseek-llm", "ggml-vocab-gpt-neox"];

test("llama.cpp vocab files: parse, and re-serializing the header is byte-identical", { skip: skipWithoutShared }, () => {
  for (const v of VOCABS) {
    const path = shared("fixtures", "gguf-vocab", `${v}.gguf`);
    assert.ok(existsSync(path), `${path}: a vocab fixture of ../shared is missing`);
    const g = readGGUF(path);
    assert.equal(g.version, 3);
    assert.equal(g.tensors.size, 0);
    const tokens = metaStringArray(g.metadata, "tokenizer.ggml.tokens");
    assert.ok(tokens.length > 30000, `${v}: ${tokens.length} tokens`);
    assert.ok(typeof metaString(g.metadata, "tokenizer.ggml.model") === "string");
    const original = new Uint8Array(readFileSync(path));
    const ours = serializeGGUF({ metadata: g.metadata, tensors: [] });
    // llama.cpp does not pad a file without tensor data; otherwise identical
    assert.ok(ours.length >= original.length && ours.length - original.length < g.alignment);
    assert.ok(Buffer.from(ours.subarray(0, original.length)).equals(Buffer.from(original)), `${v}: header bytes differ`);
  }
});

test("tinymoe-trained.gguf: arch, tensors, F16 embeddings, byte-identical rewrite", { skip: skipWithoutShared }, () => {
  const path = shared("models", "tinymoe-trained.gguf");
  const m = openGGUF(path);
  assert.equal(metaString(m.metadata, "general.architecture"), "llama");
  assert.equal(metaNumber(m.metadata, "llama.block_count"), 4);
  assert.equal(metaNumber(m.metadata, "llama.expert_count"), 8);
  assert.equal(m.weights.tensors.size, 42);
  const emb = m.weights.tensors.get("token_embd.weight")!;
  assert.deepEqual(emb.dims, [256, 32000]);
  assert.equal(emb.type, GGMLType.F16);
  assert.deepEqual(m.weights.tensors.get("blk.0.ffn_gate_exps.weight")!.dims, [256, 512, 8]);
  assert.ok(!m.weights.tensors.has("output.weight"));
  const data = m.weights.load("token_embd.weight");
  assert.equal(data.data.length, 256 * 32000 * 2);
  for (const row of [0, 1, 2, 13, 31999]) {
    const x = dequantize(GGMLType.F16, data.data.subarray(row * 512), 256);
    assert.ok(x.every(Number.isFinite), `row ${row}`);
    assert.ok(x.some((v) => v !== 0), `row ${row} all zero`);
  }
  // read everything back and write it again: the same bytes as llama.cpp-compatible writer produced
  const tensors = [...m.weights.tensors.values()].map((t) => ({ name: t.name, type: t.type, dims: t.dims, data: m.weights.load(t.name).data }));
  m.weights.close();
  const out = join(dir, "tinymoe-rewrite.gguf");
  writeGGUF(out, { metadata: m.metadata, tensors });
  const a = readFileSync(path), b = readFileSync(out);
  assert.equal(b.length, a.length);
  assert.ok(a.equals(b), "rewritten file differs");
  rmSync(out);
});
