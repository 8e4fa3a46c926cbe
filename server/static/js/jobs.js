// The jobs panel: upload a clip or picture for an offline render, follow it through job events,
// download the result, cancel or delete.

import { api } from "./api.js";

export class JobsPanel {
  constructor(ui) {
    this.ui = ui;
    this.rows = new Map(); // job id -> <li>
    ui.form.addEventListener("submit", (event) => {
      event.preventDefault();
      this.#upload();
    });
  }

  // After each (re)connect of the event feed: what happened meanwhile is read afresh.
  async refresh() {
    try {
      const page = await api("GET", "/api/jobs?limit=20");
      for (const id of [...this.rows.keys()]) this.#forget(id);
      for (const job of page.jobs.reverse()) this.#render(job);
    } catch (error) {
      this.#showError(error);
    }
  }

  onEvent(event) {
    if (event.action === "deleted") this.#forget(event.job.id);
    else this.#render(event.job);
  }

  async #upload() {
    const ui = this.ui;
    this.#showError(null);
    const body = new FormData();
    if (ui.prompt.value) body.append("prompt", ui.prompt.value);
    if (ui.strength.value) body.append("strength", ui.strength.value);
    if (ui.steps.value) body.append("num_inference_steps", ui.steps.value);
    body.append("file", ui.file.files[0]);
    ui.submit.disabled = true;
    try {
      this.#render(await api("POST", "/api/jobs", body));
      ui.form.reset();
    } catch (error) {
      this.#showError(error);
    } finally {
      ui.submit.disabled = false;
    }
  }

  #render(job) {
    let row = this.rows.get(job.id);
    if (!row) {
      row = document.createElement("li");
      row.className = "job";
      row.dataset.job = job.id;
      this.rows.set(job.id, row);
      this.ui.list.prepend(row);
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
      parts.push(this.#button("cancel", () => api("POST", `/api/jobs/${job.id}/cancel`)));
    } else {
      parts.push(this.#button("delete", () => api("DELETE", `/api/jobs/${job.id}`)));
    }
    row.replaceChildren(...parts);
  }

  #forget(jobId) {
    this.rows.get(jobId)?.remove();
    this.rows.delete(jobId);
  }

  #button(label, onClick) {
    const element = document.createElement("button");
    element.type = "button";
    element.textContent = label;
    element.addEventListener("click", () => onClick().catch((error) => this.#showError(error)));
    return element;
  }

  #showError(error) {
    const message = error ? error.message || String(error) : "";
    this.ui.error.textContent = message;
    this.ui.error.hidden = !message;
  }
}
