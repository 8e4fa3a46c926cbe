// A WHEP player: one receive-only connection to a name's output that comes back by itself.
// POST the offer as application/sdp, play the answer, DELETE the Location when stopping; when the
// connection fails or the server restarts, connect again with back-off (0.5, 1, 2, 4, 5 s).

import { authHeaders } from "./api.js";
import { iceGatheringComplete } from "./rtc.js";

const BACKOFF_MS = [500, 1000, 2000, 4000, 5000];
const DISCONNECTED_GRACE_MS = 3000; // "disconnected" often heals by itself
const ICE_GATHER_TIMEOUT_MS = 3000;
const STALL_CHECK_MS = 1000; // how often decoded frames are counted

export class WhepPlayer {
  // url: the name's /whep endpoint · onStream(MediaStream | null) · onStatus(state, text):
  // "connecting", "playing", "waiting" (connected, no frames: the name is not streaming), "retrying", "refused".
  constructor({ url, rtcConfig = {}, onStream, onStatus }) {
    this.url = url;
    this.rtcConfig = rtcConfig;
    this.onStream = onStream;
    this.onStatus = onStatus;
    this.pc = null;
    this.location = null;
    this.wanted = false;
    this.failures = 0;
    this.generation = 0;
    this.timer = null;
    this.stallTimer = null;
    this.framesDecoded = 0;
  }

  start() {
    this.wanted = true;
    this.failures = 0;
    return this.#connect();
  }

  async stop({ leavingPage = false } = {}) {
    this.wanted = false;
    const location = this.location;
    this.#close();
    if (location) {
      const hangUp = fetch(location, { method: "DELETE", headers: authHeaders(), keepalive: leavingPage });
      if (!leavingPage) await hangUp.catch(() => {});
    }
    this.onStatus("stopped", "stopped");
  }

  async #connect() {
    this.#close();
    const generation = ++this.generation;
    this.onStatus("connecting", "connecting");
    const pc = new RTCPeerConnection(this.rtcConfig);
    this.pc = pc;
    pc.addTransceiver("video", { direction: "recvonly" });
    pc.addEventListener("track", (event) => {
      if ("jitterBufferTarget" in event.receiver) event.receiver.jitterBufferTarget = 0;
      if ("playoutDelayHint" in event.receiver) event.receiver.playoutDelayHint = 0;
      this.onStream(new MediaStream([event.track]));
    });
    pc.addEventListener("connectionstatechange", () => this.#onState(pc, generation));
    try {
      await pc.setLocalDescription(await pc.createOffer());
      await iceGatheringComplete(pc, ICE_GATHER_TIMEOUT_MS);
      if (generation !== this.generation) return;
      const response = await fetch(this.url, {
        method: "POST",
        headers: { "Content-Type": "application/sdp", ...authHeaders() },
        body: pc.localDescription.sdp,
        cache: "no-store",
      });
      if (response.status !== 201) {
        const body = await response.json().catch(() => ({}));
        // Busy (503, 429) or down: try again. Refused (400 bad offer, 401 token ...): stop and say so.
        const retry = response.status >= 500 || response.status === 429;
        throw Object.assign(new Error(`${body.error || response.statusText} (${response.status})`), { retry });
      }
      const answer = await response.text();
      const location = new URL(response.headers.get("Location"), response.url).href;
      if (generation !== this.generation) {
        fetch(location, { method: "DELETE", headers: authHeaders() }).catch(() => {});
        return;
      }
      this.location = location;
      await pc.setRemoteDescription({ type: "answer", sdp: answer });
    } catch (error) {
      if (generation === this.generation) this.#failed(error, error.retry !== false); // network errors: retry
    }
  }

  #onState(pc, generation) {
    if (generation !== this.generation) return;
    const state = pc.connectionState;
    if (state === "connected") {
      clearTimeout(this.timer);
      this.failures = 0;
      this.#watchFrames(pc, generation);
    } else if (state === "disconnected") {
      clearTimeout(this.timer);
      this.timer = setTimeout(() => this.#failed(new Error("connection lost"), true), DISCONNECTED_GRACE_MS);
    } else if (state === "failed" || state === "closed") {
      this.#failed(new Error(`connection ${state}`), true);
    }
  }

  // Connected but no new frames: the name has no stream now (the viewer stays and plays when it is back),
  // or the server restarted (a browser notices that only after ~10 s): asking for the session tells which.
  #watchFrames(pc, generation) {
    clearInterval(this.stallTimer);
    this.stallTimer = setInterval(async () => {
      if (generation !== this.generation) return;
      let decoded = this.framesDecoded;
      (await pc.getStats()).forEach((report) => {
        if (report.type === "inbound-rtp" && report.kind === "video") decoded = report.framesDecoded || 0;
      });
      const playing = decoded > this.framesDecoded;
      this.framesDecoded = decoded;
      this.onStatus(playing ? "playing" : "waiting", playing ? "playing" : "waiting for the stream");
      if (!playing && !(await this.#sessionKnown()) && generation === this.generation) {
        this.#failed(new Error("the server no longer knows this viewer"), true);
      }
    }, STALL_CHECK_MS);
  }

  async #sessionKnown() {
    try {
      const response = await fetch(this.location, { headers: authHeaders(), cache: "no-store" });
      return response.status !== 404;
    } catch {
      return false; // the server is down
    }
  }

  #failed(error, retry) {
    const location = this.location;
    this.#close();
    if (location) fetch(location, { method: "DELETE", headers: authHeaders() }).catch(() => {});
    if (!this.wanted) return;
    if (!retry) {
      this.wanted = false;
      this.onStatus("refused", error.message);
      return;
    }
    const delay = BACKOFF_MS[Math.min(this.failures, BACKOFF_MS.length - 1)];
    this.failures += 1;
    this.onStatus("retrying", `${error.message}: retrying in ${(delay / 1000).toFixed(1)} s`);
    this.timer = setTimeout(() => {
      if (this.wanted) this.#connect();
    }, delay);
  }

  #close() {
    this.generation += 1;
    clearTimeout(this.timer);
    clearInterval(this.stallTimer);
    if (this.pc) this.pc.close();
    this.pc = null;
    this.location = null;
    this.framesDecoded = 0;
  }
}
