/** Reading any trace file: our format or the Mixtral trace files, told apart by their first record. */
import { basename } from "node:path";
import { ModelFormatError } from "../errors.js";
import { parseMoiraTrace, readTextFile, type RoutingTrace } from "./format.js";
import { isMixtralRecord, parseMixtralTrace } from "./mixtral-trace.js";

export interface ReadTraceOptions {
  /** Override the layer / expert counts (the Mixtral reader defaults to Mixtral-8x7B's 32 x 8, top-2). */
  readonly nLayer?: number;
  readonly nExpert?: number;
  readonly topK?: number;
}

export function readTrace(path: string, o: ReadTraceOptions = {}): RoutingTrace {
  const text = readTextFile(path);
  const name = basename(path).replace(/\.jsonl$/, "");
  const firstLine = text.slice(0, text.indexOf("\n") >= 0 ? text.indexOf("\n") : text.length).trim();
  let first: unknown;
  try { first = JSON.parse(firstLine); } catch {
    throw new ModelFormatError(`${path}: not a JSONL routing trace (first line is not JSON)`);
  }
  if (isMixtralRecord(first)) return parseMixtralTrace(text, name, o);
  const f = first as Record<string, unknown>;
  if (f && typeof f === "object" && ("moira_trace" in f || ("token" in f && "layer" in f && "experts" in f))) {
    const t = parseMoiraTrace(text, name);
    return o.nLayer || o.nExpert || o.topK
      ? { ...t, nLayer: o.nLayer ?? t.nLayer, nExpert: o.nExpert ?? t.nExpert, topK: o.topK ?? t.topK }
      : t;
  }
  throw new ModelFormatError(
    `${path}: unknown trace format: expected moira's JSONL ({"token","layer","experts","weights"}) or the Mixtral trace records ({"problem_id","layer","experts","gating_probs","token_idx"})`,
  );
}
