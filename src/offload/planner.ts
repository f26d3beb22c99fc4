/**
 * The Planner splits one `--memory-budget` into everything moira allocates for a model:
 *
 *   budget = resident non-expert weights + KV cache + scratch (activations) + expert arena
 *   arena  = transient (working) slots: 2 x top-k, at least 16 (a decode layer's top-k plus as
 *            many prefetches; a prompt's layer, which can route to every expert, is computed in
 *            groups of half of them while the next group loads)
 *          + cache slots (what the CachePolicy manages; none for policy `none`)
 *
 * No idle reservations: where the KV cache grows (chat, serve: `kvGrowth`), the minimum holds it at
 * the whole context (the budget must hold when the conversation reaches it), but the arena is sized
 * with only its first block committed; each block the session commits later takes whole slots
 * from the expert cache (`cacheSlotsWith`: the coldest experts are evicted), and a reset gives them
 * back. `run` and `bench` know their context (prompt + tokens to generate) and commit it whole.
 *
 * The Planner refuses, naming the minimum and its parts, when the model cannot run in the budget. The
 * Node runtime itself (~50-80 MB RSS) is not in the budget: it does not grow with the model.
 */
import type { Model } from "../model/model.js";
import { inNextnBlock, type ModelConfig } from "../model/config.js";
import { describeExperts, type LayerExpertTensors } from "../model/experts.js";
import { TOKEN_EMBEDDING, outputHeadTensor } from "../model/steps.js";
import { KvCache, type KvType } from "../model/kv-cache.js";
import { BudgetError, InvalidArgumentError } from "../errors.js";

/** Slots and slice regions are 4 KiB aligned: O_DIRECT reads land in them with no bounce copy. */
export const SLOT_ALIGN = 4096;

const alignUp = (n: number, a: number) => Math.ceil(n / a) * a;

/** "3GiB", "512MiB", "3GB", "1.5G", "1048576" → bytes. KiB/MiB/GiB/TiB (and K/M/G/T) are 1024-based, KB/MB/GB/TB 1000-based. */
export function parseBudget(v: string): number {
  const m = /^\s*(\d+(?:\.\d+)?)\s*(?:([KMGT])(i?)(B?))?\s*$/i.exec(v);
  if (!m) throw new InvalidArgumentError(`--memory-budget "${v}" is not a size: use bytes or a suffix like 512MiB, 3GiB, 3GB`);
  const n = Number(m[1]);
  const unit = (m[2] ?? "").toUpperCase();
  const binary = m[3] !== "" || m[4] !== "B" || unit === "";
  const pow = { "": 0, K: 1, M: 2, G: 3, T: 4 }[unit as "" | "K" | "M" | "G" | "T"];
  const bytes = Math.round(n * Math.pow(binary ? 1024 : 1000, pow));
  if (!(bytes > 0)) throw new InvalidArgumentError(`--memory-budget must be positive, got "${v}"`);
  return bytes;
}

/** 1.5 GiB, 380 MiB, 12 KiB: for messages. */
export function formatBytes(b: number): string {
  if (b >= 2 ** 30) return `${(b / 2 ** 30).toFixed(2).replace(/\.?0+$/, "")} GiB`;
  if (b >= 2 ** 20) return `${Math.ceil(b / 2 ** 20)} MiB`;
  if (b >= 2 ** 10) return `${Math.ceil(b / 2 ** 10)} KiB`;
  return `${b} B`;
}

/** The stacked expert tensors, with their per-expert biases (which travel with the experts). */
export function isExpertTensor(name: string): boolean {
  return /\.ffn_(gate|up|down)_exps\.(weight|bias)$/.test(name);
}

/** Where one expert's three slices (and its three bias slices, where it has them) sit inside a slot. */
export interface SlotLayout {
  readonly gate: number;
  readonly up: number;
  readonly down: number;
  readonly biases?: { readonly gate: number; readonly up: number; readonly down: number };
  readonly bytes: number;
}

/**
 * Each slice gets a 4 KiB-aligned region one page larger than the slice: the store reads the
 * slice's 4 KiB-aligned superset from the file (GGUF data is only 32-byte aligned) straight into
 * the region with O_DIRECT, and the kernels read the slice at its offset inside it.
 */
export function sliceRegionBytes(expertBytes: number): number {
  return alignUp(expertBytes, SLOT_ALIGN) + SLOT_ALIGN;
}

export function slotLayoutOf(t: Pick<LayerExpertTensors, "gate" | "up" | "down" | "biases">): SlotLayout {
  const gate = 0;
  const up = gate + sliceRegionBytes(t.gate.expertBytes);
  const down = up + sliceRegionBytes(t.up.expertBytes);
  const end = down + sliceRegionBytes(t.down.expertBytes);
  if (!t.biases) return { gate, up, down, bytes: end };
  const bUp = end + sliceRegionBytes(t.biases.gate.expertBytes);
  const bDown = bUp + sliceRegionBytes(t.biases.up.expertBytes);
  return { gate, up, down, biases: { gate: end, up: bUp, down: bDown }, bytes: bDown + sliceRegionBytes(t.biases.down.expertBytes) };
}

/** Activation memory of one forward of `batch` tokens (generous: JS allocates per step). */
export function scratchBytes(cfg: ModelConfig, batch: number, contextLength: number): number {
  const ff = Math.max(cfg.expertFf, cfg.denseFf, cfg.sharedFf);
  const hd = Math.max(cfg.headDimK, cfg.headDimV) + (cfg.mla ? cfg.mla.qkRopeDim : 0);
  const perToken = 4 * (10 * cfg.dModel + 5 * cfg.nHead * hd + 4 * ff + 3 * cfg.nExpert);
  const attention = 4 * cfg.nHead * contextLength * Math.min(batch, 64);
  const logits = 4 * cfg.vocabSize * 2;
  // x2: garbage of the previous step is still alive when the next allocates
  return alignUp(2 * (batch * perToken + attention + logits) + (4 << 20), SLOT_ALIGN);
}

export interface PlanOptions {
  readonly budget: number;
  readonly contextLength: number;
  /** largest forward batch (prompt tokens at once); default min(contextLength, 512) */
  readonly maxBatch?: number;
  /** policy "none" gets no cache slots */
  readonly policy?: string;
  /** KV cache element type (default f32) */
  readonly kvType?: KvType;
  /** KV caches of `contextLength` positions each (`moira serve --parallel`: one per slot); default 1 */
  readonly kvCaches?: number;
  /**
   * The KV cache grows in blocks of positions as they are used, taking room from the expert cache
   * (`blockPositions` default: KvCache.blockPositionsFor). Absent: the whole cache from the start.
   */
  readonly kvGrowth?: { readonly blockPositions?: number };
}

export interface MemoryPlan {
  readonly budget: number;
  /** resident non-expert weights (the token embeddings excluded when read per token) */
  readonly nonExpertBytes: number;
  /** the token embeddings are read from the file one row per token, not held (embeddingRowsOnDemand) */
  readonly embeddingOnDemand: boolean;
  /** KV cache positions (the upper bound where it grows) */
  readonly contextLength: number;
  readonly kvType: KvType;
  /** KV caches (slots), each of contextLength positions */
  readonly kvCaches: number;
  /** bytes of every KV cache at the whole context: what the minimum counts */
  readonly kvBytes: number;
  /** KV positions committed at a time (the whole context where it does not grow) */
  readonly kvBlockPositions: number;
  /**
   * KV bytes committed when the arena was sized: one cache's first block (all of kvBytes where it
   * does not grow); the other caches take their room from the expert cache as they commit blocks
   */
  readonly kvInitialBytes: number;
  readonly scratchBytes: number;
  /** bytes of one slot (the largest expert, gate + up + down, aligned) */
  readonly slotBytes: number;
  readonly slot: SlotLayout;
  /** working slots for the layer being computed (2 x top-k, at least 16 or every expert) */
  readonly transientSlots: number;
  /** slots the CachePolicy manages with kvInitialBytes committed (never more than all experts) */
  readonly cacheSlots: number;
  /** cache slots left when the KV cache holds the whole context (cacheSlotsWith(plan, kvBytes)) */
  readonly cacheSlotsAtFullContext: number;
  readonly arenaBytes: number;
  /** the smallest budget this model runs in */
  readonly minimumBytes: number;
  /** every expert of every layer, in slots: cacheSlots == this means fully resident */
  readonly allExpertSlots: number;
  /** bytes of the expert tensors in the file the model runs (all but the multi-token-prediction blocks') */
  readonly expertFileBytes: number;
  readonly tensors: Map<number, LayerExpertTensors>;
}

/**
 * Whether an offloading run reads the token embeddings row by row from the file instead of
 * holding the table (vocabulary x d_model, 167 MiB for Qwen1.5-MoE at Q4_K): not when the table
 * is also the output projection (tied embeddings), which reads all of it every token.
 */
export function embeddingRowsOnDemand(model: Model): boolean {
  return outputHeadTensor(model.config, model.weights) !== TOKEN_EMBEDDING && model.weights.canReadRows(TOKEN_EMBEDDING);
}

/** Splits the budget; BudgetError naming the minimum when it is too small. */
export function planMemory(model: Model, opts: PlanOptions): MemoryPlan {
  const cfg = model.config;
  const embeddingOnDemand = embeddingRowsOnDemand(model);
  let nonExpertBytes = 0, expertFileBytes = 0;
  for (const [name, t] of model.weights.source.tensors) {
    if (inNextnBlock(cfg, name)) continue; // never loaded
    if (isExpertTensor(name)) expertFileBytes += t.nbytes;
    else if (!(embeddingOnDemand && name === TOKEN_EMBEDDING)) nonExpertBytes += t.nbytes;
  }
  const tensors = describeExperts(cfg, model.weights);
  let slot: SlotLayout = { gate: 0, up: 0, down: 0, bytes: 0 };
  for (const t of tensors.values()) {
    const s = slotLayoutOf(t);
    if (s.bytes > slot.bytes) slot = s;
  }
  const kvCaches = opts.kvCaches ?? 1;
  if (!(Number.isInteger(kvCaches) && kvCaches >= 1)) throw new InvalidArgumentError(`the number of KV caches must be a positive integer, got ${opts.kvCaches}`);
  const kvBytes = kvCaches * KvCache.bytes(cfg, opts.contextLength, opts.kvType);
  const batch = Math.max(1, Math.min(opts.maxBatch ?? 512, opts.contextLength));
  const scratch = scratchBytes(cfg, batch, opts.contextLength);
  // working slots: a decode layer's top-k plus as many prefetches; a prompt's layer (which can use
  // every expert) is computed in groups of half of them while the next group loads
  const transientSlots = Math.min(cfg.nExpert, Math.max(16, 2 * cfg.nExpertUsed));
  const fixed = nonExpertBytes + kvBytes + scratch;
  const minimumBytes = fixed + transientSlots * slot.bytes;
  if (opts.budget < minimumBytes) {
    throw new BudgetError(
      `budget ${formatBytes(opts.budget)} is below the minimum ${formatBytes(minimumBytes)} for this model: ` +
      `non-expert weights ${formatBytes(nonExpertBytes)} + KV cache ${formatBytes(kvBytes)} (${kvCaches > 1 ? `${kvCaches} slots x ` : ""}${opts.contextLength} positions) + ` +
      `scratch ${formatBytes(scratch)} + ${transientSlots} working expert slots ${formatBytes(transientSlots * slot.bytes)}` +
      ` (raise --memory-budget, or lower --context${kvCaches > 1 ? " or --parallel" : ""})`,
    );
  }
  const allExpertSlots = tensors.size * cfg.nExpert;
  const kvType = opts.kvType ?? "f32";
  const kvBlockPositions = !opts.kvGrowth ? opts.contextLength
    : Math.min(opts.contextLength, opts.kvGrowth.blockPositions ?? KvCache.blockPositionsFor(cfg, opts.contextLength, { slotBytes: slot.bytes, type: kvType }));
  const kvInitialBytes = KvCache.committedBytes(cfg, opts.contextLength, kvBlockPositions, kvType);
  const parts = { budget: opts.budget, nonExpertBytes, scratchBytes: scratch, transientSlots, slotBytes: slot.bytes };
  const slotsBeside = (kv: number): number => opts.policy === "none" ? 0 : Math.max(0, Math.min(allExpertSlots, slotsLeft(parts, kv)));
  const cacheSlots = slotsBeside(kvInitialBytes);
  return {
    budget: opts.budget, nonExpertBytes, embeddingOnDemand, contextLength: opts.contextLength, kvType, kvCaches, kvBytes, kvBlockPositions, kvInitialBytes,
    scratchBytes: scratch, slotBytes: slot.bytes, slot, transientSlots, cacheSlots, cacheSlotsAtFullContext: slotsBeside(kvBytes),
    arenaBytes: (transientSlots + cacheSlots) * slot.bytes, minimumBytes, allExpertSlots, expertFileBytes, tensors,
  };
}

/**
 * Cache slots the budget leaves beside `kvBytes` of committed KV cache (at most the arena's):
 * non-expert weights + committed KV + scratch + (working + cache slots) x slot <= budget.
 */
export function cacheSlotsWith(plan: MemoryPlan, kvBytes: number): number {
  return Math.max(0, Math.min(plan.cacheSlots, slotsLeft(plan, kvBytes)));
}

/** Whole slots the budget leaves beside the fixed parts and `kvBytes` of KV cache (negative when it does not fit). */
function slotsLeft(
  p: Pick<MemoryPlan, "budget" | "nonExpertBytes" | "scratchBytes" | "transientSlots" | "slotBytes">, kvBytes: number,
): number {
  return Math.floor((p.budget - p.nonExpertBytes - kvBytes - p.scratchBytes - p.transientSlots * p.slotBytes) / p.slotBytes);
}

export function formatPlan(p: MemoryPlan): string {
  const grows = p.kvBlockPositions < p.contextLength;
  const caches = p.kvCaches > 1 ? `${p.kvCaches} slots x ` : "";
  const kv = grows
    ? `KV cache ${formatBytes(p.kvInitialBytes)} growing to ${formatBytes(p.kvBytes)} (${caches}${p.contextLength} positions, in blocks of ${p.kvBlockPositions}, each taking room from the expert cache)`
    : `KV cache ${formatBytes(p.kvBytes)}${p.kvCaches > 1 ? ` (${caches}${p.contextLength} positions)` : ""}`;
  const cached = grows ? `${p.cacheSlots} cached (${p.cacheSlotsAtFullContext} at the full context)` : `${p.cacheSlots} cached`;
  return `memory plan: budget ${formatBytes(p.budget)} = non-expert weights ${formatBytes(p.nonExpertBytes)}${p.embeddingOnDemand ? " (token embeddings read per token)" : ""} + ${kv} + ` +
    `scratch ${formatBytes(p.scratchBytes)} + arena ${formatBytes(p.arenaBytes)} (${cached} + ${p.transientSlots} working experts of ${formatBytes(p.slotBytes)}; ` +
    `${((100 * p.cacheSlots) / Math.max(1, p.allExpertSlots)).toFixed(1)}% of all ${p.allExpertSlots} experts cacheable)`;
}
