import { getLlama, LlamaLogLevel } from "node-llama-cpp";
const path = process.argv[2]; const nP = Number(process.argv[3] ?? 512), gen = Number(process.argv[4] ?? 32);
let x = 2024; const prompt = Array.from({ length: nP }, () => { x = (x * 1103515245 + 12345) >>> 0; return 300 + (x % 40000); });
const llama = await getLlama({ gpu: false, build: "never", logLevel: LlamaLogLevel.error });
const model = await llama.loadModel({ modelPath: path, gpuLayers: 0 });
const context = await model.createContext({ contextSize: nP + gen + 8, batchSize: nP, threads: 2, sequences: 1 });
const seq = context.getSequence();
const t0 = performance.now(); await seq.evaluateWithoutGeneratingNewTokens(prompt as never); const t1 = performance.now();
let n = 0; for await (const _ of seq.evaluate([prompt[nP - 1]] as never, { temperature: 0 })) { if (++n >= gen) break; }
const t2 = performance.now();
console.log(JSON.stringify({ prefillTps: nP / ((t1 - t0) / 1000), decodeTps: gen / ((t2 - t1) / 1000), n }));
await context.dispose(); await model.dispose();
