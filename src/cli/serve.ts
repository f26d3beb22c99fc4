/** `moira serve`: the OpenAI-compatible HTTP server over one model. */
import type { Command } from "commander";
import { basename } from "node:path";
import { serve } from "@hono/node-server";
import { Model } from "../model/model.js";
import { createBackend } from "../backend/index.js";
import { loadTokenizer } from "../engine/tokenizer/index.js";
import { createApp, DEFAULT_REQUEST_TIMEOUT_S } from "../server/app.js";
import { Scheduler } from "../engine/scheduler.js";
import { addBackendOptions, parseFloatOption, parseIntOption, weightLayoutFor } from "./common.js";
import { InvalidArgumentError } from "../errors.js";
import { addOffloadOptions, openInteractiveSessions } from "./offload-options.js";
import { RoutingCounter } from "../trace/observer.js";
import { ExpertCacheView } from "../server/expert-cache.js";

/** Requests that may wait for a slot by default (beyond those running). */
const DEFAULT_QUEUE_SIZE = 16;
/** Slots (generations decoded together) by default. */
/**
 * Slots when --parallel is not given: 4 with every expert resident (a batch reads each weight once
 * for all its rows: 1.7-2.1x the aggregate decode of one stream at 4-8, bench/batching.ts); 1 under
 * --memory-budget, where a batch's rows want more distinct experts than a step's reads and the
 * cache can serve (make-model routing, cache of half the experts: 0.65-0.96x of one stream at 2-8).
 */
const DEFAULT_PARALLEL = { resident: 4, offloaded: 1 } as const;

function positiveSeconds(v: string): number {
  const n = parseFloatOption("--request-timeout")(v);
  if (!(n > 0)) throw new InvalidArgumentError(`--request-timeout must be a positive number of seconds, got "${v}"`);
  return n;
}

export function registerServeCommand(program: Command): void {
  addOffloadOptions(addBackendOptions(
    program.command("serve")
      .description("serve the model over an OpenAI-compatible HTTP API (/v1/chat/completions, /v1/completions, /v1/models, /health, /metrics, /v1/cache) and a chat and expert-cache page at /")
      .requiredOption("-m, --model <path>", "GGUF file or Hugging Face model directory")
      .option("--host <host>", "address to listen on", "127.0.0.1")
      .option("--port <port>", "port to listen on", parseIntOption("--port", 0), 8080)
      .option("--model-id <id>", "model name reported by /v1/models (default: the file name)")
      .option("--parallel <n>", `slots: requests generated at once, each with its own KV cache, decoded together (one forward per step for all of them; under --memory-budget their KV caches share the budget with the experts) (default: ${DEFAULT_PARALLEL.resident}, or ${DEFAULT_PARALLEL.offloaded} with --memory-budget)`,
        parseIntOption("--parallel", 1))
      .option("--queue-size <n>", "most requests that may wait for a slot; more are answered 429 with Retry-After", parseIntOption("--queue-size", 0), DEFAULT_QUEUE_SIZE)
      .option("--request-timeout <seconds>", "longest a request may take from its arrival, queue wait included; then its generation stops and it gets an error (504, or an error event in a stream)",
        positiveSeconds, DEFAULT_REQUEST_TIMEOUT_S),
  )).action(async (o) => {
    const model = Model.open(o.model);
    const backend = await createBackend(o.backend, { threads: o.threads, weightLayout: weightLayoutFor(o.weightLayout, Infinity) });
    const tokenizer = loadTokenizer(model.file);
    const routing = new RoutingCounter(model.config.nLayer, model.config.nExpert);
    const slots: number = o.parallel ?? (o.memoryBudget === undefined ? DEFAULT_PARALLEL.resident : DEFAULT_PARALLEL.offloaded);
    const { offload, sessions } = openInteractiveSessions(model, o, backend, { slots, observer: routing });
    const modelId = o.modelId ?? basename(o.model).replace(/\.gguf$/, "");
    const store = offload.store;
    const experts = new ExpertCacheView({
      config: model.config, routing, offload: store ? { store, kvCommittedBytes: () => sessions.reduce((n, s) => n + s.kv.committedBytes, 0) } : null,
    });
    // a slot per session; the app's Batcher decodes the busy ones together
    const scheduler = new Scheduler(sessions, { maxQueue: o.queueSize });
    const app = createApp({ modelId, scheduler, tokenizer, requestTimeoutMs: o.requestTimeout * 1000, experts });
    await new Promise<void>((resolve) => {
      const server = serve({ fetch: app.fetch, hostname: o.host, port: o.port }, (info) => {
        process.stderr.write(`moira: serving ${modelId} on http://${o.host}:${info.port} (backend ${backend.name}, ${sessions.length} slot${sessions.length > 1 ? "s" : ""})\n`);
      });
      const stop = async () => {
        server.close();
        // queued requests are refused, running generations end within a step and answer 503
        await scheduler.close("shutdown");
        if (o.stats && store) process.stderr.write(offload.report() + "\n");
        for (const s of sessions) s.dispose();
        offload.dispose();
        backend.dispose();
        model.close();
        resolve();
      };
      process.once("SIGINT", stop);
      process.once("SIGTERM", stop);
    });
  });
}
