/** Errors the HTTP API answers with, as OpenAI shapes them: `{"error": {message, type, param, code}}`. */

export type ApiErrorStatus = 400 | 429 | 503 | 504;

export class ApiError extends Error {
  constructor(
    readonly status: ApiErrorStatus,
    message: string,
    readonly details: { readonly type?: string; readonly param?: string | null; readonly code?: string | null; readonly retryAfterSeconds?: number } = {},
  ) {
    super(message);
  }

  /** The JSON body: OpenAI's error object. */
  get body(): { error: { message: string; type: string; param: string | null; code: string | null } } {
    return { error: { message: this.message, type: this.details.type ?? "invalid_request_error", param: this.details.param ?? null, code: this.details.code ?? null } };
  }
}
