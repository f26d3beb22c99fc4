/**
 * The native addon's I/O, which has no counterpart in the reference backend: aligned allocation
 * (alignment, use, dispose detaching the buffer), file mapping (the bytes, ranges, populate,
 * dispose detaching views, the errors for ranges past the end and missing files) and DirectReader
 * (slices at unaligned and aligned offsets into unaligned and aligned buffers, waitAny / wait /
 * poll, short reads as a ReadError naming the offsets, use after close, file identity), in the
 * system temp dir and in the build dir (which may be another file system).
 */
import { test, describe, after } from "node:test";
import assert from "node:assert/strict";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { loadNativeAddon, DirectReader, MappedFile, ReadError, allocAligned, fileIdentity, sameFile } from "../src/backend/native/index.js";
import { REPO_ROOT } from "./shared.js";

const addon = loadNativeAddon();

describe("native aligned allocation", () => {
  test("alignment, use, dispose detaches", () => {
    for (const align of [64, 4096]) {
      const b = allocAligned(10000, align);
      assert.equal(b.byteLength, 10000);
      const u = new Uint8Array(b.buffer);
      u.fill(7);
      assert.equal(u[9999], 7);
      b.dispose();
      assert.equal(b.buffer.byteLength, 0);
      b.dispose();  // idempotent
    }
    assert.throws(() => addon.freeAligned(new ArrayBuffer(8)), /not a buffer from allocAligned/);
  });
});

describe("native file mapping", () => {
  test("maps the bytes, GGUF tensors as views, dispose detaches", () => {
    const dir = mkdtempSync(join(tmpdir(), "moira-map-"));
    try {
      const path = join(dir, "f.bin");
      const bytes = new Uint8Array(10000).map((_, i) => (i * 7) & 255);
      writeFileSync(path, bytes);
      for (const populate of [false, true]) {
        for (const [offset, length] of [[0, 10000], [5000, 4999], [4096, 1]]) {
          const m = MappedFile.open(path, { offset, length }, { populate });
          assert.deepEqual(new Uint8Array(m.buffer), bytes.subarray(offset, offset + length));
          const view = new Uint8Array(m.buffer, 0, 1);
          m.dispose();
          assert.equal(view.length, 0);
          m.dispose();
        }
      }
      assert.throws(() => MappedFile.open(path, { offset: 9000, length: 1001 }), /past its end/);
      assert.throws(() => MappedFile.open(join(dir, "missing"), { offset: 0, length: 1 }), /cannot open/);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});

describe("native DirectReader", () => {
  const dirs = [mkdtempSync(join(tmpdir(), "moira-dr-")), mkdtempSync(join(REPO_ROOT, "build", "moira-dr-"))];
  after(() => { for (const d of dirs) rmSync(d, { recursive: true, force: true }); });
  const size = 3 * 4096 * 4 + 123;
  const bytes = new Uint8Array(size);
  for (let i = 0; i < size; i++) bytes[i] = (i * 31 + (i >>> 8)) & 0xff;

  for (const dir of dirs) {
    test(`reads slices (${dir.startsWith(tmpdir()) ? "tmpdir" : "build dir"})`, () => {
      const path = join(dir, "data.bin");
      writeFileSync(path, bytes);
      const rd = DirectReader.open(path);
      try {
        assert.equal(rd.size, size);
        const slices: [number, number][] = [[0, 4096], [1, 10], [4095, 2], [5000, 20000], [4096, 8192], [size - 100, 100], [0, size], [777, 0]];
        // unaligned destinations (offset 3 into a plain Uint8Array)
        const dests = slices.map(([, len]) => new Uint8Array(len + 8));
        const tickets = slices.map(([off, len], i) => rd.read(off, len, dests[i], 3));
        const pending = new Set(tickets);
        while (pending.size > 0) {
          const t = rd.waitAny([...pending]);
          assert.ok(t !== undefined);
          pending.delete(t);
        }
        slices.forEach(([off, len], i) => {
          assert.deepEqual(dests[i].subarray(3, 3 + len), bytes.subarray(off, off + len), `slice ${off}+${len}`);
        });
        // aligned fast path into an aligned buffer
        const ab = allocAligned(8192, 4096);
        const t = rd.read(4096, 8192, ab.buffer, 0);
        rd.wait(t);
        assert.deepEqual(new Uint8Array(ab.buffer), bytes.subarray(4096, 4096 + 8192));
        ab.dispose();
        // polling until done
        const d = new Uint8Array(50);
        const tp = rd.read(12345, 50, d);
        while (!rd.poll(tp)) { /* spin */ }
        assert.deepEqual(d, bytes.subarray(12345, 12395));
        // past the end: a short read is an error that names the offsets
        const tt = rd.read(size - 10, 20, new Uint8Array(20));
        assert.throws(() => rd.wait(tt), (e: unknown) => e instanceof ReadError && /file ends at byte/.test((e as Error).message) && e.message.includes(String(size - 10)));
        assert.throws(() => rd.read(0, 100, new Uint8Array(10)), /outside the buffer/);
      } finally {
        rd.close();
      }
      assert.throws(() => rd.read(0, 1, new Uint8Array(1)), /closed/);
      // identity changes when the file is replaced
      const id1 = fileIdentity(path);
      assert.equal(id1.size, size);
      assert.ok(sameFile(id1, fileIdentity(path)));
      rmSync(path);
      writeFileSync(path, bytes.subarray(0, 100));
      assert.ok(!sameFile(id1, fileIdentity(path)));
    });
  }
  test("missing file", () => {
    assert.throws(() => DirectReader.open(join(dirs[0], "nope")), /cannot open/);
  });
});
