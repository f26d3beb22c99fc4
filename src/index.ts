/**
 * moira as a library: `import { openModel } from "moira"`.
 *
 *   const model = await openModel("model.gguf", { memoryBudget: "2GiB" });
 *   for await (const t of model.generate("Once upon a time", { maxTokens: 32, signal })) process.stdout.write(t.text);
 *   const chat = model.createChat({ system: "You are terse." });
 *   const reply = await chat.send("Hello", { onText: (t) => process.stdout.write(t) });
 *   await model.close();
 *
 * The high-level surface is `openModel` → MoiraModel (generate, complete, createChat, tokenizer)
 * and ChatSession; below it, for full control, the engine's Model, Session and generate().
 * Every error a caller can cause is a MoiraError subclass with a stable `code`.
 */
export { openModel, MoiraModel, DEFAULT_MAX_TOKENS, type OpenModelOptions, type GenerateOptions, type Completion } from "./api/model.js";
export { ChatSession, DEFAULT_CHAT_MAX_TOKENS, type ChatOptions, type ChatTurnOptions, type ChatReply } from "./api/chat.js";

export type { GeneratedToken, GenerationStats } from "./engine/generate.js";
export type { SamplerOptions, TokenLogprob } from "./engine/sampler.js";
export type { Tokenizer, EncodeOptions, DecodeOptions, StreamDecoder, ChatMessage } from "./engine/tokenizer/index.js";
export type { ModelConfig } from "./model/config.js";
export type { KvType } from "./model/kv-cache.js";
export type { BackendName } from "./backend/index.js";
export type { PolicyName } from "./offload/policy.js";
export type { PredictorName } from "./offload/predictor.js";

// the engine underneath: a checkpoint, its KV-cached session, and token generation over it
export { Model } from "./model/model.js";
export { Session, type SessionOptions } from "./engine/session.js";
export { generate, type GenerateOptions as SessionGenerateOptions } from "./engine/generate.js";
export { createBackend } from "./backend/index.js";
export { loadTokenizer, applyChatTemplate, encodeChat } from "./engine/tokenizer/index.js";

export {
  MoiraError, ModelFormatError, MissingTensorError, UnsupportedError, FileAccessError, InvalidArgumentError,
  BudgetError, QueueFullError, ContextFullError,
} from "./errors.js";
