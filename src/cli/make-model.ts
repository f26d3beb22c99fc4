/**
 * `moira make-model`: write a deterministic random MoE GGUF at a chosen shape.
 *
 *   moira make-model [--arch ARCH] [--preset NAME | shape flags] [--type TYPE] [--seed N]
 *                    --out FILE.gguf [--vocab-from FILE] [--routing-skew S | --routing-from COUNTS.json]
 */
import type { Command } from "commander";
import { makeModel, MAKE_MODEL_ARCHS, PRESETS, type MakeModelOptions, type ShapeOverrides } from "../tools/make-model/index.js";
import { withByteProgress, parseIntOption } from "./common.js";

interface MakeModelFlags extends ShapeOverrides {
  arch?: string;
  preset?: string;
  type?: string;
  seed?: number;
  out: string;
  vocabFrom?: string;
  quiet?: boolean;
  routingSkew?: number;
  routingFrom?: string;
}

export function registerMakeModelCommand(program: Command): void {
  program
    .command("make-model")
    .description("write a deterministic random Mixture-of-Experts GGUF that llama.cpp loads")
    .requiredOption("--out <file>", "output GGUF path")
    .option("--arch <arch>", `architecture: ${MAKE_MODEL_ARCHS.join(", ")} (default llama, or the preset's)`)
    .option("--preset <name>", `named shape: ${Object.keys(PRESETS).join(", ")} (default: tiny for the arch)`)
    .option("--type <type>", "matrix type: F32 F16 BF16 Q8_0 Q4_0 Q4_K Q5_K Q6_K, or MXFP4 (experts; the rest Q8_0) (default F16 for tiny presets, else Q8_0)")
    .option("--seed <n>", "PRNG seed (same flags + seed = same bytes)", parseIntOption("--seed", 0))
    .option("--vocab-from <file>", "copy the tokenizer.* keys of this GGUF (vocab size = its token count)")
    .option("--layers <n>", "transformer blocks", parseIntOption("--layers", 1))
    .option("--d-model <n>", "hidden size", parseIntOption("--d-model", 1))
    .option("--heads <n>", "attention heads", parseIntOption("--heads", 1))
    .option("--kv-heads <n>", "key/value heads", parseIntOption("--kv-heads", 1))
    .option("--experts <n>", "routed experts per layer", parseIntOption("--experts", 1))
    .option("--top-k <n>", "experts per token", parseIntOption("--top-k", 1))
    .option("--d-ff <n>", "hidden size of one expert", parseIntOption("--d-ff", 1))
    .option("--shared-d-ff <n>", "hidden size of the shared expert(s), all together (0: none)", parseIntOption("--shared-d-ff", 0))
    .option("--vocab <n>", "vocabulary size of the built-in vocabulary (padded with unused tokens)", parseIntOption("--vocab", 1))
    .option("--context <n>", "training context length", parseIntOption("--context", 1))
    .option("--nextn-layers <n>", "multi-token-prediction blocks after the --layers ones, stored and never run (glm4moe)", parseIntOption("--nextn-layers", 0))
    .option("--routing-skew <s>", "skewed per-layer expert popularity: Zipf exponent s in (0, 4] (default: off, random routers)", parseFloat)
    .option("--routing-from <file>", "per-layer expert popularity from measured counts (e.g. ../shared/traces/olmoe-routing-stats/olmoe__expert_counts__arxiv.json)")
    .option("--quiet", "no progress bar")
    .action(async (flags: MakeModelFlags) => {
      const { quiet, routingSkew, routingFrom, ...rest } = flags;
      const opts: MakeModelOptions = { ...rest };
      if (routingSkew !== undefined || routingFrom !== undefined) opts.routing = { skew: routingSkew, from: routingFrom };
      const started = Date.now();
      const r = await withByteProgress("make-model", (update) => makeModel({ ...opts, onProgress: quiet ? undefined : update }));
      const s = r.shape;
      process.stdout.write(
        `${r.path}: ${s.arch} ${s.layers} layers${s.nextnLayers ? ` (+${s.nextnLayers} multi-token-prediction)` : ""}, d_model ${s.dModel}, ${s.heads}/${s.kvHeads} heads, ` +
        `${s.experts} experts top-${s.topK}, d_ff ${s.dFf}${s.sharedDFf ? `, shared d_ff ${s.sharedDFf}` : ""}, vocab ${s.vocab}; ` +
        `${r.type}, ${(r.params / 1e9).toFixed(3)}B params, ${(r.bytes / 2 ** 20).toFixed(1)} MiB in ${((Date.now() - started) / 1000).toFixed(1)} s\n`,
      );
    });
}
