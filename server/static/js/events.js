// GET /api/events as a WebSocket that comes back by itself: settings, stream, preset and job events.

import { withToken } from "./token.js";

const BACKOFF_MS = [500, 1000, 2000, 4000, 8000, 15000];

export class EventFeed {
  // onEvent(message) for every event; onOpen() after each (re)connect, to catch up on what was missed.
  constructor({ onEvent, onOpen }) {
    this.onEvent = onEvent;
    this.onOpen = onOpen;
    this.socket = null;
    this.failures = 0;
    this.timer = null;
    this.stopped = false;
  }

  start() {
    this.stopped = false;
    this.#connect();
  }

  stop() {
    this.stopped = true;
    clearTimeout(this.timer);
    if (this.socket) this.socket.close();
    this.socket = null;
  }

  #connect() {
    const scheme = location.protocol === "https:" ? "wss" : "ws";
    const socket = new WebSocket(`${scheme}://${location.host}${withToken("/api/events")}`);
    this.socket = socket;
    socket.addEventListener("open", () => {
      this.failures = 0;
      this.onOpen();
    });
    socket.addEventListener("message", (message) => {
      let event;
      try {
        event = JSON.parse(message.data);
      } catch {
        return;
      }
      this.onEvent(event);
    });
    socket.addEventListener("close", () => {
      if (this.stopped || this.socket !== socket) return;
      const delay = BACKOFF_MS[Math.min(this.failures, BACKOFF_MS.length - 1)];
      this.failures += 1;
      this.timer = setTimeout(() => this.#connect(), delay);
    });
  }
}
