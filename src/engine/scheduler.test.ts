/** Scheduler: first come first served, a bounded queue, aborts while waiting, slot choice by cached prefix, close. */
import { test } from "node:test";
import assert from "node:assert/strict";
import { Scheduler } from "./scheduler.js";
import type { Session } from "./session.js";
import { QueueFullError } from "../errors.js";

/** Just what the scheduler reads of a session: the tokens in its cache. */
const fakeSession = (tokens: number[] = []) => ({ tokens }) as unknown as Session;

test("one slot: requests run in arrival order; the queue is bounded; a full queue throws at once", async () => {
  const s = new Scheduler([fakeSession()], { maxQueue: 2 });
  const first = await s.acquire({ prompt: [1] });
  assert.equal(s.inFlight, 1);
  const order: number[] = [];
  const second = s.acquire({ prompt: [2] }).then((l) => { order.push(2); return l; });
  const third = s.acquire({ prompt: [3] }).then((l) => { order.push(3); return l; });
  assert.equal(s.queued, 2);
  assert.throws(() => s.acquire({ prompt: [4] }), QueueFullError);
  first.release();
  first.release(); // twice is once
  const l2 = await second;
  assert.equal(s.queued, 1);
  l2.release();
  (await third).release();
  assert.deepEqual(order, [2, 3]);
  assert.equal(s.inFlight, 0);
});

test("a request aborted while it waits leaves the queue and rejects with the signal's reason", async () => {
  const s = new Scheduler([fakeSession()], { maxQueue: 4 });
  const running = await s.acquire({ prompt: [1] });
  const ctl = new AbortController();
  const waiting = s.acquire({ prompt: [2], signal: ctl.signal });
  const after = s.acquire({ prompt: [3] });
  ctl.abort("gone");
  await assert.rejects(waiting, (e) => e === "gone");
  assert.equal(s.queued, 1);
  running.release();
  const l = await after;
  assert.deepEqual(l.slot.id, 0);
  l.release();
});

test("an idle slot whose cache shares the longest prefix with the prompt is chosen", async () => {
  const s = new Scheduler([fakeSession([1, 2]), fakeSession([7, 8, 9]), fakeSession([7, 8, 1])], { maxQueue: 0 });
  const l = await s.acquire({ prompt: [7, 8, 9, 10] });
  assert.equal(l.slot.id, 1);
  const m = await s.acquire({ prompt: [7, 8, 9, 10] });
  assert.equal(m.slot.id, 2, "the best idle one when the best is busy");
  l.release();
  m.release();
});

test("close(): waiting requests are refused, running leases' signals abort, resolves once idle", async () => {
  const s = new Scheduler([fakeSession()], { maxQueue: 4 });
  const running = await s.acquire({ prompt: [1] });
  const waiting = s.acquire({ prompt: [2] });
  let closed = false;
  const done = s.close("shutdown").then(() => { closed = true; });
  await assert.rejects(waiting, (e) => e === "shutdown");
  assert.equal(running.signal.aborted, true);
  await new Promise((r) => setImmediate(r));
  assert.equal(closed, false, "not before the running request let go of its slot");
  running.release();
  await done;
  await assert.rejects(s.acquire({ prompt: [3] }), (e) => e === "shutdown");
});
