import { test } from "node:test";
import assert from "node:assert/strict";
import { StopStrings } from "./stop-strings.js";
import { InvalidArgumentError } from "../errors.js";

test("StopStrings holds back what may begin a stop string, and cuts at the earliest one", () => {
  const s = new StopStrings(["END", "xy"]);
  assert.deepEqual(s.add("abc"), { final: 1, stopped: false }); // "bc" may begin "END"
  assert.deepEqual(s.add("E"), { final: 2, stopped: false });
  assert.deepEqual(s.add("N"), { final: 3, stopped: false });
  assert.deepEqual(s.add("Dx"), { final: 3, stopped: true }); // "END" across three pieces
  assert.equal(s.text, "abc");

  const t = new StopStrings(["xy", "END"]);
  t.add("ab");
  assert.deepEqual(t.add("ENxyD"), { final: 4, stopped: true }); // "xy" starts before "END" would
  assert.equal(t.text, "abEN");

  const none = new StopStrings([]);
  assert.deepEqual(none.add("abc"), { final: 3, stopped: false }); // nothing to hold back
  assert.throws(() => new StopStrings(["a", ""]), InvalidArgumentError);
});
