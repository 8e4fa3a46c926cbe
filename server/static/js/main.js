// The page: wires the camera, the live connection, the style controls, readouts and events together.

import { api } from "./api.js";
import { cameraSupported, listCameras, openCamera } from "./camera.js";
import { StyleControls } from "./controls.js";
import { EventFeed } from "./events.js";
import { JobsPanel } from "./jobs.js";
import { OutputLinks, streamName } from "./outputs.js";
import { NameOverrides } from "./name_overrides.js";
import { LiveConnection } from "./rtc.js";
import { RecordButton } from "./record_button.js";
import { ScopedPause } from "./scoped_pause.js";
import { ServerState } from "./server_state.js";
import { StatsMeter } from "./stats.js";
import { attachAutocomplete } from "./suggestions.js";

const $ = (id) => document.getElementById(id);
const ui = {
  camera: $("camera"),
  resolution: $("resolution"),
  start: $("start"),
  stop: $("stop"),
  layout: $("layout"),
  fullscreen: $("fullscreen"),
  input: $("input"),
  output: $("output"),
  outputBox: $("output-box"),
  serverState: $("server-state"),
  modelName: $("model-name"),
  prompt: $("prompt"),
  preset: $("preset"),
  presetChips: $("preset-chips"),
  strength: $("strength"),
  strengthValue: $("strength-value"),
  feedback: $("feedback"),
  feedbackValue: $("feedback-value"),
  flickerTarget: $("flicker-target"),
  pastFrames: $("past-frames"),
  lorasWorn: $("loras-worn"),
  controlGroup: $("control-group"),
  controlKind: $("control-kind"),
  controlScale: $("control-scale"),
  controlScaleValue: $("control-scale-value"),
  seed: $("seed"),
  steps: $("steps"),
  dice: $("dice"),
  pause: $("pause"),
  pausedBadge: $("paused"),
  status: $("status"),
  fps: $("fps"),
  latency: $("latency"),
  flicker: $("flicker"),
  flickerState: $("flicker-state"),
  latencyDetail: $("latency-detail"),
  error: $("error"),
};

let localStream = null;

function showError(error) {
  const message = error ? error.message || String(error) : "";
  ui.error.textContent = message;
  ui.error.hidden = !message;
}

function setStatus(state, text) {
  ui.status.textContent = text;
  ui.status.dataset.state = state;
  const streaming = ["connecting", "connected", "reconnecting", "retrying"].includes(state);
  ui.start.disabled = streaming || server.state === "failed";
  ui.stop.disabled = !streaming;
  if (!streaming) {
    stats.stop();
    showReadout({ fps: null, latencyMs: null, parts: null, serverFps: null, flicker: null, temporal: null });
    stopCamera();
  }
}

function showReadout({ fps, latencyMs, parts, serverFps, flicker, temporal }) {
  ui.flicker.textContent = flicker === null ? "–" : flicker.toFixed(2);
  // What the temporal memory runs with now: the controller's feedback and what it is doing.
  ui.flickerState.textContent =
    temporal && temporal.state !== "off" ? `${temporal.state}, feedback ${temporal.feedback.toFixed(2)}` : "";
  ui.fps.textContent = fps === null ? "–" : fps.toFixed(1);
  ui.fps.title = serverFps === null ? "" : `server sends ${serverFps} fps on average`;
  ui.latency.textContent = latencyMs === null ? "–" : `${Math.round(latencyMs)} ms`;
  if (!parts) {
    ui.latencyDetail.textContent = "";
    return;
  }
  const names = { encode: "encode", network: "rtt", server: "server", buffer: "buffer", decode: "decode" };
  ui.latencyDetail.textContent = Object.entries(parts)
    .filter(([, v]) => v !== null)
    .map(([k, v]) => `${names[k]} ${Math.round(v)}`)
    .join(" · ");
}

const server = new ServerState((change) => onServerState(change));
const stats = new StatsMeter(showReadout, (streamId) => connection.streamLost(streamId));
const controls = new StyleControls(ui, showError);
const jobs = new JobsPanel({
  form: $("job-form"),
  file: $("job-file"),
  prompt: $("job-prompt"),
  strength: $("job-strength"),
  steps: $("job-steps"),
  submit: $("job-submit"),
  error: $("job-error"),
  list: $("job-list"),
});
attachAutocomplete(ui.prompt);
const name = streamName(showError);
const outputs = new OutputLinks({ name, label: $("stream-name"), list: $("output-links") });
const connection = new LiveConnection({
  name,
  rtcConfig: {},
  onStatus: setStatus,
  onError: showError,
  onOutput: (stream) => {
    ui.output.srcObject = stream;
  },
  onStream: (streamId) => {
    if (streamId) stats.watch(connection.pc, streamId);
    else stats.stop();
    streamPause.refresh().catch(showError);
  },
});
const namePause = new ScopedPause({
  label: name,
  settingsPath: () => `/api/outputs/${encodeURIComponent(name)}/settings`,
  scope: () => `name:${name}`,
  badge: $("scoped-paused"),
  resume: $("scoped-resume"),
  onError: showError,
});
const streamPause = new ScopedPause({
  label: "this stream",
  settingsPath: () => (connection.streamId ? `/api/streams/${connection.streamId}/settings` : null),
  scope: () => connection.streamId,
  badge: $("stream-paused"),
  resume: $("stream-resume"),
  onError: showError,
});
// The name's own prompt beats the typed one (which is everyone's): say so beside the prompt.
function notePromptOverride(named) {
  const note = $("name-prompt-note");
  const own = named.overrides.prompt;
  note.hidden = own === undefined;
  note.textContent = own === undefined ? "" : `${name} has its own prompt, which wins here: "${own}" (edit or clear it below)`;
}
const nameOverrides = new NameOverrides({
  name,
  section: $("name-overrides"),
  list: $("override-list"),
  field: $("override-field"),
  value: $("override-value"),
  add: $("override-add"),
  onError: showError,
  onChange: notePromptOverride,
});
const recordButton = new RecordButton({ name, button: $("record"), onError: showError });
// The parts that follow this page's name or stream: read on (re)connect, told of every event.
const scoped = [namePause, streamPause, nameOverrides, recordButton];

// The server's state, shown before Start and acted on after it: a failed model is permanent (stop,
// release the camera, say why); a server that stops answering drops the stream, which reconnects.
function onServerState({ state, text, reason, model, control }) {
  ui.modelName.textContent = model;
  controls.setControlKinds(control || []);
  ui.serverState.textContent = text;
  ui.serverState.dataset.state = state;
  ui.serverState.title = reason;
  ui.serverState.hidden = state === "ready";
  if (state === "failed") {
    if (connection.active) connection.stop();
    showError(new Error(`the model failed to load: ${reason}`));
  } else if (state === "unreachable") {
    connection.serverLost();
  } else if (state === "ready") {
    connection.retryNow(); // back: reconnect at once rather than at the next back-off step
  }
  if (state !== "failed" && state !== "unreachable" && ui.error.textContent.startsWith("the model failed")) {
    showError(null); // the server came back with a model that loads
  }
  ui.start.disabled = state === "failed" || connection.active;
}

function stopCamera() {
  if (localStream) localStream.getTracks().forEach((t) => t.stop());
  localStream = null;
  ui.input.srcObject = null;
}

async function start() {
  showError(null);
  if (!cameraSupported()) {
    showError(new Error("this browser gives no camera here: open the page over https (or on localhost) — see README, TLS"));
    return;
  }
  ui.start.disabled = true;
  setStatus("connecting", "opening camera");
  try {
    localStream = await openCamera(ui.camera.value, ui.resolution.value);
  } catch (error) {
    setStatus("error", "no camera");
    showError(new Error(`camera: ${error.message || error.name}`));
    return;
  }
  ui.input.srcObject = localStream;
  watchCamera(localStream);
  listCameras(ui.camera).catch(() => {}); // labels appear once permission is granted
  await connection.start(localStream);
}

async function changeCamera() {
  if (!connection.active || !localStream) return;
  try {
    await swapCamera();
  } catch (error) {
    showError(new Error(`camera: ${error.message || error.name}`));
  }
}

async function swapCamera() {
  const next = await openCamera(ui.camera.value, ui.resolution.value);
  const previous = localStream;
  localStream = next;
  ui.input.srcObject = next;
  watchCamera(next);
  await connection.replaceVideoTrack(next);
  if (previous) previous.getTracks().forEach((t) => t.stop());
}

const CAMERA_RETRY_MS = 1000;
const CAMERA_LOST = "camera lost: getting it back";

// A camera unplugged, taken by another app or stopped by the system ends its track: say so, and open
// it again (once a second) while the stream is still wanted, so the stream goes on with a live picture.
function watchCamera(stream) {
  const track = stream.getVideoTracks()[0];
  if (!track) return;
  track.addEventListener("ended", () => {
    if (stream !== localStream || !connection.active) return; // swapped or stopped on purpose
    showError(new Error(CAMERA_LOST));
    reacquireCamera(stream);
  });
}

async function reacquireCamera(lost) {
  while (lost === localStream && connection.active) {
    try {
      await swapCamera();
      if (ui.error.textContent === CAMERA_LOST) showError(null);
      return;
    } catch {
      await new Promise((resolve) => setTimeout(resolve, CAMERA_RETRY_MS));
    }
  }
}

function setLayout(layout) {
  document.body.dataset.layout = layout;
  ui.layout.value = layout;
  fitOutput();
  try {
    localStorage.setItem("stylize-layout", layout);
  } catch {
    // not remembered; fine
  }
}

// "Stylized only" sizes the picture to the height left under the header and controls (how tall they
// are depends on the window's width), so the whole picture and its caption are on screen at once.
function fitOutput() {
  const above = ui.outputBox.getBoundingClientRect().top + window.scrollY;
  const caption = ui.outputBox.querySelector("figcaption");
  const below = (caption ? caption.getBoundingClientRect().height : 0) + 16; // the body's bottom padding
  document.body.style.setProperty("--output-room", `${Math.max(240, window.innerHeight - above - below)}px`);
}

function toggleFullscreen() {
  if (document.fullscreenElement) document.exitFullscreen();
  else if (ui.outputBox.requestFullscreen) ui.outputBox.requestFullscreen().catch((error) => showError(error));
  else if (ui.output.webkitEnterFullscreen) ui.output.webkitEnterFullscreen(); // iPhone: only a video may go full screen
}

async function loadPresets() {
  try {
    controls.setPresets((await api("GET", "/api/presets")).presets);
  } catch (error) {
    showError(error);
  }
}

async function loadSettings() {
  try {
    controls.render(await api("GET", "/api/settings"));
    await Promise.all(scoped.map((part) => part.refresh()));
  } catch (error) {
    showError(error);
  }
}

function onEvent(event) {
  for (const part of scoped) part.onEvent(event);
  if (event.type === "settings" && event.scope === "global") controls.render(event.settings, event.source);
  else if (event.type === "stream" && event.action === "down") connection.streamDown(event.stream_id, event.reason);
  else if (event.type === "preset" && event.action !== "applied") loadPresets();
  else if (event.type === "job") jobs.onEvent(event);
}

ui.start.addEventListener("click", start);
ui.stop.addEventListener("click", () => {
  ui.stop.disabled = true;
  connection.stop();
});
ui.camera.addEventListener("change", changeCamera);
ui.resolution.addEventListener("change", changeCamera);
ui.layout.addEventListener("change", () => setLayout(ui.layout.value));
window.addEventListener("resize", fitOutput);
// What is above the picture grows later too: preset chips arriving, an error shown, controls wrapping.
const aboveOutput = new ResizeObserver(() => fitOutput());
for (let element = ui.outputBox.closest("main").previousElementSibling; element; element = element.previousElementSibling) {
  aboveOutput.observe(element);
}
ui.fullscreen.addEventListener("click", toggleFullscreen);
ui.output.addEventListener("dblclick", toggleFullscreen);
document.addEventListener("keydown", (event) => {
  const typing = ["INPUT", "SELECT", "TEXTAREA"].includes(document.activeElement.tagName);
  if (!typing && event.key === "f") toggleFullscreen();
});
window.addEventListener("pagehide", () => {
  if (connection.active) connection.stop({ leavingPage: true });
});

(async () => {
  let layout = "both";
  try {
    layout = localStorage.getItem("stylize-layout") || layout;
  } catch {
    // default layout
  }
  setLayout(layout);
  setStatus("idle", "idle");
  server.start();
  const events = new EventFeed({ onEvent, onOpen: () => Promise.all([loadSettings(), jobs.refresh()]) });
  let authorized = true;
  try {
    const config = await api("GET", "/api/client-config");
    connection.rtcConfig = { iceServers: config.ice_servers };
  } catch (error) {
    authorized = error.status !== 401;
    showError(error);
  }
  // Without the token the events socket would be refused too, again and again: not until the page has it.
  if (authorized) events.start();
  await Promise.all([loadSettings(), loadPresets(), listCameras(ui.camera).catch(() => {})]);
  // For users' scripts and tests: the live objects of this page.
  window.stylize = {
    connection, controls, stats, events, jobs, server, outputs, namePause, streamPause, nameOverrides, recordButton,
  };
})();
