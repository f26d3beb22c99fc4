/**
 * Headless Chromium for the tests that open a page (test/server-page.test.ts,
 * test/webgpu-browser.test.ts), driven over the DevTools protocol on a pipe
 * (--remote-debugging-pipe): no puppeteer, no port.
 */
import { spawn, type ChildProcess } from "node:child_process";
import { mkdtempSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import type { Readable, Writable } from "node:stream";

export const CHROMIUM = process.env.CHROMIUM ?? "/usr/bin/chromium";
/** The skip reason where CHROMIUM is absent. */
export const NO_CHROMIUM = `${CHROMIUM} not found: install it (apt-get install -y chromium) or set CHROMIUM=/path`;

/** A reply of the DevTools protocol, or an event (no id). */
interface CdpMessage {
  id?: number;
  method?: string;
  params?: Record<string, unknown>;
  result?: Record<string, unknown>;
  error?: { message: string };
  sessionId?: string;
}

/** Headless Chromium over --remote-debugging-pipe: requests on fd 3, replies and events on fd 4, each a JSON text ended by NUL. */
export class Browser {
  private nextId = 1;
  private readonly pending = new Map<number, { resolve: (r: Record<string, unknown>) => void; reject: (e: Error) => void }>();
  /** console errors, uncaught exceptions and failed loads, as text */
  readonly errors: string[] = [];
  private sessionId = "";

  private constructor(private readonly proc: ChildProcess) {
    const out = proc.stdio[4] as Readable;
    out.setEncoding("utf8");
    let buffer = "";
    out.on("data", (d: string) => {
      buffer += d;
      let end;
      while ((end = buffer.indexOf("\0")) >= 0) {
        this.dispatch(JSON.parse(buffer.slice(0, end)) as CdpMessage);
        buffer = buffer.slice(end + 1);
      }
    });
  }

  /**
   * Starts Chromium with `flags` besides the headless ones, its process added to `children` at
   * once (the caller kills them when its tests end), and attaches to a blank page.
   */
  static async launch(flags: readonly string[], children: ChildProcess[]): Promise<Browser> {
    const proc = spawn(CHROMIUM, [
      "--headless", "--no-sandbox", ...flags, "--remote-debugging-pipe", "--no-first-run", "--disable-sync",
      "--disable-background-networking", "--disable-component-update", "--disable-extensions",
      `--user-data-dir=${mkdtempSync(join(tmpdir(), "moira-chromium-"))}`, "about:blank",
    ], { stdio: ["ignore", "ignore", "ignore", "pipe", "pipe"] });
    children.push(proc);
    const b = new Browser(proc);
    const { targetId } = await b.send("Target.createTarget", { url: "about:blank" });
    b.sessionId = (await b.send("Target.attachToTarget", { targetId, flatten: true })).sessionId as string;
    for (const domain of ["Runtime", "Log", "Page"]) await b.send(`${domain}.enable`);
    return b;
  }

  private dispatch(m: CdpMessage): void {
    if (m.id !== undefined) {
      const p = this.pending.get(m.id);
      this.pending.delete(m.id);
      if (m.error) p?.reject(new Error(m.error.message));
      else p?.resolve(m.result ?? {});
      return;
    }
    const params = m.params ?? {};
    if (m.method === "Runtime.consoleAPICalled" && (params.type === "error" || params.type === "assert")) {
      this.errors.push(`console.${params.type}: ${JSON.stringify(params.args)}`);
    } else if (m.method === "Runtime.exceptionThrown") {
      this.errors.push(`exception: ${JSON.stringify(params.exceptionDetails)}`);
    } else if (m.method === "Log.entryAdded") {
      const entry = params.entry as { level: string; text: string; url?: string };
      if (entry.level === "error") this.errors.push(`log: ${entry.text} ${entry.url ?? ""}`);
    }
  }

  send(method: string, params: Record<string, unknown> = {}): Promise<Record<string, unknown>> {
    const id = this.nextId++;
    const message: CdpMessage & { params: Record<string, unknown> } = { id, method, params };
    if (this.sessionId && !method.startsWith("Target.")) message.sessionId = this.sessionId;
    return new Promise((resolve, reject) => {
      this.pending.set(id, { resolve, reject });
      (this.proc.stdio[3] as Writable).write(JSON.stringify(message) + "\0");
    });
  }

  /** The value of an expression in the page (promises awaited). */
  async eval<T>(expression: string): Promise<T> {
    const r = await this.send("Runtime.evaluate", { expression, returnByValue: true, awaitPromise: true });
    if (r.exceptionDetails) throw new Error(`page: ${expression}: ${JSON.stringify(r.exceptionDetails)}`);
    return (r.result as { value: T }).value;
  }

  /** Waits until the expression is truthy in the page. */
  async until(expression: string, what: string, timeoutMs = 15_000): Promise<void> {
    const end = Date.now() + timeoutMs;
    while (!(await this.eval<boolean>(`Boolean(${expression})`))) {
      if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
      await new Promise((r) => setTimeout(r, 40));
    }
  }

  async close(): Promise<void> {
    await this.send("Browser.close").catch(() => undefined);
  }
}
