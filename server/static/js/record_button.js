// Record / Stop for this page's name: a recording of its output, its camera frames and every settings
// change (see /api/recordings). The button follows the name's recording however it was started (this
// page, another page, OSC, HTTP), through the recording events.

import { api } from "./api.js";

export class RecordButton {
  // name: this page's stream name · button: the element · onError: how failures are shown.
  constructor({ name, button, onError }) {
    this.name = name;
    this.button = button;
    this.onError = onError;
    this.recordingId = null;
    button.addEventListener("click", () => this.#toggle().catch(onError));
  }

  // Look for a recording of this name in progress (on start, and when the events socket (re)opens).
  async refresh() {
    const { recordings } = await api("GET", "/api/recordings");
    const running = recordings.find(
      (recording) => recording.name === this.name && ["waiting", "recording"].includes(recording.state),
    );
    this.#show(running ? running.id : null);
  }

  onEvent(event) {
    if (event.type !== "recording" || event.recording.name !== this.name) return;
    this.#show(event.action === "started" ? event.recording.id : null);
  }

  async #toggle() {
    if (this.recordingId) {
      await api("POST", `/api/recordings/${this.recordingId}/stop`);
      this.#show(null);
    } else {
      const started = await api("POST", `/api/outputs/${encodeURIComponent(this.name)}/recordings`);
      this.#show(started.id);
    }
  }

  #show(recordingId) {
    this.recordingId = recordingId;
    this.button.textContent = recordingId ? "Stop recording" : "Record";
    this.button.setAttribute("aria-pressed", String(Boolean(recordingId)));
  }
}
