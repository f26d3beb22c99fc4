/**
 * `moira tokenize MODEL [TEXT]`: text to token ids and back with the model's own tokenizer (the one
 * `moira run` uses), to match prompts across engines. Options follow llama.cpp's llama-tokenize
 * (`--ids`, `--no-bos`, `--show-count`, the `id -> 'piece'` lines). Only the model's metadata (or
 * its tokenizer.json) is read: no weight is loaded.
 */
import { readFileSync } from "node:fs";
import { Option, type Command } from "commander";
import { openModel } from "../formats/open.js";
import { loadTokenizer, type Tokenizer } from "../engine/tokenizer/index.js";
import { FileAccessError, InvalidArgumentError } from "../errors.js";

interface TokenizeOptions {
  model?: string;
  prompt?: string;
  file?: string;
  /** the ids to decode, or true when they come from the text argument, --file or standard input */
  decode?: string | true;
  ids?: true;
  json?: true;
  /** undefined: as the model's tokenizer does for a plain prompt (as `moira run`) */
  bos?: boolean;
  parseSpecial?: true;
  skipSpecial?: true;
  showCount?: true;
}

export function registerTokenizeCommand(program: Command): void {
  program.command("tokenize")
    .description("text to token ids (or, with --decode, ids to text) with the model's tokenizer, as llama.cpp's llama-tokenize")
    .argument("[model]", "GGUF file or Hugging Face model directory (or -m)")
    .argument("[text]", "the text (or -p, -f, or standard input)")
    .option("-m, --model <path>", "GGUF file or Hugging Face model directory")
    .option("-p, --prompt <text>", "the text to tokenize")
    .option("-f, --file <path>", "read the text (with --decode: the ids) from a file")
    .addOption(new Option("--ids", "print only the ids, as [1, 2, 3]").conflicts("json"))
    .option("--json", "print {\"ids\": [...], \"pieces\": [...], \"count\": n} (with --decode: {\"ids\", \"text\"})")
    .option("--bos", "add the BOS token (default: as the model's tokenizer does for a plain prompt, like moira run)")
    .option("--no-bos", "do not add the BOS token")
    .option("--parse-special", "read control tokens written in the text (<|im_start|>, <s>) as those tokens (llama-tokenize's default; moira run's plain prompt does not)")
    .option("--show-count", "end with \"Total number of tokens: N\" (--json always has \"count\")")
    .addOption(new Option("--decode [ids]", "ids to text: 1,2,3 or [1, 2, 3] (as --ids prints), here or from the text argument, -f or standard input")
      .conflicts(["ids", "bos", "parseSpecial", "showCount"]))
    .option("--skip-special", "with --decode: leave control tokens (BOS, EOS, <|im_end|>) out of the text")
    .action((first: string | undefined, second: string | undefined, o: TokenizeOptions) => {
      if (o.skipSpecial && o.decode === undefined) throw new InvalidArgumentError("--skip-special applies to --decode only");
      const { model, text } = modelAndText(first, second, o.model);
      const file = openModel(model);
      try {
        const tok = loadTokenizer(file);
        const input = readInput([
          ["the text argument", text],
          ["--prompt", o.prompt],
          ["--decode", typeof o.decode === "string" ? o.decode : undefined],
          ["--file", o.file],
        ]);
        if (o.decode !== undefined) printDecoded(tok, parseIds(input.value, input.source), o);
        else printTokens(tok, model, input.value, o);
      } finally {
        file.weights.close();
      }
    });
}

/** `tokenize MODEL [TEXT]`, or `tokenize -m MODEL [TEXT]` as in `moira run`. */
function modelAndText(first: string | undefined, second: string | undefined, model: string | undefined): { model: string; text?: string } {
  if (model === undefined) {
    if (first === undefined) throw new InvalidArgumentError("tokenize needs a model: moira tokenize MODEL [TEXT] (or -m MODEL)");
    return { model: first, text: second };
  }
  if (second !== undefined) throw new InvalidArgumentError(`with -m/--model give at most one text argument, got "${first}" and "${second}"`);
  return { model, text: first };
}

/** The one input given (`[source name, value]` pairs; a --file value is its path), else standard input. */
function readInput(candidates: [string, string | undefined][]): { source: string; value: string } {
  const given = candidates.filter((c): c is [string, string] => c[1] !== undefined);
  if (given.length > 1) throw new InvalidArgumentError(`give one input, not ${given.map((g) => g[0]).join(" and ")}`);
  if (given.length === 0) {
    if (process.stdin.isTTY) throw new InvalidArgumentError("no input: give it as an argument, with -p/--prompt or -f/--file, or pipe it in");
    return { source: "standard input", value: utf8(readFileSync(0), "standard input") };
  }
  const [source, value] = given[0]!;
  if (source !== "--file") return { source, value };
  let bytes: Buffer;
  try {
    bytes = readFileSync(value);
  } catch (e) {
    throw new FileAccessError(`cannot read --file ${value}: ${(e as Error).message}`);
  }
  return { source: value, value: utf8(bytes, value) };
}

/** Bytes as text; invalid UTF-8 is refused rather than silently replaced, and a leading BOM is kept. */
function utf8(bytes: Uint8Array, where: string): string {
  try {
    return new TextDecoder("utf-8", { fatal: true, ignoreBOM: true }).decode(bytes);
  } catch {
    throw new InvalidArgumentError(`${where} is not valid UTF-8`);
  }
}

/** "1,2,3", "1 2 3" or "[1, 2, 3]" (what --ids prints) → [1, 2, 3]. The tokenizer checks the range. */
function parseIds(input: string, source: string): number[] {
  const list = input.trim().replace(/^\[([^]*)\]$/, "$1");
  return list.split(/[\s,]+/).filter((s) => s.length > 0).map((s) => {
    if (!/^\d+$/.test(s)) throw new InvalidArgumentError(`${source}: "${s}" is not a token id (a non-negative integer)`);
    return Number(s);
  });
}

function printTokens(tok: Tokenizer, model: string, text: string, o: TokenizeOptions): void {
  const addBos = o.bos ?? tok.addBosDefault;
  if (addBos && tok.bosId === null) throw new InvalidArgumentError(`--bos: the tokenizer of ${model} has no BOS token`);
  const ids = tok.encode(text, { addBos, parseSpecial: o.parseSpecial ?? false });
  const pieces = new PieceTable(tok);
  if (o.json) {
    process.stdout.write(JSON.stringify({ ids, pieces: ids.map((id) => pieces.get(id).text), count: ids.length }) + "\n");
    return;
  }
  if (o.ids) {
    process.stdout.write(`[${ids.join(", ")}]\n`);
  } else {
    for (const id of ids) {
      const p = pieces.get(id);
      process.stdout.write(`${String(id).padStart(6)} -> ${quoted(p.text)}${p.partial ? " (part of a UTF-8 character)" : ""}\n`);
    }
  }
  if (o.showCount) process.stdout.write(`Total number of tokens: ${ids.length}\n`);
}

/** The text and a newline (`--json`: {"ids", "text"}, the text exactly). */
function printDecoded(tok: Tokenizer, ids: number[], o: TokenizeOptions): void {
  const text = tok.decode(ids, { skipSpecial: o.skipSpecial ?? false });
  process.stdout.write(o.json ? JSON.stringify({ ids, text }) + "\n" : text + "\n");
}

/**
 * What each token stands for on its own, as llama.cpp's token_to_piece (what llama-tokenize
 * shows): `▁the` is " the", the tokenizer's `tokenBytes`. A token that is only part of a UTF-8
 * character (a byte-fallback `<0xE2>`, a byte-level BPE fragment) has no text of its own: its
 * vocabulary entry stands in, marked `partial`.
 */
/** invalid UTF-8 (part of a character) decodes to U+FFFD */
const UTF8 = new TextDecoder();

class PieceTable {
  private readonly cache = new Map<number, { text: string; partial: boolean }>();

  constructor(private readonly tok: Tokenizer) {}

  get(id: number): { text: string; partial: boolean } {
    let p = this.cache.get(id);
    if (p === undefined) {
      const text = UTF8.decode(this.tok.tokenBytes(id));
      const entry = this.tok.tokenText(id);
      p = text.includes("\uFFFD") && !entry.includes("\uFFFD") ? { text: entry, partial: true } : { text, partial: false };
      this.cache.set(id, p);
    }
    return p;
  }
}

const ESCAPES: Record<string, string> = { "\\": "\\\\", "\n": "\\n", "\r": "\\r", "\t": "\\t" };

/** 'piece' on one line: backslash and control characters escaped (\n, \t, \x1b). */
function quoted(s: string): string {
  return `'${s.replace(/[\\\x00-\x1f\x7f]/g, (c) => ESCAPES[c] ?? `\\x${c.charCodeAt(0).toString(16).padStart(2, "0")}`)}'`;
}
