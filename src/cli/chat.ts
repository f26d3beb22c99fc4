/**
 * `moira chat`: an interactive conversation in the terminal, a ChatSession (src/api/chat.ts): each
 * turn prefills only the new message; at the context's end a reply is cut and says so, and the
 * next message starts over from the latest turns (the system prompt kept).
 */
import type { Command } from "commander";
import { createInterface } from "node:readline";
import { Model } from "../model/model.js";
import { createBackend } from "../backend/index.js";
import { loadTokenizer } from "../engine/tokenizer/index.js";
import { Scheduler } from "../engine/scheduler.js";
import { ChatSession } from "../api/chat.js";
import { ContextFullError } from "../errors.js";
import { addBackendOptions, addSamplingOptions, parseIntOption, samplerOptions, weightLayoutFor } from "./common.js";
import { addOffloadOptions, openInteractiveSessions } from "./offload-options.js";

export function registerChatCommand(program: Command): void {
  addOffloadOptions(addBackendOptions(addSamplingOptions(
    program.command("chat")
      .description("chat with the model in the terminal (type /exit or Ctrl-D to quit, /reset to start over)")
      .requiredOption("-m, --model <path>", "GGUF file or Hugging Face model directory")
      .option("--system <text>", "system prompt")
      .option("-n, --max-tokens <n>", "most tokens per reply", parseIntOption("--max-tokens", 1), 512),
    { temperature: 0.7, repeatPenalty: 1.1 },
  ))).action(async (o) => {
    const model = Model.open(o.model);
    const backend = await createBackend(o.backend, { threads: o.threads, weightLayout: weightLayoutFor(o.weightLayout, 0) });
    const tok = loadTokenizer(model.file);
    const { contextLength, offload, sessions: [session] } = openInteractiveSessions(model, o, backend);
    const rl = createInterface({ input: process.stdin, output: process.stdout, terminal: process.stdin.isTTY });
    const chat = new ChatSession({ scheduler: new Scheduler([session], { maxQueue: Infinity }), tokenizer: tok }, {
      system: o.system,
      onNotice: (m) => process.stderr.write(`(${m}; use --context to raise it)\n`),
    });
    const prompt = () => { if (process.stdin.isTTY) process.stdout.write("> "); };
    try {
      prompt();
      // the async iterator buffers lines typed (or piped) while a reply is being generated
      for await (const line of rl) {
        const text = line.trim();
        if (text === "/exit" || text === "/quit") break;
        if (text === "/reset") { chat.reset(); session.reset(); prompt(); continue; }
        if (!text) { prompt(); continue; }
        try {
          const reply = await chat.send(text, { maxTokens: o.maxTokens, ...samplerOptions(o), onText: (t) => process.stdout.write(t) });
          process.stdout.write("\n");
          process.stderr.write(`(${reply.stats.generatedTokens} tokens, ${reply.stats.decodeTokensPerSecond.toFixed(1)} tok/s)\n`);
          if (reply.finishReason === "context") {
            process.stderr.write(`(the reply filled the context of ${contextLength} tokens and was cut there; the next message starts over from the latest turns. /reset starts afresh, --context raises the limit)\n`);
          }
        } catch (e) {
          if (!(e instanceof ContextFullError)) throw e;
          process.stderr.write(`(${e.message})\n`);
        }
        prompt();
      }
    } finally {
      rl.close();
      // the plan, and how the KV cache and the expert cache shared the budget over the conversation
      if (o.stats && offload.store) process.stderr.write(`${offload.report()}\npeak RSS ${process.resourceUsage().maxRSS * 1024} bytes\n`);
      session.dispose();
      offload.dispose();
      backend.dispose();
      model.close();
    }
  });
}
