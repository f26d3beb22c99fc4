/**
 * `moira repack`: a copy of a GGUF model with its Q4_K matrices stored as Q4_K_R16 panels.
 *  - exactly the repackable tensors change type (Q4_K with rows in 16s and columns in 256s, never
 *    the token embeddings), and their bytes are the addon's re-lay of the original's, as many; the
 *    metadata gains the layout's name, without which (or with another) the copy is refused;
 *  - the native backend's logits from the copy are the original's, bit-identical (the re-laid
 *    kernels give Q4_K's bits): all-resident and under a memory budget (the ExpertStore reading
 *    re-laid experts from the copy); on AVX-512 only;
 *  - where the type is not computed (the ref backend; the native one off AVX-512, where only a slow
 *    plain-C path exists) the copy is refused naming the tensor and what to do, as do
 *    quantize-experts, a copy over its own input and a model with nothing to re-lay.
 */
import { test, after } from "node:test";
import assert from "node:assert/strict";
import { mkdtempSync, readFileSync, rmSync } from "node:fs";
import { spawnSync } from "node:child_process";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { NativeBackend, loadNativeAddon } from "../src/backend/native/index.js";
import { RefBackend } from "../src/backend/ref/ref-backend.js";
import { GGMLType } from "../src/formats/quant/types.js";
import { argmax } from "../src/engine/sampler.js";
import { makeModel } from "../src/tools/make-model/index.js";
import { repackModel } from "../src/tools/repack.js";
import { Model } from "../src/model/model.js";
import { Session } from "../src/engine/session.js";
import { readGGUF } from "../src/formats/gguf/reader.js";
import { writeLowbitSidecar } from "../src/offload/lowbit.js";
import { UnsupportedError, InvalidArgumentError, ModelFormatError } from "../src/errors.js";
import { writeGGUF } from "../src/formats/gguf/writer.js";
import { GGUFValueType } from "../src/formats/model-file.js";
import { RELAID_LAYOUT_KEY } from "../src/formats/quant/types.js";

const REPO_ROOT = join(import.meta.dirname, "..");
const addon = loadNativeAddon();
const dir = mkdtempSync(join(tmpdir(), "moira-repack-"));
after(() => rmSync(dir, { recursive: true, force: true }));

const src = join(dir, "tiny-q4k.gguf"), copy = join(dir, "tiny-q4k.moira.gguf");
const ready = (async () => {
  await makeModel({ out: src, preset: "tiny-olmoe", type: "Q4_K", layers: 2, experts: 16, topK: 4, seed: 5 });
  return repackModel(src, copy);
})();

test("repack re-lays exactly the Q4_K matrices with whole panels, the embeddings aside, byte for byte", async () => {
  const r = await ready;
  const a = readGGUF(src), b = readGGUF(copy), abytes = readFileSync(src), bbytes = readFileSync(copy);
  assert.deepEqual([...b.tensors.keys()], [...a.tensors.keys()]);
  assert.deepEqual([...b.metadata.keys()], [...a.metadata.keys(), RELAID_LAYOUT_KEY]);
  let relaid = 0;
  for (const [name, t] of a.tensors) {
    const u = b.tensors.get(name)!;
    assert.deepEqual(u.dims, t.dims, name);
    const data = new Uint8Array(abytes.subarray(t.file!.offset, t.file!.offset + t.nbytes));
    const got = new Uint8Array(bbytes.subarray(u.file!.offset, u.file!.offset + u.nbytes));
    const whole = t.type === GGMLType.Q4_K && name !== "token_embd.weight" && t.dims[0]! % 256 === 0 && t.dims[1]! % 16 === 0;
    if (whole) {
      relaid++;
      assert.equal(u.type, GGMLType.Q4_K_R16, name);
      assert.equal(u.nbytes, t.nbytes, `${name}: as large as the original`);
      const rows = t.dims.slice(1).reduce((x, y) => x * y, 1);
      assert.deepEqual(got, new Uint8Array(addon.relayoutQ4K(data, rows, t.dims[0]!)), `${name}: the addon's re-lay`);
    } else {
      assert.equal(u.type, t.type, name);
      assert.deepEqual(got, data, `${name}: copied as it is`);
    }
  }
  assert.ok(relaid >= 10, `${relaid} tensors re-laid: attention, experts and head`);
  assert.equal(r.relaid, relaid);
  assert.equal(b.tensors.get("token_embd.weight")!.type, GGMLType.Q4_K);
  assert.equal(b.tensors.get("blk.0.ffn_gate_exps.weight")!.type, GGMLType.Q4_K_R16);
});

test("the copy's logits are the original's: all resident and under a memory budget", async () => {
  await ready;
  const run = (path: string) => {
    const model = Model.open(path);
    const s = new Session(model, { backend: NativeBackend.create(), contextLength: 64 });
    const logits: Float32Array[] = [s.prefill([5, 17, 99, 3, 250, 41, 7])];
    for (let i = 0; i < 5; i++) logits.push(s.decodeStep(argmax(logits[logits.length - 1])));
    return logits;
  };
  if (addon.isa() !== "avx512") {
    assert.throws(() => run(copy), /native backend does not compute here: such a copy is for the native backend on a CPU with AVX-512/);
    return;
  }
  const a = run(src), b = run(copy);
  b.forEach((l, i) => assert.deepEqual(l, a[i], `forward ${i}: bit-identical`));
  // the ExpertStore reads the re-laid experts from the copy: the CLI's greedy text is the same
  const cli = (path: string) => {
    const r = spawnSync(process.execPath, [join(REPO_ROOT, "bin", "moira.js"), "run", "-m", path, "-p", "the cat sat", "-n", "12",
      "--temperature", "0", "--memory-budget", "8MiB", "--stats"], { encoding: "utf8" });
    assert.equal(r.status, 0, r.stderr);
    assert.match(r.stderr, /read: [1-9][0-9.]* MiB/, "experts were read from the file");
    return r.stdout;
  };
  if (addon.isa() === "avx512") assert.equal(cli(copy), cli(src));
});

test("what cannot use the copy says so: the ref backend, quantize-experts, bad outputs, nothing to re-lay", async () => {
  await ready;
  assert.throws(() => new Session(Model.open(copy), { backend: new RefBackend(), contextLength: 16 }),
    (e: Error) => e instanceof UnsupportedError && /Q4_K_R16.*ref backend does not compute here.*use the model file it was re-laid from/.test(e.message));
  // the native backend with AVX2 kernels (the ISA this CPU falls back to) refuses it too
  const isa = addon.isa();
  if (addon.supportedIsas().includes("avx2")) {
    try {
      addon.setIsa("avx2");
      assert.throws(() => new Session(Model.open(copy), { backend: NativeBackend.create(), contextLength: 16 }),
        (e: Error) => e instanceof UnsupportedError && /native backend does not compute here: such a copy is for the native backend on a CPU with AVX-512/.test(e.message));
    } finally {
      addon.setIsa(isa);
    }
  }
  assert.throws(() => writeLowbitSidecar(Model.open(copy), "Q2_K", join(dir, "side.gguf")),
    (e: Error) => e instanceof UnsupportedError && /re-laid \(Q4_K_R16.*model file it was re-laid from/.test(e.message));
  assert.throws(() => repackModel(src, src), (e: Error) => e instanceof InvalidArgumentError && /is the input model/.test(e.message));
  // re-laid tensors without this moira's layout name: another layout, refused at open
  const g = readGGUF(copy), bytes = readFileSync(copy);
  const tensors = [...g.tensors.values()].map((t) => ({ name: t.name, type: t.type, dims: [...t.dims], data: bytes.subarray(t.file!.offset, t.file!.offset + t.nbytes) }));
  for (const value of [undefined, "Q4_K_R16/1"]) {
    const md = new Map(g.metadata);
    if (value === undefined) md.delete(RELAID_LAYOUT_KEY);
    else md.set(RELAID_LAYOUT_KEY, { type: GGUFValueType.STRING, value });
    const other = join(dir, "other-layout.gguf");
    writeGGUF(other, { metadata: md, tensors });
    assert.throws(() => Model.open(other), (e: Error) => e instanceof ModelFormatError && /has type Q4_K_R16, but moira\.relaid_layout is .*run moira repack again/.test(e.message));
  }
  const q8 = join(dir, "tiny-q8.gguf");
  await makeModel({ out: q8, preset: "tiny-olmoe", type: "Q8_0", layers: 1, experts: 16, topK: 4, seed: 6 });
  assert.throws(() => repackModel(q8, join(dir, "q8.moira.gguf")), (e: Error) => e instanceof UnsupportedError && /nothing to re-lay/.test(e.message));
});
