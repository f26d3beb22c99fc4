/**
 * moira vs llama.cpp (node-llama-cpp's prebuilt CPU build) on the same make-model GGUF, same
 * thread count, run alternately in one invocation: prefill tokens/s on a long prompt, decode
 * tokens/s, and the ratio moira / llama.cpp for each. Prints JSON to stdout.
 *
 *   node --import tsx bench/vs-llama.ts [--presets olmoe-1b-7b,qwen1.5-moe-a2.7b] [--types Q4_K,Q8_0]
 *     [--prompt-tokens 512] [--gen-tokens 128] [--threads 2] [--rounds 2] [--dir /tmp/moira-bench] [--kv-type f16]
 *
 * moira's KV cache is f16 here by default, like llama.cpp's (its default type_k/type_v); moira's own
 * default is f32 (exact against transformers).
 */
import { existsSync, mkdirSync } from "node:fs";
import { join } from "node:path";
import { parseArgs } from "node:util";
import { makeModel } from "../src/tools/make-model/index.js";
import { Model } from "../src/model/model.js";
import { Session } from "../src/engine/session.js";
import { parseKvType } from "../src/model/kv-cache.js";
import { argmax } from "../src/engine/sampler.js";
import { MappedFile, NativeBackend } from "../src/backend/native/index.js";

const { values: a } = parseArgs({
  options: {
    presets: { type: "string", default: "olmoe-1b-7b,qwen1.5-moe-a2.7b" },
    types: { type: "string", default: "Q4_K,Q8_0" },
    "prompt-tokens": { type: "string", default: "512" },
    "gen-tokens": { type: "string", default: "128" },
    threads: { type: "string", default: "2" },
    rounds: { type: "string", default: "2" },
    dir: { type: "string", default: "/tmp/moira-bench" },
    // f16 matches llama.cpp's default cache type (type_k = type_v = f16)
    "kv-type": { type: "string", default: "f16" },
  },
});
const promptTokens = Number(a["prompt-tokens"]), genTokens = Number(a["gen-tokens"]);
const threads = Number(a.threads), rounds = Number(a.rounds);
const kvType = parseKvType(a["kv-type"]!);

interface Timing { prefillTps: number; decodeTps: number }

function promptOf(vocab: number, n: number): number[] {
  let x = 2024;
  return Array.from({ length: n }, () => { x = (x * 1103515245 + 12345) >>> 0; return 300 + (x % (vocab - 300)); });
}

function runMoira(path: string, prompt: number[]): Timing {
  // weights are views of populated mappings of the file (like llama.cpp's mmap): no copy, and the
  // page cache is shared with llama.cpp's run, so a 15 GB Q8_0 model fits next to it
  const model = Model.open(path, { map: (p, offset, length) => MappedFile.open(p, { offset, length }, { populate: true }) });
  const backend = NativeBackend.create({ threads });
  try {
    const s = new Session(model, { backend, contextLength: prompt.length + genTokens + 1, kvType });
    // load weights outside the timed region (llama.cpp's load is not timed either)
    s.forward(prompt.slice(0, 1));
    s.reset();
    const t0 = performance.now();
    let logits = s.prefill(prompt);
    const t1 = performance.now();
    for (let i = 0; i < genTokens; i++) logits = s.decodeStep(argmax(logits));
    const t2 = performance.now();
    return { prefillTps: prompt.length / ((t1 - t0) / 1000), decodeTps: genTokens / ((t2 - t1) / 1000) };
  } finally {
    backend.dispose();
    model.close();
  }
}

async function runLlama(path: string, prompt: number[]): Promise<Timing> {
  const { getLlama, LlamaLogLevel } = await import("node-llama-cpp");
  const llama = await getLlama({ gpu: false, build: "never", logLevel: LlamaLogLevel.error });
  const model = await llama.loadModel({ modelPath: path, gpuLayers: 0 });
  const ctxSize = prompt.length + genTokens + 8;
  const context = await model.createContext({ contextSize: ctxSize, batchSize: prompt.length, threads, sequences: 1 });
  try {
    const seq = context.getSequence();
    const t0 = performance.now();
    await seq.evaluateWithoutGeneratingNewTokens(prompt as never);
    const t1 = performance.now();
    let n = 0;
    // greedy decode: genTokens single-token evaluations. evaluate([]) yields nothing (it once made
    // llama.cpp's decode look 1e5 tok/s), so feed one token; each yield costs one evaluation.
    for await (const _ of seq.evaluate([prompt[prompt.length - 1]] as never, { temperature: 0 })) { if (++n >= genTokens) break; }
    const t2 = performance.now();
    return { prefillTps: prompt.length / ((t1 - t0) / 1000), decodeTps: genTokens / ((t2 - t1) / 1000) };
  } finally {
    await context.dispose();
    await model.dispose();
  }
}

const best = (xs: Timing[]): Timing => ({
  prefillTps: Math.max(...xs.map((x) => x.prefillTps)),
  decodeTps: Math.max(...xs.map((x) => x.decodeTps)),
});

mkdirSync(a.dir!, { recursive: true });
const results = [];
for (const preset of a.presets!.split(",")) {
  for (const type of a.types!.split(",")) {
    const path = join(a.dir!, `${preset}-${type}.gguf`);
    if (!existsSync(path)) {
      process.stderr.write(`writing ${path}...\n`);
      await makeModel({ preset, type, seed: 1, out: path });
    }
    const probe = Model.open(path);
    const vocab = probe.config.vocabSize;
    probe.close();
    const prompt = promptOf(vocab, promptTokens);
    const moira: Timing[] = [], llama: Timing[] = [];
    for (let r = 0; r < rounds; r++) {
      moira.push(runMoira(path, prompt));
      (globalThis as { gc?: () => void }).gc?.();
      llama.push(await runLlama(path, prompt));
      process.stderr.write(`${preset} ${type} round ${r}: moira ${JSON.stringify(moira.at(-1))} llama.cpp ${JSON.stringify(llama.at(-1))}\n`);
    }
    const m = best(moira), l = best(llama);
    results.push({
      preset, type, threads, promptTokens, genTokens, rounds, kvType,
      moira: m, llamaCpp: l,
      ratio: { prefill: m.prefillTps / l.prefillTps, decode: m.decodeTps / l.decodeTps },
    });
  }
}
process.stdout.write(JSON.stringify({ bench: "vs-llama", machine: { cpus: (await import("node:os")).cpus().length }, results }, null, 2) + "\n");
