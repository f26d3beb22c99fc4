/** Chat templates: the model's Jinja template rendered with @huggingface/jinja. */
import { Template } from "@huggingface/jinja";
import { InvalidArgumentError, ModelFormatError } from "../../errors.js";
import type { Tokenizer } from "./types.js";

export interface ChatMessage { role: string; content: string }

export interface ChatTemplateOptions {
  /** End with the opening of an assistant turn, so that the model writes the reply. Default true. */
  addGenerationPrompt?: boolean;
  /** A Jinja template to use instead of the model's own. */
  template?: string;
}

/** ChatML (`<|im_start|>role\n...<|im_end|>\n`), the fallback for models without a template. */
export const CHATML_TEMPLATE =
  "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}{% endfor %}" +
  "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}";

/**
 * Renders `messages` into a prompt with the model's chat template (tokenizer.chat_template in
 * GGUF, chat_template in tokenizer_config.json), or `opts.template`.
 *
 * When the model has no template, a plain ChatML template (CHATML_TEMPLATE) is used: right for
 * ChatML-trained models (Qwen, many fine-tunes), only a reasonable guess for others.
 *
 * The template sees `messages`, `add_generation_prompt`, `bos_token` and `eos_token`. Templates
 * that write `bos_token` themselves (Llama 2, Mistral) already start with BOS: encode the result
 * with `{ addBos: false, parseSpecial: true }` so that BOS is not doubled and the template's
 * control tokens become tokens.
 */
export function applyChatTemplate(tok: Tokenizer, messages: ChatMessage[], opts: ChatTemplateOptions = {}): string {
  const source = opts.template ?? tok.chatTemplate ?? CHATML_TEMPLATE;
  let template: Template;
  try {
    template = new Template(source);
  } catch (e) {
    const msg = `chat template does not parse: ${(e as Error).message}`;
    throw opts.template !== undefined ? new InvalidArgumentError(msg) : new ModelFormatError(`the model's ${msg}`);
  }
  try {
    return template.render({
      messages,
      add_generation_prompt: opts.addGenerationPrompt ?? true,
      bos_token: tok.bosId !== null ? tok.tokenText(tok.bosId) : "",
      eos_token: tok.eosIds.length > 0 ? tok.tokenText(tok.eosIds[0]!) : "",
    });
  } catch (e) {
    throw new InvalidArgumentError(`chat template failed on these messages: ${(e as Error).message}`);
  }
}

/**
 * A conversation as the prompt of its next reply: rendered by the chat template with the
 * assistant's turn opened, encoded with the template's control tokens read as tokens, BOS first
 * where the model wants one and the template did not write it.
 */
export function encodeChat(tok: Tokenizer, messages: ChatMessage[]): number[] {
  const ids = tok.encode(applyChatTemplate(tok, messages, { addGenerationPrompt: true }), { addBos: false, parseSpecial: true });
  if (tok.bosId !== null && tok.addBosDefault && ids[0] !== tok.bosId) ids.unshift(tok.bosId);
  return ids;
}
