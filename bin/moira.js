#!/usr/bin/env node
// The moira command line. The TypeScript sources are compiled to dist/ by `npm install` (prepare).
import { main } from "../dist/cli/main.js";

// A closed pipe (`moira logits ... | head`) ends the output quietly, as in other Unix tools.
process.stdout.on("error", (err) => {
  if (err.code === "EPIPE") process.exit(0);
  throw err;
});
main(process.argv).catch((err) => {
  process.stderr.write(`moira: ${err?.message ?? err}\n`);
  process.exitCode = 1;
});
