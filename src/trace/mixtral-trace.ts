/**
 * Reader for the Mixtral-8x7B-Instruct routing traces in ../shared/traces/mixtral-8x7b-instruct,
 * as they are: one JSON record per (problem, layer, token),
 *   {dataset, problem_id, layer, experts:[a,b], gating_probs:[p,q], token_idx}
 * (`routing_raw.jsonl` says `token_pos` instead of `token_idx`). Records come layer-major; we
 * group them into one request per (dataset, problem_id), tokens ordered by position, then layers.
 * Mixtral-8x7B has 32 layers of 8 experts, top-2; those are the defaults, overridable.
 */
import { basename } from "node:path";
import { ModelFormatError } from "../errors.js";
import { groupCells, parseJsonl, type RawCell, type RoutingTrace } from "./format.js";

export const MIXTRAL_8X7B = { nLayer: 32, nExpert: 8, topK: 2 } as const;

/** Whether a parsed record looks like the Mixtral trace files. */
export function isMixtralRecord(r: unknown): boolean {
  const o = r as Record<string, unknown> | null;
  return !!o && typeof o === "object" && "problem_id" in o && ("token_idx" in o || "token_pos" in o) && "gating_probs" in o;
}

export function parseMixtralTrace(text: string, name: string, o: { nLayer?: number; nExpert?: number; topK?: number } = {}): RoutingTrace {
  const rows = parseJsonl(text, name);
  const cells: RawCell[] = rows.map((row, i) => {
    const r = row as Record<string, unknown>;
    const token = (r.token_idx ?? r.token_pos) as number;
    const where = `${name} record ${i + 1}`;
    if (!Number.isInteger(token) || !Number.isInteger(r.layer) || r.problem_id === undefined) {
      throw new ModelFormatError(`${where}: expected {dataset, problem_id, layer, experts, gating_probs, token_idx}`);
    }
    const experts = r.experts, weights = r.gating_probs;
    if (!Array.isArray(experts) || !Array.isArray(weights) || experts.length !== weights.length) {
      throw new ModelFormatError(`${where}: "experts" and "gating_probs" must be arrays of the same length`);
    }
    return {
      request: `${String(r.dataset ?? "")}/${String(r.problem_id)}`, token, layer: r.layer as number,
      experts: experts as number[], weights: weights as number[], phase: "decode",
    };
  });
  return groupCells(cells, {
    name, nLayer: o.nLayer ?? MIXTRAL_8X7B.nLayer, nExpert: o.nExpert ?? MIXTRAL_8X7B.nExpert, topK: o.topK ?? MIXTRAL_8X7B.topK,
  });
}

export function mixtralTraceName(path: string): string { return basename(path).replace(/\.jsonl$/, ""); }
