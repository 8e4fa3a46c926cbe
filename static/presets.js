// Presets and prompt help on the page: fills #preset (applies on change) and autocompletes #prompt.
// Stands alone beside app.js: it talks to /api/presets, /api/suggestions and /api/events only.
import { api } from "./api.js";

const presetSelect = document.getElementById("preset");
const promptInput = document.getElementById("prompt");

// Show applied settings in the page's controls (set directly: no input event, so app.js sends nothing back).
function showSettings(settings) {
  if (promptInput && document.activeElement !== promptInput) promptInput.value = settings.prompt;
  const strength = document.getElementById("strength");
  if (strength && document.activeElement !== strength) {
    strength.value = settings.strength;
    const readout = document.getElementById("strength-value");
    if (readout) readout.textContent = Number(settings.strength).toFixed(2);
  }
  if (presetSelect) presetSelect.value = settings.preset ?? "";
}

async function loadPresets() {
  const [{ presets }, settings] = await Promise.all([api("GET", "/api/presets"), api("GET", "/api/settings")]);
  const groups = new Map();
  for (const preset of presets) {
    if (!groups.has(preset.category)) {
      const group = document.createElement("optgroup");
      group.label = preset.category;
      groups.set(preset.category, group);
    }
    const option = new Option(preset.name, preset.id);
    option.title = preset.template;
    groups.get(preset.category).append(option);
  }
  presetSelect.replaceChildren(new Option("(none)", ""), ...groups.values());
  presetSelect.value = settings.preset ?? "";
}

async function applyPreset(id) {
  if (!id) return;
  try {
    const applied = await api("POST", `/api/presets/${encodeURIComponent(id)}/apply`);
    showSettings(applied.settings);
  } catch (error) {
    console.warn("preset apply failed:", error.message);
  }
}

// The autocomplete works on the fragment after the last comma; choosing keeps what came before.
function setUpAutocomplete() {
  const list = document.createElement("datalist");
  list.id = "prompt-suggestions";
  promptInput.after(list);
  promptInput.setAttribute("list", list.id);
  let timer = null;
  let asked = 0;
  promptInput.addEventListener("input", () => {
    clearTimeout(timer);
    timer = setTimeout(async () => {
      const value = promptInput.value;
      const cut = value.lastIndexOf(",");
      const head = cut < 0 ? "" : `${value.slice(0, cut + 1).trimEnd()} `;
      const fragment = value.slice(cut + 1).trim();
      const ticket = ++asked;
      if (fragment.length < 2) {
        list.replaceChildren();
        return;
      }
      try {
        const query = new URLSearchParams({ query: fragment, limit: "8" });
        const { suggestions } = await api("GET", `/api/suggestions/autocomplete?${query}`);
        if (ticket !== asked) return; // a newer keystroke asked since
        list.replaceChildren(
          ...suggestions.map((s) => {
            const option = new Option(s.text, head + s.text);
            option.label = `${s.text} · ${s.category}`;
            return option;
          }),
        );
      } catch (error) {
        console.warn("autocomplete failed:", error.message);
      }
    }, 150);
  });
}

// Keep the select in step with presets made or changed elsewhere, and with OSC preset steps.
function listenForChanges() {
  const scheme = location.protocol === "https:" ? "wss" : "ws";
  const socket = new WebSocket(`${scheme}://${location.host}/api/events`);
  socket.addEventListener("message", (message) => {
    const event = JSON.parse(message.data);
    if (event.type === "preset" && event.action !== "applied") {
      loadPresets().catch((error) => console.warn("preset list failed:", error.message));
    } else if (event.type === "settings" && event.scope === "global" && "preset" in event.changed) {
      showSettings(event.settings);
    }
  });
  socket.addEventListener("close", () => setTimeout(listenForChanges, 3000));
}

if (presetSelect) {
  presetSelect.addEventListener("change", () => applyPreset(presetSelect.value));
  loadPresets()
    .then(listenForChanges)
    .catch((error) => console.warn("preset list failed:", error.message));
}
if (promptInput) setUpAutocomplete();
