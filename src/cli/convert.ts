/** `moira convert`: a Hugging Face checkpoint directory → a GGUF file (as llama.cpp's converter would write it). */
import type { Command } from "commander";
import { convertHFToGGUF } from "../formats/hf/index.js";
import { InvalidArgumentError } from "../errors.js";
import { statSync } from "node:fs";

export function registerConvertCommand(program: Command): void {
  program.command("convert")
    .description("convert a Hugging Face model directory (config.json + *.safetensors) to GGUF")
    .requiredOption("-m, --model <dir>", "Hugging Face model directory")
    .requiredOption("-o, --out <file>", "output .gguf file")
    .option("--mla-layout <layout>", "DeepSeek-V2 attention tensors: kv_b (one attn_kv_b) or split (attn_k_b + attn_v_b, newer llama.cpp)", "kv_b")
    .action((o) => {
      let isDir = false;
      try { isDir = statSync(o.model).isDirectory(); } catch { /* reported below */ }
      if (!isDir) throw new InvalidArgumentError(`--model ${o.model} is not a directory: convert takes a Hugging Face checkpoint directory`);
      if (o.mlaLayout !== "kv_b" && o.mlaLayout !== "split") throw new InvalidArgumentError(`--mla-layout must be kv_b or split, got ${o.mlaLayout}`);
      const r = convertHFToGGUF(o.model, o.out, { mlaLayout: o.mlaLayout });
      for (const note of r.notes) process.stderr.write(`${note}\n`);
      process.stderr.write(`wrote ${o.out}${r.tokenizer ? ` (tokenizer: ${r.tokenizer})` : " (no tokenizer)"}\n`);
    });
}
