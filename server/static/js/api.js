// JSON over HTTP: every call goes through api(); failures become ApiError with the server's words.

import { authHeaders } from "./token.js";

export class ApiError extends Error {
  constructor(status, error, detail) {
    super(describe(status, error, detail));
    this.name = "ApiError";
    this.status = status;
    this.error = error;
    this.detail = detail;
  }

  // Worth trying again later: the server is busy, still loading, or unreachable.
  get retryable() {
    return this.status === 0 || this.status === 408 || this.status === 429 || this.status >= 500;
  }
}

function describe(status, error, detail) {
  if (status === 0) return `cannot reach the server (${error})`;
  if (status === 401) {
    return "unauthorized (401): this server needs an API token — open the page as /?token=YOUR_TOKEN";
  }
  let text = error || `HTTP ${status}`;
  if (typeof detail === "string" && detail) text += `: ${detail}`;
  else if (detail && typeof detail === "object" && detail.reason) text += `: ${detail.reason}`;
  else if (Array.isArray(detail) && detail.length) {
    text += `: ${detail.map((d) => `${d.field} ${d.message}`).join("; ")}`;
  }
  return `${text} (${status})`;
}

// options: timeoutMs (give up after), keepalive (let the request outlive the page, e.g. on pagehide).
export async function api(method, path, body, options = {}) {
  const headers = authHeaders();
  // FormData (file uploads) goes as multipart, with the boundary the browser picks; the rest is JSON.
  const form = body instanceof FormData;
  if (body !== undefined && !form) headers["Content-Type"] = "application/json";
  let response;
  try {
    response = await fetch(path, {
      method,
      headers,
      body: body === undefined || form ? body : JSON.stringify(body),
      cache: "no-store",
      keepalive: Boolean(options.keepalive),
      signal: options.timeoutMs ? AbortSignal.timeout(options.timeoutMs) : undefined,
    });
  } catch (error) {
    throw new ApiError(0, error.message, null);
  }
  const data = await response.json().catch(() => ({}));
  if (!response.ok) throw new ApiError(response.status, data.error || response.statusText, data.detail);
  return data;
}
