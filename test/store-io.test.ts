/** The ExpertStore's file reader: whole ranges into memory of their own (the weights every token uses). */
import { test } from "node:test";
import assert from "node:assert/strict";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { FileReader } from "../src/offload/store-io.js";
import { ModelFormatError } from "../src/errors.js";

test("FileReader.readWhole: unaligned ranges, one larger than a read piece, exact bytes; past the end is a clear error", () => {
  const dir = mkdtempSync(join(tmpdir(), "moira-store-io-"));
  try {
    const path = join(dir, "f.bin");
    const bytes = new Uint8Array(20 * 2 ** 20 + 123);
    for (let i = 0; i < bytes.length; i++) bytes[i] = (i * 2654435761) >>> 24;
    writeFileSync(path, bytes);
    const reader = FileReader.open(path, { threads: 4 });
    try {
      const ranges = [{ fileOffset: 5, length: 100 }, { fileOffset: 4097, length: 17 * 2 ** 20 + 3 }, { fileOffset: bytes.length - 10, length: 10 }, { fileOffset: 64, length: 0 }];
      const got = reader.readWhole(ranges);
      assert.equal(got.length, ranges.length);
      ranges.forEach((r, i) => assert.ok(Buffer.from(got[i]!).equals(Buffer.from(bytes.subarray(r.fileOffset, r.fileOffset + r.length))), `range ${i}`));
      assert.throws(() => reader.readWhole([{ fileOffset: bytes.length - 4, length: 8 }]), ModelFormatError);
    } finally {
      reader.close();
    }
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});
