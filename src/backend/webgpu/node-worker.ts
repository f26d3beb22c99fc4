/** The GPU thread's entry in Node (started by node-thread.ts): its buffers in workerData, requests from parentPort, devices through Dawn. */
import { parentPort, workerData } from "node:worker_threads";
import { openDawn } from "./dawn.js";
import type { GpuThreadBuffers } from "./protocol.js";
import { serveGpuRequests } from "./worker.js";

parentPort!.on("message", serveGpuRequests(workerData as GpuThreadBuffers, openDawn));
