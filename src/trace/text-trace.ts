/**
 * Routing traces of a model reading text: samples chunks of `../shared/text/*_texts.txt` (or any
 * directory of .txt files), tokenizes them with the model's tokenizer, and runs each chunk as one
 * request (a fresh KV cache, prefill in batches of at most `batch` tokens) with a `TraceObserver`.
 * Every token of the text is routed exactly as in decode (the forward pass is causal), so a chunk
 * of n tokens gives n traced tokens (phase "prefill").
 */
import { readdirSync, readFileSync } from "node:fs";
import { basename, join } from "node:path";
import type { Backend } from "../backend/backend.js";
import type { Model } from "../model/model.js";
import { Session } from "../engine/session.js";
import type { Tokenizer } from "../engine/tokenizer/index.js";
import { FileAccessError, InvalidArgumentError } from "../errors.js";
import type { RoutingTrace, TraceRecorder } from "./format.js";
import { TraceObserver } from "./observer.js";

export interface TextChunk {
  /** "<file base name>/<index>" */
  readonly id: string;
  readonly text: string;
}

/**
 * `perFile` chunks from each `*.txt` file of `dir` (sorted by name), spread evenly through the
 * file: chunk i starts at the first line boundary after i/perFile of its length and runs over
 * whole lines until it has at least `minChars` characters. Deterministic.
 */
export function textChunks(dir: string, o: { perFile: number; minChars?: number; files?: readonly string[] }): TextChunk[] {
  let names: string[];
  try { names = readdirSync(dir).filter((f) => f.endsWith(".txt")).sort(); } catch (e) {
    throw new FileAccessError(`cannot read text directory ${dir}: ${(e as Error).message}`);
  }
  if (o.files) names = names.filter((n) => o.files!.some((f) => n.includes(f)));
  if (names.length === 0) throw new InvalidArgumentError(`${dir}: no .txt files${o.files ? ` matching ${o.files.join(", ")}` : ""}`);
  const minChars = o.minChars ?? 2000;
  const out: TextChunk[] = [];
  for (const name of names) {
    const text = readFileSync(join(dir, name), "utf8");
    for (let i = 0; i < o.perFile; i++) {
      let start = Math.floor((i / o.perFile) * text.length);
      if (start > 0) { const nl = text.indexOf("\n", start); start = nl < 0 ? text.length : nl + 1; }
      let end = start;
      while (end < text.length && end - start < minChars) {
        const nl = text.indexOf("\n", end);
        end = nl < 0 ? text.length : nl + 1;
      }
      const chunk = text.slice(start, end).replace(/\n+/g, "\n").trim();
      if (chunk.length > 0) out.push({ id: `${basename(name, ".txt")}/${i}`, text: chunk });
    }
  }
  return out;
}

export interface RecordTextOptions {
  /** Tokens per request (default and maximum: the model's context length, at most 4096). */
  readonly tokens?: number;
  /** Prefill batch size (default 128). */
  readonly batch?: number;
  /** Also write our JSONL trace. */
  readonly recorder?: TraceRecorder;
  readonly name?: string;
  /** Called after each request. */
  readonly onRequest?: (done: number, total: number) => void;
}

/** Runs `model` over the chunks (one request each) and returns the routing trace. */
export function recordTextTrace(model: Model, tokenizer: Tokenizer, backend: Backend, chunks: readonly TextChunk[], o: RecordTextOptions = {}): RoutingTrace {
  const cfg = model.config;
  const ctx = Math.min(cfg.contextLength, 4096);
  const n = Math.min(o.tokens ?? ctx, ctx);
  const batch = Math.max(1, o.batch ?? 128);
  const observer = new TraceObserver({ recorder: o.recorder, keep: true, nLayer: cfg.nLayer, nExpert: cfg.nExpert, topK: cfg.nExpertUsed });
  const session = new Session(model, { backend, contextLength: n, observer });
  chunks.forEach((c, i) => {
    const ids = tokenizer.encode(c.text, { addBos: true }).slice(0, n);
    observer.beginRequest(c.id);
    session.reset();
    for (let s = 0; s < ids.length; s += batch) session.forward(ids.slice(s, s + batch));
    o.onRequest?.(i + 1, chunks.length);
  });
  o.recorder?.flush();
  return observer.toTrace(o.name ?? basename(model.file.path).replace(/\.gguf$/, ""));
}
