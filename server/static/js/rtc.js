// One live WebRTC stream to the server: offer/answer over POST /api/offer, low-latency receive,
// and automatic reconnect with back-off when the connection drops or the server is busy.

import { api, ApiError } from "./api.js";
import { Redialer, iceGatheringComplete, lowLatency } from "./redial.js";

const BACKOFF_MS = [1000, 2000, 4000, 8000, 15000, 30000];
const DISCONNECTED_GRACE_MS = 4000; // "disconnected" often heals by itself; give it this long
const ICE_GATHER_TIMEOUT_MS = 3000; // an unreachable STUN/TURN server must not hold up the offer

export class LiveConnection extends Redialer {
  // rtcConfig: RTCConfiguration for the browser side (ICE servers from /api/client-config).
  // onStatus(state, text) · onError(Error | null) · onOutput(MediaStream | null) · onStream(id | null)
  // name: the stream's name; outputs and per-name settings follow it across reconnects.
  constructor({ rtcConfig, onStatus, onError, onOutput, onStream, name = "default" }) {
    super({ backoffMs: BACKOFF_MS, graceMs: DISCONNECTED_GRACE_MS, rtcConfig, onStatus });
    this.name = name;
    this.onError = onError;
    this.onOutput = onOutput;
    this.onStream = onStream;
    this.streamId = null;
    this.localStream = null;
  }

  get active() {
    return this.wanted;
  }

  start(localStream) {
    this.localStream = localStream;
    return super.start();
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
    this.close();
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
      this.dropped(`the server closed this stream: ${reason}`);
      return;
    }
    this.wanted = false;
    this.close();
    this.onError(new Error("the server closed this stream"));
    this.onStatus("closed", "closed by server");
  }

  // The server stopped answering: the connection is not worth waiting on (WebRTC would say
  // "connected" for seconds more); drop it and connect again once it answers.
  serverLost() {
    if (!this.wanted || !this.streamId) return;
    this.streamId = null; // nothing to hang up there
    this.dropped("the server is unreachable");
  }

  // The server no longer knows our stream (restarted, or dropped it without telling): connect again.
  streamLost(streamId) {
    if (!this.wanted || streamId !== this.streamId) return;
    this.streamId = null; // nothing left to hang up
    this.dropped("the server lost this stream");
  }

  async attempt() {
    const { pc, generation } = this.newPeer();
    pc.addEventListener("track", (event) => {
      lowLatency(event.receiver);
      this.onOutput(event.streams[0] || new MediaStream([event.track]));
    });
    for (const track of this.localStream.getVideoTracks()) pc.addTrack(track, this.localStream);

    let answer;
    try {
      await pc.setLocalDescription(await pc.createOffer());
      await iceGatheringComplete(pc, ICE_GATHER_TIMEOUT_MS);
      if (generation !== this.generation) return;
      answer = await api("POST", "/api/offer", { sdp: pc.localDescription.sdp, type: "offer", name: this.name });
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

  connected() {
    this.onError(null);
    this.onStatus("connected", "connected");
  }

  unstable() {
    this.onStatus("reconnecting", "connection unstable");
  }

  dropped(reason) {
    if (!this.wanted) return;
    const streamId = this.streamId;
    if (streamId) api("DELETE", `/api/streams/${streamId}`).catch(() => {});
    this.#failed(new Error(`${reason} — reconnecting`));
  }

  #failed(error) {
    // A model that failed to load stays failed: retrying would only keep the camera on.
    const failedModel = error instanceof ApiError && error.detail && error.detail.state === "failed";
    this.failed(error, !failedModel && (!(error instanceof ApiError) || error.retryable));
  }

  retrying(error, delay) {
    this.onError(error);
    this.onStatus("retrying", `retrying in ${Math.round(delay / 1000)} s`);
  }

  refused(error) {
    this.onError(error);
    this.onStatus("error", "refused");
  }

  closed() {
    const had = this.streamId;
    this.streamId = null; // first: what onStream(null) sets off reads no stream
    if (had) this.onStream(null);
    this.onOutput(null);
  }
}
