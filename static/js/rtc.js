// One live WebRTC stream to the server: offer/answer over POST /api/offer, low-latency receive,
// and automatic reconnect with back-off when the connection drops or the server is busy.

import { api, ApiError } from "./api.js";

const BACKOFF_MS = [1000, 2000, 4000, 8000, 15000, 30000];
const DISCONNECTED_GRACE_MS = 4000; // "disconnected" often heals by itself; give it this long
const ICE_GATHER_TIMEOUT_MS = 3000; // an unreachable STUN/TURN server must not hold up the offer

export class LiveConnection {
  // rtcConfig: RTCConfiguration for the browser side (ICE servers from /api/client-config).
  // onStatus(state, text) · onError(Error | null) · onOutput(MediaStream | null) · onStream(id | null)
  constructor({ rtcConfig, onStatus, onError, onOutput, onStream }) {
    this.rtcConfig = rtcConfig;
    this.onStatus = onStatus;
    this.onError = onError;
    this.onOutput = onOutput;
    this.onStream = onStream;
    this.pc = null;
    this.streamId = null;
    this.localStream = null;
    this.wanted = false; // the user pressed Start and not Stop
    this.failures = 0;
    this.generation = 0; // bumps on every new attempt; late callbacks from older ones are ignored
    this.retryTimer = null;
    this.graceTimer = null;
  }

  get active() {
    return this.wanted;
  }

  start(localStream) {
    this.wanted = true;
    this.localStream = localStream;
    this.failures = 0;
    return this.#connect();
  }

  // Hang up for good: nothing reconnects. The server hears it first (DELETE) so that the stream
  // is still there to delete; closing the connection first would make the server close it itself.
  async stop({ leavingPage = false } = {}) {
    this.wanted = false;
    const streamId = this.streamId;
    this.generation += 1; // from here on, state changes of this connection are not news
    if (streamId) {
      const hangUp = api("DELETE", `/api/streams/${streamId}`, undefined, { timeoutMs: 2000, keepalive: leavingPage });
      if (!leavingPage) await hangUp.catch(() => {});
    }
    this.#close();
    this.onStatus("idle", "idle");
  }

  // The camera changed while streaming: swap the track without a new offer.
  async replaceVideoTrack(localStream) {
    this.localStream = localStream;
    const sender = this.pc && this.pc.getSenders().find((s) => s.track && s.track.kind === "video");
    if (sender) await sender.replaceTrack(localStream.getVideoTracks()[0]);
  }

  // The server says a stream went down. If it is ours and we did not ask: hung up there (an
  // operator's DELETE) means stay closed; any other reason (frames failing, the server stopping)
  // is shown and the page connects again.
  streamDown(streamId, reason) {
    if (!this.wanted || streamId !== this.streamId) return;
    if (reason && reason !== "hung up") {
      this.streamId = null; // already gone there: nothing to hang up
      this.#dropped(`the server closed this stream: ${reason}`);
      return;
    }
    this.wanted = false;
    this.#close();
    this.onError(new Error("the server closed this stream"));
    this.onStatus("closed", "closed by server");
  }

  // The server stopped answering: the connection is not worth waiting on (WebRTC would say
  // "connected" for seconds more); drop it and connect again once it answers.
  serverLost() {
    if (!this.wanted || !this.streamId) return;
    this.streamId = null; // nothing to hang up there
    this.#dropped("the server is unreachable");
  }

  // The server no longer knows our stream (restarted, or dropped it without telling): connect again.
  streamLost(streamId) {
    if (!this.wanted || streamId !== this.streamId) return;
    this.streamId = null; // nothing left to hang up
    this.#dropped("the server lost this stream");
  }

  async #connect() {
    this.#close();
    const generation = ++this.generation;
    this.onStatus("connecting", "connecting");
    const pc = new RTCPeerConnection(this.rtcConfig);
    this.pc = pc;
    pc.addEventListener("track", (event) => {
      // Show frames as soon as they decode: no extra jitter buffering (where the browser lets us).
      if ("jitterBufferTarget" in event.receiver) event.receiver.jitterBufferTarget = 0;
      if ("playoutDelayHint" in event.receiver) event.receiver.playoutDelayHint = 0;
      this.onOutput(event.streams[0] || new MediaStream([event.track]));
    });
    pc.addEventListener("connectionstatechange", () => this.#onState(pc, generation));
    for (const track of this.localStream.getVideoTracks()) pc.addTrack(track, this.localStream);

    let answer;
    try {
      await pc.setLocalDescription(await pc.createOffer());
      await iceGatheringComplete(pc, ICE_GATHER_TIMEOUT_MS);
      if (generation !== this.generation) return;
      answer = await api("POST", "/api/offer", { sdp: pc.localDescription.sdp, type: "offer" });
    } catch (error) {
      if (generation === this.generation) this.#failed(error);
      return;
    }
    if (generation !== this.generation) {
      // Stopped (or restarted) while the offer was out: the server's new stream is nobody's.
      api("DELETE", `/api/streams/${answer.stream_id}`).catch(() => {});
      return;
    }
    this.streamId = answer.stream_id;
    this.onStream(this.streamId);
    try {
      await pc.setRemoteDescription({ sdp: answer.sdp, type: answer.type });
    } catch (error) {
      if (generation === this.generation) this.#failed(error);
    }
  }

  #onState(pc, generation) {
    if (generation !== this.generation) return;
    const state = pc.connectionState;
    if (state === "connected") {
      clearTimeout(this.graceTimer);
      this.failures = 0;
      this.onError(null);
      this.onStatus("connected", "connected");
    } else if (state === "disconnected") {
      this.onStatus("reconnecting", "connection unstable");
      clearTimeout(this.graceTimer);
      this.graceTimer = setTimeout(() => this.#dropped("the connection was lost"), DISCONNECTED_GRACE_MS);
    } else if (state === "failed") {
      this.#dropped("the connection failed");
    }
  }

  #dropped(reason) {
    if (!this.wanted) return;
    const streamId = this.streamId;
    if (streamId) api("DELETE", `/api/streams/${streamId}`).catch(() => {});
    this.#failed(new Error(`${reason} — reconnecting`));
  }

  #failed(error) {
    this.#close();
    this.onError(error);
    // A model that failed to load stays failed: retrying would only keep the camera on.
    const failedModel = error instanceof ApiError && error.detail && error.detail.state === "failed";
    const retryable = !failedModel && (!(error instanceof ApiError) || error.retryable);
    if (!this.wanted || !retryable) {
      this.wanted = false;
      this.onStatus("error", "refused");
      return;
    }
    const delay = BACKOFF_MS[Math.min(this.failures, BACKOFF_MS.length - 1)];
    this.failures += 1;
    this.onStatus("retrying", `retrying in ${Math.round(delay / 1000)} s`);
    this.retryTimer = setTimeout(() => {
      if (this.wanted) this.#connect();
    }, delay);
  }

  #close() {
    this.generation += 1;
    clearTimeout(this.retryTimer);
    clearTimeout(this.graceTimer);
    if (this.pc) this.pc.close();
    this.pc = null;
    if (this.streamId) this.onStream(null);
    this.streamId = null;
    this.onOutput(null);
  }
}

// aiortc takes no trickled candidates: wait until gathering is done (or give up waiting).
function iceGatheringComplete(pc, timeoutMs) {
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
