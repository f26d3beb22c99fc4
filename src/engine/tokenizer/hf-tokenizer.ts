/**
 * Hugging Face `tokenizer.json` (+ `tokenizer_config.json`) vocabularies, through the pure-JS
 * @huggingface/tokenizers implementation.
 */
import { readFileSync, existsSync } from "node:fs";
import { dirname, join } from "node:path";
import { Tokenizer as HFTokenizerImpl } from "@huggingface/tokenizers";
import { FileAccessError, InvalidArgumentError, ModelFormatError } from "../../errors.js";
import type { DecodeOptions, EncodeOptions, StreamDecoder, Tokenizer } from "./types.js";

interface AddedTokenJson { id: number; content: string; special?: boolean }
interface TokenizerJson { added_tokens?: AddedTokenJson[]; model?: { vocab?: Record<string, number> | unknown[] } }
type ConfigToken = string | { content?: string } | null | undefined;
interface TokenizerConfigJson {
  add_bos_token?: boolean;
  add_eos_token?: boolean;
  bos_token?: ConfigToken;
  eos_token?: ConfigToken;
  chat_template?: string | { name: string; template: string }[];
}

const EOG_TEXTS = new Set(["<|eot_id|>", "<|im_end|>", "<|end|>", "<end_of_turn>", "<|endoftext|>", "<|eom_id|>",
  "<｜end▁of▁sentence｜>", "<|end_of_text|>", "<|return|>", "<|call|>"]);

function readJson(path: string): unknown {
  let text: string;
  try { text = readFileSync(path, "utf8"); } catch (e) {
    throw new FileAccessError(`cannot read ${path}: ${(e as Error).message}`);
  }
  try { return JSON.parse(text); } catch (e) {
    throw new ModelFormatError(`${path} is not valid JSON: ${(e as Error).message}`);
  }
}

const tokenContent = (t: ConfigToken): string | null => (typeof t === "string" ? t : t?.content ?? null);

export class HFTokenizer implements Tokenizer {
  readonly vocabSize: number;
  readonly bosId: number | null;
  readonly eosIds: readonly number[];
  readonly addBosDefault: boolean;
  readonly addEosDefault: boolean;
  readonly chatTemplate: string | null;
  private readonly impl: HFTokenizerImpl;
  /** Special added tokens, longest first, for parseSpecial = false. */
  private readonly specials: string[];
  private readonly eosId: number | null;

  /** From the parsed JSON objects; see `fromFiles` for paths. */
  constructor(tokenizerJson: object, config: object = {}) {
    const tj = tokenizerJson as TokenizerJson;
    const cfg = config as TokenizerConfigJson;
    try {
      this.impl = new HFTokenizerImpl(tokenizerJson, config);
    } catch (e) {
      throw new ModelFormatError(`tokenizer.json: cannot build the tokenizer: ${(e as Error).message}`);
    }
    this.vocabSize = this.impl.get_vocab(true).size;
    const idOf = (t: ConfigToken): number | null => {
      const c = tokenContent(t);
      return c === null ? null : this.impl.token_to_id(c) ?? null;
    };
    this.bosId = idOf(cfg.bos_token);
    this.eosId = idOf(cfg.eos_token);
    this.addBosDefault = cfg.add_bos_token === true && this.bosId !== null;
    this.addEosDefault = cfg.add_eos_token === true && this.eosId !== null;
    const added = tj.added_tokens ?? [];
    this.specials = added.filter((t) => t.special).map((t) => t.content).sort((a, b) => b.length - a.length);
    const eos = new Set<number>();
    if (this.eosId !== null) eos.add(this.eosId);
    for (const t of added) if (t.special && EOG_TEXTS.has(t.content)) eos.add(t.id);
    this.eosIds = [...eos];
    const ct = cfg.chat_template;
    this.chatTemplate = typeof ct === "string" ? ct
      : Array.isArray(ct) ? (ct.find((t) => t.name === "default") ?? ct[0])?.template ?? null : null;
  }

  /** tokenizer.json and, when present beside it, tokenizer_config.json. */
  static fromFiles(tokenizerJsonPath: string): HFTokenizer {
    const configPath = join(dirname(tokenizerJsonPath), "tokenizer_config.json");
    const config = existsSync(configPath) ? readJson(configPath) : {};
    return new HFTokenizer(readJson(tokenizerJsonPath) as object, config as object);
  }

  encode(text: string, opts: EncodeOptions = {}): number[] {
    const out: number[] = [];
    if ((opts.addBos ?? this.addBosDefault) && this.bosId !== null) out.push(this.bosId);
    if (opts.parseSpecial ?? false) {
      this.encodePlain(text, out);
    } else {
      // The library always matches added tokens; to keep user text from producing control
      // tokens, a special token's text is encoded as two plain pieces (its first character apart).
      let rest = text;
      for (;;) {
        let at = -1;
        let which = "";
        for (const s of this.specials) {
          const i = rest.indexOf(s);
          if (i >= 0 && (at < 0 || i < at)) { at = i; which = s; }
        }
        if (at < 0) break;
        this.encodePlain(rest.slice(0, at), out);
        const first = String.fromCodePoint(which.codePointAt(0)!);
        this.encodePlain(first, out);
        rest = rest.slice(at + first.length);
      }
      this.encodePlain(rest, out);
    }
    if ((opts.addEos ?? this.addEosDefault) && this.eosId !== null) out.push(this.eosId);
    return out;
  }

  private encodePlain(text: string, out: number[]): void {
    if (text.length === 0) return;
    for (const id of this.impl.encode(text, { add_special_tokens: false }).ids) out.push(id);
  }

  decode(ids: readonly number[], opts: DecodeOptions = {}): string {
    if (ids.length === 0) return "";
    for (const id of ids) this.checkId(id);
    return this.impl.decode([...ids], { skip_special_tokens: opts.skipSpecial ?? false, clean_up_tokenization_spaces: false });
  }

  tokenText(id: number): string {
    this.checkId(id);
    return this.impl.id_to_token(id) ?? "";
  }

  /**
   * Windowed incremental decode (as text-generation-inference does): decode the tokens since the
   * last emitted boundary, emit the new suffix unless it ends in an incomplete character (U+FFFD).
   */
  createStreamDecoder(opts: DecodeOptions = {}): StreamDecoder {
    const ids: number[] = [];
    let prefix = 0; // start of the window
    let read = 0; // end of what has been emitted
    const step = (final: boolean): string => {
      const before = this.decode(ids.slice(prefix, read), opts);
      const now = this.decode(ids.slice(prefix), opts);
      if (now.length > before.length && (final || !now.endsWith("\uFFFD"))) {
        prefix = read;
        read = ids.length;
        return now.slice(before.length);
      }
      return "";
    };
    return {
      push: (id: number): string => { this.checkId(id); ids.push(id); return step(false); },
      flush: (): string => step(true),
    };
  }

  private checkId(id: number): void {
    if (!Number.isInteger(id) || id < 0 || id >= this.vocabSize) {
      throw new InvalidArgumentError(`token id ${id} is outside the vocabulary (0..${this.vocabSize - 1})`);
    }
  }
}
