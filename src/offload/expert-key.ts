/**
 * Naming one expert of one layer. Stores, policies, predictors and traces all speak `ExpertKey`;
 * hot paths use the compact numeric id (`layer * nExpert + expert`), which is dense, so it can
 * index typed arrays.
 */
import { InvalidArgumentError } from "../errors.js";

/** One expert of one MoE layer. */
export interface ExpertKey {
  readonly layer: number;
  readonly expert: number;
}

/** Dense numeric id of (layer, expert): `layer * nExpert + expert`. */
export function expertId(layer: number, expert: number, nExpert: number): number {
  if (!(expert >= 0 && expert < nExpert) || !(layer >= 0) || !Number.isInteger(layer) || !Number.isInteger(expert)) {
    throw new InvalidArgumentError(`expert key (layer ${layer}, expert ${expert}) is out of range for ${nExpert} experts per layer`);
  }
  return layer * nExpert + expert;
}

/** Inverse of `expertId`. */
export function expertKeyOf(id: number, nExpert: number): ExpertKey {
  return { layer: Math.floor(id / nExpert), expert: id % nExpert };
}

/** "L3.E5": for logs and reports. */
export function formatExpertKey(key: ExpertKey): string {
  return `L${key.layer}.E${key.expert}`;
}

export function sameExpertKey(a: ExpertKey, b: ExpertKey): boolean {
  return a.layer === b.layer && a.expert === b.expert;
}

/**
 * A count per (layer, expert) of a model's layers, at `layer * nExpert + expert`: a typed array,
 * so counting on the hot path allocates nothing. Float64: exact to 2^53, a server's lifetime.
 */
export class ExpertCounts {
  readonly counts: Float64Array;

  constructor(readonly nLayer: number, readonly nExpert: number) {
    this.counts = new Float64Array(nLayer * nExpert);
  }

  add(layer: number, expert: number): void {
    const i = layer * this.nExpert + expert;
    this.counts[i] = this.counts[i]! + 1;
  }

  reset(): void {
    this.counts.fill(0);
  }
}
