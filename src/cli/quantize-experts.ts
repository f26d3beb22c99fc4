/** `moira quantize-experts MODEL --type Q2_K --out SIDE.gguf`: low-bit copies of the experts for --lowbit. */
import type { Command } from "commander";
import { Model } from "../model/model.js";
import { writeLowbitSidecar, LOWBIT_TYPES } from "../offload/lowbit.js";
import { withByteProgress } from "./common.js";
import { typeName } from "../formats/quant/types.js";

export function registerQuantizeExpertsCommand(program: Command): void {
  program.command("quantize-experts")
    .description("write low-bit copies of a model's experts (a sidecar GGUF for --lowbit)")
    .argument("<model>", "GGUF model file")
    .option("--type <type>", `low-bit type: ${LOWBIT_TYPES.map(typeName).join(", ")}`, "Q2_K")
    .requiredOption("-o, --out <file>", "sidecar output path (.gguf)")
    .action((path: string, o: { type: string; out: string }) => {
      const model = Model.open(path);
      try {
        const t0 = performance.now();
        const r = withByteProgress("quantize-experts", (update) => writeLowbitSidecar(model, o.type, o.out, update));
        process.stderr.write(`wrote ${r.path}: ${r.type} experts, ${(r.bytes / 2 ** 20).toFixed(1)} MiB, ${(r.expertBytes / 2 ** 10).toFixed(0)} KiB per expert, in ${((performance.now() - t0) / 1000).toFixed(1)} s\n`);
      } finally {
        model.close();
      }
    });
}
