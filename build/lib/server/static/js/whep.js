// A WHEP player: one receive-only connection to a name's output that comes back by itself.
// POST the offer as application/sdp, play the answer, DELETE the Location when stopping; when the
// connection fails or the server restarts, connect again with back-off (0.5, 1, 2, 4, 5 s).

import { authHeaders } from "./token.js";
import { Redialer, iceGatheringComplete, lowLatency } from "./redial.js";

const BACKOFF_MS = [500, 1000, 2000, 4000, 5000];
const DISCONNECTED_GRACE_MS = 3000; // "disconnected" often heals by itself
const ICE_GATHER_TIMEOUT_MS = 3000;
const STALL_CHECK_MS = 1000; // how often decoded frames are counted

export class WhepPlayer extends Redialer {
  // url: the name's /whep endpoint · onStream(MediaStream) · onStatus(state, text):
  // "connecting", "playing", "waiting" (connected, no frames: the name is not streaming), "retrying", "refused".
  constructor({ url, rtcConfig = {}, onStream, onStatus }) {
    super({ backoffMs: BACKOFF_MS, graceMs: DISCONNECTED_GRACE_MS, rtcConfig, onStatus });
    this.url = url;
    this.onStream = onStream;
    this.location = null;
    this.stallTimer = null;
    this.framesDecoded = 0;
  }

  async stop({ leavingPage = false } = {}) {
    this.wanted = false;
    const forgotten = forget(this.location, leavingPage);
    this.close();
    if (!leavingPage) await forgotten;
    this.onStatus("stopped", "stopped");
  }

  async attempt() {
    const { pc, generation } = this.newPeer();
    pc.addTransceiver("video", { direction: "recvonly" });
    pc.addEventListener("track", (event) => {
      lowLatency(event.receiver);
      this.onStream(new MediaStream([event.track]));
    });
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
        forget(location); // stopped or restarted while the offer was out: nobody watches this one
        return;
      }
      this.location = location;
      await pc.setRemoteDescription({ type: "answer", sdp: answer });
    } catch (error) {
      if (generation === this.generation) this.#hangUp(error, error.retry !== false); // network errors: retry
    }
  }

  connected() {
    this.#watchFrames(this.pc, this.generation);
  }

  dropped(reason) {
    this.#hangUp(new Error(reason), true);
  }

  retrying(error, delay) {
    this.onStatus("retrying", `${error.message}: retrying in ${(delay / 1000).toFixed(1)} s`);
  }

  refused(error) {
    this.onStatus("refused", error.message);
  }

  closed() {
    clearInterval(this.stallTimer);
    this.location = null;
    this.framesDecoded = 0;
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
        this.#hangUp(new Error("the server no longer knows this viewer"), true);
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

  // Let the server forget this viewer (if it still knows it), then try again or stop.
  #hangUp(error, retry) {
    forget(this.location);
    this.failed(error, retry);
  }
}

// DELETE a WHEP session; failures are no news (the server may be gone, or have forgotten it already).
function forget(location, keepalive = false) {
  if (!location) return Promise.resolve();
  return fetch(location, { method: "DELETE", headers: authHeaders(), keepalive }).catch(() => {});
}
