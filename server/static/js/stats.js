// FPS and round-trip latency readouts, once a second, from the browser's getStats() and the
// server's own stream stats (GET /api/streams: arrival-to-output time of the stylized frames).
//
// Latency here is the sum of what one frame goes through, camera to screen:
//   camera encode (outbound-rtp) + network round trip (candidate pair) + server
//   (decode done to stylized frame handed to the encoder) + jitter buffer + decode (inbound-rtp).
// The server's own VP8 encode and the capture/display pipelines are not in it.

import { api } from "./api.js";

const INTERVAL_MS = 1000;
const MISSING_POLLS = 2; // the server must leave our stream out this many times running before we believe it

export class StatsMeter {
  // onReadout({ fps, latencyMs, parts, serverFps, flicker, temporal }) with nulls where a value is not known yet.
  // onMissing(streamId): the server answers but no longer lists our stream (it restarted, or lost it).
  constructor(onReadout, onMissing) {
    this.onReadout = onReadout;
    this.onMissing = onMissing;
    this.timer = null;
    this.pc = null;
    this.streamId = null;
    this.previous = null;
    this.missing = 0;
  }

  watch(pc, streamId) {
    this.pc = pc;
    this.streamId = streamId;
    this.previous = null;
    this.missing = 0;
    clearInterval(this.timer);
    this.timer = setInterval(() => this.#sample().catch(() => {}), INTERVAL_MS);
  }

  stop() {
    clearInterval(this.timer);
    this.timer = null;
    this.pc = null;
    this.streamId = null;
    this.previous = null;
  }

  async #sample() {
    const pc = this.pc;
    const streamId = this.streamId;
    if (!pc || !streamId) return;
    const [report, streams] = await Promise.all([pc.getStats(), api("GET", "/api/streams").catch(() => null)]);
    if (pc !== this.pc) return;
    const now = readReport(report);
    const before = this.previous;
    this.previous = now;
    const server = streams && streams.streams.find((s) => s.id === streamId);
    if (streams && !server) {
      this.missing += 1;
      if (this.missing >= MISSING_POLLS) {
        this.stop();
        this.onMissing(streamId);
        return;
      }
    } else if (server) {
      this.missing = 0;
    }
    const serverMs = server ? server.stats.latency_ms : null;
    if (!before || !now.inbound) {
      this.onReadout({ fps: null, latencyMs: null, parts: null, ...fromServer(server) });
      return;
    }
    const seconds = (now.inbound.timestamp - before.inbound.timestamp) / 1000;
    const frames = now.inbound.framesDecoded - before.inbound.framesDecoded;
    const fps = seconds > 0 ? frames / seconds : null;
    const parts = {
      encode: perFrame(now.outbound, before.outbound, "totalEncodeTime", "framesEncoded"),
      network: now.rttMs,
      server: serverMs,
      buffer: perFrame(now.inbound, before.inbound, "jitterBufferDelay", "jitterBufferEmittedCount"),
      decode: perFrame(now.inbound, before.inbound, "totalDecodeTime", "framesDecoded"),
    };
    const known = Object.values(parts).filter((v) => v !== null);
    const latencyMs = parts.server !== null && known.length ? known.reduce((a, b) => a + b, 0) : null;
    this.onReadout({ fps, latencyMs, parts, ...fromServer(server) });
  }
}

// What the server says of this stream: its fps out and its flicker figure (null when unknown).
function fromServer(server) {
  return {
    serverFps: server ? server.stats.fps_out : null,
    flicker: server && server.stats.flicker !== undefined ? server.stats.flicker : null,
    temporal: server ? server.stats.temporal || null : null,
  };
}

function readReport(report) {
  const out = { inbound: null, outbound: null, rttMs: null };
  let pairId = null;
  report.forEach((entry) => {
    if (entry.type === "inbound-rtp" && entry.kind === "video") out.inbound = entry;
    if (entry.type === "outbound-rtp" && entry.kind === "video") out.outbound = entry;
    if (entry.type === "transport" && entry.selectedCandidatePairId) pairId = entry.selectedCandidatePairId;
  });
  report.forEach((entry) => {
    if (entry.type !== "candidate-pair" || entry.currentRoundTripTime === undefined) return;
    if (entry.id === pairId || (pairId === null && entry.nominated)) out.rttMs = entry.currentRoundTripTime * 1000;
  });
  return out;
}

// Milliseconds per frame of a cumulative seconds counter over the last interval.
function perFrame(now, before, secondsKey, countKey) {
  if (!now || !before || now[secondsKey] === undefined || before[secondsKey] === undefined) return null;
  const count = now[countKey] - before[countKey];
  if (count <= 0) return null;
  return ((now[secondsKey] - before[secondsKey]) / count) * 1000;
}
