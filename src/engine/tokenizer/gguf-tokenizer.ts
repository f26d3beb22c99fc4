/**
 * GGUF vocabularies tokenized exactly as llama.cpp's `llama-vocab.cpp` does:
 * - "llama": SentencePiece BPE (highest-score merge first, byte fallback to <0xXX> tokens,
 *   spaces escaped to ▁ and a ▁ prefix before the first text and after every special token);
 * - "gpt2": byte-level BPE (lowest-rank merge first) after llama.cpp's pre-tokenizer regexes,
 *   chosen by tokenizer.ggml.pre.
 * Special tokens (control, user-defined, unknown) are split out of the text first, longest first;
 * control and unknown ones only when `parseSpecial` is set, user-defined ones always.
 * decode() is lossless: unlike llama_detokenize it never applies the BPE "clean_spaces" pass
 * (" ." → "."), and for SPM it removes exactly the space prefixes that encode() added.
 */
import { InvalidArgumentError, UnsupportedError } from "../../errors.js";
import { TokenType, type GGUFVocab } from "./gguf-vocab.js";
import { mergeSymbols } from "./merge-queue.js";
import type { EncodeOptions, DecodeOptions, StreamDecoder, StreamDecoderOptions, Tokenizer } from "./types.js";
import { byteDecode, byteEncode, codePoints, compileSplitRegexes, GPT2_REGEX, LLAMA3_REGEX, regexSplit } from "./unicode.js";

const SPM_SPACE = "\u2581"; // ▁
const ATTR_LSTRIP = 1;
const ATTR_RSTRIP = 2;

/** Pre-tokenizer regexes by tokenizer.ggml.pre, copied from llama.cpp's llm_tokenizer_bpe. */
function bpeRegexes(pre: string): { exprs: string[]; ignoreMerges: boolean } {
  const qwen2 = "(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+";
  const starcoder = ["\\p{N}", GPT2_REGEX];
  const poro = [" ?[^(\\s|.,!?…。，、।۔،)]+"];
  switch (pre) {
    case "default":
      return { exprs: ["[\\p{P}\\$\\+<=>\\^~\\|]+", GPT2_REGEX, "\\p{N}+", "[0-9][0-9][0-9]"], ignoreMerges: false };
    case "llama3": case "llama-v3": case "llama-bpe": case "falcon3": case "pixtral": case "midm-2.0": case "lfm2":
      return { exprs: [LLAMA3_REGEX], ignoreMerges: true };
    case "dbrx": case "smaug-bpe": case "glm4": case "chatglm-bpe":
      return { exprs: [LLAMA3_REGEX], ignoreMerges: false };
    case "deepseek-llm":
      return {
        exprs: [
          "[\r\n]",
          "\\s?[A-Za-zµÀ-ÖØ-öø-ƺƼ-ƿǄ-ʓʕ-ʯͰ-ͳͶͷͻ-ͽͿΆΈ-ΊΌΎ-ΡΣ-ϵϷ-ҁҊ-ԯԱ-ՖႠ-ჅᎠ-Ᏽᏸ-ᏽᲐ-ᲺᲽ-Ჿᴀ-ᴫᵫ-ᵷᵹ-ᶚḀ-ἕἘ-Ἕἠ-ὅὈ-Ὅὐ-ὗὙὛὝὟ-\u1F7Dᾀ-ᾴᾶ-ᾼ\u1FBEῂ-ῄῆ-ῌῐ-\u1FD3ῖ-\u1FDBῠ-Ῥῲ-ῴῶ-ῼℂℇℊ-ℓℕℙ-ℝℤ\u2126ℨ\u212A-ℭℯ-ℴℹℼ-ℿⅅ-ⅉⅎↃↄⰀ-ⱻⱾ-ⳤⳫ-ⳮⳲⳳꙀ-ꙭꚀ-ꚛꜢ-ꝯꝱ-ꞇꞋ-ꞎꭰ-ꮿﬀ-ﬆﬓ-ﬗＡ-Ｚａ-ｚ𐐀-𐑏𐒰-𐓓𐓘-𐓻𐲀-𐲲𐳀-𐳲𑢠-𑣟𞤀-𞥃]+",
          "\\s?[!-/:-~！-／：-～‘-‟　-。]+",
          "\\s+$",
          "[一-龥ࠀ-一가-퟿]+",
          "\\p{N}+",
        ],
        ignoreMerges: false,
      };
    case "deepseek-v3": case "hunyuan-dense":
      return {
        exprs: [
          "\\p{N}{1,3}",
          "[一-龥぀-ゟ゠-ヿ]+",
          "[!\"#$%&'()*+,\\-./:;<=>?@\\[\\\\\\]^_`{|}~][A-Za-z]+|[^\r\n\\p{L}\\p{P}\\p{S}]?[\\p{L}\\p{M}]+| ?[\\p{P}\\p{S}]+[\r\n]*|\\s*[\r\n]+|\\s+(?!\\S)|\\s+",
        ],
        ignoreMerges: false,
      };
    case "deepseek-coder":
      return { exprs: ["[\r\n]", "\\s?\\p{L}+", "\\s?\\p{P}+", "[一-龥ࠀ-一가-퟿]+", "\\p{N}"], ignoreMerges: false };
    case "falcon":
      return { exprs: ["[\\p{P}\\$\\+<=>\\^~\\|`]+", GPT2_REGEX, "[0-9][0-9][0-9]"], ignoreMerges: false };
    case "starcoder": case "refact": case "command-r": case "smollm": case "codeshell": case "exaone": case "minerva-7b":
      return { exprs: starcoder, ignoreMerges: false };
    case "gpt-2": case "phi-2": case "jina-es": case "jina-de": case "gigachat": case "jina-v2-es": case "jina-v2-de":
    case "jina-v2-code": case "roberta-bpe": case "mpt": case "olmo": case "jais": case "trillion": case "gpt-neox":
      return { exprs: [GPT2_REGEX], ignoreMerges: false };
    case "qwen2": case "deepseek-r1-qwen": case "megrez": case "stablelm2": case "hunyuan":
      return { exprs: [qwen2], ignoreMerges: false };
    case "poro-chat": case "bloom": case "gpt3-finnish":
      return { exprs: poro, ignoreMerges: false };
    case "viking":
      return { exprs: [...poro, "\\p{N}"], ignoreMerges: false };
    case "tekken":
      return {
        exprs: ["[^\\r\\n\\p{L}\\p{N}]?((?=[\\p{L}])([^a-z]))*((?=[\\p{L}])([^A-Z]))+|[^\\r\\n\\p{L}\\p{N}]?((?=[\\p{L}])([^a-z]))+((?=[\\p{L}])([^A-Z]))*|\\p{N}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n/]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+"],
        ignoreMerges: true,
      };
    case "gpt-4o": case "llama4":
      return {
        exprs: ["[^\\r\\n\\p{L}\\p{N}]?((?=[\\p{L}])([^a-z]))*((?=[\\p{L}])([^A-Z]))+(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])?|[^\\r\\n\\p{L}\\p{N}]?((?=[\\p{L}])([^a-z]))+((?=[\\p{L}])([^A-Z]))*(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])?|\\p{N}{1,3}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n/]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+"],
        ignoreMerges: false,
      };
    default:
      throw new UnsupportedError(
        `tokenizer.ggml.pre = ${JSON.stringify(pre)}: unknown pre-tokenizer (supported: default, gpt-2, llama3/llama-bpe, deepseek-llm, deepseek-v3, deepseek-coder, qwen2, olmo, falcon, starcoder, tekken, gpt-4o, ...)`);
  }
}

/** Token texts that end a turn when they are control tokens (llama.cpp's EOG heuristics). */
const EOG_TEXTS = new Set([
  "<|eot_id|>", "<|im_end|>", "<|end|>", "<end_of_turn>", "<|endoftext|>", "<|eom_id|>", "<EOT>", "_<EOT>",
  "<｜end▁of▁sentence｜>", "<|end_of_text|>", "<end_of_utterance>", "<|return|>", "<|call|>",
]);

type Fragment = string | number; // raw text, or a token id split out of it

export class GGUFTokenizer implements Tokenizer {
  readonly vocabSize: number;
  readonly bosId: number | null;
  readonly eosIds: readonly number[];
  readonly addBosDefault: boolean;
  readonly addEosDefault: boolean;
  readonly chatTemplate: string | null;
  /** llama.cpp's vocabulary type: "spm" for tokenizer.ggml.model = llama, "bpe" for gpt2. */
  readonly kind: "spm" | "bpe";

  private readonly vocab: GGUFVocab;
  private readonly tokenToId = new Map<string, number>();
  private readonly bpeRanks = new Map<string, number>();
  private readonly specialIds: number[];
  private readonly attrs: Uint8Array;
  private readonly splitRegexes: ReturnType<typeof compileSplitRegexes> = [];
  private readonly ignoreMerges: boolean = false;
  private readonly pieceCache: (Uint8Array | undefined)[];

  constructor(vocab: GGUFVocab) {
    this.vocab = vocab;
    this.kind = vocab.model === "llama" ? "spm" : "bpe";
    const n = vocab.tokens.length;
    this.vocabSize = n;
    this.bosId = vocab.bosId;
    this.addBosDefault = vocab.addBos && vocab.bosId !== null;
    this.addEosDefault = vocab.addEos && vocab.eosId !== null;
    this.chatTemplate = vocab.chatTemplate;
    this.pieceCache = new Array(n);
    for (let i = 0; i < n; i++) this.tokenToId.set(vocab.tokens[i]!, i); // last one wins, as in llama.cpp
    if (this.kind === "bpe") {
      for (let i = 0; i < vocab.merges.length; i++) {
        const m = vocab.merges[i]!;
        if (m.indexOf(" ", 1) < 0) continue;
        if (!this.bpeRanks.has(m)) this.bpeRanks.set(m, i);
      }
      const { exprs, ignoreMerges } = bpeRegexes(vocab.pre);
      this.splitRegexes = compileSplitRegexes(exprs);
      this.ignoreMerges = ignoreMerges;
    }

    const special = (t: number): boolean => t === TokenType.Control || t === TokenType.UserDefined || t === TokenType.Unknown;
    const byteLen = (s: string): number => Buffer.byteLength(s, "utf8");
    this.specialIds = [];
    for (let i = 0; i < n; i++) if (special(vocab.types[i]!)) this.specialIds.push(i);
    this.specialIds.sort((a, b) => byteLen(vocab.tokens[b]!) - byteLen(vocab.tokens[a]!) || a - b);

    this.attrs = new Uint8Array(n);
    if (vocab.modelName.includes("phi-3") || vocab.modelName.includes("phi3")) {
      // llama.cpp: Phi-3's special tokens eat the whitespace after them, except <unk> <s> <|endoftext|>.
      for (const id of this.specialIds) this.attrs[id]! |= ATTR_RSTRIP;
      const set = (text: string, on: boolean): void => {
        const id = this.tokenToId.get(text);
        if (id !== undefined) this.attrs[id] = on ? this.attrs[id]! | ATTR_RSTRIP : this.attrs[id]! & ~ATTR_RSTRIP;
      };
      set("</s>", true);
      for (const t of ["<unk>", "<s>", "<|endoftext|>"]) set(t, false);
    }

    const eos = new Set<number>();
    for (const id of [vocab.eosId, vocab.eotId, vocab.eomId]) if (id !== null) eos.add(id);
    for (let i = 0; i < n; i++) {
      const t = vocab.types[i]!;
      if ((t === TokenType.Control || t === TokenType.UserDefined) && EOG_TEXTS.has(vocab.tokens[i]!)) eos.add(i);
    }
    this.eosIds = [...eos];
  }

  tokenText(id: number): string {
    this.checkId(id);
    return this.vocab.tokens[id]!;
  }

  tokenBytes(id: number): Uint8Array {
    this.checkId(id);
    return this.pieceBytes(id).slice();
  }

  encode(text: string, opts: EncodeOptions = {}): number[] {
    const addBos = opts.addBos ?? this.addBosDefault;
    const addEos = opts.addEos ?? this.addEosDefault;
    const out: number[] = [];
    if (addBos && this.bosId !== null) out.push(this.bosId);
    const frags = text.length > 0 ? this.partitionSpecial(text, opts.parseSpecial ?? false) : [];
    if (this.kind === "spm") {
      let prevSpecial = true; // prefix the first text with a space, as SentencePiece does
      for (const f of frags) {
        if (typeof f === "number") { out.push(f); prevSpecial = true; continue; }
        const t = (this.vocab.addSpacePrefix && prevSpecial ? " " : "") + f;
        this.spmTokenize(t.replaceAll(" ", SPM_SPACE), out);
        prevSpecial = false;
      }
    } else {
      for (const f of frags) {
        if (typeof f === "number") out.push(f);
        else this.bpeTokenize(f, out);
      }
    }
    if (addEos && this.vocab.eosId !== null) out.push(this.vocab.eosId);
    return out;
  }

  decode(ids: readonly number[], opts: DecodeOptions = {}): string {
    const bytes: number[] = [];
    const state = { stripSpace: this.stripsLeadingSpace() };
    for (const id of ids) this.appendPiece(id, opts.skipSpecial ?? false, state, bytes);
    return new TextDecoder().decode(Uint8Array.from(bytes));
  }

  createStreamDecoder(opts: StreamDecoderOptions = {}): StreamDecoder {
    const dec = new TextDecoder();
    const state = { stripSpace: this.stripsLeadingSpace() };
    const skip = opts.skipSpecial ?? false;
    // whether the first piece loses its space depends only on the token before it
    const before = opts.after?.at(-1);
    if (before !== undefined) this.appendPiece(before, skip, state, []);
    return {
      push: (id: number): string => {
        const bytes: number[] = [];
        this.appendPiece(id, skip, state, bytes);
        return bytes.length === 0 ? "" : dec.decode(Uint8Array.from(bytes), { stream: true });
      },
      flush: (): string => dec.decode(),
    };
  }

  // ---------------------------------------------------------------------------------------------

  private checkId(id: number): void {
    if (!Number.isInteger(id) || id < 0 || id >= this.vocabSize) {
      throw new InvalidArgumentError(`token id ${id} is outside the vocabulary (0..${this.vocabSize - 1})`);
    }
  }

  private stripsLeadingSpace(): boolean { return this.kind === "spm" && this.vocab.addSpacePrefix; }

  /**
   * Bytes of one token. SPM: the space that encode() put before the first text and after each
   * special token is removed again, so that decode(encode(text)) == text.
   */
  private appendPiece(id: number, skipSpecial: boolean, state: { stripSpace: boolean }, out: number[]): void {
    this.checkId(id);
    const type = this.vocab.types[id]!;
    if (type === TokenType.Control || type === TokenType.Unknown || type === TokenType.UserDefined) {
      if (!(skipSpecial && type !== TokenType.UserDefined)) for (const b of this.pieceBytes(id)) out.push(b);
      state.stripSpace = this.stripsLeadingSpace();
      return;
    }
    const piece = this.pieceBytes(id);
    let start = 0;
    if (state.stripSpace && type !== TokenType.Byte && piece[0] === 0x20) start = 1;
    state.stripSpace = false;
    for (let i = start; i < piece.length; i++) out.push(piece[i]!);
  }

  private pieceBytes(id: number): Uint8Array {
    let p = this.pieceCache[id];
    if (p) return p;
    const text = this.vocab.tokens[id]!;
    const type = this.vocab.types[id]!;
    if (type === TokenType.Control || type === TokenType.Unknown || type === TokenType.UserDefined) {
      p = new TextEncoder().encode(text);
    } else if (this.kind === "spm") {
      const m = type === TokenType.Byte ? /^<0x([0-9A-Fa-f]{2})>$/.exec(text) : null;
      p = m ? Uint8Array.of(parseInt(m[1]!, 16)) : new TextEncoder().encode(text.replaceAll(SPM_SPACE, " "));
    } else {
      const bytes: number[] = [];
      byteDecode(text, bytes);
      p = Uint8Array.from(bytes);
    }
    this.pieceCache[id] = p;
    return p;
  }

  /** llama.cpp tokenizer_st_partition: split special tokens out of the text, longest first. */
  private partitionSpecial(text: string, parseSpecial: boolean): Fragment[] {
    let frags: Fragment[] = [text];
    const isSpace = (c: string): boolean => c === " " || (c >= "\t" && c <= "\r");
    for (const id of this.specialIds) {
      const type = this.vocab.types[id]!;
      if (!parseSpecial && (type === TokenType.Control || type === TokenType.Unknown)) continue;
      const tok = this.vocab.tokens[id]!;
      const attr = this.attrs[id]!;
      const next: Fragment[] = [];
      for (const f of frags) {
        if (typeof f === "number" || !f.includes(tok)) { next.push(f); continue; }
        let pos = 0;
        for (;;) {
          const m = f.indexOf(tok, pos);
          if (m < 0) { if (pos < f.length) next.push(f.slice(pos)); break; }
          let leftEnd = m;
          if (attr & ATTR_LSTRIP) while (leftEnd > pos && isSpace(f[leftEnd - 1]!)) leftEnd--;
          if (leftEnd > pos) next.push(f.slice(pos, leftEnd));
          next.push(id);
          pos = m + tok.length;
          if (attr & ATTR_RSTRIP) while (pos < f.length && isSpace(f[pos]!)) pos++;
          if (pos >= f.length) break;
        }
      }
      frags = next;
    }
    return frags;
  }

  private byteToken(b: number): number {
    const hex = b.toString(16).toUpperCase().padStart(2, "0");
    const id = this.tokenToId.get(`<0x${hex}>`) ?? (b < 0x80 ? this.tokenToId.get(String.fromCharCode(b)) : undefined);
    if (id === undefined) {
      if (this.vocab.unkId !== null) return this.vocab.unkId;
      throw new UnsupportedError(`SentencePiece vocabulary has no byte token <0x${hex}> for byte fallback`);
    }
    return id;
  }

  /** llama.cpp llm_tokenizer_spm_session::tokenize. The hot function for SPM vocabularies. */
  private spmTokenize(text: string, out: number[]): void {
    if (text.length === 0) return;
    const start: number[] = [];
    const lens: number[] = [];
    for (let off = 0; off < text.length;) {
      const cp = text.codePointAt(off)!;
      const n = cp > 0xffff ? 2 : 1;
      start.push(off);
      lens.push(n);
      off += n;
    }
    const len = Int32Array.from(lens);
    const scores = this.vocab.scores;
    const next = mergeSymbols(len, (l, r) => {
      const id = this.tokenToId.get(text.substr(start[l]!, len[l]! + len[r]!));
      return id === undefined ? undefined : scores ? scores[id]! : 0;
    });
    for (let i = 0; i !== -1; i = next[i]!) {
      const piece = text.substr(start[i]!, len[i]!);
      const id = this.tokenToId.get(piece);
      if (id !== undefined) { out.push(id); continue; }
      // A symbol that is no token is always a single character: fall back to its UTF-8 bytes.
      for (const byte of new TextEncoder().encode(piece)) out.push(this.byteToken(byte));
    }
  }

  /** llama.cpp llm_tokenizer_bpe_session::tokenize. The hot function for BPE vocabularies. */
  private bpeTokenize(text: string, out: number[]): void {
    const cpts = codePoints(text);
    const lengths = regexSplit(cpts, this.splitRegexes);
    let cpPos = 0;
    let cuPos = 0;
    for (const n of lengths) {
      let cuEnd = cuPos;
      for (let k = 0; k < n; k++) cuEnd += cpts[cpPos + k]! > 0xffff ? 2 : 1;
      const word = byteEncode(text.slice(cuPos, cuEnd));
      cpPos += n;
      cuPos = cuEnd;
      if (word.length > 0) this.bpeWord(word, out);
    }
  }

  private bpeWord(word: string, out: number[]): void {
    if (this.ignoreMerges) {
      const id = this.tokenToId.get(word);
      if (id !== undefined) { out.push(id); return; }
    }
    // Byte-encoded text: one UTF-16 unit per symbol.
    const len = new Int32Array(word.length).fill(1);
    const next = mergeSymbols(len, (l, r) => {
      const rank = this.bpeRanks.get(word.substr(l, len[l]!) + " " + word.substr(r, len[r]!));
      return rank === undefined ? undefined : -rank;
    });
    for (let i = 0; i !== -1; i = next[i]!) {
      const piece = word.substr(i, len[i]!);
      const id = this.tokenToId.get(piece);
      if (id !== undefined) { out.push(id); continue; }
      // llama.cpp: try each byte of the piece as a one-byte token; only ASCII can match.
      for (const ch of piece) {
        if (ch.charCodeAt(0) >= 0x80) continue;
        const bid = this.tokenToId.get(ch);
        if (bid !== undefined) out.push(bid);
      }
    }
  }
}
