import { makeModel } from "/work/main/src/tools/make-model/index.js";
import { Model } from "/work/main/src/model/model.js";
import { Session } from "/work/main/src/engine/session.js";
import { argmax } from "/work/main/src/engine/sampler.js";
import { RefBackend } from "/work/main/src/backend/ref/ref-backend.js";
import { NativeBackend } from "/work/main/src/backend/native/index.js";
import { llamaGreedy } from "/work/main/test/llama-oracle.js";
const [preset, type] = [process.argv[2], process.argv[3]];
const path = `/tmp/d-${preset}-${type}.gguf`;
await makeModel({ preset, type, seed: 7, out: path });
const m = Model.open(path);
const prompt = [886, 2060, 1584, 1352];
console.log("llama ", (await llamaGreedy(path, prompt, 8)).join(","));
for (const b of [new RefBackend(), NativeBackend.create({ threads: 1 })]) {
  const s = new Session(m, { backend: b, contextLength: 32 });
  let l = s.prefill(prompt); const ids = [];
  for (let i = 0; i < 8; i++) { const t = argmax(l); const sorted = Array.from(l).sort((a, b) => b - a); ids.push(`${t}(${(sorted[0] - sorted[1]).toFixed(2)})`); l = s.decodeStep(t); }
  console.log(b.name, ids.join(","));
}
