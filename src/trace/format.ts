/**
 * moira's routing trace format (JSONL), written by `moira run --trace` through `TraceRecorder`:
 *
 *   {"moira_trace":1,"model":"...","n_layer":32,"n_expert":8,"top_k":2}            ← header, first line
 *   {"request":0,"token":0,"layer":0,"experts":[7,0],"weights":[0.8,0.2]}          ← one per (token, layer)
 *   {"request":0,"token":0,"layer":0,"experts":[7,0],"weights":[0.8,0.2],"predicted":[7,3],"phase":"prefill"}
 *
 * `predicted` (optional) is what the engine's predictor named for *this* layer, computed at the
 * layer before (Fate: router of this layer applied to the previous layer's gate input).
 * `phase` is "prefill" or "decode" (default decode). Records may come in any order; readers sort
 * by request, token, layer.
 *
 * In memory every trace (ours, the Mixtral files, synthetic) is a `RoutingTrace`.
 */
import { closeSync, openSync, readFileSync, writeSync } from "node:fs";
import { FileAccessError, InvalidArgumentError, ModelFormatError } from "../errors.js";

/** One record of our JSONL format. */
export interface TraceRecord {
  readonly request?: number | string;
  readonly token: number;
  readonly layer: number;
  readonly experts: readonly number[];
  readonly weights: readonly number[];
  readonly predicted?: readonly number[];
  readonly phase?: "prefill" | "decode";
}

/** The first line of our format. */
export interface TraceHeader {
  readonly model?: string;
  readonly nLayer: number;
  readonly nExpert: number;
  readonly topK: number;
}

/** Routing of one layer for one token. */
export interface LayerRouting {
  readonly experts: readonly number[];
  readonly weights: readonly number[];
  readonly predicted?: readonly number[];
}

/** One token: `layers[l]` is layer l's routing. */
export interface TokenRouting {
  readonly token: number;
  readonly phase: "prefill" | "decode";
  readonly layers: readonly LayerRouting[];
}

export interface TraceRequest {
  readonly id: string;
  readonly tokens: readonly TokenRouting[];
}

/** A whole trace, normalized: requests in order, tokens in order, every token has every layer. */
export interface RoutingTrace {
  /** A short name (file base name, or "synthetic-olmoe"). */
  readonly name: string;
  readonly nLayer: number;
  readonly nExpert: number;
  readonly topK: number;
  readonly requests: readonly TraceRequest[];
  /** Whether records carry `predicted` (needed by the fate predictor in replay). */
  readonly hasPredictions: boolean;
  /** What the reader had to do (dropped incomplete tokens, inferred sizes). */
  readonly notes: readonly string[];
}

export function traceTokenCount(trace: RoutingTrace): number {
  return trace.requests.reduce((a, r) => a + r.tokens.length, 0);
}

/** Writes our JSONL: buffered, synchronous appends (no back-pressure to manage on the hot path). */
export class TraceRecorder {
  private fd: number | null;
  private buf: string[] = [];
  private bufChars = 0;
  private request: number | string | undefined;
  constructor(readonly path: string, header: TraceHeader, private readonly flushChars = 1 << 20) {
    try { this.fd = openSync(path, "w"); } catch (e) {
      throw new FileAccessError(`cannot write trace file ${path}: ${(e as Error).message}`);
    }
    this.push(JSON.stringify({ moira_trace: 1, model: header.model, n_layer: header.nLayer, n_expert: header.nExpert, top_k: header.topK }));
  }
  /** Sets the request id stamped on following records that do not carry one. */
  beginRequest(id: number | string): void { this.request = id; }
  record(r: TraceRecord): void {
    if (this.fd === null) throw new InvalidArgumentError(`trace recorder for ${this.path} is closed`);
    if (r.experts.length !== r.weights.length) {
      throw new InvalidArgumentError(`trace record: ${r.experts.length} experts but ${r.weights.length} weights`);
    }
    const out: Record<string, unknown> = {
      request: r.request ?? this.request ?? 0, token: r.token, layer: r.layer,
      experts: r.experts, weights: r.weights.map((w) => Math.round(w * 1e6) / 1e6),
    };
    if (r.predicted) out.predicted = r.predicted;
    if (r.phase && r.phase !== "decode") out.phase = r.phase;
    this.push(JSON.stringify(out));
  }
  private push(line: string): void {
    this.buf.push(line);
    this.bufChars += line.length + 1;
    if (this.bufChars >= this.flushChars) this.flush();
  }
  flush(): void {
    if (this.fd === null || this.buf.length === 0) return;
    writeSync(this.fd, this.buf.join("\n") + "\n");
    this.buf = [];
    this.bufChars = 0;
  }
  close(): void {
    if (this.fd === null) return;
    this.flush();
    closeSync(this.fd);
    this.fd = null;
  }
  [Symbol.dispose](): void { this.close(); }
}

/** Writes a whole in-memory trace in our format (e.g. a synthetic one). */
export function writeTrace(path: string, trace: RoutingTrace): void {
  const rec = new TraceRecorder(path, { model: trace.name, nLayer: trace.nLayer, nExpert: trace.nExpert, topK: trace.topK });
  for (const req of trace.requests) {
    for (const t of req.tokens) {
      t.layers.forEach((l, layer) => rec.record({
        request: req.id, token: t.token, layer, experts: l.experts, weights: l.weights, predicted: l.predicted, phase: t.phase,
      }));
    }
  }
  rec.close();
}

/** Parses JSONL text into objects, naming the file and line of any bad line. */
export function parseJsonl(text: string, source: string): unknown[] {
  const out: unknown[] = [];
  const lines = text.split("\n");
  for (let i = 0; i < lines.length; i++) {
    const line = lines[i]!.trim();
    if (line === "") continue;
    try { out.push(JSON.parse(line)); } catch {
      throw new ModelFormatError(`${source}:${i + 1}: not valid JSON: ${line.slice(0, 80)}`);
    }
  }
  return out;
}

export function readTextFile(path: string): string {
  try { return readFileSync(path, "utf8"); } catch (e) {
    throw new FileAccessError(`cannot read trace file ${path}: ${(e as Error).message}`);
  }
}

/** One routed cell before grouping: shared by our reader and the Mixtral reader. */
export interface RawCell {
  readonly request: string;
  readonly token: number;
  readonly layer: number;
  readonly experts: readonly number[];
  readonly weights: readonly number[];
  readonly predicted?: readonly number[];
  readonly phase: "prefill" | "decode";
}

/**
 * Groups cells into requests (first-seen order) → tokens (by position) → layers. A token that
 * lacks some layer is dropped with a note (captures often stop a layer early at the end).
 */
export function groupCells(cells: readonly RawCell[], o: {
  name: string; nLayer?: number; nExpert?: number; topK?: number; notes?: string[];
}): RoutingTrace {
  const notes = o.notes ?? [];
  let maxLayer = -1, maxExpert = -1, maxK = 0, hasPredictions = false;
  const byReq = new Map<string, Map<number, Map<number, RawCell>>>();
  for (const c of cells) {
    maxLayer = Math.max(maxLayer, c.layer);
    for (const e of c.experts) maxExpert = Math.max(maxExpert, e);
    maxK = Math.max(maxK, c.experts.length);
    if (c.predicted) hasPredictions = true;
    let toks = byReq.get(c.request);
    if (!toks) { toks = new Map(); byReq.set(c.request, toks); }
    let layers = toks.get(c.token);
    if (!layers) { layers = new Map(); toks.set(c.token, layers); }
    if (layers.has(c.layer)) {
      throw new ModelFormatError(`${o.name}: request ${c.request} token ${c.token} layer ${c.layer} appears twice`);
    }
    layers.set(c.layer, c);
  }
  const nLayer = o.nLayer ?? maxLayer + 1;
  const nExpert = o.nExpert ?? maxExpert + 1;
  const topK = o.topK ?? maxK;
  if (maxLayer >= nLayer) throw new ModelFormatError(`${o.name}: layer ${maxLayer} but the trace says ${nLayer} layers`);
  if (maxExpert >= nExpert) throw new ModelFormatError(`${o.name}: expert ${maxExpert} but the trace says ${nExpert} experts`);
  const requests: TraceRequest[] = [];
  let dropped = 0;
  for (const [id, toks] of byReq) {
    const tokens: TokenRouting[] = [];
    for (const pos of [...toks.keys()].sort((a, b) => a - b)) {
      const layers = toks.get(pos)!;
      if (layers.size !== nLayer) { dropped++; continue; }
      const ls: LayerRouting[] = [];
      let phase: "prefill" | "decode" = "decode";
      for (let l = 0; l < nLayer; l++) {
        const c = layers.get(l)!;
        ls.push(c.predicted ? { experts: c.experts, weights: c.weights, predicted: c.predicted } : { experts: c.experts, weights: c.weights });
        phase = c.phase;
      }
      tokens.push({ token: pos, phase, layers: ls });
    }
    if (tokens.length > 0) requests.push({ id, tokens });
  }
  if (dropped > 0) notes.push(`dropped ${dropped} token(s) that lack some of the ${nLayer} layers`);
  if (requests.length === 0) throw new ModelFormatError(`${o.name}: no complete token (every token needs all ${nLayer} layers)`);
  return { name: o.name, nLayer, nExpert, topK, requests, hasPredictions, notes };
}

function intArray(v: unknown, what: string): number[] {
  if (!Array.isArray(v) || !v.every((x) => Number.isInteger(x) && x >= 0)) {
    throw new ModelFormatError(`${what}: expected an array of non-negative integers`);
  }
  return v as number[];
}

function numArray(v: unknown, what: string): number[] {
  if (!Array.isArray(v) || !v.every((x) => typeof x === "number" && Number.isFinite(x))) {
    throw new ModelFormatError(`${what}: expected an array of numbers`);
  }
  return v as number[];
}

/** Parses our JSONL format (text already read). */
export function parseMoiraTrace(text: string, name: string): RoutingTrace {
  const rows = parseJsonl(text, name);
  let header: TraceHeader | undefined;
  const cells: RawCell[] = [];
  rows.forEach((row, i) => {
    const r = row as Record<string, unknown>;
    const where = `${name} record ${i + 1}`;
    if (r.moira_trace !== undefined) {
      if (r.moira_trace !== 1) throw new ModelFormatError(`${name}: trace format version ${String(r.moira_trace)} is not supported (expected 1)`);
      header = { model: r.model as string | undefined, nLayer: Number(r.n_layer), nExpert: Number(r.n_expert), topK: Number(r.top_k) };
      return;
    }
    if (!Number.isInteger(r.token) || !Number.isInteger(r.layer)) throw new ModelFormatError(`${where}: needs integer "token" and "layer"`);
    const experts = intArray(r.experts, `${where} experts`);
    const weights = r.weights === undefined ? experts.map(() => 1 / experts.length) : numArray(r.weights, `${where} weights`);
    if (weights.length !== experts.length) throw new ModelFormatError(`${where}: ${experts.length} experts but ${weights.length} weights`);
    cells.push({
      request: String(r.request ?? 0), token: r.token as number, layer: r.layer as number, experts, weights,
      predicted: r.predicted === undefined ? undefined : intArray(r.predicted, `${where} predicted`),
      phase: r.phase === "prefill" ? "prefill" : "decode",
    });
  });
  const ok = (n: number | undefined): number | undefined => (n !== undefined && Number.isInteger(n) && n > 0 ? n : undefined);
  return groupCells(cells, { name, nLayer: ok(header?.nLayer), nExpert: ok(header?.nExpert), topK: ok(header?.topK) });
}
