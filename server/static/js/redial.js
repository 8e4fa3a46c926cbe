// What the page's stream (rtc.js) and the WHEP player (whep.js) share: one RTCPeerConnection at a
// time, made again with back-off when it drops or the server is busy. Every attempt bumps
// `generation`; callbacks that belong to an older attempt are ignored.
//
// A subclass implements attempt() (take a connection from newPeer(), negotiate on it) and
// the hooks: connected(), unstable(), dropped(reason), retrying(error, delayMs), refused(error), closed().

export class Redialer {
  // backoffMs: the waits between attempts, the last repeated · graceMs: how long "disconnected" may last
  // rtcConfig: RTCConfiguration (ICE servers from /api/client-config) · onStatus(state, text).
  constructor({ backoffMs, graceMs, rtcConfig, onStatus }) {
    this.backoffMs = backoffMs;
    this.graceMs = graceMs;
    this.rtcConfig = rtcConfig;
    this.onStatus = onStatus;
    this.pc = null;
    this.wanted = false; // started and not stopped
    this.failures = 0;
    this.generation = 0;
    this.retryTimer = null;
    this.graceTimer = null;
  }

  start() {
    this.wanted = true;
    this.failures = 0;
    return this.attempt();
  }

  // A new attempt's connection, watched; the one before is closed, callbacks of older attempts ignored.
  newPeer() {
    this.close();
    const generation = ++this.generation;
    this.onStatus("connecting", "connecting");
    const pc = new RTCPeerConnection(this.rtcConfig);
    this.pc = pc;
    this.watch(pc, generation);
    return { pc, generation };
  }

  watch(pc, generation) {
    pc.addEventListener("connectionstatechange", () => {
      if (generation !== this.generation) return;
      const state = pc.connectionState;
      if (state === "connected") {
        clearTimeout(this.graceTimer);
        this.failures = 0;
        this.connected();
      } else if (state === "disconnected") {
        this.unstable();
        clearTimeout(this.graceTimer);
        this.graceTimer = setTimeout(() => this.dropped("the connection was lost"), this.graceMs);
      } else if (state === "failed" || state === "closed") {
        this.dropped(`the connection ${state}`);
      }
    });
  }

  // Give up on this attempt; try again after the next back-off step when `retryable`, else stop.
  failed(error, retryable) {
    this.close();
    if (!this.wanted || !retryable) {
      this.wanted = false;
      this.refused(error);
      return;
    }
    const delay = this.backoffMs[Math.min(this.failures, this.backoffMs.length - 1)];
    this.failures += 1;
    this.retrying(error, delay);
    this.retryTimer = setTimeout(() => {
      this.retryTimer = null;
      if (this.wanted) this.attempt();
    }, delay);
  }

  // The server is ready again: a wait for the next back-off step is cut short (a restarted server is
  // back within a second, not after the 30 s step a long outage reached).
  retryNow() {
    if (!this.wanted || this.retryTimer === null) return;
    clearTimeout(this.retryTimer);
    this.retryTimer = null;
    this.failures = 0;
    this.attempt();
  }

  close() {
    this.generation += 1;
    clearTimeout(this.retryTimer);
    this.retryTimer = null;
    clearTimeout(this.graceTimer);
    if (this.pc) this.pc.close();
    this.pc = null;
    this.closed();
  }

  connected() {}

  unstable() {}

  closed() {}
}

// Show frames as soon as they decode: no extra jitter buffering (where the browser lets us).
export function lowLatency(receiver) {
  if ("jitterBufferTarget" in receiver) receiver.jitterBufferTarget = 0;
  if ("playoutDelayHint" in receiver) receiver.playoutDelayHint = 0;
}

// aiortc takes no trickled candidates: wait until gathering is done (or give up waiting).
export function iceGatheringComplete(pc, timeoutMs) {
  if (pc.iceGatheringState === "complete") return Promise.resolve();
  return new Promise((resolve) => {
    const done = () => {
      clearTimeout(timer);
      pc.removeEventListener("icegatheringstatechange", check);
      resolve();
    };
    const check = () => {
      if (pc.iceGatheringState === "complete") done();
    };
    const timer = setTimeout(done, timeoutMs);
    pc.addEventListener("icegatheringstatechange", check);
  });
}
