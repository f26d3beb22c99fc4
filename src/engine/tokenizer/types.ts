/** The tokenizer interface every vocabulary implementation (GGUF, Hugging Face) provides. */

export interface EncodeOptions {
  /** Prepend the BOS token. Default: the model's own setting (`addBosDefault`). */
  addBos?: boolean;
  /** Append the EOS token. Default: the model's own setting (tokenizer.ggml.add_eos_token; usually false). */
  addEos?: boolean;
  /**
   * Recognise control tokens written in the text (`<|im_start|>`, `<s>`) as those tokens.
   * Default false, so user text cannot inject them. User-defined tokens are always recognised,
   * as in llama.cpp and Hugging Face tokenizers.
   */
  parseSpecial?: boolean;
}

export interface DecodeOptions {
  /** Leave out control tokens (BOS, EOS, `<|im_end|>`...). Default false. */
  skipSpecial?: boolean;
}

/** Options of a streaming decoder. */
export interface StreamDecoderOptions extends DecodeOptions {
  /**
   * The tokens the streamed text follows (a generation's prompt): the first streamed token is
   * decoded as it reads after them, so a SentencePiece word-start space is kept (" there" after
   * "Once upon a time"), as llama.cpp streams it. Without them the stream decodes a text from its
   * start, as decode() does.
   */
  after?: readonly number[];
}

/** Incremental detokenizer for streaming generation. */
export interface StreamDecoder {
  /**
   * Adds one token; returns the text that is now complete. Bytes of a UTF-8 character split
   * across tokens (byte-fallback pieces, byte-level BPE) are held back until the character is.
   */
  push(id: number): string;
  /** Ends the stream: returns what was held back (an incomplete character becomes U+FFFD). */
  flush(): string;
}

export interface Tokenizer {
  readonly vocabSize: number;
  readonly bosId: number | null;
  /** Tokens that end generation: EOS plus end-of-turn tokens (EOT, `<|im_end|>`, ...). */
  readonly eosIds: readonly number[];
  /** Whether the model wants BOS prepended (tokenizer.ggml.add_bos_token / tokenizer_config). */
  readonly addBosDefault: boolean;
  encode(text: string, opts?: EncodeOptions): number[];
  /**
   * Text of `ids`. Lossless: decode(encode(text)) == text (for SentencePiece vocabularies the
   * space encode() adds before the text, and after each special token, is removed again).
   */
  decode(ids: readonly number[], opts?: DecodeOptions): string;
  /** The token's raw vocabulary entry (`▁the`, `Ġthe`, `<0x0A>`, `<|im_end|>`). */
  tokenText(id: number): string;
  /**
   * The UTF-8 bytes the token adds to a text it is in the middle of (`▁the` → " the", `<0x0A>` →
   * [10], a control token → its text): a byte-fallback token's byte is there even when it is only
   * part of a character, so the bytes of consecutive tokens concatenate to their text's bytes.
   */
  tokenBytes(id: number): Uint8Array;
  /**
   * A streaming decoder: the concatenation of its outputs equals decode() of all its ids, or with
   * `after`, decode(after + ids) less decode(after).
   */
  createStreamDecoder(opts?: StreamDecoderOptions): StreamDecoder;
  /** The model's Jinja chat template (tokenizer.chat_template), or null when it has none. */
  readonly chatTemplate: string | null;
}
