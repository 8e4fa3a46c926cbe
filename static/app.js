import { api } from "./api.js";

// The page: camera -> WebRTC offer -> stylized video back; prompt and strength go to /api/settings.
const $ = (id) => document.getElementById(id);
const ui = {
  camera: $("camera"), start: $("start"), stop: $("stop"), input: $("input"), output: $("output"),
  prompt: $("prompt"), strength: $("strength"), strengthValue: $("strength-value"), preset: $("preset"),
  status: $("status"), fps: $("fps"), latency: $("latency"), error: $("error"),
};

let pc = null;
let streamId = null;
let localStream = null;
let statsTimer = null;

function setStatus(text) {
  ui.status.textContent = text;
  ui.status.className = `status ${text}`;
}

function showError(message) {
  ui.error.textContent = message;
  ui.error.hidden = !message;
}

async function listCameras() {
  const devices = await navigator.mediaDevices.enumerateDevices();
  const cameras = devices.filter((d) => d.kind === "videoinput");
  ui.camera.replaceChildren(...cameras.map((d, i) => new Option(d.label || `camera ${i + 1}`, d.deviceId)));
}

async function start() {
  showError("");
  ui.start.disabled = true;
  try {
    const deviceId = ui.camera.value;
    localStream = await navigator.mediaDevices.getUserMedia({
      video: { deviceId: deviceId ? { exact: deviceId } : undefined, width: 640, height: 480 },
      audio: false,
    });
    ui.input.srcObject = localStream;
    await listCameras();
    pc = new RTCPeerConnection();
    pc.addEventListener("connectionstatechange", () => setStatus(pc.connectionState));
    pc.addEventListener("track", (event) => {
      if ("jitterBufferTarget" in event.receiver) event.receiver.jitterBufferTarget = 0;
      ui.output.srcObject = event.streams[0] || new MediaStream([event.track]);
    });
    for (const track of localStream.getVideoTracks()) pc.addTrack(track, localStream);
    await pc.setLocalDescription(await pc.createOffer());
    await iceGatheringComplete(pc);
    setStatus("connecting");
    const answer = await api("POST", "/api/offer", { sdp: pc.localDescription.sdp, type: "offer" });
    streamId = answer.stream_id;
    await pc.setRemoteDescription({ sdp: answer.sdp, type: answer.type });
    ui.stop.disabled = false;
    statsTimer = setInterval(updateStats, 1000);
  } catch (error) {
    showError(error.message);
    setStatus("error");
    teardown();
  }
}

function iceGatheringComplete(connection) {
  if (connection.iceGatheringState === "complete") return Promise.resolve();
  return new Promise((resolve) => {
    const check = () => {
      if (connection.iceGatheringState === "complete") {
        connection.removeEventListener("icegatheringstatechange", check);
        resolve();
      }
    };
    connection.addEventListener("icegatheringstatechange", check);
  });
}

function teardown() {
  clearInterval(statsTimer);
  statsTimer = null;
  if (pc) pc.close();
  pc = null;
  if (localStream) localStream.getTracks().forEach((t) => t.stop());
  localStream = null;
  ui.input.srcObject = null;
  ui.output.srcObject = null;
  ui.start.disabled = false;
  ui.stop.disabled = true;
  ui.fps.textContent = "–";
  ui.latency.textContent = "–";
}

function stop() {
  if (streamId) api("DELETE", `/api/streams/${streamId}`).catch(() => {});
  streamId = null;
  teardown();
  setStatus("idle");
}

let lastFrames = null;
async function updateStats() {
  if (!pc) return;
  const stats = await pc.getStats();
  stats.forEach((report) => {
    if (report.type === "inbound-rtp" && report.kind === "video") {
      if (lastFrames) {
        const seconds = (report.timestamp - lastFrames.timestamp) / 1000;
        ui.fps.textContent = ((report.framesDecoded - lastFrames.frames) / seconds).toFixed(1);
      }
      lastFrames = { frames: report.framesDecoded, timestamp: report.timestamp };
    }
    if (report.type === "candidate-pair" && report.state === "succeeded" && report.currentRoundTripTime !== undefined) {
      ui.latency.textContent = `${Math.round(report.currentRoundTripTime * 1000)} ms rtt`;
    }
  });
}

function renderSettings(settings) {
  if (document.activeElement !== ui.prompt) ui.prompt.value = settings.prompt;
  if (document.activeElement !== ui.strength) ui.strength.value = settings.strength;
  ui.strengthValue.textContent = Number(settings.strength).toFixed(2);
}

let promptTimer = null;
ui.prompt.addEventListener("input", () => {
  clearTimeout(promptTimer);
  promptTimer = setTimeout(() => patchSettings({ prompt: ui.prompt.value }), 300);
});
ui.strength.addEventListener("input", () => {
  ui.strengthValue.textContent = Number(ui.strength.value).toFixed(2);
  patchSettings({ strength: Number(ui.strength.value) });
});

async function patchSettings(patch) {
  try {
    renderSettings(await api("PATCH", "/api/settings", patch));
    showError("");
  } catch (error) {
    showError(error.message);
  }
}

ui.start.addEventListener("click", start);
ui.stop.addEventListener("click", stop);

(async () => {
  try {
    renderSettings(await api("GET", "/api/settings"));
    await listCameras();
  } catch (error) {
    showError(error.message);
  }
})();
