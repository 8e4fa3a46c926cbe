// What the server can do right now, read from GET /readyz once a second: loading (with the
// download's progress), warming up, ready, failed (with the reason: a permanent state), or
// unreachable (no answer within the timeout), and which model (and family) it runs. The page shows it
// before Start and acts on it after.

const INTERVAL_MS = 1000;
const TIMEOUT_MS = 1500; // with the interval: a lost server is noticed within about 2 s

export class ServerState {
  // onChange({ state, text, reason }) whenever what the page should show changes.
  constructor(onChange) {
    this.onChange = onChange;
    this.state = null;
    this.text = "";
    this.model = "–";
    this.timer = null;
  }

  start() {
    this.#poll();
  }

  get ready() {
    return this.state === "ready";
  }

  async #poll() {
    let next;
    try {
      const response = await fetch("/readyz", { cache: "no-store", signal: AbortSignal.timeout(TIMEOUT_MS) });
      const body = await response.json();
      next = { ...describe(response.ok ? "ready" : body.state, body), model: modelName(body), control: body.control || [] };
    } catch {
      next = { state: "unreachable", text: "server unreachable", reason: "", model: this.model, control: this.control };
    }
    const control = String(next.control);
    if (next.state !== this.state || next.text !== this.text || next.model !== this.model || control !== String(this.control)) {
      this.state = next.state;
      this.text = next.text;
      this.model = next.model;
      this.control = next.control;
      this.onChange(next);
    }
    this.timer = setTimeout(() => this.#poll(), INTERVAL_MS);
  }
}

function describe(state, body) {
  const reason = body.reason || "";
  if (state === "ready") return { state, text: "", reason };
  if (state === "failed") return { state, text: "model failed", reason };
  if (state === "warming") return { state, text: reason || "warming up", reason };
  if (body.download && body.download.total_bytes) {
    const { done_bytes: done, total_bytes: total, percent } = body.download;
    return { state, text: `downloading the model ${gb(done)} of ${gb(total)} GB (${percent}%)`, reason };
  }
  return { state: state || "loading", text: "loading the model", reason };
}

// "stabilityai/sdxl-turbo (sdxl)": the model and its family, once the model's config has told it.
function modelName(body) {
  if (!body.model) return "–";
  return body.family && body.family !== "auto" ? `${body.model} (${body.family})` : body.model;
}

const gb = (bytes) => (bytes / 1e9).toFixed(2);
