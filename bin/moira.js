#!/usr/bin/env node
// The moira command line. The TypeScript sources are compiled to dist/ by `npm install` (prepare).
import { main } from "../dist/cli/main.js";
main(process.argv).catch((err) => {
  process.stderr.write(`moira: ${err?.message ?? err}\n`);
  process.exitCode = 1;
});
