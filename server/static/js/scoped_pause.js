// A pause set for this page's name or for its own stream alone (over OSC or HTTP) freezes the picture
// here while the global settings, which the page's controls show, say playing. A badge says so, with
// a button that lifts that pause only: the page's own Pause stays the global one, so undoing one
// name's or one stream's pause never means pausing (or resuming) everyone.

import { api } from "./api.js";

export class ScopedPause {
  // label: what the badge names ("stage", "this stream") · settingsPath(): the scope's settings
  // route, or null while there is none (no stream yet) · scope(): its scope in settings events ·
  // badge, resume: the elements.
  constructor({ label, settingsPath, scope, badge, resume, onError }) {
    this.label = label;
    this.settingsPath = settingsPath;
    this.scope = scope;
    this.badge = badge;
    this.resume = resume;
    this.onError = onError;
    this.paused = false;
    resume.addEventListener("click", () => this.#lift().catch(onError));
  }

  // Read the scope's overrides (on start, when the events socket (re)opens, when the stream changes).
  async refresh() {
    const path = this.settingsPath();
    try {
      this.#show(path ? (await api("GET", path)).overrides.paused === true : false);
    } catch (error) {
      if (error.status !== 404) throw error;
      this.#show(false); // the stream has just gone: nothing of it is paused
    }
  }

  onEvent(event) {
    if (event.type === "settings" && this.scope() !== null && event.scope === this.scope()) {
      this.refresh().catch(this.onError);
    }
  }

  #show(paused) {
    this.paused = paused;
    this.badge.hidden = this.resume.hidden = !paused;
    this.badge.textContent = `paused for ${this.label}`;
  }

  async #lift() {
    const path = this.settingsPath();
    if (path) await api("PATCH", path, { paused: null });
    await this.refresh();
  }
}
