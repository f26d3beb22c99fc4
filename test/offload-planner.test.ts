/** Planner: budget parsing and the split of a budget. */
import { test } from "node:test";
import assert from "node:assert/strict";
import { parseBudget, formatBytes, calibrateWidth } from "../src/offload/index.js";
import { InvalidArgumentError } from "../src/errors.js";

test("parseBudget: plain bytes, binary and decimal suffixes", () => {
  assert.equal(parseBudget("1048576"), 1048576);
  assert.equal(parseBudget("3GiB"), 3 * 2 ** 30);
  assert.equal(parseBudget("512MiB"), 512 * 2 ** 20);
  assert.equal(parseBudget("64KiB"), 64 * 1024);
  assert.equal(parseBudget("3GB"), 3e9);
  assert.equal(parseBudget("500MB"), 5e8);
  assert.equal(parseBudget("2KB"), 2000);
  assert.equal(parseBudget("1.5GiB"), 1.5 * 2 ** 30);
  assert.equal(parseBudget("3G"), 3 * 2 ** 30);
  for (const bad of ["", "abc", "3XB", "-1GiB", "0"]) assert.throws(() => parseBudget(bad), InvalidArgumentError, bad);
});

test("formatBytes", () => {
  assert.equal(formatBytes(3 * 2 ** 30), "3 GiB");
  assert.equal(formatBytes(412 * 2 ** 20), "412 MiB");
});

test("calibrateWidth: loads that fit in a layer's compute, within [topK, nExpert]", () => {
  assert.equal(calibrateWidth({ layerMs: 1, readMs: 2, topK: 8, nExpert: 64 }), 8);
  assert.equal(calibrateWidth({ layerMs: 30, readMs: 2, topK: 8, nExpert: 64 }), 15);
  assert.equal(calibrateWidth({ layerMs: 300, readMs: 2, topK: 8, nExpert: 64 }), 64);
});
