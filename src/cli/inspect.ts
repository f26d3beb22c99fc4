/** `moira inspect`: what a checkpoint is: architecture, shapes, parameter counts, bytes by type. */
import type { Command } from "commander";
import { Model } from "../model/model.js";
import { inNextnBlock } from "../model/config.js";
import { typeName } from "../formats/quant/types.js";

export interface ModelSummary {
  path: string;
  format: string;
  architecture: string;
  description: string;
  layers: number;
  /** multi-token-prediction blocks stored after `layers`, never run */
  nextnLayers: number;
  dModel: number;
  heads: number;
  kvHeads: number;
  vocabSize: number;
  contextLength: number;
  experts: number;
  expertsPerToken: number;
  expertFf: number;
  sharedFf: number;
  leadingDenseLayers: number;
  params: { total: number; activePerToken: number; experts: number };
  bytes: { total: number; experts: number; nonExpert: number; perExpert: number; byType: Record<string, number> };
}

export function summarize(model: Model): ModelSummary {
  const c = model.config;
  let total = 0, expertParams = 0, bytes = 0, expertBytes = 0;
  // multi-token-prediction blocks (after the nLayer ones) are in the file but never run
  let unrunParams = 0, unrunExpertParams = 0;
  const byType: Record<string, number> = {};
  for (const t of model.file.weights.tensors.values()) {
    const n = t.dims.reduce((a, b) => a * b, 1);
    const unrun = inNextnBlock(c, t.name);
    total += n;
    bytes += t.nbytes;
    if (unrun) unrunParams += n;
    const tn = typeName(t.type);
    byType[tn] = (byType[tn] ?? 0) + t.nbytes;
    if (/_exps\./.test(t.name)) {
      expertParams += n; expertBytes += t.nbytes;
      if (unrun) unrunExpertParams += n;
    }
  }
  const moeLayers = c.nLayer + c.nextnLayers - c.leadingDense;
  const runExperts = expertParams - unrunExpertParams;
  return {
    path: model.file.path,
    format: model.file.format,
    architecture: c.arch,
    description: model.arch.description,
    layers: c.nLayer,
    nextnLayers: c.nextnLayers,
    dModel: c.dModel,
    heads: c.nHead,
    kvHeads: c.nKvHead,
    vocabSize: c.vocabSize,
    contextLength: c.contextLength,
    experts: c.nExpert,
    expertsPerToken: c.nExpertUsed,
    expertFf: c.expertFf,
    sharedFf: c.sharedFf,
    leadingDenseLayers: c.leadingDense,
    params: { total, activePerToken: Math.round(total - unrunParams - runExperts + (runExperts * c.nExpertUsed) / c.nExpert), experts: expertParams },
    bytes: { total: bytes, experts: expertBytes, nonExpert: bytes - expertBytes, perExpert: moeLayers > 0 ? expertBytes / (moeLayers * c.nExpert) : 0, byType },
  };
}

function human(n: number, unit = ""): string {
  const k = unit === "B" ? 1024 : 1000;
  const s = unit === "B" ? ["B", "KiB", "MiB", "GiB", "TiB"] : ["", "K", "M", "B", "T"];
  let i = 0;
  while (n >= k && i < s.length - 1) { n /= k; i++; }
  return `${n.toFixed(i === 0 ? 0 : 2)}${unit === "B" ? " " : ""}${s[i]}`;
}

export function registerInspectCommand(program: Command): void {
  program.command("inspect")
    .description("show architecture, shapes, parameter counts and bytes per tensor type")
    .requiredOption("-m, --model <path>", "GGUF file or Hugging Face model directory")
    .option("--json", "print a JSON object")
    .action((o) => {
      const model = Model.open(o.model);
      try {
        const s = summarize(model);
        if (o.json) { process.stdout.write(JSON.stringify(s, null, 2) + "\n"); return; }
        const lines = [
          `model:        ${s.path} (${s.format})`,
          `architecture: ${s.architecture} — ${s.description}`,
          `layers:       ${s.layers} (${s.leadingDenseLayers} dense${s.nextnLayers ? `; ${s.nextnLayers} multi-token-prediction stored, not run` : ""}), d_model ${s.dModel}, heads ${s.heads} (kv ${s.kvHeads}), vocab ${s.vocabSize}, context ${s.contextLength}`,
          `experts:      ${s.experts}, top-${s.expertsPerToken}, expert d_ff ${s.expertFf}${s.sharedFf ? `, shared d_ff ${s.sharedFf}` : ""}`,
          `parameters:   ${human(s.params.total)} total, ${human(s.params.activePerToken)} active per token, ${human(s.params.experts)} in experts`,
          `bytes:        ${human(s.bytes.total, "B")} total, ${human(s.bytes.experts, "B")} experts (${human(s.bytes.perExpert, "B")} each), ${human(s.bytes.nonExpert, "B")} other`,
          `by type:      ${Object.entries(s.bytes.byType).map(([t, b]) => `${t} ${human(b, "B")}`).join(", ")}`,
        ];
        process.stdout.write(lines.join("\n") + "\n");
      } finally {
        model.close();
      }
    });
}
