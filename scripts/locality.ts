/**
 * Locality of routing: record traces of models reading text and compare their cache hit rates and
 * SRP / SCH with other traces (e.g. the real Mixtral ones). See docs/replay.md, "Locality of
 * moira's own models".
 *
 *   node --import tsx scripts/locality.ts \
 *     --model trained=../shared/models/tinymoe-trained.gguf --model tiny=/tmp/tiny.gguf \
 *     --reference ../shared/traces/mixtral-8x7b-instruct/gsm8k_2_routing.jsonl \
 *     [--text ../shared/text] [--chunks 8] [--tokens 128] [--batch 128] [--threads 2] \
 *     [--trace-dir DIR] [--json FILE] [--segment 16]
 *
 * --model [LABEL=]FILE   a GGUF to run (repeatable); its trace is written to DIR/LABEL.jsonl with --trace-dir
 * --reference FILE       an existing trace (ours or the Mixtral files) to put in the table (repeatable)
 * --chunks N             text chunks per *_texts.txt file (default 8: 32 requests over 4 domains)
 * --tokens T             tokens per chunk (default: the model's context, at most 128)
 * --synthetic DIR        add a synthetic OLMoE trace (olmoe-routing-stats, c4, 32 x 128 tokens; --stickiness S)
 * --slots a,b,c          slots per layer (default 25/50/75 % of the experts)
 */
import { join } from "node:path";
import { parseArgs } from "node:util";
import { Model } from "../src/model/model.js";
import { loadTokenizer } from "../src/engine/tokenizer/index.js";
import { NativeBackend } from "../src/backend/native/index.js";
import { loadRoutingStats, syntheticTrace, localitySummary, readTrace, recordTextTrace, summaryMarkdown, textChunks, TraceRecorder, type LocalitySummary, type RoutingTrace } from "../src/trace/index.js";
import { writeFileSync } from "node:fs";

const { values } = parseArgs({
  options: {
    model: { type: "string", multiple: true, default: [] },
    reference: { type: "string", multiple: true, default: [] },
    text: { type: "string", default: join(import.meta.dirname, "../../shared/text") },
    chunks: { type: "string", default: "8" },
    tokens: { type: "string", default: "128" },
    batch: { type: "string", default: "128" },
    threads: { type: "string", default: "2" },
    slots: { type: "string" },
    segment: { type: "string" },
    "trace-dir": { type: "string" },
    json: { type: "string" },
    synthetic: { type: "string" },
    stickiness: { type: "string", default: "0" },
  },
});

const rows: LocalitySummary[] = [];
const slotsOf = (t: RoutingTrace): number[] | undefined => (values.slots ? values.slots.split(",").map(Number) : undefined);
const backend = NativeBackend.create({ threads: Number(values.threads) });
const chunks = textChunks(values.text!, { perFile: Number(values.chunks) });
for (const spec of values.model!) {
  const eq = spec.indexOf("=");
  const label = eq > 0 ? spec.slice(0, eq) : spec.replace(/^.*\//, "").replace(/\.gguf$/, "");
  const path = eq > 0 ? spec.slice(eq + 1) : spec;
  const model = Model.open(path);
  const tok = loadTokenizer(model.file);
  const cfg = model.config;
  const recorder = values["trace-dir"]
    ? new TraceRecorder(join(values["trace-dir"], `${label}.jsonl`), { model: path, nLayer: cfg.nLayer, nExpert: cfg.nExpert, topK: cfg.nExpertUsed })
    : undefined;
  const t0 = Date.now();
  const trace = recordTextTrace(model, tok, backend, chunks, {
    tokens: Number(values.tokens), batch: Number(values.batch), recorder, name: label,
  });
  recorder?.close();
  process.stderr.write(`${label}: ${trace.requests.length} requests, ${trace.requests.reduce((a, r) => a + r.tokens.length, 0)} tokens in ${((Date.now() - t0) / 1000).toFixed(1)} s\n`);
  rows.push(localitySummary(trace, { slots: slotsOf(trace) }));
}
for (const path of values.reference!) {
  const t = readTrace(path);
  rows.push(localitySummary(t, { slots: slotsOf(t) }));
}
if (values.synthetic) {
  // 64 experts top-8 at OLMoE's real per-layer popularity (no per-token data exists for OLMoE)
  const t = syntheticTrace(loadRoutingStats(values.synthetic, { domain: "c4" }), {
    nLayer: 16, requests: 32, tokensPerRequest: 128, seed: 1, stickiness: Number(values.stickiness),
  });
  rows.push(localitySummary(t, { slots: slotsOf(t) }));
}
if (values.json) writeFileSync(values.json, JSON.stringify(rows, null, 1) + "\n");
process.stdout.write(summaryMarkdown(rows, { segmentLength: values.segment ? Number(values.segment) : undefined }) + "\n");
