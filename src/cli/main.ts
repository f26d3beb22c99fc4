/**
 * The moira command line: run | logits | inspect | make-model | replay (more as they land).
 * User errors (MoiraError) print one line and exit 1; anything else is a bug and says so.
 */
import { Command, CommanderError } from "commander";
import { MoiraError } from "../errors.js";
import { registerRunCommands } from "./run.js";
import { registerInspectCommand } from "./inspect.js";
import { registerMakeModelCommand } from "./make-model.js";
import { registerReplayCommand } from "./replay.js";
import { registerBenchCommand } from "./bench.js";
import { registerConvertCommand } from "./convert.js";
import { registerServeCommand } from "./serve.js";
import { registerChatCommand } from "./chat.js";
import { registerQuantizeExpertsCommand } from "./quantize-experts.js";
import { registerRepackCommand } from "./repack.js";
import { registerTokenizeCommand } from "./tokenize.js";
import { registerGpuInfoCommand } from "./gpu-info.js";

export function buildProgram(): Command {
  const program = new Command("moira")
    .description("Run Mixture-of-Experts language models larger than your memory")
    .version("0.1.0")
    .showHelpAfterError()
    .exitOverride();
  registerRunCommands(program);
  registerInspectCommand(program);
  registerMakeModelCommand(program);
  registerReplayCommand(program);
  registerBenchCommand(program);
  registerConvertCommand(program);
  registerServeCommand(program);
  registerChatCommand(program);
  registerQuantizeExpertsCommand(program);
  registerRepackCommand(program);
  registerTokenizeCommand(program);
  registerGpuInfoCommand(program);
  return program;
}

export async function main(argv: string[]): Promise<void> {
  const program = buildProgram();
  try {
    await program.parseAsync(argv);
  } catch (err) {
    if (err instanceof CommanderError) {
      // commander already printed its message (help, version, or a usage error)
      process.exitCode = err.exitCode;
      return;
    }
    if (err instanceof MoiraError) {
      process.stderr.write(`moira: ${err.message}\n`);
      process.exitCode = 1;
      return;
    }
    const e = err as Error;
    process.stderr.write(`moira: internal error: ${e?.message ?? e}\n`);
    if (process.env.MOIRA_DEBUG) process.stderr.write(`${e?.stack}\n`);
    else process.stderr.write("(this is a bug in moira; rerun with MOIRA_DEBUG=1 to see the stack trace)\n");
    process.exitCode = 70;
  }
}
