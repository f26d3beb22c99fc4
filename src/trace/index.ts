/** Layer 6: routing traces (recording, reading, synthesis) and the replay simulator. */
export * from "./format.js";
export * from "./mixtral-trace.js";
export * from "./read.js";
export * from "./simulate.js";
export * from "./locality.js";
export * from "./time-model.js";
export * from "./synthetic.js";
export * from "./report.js";
export * from "./replay.js";
export * from "./observer.js";
export * from "./summary.js";
export * from "./text-trace.js";
