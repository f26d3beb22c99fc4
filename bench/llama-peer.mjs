// The llama.cpp side of bench/vs-llama.ts, as a user of node-llama-cpp meets it: its own process
// (plain JavaScript, no TypeScript loader, so its start-up is not slower than moira's), the
// prebuilt CPU binary (a local build is refused: it is not what users get), the model loaded,
// one completion streamed to stdout chunk by chunk. At the end one JSON line on stderr: what the
// binary was and the in-process timings (first token, decode from the token callbacks).
//
//   node bench/llama-peer.mjs MODEL.gguf PROMPT_FILE MAX_TOKENS THREADS TEMPERATURE
//
// TEMPERATURE 0 is greedy; otherwise llama.cpp's default chain with moira's CLI defaults
// (top-k 40, top-p 0.95, min-p 0.05).
import { readFileSync } from "node:fs";
import { getLlama, LlamaCompletion, LlamaLogLevel } from "node-llama-cpp";

const [path, promptFile, maxTokensArg, threadsArg, temperatureArg] = process.argv.slice(2);
const maxTokens = Number(maxTokensArg), threads = Number(threadsArg), temperature = Number(temperatureArg);
const text = readFileSync(promptFile, "utf8");

const llama = await getLlama({ gpu: false, build: "never", logLevel: LlamaLogLevel.error });
if (llama.buildType !== "prebuilt") {
  process.stderr.write(`llama-peer: node-llama-cpp loaded a ${llama.buildType} binary, not its prebuilt one: not the peer users get\n`);
  process.exit(3);
}
const model = await llama.loadModel({ modelPath: path, gpuLayers: 0 });
const promptTokens = model.tokenize(text).length;
const context = await model.createContext({ contextSize: promptTokens + maxTokens + 16, threads, sequences: 1 });
const completion = new LlamaCompletion({ contextSequence: context.getSequence() });
const loadedMs = performance.now();
const tokenTimes = [];
await completion.generateCompletion(text, {
  maxTokens, temperature, topK: 40, topP: 0.95, minP: 0.05, seed: 1,
  // each token streamed as its text, special tokens included (a random-weight model's greedy output
  // may be tokens the text chunks leave out, which would leave nothing to time)
  onToken: (tokens) => {
    for (let i = 0; i < tokens.length; i++) tokenTimes.push(performance.now());
    process.stdout.write(model.detokenize(tokens, true) || " ");
  },
});
const n = tokenTimes.length;
process.stderr.write(JSON.stringify({
  buildType: llama.buildType, promptTokens, generated: n,
  // from process start (performance's time origin)
  loadMs: loadedMs,
  firstTokenMs: n > 0 ? tokenTimes[0] : null,
  prefillMs: n > 0 ? tokenTimes[0] - loadedMs : null,
  decodeMsPerToken: n > 1 ? (tokenTimes[n - 1] - tokenTimes[0]) / (n - 1) : null,
}) + "\n");
await context.dispose();
await model.dispose();
await llama.dispose();
