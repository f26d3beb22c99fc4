import { test } from "node:test";
import assert from "node:assert/strict";
import { closeSync, mkdtempSync, openSync, readSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { FileAccessError } from "../errors.js";
import { GGUFValueType, type FileMapper } from "../formats/model-file.js";
import { openGGUF } from "../formats/gguf/reader.js";
import { writeGGUF, type GGUFTensorInput } from "../formats/gguf/writer.js";
import { GGMLType } from "../formats/quant/types.js";
import { ModelWeights } from "./weights.js";

const dir = mkdtempSync(join(tmpdir(), "moira-weights-"));
process.on("exit", () => rmSync(dir, { recursive: true, force: true }));

function f32(n: number, seed: number): Uint8Array {
  const a = new Float32Array(n);
  for (let i = 0; i < n; i++) a[i] = Math.sin(seed * 1000 + i);
  return new Uint8Array(a.buffer);
}

// a [4 x 8] matrix, a vector, a 2 MiB tensor nobody declares, then another [2 x 8] matrix
const TENSORS: GGUFTensorInput[] = [
  { name: "a.weight", type: GGMLType.F32, dims: [8, 4], data: f32(32, 1) },
  { name: "b.weight", type: GGMLType.F32, dims: [8], data: f32(8, 2) },
  { name: "unused.weight", type: GGMLType.F32, dims: [1024, 512], data: f32(1024 * 512, 3) },
  { name: "c.weight", type: GGMLType.F32, dims: [8, 2], data: f32(16, 4) },
];
const path = join(dir, "w.gguf");
writeGGUF(path, { metadata: [["general.architecture", { type: GGUFValueType.STRING, value: "test" }]], tensors: TENSORS });

/** A mapper in plain JS (reads the range into a fresh buffer) that records what it was asked. */
function recordingMapper(): { map: FileMapper; calls: Array<[number, number]>; disposed: () => number } {
  const calls: Array<[number, number]> = [];
  let disposed = 0;
  const map: FileMapper = (p, offset, length) => {
    calls.push([offset, length]);
    const buffer = new ArrayBuffer(length);
    const fd = openSync(p, "r");
    try { readSync(fd, new Uint8Array(buffer), 0, length, offset); } finally { closeSync(fd); }
    return { buffer, dispose: () => { disposed++; } };
  };
  return { map, calls, disposed: () => disposed };
}

function declared(): ModelWeights {
  const w = new ModelWeights(openGGUF(path).weights);
  w.meta("a.weight", [8, 4]);
  w.meta("b.weight", [8]);
  w.meta("c.weight", [8, 2]);
  return w;
}

function expectValues(w: ModelWeights): void {
  assert.deepEqual(w.matrix("a.weight", 4, 8).data, TENSORS[0].data);
  assert.deepEqual(new Uint8Array(w.vector("b.weight", 8).buffer), TENSORS[1].data);
  assert.deepEqual(w.matrix("c.weight", 2, 8).data, TENSORS[3].data);
}

test("loadAll maps the declared tensors, neighbours in one mapping, and skips the undeclared", () => {
  const w = declared();
  const r = recordingMapper();
  w.loadAll({ map: r.map });
  // a and b are neighbours; the 2 MiB undeclared tensor starts a second mapping for c
  assert.equal(r.calls.length, 2);
  const mapped = r.calls.reduce((s, [, n]) => s + n, 0);
  assert.ok(mapped < 4096, `mapped ${mapped} bytes: the undeclared tensor was mapped`);
  expectValues(w);
  // nothing is read again: no mapping, and a second loadAll maps nothing
  w.loadAll({ map: r.map });
  assert.equal(r.calls.length, 2);
  w.source.close();
  assert.equal(r.disposed(), 2);
});

test("loadAll without a mapper reads copies; a mapper that fails falls back to reading", () => {
  const plain = declared();
  plain.loadAll();
  expectValues(plain);
  plain.source.close();
  const failing = declared();
  failing.loadAll({ map: () => { throw new FileAccessError("cannot map"); } });
  expectValues(failing);
  failing.source.close();
});

test("loadAll leaves alone a tensor read by rows on demand", () => {
  const w = declared();
  assert.ok(w.readRowsOnDemand("a.weight"));
  const r = recordingMapper();
  w.loadAll({ map: r.map });
  const aAt = w.source.tensors.get("a.weight")!.file!.offset;
  assert.ok(r.calls.length > 0 && r.calls.every(([off]) => off > aAt), JSON.stringify(r.calls));
  const { matrix, index } = w.gatherRows("a.weight", 4, 8, [2]);
  assert.equal(matrix.rows, 1);
  assert.deepEqual(matrix.data, TENSORS[0].data.subarray(2 * 32, 3 * 32));
  assert.deepEqual(index, [0]);
  w.source.close();
});

test("loadAll with the native backend's mapper (populated private mappings)", async (t) => {
  let backend;
  try {
    const { NativeBackend } = await import("../backend/native/index.js");
    backend = NativeBackend.create({ threads: 1 });
  } catch {
    t.skip("native addon not built");
    return;
  }
  try {
    const w = declared();
    w.loadAll({ map: backend.mapFile });
    expectValues(w);
    w.source.close();
    // views of the mappings are emptied when the source closes
    assert.equal(w.matrix("a.weight", 4, 8).data.length, 0);
  } finally {
    backend.dispose();
  }
});

test("loadAllBut reads every declared tensor but the skipped and those read by rows, in one call, and the model then reads nothing", () => {
  const w = declared();
  w.meta("unused.weight", [1024, 512]); // declared here, skipped below
  assert.ok(w.readRowsOnDemand("c.weight"));
  const asked: Array<ReadonlyArray<{ fileOffset: number; length: number }>> = [];
  const fd = openSync(path, "r");
  w.loadAllBut((name) => name === "unused.weight", (ranges) => {
    asked.push(ranges);
    return ranges.map((r) => { const b = new Uint8Array(r.length); readSync(fd, b, 0, r.length, r.fileOffset); return b; });
  });
  closeSync(fd);
  const at = (n: string) => ({ fileOffset: w.source.tensors.get(n)!.file!.offset, length: w.source.tensors.get(n)!.nbytes });
  assert.equal(asked.length, 1);
  assert.deepEqual([...asked[0]!].sort((x, y) => x.fileOffset - y.fileOffset), [at("a.weight"), at("b.weight")]);
  // a and b come from what `read` returned: the source is not asked again
  const source = w.source as { load: typeof w.source.load };
  const load = source.load.bind(w.source);
  const loads: string[] = [];
  source.load = (name, o) => { loads.push(name); return load(name, o); };
  assert.deepEqual(w.matrix("a.weight", 4, 8).data, TENSORS[0].data);
  assert.deepEqual(new Uint8Array(w.vector("b.weight", 8).buffer), TENSORS[1].data);
  assert.deepEqual(loads, []);
  w.source.close();
});
