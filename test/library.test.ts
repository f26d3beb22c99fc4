/**
 * The library entry (src/index.ts): openModel, generate as an async iterator with an AbortSignal,
 * complete, chats (prefix reuse, the context's end), the tokenizer, typed errors; and the package
 * as npm ships it: packed, installed into an empty project (the addon built there from source),
 * imported from an .mjs file and type-checked from a .ts file.
 */
import { test, after } from "node:test";
import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import { cpSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { makeModel } from "../src/tools/make-model/index.js";
import { openModel, ContextFullError, InvalidArgumentError, MoiraError, type MoiraModel } from "../src/index.js";
import { REPO_ROOT } from "./shared.js";

const dir = mkdtempSync(join(tmpdir(), "moira-library-"));
const path = join(dir, "tiny.gguf");
await makeModel({ preset: "tiny", out: path });
const models: MoiraModel[] = [];
after(async () => {
  for (const m of models) await m.close();
  rmSync(dir, { recursive: true, force: true });
});
const open = async (o: Parameters<typeof openModel>[1] = {}) => {
  const m = await openModel(path, { threads: 2, ...o });
  models.push(m);
  return m;
};

test("openModel: generate() streams tokens, complete() the same text; the tokenizer round-trips", async () => {
  const model = await open({ contextLength: 256 });
  assert.equal(model.contextLength, 256);
  assert.equal(model.config.nExpert, 8);
  const pieces: string[] = [];
  let stats;
  const it = model.generate("Once upon a time", { maxTokens: 8, temperature: 0, stopTokens: [] });
  for (let r = await it.next(); ; r = await it.next()) {
    if (r.done) { stats = r.value; break; }
    pieces.push(r.value.text);
  }
  assert.equal(stats.generatedTokens, 8);
  const c = await model.complete("Once upon a time", { maxTokens: 8, temperature: 0, stopTokens: [] });
  assert.equal(c.text, pieces.join(""));
  assert.equal(c.tokens.length, 8);
  assert.ok(c.stats.cachedTokens > 0, "the second call reuses the first's prompt in the KV cache");
  const ids = model.tokenizer.encode("Hello world", { addBos: false });
  assert.equal(model.tokenizer.decode(ids), "Hello world");
  const fromIds = await model.complete(model.tokenizer.encode("Once upon a time"), { maxTokens: 8, temperature: 0, stopTokens: [] });
  assert.equal(fromIds.text, c.text);
});

test("an AbortSignal ends a generation within a step; calls run one at a time, in order", async () => {
  const model = await open({ contextLength: 2048 });
  const ctl = new AbortController();
  let n = 0;
  const long = model.complete("Once", { maxTokens: 2000, temperature: 0, stopTokens: [], signal: ctl.signal });
  // a second call waits for the first
  const second = model.complete("Twice", { maxTokens: 2, temperature: 0 });
  const first = (async () => {
    const it = model.generate("x", { maxTokens: 3, temperature: 0, stopTokens: [] });
    for await (const _ of it) n++;
  })();
  setTimeout(() => ctl.abort(), 20);
  const r = await long;
  assert.equal(r.stats.stopReason, "aborted");
  assert.ok(r.tokens.length < 2000);
  assert.equal((await second).tokens.length <= 2, true);
  await first;
  assert.equal(n, 3);
  await assert.rejects(model.complete("x", { signal: AbortSignal.abort(new Error("not now")) }), /not now/);
});

test("a chat reuses its conversation's cache, cuts a reply at the context's end, then starts over", async () => {
  const model = await open({ contextLength: 128 });
  const notices: string[] = [];
  const chat = model.createChat({ system: "Be brief.", onNotice: (m) => notices.push(m) });
  const a = await chat.send("Hi", { maxTokens: 4, temperature: 0 });
  assert.equal(chat.messages.length, 3);
  assert.ok(a.stats.promptTokens > 0);
  // a reply longer than the context has room for (but the conversation leaves room for half a context)
  const b = await chat.send("More", { maxTokens: 100, temperature: 0, stopTokens: [] });
  assert.ok(b.stats.cachedTokens >= a.stats.promptTokens, "the second turn prefilled only the new message");
  assert.equal(b.finishReason, "context");
  assert.equal(b.stats.promptTokens + b.stats.generatedTokens, 128);
  const c = await chat.send("Again", { maxTokens: 4, temperature: 0 });
  assert.ok(c.stats.promptTokens < b.stats.promptTokens);
  assert.equal(notices.length, 1);
  assert.match(notices[0], /context of 128 tokens is full/);
  assert.equal(chat.messages[0].role, "system");
  await assert.rejects(chat.send("word ".repeat(200)), (e: unknown) => e instanceof ContextFullError && e instanceof MoiraError && e.code === "CONTEXT_FULL");
  assert.equal(chat.messages.at(-1)!.role, "assistant", "a refused message leaves the conversation as it was");
  chat.reset();
  assert.equal(chat.messages.length, 1);
});

test("errors are typed: a closed model, a bad option", async () => {
  const model = await open();
  await model.close();
  await assert.rejects(model.complete("x"), InvalidArgumentError);
  await assert.rejects(openModel(path, { backend: "gpu" as never }), (e: unknown) => e instanceof InvalidArgumentError && /unknown backend/.test((e as Error).message));
});

test("npm pack → npm install into an empty project (the addon builds there) → import and generate", { timeout: 240_000 }, () => {
  const work = mkdtempSync(join(tmpdir(), "moira-pack-"));
  try {
    // the package as `npm pack` would make it, from a staging copy: the shipped files, and dist
    // compiled there (the repository's own dist/ may be older than its sources)
    const stage = join(work, "stage");
    mkdirSync(stage);
    const pkg = JSON.parse(readFileSync(join(REPO_ROOT, "package.json"), "utf8")) as { files: string[]; version: string };
    for (const f of ["package.json", "README.md", ...pkg.files.filter((f) => !f.startsWith("!") && f !== "dist")]) {
      cpSync(join(REPO_ROOT, f), join(stage, f), { recursive: true });
    }
    const env = Object.fromEntries(Object.entries(process.env).filter(([k]) => !k.startsWith("npm_")));
    const run = (cmd: string, args: string[], cwd: string) => execFileSync(cmd, args, { cwd, env, encoding: "utf8", stdio: ["ignore", "pipe", "pipe"] });
    run(process.execPath, [join(REPO_ROOT, "node_modules", "typescript", "bin", "tsc"), "-p", join(REPO_ROOT, "tsconfig.json"), "--outDir", join(stage, "dist"), "--sourceMap", "false"], REPO_ROOT);
    run("npm", ["pack", "--ignore-scripts", "--pack-destination", work], stage);
    const tarball = join(work, `moira-${pkg.version}.tgz`);
    const packed = run("tar", ["-tzf", tarball], work).split("\n");
    for (const f of ["package/dist/index.js", "package/dist/index.d.ts", "package/bin/moira.js", "package/binding.gyp", "package/native/addon.cc"]) {
      assert.ok(packed.includes(f), `${f} is in the tarball`);
    }
    const app = join(work, "app");
    mkdirSync(app);
    writeFileSync(join(app, "package.json"), JSON.stringify({ name: "app", private: true, type: "module" }));
    run("npm", ["install", "--prefer-offline", "--no-audit", "--no-fund", tarball], app);
    assert.ok(readdirSync(join(app, "node_modules", "moira", "build", "Release")).includes("moira_native.node"), "the addon was built on install");
    run(process.execPath, [join(app, "node_modules", "moira", "bin", "moira.js"), "make-model", "--preset", "tiny", "--out", join(app, "tiny.gguf")], app);
    writeFileSync(join(app, "use.mjs"), `
      import { openModel, MoiraError } from "moira";
      const model = await openModel("tiny.gguf", { threads: 2 });
      let text = "", n = 0;
      for await (const t of model.generate("Once upon a time", { maxTokens: 5, temperature: 0, stopTokens: [], signal: AbortSignal.timeout(60_000) })) { text += t.text; n++; }
      await model.close();
      console.log(JSON.stringify({ n, text, backend: model.backendName, errors: typeof MoiraError }));
    `);
    const out = JSON.parse(run(process.execPath, ["use.mjs"], app)) as { n: number; text: string; backend: string; errors: string };
    assert.equal(out.n, 5);
    assert.equal(out.backend, "native");
    assert.equal(out.errors, "function");
    // the types resolve through package.json "exports"
    writeFileSync(join(app, "use.ts"), `
      import { openModel, type GenerateOptions, type ChatReply } from "moira";
      const options: GenerateOptions = { maxTokens: 3, temperature: 0 };
      export async function reply(): Promise<ChatReply> { const m = await openModel("tiny.gguf"); return m.createChat().send("hi", options); }
    `);
    run(process.execPath, [join(REPO_ROOT, "node_modules", "typescript", "bin", "tsc"), "--noEmit", "--strict", "--module", "nodenext", "--moduleResolution", "nodenext", "--target", "es2022", "--skipLibCheck", "use.ts"], app);
  } finally {
    rmSync(work, { recursive: true, force: true });
  }
});
