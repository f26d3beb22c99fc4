/**
 * The low-bit sidecar's source fingerprint: a sidecar opens only with the model it was written
 * from (a copy of that model elsewhere too), never with another model of the same shape and file
 * size, nor when it has no fingerprint.
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import { copyFileSync, mkdtempSync, readFileSync, rmSync, statSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { makeModel } from "../tools/make-model/index.js";
import { Model } from "../model/model.js";
import { readGGUF } from "../formats/gguf/reader.js";
import { writeGGUF } from "../formats/gguf/writer.js";
import { ModelFormatError } from "../errors.js";
import { openLowbitSidecar, sourceFingerprint, writeLowbitSidecar } from "./lowbit.js";

const dir = mkdtempSync(join(tmpdir(), "moira-lowbit-"));
process.on("exit", () => rmSync(dir, { recursive: true, force: true }));

function withModel<T>(path: string, fn: (m: Model) => T): T {
  const m = Model.open(path);
  try { return fn(m); } finally { m.close(); }
}

test("a sidecar opens with its own model (or a copy), and is refused for another model of the same size and for a missing fingerprint", async () => {
  const opts = { preset: "tiny-qwen2moe", type: "Q8_0", layers: 2, experts: 4, topK: 2 } as const;
  const a = join(dir, "a.gguf"), b = join(dir, "b.gguf");
  await makeModel({ ...opts, out: a, seed: 1 });
  await makeModel({ ...opts, out: b, seed: 2 });
  assert.equal(statSync(a).size, statSync(b).size, "the two models have the same file size");
  const side = join(dir, "a.q4.gguf");
  withModel(a, (m) => writeLowbitSidecar(m, "Q4_0", side));

  const fa = withModel(a, sourceFingerprint), fb = withModel(b, sourceFingerprint);
  assert.match(fa, /^[0-9a-f]{64}$/);
  assert.notEqual(fa, fb);
  assert.equal(readGGUF(side).metadata.get("moira.lowbit.source_fingerprint")?.value, fa);

  // the model, and a byte copy of it under another name: accepted
  const copy = join(dir, "copy-of-a.gguf");
  copyFileSync(a, copy);
  for (const p of [a, copy]) withModel(p, (m) => assert.ok(openLowbitSidecar(m, side).tensors.size > 0));

  // another model of the same shape and size
  withModel(b, (m) => assert.throws(() => openLowbitSidecar(m, side),
    (e: unknown) => e instanceof ModelFormatError && /another model/.test((e as Error).message) && /quantize-experts/.test((e as Error).message)));

  // the same sidecar without the fingerprint key (as moira wrote them before): refused, for its own model too
  const g = readGGUF(side);
  const bytes = readFileSync(side);
  const md = new Map(g.metadata);
  md.delete("moira.lowbit.source_fingerprint");
  const bare = join(dir, "a.q4.bare.gguf");
  writeGGUF(bare, { metadata: md, tensors: [...g.tensors.values()].map((t) => ({ name: t.name, type: t.type, dims: [...t.dims], data: bytes.subarray(t.file!.offset, t.file!.offset + t.nbytes) })) });
  withModel(a, (m) => assert.throws(() => openLowbitSidecar(m, bare),
    (e: unknown) => e instanceof ModelFormatError && /no moira\.lowbit\.source_fingerprint/.test((e as Error).message) && /quantize-experts/.test((e as Error).message)));
});
