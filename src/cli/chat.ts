/**
 * `moira chat`: an interactive conversation in the terminal. Each turn re-renders the chat template
 * and reuses the KV cache for the tokens the new prompt shares with what is already cached, so only
 * the new message is prefilled.
 */
import type { Command } from "commander";
import { createInterface } from "node:readline";
import { Model } from "../model/model.js";
import { createBackend } from "../backend/index.js";
import { generate } from "../engine/generate.js";
import { loadTokenizer, applyChatTemplate } from "../engine/tokenizer/index.js";
import { addBackendOptions, addSamplingOptions, parseIntOption, samplerOptions } from "./common.js";
import { addOffloadOptions, openInteractiveSession } from "./offload-options.js";

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
    const backend = await createBackend(o.backend, { threads: o.threads });
    const tok = loadTokenizer(model.file);
    const { contextLength, offload, session } = openInteractiveSession(model, o, backend);
    const rl = createInterface({ input: process.stdin, output: process.stdout, terminal: process.stdin.isTTY });
    const messages: Array<{ role: string; content: string }> = o.system ? [{ role: "system", content: o.system }] : [];
    let cached: number[] = [];
    const prompt = () => { if (process.stdin.isTTY) process.stdout.write("> "); };
    /** The conversation rendered by the chat template, as token ids (BOS first where the model wants one). */
    const encodeConversation = (): number[] => {
      const rendered = applyChatTemplate(tok, messages, { addGenerationPrompt: true });
      const ids = tok.encode(rendered, { addBos: false, parseSpecial: true });
      if (tok.bosId !== null && tok.addBosDefault && ids[0] !== tok.bosId) ids.unshift(tok.bosId);
      return ids;
    };
    try {
      prompt();
      // the async iterator buffers lines typed (or piped) while a reply is being generated
      for await (const line of rl) {
        const text = line.trim();
        if (text === "/exit" || text === "/quit") break;
        if (text === "/reset") { messages.splice(o.system ? 1 : 0); cached = []; session.reset(); prompt(); continue; }
        if (!text) { prompt(); continue; }
        messages.push({ role: "user", content: text });
        let promptIds = encodeConversation();
        // reuse the cached prefix; prefill only what is new (at least one token, for fresh logits)
        let keep = 0;
        while (keep < cached.length && keep < promptIds.length - 1 && cached[keep] === promptIds[keep]) keep++;
        session.rewind(Math.min(keep, session.position));
        if (session.position + (promptIds.length - keep) + o.maxTokens > contextLength) {
          // start over from the latest turns that fit with a whole reply (the system prompt stays)
          const first = o.system ? 1 : 0;
          while (messages.length - first > 1 && promptIds.length + o.maxTokens > contextLength) {
            messages.splice(first, 2);
            promptIds = encodeConversation();
          }
          process.stderr.write(`(context of ${contextLength} tokens is full: starting over from the latest message${messages.length - first > 1 ? "s" : ""}; use --context to raise it)\n`);
          session.reset();
          keep = 0;
        }
        const it = generate(session, tok, promptIds.slice(keep), { maxTokens: o.maxTokens, ...samplerOptions(o) });
        let reply = "", ids: number[] = [];
        let r = await it.next();
        while (!r.done) {
          process.stdout.write(r.value.text);
          reply += r.value.text;
          if (r.value.token >= 0) ids.push(r.value.token);
          r = await it.next();
        }
        process.stdout.write("\n");
        process.stderr.write(`(${r.value.generatedTokens} tokens, ${r.value.decodeTokensPerSecond.toFixed(1)} tok/s)\n`);
        messages.push({ role: "assistant", content: reply });
        // the cache now holds the prompt and the reply minus its last (unfed) token
        cached = [...promptIds, ...ids].slice(0, session.position);
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
