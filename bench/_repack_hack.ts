import { openSync, readSync, closeSync } from "node:fs";
import { readGGUF } from "../src/formats/gguf/reader.js";
import { writeGGUF, type GGUFTensorInput } from "../src/formats/gguf/writer.js";
import { loadNativeAddon } from "../src/backend/native/addon.js";
import { GGMLType } from "../src/formats/quant/types.js";
const [src, out] = process.argv.slice(2) as [string, string];
const f = readGGUF(src); const addon = loadNativeAddon(); const fd = openSync(src, "r");
const read = (off: number, n: number) => { const b = new Uint8Array(n); let h = 0; while (h < n) h += readSync(fd, b, h, Math.min(n - h, 1 << 30), off + h); return b; };
const tensors: GGUFTensorInput[] = [...f.tensors.values()].map((t) => {
  const cols = t.dims[0]!, rows = t.dims.slice(1).reduce((a, b) => a * b, 1), perExpert = t.dims[1] ?? 1;
  const ok = t.type === GGMLType.Q4_K && t.name !== "token_embd.weight" && cols % 256 === 0 && perExpert % 16 === 0;
  return { name: t.name, type: ok ? GGMLType.Q4_K_R16 : t.type, dims: t.dims,
    data: () => { const b = read(t.file!.offset, t.nbytes); return ok ? new Uint8Array(addon.relayoutQ4K(b, rows, cols)) : b; } };
});
const t0 = performance.now();
writeGGUF(out, { metadata: f.metadata, tensors, alignment: f.alignment });
closeSync(fd);
console.log(`wrote ${out} in ${((performance.now() - t0) / 1000).toFixed(1)} s; ${tensors.filter((t) => t.type === GGMLType.Q4_K_R16).length} tensors re-laid`);
