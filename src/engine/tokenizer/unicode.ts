/**
 * Unicode helpers for the GGUF tokenizers, ported from llama.cpp's `unicode.cpp` so that our
 * pre-tokenization splits text exactly where llama.cpp's does: code point classes (letter, number,
 * punctuation, accent mark, symbol, whitespace), GPT-2's byte ↔ unicode mapping, and the regex
 * splitter with its two quirks (chunks from an earlier regex are matched independently, and
 * `\p{..}` classes are matched on a "collapsed" text with one stand-in byte per class).
 */

/** Code point class, as llama.cpp's `unicode_cpt_flags.category_flag()` groups them. */
export const enum CptClass {
  Other = 0,
  Number = 1,
  Letter = 2,
  Punctuation = 3,
  AccentMark = 4,
  Symbol = 5,
}

const WHITESPACE_BIT = 8;
// Per code point: class in the low 3 bits, WHITESPACE_BIT, and 16 once computed (lazy, 1.1 MB).
let flagCache: Uint8Array | null = null;

const RE_N = /\p{N}/u;
const RE_L = /\p{L}/u;
const RE_P = /\p{P}/u;
const RE_M = /\p{M}/u;
const RE_S = /\p{S}/u;

/** llama.cpp's whitespace table (not JS's \s: it has U+0085 and lacks U+FEFF). */
export function isWhitespaceCpt(c: number): boolean {
  return (c >= 0x09 && c <= 0x0d) || c === 0x20 || c === 0x85 || c === 0xa0 || c === 0x1680 ||
    (c >= 0x2000 && c <= 0x200a) || c === 0x2028 || c === 0x2029 || c === 0x202f || c === 0x205f || c === 0x3000;
}

function cptFlags(c: number): number {
  if (c < 0 || c > 0x10ffff) return 0;
  flagCache ??= new Uint8Array(0x110000);
  let f = flagCache[c]!;
  if (f !== 0) return f;
  const s = String.fromCodePoint(c);
  let cls: CptClass = CptClass.Other;
  if (RE_L.test(s)) cls = CptClass.Letter;
  else if (RE_N.test(s)) cls = CptClass.Number;
  else if (RE_P.test(s)) cls = CptClass.Punctuation;
  else if (RE_M.test(s)) cls = CptClass.AccentMark;
  else if (RE_S.test(s)) cls = CptClass.Symbol;
  f = 16 | cls | (isWhitespaceCpt(c) ? WHITESPACE_BIT : 0);
  flagCache[c] = f;
  return f;
}

export function cptClass(c: number): CptClass { return (cptFlags(c) & 7) as CptClass; }
const isLetter = (f: number): boolean => (f & 7) === CptClass.Letter;
const isNumber = (f: number): boolean => (f & 7) === CptClass.Number;
const isWs = (f: number): boolean => (f & WHITESPACE_BIT) !== 0;

export function codePoints(text: string): number[] {
  const out: number[] = [];
  for (const ch of text) out.push(ch.codePointAt(0)!);
  return out;
}

// ---------------------------------------------------------------------------------------------
// GPT-2 byte-level mapping: every byte gets a printable code point, so BPE runs on strings.

const BYTE_TO_CHAR: string[] = new Array(256);
const CHAR_TO_BYTE = new Map<number, number>();
{
  let n = 0;
  for (let b = 0; b < 256; b++) {
    const printable = (b >= 0x21 && b <= 0x7e) || (b >= 0xa1 && b <= 0xac) || (b >= 0xae && b <= 0xff);
    const cp = printable ? b : 256 + n++;
    BYTE_TO_CHAR[b] = String.fromCharCode(cp);
    CHAR_TO_BYTE.set(cp, b);
  }
}

const utf8Encoder = new TextEncoder();

/** UTF-8 bytes of `text`, each as its GPT-2 stand-in character. */
export function byteEncode(text: string): string {
  let out = "";
  for (const b of utf8Encoder.encode(text)) out += BYTE_TO_CHAR[b];
  return out;
}

export function byteToChar(b: number): string { return BYTE_TO_CHAR[b]!; }

/** Inverse of byteEncode for one token's text; characters outside the map pass through as UTF-8. */
export function byteDecode(text: string, out: number[]): void {
  for (const ch of text) {
    const cp = ch.codePointAt(0)!;
    const b = CHAR_TO_BYTE.get(cp);
    if (b !== undefined) out.push(b);
    else for (const x of utf8Encoder.encode(ch)) out.push(x);
  }
}

// ---------------------------------------------------------------------------------------------
// Regex splitting (llama.cpp `unicode_regex_split`). Offsets are lengths in code points.

export const GPT2_REGEX = "'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)";
export const LLAMA3_REGEX =
  "(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}{1,3}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+";
const LLAMA3_REGEX_ORIGINAL =
  "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}{1,3}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+";

// Stand-in characters of the collapsed text, and the ASCII members of each class (which stay
// themselves in the collapsed text). Copied from llama.cpp, including its omissions (`~` is in no
// class) so that splits match.
const COLLAPSED: Record<string, { ch: string; ascii: string }> = {
  "\\p{N}": { ch: "\\xD1", ascii: "0-9" },
  "\\p{L}": { ch: "\\xD2", ascii: "A-Za-z" },
  "\\p{P}": { ch: "\\xD3", ascii: "!-#%-*,-/:-;?-@\\[-\\]_\\{\\}" },
  "\\p{M}": { ch: "\\xD4", ascii: "" },
  "\\p{S}": { ch: "\\xD5", ascii: "\\$\\+<->\\^`\\|" },
};
const COLLAPSED_CHAR = [0xd0, 0xd1, 0xd2, 0xd3, 0xd4, 0xd5]; // indexed by CptClass
// std::regex's \s with the C locale: ASCII whitespace only.
const WS_CLASS = "\\t\\n\\v\\f\\r ";

/**
 * Rewrites a llama.cpp (std::regex ECMAScript) pattern into a JS pattern over the prepared text:
 * `\p{X}` → the collapsed class, `\s`/`\S` → ASCII whitespace. Tracks `[...]` like llama.cpp does.
 */
function translateRegex(expr: string, collapse: boolean): string {
  let out = "";
  let inside = false;
  for (let i = 0; i < expr.length; i++) {
    const c = expr[i]!;
    if (c === "[" && (i === 0 || expr[i - 1] !== "\\")) { out += c; inside = true; continue; }
    if (inside && c === "]" && expr[i - 1] !== "\\") { out += c; inside = false; continue; }
    if (c === "\\" && i + 1 < expr.length) {
      const n = expr[i + 1]!;
      if (collapse && n === "p" && expr[i + 2] === "{" && expr[i + 4] === "}") {
        const cls = COLLAPSED[expr.slice(i, i + 5)];
        if (cls) {
          out += inside ? cls.ch + cls.ascii : `[${cls.ch}${cls.ascii}]`;
          i += 4;
          continue;
        }
      }
      if (n === "s") { out += inside ? WS_CLASS : `[${WS_CLASS}]`; i++; continue; }
      if (n === "S") {
        if (inside) throw new Error(`unsupported \\S inside a class in ${expr}`);
        out += `[^${WS_CLASS}]`; i++; continue;
      }
      out += c + n; i++;
      continue;
    }
    out += c;
  }
  return out;
}

interface CompiledRegex { kind: "gpt2" | "llama3" | "regex"; re?: RegExp; collapse: boolean }

export function compileSplitRegexes(exprs: readonly string[]): CompiledRegex[] {
  return exprs.map((expr) => {
    if (expr === GPT2_REGEX) return { kind: "gpt2", collapse: false };
    if (expr === LLAMA3_REGEX || expr === LLAMA3_REGEX_ORIGINAL) return { kind: "llama3", collapse: false };
    const collapse = /\\p\{[NLPMS]\}/.test(expr);
    return { kind: "regex", re: new RegExp(translateRegex(expr, collapse), "gu"), collapse };
  });
}

/** Splits code points into words; returns the word lengths (code points), like llama.cpp. */
export function regexSplit(cpts: readonly number[], regexes: readonly CompiledRegex[]): number[] {
  let offsets = [cpts.length];
  let collapsed: string | null = null;
  let wide: string | null = null; // cpts with non-ASCII whitespace → \v, as UTF-16
  let wideIndex: Int32Array | null = null; // code unit index → code point index
  for (const r of regexes) {
    if (r.kind === "gpt2") { offsets = splitGpt2(cpts, offsets); continue; }
    if (r.kind === "llama3") { offsets = splitLlama3(cpts, offsets); continue; }
    let text: string;
    let cuToCp: Int32Array | null = null;
    if (r.collapse) {
      if (collapsed === null) {
        let s = "";
        for (const c of cpts) {
          if (c < 128) s += String.fromCharCode(c);
          else if (isWhitespaceCpt(c)) s += "\x0b";
          else s += String.fromCharCode(COLLAPSED_CHAR[cptClass(c)]!);
        }
        collapsed = s;
      }
      text = collapsed;
    } else {
      if (wide === null) {
        let s = "";
        const idx: number[] = [];
        for (let i = 0; i < cpts.length; i++) {
          const c = cpts[i]!;
          const ch = c > 0x7f && isWhitespaceCpt(c) ? "\x0b" : String.fromCodePoint(c);
          for (let k = 0; k < ch.length; k++) idx.push(i);
          s += ch;
        }
        idx.push(cpts.length);
        wide = s;
        wideIndex = Int32Array.from(idx);
      }
      text = wide;
      cuToCp = wideIndex;
    }
    offsets = splitWithRegex(text, cuToCp, r.re!, offsets);
  }
  return offsets;
}

function splitWithRegex(text: string, cuToCp: Int32Array | null, re: RegExp, offsets: readonly number[]): number[] {
  const out: number[] = [];
  // Code point index → code unit index, for chunk boundaries.
  let cpToCu: (cp: number) => number = (cp) => cp;
  if (cuToCp) {
    const rev = new Int32Array(cuToCp[cuToCp.length - 1]! + 1);
    for (let cu = cuToCp.length - 1; cu >= 0; cu--) rev[cuToCp[cu]!] = cu;
    cpToCu = (cp) => rev[cp]!;
  }
  const toCp = (cu: number): number => (cuToCp ? cuToCp[cu]! : cu);
  let start = 0;
  for (const len of offsets) {
    const cu0 = cpToCu(start);
    const chunk = text.slice(cu0, cpToCu(start + len));
    let last = 0; // code points from chunk start
    re.lastIndex = 0;
    for (const m of chunk.matchAll(re)) {
      if (m[0].length === 0) continue;
      const ms = toCp(cu0 + m.index) - start;
      const me = toCp(cu0 + m.index + m[0].length) - start;
      if (ms > last) out.push(ms - last);
      out.push(me - ms);
      last = me;
    }
    if (last < len) out.push(len - last);
    start += len;
  }
  return out;
}

/** One segment of a hand-written split: its bounds, bounded accessors, and `add`, which emits the piece ending at e. */
interface Segment {
  readonly ini: number;
  readonly end: number;
  /** the code point at p, -1 outside the segment */
  cpt(p: number): number;
  /** its category flags, 0 outside the segment */
  flags(p: number): number;
  /** ends the current piece at e; returns its length (0: nothing emitted) */
  add(e: number): number;
}

/** Runs `scan` over each segment of `offsets` and collects the piece lengths it emits (llama.cpp's custom splits). */
function splitSegments(cpts: readonly number[], offsets: readonly number[], scan: (s: Segment) => void): number[] {
  const out: number[] = [];
  let start = 0;
  for (const len of offsets) {
    const ini = start;
    const end = start + len;
    start = end;
    let prevEnd = ini;
    scan({
      ini, end,
      cpt: (p) => (p >= ini && p < end ? cpts[p]! : -1),
      flags: (p) => (p >= ini && p < end ? cptFlags(cpts[p]!) : 0),
      add: (e) => { const l = e - prevEnd; if (l > 0) out.push(l); prevEnd = e; return l; },
    });
  }
  return out;
}

/** llama.cpp `unicode_regex_split_custom_gpt2`: the GPT-2 regex, hand-written. */
function splitGpt2(cpts: readonly number[], offsets: readonly number[]): number[] {
  return splitSegments(cpts, offsets, ({ ini, end, cpt, flags, add }) => {
    for (let pos = ini; pos < end;) {
      const c = cpt(pos);
      const f = flags(pos);
      if (c === 0x27 && pos + 1 < end) { // 's|'t|'re|'ve|'m|'ll|'d
        const n = cpt(pos + 1);
        if (n === 0x73 || n === 0x74 || n === 0x6d || n === 0x64) { pos += add(pos + 2); continue; }
        if (pos + 2 < end) {
          const nn = cpt(pos + 2);
          if ((n === 0x72 && nn === 0x65) || (n === 0x76 && nn === 0x65) || (n === 0x6c && nn === 0x6c)) { pos += add(pos + 3); continue; }
        }
      }
      let f2 = c === 0x20 ? flags(pos + 1) : f;
      if (isLetter(f2)) { // ' ?\p{L}+'
        if (c === 0x20) pos++;
        while (isLetter(f2)) f2 = flags(++pos);
        add(pos);
        continue;
      }
      if (isNumber(f2)) { // ' ?\p{N}+'
        if (c === 0x20) pos++;
        while (isNumber(f2)) f2 = flags(++pos);
        add(pos);
        continue;
      }
      const other = (x: number): boolean => x !== 0 && !isWs(x) && !isLetter(x) && !isNumber(x);
      if (other(f2)) { // ' ?[^\s\p{L}\p{N}]+'
        if (c === 0x20) pos++;
        while (other(f2)) f2 = flags(++pos);
        add(pos);
        continue;
      }
      let nws = 0;
      while (isWs(flags(pos + nws))) nws++;
      if (nws > 1 && cpt(pos + nws) !== -1) { pos += nws - 1; add(pos); continue; } // \s+(?!\S)
      if (nws > 0) { pos += nws; add(pos); continue; } // \s+
      add(++pos);
    }
  });
}

const toLowerAscii = (c: number): number => (c >= 0x41 && c <= 0x5a ? c + 32 : c);

/** llama.cpp `unicode_regex_split_custom_llama3`: the Llama-3 regex, hand-written. */
function splitLlama3(cpts: readonly number[], offsets: readonly number[]): number[] {
  return splitSegments(cpts, offsets, ({ ini, end, cpt, flags, add }) => {
    for (let pos = ini; pos < end;) {
      const c = cpt(pos);
      const f = flags(pos);
      if (c === 0x27 && pos + 1 < end) { // (?i:'s|'t|'re|'ve|'m|'ll|'d)
        const n = toLowerAscii(cpt(pos + 1));
        if (n === 0x73 || n === 0x74 || n === 0x6d || n === 0x64) { pos += add(pos + 2); continue; }
        if (pos + 2 < end) {
          const nn = toLowerAscii(cpt(pos + 2));
          if ((n === 0x72 && nn === 0x65) || (n === 0x76 && nn === 0x65) || (n === 0x6c && nn === 0x6c)) { pos += add(pos + 3); continue; }
        }
      }
      if (!(c === 0x0d || c === 0x0a || isNumber(f))) { // [^\r\n\p{L}\p{N}]?\p{L}+
        if (isLetter(f) || isLetter(flags(pos + 1))) {
          pos++;
          while (isLetter(flags(pos))) pos++;
          add(pos);
          continue;
        }
      }
      if (isNumber(f)) { // \p{N}{1,3}
        let i0 = pos;
        while (isNumber(flags(pos))) {
          if (++pos - i0 >= 3) { add(pos); i0 = pos; }
        }
        add(pos);
        continue;
      }
      let f2 = c === 0x20 ? flags(pos + 1) : f;
      const other = (x: number): boolean => x !== 0 && !isWs(x) && !isLetter(x) && !isNumber(x);
      if (!isWs(f2) && !isLetter(f2) && !isNumber(f2) && f !== 0) { // ' ?[^\s\p{L}\p{N}]+[\r\n]*'
        if (c === 0x20) pos++;
        while (other(f2)) f2 = flags(++pos);
        let c2 = cpt(pos);
        while (c2 === 0x0d || c2 === 0x0a) c2 = cpt(++pos);
        add(pos);
        continue;
      }
      let nws = 0;
      let lastRN = 0;
      while (isWs(flags(pos + nws))) {
        const c2 = cpt(pos + nws);
        if (c2 === 0x0d || c2 === 0x0a) lastRN = pos + nws + 1;
        nws++;
      }
      if (lastRN > 0) { pos = lastRN; add(pos); continue; } // \s*[\r\n]+
      if (nws > 1 && cpt(pos + nws) !== -1) { pos += nws - 1; add(pos); continue; } // \s+(?!\S)
      if (nws > 0) { pos += nws; add(pos); continue; } // \s+
      add(++pos);
    }
  });
}
