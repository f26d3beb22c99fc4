/** `moira run` (generate text) and `moira logits` (raw logits per position). */
import { readFileSync } from "node:fs";
import type { Command } from "commander";
import { Model } from "../model/model.js";
import { createBackend } from "../backend/index.js";
import { Session } from "../engine/session.js";
import { generate, type GenerationStats } from "../engine/generate.js";
import { StopStrings } from "../engine/stop-strings.js";
import { loadTokenizer, applyChatTemplate } from "../engine/tokenizer/index.js";
import { addBackendOptions, addSamplingOptions, parseIntOption, parseTokenList, samplerOptions, weightLayoutFor } from "./common.js";
import { FileAccessError, InvalidArgumentError } from "../errors.js";
// offload: expert offloading flags and provider (src/cli/offload-options.ts)
import { addOffloadOptions, createExpertProvider } from "./offload-options.js";

/** The prompt of `run`: -p's text or the contents of -f's file (standard input for "-"), exactly one of them. */
function promptText(o: { prompt?: string; file?: string }): string {
  if (o.prompt !== undefined && o.file !== undefined) throw new InvalidArgumentError("give the prompt with -p/--prompt or -f/--file, not both");
  if (o.file === undefined) {
    if (o.prompt === undefined) throw new InvalidArgumentError("no prompt: give -p/--prompt TEXT or -f/--file FILE (- for standard input)");
    return o.prompt;
  }
  try {
    return readFileSync(o.file === "-" ? 0 : o.file, "utf8");
  } catch (e) {
    const what = o.file === "-" ? "standard input" : `prompt file ${o.file}`;
    throw new FileAccessError(`cannot read ${what}: ${(e as NodeJS.ErrnoException).code === "ENOENT" ? "no such file" : (e as Error).message}`);
  }
}

export function registerRunCommands(program: Command): void {
  // offload: --memory-budget, --policy, --predictor, --lowbit*, --trace, --stats
  addOffloadOptions(addBackendOptions(addSamplingOptions(
    program.command("run")
      .description("generate text from a prompt (text to stdout, timings to stderr)")
      .requiredOption("-m, --model <path>", "GGUF file or Hugging Face model directory")
      .option("-p, --prompt <text>", "the prompt")
      .option("-f, --file <path>", "read the prompt from a file (- reads standard input)")
      .option("-n, --max-tokens <n>", "tokens to generate", parseIntOption("--max-tokens", 0), 128)
      .option("--chat", "wrap the prompt in the model's chat template as a user message")
      .option("--stop <text>", "end the text where this string appears, which is not printed (repeat for several)",
        (v: string, all: string[]) => [...all, v], [] as string[])
      .option("--ignore-eos", "generate past end-of-generation tokens, up to --max-tokens")
      .option("--no-bos", "do not add the beginning-of-sequence token"),
    { temperature: 0.8, repeatPenalty: 1 },
  ))).action(async (o) => {
    const text = promptText(o);
    const model = Model.open(o.model);
    const backend = await createBackend(o.backend, { threads: o.threads, weightLayout: weightLayoutFor(o.weightLayout, o.maxTokens) });
    try {
      const tok = loadTokenizer(model.file);
      let prompt: number[];
      if (o.chat) {
        const chat = applyChatTemplate(tok, [{ role: "user", content: text }], { addGenerationPrompt: true });
        prompt = tok.encode(chat, { addBos: false, parseSpecial: true });
        if (o.bos && tok.bosId !== null && tok.addBosDefault && prompt[0] !== tok.bosId) prompt.unshift(tok.bosId);
      } else {
        prompt = tok.encode(text, { addBos: o.bos && tok.addBosDefault });
      }
      if (prompt.length === 0) throw new InvalidArgumentError("the prompt encodes to no tokens");
      // a run knows what it needs: the prompt and --max-tokens (--context, when given, is kept); a
      // budget too small for it is refused by the planner, naming the minimum
      const contextLength = o.context ?? Math.min(model.config.contextLength, prompt.length + o.maxTokens);
      // the last token is sampled and never stored: prompt + n - 1 positions hold n generated tokens
      const fit = contextLength - prompt.length + 1;
      if (fit < 1) {
        throw new InvalidArgumentError(`the prompt is ${prompt.length} tokens, more than the context's ${contextLength} positions` +
          (o.context === undefined ? " (the model's)" : "") + ": shorten the prompt" + (o.context === undefined ? "" : " or raise --context"));
      }
      const maxTokens = Math.min(o.maxTokens, fit);
      if (maxTokens < o.maxTokens) {
        process.stderr.write(`note: the context holds ${contextLength} positions: after a ${prompt.length}-token prompt at most ${maxTokens} tokens (--max-tokens ${o.maxTokens})\n`);
      }
      // offload: an ExpertStore when --memory-budget is given (else all experts resident)
      const offload = createExpertProvider(model, o, backend, { contextLength, maxBatch: prompt.length, kvType: o.kvType });
      try {
      const session = new Session(model, { backend, contextLength, kvType: o.kvType, experts: offload.provider, observer: offload.observer });
      let stats: GenerationStats | undefined;
      const it = generate(session, tok, prompt, {
        maxTokens, ...samplerOptions(o), stopTokens: o.ignoreEos ? [] : undefined, onStats: (x) => { stats = x; },
      });
      // text is printed once no stop string can still be forming in it
      const out = new StopStrings(o.stop);
      let printed = 0, stopped = false;
      for (let r = await it.next(); !r.done; r = await it.next()) {
        const step = out.add(r.value.text);
        process.stdout.write(out.text.slice(printed, step.final));
        printed = step.final;
        if (step.stopped) {
          stopped = true;
          await it.return(undefined as never);
          break;
        }
      }
      process.stdout.write(out.text.slice(printed) + "\n");
      const s = stats!;
      process.stderr.write(
        `prefill: ${s.promptTokens} tokens in ${s.prefillMs.toFixed(1)} ms (${s.prefillTokensPerSecond.toFixed(2)} tok/s)\n` +
        `decode: ${s.generatedTokens} tokens in ${s.decodeMs.toFixed(1)} ms (${s.decodeTokensPerSecond.toFixed(2)} tok/s), stop: ${stopped ? "stop-string" : s.stopReason === "max-tokens" && maxTokens < o.maxTokens ? "context-full" : s.stopReason}\n` +
        `backend: ${backend.name}\n`,
      );
      // offload: statistics
      if (offload.store && o.stats) process.stderr.write(offload.report({ perLayer: true }) + "\n");
      } finally {
        offload.dispose();
      }
    } finally {
      backend.dispose();
      model.close();
    }
  });

  addBackendOptions(
    program.command("logits")
      .description("print the logits of every position for a list of token ids")
      .requiredOption("-m, --model <path>", "GGUF file or Hugging Face model directory")
      .requiredOption("--tokens <ids>", "comma-separated token ids, e.g. 1,2,3", parseTokenList)
      .option("--json", "print {\"logits\": [[...], ...]} (one row of vocab-size floats per position)"),
    { kvType: "f32" },
  ).action(async (o) => {
    const model = Model.open(o.model);
    const backend = await createBackend(o.backend, { threads: o.threads, weightLayout: weightLayoutFor(o.weightLayout, 0) });
    try {
      const tokens: number[] = o.tokens;
      const session = new Session(model, { backend, contextLength: o.context ?? Math.max(tokens.length, 1), kvType: o.kvType });
      const logits = session.forward(tokens, { allLogits: true });
      const V = model.config.vocabSize;
      const rows: number[][] = [];
      for (let t = 0; t < tokens.length; t++) rows.push(Array.from(logits.subarray(t * V, (t + 1) * V)));
      if (o.json) {
        process.stdout.write(JSON.stringify({ logits: rows }) + "\n");
      } else {
        rows.forEach((row, t) => {
          const best = row.indexOf(Math.max(...row));
          process.stdout.write(`pos ${t} token ${tokens[t]}: argmax ${best} (${row[best].toFixed(4)}) first: ${row.slice(0, 6).map((x) => x.toFixed(4)).join(" ")}\n`);
        });
      }
    } finally {
      backend.dispose();
      model.close();
    }
  });
}
