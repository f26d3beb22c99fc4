import { test } from "node:test";
import assert from "node:assert/strict";
import { mkdtempSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { FileAccessError, ModelFormatError, UnsupportedError } from "../../errors.js";
import { openSafetensors, openSafetensorsDirectory, openSafetensorsIndex } from "./reader.js";
import { serializeSafetensors, writeSafetensors } from "./writer.js";

const f32 = (...v: number[]) => new Uint8Array(new Float32Array(v).buffer);

function tmp(): string {
  return mkdtempSync(join(tmpdir(), "moira-st-"));
}

/** A file with a hand-written header (for corrupt inputs). */
function rawFile(dir: string, header: unknown, dataBytes: number, headerLenOverride?: bigint): string {
  const json = new TextEncoder().encode(JSON.stringify(header));
  const out = new Uint8Array(8 + json.length + dataBytes);
  new DataView(out.buffer).setBigUint64(0, headerLenOverride ?? BigInt(json.length), true);
  out.set(json, 8);
  const p = join(dir, "x.safetensors");
  writeFileSync(p, out);
  return p;
}

test("safetensors: round trip, lazy reads at the right offsets, metadata", () => {
  const dir = tmp();
  const p = join(dir, "a.safetensors");
  writeSafetensors(p, [
    { name: "a", dtype: "F32", shape: [2, 3], data: f32(1, 2, 3, 4, 5, 6) },
    { name: "b", dtype: "F16", shape: [2], data: new Uint8Array([0, 0x3c, 0, 0xc0]) },
    { name: "empty", dtype: "BF16", shape: [0, 4], data: new Uint8Array(0) },
  ], { format: "pt" });
  const st = openSafetensors(p);
  assert.deepEqual([...st.tensors.keys()], ["a", "b", "empty"]);
  assert.deepEqual(st.metadata, { format: "pt" });
  const a = st.tensors.get("a")!;
  assert.equal(a.dtype, "F32");
  assert.deepEqual(a.shape, [2, 3]);
  assert.equal(a.nbytes, 24);
  assert.deepEqual([...new Float32Array(st.read("a").buffer)], [1, 2, 3, 4, 5, 6]);
  assert.deepEqual([...st.read("b")], [0, 0x3c, 0, 0xc0]);
  assert.equal(st.read("empty").length, 0);
  assert.throws(() => st.read("nope"), /tensor nope/);
  st.close();
});

test("safetensors: sharded index reads each tensor from its shard", () => {
  const dir = tmp();
  writeSafetensors(join(dir, "model-00001-of-00002.safetensors"), [{ name: "x", dtype: "F32", shape: [2], data: f32(1, 2) }]);
  writeSafetensors(join(dir, "model-00002-of-00002.safetensors"), [
    { name: "y", dtype: "F32", shape: [1], data: f32(3) },
    { name: "z", dtype: "F32", shape: [1], data: f32(4) },
  ]);
  const index = { metadata: {}, weight_map: { x: "model-00001-of-00002.safetensors", y: "model-00002-of-00002.safetensors", z: "model-00002-of-00002.safetensors" } };
  writeFileSync(join(dir, "model.safetensors.index.json"), JSON.stringify(index));
  for (const st of [openSafetensorsIndex(join(dir, "model.safetensors.index.json")), openSafetensorsDirectory(dir)]) {
    assert.deepEqual([...st.tensors.keys()].sort(), ["x", "y", "z"]);
    assert.deepEqual([...new Float32Array(st.read("x").buffer)], [1, 2]);
    assert.deepEqual([...new Float32Array(st.read("z").buffer)], [4]);
    assert.match(st.tensors.get("y")!.file, /00002/);
    st.close();
  }
  // an index that maps a tensor to a shard without it
  writeFileSync(join(dir, "model.safetensors.index.json"), JSON.stringify({ weight_map: { ...index.weight_map, w: "model-00001-of-00002.safetensors" } }));
  assert.throws(() => openSafetensorsDirectory(dir), (e: unknown) => e instanceof ModelFormatError && /tensor w/.test(e.message));
  writeFileSync(join(dir, "model.safetensors.index.json"), JSON.stringify({ weight_map: { x: "missing.safetensors" } }));
  assert.throws(() => openSafetensorsDirectory(dir), (e: unknown) => e instanceof FileAccessError && /missing\.safetensors/.test(e.message));
});

test("safetensors: several files without an index are merged; none is an error naming the directory", () => {
  const dir = tmp();
  assert.throws(() => openSafetensorsDirectory(dir), (e: unknown) => e instanceof ModelFormatError && e.message.includes(dir));
  writeSafetensors(join(dir, "a.safetensors"), [{ name: "x", dtype: "F32", shape: [1], data: f32(1) }]);
  writeSafetensors(join(dir, "b.safetensors"), [{ name: "y", dtype: "F32", shape: [1], data: f32(2) }]);
  const st = openSafetensorsDirectory(dir);
  assert.deepEqual([...st.tensors.keys()].sort(), ["x", "y"]);
  st.close();
});

test("safetensors: corrupt files give typed errors naming the problem", () => {
  const dir = tmp();
  const good = serializeSafetensors([{ name: "w", dtype: "F32", shape: [4], data: f32(1, 2, 3, 4) }]);
  const truncated = join(dir, "t.safetensors");
  writeFileSync(truncated, good.subarray(0, good.length - 3));
  assert.throws(() => openSafetensors(truncated), (e: unknown) => e instanceof ModelFormatError && /tensor w/.test(e.message) && /past the end/.test(e.message));

  writeFileSync(truncated, good.subarray(0, 5));
  assert.throws(() => openSafetensors(truncated), ModelFormatError);

  const entry = { dtype: "F32", shape: [4], data_offsets: [0, 16] };
  assert.throws(() => openSafetensors(rawFile(dir, { w: entry }, 16, 1_000_000n)), (e: unknown) => e instanceof ModelFormatError && /header length 1000000 runs past the end/.test(e.message));
  assert.throws(() => openSafetensors(rawFile(dir, { w: { ...entry, data_offsets: [0, 32] } }, 16)), (e: unknown) => e instanceof ModelFormatError && /tensor w/.test(e.message));
  assert.throws(() => openSafetensors(rawFile(dir, { w: { ...entry, shape: [3] } }, 16)), (e: unknown) => e instanceof ModelFormatError && /tensor w: shape \[3\] F32 needs 12 bytes/.test(e.message));
  assert.throws(() => openSafetensors(rawFile(dir, { w: { ...entry, data_offsets: [8, 4] } }, 16)), (e: unknown) => e instanceof ModelFormatError && /tensor w/.test(e.message));
  assert.throws(() => openSafetensors(rawFile(dir, { w: { ...entry, dtype: "I64", shape: [2] } }, 16)), (e: unknown) => e instanceof UnsupportedError && /tensor w has dtype I64/.test(e.message));
  assert.throws(() => openSafetensors(rawFile(dir, { w: { ...entry, shape: [-4] } }, 16)), (e: unknown) => e instanceof ModelFormatError && /tensor w/.test(e.message));
  const p = join(dir, "j.safetensors");
  const bad = new Uint8Array(8 + 5);
  new DataView(bad.buffer).setBigUint64(0, 5n, true);
  bad.set(new TextEncoder().encode("{nope"), 8);
  writeFileSync(p, bad);
  assert.throws(() => openSafetensors(p), (e: unknown) => e instanceof ModelFormatError && /JSON/.test(e.message));
  assert.throws(() => openSafetensors(join(dir, "absent.safetensors")), FileAccessError);
});
