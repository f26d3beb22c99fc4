/** `moira repack MODEL -o OUT.gguf`: a copy of the model with its Q4_K matrices stored re-laid (tools/repack.ts). */
import type { Command } from "commander";
import { repackModel } from "../tools/repack.js";
import { withByteProgress } from "./common.js";

export function registerRepackCommand(program: Command): void {
  program.command("repack")
    .description("write a copy of a GGUF model with its Q4_K matrices re-laid for moira's AVX-512 kernels (same numbers; llama.cpp cannot read the copy)")
    .argument("<model>", "GGUF model file")
    .requiredOption("-o, --out <file>", "output path (.gguf)")
    .action((path: string, o: { out: string }) => {
      const t0 = performance.now();
      const r = withByteProgress("repack", (update) => repackModel(path, o.out, update));
      process.stderr.write(
        `wrote ${r.path}: ${r.relaid} of ${r.tensors} tensors re-laid (Q4_K -> Q4_K_R16), ${(r.bytes / 2 ** 30).toFixed(2)} GiB, ` +
        `in ${((performance.now() - t0) / 1000).toFixed(1)} s\n`,
      );
      if (r.isa !== "avx512") {
        process.stderr.write(`note: this CPU's best kernels are ${r.isa}: moira runs the copy only on CPUs with AVX-512 (VNNI); use the original here\n`);
      }
    });
}
