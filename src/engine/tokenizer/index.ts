/**
 * Tokenizers and chat templates.
 *
 * `loadTokenizer(model)` reads the vocabulary of a GGUF file (tokenizer.ggml.*; SentencePiece
 * "llama" and byte-level BPE "gpt2" vocabularies, tokenized exactly as llama.cpp does) or, for a
 * Hugging Face directory, its tokenizer.json (+ tokenizer_config.json).
 */
import { ModelFormatError } from "../../errors.js";
import type { ModelFile } from "../../formats/model-file.js";
import { readGGUFVocab } from "./gguf-vocab.js";
import { GGUFTokenizer } from "./gguf-tokenizer.js";
import { HFTokenizer } from "./hf-tokenizer.js";
import type { Tokenizer } from "./types.js";

export type { Tokenizer, EncodeOptions, DecodeOptions, StreamDecoder, StreamDecoderOptions } from "./types.js";
export { applyChatTemplate, encodeChat, CHATML_TEMPLATE, type ChatMessage, type ChatTemplateOptions } from "./chat-template.js";
export { GGUFTokenizer } from "./gguf-tokenizer.js";
export { HFTokenizer } from "./hf-tokenizer.js";
export { readGGUFVocab, type GGUFVocab } from "./gguf-vocab.js";

/**
 * The model's tokenizer. Hugging Face directories use tokenizer.json when there is one (exact
 * for every tokenizer type the library knows); otherwise the GGUF-style tokenizer.ggml.* metadata.
 * Throws ModelFormatError when the model has neither, UnsupportedError for an unknown tokenizer.
 */
export function loadTokenizer(model: ModelFile): Tokenizer {
  if (model.tokenizerJsonPath !== undefined) return HFTokenizer.fromFiles(model.tokenizerJsonPath);
  if (model.metadata.has("tokenizer.ggml.model")) return new GGUFTokenizer(readGGUFVocab(model.metadata));
  throw new ModelFormatError(
    `${model.path}: no tokenizer (neither tokenizer.ggml.* metadata nor tokenizer.json); add the vocabulary to the model`);
}
