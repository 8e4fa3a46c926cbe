// The monitor: polls /api/stats every second, fills the cards and tables, draws the charts.
import { authHeaders } from "./js/token.js";

const $ = (id) => document.getElementById(id);

const POLL_MS = 1000;
const HISTORY = 120; // samples kept per series: two minutes at one per second
const GIB = 1024 ** 3;
const COLORS = { a: "#4fc3f7", b: "#ffb74d", c: "#81c784", limit: "#777" };

// One ring of samples per chart line; null where the server could not be read.
const history = { fpsIn: [], fpsOut: [], p50: [], p95: [], batch: [], gpuAllocated: [], gpuUsed: [] };
let maxBatch = null;
let hasGpu = false;

function push(name, value) {
  const ring = history[name];
  ring.push(Number.isFinite(value) ? value : null);
  if (ring.length > HISTORY) ring.shift();
}

// -- formatting -------------------------------------------------------------------------------

function fixed(value, digits = 1) {
  return Number.isFinite(value) ? value.toFixed(digits) : "–";
}

function ms(value) {
  if (!Number.isFinite(value)) return "–";
  return value >= 100 ? `${Math.round(value)} ms` : `${value.toFixed(1)} ms`;
}

function bytes(value) {
  if (!Number.isFinite(value)) return "–";
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let unit = 0;
  while (value >= 1024 && unit < units.length - 1) {
    value /= 1024;
    unit += 1;
  }
  return `${value >= 100 || unit === 0 ? Math.round(value) : value.toFixed(1)} ${units[unit]}`;
}

function duration(seconds) {
  if (!Number.isFinite(seconds)) return "–";
  const s = Math.floor(seconds);
  const h = Math.floor(s / 3600);
  const m = Math.floor((s % 3600) / 60);
  if (h) return `${h}h ${String(m).padStart(2, "0")}m`;
  if (m) return `${m}m ${String(s % 60).padStart(2, "0")}s`;
  return `${s}s`;
}

function setText(id, text) {
  $(id).textContent = text;
}

function setValue(id, number, unit) {
  // A big number with a small unit beside it.
  const element = $(id);
  element.replaceChildren(document.createTextNode(number));
  if (unit && number !== "–") {
    const small = document.createElement("small");
    small.textContent = unit;
    element.append(small);
  }
}

function showReason(text, bad) {
  const banner = $("reason");
  banner.textContent = text;
  banner.hidden = !text;
  banner.classList.toggle("bad", bad);
}

function setLevel(cardId, level) {
  $(cardId).classList.remove("ok", "warn", "bad");
  if (level) $(cardId).classList.add(level);
}

// -- the cards and tables ---------------------------------------------------------------------

function render(stats) {
  const engine = stats.engine;
  const frames = stats.frames;
  const system = stats.system;

  const state = $("state");
  state.textContent = engine.state;
  state.className = `pill ${engine.state}`;
  state.title = engine.reason;
  showReason(engine.state === "ready" ? "" : engine.reason, engine.state === "failed");
  setText("model", engine.family && engine.family !== "auto" ? `${engine.model} (${engine.family})` : engine.model);
  setText("device", engine.device ? `${engine.device} ${engine.dtype}` : "–");
  setText("uptime", duration(stats.uptime_s));
  setText("version", stats.version);
  setText("updated", new Date().toLocaleTimeString());

  const streams = stats.streams.length;
  setValue("streams", String(streams));
  setText("streams-sub", streams ? stats.streams.map((s) => s.id).join(" ") : "none connected");

  setValue("fps-out", fixed(frames.fps_out));
  setText("fps-in", fixed(frames.fps_in));
  const keepingUp = frames.fps_in > 0 ? frames.fps_out / frames.fps_in : 1;
  setLevel("card-fps", streams === 0 ? null : keepingUp >= 0.9 ? "ok" : keepingUp >= 0.6 ? "warn" : "bad");

  const p95 = stats.latency_ms.p95;
  setValue("latency-p95", fixed(p95, p95 >= 100 ? 0 : 1), "ms");
  setText("latency-p50", ms(stats.latency_ms.p50));
  setLevel("card-latency", p95 === null ? null : p95 < 150 ? "ok" : p95 < 400 ? "warn" : "bad");

  setValue("throughput", fixed(engine.throughput_fps));
  setText("batch", fixed(engine.batch_size, 2));
  setText("max-batch", engine.max_batch ?? "–");
  setLevel("card-engine", engine.state === "ready" ? "ok" : engine.state === "failed" ? "bad" : "warn");

  const dropped = Object.values(frames.dropped).reduce((sum, n) => sum + n, 0);
  setValue("dropped", String(dropped));
  const where = Object.entries(frames.dropped).filter(([, n]) => n > 0);
  setText("dropped-sub", where.length ? where.map(([reason, n]) => `at ${reason} ${n}`).join(" · ") : "none");
  const droppedShare = frames.in > 0 ? dropped / frames.in : 0;
  setLevel("card-dropped", droppedShare < 0.05 ? null : droppedShare < 0.25 ? "warn" : "bad");
  setValue("skipped", String(frames.skipped));
  setText("frames-in", String(frames.in));

  setValue("cpu", fixed(system.cpu_percent, 0), "%");
  setText("ram", `${bytes(system.ram_used_bytes)} of ${bytes(system.ram_total_bytes)}`);
  const disk = stats.disk;
  if (disk) {
    setValue("disk-used", bytes(disk.data_bytes));
    setText("disk-jobs", bytes(disk.jobs_bytes));
    setText("disk-free", bytes(disk.free_bytes));
  }
  setLevel("card-cpu", system.cpu_percent === null || system.cpu_percent < 85 ? null : "warn");

  const gpus = system.gpus;
  hasGpu = gpus.length > 0 || system.gpu_memory_allocated_bytes > 0;
  if (gpus.length) {
    const used = gpus.reduce((sum, g) => sum + g.memory_used_bytes, 0);
    const total = gpus.reduce((sum, g) => sum + g.memory_total_bytes, 0);
    const busiest = Math.max(...gpus.map((g) => g.utilization_percent));
    setValue("gpu", String(busiest), "%");
    setText("gpu-memory", `${bytes(used)} of ${bytes(total)}`);
    $("card-gpu").title = gpus.map((g) => g.name).join(", ");
  } else {
    setValue("gpu", hasGpu ? "n/a" : "none");
    setText("gpu-memory", hasGpu ? `torch ${bytes(system.gpu_memory_allocated_bytes)}` : "no GPU statistics");
  }

  renderStreams(stats.streams);
  renderCounts("jobs", stats.jobs, "no jobs");
  renderCounts("presets", stats.presets, "no preset used yet");
  renderErrors(stats.errors);
  renderActivity(stats.activity);
}

function renderActivity(activity) {
  const average = activity.job_average_s;
  setText("job-average", average === null ? "–" : average < 60 ? `${average.toFixed(1)} s` : duration(average));
  setText("jobs-completed", String(activity.jobs_completed));
  setText("reset-at", new Date(activity.reset_at * 1000).toLocaleTimeString());
  const items = activity.recent.map((entry) => {
    const li = document.createElement("li");
    const time = document.createElement("time");
    time.textContent = new Date(entry.ts).toLocaleTimeString();
    li.append(time, entry.summary);
    return li;
  });
  if (!items.length) {
    const li = document.createElement("li");
    li.className = "none";
    li.textContent = "nothing since the reset";
    items.push(li);
  }
  $("activity").replaceChildren(...items);
}

// The tallies start over on the server (every monitor open sees it); the next poll shows it.
async function resetTallies() {
  const response = await fetch("/api/stats/reset", { method: "POST", headers: authHeaders() });
  if (!response.ok) showReason(`reset refused: ${response.status} ${response.statusText}`, true);
}

function cell(text, className) {
  const td = document.createElement("td");
  td.textContent = text;
  if (className) td.className = className;
  return td;
}

function renderStreams(streams) {
  const rows = streams.map((stream) => {
    const s = stream.stats;
    const tr = document.createElement("tr");
    tr.append(
      cell(stream.id, "mono"),
      cell(stream.state),
      cell(fixed(s.fps_in)),
      cell(fixed(s.fps_out)),
      cell(ms(s.latency_ms)),
      cell(ms(s.latency_p95_ms)),
      cell(s.flicker === null || s.flicker === undefined ? "–" : s.flicker.toFixed(2)),
      cell(String(s.frames_dropped)),
      cell(duration(s.uptime_s)),
    );
    return tr;
  });
  $("streams-table").tBodies[0].replaceChildren(...rows);
  $("streams-empty").hidden = streams.length > 0;
}

function renderCounts(id, counts, emptyText) {
  const entries = Object.entries(counts).sort((a, b) => b[1] - a[1]);
  const items = entries.map(([name, n]) => {
    const li = document.createElement("li");
    li.textContent = name;
    const value = document.createElement("b");
    value.textContent = String(n);
    li.append(value);
    return li;
  });
  if (!items.length) {
    const li = document.createElement("li");
    li.className = "none";
    li.textContent = emptyText;
    items.push(li);
  }
  $(id).replaceChildren(...items);
}

function renderErrors(errors) {
  const items = errors
    .slice()
    .reverse()
    .map((error) => {
      const li = document.createElement("li");
      const time = document.createElement("time");
      time.textContent = new Date(error.time * 1000).toLocaleTimeString();
      li.append(time, `${error.logger}: ${error.message}${error.exception ? ` (${error.exception})` : ""}`);
      return li;
    });
  if (!items.length) {
    const li = document.createElement("li");
    li.className = "none";
    li.textContent = "none";
    items.push(li);
  }
  $("errors").replaceChildren(...items);
}

// -- charts -----------------------------------------------------------------------------------

function niceScale(value) {
  // The axis top: the smallest 1, 2 or 5 times a power of ten at or above value, with round ticks.
  const positive = value > 0 ? value : 1;
  const power = 10 ** Math.floor(Math.log10(positive));
  for (const [lead, ticks] of [[1, 5], [2, 4], [5, 5], [10, 5]]) {
    if (lead * power >= positive) return { top: lead * power, ticks };
  }
  return { top: 10 * power, ticks: 5 };
}

// Draws lines (newest at the right edge) with a y axis from 0, a legend with the latest values,
// an optional dashed limit line and a note when there is nothing to show.
function drawChart(canvas, lines, { format = (v) => fixed(v), floor = 1, limit = null, note = "" } = {}) {
  const ratio = window.devicePixelRatio || 1;
  const width = canvas.clientWidth;
  const height = canvas.clientHeight;
  if (canvas.width !== Math.round(width * ratio) || canvas.height !== Math.round(height * ratio)) {
    canvas.width = Math.round(width * ratio);
    canvas.height = Math.round(height * ratio);
  }
  const ctx = canvas.getContext("2d");
  ctx.setTransform(ratio, 0, 0, ratio, 0, 0);
  ctx.clearRect(0, 0, width, height);

  const pad = { left: 62, right: 10, top: 24, bottom: 18 };
  const plotWidth = Math.max(width - pad.left - pad.right, 10);
  const plotHeight = Math.max(height - pad.top - pad.bottom, 10);
  const values = lines.flatMap((line) => line.values).filter((v) => v !== null);
  const { top, ticks } = niceScale(Math.max(floor, limit ?? 0, ...values));
  const y = (v) => pad.top + plotHeight * (1 - v / top);
  const x = (i, count) => pad.left + plotWidth - (count - 1 - i) * (plotWidth / (HISTORY - 1));

  ctx.font = "12px system-ui, sans-serif";
  ctx.lineWidth = 1;
  ctx.textBaseline = "middle";
  for (let i = 0; i <= ticks; i += 1) {
    const value = (top * i) / ticks;
    ctx.strokeStyle = "#2a2d33";
    ctx.beginPath();
    ctx.moveTo(pad.left, Math.round(y(value)) + 0.5);
    ctx.lineTo(pad.left + plotWidth, Math.round(y(value)) + 0.5);
    ctx.stroke();
    ctx.fillStyle = "#9aa0a8";
    ctx.textAlign = "right";
    ctx.fillText(format(value), pad.left - 6, y(value));
  }
  ctx.textAlign = "left";
  ctx.textBaseline = "alphabetic";
  ctx.fillText(`−${HISTORY}s`, pad.left, height - 3);
  ctx.textAlign = "right";
  ctx.fillText("now", pad.left + plotWidth, height - 3);

  if (limit !== null) {
    ctx.strokeStyle = COLORS.limit;
    ctx.setLineDash([5, 4]);
    ctx.beginPath();
    ctx.moveTo(pad.left, y(limit));
    ctx.lineTo(pad.left + plotWidth, y(limit));
    ctx.stroke();
    ctx.setLineDash([]);
  }

  ctx.lineWidth = 2;
  ctx.lineJoin = "round";
  for (const line of lines) {
    ctx.strokeStyle = line.color;
    ctx.beginPath();
    let drawing = false;
    line.values.forEach((value, i) => {
      if (value === null) {
        drawing = false;
        return;
      }
      const px = x(i, line.values.length);
      if (drawing) ctx.lineTo(px, y(value));
      else ctx.moveTo(px, y(value));
      drawing = true;
    });
    ctx.stroke();
  }

  // Legend: a swatch, the name and the latest value of each line.
  ctx.font = "13px system-ui, sans-serif";
  ctx.textAlign = "left";
  ctx.textBaseline = "middle";
  let lx = pad.left;
  for (const line of lines) {
    const latest = line.values.length ? line.values[line.values.length - 1] : null;
    const label = `${line.name} ${latest === null ? "–" : format(latest)}`;
    ctx.fillStyle = line.color;
    ctx.fillRect(lx, 6, 10, 10);
    ctx.fillStyle = "#e8e8e8";
    ctx.fillText(label, lx + 14, 11);
    lx += ctx.measureText(label).width + 30;
  }

  if (note) {
    ctx.fillStyle = "#9aa0a8";
    ctx.font = "15px system-ui, sans-serif";
    ctx.textAlign = "center";
    ctx.fillText(note, pad.left + plotWidth / 2, pad.top + plotHeight / 2);
  }
}

function drawCharts() {
  drawChart(
    $("chart-fps"),
    [
      { name: "in", color: COLORS.a, values: history.fpsIn },
      { name: "out", color: COLORS.b, values: history.fpsOut },
    ],
    { floor: 5 },
  );
  drawChart(
    $("chart-latency"),
    [
      { name: "p50", color: COLORS.c, values: history.p50 },
      { name: "p95", color: COLORS.b, values: history.p95 },
    ],
    { floor: 10, format: (v) => (v >= 100 ? String(Math.round(v)) : fixed(v)) },
  );
  drawChart($("chart-batch"), [{ name: "mean", color: COLORS.a, values: history.batch }], {
    floor: 1,
    limit: maxBatch,
    format: (v) => (Number.isInteger(v) ? String(v) : fixed(v, 2)),
  });
  const gpuLines = [{ name: "torch allocated", color: COLORS.b, values: history.gpuAllocated }];
  if (history.gpuUsed.some((v) => v !== null)) {
    gpuLines.push({ name: "device used", color: COLORS.a, values: history.gpuUsed });
  }
  drawChart($("chart-gpu"), gpuLines, {
    floor: 1,
    format: (v) => fixed(v, v < 10 ? 2 : 0),
    note: hasGpu ? "" : "no GPU on this server",
  });
}

// -- polling ----------------------------------------------------------------------------------

function record(stats) {
  push("fpsIn", stats.frames.fps_in);
  push("fpsOut", stats.frames.fps_out);
  push("p50", stats.latency_ms.p50);
  push("p95", stats.latency_ms.p95);
  push("batch", stats.engine.batch_size);
  push("gpuAllocated", stats.system.gpu_memory_allocated_bytes / GIB);
  const gpus = stats.system.gpus;
  push("gpuUsed", gpus.length ? gpus.reduce((sum, g) => sum + g.memory_used_bytes, 0) / GIB : null);
  maxBatch = stats.engine.max_batch ?? maxBatch;
}

function recordGap() {
  for (const name of Object.keys(history)) push(name, null);
}

async function fetchStats() {
  try {
    const response = await fetch("/api/stats", { cache: "no-store", headers: authHeaders() });
    if (response.status === 401) throw new Error("401 unauthorized: open this page once as /monitor?token=YOUR_TOKEN");
    if (!response.ok) throw new Error(`${response.status} ${response.statusText}`);
    return await response.json();
  } catch (error) {
    const state = $("state");
    state.textContent = "offline";
    state.className = "pill offline";
    state.title = String(error);
    showReason(`cannot read /api/stats: ${error.message || error}`, true);
    return null;
  }
}

async function poll() {
  const stats = await fetchStats();
  try {
    if (stats) {
      render(stats);
      record(stats);
    } else {
      recordGap();
    }
    drawCharts();
  } finally {
    setTimeout(poll, POLL_MS); // a bug in drawing still shows in the console, and polling goes on
  }
}

$("reset").addEventListener("click", () => resetTallies().catch((error) => showReason(`reset failed: ${error}`, true)));
window.addEventListener("resize", drawCharts);
poll();
