/**
 * llama.cpp as an oracle for tests, through node-llama-cpp's prebuilt CPU binary.
 *
 * - One Llama instance per process (getLlama once, CPU only, never builds).
 * - Every call loads the model, does its work and disposes the model and context, so tests can
 *   run many models in one process; `withLlamaModel` keeps one model loaded for several calls.
 * - Greedy means temperature 0 (argmax), no repetition penalty, no token bias, and exactly the
 *   given prompt tokens (no BOS is added).
 * - llama.cpp's own log lines are captured; the last ones are attached to load errors.
 */
import type { Llama, LlamaContext, LlamaModel, Token } from "node-llama-cpp";

let llamaPromise: Promise<Llama> | undefined;
const recentLogs: string[] = [];

/** The shared Llama instance (CPU, prebuilt binary). */
export function getOracleLlama(): Promise<Llama> {
  llamaPromise ??= (async () => {
    const { getLlama, LlamaLogLevel } = await import("node-llama-cpp");
    return getLlama({
      gpu: false,
      build: "never",
      logLevel: LlamaLogLevel.warn,
      logger: (_level, message) => {
        recentLogs.push(message.trimEnd());
        if (recentLogs.length > 40) recentLogs.shift();
      },
    });
  })();
  return llamaPromise;
}

/**
 * Disposes the shared Llama instance (test files call it from `after`), so llama.cpp's native
 * state is torn down in order before the process exits instead of by exit-time destructors.
 */
export async function disposeOracleLlama(): Promise<void> {
  const p = llamaPromise;
  llamaPromise = undefined;
  if (!p) return;
  try {
    await (await p).dispose();
  } catch {
    /* it never loaded: nothing to tear down */
  }
}

/** A loaded model plus the operations tests need; valid only inside `withLlamaModel`. */
export interface OracleModel {
  readonly model: LlamaModel;
  /** Greedy continuation of exactly `promptTokens`: `nTokens` new token ids. */
  greedy(promptTokens: readonly number[], nTokens: number): Promise<number[]>;
  /** Token ids of `text` (no BOS; special-token text is matched as special tokens). */
  tokenize(text: string): number[];
  /**
   * Log-probabilities (log-softmax of the logits) of the next token after each prompt
   * position: `[promptTokens.length][nVocab]`. Logits themselves are these plus a per-row
   * constant, so compare them after subtracting each row's log-sum-exp (or max).
   */
  logProbs(promptTokens: readonly number[]): Promise<Float64Array[]>;
}

/** Loads `modelPath` into llama.cpp, runs `fn`, and disposes everything. */
export async function withLlamaModel<T>(modelPath: string, fn: (m: OracleModel) => Promise<T>, opts: { contextSize?: number } = {}): Promise<T> {
  const llama = await getOracleLlama();
  let model: LlamaModel;
  recentLogs.length = 0;
  try {
    model = await llama.loadModel({ modelPath, gpuLayers: 0 });
  } catch (e) {
    throw new Error(`llama.cpp could not load ${modelPath}: ${(e as Error).message}\n${recentLogs.join("\n")}`);
  }
  const contextSize = opts.contextSize ?? 256;
  // One thread: on small CI machines ggml's thread pool spins against the test runner's other
  // workers (300 ms per token on a tiny model with 2 threads on 2 cores, 1 ms with one).
  const threads = Number(process.env.MOIRA_ORACLE_THREADS ?? 1);
  const newContext = (): Promise<LlamaContext> => model.createContext({ contextSize, batchSize: contextSize, sequences: 1, threads });
  const oracle: OracleModel = {
    model,
    async greedy(promptTokens, nTokens) {
      const context = await newContext();
      try {
        const seq = context.getSequence();
        const out: number[] = [];
        if (nTokens <= 0) return out;
        for await (const tok of seq.evaluate(promptTokens.slice() as Token[], { temperature: 0 })) {
          out.push(tok);
          if (out.length >= nTokens) break;
        }
        return out;
      } finally {
        await context.dispose();
      }
    },
    tokenize(text) {
      return model.tokenize(text, true).map(Number);
    },
    async logProbs(promptTokens) {
      const context = await newContext();
      try {
        const seq = context.getSequence();
        const nVocab = model.fileInfo.metadata.tokenizer?.ggml?.tokens?.length ?? 0;
        const res = await seq.controlledEvaluate(
          promptTokens.map((t) => [t as Token, { generateNext: { probabilities: true, options: { temperature: 1 } } }]),
        );
        return res.map((r, i) => {
          const probs = r?.next?.probabilities;
          if (!probs) throw new Error(`llama.cpp returned no probabilities for prompt position ${i}`);
          let size = nVocab;
          for (const tok of probs.keys()) size = Math.max(size, tok + 1);
          const row = new Float64Array(size).fill(-Infinity);
          for (const [tok, p] of probs) row[tok] = Math.log(p);
          return row;
        });
      } finally {
        await context.dispose();
      }
    },
  };
  try {
    return await fn(oracle);
  } finally {
    await model.dispose();
  }
}

/** Greedy continuation (temperature 0, no penalties) of exactly `promptTokens` (no BOS added). */
export function llamaGreedy(modelPath: string, promptTokens: readonly number[], nTokens: number): Promise<number[]> {
  return withLlamaModel(modelPath, (m) => m.greedy(promptTokens, nTokens), { contextSize: Math.max(64, promptTokens.length + nTokens + 8) });
}

/** Token ids llama.cpp gives `text` with the model's vocabulary (no BOS added). */
export function llamaTokenize(modelPath: string, text: string): Promise<number[]> {
  return withLlamaModel(modelPath, async (m) => m.tokenize(text));
}

/** Log-softmax of llama.cpp's logits after each prompt position: [promptTokens.length][nVocab]. */
export function llamaLogProbs(modelPath: string, promptTokens: readonly number[]): Promise<Float64Array[]> {
  return withLlamaModel(modelPath, (m) => m.logProbs(promptTokens), { contextSize: Math.max(64, promptTokens.length + 8) });
}
