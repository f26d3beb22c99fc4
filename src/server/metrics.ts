/** The server's counters and gauges, as Prometheus text for /metrics. */
import type { GenerationStats } from "../engine/generate.js";
import type { Scheduler, SlotPhase } from "../engine/scheduler.js";
import { BATCH_SIZE_BUCKETS, type Batcher } from "../engine/batcher.js";
import type { EndCause } from "./app.js";

const PHASES: readonly SlotPhase[] = ["idle", "prefill", "decode"];

/** A metric family as Prometheus text lines: HELP, TYPE, then one line per (labels, value). */
export function metricLines(name: string, type: "counter" | "gauge" | "histogram", help: string, values: ReadonlyArray<readonly [string, number]>): string[] {
  return [`# HELP ${name} ${help}`, `# TYPE ${name} ${type}`, ...values.map(([labels, v]) => `${name}${labels} ${v}`)];
}

export class ServerMetrics {
  requests = 0;
  errors = 0;
  /** answered 429: the queue was full */
  rejected = 0;
  private promptTokens = 0;
  private cachedTokens = 0;
  private generatedTokens = 0;
  private prefillSeconds = 0;
  private decodeSeconds = 0;
  private lastDecodeTps = 0;
  private readonly endedEarly: Record<EndCause, number> = { client: 0, timeout: 0, shutdown: 0 };
  /** mean seconds a request takes from arrival to its end (exponentially weighted), for Retry-After */
  private meanRequestSeconds = 0;

  /** Counts a generation's tokens and time, however it ended. */
  count(s: GenerationStats): void {
    this.promptTokens += s.promptTokens;
    this.cachedTokens += s.cachedTokens;
    this.generatedTokens += s.generatedTokens;
    this.prefillSeconds += s.prefillMs / 1000;
    this.decodeSeconds += s.decodeMs / 1000;
    if (s.decodeTokensPerSecond > 0) this.lastDecodeTps = s.decodeTokensPerSecond;
  }

  /** Counts a request ended early; returns its cause. */
  ended(cause: EndCause): EndCause {
    this.endedEarly[cause]++;
    return cause;
  }

  /** A request held the engine (queue wait included) this long. */
  took(seconds: number): void {
    this.meanRequestSeconds = this.meanRequestSeconds === 0 ? seconds : 0.8 * this.meanRequestSeconds + 0.2 * seconds;
  }

  /** When to retry after a 429: about the time the queue ahead takes to move one place. */
  retryAfterSeconds(scheduler: Scheduler): number {
    return Math.max(1, Math.ceil(this.meanRequestSeconds / scheduler.slots.length));
  }

  format(scheduler: Scheduler, batcher: Batcher): string {
    const one = (v: number): ReadonlyArray<readonly [string, number]> => [["", v]];
    const batch = batcher.batchSize();
    return [
      ...metricLines("moira_requests_total", "counter", "Completion requests received.", one(this.requests)),
      ...metricLines("moira_request_errors_total", "counter", "Requests answered with an error.", one(this.errors)),
      ...metricLines("moira_requests_rejected_total", "counter", "Requests answered 429 because the queue was full.", one(this.rejected)),
      ...metricLines("moira_requests_ended_early_total", "counter", "Requests ended before their generation did, by cause.",
        Object.entries(this.endedEarly).map(([cause, v]) => [`{cause="${cause}"}`, v] as const)),
      ...metricLines("moira_queue_depth", "gauge", "Requests waiting for a slot.", one(scheduler.queued)),
      ...metricLines("moira_queue_capacity", "gauge", "Most requests that may wait (--queue-size).", one(scheduler.maxQueue)),
      ...metricLines("moira_requests_in_flight", "gauge", "Requests holding a slot.", one(scheduler.inFlight)),
      ...metricLines("moira_slot_state", "gauge", "1 for the phase each slot is in.",
        scheduler.slots.flatMap((s) => PHASES.map((ph) => [`{slot="${s.id}",state="${ph}"}`, s.phase === ph ? 1 : 0] as const))),
      ...metricLines("moira_slot_cached_tokens", "gauge", "Tokens in each slot's KV cache.",
        scheduler.slots.map((s) => [`{slot="${s.id}"}`, s.session.position] as const)),
      ...metricLines("moira_batch_size", "gauge", "Streams in the decode batch now (decoded together, one forward per step).", one(batch.current)),
      ...metricLines("moira_batch_decode_rows", "histogram", "Sequences decoded per decode step (the batch size of each step).", [
        ...BATCH_SIZE_BUCKETS.map((le, i) => [`_bucket{le="${le}"}`, batch.buckets[i]] as const),
        ['_bucket{le="+Inf"}', batch.steps], ["_sum", batch.rows], ["_count", batch.steps],
      ]),
      ...metricLines("moira_prompt_tokens_total", "counter", "Prompt tokens of requests run.", one(this.promptTokens)),
      ...metricLines("moira_prompt_cached_tokens_total", "counter", "Prompt tokens found in a slot's KV cache (not prefilled).", one(this.cachedTokens)),
      ...metricLines("moira_generated_tokens_total", "counter", "Tokens generated.", one(this.generatedTokens)),
      ...metricLines("moira_prefill_seconds_total", "counter", "Time spent in prefill.", one(this.prefillSeconds)),
      ...metricLines("moira_decode_seconds_total", "counter", "Time spent decoding.", one(this.decodeSeconds)),
      ...metricLines("moira_decode_tokens_per_second", "gauge", "Decode speed of the last request that decoded.", one(this.lastDecodeTps)),
    ].join("\n") + "\n";
  }
}
