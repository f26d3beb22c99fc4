/** Offloading: where experts live (see docs: layer 4). */
export { ExpertStore, type ExpertStoreOptions, type LowbitOptions, type LowbitSource } from "./store.js";
export { FileReader, fileIdentity, sameIdentity, type ArenaChunk, type FileIdentity, type ReaderOptions } from "./store-io.js";
export { Prefetcher, LoadJob, type ReadRange, type LoadPriority } from "./prefetcher.js";
export { OffloadStats, type LayerCounters, type Phase, type Calibration } from "./stats.js";
export { planMemory, parseBudget, formatBytes, formatPlan, scratchBytes, isExpertTensor, type MemoryPlan, type PlanOptions } from "./planner.js";
export { NextLayerRouter, calibrateWidth, calibrateDistance, MAX_PREFETCH_DISTANCE, type LayerPrediction } from "./fate-predictor.js";
export { writeLowbitSidecar, openLowbitSidecar, LOWBIT_TYPES } from "./lowbit.js";
export { quantizeQ2K } from "./lowbit-quant.js";
export * from "./policy.js";
export * from "./predictor.js";
export * from "./expert-key.js";
