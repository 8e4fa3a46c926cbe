// A pause set for this page's name alone (over OSC or HTTP) freezes the picture here while the global
// settings, which the page's controls show, say playing. This badge says so, with a button that lifts
// that pause only: the page's own Pause stays the global one, so undoing one name's pause never means
// pausing (or resuming) everyone.

import { api } from "./api.js";

export class ScopedPause {
  // name: this page's stream name · badge, resume: the elements.
  constructor({ name, badge, resume, onError }) {
    this.name = name;
    this.badge = badge;
    this.resume = resume;
    this.onError = onError;
    this.paused = false;
    resume.addEventListener("click", () => this.#lift().catch(onError));
  }

  // Read the name's overrides (on start, and when the events socket (re)opens).
  async refresh() {
    const named = await api("GET", `/api/outputs/${encodeURIComponent(this.name)}/settings`);
    this.paused = named.overrides.paused === true;
    this.badge.hidden = this.resume.hidden = !this.paused;
    this.badge.textContent = `paused for ${this.name}`;
  }

  onEvent(event) {
    if (event.type === "settings" && event.scope === `name:${this.name}`) this.refresh().catch(this.onError);
  }

  async #lift() {
    await api("PATCH", `/api/outputs/${encodeURIComponent(this.name)}/settings`, { paused: null });
    await this.refresh();
  }
}
