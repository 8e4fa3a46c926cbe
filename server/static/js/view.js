// /view/{name}: a name's stylized output, edge to edge, for a projector or an OBS browser source.
// Plays over WHEP with the lowest latency the browser allows and reconnects by itself (server
// restarts, the performer reconnecting, a network drop). Full screen: double click or the f key.

import { api } from "./api.js";
import { WhepPlayer } from "./whep.js";

const IDLE_CURSOR_MS = 2000;

const name = decodeURIComponent(location.pathname.split("/").filter(Boolean).pop() || "latest");
const video = document.getElementById("view");
const status = document.getElementById("view-status");
document.title = `Stylize — ${name}`;

const player = new WhepPlayer({
  url: `/api/outputs/${encodeURIComponent(name)}/whep`,
  onStream: (stream) => {
    video.srcObject = stream;
    video.play().catch(() => {}); // muted video may autoplay; if not, the next click starts it
  },
  onStatus: (state, text) => {
    status.dataset.state = state;
    status.textContent = state === "playing" ? "" : `${name}: ${text}`;
  },
});

function toggleFullscreen() {
  if (document.fullscreenElement) document.exitFullscreen();
  else document.documentElement.requestFullscreen().catch(() => {});
}

let idleTimer = null;
function showCursor() {
  document.body.classList.remove("idle");
  clearTimeout(idleTimer);
  idleTimer = setTimeout(() => document.body.classList.add("idle"), IDLE_CURSOR_MS);
}

video.addEventListener("dblclick", toggleFullscreen);
document.addEventListener("click", () => video.play().catch(() => {}));
document.addEventListener("keydown", (event) => {
  if (event.key === "f") toggleFullscreen();
});
document.addEventListener("mousemove", showCursor);
window.addEventListener("pagehide", () => player.stop({ leavingPage: true }));

(async () => {
  showCursor();
  try {
    const config = await api("GET", "/api/client-config");
    player.rtcConfig = { iceServers: config.ice_servers };
  } catch {
    // no ICE servers: fine on a LAN
  }
  player.start();
  window.stylize = { player, name };
})();
