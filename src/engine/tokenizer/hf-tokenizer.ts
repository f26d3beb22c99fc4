/**
 * Hugging Face `tokenizer.json` (+ `tokenizer_config.json`) vocabularies, through the pure-JS
 * @huggingface/tokenizers implementation.
 */
import { readFileSync, existsSync } from "node:fs";
import { dirname, join } from "node:path";
import { Tokenizer as HFTokenizerImpl } from "@huggingface/tokenizers";
import { FileAccessError, InvalidArgumentError, ModelFormatError } from "../../errors.js";
import type { DecodeOptions, EncodeOptions, StreamDecoder, StreamDecoderOptions, Tokenizer } from "./types.js";

/** Tokens of a stream's `after` kept as decoding context: enough for a UTF-8 character split over byte tokens. */
const STREAM_CONTEXT_TOKENS = 6;
import { byteDecode } from "./unicode.js";

interface AddedTokenJson { id: number; content: string; special?: boolean }
interface DecoderJson { type?: string; decoders?: DecoderJson[] }
interface TokenizerJson { added_tokens?: AddedTokenJson[]; model?: { vocab?: Record<string, number> | unknown[] }; decoder?: DecoderJson | null }

const utf8 = new TextEncoder();

/** Whether the decoder (or one in its sequence) maps GPT-2's byte stand-in characters back to bytes. */
const isByteLevel = (d: DecoderJson | null | undefined): boolean =>
  d?.type === "ByteLevel" || (d?.decoders ?? []).some(isByteLevel);
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
  /** added tokens' texts by id */
  private readonly addedTexts: ReadonlyMap<number, string>;
  private readonly byteLevel: boolean;

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
    this.addedTexts = new Map(added.map((t) => [t.id, t.content]));
    this.byteLevel = isByteLevel(tj.decoder);
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
   * Added tokens: their text. Byte-fallback pieces (`<0x0A>`): their byte. Byte-level BPE (GPT-2's
   * stand-in characters): the bytes they stand for. Other decoders (Metaspace, WordPiece): the
   * text the token adds after a copy of itself, so that a leading space a decoder strips at the
   * start of a text is kept.
   */
  tokenBytes(id: number): Uint8Array {
    this.checkId(id);
    const added = this.addedTexts.get(id);
    if (added !== undefined) return utf8.encode(added);
    const piece = this.impl.id_to_token(id) ?? "";
    const byte = /^<0x([0-9A-Fa-f]{2})>$/.exec(piece);
    if (byte) return Uint8Array.of(parseInt(byte[1]!, 16));
    if (this.byteLevel) {
      const out: number[] = [];
      byteDecode(piece, out);
      return Uint8Array.from(out);
    }
    const once = this.decode([id]);
    return utf8.encode(this.decode([id, id]).slice(once.length));
  }

  /**
   * Windowed incremental decode (as text-generation-inference does): decode the tokens since the
   * last emitted boundary, emit the new suffix unless it ends in an incomplete character (U+FFFD).
   */
  createStreamDecoder(opts: StreamDecoderOptions = {}): StreamDecoder {
    // the window starts with the last few tokens of `after`, already "emitted": the first new
    // token's text is then decoded in context (a Metaspace decoder strips a window's first space)
    const ids: number[] = opts.after ? opts.after.slice(-STREAM_CONTEXT_TOKENS) : [];
    for (const id of ids) this.checkId(id);
    let prefix = 0; // start of the window
    let read = ids.length; // end of what has been emitted
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
