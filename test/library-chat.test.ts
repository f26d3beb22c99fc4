/** `moira chat` (a ChatSession in the terminal): a reply that fills the context is cut, said so, and the chat goes on. */
import { test } from "node:test";
import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { existsSync } from "node:fs";
import { join } from "node:path";
import { REPO_ROOT, shared, skipUnlessPresent } from "./shared.js";

const TINYMOE = shared("models", "tinymoe-trained.gguf");

test("moira chat on a 128-token context: a long reply is cut at the end, the next turn starts over, exit 0",
  { skip: skipUnlessPresent(existsSync(TINYMOE), `${TINYMOE} not found: test data absent`), timeout: 120_000 }, () => {
    const r = spawnSync(process.execPath, [join(REPO_ROOT, "bin", "moira.js"), "chat", "--model", TINYMOE, "--max-tokens", "512", "--temperature", "0", "--threads", "2"], {
      input: "Hello\nTell me a story about a dragon\n/reset\nHi\n", encoding: "utf8", timeout: 110_000,
    });
    assert.equal(r.status, 0, r.stderr);
    assert.match(r.stderr, /the reply filled the context of 128 tokens and was cut there/);
    assert.match(r.stderr, /the context of 128 tokens is full: starting over from the latest message/);
    // three replies, each with its count
    assert.equal(r.stderr.match(/\(\d+ tokens, [\d.]+ tok\/s\)/g)?.length, 3, r.stderr);
  });
