// The jobs panel: upload a clip or picture for an offline render, follow it on /api/events, download it.
const $ = (id) => document.getElementById(id);
const ui = {
  form: $("job-form"), file: $("job-file"), prompt: $("job-prompt"), strength: $("job-strength"),
  submit: $("job-submit"), error: $("job-error"), list: $("job-list"),
};
const rows = new Map(); // job id -> <li>

function showError(message) {
  ui.error.textContent = message;
  ui.error.hidden = !message;
}

async function call(method, path, body) {
  const response = await fetch(path, { method, body });
  const data = await response.json().catch(() => ({}));
  if (!response.ok) {
    const detail = Array.isArray(data.detail)
      ? data.detail.map((d) => `${d.field}: ${d.message}`).join("; ")
      : data.detail ? String(typeof data.detail === "string" ? data.detail : JSON.stringify(data.detail)) : "";
    throw new Error(`${data.error || response.statusText}${detail ? ` (${detail})` : ""}`);
  }
  return data;
}

function button(label, onClick) {
  const element = document.createElement("button");
  element.type = "button";
  element.textContent = label;
  element.addEventListener("click", () => onClick().catch((error) => showError(error.message)));
  return element;
}

function render(job) {
  let row = rows.get(job.id);
  if (!row) {
    row = document.createElement("li");
    row.style.cssText = "display: flex; gap: 0.75rem; align-items: center; margin: 0.3rem 0";
    rows.set(job.id, row);
    ui.list.prepend(row);
  }
  const name = document.createElement("span");
  name.textContent = `${job.filename} · ${job.status}`;
  const bar = document.createElement("progress");
  bar.max = 1;
  bar.value = job.progress;
  const count = document.createElement("span");
  count.textContent = job.error || `${job.frames_done}/${job.frames_total} frames`;
  const parts = [name, bar, count];
  if (job.result_url) {
    const link = document.createElement("a");
    link.href = job.result_url;
    link.download = "";
    link.textContent = "download";
    parts.push(link);
  }
  if (job.status === "pending" || job.status === "processing") {
    parts.push(button("cancel", () => call("POST", `/api/jobs/${job.id}/cancel`)));
  } else {
    parts.push(button("delete", () => call("DELETE", `/api/jobs/${job.id}`)));
  }
  row.replaceChildren(...parts);
}

function forget(jobId) {
  rows.get(jobId)?.remove();
  rows.delete(jobId);
}

ui.form.addEventListener("submit", async (event) => {
  event.preventDefault();
  showError("");
  const body = new FormData();
  if (ui.prompt.value) body.append("prompt", ui.prompt.value);
  if (ui.strength.value) body.append("strength", ui.strength.value);
  body.append("file", ui.file.files[0]);
  ui.submit.disabled = true;
  try {
    render(await call("POST", "/api/jobs", body));
    ui.form.reset();
  } catch (error) {
    showError(error.message);
  } finally {
    ui.submit.disabled = false;
  }
});

async function refresh() {
  try {
    const page = await call("GET", "/api/jobs?limit=20");
    for (const id of [...rows.keys()]) forget(id);
    for (const job of page.jobs.reverse()) render(job);
  } catch (error) {
    showError(error.message);
  }
}

// Events keep the list current; after a reconnect (a server restart) the list is read afresh.
function listen() {
  const scheme = location.protocol === "https:" ? "wss" : "ws";
  const socket = new WebSocket(`${scheme}://${location.host}/api/events`);
  socket.addEventListener("open", refresh);
  socket.addEventListener("message", (message) => {
    const event = JSON.parse(message.data);
    if (event.type !== "job") return;
    if (event.action === "deleted") forget(event.job.id);
    else render(event.job);
  });
  socket.addEventListener("close", () => setTimeout(listen, 2000));
}

listen();
