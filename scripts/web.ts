/**
 * The browser build (README, "In the browser"). `build` bundles the model worker
 * (src/web/model-worker.ts) and the GPU thread (src/backend/webgpu/browser-worker.ts) with esbuild
 * for the browser into web/build/: nothing is shimmed or left external, so a Node module imported
 * by anything they run fails the build. `serve` builds, then serves web/index.html, the bundles and
 * a GGUF file (as /model.gguf) from 127.0.0.1, cross-origin isolated (COOP and COEP headers:
 * SharedArrayBuffer needs them).
 *
 *   node --import tsx scripts/web.ts build                                   (npm run build:web)
 *   node --import tsx scripts/web.ts serve --model tiny.gguf [--port 8080]   (npm run web -- --model tiny.gguf)
 */
import { createReadStream, existsSync } from "node:fs";
import { createServer, type Server } from "node:http";
import type { AddressInfo } from "node:net";
import { join, resolve } from "node:path";
import { fileURLToPath, pathToFileURL } from "node:url";
import { build, type Metafile } from "esbuild";

const ROOT = resolve(fileURLToPath(new URL("..", import.meta.url)));
export const WEB_DIR = join(ROOT, "web");
const BUILD_DIR = join(WEB_DIR, "build");

/** Bundles the two workers into `outdir` (model-worker.js, gpu-worker.js, with source maps); returns esbuild's metafile. */
export async function buildWeb(outdir: string = BUILD_DIR): Promise<Metafile> {
  const result = await build({
    entryPoints: { "model-worker": "src/web/model-worker.ts", "gpu-worker": "src/backend/webgpu/browser-worker.ts" },
    absWorkingDir: ROOT,
    outdir,
    bundle: true,
    platform: "browser",
    format: "esm",
    target: "es2022",
    sourcemap: true,
    metafile: true,
  });
  return result.metafile;
}

const TYPES: Record<string, string> = { ".html": "text/html; charset=utf-8", ".js": "text/javascript; charset=utf-8", ".map": "application/json" };

/**
 * Serves the page at /, the files of `outdir` under /build/ and `model` at /model.gguf, with the
 * headers that make the page cross-origin isolated; resolves once it listens on 127.0.0.1:`port`
 * (0: any free port).
 */
export function serveWeb(opts: { readonly model: string; readonly outdir?: string; readonly port?: number }): Promise<Server> {
  const outdir = opts.outdir ?? BUILD_DIR;
  const server = createServer((req, res) => {
    const path = new URL(req.url ?? "/", "http://x").pathname;
    const built = /^\/build\/(\w[\w.-]*)$/.exec(path);
    const file = path === "/" || path === "/index.html" ? join(WEB_DIR, "index.html")
      : path === "/model.gguf" ? opts.model
      : built ? join(outdir, built[1])
      : undefined;
    res.setHeader("Cross-Origin-Opener-Policy", "same-origin");
    res.setHeader("Cross-Origin-Embedder-Policy", "require-corp");
    res.setHeader("Cache-Control", "no-store");
    if (req.method !== "GET" || file === undefined || !existsSync(file)) {
      res.writeHead(404).end();
      return;
    }
    res.setHeader("Content-Type", TYPES[/\.\w+$/.exec(file)?.[0] ?? ""] ?? "application/octet-stream");
    createReadStream(file).on("error", () => res.destroy()).pipe(res);
  });
  return new Promise((resolve, reject) => {
    server.once("error", reject);
    server.listen(opts.port ?? 0, "127.0.0.1", () => resolve(server));
  });
}

async function main(argv: string[]): Promise<void> {
  const [command, ...rest] = argv;
  const option = (name: string) => { const i = rest.indexOf(`--${name}`); return i >= 0 ? rest[i + 1] : undefined; };
  if (command === "build") {
    await buildWeb();
    console.log(`built ${BUILD_DIR}`);
    return;
  }
  const model = option("model");
  if (command !== "serve" || model === undefined) {
    throw new Error("usage: scripts/web.ts build | serve --model FILE.gguf [--port N]");
  }
  if (!existsSync(model)) throw new Error(`${model} not found (make one: node bin/moira.js make-model --preset tiny --type F32 --out tiny.gguf)`);
  await buildWeb();
  const server = await serveWeb({ model: resolve(model), port: Number(option("port") ?? 8080) });
  console.log(`open http://127.0.0.1:${(server.address() as AddressInfo).port}/ in a browser with WebGPU (Ctrl-C stops)`);
}

if (process.argv[1] !== undefined && import.meta.url === pathToFileURL(process.argv[1]).href) {
  main(process.argv.slice(2)).catch((e: Error) => {
    console.error(e.message);
    process.exitCode = 1;
  });
}
